"""Train SyncTrack (§5.1, App. A.5; optimiser, warm-up and EMA as the official code).

    python train.py                                      # the toy model on toy songs: a laptop CPU, no downloads
    python train.py --data slakh/ --init musicldm-ckpt.ckpt --trust   # the paper: fine-tune MusicLDM on Slakh2100
    torchrun --nproc_per_node 8 train.py --data slakh/ --init ...     # several GPUs (or nodes) with DDP
    python train.py --resume runs/toy [--steps N]        # continue exactly where a run stopped (or was Ctrl-C'd)
    python train.py --stage vae --data slakh/            # the toy first stage, on toy songs or your own audio
    python train.py --preset toy --data slakh/ --first-stage runs/toy-vae/ckpt.pt   # then the toy model on it

One step: waveforms (B, S, N) → frozen first stage → latents z (B, S, C, T, F) → ε-loss of Eq. (2) → backward →
health check → AdamW → EMA. Checkpoints hold config, weights, EMA, optimiser, step, RNG states and data position;
--out holds one run at a time (data.RunFolder). Ctrl-C writes a checkpoint at the step reached.
The flags and their defaults per preset are in cli.py; `python train.py --help` shows them.
"""
import argparse
import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import signal
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import cli
import data
import synctrack as st
import toy

SPIKE_PATIENCE = 3  # one batch of Eq. 2 can spike (clips drawn at l ≈ 0), divergence persists: 3 in a row stop


# ----------------------------------------------------------------------------------------------------------------------
# The run: what one training process holds, built once by setup() and moved forward by train_step()

@dataclasses.dataclass
class Run:
    args: argparse.Namespace
    cfg: st.SyncTrackConfig
    stage: torch.nn.Module            # frozen first stage (Eq. 1); None for --stage vae
    model: torch.nn.Module            # the weights AdamW trains: SyncTrack, or the toy VAE
    ema_model: torch.nn.Module        # their moving average: what is validated, exported and sampled
    opt: torch.optim.Optimizer
    net: torch.nn.Module              # model as called: wrapped by DDP and/or torch.compile
    autocast: torch.autocast
    distributed: bool = False
    rank: int = 0
    folder: data.RunFolder = None     # where the files go (rank 0; None on the others)
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0           # data position inside the epoch, so a resume continues mid-epoch
    ema_updates: int = 0              # LitEma's num_updates (an --init from Lightning brings its own)
    running: float | None = None      # running mean of the loss, for the spike detector
    last_good: int = 0                # step of the checkpoint on disk
    spikes: int = 0                   # spiking batches in a row, each skipped
    stop: bool = False                # Ctrl-C (SIGINT) or SIGTERM: stop after this step, checkpoint


class UnstableStep(Exception):
    """A non-finite loss or gradient, or (spike=True) a loss above --spike × its running mean; raised before the
    update reaches the weights, with the gradients dropped."""

    def __init__(self, message, spike=False):
        super().__init__(message)
        self.spike = spike


def setup(args, ckpt=None, folder=None):
    """Build (or restore from `ckpt`) the first stage, model, EMA and optimiser of a run."""
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed, rank = int(os.environ.get("WORLD_SIZE", 1)) > 1, 0
    if distributed:  # torchrun: one process per GPU (NCCL) or CPU process (gloo)
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(args.device)
        rank = dist.get_rank()
    torch.manual_seed(args.seed + rank)
    cfg = st.SyncTrackConfig.from_dict(ckpt["config"]) if ckpt and "config" in ckpt else cli.model_config(args)
    init = None if ckpt else cli.read_init(args)
    if args.stage == "vae":
        stage, model = None, st.AutoencoderKL(toy.TOY_VAE_DDCONFIG, toy.TOY_VAE_EMBED_DIM).to(args.device)
    else:
        stage, cfg = cli.first_stage(args, cfg, init)
        stage = stage.to(args.device).eval()  # important: frozen, never trained (§3), and without dropout
        model = st.SyncTrack(cfg).to(args.device)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)  # no gradients, no optimiser state: one copy
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    net = torch.compile(net) if args.compile else net
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    run = Run(args, cfg, stage, model, ema_model, opt, net, autocast, distributed, rank, folder)
    if init is not None:
        report = init_weights(run, init)
        if rank == 0:
            print(f"init from {args.init}: {report}")
    if ckpt:
        restore(run, ckpt)
    return run


