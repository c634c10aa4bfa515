"""toy.py: toy songs and their clips, the small learned first stage (train.py --stage vae) under the denoiser,
shipped inside one checkpoint, and `python toy.py` (toy clips as files)."""
import json
import pathlib

import numpy as np

import pytest
import torch

import data
import sample
import synctrack as st
import toy
import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "synctrack_toy.pt"
TINY = ["--preset", "tiny", "--data", "toy", "--toy-songs", "8", "--batch-size", "2", "--log-every", "1",
        "--threads", "1"]


def small_vae(seed=0):
    torch.manual_seed(seed)
    return st.AutoencoderKL({**toy.TOY_VAE_DDCONFIG, "ch": 32}, toy.TOY_VAE_EMBED_DIM).eval()


def log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_folded_vae_shapes_and_fold_one_is_musicldm():
    vae = small_vae()
    mel = torch.randn(3, 256, 64)
    mean, logvar = vae.encode(mel)
    assert mean.shape == logvar.shape == (3, 8, 32, 8) and vae.downsampling == 8  # fold 4 × one 2× level
    assert vae.decode(mean).shape == mel.shape
    with pytest.raises(ValueError, match="fold"):
        st.AutoencoderKL({**toy.TOY_VAE_DDCONFIG, "in_channels": 1}, 8)
    assert st.AutoencoderKL(st.MUSICLDM_DDCONFIG, 8).downsampling == 4


