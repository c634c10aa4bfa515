"""The command line of train.py: the defaults per preset (one table), the flags, their one-line checks, what a resume
may change, where a run's weights and first stage come from.

`python train.py --help` shows the row of the table that the run uses, and the whole table below. Every check here runs
before anything is loaded or written, and ends the run with one line that names the flag.
"""
import argparse
import contextlib
import math
import os

import torch

import data
import synctrack as st
import toy

# Training defaults, one row per preset (--stage vae: the row "vae"). --help shows the row the run will use.
DEFAULTS = {  # paper: §5.1 and the official config (AdamW lr 3e-5, linear warm-up over 1000 steps, LitEma 0.9999)
    "paper": dict(batch_size=16, lr=3e-5, warmup=1000, ema=0.9999, steps=20000, val_every=1000, ckpt_every=1000,
                  toy_songs=512),
    "toy": dict(batch_size=8, lr=3e-4, warmup=200, ema=0.999, steps=20000, val_every=1000, ckpt_every=1000,
                toy_songs=1024),  # from scratch on a CPU: 20,000 steps ≈ 1.8 h on 2 cores, 3,000 already make music
    "tiny": dict(batch_size=4, lr=1e-3, warmup=50, ema=0.99, steps=200, val_every=1000, ckpt_every=1000,
                 toy_songs=32),  # the tests' model
    "vae": dict(batch_size=1, lr=1e-3, warmup=100, ema=0.0, steps=2400, val_every=200, ckpt_every=200,
                toy_songs=1024),  # the toy VAE: L1 + KL on log-mels as LDM's autoencoder (no GAN), no EMA
}
COMMON = dict(data="toy", weight_decay=0.01,  # official: torch AdamW's default
              accum=1, log_every=50, val_batches=8, spike=10.0, kl_weight=1e-4, seed=0, train_split="train",
              val_split="validation")
RESUME_FLAGS = ("resume", "steps", "device", "threads", "workers", "export", "overwrite")  # what a resume may change
RUN_FILES = ("ckpt.pt", "log.jsonl", "data_report.json")  # what a run writes in --out
RULES = {  # what a number given to a flag must be, checked as it is parsed (before anything loads)
    "≥ 0": lambda v: v >= 0, "≥ 1": lambda v: v >= 1, "in [0, 1]": lambda v: 0 <= v <= 1,
    "a finite number > 0": lambda v: 0 < v < math.inf, "finite, ≥ 0": lambda v: 0 <= v < math.inf,
}


