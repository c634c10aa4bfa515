"""The metric study of the paper's App. A (extras/metric_study.py, on metrics.py): grids of beat-tracking settings
(Table A1), any stem set (Table A4), segments (Table A6), the activation cache, bootstrap intervals, comparing two
folders, beat plots and distribution figures (Figs. A3-A8)."""
import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf

import data
import metrics
from extras import metric_study
from test_metrics import FIXTURE, NAMES, OFFICIAL, SR, click_track, write

NUMBERS = ("irs", "cbs", "cbd", "counts", "per_sample", "n_samples", "skipped", "notes")


def same(a, b):
    """Equal numbers, NaN equal to NaN (through the JSON form)."""
    return json.dumps(metrics._json_safe(a), sort_keys=True) == json.dumps(metrics._json_safe(b), sort_keys=True)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """The official fixture through metric_study.evaluate once per session (24 files through madmom in 2 processes),
    its activations cached for the command-line tests below."""
    cache = tmp_path_factory.mktemp("activations")
    return metric_study.evaluate(FIXTURE, workers=2, cache=cache), cache


# ---------------------------------------------------------------------------------------------------------------------
# Grid of beat-tracking settings (Table A1)
# ---------------------------------------------------------------------------------------------------------------------

def test_grid_rows_equal_single_runs_exactly(tmp_path):
    for name in ("guitar_shift.wav", "piano_silent.wav"):
        for i in range(4):
            (tmp_path / f"stem_{i}").mkdir(exist_ok=True)
            shutil.copy(FIXTURE / f"stem_{i}" / name, tmp_path / f"stem_{i}" / name)
    grid = metric_study.evaluate(tmp_path, fps=[100, 150], tl=[50, 100], workers=2, bootstrap=50)
    assert [(g["settings"]["fps"], g["settings"]["tl"]) for g in grid["grid"]] == [(100, 50), (100, 100),
                                                                                   (150, 50), (150, 100)]
    assert same({k: grid[k] for k in NUMBERS}, {k: grid["grid"][0][k] for k in NUMBERS})  # top level = first row
    for row in grid["grid"]:
        fps, tl = row["settings"]["fps"], row["settings"]["tl"]
        single = metrics.evaluate(tmp_path, fps=fps, tl=tl, workers=2)  # the core: one setting, no RNN sharing
        single["ci"] = metric_study.bootstrap_intervals(single, 50)
        assert same({k: row[k] for k in (*NUMBERS, "ci")}, {k: single[k] for k in (*NUMBERS, "ci")}), (fps, tl)
    beats = [g["per_sample"]["guitar_shift"]["beats"]["drums"] for g in grid["grid"]]
    assert beats[0] != beats[2]  # the settings do change the beats: the rows are not copies of one run


# ---------------------------------------------------------------------------------------------------------------------
# Any stem set (Table A4) and segments (Table A6), on click tracks with known answers
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def click():
    return click_track(seconds=6.0)


def check_synchronous(result, n_tracks, n_beats):
    """Identical click tracks at 120 BPM, tracked at --fps 100: steady, fully synchronous beats every 0.5 s."""
    [piece] = result["per_sample"].values()
    assert len(piece["beats"]) == n_tracks
    assert all(abs(len(b) - n_beats) <= 1 for b in piece["beats"].values())
    assert all(np.median(np.diff(b)) == pytest.approx(0.5, abs=0.02) for b in piece["beats"].values())
    assert result["irs"]["mean"] < 0.01
    assert result["cbs"] == pytest.approx(1.0, abs=1e-9)
    assert result["cbd"] == {"mean": 0.0, "std": 0.0, "median": 0.0}


