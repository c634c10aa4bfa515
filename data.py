"""Data for SyncTrack: four aligned tracks (bass, drums, guitar, piano) of 16 kHz audio, cut into clips.

Its own file because it needs nothing of the model but its track order and sample rate: train.py, sample.py,
metrics.py, report.py and the tests share it, and someone who only wants Slakh2100 clips can use it alone.

Map of the file:
  read_audio      the one reader: any sound file -> float32 at 16 kHz or its own rate (soundfile + resample_poly)
  find_samples    the folder layouts of multi-track pieces (stem_i, named, per-song), any track names
  cut             the pieces scored: whole files or consecutive segments (the official 10.24 s test clips)
  atomic_write    every file this repo writes: temporary name + rename, cleaned up and named on failure
  check_outputs   no output path is an input, inside one, or a folder holding one
  OutputLock      one writer per output folder at a time (released by the kernel when a run dies)
  output_folder   a result folder is new, empty, or replaced whole (--overwrite); finish_output swaps it in
  RunFolder       the folder of one training run (train.py): refusals, --overwrite staging, the log on resume
  write_piece     one piece in the official layout: stem_0..stem_3, named links, mix (sample.py, `python data.py`)
  SlakhDataset    clips of Slakh2100 in either layout, decoded once into a cache and memory-mapped (§5.1, App. A)
  ClipSampler     shuffle + shard + epoch-dependent random offsets, resumable mid-epoch
  make_loader     the DataLoader train.py uses

Notation: S tracks (4, in TRACKS order), N samples of a song, c samples of a clip. Every item is a float32 tensor
(S, c). Silence is data: an absent instrument is an all-zero track, as in the official code.
"""
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import signal
import typing

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from tqdm import tqdm

from synctrack import SAMPLE_RATE, TRACKS  # TRACKS[s] is track s of every item

SLAKH_CLASSES = ("Bass", "Drums", "Guitar", "Piano")  # Slakh metadata `inst_class` of each track, same order


# ----------------------------------------------------------------------------------------------------------------------
# Audio files

