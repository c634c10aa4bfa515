"""Benchmarks (speed and memory goals are measured here, never asserted in tests).

    python extras/bench.py paper [--variant official]    # the paper-size path end to end on a CPU, JSON per phase
    python extras/bench.py gpu [--compile both]          # paper-config GPU: train it/s, memory, batch, DDIM, metrics
    python extras/bench.py denoiser --preset paper --batch-size 16 --device cuda   # training it/s and DDIM step time
    python extras/bench.py denoiser --preset toy --batch-size 16                   # the CPU toy model
    python extras/bench.py first-stage [--device cuda]                             # encode/decode per 10.24 s track
    python extras/bench.py metrics [--pieces 400 --workers 2]                      # files/s at Slakh test scale, grids

`paper` runs the real commands a user runs, each in its own process (so each phase's peak RSS is its own): train.py
(2 steps at batch 1 from a MusicLDM-size first stage with random weights, written as a Lightning-format file),
train.py --resume (1 more step, --export), sample.py (2 DDIM steps, VAE decode + HiFi-GAN, wav files), metrics.py.
`--tiny` runs both `paper` and `gpu` with the tiny preset and the offline first stage, in seconds (the tests do).

Its own file because it is not part of the method: it times synctrack.py's pieces with random weights and prints
one line per measurement, naming the machine (the README's benchmark tables come from it).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402  (the repo root is on the path only from here on)
import metrics  # noqa: E402
import synctrack as st  # noqa: E402
import toy  # noqa: E402
import train  # noqa: E402
from extras import metric_study  # noqa: E402


def machine(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = [platform.processor()]
    return f"{names[0] if names else platform.machine()}, {torch.get_num_threads()} threads, " \
           f"load average {os.getloadavg()[0]:.1f}"


def memory_gb(device):
    """Peak memory: allocated GPU memory on CUDA, else the process's peak RSS (Linux: KiB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def timed(fn, device, repeats):
    """Median seconds of `repeats` calls after one untimed warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def emit(**fields):
    print(json.dumps(fields), flush=True)


def write_first_stage(path):
    """A MusicLDM-size first stage with random weights, as a Lightning-style checkpoint (first_stage_model.* and
    scale_factor) that synctrack.load_first_stage reads like musicldm-ckpt.ckpt; tensors only, so no --trust."""
    vae = st.AutoencoderKL(st.MUSICLDM_DDCONFIG, st.MUSICLDM_EMBED_DIM)
    vocoder = st.HiFiGAN(st.HIFIGAN_16K_64)
    state = {**{f"first_stage_model.{k}": v for k, v in vae.state_dict().items()},
             **{f"first_stage_model.vocoder.{k}": v for k, v in vocoder.state_dict().items()},
             "scale_factor": torch.tensor(st.MUSICLDM_SCALE_FACTOR)}
    torch.save({"state_dict": state}, path)
    return sum(p.numel() for m in (vae, vocoder) for p in m.parameters())


def trainable(cfg):
    return sum(p.numel() for p in st.SyncTrack(cfg).parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------------------------
# bench.py paper: the whole path at the paper's size, the real commands

def phase(name, argv, folder):
    """Run one command (stdout/stderr to folder/NAME.log); returns (seconds, its peak RSS in GB)."""
    with open(folder / f"{name}.log", "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage: its peak RSS, not the benchmark's
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        tail = (folder / f"{name}.log").read_text()[-3000:]
        raise SystemExit(f"phase {name} failed (exit {child.returncode}): {' '.join(argv)}\n{tail}")
    return seconds, usage.ru_maxrss / 2 ** 20  # Linux: KiB


def bench_paper(args):
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_paper_"))
    folder.mkdir(parents=True, exist_ok=True)
    preset = "tiny" if args.tiny else "paper"
    threads = ["--threads", str(args.threads)] if args.threads else []
    start = time.perf_counter()
    base = st.SyncTrackConfig(**st.PRESETS[preset])
    counts = {v: trainable(st.SyncTrackConfig(**{**st.PRESETS[preset], "variant": v})) for v in ("paper", "official")}
    first_stage = "offline"
    if not args.tiny:
        first_stage = str(folder / "musicldm-random.ckpt")
        n_stage = write_first_stage(first_stage)
    emit(phase="build", seconds=round(time.perf_counter() - start, 3), peak_rss_gb=round(memory_gb("cpu"), 2),
         trainable_params=counts, first_stage=first_stage,
         first_stage_params=None if args.tiny else n_stage, latent=list(base.latent_shape),
         machine=machine("cpu"), torch=torch.__version__)
    run, samples = folder / "run", folder / "samples"
    commands = [
        ("train", ["train.py", "--preset", preset, "--variant", args.variant, "--first-stage", first_stage,
                   "--data", "toy", "--toy-songs", "2", "--batch-size", "1", "--steps", "2", "--val-batches", "1",
                   "--log-every", "1", "--out", str(run), *threads]),
        ("resume", ["train.py", "--resume", str(run), "--steps", "3", "--export", str(run / "export.pt"), *threads]),
        ("sample", ["sample.py", "--ckpt", str(run / "export.pt"), "--first-stage", first_stage, "--n", "1",
                    "--steps", "2", "--batch-size", "1", "--out", str(samples)]),
        ("metrics", ["metrics.py", str(samples), "--workers", "1", "--json", str(folder / "metrics.json")]),
    ]
    for name, argv in commands:
        seconds, rss = phase(name, argv, folder)
        emit(phase=name, seconds=round(seconds, 3), peak_rss_gb=round(rss, 2), command=" ".join(["python", *argv]))
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    wavs = [p for p in samples.rglob("*.wav") if not p.is_symlink()]  # stems and mix; the named links point at stems
    emit(phase="done", seconds=round(time.perf_counter() - start, 1), logged_steps=steps, wav_files=len(wavs),
         folder=str(folder))


# ----------------------------------------------------------------------------------------------------------------------
# bench.py gpu: the paper config's numbers on an accelerator (runs on a CPU with --tiny)

def gpu_run(args, folder, first_stage, batch_size, compile_):
    """A train.Run from train.py's command line (cli.py) and setup, as `train.py --preset ... --compile` builds it."""
    argv = ["--preset", "tiny" if args.tiny else "paper", "--first-stage", first_stage, "--batch-size",
            str(batch_size), "--device", args.device, "--out", str(folder / "run"), "--warmup", "1"]
    argv += ["--precision", "fp32"] if args.fp32 else []
    return train.setup(cli.parse_args(argv + (["--compile"] if compile_ else [])))


