"""Train SyncTrack (§5.1, App. A.5; optimiser and EMA as the official code).

    python train.py --preset toy                                     # a small model on a laptop CPU, no downloads
    python train.py --data slakh/ --init ckpt/musicldm-ckpt.ckpt --trust   # the paper: fine-tune from MusicLDM
    torchrun --nproc_per_node 8 train.py --data slakh/ --init ...    # several GPUs (or nodes) with DDP
    python train.py --resume runs/toy [--steps N]                    # continue exactly where a run stopped
    python train.py --preset toy --init checkpoints/synctrack_toy.pt --lr 3e-5 --steps 2000 --out runs/more  # go on
    python train.py --stage vae --preset toy                         # the toy first stage (a small MusicLDM-style VAE)

One step: batch of waveforms (B, S, N) → frozen first stage → latents z (B, S, C, T, F) → ε-loss of Eq. (2) →
backward → gradient check → AdamW → EMA. Checkpoints hold config, weights, EMA, optimiser, step, RNG states and the
data position. A run folder is never reused by accident: an existing one is refused unless --resume or --overwrite.
Toy clips through a learned first stage are encoded once (data.EncodedClips), so a step draws z = mean + std·ε.
"""
import argparse
import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import synctrack as st
import toy

# The toy preset's frozen first stage: the shipped checkpoint holds it (train your own with --stage vae)
TOY_FIRST_STAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "synctrack_toy.pt")
DEFAULTS = dict(
    stage="denoiser", data="toy",
    batch_size=16,         # §5.1 / official config
    lr=3e-5,               # official (AdamW; the paper says Adam)
    weight_decay=0.01,     # official: torch AdamW default
    warmup=1000,           # official: linear warm-up over the first 1000 steps
    ema=0.9999,            # official LitEma decay
    steps=20000,
    accum=1,               # gradient accumulation (micro-batches per optimiser step)
    val_every=1000, ckpt_every=1000, log_every=50, val_batches=8,
    spike=10.0,            # skip a batch whose loss exceeds this × its running mean, stop after SPIKE_PATIENCE in a
                           # row (0: off); NaN/inf always stops
    toy_songs=512, seed=0, train_split="train", val_split="validation",
)
# Per-preset training defaults over DEFAULTS: the toy model learns from scratch on a CPU, so it takes a larger learning
# rate, a shorter warm-up and EMA, and smaller batches than fine-tuning from MusicLDM. Its 20,000 steps take about
# 1.8 h on 2 cores (the shipped model then went on at lr 1e-4 and 3e-5 with --init); 3,000 steps (25 min) already
# make music (README "The toy model").
PRESET_DEFAULTS = {
    "paper": dict(),
    "toy": dict(lr=3e-4, warmup=200, ema=0.999, batch_size=8, steps=20000, val_every=1000, ckpt_every=1000,
                toy_songs=1024),
    "tiny": dict(lr=1e-3, warmup=50, ema=0.99, batch_size=4, steps=200, toy_songs=32),
}
# `--stage vae`: the toy first stage, MusicLDM's VAE design at small width (synctrack.TOY_VAE_DDCONFIG), trained from
# scratch on toy log-mels with L1 + KL as LDM's autoencoder (no GAN or perceptual term); these override the above.
VAE_DEFAULTS = dict(lr=1e-3, warmup=100, batch_size=1, steps=2400, val_every=200, ckpt_every=200, kl_weight=1e-4)
# What a resumed run may change; every other setting is the run's own (a different value is refused, not ignored)
RESUME_FLAGS = ("resume", "steps", "device", "threads", "workers", "export", "overwrite")
RUN_FILES = ("ckpt.pt", "ckpt.pt.tmp", "log.jsonl", "log.jsonl.tmp", "data_report.json")  # what a run writes in --out
# Bounds checked before anything is loaded: flag -> (test, what it must be)
BOUNDS = dict(
    steps=(lambda v: v >= 0, "≥ 0"), batch_size=(lambda v: v >= 1, "≥ 1"), accum=(lambda v: v >= 1, "≥ 1"),
    val_every=(lambda v: v >= 1, "≥ 1"), ckpt_every=(lambda v: v >= 1, "≥ 1"), log_every=(lambda v: v >= 1, "≥ 1"),
    val_batches=(lambda v: v >= 1, "≥ 1"), toy_songs=(lambda v: v >= 1, "≥ 1"), threads=(lambda v: v >= 1, "≥ 1"),
    workers=(lambda v: v >= 0, "≥ 0"), warmup=(lambda v: v >= 0, "≥ 0"),
    lr=(lambda v: 0 < v < math.inf, "a finite number > 0"), weight_decay=(lambda v: 0 <= v < math.inf, "finite, ≥ 0"),
    ema=(lambda v: 0 <= v <= 1, "in [0, 1]"), kl_weight=(lambda v: 0 <= v < math.inf, "finite, ≥ 0"), spike=(lambda v: 0 <= v < math.inf, "finite, ≥ 0 (0: off)"),
)