def read_audio(path, sr=SAMPLE_RATE, start=0, stop=None, channels="mean"):
    """(samples, rate) of frames [start, stop) of a sound file (default: all), as float32.
    sr: the rate to convert to with resample_poly (default 16 kHz, the model's); None keeps the file's own rate.
    channels: "mean" averages them into (N,), "first" keeps channel 0 as (N,), "all" keeps (N, channels).
    Raises ValueError naming the file when it cannot be decoded, is empty or holds NaN/inf samples."""
    try:
        x, file_sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)  # (N, channels)
    except RuntimeError as e:  # soundfile's LibsndfileError: unreadable, missing or not audio
        raise ValueError(f"{path}: cannot decode ({e})") from None
    if len(x) == 0:
        raise ValueError(f"{path}: empty (0 samples)")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: contains NaN or infinite samples")
    if channels == "mean":
        x = x.mean(axis=1)                                                # (N, channels) -> (N,)
    elif channels == "first":
        x = x[:, 0]
    if sr is None or file_sr == sr:
        return x, file_sr
    g = math.gcd(file_sr, sr)
    return resample_poly(x, sr // g, file_sr // g, axis=0).astype(np.float32), sr  # e.g. 44.1k -> 16k: up 160, down 441


# ----------------------------------------------------------------------------------------------------------------------
# Finding pieces: the folder layouts of generated and ground-truth audio (metrics.py, report.py, sample.py --given-dir)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")  # what soundfile reads
MIX = "mix"  # optional mixture folder / file name, as the official evaluation writes it


def _unreadable(path):
    """Why `path` cannot be listed or read (a symlink loop, a dangling link, no permission), else None."""
    try:
        os.stat(path)
    except OSError as err:
        return "symlink loop" if err.errno == errno.ELOOP else (err.strerror or type(err).__name__)
    return None


def _audio_files(folder, problems):
    """{name without extension: [paths]} of the audio files directly in `folder`; what looks like audio but is not
    readable or not a file is added to `problems`."""
    found = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        why = _unreadable(p) or ("a folder, not an audio file" if p.is_dir() else None)
        if why:
            problems.append(f"{p}: {why}; ignored")
        elif p.is_file():
            found.setdefault(p.stem, []).append(p)
    return found


def _check_tracks(tracks):
    tracks = list(tracks)
    bad = [t for t in tracks if not t or t == MIX or "/" in t or t.startswith(".")]
    if len(tracks) < 2 or len(set(tracks)) < len(tracks) or bad:
        raise ValueError(f"--tracks needs at least 2 distinct names, none empty, '{MIX}' or with '/'; got {tracks}")
    return tracks


def layout_of(root, tracks=None):
    """(layout, tracks, folders) of `root`: which layout find_samples reads and the track names it reports. stem_i:
    stem_0..stem_{S-1}, S from --tracks or from the highest stem_i folder; the tracks are named by --tracks, else
    bass, drums, guitar, piano when S = 4 (the official order), else stem_0..stem_{S-1}. named / per-song: the names
    of --tracks, default bass, drums, guitar, piano. folders: one per track (folder layouts), None for per-song."""
    root = pathlib.Path(root)
    why = _unreadable(root) or (None if root.is_dir() else "not a directory")
    if why:
        raise FileNotFoundError(f"{root}: {why}")
    tracks = _check_tracks(tracks) if tracks else None
    stems = [int(m[1]) for d in root.iterdir() if (m := re.fullmatch(r"stem_(\d+)", d.name)) and d.is_dir()]
    if stems:
        n = len(tracks) if tracks else max(stems) + 1
        if n < 2:
            raise ValueError(f"{root}: only stem_0; the rhythm metrics need at least 2 tracks")
        names = tracks or (list(TRACKS) if n == len(TRACKS) else [f"stem_{i}" for i in range(n)])
        return "stem_i", names, [f"stem_{i}" for i in range(n)]
    names = tracks or list(TRACKS)
    if any((root / t).is_dir() for t in names):
        return "named", names, names
    return "per-song", names, None


def find_samples(root, tracks=None):
    """Find the multi-track samples under `root`.

    Layouts, tried in this order (TRACK: the names of `tracks`, default bass, drums, guitar, piano):
      "stem_i":   root/stem_0..stem_{S-1}/NAME.wav  (the official evaluation output; optional root/mix/NAME.wav)
      "named":    root/TRACK/NAME.wav  (optional root/mix/NAME.wav)
      "per-song": root/NAME/TRACK.wav  (the MSDM Slakh layout, MUSDB18 exported to wav; optional root/NAME/mix.wav)
    Any of .wav/.flac/.ogg. Returns (layout, samples, problems): samples maps NAME (sorted) to
    {track: Path, ..., optionally "mix": Path}, complete samples only, tracks in order; problems lists every sample
    or file left out and why.
    """
    root = pathlib.Path(root)
    layout, tracks, folders = layout_of(root, tracks)
    problems = []
    if folders:
        dirs = {t: root / f for t, f in zip(tracks, folders)}
        problems += [f"{d}: {(os.path.lexists(d) and _unreadable(d)) or 'folder missing'}, so every sample lacks {t}"
                     for t, d in dirs.items() if not d.is_dir()]
        if layout == "stem_i":
            extra = [d for d in sorted(root.iterdir())
                     if re.fullmatch(r"stem_\d+", d.name) and int(d.name[5:]) >= len(tracks)]
            problems += [f"{d}: ignored (only stem_0..stem_{len(tracks) - 1} are tracks)" for d in extra]
        by_track = {t: _audio_files(d, problems) if d.is_dir() else {} for t, d in (*dirs.items(), (MIX, root / MIX))}
        names = sorted(set().union(*(by_track[t] for t in tracks)))
        samples, more = _complete(names, by_track, tracks, {t: f"{f}/NAME" for t, f in zip(tracks, folders)})
        return layout, samples, problems + more
    by_song = {}
    for d in sorted(root.iterdir()):
        why = _unreadable(d)
        if why:
            problems.append(f"{d}: {why}; ignored")
        elif d.is_dir() and not d.name.startswith("."):
            by_song[d.name] = _audio_files(d, problems)
    by_song = {name: files for name, files in by_song.items() if set(files) & set(tracks)}
    if not by_song:
        raise ValueError(f"{root}: no recognisable layout; expected stem_0..stem_{{S-1}}/NAME.wav, "
                         f"{{{','.join(tracks)}}}/NAME.wav or NAME/{{{','.join(tracks)}}}.wav")
    by_track = {t: {name: files[t] for name, files in by_song.items() if t in files} for t in (*tracks, MIX)}
    samples, more = _complete(sorted(by_song), by_track, tracks, {t: f"NAME/{t}" for t in tracks})
    return "per-song", samples, problems + more


def _complete(names, by_track, tracks, where):
    """Keep the names that have exactly one file for every track; say why each other name is left out."""
    samples, problems = {}, []
    for name in names:
        missing = [t for t in tracks if name not in by_track[t]]
        doubled = [str(p) for t in (*tracks, MIX) if len(by_track[t].get(name, [])) > 1 for p in by_track[t][name]]
        if missing:
            lacks = ", ".join(f"{t} ({where[t].replace('NAME', name)}.*)" for t in missing)
            problems.append(f"{name}: missing {lacks}; sample skipped")
        elif doubled:
            problems.append(f"{name}: more than one file for a track ({', '.join(doubled)}); sample skipped")
        else:
            samples[name] = {t: by_track[t][name][0] for t in (*tracks, MIX) if name in by_track[t]}
    return samples, problems


class Span(typing.NamedTuple):
    """Frames [start, stop) of one file (stop None: to its end); `at`: the start in seconds. str(span) names it."""
    path: pathlib.Path
    start: int = 0
    stop: int | None = None
    at: float = 0.0

    def __str__(self):
        return str(self.path) if self.stop is None else f"{self.path} at {self.at:g} s"


def cut(samples, tracks, seconds=None):
    """The pieces scored as samples: ({piece: {track: Span}}, {piece: (sample, start in s)}, problems, dropped).

    seconds None: one piece per sample, whole files. seconds > 0: the consecutive non-overlapping segments from 0 s
    of the sample's shortest track, named NAME@<start>s, each track cut at its own rate; the last partial segment is
    dropped (`dropped` counts the samples that had one), as the official test loader cuts its 10.24 s clips.
    """
    pieces, where, problems, dropped = {}, {}, [], 0
    for name, files in samples.items():
        if seconds is None:
            pieces[name], where[name] = {t: Span(files[t]) for t in tracks}, (name, 0.0)
            continue
        try:
            info = {t: sf.info(str(files[t])) for t in tracks}
        except Exception as err:  # a corrupt header: the sample cannot be cut
            problems.append(f"{name}: sample skipped; {type(err).__name__}: {err}")
            continue
        length = {t: int(round(seconds * i.samplerate)) for t, i in info.items()}  # frames per segment
        n = min(i.frames // length[t] for t, i in info.items())
        if n == 0:
            shortest = min(i.frames / i.samplerate for i in info.values())
            problems.append(f"{name}: sample skipped; {shortest:.3g} s is shorter than one {seconds:g} s segment")
            continue
        dropped += any(i.frames > n * length[t] for t, i in info.items())
        for k in range(n):
            piece = f"{name}@{k * seconds:g}s"
            pieces[piece] = {t: Span(files[t], k * length[t], (k + 1) * length[t], k * seconds) for t in tracks}
            where[piece] = (name, k * seconds)
    return pieces, where, problems, dropped


# ----------------------------------------------------------------------------------------------------------------------
# Writing results: atomic files, whole output folders, and the four-track layout of sample.py and `python data.py`

def atomic_write(path, write):
    """Create the file `path` by calling write(tmp) on a temporary name in the same folder, then renaming it to `path`:
    atomic (os.replace), and a symbolic link at `path` is replaced itself, never the file it points to. On any failure
    the temporary file is removed and OSError("cannot write PATH: why") is raised: nobody finds half a file."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # pid: parallel ranks never share a temporary file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # RuntimeError: soundfile's LibsndfileError, e.g. on a full disk
            raise OSError(f"cannot write {path}: {e}") from None
        raise


def check_outputs(outputs, inputs):
    """Refuse (ValueError, one line naming both flags) an output path that is an input, lies inside an input folder, or
    is a folder holding an input. `outputs` and `inputs` map a flag (e.g. "--json") to a path or None; paths are
    compared as named and with links resolved, so a link to an input is the input."""
    def forms(path):
        return {pathlib.Path(os.path.abspath(path)), pathlib.Path(os.path.realpath(path))}
    for out_flag, out in outputs.items():
        for in_flag, given in inputs.items():
            if out is None or given is None:
                continue
            for o in forms(out):
                for i in forms(given):
                    if o == i or i in o.parents or o in i.parents:
                        raise ValueError(f"{out_flag} {out} would write over or into the input {in_flag} {given}: "
                                         f"choose another {out_flag}")


class OutputLock:
    """One writer per output at a time: `with OutputLock(out):` holds an exclusive lock on a hidden file beside `out`
    (.NAME.lock) and raises BlockingIOError naming `out` and the holder's pid when another run holds it. The lock is
    the kernel's (flock), so a run that crashes or is killed releases it; the lock file is removed on a clean exit."""

    def __init__(self, out):
        out = _target(out)  # a link and its target are one output
        self.path = out.with_name(f".{out.name}.lock")
        self.out, self.file = out, None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.file is None:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                f.close()
                raise BlockingIOError(f"{self.out} is being written by another run (pid {holder}): wait for it, or "
                                      f"choose another output") from None
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                self.file = f  # else the holder removed the file between our open and our lock: try again
            else:
                f.close()
        self.file.truncate(0)
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter that opened the old file sees it is gone
        self.file.close()
        self.file = None


def output_folder(out, overwrite=False):
    """The folder to write a new result folder `out` into; finish_output(folder, out) completes it.

    `out` itself when it is absent or empty. A non-empty `out` is refused (FileExistsError) unless overwrite: then the
    result goes to a fresh `OUT.partial`, swapped in whole by finish_output, so the old folder is only removed once the
    new one is complete. When `out` is a symbolic link, the folder it points to is the result (the link stays)."""
    out = _target(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return out
    if not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: pass --overwrite to replace it, or choose another "
                              f"folder")
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        raise FileExistsError(f"{staging} exists (left by an interrupted --overwrite?): remove it first")
    return staging


def finish_output(folder, out):
    """Move a complete result `folder` (from output_folder) to `out`, replacing the old `out` only now."""
    out = _target(out)
    if folder == out:
        return
    old = out.with_name(f".{out.name}.old.{os.getpid()}")
    os.rename(out, old)
    os.rename(folder, out)
    shutil.rmtree(old)


def _target(out):
    """`out` as an absolute path; a symbolic link (even one to a folder not made yet) stands for its target."""
    out = pathlib.Path(out).absolute()
    return pathlib.Path(os.path.realpath(out)) if out.is_symlink() else out


class RunFolder:
    """The folder --out of one training run (train.py), locked for the whole run (OutputLock); refusals are OSError.

        with RunFolder(out, overwrite, resume) as folder:  # folder.path: where the files go
            log = folder.log(step)                         # log.jsonl, holding the records up to `step`
            ...                                            # write folder.path/ckpt.pt, then folder.saved()

    A folder holding a run (ckpt.pt) is refused unless resume or overwrite; one without (what a run stopped in its
    setup leaves) is reused. overwrite writes into OUT.partial, swapped in by the first checkpoint (finish_output);
    until then `replacing` is true, and leaving the block removes OUT.partial: `out` keeps its old run unchanged.
    """

    def __init__(self, out, overwrite=False, resume=False):
        self.out, self.overwrite, self.resume = out, overwrite, resume
        self.lock, self.path, self.replacing = OutputLock(os.path.realpath(out)), out, False

    def __enter__(self):
        try:
            self.lock.__enter__()
        except BlockingIOError as err:
            raise BlockingIOError(f"--out {err}") from None
        except OSError as err:
            raise OSError(f"--out {self.out}: cannot write there ({err.strerror}); choose another --out") from None
        try:
            self._plan()
        except BaseException:
            self.lock.__exit__()
            raise
        return self

    def _plan(self):
        held = sorted(os.listdir(self.out)) if os.path.isdir(self.out) else []
        if "ckpt.pt" in held and not self.resume:
            if not self.overwrite:
                more = " …" if len(held) > 4 else ""
                raise FileExistsError(f"--out {self.out} already holds {', '.join(held[:4])}{more}: continue it with "
                                      f"--resume {self.out}, choose another --out, or pass --overwrite to replace its "
                                      f"run")
            self.path, self.replacing = os.path.realpath(self.out) + ".partial", True
            shutil.rmtree(self.path, ignore_errors=True)  # left by a run that died before its first checkpoint
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as err:
            raise OSError(f"--out {self.out}: cannot create it ({err.strerror}); choose another --out") from None
        if not os.access(self.path, os.W_OK):
            raise PermissionError(f"--out {self.out}: not writable; choose another --out")

    def log(self, step):
        """log.jsonl, open for appending, with the records up to `step` only: a resumed run writes the later ones
        again. A line cut off by a kill is dropped too."""
        path, kept = pathlib.Path(self.path, "log.jsonl"), []
        if step and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line)["step"] <= step:
                        kept.append(line + "\n")
        atomic_write(path, lambda tmp: tmp.write_text("".join(kept)))
        return open(path, "a")

    def saved(self):
        """After each checkpoint: the first one of an --overwrite run swaps the new run in for the old one."""
        if self.replacing:
            finish_output(self.path, os.path.realpath(self.out))
            self.path, self.replacing = self.out, False

    def __exit__(self, *exc):
        try:
            if self.replacing:  # no checkpoint of the new run yet: the old run stays, unchanged
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self.lock.__exit__()
        return False


LAYOUT_FOLDERS = (*(f"stem_{s}" for s in range(len(TRACKS))), *TRACKS, "mix")


def piece_files(out, name):
    """Every file write_piece writes for piece `name`: its stems, the named links, the mix."""
    return [pathlib.Path(out, folder, f"{name}.wav") for folder in LAYOUT_FOLDERS]


def write_piece(out, name, waves, sr=SAMPLE_RATE):
    """Write one piece, waves (S, N) float, in the official layout (metrics.py and FAD tools read it): out/stem_s/
    NAME.wav for every track s, out/<track>/NAME.wav a relative symbolic link to it (a copy where links are not
    available), out/mix/NAME.wav the sum. 16-bit PCM, clipped to [-1, 1] (it would wrap around otherwise); every file
    atomic, the mix last. Returns how many samples were clipped, stems and mix together."""
    for folder in LAYOUT_FOLDERS:
        pathlib.Path(out, folder).mkdir(parents=True, exist_ok=True)
    files = piece_files(out, name)
    stems, links, mix = files[:len(TRACKS)], files[len(TRACKS):-1], files[-1]
    for s, (stem, link) in enumerate(zip(stems, links)):
        atomic_write(stem, lambda tmp: sf.write(tmp, np.clip(waves[s], -1, 1), sr, subtype="PCM_16", format="WAV"))
        try:
            atomic_write(link, lambda tmp: os.symlink(pathlib.Path("..", stem.parent.name, stem.name), tmp))
        except OSError:  # no symbolic links here (some Windows setups): a copy instead
            atomic_write(link, lambda tmp: shutil.copyfile(stem, tmp))
    total = waves.sum(0)
    atomic_write(mix, lambda tmp: sf.write(tmp, np.clip(total, -1, 1), sr, subtype="PCM_16", format="WAV"))
    return int((np.abs(waves) > 1).sum() + (np.abs(total) > 1).sum())


class SampleFolder:
    """A folder of pieces in write_piece's layout plus OUT/settings.json, written by one run (sample.py): the one place
    that decides what goes into it, and what is kept when a run fails or is interrupted.

        folder = SampleFolder(out, names, settings, match=keys, overwrite=False, resume=False, ckpt=PATH)
        with folder:                           # locks `out`, then plans: folder.todo = indices of the pieces to make
            folder.write(names[i], waves)      # for i in folder.todo, in any order, as each piece is ready
            folder.finish(seconds)             # settings.json final; an --overwrite folder swapped in whole
        # after an exception inside the block, folder.kept says in words what `out` holds now

    Planning happens under the lock (OutputLock), so two runs never both find `out` empty. A non-empty `out` is
    refused unless overwrite (see output_folder) or resume (its settings.json must equal `settings` on the keys
    `match`; only the incomplete pieces are made again). Input files given by keyword are recorded by content
    (ckpt=PATH: "ckpt_sha256", which `match` may name). On an exception a replacement folder is removed (`out` stays
    as it was), else settings.json is rewritten to count the complete pieces. Refusals are OSError or ValueError.
    """

    def __init__(self, out, names, settings, match=(), overwrite=False, resume=False, **inputs):
        self.out, self.shown = _target(out), f"{pathlib.Path(out)}/"
        self.names, self.settings, self.match = list(names), dict(settings), tuple(match)
        self.overwrite, self.resume, self.inputs = overwrite, resume, inputs
        self.lock, self.path, self.todo, self.clipped = OutputLock(self.out), None, [], {}
        self.kept, self.resumable, self.done = None, False, False  # after a failure: what `out` holds, in words

    def __enter__(self):
        self.lock.__enter__()
        try:
            self._plan()
        except BaseException:
            self.lock.__exit__()
            raise
        return self

    def _plan(self):
        for key, path in self.inputs.items():  # input files by content (KEY_sha256), wherever they lie now
            with open(path, "rb") as f:
                self.settings[f"{key}_sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
        self.settings["threads"] = torch.get_num_threads()  # CPU float sums are ordered by the thread count
        if self.resume and self.out.is_dir() and any(self.out.iterdir()):
            before = self._read_settings()
            changed = [k for k in self.match if before.get(k) != self.settings.get(k)]
            if changed:
                raise ValueError(f"--resume {self.shown}: settings differ from its settings.json: " + "; ".join(
                    f"{k} {before.get(k)!r} there, {self.settings.get(k)!r} now" for k in changed))
            self.path, self.clipped = self.out, dict(before.get("clipped_samples", {}))
        else:
            self.path = output_folder(self.out, self.overwrite)
        self.todo = [i for i, name in enumerate(self.names) if not self.complete(name)]
        self.path.mkdir(parents=True, exist_ok=True)
        self.save()

    def _read_settings(self):
        path = self.out / "settings.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"--resume {self.shown}: no settings.json, so not a folder of sample.py") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"--resume: cannot read {path} ({e})") from None

    def complete(self, name):
        """Whether every file of piece `name` is there (a link counts when its stem is there too)."""
        return all(p.exists() for p in piece_files(self.path, name))

    def write(self, name, waves):
        """Write piece `name`, waves (S, N); how many samples it clipped goes to settings.json."""
        self.record({name: write_piece(self.path, name, waves)})

    def record(self, clipped):
        """{name: clipped samples} of pieces written (by this process or, under torchrun, by another)."""
        self.clipped.update({k: v for k, v in clipped.items() if v})

    def save(self, seconds=None):
        """settings.json says what the folder holds now: the run's settings and how many pieces are complete."""
        written = sum(self.complete(name) for name in self.names)
        self.settings.update(n_pieces=len(self.names), n_written=written, complete=written == len(self.names),
                             run_seconds=seconds, clipped_samples=dict(sorted(self.clipped.items())))
        atomic_write(self.path / "settings.json", lambda tmp: tmp.write_text(json.dumps(self.settings, indent=2)))
        return written

    def finish(self, seconds=None):
        self.save(seconds)
        finish_output(self.path, self.out)
        self.path, self.done = self.out, True

    def __exit__(self, kind, error, traceback):
        try:
            if kind is not None and not self.done and self.path is not None:
                if self.path != self.out:
                    shutil.rmtree(self.path, ignore_errors=True)
                    self.kept = f"{self.shown} is unchanged"
                else:
                    try:
                        written = self.save()
                    except OSError:  # the disk is still full: the settings.json of the start stays ("complete": false)
                        written = sum(self.complete(name) for name in self.names)
                    self.kept = f"{written} of {len(self.names)} pieces are complete in {self.shown}"
                    self.resumable = True
        finally:
            self.lock.__exit__()
        return False

    def failure(self, error, command):
        """The one line a run ends with after `error` (an exception; KeyboardInterrupt for Ctrl-C) left the block: what
        went wrong, what `out` holds now, and how to finish it: `command` (the run's, as a list) with --resume."""
        what = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
        if isinstance(error, OSError) and error.filename:  # e.g. a read-only or full disk
            what = f"--out {self.shown}: cannot write {error.filename} ({error.strerror})"
        if self.kept is None:  # refused or interrupted before anything was written
            return what + ("; nothing was written" if isinstance(error, KeyboardInterrupt) else "")
        command = shlex.join([*(a for a in command if a not in ("--overwrite", "--resume")), "--resume"])
        return f"{what}; {self.kept}" + (f"; continue with: {command}" if self.resumable else "")

    def summary(self, made, seconds):
        """Lines saying what a finished run made, what the folder holds, and how much audio was clipped."""
        lines = [f"made {plural(made, 'piece')} in {seconds:.1f} s ({seconds / max(made, 1):.2f} s per piece); "
                 f"{self.shown} holds {self.settings['n_written']} of {plural(len(self.names), 'piece')}"]
        if self.clipped:
            lines.append(f"clipped to [-1, 1]: {sum(self.clipped.values())} samples in "
                         f"{plural(len(self.clipped), 'piece')} (clipped_samples in settings.json)")
        return lines


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------------------------------------------------
# Datasets: songs of shape (S, N) cut into clips of c samples

class Clips(torch.utils.data.Dataset):
    """Clips of `clip_samples` from songs (S, N): validation uses a fixed grid, training a random offset per draw.
    Training items are looked up by key = epoch·len + i (see ClipSampler): the offset is a function of (seed, key)
    only, so it changes every epoch, is the same with any number of workers, and is reproduced exactly after a resume.
    """

    def _index(self, lengths):
        c = self.clip_samples
        self.lengths = lengths
        self.clips = [(k, j * c) for k, n in enumerate(lengths) for j in range(n // c)]  # (song, grid offset)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, key):
        song, offset = self.clips[key % len(self.clips)]
        if self.train:  # anywhere in the song, not just near the grid point
            rng = np.random.default_rng((self.seed, key))
            offset = int(rng.integers(0, self.lengths[song] - self.clip_samples + 1))
        clip = self.song(song)[:, offset:offset + self.clip_samples]  # (S, c)
        return torch.from_numpy(np.array(clip, dtype=np.float32))


def _slakh_stems(path):
    """{stem name: {key: value}} from the `stems:` section of a Slakh metadata.yaml.

    Slakh's metadata is plain two-level `key: value` YAML (stem names at one indent, their fields deeper), so a line
    parser is enough and PyYAML need not be a dependency. Values are strings without quotes ('true', 'Guitar').
    """
    stems, name, stem_indent, in_stems = {}, None, None, False
    for line in pathlib.Path(path).read_text(errors="replace").splitlines():
        key, colon, value = line.strip().partition(":")
        if not colon or key.startswith("#"):
            continue  # blank, comment, or the continuation of a long wrapped value: nothing we need
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            in_stems = key == "stems"
        elif in_stems:
            stem_indent = stem_indent or indent  # the first line under 'stems:' sets the indent of stem names
            if indent == stem_indent:  # '  S00:'
                name = key
                stems[name] = {}
            elif name is not None:  # '    inst_class: Guitar'
                stems[name][key] = value.strip().strip("'\"")
    if not stems:
        raise ValueError(f"{path} has no 'stems:' section")
    return stems


def _sum(xs):
    """Sum of 1-D arrays, the shorter ones zero-padded; an empty list gives an empty array (a silent track)."""
    out = np.zeros(max((len(x) for x in xs), default=0), np.float32)
    for x in xs:
        out[:len(x)] += x
    return out


def _fingerprint(paths):
    """Changes when any source file is added, removed, rewritten or touched: names the cache entry of a song."""
    h = hashlib.sha1(f"float32 {SAMPLE_RATE}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class SlakhDataset(Clips):
    """Clips of Slakh2100 songs, found per song in either layout (§5.1, App. A):

    (a) MSDM 4-stem release, any sample rate:  root/<split>/TrackXXXXX/{bass,drums,guitar,piano}.wav
        A missing stem file becomes an all-zero track (with a note in the report).
    (b) raw slakh2100_flac_redux:              root/<split>/TrackXXXXX/{metadata.yaml, stems/SXX.flac}
        Each track is the sum of the rendered stems whose `inst_class` is Bass, Drums, Guitar or Piano; a class with no
        rendered stem is all-zero. Other classes are dropped, so the 4 tracks do not sum to mix.flac. BabySlakh (16 kHz
        stems/SXX.wav, Track folders directly in the root) is this layout with split='.'.

    `split` is one split or a list (the official config trains on ['train', 'validation'] and validates on 'test');
    `omitted/` is never read. Every song is decoded once, resampled to 16 kHz and cached as float32 (S, N), what the
    official code reads, in `cache_dir` (default ~/.cache/synctrack/slakh/<hash of root>, never next to the audio),
    then memory-mapped; a changed source file invalidates its song's entry. Stems of unequal length are zero-padded to
    the longest. `self.report` says how many songs and clips were kept, why any song was dropped, and which tracks are
    silent (no file, no rendered stem, or a file of zeros).
    """

    def __init__(self, root, split, clip_samples, cache_dir=None, train=True, seed=0):
        self.clip_samples, self.seed, self.train = clip_samples, seed, train
        root = pathlib.Path(root).expanduser().resolve()
        if cache_dir is None:
            base = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
            cache_dir = base / "synctrack" / "slakh" / hashlib.sha1(str(root).encode()).hexdigest()[:12]
        self.cache_dir = pathlib.Path(cache_dir).expanduser().resolve()
        if self.cache_dir.is_relative_to(root):
            raise ValueError(f"cache_dir {self.cache_dir} is inside the dataset {root}; choose a folder outside it")
        splits = [split] if isinstance(split, str) else list(split)
        self.paths, lengths, dropped, notes, songs = [], [], [], [], 0
        for name in splits:
            if not (root / name).is_dir():
                raise FileNotFoundError(f"no split folder {root / name} (expected "
                                        f"root/{{train,validation,test}}/Track*)")
            folders = sorted(p for p in (root / name).iterdir() if p.is_dir())
            for song in tqdm(folders, f"Slakh {name}", unit="song", leave=False, disable=None):  # bar only on a TTY
                songs += 1
                try:
                    path, n, song_notes = self._cached(song, name)
                except ValueError as e:  # undecodable audio or metadata: skip this song, keep the others
                    dropped.append(f"{song}: {e}")
                    continue
                notes += song_notes
                if n < clip_samples:
                    dropped.append(f"{song}: {n / SAMPLE_RATE:.2f} s is shorter than one clip "
                                   f"({clip_samples / SAMPLE_RATE:.2f} s)")
                    continue
                self.paths.append(path)
                lengths.append(n)
        self._index(lengths)
        self.report = {"songs": songs, "kept": len(self.paths), "clips": len(self.clips),
                       "dropped": dropped, "notes": notes}
        if not self.paths:
            raise ValueError(f"no usable song in {root} {splits}; dropped: {dropped or 'no Track folders'}")

    def _sources(self, song):
        """Per track, the source files to sum (possibly none), plus notes and every file the song depends on."""
        if (song / "metadata.yaml").exists():  # layout (b)
            files, notes = [[] for _ in TRACKS], []
            for stem, meta in sorted(_slakh_stems(song / "metadata.yaml").items()):
                if meta.get("inst_class") not in SLAKH_CLASSES or meta.get("audio_rendered", "").lower() != "true":
                    continue
                audio = [p for p in (song / "stems" / f"{stem}.flac", song / "stems" / f"{stem}.wav") if p.exists()]
                if audio:  # flac in Slakh2100, wav in BabySlakh
                    files[SLAKH_CLASSES.index(meta["inst_class"])].append(audio[0])
                else:
                    notes.append(f"{song}: {stem} ({meta['inst_class']}) is marked rendered but stems/{stem}.flac is "
                                 "missing; left out")
            if not any(files):
                raise ValueError(f"no rendered stem of class {', '.join(SLAKH_CLASSES)} in metadata.yaml")
            for s, track in enumerate(TRACKS):
                if not files[s]:
                    notes.append(f"{song}: no rendered {SLAKH_CLASSES[s]} stem; {track} is silent")
            return files, notes, [song / "metadata.yaml"] + sorted(sum(files, []))
        files = [[song / f"{t}.wav"] if (song / f"{t}.wav").exists() else [] for t in TRACKS]  # layout (a)
        if not any(files):
            raise ValueError(f"neither metadata.yaml nor any of {', '.join(t + '.wav' for t in TRACKS)}")
        notes = [f"{song}: {t}.wav is missing; {t} is silent" for t, f in zip(TRACKS, files) if not f]
        return files, notes, sum(files, [])

    def _cached(self, song, split):
        """(cache file, N, notes) of one song, decoding and caching it first unless an up-to-date entry exists."""
        files, notes, deps = self._sources(song)
        path = self.cache_dir / split / f"{song.name}.{_fingerprint(deps)}.npy"
        silent = path.with_suffix(".silent")  # the tracks with source files that hold only zeros, one name a line
        if not path.exists():
            tracks = [_sum([read_audio(f)[0] for f in fs]) for fs in files]
            audio = np.zeros((len(TRACKS), max(len(x) for x in tracks)), np.float32)  # (S, N)
            for s, x in enumerate(tracks):
                audio[s, :len(x)] = x
            path.parent.mkdir(parents=True, exist_ok=True)
            for old in path.parent.glob(f"{song.name}.*"):  # stale entries of this song
                if old.stem != path.stem:  # (another rank may have just written this one)
                    old.unlink(missing_ok=True)
            zeros = [t for s, t in enumerate(TRACKS) if files[s] and not audio[s].any()]
            atomic_write(silent, lambda tmp: tmp.write_text("".join(t + "\n" for t in zeros)))
            atomic_write(path, lambda tmp: _save_npy(tmp, audio))  # a killed run or a parallel rank: never half a file
        notes += [f"{song}: {t} is all zeros in its source file(s); {t} is silent"
                  for t in silent.read_text().split()] if silent.exists() else []
        return path, np.load(path, mmap_mode="r").shape[1], notes

    def song(self, k):
        return np.load(self.paths[k], mmap_mode="r")  # (S, N) float32, read lazily by the OS


def _save_npy(path, array):
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a temporary name
        np.save(f, array)


# ----------------------------------------------------------------------------------------------------------------------
# Loading

class ClipSampler(torch.utils.data.Sampler):
    """Clip indices for one rank: shuffled per epoch for training, in order for validation.

    Shards like DistributedSampler (every rank gets ceil(len/ranks) items, padded by wrapping around), and adds two
    things it lacks: training keys epoch·len + i, so each epoch draws new random clip offsets even in persistent
    workers, and `skip` to resume in the middle of an epoch. Call set_epoch(epoch, skip) before iterating.
    """

    def __init__(self, n, train, seed=0, rank=0, ranks=1):
        self.n, self.train, self.seed, self.rank, self.ranks = n, train, seed, rank, ranks
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        """skip: items of this epoch this rank has already consumed (batches × batch size), for resuming."""
        self.epoch, self.skip = epoch, skip

    def __len__(self):
        return math.ceil(self.n / self.ranks) - self.skip

    def __iter__(self):
        if self.train:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        order += order[:math.ceil(self.n / self.ranks) * self.ranks - self.n]  # pad so every rank has as many items
        keys = order[self.rank::self.ranks][self.skip:]
        return iter([self.epoch * self.n + i for i in keys] if self.train else keys)


def make_loader(dataset, batch_size, train, workers=2, distributed=False, seed=0):
    """A DataLoader of (B, S, c) batches over a ToyDataset or SlakhDataset, sharded across ranks when distributed;
    call loader.sampler.set_epoch(epoch) every epoch. 2 persistent workers (no re-fork per epoch) suit 2 CPU cores."""
    rank, ranks = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    sampler = ClipSampler(len(dataset), train, seed, rank, ranks)
    return torch.utils.data.DataLoader(
        dataset, batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(), drop_last=train,  # full batches only in training: steady statistics
        generator=torch.Generator().manual_seed(seed),  # worker seeds from here, not from the global RNG (exact resume)
        worker_init_fn=_ignore_interrupt)


def _ignore_interrupt(worker_id):
    """Ctrl-C reaches every process of the terminal: workers go on serving, and train.py stops after its step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
