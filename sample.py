"""Generate four-track music with SyncTrack (§3 inference pipeline, Eq. 3), or arrange around given stems (App. A.8).

    python sample.py --n 16                                    # the shipped toy model, offline, CPU
    python sample.py --n 16 --ckpt runs/toy/ckpt.pt --steps 50 --out samples-50
    python sample.py --n 16 --ckpt synctrack.ckpt --first-stage ckpt/ --trust   # the released official weights
    python sample.py --n 4 --given drums=drums.wav --given bass=bass.wav        # generate guitar and piano around them
    python sample.py --given-dir slakh/test --ckpt ...          # arrange every song of a folder (any metrics.py layout)
    torchrun --nproc_per_node 8 sample.py -n 2000 --out fad/    # shard the pieces over 8 GPUs (or --nnodes machines)
    torchrun --nproc_per_node 8 sample.py -n 2000 --out fad/ --resume   # after a preemption: only the missing pieces

(Under torchrun spell --n as -n: torchrun's own parser rejects --n as an ambiguous abbreviation of its --nnodes.)

Writes OUT/stem_0..stem_3/NAME.wav (the official layout, read by metrics.py and FAD tools), OUT/{bass,drums,guitar,
piano}/NAME.wav as relative symbolic links to those files (copies where links are unavailable), OUT/mix/NAME.wav (the
clipped sum, as the official code writes it) and OUT/settings.json. 16 kHz, 16-bit PCM, clip_samples long.

Nothing is mixed or lost: OUT must be absent or empty; --overwrite replaces it whole once the new one is complete;
--resume finishes a folder written with the same settings. Every file is written atomically. Piece i is a function of
(--seed, i) and the model only: --batch-size, --n and the number of processes never change it.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import time
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import metrics
import synctrack as st
import toy

DEFAULT_CKPT = Path(__file__).parent / "checkpoints" / "synctrack_toy.pt"
# What decides the pieces (with the checkpoint's content, ckpt_sha256): --resume requires these unchanged.
PIECE_KEYS = ("n", "seed", "steps", "eta", "raw", "unet_config", "first_stage", "given", "given_dir", "keep")
MAX_PEAK = 10.0  # a given stem peaking 20 dB over full scale is mis-scaled (e.g. integer samples stored as floats)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every default."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("-n", "--n", type=int, default=16, help="how many pieces (ignored with --given-dir: one per song)")
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT),
                   help="our checkpoint (config inside) or the official SyncTrack Lightning checkpoint")
    p.add_argument("--first-stage", metavar="PATH",
                   help="MusicLDM VAE + vocoder weights (any format synctrack.load_first_stage reads); needed for "
                        "models on MusicLDM latents, unless --ckpt holds them")
    p.add_argument("--trust", action="store_true", help="allow pickled checkpoints (Lightning) to be unpickled")
    p.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA weights")
    p.add_argument("--config", metavar="JSON",
                   help="official checkpoints only: the official unet_config (JSON file) when it is not the paper's")
    p.add_argument("--steps", type=int, default=200, help="DDIM steps, 1..999 (paper: 200)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM η ≥ 0 (official: 1.0; 0 = deterministic DDIM)")
    p.add_argument("--seed", type=int, default=0,
                   help="piece i is drawn from (seed, i) alone: other seeds never repeat it")
    p.add_argument("--batch-size", type=int, default=16,
                   help="pieces denoised together per process (speed and memory only: a piece never depends on it)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (cpu, cuda, cuda:1); under torchrun, cuda means each process's own GPU")
    p.add_argument("--out", default="samples",
                   help="output folder; must be absent or empty unless --overwrite or --resume")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty OUT whole: the old folder is removed only once the new one is complete")
    p.add_argument("--resume", action="store_true",
                   help="make only the pieces missing from OUT (its settings.json must hold the same settings)")
    p.add_argument("--given", action="append", default=[], metavar="TRACK=PATH",
                   help="a known stem (repeatable, one per track): only the other tracks are generated")
    p.add_argument("--given-dir", metavar="DIR", help="arrange every song of DIR around its stems listed by --keep")
    p.add_argument("--keep", default="drums", help="with --given-dir: comma-separated tracks to keep")
    p.add_argument("--eval", action="store_true", help="run metrics.py on the output and print IRS/CBS/CBD")
    return p.parse_args(argv)


def check_args(args):
    """Refuse impossible settings before anything is loaded, one line each."""
    checks = ((args.n >= 1, f"--n {args.n}: must be at least 1"),
              (1 <= args.steps <= 999, f"--steps {args.steps}: must be in 1..999 (DDIM steps of 1000 levels)"),
              (math.isfinite(args.eta) and args.eta >= 0, f"--eta {args.eta}: must be a finite number ≥ 0"),
              (args.batch_size >= 1, f"--batch-size {args.batch_size}: must be at least 1"),
              (args.seed >= 0, f"--seed {args.seed}: must be ≥ 0"),
              (not (args.overwrite and args.resume), "--overwrite and --resume exclude each other"),
              (not (args.given and args.given_dir), "--given and --given-dir exclude each other"))
    for ok, message in checks:
        if not ok:
            raise SystemExit(message)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here (use --device cpu)")
    if args.given_dir:
        keep = [t.strip() for t in args.keep.split(",")]
        if not set(keep) <= set(st.TRACKS) or len(set(keep)) != len(keep) or len(keep) == len(st.TRACKS):
            raise SystemExit(f"--keep {args.keep}: 1 to {len(st.TRACKS) - 1} different tracks of {', '.join(st.TRACKS)}")
    if args.ckpt != str(DEFAULT_CKPT) or DEFAULT_CKPT.exists():
        check_checkpoint_file(args.ckpt)


def check_checkpoint_file(path):
    """One line naming `path` when it cannot be a checkpoint: missing, a folder, empty, or neither a zip archive (what
    torch.save writes) nor a pickle (older torch.save), e.g. truncated or text."""
    p = Path(path)
    problem = ("no such file" if not p.exists() else "a folder, not a checkpoint file" if p.is_dir() else
               "an empty file" if p.stat().st_size == 0 else None)
    if problem is None and not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            if f.read(1) != b"\x80":  # pickle protocol 2+
                problem = "not a PyTorch checkpoint (truncated, or another format)"
    if problem:
        raise SystemExit(f"--ckpt {path}: {problem}")


def check_inputs_outside(args):
    """Input files are never written, deleted or linked over: refuse an --out that holds one (or lies in --given-dir)."""
    out = Path(os.path.realpath(args.out))
    inputs = [args.ckpt, args.first_stage, args.config, args.given_dir, *(g.partition("=")[2] for g in args.given)]
    for path in filter(lambda p: p and os.path.lexists(p), inputs):
        for where in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):  # the path as named, and its target
            if where == out or out in where.parents:
                raise SystemExit(f"--out {args.out} holds the input {path}: write the samples elsewhere")
    if args.given_dir and Path(os.path.realpath(args.given_dir)) in out.parents:
        raise SystemExit(f"--out {args.out} is inside --given-dir {args.given_dir}: write the samples elsewhere")


def load(args):
    """(model, first stage) from our checkpoint or an official one; a file that does not load is one line naming it."""
    if args.ckpt == str(DEFAULT_CKPT) and not DEFAULT_CKPT.exists():
        raise SystemExit(f"{DEFAULT_CKPT} is missing: train it with "
                         f"`python train.py --preset toy --export {DEFAULT_CKPT}`, or pass --ckpt")
    try:
        ckpt = st.read_checkpoint(args.ckpt, trust=args.trust)
        model, scale = build_model(args, ckpt)
    except Exception as e:  # the boundary between a user's file and our code: say which file and why, no traceback
        raise SystemExit(f"--ckpt {args.ckpt}: cannot load it ({type(e).__name__}: {one_line(e)})") from None
    if model.config.first_stage == "offline":
        stage = toy.make_first_stage("offline")
    elif args.first_stage or "state_dict" in ckpt or "first_stage" in ckpt:  # MusicLDM weights or our toy VAE
        spec = args.first_stage or args.ckpt
        try:
            stage = toy.make_first_stage(spec, trust=args.trust)
        except Exception as e:
            raise SystemExit(f"--first-stage {spec}: cannot load it ({type(e).__name__}: {one_line(e)})") from None
    else:
        raise SystemExit(f"{args.ckpt} diffuses MusicLDM latents: give --first-stage PATH (MusicLDM VAE + vocoder)")
    if scale is not None and hasattr(stage, "scale_factor"):  # decode with the scale the model was trained on
        stage.scale_factor = float(scale)
    return model, stage


def build_model(args, ckpt):
    """(model, latent scale factor or None) from a loaded checkpoint: ours (config inside) or an official one."""
    if "config" in ckpt:
        model, _ = st.load_model(ckpt, ema=not args.raw)
        return model, ckpt.get("scale_factor")
    # an official Lightning checkpoint: the official variant, EMA weights, the paper config unless told
    unet_config = json.loads(Path(args.config).read_text()) if args.config else None
    model = st.SyncTrack(st.official_config(unet_config) if unet_config
                         else st.SyncTrackConfig(variant="official"))
    report = st.load_official(model, ckpt, ema=not args.raw)
    print(f"{args.ckpt}: {report['loaded']} official tensors ({report['source']} weights)")
    return model, report["scale_factor"]


def one_line(e):
    """An exception's message on one line (KeyError quotes its message; some messages span lines)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or "no message"


