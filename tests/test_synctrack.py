"""The denoiser, the diffusion loss, DDIM and checkpoint loading (issue: synctrack.py core)."""
import pathlib
from dataclasses import asdict

import pytest
import torch

import synctrack as st

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def tiny(**overrides):
    return st.SyncTrackConfig(**{**st.PRESETS["tiny"], **overrides})


def randomize(model, seed=0):
    """Give every parameter (zero-initialised ones too) random values, so every path of the model matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def official_keys():
    lines = (FIXTURES / "official_unet_keys.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines if not line.startswith("#")]
    return {key: tuple(int(n) for n in shape.strip("()").split(",") if n.strip()) for key, shape in rows}


# ---------------------------------------------------------------------------------------------------------------------
# Architecture: Table A3 and the official key contract
# ---------------------------------------------------------------------------------------------------------------------

# Table A3 of the paper, rows 4-7 … 4-33 (Param # per UNet block); the official code matches every row
# (the official UNetModel of mathwanghr/SyncTrack@7bbb18b, openaimodel.py, built with config/synctrack_train.yaml).
TABLE_A3_INPUT = [9_344, 426_880, 426_880, 147_584, 3_681_280, 3_943_424, 590_080, 8_323_712, 8_667_648,
                  1_327_488, 22_392_448, 23_621_120]
TABLE_A3_MIDDLE = [8_032_640, 15_588_480, 8_032_640]
TABLE_A3_OUTPUT = [28_128_640, 28_128_640, 30_176_768, 11_274_368, 10_290_816, 11_126_528, 4_993_024, 4_665_088,
                   4_927_232, 771_584, 607_488, 607_488]


@pytest.fixture(scope="module")
def paper_model():
    with torch.device("meta"):  # shapes only: no memory, no time
        return st.SyncTrack(st.SyncTrackConfig())


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_table_a3(paper_model):
    m = paper_model
    assert count(m) == 241_314_696                                    # Table A3 total (trainable)
    assert m.instrument_prior.one_hot.numel() == 16                    # the frozen 4×4 one-hot, a buffer
    assert [count(b) for b in m.input_blocks] == TABLE_A3_INPUT
    assert [count(layer) for layer in m.middle_block] == TABLE_A3_MIDDLE
    assert [count(b) for b in m.output_blocks] == TABLE_A3_OUTPUT
    assert [count(layer) for layer in m.time_embed if count(layer)] == [66_048, 262_656]             # rows 4-1, 4-3
    assert [count(layer) for layer in m.instrument_prior.mlp if count(layer)] == [1_152, 66_048]     # rows 4-4, 4-6
    assert [count(layer) for layer in m.out if count(layer)] == [256, 9_224]                          # rows 4-34, 4-36


def test_track_specific_and_shared_labels_follow_table_a3(paper_model):
    specific = lambda blocks: [isinstance(b, st.TrackSpecificModule) for b in blocks]
    assert specific(paper_model.input_blocks) == [True] * 3 + [False] * 9      # rows 4-7..4-9 specific
    assert specific(paper_model.output_blocks) == [False] * 9 + [True] * 3     # rows 4-31..4-33 specific


def test_every_official_key_maps_to_ours_with_its_shape(paper_model):
    ours = {k: tuple(v.shape) for k, v in paper_model.state_dict().items()}
    theirs = {st.official_to_ours(k): shape for k, shape in official_keys().items()}
    assert len(theirs) == 997
    assert theirs == ours


def test_config_from_official_and_ablations_build():
    cfg = st.official_config(torch.load(FIXTURES / "unet_official_small.pt", weights_only=False)["unet_config"])
    assert (cfg.variant, cfg.model_channels, cfg.channel_mult, cfg.head_channels) == ("official", 32, (1, 1, 1, 1), 16)
    x, t = torch.randn(1, 4, 16, 16, 16), torch.tensor([10])
    for flags in [dict(instrument_prior=False), dict(global_attention=False), dict(time_attention=False),
                  dict(reorder=True), dict(alternate=True)]:
        assert st.SyncTrack(tiny(**flags))(x, t).shape == x.shape
    alt = st.SyncTrack(tiny(alternate=True, attention_ds=(1, 2)))
    kinds = [(b.global_attn is not None, b.time_attn is not None) for b in alt.modules()
             if isinstance(b, st.TrackSharedTransformer)]
    assert kinds[:4] == [(True, False), (False, True), (True, False), (False, True)]
    with pytest.raises(ValueError, match="variant"):
        st.SyncTrackConfig(variant="eq5")


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the official UNet
# ---------------------------------------------------------------------------------------------------------------------

def test_official_variant_reproduces_the_official_unet():
    """Fixture unet_official_small.pt: the official UNetModel's ε output for latent x at t = 500 (B = 1)."""
    ref = torch.load(FIXTURES / "unet_official_small.pt", weights_only=False)
    model = st.SyncTrack(st.official_config(ref["unet_config"])).eval()
    report = st.load_official(model, {"state_dict": ref["state_dict"]})
    assert report["loaded"] == len(ref["state_dict"]) and report["new"] == []
    with torch.no_grad():
        out = model(ref["x"].float(), ref["t"])
    assert (out - ref["out"]).abs().max() < 1e-4   # measured 4.5e-6