def init_weights(run, state):
    """--init: raw weights to train, EMA weights and update count to the EMA (as the official code); returns a line.
    Lightning's are mapped by load_official; ours (a ckpt.pt or an --export file) must be of the model asked for."""
    path, model = run.args.init, run.model
    if not ("config" in state and "model" in state):
        report = st.load_official(model, state, ema=False, name=path)
        st.load_official(run.ema_model, state, ema=True, name=path)
        updates = state.get("state_dict", state).get("model_ema.num_updates")
        run.ema_updates = int(updates) if updates is not None else 0
        return (f"{report['loaded']} tensors, {len(report['new'])} new SyncTrack tensors, ignored {report['ignored']}; "
                + (f"EMA continues from LitEma's num_updates {run.ema_updates}" if updates is not None else
                   "no model_ema.num_updates: the EMA warm-up starts from 0")
                + (f"\nwarning: {report['warning']}" if report["warning"] else ""))
    theirs, ours = dataclasses.asdict(st.SyncTrackConfig.from_dict(state["config"])), dataclasses.asdict(model.config)
    differ = [f"{k} {theirs[k]} there, {ours[k]} here" for k in ours if theirs[k] != ours[k]]
    if differ:
        raise SystemExit(f"--init {path}: its model differs from the one asked for ({'; '.join(differ)}): "
                         f"use the preset and flags it was trained with")
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
    run.ema_model.load_state_dict({k: v.float() for k, v in (state.get("ema") or state["model"]).items()})
    run.ema_updates = state.get("ema_updates", state.get("step") or 0)
    return f"SyncTrack weights of step {state.get('step')}, EMA updates {run.ema_updates}, fresh optimiser"


def restore(run, ckpt):
    """--resume: weights, EMA, optimiser, counters, data position and random state of the checkpoint."""
    weights = ckpt["first_stage"]["vae"] if run.args.stage == "vae" else ckpt["model"]
    run.model.load_state_dict(weights)
    run.ema_model.load_state_dict(ckpt.get("ema", weights))
    run.opt.load_state_dict(ckpt["optimizer"])
    run.step, run.epoch, run.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
    run.running, run.last_good = ckpt.get("running_loss"), ckpt["step"]
    run.ema_updates = ckpt.get("ema_updates", ckpt["step"])
    if run.rank == 0:  # exact for one process; other DDP ranks draw fresh, distinct noise
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    else:
        torch.manual_seed(run.args.seed + 1_000_003 * run.step + run.rank)


