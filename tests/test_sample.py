"""sample.py: file layout and lengths, per-piece seeds, arrangement, safe outputs, exact resume, Ctrl-C, one writer per
folder, official checkpoints, bad input (tiny models). Sharding and --given-dir: test_sample_ddp.py."""
import errno
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import sample
import synctrack as st
import toy
from extras import report

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
ROOT = pathlib.Path(__file__).resolve().parents[1]
N = st.PRESETS["tiny"]["clip_samples"]


def tiny_checkpoint(path, nan=False):
    torch.manual_seed(0)
    model = st.SyncTrack(st.SyncTrackConfig(**st.PRESETS["tiny"]))
    for p in model.out.parameters():            # a non-zero output layer, so samples depend on the network
        torch.nn.init.normal_(p, std=0.1)
        if nan:
            p.data[0] = float("nan")
    st.save_checkpoint(path, model, ema=model.state_dict())
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def run(ckpt, out, *extra, main=None):
    (main or sample.main)(["--ckpt", ckpt, "--out", str(out), "--steps", "3", "--batch-size", "2", *extra])


def refused(match, argv, main=None):
    """main(argv) (default sample.main) exits with one line matching `match` (a message, not a traceback)."""
    with pytest.raises(SystemExit) as e:
        (main or sample.main)(argv)
    message = str(e.value.code)
    assert "\n" not in message and re.search(match, message), message
    return message


def snapshot(folder):
    """{relative path: bytes, or the target of a symbolic link} of everything under folder."""
    return {str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file() or p.is_symlink()}


def test_layout_lengths_and_determinism(ckpt, tmp_path):
    run(ckpt, tmp_path / "a", "--n", "3")
    a = tmp_path / "a"
    for folder in ["stem_0", "stem_1", "stem_2", "stem_3", "bass", "drums", "guitar", "piano", "mix"]:
        names = sorted(p.name for p in (a / folder).iterdir())
        assert names == ["sample_0000.wav", "sample_0001.wav", "sample_0002.wav"], folder
        for name in names:
            wave, sr = sf.read(a / folder / name)
            assert sr == 16000 and wave.shape == (N,)
    assert (a / "drums" / "sample_0001.wav").resolve() == (a / "stem_1" / "sample_0001.wav").resolve()
    settings = json.loads((a / "settings.json").read_text())
    assert (settings["n_written"], settings["complete"], settings["steps"]) == (3, True, 3)
    assert settings["config"]["latent_time"] == 16 and len(settings["ckpt_sha256"]) == 64
    # Per-piece seeds: another --n gives the same pieces, byte for byte (and, for this tiny model, another
    # --batch-size too; larger models round differently per batch: test_resume_is_exact_where_groups_are_split).
    run(ckpt, tmp_path / "b", "--n", "2", "--batch-size", "1")
    b = snapshot(tmp_path / "b")
    assert b == {k: v for k, v in snapshot(a).items() if "sample_0002" not in k and k != "settings.json"} | \
        {"settings.json": b["settings.json"]}
    # Seeds never overlap: --seed 1 piece 0 is not --seed 0 piece 1 (as seed + i made it).
    run(ckpt, tmp_path / "c", "--n", "1", "--seed", "1")
    other = (tmp_path / "c" / "stem_0" / "sample_0000.wav").read_bytes()
    assert (a / "stem_0" / "sample_0001.wav").read_bytes() != other


def test_piece_generators_depend_on_seed_and_index_only():
    draw = lambda seed, i: torch.randn(8, generator=sample.piece_generator(seed, i, "cpu"))
    assert torch.equal(draw(0, 16), draw(0, 16))
    assert not torch.equal(draw(0, 16), draw(16, 0))            # `--seed 0` piece 16 vs `--seed 16` piece 0
    assert len({tuple(draw(s, i).tolist()) for s in range(4) for i in range(4)}) == 16