def waves(run, batch_size):
    """Random audio batch (B, S, N) in [-0.5, 0.5]: the step's cost does not depend on the content."""
    return torch.rand(batch_size, len(run.cfg.tracks), run.cfg.clip_samples, device=run.args.device) - 0.5


def train_numbers(run, batch_size, repeats):
    """it/s and peak memory of train.train_step (encode + Eq. 2 + backward + check + AdamW + EMA)."""
    wave = waves(run, batch_size)
    train.train_step(run, [wave])  # warm-up; compiles with --compile
    if run.args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(run.args.device)
    seconds = timed(lambda: train.train_step(run, [wave]), run.args.device, repeats)
    return 1 / seconds, memory_gb(run.args.device)


def fits(run, batch_size):
    """Does one training step at this batch size fit in GPU memory?"""
    try:
        train.train_step(run, [waves(run, batch_size)])
        sync(run.args.device)
        return True
    except torch.cuda.OutOfMemoryError:
        run.opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return False


def largest_batch(run, start, limit):
    """Doubling from `start` while a step fits, up to `limit` (no search on a CPU: it would only swap)."""
    if not run.args.device.startswith("cuda"):
        return None
    best, b = None, start
    while b <= limit and fits(run, b):
        best, b = b, 2 * b
    return best


def sampling_numbers(run, args, folder):
    """DDIM sampling of `pieces` pieces plus decode, then metrics.py's beat tracking on the written files."""
    g = torch.Generator(args.device).manual_seed(0)
    z_start = torch.randn(args.pieces, *run.cfg.latent_shape, generator=g, device=args.device)  # (B, S, C, T, F)
    sync(args.device)
    start = time.perf_counter()
    with torch.inference_mode(), run.autocast:
        z = st.ddim_sample(run.ema_model, z_start, args.ddim_steps, generator=g)
    audio = run.stage.decode(z.float()).float().cpu().numpy()                 # Eq. (3): (B, S, N)
    sync(args.device)
    sample_seconds = time.perf_counter() - start
    out = folder / "samples"
    for s in range(len(run.cfg.tracks)):
        (out / f"stem_{s}").mkdir(parents=True, exist_ok=True)
        for i, piece in enumerate(audio):
            sf.write(out / f"stem_{s}" / f"sample_{i:04d}.wav", np.clip(piece[s], -1, 1), st.SAMPLE_RATE,
                     subtype="PCM_16")
    start = time.perf_counter()
    result = metrics.evaluate(out, workers=os.cpu_count())
    metric_seconds = time.perf_counter() - start
    return sample_seconds, result["n_samples"] * len(run.cfg.tracks) / metric_seconds


