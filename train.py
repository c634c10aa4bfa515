"""Train SyncTrack (§5.1, App. A.5; optimiser and EMA as the official code).

    python train.py --preset toy                                     # a small model on a laptop CPU, no downloads
    python train.py --data slakh/ --init ckpt/musicldm-ckpt.ckpt --trust   # the paper: fine-tune from MusicLDM
    torchrun --nproc_per_node 8 train.py --data slakh/ --init ...    # several GPUs (or nodes) with DDP
    python train.py --resume runs/toy [--steps N]                    # continue exactly where a run stopped

One step: batch of waveforms (B, S, N) → frozen first stage → latents z (B, S, C, T, F) → ε-loss of Eq. (2) →
backward → AdamW → EMA. Checkpoints hold config, weights, EMA, optimiser, step, RNG states and the data position.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import synctrack as st

# The toy preset's frozen first stage: the shipped checkpoint holds it (train your own with --stage vae)
TOY_FIRST_STAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "synctrack_toy.pt")
DEFAULTS = dict(
    batch_size=16,         # §5.1 / official config
    lr=3e-5,               # official (AdamW; the paper says Adam)
    weight_decay=0.01,     # official: torch AdamW default
    warmup=1000,           # official: linear warm-up over the first 1000 steps
    ema=0.9999,            # official LitEma decay
    steps=20000,
    accum=1,               # gradient accumulation (micro-batches per optimiser step)
    val_every=1000, ckpt_every=1000, log_every=50, val_batches=8,
    spike=10.0,            # stop when a loss exceeds this × its running mean (0: off); NaN/inf always stops
    toy_songs=512, seed=0, out=None,
)
# Per-preset training defaults over DEFAULTS: the toy model learns from scratch on a CPU, so it takes a larger learning
# rate, a shorter warm-up and EMA, and smaller batches than fine-tuning from MusicLDM (issue: 30 minutes on 2 cores).
PRESET_DEFAULTS = {
    "paper": dict(),
    "toy": dict(lr=3e-4, warmup=200, ema=0.999, batch_size=8, steps=3500, val_every=500, ckpt_every=500),
    "tiny": dict(lr=1e-3, warmup=50, ema=0.99, batch_size=4, steps=200, toy_songs=32),
}
# `--stage vae`: the toy first stage, MusicLDM's VAE design at small width (synctrack.TOY_VAE_DDCONFIG), trained from
# scratch on toy log-mels with L1 + KL as LDM's autoencoder (no GAN or perceptual term); these override the above.
VAE_DEFAULTS = dict(lr=1e-3, warmup=100, batch_size=4, steps=1600, val_every=200, ckpt_every=200, kl_weight=1e-4)


def parse_args(argv=None):
    epilog = "defaults: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items() if v is not None) + "\n" + "\n".join(
        f"  --preset {name}: " + ", ".join(f"{k}={v}" for k, v in over.items()) for name, over in PRESET_DEFAULTS.items()
        if over)
    p = argparse.ArgumentParser(description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["denoiser", "vae"], default="denoiser",
                   help="what to train: the SyncTrack denoiser (Eq. 2) or the toy first stage (VAE of Eq. 1/3)")
    p.add_argument("--kl-weight", type=float, help="--stage vae: weight of the KL term (per latent value)")
    p.add_argument("--data", default="toy", help="'toy' (procedural songs) or a Slakh2100 folder (either layout)")
    p.add_argument("--preset", choices=sorted(st.PRESETS),
                   help="model, clip size and training defaults (default: toy with --data toy, else paper)")
    p.add_argument("--out", help="run folder: ckpt.pt, log.jsonl")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (its ckpt.pt) exactly; only "
                                                  "--steps, --device and --threads may be given with it")
    p.add_argument("--init", metavar="CKPT", help="MusicLDM (or SyncTrack) Lightning checkpoint: UNet and first stage")
    p.add_argument("--first-stage", metavar="PATH", help="MusicLDM first-stage weights, or 'offline' (no weights)")
    p.add_argument("--trust", action="store_true", help="allow pickled checkpoints (Lightning) to be unpickled")
    p.add_argument("--steps", type=int, help="optimiser steps in total")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--ema", type=float)
    p.add_argument("--val-every", type=int)
    p.add_argument("--val-batches", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--spike", type=float)
    p.add_argument("--toy-songs", type=int, help="songs in the toy training set")
    p.add_argument("--train-split", default="train", help="Slakh split folder(s), comma-separated ('.' for BabySlakh)")
    p.add_argument("--val-split", default="validation", help="Slakh validation split (official: test)")
    p.add_argument("--workers", type=int, help="data loader processes (default: 0 for toy, 2 for Slakh)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--export", metavar="PATH", help="at the end, also write the EMA weights in float16 with the "
                                                   "config: a small file for sample.py (how the toy model is shipped)")
    g = p.add_argument_group("model (Table 6 ablations and §3 variant)")
    g.add_argument("--variant", choices=["paper", "official"])
    g.add_argument("--no-prior", action="store_true", help="no instrument prior (Backbone)")
    g.add_argument("--no-global", action="store_true", help="no global cross-track attention (②)")
    g.add_argument("--no-time", action="store_true", help="no time-specific cross-track attention (③)")
    g.add_argument("--reorder", action="store_true", help="③ before ② (SyncTrack-reorder)")
    g.add_argument("--alternate", action="store_true", help="② and ③ alternate (SyncTrack-alternate)")
    args = p.parse_args(argv)
    if args.resume:
        return args  # everything else comes from the run being resumed (see main)
    args.preset = args.preset or ("toy" if args.data == "toy" else "paper")
    vae = VAE_DEFAULTS if args.stage == "vae" else {}
    for key, value in {**DEFAULTS, **PRESET_DEFAULTS[args.preset], **vae}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or os.path.join("runs", args.preset + ("-vae" if args.stage == "vae" else ""))
    return args


def model_config(args):
    overrides = dict(instrument_prior=not args.no_prior, global_attention=not args.no_global,
                     time_attention=not args.no_time, reorder=args.reorder, alternate=args.alternate)
    if args.variant:
        overrides["variant"] = args.variant
    return st.SyncTrackConfig(**{**st.PRESETS[args.preset], **overrides})


def build_first_stage(args, cfg):
    """The frozen first stage (Eq. 1), and the config's latent grid made to match it."""
    spec = args.first_stage or args.init or {"offline": "offline", "toy-vae": TOY_FIRST_STAGE}.get(cfg.first_stage)
    if spec is None:
        raise SystemExit(f"preset {args.preset!r} diffuses MusicLDM latents: give --init musicldm-ckpt.ckpt or "
                         f"--first-stage PATH (MusicLDM weights), or --first-stage offline")
    stage = st.make_first_stage(spec, trust=args.trust)
    C, T, F = stage.latent_shape(cfg.clip_samples)
    cfg.first_stage = ("offline" if spec == "offline" else
                       "toy-vae" if isinstance(stage.vocoder, st.GriffinLim) else "musicldm")
    cfg.latent_channels, cfg.latent_time, cfg.latent_freq = C, T, F
    return stage


