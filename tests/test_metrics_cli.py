"""Issues 23 and 24 for the metrics commands: outputs are checked against inputs before any scoring, bad input is
named without a traceback, folders of songs get the paper's 10.24 s clips, and intervals of segments are by song."""
import errno
import json
import math
import pathlib
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data
import metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extras"))
import metric_study  # noqa: E402
import report  # noqa: E402

SR = 16000
TRACKS = ("bass", "drums", "guitar", "piano")


def click(seconds, bpm=120.0, sr=SR):
    """A click every beat: 5 ms bursts of a 1 kHz tone."""
    wave = np.zeros(int(seconds * sr), np.float32)
    burst = 0.8 * np.sin(2 * np.pi * 1000 * np.arange(int(0.005 * sr)) / sr)
    for t in np.arange(0, seconds, 60 / bpm):
        i = int(t * sr)
        wave[i:i + len(burst)] = burst[:len(wave) - i]
    return wave


def stem_folder(root, names=("a",), seconds=0.5):
    for i in range(4):
        for n in names:
            (root / f"stem_{i}").mkdir(parents=True, exist_ok=True)
            sf.write(str(root / f"stem_{i}" / f"{n}.wav"), np.zeros(int(seconds * SR), np.float32), SR)
    return root


@pytest.fixture
def no_scoring(monkeypatch):
    """Any beat tracking fails the test: the refusals must come before it."""
    def refuse(*_):
        raise AssertionError("scored before the arguments were checked")
    monkeypatch.setattr(metrics, "run_jobs", refuse)


# ---------------------------------------------------------------------------------------------------------------------
# A. Issue 23: outputs against inputs, before any scoring
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, flag, target", [
    (metrics.main, "--json", "stem_1/a.wav"),
    (metric_study.main, "--json", "stem_1/a.wav"),
    (metric_study.main, "--plot-dist", "stem_0/a.png"),
    (metric_study.main, "--plot", "stem_2"),
    (metric_study.main, "--cache", "cache"),
    (report.main, "--report", "stem_3/a.wav"),
    (report.main, "--json", "stem_0/a.wav"),
])
def test_an_output_inside_an_input_is_refused_before_scoring(tmp_path, capsys, no_scoring, command, flag, target):
    root = stem_folder(tmp_path / "in")
    before = (root / "stem_1" / "a.wav").read_bytes()
    extra = ["--report", str(tmp_path / "r.html")] if command is report.main and flag != "--report" else []
    assert command([str(root), flag, str(root / target), *extra]) == 1
    err = capsys.readouterr().err
    assert flag in err and "input DIR" in err and "Traceback" not in err
    assert (root / "stem_1" / "a.wav").read_bytes() == before


def test_report_audio_folder_and_fad_outputs_are_checked(tmp_path, capsys):
    import fad
    root = stem_folder(tmp_path / "in")
    assert report.main([str(tmp_path), "--report", str(tmp_path / "r.html")]) == 1  # a folder holding the page
    assert "--report" in capsys.readouterr().err
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    for args in (["--json", str(weights)], ["--cache", str(root / "x.npz")]):
        assert fad.main([str(root), str(root), "--vggish", str(weights), *args]) == 1
        err = capsys.readouterr().err
        assert args[0] in err and "would write over or into the input" in err
    assert weights.read_bytes() == b"weights"


def test_plot_dist_format_is_checked_first(tmp_path, capsys, no_scoring):
    root = stem_folder(tmp_path / "in")
    assert metric_study.main([str(root), "--plot-dist", str(tmp_path / "x.xyz")]) == 1
    err = capsys.readouterr().err
    assert "--plot-dist" in err and "unknown picture format" in err and ".png" in err


@pytest.mark.parametrize("args, flag", [(["--window", "inf"], "--window"), (["--fps", "nan"], "--fps"),
                                        (["--tl", "-1"], "--tl")])
def test_non_finite_settings_are_refused_by_argparse(tmp_path, capsys, no_scoring, args, flag):
    root = stem_folder(tmp_path / "in")
    for command in (metrics.main, metric_study.main):
        with pytest.raises(SystemExit):
            command([str(root), *args])
        assert f"argument {flag}" in capsys.readouterr().err


def test_negative_seed_is_refused_first(tmp_path, capsys, no_scoring):
    assert metric_study.main([str(stem_folder(tmp_path / "in")), "--seed", "-1"]) == 1
    assert "--seed" in capsys.readouterr().err