def parse_args(argv=None):
    epilog = "defaults: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()) + "\n" + "\n".join(
        f"  --preset {name}: " + ", ".join(f"{k}={v}" for k, v in over.items()) for name, over in PRESET_DEFAULTS.items()
        if over)
    p = argparse.ArgumentParser(description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    # every default is None here and filled from DEFAULTS below, so a flag the user gave can be told from a default
    p.add_argument("--stage", choices=["denoiser", "vae"], help="what to train: the SyncTrack denoiser (Eq. 2, "
                   "the default) or the toy first stage (the VAE of Eqs. 1 and 3)")
    p.add_argument("--kl-weight", type=float, help="--stage vae: weight of the KL term (per latent value)")
    p.add_argument("--data", help="'toy' (procedural songs, the default) or a Slakh2100 folder (either layout)")
    p.add_argument("--preset", choices=sorted(st.PRESETS),
                   help="model, clip size and training defaults (default: toy with --data toy, else paper)")
    p.add_argument("--out", help="run folder for ckpt.pt, log.jsonl, data_report.json (default: runs/PRESET); "
                                 "must be new or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run files in --out (ckpt.pt, log.jsonl, data_report.json) and an existing "
                        "--export file")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (its ckpt.pt) exactly; only "
                                                  "--steps, --device, --threads, --workers and --export may change")
    p.add_argument("--init", metavar="CKPT", help="start from these weights with a fresh optimiser: a MusicLDM or "
                   "SyncTrack Lightning checkpoint (UNet and first stage), or one of ours (a run's ckpt.pt or an "
                   "--export file, e.g. the shipped toy model; its config must match the model asked for)")
    p.add_argument("--first-stage", metavar="PATH", help="MusicLDM first-stage weights, a toy VAE (a --stage vae run's "
                   "ckpt.pt or a toy checkpoint; toy default: checkpoints/synctrack_toy.pt), or 'offline' (no weights)")
    p.add_argument("--trust", action="store_true", help="allow pickled checkpoints (Lightning) to be unpickled")
    p.add_argument("--steps", type=int, help="optimiser steps in total (0: save the untrained model)")
    p.add_argument("--batch-size", type=int, help="clips per micro-batch (per process under DDP)")
    p.add_argument("--accum", type=int, help="micro-batches per optimiser step (gradient accumulation)")
    p.add_argument("--lr", type=float, help="AdamW learning rate after the warm-up")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, help="steps of linear learning-rate warm-up")
    p.add_argument("--ema", type=float, help="EMA decay of the weights that are sampled from")
    p.add_argument("--val-every", type=int, help="steps between validation losses (EMA model, fixed noise)")
    p.add_argument("--val-batches", type=int, help="batches per validation")
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints (the last step is always saved)")
    p.add_argument("--log-every", type=int, help="steps between log.jsonl records")
    p.add_argument("--spike", type=float, help="skip a batch whose loss exceeds this × its running mean; "
                                             f"{SPIKE_PATIENCE} in a row stop the run (0: off)")
    p.add_argument("--toy-songs", type=int, help="songs in the toy training set")
    p.add_argument("--train-split", help="Slakh split folder(s), comma-separated ('.' for BabySlakh; default: train)")
    p.add_argument("--val-split", help="Slakh validation split (default: validation; official: test)")
    p.add_argument("--workers", type=int, help="data loader processes (default: 0 for toy, 2 for Slakh)")
    p.add_argument("--seed", type=int, help="seed of the weights, the noise and the data order")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--export", metavar="PATH", help="at the end, also write the EMA weights in float16 with the "
                                                   "config: a small file for sample.py (how the toy model is shipped)")
    g = p.add_argument_group("model (Table 6 ablations and §3 variant)")
    g.add_argument("--variant", choices=["paper", "official"], help="Eq. 5 as written, or as the released weights "
                                                                    "compute it (default: paper)")
    g.add_argument("--no-prior", action="store_true", help="no instrument prior (Backbone)")
    g.add_argument("--no-global", action="store_true", help="no global cross-track attention (②)")
    g.add_argument("--no-time", action="store_true", help="no time-specific cross-track attention (③)")
    g.add_argument("--reorder", action="store_true", help="③ before ② (SyncTrack-reorder)")
    g.add_argument("--alternate", action="store_true", help="② and ③ alternate (SyncTrack-alternate)")
    args = p.parse_args(argv)
    check_bounds(args)
    if args.resume:
        return args  # everything else comes from the run being resumed (resume_args)
    args.preset = args.preset or ("toy" if args.data in (None, "toy") else "paper")
    vae = VAE_DEFAULTS if args.stage == "vae" else {}
    for key, value in {**DEFAULTS, **PRESET_DEFAULTS[args.preset], **vae}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or os.path.join("runs", args.preset + ("-vae" if args.stage == "vae" else ""))
    args.device = args.device or default_device()
    return args


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_bounds(args):
    """One line per bad value, before anything is loaded or written."""
    for key, (ok, want) in BOUNDS.items():
        value = getattr(args, key)
        if value is not None and not ok(value):
            raise SystemExit(f"--{key.replace('_', '-')} must be {want}, got {value}")


