"""Benchmarks (speed and memory goals are measured here, never asserted in tests).

    python bench.py denoiser --preset paper --batch-size 16 --device cuda   # training it/s and DDIM step time
    python bench.py denoiser --preset toy --batch-size 16                   # the CPU toy model
    python bench.py first-stage [--device cuda]                             # encode/decode per 10.24 s track

Its own file because it is not part of the method: it times synctrack.py's pieces with random weights and prints
one line per measurement, naming the machine (the README's benchmark tables come from it).
"""
import argparse
import os
import platform
import statistics
import time

import torch

import synctrack as st
from train import memory_gb


def machine(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = [platform.processor()]
    return f"{names[0] if names else platform.machine()}, {torch.get_num_threads()} threads, " \
           f"load average {os.getloadavg()[0]:.1f}"


def timed(fn, device, repeats):
    """Median seconds of `repeats` calls after one untimed warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    offline = st.OfflineFirstStage().to(args.device)
    print(f"seconds per 10.24 s track (median of {args.repeats}); {args.device}: {machine(args.device)}")
    with torch.inference_mode():
        z, z_off = musicldm.encode(wave), offline.encode(wave)
        for label, fn in [("MusicLDM encode (log-mel + VAE encoder)", lambda: musicldm.encode(wave)),
                          ("MusicLDM decode (VAE decoder + HiFi-GAN)", lambda: musicldm.decode(z)),
                          ("offline encode (log-mel + fold)", lambda: offline.encode(wave)),
                          (f"offline decode (Griffin-Lim, {offline.griffin_lim_iters} iterations)",
                           lambda: offline.decode(z_off))]:
            print(f"  {label:50s} {timed(fn, args.device, args.repeats):8.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["denoiser", "first-stage"])
    p.add_argument("--preset", default="toy", choices=sorted(st.PRESETS))
    p.add_argument("--variant", default="paper", choices=["paper", "official"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    {"denoiser": bench_denoiser, "first-stage": bench_first_stage}[args.what](args)


if __name__ == "__main__":
    main()
