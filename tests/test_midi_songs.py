"""extras/midi_songs.py: the Standard MIDI Files it writes parse (read here by a small independent reader), and a
rendered set is what data.SlakhDataset reads (skipped without fluidsynth)."""
import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
from extras import midi_songs  # noqa: E402

HAS_FLUIDSYNTH = shutil.which("fluidsynth") is not None and Path(midi_songs.SF2).is_file()


def read_smf(smf):
    """(format, division, tracks) of SMF bytes; a track is a list of (absolute tick, status, data bytes).
    Asserts the chunk structure: MThd of length 6, then exactly the announced MTrk chunks, each ending in FF 2F 00."""
    assert smf[:4] == b"MThd" and int.from_bytes(smf[4:8], "big") == 6
    fmt, ntrks, division = (int.from_bytes(smf[i:i + 2], "big") for i in (8, 10, 12))
    pos, tracks = 14, []
    while pos < len(smf):
        assert smf[pos:pos + 4] == b"MTrk"
        end = pos + 8 + int.from_bytes(smf[pos + 4:pos + 8], "big")
        pos, tick, events = pos + 8, 0, []
        while pos < end:
            delta = 0
            while True:  # variable-length quantity
                delta, pos = (delta << 7) | (smf[pos] & 0x7F), pos + 1
                if smf[pos - 1] < 0x80:
                    break
            tick, status = tick + delta, smf[pos]
            assert status >= 0x80, "no running status is written"
            if status == 0xFF:  # meta: type, length (one byte here), data
                size = smf[pos + 2]
                events.append((tick, status, smf[pos + 1:pos + 3 + size]))
                pos += 3 + size
            else:
                size = 1 if status >> 4 in (0xC, 0xD) else 2
                events.append((tick, status, smf[pos + 1:pos + 1 + size]))
                pos += 1 + size
        assert pos == end and events[-1][1:] == (0xFF, b"\x2f\x00"), "each track ends with end-of-track"
        tracks.append(events)
    assert len(tracks) == ntrks
    return fmt, division, tracks


@pytest.mark.parametrize("seed", range(6))
def test_midi_files_parse_with_balanced_notes(seed):
    params, midis = midi_songs.song_midis(seed, seconds=20)
    assert set(midis) == {t for t in data.TRACKS if t != params["absent"]} and {"bass", "drums"} <= set(midis)
    for track, smf in midis.items():
        fmt, division, (tempo, notes) = read_smf(smf)
        assert (fmt, division) == (1, midi_songs.TPB)
        assert any(s == 0xFF and d[0] == 0x51 for _, s, d in tempo)  # a tempo meta event
        assert int.from_bytes(next(d for _, s, d in tempo if s == 0xFF and d[0] == 0x51)[2:], "big") \
            == round(60e6 / params["bpm"])
        channels = {s & 0x0F for _, s, _ in notes if s < 0xF0}
        assert channels == {midi_songs.CHANNELS[track]}  # drums on channel 10 (index 9)
        sounding, ons = collections.Counter(), 0
        for tick, status, (key, *vel) in ((t, s, d) for t, s, d in notes if s >> 4 in (0x8, 0x9)):
            assert 0 <= key < 128 and all(0 < v < 128 for v in vel if status >> 4 == 0x9)
            if status >> 4 == 0x9:
                sounding[key] += 1
                ons += 1
                assert sounding[key] == 1, f"{track}: key {key} struck while sounding"
            else:
                sounding[key] -= 1
                assert sounding[key] >= 0, f"{track}: note off without note on at tick {tick}"
        assert ons > 0 and not +sounding, f"{track}: every note on has its note off"


def test_songs_vary_and_are_reproducible():
    params = [midi_songs.song_params(seed, 40) for seed in range(40)]
    assert midi_songs.song_midis(3, 40) == midi_songs.song_midis(3, 40)
    assert all(80 <= p["bpm"] <= 150 for p in params) and len({p["bpm"] for p in params}) > 20
    assert len({p["key"] for p in params}) > 6 and {p["mode"] for p in params} == {"major", "minor"}
    assert {p["absent"] for p in params} == {None, "guitar", "piano"}
    assert any(p["swing"] > 0 for p in params) and any(p["swing"] == 0 for p in params)


def test_help_from_another_folder(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "extras/midi_songs.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: midi_songs.py"), done.stderr


def test_vlq_known_answers():  # the SMF specification's examples
    for n, code in [(0, "00"), (0x40, "40"), (0x7F, "7F"), (0x80, "8100"), (0x2000, "C000"), (0x3FFF, "FF7F"),
                    (0x4000, "818000"), (0x0FFFFFFF, "FFFFFF7F")]:
        assert midi_songs._vlq(n) == bytes.fromhex(code)


@pytest.mark.skipif(not HAS_FLUIDSYNTH, reason="needs fluidsynth and the FluidR3_GM soundfont")
def test_rendered_set_is_a_slakh_folder(tmp_path):
    out = tmp_path / "songs"
    done = subprocess.run([sys.executable, str(ROOT / "extras/midi_songs.py"), str(out), "--n", "3", "--seconds", "6",
                           "--split", "1,1,1", "--seed", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    songs = json.loads((out / "songs.json").read_text())
    assert [s["split"] for s in songs] == ["train", "validation", "test"]
    for s in songs:
        folder = out / s["split"] / s["name"]
        waves = [sf.read(folder / f"{t}.wav") for t in data.TRACKS]
        assert {sr for _, sr in waves} == {16000} and len({len(x) for x, _ in waves}) == 1
        for t, (x, _) in zip(data.TRACKS, waves):
            assert (np.abs(x).max() == 0) == (t == s["absent"]) and np.abs(x).max() < 1
    clips = data.SlakhDataset(out, "train", 16000, cache_dir=tmp_path / "cache", train=False)
    assert clips.report["kept"] == 1 and clips[0].shape == (4, 16000)
    again = subprocess.run([sys.executable, str(ROOT / "extras/midi_songs.py"), str(out)], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode != 0 and "not empty" in again.stderr
