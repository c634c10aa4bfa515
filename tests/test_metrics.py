"""Rhythm metrics (metrics.py): parity with the official SyncTrack scripts, known answers, layouts, bad input.

Golden numbers come from tests/fixtures/metrics/official_results.json: the output of the official
eval_metrics/{IRS,CBS,CBD}.py (github mathwanghr/SyncTrack @ 7bbb18b) run on the 6 clips in that folder, with their
shipped settings (fps 150, tl 100, CBS window 0.15 s). cases.json there says how each clip was made.
tests/fixtures/ffmpeg/golden.json: what madmom itself read from the files there through FFmpeg 5.1.9 (the official
scripts' path for a file that is not 44.1 kHz), and the official call's beats; its README says how it was made.
"""
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data
import metrics
from data import TRACKS

FIXTURE = Path(__file__).parent / "fixtures" / "metrics"
FFMPEG = Path(__file__).parent / "fixtures" / "ffmpeg"
OFFICIAL = json.loads((FIXTURE / "official_results.json").read_text())
NAMES = sorted(OFFICIAL["cbs_per_sample"])  # "bass_drift.wav", ...
SR = 16000


def beats(wave, sr, fps=150):
    return metrics.dbn_beats(metrics.activations(wave, sr), fps)


def official_beats(name):
    """The official scripts' beats of sample `name` (e.g. "synced_120.wav"), one array per track."""
    return [np.array(OFFICIAL["beats"][f"stem_{i}/{name}"]) for i in range(len(TRACKS))]


@pytest.fixture(scope="module")
def ours():
    """evaluate() on the fixture once per session: 24 files through madmom in 2 processes."""
    return metrics.evaluate(FIXTURE, workers=2)


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the official scripts
# ---------------------------------------------------------------------------------------------------------------------

def test_metric_functions_on_official_beats_give_official_numbers():
    per_track = {t: [official_beats(n)[i] for n in NAMES] for i, t in enumerate(TRACKS)}
    for i, t in enumerate(TRACKS):
        assert metrics.irs(per_track[t]) == pytest.approx(OFFICIAL["irs_per_stem"][f"stem_{i}"], rel=1e-12)
    assert np.mean([metrics.irs(per_track[t]) for t in TRACKS]) == pytest.approx(OFFICIAL["irs_mean"], rel=1e-12)
    duration = sf.info(str(FIXTURE / "stem_0" / NAMES[0])).frames / SR  # 10.24 s, every clip
    per_sample = [metrics.cbs(official_beats(n), duration, window=OFFICIAL["window"]) for n in NAMES]
    for n, value in zip(NAMES, per_sample):
        assert value == pytest.approx(OFFICIAL["cbs_per_sample"][n], rel=1e-12), n
    assert np.mean(per_sample) == pytest.approx(OFFICIAL["cbs"], rel=1e-12)
    cbd = [metrics.cbd(official_beats(n)) for n in NAMES]
    for k in ("mean", "std", "median"):
        assert np.mean([c[k] for c in cbd]) == pytest.approx(OFFICIAL["cbd"][k], rel=1e-12), k


def test_our_beats_match_official_beats(ours):
    """Ours: FFmpeg's resampling to 44.1 kHz reproduced in-process (metrics.swr_resample); official: madmom reads the
    files through FFmpeg. All 417 beats of the 24 files are identical."""
    result = ours
    worst, n_beats = 0.0, 0
    for key, official in OFFICIAL["beats"].items():
        stem, file = key.split("/")
        mine = np.array(result["per_sample"][Path(file).stem]["beats"][TRACKS[int(stem[-1])]])
        assert len(mine) == len(official), key
        if len(mine):
            worst = max(worst, float(np.max(np.abs(mine - official))))
        n_beats += len(mine)
    assert n_beats == 417
    assert worst == 0.0


def test_evaluate_gives_official_numbers(ours):
    result = ours
    assert result["layout"] == "stem_i" and result["n_samples"] == 6 and result["skipped"] == []
    for i, t in enumerate(TRACKS):
        assert result["irs"][t] == pytest.approx(OFFICIAL["irs_per_stem"][f"stem_{i}"], rel=1e-9)
    assert result["irs"]["mean"] == pytest.approx(OFFICIAL["irs_mean"], rel=1e-9)
    assert result["cbs"] == pytest.approx(OFFICIAL["cbs"], rel=1e-9)
    for k in ("mean", "std", "median"):
        assert result["cbd"][k] == pytest.approx(OFFICIAL["cbd"][k], rel=1e-9)
    assert result["counts"]["irs_piano"] == 5  # piano_silent has no piano beats
    assert any("piano_silent" in note and "silent" in note for note in result["notes"])