def test_first_stage_record_round_trip_and_export(tmp_path):
    vae = small_vae()
    torch.save({"first_stage": toy.first_stage_state(vae, 0.5)}, tmp_path / "vae.pt")
    stage = toy.make_first_stage(tmp_path / "vae.pt")
    assert stage.kind == "toy-vae" and isinstance(stage.vocoder, toy.GriffinLim) and stage.scale_factor == 0.5
    z = torch.randn(2, 8, 32, 8)
    with torch.no_grad():
        assert torch.equal(stage.vae.decode(z), vae.decode(z))
    model = st.SyncTrack(st.SyncTrackConfig(**{**st.PRESETS["toy"]}))
    st.save_checkpoint(tmp_path / "run.pt", model, first_stage=toy.first_stage_state(vae, 0.5), scale_factor=0.5)
    st.export_checkpoint(tmp_path / "run.pt", tmp_path / "small.pt")
    shipped = torch.load(tmp_path / "small.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in shipped["first_stage"]["vae"].values())
    half = toy.make_first_stage(tmp_path / "small.pt").vae  # float16 weights come back as float32
    with torch.no_grad():
        assert (half.decode(z) - vae.decode(z)).abs().max() < 1e-2


def test_encoded_clips_hold_the_posterior_of_every_clip():
    vae = small_vae()
    stage = st.MusicLDMFirstStage(vae, toy.GriffinLim(1), 0.3)
    clips = toy.ToyDataset(2, 10240, seed=3, train=False)
    encoded = toy.EncodedClips(clips, stage, batch_size=3)
    assert len(encoded) == len(clips) == 4 and encoded[1].shape == (2, 4, 8, 8, 8)  # [mean, std] × (S, C, T, F)
    wave = clips[1][None]                                                      # (1, S, N)
    assert torch.allclose(encoded[1][0], stage.encode(wave, sample=False)[0], atol=1e-6)
    assert torch.equal(toy.latents(stage, encoded[1][None], sample=False)[0], encoded[1][0])
    draws = torch.stack([toy.latents(stage, encoded[1][None])[0] for _ in range(200)])
    assert torch.allclose(draws.std(0).mean(), encoded[1][1].mean(), rtol=0.1)  # z = mean + std·ε


def test_vae_stage_learns_and_the_denoiser_trains_and_samples_on_it(tmp_path):
    vae_run, run, out = tmp_path / "vae", tmp_path / "run", tmp_path / "samples"
    train.main(TINY + ["--stage", "vae", "--steps", "40", "--val-every", "20", "--out", str(vae_run)])
    val = [r["val_l1"] for r in log(vae_run) if "val_l1" in r]
    assert len(val) == 2 and val[-1] < 0.8 * val[0], val                    # reconstruction improves
    stage = toy.make_first_stage(vae_run / "ckpt.pt")
    assert isinstance(stage.vocoder, toy.GriffinLim) and stage.latent_shape(10240) == (8, 8, 8)
    train.main(TINY + ["--steps", "4", "--first-stage", str(vae_run / "ckpt.pt"), "--out", str(run),
                       "--export", str(tmp_path / "toy.pt")])
    ckpt = torch.load(tmp_path / "toy.pt", weights_only=True)
    cfg = st.SyncTrackConfig.from_dict(ckpt["config"])
    assert cfg.first_stage == "toy-vae" and cfg.latent_shape == (4, 8, 8, 8) and "first_stage" in ckpt
    sample.main(["--ckpt", str(tmp_path / "toy.pt"), "--n", "1", "--steps", "2", "--out", str(out)])
    assert len(list((out / "stem_0").glob("*.wav"))) == 1


def test_toy_song_is_deterministic_and_levelled():
    x = toy.toy_song(3, 2.0)
    assert x.shape == (len(data.TRACKS), 32000) and x.dtype == np.float32  # (S, N)
    np.testing.assert_array_equal(x, toy.toy_song(3, 2.0))
    assert not np.array_equal(x, toy.toy_song(4, 2.0))
    assert (np.abs(x).max(axis=1) > 0.1).all()  # every track plays
    assert np.abs(x.sum(0)).max() <= 0.95 + 1e-6  # the mixture does not clip
    bpm, meter = toy.toy_tempo(3)
    assert 105 <= bpm <= 145 and meter in (3, 4)


def test_toy_song_drums_hit_the_known_beat():
    """Drum onsets (energy jumps) fall on k·60/bpm, the ground truth toy_tempo gives the rhythm metrics."""
    seed, sr = 5, data.SAMPLE_RATE
    bpm, _ = toy.toy_tempo(seed)
    drums = toy.toy_song(seed, 4.0)[1]
    for k in range(1, int(4.0 * bpm / 60)):
        i = int(round(k * 60 / bpm * sr))
        assert np.abs(drums[i:i + 160]).max() > 4 * np.abs(drums[i - 400:i - 80]).max()  # 10 ms after vs before


def test_toy_dataset_clips():
    train = toy.ToyDataset(3, 8000, seed=0, train=True)
    val = toy.ToyDataset(3, 8000, seed=0, train=False)
    assert len(train) == len(val) == 3 * 2  # two grid clips per song
    x = train[0]
    assert x.shape == (len(data.TRACKS), 8000) and x.dtype == torch.float32  # (S, c)
    # Training: the same key gives the same clip, the next epoch's key (i + len) a different one.
    assert torch.equal(train[0], toy.ToyDataset(3, 8000, seed=0, train=True)[0])
    assert not torch.equal(train[0], train[len(train)])
    # Validation: a fixed grid, clip j of song k starts at j·c.
    assert torch.equal(val[1], val[1])
    assert torch.equal(val[1], torch.from_numpy(val.songs[0][:, 8000:2 * 8000]))
    assert not np.array_equal(train.songs, val.songs)  # held-out songs


def test_toy_main_writes_the_sample_layout_and_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "gt"
    toy.main([str(out), "--n", "2", "--clip-samples", "8000"])
    assert f"wrote 2 toy clips to {out}" in capsys.readouterr().out
    for folder in data.LAYOUT_FOLDERS:
        assert sorted(p.name for p in (out / folder).iterdir()) == ["toy_0000.wav", "toy_0001.wav"], folder
    assert (out / "piano" / "toy_0001.wav").resolve() == (out / "stem_3" / "toy_0001.wav").resolve()
    first = (out / "mix" / "toy_0000.wav").read_bytes()
    with pytest.raises(SystemExit, match="not empty"):
        toy.main([str(out), "--n", "1", "--clip-samples", "8000"])
    assert (out / "mix" / "toy_0000.wav").read_bytes() == first and (out / "mix" / "toy_0001.wav").exists()
    toy.main([str(out), "--n", "1", "--clip-samples", "8000", "--overwrite"])
    assert sorted(p.name for p in (out / "mix").iterdir()) == ["toy_0000.wav"]


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped toy checkpoint")
def test_shipped_toy_first_stage_reconstructs_held_out_clips():
    """The shipped VAE on toy songs it never saw (seed 123): log-mel L1 of the posterior-mean round trip."""
    stage = toy.make_first_stage(SHIPPED)
    vae, scale = stage.vae, stage.scale_factor
    clips = toy.ToyDataset(8, 40960, seed=123, train=False)
    mel = st.log_mel(torch.stack([clips[i] for i in range(8)]).flatten(0, 1))  # (8·S, T, F)
    with torch.no_grad():
        mean, _ = vae.encode(mel)
        rebuilt = vae.decode(mean)
    loud = mel > -6                                                             # the notes, not the silence floor
    assert (rebuilt - mel).abs().mean() < TOY_VAE_L1 and (rebuilt - mel)[loud].abs().mean() < TOY_VAE_LOUD_L1
    assert 0.6 < (scale * mean).std().item() < 1.6                             # about unit variance (LDM scale_factor)


# Measured on the shipped first stage (runs/toy-vae, 2400 steps; README "The toy model"): L1 0.267 overall, 0.335 on
# loud bins (natural-log mel units). The bounds are about 1.5× those.
TOY_VAE_L1, TOY_VAE_LOUD_L1 = 0.4, 0.5


def test_encoded_clips_on_a_grid_with_overlap():
    stage = st.MusicLDMFirstStage(small_vae(), toy.GriffinLim(1), 0.3)
    clips = toy.ToyDataset(2, 10240, seed=3, train=False)                       # songs of 2 clips
    encoded = toy.EncodedClips(clips, stage, hop=5120)
    assert encoded.clips == [(0, 0), (0, 5120), (0, 10240), (1, 0), (1, 5120), (1, 10240)]
    wave = torch.from_numpy(clips.songs[0][None, :, 5120:15360])                # (1, S, c) starting half a clip in
    assert torch.allclose(encoded[1][0], stage.encode(wave, sample=False)[0], atol=1e-6)


def test_student_path_on_a_slakh_folder_without_weights(tmp_path, monkeypatch, capsys):
    """`--data slakh/` without MusicLDM weights names the CPU path; on it the toy first stage trains on the user's own
    songs (MSDM layout, a silent stem flagged), then the denoiser on clips it encodes once."""
    import soundfile as sf
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    slakh = tmp_path / "slakh"
    for song in range(2):
        for s, track in enumerate(data.TRACKS):
            wave = toy.toy_song(song, 1.5)[s] * (track != "guitar")              # guitar.wav: all zeros
            (slakh / f"Track0000{song}").mkdir(parents=True, exist_ok=True)
            sf.write(slakh / f"Track0000{song}" / f"{track}.wav", wave, data.SAMPLE_RATE)
    with pytest.raises(SystemExit, match=r"give --init musicldm-ckpt.ckpt.*`python train.py --stage vae --data "
                                         rf"{slakh}` trains a toy first stage on your data"):
        train.main(["--data", str(slakh), "--train-split", ".", "--val-split", ".", "--out", str(tmp_path / "x")])
    split = ["--data", str(slakh), "--train-split", ".", "--val-split", "."]
    vae_run, run = tmp_path / "vae", tmp_path / "run"
    train.main(TINY + split + ["--stage", "vae", "--steps", "2", "--out", str(vae_run)])
    report = json.loads((vae_run / "data_report.json").read_text())
    silent = f"{slakh}/Track00000: guitar is all zeros in its source file(s); guitar is silent"
    assert silent in report["train"]["notes"]
    capsys.readouterr()
    train.main(TINY + split + ["--steps", "2", "--first-stage", str(vae_run / "ckpt.pt"), "--out", str(run)])
    assert "6 training clips (encoded once, starts every 5120 samples)" in capsys.readouterr().out  # 24000 samples
    config = torch.load(run / "ckpt.pt", weights_only=True)["config"]
    assert st.SyncTrackConfig.from_dict(config).first_stage == "toy-vae"
