"""Fréchet Audio Distance (FAD) with VGGish, the distribution metric of SyncTrack's Tables 1, 2 and 6.

Paper: "SyncTrack: Rhythmic Stability and Synchronization in Multi-Track Music Generation" (ICLR 2026), §5.1 and
Tables 1, 2, 6: FAD of the mixture and of each track, computed with audioldm_eval, which wraps torchvggish.

    python extras/fad.py REF_DIR GEN_DIR --vggish vggish-10086976.pth [--device cuda] [--json fad.json]

Map of the file
    1. VGGish front end     vggish_mel_matrix (VGGish's own HTK mel scale), vggish_examples: waveform -> examples
    2. VGGish               the network, VGGISH_SHAPES, load_vggish(path): strict, from a file you downloaded
    3. frechet_distance     between two Gaussians, stable for singular covariances
    4. fad(ref, gen, path)  every clip of both folders -> pooled embeddings -> FAD of the mix and of each track
    5. command line

Protocol of the paper's FAD (audioldm_eval -> torchvggish): first channel, mean removed, 16 kHz, padded to >= 2 s;
VGGish log-mel examples of 0.96 s; 128-d embeddings without PCA and without the last ReLU; all examples of all files
of a set pooled into one Gaussian; Fréchet distance between the generated and the reference Gaussian.
"""
import argparse
import functools
import hashlib
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy.signal import resample_poly
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `python extras/fad.py` works
import metrics  # noqa: E402  (its table formatting)
from data import MIX, atomic_write, check_outputs, find_samples, layout_of, read_audio  # noqa: E402  (one reader)

VGGISH_SR = 16000
VGGISH_WINDOW, VGGISH_HOP, VGGISH_FFT = 400, 160, 512  # 25 ms, 10 ms; FFT size: next power of two
VGGISH_MELS, VGGISH_FMIN, VGGISH_FMAX = 64, 125.0, 7500.0
VGGISH_LOG_OFFSET = 0.01  # log(mel + 0.01)
VGGISH_FRAMES = 96  # one example = 96 frames = 0.96 s, examples do not overlap
FAD_MIN_SAMPLES = 32000  # audioldm_eval pads shorter clips with zeros to 2 s



# ---------------------------------------------------------------------------------------------------------------------
# 1. VGGish front end
# ---------------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------------
# 2. VGGish and loading its weights
# ---------------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------------
# 3. Fréchet distance
# ---------------------------------------------------------------------------------------------------------------------

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
    d = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)
    return d if d > 0 else 0.0  # a distance: round-off below 0 (identical sets) is 0, never printed as -0.0000


# ---------------------------------------------------------------------------------------------------------------------
# 4. fad(): every clip of two folders, embedded and pooled
# ---------------------------------------------------------------------------------------------------------------------

def _fad_wave(paths):
    """The FAD input for one clip: the clipped sum of `paths` (one path: the file itself), first channel,
    at 16 kHz, mean removed, zero-padded to 2 s."""
    total = None
    for p in paths:
        # first channel, as audioldm_eval; NaN is refused here, else the covariance fails as "SVD did not converge"
        wave, sr = read_audio(p, sr=None, channels="first")
        wave = wave.astype(np.float64)
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


def _fad_clips(samples, group, tracks):
    """{name: files summed into the clip} for one group: a track's file; for the mixture the mix file, else all
    tracks."""
    if group != MIX:
        return {name: (s[group],) for name, s in samples.items()}
    return {name: (s[MIX],) if MIX in s else tuple(s[t] for t in tracks) for name, s in samples.items()}


