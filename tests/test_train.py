"""train.py: the loop learns, resumes exactly, stops on a bad loss, and runs under torchrun (gloo, 2 CPU processes)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import synctrack as st
import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--data", "toy", "--toy-songs", "8", "--batch-size", "4", "--lr", "1e-3",
        "--warmup", "5", "--log-every", "1", "--threads", "2"]


def log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_tiny_model_learns_on_toy_data(tmp_path):
    train.main(TINY + ["--steps", "30", "--val-every", "10", "--ema", "0.9", "--out", str(tmp_path)])
    val = [r["val_loss"] for r in log(tmp_path) if "val_loss" in r]
    assert len(val) == 3 and val[-1] < 0.8 * val[0], val
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 30 and st.SyncTrackConfig.from_dict(ckpt["config"]).first_stage == "offline"


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.main(TINY + ["--steps", "6", "--out", str(straight)])
    train.main(TINY + ["--steps", "3", "--out", str(split)])     # 16 clips / batch 4: stops mid-epoch
    train.main(["--resume", str(split), "--steps", "6", "--threads", "2"])
    a = torch.load(straight / "ckpt.pt", weights_only=True)
    b = torch.load(split / "ckpt.pt", weights_only=True)
    assert b["step"] == 6
    train.main(["--resume", str(split)])                          # without --steps: the run's own target, done
    assert torch.load(split / "ckpt.pt", weights_only=True)["step"] == 6
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    loss = st.diffusion_loss

    def failing(model, z0, generator=None):
        calls["n"] += 1
        return loss(model, z0, generator) * (float("nan") if calls["n"] == 5 else 1.0)

    monkeypatch.setattr(st, "diffusion_loss", failing)
    with pytest.raises(SystemExit, match=r"step 4: loss nan.*last good checkpoint \(step 4\)"):
        train.main(TINY + ["--steps", "10", "--ckpt-every", "2", "--val-every", "100", "--out", str(tmp_path)])
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 4


def test_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(ROOT / "train.py"), *TINY, "--steps", "3", "--threads", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 3
    assert [r["step"] for r in log(tmp_path)] == [1, 2, 3]           # rank 0 alone logs