def test_a_full_disk_names_the_flag(tmp_path, capsys, monkeypatch):
    root = stem_folder(tmp_path / "in", seconds=1.0)  # silent: scored without madmom's RNN

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = tmp_path / "out"
    for command, flag, extra in ((metrics.main, "--json", []), (metric_study.main, "--json", ["--bootstrap", "0"]),
                                 (report.main, "--report", [])):
        assert command([str(root), flag, str(out / f"{flag[2:]}.x"), "--workers", "1", *extra]) == 1
        err = capsys.readouterr().err
        assert f"error: {flag}" in err and "No space left" in err and "choose another" in err
        assert "Traceback" not in err and not list(out.glob("*"))


def test_a_one_sample_file_says_it_is_too_short(tmp_path):
    root = stem_folder(tmp_path / "in", seconds=1.0)
    sf.write(str(root / "stem_2" / "a.wav"), np.full(1, 0.5, np.float32), SR)
    [reason] = metrics.evaluate(root, workers=1)["skipped"]
    assert "stem_2/a.wav: ValueError: too short for beat tracking: 1 samples" in reason and "AxisError" not in reason


def answers(pieces, **extra):
    return json.dumps({"format": report.FORMAT, "pieces": pieces, **extra})


GOOD = {"folder": "f", "name": "n", "metrics": {"cbs": 0.5}, "sync": 3, "stability": {"drums": 2}}