def madmom_reads(wave, sr, monkeypatch):
    """The int16 at 44.1 kHz that activations() hands to madmom, mixed to mono as madmom's remix does."""
    seen = []
    monkeypatch.setattr(metrics, "_rnn", lambda: lambda x: seen.append(np.asarray(x)) or np.zeros((10, 2)))
    metrics.activations(wave, sr)
    x = seen[0]
    return x if x.ndim == 1 else np.mean(x, axis=-1).astype(x.dtype)


@pytest.mark.parametrize("name", ["bass_16k.flac", "stereo_48k.wav", "chirp_8k.wav", "chirp_22k.wav"])
def test_madmom_gets_the_samples_it_reads_through_ffmpeg(name, monkeypatch):
    """Sample for sample (sha256) what madmom's load_audio_file read from the file through FFmpeg 5.1.9, for
    16 kHz music, 48 kHz stereo (FFmpeg resamples, then mixes), 8 and 22.05 kHz chirps (clipping near full scale)."""
    golden = json.loads((FFMPEG / "golden.json").read_text())["files"][name]
    wave, sr = data.read_audio(FFMPEG / name, sr=None, channels="all")  # as evaluate() reads it
    got = madmom_reads(wave, sr, monkeypatch)
    assert got.dtype == np.int16 and len(got) == golden["n_44k"]
    assert got[:8].tolist() == golden["head"] and got[-8:].tolist() == golden["tail"]
    assert hashlib.sha256(got.astype("<i2").tobytes()).hexdigest() == golden["sha256_int16le"]


def test_beats_of_real_music_equal_the_official_call():
    """bass_16k.flac: a rendered bass track on which scipy's resample_poly put the first beat one DBN frame late
    (golden "beats_resample_poly"); the official call RNNDownBeatProcessor()(path) + DBN gives golden "beats"."""
    golden = json.loads((FFMPEG / "golden.json").read_text())["files"]["bass_16k.flac"]
    wave, sr = data.read_audio(FFMPEG / "bass_16k.flac", sr=None)
    assert metrics.dbn_beats(metrics.activations(wave, sr)).tolist() == golden["beats"]
    assert golden["beats_resample_poly"] != golden["beats"]


def test_swr_resample_is_a_resampler():
    """Known answers: a constant stays constant (phase 0 sums to 1), a 1 kHz tone keeps its frequency and level."""
    assert np.all(metrics.swr_resample(np.full(1600, 1000, np.int16), 16000) == 1000)
    t = np.arange(16000) / 16000
    out = metrics.swr_resample(np.rint(16000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16), 16000)
    assert len(out) == 44100
    ref = 16000 * np.sin(2 * np.pi * 1000 * np.arange(44100) / 44100)
    assert np.max(np.abs(out[100:-100] - ref[100:-100])) < 8  # int16 LSB; the filter's passband ripple



def test_closest_matches_agrees_with_madmom():
    metrics._import_madmom()
    from madmom.evaluation import find_closest_matches
    rng = np.random.default_rng(0)
    for n_ref, n_tgt in [(5, 1), (1, 5), (20, 13), (13, 20), (8, 8)]:
        ref = np.sort(rng.uniform(0, 10, n_ref))
        tgt = np.sort(rng.uniform(0, 10, n_tgt))
        assert np.array_equal(metrics.closest_matches(ref, tgt), find_closest_matches(ref, tgt))
    ties = np.array([0.5, 1.5]), np.array([0.0, 1.0, 2.0])  # each ref beat halfway between two targets
    assert np.array_equal(metrics.closest_matches(*ties), find_closest_matches(*ties))


# ---------------------------------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------------------------------

def click_track(bpm=120.0, seconds=10.24, sr=SR):
    """A kick drum on every beat plus a bass note per beat (A1 A1 C2 D2), first beat at 0 s."""
    t = np.arange(int(seconds * sr)) / sr
    wave = np.zeros_like(t)
    for k, start in enumerate(np.arange(0, seconds, 60.0 / bpm)):
        u = t[t >= start] - start
        phase = 45 * u + 60 * 0.03 * (1 - np.exp(-u / 0.03))  # pitch falling from 105 Hz to 45 Hz
        kick = np.sin(2 * np.pi * phase) * np.exp(-u / 0.12)
        note = 440 * 2 ** ((np.array([-36, -36, -33, -31])[k % 4]) / 12)
        bass = 0.4 * np.sin(2 * np.pi * note * u) * np.exp(-u / 0.25)
        wave[t >= start] += (1.0 if k % 4 == 0 else 0.8) * kick + bass
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def test_click_track_at_120_bpm():
    wave = click_track()
    true_seconds = beats(wave, SR, fps=100)  # --fps 100: beat times in seconds
    assert np.median(np.diff(true_seconds)) == pytest.approx(0.5, abs=0.02)
    assert np.all(np.abs(true_seconds - np.round(true_seconds / 0.5) * 0.5) < 0.05)
    assert len(true_seconds) >= 19
    paper_scale = beats(wave, SR)  # default fps 150: every time x2/3
    assert np.median(np.diff(paper_scale)) == pytest.approx(0.5 * 100 / 150, abs=0.02)