def fad(ref_root, gen_root, vggish, device="cpu", workers=4, cache=None, progress=False, tracks=None):
    """FAD between a reference and a generated folder, for the mixture and for each track (lower is better).

    Both folders may have any layout of find_samples. The mixture is the `mix` file when a sample has one, else the
    clipped sum of its tracks. `vggish`: path of vggish-10086976.pth. `workers`: threads preparing audio.
    `cache`: .npz of embeddings keyed by file path, size, mtime and the weights file, so that a changed file or
    model is never served stale. Returns {"fad": {"mix", "bass", ...}, "frames": {group: [n_ref, n_gen]},
    "n_samples": [n_ref, n_gen], "mix_source", "skipped", "notes", "ignored_keys"}; a FAD whose set has fewer than
    2 frames is NaN, with a note. `tracks`: as in find_samples; both folders must end up with the same tracks.
    """
    sets, skipped, mix_source, names = {}, [], {}, {}
    for role, root in (("ref", ref_root), ("gen", gen_root)):
        _, sets[role], problems = find_samples(root, tracks)
        names[role] = layout_of(root, tracks)[1]
        skipped += [f"{role}: {p}" for p in problems]
        n_mix = sum(MIX in s for s in sets[role].values())
        mix_source[role] = f"{n_mix} mix files, {len(sets[role]) - n_mix} sums of the tracks"
    if names["ref"] != names["gen"]:
        raise ValueError(f"tracks differ: {ref_root} has {names['ref']}, {gen_root} has {names['gen']}")
    tracks = names["ref"]
    model, ignored = load_vggish(vggish, device)
    info = os.stat(vggish)
    weights_id = f"{os.path.abspath(vggish)}|{info.st_size}|{info.st_mtime_ns}"
    clips = [(role, group, name, paths) for role in sets for group in (MIX, *tracks)
             for name, paths in _fad_clips(sets[role], group, tracks).items()]
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
        atomic_write(cache, lambda tmp: _savez(tmp, stored))
    pooled = {}  # (role, group) -> every frame of every clip
    for (role, group, _, _), key in zip(clips, keys):
        if key in stored:
            pooled.setdefault((role, group), []).append(stored[key])
    result = {"fad": {}, "frames": {}, "n_samples": [len(sets["ref"]), len(sets["gen"])], "mix_source": mix_source,
              "skipped": skipped, "notes": [], "ignored_keys": ignored, "tracks": tracks}
    for group in (MIX, *tracks):
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




def _savez(path, arrays):
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a temporary file's name
        np.savez(f, **arrays)


# ---------------------------------------------------------------------------------------------------------------------
# 5. Command line
# ---------------------------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(
        prog="fad.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fréchet Audio Distance (VGGish) between REF_DIR and GEN_DIR, for the mixture and each track.",
        epilog="Protocol (the paper's, via audioldm_eval): first channel, mean removed, 16 kHz, padded to 2 s;\n"
               "VGGish embeddings of every 0.96 s example, no PCA, no final ReLU; all examples of a set pooled.\n"
               "Weights: vggish-10086976.pth of github.com/harritaylor/torchvggish (releases), downloaded once\n"
               "by you; nothing is downloaded here. FAD depends on the embedding model, the reference set and\n"
               "its size: compare only numbers made with the same weights and the same reference folder.")
    p.add_argument("ref", metavar="REF_DIR", help="reference folder (e.g. ground truth), any layout "
                                                  "metrics.py reads")
    p.add_argument("gen", metavar="GEN_DIR", help="generated folder")
    p.add_argument("--vggish", required=True, metavar="PATH", help="vggish-10086976.pth (torchvggish state_dict)")
    p.add_argument("--device", default="cpu", help="torch device for VGGish (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="threads reading audio (default: %(default)s)")
    p.add_argument("--json", metavar="OUT", help="write the numbers to this JSON file")
    p.add_argument("--cache", metavar="FILE", help=".npz of embeddings reused across runs (keyed by file and weights)")
    p.add_argument("--tracks", type=lambda s: s.split(","), help="track names, comma-separated (default: as "
                                                                 "metrics.py finds them)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    for flag, path in (("--json", a.json), ("--cache", a.cache)):
        if path and Path(path).is_dir():
            return metrics.fail(f"{flag} {path}: is a folder; give a file name")
    try:  # before any work: no output may replace an input or write into an input folder
        for flag, path in (("REF_DIR", a.ref), ("GEN_DIR", a.gen), ("--vggish", a.vggish)):
            check_outputs({"--json": a.json, "--cache": a.cache}, {flag: path})
    except ValueError as err:
        return metrics.fail(err)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 1
    try:
        r = fad(a.ref, a.gen, a.vggish, a.device, a.workers, a.cache, progress=True, tracks=a.tracks)
    except (FileNotFoundError, ValueError) as err:
        return metrics.fail(err)
    except OSError as err:  # the --cache could not be written (a full disk)
        return metrics.fail(f"--cache: {err}; free some space or choose another --cache")
    print(f"FAD (VGGish), lower is better; ref {a.ref} ({r['n_samples'][0]} samples), "
          f"gen {a.gen} ({r['n_samples'][1]} samples)")
    print(f"mixture from: ref {r['mix_source']['ref']}; gen {r['mix_source']['gen']}")
    for group in (MIX, *r["tracks"]):
        n_ref, n_gen = r["frames"][group]
        print(f"  {group:<7} {metrics._fmt(r['fad'][group])}   frames ref {n_ref}, gen {n_gen}")
    if r["ignored_keys"]:
        print(f"ignored in {a.vggish}: {', '.join(r['ignored_keys'])}")
    metrics._print_list("skipped", r["skipped"])
    metrics._print_list("notes", r["notes"])
    if a.json:
        try:
            metrics.write_json("--json", a.json, r)
        except OSError as err:
            return metrics.fail(err)
    return 0 if any(not math.isnan(v) for v in r["fad"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
