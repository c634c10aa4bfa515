"""extras/bench.py's plumbing on a CPU with the tiny preset: every phase runs and reports; the numbers are not
asserted."""
import json

import torch

from extras import bench
import synctrack as st


def lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_paper_path_end_to_end_tiny(tmp_path, capsys):
    bench.main(["paper", "--tiny", "--threads", "1", "--dir", str(tmp_path)])
    out = lines(capsys)
    assert [r["phase"] for r in out] == ["build", "train", "resume", "sample", "metrics", "done"]
    assert out[0]["trainable_params"]["paper"] == sum(p.numel() for p in st.SyncTrack(
        st.SyncTrackConfig(**st.PRESETS["tiny"])).parameters())
    assert all(r["seconds"] > 0 and r["peak_rss_gb"] > 0 for r in out[:-1])
    assert out[-1]["logged_steps"] == [1, 2, 3]                        # 2 steps, then 1 after the resume
    assert out[-1]["wav_files"] == 5                                   # 4 stems and the mix of one piece
    assert torch.load(tmp_path / "run" / "export.pt", weights_only=True)["step"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["n_samples"] == 1


def test_gpu_script_runs_on_a_cpu_with_the_tiny_config(capsys):
    bench.main(["gpu", "--tiny", "--device", "cpu", "--batch-size", "2", "--pieces", "2", "--ddim-steps", "2",
                "--repeats", "1", "--compile", "off"])
    out = {r["what"]: r for r in lines(capsys)}
    assert set(out) == {"gpu", "train", "largest batch", "sample", "metrics"}
    assert out["train"]["it_s"] > 0 and out["train"]["peak_gb"] > 0
    assert out["largest batch"]["batch"] is None                       # searched on CUDA only
    assert out["sample"]["seconds_with_decode"] > 0 and out["metrics"]["files_per_s"] > 0


def test_written_first_stage_is_a_musicldm_checkpoint(tmp_path):
    n = bench.write_first_stage(tmp_path / "stage.ckpt")
    vae, vocoder, scale = st.load_first_stage(tmp_path / "stage.ckpt")  # strict: every tensor of the real shapes
    assert n == sum(p.numel() for m in (vae, vocoder) for p in m.parameters())
    assert scale == st.MUSICLDM_SCALE_FACTOR


def test_metrics_benchmark_reports_every_run(tmp_path, capsys):
    bench.main(["metrics", "--pieces", "2", "--grid-pieces", "1", "--seconds", "2.56", "--workers", "1",
                "--dir", str(tmp_path)])
    out = lines(capsys)
    assert [r["what"] for r in out] == ["metrics", "one setting", "grid", "grid from cache", "one setting"]
    assert [r["settings"] for r in out[1:]] == [1, 6, 6, 1] and [r["pieces"] for r in out[1:]] == [1, 1, 1, 2]
    assert all(r["files_per_s"] > 0 and r["peak_rss_gb"]["main"] > 0 for r in out[1:])
    assert any((tmp_path / "activations").iterdir())                   # the grid filled the cache the next run read