def test_reorder_changes_the_function():
    model = randomize(st.SyncTrack(tiny()))
    reordered = st.SyncTrack(tiny(reorder=True)).eval()
    reordered.load_state_dict(model.state_dict())
    x, t = torch.randn(1, 4, 16, 16, 16), torch.tensor([100])
    with torch.no_grad():
        assert not torch.allclose(model(x, t), reordered(x, t), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["paper", "official"])
def test_samples_are_independent(variant):
    model = randomize(st.SyncTrack(tiny(variant=variant)))
    x, t = torch.randn(3, 4, 16, 16, 16), torch.tensor([5, 500, 900])
    with torch.no_grad():
        out = model(x, t)
        x2 = x.clone()
        x2[1] = torch.randn_like(x2[1])
        out2 = model(x2, t)
        single = model(x[:1], t[:1])
    assert torch.allclose(out[0], out2[0], atol=1e-5) and torch.allclose(out[2], out2[2], atol=1e-5)
    assert not torch.allclose(out[1], out2[1], atol=1e-3)
    assert torch.allclose(out[:1], single, atol=1e-5)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_without_instrument_prior_tracks_are_exchangeable(variant):
    perm = torch.tensor([2, 0, 3, 1])
    x, t = torch.randn(2, 4, 16, 16, 16), torch.tensor([30, 700])
    with torch.no_grad():
        plain = randomize(st.SyncTrack(tiny(variant=variant, instrument_prior=False)))
        assert torch.allclose(plain(x[:, perm], t), plain(x, t)[:, perm], atol=1e-5)
        prior = randomize(st.SyncTrack(tiny(variant=variant)))
        assert not torch.allclose(prior(x[:, perm], t), prior(x, t)[:, perm], atol=1e-3)


def test_paper_time_attention_mixes_frequencies_official_does_not():
    """Eq. (5) attends over all F at time t; the official layer only over the tracks at the same (t, f)."""
    for variant, mixes in [("paper", True), ("official", False)]:
        layer = st.TimeCrossTrackAttention(32, 2, 4, variant)
        x = torch.randn(4, 8 * 4, 32)                          # (B*S, L, C) with T = 8, F = 4
        y = layer(x, 8, 4)
        x2 = x.clone()
        x2[1, 8 * 0 + 3] += 1.0                                # track 1 at (t=0, f=3)
        delta = (layer(x2, 8, 4) - y).abs().sum(-1).reshape(4, 8, 4)
        assert delta[0, 0, 3] > 0 and (delta[:, 1:] == 0).all()  # same t only
        assert (delta[0, 0, 0] > 0) == mixes


# ---------------------------------------------------------------------------------------------------------------------
# Diffusion
# ---------------------------------------------------------------------------------------------------------------------