def latents(stage, batch, sample=True):
    """Eq. (1) for a batch of waveforms (B, S, N), or for cached posteriors (B, 2, S, C, T, F) from data.EncodedClips:
    z = mean + std·ε when sampling (the official training target), the mean otherwise."""
    if batch.dim() == 3:
        return stage.encode(batch, sample=sample)
    mean, std = batch.unbind(1)                                          # (B, 2, S, C, T, F) -> 2 × (B, S, C, T, F)
    return mean + std * torch.randn_like(std) if sample else mean


def own_first_stage(stage, cfg):
    """The toy VAE travels inside every denoiser checkpoint, so sample.py needs no second file."""
    return {"first_stage": st.first_stage_state(stage.vae, stage.scale_factor)} if cfg.first_stage == "toy-vae" else {}


def datasets(args, cfg, stage=None):
    """Training and validation clips; toy clips through a learned first stage are encoded once (data.EncodedClips)."""
    if args.data == "toy" and hasattr(stage, "posterior"):
        return tuple(data.EncodedClips(d, stage, device=args.device) for d in datasets(args, cfg))
    if args.data == "toy":
        return (data.ToyDataset(args.toy_songs, cfg.clip_samples, seed=args.seed, train=True),
                data.ToyDataset(max(8, args.toy_songs // 16), cfg.clip_samples, seed=args.seed, train=False))
    return (data.SlakhDataset(args.data, args.train_split.split(","), cfg.clip_samples, train=True, seed=args.seed),
            data.SlakhDataset(args.data, args.val_split.split(","), cfg.clip_samples, train=False))


@torch.no_grad()
def ema_update(ema_model, model, decay, updates):
    """Exponential moving average of the weights; LitEma's warm-up min(decay, (1+n)/(10+n)) as the official code."""
    d = min(decay, (1 + updates) / (10 + updates))
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)


@torch.no_grad()
def validate(ema_model, stage, loader, args, autocast):
    """Mean ε-loss of the EMA model on fixed clips, steps and noise, so values are comparable across a run."""
    g = torch.Generator(args.device).manual_seed(1234)
    losses = []
    for i, wave in enumerate(loader):
        if i == args.val_batches:
            break
        z0 = latents(stage, wave.to(args.device), sample=False)
        with autocast:
            losses.append(st.diffusion_loss(ema_model, z0, generator=g).item())
    return sum(losses) / max(len(losses), 1)


def rng_states():
    """torch's generators: the only randomness in a step (data offsets are a function of seed and position)."""
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_states(s):
    torch.set_rng_state(s["torch"])
    if s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])