def test_arrangement_keeps_given_stems_bit_identical(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    drums = (rng.standard_normal(N) * 0.1).astype(np.float32)
    sf.write(tmp_path / "drums.wav", drums, 16000, subtype="PCM_16")
    run(ckpt, tmp_path / "out", "--n", "2", "--given", f"drums={tmp_path / 'drums.wav'}")
    given, _ = sf.read(tmp_path / "drums.wav", dtype="int16")
    for name in ("sample_0000.wav", "sample_0001.wav"):
        written, _ = sf.read(tmp_path / "out" / "stem_1" / name, dtype="int16")
        assert np.array_equal(written, given)
    other = [sf.read(tmp_path / "out" / "stem_0" / n)[0] for n in ("sample_0000.wav", "sample_0001.wav")]
    assert not np.array_equal(*other)                                  # generated tracks vary


def test_given_stem_is_resampled_mixed_and_fitted(ckpt, tmp_path, capsys):
    stereo = np.random.default_rng(1).standard_normal((44100, 2)).astype(np.float32) * 0.1   # 1 s at 44.1 kHz
    sf.write(tmp_path / "bass.flac", stereo, 44100)
    run(ckpt, tmp_path / "out", "--n", "1", "--given", f"bass={tmp_path / 'bass.flac'}")
    assert "cropped" in capsys.readouterr().out                        # 16,000 samples > 10,240
    assert sf.read(tmp_path / "out" / "bass" / "sample_0000.wav")[0].shape == (N,)


def test_bad_given_arguments(ckpt, tmp_path):
    out = ["--ckpt", ckpt, "--out", str(tmp_path / "out")]
    refused("TRACK=PATH", out + ["--given", "vocals=x.wav"])
    refused("no such file", out + ["--given", "bass=missing.wav"])
    (tmp_path / "notes.wav").write_text("not audio\n")
    refused("notes.wav", out + ["--given", f"bass={tmp_path / 'notes.wav'}"])
    sf.write(tmp_path / "loud.wav", np.full(N, 3e4, np.float32), 16000, subtype="FLOAT")  # int16 values as floats
    refused("loud.wav: peak amplitude 3e\\+04", out + ["--given", f"bass={tmp_path / 'loud.wav'}"])
    sf.write(tmp_path / "a.wav", np.zeros(N, np.float32), 16000)
    twice = ["--given", f"drums={tmp_path / 'a.wav'}"] * 2
    refused("drums given twice", out + twice)
    refused("nothing is left", out + sum((["--given", f"{t}={tmp_path / 'a.wav'}"] for t in st.TRACKS), []))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad, match", [
    (["--n", "0"], "--n 0"), (["--steps", "0"], "--steps 0"), (["--steps", "1000"], "1..999"),
    (["--eta", "-1"], "--eta -1"), (["--eta", "nan"], "--eta nan"), (["--eta", "inf"], "--eta inf"),
    (["--batch-size", "0"], "--batch-size 0"), (["--seed", "-1"], "--seed -1"),
    (["--overwrite", "--resume"], "exclude"), (["--device", "foo"], "--device foo: not usable"),
])
def test_arguments_are_checked_before_loading_anything(bad, match, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "load", lambda args: pytest.fail("loaded a model for impossible arguments"))
    refused(match, ["--ckpt", ckpt, "--out", str(tmp_path / "out"), *bad])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, match", [("missing", "no such file"), ("empty", "an empty file"),
                                         ("truncated", "not a PyTorch checkpoint"),
                                         ("text", "not a PyTorch checkpoint"),
                                         ("folder", "a folder"), ("foreign", "cannot load it .KeyError")])