def test_beats_of_silence_and_resampled_stereo():
    assert len(beats(np.zeros(SR * 2, np.float32), SR)) == 0
    mono = click_track(seconds=5.0, sr=22050)
    stereo = np.stack([mono, mono], axis=1)
    assert np.array_equal(beats(stereo, 22050, fps=100), beats(mono, 22050, fps=100))


def test_irs_known_values():
    assert metrics.irs([np.arange(0, 10, 0.5)]) == pytest.approx(0.0, abs=1e-12)  # steady beats
    assert metrics.irs([[0.0, 0.5, 1.5]]) == pytest.approx(0.25)  # IBIs 0.5, 1.0: population std 0.25
    assert metrics.irs([[0.0, 0.5, 1.5], [1.0], []]) == pytest.approx(0.25)  # < 2 beats: left out
    assert math.isnan(metrics.irs([[1.0], []]))


def test_identical_tracks_give_cbs_1_and_cbd_0():
    b = np.arange(0.1, 9.0, 0.5)
    assert metrics.cbs([b] * 4, duration=10.24) == pytest.approx(1.0, abs=1e-9)
    assert metrics.cbd([b] * 4) == {"mean": 0.0, "std": 0.0, "median": 0.0}


def test_cbs_counts_only_tracks_with_beats():
    b = np.arange(0.1, 9.0, 0.5)
    assert metrics.cbs([b, b, b, []], duration=10.24) == pytest.approx(1.0, abs=1e-9)  # silent track excluded
    half = b + 0.25  # every other window: 2 of 4 tracks beat
    assert metrics.cbs([b, b, half, half], duration=10.24) == pytest.approx(0.5, abs=1e-9)
    assert math.isnan(metrics.cbs([b, [], [], []], duration=10.24))  # one track with beats: undefined


def test_cbd_hand_computed():
    ref, late = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.1, 1.1, 2.1, 3.1])
    # each beat matched 0.1 s away, within a half interval of 0.5 s: e = 0.2, both ways round
    assert metrics.cbd([ref, late]) == pytest.approx({"mean": 0.2, "std": 0.0, "median": 0.2})
    # one target beat at 0.6 s: only ref beat 1.0 has it inside its window [0.5, 1.5): e = 0.4 / 0.5;
    # the one-beat track has no interval, so it cannot be a reference
    assert metrics.cbd([ref, [0.6]]) == pytest.approx({"mean": 0.8, "std": 0.0, "median": 0.8})
    assert all(math.isnan(v) for v in metrics.cbd([ref, []]).values())


# ---------------------------------------------------------------------------------------------------------------------
# Layouts and bad input
# ---------------------------------------------------------------------------------------------------------------------

def write(path, seconds=0.5, sr=SR, channels=1, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros((int(seconds * sr), channels), np.float32), sr, format=fmt)


def test_layout_official_stem_folders(tmp_path):
    for i in range(4):
        for name in ("a", "b"):
            write(tmp_path / f"stem_{i}" / f"{name}.wav")
    write(tmp_path / "mix" / "a.wav")
    (tmp_path / "stem_0" / "notes.txt").write_text("not audio")
    layout, samples, problems = metrics.find_samples(tmp_path)
    assert layout == "stem_i" and list(samples) == ["a", "b"] and problems == []
    assert samples["a"]["drums"] == tmp_path / "stem_1" / "a.wav" and samples["a"]["mix"] == tmp_path / "mix" / "a.wav"
    assert "mix" not in samples["b"]


def test_layout_named_folders_any_format(tmp_path):
    for t in TRACKS:
        write(tmp_path / t / "song.flac", sr=44100, channels=2, fmt="FLAC")
    layout, samples, problems = metrics.find_samples(tmp_path)
    assert layout == "named" and list(samples) == ["song"] and problems == []
    wave, sr = data.read_audio(samples["song"]["piano"], sr=None)
    assert wave.ndim == 1 and sr == 44100  # stereo mixed to mono


def test_layout_per_song_folders(tmp_path):
    for song in ("Track00001", "Track00002"):
        for t in TRACKS:
            write(tmp_path / song / f"{t}.wav")
    write(tmp_path / "Track00001" / "mix.wav")
    layout, samples, problems = metrics.find_samples(tmp_path)
    assert layout == "per-song" and list(samples) == ["Track00001", "Track00002"] and problems == []
    assert samples["Track00002"]["guitar"] == tmp_path / "Track00002" / "guitar.wav"