@pytest.mark.parametrize("n_tracks", [2, 4, 5])
def test_stem_folders_for_any_number_of_tracks(tmp_path, click, n_tracks):
    for i in range(n_tracks):
        (tmp_path / f"stem_{i}").mkdir()
        sf.write(str(tmp_path / f"stem_{i}" / "song.wav"), click, SR)
    result = metrics.evaluate(tmp_path, fps=100, workers=2)
    names = list(data.TRACKS) if n_tracks == 4 else [f"stem_{i}" for i in range(n_tracks)]
    assert result["tracks"] == names and list(result["irs"]) == [*names, "mean"]
    check_synchronous(result, n_tracks, n_beats=12)


def test_named_tracks_in_both_folder_layouts(tmp_path, click):
    stems = ["vocals", "drums", "bass", "other", "keys"]
    for stem in stems:
        (tmp_path / "named" / stem).mkdir(parents=True)
        sf.write(str(tmp_path / "named" / stem / "song.wav"), click, SR)
        (tmp_path / "per-song" / "Song A").mkdir(parents=True, exist_ok=True)
        sf.write(str(tmp_path / "per-song" / "Song A" / f"{stem}.wav"), click, SR)
    sf.write(str(tmp_path / "per-song" / "Song A" / "mixture.wav"), click, SR)  # MUSDB18's mixture: not a track
    layout, samples, problems = metrics.find_samples(tmp_path / "per-song", stems)
    assert layout == "per-song" and list(samples["Song A"]) == stems and problems == []
    result = metrics.evaluate(tmp_path / "named", fps=100, workers=2, tracks=stems)
    assert result["layout"] == "named" and result["tracks"] == stems
    check_synchronous(result, 5, n_beats=12)
    with pytest.raises(ValueError, match="at least 2 distinct names"):
        metrics.find_samples(tmp_path / "named", ["drums"])


def test_segments_of_a_click_track(tmp_path):
    wave = click_track(seconds=25.0)  # 2 whole 10 s segments and a partial one of 5 s
    for i in range(2):
        (tmp_path / "song" / f"stem_{i}").mkdir(parents=True)
        sf.write(str(tmp_path / "song" / f"stem_{i}" / "x.wav"), wave, SR)
        (tmp_path / "cut" / f"stem_{i}").mkdir(parents=True)
        for k in range(2):  # the same segments, cut into files by hand
            sf.write(str(tmp_path / "cut" / f"stem_{i}" / f"x{k}.wav"), wave[k * 10 * SR:(k + 1) * 10 * SR], SR)
    result = metric_study.evaluate(tmp_path / "song", fps=100, workers=2, segment=10.0)
    assert list(result["per_sample"]) == ["x@0s", "x@10s"]
    assert result["segments"] == {"length": 10.0, "pieces": 2, "partial_dropped": 1}
    for k, piece in enumerate(result["per_sample"].values()):
        assert piece["sample"] == "x" and piece["start"] == 10.0 * k and piece["duration"] == 10.0
        assert all(abs(len(b) - 20) <= 1 for b in piece["beats"].values())  # 120 BPM: a beat every 0.5 s
        assert piece["cbs"] == pytest.approx(1.0, abs=1e-9) and piece["cbd"]["mean"] == 0.0
    cut = metrics.evaluate(tmp_path / "cut", fps=100, workers=2)
    for k in range(2):  # a segment is scored exactly as if it had been cut into a file
        a, b = result["per_sample"][f"x@{10 * k}s"], cut["per_sample"][f"x{k}"]
        assert same({key: a[key] for key in ("beats", "irs", "cbs", "cbd")}, {key: b[key] for key in
                                                                               ("beats", "irs", "cbs", "cbd")})
    whole = metric_study.evaluate(tmp_path / "song", fps=100, workers=1, segment=None)
    assert whole["n_samples"] == 1 and whole["per_sample"]["x"]["duration"] == 25.0


# ---------------------------------------------------------------------------------------------------------------------
# The activation cache and the command line
# ---------------------------------------------------------------------------------------------------------------------