def loaders(run):
    """(train set, validation set, their loaders, full batches per epoch); a toy VAE's clips are encoded once."""
    args, c = run.args, run.cfg.clip_samples
    if args.data == "toy":
        sets = (toy.ToyDataset(args.toy_songs, c, seed=args.seed, train=True),
                toy.ToyDataset(max(8, args.toy_songs // 16), c, seed=args.seed, train=False))
    else:
        with cli.one_line(f"--data {args.data}"):
            sets = (data.SlakhDataset(args.data, args.train_split.split(","), c, train=True, seed=args.seed),
                    data.SlakhDataset(args.data, args.val_split.split(","), c, train=False))
    if run.stage is not None and run.stage.kind == "toy-vae":
        sets = (toy.EncodedClips(sets[0], run.stage, device=args.device, hop=c // 2),
                toy.EncodedClips(sets[1], run.stage, device=args.device))
    workers = args.workers if args.workers is not None else (0 if args.data == "toy" else 2)
    train_loader = data.make_loader(sets[0], args.batch_size, True, workers, run.distributed, args.seed)
    val_loader = data.make_loader(sets[1], args.batch_size, False, workers)
    batches_per_epoch = len(train_loader.sampler) // args.batch_size
    if batches_per_epoch < args.accum:
        raise SystemExit(f"the training set has {len(sets[0])} clips: fewer than one step of {args.accum} "
                         f"batch(es) of {args.batch_size}")
    return *sets, train_loader, val_loader, batches_per_epoch


# ----------------------------------------------------------------------------------------------------------------------
# One step

def batch_loss(run, batch):
    """Eq. (2) on the first stage's latents of a batch; for --stage vae, L1 + KL on the log-mel of every track."""
    batch = batch.to(run.args.device, non_blocking=True)
    with run.autocast:
        if run.args.stage == "vae":
            return toy.vae_loss(run.model, st.log_mel(batch.flatten(0, 1)), run.args.kl_weight)[0]  # (B·S, T, F)
        return st.diffusion_loss(run.net, toy.latents(run.stage, batch))  # z0: (B, S, C, T, F), Eq. (1)


def train_step(run, micro_batches):
    """One optimiser step over `accum` micro-batches → (loss, gradient norm, learning rate), or UnstableStep."""
    args = run.args
    # 1. warm-up as the official code: lr grows linearly from 0 (the first update) to its value at step `warmup`
    lr = args.lr * min(1.0, run.step / args.warmup) if args.warmup else args.lr
    for group in run.opt.param_groups:
        group["lr"] = lr
    # 2. loss and gradients, accumulated over micro-batches; DDP all-reduces the gradients once, on the last one
    loss = 0.0
    for micro, batch in enumerate(micro_batches):
        sync = not run.distributed or micro == args.accum - 1
        with contextlib.nullcontext() if sync else run.net.no_sync():
            part = batch_loss(run, batch) / args.accum
            part.backward()
        loss += part.item()
    if run.distributed:  # every rank decides on the same mean loss, and stops at the same step
        shared = torch.tensor([loss, float(run.stop)], device=args.device)
        dist.all_reduce(shared)
        loss, run.stop = shared[0].item() / dist.get_world_size(), shared[1].item() > 0
    # 3. health check on the loss and the (all-reduced) gradient norm, before the update reaches weights or EMA
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), float("inf")).item()  # measures only
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    spike = finite and args.spike and run.running and run.step > 100 and loss > args.spike * run.running
    if not finite or spike:
        run.opt.zero_grad(set_to_none=True)
        raise UnstableStep(f"loss {loss:.4g}, gradient norm {grad_norm:.4g} (running mean loss "
                           f"{run.running or float('nan'):.4g})", spike=bool(spike))
    run.running = loss if run.running is None else 0.98 * run.running + 0.02 * loss
    # 4. AdamW, then the EMA of the new weights: LitEma's decay min(ema, (1 + n) / (10 + n)) after n updates
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    run.step, run.ema_updates = run.step + 1, run.ema_updates + 1
    decay = min(args.ema, (1 + run.ema_updates) / (10 + run.ema_updates))
    with torch.no_grad():
        for e, p in zip(run.ema_model.parameters(), run.model.parameters()):
            e.lerp_(p, 1 - decay)
    return loss, grad_norm, lr


def skip_or_stop(run, err):
    """A lone spike skips its batch (SPIKE_PATIENCE in a row stop the run); a non-finite loss or gradient stops it."""
    run.spikes += 1
    if err.spike and run.spikes < SPIKE_PATIENCE:
        if run.rank == 0:
            tqdm.write(f"step {run.step}: {err}; batch skipped ({SPIKE_PATIENCE} spikes in a row stop the run)")
        return
    in_a_row = f", {run.spikes} spikes in a row" if err.spike else ""
    raise SystemExit(f"step {run.step}: {err}{in_a_row}; stopped, the last good checkpoint (step {run.last_good}) is "
                     f"{run.args.out}/ckpt.pt")


@torch.no_grad()
def validate(run, loader):
    """Mean ε-loss of the EMA model on fixed clips, steps and noise (comparable across a run); --stage vae: its L1."""
    if run.args.stage == "vae":
        return toy.vae_validation(run.ema_model, torch.cat(list(itertools.islice(loader, run.args.val_batches))))
    g, losses = torch.Generator(run.args.device).manual_seed(1234), []
    for wave in itertools.islice(loader, run.args.val_batches):
        z0 = toy.latents(run.stage, wave.to(run.args.device), sample=False)
        with run.autocast:
            losses.append(st.diffusion_loss(run.ema_model, z0, generator=g).item())
    return dict(val_loss=sum(losses) / max(len(losses), 1))


# ----------------------------------------------------------------------------------------------------------------------
# Files (rank 0, in run.folder): data_report.json, log.jsonl, ckpt.pt; finish() writes the --export

def start_outputs(run, train_set, val_set, batches_per_epoch):
    """Write data_report.json and say what is trained; returns log.jsonl, open (None on the other ranks)."""
    if run.folder is None:
        return None
    with open(os.path.join(run.folder.path, "data_report.json"), "w") as f:
        json.dump({"train": train_set.report, "validation": val_set.report}, f, indent=1)
    report, n_params = train_set.report, sum(p.numel() for p in run.model.parameters())
    what = "toy VAE" if run.args.stage == "vae" else f"SyncTrack, latent {run.cfg.latent_shape}"
    encoded = (f" (encoded once, starts every {run.cfg.clip_samples // 2} samples)"
               if isinstance(train_set, toy.EncodedClips) else "")
    print(f"{what}, {n_params / 1e6:.2f}M params; {report['kept']} songs, {len(train_set)} training clips{encoded} "
          f"({len(report['dropped'])} songs dropped, see {run.args.out}/data_report.json); {batches_per_epoch} "
          f"batches/epoch; device {run.args.device}" + (f"; resumed from step {run.step}" if run.args.resume else ""))
    return run.folder.log(run.step)


def save(run, val_loader):
    """Rank 0 writes ckpt.pt atomically; a failed write (disk full) stops the run, the previous checkpoint intact."""
    if run.folder is None:
        return
    state = dict(optimizer=run.opt.state_dict(), step=run.step, epoch=run.epoch, batch_in_epoch=run.batch_in_epoch,
                 running_loss=run.running, ema_updates=run.ema_updates, args=vars(run.args),
                 world_size=int(os.environ.get("WORLD_SIZE", 1)), rng=dict(torch=torch.get_rng_state(), cuda=(
                     torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])))
    if run.args.stage == "vae":  # a first-stage record: `--first-stage RUN/ckpt.pt` reads it
        state["first_stage"] = toy.first_stage_state(run.model, validate(run, val_loader)["scale_factor"])
    else:
        state.update(config=dataclasses.asdict(run.model.config), model=run.model.state_dict(),
                     ema=run.ema_model.state_dict(), scale_factor=getattr(run.stage, "scale_factor", None))
        if run.cfg.first_stage == "toy-vae":  # the toy VAE travels inside: sample.py needs no second file
            state["first_stage"] = toy.first_stage_state(run.stage.vae, run.stage.scale_factor)
    try:
        st.write_checkpoint(os.path.join(run.folder.path, "ckpt.pt"), state)
    except OSError as err:
        kept = f"the last good checkpoint is step {run.last_good}" if run.last_good else "no checkpoint was written"
        raise SystemExit(f"step {run.step}: {err.strerror or err}; {kept}") from None
    run.last_good = run.step
    run.folder.saved()  # the first checkpoint of an --overwrite run replaces the old run


# ----------------------------------------------------------------------------------------------------------------------
# The loop

def main(argv=None):
    args = cli.parse_args(argv, __doc__)
    try:
        train(args)
    except KeyboardInterrupt:
        out = args.resume or args.out
        raise SystemExit(f"interrupted before a checkpoint could be written; {out} keeps what it held") from None


def train(args):
    args, ckpt = cli.resume_args(args) if args.resume else (args, None)
    with contextlib.ExitStack() as files:
        folder = None
        if int(os.environ.get("RANK", 0)) == 0:  # rank 0 alone owns the files; its refusal stops torchrun's others
            cli.check_outputs(args)
            with cli.one_line():  # locked for the whole run: a second run into the same --out is refused, never mixed
                folder = files.enter_context(data.RunFolder(args.out, args.overwrite, args.resume))
        if ckpt and ckpt["step"] >= args.steps:  # nothing to train; an --export is still written
            print(f"{args.out} finished at step {ckpt['step']}; pass --steps M (M > {ckpt['step']}) to continue")
            if args.export and folder:
                os.makedirs(os.path.dirname(args.export) or ".", exist_ok=True)
                st.export_checkpoint(os.path.join(args.out, "ckpt.pt"), args.export)
                print(f"exported {args.export}")
            return
        run = setup(args, ckpt, folder)
        del ckpt  # the loaded copy of every tensor (GBs at the paper's size) is in the run now
        train_set, val_set, train_loader, val_loader, batches_per_epoch = loaders(run)
        log = start_outputs(run, train_set, val_set, batches_per_epoch)

        def stop(signum, frame):  # the first Ctrl-C ends the run after this step, a second one at once
            run.stop = True
            signal.signal(signum, signal.default_int_handler)
        handlers = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            loop(run, train_loader, val_loader, batches_per_epoch, log)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        finish(run, log, val_loader)


def loop(run, train_loader, val_loader, batches_per_epoch, log):
    """Steps to --steps or a Ctrl-C: batch → loss → backward → check → AdamW → EMA; then log, validate, checkpoint."""
    args = run.args
    t0, last_log = time.time(), run.step
    bar = tqdm(total=args.steps, initial=run.step, disable=run.rank != 0, desc=f"train {args.stage}")
    while run.step < args.steps and not run.stop:
        train_loader.sampler.set_epoch(run.epoch, skip=run.batch_in_epoch * args.batch_size)
        batches = iter(train_loader)
        while run.step < args.steps and run.batch_in_epoch + args.accum <= batches_per_epoch and not run.stop:
            try:
                loss, grad_norm, lr = train_step(run, itertools.islice(batches, args.accum))
            except UnstableStep as err:
                skip_or_stop(run, err)
                run.batch_in_epoch += args.accum
                continue
            run.spikes, run.batch_in_epoch = 0, run.batch_in_epoch + args.accum
            bar.update()
            # log, validate (rank 0), checkpoint
            record, last = {}, run.step == args.steps
            if run.step % args.log_every == 0 or last:
                record = dict(step=run.step, loss=loss, loss_avg=run.running, lr=lr, grad_norm=grad_norm,
                              it_s=(run.step - last_log) / (time.time() - t0))
                if args.device.startswith("cuda"):  # peak GPU memory so far
                    record["mem_gb"] = torch.cuda.max_memory_allocated(args.device) / 2 ** 30
                t0, last_log = time.time(), run.step
            if log and (run.step % args.val_every == 0 or last):
                record.update(step=run.step, **validate(run, val_loader))
            if log and record:
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix({k: f"{record[k]:.4f}" for k in ("loss", "val_loss", "val_l1") if k in record})
            if run.step % args.ckpt_every == 0 or last:
                save(run, val_loader)
        if run.batch_in_epoch + args.accum > batches_per_epoch:
            run.epoch, run.batch_in_epoch = run.epoch + 1, 0
    bar.close()


def finish(run, log, val_loader):
    """Rank 0: the last checkpoint (a Ctrl-C's too), the export, and one line saying what was kept."""
    args = run.args
    if run.stop and run.folder and run.folder.replacing:  # leaving RunFolder removes the new run's partial folder
        raise SystemExit(f"interrupted at step {run.step}, before the new run's first checkpoint: --out {args.out} "
                         f"still holds the old run, unchanged")
    if run.last_good != run.step or run.step == 0:  # --steps 0 writes the untrained model, a baseline for the metrics
        save(run, val_loader)
    if log:
        log.close()
        if run.stop:
            raise SystemExit(f"interrupted at step {run.step}: kept {args.out}/ckpt.pt (step {run.step}); continue "
                             f"with `python train.py --resume {args.out}`")
        if args.export:  # the EMA weights in float16: a small file for sample.py
            os.makedirs(os.path.dirname(args.export) or ".", exist_ok=True)
            st.export_checkpoint(os.path.join(args.out, "ckpt.pt"), args.export)
        songs = "" if args.data == "toy" else f" --data {args.data}"  # the songs the first stage learnt from
        print(f"step {run.step}: wrote {args.out}/ckpt.pt and {args.out}/log.jsonl"
              + (f"; exported {args.export}" if args.export else "")
              + (f"; train the denoiser on it: `python train.py --preset toy{songs} --first-stage {args.out}/ckpt.pt`"
                 if args.stage == "vae" else ""))
    if run.distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