def check_new_outputs(args):
    """Refuse to mix runs or replace files: --out must be new or empty and --export must not exist, unless --overwrite."""
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        held = sorted(os.listdir(args.out))
        hint = f"continue it with --resume {args.out}, " if "ckpt.pt" in held else ""
        raise SystemExit(f"--out {args.out} already holds {', '.join(held[:4])}{' …' if len(held) > 4 else ''}: "
                         f"{hint}choose another --out, or pass --overwrite to replace its run")
    check_export(args.export, args.overwrite)


def check_export(path, overwrite):
    if path and os.path.exists(path) and not overwrite:
        raise SystemExit(f"--export {path} exists: choose another path, or pass --overwrite to replace it")


def resume_args(given):
    """The resumed run's own arguments and checkpoint; a flag that would change its settings is refused."""
    path = os.path.join(given.resume, "ckpt.pt")
    try:
        ckpt = st.read_checkpoint(path)
    except (OSError, ValueError, RuntimeError) as err:
        raise SystemExit(f"--resume {given.resume}: cannot read {path} ({err})") from None
    if not isinstance(ckpt, dict) or "args" not in ckpt:
        raise SystemExit(f"--resume {given.resume}: {path} is not a training checkpoint (an --export file has no "
                         f"optimiser or data position to continue from)")
    saved = ckpt["args"]
    conflicts = [f"--{key.replace('_', '-')}{'' if value is True else f' {value}'} (the run has {saved.get(key)})"
                 for key, value in vars(given).items()
                 if key not in RESUME_FLAGS and value not in (None, False) and value != saved.get(key)]
    if conflicts:
        raise SystemExit(f"--resume {given.resume} continues with the run's own settings; these flags differ: "
                         f"{', '.join(conflicts)}. Drop them, or start a new run with another --out")
    check_export(given.export, given.overwrite)
    args = argparse.Namespace(**saved)
    args.resume, args.overwrite, args.out = given.resume, given.overwrite, given.resume
    args.device, args.threads = given.device or default_device(), given.threads
    args.workers = given.workers if given.workers is not None else args.workers
    args.export = given.export or args.export
    args.steps = given.steps if given.steps is not None else args.steps
    return args, ckpt


def model_config(args):
    overrides = dict(instrument_prior=not args.no_prior, global_attention=not args.no_global,
                     time_attention=not args.no_time, reorder=args.reorder, alternate=args.alternate)
    if args.variant:
        overrides["variant"] = args.variant
    return st.SyncTrackConfig(**{**st.PRESETS[args.preset], **overrides})


def build_first_stage(args, cfg, init=None):
    """The frozen first stage (Eq. 1), and the config with its latent grid made to match that stage. `init` (the
    --init checkpoint, loaded) supplies it unless it is one of ours without one (an offline-stage run)."""
    stage_in_init = init is not None and ("config" not in init or "first_stage" in init)
    spec = (args.first_stage or (args.init if stage_in_init else None)
            or {"offline": "offline", "toy-vae": TOY_FIRST_STAGE}.get(cfg.first_stage))
    if spec is None:
        raise SystemExit(f"preset {args.preset!r} diffuses MusicLDM latents: give --init musicldm-ckpt.ckpt or "
                         f"--first-stage PATH (MusicLDM weights), or --first-stage offline")
    try:
        stage = toy.make_first_stage(spec, trust=args.trust)
    except (OSError, ValueError) as err:
        raise SystemExit(f"first stage {spec}: {err}") from None
    C, T, F = stage.latent_shape(cfg.clip_samples)
    return stage, dataclasses.replace(cfg, first_stage=stage.kind, latent_channels=C, latent_downsampling=st.MEL_BINS // F,
                                      latent_time=T, latent_freq=F)