def main(argv=None):
    args = parse_args(argv)
    ckpt = None
    if args.resume:  # everything but the device comes from the run being resumed
        ckpt = torch.load(os.path.join(args.resume, "ckpt.pt"), map_location="cpu", weights_only=True)
        given = args
        args = argparse.Namespace(**ckpt["args"])
        args.device, args.threads, args.out = given.device, given.threads, given.resume
        args.steps = max(given.steps or args.steps, ckpt["step"])
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "stage", "denoiser") == "vae":
        return train_vae(args, ckpt)

    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:  # launched by torchrun: one process per GPU (NCCL) or CPU process (gloo)
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(args.device)
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(args.seed + rank)

    cfg = st.SyncTrackConfig.from_dict(ckpt["config"]) if ckpt else model_config(args)
    stage = build_first_stage(args, cfg).to(args.device).eval()  # frozen: never trained (§3)
    model = st.SyncTrack(cfg).to(args.device)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    if args.init and not ckpt:  # as the official code: raw weights to train, the EMA shadow to the EMA
        report = st.load_official(model, args.init, ema=False, trust=args.trust)
        st.load_official(ema_model, args.init, ema=True, trust=args.trust)
        if rank == 0:
            print(f"init from {args.init}: {report['loaded']} tensors, {len(report['new'])} new SyncTrack tensors, "
                  f"ignored {report['ignored']}" + (f"\nwarning: {report['warning']}" if report["warning"] else ""))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step, epoch, batch_in_epoch = 0, 0, 0
    if ckpt:
        model.load_state_dict(ckpt["model"])
        ema_model.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        if rank == 0:  # exact for one process; other DDP ranks draw fresh, distinct noise
            set_rng_states(ckpt["rng"])
        else:
            torch.manual_seed(args.seed + 1_000_003 * step + rank)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    if args.compile:
        net = torch.compile(net)

    train_set, val_set = datasets(args, cfg, stage)
    workers = args.workers if args.workers is not None else (0 if args.data == "toy" else 2)
    train_loader = data.make_loader(train_set, args.batch_size, True, workers, distributed, args.seed)
    val_loader = data.make_loader(val_set, args.batch_size, False, workers, distributed=False)
    batches_per_epoch = len(train_loader.sampler) // args.batch_size
    if batches_per_epoch < args.accum:
        raise SystemExit(f"the training set has {len(train_set)} clips: fewer than one batch of {args.batch_size}")
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        n_params = sum(p.numel() for p in model.parameters())
        report = train_set.report
        with open(os.path.join(args.out, "data_report.json"), "w") as f:
            json.dump({"train": report, "validation": val_set.report}, f, indent=1)
        print(f"SyncTrack {n_params / 1e6:.2f}M params, latent {cfg.latent_shape}; {report['kept']} songs, "
              f"{len(train_set)} training clips ({len(report['dropped'])} songs dropped, see "
              f"{args.out}/data_report.json); {batches_per_epoch} batches/epoch; device {args.device}")
    log = open(os.path.join(args.out, "log.jsonl"), "a") if rank == 0 else None

    def save():
        if rank != 0:
            return
        st.save_checkpoint(os.path.join(args.out, "ckpt.pt"), model, ema=ema_model.state_dict(),
                           scale_factor=getattr(stage, "scale_factor", None), **own_first_stage(stage, cfg),
                           optimizer=opt.state_dict(), step=step, epoch=epoch, batch_in_epoch=batch_in_epoch,
                           running_loss=running, rng=rng_states(), args=vars(args))

    running = ckpt.get("running_loss") if ckpt else None  # the spike detector's running mean
    t0, last_good, last_log = time.time(), step, step
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0, desc="train")
    while step < args.steps:
        train_loader.sampler.set_epoch(epoch, skip=batch_in_epoch * args.batch_size)
        batches = iter(train_loader)
        while step < args.steps and batch_in_epoch + args.accum <= batches_per_epoch:
            # 1. warm-up: lr grows linearly to its value over the first `warmup` steps (official)
            lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
            for group in opt.param_groups:
                group["lr"] = lr
            # 2. loss of Eq. (2) on latents of the frozen first stage, accumulated over micro-batches
            loss_sum = 0.0
            for micro in range(args.accum):
                wave = next(batches).to(args.device, non_blocking=True)      # (B, S, N)
                with torch.no_grad():
                    z0 = latents(stage, wave)                                  # (B, S, C, T, F), Eq. (1)
                sync = not distributed or micro == args.accum - 1
                with contextlib.nullcontext() if sync else net.no_sync():  # DDP: all-reduce once per step
                    with autocast:
                        loss = st.diffusion_loss(net, z0) / args.accum
                    loss.backward()
                loss_sum += loss.item()
            batch_in_epoch += args.accum
            if distributed:  # every rank decides on the same mean loss below
                mean = torch.tensor([loss_sum], device=args.device)
                dist.all_reduce(mean)
                loss_sum = mean.item() / dist.get_world_size()
            # 3. stop on NaN/inf or a spike, before the bad update reaches the weights or a checkpoint
            if not math.isfinite(loss_sum) or (args.spike and running and step > 100 and loss_sum > args.spike * running):
                opt.zero_grad(set_to_none=True)
                raise SystemExit(f"step {step}: loss {loss_sum:.4g} (running mean {running or float('nan'):.4g}); "
                                 f"stopped, the last good checkpoint (step {last_good}) is {args.out}/ckpt.pt")
            running = loss_sum if running is None else 0.98 * running + 0.02 * loss_sum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()  # measure only
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            ema_update(ema_model, model, args.ema, step)
            bar.update()
            # 4. log, validate, checkpoint (rank 0)
            record = None
            if step % args.log_every == 0 or step == args.steps:
                record = dict(step=step, loss=loss_sum, loss_avg=running, lr=lr, grad_norm=grad_norm,
                              it_s=(step - last_log) / (time.time() - t0), mem_gb=memory_gb(args.device))
                t0, last_log = time.time(), step
            if rank == 0 and (step % args.val_every == 0 or step == args.steps):
                record = {**(record or dict(step=step)), "val_loss": validate(ema_model, stage, val_loader, args,
                                                                             autocast)}
            if rank == 0 and record:
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{running:.4f}", **({"val": f"{record['val_loss']:.4f}"}
                                                          if "val_loss" in record else {}))
            if step % args.ckpt_every == 0 or step == args.steps:
                save()
                last_good = step
        if batch_in_epoch + args.accum > batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    if log:
        log.close()
    if step == 0:  # --steps 0 writes the untrained model, a baseline for the metrics
        save()
    if rank == 0 and args.export:
        os.makedirs(os.path.dirname(args.export) or ".", exist_ok=True)
        st.export_checkpoint(os.path.join(args.out, "ckpt.pt"), args.export)
    if distributed:
        dist.destroy_process_group()


