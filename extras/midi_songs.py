"""A small real-music set made here: multitrack pop-like MIDI songs rendered per instrument with a General MIDI
soundfont, in the MSDM Slakh layout that data.SlakhDataset and metrics.py read.

    python extras/midi_songs.py OUT --n 24 --seed 0 [--seconds 40] [--split 16,4,4]
    python train.py --stage vae --data OUT --out runs/student-vae                 # then the student path on it

Each song draws a tempo (80-150 bpm), a key and mode, swing, two chord progressions (verse, chorus) and a form of
4- and 8-bar sections; it writes one Standard MIDI File per track class (bass: GM electric bass; drums: the channel 10
kit with kick/snare/hat grooves, a crash on each section and a fill before it; guitar: GM guitar strums or power
chords; piano: block chords or arpeggios) and renders each with `fluidsynth -ni -F`. Like Slakh songs, some leave
guitar or piano out: that stem is written as a file of zeros (data.SlakhDataset names it in its report).
Output: OUT/{train,validation,test}/SongNNN/{bass,drums,guitar,piano}.wav (16 kHz mono, 16-bit, equal length) and
OUT/.../SongNNN/MIDI/TRACK.mid; OUT/songs.json holds every song's parameters.

Its own file because the method does not need it: it only makes data to measure the student path on a CPU.
Nothing is downloaded; the soundfont is Debian's fluid-soundfont-gm.
"""
import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402  (the repo root is on the path only from here on)
from synctrack import SAMPLE_RATE, TRACKS  # noqa: E402

SF2 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
TPB = 480  # MIDI ticks per beat (quarter note)
# ---- Standard MIDI Files, written byte by byte (no dependency) ------------------------------------------------------


def _vlq(n):
    """A MIDI variable-length quantity: 7 bits per byte, most significant first, high bit set on all but the last."""
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.insert(0, (n & 0x7F) | 0x80)
    return bytes(out)


def _chunk(kind, body):
    return kind + len(body).to_bytes(4, "big") + body


def midi_file(notes, bpm, program, channel, name):
    """A format-1 SMF: a tempo track and one instrument track. notes: [(start tick, end tick, key, velocity)]."""
    tempo = _vlq(0) + b"\xff\x51\x03" + round(60e6 / bpm).to_bytes(3, "big") \
        + _vlq(0) + b"\xff\x58\x04\x04\x02\x18\x08" + _vlq(0) + b"\xff\x2f\x00"  # 4/4, end of track
    events = [(start, 1, 0x90 | channel, key, vel) for start, end, key, vel in notes]
    events += [(end, 0, 0x80 | channel, key, 0) for start, end, key, vel in notes]  # offs first at equal times
    body = _vlq(0) + b"\xff\x03" + _vlq(len(name)) + name.encode()
    body += _vlq(0) + bytes([0xC0 | channel, program])
    now = 0
    for tick, _, status, key, vel in sorted(events):
        body += _vlq(tick - now) + bytes([status, key, vel])
        now = tick
    end = max((e for _, e, _, _ in notes), default=0) + 2 * TPB  # two beats of release before the end
    body += _vlq(end - now) + b"\xff\x2f\x00"
    return _chunk(b"MThd", (1).to_bytes(2, "big") + (2).to_bytes(2, "big") + TPB.to_bytes(2, "big")) \
        + _chunk(b"MTrk", tempo) + _chunk(b"MTrk", body)


# ---- Songs: parameters, then one note list per track class ---------------------------------------------------------

MAJOR, MINOR = [0, 2, 4, 5, 7, 9, 11], [0, 2, 3, 5, 7, 8, 10]
PROGRESSIONS = {"major": [[0, 4, 5, 3], [5, 3, 0, 4], [0, 5, 3, 4], [1, 4, 0, 0], [0, 3, 4, 3], [0, 3, 0, 4]],
                "minor": [[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 6], [0, 3, 6, 2], [5, 6, 0, 0]]}  # scale degrees
FORMS = [["intro", "verse", "chorus", "verse", "chorus", "outro"], ["verse", "chorus", "bridge", "chorus"],
         ["intro", "verse", "verse", "chorus", "chorus"]]
GROOVES = {  # one bar of 16ths: kick, snare, closed hat; 'x' a hit, '-' none (hat 'o': open)
    "rock": ("x-------x-x-----", "----x-------x---", "x-x-x-x-x-x-x-x-"),
    "four": ("x---x---x---x---", "----x-------x---", "--x---x---x---x-"),
    "half": ("x-------------x-", "--------x-------", "x-x-x-x-x-x-x-xo"),
    "funk": ("x-----x---x-----", "----x--x-x--x---", "xxxxxxxxxxxxxxxx"),
    "shuffle": ("x-----x-x-------", "----x-------x---", "x--xx--xx--xx--x")}