def test_bad_checkpoint_files_are_one_line_naming_the_file(kind, match, ckpt, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":  # an interrupted copy
        path.write_bytes(pathlib.Path(ckpt).read_bytes()[:5000])
    elif kind == "text":
        path.write_text("model weights: see the README\n")
    elif kind == "folder":
        path.mkdir()
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    assert str(path) in refused(match, ["--ckpt", str(path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_nan_latent_is_never_written_as_audio(tmp_path):
    broken = tiny_checkpoint(tmp_path / "nan.pt", nan=True)
    refused("sample_0000: .*NaN.*not written", ["--ckpt", broken, "--out", str(tmp_path / "out"), "--steps", "2"])
    assert not list((tmp_path / "out").rglob("*.wav"))
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["n_written"] == 0


def test_a_non_empty_out_is_refused_and_overwrite_replaces_it_whole(ckpt, tmp_path):
    out = tmp_path / "o"
    run(ckpt, out, "--n", "2")
    before = snapshot(out)
    refused("not empty: pass --overwrite", ["--ckpt", ckpt, "--out", str(out), "--n", "1", "--seed", "7"])
    assert snapshot(out) == before                                       # nothing mixed in
    run(ckpt, out, "--n", "1", "--seed", "7", "--overwrite")
    assert sorted(p.name for p in (out / "stem_0").iterdir()) == ["sample_0000.wav"]
    assert json.loads((out / "settings.json").read_text())["n"] == 1
    assert (out / "stem_0" / "sample_0000.wav").read_bytes() != before["stem_0/sample_0000.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]           # no staging or old folder left


def test_a_failed_overwrite_leaves_the_old_folder_untouched(ckpt, tmp_path, monkeypatch):
    out = tmp_path / "o"
    run(ckpt, out, "--n", "1")
    before = snapshot(out)

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(data.sf, "write", full)
    refused(r"cannot write .*o\.partial/stem_0/sample_0000\.wav.*No space left.*is unchanged",
            ["--ckpt", ckpt, "--out", str(out), "--steps", "2", "--n", "2", "--overwrite"])
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_disk_full_is_named_cleaned_up_and_resumed(ckpt, tmp_path, monkeypatch, capsys):
    run(ckpt, tmp_path / "ref", "--n", "3")
    out = tmp_path / "o"
    real, calls = sf.write, []

    def full_at_piece_1_stem_2(path, *args, **kwargs):  # 5 sound files per piece: 4 stems, the mix
        calls.append(path)
        if len(calls) == 5 + 3:
            pathlib.Path(path).write_bytes(b"RIFF\x00\x01")  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)
    monkeypatch.setattr(data.sf, "write", full_at_piece_1_stem_2)
    refused(r"cannot write .*stem_2/sample_0001\.wav.*No space left.*1 of 3 pieces are complete",
            ["--ckpt", ckpt, "--out", str(out), "--steps", "3", "--batch-size", "2", "--n", "3"])
    monkeypatch.undo()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]   # no partial file left behind
    assert not (out / "stem_2" / "sample_0001.wav").exists()
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["n_written"], settings["complete"]) == (1, False)

    piece0 = (out / "stem_0" / "sample_0000.wav").stat().st_ino
    run(ckpt, out, "--n", "3", "--resume")
    assert "made 2 pieces" in capsys.readouterr().out
    assert (out / "stem_0" / "sample_0000.wav").stat().st_ino == piece0   # finished pieces are not rewritten
    reference = snapshot(tmp_path / "ref")
    assert {k: v for k, v in snapshot(out).items() if k != "settings.json"} == \
        {k: v for k, v in reference.items() if k != "settings.json"}
    (out / "mix" / "sample_0002.wav").unlink()
    refused("settings differ .*batch_size 2 there, 3 now",                  # groups of pieces are fixed by it
            ["--ckpt", ckpt, "--out", str(out), "--n", "3", "--steps", "3", "--batch-size", "3", "--resume"])
    run(ckpt, out, "--n", "3", "--resume")
    assert "made 1 piece in" in capsys.readouterr().out
    assert (out / "mix" / "sample_0002.wav").read_bytes() == reference["mix/sample_0002.wav"]
    refused("settings differ .*seed 0 there, 1 now; steps 3 there, 4 now",
            ["--ckpt", ckpt, "--out", str(out), "--n", "3", "--steps", "4", "--seed", "1", "--resume"])


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        sample.parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--out", "samples"), ("--seed", "0"), ("--batch-size", "(4|16)"), ("--device", "c"),
                          ("--steps", "200"), ("--eta", "1.0")):
        assert re.search(re.escape(flag) + r" \S+ \w.*?\(default: " + default, text), flag


def test_official_checkpoint_end_to_end(tmp_path, monkeypatch):
    """A Lightning-format checkpoint with official key names (fixture unet_official_small.pt) and a MusicLDM first
    stage built from the official first-stage fixture."""
    unet = torch.load(FIXTURES / "unet_official_small.pt", weights_only=False)
    fs = torch.load(FIXTURES / "first_stage_official_small.pt", weights_only=False)
    torch.save({"state_dict": unet["state_dict"], "epoch": 3}, tmp_path / "official.ckpt")
    (tmp_path / "unet.json").write_text(json.dumps(unet["unet_config"]))
    vae = st.AutoencoderKL(fs["vae_ddconfig"], fs["vae_ddconfig"]["z_channels"])
    vae.load_state_dict({k: v.float() for k, v in fs["vae_ckpt"]["state_dict"].items()})
    vocoder = st.HiFiGAN(fs["hifigan_config"])
    vocoder.load_state_dict({k: v.float() for k, v in st.fold_weight_norm(fs["hifigan_ckpt"]["generator"]).items()})
    monkeypatch.setattr(toy, "make_first_stage", lambda spec, trust=False: st.MusicLDMFirstStage(vae, vocoder, 1.0))
    sample.main(["--ckpt", str(tmp_path / "official.ckpt"), "--config", str(tmp_path / "unet.json"), "--trust",
                 "--first-stage", "given", "--out", str(tmp_path / "out"), "--n", "1", "--steps", "2"])
    wave, sr = sf.read(tmp_path / "out" / "piano" / "sample_0000.wav")
    assert sr == 16000 and wave.shape == (163840,) and np.isfinite(wave).all()


def test_the_shipped_toy_checkpoint_samples(tmp_path):
    """checkpoints/synctrack_toy.pt, made by the README's toy commands: the default, with its toy VAE inside. Its last
    run (step 2,000 at lr 3e-5) went on from 20,000 steps at 3e-4 and 4,000 at 1e-4."""
    model, ckpt = st.load_model(str(sample.DEFAULT_CKPT))
    assert model.config.first_stage == "toy-vae" and ckpt["step"] == 2000 and "first_stage" in ckpt
    sample.main(["--n", "1", "--steps", "4", "--out", str(tmp_path)])
    wave, sr = sf.read(tmp_path / "mix" / "sample_0000.wav")
    assert sr == 16000 and wave.shape == (model.config.clip_samples,) and np.abs(wave).max() > 0


def test_report_after_sampling(ckpt, tmp_path, capsys):
    """The listening report (extras/report.py) of the folder sample.py just wrote: one self-contained page with a
    player per track and the mix."""
    run(ckpt, tmp_path / "o", "--n", "2")
    report.main([str(tmp_path / "o"), "--report", str(tmp_path / "r.html")])
    page = (tmp_path / "r.html").read_text()
    assert page.count("<audio") == 2 * 5 and "data:audio/wav;base64," in page
    assert report.main([str(tmp_path / "o"), "--report", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Nothing lost (issue 23): real processes, real signals


def script(*args, cwd=ROOT):
    """sample.py in a child process, one thread (float sums in one order, so runs can be compared byte for byte)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "sample.py"), *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def files(folder):
    return {k: v for k, v in snapshot(folder).items() if k != "settings.json"}


def test_two_runs_into_one_new_out_never_mix(ckpt, tmp_path):
    """Started together into the same new --out: one run writes it, the other stops at once, naming the folder."""
    out = tmp_path / "o"
    runs = [script("--ckpt", ckpt, "--out", out, "--n", "3", "--steps", "200", "--seed", seed) for seed in (0, 1)]
    results = [(r.wait(timeout=600), *r.communicate()) for r in runs]
    assert sorted(rc for rc, _, _ in results) == [0, 1], results
    for rc, stdout, stderr in results:
        assert "Traceback" not in stderr, stderr
        if rc:
            last = stderr.strip().splitlines()[-1]
            assert str(out) in last and re.search("being written by another run|not empty", last), last
    winner = [0, 1][[rc for rc, _, _ in results].index(0)]
    script("--ckpt", ckpt, "--out", tmp_path / "ref", "--n", "3", "--steps", "200", "--seed", winner).wait(600)
    assert files(out) == files(tmp_path / "ref")                       # the winner's pieces, and only those
    assert not list(tmp_path.glob(".*.lock"))


def test_every_input_is_checked_against_out(ckpt, tmp_path):
    """--out never writes over, into or around --ckpt, --first-stage, --config or a --given file."""
    stage = tmp_path / "musicldm"
    stage.mkdir()
    (tmp_path / "unet.json").write_text("{}")
    sf.write(tmp_path / "drums.wav", np.zeros(N, np.float32), 16000)
    base = ["--ckpt", ckpt, "--n", "1", "--steps", "2"]
    refused(r"--out .*musicldm/samples would write over or into the input --first-stage",
            [*base, "--first-stage", str(stage), "--out", str(stage / "samples")])
    refused(r"into the input --config", [*base, "--config", str(tmp_path / "unet.json"), "--out", str(tmp_path)])
    refused(r"into the input --given drums=", [*base, "--given", f"drums={tmp_path / 'drums.wav'}",
                                               "--out", str(tmp_path / "drums.wav")])
    refused(r"into the input --ckpt .*tiny.pt", [*base, "--out", str(pathlib.Path(ckpt).parent), "--overwrite"])
    assert not (stage / "samples").exists() and pathlib.Path(ckpt).exists()


def test_out_as_a_link_with_overwrite(ckpt, tmp_path):
    """--out a link to a folder: --overwrite replaces the folder it points to; the link stays, nothing stray."""
    (tmp_path / "disk").mkdir()
    (tmp_path / "disk" / "old.txt").write_text("old")
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    run(ckpt, tmp_path / "link", "--n", "1", "--overwrite")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link" / "mix" / "sample_0000.wav").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "link"]
    assert not (tmp_path / "disk" / "old.txt").exists()


def test_resume_is_exact_where_groups_are_split(tmp_path):
    """The shipped toy model rounds differently in batches of other sizes, so resuming must denoise a piece with the
    same others as before: piece 1 of group [0, 4) is made again with 0, 2 and 3, and only it is written."""
    base = ["--n", "5", "--steps", "2", "--batch-size", "4"]
    assert script(*base, "--out", tmp_path / "ref").wait(600) == 0
    assert script(*base, "--batch-size", "1", "--out", tmp_path / "b1").wait(600) == 0
    assert files(tmp_path / "b1") != files(tmp_path / "ref")            # the reason for fixed groups
    out = tmp_path / "o"
    assert script(*base, "--out", out).wait(600) == 0
    for p in data.piece_files(out, "sample_0001"):
        p.unlink()
    piece0 = (out / "stem_0" / "sample_0000.wav").stat().st_ino
    resumed = script(*base, "--out", out, "--resume")
    assert resumed.wait(600) == 0
    assert files(out) == files(tmp_path / "ref")
    assert "made 1 piece in" in resumed.communicate()[0]
    assert (out / "stem_0" / "sample_0000.wav").stat().st_ino == piece0   # finished pieces are not rewritten


def test_ctrl_c_keeps_finished_pieces_and_says_how_to_go_on(tmp_path):
    """A real SIGINT in the middle: no traceback, one line with what was kept and the command to continue; that
    command gives the files of an uninterrupted run, byte for byte."""
    base = ["--n", "6", "--steps", "40", "--batch-size", "2"]
    out = tmp_path / "o"
    child = script(*base, "--out", out)
    deadline = time.time() + 300
    while not (out / "mix" / "sample_0001.wav").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    rc, (_, stderr) = child.wait(60), child.communicate()
    last = stderr.strip().splitlines()[-1]
    assert rc != 0 and "Traceback" not in stderr, stderr
    settings = json.loads((out / "settings.json").read_text())
    kept = sum(all(p.exists() for p in data.piece_files(out, f"sample_{i:04d}")) for i in range(6))
    assert 2 <= kept < 6 and settings["n_written"] == kept and not settings["complete"]
    assert re.fullmatch(rf"interrupted; {kept} of 6 pieces are complete in {re.escape(str(out))}/; continue with: "
                        rf"python sample\.py .*--resume", last), last
    command = shlex.split(last.partition("continue with: ")[2])
    assert script(*command[2:]).wait(600) == 0
    assert script(*base, "--out", tmp_path / "ref").wait(600) == 0
    assert files(out) == files(tmp_path / "ref")
    assert json.loads((out / "settings.json").read_text())["n_written"] == 6


def test_messages_are_one_line_naming_the_flag(ckpt, tmp_path, capsys, monkeypatch):
    refused(r"--config .*: for official checkpoints only", ["--ckpt", ckpt, "--config", str(tmp_path / "x.json"),
                                                             "--out", str(tmp_path / "o")])
    monkeypatch.chdir(tmp_path)
    sample.main(["--ckpt", ckpt, "--out=-dash/", "--n", "1", "--steps", "2", "--seed", str(2 ** 70)])  # a huge seed
    printed = capsys.readouterr().out
    assert "made 1 piece in" in printed and "holds 1 of 1 piece\n" in printed and "//" not in printed
    clipped = json.loads((tmp_path / "-dash" / "settings.json").read_text())["clipped_samples"]
    assert (f"clipped to [-1, 1]: {sum(clipped.values())} samples in 1 piece " in printed) == bool(clipped)
    if os.path.isdir("/sys"):                                            # read-only, even for root
        refused(r"--out /sys/synctrack-out/: cannot write .*(Permission denied|not permitted)",
                ["--ckpt", ckpt, "--out", "/sys/synctrack-out", "--n", "1", "--steps", "1"])


# ----------------------------------------------------------------------------------------------------------------------
# Long-form (--seconds): windows of one clip, each continuing the one before


def test_long_pieces_have_the_asked_length_and_depend_on_seed_and_index(ckpt, tmp_path):
    """--seconds 1.5 with a 0.64 s model: stems of exactly 24,000 samples; piece i is the same whatever --n."""
    run(ckpt, tmp_path / "a", "--n", "3", "--seconds", "1.5", "--batch-size", "1")
    for folder in ["bass", "drums", "guitar", "piano", "mix"]:
        for i in range(3):
            wave, sr = sf.read(tmp_path / "a" / folder / f"sample_{i:04d}.wav")
            assert sr == 16000 and wave.shape == (24000,) and np.abs(wave).max() > 0
    run(ckpt, tmp_path / "b", "--n", "2", "--seconds", "1.5", "--batch-size", "1")
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert all(b[k] == a[k] for k in b if k != "settings.json")
    assert a["stem_0/sample_0000.wav"] != a["stem_0/sample_0001.wav"]
    settings = json.loads((tmp_path / "a" / "settings.json").read_text())
    assert (settings["seconds"], settings["overlap"]) == (1.5, 0.75) and settings["run_seconds"] > 0


def test_long_pieces_resume_byte_for_byte(ckpt, tmp_path):
    """A long piece lost from the folder (as after Ctrl-C) is made again by --resume, identical to the first time."""
    args = ["--n", "3", "--seconds", "1.2", "--batch-size", "1"]
    run(ckpt, tmp_path / "o", *args)
    before = snapshot(tmp_path / "o")
    for path in data.piece_files(tmp_path / "o", "sample_0001"):
        path.unlink()
    run(ckpt, tmp_path / "o", *args, "--resume")
    after = snapshot(tmp_path / "o")
    assert {k: v for k, v in after.items() if k != "settings.json"} == \
        {k: v for k, v in before.items() if k != "settings.json"}
    refused("settings differ.*overlap", ["--ckpt", ckpt, "--out", str(tmp_path / "o"), "--steps", "3", *args,
                                         "--overlap", "0.5", "--resume"])


@pytest.mark.parametrize("overlap, hold", [(0.75, 12), (0.5, 8), (0.0, 0)])
def test_each_window_holds_the_end_of_the_one_before(overlap, hold, ckpt, tmp_path, monkeypatch):
    """The known overlap is reproduced: window k ≥ 1 is given the last `hold` frames of window k − 1 and returns them
    unchanged; the decoded latent is the windows laid end to end at a hop of T − hold frames (T = 16 here)."""
    calls, decoded = [], []
    ddim = st.ddim_sample

    def recording_ddim(model, z_start, steps, eta, known=None, known_mask=None, generator=None):
        out = ddim(model, z_start, steps, eta, known, known_mask, generator)
        calls.append((None if known is None else known.clone(), known_mask, out.clone()))
        return out

    monkeypatch.setattr(st, "ddim_sample", recording_ddim)
    monkeypatch.setattr(toy.OfflineFirstStage, "decode", lambda self, z: decoded.append(z.clone()) or
                        torch.zeros(z.shape[0], z.shape[1], z.shape[3] * 640))
    run(ckpt, tmp_path / "o", "--n", "1", "--seconds", "2", "--overlap", str(overlap))
    T, hop = 16, 16 - hold
    z = decoded[0]
    assert z.shape[3] >= 2 * 16000 / 640 and len(calls) == 1 + (z.shape[3] - T) // hop
    for k, (known, mask, out) in enumerate(calls):
        assert torch.equal(z[..., k * hop:k * hop + T, :], out)                   # the piece is the windows
        if k == 0 or hold == 0:
            assert known is None                                                   # a fresh window, nothing held
            continue
        previous = calls[k - 1][2]
        assert mask.shape == (1, 4, 1, T, 1) and mask[0, :, 0, :hold].all() and not mask[0, :, 0, hold:].any()
        assert torch.equal(known[..., :hold, :], previous[..., -hold:, :])        # given: the previous window's end
        assert torch.equal(out[..., :hold, :], previous[..., -hold:, :])          # returned exactly as given


def test_a_long_given_stem_is_arranged_window_by_window(ckpt, tmp_path):
    """--given with --seconds: the whole 1.5 s stem is held in every window and written back as read."""
    drums = (np.random.default_rng(2).standard_normal(24000) * 0.1).astype(np.float32)
    sf.write(tmp_path / "drums.wav", drums, 16000, subtype="PCM_16")
    run(ckpt, tmp_path / "o", "--n", "2", "--seconds", "1.5", "--given", f"drums={tmp_path / 'drums.wav'}")
    given, _ = sf.read(tmp_path / "drums.wav", dtype="int16")
    for name in ("sample_0000.wav", "sample_0001.wav"):
        written, _ = sf.read(tmp_path / "o" / "drums" / name, dtype="int16")
        assert np.array_equal(written, given)
        assert sf.read(tmp_path / "o" / "bass" / name)[0].shape == (24000,)
    refused(r"--overlap 1.0: must be in \[0, 1\)", ["--ckpt", ckpt, "--out", str(tmp_path / "p"), "--overlap", "1"])
    refused(r"--seconds -1.0: must be in \(0, 3600\]",
            ["--ckpt", ckpt, "--out", str(tmp_path / "p"), "--seconds", "-1"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 autocast is CUDA-only here)")
def test_fp32_by_default_and_bf16_by_flag_on_cuda(ckpt, tmp_path):
    """The official samples in float32: so does sample.py unless --bf16; the two differ (bf16 rounds the denoiser)."""
    run(ckpt, tmp_path / "f", "--n", "1", "--device", "cuda")
    run(ckpt, tmp_path / "f2", "--n", "1", "--device", "cuda")
    run(ckpt, tmp_path / "b", "--n", "1", "--device", "cuda", "--bf16")
    f, f2, b = (snapshot(tmp_path / d)["stem_0/sample_0000.wav"] for d in ("f", "f2", "b"))
    assert f == f2 and f != b