def datasets(args, cfg, stage=None):
    """Training and validation clips; toy clips through a learned first stage are encoded once (data.EncodedClips)."""
    if args.data == "toy" and hasattr(stage, "posterior"):
        return tuple(data.EncodedClips(d, stage, device=args.device) for d in datasets(args, cfg))
    if args.data == "toy":
        return (toy.ToyDataset(args.toy_songs, cfg.clip_samples, seed=args.seed, train=True),
                toy.ToyDataset(max(8, args.toy_songs // 16), cfg.clip_samples, seed=args.seed, train=False))
    return (data.SlakhDataset(args.data, args.train_split.split(","), cfg.clip_samples, train=True, seed=args.seed),
            data.SlakhDataset(args.data, args.val_split.split(","), cfg.clip_samples, train=False))


# ----------------------------------------------------------------------------------------------------------------------
# The run: what one training process holds, built once by setup() and moved forward by train_step()

@dataclass
class Run:
    args: argparse.Namespace
    cfg: st.SyncTrackConfig
    stage: torch.nn.Module            # frozen first stage (Eq. 1)
    model: st.SyncTrack               # the weights AdamW trains
    ema_model: st.SyncTrack           # their moving average: what is validated, exported and sampled
    opt: torch.optim.Optimizer
    net: torch.nn.Module              # model as called: wrapped by DDP and/or torch.compile
    autocast: torch.autocast
    distributed: bool = False
    rank: int = 0
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0           # data position inside the epoch, so a resume continues mid-epoch
    running: float | None = None      # running mean of the loss, for the spike detector
    last_good: int = 0                # step of the checkpoint on disk
    spikes: int = 0                   # spiking batches in a row, each skipped


# One batch of the Eq. 2 loss can spike on its own: a clip drawn at a step l near 0 (almost clean) costs about 1, so in
# a batch of 8 it lifts the mean by ~0.12, ten times a converged toy model's 0.012 (it happened once in 15,610 steps).
# Divergence persists; such a batch does not. So a spike is skipped, and only SPIKE_PATIENCE in a row stop the run.
SPIKE_PATIENCE = 3


class UnstableStep(Exception):
    """A step whose loss or gradient is not finite: raised before it reaches the weights."""


class SpikedStep(UnstableStep):
    """A finite loss above --spike × the running mean: the batch is skipped (gradients dropped, nothing updated)."""


def init_distributed(args):
    """(distributed, rank); under torchrun one process per GPU (NCCL) or CPU process (gloo)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False, 0
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    if args.device.startswith("cuda"):
        args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(args.device)
    return True, dist.get_rank()


def setup(args, ckpt=None):
    """Build (or restore from `ckpt`) the first stage, model, EMA and optimiser of a run."""
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed, rank = init_distributed(args)
    torch.manual_seed(args.seed + rank)
    cfg = st.SyncTrackConfig.from_dict(ckpt["config"]) if ckpt else model_config(args)
    init = read_init(args.init, args.trust) if args.init and not ckpt else None
    stage, cfg = build_first_stage(args, cfg, init)
    stage = stage.to(args.device).eval()  # important: frozen, never trained (§3), and without dropout
    model = st.SyncTrack(cfg).to(args.device)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)  # no gradients, no optimiser state: one copy
    if init is not None:
        report = init_weights(init, args.init, model, ema_model)
        if rank == 0:
            print(f"init from {args.init}: {report}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    if args.compile:
        net = torch.compile(net)
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    run = Run(args, cfg, stage, model, ema_model, opt, net, autocast, distributed, rank)
    if ckpt:
        restore(run, ckpt)
    return run


def read_init(path, trust):
    try:
        return st.read_checkpoint(path, trust)
    except (OSError, ValueError, RuntimeError) as err:
        raise SystemExit(f"--init {path}: cannot read it ({err})") from None


def init_weights(state, path, model, ema_model):
    """--init: raw weights to train, EMA weights to the EMA (as the official code); returns a line for the log.

    Our own checkpoints (a run's ckpt.pt, or an --export file whose one set of weights is the EMA) must hold the config
    of `model`; a Lightning checkpoint is mapped by load_official."""
    if not ("config" in state and "model" in state):
        report = st.load_official(model, state, ema=False, name=path)
        st.load_official(ema_model, state, ema=True, name=path)
        return (f"{report['loaded']} tensors, {len(report['new'])} new SyncTrack tensors, ignored {report['ignored']}"
                + (f"\nwarning: {report['warning']}" if report["warning"] else ""))
    theirs, ours = dataclasses.asdict(st.SyncTrackConfig.from_dict(state["config"])), dataclasses.asdict(model.config)
    differ = [f"{k} {theirs[k]} there, {ours[k]} here" for k in ours if theirs[k] != ours[k]]
    if differ:
        raise SystemExit(f"--init {path}: its model differs from the one asked for ({'; '.join(differ)}): "
                         f"use the preset and flags it was trained with")
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
    ema_model.load_state_dict({k: v.float() for k, v in (state.get("ema") or state["model"]).items()})
    return f"SyncTrack weights of step {state.get('step')}, fresh optimiser from step 0"


def restore(run, ckpt):
    run.model.load_state_dict(ckpt["model"])
    run.ema_model.load_state_dict(ckpt["ema"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.step, run.epoch, run.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
    run.running, run.last_good = ckpt.get("running_loss"), ckpt["step"]
    if run.rank == 0:  # exact for one process; other DDP ranks draw fresh, distinct noise
        set_rng_states(ckpt["rng"])
    else:
        torch.manual_seed(run.args.seed + 1_000_003 * run.step + run.rank)


def loaders(run):
    """(train set, validation set, train loader, validation loader, full batches per epoch)."""
    args = run.args
    train_set, val_set = datasets(args, run.cfg, run.stage)
    workers = args.workers if args.workers is not None else (0 if args.data == "toy" else 2)
    train_loader = data.make_loader(train_set, args.batch_size, True, workers, run.distributed, args.seed)
    val_loader = data.make_loader(val_set, args.batch_size, False, workers, distributed=False)
    batches_per_epoch = len(train_loader.sampler) // args.batch_size
    if batches_per_epoch < args.accum:
        raise SystemExit(f"the training set has {len(train_set)} clips: fewer than one step of {args.accum} "
                         f"batch(es) of {args.batch_size}")
    return train_set, val_set, train_loader, val_loader, batches_per_epoch


# ----------------------------------------------------------------------------------------------------------------------
# One step

def latents(stage, batch, sample=True):
    """Eq. (1) for a batch of waveforms (B, S, N), or for cached posteriors (B, 2, S, C, T, F) from data.EncodedClips:
    z = mean + std·ε when sampling (the official training target), the mean otherwise."""
    if batch.dim() == 3:
        return stage.encode(batch, sample=sample)
    mean, std = batch.unbind(1)                                          # (B, 2, S, C, T, F) -> 2 × (B, S, C, T, F)
    return mean + std * torch.randn_like(std) if sample else mean


def denoiser_loss(run, batch):
    """Eq. (2) on the first stage's latents of a batch of waveforms (B, S, N) or cached posteriors."""
    z0 = latents(run.stage, batch.to(run.args.device, non_blocking=True))  # (B, S, C, T, F), Eq. (1)
    with run.autocast:
        return st.diffusion_loss(run.net, z0)


def train_step(run, micro_batches, loss_fn=denoiser_loss):
    """One optimiser step over the `accum` micro-batches; returns (loss, gradient norm, learning rate).

    Raises UnstableStep on a non-finite loss or gradient, SpikedStep on a spike; then the gradients are dropped and the
    weights, EMA and running mean are untouched."""
    args = run.args
    # 1. warm-up: lr grows linearly to its value over the first `warmup` steps (official)
    lr = args.lr * min(1.0, (run.step + 1) / max(1, args.warmup))
    for group in run.opt.param_groups:
        group["lr"] = lr
    # 2. loss and gradients, accumulated over micro-batches; DDP all-reduces the gradients once, on the last one
    loss = 0.0
    for micro, batch in enumerate(micro_batches):
        sync = not run.distributed or micro == args.accum - 1
        with contextlib.nullcontext() if sync else run.net.no_sync():
            part = loss_fn(run, batch) / args.accum
            part.backward()
        loss += part.item()
    if run.distributed:  # every rank decides on the same mean loss below
        mean = torch.tensor([loss], device=args.device)
        dist.all_reduce(mean)
        loss = mean.item() / dist.get_world_size()
    # 3. health check on the loss and the (all-reduced) gradient norm, before the update reaches weights or EMA
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), float("inf")).item()  # measures only
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    spike = finite and args.spike and run.running and run.step > 100 and loss > args.spike * run.running
    if not finite or spike:
        run.opt.zero_grad(set_to_none=True)
        raise (SpikedStep if spike else UnstableStep)(f"loss {loss:.4g}, gradient norm {grad_norm:.4g} "
                                                      f"(running mean loss {run.running or float('nan'):.4g})")
    run.running = loss if run.running is None else 0.98 * run.running + 0.02 * loss
    # 4. AdamW, then the EMA of the new weights
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    run.step += 1
    ema_update(run.ema_model, run.model, args.ema, run.step)
    return loss, grad_norm, lr


def skip_or_stop(run, err):
    """A lone spike skips its batch (SPIKE_PATIENCE in a row stop the run); a non-finite loss or gradient stops it."""
    run.spikes += 1
    if isinstance(err, SpikedStep) and run.spikes < SPIKE_PATIENCE:
        if run.rank == 0:
            tqdm.write(f"step {run.step}: {err}; batch skipped ({SPIKE_PATIENCE} spikes in a row stop the run)")
        return
    in_a_row = f", {run.spikes} spikes in a row" if isinstance(err, SpikedStep) else ""
    raise SystemExit(f"step {run.step}: {err}{in_a_row}; stopped, the last good checkpoint (step {run.last_good}) is "
                     f"{run.args.out}/ckpt.pt")


@torch.no_grad()
def ema_update(ema_model, model, decay, updates):
    """Exponential moving average of the weights; LitEma's warm-up min(decay, (1+n)/(10+n)) as the official code."""
    d = min(decay, (1 + updates) / (10 + updates))
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)


@torch.no_grad()
def validate(run, loader):
    """Mean ε-loss of the EMA model on fixed clips, steps and noise, so values are comparable across a run."""
    g = torch.Generator(run.args.device).manual_seed(1234)
    losses = []
    for wave in itertools.islice(loader, run.args.val_batches):
        z0 = latents(run.stage, wave.to(run.args.device), sample=False)
        with run.autocast:
            losses.append(st.diffusion_loss(run.ema_model, z0, generator=g).item())
    return sum(losses) / max(len(losses), 1)


# ----------------------------------------------------------------------------------------------------------------------
# Files: the run folder, the log, checkpoints

def rng_states():
    """torch's generators: the only randomness in a step (data offsets are a function of seed and position)."""
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_states(s):
    torch.set_rng_state(s["torch"])
    if s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])


