"""data.py: both Slakh2100 layouts on tiny files written here, the cache, and the loader."""
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import toy

C = 8000  # clip_samples in these tests: 0.5 s at 16 kHz keeps every file tiny


def sine(hz, seconds, sr, amp=0.3):
    return (amp * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def write(path, x, sr):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr)


METADATA = """UUID: 0123456789abcdef
audio_dir: stems
midi_dir: MIDI
normalization_factor: -13.0
normalized: true
overall_gain: 0.18
stems:
  S00:
    audio_rendered: true
    inst_class: Bass
    is_drum: false
    midi_program_name: Electric Bass (finger) with a name long enough
      to be wrapped onto a second line
    program_num: 33
  S01:
    audio_rendered: true
    plugin_name:
    inst_class: Guitar
    is_drum: false
    program_num: 25
  S02:
    audio_rendered: true
    inst_class: Guitar
    is_drum: false
    plugin_name: 'clean: chorus.nkm'
    program_num: 27
  S03:
    audio_rendered: false
    inst_class: Piano
    is_drum: false
    program_num: 0
  S04:
    audio_rendered: true
    inst_class: Strings (continued)
    is_drum: false
    program_num: 48
  S05:
    audio_rendered: true
    inst_class: Drums
    is_drum: true
    program_num: 128
"""


@pytest.fixture
def slakh(tmp_path):
    """A split with both layouts and every failure case. Returns (root, cache dir)."""
    root = tmp_path / "slakh"
    split = root / "train"
    # (a) MSDM layout at 22.05 kHz, all four stems, silent guitar.
    for t, hz in zip(data.TRACKS, (55, 0, 0, 440)):
        write(split / "Track00001" / f"{t}.wav", sine(hz, 2.0, 22050) if hz else np.zeros(44100, np.float32), 22050)
    # (a) stereo 44.1 kHz, piano.wav missing.
    for t in data.TRACKS[:3]:
        write(split / "Track00002" / f"{t}.wav", np.stack([sine(440, 1.5, 44100)] * 2, axis=1), 44100)
    # (a) corrupt drums.wav.
    for t in data.TRACKS:
        write(split / "Track00003" / f"{t}.wav", sine(220, 1.0, 16000), 16000)
    (split / "Track00003" / "drums.wav").write_bytes(b"RIFF not really a wave file")
    # (a) shorter than one clip.
    for t in data.TRACKS:
        write(split / "Track00004" / f"{t}.wav", sine(220, 0.2, 16000), 16000)
    # (b) raw flac_redux: two Guitar stems summed, Piano not rendered, Strings ignored.
    song = split / "Track00005"
    song.mkdir(parents=True)
    (song / "metadata.yaml").write_text(METADATA)
    for stem, hz in (("S00", 55), ("S01", 330), ("S02", 660), ("S04", 1000), ("S05", 100)):
        write(song / "stems" / f"{stem}.flac", sine(hz, 2.0, 44100, 0.2), 44100)
    # (b) with a corrupt stem.
    song = split / "Track00006"
    song.mkdir(parents=True)
    (song / "metadata.yaml").write_text(METADATA)
    for stem in ("S00", "S01", "S02", "S04"):
        write(song / "stems" / f"{stem}.flac", sine(100, 2.0, 44100), 44100)
    (song / "stems" / "S05.flac").write_bytes(b"fLaC broken")
    # A folder with no stems at all, and an omitted/ split that is never read.
    (split / "Track00007").mkdir()
    write(root / "omitted" / "Track00008" / "bass.wav", sine(55, 2.0, 16000), 16000)
    return root, tmp_path / "cache"


def test_clip_sampler_shards_shuffles_and_resumes():
    n = 10
    ranks = [data.ClipSampler(n, train=True, seed=1, rank=r, ranks=3) for r in range(3)]
    keys = sum((list(s) for s in ranks), [])
    assert len(keys) == 12 and set(keys) == set(range(n))  # ceil(10/3) each, padded by wrapping
    s = data.ClipSampler(n, train=True, seed=1)
    epoch0 = list(s)
    s.set_epoch(1)
    epoch1 = list(s)
    assert sorted(epoch1) == list(range(n, 2 * n)) and [k - n for k in epoch1] != epoch0  # new order, new offsets
    s.set_epoch(1, skip=4)
    assert list(s) == epoch1[4:] and len(s) == n - 4
    assert list(data.ClipSampler(n, train=False)) == list(range(n))


def test_loader_batches_do_not_depend_on_workers():
    ds = toy.ToyDataset(2, C, seed=0, train=True)
    batches = []
    for workers in (0, 2):
        loader = data.make_loader(ds, 2, train=True, workers=workers, seed=3)
        loader.sampler.set_epoch(1)
        batches.append(torch.cat(list(loader)))
    assert batches[0].shape == (4, len(data.TRACKS), C)  # (B, S, c), drop_last
    assert torch.equal(batches[0], batches[1])