KICK, SNARE, HAT, OPEN_HAT, CRASH, RIDE, TOMS = 36, 38, 42, 46, 49, 51, (50, 48, 45, 43)
PROGRAMS = {"bass": [33, 34, 35, 38], "guitar": [24, 25, 26, 27, 29, 30], "piano": [0, 1, 2, 4, 5]}


def song_params(seed, seconds):
    """Every choice of song `seed`: tempo, key, swing, progressions, form, grooves, programs, which classes play."""
    rng = random.Random(seed)
    mode = rng.choice(["major", "major", "minor"])
    bpm = rng.randint(80, 150)
    bars = max(4, round(seconds * bpm / 240))  # 4 beats a bar
    form = rng.choice(FORMS)
    sizes = [rng.choice([2, 4] if name in ("intro", "outro") else [4, 8]) for name in form]
    while sum(sizes) < bars:  # repeat the form's middle until the song is long enough, then trim the last section
        form, sizes = form + form[1:-1], sizes + sizes[1:-1]
    sections, left = [], bars
    for name, size in zip(form, sizes):
        if left > 0:
            sections.append((name, min(size, left)))
            left -= size
    absent = rng.choices([None, "piano", "guitar"], [0.65, 0.2, 0.15])[0]
    return dict(seed=seed, bpm=bpm, bars=bars, key=rng.randrange(12), mode=mode,
                swing=rng.choice([0.0, 0.0, 0.0, 0.15, 0.3]), sections=sections,
                progressions={s: rng.choice(PROGRESSIONS[mode]) for s in ("intro", "verse", "chorus", "bridge",
                                                                         "outro")},
                grooves={s: rng.choice(list(GROOVES)) for s in ("verse", "chorus", "bridge")},
                programs={t: rng.choice(p) for t, p in PROGRAMS.items()},
                styles={"bass": rng.choice(["roots", "octaves", "eighths", "walk"]),
                        "guitar": rng.choice(["strum", "offbeat", "power"]),
                        "piano": rng.choice(["block", "arpeggio", "pulse"])},
                absent=absent)


