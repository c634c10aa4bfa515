"""The metric study of SyncTrack's App. A: how IRS, CBS and CBD behave under other beat-tracking settings, other
stems, other segment lengths, and how sure the numbers are. The metrics themselves are metrics.py's.

Paper: "SyncTrack: Rhythmic Stability and Synchronization in Multi-Track Music Generation" (ICLR 2026), App. A:
settings grid (A.1-A.2, Table A1), distributions (Figs. A3, A4, A7, A8), beat plots (Figs. A5, A6), MUSDB18 stems
(A.7, Table A4; metrics.py --tracks does these too), segment lengths (A.9, Table A6).

    python extras/metric_study.py samples/ --fps 100,150,200 --tl 50,100     # the sensitivity grid of Table A1
    python extras/metric_study.py gt/ --segment 10                          # 10 s segments as samples (Table A6)
    python extras/metric_study.py model_a/ --compare model_b/               # B − A with 95 % intervals
    python extras/metric_study.py gt/ model_a/ model_b/ --plot-dist d.png   # distributions side by side
    python extras/metric_study.py slakh/test --cache activations/ --plot plots/ --json gt.json

Map of the file
    1. evaluate(root, ...)              RNN once per file (process pool, activation --cache), DBN once per (fps, tl)
                                        setting, segments; each setting scored by metrics.score as metrics.evaluate
                                        scores its one setting (tests check the numbers are equal)
    2. bootstrap_intervals, compare     95 % bootstrap intervals over pieces; the difference of two folders
    3. plot_beats, plot_distributions   per-piece spectrograms with beats; distributions over pieces
    4. command line

The RNN's activations do not depend on fps or tl, so a grid runs the RNN once per file and only the DBN per setting.
A "piece" is what is scored as one sample: a whole sample, or one segment of it (--segment).
"""
import argparse
import hashlib
import math
import os
import sys
import warnings
from itertools import product
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `python extras/metric_study.py` works
import metrics  # noqa: E402
import synctrack  # noqa: E402  (log_mel, the model's front end, draws the beat plots)
from data import atomic_write, check_outputs, cut, find_samples, layout_of, read_audio  # noqa: E402
from metrics import CBD_KEYS, _fmt, _print_list  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------------
# 1. Evaluating a folder: RNN once per file (or cached), DBN once per setting, pieces scored
# ---------------------------------------------------------------------------------------------------------------------

def _savez(path, arrays):
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a temporary file's name
        np.savez(f, **arrays)


def _cache_file(cache, path, start, stop, rate=None):
    """The cache entry of frames [start, stop) of `path`: keyed by the file's real path (links to one file share an
    entry), size, mtime and span, so a changed file is never served stale. fps and tl are not in the key: the entry
    holds the RNN's activations, the DBN runs after."""
    info = os.stat(path)
    key = f"activations-v2|{os.path.realpath(path)}|{info.st_size}|{info.st_mtime_ns}|{start}|{stop}"
    key += f"|{rate}" if rate else ""  # read at another rate: other activations
    return Path(cache) / (hashlib.sha1(key.encode()).hexdigest() + ".npz")


def _read_activations(path, start, stop, cache, rate=None):
    """{"act", "duration", "silent", "peak"} of one span of one file read at `rate` (None: its own); from the cache
    folder when it holds them."""
    entry = _cache_file(cache, path, start, stop, rate) if cache else None
    if entry is not None and entry.exists():
        try:
            with np.load(entry) as z:
                return {"act": z["act"], **{k: z[k].item() for k in ("duration", "silent", "peak")}}
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry (e.g. the disk filled up while it was written): computed again, rewritten
    wave, sr = read_audio(path, sr=rate, start=start, stop=stop, channels="all")  # metrics: FFmpeg's 44.1 kHz
    act = metrics.activations(wave, sr)
    got = {"act": np.zeros((0, 2), np.float32) if act is None else act, "duration": len(wave) / sr,
           "silent": act is None, "peak": float(np.abs(wave).max())}
    if entry is not None:
        atomic_write(entry, lambda tmp: _savez(tmp, got))
    return got