def start_outputs(run, train_set, val_set, batches_per_epoch):
    """Rank 0: prepare --out, write data_report.json, say what is trained; returns the open log (None elsewhere)."""
    args = run.args
    if run.rank != 0:
        return None
    os.makedirs(args.out, exist_ok=True)
    if args.overwrite and not args.resume:  # asked for explicitly: the old run's files go, nothing else in the folder
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(args.out, name))
    report = train_set.report
    with open(os.path.join(args.out, "data_report.json"), "w") as f:
        json.dump({"train": report, "validation": val_set.report}, f, indent=1)
    n_params = sum(p.numel() for p in run.model.parameters())
    print(f"SyncTrack {n_params / 1e6:.2f}M params, latent {run.cfg.latent_shape}; {report['kept']} songs, "
          f"{len(train_set)} training clips ({len(report['dropped'])} songs dropped, see "
          f"{args.out}/data_report.json); {batches_per_epoch} batches/epoch; device {args.device}")
    return open_log(os.path.join(args.out, "log.jsonl"), run.step)


def open_log(path, step):
    """log.jsonl for appending, without the records past `step`: a run stopped after its last checkpoint wrote them,
    and the resumed run writes those steps again."""
    if step and os.path.exists(path):
        kept = []
        with open(path) as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):  # a line cut off by a kill is dropped too
                    if json.loads(line)["step"] <= step:
                        kept.append(line if line.endswith("\n") else line + "\n")
        data.atomic_write(path, lambda tmp: tmp.write_text("".join(kept)))
    return open(path, "a")


