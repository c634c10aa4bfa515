"""FAD (extras/fad.py): Fréchet distance, the VGGish front end and model, end to end on generated audio.

No real VGGish weights here: the tests save a randomly initialised VGGish in the torchvggish key layout and check
that it loads strictly. Values that depend on trained weights are not tested.
"""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import linalg

from data import TRACKS
from extras import fad

SR = 16000


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------------------------

def random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, cov = rng.normal(size=16), random_cov(rng, 16)
    assert fad.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-10)


def test_frechet_closed_forms():
    # commuting covariances: d = |Δμ|² + Σ (√a_i − √b_i)²; here 5 + (1 − 2)² + (2 − 3)² = 7
    assert fad.frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0])) == pytest.approx(7.0)
    # one dimension: (μ1 − μ2)² + (σ1 − σ2)²
    assert fad.frechet_distance(1.0, 4.0, -2.0, 0.25) == pytest.approx(9.0 + 1.5**2)


def test_frechet_matches_matrix_square_root_formula_and_is_symmetric():
    rng = np.random.default_rng(1)
    mu1, mu2, s1, s2 = rng.normal(size=8), rng.normal(size=8), random_cov(rng, 8), random_cov(rng, 8)
    textbook = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert fad.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(textbook, rel=1e-9)
    assert fad.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(textbook, rel=1e-9)


def test_frechet_stable_with_singular_covariances():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 128)), rng.normal(size=(10, 128)) + 0.5  # 10 frames in 128-d: rank 9
    stats = [(z.mean(0), np.cov(z, rowvar=False)) for z in (x, y)]
    d = fad.frechet_distance(*stats[0], *stats[1])
    assert np.isfinite(d) and d > 0
    assert d == pytest.approx(fad.frechet_distance(*stats[1], *stats[0]), rel=1e-9)
    assert fad.frechet_distance(*stats[0], *stats[0]) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="shapes"):
        fad.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------------------------------------------------------
# VGGish front end
# ---------------------------------------------------------------------------------------------------------------------