def bench_gpu(args):
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:  # the 440 MB first-stage file goes afterwards
        folder = Path(tmp)
        first_stage = "offline" if args.tiny else str(folder / "musicldm-random.ckpt")
        if not args.tiny:
            write_first_stage(first_stage)
        precision = "fp32" if args.fp32 or not args.device.startswith("cuda") else "bf16 autocast"
        emit(what="gpu", preset="tiny" if args.tiny else "paper", device=args.device, machine=machine(args.device),
             precision=precision, attention="F.scaled_dot_product_attention", torch=torch.__version__)
        # compiled first, so the run kept for the batch search and sampling is the eager one (no recompiles)
        for compile_ in {"both": (True, False), "off": (False,), "on": (True,)}[args.compile]:
            run = None  # the previous run's memory is freed before the next one is measured
            run = gpu_run(args, folder, first_stage, args.batch_size, compile_)
            it_s, memory = train_numbers(run, args.batch_size, args.repeats)
            emit(what="train", batch=args.batch_size, compile=compile_, it_s=round(it_s, 3), peak_gb=round(memory, 2))
        emit(what="largest batch", batch=largest_batch(run, args.batch_size, args.max_batch), limit=args.max_batch)
        seconds, files_s = sampling_numbers(run, args, folder)
        emit(what="sample", pieces=args.pieces, ddim_steps=args.ddim_steps, seconds_with_decode=round(seconds, 2),
             seconds_per_piece=round(seconds / args.pieces, 3))
        emit(what="metrics", files_per_s=round(files_s, 2), workers=os.cpu_count())


# ----------------------------------------------------------------------------------------------------------------------
# bench.py denoiser / first-stage: the pieces alone