def write_log(log, record, bar, running):
    log.write(json.dumps(record) + "\n")
    log.flush()
    bar.set_postfix(loss=f"{running:.4f}", **({"val": f"{record['val_loss']:.4f}"} if "val_loss" in record else {}))


def save(run):
    """Rank 0 writes ckpt.pt atomically; a failed write (disk full) stops the run with the previous checkpoint intact."""
    if run.rank != 0:
        return
    path = os.path.join(run.args.out, "ckpt.pt")
    try:
        st.save_checkpoint(path, run.model, ema=run.ema_model.state_dict(),
                           scale_factor=getattr(run.stage, "scale_factor", None), optimizer=run.opt.state_dict(),
                           step=run.step, epoch=run.epoch, batch_in_epoch=run.batch_in_epoch,
                           running_loss=run.running, rng=rng_states(), args=vars(run.args),
                           **own_first_stage(run))
    except OSError as err:
        kept = f"the last good checkpoint is step {run.last_good}" if run.last_good else "no checkpoint was written"
        raise SystemExit(f"step {run.step}: {err.strerror or err}; {kept}") from None
    run.last_good = run.step


def own_first_stage(run):
    """The toy VAE travels inside every denoiser checkpoint, so sample.py needs no second file."""
    if run.cfg.first_stage != "toy-vae":
        return {}
    return {"first_stage": toy.first_stage_state(run.stage.vae, run.stage.scale_factor)}