def parse_args(argv=None, description=None):
    """train.py's arguments, checked, with the defaults of this run's row filled in (a resume takes them from its
    checkpoint: resume_args). --help starts with `description` (train.py's docstring) and ends with DEFAULTS."""
    first = argparse.ArgumentParser(add_help=False)  # which row of DEFAULTS this run uses: its --help shows it
    for flag in ("--preset", "--data", "--stage"):
        first.add_argument(flag)
    first = first.parse_known_args(argv)[0]
    preset = first.preset or ("toy" if first.data in (None, "toy") or first.stage == "vae" else "paper")
    row = {**COMMON, **DEFAULTS["vae" if first.stage == "vae" else preset]}
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults per preset:\n" + "\n".join(f"  {name}: " + ", ".join(
                                    f"{k}={v}" for k, v in r.items()) for name, r in DEFAULTS.items()))

    def add(flag, help, kind=None, want=None, **kw):  # the default shown is this run's; None tells a given flag apart
        key = flag[2:].replace("-", "_")
        p.add_argument(flag, help=help + (f" (default: {row[key]})" if key in row else ""),
                       **(dict(type=number(flag, kind, want)) if kind else {}), **kw)
    add("--stage", "the SyncTrack denoiser (Eq. 2) or the toy first stage (the VAE of Eqs. 1 and 3)",
        choices=["denoiser", "vae"])
    add("--data", "'toy' (procedural songs) or a Slakh2100 folder (either layout)")
    add("--preset", f"model and clip size (this run: {preset}; toy with --data toy or --stage vae, else paper)",
        choices=sorted(st.PRESETS))
    add("--out", "run folder: ckpt.pt, log.jsonl, data_report.json (default: runs/PRESET[-vae])")
    add("--overwrite", "replace the run in --out (once the new one has a checkpoint) and --export", action="store_true")
    add("--resume", "continue the run in this folder (only --steps, --device, --threads, --workers, --export may "
        "change)", metavar="RUN")
    add("--init", "start from these weights, fresh optimiser: MusicLDM or SyncTrack (Lightning), or a ckpt.pt or "
        "--export file of ours", metavar="CKPT")
    add("--first-stage", "MusicLDM weights, a toy VAE (a --stage vae ckpt.pt; toy default: "
        "checkpoints/synctrack_toy.pt), or 'offline' (no weights)", metavar="PATH")
    add("--trust", "allow pickled checkpoints (Lightning) to be unpickled", action="store_true")
    add("--steps", "optimiser steps in total (0: save the untrained model)", int, "≥ 0")
    add("--batch-size", "clips per micro-batch (per process under DDP)", int, "≥ 1")
    add("--accum", "micro-batches per optimiser step (gradient accumulation)", int, "≥ 1")
    add("--lr", "AdamW learning rate after the warm-up", float, "a finite number > 0")
    add("--weight-decay", "AdamW weight decay", float, "finite, ≥ 0")
    add("--warmup", "steps of linear warm-up: lr · step / warmup, the first update at 0 (official)", int, "≥ 0")
    add("--ema", "EMA decay of the weights that are sampled from", float, "in [0, 1]")
    add("--kl-weight", "--stage vae: weight of the KL term (per latent value)", float, "finite, ≥ 0")
    add("--val-every", "steps between validations (EMA model, fixed clips and noise)", int, "≥ 1")
    add("--val-batches", "batches per validation", int, "≥ 1")
    add("--ckpt-every", "steps between checkpoints (the last step and a Ctrl-C are always saved)", int, "≥ 1")
    add("--log-every", "steps between log.jsonl records", int, "≥ 1")
    add("--spike", "skip a batch whose loss exceeds this × its running mean, 3 in a row stop (0: off)", float,
        "finite, ≥ 0")
    add("--toy-songs", "songs in the toy training set", int, "≥ 1")
    add("--train-split", "Slakh split folder(s), comma-separated ('.' for BabySlakh)")
    add("--val-split", "Slakh validation split ('.' for BabySlakh; official: test)")
    add("--workers", "data loader processes (default: 0 for toy, 2 for Slakh)", int, "≥ 0")
    add("--seed", "seed of the weights, the noise and the data order", int, "≥ 0")
    add("--device", "torch device (default: cuda when available, else cpu)")
    add("--precision", "autocast dtype (default: bf16 on CUDA, fp32 on CPU)", choices=["bf16", "fp32"])
    add("--compile", "torch.compile the denoiser", action="store_true")
    add("--threads", "torch CPU threads", int, "≥ 1")
    add("--export", "at the end, also write the EMA weights in float16 (a small file for sample.py)", metavar="PATH")
    g = p.add_argument_group("model (Table 6 ablations and §3 variant)")
    g.add_argument("--variant", choices=["paper", "official"],
                   help="Eq. 5 as written, or as the released weights compute it (default: paper)")
    g.add_argument("--no-prior", action="store_true", help="no instrument prior (Backbone)")
    g.add_argument("--no-global", action="store_true", help="no global cross-track attention (②)")
    g.add_argument("--no-time", action="store_true", help="no time-specific cross-track attention (③)")
    g.add_argument("--reorder", action="store_true", help="③ before ② (SyncTrack-reorder)")
    g.add_argument("--alternate", action="store_true", help="② and ③ alternate (SyncTrack-alternate)")
    args = p.parse_args(argv)
    check_flags(args)
    if not args.resume:  # a resumed run takes the rest from its checkpoint (resume_args)
        out = os.path.join("runs", preset + ("-vae" if args.stage == "vae" else ""))
        for key, value in {**row, "preset": preset, "stage": "denoiser", "out": out}.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    return args


def number(flag, kind, want):
    """An argparse type: a `kind` (int, float) that is `want` (see RULES), else one line naming the flag."""
    def parse(text):
        value = kind(text)
        if not RULES[want](value):
            raise SystemExit(f"{flag} must be {want}, got {value}")
        return value
    parse.__name__ = kind.__name__  # text that is no number: argparse's "invalid int value"
    return parse


def check_flags(args):
    """One line per bad device, path or launch, naming the flag, before anything is loaded or written."""
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"--device {args.device}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"--device {args.device}: {torch.cuda.device_count()} CUDA device(s) here; use --device cpu")
    if args.data not in (None, "toy") and not os.path.isdir(args.data):
        raise SystemExit(f"--data {args.data}: no such folder (give a Slakh2100 root with train/ and validation/, "
                         f"or BabySlakh with --train-split . --val-split .)")
    for flag, path in (("out", args.out), ("resume", args.resume)):
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise SystemExit(f"--{flag} {path} is a file; a run is a folder: choose another --{flag}")
    if args.export and os.path.exists(args.export) and not args.overwrite:
        raise SystemExit(f"--export {args.export} exists: choose another path, or pass --overwrite to replace it")
    if args.stage == "vae" and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise SystemExit("--stage vae trains in one process (no torchrun)")


