"""train.py: the loop learns, resumes exactly, stops on a bad loss or gradient, runs under torchrun (gloo, 2 CPU
processes), and never loses or mixes a run's files (refused --out, log truncation, disk full). The flags, their
checks and what a resume may change: test_cli.py."""
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

import cli
import synctrack as st
import toy
import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--data", "toy", "--toy-songs", "8", "--batch-size", "4", "--lr", "1e-3",
        "--warmup", "5", "--log-every", "1", "--threads", "1"]


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
    train.main(["--resume", str(split), "--steps", "6", "--threads", "1"])
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


def test_a_lone_spike_is_skipped_and_three_in_a_row_stop(tmp_path, monkeypatch, capsys):
    calls, loss = {"n": 0}, st.diffusion_loss

    def spiking(at):
        def diffusion_loss(model, z0, generator=None):  # call k is step k's batch until a batch is skipped
            calls["n"] += 1
            return loss(model, z0, generator) * (100.0 if calls["n"] in at else 1.0)
        return diffusion_loss

    monkeypatch.setattr(st, "diffusion_loss", spiking({103}))
    train.main(TINY + ["--steps", "105", "--val-every", "1000", "--out", str(tmp_path / "once")])
    printed = "".join(capsys.readouterr())
    assert "step 102: loss" in printed and "batch skipped (3 spikes in a row stop the run)" in printed
    assert [r["step"] for r in log(tmp_path / "once")] == list(range(1, 106))  # went on with the next batch
    calls["n"] = 0
    monkeypatch.setattr(st, "diffusion_loss", spiking({103, 104, 105}))
    with pytest.raises(SystemExit, match=r"step 102: loss .*3 spikes in a row; stopped"):
        train.main(TINY + ["--steps", "105", "--val-every", "1000", "--out", str(tmp_path / "thrice")])


def test_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), *TINY, "--steps", "3", "--threads", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 3
    assert [r["step"] for r in log(tmp_path)] == [1, 2, 3]           # rank 0 alone logs


# ----------------------------------------------------------------------------------------------------------------------
# Nothing a user has is lost or mixed (issue 13)

def test_existing_run_folder_is_refused_unless_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                                       # --out defaults to runs/<preset>
    train.main(TINY + ["--steps", "1", "--val-every", "100"])
    run = tmp_path / "runs" / "tiny"
    assert f"wrote {os.path.join('runs', 'tiny')}/ckpt.pt" in capsys.readouterr().out   # says where it wrote
    before = {name: (run / name).read_bytes() for name in ("ckpt.pt", "log.jsonl")}
    with pytest.raises(SystemExit, match=r"--out runs/tiny already holds ckpt.pt.*--resume runs/tiny.*--overwrite"):
        train.main(TINY + ["--steps", "2"])                           # forgot --resume
    assert {name: (run / name).read_bytes() for name in before} == before
    train.main(TINY + ["--steps", "2", "--val-every", "100", "--overwrite"])
    assert [r["step"] for r in log(run)] == [1, 2]                    # replaced, not appended to
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == 2


def failing_at(call, corrupt, monkeypatch):
    """Make the `call`-th diffusion loss bad in the way `corrupt(loss, model)` says."""
    calls = {"n": 0}
    loss = st.diffusion_loss

    def patched(model, z0, generator=None):
        calls["n"] += 1
        value = loss(model, z0, generator)
        return corrupt(value, model) if calls["n"] == call else value

    monkeypatch.setattr(st, "diffusion_loss", patched)


def test_log_never_repeats_steps_after_a_resume(tmp_path, monkeypatch):
    failing_at(5, lambda loss, model: loss * float("nan"), monkeypatch)   # stops in step 5, after logging 1..4
    with pytest.raises(SystemExit, match=r"step 4: loss nan.*last good checkpoint \(step 3\)"):
        train.main(TINY + ["--steps", "10", "--ckpt-every", "3", "--val-every", "100", "--out", str(tmp_path)])
    assert [r["step"] for r in log(tmp_path)] == [1, 2, 3, 4]
    train.main(["--resume", str(tmp_path), "--steps", "6"])
    assert [r["step"] for r in log(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_finite_loss_with_a_non_finite_gradient_stops_before_the_update(tmp_path, monkeypatch):
    # 0 · √(p − p) is 0 forward, but its gradient is 0 · ∞ = NaN: a finite loss with a NaN gradient
    failing_at(5, lambda loss, model: loss + 0 * (next(model.parameters()) - next(model.parameters())).sqrt().sum(),
               monkeypatch)
    with pytest.raises(SystemExit, match=r"step 4: loss [0-9.]+, gradient norm nan.*last good checkpoint \(step 4\)"):
        train.main(TINY + ["--steps", "10", "--ckpt-every", "1", "--val-every", "100", "--out", str(tmp_path)])
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for part in ("model", "ema") for v in ckpt[part].values())


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save, calls = torch.save, {"n": 0}

    def full_disk(obj, f):
        calls["n"] += 1
        if calls["n"] < 2:
            return save(obj, f)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit, match=r"step 4: disk full while writing .*ckpt.pt; the previous file is unchanged; "
                                         r"the last good checkpoint is step 2$"):
        train.main(TINY + ["--steps", "4", "--ckpt-every", "2", "--val-every", "100", "--out", str(tmp_path)])
    monkeypatch.undo()
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 2