def export(args):
    """--export: the run's ckpt.pt as a small float16 file of the EMA weights."""
    os.makedirs(os.path.dirname(args.export) or ".", exist_ok=True)
    st.export_checkpoint(os.path.join(args.out, "ckpt.pt"), args.export)


def memory_gb(device):
    """Peak memory: allocated GPU memory on CUDA, else the process's peak RSS (NaN where the OS does not say)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


# ----------------------------------------------------------------------------------------------------------------------
# The loop

def main(argv=None):
    args, ckpt = parse_args(argv), None
    if args.resume:
        args, ckpt = resume_args(args)
        if ckpt["step"] >= args.steps:
            return finished(args, ckpt)
    elif int(os.environ.get("RANK", 0)) == 0:  # rank 0 alone owns the files; its refusal stops torchrun's others
        check_new_outputs(args)
    if getattr(args, "stage", "denoiser") == "vae":  # runs saved before --stage existed are denoiser runs
        return train_vae(args, ckpt)
    run = setup(args, ckpt)
    del ckpt  # the loaded copy of every tensor (GBs at the paper's size) is in the run now
    train_set, val_set, train_loader, val_loader, batches_per_epoch = loaders(run)
    log = start_outputs(run, train_set, val_set, batches_per_epoch)
    t0, last_log = time.time(), run.step
    bar = tqdm(total=args.steps, initial=run.step, disable=run.rank != 0, desc="train")
    while run.step < args.steps:
        train_loader.sampler.set_epoch(run.epoch, skip=run.batch_in_epoch * args.batch_size)
        batches = iter(train_loader)
        while run.step < args.steps and run.batch_in_epoch + args.accum <= batches_per_epoch:
            try:  # batch → loss → backward → check → AdamW → EMA
                loss, grad_norm, lr = train_step(run, itertools.islice(batches, args.accum))
            except UnstableStep as err:
                skip_or_stop(run, err)
                run.batch_in_epoch += args.accum
                continue
            run.spikes, run.batch_in_epoch = 0, run.batch_in_epoch + args.accum
            bar.update()
            # log, validate (rank 0), checkpoint
            record = {}
            if run.step % args.log_every == 0 or run.step == args.steps:
                record = dict(step=run.step, loss=loss, loss_avg=run.running, lr=lr, grad_norm=grad_norm,
                              it_s=(run.step - last_log) / (time.time() - t0), mem_gb=memory_gb(args.device))
                t0, last_log = time.time(), run.step
            if log and (run.step % args.val_every == 0 or run.step == args.steps):
                record.update(step=run.step, val_loss=validate(run, val_loader))
            if log and record:
                write_log(log, record, bar, run.running)
            if run.step % args.ckpt_every == 0 or run.step == args.steps:
                save(run)
        if run.batch_in_epoch + args.accum > batches_per_epoch:
            run.epoch, run.batch_in_epoch = run.epoch + 1, 0
    bar.close()
    if run.step == 0:  # --steps 0 writes the untrained model, a baseline for the metrics
        save(run)
    if log:
        log.close()
        if args.export:
            export(args)
        print(f"step {run.step}: wrote {args.out}/ckpt.pt and {args.out}/log.jsonl"
              + (f"; exported {args.export}" if args.export else ""))
    if run.distributed:
        dist.destroy_process_group()


def finished(args, ckpt):
    """--resume of a run already at its target: nothing to train; an --export is still written."""
    print(f"{args.out} finished at step {ckpt['step']}; pass --steps M (M > {ckpt['step']}) to continue")
    if args.export and int(os.environ.get("RANK", 0)) == 0:
        export(args)
        print(f"exported {args.export}")


# ----------------------------------------------------------------------------------------------------------------------
# --stage vae: the toy first stage (the paper takes MusicLDM's, Eq. 1 and 3; the toy preset needs its own)

def train_vae(args, ckpt=None):
    """Train the toy first stage on toy clips; ckpt.pt holds it as a first-stage record (scale_factor included)
    that `--first-stage RUN/ckpt.pt` and synctrack.load_first_stage read."""
    if args.data != "toy":
        raise SystemExit("--stage vae trains the toy first stage on toy songs; for Slakh use MusicLDM's VAE (--init)")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = model_config(args)
    torch.manual_seed(args.seed)
    vae = st.AutoencoderKL(toy.TOY_VAE_DDCONFIG, toy.TOY_VAE_EMBED_DIM).to(args.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step, epoch, batch_in_epoch = 0, 0, 0
    if ckpt:
        vae.load_state_dict(ckpt["first_stage"]["vae"])
        opt.load_state_dict(ckpt["optimizer"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        set_rng_states(ckpt["rng"])
    train_set, val_set = datasets(args, cfg)
    loader = data.make_loader(train_set, args.batch_size, True, workers=0, seed=args.seed)
    val_waves = torch.stack([val_set[i] for i in range(min(len(val_set), 16))]).to(args.device)  # (16, S, N)
    val_mel = st.log_mel(val_waves.flatten(0, 1))                        # (16·S, T, F)
    batches_per_epoch = len(train_set) // args.batch_size
    os.makedirs(args.out, exist_ok=True)
    print(f"toy VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params, latent {toy.TOY_VAE_EMBED_DIM} x "
          f"{cfg.clip_samples // st.MEL_HOP // vae.downsampling} x {st.MEL_BINS // vae.downsampling} per track; "
          f"{len(train_set)} clips; device {args.device}")
    log = open_log(os.path.join(args.out, "log.jsonl"), step)
    bar = tqdm(total=args.steps, initial=step, desc="train vae")
    while step < args.steps:
        loader.sampler.set_epoch(epoch, skip=batch_in_epoch * args.batch_size)
        for wave in loader:
            # 1. warm-up, 2. loss on the log-mels of every track of the batch, 3. AdamW
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
            loss, l1 = toy.vae_loss(vae, st.log_mel(wave.to(args.device).flatten(0, 1)), args.kl_weight)
            if not math.isfinite(loss.item()):
                raise SystemExit(f"step {step}: loss {loss.item()}; stopped, the last good checkpoint is "
                                 f"{args.out}/ckpt.pt")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            bar.update()
            # 4. log; validate (posterior-mean reconstruction of fixed clips) and checkpoint, with the scale factor
            record = dict(step=step, loss=loss.item(), l1=l1.item()) if step % args.log_every == 0 else None
            if step % args.val_every == 0 or step % args.ckpt_every == 0 or step == args.steps:
                vae.eval()
                with torch.no_grad():
                    val_l1 = (vae.decode(vae.encode(val_mel)[0]) - val_mel).abs().mean().item()
                    scale = toy.vae_scale_factor(vae, val_waves)
                vae.train()
                record = {**(record or dict(step=step)), "val_l1": val_l1, "scale_factor": scale}
                bar.set_postfix(val_l1=f"{val_l1:.3f}")
                st.write_checkpoint(os.path.join(args.out, "ckpt.pt"), dict(
                    first_stage=toy.first_stage_state(vae, scale), optimizer=opt.state_dict(), step=step, epoch=epoch,
                    batch_in_epoch=batch_in_epoch, rng=rng_states(), args=vars(args)))
            if record:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if step == args.steps or batch_in_epoch == batches_per_epoch:
                break
        if batch_in_epoch == batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    log.close()
    print(f"step {step}: wrote {args.out}/ckpt.pt (the toy first stage) and {args.out}/log.jsonl; train the "
          f"denoiser on it with `python train.py --preset toy --first-stage {args.out}/ckpt.pt`")


if __name__ == "__main__":
    main()