def test_read_audio_resamples_and_mixes_down(tmp_path):
    write(tmp_path / "a.wav", np.stack([sine(440, 1.0, 44100), np.zeros(44100, np.float32)], axis=1), 44100)
    x, sr = data.read_audio(tmp_path / "a.wav")
    assert x.dtype == np.float32 and x.shape == (16000,) and sr == 16000
    np.testing.assert_allclose(x[1000:-1000], sine(440, 1.0, 16000, 0.15)[1000:-1000], atol=2e-3)
    (tmp_path / "bad.flac").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.flac"):
        data.read_audio(tmp_path / "bad.flac")
    with pytest.raises(ValueError, match="missing.wav"):
        data.read_audio(tmp_path / "missing.wav")


def test_slakh_both_layouts_and_report(slakh):
    root, cache = slakh
    ds = data.SlakhDataset(root, "train", C, cache_dir=cache, train=False)
    r = ds.report
    assert (r["songs"], r["kept"]) == (7, 3)
    dropped = "\n".join(r["dropped"])
    assert "Track00003" in dropped and "drums.wav" in dropped  # corrupt file named
    assert "Track00004" in dropped and "shorter than one clip" in dropped
    assert "Track00006" in dropped and "S05.flac" in dropped
    assert "Track00007" in dropped and "Track00008" not in dropped
    notes = "\n".join(r["notes"])
    assert "Track00002: piano.wav is missing" in notes and "Track00005: no rendered Piano stem" in notes
    assert [p.name.split(".")[0] for p in ds.paths] == ["Track00001", "Track00002", "Track00005"]
    assert r["clips"] == len(ds) == 4 + 3 + 4  # 2.0 s, 1.5 s, 2.0 s songs on a 0.5 s grid

    a1, a2, b = (ds.song(k) for k in range(3))  # (S, N) float16 memory maps
    assert a1.shape == (4, 32000) and a2.shape == (4, 24000) and b.shape == (4, 32000)
    mid = slice(2000, -2000)  # away from the resampler's edge effects
    np.testing.assert_allclose(a1[0, mid], sine(55, 2.0, 16000)[mid], atol=2e-3)  # 22.05 kHz -> 16 kHz
    assert not a1[1].any() and not a1[2].any()  # silent stems stay silent
    np.testing.assert_allclose(a2[2, mid], sine(440, 1.5, 16000)[mid], atol=2e-3)  # stereo 44.1 kHz -> mono 16 kHz
    assert not a2[3].any()  # missing piano.wav -> zeros
    guitars = sine(330, 2.0, 16000, 0.2) + sine(660, 2.0, 16000, 0.2)  # S01 + S02; S04 (Strings) left out
    np.testing.assert_allclose(b[2, mid], guitars[mid], atol=3e-3)
    np.testing.assert_allclose(b[1, mid], sine(100, 2.0, 16000, 0.2)[mid], atol=2e-3)
    assert not b[3].any()  # Piano not rendered
    # Validation clips sit on the grid and never change; training clips move.
    assert torch.equal(ds[1], torch.from_numpy(np.asarray(a1[:, C:2 * C], np.float32)))
    train = data.SlakhDataset(root, "train", C, cache_dir=cache, train=True)
    assert not torch.equal(train[1], train[1 + len(train)])


def test_slakh_cache_is_reused_and_invalidated(slakh, monkeypatch):
    root, cache = slakh
    decoded = []
    read = data.read_audio
    monkeypatch.setattr(data, "read_audio", lambda path, sr=16000: decoded.append(path) or read(path, sr))
    data.SlakhDataset(root, "train", C, cache_dir=cache)
    first = len(decoded)
    entry = next((cache / "train").glob("Track00001.*.npy"))
    mtime = entry.stat().st_mtime_ns
    data.SlakhDataset(root, "train", C, cache_dir=cache)
    # Only the songs that failed are read again; the cached ones are not re-decoded.
    assert {p.relative_to(root / "train").parts[0] for p in decoded[first:]} == {"Track00003", "Track00006"}
    assert entry.stat().st_mtime_ns == mtime
    # Rewriting a source file invalidates that song's entry (and only that one is decoded again).
    bass = root / "train" / "Track00001" / "bass.wav"
    write(bass, sine(110, 2.0, 22050), 22050)
    os.utime(bass, ns=(mtime, mtime + 10**9))
    del decoded[:]
    ds = data.SlakhDataset(root, "train", C, cache_dir=cache)
    assert {p.relative_to(root / "train").parts[0] for p in decoded} == {"Track00001", "Track00003", "Track00006"}
    assert len(list((cache / "train").glob("Track00001.*.npy"))) == 1
    np.testing.assert_allclose(ds.song(0)[0, 2000:-2000], sine(110, 2.0, 16000)[2000:-2000], atol=2e-3)