# ----------------------------------------------------------------------------------------------------------------------
# Given stems


def read_stem(path):
    """A given stem as 16 kHz mono float; ValueError naming the file when it is not audio we can arrange around."""
    wave, _ = data.read_audio(path)  # names the file when undecodable or non-finite
    info = sf.info(str(path))
    if info.samplerate != st.SAMPLE_RATE or info.channels != 1:
        print(f"{path}: {info.channels} channel(s) at {info.samplerate} Hz, mixed to mono at {st.SAMPLE_RATE} Hz")
    peak = float(np.abs(wave).max(initial=0))
    if peak > MAX_PEAK:
        raise ValueError(f"{path}: peak amplitude {peak:.3g}, not audio in [-1, 1] (integer samples stored as floats?)")
    return wave


def fit(wave, n, where):
    """Crop or zero-pad a stem to n samples, saying so."""
    if len(wave) != n:
        print(f"{where}: {len(wave)} samples at 16 kHz, {'cropped' if len(wave) > n else 'zero-padded'} to {n}")
    return np.pad(wave[:n], (0, max(0, n - len(wave))))


def read_given(args):
    """{track: wave} of the --given stems, read (and refused, one line naming the file) before anything is loaded."""
    known, paths = {}, {}
    for item in args.given:
        track, sep, path = item.partition("=")
        if not sep or track not in st.TRACKS:
            raise SystemExit(f"--given {item!r}: expected TRACK=PATH with TRACK one of {', '.join(st.TRACKS)}")
        if track in paths:
            raise SystemExit(f"--given: {track} given twice ({paths[track]} and {path}); give each track once")
        if not os.path.isfile(path):
            raise SystemExit(f"--given {item!r}: no such file {path}")
        try:
            known[track], paths[track] = read_stem(path), path
        except ValueError as e:
            raise SystemExit(f"--given {track}: {e}") from None
    if len(known) == len(st.TRACKS):
        raise SystemExit("--given: all four tracks are given, nothing is left to generate")
    return known