def check_outputs(args):
    """No output (--out, --export) is an input (--init, --first-stage, --data) or one of the run's own files."""
    inputs = {"--init": args.init, "--first-stage": None if args.first_stage == "offline" else args.first_stage,
              "--data": None if args.data == "toy" else args.data}
    with one_line():
        data.check_outputs({"--out": args.out, "--export": args.export}, inputs)
    if args.export and os.path.realpath(args.export) in [os.path.realpath(os.path.join(args.out, name))
                                                         for name in RUN_FILES]:
        raise SystemExit(f"--export {args.export} is one of the run's own files in --out {args.out}: choose another "
                         f"--export")


@contextlib.contextmanager
def one_line(what=None, *errors):
    """A file or folder of the user's that cannot be used ends the run with one line, `what: why`, no traceback."""
    try:
        yield
    except (OSError, ValueError, *errors) as err:
        raise SystemExit(f"{what}: {err}" if what else str(err)) from None


def resume_args(given):
    """The resumed run's own arguments and checkpoint; a flag that would change its settings is refused."""
    path = os.path.join(given.resume, "ckpt.pt")
    with one_line(f"--resume {given.resume}: cannot read {path}", RuntimeError):
        ckpt = st.read_checkpoint(path)
    if not isinstance(ckpt, dict) or "args" not in ckpt:
        raise SystemExit(f"--resume {given.resume}: {path} is not a training checkpoint (an --export file has no "
                         f"optimiser or data position to continue from)")
    saved, world, was = ckpt["args"], int(os.environ.get("WORLD_SIZE", 1)), ckpt.get("world_size", 1)
    conflicts = [f"--{key.replace('_', '-')}{'' if value is True else f' {value}'} (the run has {saved.get(key)})"
                 for key, value in vars(given).items()
                 if key not in RESUME_FLAGS and value not in (None, False) and value != saved.get(key)]
    if conflicts:
        raise SystemExit(f"--resume {given.resume} continues with the run's own settings; these flags differ: "
                         f"{', '.join(conflicts)}. Drop them, or start a new run with another --out")
    if was != world:  # the data shards and the noise of each rank depend on it
        raise SystemExit(f"--resume {given.resume}: the run trained on {was} process(es), this is {world}; resume it "
                         f"with torchrun --nproc_per_node {was}")
    args = argparse.Namespace(**{**saved, "resume": given.resume, "overwrite": given.overwrite, "out": given.resume,
                                 "device": given.device, "threads": given.threads})
    for key in ("export", "workers", "steps"):  # given now: they replace the run's own
        if getattr(given, key) is not None:
            setattr(args, key, getattr(given, key))
    return args, ckpt


def model_config(args):
    """The model asked for: the preset's SyncTrackConfig with the ablation flags (Table 6) and --variant."""
    overrides = dict(instrument_prior=not args.no_prior, global_attention=not args.no_global,
                     time_attention=not args.no_time, reorder=args.reorder, alternate=args.alternate)
    if args.variant:
        overrides["variant"] = args.variant
    return st.SyncTrackConfig(**{**st.PRESETS[args.preset], **overrides})


def read_init(args):
    """The --init checkpoint, read once (None without --init): train.init_weights maps it, first_stage may use it."""
    if args.init:
        with one_line(f"--init {args.init}: cannot read it", RuntimeError):
            return st.read_checkpoint(args.init, args.trust)
    return None


def first_stage(args, cfg, init):
    """The frozen first stage (Eq. 1) and the config fitted to its latents: --first-stage, else the --init checkpoint's
    (unless it is one of ours without one), else the preset's own (toy.build_first_stage)."""
    spec = args.first_stage or (args.init if init and ("config" not in init or "first_stage" in init) else None)
    if spec is None and cfg.first_stage == "musicldm":
        raise SystemExit(f"preset {args.preset!r} diffuses MusicLDM latents: give --init musicldm-ckpt.ckpt --trust. "
                         f"On a CPU without those weights: `python train.py --stage vae --data {args.data}` trains a "
                         f"toy first stage on your data, then `python train.py --preset toy --data {args.data} "
                         f"--first-stage runs/toy-vae/ckpt.pt` the toy model on it")
    with one_line(f"first stage {spec or cfg.first_stage}"):
        return toy.build_first_stage(cfg, spec, args.trust)