def _span_job(job):
    """Worker: the activations of one span (RNN or cache), then the DBN once per (fps, tl) setting: metrics'
    _file_beats result with one beat list per setting. Errors come back as text, so one bad file stops nothing."""
    span, settings, cache, rate = job
    try:
        got = _read_activations(span.path, span.start, span.stop, cache, rate)
        return {"beats": [metrics.dbn_beats(got["act"], fps, tl).tolist() for fps, tl in settings],
                **{k: got[k] for k in ("duration", "silent", "peak")}}
    except Exception as err:  # reported against the file; the other files are still evaluated
        why = str(err).removeprefix(f"{span.path}: ")  # read_audio names the file; metrics.score names it once
        return {"error": f"{type(err).__name__}: {why}"}


def _as_list(x):
    return [float(v) for v in x] if isinstance(x, (list, tuple)) else [float(x)]


def evaluate(root, window=0.15, fps=150, tl=100, workers=None, cache=None, progress=False, tracks=None,
             segment=None, bootstrap=0, seed=0, rate=None):
    """IRS, CBS and CBD of every complete sample under `root` (any layout of find_samples; `tracks`: its names).

    fps, tl: a number, or lists (a grid, Table A1): every (fps, tl) combination is scored, the RNN running once per
    file and the DBN once per setting. `workers` processes (default: all cores); `cache`: a folder of RNN
    activations keyed by file and span (reused by any fps, tl). `segment`: score consecutive segments of that many
    seconds as the samples (Table A6), None: whole files; `rate`: read the audio at this rate first (None: its own;
    protocol("paper"): the paper's 10.24 s clips at 16 kHz). Only complete samples count, for IRS too (the official
    IRS.py also averages files whose sample lacks a track). `bootstrap`: number of resamples for 95 % intervals
    (0: none). Returns metrics.evaluate's dict for the first setting, and:
      settings["segment"]; ci (with bootstrap); with segment: segments {"length", "pieces", "partial_dropped"} and
      per piece its "sample" and "start"; with several settings: grid, one such dict per setting.
    """
    settings = list(product(_as_list(fps), _as_list(tl)))
    if cache:
        if Path(cache).exists() and not Path(cache).is_dir():
            raise ValueError(f"{cache}: --cache takes a folder (one activation file per track), this is a file")
        Path(cache).mkdir(parents=True, exist_ok=True)
    layout, samples, skipped = find_samples(root, tracks)
    tracks = layout_of(root, tracks)[1]
    pieces, where, unsegmented, dropped = cut(samples, tracks, segment)
    spans = [span for keys in pieces.values() for span in keys.values()]
    jobs = [(span, settings, cache, rate) for span in spans]
    results = dict(zip(spans, metrics.run_jobs(_span_job, jobs, workers, progress)))
    grid = []
    for k, (f, t) in enumerate(settings):
        beats_k = {s: {**r, "beats": r["beats"][k]} if "beats" in r else r for s, r in results.items()}  # setting k
        per_sample, bad, notes = metrics.score(pieces, beats_k, tracks, window)
        if segment is not None:
            for name, v in per_sample.items():
                v["sample"], v["start"] = where[name]
        r = {"root": str(root), "layout": layout, "tracks": tracks,
             "settings": {"window": window, "fps": f, "tl": t, "segment": segment, "rate": rate},
             **metrics.summarise(per_sample, tracks),
             "skipped": skipped + unsegmented + bad, "notes": notes, "per_sample": per_sample}
        if segment is not None:
            r["segments"] = {"length": segment, "pieces": len(per_sample), "partial_dropped": dropped}
        if bootstrap:
            r["ci"] = bootstrap_intervals(r, bootstrap, seed)
        grid.append(r)
    return {**grid[0], "grid": grid} if len(grid) > 1 else grid[0]



# ---------------------------------------------------------------------------------------------------------------------
# 2. Uncertainty: bootstrap intervals over pieces, and the difference of two folders
# ---------------------------------------------------------------------------------------------------------------------

def _piece_table(result):
    """(piece names, (n_pieces, S + 4) array): per piece the IRS of every track, CBS, CBD mean, std, median."""
    tracks, per_sample = result["tracks"], result["per_sample"]
    rows = [[v["irs"][t] for t in tracks] + [v["cbs"]] + [v["cbd"][k] for k in CBD_KEYS] for v in per_sample.values()]
    return list(per_sample), np.array(rows, dtype=float).reshape(len(rows), len(tracks) + 4)