def pieces(args):
    """(names, sources): piece i is names[i]; sources[i] is {track: wave} (the --given stems, shared), {track: path}
    (a --given-dir song's kept stems, read when the piece is made) or {} (free generation)."""
    if not args.given_dir:
        width = max(4, len(str(args.n - 1)))
        known = read_given(args)
        return [f"sample_{i:0{width}d}" for i in range(args.n)], [known] * args.n
    keep = [t.strip() for t in args.keep.split(",")]
    try:
        _, songs, problems = data.find_samples(args.given_dir)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--given-dir: {e}") from None
    for problem in problems:
        print(problem)
    if not songs:
        raise SystemExit(f"--given-dir {args.given_dir}: no complete song to arrange")
    return list(songs), [{t: files[t] for t in keep} for files in songs.values()]


def stems_of(source, n, name):
    """{track: wave (n,)} of one piece's source, or None (with a line naming the file) when a stem cannot be read."""
    try:
        waves = {t: read_stem(w) if isinstance(w, Path) else w for t, w in source.items()}
    except ValueError as e:  # a corrupt --given-dir song: skip it, as metrics.py does, and go on
        print(f"{name}: {e}; song skipped")
        return None
    return {t: fit(w, n, f"{name} {t}") for t, w in waves.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Sampling: one generator per piece


def piece_generator(seed, i, device):
    """The generator of piece i, seeded from (seed, i) through numpy's SeedSequence: seed + i would make --seed 0
    piece 16 equal --seed 16 piece 0; a hash of the pair never does."""
    return torch.Generator(device).manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]))


