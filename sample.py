"""Generate four-track music with SyncTrack (§3 inference pipeline, Eq. 3), or arrange around given stems (App. A.8).

    python sample.py --n 16                                    # the shipped toy model, offline, CPU
    python sample.py --n 16 --ckpt synctrack.ckpt --first-stage ckpt/ --trust   # the released official weights
    python sample.py --n 4 --given drums=drums.wav --given bass=bass.wav        # generate guitar and piano around them
    python sample.py --n 16 --resume                           # after Ctrl-C or a crash: make only the missing pieces
    python sample.py --n 2 --seconds 30 --ckpt runs/toy/ckpt.pt    # longer than a clip: windows continue the piece

main() is the pipeline: load; per group of pieces: noise z_L, DDIM, decode (Eq. 3); write each piece into OUT
(data.SampleFolder: new, replaced whole by --overwrite, finished by --resume as one run would). Sharded over GPUs, or a
folder of songs to arrange (--given-dir): extras/sample_ddp.py. The listening report: extras/report.py OUT.
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import data
import synctrack as st
import toy

DEFAULT_CKPT = Path(__file__).parent / "checkpoints" / "synctrack_toy.pt"
# What decides the bytes of the pieces: --resume requires these unchanged (the checkpoint by content).
PIECE_KEYS = ("n", "seed", "steps", "eta", "raw", "unet_config", "first_stage", "given", "given_dir", "keep",
              "batch_size", "seconds", "overlap", "bf16", "ckpt_sha256")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every default."""


def parser(description=__doc__):
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("-n", "--n", type=int, default=16, help="how many pieces")
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT), help="ours (config inside) or an official Lightning checkpoint")
    p.add_argument("--first-stage", metavar="PATH", help="MusicLDM VAE + vocoder weights (what toy.make_first_stage "
                                                         "reads); needed for MusicLDM latents unless --ckpt holds them")
    p.add_argument("--trust", action="store_true", help="allow pickled checkpoints (Lightning) to be unpickled")
    p.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA weights")
    p.add_argument("--config", metavar="JSON", help="official checkpoints only: their unet_config, if not the paper's")
    p.add_argument("--steps", type=int, default=200, help="DDIM steps, 1..999 (paper: 200)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM η ≥ 0 (official: 1.0; 0 = deterministic DDIM)")
    p.add_argument("--seed", type=int, default=0, help="piece i is drawn from (seed, i): other seeds never repeat it")
    p.add_argument("--batch-size", type=int, default=16 if torch.cuda.is_available() else 4,
                   help="pieces denoised together: B pieces from index kB on, always the same B (16 with CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="CUDA: denoise under bfloat16 autocast (the official: float32)")
    p.add_argument("--seconds", type=float, help="piece length (default one clip); longer: windows continuing it")
    p.add_argument("--overlap", type=float, default=0.75, help="the part of a window held from the one before")
    p.add_argument("--out", default="samples", help="output folder: absent or empty, unless --overwrite or --resume")
    p.add_argument("--overwrite", action="store_true", help="replace OUT whole, once the new one is complete")
    p.add_argument("--resume", action="store_true", help="make only the pieces missing from OUT (same settings)")
    p.add_argument("--given", action="append", default=[], metavar="TRACK=PATH",
                   help="a known stem (repeatable, one per track): only the other tracks are generated")
    return p


def check_args(args):
    """Refuse impossible settings before anything is loaded, one line each."""
    checks = ((args.n >= 1, f"--n {args.n}: must be at least 1"),
              (1 <= args.steps <= 999, f"--steps {args.steps}: must be in 1..999 (DDIM steps of 1000 levels)"),
              (math.isfinite(args.eta) and args.eta >= 0, f"--eta {args.eta}: must be a finite number ≥ 0"),
              (args.batch_size >= 1, f"--batch-size {args.batch_size}: must be at least 1"),
              (args.seed >= 0, f"--seed {args.seed}: must be ≥ 0"),
              (args.seconds is None or 0 < args.seconds <= 3600, f"--seconds {args.seconds}: must be in (0, 3600]"),
              (0 <= args.overlap < 1, f"--overlap {args.overlap}: must be in [0, 1) (0: independent windows)"),
              (not (args.overwrite and args.resume), "--overwrite and --resume exclude each other"))
    for ok, message in checks:
        if not ok:
            raise SystemExit(message)
    try:
        torch.empty(0, device=args.device)
    except Exception as e:  # unknown name, no CUDA, no such GPU
        raise SystemExit(f"--device {args.device}: not usable here ({one_line(e)})") from None
    inputs = {"--ckpt": args.ckpt, "--first-stage": args.first_stage, "--config": args.config,
              **{f"--given {g}": g.partition("=")[2] or None for g in args.given}}
    data.check_outputs({"--out": args.out}, inputs)  # ValueError: --out would write over or into an input


def load(args):
    """(model, first stage) from our checkpoint or an official one; a file that does not load is one line naming it."""
    try:
        ckpt = st.read_checkpoint(args.ckpt, trust=args.trust)  # missing, empty, truncated, text: named
        if "config" in ckpt and args.config:
            raise SystemExit(f"--config {args.config}: for official checkpoints only; {args.ckpt} holds its config")
        if "config" in ckpt:
            model, _ = st.load_model(ckpt, ema=not args.raw)
            scale = ckpt.get("scale_factor")
        else:  # an official Lightning checkpoint: the official variant, EMA weights, the paper config unless told
            config = st.official_config(json.loads(Path(args.config).read_text())) if args.config else None
            model = st.SyncTrack(config or st.SyncTrackConfig(variant="official"))
            report = st.load_official(model, ckpt, ema=not args.raw)
            print(f"{args.ckpt}: {report['loaded']} official tensors ({report['source']} weights)")
            scale = report["scale_factor"]
    except Exception as e:  # the boundary between a user's file and our code: say which file and why, no traceback
        hint = " (make it: python train.py --preset toy --export PATH)" * (args.ckpt == str(DEFAULT_CKPT))
        raise SystemExit(f"--ckpt {args.ckpt}: cannot load it ({type(e).__name__}: {one_line(e)}){hint}") from None
    spec = "offline" if model.config.first_stage == "offline" else args.first_stage or args.ckpt
    if spec == args.ckpt and "state_dict" not in ckpt and "first_stage" not in ckpt:
        raise SystemExit(f"{args.ckpt} diffuses MusicLDM latents: give --first-stage PATH (MusicLDM VAE + vocoder)")
    try:
        stage = toy.make_first_stage(spec, trust=args.trust)
    except Exception as e:
        raise SystemExit(f"--first-stage {spec}: cannot load it ({type(e).__name__}: {one_line(e)})") from None
    if scale is not None and hasattr(stage, "scale_factor"):  # decode with the scale the model was trained on
        stage.scale_factor = float(scale)
    return model.to(args.device).eval(), stage.to(args.device).eval()  # important: eval() (dropout off)


def one_line(e):
    """An exception's message on one line (KeyError quotes its message; some messages span lines)."""
    return " ".join((str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)).split()) or "no message"


