"""sample.py sharded over processes with torchrun, resumable; and arrangement of a whole folder of songs (--given-dir).

    torchrun --nproc_per_node 8 extras/sample_ddp.py -n 2000 --out fad/             # 8 GPUs (or --nnodes machines)
    torchrun --nproc_per_node 8 extras/sample_ddp.py -n 2000 --out fad/ --resume    # after a preemption
    python extras/sample_ddp.py --given-dir slakh/test --keep drums --ckpt ... --out arranged/   # one process is fine

(Under torchrun spell --n as -n: torchrun's own parser takes --n for an abbreviation of its --nnodes.)

Every option of sample.py works the same, and the files are those sample.py writes for the same arguments, byte for
byte on the same kind of device and thread count per process: piece groups [kB, (k+1)B) (B = --batch-size) are dealt
to the processes whole (group k to rank k mod world), each piece from its own generator (--seed, i). Rank 0 holds the
output lock, plans the folder and writes settings.json (data.SampleFolder); every rank writes its own pieces.
--given-dir DIR: one piece per complete song of DIR (any layout of data.find_samples), named after the song, with the
tracks of --keep given; a song whose stems cannot be read is skipped with a line naming the file.
"""
import contextlib
import os
import pathlib
import sys
import time
from dataclasses import asdict

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import sample  # noqa: E402
import synctrack as st  # noqa: E402


def parse_args(argv):
    p = sample.parser(__doc__)
    p.add_argument("--given-dir", metavar="DIR", help="arrange every song of DIR around its stems listed by --keep")
    p.add_argument("--keep", default="drums", help="with --given-dir: comma-separated tracks to keep")
    args = p.parse_args(argv)
    args.keep = [t.strip() for t in args.keep.split(",")] if args.given_dir else None
    return args


def check(args):
    """sample.py's checks, and those of --given-dir / --keep."""
    sample.check_args(args)
    if args.given_dir:
        if args.given:
            raise SystemExit("--given and --given-dir exclude each other")
        keep = args.keep
        if not set(keep) <= set(st.TRACKS) or len(set(keep)) != len(keep) or len(keep) == len(st.TRACKS):
            raise SystemExit(f"--keep {','.join(keep)}: 1 to {len(st.TRACKS) - 1} different tracks of "
                             f"{', '.join(st.TRACKS)}")
        data.check_outputs({"--out": args.out}, {"--given-dir": args.given_dir})


def songs(args, rank):
    """(names, sources): piece i is names[i]; sources[i] is {track: path} of its kept stems (--given-dir) or None."""
    if not args.given_dir:
        return [f"sample_{i:0{max(4, len(str(args.n - 1)))}d}" for i in range(args.n)], None
    try:
        _, found, problems = data.find_samples(args.given_dir)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--given-dir: {e}") from None
    for problem in problems if rank == 0 else ():
        print(problem)
    if not found:
        raise SystemExit(f"--given-dir {args.given_dir}: no complete song to arrange")
    return list(found), [{t: files[t] for t in args.keep} for files in found.values()]


def stems_of(source, given, n, name):
    """{track: wave (n,)} of one piece: the --given stems, or its song's kept stems read now; None (with a line naming
    the file) when one cannot be read: the song is skipped, as metrics.py does."""
    if source is None:
        return given
    try:
        return {t: sample.fit(sample.read_stem(path), n, f"{name} {t}") for t, path in source.items()}
    except ValueError as e:
        print(f"{name}: {e}; song skipped")
        return None


def start_distributed(args):
    """(rank, world size): torchrun's environment joins the process group (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    if args.device == "cuda":  # each process its own GPU
        args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if args.device.startswith("cuda"):
        torch.cuda.set_device(args.device)
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    return dist.get_rank(), world


def on_rank0(rank, world, decide):
    """decide() on rank 0; its result, or its refusal (one line), on every rank (SystemExit: said by rank 0 only)."""
    box = [None]
    if rank == 0:
        try:
            box[0] = ("ok", decide())
        except (SystemExit, OSError, ValueError) as e:
            box[0] = ("refused", str(e.code if isinstance(e, SystemExit) else e))
    if world > 1:
        dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "refused":
        raise SystemExit(value if rank == 0 else 1)
    return value


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    rank, world = start_distributed(args)
    launcher = ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", "1")] if world > 1 else ["python"]
    folder, command = None, [*launcher, "extras/sample_ddp.py", *argv]
    try:
        with contextlib.ExitStack() as hold:
            on_rank0(rank, world, lambda: check(args))
            names, sources = songs(args, rank)
            given = on_rank0(rank, world, lambda: sample.read_given(args))
            model, stage = sample.load(args)
            n = sample.piece_samples(args, model.config)
            given = {t: sample.fit(w, n, f"--given {t}") for t, w in given.items()}
            if rank == 0:  # the settings.json of sample.py, plus --given-dir and --keep
                settings = dict(vars(args), unet_config=args.config, config=asdict(model.config))
                folder = data.SampleFolder(args.out, names, settings, sample.PIECE_KEYS, args.overwrite, args.resume,
                                           ckpt=args.ckpt)

            def plan():  # rank 0 holds the lock until the end (the kernel frees it if the process dies)
                hold.enter_context(folder)
                return folder.path, folder.todo
            path, todo = on_rank0(rank, world, plan)
            todo, t0, clipped, skipped = set(todo), time.time(), {}, []
            mine = sample.groups(todo, args.batch_size, len(names))[rank::world]  # whole groups, dealt round-robin
            bar = tqdm(total=sum(i in todo for group in mine for i in group), unit="piece", disable=rank != 0,
                       desc="pieces" if world == 1 else f"pieces of rank 0 (of {world})")
            with torch.inference_mode(), bar:
                for group in mine:
                    stems = {i: stems_of(sources[i] if sources else None, given, n, names[i]) for i in group}
                    skipped += [names[i] for i in group if stems[i] is None and i in todo]
                    group = [i for i in group if stems[i] is not None]
                    for i, audio in sample.make_group(model, stage, args, group, stems, names) if group else ():
                        if i in todo:
                            clipped[names[i]] = data.write_piece(path, names[i], audio)
                            bar.update()
                    if rank == 0:  # settings.json counts the pieces written so far, by every rank
                        folder.record(clipped)
                        folder.save()
            gathered = [(clipped, skipped)]
            if world > 1:  # rank 0 hears from every rank, so all pieces are written before it finishes the folder
                gathered = [None] * world
                dist.gather_object((clipped, skipped), gathered if rank == 0 else None, dst=0)
            if rank == 0:
                for c, _ in gathered:
                    folder.record(c)
                skipped = sorted({name for _, s in gathered for name in s})
                folder.finish(round(time.time() - t0, 2))
    except (KeyboardInterrupt, OSError, ValueError) as e:
        if rank != 0:
            raise SystemExit(1) from None  # rank 0 says what happened
        raise SystemExit(folder.failure(e, command) if folder else "interrupted; nothing was written"
                         if isinstance(e, KeyboardInterrupt) else str(e)) from None
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(*folder.summary(len(todo) - len(skipped), time.time() - t0), sep="\n")
        if skipped:
            print(f"skipped {data.plural(len(skipped), 'song')} with unreadable stems: {', '.join(skipped)}")


if __name__ == "__main__":
    main()
