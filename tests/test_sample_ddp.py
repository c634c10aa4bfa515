"""extras/sample_ddp.py: torchrun shards write what sample.py writes, resume, --given-dir arrangement (tiny models)."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import data
import synctrack as st
import test_sample
from test_sample import N, ROOT, ckpt, refused, snapshot  # noqa: F401  (ckpt: the shared tiny-checkpoint fixture)

sys.path.insert(0, str(ROOT / "extras"))
import sample_ddp  # noqa: E402


def run(ckpt, out, *extra):
    test_sample.run(ckpt, out, *extra, main=sample_ddp.main)


def ddp_refused(match, argv):
    return refused(match, argv, main=sample_ddp.main)


def songs_folder(root, names=("song",)):
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for t in st.TRACKS:
            sf.write(root / name / f"{t}.wav", np.zeros(N, np.float32), 16000)
    return root


def test_keep_is_checked_before_loading_anything(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(sample_ddp.sample, "load", lambda args: pytest.fail("loaded a model for impossible arguments"))
    ddp_refused("--keep", ["--ckpt", ckpt, "--out", str(tmp_path / "out"), "--given-dir", "d", "--keep", "drums,voice"])
    assert not (tmp_path / "out").exists()


def test_input_files_are_never_written_deleted_or_linked_over(ckpt, tmp_path):
    songs = songs_folder(tmp_path / "songs")
    before = snapshot(songs)
    for extra in ([], ["--overwrite"]):
        ddp_refused("into the input --given-dir", ["--ckpt", ckpt, "--given-dir", str(songs),
                                                   "--out", str(songs), *extra])
        ddp_refused("into the input --given-dir", ["--ckpt", ckpt, "--given-dir", str(songs),
                                                   "--out", str(songs / "out"), *extra])
    refused("into the input --ckpt .*tiny.pt", ["--ckpt", ckpt, "--out", str(pathlib.Path(ckpt).parent), "--overwrite"])
    assert snapshot(songs) == before and pathlib.Path(ckpt).exists()


def test_given_dir_skips_a_song_with_a_corrupt_stem(ckpt, tmp_path, capsys):
    songs = songs_folder(tmp_path / "songs", ("good", "bad"))
    (songs / "bad" / "drums.wav").write_bytes(b"RIFF broken")
    run(ckpt, tmp_path / "out", "--given-dir", str(songs), "--keep", "drums")
    printed = capsys.readouterr().out
    assert re.search(r"bad: .*bad/drums\.wav.*song skipped", printed) and "skipped 1 song" in printed
    assert sorted(p.name for p in (tmp_path / "out" / "stem_0").iterdir()) == ["good.wav"]
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert (settings["n_pieces"], settings["n_written"]) == (2, 1)


@pytest.mark.parametrize("extra", [[], ["--seconds", "1.5"]])
def test_one_process_writes_what_sample_py_writes(extra, ckpt, tmp_path):
    """Without torchrun, extras/sample_ddp.py is sample.py: same files for the same arguments (long pieces too)."""
    import sample
    sample.main(["--ckpt", ckpt, "--out", str(tmp_path / "a"), "--steps", "3", "--batch-size", "2", "--n", "3", *extra])
    run(ckpt, tmp_path / "b", "--n", "3", *extra)
    files = lambda folder: {k: v for k, v in snapshot(folder).items() if k != "settings.json"}
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_two_gloo_ranks_write_what_one_process_writes_and_resume(ckpt, tmp_path):
    """torchrun with 2 CPU processes against sample.py in 1 process, both 1 thread each: piece i is byte-identical.
    (Across thread counts float32 sums are ordered differently: latents then differ by ~1e-6.)"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--ckpt", ckpt, "-n", "5", "--steps", "2", "--batch-size", "2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    one = lambda out, *extra: subprocess.run([sys.executable, "sample.py", *args, "--out", str(out), *extra], cwd=ROOT,
                                            env=env, check=True, capture_output=True, text=True)
    two = lambda out, *extra: subprocess.run([*torchrun, "extras/sample_ddp.py", *args, "--out", str(out), *extra],
                                            cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    one(tmp_path / "one")
    two(tmp_path / "two")
    files = lambda folder: {k: v for k, v in snapshot(folder).items() if k != "settings.json"}
    assert len(files(tmp_path / "one")) == 5 * 9 and files(tmp_path / "two") == files(tmp_path / "one")
    (tmp_path / "two" / "stem_3" / "sample_0001.wav").unlink()
    for p in data.piece_files(tmp_path / "two", "sample_0004"):
        p.unlink()
    assert "made 2 pieces" in two(tmp_path / "two", "--resume").stdout
    assert files(tmp_path / "two") == files(tmp_path / "one")
    settings = json.loads((tmp_path / "two" / "settings.json").read_text())
    assert (settings["n_written"], settings["complete"]) == (5, True)
