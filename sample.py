"""Generate four-track music with SyncTrack (§3 inference pipeline, Eq. 3), or arrange around given stems (App. A.8).

    python sample.py --n 16                                    # the shipped toy model, offline, CPU
    python sample.py --n 16 --ckpt runs/toy/ckpt.pt --steps 50
    python sample.py --n 16 --ckpt synctrack.ckpt --first-stage ckpt/ --trust   # the released official weights
    python sample.py --n 4 --given drums=drums.wav --given bass=bass.wav        # generate guitar and piano around them
    python sample.py --given-dir slakh/test --ckpt ...          # arrange every song of a folder (any metrics.py layout)

Writes OUT/stem_0..stem_3/NAME.wav (the official layout, read by metrics.py and FAD tools), OUT/{bass,drums,guitar,
piano}/NAME.wav as relative symbolic links to those files (copies where links are unavailable), OUT/mix/NAME.wav (the
clipped sum, as the official code writes it) and OUT/settings.json. 16 kHz, 16-bit PCM, clip_samples long.
"""
import argparse
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import data
import metrics
import synctrack as st

DEFAULT_CKPT = Path(__file__).parent / "checkpoints" / "synctrack_toy.pt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16, help="how many pieces (per song with --given-dir: 1)")
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT),
                   help="our checkpoint (config inside) or the official SyncTrack Lightning checkpoint")
    p.add_argument("--first-stage", metavar="PATH",
                   help="MusicLDM VAE + vocoder weights (any format synctrack.load_first_stage reads); needed for "
                        "models on MusicLDM latents, unless --ckpt holds them")
    p.add_argument("--trust", action="store_true", help="allow pickled checkpoints (Lightning) to be unpickled")
    p.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA weights")
    p.add_argument("--config", metavar="JSON",
                   help="official checkpoints only: the official unet_config (JSON file) when it is not the paper's")
    p.add_argument("--steps", type=int, default=200, help="DDIM steps (paper: 200)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM η (official: 1.0; 0 = deterministic DDIM)")
    p.add_argument("--no-clip", action="store_true",
                   help="offline first stage: do not clamp DDIM's predicted z_0 into the latent range")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="samples")
    p.add_argument("--given", action="append", default=[], metavar="TRACK=PATH",
                   help="a known stem (repeatable): only the other tracks are generated")
    p.add_argument("--given-dir", metavar="DIR", help="arrange every song of DIR around its stems listed by --keep")
    p.add_argument("--keep", default="drums", help="with --given-dir: comma-separated tracks to keep (default drums)")
    p.add_argument("--eval", action="store_true", help="run metrics.py on the output and print IRS/CBS/CBD")
    return p.parse_args(argv)


def load(args):
    """(model, first stage) from our checkpoint or an official one."""
    if args.ckpt == str(DEFAULT_CKPT) and not DEFAULT_CKPT.exists():
        raise SystemExit(f"{DEFAULT_CKPT} is missing: train it with "
                         f"`python train.py --preset toy --export {DEFAULT_CKPT}`, or pass --ckpt")
    ckpt = st.read_checkpoint(args.ckpt, trust=args.trust)
    scale = ckpt.get("scale_factor")
    if "config" in ckpt:
        model, _ = st.load_model(ckpt, ema=not args.raw)
    else:  # an official Lightning checkpoint: the official variant, EMA weights, the paper config unless told
        unet_config = json.loads(Path(args.config).read_text()) if args.config else None
        model = st.SyncTrack(st.SyncTrackConfig.from_official(unet_config) if unet_config
                             else st.SyncTrackConfig(variant="official"))
        report = st.load_official(model, ckpt, ema=not args.raw)
        print(f"{args.ckpt}: {report['loaded']} official tensors ({report['source']} weights)")
        scale = report["scale_factor"]
    cfg = model.config
    if cfg.first_stage == "offline":
        stage = st.make_first_stage("offline")
    elif args.first_stage or "state_dict" in ckpt or "first_stage" in ckpt:  # MusicLDM weights or our toy VAE
        stage = st.make_first_stage(args.first_stage or args.ckpt, trust=args.trust)
    else:
        raise SystemExit(f"{args.ckpt} diffuses MusicLDM latents: give --first-stage PATH (MusicLDM VAE + vocoder)")
    if scale is not None and hasattr(stage, "scale_factor"):  # decode with the scale the model was trained on
        stage.scale_factor = float(scale)
    return model, stage


def read_stem(path, n):
    """A given stem as 16 kHz mono float, cropped or zero-padded to n samples; every change is said."""
    info = sf.info(str(path))
    if info.samplerate != st.SAMPLE_RATE or info.channels != 1:
        print(f"{path}: {info.channels} channel(s) at {info.samplerate} Hz, mixed to mono at {st.SAMPLE_RATE} Hz")
    return fit(data.read_audio(path), n, path)