def read_stem(path):
    """A given stem as 16 kHz mono float; ValueError naming the file when it is not audio we can arrange around."""
    wave, _ = data.read_audio(path)  # names the file when undecodable or non-finite
    info = sf.info(str(path))
    if info.samplerate != st.SAMPLE_RATE or info.channels != 1:
        print(f"{path}: {info.channels} channel(s) at {info.samplerate} Hz, mixed to mono at {st.SAMPLE_RATE} Hz")
    if np.abs(wave).max(initial=0) > 10:  # 20 dB over full scale: mis-scaled (integer samples stored as floats?)
        raise ValueError(f"{path}: peak amplitude {np.abs(wave).max():.3g}, not audio in [-1, 1]")
    return wave


def fit(wave, n, where):  # crop or zero-pad a stem to n samples, saying so
    if len(wave) != n:
        print(f"{where}: {len(wave)} samples at 16 kHz, {'cropped' if len(wave) > n else 'zero-padded'} to {n}")
    return np.pad(wave[:n], (0, max(0, n - len(wave))))


def read_given(args):
    """{track: wave} of the --given stems, read (and refused, one line naming the file) before anything is loaded."""
    known = {}
    for item in args.given:
        track, sep, path = item.partition("=")
        problem = (f"expected TRACK=PATH with TRACK one of {', '.join(st.TRACKS)}" if not sep or track not in st.TRACKS
                   else f"{track} given twice; give each track once" if track in known
                   else f"no such file {path}" if not os.path.isfile(path) else None)
        try:
            if problem:
                raise ValueError(problem)
            known[track] = read_stem(path)
        except ValueError as e:
            raise SystemExit(f"--given {item}: {e}") from None
    if len(known) == len(st.TRACKS):
        raise SystemExit("--given: all four tracks are given, nothing is left to generate")
    return known


# ----------------------------------------------------------------------------------------------------------------------
# Sampling: fixed groups of pieces, one generator per piece, windows that continue a piece


def piece_generator(seed, i, device):
    """The generator of piece i, seeded from (seed, i) through numpy's SeedSequence: seed + i would make --seed 0
    piece 16 equal --seed 16 piece 0; a hash of the pair never does."""
    return torch.Generator(device).manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]))


