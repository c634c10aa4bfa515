"""Make the flat top-level modules (synctrack, metrics, data, ...) importable from the tests; shared fixtures.

The first-stage fixtures are the official modules' weights at a small size (tests/fixtures/README.md)."""
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import synctrack as fs  # noqa: E402

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "first_stage_official_small.pt"
MUSICLDM_SCALE = 1.075324296951294  # ucsd-reach/musicldm vae/config.json scaling_factor


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=False)


@pytest.fixture(scope="module")
def small_vae(official):
    vae = fs.AutoencoderKL(official["vae_ddconfig"], 8)
    vae.load_state_dict({k: v.float() for k, v in official["vae_ckpt"]["state_dict"].items()})
    return vae.eval()


@pytest.fixture(scope="module")
def small_vocoder(official):
    vocoder = fs.HiFiGAN(official["hifigan_config"])
    vocoder.load_state_dict(fs.fold_weight_norm(official["hifigan_ckpt"]["generator"]))
    return vocoder.eval()


def same_weights(module, reference):
    ours, theirs = module.state_dict(), reference.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture
def small_official_configs(monkeypatch, official):
    """The official-file loaders build the paper-size modules; shrink them to the fixture's size."""
    monkeypatch.setattr(fs, "MUSICLDM_DDCONFIG", official["vae_ddconfig"])
    monkeypatch.setattr(fs, "HIFIGAN_16K_64", official["hifigan_config"])