@pytest.mark.parametrize("content, message", [
    (answers(["not an object"]), "pieces[0]: missing or of the wrong kind: folder, name, metrics, sync, stability"),
    (answers([{**GOOD, "stability": [1, 2]}]), "pieces[0]: missing or of the wrong kind: stability"),
    (answers([{**GOOD, "stability": None}]), "pieces[0]: missing or of the wrong kind: stability"),
    (answers([{**GOOD, "metrics": {"cbs": "high"}}]), "pieces[0].metrics: cbs not a number or null"),
    (answers([{**GOOD, "folder": ["f"]}]), "pieces[0]: missing or of the wrong kind: folder"),
    (answers([GOOD], listener=["me"]), '"listener" not text'),
    ("[" * 100_000 + "]" * 100_000, "not a readable JSON file (RecursionError"),
])
def test_bad_answer_files_are_named_without_a_traceback(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert report.main(["ratings", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and message in err and "Traceback" not in err


def test_ratings_json_must_not_replace_an_answer_file(tmp_path, capsys):
    good = tmp_path / "a.json"
    good.write_text(answers([GOOD]))
    assert report.main(["ratings", str(good), "--json", str(good)]) == 1
    assert "--json" in capsys.readouterr().err and json.loads(good.read_text())["pieces"] == [GOOD]


def test_report_honours_tracks_of_a_musdb_layout(tmp_path):
    wave = click(4.0)
    for song in ("s1", "s2"):
        (tmp_path / "musdb" / song).mkdir(parents=True)
        for t in ("vocals", "other"):
            sf.write(str(tmp_path / "musdb" / song / f"{t}.wav"), wave, SR)
    out = tmp_path / "r.html"
    assert report.main([str(tmp_path / "musdb"), "--tracks", "vocals,other", "--report", str(out), "--workers",
                        "1", "--fps", "100"]) == 0
    page = out.read_text()
    assert page.count("<section class='card'") == 2 and "<b>vocals</b>" in page and "<b>other</b>" in page
    assert "not evaluated" not in page and "missing" not in page.split("<div id='cards'>")[1]


# ---------------------------------------------------------------------------------------------------------------------
# B. Issue 24: a folder of songs gets the paper's protocol, consecutive 10.24 s clips from 0 s at 16 kHz
# ---------------------------------------------------------------------------------------------------------------------

def test_a_folder_of_songs_is_cut_into_the_papers_clips(tmp_path, capsys):
    sr = 22050  # the MSDM Slakh files' rate
    wave = click(25.0, sr=sr)  # 2 whole clips of 10.24 s and a partial one
    for t in TRACKS:
        (tmp_path / "songs" / "Track00001").mkdir(parents=True, exist_ok=True)
        sf.write(str(tmp_path / "songs" / "Track00001" / f"{t}.wav"), wave, sr)
    (tmp_path / "songs" / "Track00002").mkdir()
    for t in TRACKS:  # shorter than a clip: the official loader skips it
        sf.write(str(tmp_path / "songs" / "Track00002" / f"{t}.wav"), wave[:sr * 5], sr)
    assert metrics.main([str(tmp_path / "songs"), "--workers", "1", "--json", str(tmp_path / "gt.json")]) == 0
    out = capsys.readouterr().out
    assert "consecutive 10.24 s clips from 0 s at 16 kHz" in out and "--segment full" in out
    r = json.loads((tmp_path / "gt.json").read_text())
    assert list(r["per_sample"]) == ["Track00001@0s", "Track00001@10.24s"]
    assert r["settings"]["segment"] == 10.24 and r["settings"]["rate"] == 16000
    assert r["segments"] == {"length": 10.24, "pieces": 2, "partial_dropped": 1}
    assert any("Track00002: sample skipped; 5 s is shorter than one 10.24 s segment" in s for s in r["skipped"])
    for k, piece in enumerate(r["per_sample"].values()):
        assert piece["sample"] == "Track00001" and piece["start"] == 10.24 * k
        assert piece["duration"] == pytest.approx(10.24)  # 163 840 samples at 16 kHz
    # a clip is scored exactly as the same 10.24 s read at 16 kHz and cut into a file
    cut_dir = tmp_path / "cut"
    for i, t in enumerate(TRACKS):
        clip = data.read_audio(tmp_path / "songs" / "Track00001" / f"{t}.wav", start=225792, stop=2 * 225792)[0]
        (cut_dir / f"stem_{i}").mkdir(parents=True, exist_ok=True)
        sf.write(str(cut_dir / f"stem_{i}" / "c.wav"), clip, SR, subtype="FLOAT")
    one = metrics.evaluate(cut_dir, workers=1)["per_sample"]["c"]
    assert one["beats"] == r["per_sample"]["Track00001@10.24s"]["beats"]


def test_metric_study_segment_choices():
    assert metric_study.protocol("paper") == (10.24, 16000)
    assert metric_study.protocol("full") == (None, None) and metric_study.protocol(5.0) == (5.0, None)


# ---------------------------------------------------------------------------------------------------------------------
# C. Issue 24: segments of one song are resampled together (cluster bootstrap)
# ---------------------------------------------------------------------------------------------------------------------

def synthetic(n_songs, copies, seed=0):
    """An evaluate()-shaped result: n_songs songs, each cut into `copies` identical segments."""
    rng = np.random.default_rng(seed)
    per_sample = {}
    for i in range(n_songs):
        value = {"irs": {"a": rng.normal(0.02, 0.005), "b": rng.normal(0.03, 0.005)}, "cbs": rng.normal(0.5, 0.1),
                 "cbd": {k: rng.normal(0.25, 0.05) for k in metrics.CBD_KEYS}}
        for k in range(copies):
            per_sample[f"s{i}@{10 * k}s"] = {**value, "sample": f"s{i}", "start": 10.0 * k}
    return {"tracks": ["a", "b"], "per_sample": per_sample}


def test_identical_segments_give_intervals_as_wide_as_by_song():
    by_song, segments = synthetic(30, 1), synthetic(30, 3)
    a = metric_study.bootstrap_intervals(by_song, n_boot=500, seed=2)
    b = metric_study.bootstrap_intervals(segments, n_boot=500, seed=2)
    assert b["cbs"] == pytest.approx(a["cbs"], rel=1e-9) and b["irs"]["mean"] == pytest.approx(a["irs"]["mean"])
    assert b["cbd"]["median"] == pytest.approx(a["cbd"]["median"], rel=1e-9)
    cmp_a = metric_study.compare(by_song, synthetic(30, 1, seed=1), n_boot=500, seed=3)
    cmp_b = metric_study.compare(segments, synthetic(30, 3, seed=1), n_boot=500, seed=3)
    assert cmp_b["paired"] and cmp_b["ci"]["cbs"] == pytest.approx(cmp_a["ci"]["cbs"], rel=1e-9)
    width = [c["ci"]["cbs"][1] - c["ci"]["cbs"][0] for c in (cmp_a, cmp_b)]
    assert not math.isnan(width[0]) and width[1] == pytest.approx(width[0], rel=1e-9)