def test_schedule_matches_official_values():
    a = st.alpha_bar_schedule(st.SyncTrackConfig())
    # official make_beta_schedule('linear') (mathwanghr/SyncTrack@7bbb18b diffusionmodules/util.py): ᾱ_0 = 0.9985,
    # ᾱ_499 = 0.1158, ᾱ_999 = 1.423e-4
    assert a[0].item() == pytest.approx(0.9985, abs=1e-4)
    assert a[499].item() == pytest.approx(0.1158, abs=1e-4)
    assert a[999].item() == pytest.approx(1.423e-4, rel=1e-3)
    steps = st.ddim_timesteps(1000, 200)
    assert steps[:2].tolist() == [1, 6] and steps[-1].item() == 996 and len(steps) == 200
    assert st.ddim_timesteps(1000, 999)[-1].item() == 999
    with pytest.raises(ValueError, match="steps"):
        st.ddim_timesteps(1000, 1000)                            # the +1 shift would step past ᾱ_999


def test_ddim_timesteps_cover_the_range_for_any_step_count():
    # official `make_ddim_timesteps` for divisors of 1000: arange(0, 1000, 1000 // steps) + 1
    for steps in (10, 50, 100, 200, 250, 500):
        assert torch.equal(st.ddim_timesteps(1000, steps), torch.arange(0, 1000, 1000 // steps) + 1)
    for steps in (150, 300, 400, 600, 999):                  # non-divisors: still start near l = 999 (x_T is noise)
        ts = st.ddim_timesteps(1000, steps)
        assert len(ts) == steps and len(set(ts.tolist())) == steps
        assert ts[0].item() == 1 and ts[-1].item() >= 1000 - 1000 // steps
    assert st.ddim_timesteps(1000, 400)[-1].item() == 998    # was 799 with i·(1000 // 400) + 1


def test_backbone_keeps_every_shape_of_the_full_model():
    """Table 6 Backbone (no prior) must take MusicLDM / SyncTrack weights: same shape for every shared key."""
    full = st.SyncTrack(tiny()).state_dict()
    backbone = st.SyncTrack(tiny(instrument_prior=False)).state_dict()
    assert set(backbone) == {k for k in full if ".instrument_prior." not in f".{k}"}
    assert all(backbone[k].shape == full[k].shape for k in backbone)


class Oracle(torch.nn.Module):
    """A 'denoiser' that returns the noise consistent with a fixed clean latent z0."""

    def __init__(self, z0, config):
        super().__init__()
        self.z0, self.config = z0, config
        self.register_buffer("alphas_cumprod", st.alpha_bar_schedule(config))
        self.inputs = []

    def forward(self, x, t):
        self.inputs.append((x.clone(), t.clone()))
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        return (x - a.sqrt() * self.z0) / (1 - a).sqrt()


def test_ddim_with_the_true_noise_returns_z0():
    cfg = tiny()
    z0, x_T = torch.randn(2, 4, 16, 16, 16), torch.randn(2, 4, 16, 16, 16)
    oracle = Oracle(z0, cfg)
    out = st.ddim_sample(oracle, x_T, steps=20, eta=0.0)
    a, a_T = oracle.alphas_cumprod[0], oracle.alphas_cumprod[951]
    eps = (x_T - a_T.sqrt() * z0) / (1 - a_T).sqrt()
    # official convention: the last step lands on level ᾱ_0 (not ᾱ = 1), so z = √ᾱ_0 z0 + √(1−ᾱ_0) ε
    assert torch.allclose(out, a.sqrt() * z0 + (1 - a).sqrt() * eps, atol=1e-4)
    assert oracle.inputs[0][1].tolist() == [951, 951]                  # 20 steps of 1000: 951, 901, …, 1


def test_ddim_eta0_matches_an_independent_float64_loop():
    model = randomize(st.SyncTrack(tiny()), seed=1)
    x_T = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = st.ddim_sample(model, x_T, steps=4, eta=0.0)
    # Song et al. (2021) Eq. 12 with σ = 0, written out in float64 over the steps 751, 501, 251, 1
    a = st.alpha_bar_schedule(model.config).double()
    x = x_T.double()
    for t, t_prev in [(751, 501), (501, 251), (251, 1), (1, 0)]:
        with torch.no_grad():
            e = model(x.float(), torch.tensor([t])).double()
        x = a[t_prev].sqrt() * (x - (1 - a[t]).sqrt() * e) / a[t].sqrt() + (1 - a[t_prev]).sqrt() * e
    assert torch.allclose(ours.double(), x, atol=1e-4)


def test_ddim_is_deterministic_under_a_generator_and_stochastic_with_eta():
    model = randomize(st.SyncTrack(tiny()), seed=2)
    x_T = torch.randn(1, 4, 16, 16, 16)
    run = lambda seed: st.ddim_sample(model, x_T, steps=3, eta=1.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0)) and not torch.allclose(run(0), run(1))


def test_ddim_with_one_generator_per_row_makes_each_row_independent_of_its_batch():
    """Per-piece seeds (sample.py): row b draws all its noise (arrangement and η > 0 steps) from generator b only, so it
    equals the same row sampled alone, and a one-element list equals the generator itself."""
    model = randomize(st.SyncTrack(tiny()), seed=3)
    x_T = torch.randn(3, 4, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    known, mask = torch.randn(3, 4, 16, 16, 16), torch.tensor([False, True, False, False])
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]
    run = lambda rows, g: st.ddim_sample(model, x_T[rows], steps=3, eta=1.0, known=known[rows], known_mask=mask,
                                         generator=g)
    batch = run(slice(0, 3), gens(10, 11, 12))
    alone = run(slice(2, 3), gens(12))
    assert torch.allclose(batch[2:], alone, atol=1e-5)
    assert torch.equal(alone, run(slice(2, 3), torch.Generator().manual_seed(12)))
    assert not torch.allclose(batch[:1], run(slice(0, 1), gens(99)))  # the generator does decide the row


def test_key_map_drops_the_official_placeholder_layers():
    """The official Dropout(0)s and one-layer Sequentials hold index slots our modules do not have: the map shifts
    exactly those indices and nothing else (names from the official UNet, tests/fixtures/official_unet_keys.tsv)."""
    block = "output_blocks.5.1.transformer_blocks.0."
    assert st.official_to_ours("input_blocks.1.0.out_layers.3.weight") == "input_blocks.1.0.out_layers.2.weight"
    assert st.official_to_ours("input_blocks.1.0.out_layers.0.weight") == "input_blocks.1.0.out_layers.0.weight"
    assert st.official_to_ours(block + "attn1.to_out.0.bias") == "output_blocks.5.1.attn1.to_out.bias"
    assert st.official_to_ours(block + "attn_cross_track.to_out.0.weight") == \
        "output_blocks.5.1.global_attn.attn.to_out.weight"
    assert st.official_to_ours(block + "ff.net.0.proj.weight") == "output_blocks.5.1.ff.0.proj.weight"
    assert st.official_to_ours(block + "ff.net.2.weight") == "output_blocks.5.1.ff.1.weight"
    ours = "output_blocks.5.1.time_attn.in_proj.weight"
    assert st.official_to_ours(block + "attn_beat.self_attn.in_proj_weight") == ours
    assert st.official_to_ours("out.2.weight") == "out.2.weight"  # a real index (GN, SiLU, conv) is left alone


def test_arrangement_holds_the_known_tracks_at_every_step():
    cfg = tiny()
    known = torch.randn(1, 4, 16, 16, 16)
    oracle = Oracle(torch.zeros_like(known), cfg)
    mask = torch.tensor([False, True, True, False])          # drums and guitar given
    out = st.ddim_sample(oracle, torch.randn_like(known), steps=10, eta=1.0, known=known, known_mask=mask,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, mask], known[:, mask])
    for x, t in oracle.inputs:                               # every model input holds q(z_t | known) on those tracks
        a = oracle.alphas_cumprod[t]
        residual = (x[:, mask] - a.sqrt() * known[:, mask]) / (1 - a).sqrt()
        assert abs(residual.std().item() - 1) < 0.1 and abs(residual.mean().item()) < 0.1
    assert not torch.equal(out[:, ~mask], known[:, ~mask])


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = st.SyncTrack(tiny())
    z0 = torch.randn(2, 4, 16, 16, 16) * 0.5
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = st.diffusion_loss(model, z0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------

def test_load_official_prefers_ema_and_reports_problems(tmp_path):
    ref = torch.load(FIXTURES / "unet_official_small.pt", weights_only=False)
    state = dict(ref["state_dict"])
    key = "model.diffusion_model.out.2.bias"
    state["model_ema." + key[len("model."):].replace(".", "")] = torch.full_like(state[key], 7.0)
    state["scale_factor"] = torch.tensor(0.5)
    model = st.SyncTrack(st.official_config(ref["unet_config"]))
    report = st.load_official(model, {"state_dict": state})
    assert report["source"] == "ema" and report["scale_factor"] == 0.5
    assert torch.all(model.out[2].bias == 7.0)
    st.load_official(model, {"state_dict": state}, ema=False)
    assert torch.equal(model.out[2].bias, state[key].float())

    broken = {k: v for k, v in ref["state_dict"].items() if "out.2.weight" not in k}
    broken["model.diffusion_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing: out\.2\.weight.*unexpected: extra\.weight"):
        st.load_official(model, {"state_dict": broken})
    with pytest.raises(KeyError, match="not a SyncTrack or MusicLDM"):
        st.load_official(model, {"state_dict": {"foo": torch.zeros(1)}})


def test_musicldm_init_reports_new_modules_and_drops_film(tmp_path):
    ref = torch.load(FIXTURES / "unet_official_small.pt", weights_only=False)
    musicldm = {k: v for k, v in ref["state_dict"].items()
                if not any(s in k for s in ("switcher", "attn_cross_track", "norm_ct", "attn_beat"))}
    musicldm["model.diffusion_model.film_emb.weight"] = torch.zeros(128, 128)
    model = st.SyncTrack(st.official_config(ref["unet_config"]))
    report = st.load_official(model, {"state_dict": musicldm})
    assert report["ignored"] == ["film_emb.weight"]
    assert any(k.startswith("instrument_prior.mlp") for k in report["new"])
    assert any(".global_attn." in k for k in report["new"]) and any(".time_attn." in k for k in report["new"])
    assert report["loaded"] + len(report["new"]) == len(model.state_dict())


def test_pickled_checkpoints_need_trust(tmp_path):
    ref = torch.load(FIXTURES / "unet_official_small.pt", weights_only=False)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": ref["state_dict"], "hyper_parameters": {"cfg": object.__new__(Oracle)}}, path)
    model = st.SyncTrack(st.official_config(ref["unet_config"]))
    with pytest.raises(ValueError, match="trust"):
        st.load_official(model, str(path))
    assert st.load_official(model, str(path), trust=True)["loaded"] == len(ref["state_dict"])


def test_our_checkpoint_rebuilds_from_its_config(tmp_path):
    model = randomize(st.SyncTrack(tiny(variant="official", reorder=True)))
    path = tmp_path / "ckpt.pt"
    st.save_checkpoint(path, model, ema=model.state_dict(), step=3)
    loaded, ckpt = st.load_model(path)
    assert loaded.config == model.config and ckpt["step"] == 3
    x, t = torch.randn(1, 4, 16, 16, 16), torch.tensor([9])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_config_derives_the_latent_grid():
    assert st.SyncTrackConfig().latent_shape == (4, 8, 256, 16)              # 163840 / 160 / 4, 64 / 4
    assert st.SyncTrackConfig(**st.PRESETS["toy"]).latent_shape == (4, 8, 32, 8)  # 40960 / 160 / 8, 64 / 8
    saved = asdict(st.SyncTrackConfig(**st.PRESETS["toy"]))  # T and F given, as a checkpoint stores them
    assert st.SyncTrackConfig.from_dict(saved) == st.SyncTrackConfig(**st.PRESETS["toy"])
    with pytest.raises(ValueError, match="does not match clip_samples"):
        st.SyncTrackConfig(latent_time=128)
    with pytest.raises(ValueError, match="unknown SyncTrackConfig keys: \\['sample_rate'\\]"):
        st.SyncTrackConfig.from_dict({**saved, "sample_rate": 16000})