def denoise(model, stage, args, indices, stems, progress):
    """Latents (B, S, C, T, F) of pieces `indices`, plus the given-track mask (B, S) and given waves (B, S, N) or None.

    Each piece's generator draws, in order, its z_start, its given stems' posterior sample (Eq. 1) and every DDIM step's
    noise: nothing of a piece depends on the other pieces of its batch."""
    cfg, device = model.config, args.device
    gens = [piece_generator(args.seed, i, device) for i in indices]
    z_start = torch.stack([torch.randn(cfg.latent_shape, generator=g, device=device) for g in gens])  # (B, S, C, T, F)
    mask = torch.tensor([[t in s for t in cfg.tracks] for s in stems], device=device)           # (B, S)
    known = waves = None
    if mask.any():
        waves = torch.zeros(len(indices), len(cfg.tracks), cfg.clip_samples, device=device)    # (B, S, N)
        for b, piece in enumerate(stems):
            for t, wave in piece.items():
                waves[b, cfg.tracks.index(t)] = torch.from_numpy(wave)
        known = torch.cat([stage.encode(waves[b:b + 1], sample=True, generator=g) for b, g in enumerate(gens)])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    with autocast:
        z = st.ddim_sample(model, z_start, args.steps, args.eta, known, mask, generator=gens)
    return z.float(), mask, waves


def decode_and_write(stage, z, mask, waves, names, folder, progress):
    """Decode (Eq. 3) and write each piece; a non-finite latent or waveform stops the run naming the piece, unwritten.
    Returns {name: clipped samples}."""
    clipped = {}
    for b, name in enumerate(tqdm(names, "decode + write", unit="piece", leave=False, disable=not progress)):
        if not torch.isfinite(z[b]).all():
            raise SystemExit(f"{name}: the sampled latent holds NaN or inf values (broken weights?); not written")
        audio = stage.decode(z[b:b + 1])[0].float()                              # (S, N)
        if waves is not None:
            audio = torch.where(mask[b, :, None], waves[b], audio)              # given stems written back as read
        if not torch.isfinite(audio).all():
            raise SystemExit(f"{name}: the decoded audio holds NaN or inf values; not written")
        clipped[name] = data.write_piece(folder, name, audio.cpu().numpy())
    return clipped


def make(model, stage, args, names, sources, todo, folder, progress):
    """Make and write the pieces `todo` (indices), batch by batch. Returns ({name: clipped samples}, [skipped])."""
    clipped, skipped = {}, []
    bar = tqdm(total=len(todo), desc="pieces", unit="piece", disable=not progress or len(todo) <= args.batch_size)
    with torch.inference_mode():
        for start in range(0, len(todo), args.batch_size):
            batch, stems = [], []
            for i in todo[start:start + args.batch_size]:
                piece = stems_of(sources[i], model.config.clip_samples, names[i])
                if piece is None:
                    skipped.append(names[i])
                else:
                    batch.append(i)
                    stems.append(piece)
            if batch:
                z, mask, waves = denoise(model, stage, args, batch, stems, progress)
                clipped.update(decode_and_write(stage, z, mask, waves, [names[i] for i in batch], folder, progress))
            bar.update(len(todo[start:start + args.batch_size]))
    bar.close()
    return clipped, skipped


# ----------------------------------------------------------------------------------------------------------------------
# The output folder: new, replaced whole, or resumed; shared by every rank under torchrun


def start_distributed(args):
    """(rank, world size): torchrun's environment joins the process group (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    if args.device == "cuda":
        args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if args.device.startswith("cuda"):
        torch.cuda.set_device(args.device)
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    return dist.get_rank(), world


def on_rank0(rank, world, decide):
    """decide() on rank 0; its result, or its refusal (SystemExit), on every rank."""
    box = [None]
    if rank == 0:
        try:
            box[0] = ("ok", decide())
        except SystemExit as e:
            box[0] = ("refused", str(e))
    if world > 1:
        dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "refused":
        raise SystemExit(value if rank == 0 else 1)  # said once, by rank 0
    return value


def checkpoint_digest(path):
    """sha256 of the checkpoint file: --resume compares the model by content, wherever the file now lies."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def plan(args, names):
    """(folder to write into, indices of the pieces to make, {name: clipped} kept from before, settings of the run)."""
    out = Path(args.out).absolute()
    now = {**{k: v for k, v in vars(args).items() if k != "config"}, "unet_config": args.config,
           "ckpt_sha256": checkpoint_digest(args.ckpt)}  # "config" is the model's SyncTrackConfig, added once loaded
    if args.resume and out.is_dir() and any(out.iterdir()):
        before = read_settings(out)
        changed = [k for k in (*PIECE_KEYS, "ckpt_sha256") if before.get(k) != now[k]]
        if changed:
            raise SystemExit(f"--resume {args.out}: settings differ from its settings.json: " + "; ".join(
                f"{k} {before.get(k)!r} there, {now[k]!r} now" for k in changed))
        todo = [i for i, name in enumerate(names) if not complete(out, name)]
        return out, todo, before.get("clipped_samples", {}), now
    try:
        folder = data.output_folder(out, args.overwrite)
    except FileExistsError as e:
        raise SystemExit(f"{e}{' (or --resume to finish it)' if out.is_dir() and not args.overwrite else ''}") from None
    return folder, list(range(len(names))), {}, now