def test_init_from_our_checkpoints_starts_a_new_run_from_their_weights(tmp_path):
    run = tmp_path / "run"
    train.main(TINY + ["--steps", "3", "--val-every", "100", "--out", str(run), "--export", str(tmp_path / "a.pt")])
    trained = torch.load(run / "ckpt.pt", weights_only=True)
    train.main(TINY + ["--steps", "0", "--init", str(run / "ckpt.pt"), "--out", str(tmp_path / "from_run")])
    new = torch.load(tmp_path / "from_run" / "ckpt.pt", weights_only=True)
    assert new["step"] == 0 and not new["optimizer"]["state"]                      # a fresh optimiser
    for part in ("model", "ema"):                                                  # raw to raw, EMA to EMA
        assert all(torch.equal(new[part][k], trained[part][k]) for k in trained[part]), part
    train.main(TINY + ["--steps", "0", "--init", str(tmp_path / "a.pt"), "--out", str(tmp_path / "from_export")])
    new = torch.load(tmp_path / "from_export" / "ckpt.pt", weights_only=True)
    for part in ("model", "ema"):                                                  # the export holds the EMA only
        assert all(torch.equal(new[part][k], trained["ema"][k].half().float()) for k in trained["ema"]), part
    with pytest.raises(SystemExit, match=r"--init .*a.pt: its model differs .*time_attention True there, False here"):
        train.main(TINY + ["--no-time", "--steps", "0", "--init", str(tmp_path / "a.pt"), "--out", str(tmp_path / "x")])


def lightning_init(tmp_path, monkeypatch, extra):
    """Train 0 steps from a Lightning checkpoint holding `extra` besides the UNet; returns (its ckpt.pt, reference)."""
    fixtures = ROOT / "tests" / "fixtures"
    ref = torch.load(fixtures / "unet_official_small.pt", weights_only=False)
    fs = torch.load(fixtures / "first_stage_official_small.pt", weights_only=False)
    vae = st.AutoencoderKL(fs["vae_ddconfig"], fs["vae_ddconfig"]["z_channels"])
    vae.load_state_dict({k: v.float() for k, v in fs["vae_ckpt"]["state_dict"].items()})
    vocoder = st.HiFiGAN(fs["hifigan_config"])
    vocoder.load_state_dict({k: v.float() for k, v in st.fold_weight_norm(fs["hifigan_ckpt"]["generator"]).items()})
    monkeypatch.setattr(toy, "make_first_stage", lambda spec, trust=False: st.MusicLDMFirstStage(vae, vocoder, 1.0))
    monkeypatch.setattr(cli, "model_config",
                        lambda args: st.official_config(ref["unet_config"], first_stage="musicldm",
                                                    clip_samples=40960))
    prefix, key = "model.diffusion_model.", "input_blocks.0.0.weight"
    shadow = {"model_ema." + ("diffusion_model." + k[len(prefix):]).replace(".", ""): v
              for k, v in ref["state_dict"].items()}
    raw = {**ref["state_dict"], prefix + key: ref["state_dict"][prefix + key] + 1}
    torch.save({"state_dict": {**raw, **shadow, **extra}}, tmp_path / "lightning.ckpt")
    train.main(["--preset", "tiny", "--init", str(tmp_path / "lightning.ckpt"), "--trust", "--steps", "0",
                "--toy-songs", "2", "--batch-size", "1", "--threads", "1", "--out", str(tmp_path / "run")])
    return torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True), ref