def fit(wave, n, where):
    """Crop or zero-pad a stem to n samples, saying so."""
    if len(wave) != n:
        print(f"{where}: {len(wave)} samples at 16 kHz, {'cropped' if len(wave) > n else 'zero-padded'} to {n}")
    return np.pad(wave[:n], (0, max(0, n - len(wave))))


def given_stems(args, n_samples):
    """[(name, {track: wave (N,)})]: what to arrange around (empty dicts for free generation)."""
    if args.given_dir:
        keep = [t.strip() for t in args.keep.split(",")]
        unknown = [t for t in keep if t not in st.TRACKS]
        if unknown:
            raise SystemExit(f"--keep: unknown track(s) {unknown}; tracks are {', '.join(st.TRACKS)}")
        _, songs, problems = metrics.find_samples(args.given_dir)
        for problem in problems:
            print(problem)
        return [(name, {t: read_stem(files[t], n_samples) for t in keep})
                for name, files in songs.items()]
    known = {}
    for item in args.given:
        track, sep, path = item.partition("=")
        if not sep or track not in st.TRACKS:
            raise SystemExit(f"--given {item!r}: expected TRACK=PATH with TRACK one of {', '.join(st.TRACKS)}")
        if not os.path.isfile(path):
            raise SystemExit(f"--given {item!r}: no such file {path}")
        known[track] = read_stem(path, n_samples)
    return [(f"sample_{i:04d}", known) for i in range(args.n)]


def write(out, name, waves, sr):
    """waves (S, N): one file per stem in stem_i/, links in named folders, the mix; all clipped to [-1, 1] (16-bit
    files would wrap around otherwise). Returns how many samples were clipped, stems and mix together."""
    clipped = int((np.abs(waves) > 1).sum())
    for s, track in enumerate(st.TRACKS):
        stem = out / f"stem_{s}" / f"{name}.wav"
        sf.write(stem, np.clip(waves[s], -1, 1), sr, subtype="PCM_16")
        link = out / track / f"{name}.wav"
        link.unlink(missing_ok=True)
        try:
            link.symlink_to(Path("..") / f"stem_{s}" / f"{name}.wav")
        except OSError:
            shutil.copyfile(stem, link)
    mix = waves.sum(0)
    clipped += int((np.abs(mix) > 1).sum())
    sf.write(out / "mix" / f"{name}.wav", np.clip(mix, -1, 1), sr, subtype="PCM_16")
    return clipped


def main(argv=None):
    args = parse_args(argv)
    model, stage = load(args)
    model, stage = model.to(args.device).eval(), stage.to(args.device).eval()
    cfg = model.config
    jobs = given_stems(args, cfg.clip_samples)
    out = Path(args.out)
    for folder in (*(f"stem_{s}" for s in range(len(cfg.tracks))), *cfg.tracks, "mix"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda"))
    t0, clipped = time.time(), {}
    with torch.inference_mode():
        for start in tqdm(range(0, len(jobs), args.batch_size), desc="batches", disable=len(jobs) <= args.batch_size):
            batch = jobs[start:start + args.batch_size]
            g = torch.Generator(args.device).manual_seed(args.seed + start)
            x_T = torch.randn((len(batch), *cfg.latent_shape), generator=g, device=args.device)  # (B, S, C, T, F)
            mask = torch.tensor([[t in known for t in cfg.tracks] for _, known in batch], device=args.device)
            known = waves = None
            if mask.any():
                waves = torch.zeros(len(batch), len(cfg.tracks), cfg.clip_samples, device=args.device)
                for b, (_, stems) in enumerate(batch):
                    for t, wave in stems.items():
                        waves[b, cfg.tracks.index(t)] = torch.from_numpy(wave)
                known = stage.encode(waves, sample=True, generator=g)               # Eq. (1)
            with autocast:
                z = st.ddim_sample(model, x_T, args.steps, args.eta, known, mask, generator=g,
                                   x0_range=None if args.no_clip else getattr(stage, "latent_range", None))
            audio = stage.decode(z.float()).float()                                # Eq. (3): (B, S, N)
            if waves is not None:
                audio = torch.where(mask[:, :, None], waves, audio)                 # given stems written back as read
            for (name, _), piece in zip(batch, audio.cpu().numpy()):
                clipped[name] = write(out, name, piece, st.SAMPLE_RATE)
    seconds = time.time() - t0
    settings = dict(vars(args), n_written=len(jobs), seconds=round(seconds, 2), config=asdict(cfg),
                    clipped_samples={k: v for k, v in clipped.items() if v})
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(f"wrote {len(jobs)} pieces to {out}/ in {seconds:.1f} s ({seconds / max(len(jobs), 1):.2f} s per piece)")
    if settings["clipped_samples"]:
        print(f"audio clipped to [-1, 1] in {len(settings['clipped_samples'])} pieces (see settings.json)")
    if args.eval:
        metrics.main([str(out)])


if __name__ == "__main__":
    main()
