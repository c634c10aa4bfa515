"""cli.py, train.py's command line: the defaults per preset and the run's own row in --help, one line for a bad flag
before anything loads, what a resume may change, outputs that are inputs, and the import graph (cli never imports
train)."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import cli
import toy
import train
from test_train import TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_defaults_come_from_the_row_of_the_run(tmp_path):
    args = cli.parse_args(["--preset", "tiny"])
    assert (args.lr, args.steps, args.spike, args.stage) == (1e-3, 200, 10.0, "denoiser")
    assert args.out == os.path.join("runs", "tiny")
    args = cli.parse_args(["--data", str(tmp_path), "--lr", "2e-5"])              # a Slakh folder: the paper's row
    assert (args.preset, args.lr, args.warmup, args.ema) == ("paper", 2e-5, 1000, 0.9999)
    args = cli.parse_args(["--stage", "vae"])
    assert (args.preset, args.out, args.ema, args.steps) == ("toy", os.path.join("runs", "toy-vae"), 0.0, 2400)
    assert cli.parse_args(["--resume", str(tmp_path)]).lr is None                 # a resume takes the run's own


def test_stage_vae_under_torchrun_is_one_line_before_anything_loads(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match=r"^--stage vae trains in one process \(no torchrun\)$"):
        cli.parse_args(["--stage", "vae"])


def test_the_command_line_imports_no_training_loop_and_the_core_no_extras():
    code = ("import sys, cli; assert 'train' not in sys.modules; import train, sample, metrics; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'extras'], 'extras'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("flag, value", [("--ckpt-every", "0"), ("--steps", "-1"), ("--batch-size", "0"),
                                         ("--accum", "0"), ("--lr", "nan"), ("--ema", "1.5"), ("--log-every", "0")])
def test_bad_values_are_refused_before_anything_loads(tmp_path, monkeypatch, flag, value):
    monkeypatch.setattr(toy, "make_first_stage", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(SystemExit, match=f"^{flag} must be .*, got {value}$"):
        train.main(TINY + [flag, value, "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_resume_refuses_changed_settings_and_honours_export(tmp_path, capsys):
    run = tmp_path / "run"
    train.main(TINY + ["--steps", "2", "--val-every", "100", "--out", str(run)])
    with pytest.raises(SystemExit, match=r"--lr 0.5 \(the run has 0.001\), --no-time \(the run has False\)"):
        train.main(["--resume", str(run), "--steps", "3", "--lr", "0.5", "--no-time"])
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == 2
    capsys.readouterr()
    train.main(["--resume", str(run), "--lr", "1e-3", "--export", str(tmp_path / "a.pt")])   # same value: fine
    assert f"{run} finished at step 2; pass --steps M (M > 2) to continue" in capsys.readouterr().out
    assert torch.load(tmp_path / "a.pt", weights_only=True)["step"] == 2
    with pytest.raises(SystemExit, match=r"--export .*a.pt exists.*--overwrite"):
        train.main(["--resume", str(run), "--steps", "3", "--export", str(tmp_path / "a.pt")])
    train.main(["--resume", str(run), "--steps", "3", "--export", str(tmp_path / "b.pt")])
    exported = torch.load(tmp_path / "b.pt", weights_only=True)
    assert exported["step"] == 3 and all(v.dtype == torch.float16 for v in exported["model"].values()
                                         if v.is_floating_point())


def test_resume_of_a_folder_without_a_training_checkpoint_says_so(tmp_path):
    with pytest.raises(SystemExit, match=r"--resume .*nowhere: cannot read .*ckpt.pt"):
        train.main(["--resume", str(tmp_path / "nowhere")])
    torch.save({"config": {}, "model": {}}, tmp_path / "ckpt.pt")   # what --export writes
    with pytest.raises(SystemExit, match=r"is not a training checkpoint"):
        train.main(["--resume", str(tmp_path)])


@pytest.mark.parametrize("argv, message", [
    (["--export", "{run}/ckpt.pt", "--overwrite"], r"^--export .*run/ckpt.pt is one of the run's own files in --out"),
    (["--init", "{run}/ckpt.pt", "--overwrite"], r"^--out .*run would write over or into the input --init .*: "
                                                 r"choose another --out$"),
    (["--first-stage", "{tmp}"], r"^--out .*would write over or into the input --first-stage"),
])
def test_an_output_that_is_an_input_or_a_run_file_is_refused(tmp_path, argv, message):
    run = tmp_path / "run"
    train.main(TINY + ["--steps", "1", "--val-every", "100", "--out", str(run)])
    before = (run / "ckpt.pt").read_bytes()
    with pytest.raises(SystemExit, match=message):
        train.main(TINY + ["--steps", "2", "--out", str(run)]
                   + [a.format(run=run, tmp=tmp_path) for a in argv])
    assert (run / "ckpt.pt").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], r"^--seed must be ≥ 0, got -1$"),
    (["--device", "foo"], r"^--device foo: not a torch device"),
    (["--device", "cuda:7"], r"^--device cuda:7: \d+ CUDA device\(s\) here; use --device cpu$"),
    (["--out", "{file}"], r"^--out .*a_file is a file; a run is a folder: choose another --out$"),
    (["--data", "/nonexistent"], r"^--data /nonexistent: no such folder"),
])
def test_bad_flags_get_one_line_before_anything_loads(tmp_path, monkeypatch, argv, message):
    monkeypatch.setattr(toy, "make_first_stage", lambda *a, **k: pytest.fail("loaded before the check"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match=message):
        train.main(TINY + [a.format(file=tmp_path / "a_file") for a in argv])


def test_missing_slakh_folder_is_named_before_the_missing_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^--data slakh/: no such folder"):
        train.main(["--data", "slakh/"])


def test_resume_refuses_another_world_size(tmp_path, monkeypatch):
    train.main(TINY + ["--steps", "1", "--val-every", "100", "--out", str(tmp_path)])
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["world_size"] == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match=r"trained on 1 process\(es\), this is 2; resume it with torchrun "
                                         r"--nproc_per_node 1"):
        train.main(["--resume", str(tmp_path), "--steps", "2"])


def test_help_shows_the_defaults_of_the_run_it_describes(capsys):
    for argv, lr in (([], "0.0003"), (["--data", "slakh/"], "3e-05"), (["--stage", "vae"], "0.001")):
        with pytest.raises(SystemExit):
            cli.parse_args(argv + ["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"AdamW learning rate after the warm-up (default: {lr})" in text, argv


def test_train_help_opens_with_its_usage_and_ends_with_the_table(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert text.index("python train.py --resume runs/toy") < text.index("AdamW learning") < text.index("Defaults per")
    assert all(f"  {name}: batch_size=" in text for name in cli.DEFAULTS)
    assert f"{train.SPIKE_PATIENCE} in a row stop" in " ".join(text.split())   # the help states train.py's number