def test_mel_matrix_hand_computed():
    w = fad.vggish_mel_matrix().numpy()
    assert w.shape == (257, 64)
    mel = lambda f: 1127.0 * math.log(1 + f / 700.0)  # HTK
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    k, m = 40, 10  # FFT bin 40 = 1250 Hz against band 10
    rising = (mel(1250.0) - edges[10]) / (edges[11] - edges[10])
    falling = (edges[12] - mel(1250.0)) / (edges[12] - edges[11])
    assert w[k, m] == pytest.approx(max(0.0, min(rising, falling)), rel=1e-12)
    assert w[0].sum() == 0 and w[: 125 * 512 // SR + 1].sum() == 0  # nothing from DC up to 125 Hz
    assert w[7500 * 512 // SR + 1:].sum() == 0 and w.max() <= 1.0  # nothing above 7500 Hz; peak ≤ 1


def test_front_end_of_a_1khz_sine_hand_computed():
    """A 1 kHz sine of amplitude A puts |X| = 100·A in FFT bin 32 (1000 Hz = 32 · 16000/512): the 400-sample
    window holds 25 whole periods, the periodic Hann window sums to 200, and a sine gives half of that."""
    amp = 0.3
    wave = amp * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    n = np.arange(400)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)
    dft = np.abs(np.exp(-2j * np.pi * np.outer(np.arange(257), n) / 512) @ (wave[:400] * hann))  # frame 0 by hand
    assert dft[32] == pytest.approx(100 * amp, rel=1e-9)
    expected = np.log(dft @ fad.vggish_mel_matrix().numpy() + 0.01)
    examples = fad.vggish_examples(wave)
    assert examples.shape == (1, 1, 96, 64)  # 1 s: 98 frames, 1 whole example
    assert np.allclose(examples[0, 0, 0].numpy(), expected, atol=1e-5)


def test_front_end_silence_and_example_framing():
    assert torch.all(fad.vggish_examples(np.zeros(SR)) == np.float32(math.log(0.01)))
    wave = np.random.default_rng(3).normal(size=SR * 3) * 0.1
    ex = fad.vggish_examples(wave)  # 3 s: 298 frames -> 3 examples of 96 frames, no overlap
    assert ex.shape == (3, 1, 96, 64)
    assert torch.equal(fad.vggish_examples(wave[160 * 96:])[0], ex[1])  # example 1 starts at frame 96
    assert fad.vggish_examples(np.zeros(100)).shape == (0, 1, 96, 64)


# ---------------------------------------------------------------------------------------------------------------------
# VGGish model and loading
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random VGGish saved as a plain state_dict, as vggish-10086976.pth is (~290 MB). He initialisation with
    zero biases, so that the embeddings follow the input instead of being mostly bias (PyTorch's default init)."""
    torch.manual_seed(0)
    model = fad.VGGish()
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            torch.nn.init.zeros_(layer.bias)
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(model.state_dict(), path)
    return path


def test_state_dict_layout_is_torchvggish():
    state = fad.VGGish().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == fad.VGGISH_SHAPES
    assert sum(v.numel() for v in state.values()) == 72_141_184  # VGGish without PCA


def test_load_strict_and_embedding_shapes(weights):
    model, ignored = fad.load_vggish(weights)
    assert ignored == [] and not model.training
    reference = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    for n in (163840, 163872):  # 10.24 s: ground truth and the official generated length
        examples = fad.vggish_examples(np.random.default_rng(n).normal(size=n) * 0.1)
        assert examples.shape == (10, 1, 96, 64)
        with torch.inference_mode():
            assert model(examples).shape == (10, 128)


def test_load_reports_extra_and_rejects_wrong_keys(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    state["pproc.pca_means"] = torch.zeros(128, 1)  # some copies carry the PCA too
    torch.save(state, tmp_path / "extra.pth")
    assert fad.load_vggish(tmp_path / "extra.pth")[1] == ["pproc.pca_means"]
    (tmp_path / "page.pth").write_text("<html>not found</html>")
    with pytest.raises(ValueError, match="cannot read as a torch state_dict"):
        fad.load_vggish(tmp_path / "page.pth")
    wrong = {"features.0.weight": torch.zeros(64, 1, 3, 3), "embeddings.4.weight": torch.zeros(64, 4096)}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"features\.0\.bias missing.*embeddings\.4\.weight has shape \(64, 4096\)"):
        fad.load_vggish(tmp_path / "wrong.pth")


# ---------------------------------------------------------------------------------------------------------------------
# End to end on generated audio
# ---------------------------------------------------------------------------------------------------------------------

def song(rng, seconds=2.0):
    """Four short tracks: decaying tones at random pitches and onsets."""
    t = np.arange(int(seconds * SR)) / SR
    tracks = {}
    for i, name in enumerate(TRACKS):
        wave = np.zeros_like(t)
        for onset in rng.uniform(0, seconds, 4):
            u = np.clip(t - onset, 0, None)
            wave += (t >= onset) * np.sin(2 * np.pi * rng.uniform(60, 800) * (i + 1) * u) * np.exp(-u / 0.3)
        tracks[name] = 0.2 * wave
    return tracks


def write_set(root, songs, noise=0.0, layout="per-song", seed=0):
    rng = np.random.default_rng(seed)
    for k, tracks in enumerate(songs):
        for name, wave in tracks.items():
            path = root / f"song{k}" / f"{name}.wav" if layout == "per-song" else root / name / f"song{k}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), (wave + noise * rng.normal(size=len(wave))).astype(np.float32), SR)
    return root


def test_fad_end_to_end(weights, tmp_path, capsys):
    rng = np.random.default_rng(4)
    songs = [song(rng) for _ in range(4)]
    ref = write_set(tmp_path / "ref", songs)
    same = write_set(tmp_path / "same", songs, layout="named")
    # Added noise. With random weights FAD grows with the noise only up to a point (past ~0.05 every clip turns
    # into the same white-noise embedding), so both levels stay below it.
    mild = write_set(tmp_path / "mild", songs, noise=0.003, layout="named")
    strong = write_set(tmp_path / "strong", songs, noise=0.03, layout="named")
    cache = tmp_path / "emb.npz"
    r_same = fad.fad(ref, same, weights, workers=2, cache=cache)
    assert fad.main([str(ref), str(same), "--vggish", str(weights), "--cache", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" 0.0000 ") == 5 and "-0.0000" not in printed  # identical sets: exactly 0, no sign
    assert r_same["frames"]["mix"] == [8, 8]  # 4 clips of 2 s, 2 examples each, pooled
    assert r_same["mix_source"]["ref"] == "0 mix files, 4 sums of the tracks"
    for group in ("mix", *TRACKS):
        assert r_same["fad"][group] == pytest.approx(0.0, abs=1e-6)
    r_mild = fad.fad(ref, mild, weights, cache=cache)
    assert fad.main([str(ref), str(strong), "--vggish", str(weights), "--cache", str(cache),
                    "--json", str(tmp_path / "fad.json")]) == 0
    r_strong = json.loads((tmp_path / "fad.json").read_text())
    for group in ("mix", *TRACKS):
        assert 0 < r_mild["fad"][group] < r_strong["fad"][group]
    assert "piano" in capsys.readouterr().out


def test_fad_cache_is_never_stale(weights, tmp_path):
    rng = np.random.default_rng(5)
    songs = [song(rng) for _ in range(2)]
    ref, gen = write_set(tmp_path / "ref", songs), write_set(tmp_path / "gen", songs)
    cache = tmp_path / "emb.npz"
    assert fad.fad(ref, gen, weights, cache=cache)["fad"]["bass"] == pytest.approx(0.0, abs=1e-6)
    write_set(gen, songs, noise=0.1, seed=1)  # same names, new content
    assert fad.fad(ref, gen, weights, cache=cache)["fad"]["bass"] > 1e-4


def test_fad_mix_files_and_bad_clips(weights, tmp_path):
    rng = np.random.default_rng(6)
    songs = [song(rng) for _ in range(2)]
    ref = write_set(tmp_path / "ref", songs)
    gen = write_set(tmp_path / "gen", songs)
    for k in range(len(songs)):  # mix files in gen (the clipped sum, stored as float): used instead of summing
        mix = np.clip(sum(sf.read(str(gen / f"song{k}" / f"{t}.wav"))[0] for t in TRACKS), -1, 1)
        sf.write(str(gen / f"song{k}" / "mix.wav"), mix, SR, subtype="FLOAT")
    (gen / "song1" / "drums.wav").write_bytes(b"RIFF broken")
    r = fad.fad(ref, gen, weights)
    assert r["mix_source"]["gen"] == "2 mix files, 0 sums of the tracks"
    assert r["fad"]["mix"] == pytest.approx(0.0, abs=1e-3)  # float32 rounding of the stored mix only
    assert any("gen song1 (drums)" in s for s in r["skipped"])
    assert r["frames"]["drums"] == [4, 2] and r["frames"]["mix"] == [4, 4]


def test_fad_skips_and_names_non_finite_files(weights, tmp_path, capsys):
    rng = np.random.default_rng(7)
    songs = [song(rng) for _ in range(3)]
    ref, gen = write_set(tmp_path / "ref", songs), write_set(tmp_path / "gen", songs)
    bad = gen / "song2" / "bass.wav"
    wave = sf.read(str(bad))[0]
    wave[100], wave[200] = np.nan, np.inf
    sf.write(str(bad), wave, SR, subtype="FLOAT")
    assert fad.main([str(ref), str(gen), "--vggish", str(weights)]) == 0
    out = capsys.readouterr().out
    assert f"{bad}: contains NaN or infinite samples" in out  # in the bass clip and in the summed mixture
    r = fad.fad(ref, gen, weights)
    assert r["frames"]["bass"] == [6, 4] and r["frames"]["mix"] == [6, 4] and r["frames"]["drums"] == [6, 6]
    assert r["fad"]["drums"] == pytest.approx(0.0, abs=1e-6) and np.isfinite(r["fad"]["bass"])


def test_fad_json_to_a_folder_fails_before_any_work(weights, tmp_path, capsys):
    assert fad.main([str(tmp_path), str(tmp_path), "--vggish", str(weights), "--json", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