def test_init_from_a_lightning_checkpoint_takes_raw_weights_and_the_ema_shadow(tmp_path, monkeypatch, capsys):
    """The paper's start (--init musicldm-ckpt.ckpt) at small size: the official UNet fixture
    (tests/fixtures/unet_official_small.pt) as a Lightning checkpoint whose raw and EMA weights differ, and the official
    first-stage fixture (first_stage_official_small.pt) as its first stage."""
    ckpt, ref = lightning_init(tmp_path, monkeypatch, {})
    prefix, key = "model.diffusion_model.", "input_blocks.0.0.weight"
    assert torch.equal(ckpt["model"][key], ref["state_dict"][prefix + key] + 1)   # raw weights to train
    assert torch.equal(ckpt["ema"][key], ref["state_dict"][prefix + key])         # the EMA shadow to the EMA
    assert len(ckpt["model"]) == len(ref["state_dict"])
    assert ckpt["ema_updates"] == 0
    assert "no model_ema.num_updates: the EMA warm-up starts from 0" in capsys.readouterr().out


def test_init_from_lightning_inherits_the_ema_update_count(tmp_path, monkeypatch, capsys):
    """LitEma's decay min(0.9999, (1+n)/(10+n)) depends on num_updates: a fine-tune goes on from the checkpoint's."""
    ckpt, _ = lightning_init(tmp_path, monkeypatch, {"model_ema.num_updates": torch.tensor(38249, dtype=torch.int)})
    assert ckpt["ema_updates"] == 38249
    assert "EMA continues from LitEma's num_updates 38249" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------------
# Nothing lost (issue 23): one run per folder, --overwrite keeps the old run until the new one saves, Ctrl-C, one-line
# errors

def start(out, *extra, watch=None):
    """train.py in its own process, running until stopped; returns it once it has logged two steps in `watch`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, "--threads", "1", "--steps", "100000",
                             "--val-every", "100000", "--out", str(out), *extra], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = watch or out / "log.jsonl"
    for _ in range(1200):
        if watch.exists() and len(watch.read_text().splitlines()) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    return proc


def interrupt(proc):
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def test_a_second_run_into_the_same_out_is_refused_and_ctrl_c_keeps_a_resumable_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    first = start(run)
    second = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "--steps", "3", "--out", str(run)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert "is being written by another run" in second.stderr
    line = interrupt(first)
    step = torch.load(run / "ckpt.pt", weights_only=True)["step"]
    assert step >= 2 and line == (f"interrupted at step {step}: kept {run}/ckpt.pt (step {step}); continue with "
                                  f"`python train.py --resume {run}`")
    assert first.returncode != 0 and [r["step"] for r in log(run)] == list(range(1, step + 1))
    train.main(["--resume", str(run), "--steps", str(step + 1), "--threads", "1"])
    assert f"resumed from step {step}" in capsys.readouterr().out
    assert [r["step"] for r in log(run)] == list(range(1, step + 2))


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path):
    run, link = tmp_path / "run", tmp_path / "link"
    train.main(TINY + ["--steps", "2", "--val-every", "100", "--out", str(run)])
    before = {name: (run / name).read_bytes() for name in ("ckpt.pt", "log.jsonl")}
    new = start(run, "--overwrite", "--ckpt-every", "100000", watch=tmp_path / "run.partial" / "log.jsonl")
    line = interrupt(new)                                                   # Ctrl-C before the new run's checkpoint
    assert line.endswith(f"before the new run's first checkpoint: --out {run} still holds the old run, unchanged")
    assert {name: (run / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]             # no partial folder, no lock file left
    link.symlink_to(run)                                                    # --out a symbolic link: its folder
    train.main(TINY + ["--steps", "3", "--val-every", "100", "--out", str(link), "--overwrite"])
    assert link.is_symlink() and torch.load(run / "ckpt.pt", weights_only=True)["step"] == 3
    assert [r["step"] for r in log(run)] == [1, 2, 3]


def test_a_folder_without_a_run_needs_no_overwrite(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n')                   # what a run stopped in its setup leaves
    train.main(TINY + ["--steps", "1", "--val-every", "100", "--out", str(tmp_path)])
    assert [r["step"] for r in log(tmp_path)] == [1]


def test_unwritable_out_is_one_line(tmp_path, monkeypatch):
    """Root writes anywhere, so an unwritable folder is simulated by os.access (the check train.py makes)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit, match=r"^--out .*run: not writable; choose another --out$"):
        train.main(TINY + ["--steps", "1", "--out", str(tmp_path / "run")])


def test_warmup_is_the_official_formula(tmp_path):
    """Official warmup_step: lr = base · global_step / warmup for global_step ≤ warmup, so the first update is at 0."""
    train.main(TINY + ["--steps", "6", "--warmup", "4", "--val-every", "100", "--out", str(tmp_path)])
    assert [r["lr"] for r in log(tmp_path)] == pytest.approx([0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