def test_slakh_cache_lives_outside_the_dataset(slakh, tmp_path, monkeypatch):
    root, _ = slakh
    before = sorted(root.rglob("*"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ds = data.SlakhDataset(root, "train", C)
    assert ds.cache_dir.is_relative_to(tmp_path / "xdg" / "synctrack" / "slakh")
    assert sorted(root.rglob("*")) == before  # nothing written next to the audio
    with pytest.raises(ValueError, match="inside the dataset"):
        data.SlakhDataset(root, "train", C, cache_dir=root / "cache")
    with pytest.raises(FileNotFoundError, match="validation"):
        data.SlakhDataset(root, "validation", C)


def test_slakh_cache_is_float32_and_flags_stems_of_zeros(slakh):
    """The cache holds what the official code reads from the files (float32), and a stem file of zeros (the MSDM
    release's absent instruments) is named in the report like a missing one."""
    root, cache = slakh
    ds = data.SlakhDataset(root, "train", C, cache_dir=cache, train=False)
    assert ds.song(0).dtype == np.float32
    for again in (ds, data.SlakhDataset(root, "train", C, cache_dir=cache, train=False)):  # decoded, then cached
        notes = "\n".join(again.report["notes"])
        assert "Track00001: drums is all zeros" in notes and "Track00001: guitar is all zeros" in notes
        assert "Track00001: bass" not in notes and "Track00005: piano is all zeros" not in notes


def test_babyslakh_wav_stems_without_split_folders(tmp_path):
    """BabySlakh: Track folders directly under the root (split='.'), 16 kHz stems/SXX.wav."""
    song = tmp_path / "babyslakh_16k" / "Track00001"
    song.mkdir(parents=True)
    (song / "metadata.yaml").write_text(METADATA.replace("audio_rendered: false", "audio_rendered: true"))
    for stem in ("S00", "S01", "S02", "S03", "S04", "S05"):
        write(song / "stems" / f"{stem}.wav", sine(220, 1.0, 16000), 16000)
    ds = data.SlakhDataset(tmp_path / "babyslakh_16k", ".", C, cache_dir=tmp_path / "cache", train=False)
    assert ds.report["kept"] == 1 and not ds.report["notes"]
    np.testing.assert_allclose(ds.song(0)[:, :100], np.stack([sine(220, 1.0, 16000)[:100] * g for g in (1, 1, 2, 1)]),
                               atol=1e-3)  # (S, N): bass, drums, guitar = S01 + S02, piano


def test_atomic_write_leaves_the_old_file_or_the_new_one_never_half(tmp_path):
    path = tmp_path / "a.txt"
    data.atomic_write(path, lambda tmp: tmp.write_text("old"))

    def half_then_fail(tmp):
        tmp.write_text("ne")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="cannot write .*a.txt.*No space left"):
        data.atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_write_piece_replaces_links_never_their_targets_and_deletes_nothing(tmp_path):
    victim = tmp_path / "victim.wav"
    write(victim, sine(100, 0.1, 16000), 16000)
    kept = victim.read_bytes()
    out = tmp_path / "out"
    (out / "drums").mkdir(parents=True)
    (out / "stem_0").mkdir()
    (out / "drums" / "x.wav").symlink_to(victim)              # a link where the drums link goes
    (out / "stem_0" / "x.wav").symlink_to(victim)             # a link where a stem goes
    write(out / "drums" / "other.wav", sine(100, 0.1, 16000), 16000)
    waves = np.stack([sine(hz, 0.5, 16000) for hz in (55, 110, 220, 440)]) * 3  # (S, N), peaks 0.9
    assert data.write_piece(out, "x", waves) == int((np.abs(waves.sum(0)) > 1).sum())  # only the mix clips
    assert victim.read_bytes() == kept and (out / "drums" / "other.wav").exists()
    assert os.readlink(out / "drums" / "x.wav") == os.path.join("..", "stem_1", "x.wav")
    assert not (out / "stem_0" / "x.wav").is_symlink()
    np.testing.assert_allclose(sf.read(out / "bass" / "x.wav")[0], waves[0], atol=1 / 2 ** 15)
    np.testing.assert_allclose(sf.read(out / "mix" / "x.wav")[0], np.clip(waves.sum(0), -1, 1), atol=1 / 2 ** 14)


def test_output_folder_refuses_non_empty_and_replaces_whole(tmp_path):
    out = tmp_path / "gt"
    assert data.output_folder(out) == out                      # absent
    out.mkdir()
    assert data.output_folder(out) == out                      # empty
    (out / "old.wav").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty: pass --overwrite"):
        data.output_folder(out)
    staging = data.output_folder(out, overwrite=True)
    assert staging != out and not staging.exists()
    staging.mkdir()
    (staging / "new.wav").write_bytes(b"y")
    data.finish_output(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["new.wav"] and sorted(p.name for p in tmp_path.iterdir()) == ["gt"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not a folder"):
        data.output_folder(tmp_path / "file", overwrite=True)