def vae_loss(vae, mel, kl_weight):
    """LDM autoencoder objective without its GAN: L1(log-mel, VAE_dec(z)) + kl_weight · KL(q(z|mel) ‖ N(0, I)),
    both averaged per value; z is drawn from the posterior (reparameterised). Returns (loss, L1)."""
    mean, logvar = vae.encode(mel)                                       # (B, T, F) -> (B, C, T/d, F/d) each
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    l1 = (vae.decode(z) - mel).abs().mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
    return l1 + kl_weight * kl, l1


@torch.no_grad()
def vae_scale_factor(vae, waves):
    """LDM's scale_factor: 1 / std of the posterior means, so the denoiser sees latents of about unit variance."""
    mean, _ = vae.encode(st.log_mel(waves.flatten(0, 1)))                # (B, S, N) -> (B·S, N) -> (B·S, C, T, F)
    return 1.0 / mean.std().item()


def train_vae(args, ckpt=None):
    """`--stage vae`: train the toy first stage on toy clips; ckpt.pt holds it as a first-stage record that
    `--first-stage runs/toy-vae/ckpt.pt` (and synctrack.load_first_stage) read, scale_factor included."""
    if args.data != "toy":
        raise SystemExit("--stage vae trains the toy first stage on toy songs; for Slakh use MusicLDM's VAE (--init)")
    cfg = model_config(args)
    torch.manual_seed(args.seed)
    vae = st.AutoencoderKL(st.TOY_VAE_DDCONFIG, st.TOY_VAE_EMBED_DIM).to(args.device)
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
    print(f"toy VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params, latent "
          f"{st.TOY_VAE_EMBED_DIM} x {cfg.clip_samples // st.MEL_HOP // vae.downsampling} x "
          f"{st.MEL_BINS // vae.downsampling} per track; {len(train_set)} clips; writing {args.out}/")
    log = open(os.path.join(args.out, "log.jsonl"), "a")
    bar = tqdm(total=args.steps, initial=step, desc="train vae")
    while step < args.steps:
        loader.sampler.set_epoch(epoch, skip=batch_in_epoch * args.batch_size)
        for wave in loader:
            # 1. warm-up, 2. loss on the log-mels of every track of the batch, 3. update
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
            loss, l1 = vae_loss(vae, st.log_mel(wave.to(args.device).flatten(0, 1)), args.kl_weight)
            if not math.isfinite(loss.item()):
                raise SystemExit(f"step {step}: loss {loss.item()}; stopped, the last good checkpoint is "
                                 f"{args.out}/ckpt.pt")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            bar.update()
            # 4. log, validate (posterior-mean reconstruction of fixed clips), checkpoint with the scale factor
            record = dict(step=step, loss=loss.item(), l1=l1.item()) if step % args.log_every == 0 else None
            if step % args.val_every == 0 or step % args.ckpt_every == 0 or step == args.steps:
                vae.eval()
                with torch.no_grad():
                    val_l1 = (vae.decode(vae.encode(val_mel)[0]) - val_mel).abs().mean().item()
                    scale = vae_scale_factor(vae, val_waves)
                vae.train()
                record = {**(record or dict(step=step)), "val_l1": val_l1, "scale_factor": scale}
                bar.set_postfix(val_l1=f"{val_l1:.3f}")
                ckpt_state = dict(first_stage=st.first_stage_state(vae, scale), optimizer=opt.state_dict(),
                                  step=step, epoch=epoch, batch_in_epoch=batch_in_epoch, rng=rng_states(),
                                  args=vars(args))
                tmp = os.path.join(args.out, "ckpt.pt.tmp")
                torch.save(ckpt_state, tmp)
                os.replace(tmp, os.path.join(args.out, "ckpt.pt"))
            if record:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if step == args.steps or batch_in_epoch == batches_per_epoch:
                break
        if batch_in_epoch == batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    log.close()
    print(f"wrote {args.out}/ckpt.pt (toy first stage, step {step}); train the denoiser on it with "
          f"`python train.py --preset toy --first-stage {args.out}/ckpt.pt`")


def memory_gb(device):
    """Peak memory: allocated GPU memory on CUDA, else the process's peak RSS (NaN where the OS does not say)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB

if __name__ == "__main__":
    main()