def groups(todo, size, n):
    """The groups [kB, (k+1)B) of the n pieces (B = size) that hold a piece of `todo`, whole: a piece is always
    denoised with the same others, since batched convolutions and attention round differently in another batch."""
    return [list(range(k * size, min((k + 1) * size, n))) for k in sorted({i // size for i in todo})]


def piece_samples(args, cfg):  # --seconds at 16 kHz, else one clip of the model
    return cfg.clip_samples if args.seconds is None else round(args.seconds * st.SAMPLE_RATE)


def make_group(model, stage, args, group, stems, names):
    """Yield (i, audio (S, N) numpy) for the pieces `group`, denoised together, decoded and checked one by one.
    stems[i]: piece i's given stems {track: wave (N,)}. Piece i draws its z_L, its given stems' posterior sample (Eq. 1)
    and every DDIM step's noise from its own generator: nothing of it depends on the values of the other pieces."""
    cfg, device, n = model.config, args.device, piece_samples(args, model.config)
    frame = cfg.clip_samples // cfg.latent_time                            # samples per latent frame
    hold = min(round(args.overlap * cfg.latent_time), cfg.latent_time - 1) if n > cfg.clip_samples else 0
    hop = cfg.latent_time - hold                                           # new frames per window after the first
    frames = cfg.latent_time + math.ceil(max(0, math.ceil(n / frame) - cfg.latent_time) / hop) * hop
    gens = [piece_generator(args.seed, i, device) for i in group]
    S, C, _, F = cfg.latent_shape
    z = torch.stack([torch.randn((S, C, frames, F), generator=g, device=device) for g in gens])  # (B, S, C, T', F)
    mask = torch.tensor([[t in stems[i] for t in cfg.tracks] for i in group], device=device)    # (B, S)
    known = waves = None
    if mask.any():  # arrangement: encode the given stems, which DDIM then holds (App. A.8)
        waves = torch.zeros(len(group), S, frames * frame, device=device)                      # (B, S, N')
        for b, i in enumerate(group):
            for t, wave in stems[i].items():
                waves[b, cfg.tracks.index(t), :n] = torch.from_numpy(wave)
        known = torch.cat([stage.encode(waves[b:b + 1], sample=True, generator=g) for b, g in enumerate(gens)])
    track = mask[:, :, None, None, None]                                   # (B, S) -> (B, S, 1, 1, 1)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16 and device.startswith("cuda")):
        for k, start in enumerate(range(0, frames - cfg.latent_time + 1, hop)):
            # window k: frames [start, start + T); after the first its first `hold` frames are the previous window's
            # end, held like given stems (App. A.8's arrangement in time), so tempo and phase carry on
            t = slice(start, start + cfg.latent_time)
            held = track | (torch.arange(cfg.latent_time, device=device) < (hold if k else 0))[:, None]  # (B,S,1,T,1)
            window = z[..., t, :] if known is None else torch.where(track, known[..., t, :], z[..., t, :])
            z[..., t, :] = st.ddim_sample(model, z[..., t, :].clone(), args.steps, args.eta,
                                          window if held.any() else None, held, generator=gens).float()
    for b, i in enumerate(group):
        audio = stage.decode(z[b:b + 1])[0, :, :n].float()                    # (S, N), Eq. 3: the whole piece at once
        if not torch.isfinite(audio).all():  # NaN in z decodes to NaN: a broken piece is never written as audio
            raise ValueError(f"{names[i]}: the sampled latent or its audio holds NaN or inf values; not written")
        if waves is not None:
            audio = torch.where(mask[b, :, None], waves[b, :, :n], audio)      # given stems written back as read
        yield i, audio.cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------------
# The run: load → sample group by group → write each piece as it is ready (data.SampleFolder)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)  # kept: the command that finishes an interrupted run
    args = parser().parse_args(argv)
    names = [f"sample_{i:0{max(4, len(str(args.n - 1)))}d}" for i in range(args.n)]
    settings = dict(vars(args), unet_config=args.config)  # "config" becomes the model's config
    folder = data.SampleFolder(args.out, names, settings, PIECE_KEYS, args.overwrite, args.resume, ckpt=args.ckpt)
    try:
        check_args(args)
        given = read_given(args)
        model, stage = load(args)                                                          # 1. load
        given = {t: fit(w, piece_samples(args, model.config), f"--given {t}") for t, w in given.items()}
        folder.settings["config"] = asdict(model.config)
        with folder, torch.inference_mode(), tqdm(total=len(folder.todo), unit="piece") as bar:
            todo, t0 = set(folder.todo), time.time()  # OUT is locked; todo: the pieces it lacks
            for group in groups(todo, args.batch_size, len(names)):
                for i, audio in make_group(model, stage, args, group, {i: given for i in group}, names):  # 2. sample
                    if i in todo:
                        folder.write(names[i], audio)                                        # 3. write
                        bar.update()
                folder.save()  # settings.json counts the pieces written so far
            folder.finish(round(time.time() - t0, 2))
    except (KeyboardInterrupt, OSError, ValueError) as e:
        raise SystemExit(folder.failure(e, ["python", "sample.py", *argv])) from None
    print(*folder.summary(len(todo), time.time() - t0), sep="\n")


if __name__ == "__main__":
    main()