def read_settings(out):
    path = out / "settings.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"--resume {out}: no settings.json, so not a folder sample.py wrote") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"--resume: cannot read {path} ({e})") from None


def complete(folder, name):
    """Whether every file of piece `name` is in `folder` (a link counts when its stem is there too)."""
    return all(p.exists() for p in data.piece_files(folder, name))


def write_settings(folder, settings, names, clipped, seconds=None):
    """settings.json says what the folder holds now: the run's settings and how many pieces are complete."""
    written = sum(complete(folder, name) for name in names)
    settings = dict(settings, n_pieces=len(names), n_written=written, complete=written == len(names),
                    seconds=seconds, clipped_samples={k: v for k, v in sorted(clipped.items()) if v})
    data.atomic_write(folder / "settings.json", lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=2)))
    return settings


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    rank, world = start_distributed(args)
    names, sources = pieces(args)
    check_inputs_outside(args)
    folder, todo, clipped, settings = on_rank0(rank, world, lambda: plan(args, names))
    if not todo and rank == 0:
        print(f"all {len(names)} pieces are already in {args.out}/; nothing to make")
    model, stage = load(args)
    model, stage = model.to(args.device).eval(), stage.to(args.device).eval()
    settings["config"] = asdict(model.config)
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        write_settings(folder, settings, names, clipped)
    if world > 1:
        dist.barrier()  # the folder exists before any rank writes into it
    t0 = time.time()
    try:
        made, skipped = make(model, stage, args, names, sources, todo[rank::world], folder, progress=rank == 0)
    except (OSError, SystemExit) as e:
        raise SystemExit(failed(e, args, world, folder, settings, names, clipped)) from None
    seconds = time.time() - t0
    if world > 1:  # rank 0 hears from every rank, so all pieces are written before it finishes the folder
        gathered = [None] * world
        dist.gather_object((made, skipped), gathered if rank == 0 else None, dst=0)
        if rank == 0:
            made, skipped = {k: v for m, _ in gathered for k, v in m.items()}, sum((s for _, s in gathered), [])
    if rank == 0:
        finish(args, world, folder, settings, names, clipped, made, skipped, seconds)
    if world > 1:
        dist.destroy_process_group()


def failed(error, args, world, folder, settings, names, clipped):
    """The one line to exit with after a failed write or a NaN piece; a replacement folder is removed, a new one says in
    settings.json what it holds (single process: under torchrun the other ranks may still be writing)."""
    out = Path(args.out).absolute()
    if world > 1:
        return f"{error}"
    if folder != out:
        shutil.rmtree(folder, ignore_errors=True)
        return f"{error}; {args.out} is unchanged"
    try:
        written = write_settings(folder, settings, names, clipped)["n_written"]
    except OSError:  # the disk is still full: the settings.json written at the start stays, saying "complete": false
        written = sum(complete(folder, name) for name in names)
    return f"{error}; {written} of {len(names)} pieces are complete in {args.out}/ (--resume makes the rest)"


def finish(args, world, folder, settings, names, clipped, made, skipped, seconds):
    """Rank 0 after every rank is done: final settings.json, the folder in place, a summary, --eval."""
    settings = write_settings(folder, settings, names, dict(clipped, **made), round(seconds, 2))
    data.finish_output(folder, Path(args.out).absolute())
    per = f"{seconds * world / max(len(made), 1):.2f} s per piece{' and process' if world > 1 else ''}"
    print(f"made {len(made)} pieces in {seconds:.1f} s ({per}); {args.out}/ holds {settings['n_written']} of "
          f"{len(names)}")
    if skipped:
        print(f"skipped {len(skipped)} songs with unreadable stems: {', '.join(skipped)}")
    if settings["clipped_samples"]:
        print(f"audio clipped to [-1, 1] in {len(settings['clipped_samples'])} pieces (see settings.json)")
    if args.eval:
        metrics.main([str(args.out)])


if __name__ == "__main__":
    main()