def _songs(result):
    """Per piece, the index of the song it comes from: a segment's sample (--segment), else the piece itself."""
    songs = [v.get("sample", name) for name, v in result["per_sample"].items()]
    index = {song: i for i, song in enumerate(dict.fromkeys(songs))}
    return np.array([index[song] for song in songs], dtype=int)


def _by_song(table, songs):
    """(n_songs, S + 4) sums of the values of each song's pieces and (n_songs, S + 4) counts of those values."""
    shape = (songs.max(initial=-1) + 1, table.shape[1])
    sums, counts = np.zeros(shape), np.zeros(shape)
    np.add.at(sums, songs, np.nan_to_num(table))
    np.add.at(counts, songs, ~np.isnan(table))
    return sums, counts


def _summaries(table, n_tracks, counts=None):
    """(..., n_pieces, S + 4) per-piece values -> (..., S + 5): every column's mean over the pieces that have a
    value, then the IRS mean over tracks: the numbers evaluate() reports, for any set of pieces. With `counts`:
    `table` holds sums of values over groups of pieces, `counts` how many values each sum adds."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a column without any value is NaN
        if counts is None:
            columns = np.nansum(table, axis=-2) / np.sum(~np.isnan(table), axis=-2)
        else:
            columns = table.sum(axis=-2) / counts.sum(axis=-2)
        irs_tracks = columns[..., :n_tracks]
        irs_mean = np.nansum(irs_tracks, axis=-1) / np.sum(~np.isnan(irs_tracks), axis=-1)
    return np.concatenate([columns, irs_mean[..., None]], axis=-1)


def _nest(values, tracks):
    """Arrange S + 5 values (in _summaries' order) like evaluate()'s numbers: {"irs": {track, ..., "mean"}, "cbs",
    "cbd": {"mean", "std", "median"}}."""
    v, s = list(values), len(tracks)
    return {"irs": {**dict(zip(tracks, v[:s])), "mean": v[s + 4]}, "cbs": v[s],
            "cbd": dict(zip(CBD_KEYS, v[s + 1:s + 4]))}


def _resampled(tables, n_tracks, n_boot, seed, paired=False, songs=None):
    """(n_boot, S + 5) summaries of resampled pieces, seeded: songs drawn with replacement, each with all of its
    pieces (a cluster bootstrap: the segments of one song are not independent samples). songs: per table, each
    piece's song index (_songs); None: every piece its own song. Two tables: the second's summaries minus the
    first's, drawn with the same song indices for both when paired, independently otherwise."""
    rng = np.random.default_rng(seed)
    songs = songs or [np.arange(len(t)) for t in tables]
    grouped = [_by_song(t, g) for t, g in zip(tables, songs)]  # [(sums, counts)], each (n_songs, S + 4)
    chunk = max(1, 4_000_000 // sum(2 * s.size for s, _ in grouped))  # resamples per step: about 32 MB of float64
    out = []
    for done in range(0, n_boot, chunk):
        c = min(chunk, n_boot - done)
        draws = [rng.integers(0, len(grouped[0][0]), (c, len(grouped[0][0])))]
        draws += [draws[0] if paired else rng.integers(0, len(s), (c, len(s))) for s, _ in grouped[1:]]
        s = [_summaries(sums[d], n_tracks, counts[d]) for (sums, counts), d in zip(grouped, draws)]  # (c, n, S + 4)
        out.append(s[0] if len(s) == 1 else s[1] - s[0])
    return np.concatenate(out)


def _interval(resampled, level):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a number no resample has a value for stays NaN
        lo, hi = np.nanquantile(resampled, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def bootstrap_intervals(result, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap intervals of every number of an evaluate() result: its pieces are drawn with replacement
    `n_boot` times (seeded; segments by song, see _resampled) and each number recomputed as evaluate() does.
    Returns {"irs": {track: [lo, hi], ..., "mean"}, "cbs": [lo, hi], "cbd": {"mean", "std", "median"}, "n_boot",
    "seed", "level"}."""
    _, table = _piece_table(result)
    s = len(result["tracks"])
    ci = (_interval(_resampled([table], s, n_boot, seed, songs=[_songs(result)]), level) if len(table) and n_boot
          else [[math.nan] * 2] * (s + 5))
    return {**_nest(ci, result["tracks"]), "n_boot": n_boot, "seed": seed, "level": level}


def compare(a, b, n_boot=1000, seed=0, level=0.95):
    """The difference b − a of every number of two evaluate() results, with a bootstrap interval.

    Paired (the same resampled piece names on both sides) when both hold exactly the same pieces, e.g. two models'
    arrangements of the same songs; unpaired (independent resamples) otherwise; segments are drawn by song. An
    interval that excludes 0 says the two folders differ in that number at this level. Returns {"paired",
    "n": [n_a, n_b], "diff": {...}, "ci": {...} (both shaped like evaluate()'s numbers), "n_boot", "seed", "level"}.
    """
    if a["tracks"] != b["tracks"]:
        raise ValueError(f"cannot compare tracks {a['tracks']} with {b['tracks']}; pass the same --tracks")
    (names_a, ta), (names_b, tb) = _piece_table(a), _piece_table(b)
    s, paired = len(a["tracks"]), bool(names_a) and names_a == names_b
    diff = _summaries(tb, s) - _summaries(ta, s)
    ci = (_interval(_resampled([ta, tb], s, n_boot, seed, paired, [_songs(a), _songs(b)]), level)
          if len(ta) and len(tb) and n_boot
          else [[math.nan] * 2] * (s + 5))  # no pieces on a side, or no resamples asked for: no interval
    return {"paired": paired, "n": [len(ta), len(tb)], "diff": _nest(diff.tolist(), a["tracks"]),
            "ci": _nest(ci, a["tracks"]), "n_boot": n_boot, "seed": seed, "level": level}


# 3. Figures: beats of one piece (Figs. A5/A6), distributions over pieces (Figs. A3, A4, A7, A8)
# ---------------------------------------------------------------------------------------------------------------------

PLOT_RANGE_DB = 80.0  # colour range below the loudest band of the piece, shared by its tracks


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def _log_mel_db(wave, max_frames=4000):
    """The model's log-mel (synctrack.log_mel: 16 kHz, 10 ms hop, 64 Slaney bands up to 8 kHz) of one track as
    (bands, frames) power in dB, frames max-pooled so that a full song keeps at most `max_frames`; and the hop in s."""
    mel = synctrack.log_mel(torch.from_numpy(wave)).T.numpy()  # (T, F) -> (F, T), ln of the mel magnitude
    hop = round(len(wave) / max(1, mel.shape[1]))  # samples per frame: synctrack's hop
    pool = max(1, math.ceil(mel.shape[1] / max_frames))
    frames = mel.shape[1] // pool
    pooled = mel[:, :frames * pool].reshape(len(mel), frames, pool).max(axis=2)  # (F, T) -> (F, T / pool, pool)
    return 20 / math.log(10) * pooled, pool * hop / synctrack.SAMPLE_RATE  # ln |X| -> 20 log10 |X|, dB of power


def plot_beats(png, name, files, sample, fps):
    """Write one PNG: a log-mel spectrogram per track on one colour scale, its beats drawn over it, one time axis
    in true seconds with light grid lines through all tracks, and each track's beat count and IRS in its label.

    files: {track: path}; sample: an evaluate() per_sample entry (a segment is drawn at its place in the file).
    Beat times are multiplied by fps / 100 so that they sit on the audio whatever --fps was (at the default 150
    the reported times are 2/3 of the true ones).
    """
    plt = _pyplot()
    tracks, start = list(sample["beats"]), sample.get("start", 0.0)
    specs = []
    for t in tracks:
        sr = sf.info(str(files[t])).samplerate
        first = int(round(start * sr))
        stop = first + int(round(sample["duration"] * sr))
        specs.append(_log_mel_db(read_audio(files[t], sr=synctrack.SAMPLE_RATE, start=first, stop=stop)[0]))
    top = max(spec.max() for spec, _ in specs)  # one colour scale: a quiet track looks quiet
    bands = len(specs[0][0])
    fig, axes = plt.subplots(len(tracks), 1, figsize=(12, 1.3 * len(tracks) + 1.0), sharex=True, squeeze=False,
                             layout="constrained")
    for ax, t, (spec, hop) in zip(axes[:, 0], tracks, specs):
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - PLOT_RANGE_DB, vmax=top,
                          extent=(start, start + spec.shape[1] * hop, 0, bands), interpolation="nearest")
        true = start + np.asarray(sample["beats"][t]) * fps / metrics.RNN_FPS
        ax.vlines(true, 0, bands, color="#3fd7ff", linewidth=1.0)
        ax.grid(axis="x", color="white", alpha=0.4, linewidth=0.6)
        ax.set_yticks([0, bands], ["0", f"{synctrack.SAMPLE_RATE // 2000} kHz"], fontsize=7)  # mel bands
        ax.set_ylabel(f"{t}\n{len(true)} beats\nIRS {_fmt(sample['irs'][t])}", rotation=0, ha="right", va="center")
    axes[-1, 0].set_xlim(start, start + sample["duration"])
    axes[-1, 0].set_xlabel("time (s, true seconds of the audio); blue lines: tracked beats")
    c = sample["cbd"]
    fig.suptitle(f"{name}   CBS {_fmt(sample['cbs'])}   CBD mean {_fmt(c['mean'])}, median {_fmt(c['median'])}"
                 f"   (beats tracked at --fps {fps:g})")
    fig.colorbar(image, ax=axes[:, 0], label="dB (one scale for all tracks)", pad=0.01, aspect=30)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _distribution_panels(tracks):
    """(title, function of a per_sample entry) per panel: IRS of each track, CBS, CBD mean, std, median."""
    panels = [(f"IRS {t} ↓", lambda v, t=t: v["irs"].get(t, math.nan)) for t in tracks]
    panels.append(("CBS ↑", lambda v: v["cbs"]))
    return panels + [(f"CBD {k} ↓", lambda v, k=k: v["cbd"][k]) for k in CBD_KEYS]


def plot_distributions(png, runs):
    """Write one PNG of per-piece distributions, one panel per metric (IRS per track, CBS, CBD mean, std, median),
    one violin per folder with its pieces as dots and its median as a bar, like the paper's Figs. A3, A4, A7, A8.

    runs: [(label, evaluate() result)], e.g. ground truth and two models. Tracks: the union, in order.
    """
    plt = _pyplot()
    tracks = list(dict.fromkeys(t for _, r in runs for t in r["tracks"]))
    panels = _distribution_panels(tracks)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rng = np.random.default_rng(0)  # horizontal jitter of the dots, the same in every figure
    for ax, (title, value) in zip(axes.flat, panels):
        for i, (_, r) in enumerate(runs):
            x = np.array([value(v) for v in r["per_sample"].values()], dtype=float)
            x = x[np.isfinite(x)]
            colour = colours[i % len(colours)]
            if len(x) >= 2 and np.ptp(x) > 0:
                body = ax.violinplot(x, [i], widths=0.8, showextrema=False)["bodies"][0]
                body.set(facecolor=colour, alpha=0.35)
            if len(x):
                ax.scatter(i + rng.uniform(-0.12, 0.12, len(x)), x, s=10, color=colour, alpha=0.7, linewidths=0)
                ax.hlines(np.median(x), i - 0.3, i + 0.3, color="black", linewidth=1.5)
        ax.set_title(title, fontsize=10)
        labels = [label for label, _ in runs]
        slanted = sum(map(len, labels)) > 20  # long folder names would run into each other
        ax.set_xticks(range(len(runs)), labels, rotation=25 if slanted else 0, ha="right" if slanted else "center")
        ax.set_xlim(-0.6, len(runs) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    counts = ", ".join(f"{label} {r['n_samples']}" for label, r in runs)
    fig.suptitle(f"per-piece distributions (pieces: {counts}); black bar: median; ↓ lower / ↑ higher is better")
    fig.savefig(png, dpi=110)
    plt.close(fig)



# ---------------------------------------------------------------------------------------------------------------------
# 4. Command line
# ---------------------------------------------------------------------------------------------------------------------

def _fmt_interval(ci):
    """"[0.49, 0.55]": two significant digits of the larger bound, at least 2 and at most 4 decimals (IRS values
    near 0.01 get "[0.008, 0.017]"); "" without an interval."""
    if ci is None or any(math.isnan(v) for v in ci):
        return ""
    top = max(abs(ci[0]), abs(ci[1]))
    digits = 4 if top == 0 else min(4, max(2, 1 - math.floor(math.log10(top))))
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _fmt_ci(x, ci):
    return f"{_fmt(x)} {_fmt_interval(ci)}".rstrip()


def _print_table(rows, indent="  "):
    """Rows of strings in columns, first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        print((indent + "  ".join(cells)).rstrip())


def _metric_rows(r):
    """(label, value, interval or None, count) of every reported number, in table order."""
    ci, c = r.get("ci"), r["counts"]
    rows = [(f"IRS {t}", r["irs"][t], ci and ci["irs"][t], c[f"irs_{t}"]) for t in r["tracks"]]
    rows.append(("IRS mean", r["irs"]["mean"], ci and ci["irs"]["mean"], None))
    rows.append(("CBS", r["cbs"], ci and ci["cbs"], c["cbs"]))
    return rows + [(f"CBD {k}", r["cbd"][k], ci and ci["cbd"][k], c["cbd"]) for k in CBD_KEYS]


def _print_result(r):
    """One setting: how the pieces were made, then metrics.print_result with the intervals beside the numbers."""
    unit = "pieces" if r["settings"]["segment"] else "samples"
    if r["settings"]["segment"]:
        g = r["segments"]
        print(f"{g['pieces']} segments of {g['length']:g} s scored as samples ({g['partial_dropped']} partial last "
              f"segments dropped)")
    if r.get("ci"):
        print(f"[..]: 95 % bootstrap interval over {unit} ({r['ci']['n_boot']} resamples, seed {r['ci']['seed']})")
    metrics.print_result(r, unit, lambda value, key: _fmt_ci(value, _lookup(r.get("ci"), key)))


def _lookup(tree, key):
    for k in key:
        tree = None if tree is None else tree.get(k) if isinstance(tree, dict) else None
    return tree


def _print_grid(r):
    """The sensitivity grid like Table A1: one row per (fps, tl) setting, its intervals on the line below."""
    print("\nSensitivity grid (Table A1): one row per beat-tracking setting; IRS ↓, CBS ↑, CBD ↓; "
          "--json has every setting's counts and per-sample values")
    labels = [label for label, *_ in _metric_rows(r)]
    rows = [["fps", "tl", *labels]]
    for g in r["grid"]:
        metrics_rows = _metric_rows(g)
        setting = [f"{g['settings']['fps']:g}", f"{g['settings']['tl']:g}"]
        rows.append([*setting, *(_fmt(v) for _, v, _, _ in metrics_rows)])
        if g.get("ci"):
            rows.append(["", "", *(_fmt_interval(ci) for _, _, ci, _ in metrics_rows)])
    _print_table(rows)


def _print_compare(a, b, cmp):
    s = a["settings"]
    how = (f"paired over the same {cmp['n'][0]} pieces" if cmp["paired"]
           else f"unpaired: {cmp['n'][0]} and {cmp['n'][1]} pieces, not the same names")
    print(f"\nB − A at fps={s['fps']:g}, tl={s['tl']:g}: A = {a['root']}, B = {b['root']} ({how}); "
          f"95 % bootstrap interval, {cmp['n_boot']} resamples; * = interval excludes 0")
    rows = [["", "A", "B", "B − A", "interval", ""]]
    for (label, va, _, _), (_, vb, _, _), (_, d, ci, _) in zip(_metric_rows(a), _metric_rows(b), _metric_rows(
            {**a, **cmp["diff"], "ci": cmp["ci"]})):
        differs = ci is not None and not math.isnan(ci[0]) and (ci[0] > 0 or ci[1] < 0)
        rows.append([label + (" ↑" if label == "CBS" else " ↓"), _fmt(va), _fmt(vb),
                     "n/a" if math.isnan(d) else f"{d:+.4f}", _fmt_interval(ci), "*" if differs else ""])
    _print_table(rows)


def _number_list(text):
    try:
        return [metrics.positive(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers > 0 separated by commas, got {text!r}") from None


def _segment(text):
    return text if text in ("auto", "paper", "full") else metrics.positive(text)


def protocol(segment="auto", root=None, tracks=None):
    """(segment, rate) for evaluate() of a --segment choice. "paper": the official test loader's clips, on which the
    paper scores its Slakh ground truth (Tables 4, 5): consecutive 10.24 s from 0 s read at 16 kHz, the partial last
    one dropped; "auto": "paper" for a folder of songs (per-song layout), else "full" (as metrics.py does); "full":
    whole files at their own rate; seconds: segments of that length at the files' own rate."""
    if segment == "auto":
        segment = "paper" if layout_of(root, tracks)[0] == "per-song" else "full"
    return {"paper": (metrics.PAPER_CLIP, synctrack.SAMPLE_RATE), "full": (None, None)}.get(segment, (segment, None))


def figure_formats():
    """The file extensions matplotlib can write a figure as (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase
    return sorted(FigureCanvasBase.get_supported_filetypes())


def _parser():
    p = argparse.ArgumentParser(
        prog="metric_study.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The metric study of SyncTrack's App. A: IRS, CBS, CBD (metrics.py) of every sample under DIR "
                    "over a grid of beat-tracking settings, of segments, with 95 % bootstrap intervals, compared "
                    "between two folders, drawn.",
        epilog="Layouts: as metrics.py (python metrics.py -h).\n\n"
               "Examples:\n"
               "  metric_study.py samples/ --fps 100,150,200 --tl 50,100     the sensitivity grid of Table A1\n"
               "  metric_study.py gt/ --segment 10                          10 s segments as samples (Table A6)\n"
               "  metric_study.py model_a/ --compare model_b/               B − A with 95 % intervals\n"
               "  metric_study.py gt/ model_a/ model_b/ --plot-dist d.png   distributions (Figs. A3-A8)\n\n"
               "About --fps: madmom's RNN always emits 100 frames/s and the DBN divides frame numbers by --fps.\n"
               "The paper and the official scripts use 150, so every beat time is scaled by 2/3: IRS comes out\n"
               "x2/3 and the 0.15 s CBS window covers 0.225 s of audio. That is the default here, so numbers\n"
               "compare with the paper's tables. --fps 100 gives beats in true seconds.")
    metrics.add_arguments(p, number=_number_list)  # DIR..., --tracks, --fps, --tl (comma lists: a grid), --window ...
    p.add_argument("--segment", type=_segment, default="auto", metavar="SECONDS",
                   help="score consecutive segments of this length as the samples, the last partial one dropped; "
                        "'paper': 10.24 s clips at 16 kHz, as the paper scores its Slakh ground truth; 'full': whole "
                        "files; 'auto' (default): 'paper' for a folder of songs (DIR/NAME/TRACK.wav), else 'full'")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples for the 95 %% intervals over samples (default: %(default)s; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    p.add_argument("--compare", metavar="DIR2", help="also score DIR2 and print DIR2 − DIR with intervals (paired "
                                                     "when both hold the same sample names)")
    p.add_argument("--plot", metavar="DIR", help="write one PNG per sample: its tracks' spectrograms with their beats")
    p.add_argument("--plot-dist", metavar="PNG", help="write the per-sample distributions of every metric, one "
                                                      "violin per DIR (and DIR2)")
    p.add_argument("--cache", metavar="DIR", help="folder of RNN activations reused across runs, by any --fps and "
                                                  "--tl (keyed by path, size, mtime and segment)")
    return p


def _argument_error(a):
    """What is wrong with the arguments, checked before any work; None when nothing is."""
    for flag, path in (("--json", a.json), ("--plot-dist", a.plot_dist)):
        if path and Path(path).is_dir():
            return f"{flag} {path}: is a folder; give a file name"
    if a.plot_dist and Path(a.plot_dist).suffix[1:].lower() not in figure_formats():
        return (f"--plot-dist {a.plot_dist}: unknown picture format; give a file name ending in ."
                + ", .".join(figure_formats()))
    outputs = {"--json": a.json, "--plot": a.plot, "--plot-dist": a.plot_dist, "--cache": a.cache}
    try:
        for flag, d in [("DIR", d) for d in a.dirs] + [("--compare", a.compare)]:
            check_outputs(outputs, {flag: d})
    except ValueError as err:
        return str(err)
    if a.plot and Path(a.plot).exists() and not Path(a.plot).is_dir():
        return f"--plot {a.plot}: is a file; give a folder"
    if a.cache and Path(a.cache).exists() and not Path(a.cache).is_dir():
        return f"--cache {a.cache}: is a file; give a folder (activations are stored one file per track)"
    if a.compare and len(a.dirs) > 1:
        return "--compare compares one DIR with DIR2; give one DIR"
    if a.workers < 1 or a.bootstrap < 0 or a.seed < 0:
        return "--workers must be >= 1, --bootstrap >= 0 and --seed >= 0"
    return None


def _print_grid_header(r):
    s, what = r["settings"], f"{r['n_samples']} samples evaluated"
    if s["segment"]:
        g = r["segments"]
        what = (f"{g['pieces']} segments of {s['segment']:g} s scored as samples "
                f"({g['partial_dropped']} partial last segments dropped)")
    print(f"{r['root']}: layout {r['layout']}, tracks {', '.join(r['tracks'])}; {what}, {len(r['skipped'])} skipped")
    grid = ", ".join(f"fps={g['settings']['fps']:g} tl={g['settings']['tl']:g}" for g in r["grid"])
    print(f"beats: madmom RNN once per file + DBN per setting: {grid}; CBS window {s['window']:g} s")
    if r.get("ci"):
        unit = "pieces" if s["segment"] else "samples"
        print(f"[..]: 95 % bootstrap interval over {unit} ({r['ci']['n_boot']} resamples, seed {r['ci']['seed']})")


def main(argv=None):
    a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    problem = _argument_error(a)
    if problem:
        return metrics.fail(problem)
    runs = []
    for d in (*a.dirs, *([a.compare] if a.compare else [])):
        try:
            segment, rate = protocol(a.segment, d, a.tracks)
            if a.segment == "auto" and segment:
                print(f"{d}: songs, cut as the official test loader cuts them (Tables 4, 5): consecutive {segment} s "
                      "clips from 0 s at 16 kHz; whole songs: --segment full", flush=True)
            runs.append(evaluate(d, a.window, a.fps, a.tl, a.workers, a.cache, progress=True, tracks=a.tracks,
                                 segment=segment, bootstrap=a.bootstrap, seed=a.seed, rate=rate))
        except (OSError, ValueError) as err:  # FileNotFoundError is an OSError; a cache that cannot be written
            return metrics.fail(err)
    for i, r in enumerate(runs):
        print("\n" if i else "", end="")
        if "grid" in r:
            _print_grid_header(r)
            _print_grid(r)
            _print_list("skipped", r["skipped"])
            _print_list("notes", r["notes"])
        else:
            _print_result(r)
    out = runs[0] if len(runs) == 1 else {"runs": runs}
    if a.compare:
        try:
            pairs = [(x, y, compare(x, y, a.bootstrap, a.seed)) for x, y in zip(runs[0].get("grid", [runs[0]]),
                                                                                 runs[1].get("grid", [runs[1]]))]
        except ValueError as err:
            return metrics.fail(err)
        for x, y, cmp in pairs:
            _print_compare(x, y, cmp)
        out = {**runs[0], "compare": [{"root": y["root"], "settings": y["settings"], **cmp,
                                       "other": {k: y[k] for k in ("n_samples", "irs", "cbs", "cbd", "counts")}}
                                      for _, y, cmp in pairs]}
    try:
        if a.json:
            metrics.write_json("--json", a.json, out)
        _write_figures(a, runs)
    except OSError as err:  # e.g. a full disk: write_json names --json; a figure names its file
        return metrics.fail(err)
    empty = [r["root"] for r in runs if not r["n_samples"]]
    return metrics.fail("no sample could be evaluated in " + ", ".join(empty)) if empty else 0


def _write_figures(a, runs):
    if a.plot and runs[0]["n_samples"]:
        Path(a.plot).mkdir(parents=True, exist_ok=True)
        r = runs[0]
        _, samples, _ = find_samples(r["root"], a.tracks)
        for name, piece in tqdm(r["per_sample"].items(), desc="plots", unit="sample"):
            files = samples[piece.get("sample", name)]  # a segment's sample, or the piece itself
            plot_beats(Path(a.plot) / f"{name}.png", name, files, piece, r["settings"]["fps"])
        print(f"wrote {r['n_samples']} plots to {a.plot}")
    if a.plot_dist and any(r["n_samples"] for r in runs):
        labels = [Path(r["root"]).name or r["root"] for r in runs]
        if len(set(labels)) < len(labels):  # e.g. a/samples and b/samples: the whole paths tell them apart
            labels = [r["root"] for r in runs]
        Path(a.plot_dist).parent.mkdir(parents=True, exist_ok=True)
        plot_distributions(a.plot_dist, list(zip(labels, runs)))
        print(f"wrote {a.plot_dist}")


if __name__ == "__main__":
    sys.exit(main())
