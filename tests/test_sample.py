"""sample.py: file layout and lengths, determinism, arrangement, official checkpoints, bad input (tiny models)."""
import json
import pathlib

import numpy as np
import pytest
import soundfile as sf
import torch

import sample
import synctrack as st

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
N = st.PRESETS["tiny"]["clip_samples"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = st.SyncTrack(st.SyncTrackConfig(**st.PRESETS["tiny"]))
    for p in model.out.parameters():            # a non-zero output layer, so samples depend on the network
        torch.nn.init.normal_(p, std=0.1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    st.save_checkpoint(path, model, ema=model.state_dict())
    return str(path)


def run(ckpt, out, *extra):
    sample.main(["--ckpt", ckpt, "--out", str(out), "--steps", "3", "--batch-size", "2", *extra])


def test_layout_lengths_and_determinism(ckpt, tmp_path):
    run(ckpt, tmp_path / "a", "--n", "3")
    run(ckpt, tmp_path / "b", "--n", "3")
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ["stem_0", "stem_1", "stem_2", "stem_3", "bass", "drums", "guitar", "piano", "mix"]:
        names = sorted(p.name for p in (a / folder).iterdir())
        assert names == ["sample_0000.wav", "sample_0001.wav", "sample_0002.wav"], folder
        for name in names:
            wave, sr = sf.read(a / folder / name)
            assert sr == 16000 and wave.shape == (N,)
            assert (a / folder / name).read_bytes() == (b / folder / name).read_bytes()  # same seed, same files
    assert (a / "drums" / "sample_0001.wav").resolve() == (a / "stem_1" / "sample_0001.wav").resolve()
    settings = json.loads((a / "settings.json").read_text())
    assert settings["n_written"] == 3 and settings["steps"] == 3
    run(ckpt, tmp_path / "c", "--n", "1", "--seed", "1")
    assert (a / "stem_0" / "sample_0000.wav").read_bytes() != (tmp_path / "c" / "stem_0" / "sample_0000.wav").read_bytes()


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
    with pytest.raises(SystemExit, match="TRACK=PATH"):
        run(ckpt, tmp_path, "--given", "vocals=x.wav")
    with pytest.raises(SystemExit, match="no such file"):
        run(ckpt, tmp_path, "--given", "bass=missing.wav")


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
    monkeypatch.setattr(st, "make_first_stage", lambda spec, trust=False: st.MusicLDMFirstStage(vae, vocoder, 1.0))
    sample.main(["--ckpt", str(tmp_path / "official.ckpt"), "--config", str(tmp_path / "unet.json"), "--trust",
                 "--first-stage", "given", "--out", str(tmp_path / "out"), "--n", "1", "--steps", "2"])
    wave, sr = sf.read(tmp_path / "out" / "piano" / "sample_0000.wav")
    assert sr == 16000 and wave.shape == (163840,) and np.isfinite(wave).all()


def test_the_shipped_toy_checkpoint_samples(tmp_path):
    """checkpoints/synctrack_toy.pt, made by `python train.py --preset toy --export ...` (README): the default."""
    model, ckpt = st.load_model(str(sample.DEFAULT_CKPT))
    assert model.config.first_stage == "offline" and ckpt["step"] == 3500
    sample.main(["--n", "1", "--steps", "4", "--out", str(tmp_path)])
    wave, sr = sf.read(tmp_path / "mix" / "sample_0000.wav")
    assert sr == 16000 and wave.shape == (model.config.clip_samples,) and np.abs(wave).max() > 0