def test_command_line_reuses_cache_and_writes_json_and_plots(cached, tmp_path, capsys, monkeypatch):
    _, cache = cached
    assert len(list(cache.glob("*.npz"))) == 24  # one activation file per track file
    monkeypatch.setattr(metrics, "_rnn", None)  # running the RNN now would fail: every activation must be cached
    out_json, plots = tmp_path / "r.json", tmp_path / "plots"
    assert metric_study.main([str(FIXTURE), "--cache", str(cache), "--json", str(out_json), "--plot", str(plots),
                              "--workers", "1"]) == 0
    out, _ = capsys.readouterr()
    assert "IRS (Eq. 6" in out and f"{OFFICIAL['cbs']:.4f} [" in out and f"{OFFICIAL['cbd']['median']:.4f}" in out
    assert "over 5 samples; 1 skipped (< 2 beats)" in out  # piano: piano_silent has no beat
    written = json.loads(out_json.read_text())
    assert written["cbs"] == pytest.approx(OFFICIAL["cbs"], rel=1e-9) and len(written["per_sample"]) == 6
    assert sorted(p.name for p in plots.iterdir()) == sorted(n.replace(".wav", ".png") for n in NAMES)


def test_cache_entry_changes_with_the_file_and_the_span(tmp_path):
    f = tmp_path / "a.wav"
    write(f)
    entry = metric_study._cache_file(tmp_path, f, 0, None)
    assert entry != metric_study._cache_file(tmp_path, f, 0, 4000)  # a segment has its own activations
    write(f, seconds=0.6)
    assert metric_study._cache_file(tmp_path, f, 0, None) != entry
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--cache takes a folder"):
        metric_study.evaluate(tmp_path, cache=tmp_path / "file")


# ---------------------------------------------------------------------------------------------------------------------
# Bootstrap intervals and comparing folders
# ---------------------------------------------------------------------------------------------------------------------

def synthetic(rng, n, cbs_mean=0.5, spread=0.1, prefix="p"):
    """An evaluate()-shaped result with n pieces whose per-piece values are drawn around known means."""
    per_sample = {}
    for i in range(n):
        irs_a, irs_b = rng.normal(0.02, 0.005), (math.nan if i % 5 == 0 else rng.normal(0.03, 0.005))
        per_sample[f"{prefix}{i:03d}"] = {"irs": {"a": irs_a, "b": irs_b}, "cbs": rng.normal(cbs_mean, spread),
                                          "cbd": {k: rng.normal(0.25, 0.05) for k in metrics.CBD_KEYS}}
    return {"tracks": ["a", "b"], "per_sample": per_sample}


def test_bootstrap_intervals_cover_the_true_value_and_are_seeded():
    rng = np.random.default_rng(0)
    hits, widths = [], []
    for _ in range(200):  # 200 sets of 40 pieces drawn with a known mean and spread
        ci = metric_study.bootstrap_intervals(synthetic(rng, 40), n_boot=400, seed=1)
        hits.append([ci["cbs"][0] <= 0.5 <= ci["cbs"][1], ci["irs"]["mean"][0] <= 0.025 <= ci["irs"]["mean"][1]])
        widths.append(ci["cbs"][1] - ci["cbs"][0])
    coverage = np.mean(hits, axis=0)
    assert np.all((coverage > 0.88) & (coverage < 0.99)), coverage  # nominal 0.95; 200 sets: ± 0.03 sampling error
    assert np.mean(widths) == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(40), rel=0.1)  # the normal theory width
    one = synthetic(np.random.default_rng(3), 30)
    assert metric_study.bootstrap_intervals(one, seed=7) == metric_study.bootstrap_intervals(one, seed=7)
    assert metric_study.bootstrap_intervals(one, seed=7) != metric_study.bootstrap_intervals(one, seed=8)