class Song:
    """Note lists of one song: for each bar its section and chord; notes as (start tick, end tick, key, velocity)."""

    def __init__(self, p):
        self.p, self.rng = p, random.Random(p["seed"] * 7919 + 1)
        self.bars = []  # (section, bar within section, section length, chord degree)
        for name, size in p["sections"]:
            prog = p["progressions"][name]
            self.bars += [(name, b, size, prog[b % len(prog)]) for b in range(size)]

    def tick(self, bar, beat):
        """Ticks of `beat` (a float, in quarter notes) of `bar`, swung: off-beat eighths are delayed by swing/2."""
        whole, frac = divmod(beat, 1.0)
        s = self.p["swing"]
        frac = frac * (1 + s) if frac <= 0.5 else 0.5 * (1 + s) + (frac - 0.5) * (1 - s)
        return round((bar * 4 + whole + frac) * TPB)

    def note(self, bar, beat, length, key, vel):
        jitter = self.rng.randint(-6, 6)  # a human's timing: a few ms
        start = max(0, self.tick(bar, beat) + jitter)
        return (start, max(start + 20, self.tick(bar, beat + length) - 10), key, min(127, max(1, vel)))

    def chord(self, degree, octave, size=3):
        """MIDI keys of the diatonic chord on `degree` (stacked thirds) with its root in `octave`."""
        scale = MAJOR if self.p["mode"] == "major" else MINOR
        root = 12 * (octave + 1) + self.p["key"]
        return [root + scale[(degree + 2 * i) % 7] + 12 * ((degree + 2 * i) // 7) for i in range(size)]

    def level(self, section):
        return {"intro": 70, "verse": 85, "chorus": 100, "bridge": 80, "outro": 70}[section]

    def bass(self):
        notes, style = [], self.p["styles"]["bass"]
        for bar, (sec, _, _, deg) in enumerate(self.bars):
            root, fifth = self.chord(deg, 1)[0], self.chord(deg, 1)[2]
            v = self.level(sec) + self.rng.randint(-8, 8)
            if style == "roots":
                notes += [self.note(bar, b, n, root, v) for b, n in ((0, 1.9), (2, 0.45), (2.5, 1.4))]
            elif style == "octaves":
                notes += [self.note(bar, b / 2, 0.4, root + 12 * (b % 2), v - 10 * (b % 2)) for b in range(8)]
            elif style == "eighths":
                notes += [self.note(bar, b / 2, 0.45, root, v - 8 * (b % 2)) for b in range(8)]
            else:  # walk: root, fifth, octave, then a step into the next bar's root
                nxt = self.chord(self.bars[(bar + 1) % len(self.bars)][3], 1)[0]
                notes += [self.note(bar, b, 0.9, k, v) for b, k in enumerate([root, fifth, root + 12, nxt - 1])]
        return notes

    def drums(self):
        notes = []
        for bar, (sec, b, size, _) in enumerate(self.bars):
            v = self.level(sec)
            if b == 0:
                notes.append(self.note(bar, 0, 1, CRASH, v + 10))
            if sec in ("intro", "outro") and b < size - 1:  # sparse: kick on 1 and 3, ride quarters
                notes += [self.note(bar, q, 0.5, KICK, v) for q in (0, 2)]
                notes += [self.note(bar, q, 0.5, RIDE, v - 20) for q in range(4)]
                continue
            kick, snare, hat = GROOVES[self.p["grooves"].get(sec, "rock")]
            fill = b == size - 1  # the last bar of a section: its second half is a fill
            for i in range(16):
                beat, accent = i / 4, 10 if i % 4 == 0 else 0
                if fill and i >= 8:
                    if i % 2 == 0 or self.rng.random() < 0.5:
                        drum = SNARE if i < 10 else TOMS[min(3, (i - 8) // 2)]
                        notes.append(self.note(bar, beat, 0.25, drum, v - 10 + 2 * (i - 8)))
                    continue
                if kick[i] == "x":
                    notes.append(self.note(bar, beat, 0.25, KICK, v + accent))
                if snare[i] == "x":
                    notes.append(self.note(bar, beat, 0.25, SNARE, v + 5))
                if hat[i] != "-":
                    notes.append(self.note(bar, beat, 0.25, OPEN_HAT if hat[i] == "o" else HAT,
                                           v - 25 + accent + self.rng.randint(-6, 6)))
        return notes

    def guitar(self):
        notes, style = [], self.p["styles"]["guitar"]
        for bar, (sec, _, _, deg) in enumerate(self.bars):
            if sec == "intro":
                continue  # the guitar enters after the intro
            v = self.level(sec) - 10
            if style == "power":  # root, fifth, octave, eighths
                keys = [self.chord(deg, 2)[0], self.chord(deg, 2)[0] + 7, self.chord(deg, 2)[0] + 12]
                starts = [b / 2 for b in range(8)]
            else:  # an open-ish voicing of six strings: a low root, the triad, its root an octave up
                keys = [self.chord(deg, 2)[0] - 12] + self.chord(deg, 3) + [self.chord(deg, 3)[0] + 12]
                starts = [0, 1, 1.5, 2.5, 3] if style == "strum" else [b + 0.5 for b in range(4)]
            for n, beat in enumerate(starts):
                end = (starts[n + 1] if n + 1 < len(starts) else 4) - (0.2 if style == "offbeat" else 0.05)
                down = n % 2 == 0 or style == "offbeat"
                order = keys if down else keys[::-1]  # a downstroke from the low string, an upstroke from the high
                for i, key in enumerate(order):  # strings 0.02 beat apart; every string stops at `end`
                    at = beat + 0.02 * i
                    notes.append(self.note(bar, at, end - at, key, v - 3 * i + self.rng.randint(-5, 5)))
        return notes

    def piano(self):
        notes, style = [], self.p["styles"]["piano"]
        for bar, (sec, _, _, deg) in enumerate(self.bars):
            v = self.level(sec) - 15
            left, right = self.chord(deg, 2)[0], self.chord(deg, 4, 4 if sec == "chorus" else 3)
            notes.append(self.note(bar, 0, 3.9 if style != "pulse" else 1.9, left, v))
            if style == "block":
                notes += [self.note(bar, b, 1.9, k, v) for b in (0, 2) for k in right]
            elif style == "arpeggio":
                seq = right + right[1:-1][::-1]
                notes += [self.note(bar, b / 2, 0.5, seq[b % len(seq)], v - 5 * (b % 2)) for b in range(8)]
            else:  # pulse: repeated quarter chords with a push into beat 3
                notes += [self.note(bar, b, 0.45, k, v - 6 * (b % 1 > 0)) for b in (0, 1, 1.5, 2, 3) for k in right]
        return notes


CHANNELS = {"bass": 0, "drums": 9, "guitar": 1, "piano": 2}  # channel 10 (index 9) is GM's drum kit


def song_midis(seed, seconds):
    """(params, {track: SMF bytes}) of song `seed`; an absent class has no file."""
    p = song_params(seed, seconds)
    song = Song(p)
    return p, {t: midi_file(getattr(song, t)(), p["bpm"], 0 if t == "drums" else p["programs"][t], CHANNELS[t], t)
               for t in TRACKS if t != p["absent"]}


# ---- Rendering and the folder -----------------------------------------------------------------------------------


def render(midi_path, sf2, gain=1.0):
    """fluidsynth's rendering of one MIDI file: mono float32 at SAMPLE_RATE (its stereo output averaged)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", str(gain), "-F", str(wav), "-r", str(SAMPLE_RATE), sf2,
                        str(midi_path)], check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    assert sr == SAMPLE_RATE, f"fluidsynth wrote {sr} Hz, asked for {SAMPLE_RATE}"
    return audio.mean(1)


def write_song(folder, seed, seconds, sf2):
    """MIDI files and the four equal-length stems of one song in `folder`; returns its params and peak level."""
    p, midis = song_midis(seed, seconds)
    (folder / "MIDI").mkdir(parents=True)
    stems = {}
    for track, smf in midis.items():
        (folder / "MIDI" / f"{track}.mid").write_bytes(smf)
        stems[track] = render(folder / "MIDI" / f"{track}.mid", sf2)
    n = max(len(x) for x in stems.values())
    peak = max(float(np.abs(x).max()) for x in stems.values())
    scale = min(1.0, 0.95 / peak)  # one gain for all stems of the song: their balance is kept, none clips
    for track in TRACKS:  # an absent class: a file of zeros, as MSDM Slakh stores silent stems
        x = np.zeros(n, np.float32)
        x[:len(stems.get(track, []))] = stems.get(track, [])
        sf.write(folder / f"{track}.wav", scale * x, SAMPLE_RATE, subtype="PCM_16")
    return dict(p, seconds=n / SAMPLE_RATE, peak=peak)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", help="output folder (absent or empty, unless --overwrite)")
    ap.add_argument("--n", type=int, default=24, help="songs (default: 24)")
    ap.add_argument("--seed", type=int, default=0, help="song i is drawn from seed 1000·seed + i (default: 0)")
    ap.add_argument("--seconds", type=float, default=40.0, help="about how long each song is (default: 40)")
    ap.add_argument("--split", default=None, help="songs in train,validation,test (default: n - 2·n/6, n/6, n/6)")
    ap.add_argument("--sf2", default=SF2, help=f"General MIDI soundfont (default: {SF2})")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT whole once the new set is complete")
    a = ap.parse_args(argv)
    if shutil.which("fluidsynth") is None:
        sys.exit("fluidsynth not found: install it (Debian: apt-get install fluidsynth fluid-soundfont-gm)")
    if not Path(a.sf2).is_file():
        sys.exit(f"no soundfont at {a.sf2} (Debian: apt-get install fluid-soundfont-gm), or give --sf2")
    sizes = [int(s) for s in a.split.split(",")] if a.split else [a.n - 2 * (a.n // 6), a.n // 6, a.n // 6]
    if len(sizes) != 3 or sum(sizes) != a.n or min(sizes) < 0:
        sys.exit(f"--split needs three counts that sum to --n {a.n}; got {a.split}")
    try:
        folder = data.output_folder(a.out, a.overwrite)
    except FileExistsError as err:
        sys.exit(str(err))
    songs, i = [], 0
    for split, size in zip(("train", "validation", "test"), sizes):
        for _ in range(size):
            name = f"Song{i:03d}"
            info = write_song(folder / split / name, 1000 * a.seed + i, a.seconds, a.sf2)
            songs.append(dict(name=name, split=split, **info))
            absent = f", no {info['absent']}" if info["absent"] else ""
            print(f"{split}/{name}: {info['bpm']} bpm, {info['seconds']:.1f} s{absent}", flush=True)
            i += 1
    (folder / "songs.json").write_text(json.dumps(songs, indent=1))
    data.finish_output(folder, a.out)
    hours = sum(s["seconds"] for s in songs) / 3600
    print(f"{a.n} songs ({'/'.join(map(str, sizes))} train/validation/test), {hours:.2f} h -> {a.out}")


if __name__ == "__main__":
    main()