def test_missing_track_and_duplicates_are_reported(tmp_path):
    for t in TRACKS:
        write(tmp_path / t / "full.wav")
        write(tmp_path / t / "twice.wav")
    (tmp_path / "piano" / "full.wav").rename(tmp_path / "piano" / "lonely.wav")
    write(tmp_path / "drums" / "twice.ogg", fmt="OGG")
    _, samples, problems = metrics.find_samples(tmp_path)
    assert samples == {}
    assert any(p.startswith("full: missing piano") for p in problems)
    assert any(p.startswith("lonely: missing bass (bass/lonely.*), drums") for p in problems)
    assert any(p.startswith("twice: more than one file") and "twice.ogg" in p for p in problems)


def test_no_layout(tmp_path):
    (tmp_path / "empty_song").mkdir()
    with pytest.raises(ValueError, match="no recognisable layout"):
        metrics.find_samples(tmp_path)
    assert metrics.main([str(tmp_path)]) == 1
    assert metrics.main([str(tmp_path / "nowhere")]) == 1


def test_bad_files_are_skipped_and_named(tmp_path):
    good = "synced_120.wav"
    for i in range(4):
        (tmp_path / f"stem_{i}").mkdir()
        shutil.copy(FIXTURE / f"stem_{i}" / good, tmp_path / f"stem_{i}" / good)
        write(tmp_path / f"stem_{i}" / "broken.wav", seconds=1.0)
    (tmp_path / "stem_2" / "broken.wav").write_bytes(b"RIFF not really a wav")
    sf.write(str(tmp_path / "stem_3" / "broken.wav"), np.zeros(0, np.float32), SR)  # zero-length
    result = metrics.evaluate(tmp_path, workers=1)
    assert result["n_samples"] == 1 and list(result["per_sample"]) == ["synced_120"]
    [reason] = result["skipped"]
    assert "broken" in reason and "stem_2/broken.wav" in reason and "stem_3/broken.wav: ValueError: empty" in reason
    assert result["cbs"] == pytest.approx(OFFICIAL["cbs_per_sample"][good], rel=1e-9)


def test_nothing_evaluable_exits_nonzero(tmp_path, capsys):
    for i in range(4):
        write(tmp_path / f"stem_{i}" / "x.wav")
    (tmp_path / "stem_0" / "x.wav").write_bytes(b"")
    assert metrics.main([str(tmp_path), "--workers", "1"]) == 1
    out, err = capsys.readouterr()
    assert "no sample could be evaluated" in err and "stem_0/x.wav" in out


def test_all_silent_sample_prints_no_nan(tmp_path, capsys):
    for i in range(4):
        write(tmp_path / f"stem_{i}" / "quiet.wav", seconds=1.0)
    assert metrics.main([str(tmp_path), "--workers", "1"]) == 0  # evaluated; it just has no beats
    out, _ = capsys.readouterr()
    assert "nan" not in out.lower() and "no sample has 2 tracks with beats" in out


# ---------------------------------------------------------------------------------------------------------------------
# Unlucky inputs (issue 13): each is named, nothing fails for it
# ---------------------------------------------------------------------------------------------------------------------

def test_symlink_loop_and_folder_named_like_audio_are_reported(tmp_path, capsys):
    for i in range(4):
        write(tmp_path / f"stem_{i}" / "a.wav")
    (tmp_path / "stem_0" / "loop.wav").symlink_to(tmp_path / "stem_0" / "loop.wav")
    (tmp_path / "stem_1" / "x.wav").mkdir()
    _, samples, problems = metrics.find_samples(tmp_path)
    assert list(samples) == ["a"]
    assert any("loop.wav: symlink loop; ignored" in p for p in problems)
    assert any("x.wav: a folder, not an audio file; ignored" in p for p in problems)
    (tmp_path / "looped").symlink_to(tmp_path / "looped")
    assert metrics.main([str(tmp_path / "looped")]) == 1
    assert "looped: symlink loop" in capsys.readouterr().err


def test_absurd_amplitude_is_noted(tmp_path):
    loud = 5000 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR).astype(np.float32)  # float wav in int16 units
    for t in TRACKS:
        (tmp_path / t).mkdir()
        sf.write(str(tmp_path / t / "s.wav"), loud, SR, subtype="FLOAT")
    result = metrics.evaluate(tmp_path, workers=1)
    assert result["n_samples"] == 1
    assert sum("peak amplitude 5e+03" in n for n in result["notes"]) == 4


def test_json_to_a_folder_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(metrics, "evaluate", None)  # any evaluation would fail the test
    assert metrics.main([str(FIXTURE), "--json", str(tmp_path)]) == 1
    assert f"--json {tmp_path}: is a folder" in capsys.readouterr().err