def test_bootstrap_resamples_give_the_reported_numbers():
    """_summaries of the untouched table are evaluate()'s numbers: the intervals are around what is printed."""
    result = synthetic(np.random.default_rng(4), 25)
    _, table = metric_study._piece_table(result)
    point = metric_study._nest(metric_study._summaries(table, 2).tolist(), ["a", "b"])
    values = list(result["per_sample"].values())
    assert point["cbs"] == pytest.approx(np.mean([v["cbs"] for v in values]), rel=1e-12)
    assert point["irs"]["b"] == pytest.approx(np.nanmean([v["irs"]["b"] for v in values]), rel=1e-12)
    assert point["irs"]["mean"] == pytest.approx((point["irs"]["a"] + point["irs"]["b"]) / 2, rel=1e-12)


def test_compare_with_itself_and_with_a_shifted_set():
    a = synthetic(np.random.default_rng(5), 40)
    same_set = metric_study.compare(a, a, n_boot=300)
    assert same_set["paired"] and same_set["n"] == [40, 40]
    lo, hi = same_set["ci"]["cbs"]
    assert lo <= 0 <= hi and same_set["diff"]["cbs"] == 0
    assert all(math.isnan(v) for v in metric_study.compare(a, a, n_boot=0)["ci"]["cbs"])  # --bootstrap 0: no interval
    shifted = synthetic(np.random.default_rng(6), 50, cbs_mean=0.6, prefix="q")  # other names: unpaired
    cmp = metric_study.compare(a, shifted, n_boot=300)
    assert not cmp["paired"] and cmp["n"] == [40, 50]
    lo, hi = cmp["ci"]["cbs"]
    assert 0 < lo < 0.1 < hi  # B − A: the true difference 0.1 inside, 0 outside
    redrawn = synthetic(np.random.default_rng(7), 40, prefix="q")  # same distribution, other pieces
    lo, hi = metric_study.compare(a, redrawn, n_boot=300)["ci"]["cbd"]["mean"]
    assert lo <= 0 <= hi


def test_command_line_compare_of_a_folder_with_itself(cached, tmp_path, capsys):
    _, cache = cached
    out = tmp_path / "c.json"
    assert metric_study.main([str(FIXTURE), "--compare", str(FIXTURE), "--cache", str(cache), "--json", str(out),
                              "--bootstrap", "200", "--plot-dist", str(tmp_path / "d.png"), "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "paired over the same 6 pieces" in text
    rows = text.split("B − A at")[1].splitlines()[2:11]  # the 9 numbers
    assert rows[0].startswith("  IRS bass") and rows[-1].startswith("  CBD median")
    assert not any(row.endswith("*") for row in rows)  # no number differs
    [cmp] = json.loads(out.read_text())["compare"]
    assert cmp["paired"] and all(lo <= 0 <= hi for lo, hi in (*cmp["ci"]["irs"].values(), cmp["ci"]["cbs"]))
    assert (tmp_path / "d.png").stat().st_size > 10_000


def test_interval_format():
    assert metric_study._fmt_ci(0.52061, [0.4912, 0.5523]) == "0.5206 [0.49, 0.55]"
    assert metric_study._fmt_ci(0.0123, [0.0081, 0.0172]) == "0.0123 [0.008, 0.017]"
    assert metric_study._fmt_ci(0.5, [math.nan, math.nan]) == "0.5000"


# ---------------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------------

def test_distribution_figure_of_several_folders(tmp_path):
    rng = np.random.default_rng(8)
    runs = [(label, {**synthetic(rng, n), "n_samples": n}) for label, n in (("gt", 30), ("model", 12), ("one", 1))]
    png = tmp_path / "dist.png"
    metric_study.plot_distributions(png, runs)
    assert png.stat().st_size > 20_000
    panels = [title for title, _ in metric_study._distribution_panels(["a", "b"])]
    assert panels == ["IRS a ↓", "IRS b ↓", "CBS ↑", "CBD mean ↓", "CBD std ↓", "CBD median ↓"]