def bench_denoiser(args):
    cfg = st.SyncTrackConfig(**{**st.PRESETS[args.preset], "variant": args.variant})
    model = st.SyncTrack(cfg).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    z0 = torch.randn(args.batch_size, *cfg.latent_shape, device=args.device)
    bf16 = args.device.startswith("cuda") and not args.fp32
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset} preset ({n_params / 1e6:.1f}M params, {cfg.variant} variant), batch {args.batch_size}, "
          f"latent {cfg.latent_shape}, {'bf16 autocast' if bf16 else 'fp32'}; {args.device}: {machine(args.device)}")

    def train_step():
        with autocast:
            loss = st.diffusion_loss(model, z0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed(train_step, args.device, args.repeats)
    print(f"train step (forward + backward + AdamW): {seconds:.3f} s = {1 / seconds:.2f} it/s, "
          f"{memory_gb(args.device):.1f} GB peak {'GPU memory' if args.device.startswith('cuda') else 'RSS'}")
    model.eval()
    t = torch.full((args.batch_size,), 500, device=args.device)
    with torch.inference_mode(), autocast:
        seconds = timed(lambda: model(z0, t), args.device, args.repeats)
    print(f"DDIM step (one forward): {seconds:.3f} s; 200 steps = {200 * seconds:.1f} s per batch of "
          f"{args.batch_size} = {200 * seconds / args.batch_size:.2f} s per piece before decoding")


def bench_first_stage(args):
    n = 163840                                                         # one 10.24 s track
    wave = torch.rand(1, 1, n, device=args.device) - 0.5               # (B, S, N)
    musicldm = st.MusicLDMFirstStage(st.AutoencoderKL(st.MUSICLDM_DDCONFIG, st.MUSICLDM_EMBED_DIM),
                                     st.HiFiGAN(st.HIFIGAN_16K_64), st.MUSICLDM_SCALE_FACTOR).to(args.device)
    offline = toy.OfflineFirstStage().to(args.device)
    print(f"seconds per 10.24 s track (median of {args.repeats}); {args.device}: {machine(args.device)}")
    with torch.inference_mode():
        z, z_off = musicldm.encode(wave), offline.encode(wave)
        for label, fn in [("MusicLDM encode (log-mel + VAE encoder)", lambda: musicldm.encode(wave)),
                          ("MusicLDM decode (VAE decoder + HiFi-GAN)", lambda: musicldm.decode(z)),
                          ("offline encode (log-mel + fold)", lambda: offline.encode(wave)),
                          (f"offline decode (Griffin-Lim, {offline.griffin_lim_iters} iterations)",
                           lambda: offline.decode(z_off))]:
            print(f"  {label:50s} {timed(fn, args.device, args.repeats):8.3f}")


# ----------------------------------------------------------------------------------------------------------------------
# bench.py metrics: files/s at the paper's Slakh test scale, the cost of a Table A1 grid, memory as files grow

GRID = {"fps": [100, 150, 200], "tl": [50, 100]}  # six settings, Table A1's rows and the fps-200 / tl-50 corners


def evaluate_timed(root, workers, **kwargs):
    """metric_study.evaluate with its wall seconds, CPU seconds (this process and its workers) and peak RSS in GB (this
    process; the largest worker so far)."""
    before, start = os.times(), time.perf_counter()
    result = metric_study.evaluate(root, workers=workers, **kwargs)
    wall, after = time.perf_counter() - start, os.times()
    cpu = sum(after[i] - before[i] for i in range(4))  # user + system, self + children (workers end with the pool)
    rss = [resource.getrusage(who).ru_maxrss / 2 ** 20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return result, wall, cpu, rss


def bench_metrics(args):
    """Toy pieces of --seconds (4 tracks each) scored by metric_study.evaluate with --workers processes: first a subset
    of --grid-pieces at one setting, as the 6-setting grid, and the grid again from the --cache of activations; then
    all --pieces at one setting (files/s at scale, and whether memory grew with the number of files)."""
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_metrics_"))
    clip = int(round(args.seconds * st.SAMPLE_RATE))
    sets = {"subset": folder / f"pieces_{args.grid_pieces}", "all": folder / f"pieces_{args.pieces}"}
    for n, root in ((args.grid_pieces, sets["subset"]), (args.pieces, sets["all"])):
        if not root.exists():
            toy.write_toy(root, n, clip, seed=7)
    emit(what="metrics", machine=machine("cpu"), workers=args.workers, seconds_per_track=args.seconds,
         tracks_per_piece=len(st.TRACKS), folder=str(folder))
    cache = folder / "activations"  # filled by the grid run (its cost counted there), read by the next one
    runs = [("one setting", "subset", {}, None), ("grid", "subset", GRID, cache),
            ("grid from cache", "subset", GRID, cache), ("one setting", "all", {}, None)]
    single = None
    for label, which, grid, cached in runs:
        result, wall, cpu, rss = evaluate_timed(sets[which], args.workers, cache=cached, **grid)
        files = result["n_samples"] * len(st.TRACKS)
        single = wall if single is None else single
        emit(what=label, pieces=result["n_samples"], files=files, settings=len(result.get("grid", [None])),
             seconds=round(wall, 2), files_per_s=round(files / wall, 2), cpu_s_per_file=round(cpu / files, 3),
             x_one_setting=round(wall / single, 2) if which == "subset" else None,
             peak_rss_gb={"main": round(rss[0], 3), "largest_worker": round(rss[1], 3)})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["paper", "gpu", "denoiser", "first-stage", "metrics"],
                   help="which benchmark (see above)")
    p.add_argument("--tiny", action="store_true", help="paper, gpu: the tiny preset and offline first stage (tests)")
    p.add_argument("--preset", default="toy", choices=sorted(st.PRESETS), help="denoiser: model size")
    p.add_argument("--variant", default="paper", choices=["paper", "official"], help="§3 variant of the denoiser")
    p.add_argument("--batch-size", type=int, default=16, help="denoiser, gpu: training batch (paper: 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (the median is printed)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--threads", type=int, help="paper: torch CPU threads of each command")
    p.add_argument("--dir", help="paper, metrics: keep the run, pieces and logs in this folder (default: a new temp "
                                 "folder)")
    p.add_argument("--compile", default="both", choices=["both", "off", "on"],
                   help="gpu: training without and/or with torch.compile")
    p.add_argument("--max-batch", type=int, default=1024, help="gpu: stop the largest-batch search here")
    p.add_argument("--pieces", type=int, help="gpu: pieces sampled at once (16); metrics: pieces scored (400, the "
                                              "Slakh test set's size)")
    p.add_argument("--grid-pieces", type=int, default=50, help="metrics: the subset timed at one setting and as a grid")
    p.add_argument("--seconds", type=float, default=10.24, help="metrics: length of each track")
    p.add_argument("--workers", type=int, default=2, help="metrics: processes")
    p.add_argument("--ddim-steps", type=int, default=200, help="gpu: DDIM steps (paper: 200)")
    args = p.parse_args(argv)
    args.pieces = args.pieces or (400 if args.what == "metrics" else 16)
    {"paper": bench_paper, "gpu": bench_gpu, "denoiser": bench_denoiser, "first-stage": bench_first_stage,
     "metrics": bench_metrics}[args.what](args)


if __name__ == "__main__":
    main()
