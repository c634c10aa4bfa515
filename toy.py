"""The laptop path: SyncTrack without MusicLDM's weights, on procedural toy songs or your own audio.

The paper's model diffuses MusicLDM latents (synctrack.py Part II). On a CPU with no downloads, this file supplies
what stands in for that pipeline, at toy scale:
  toy songs ......... toy_song, toy_tempo, ToyDataset: procedural 4-track songs (drums, bass, plucked guitar,
                      piano chords) on one tempo and meter, deterministic by seed; the toy model's data and ground truth
  toy first stage ... TOY_VAE_DDCONFIG: MusicLDM's VAE design at small width, the log-mel folded 4×4 into channels
                      (8× down in T and F); GriffinLim as its vocoder (no weights to train); trained by
                      `python train.py --stage vae` (vae_loss, vae_scale_factor); stored inside our checkpoints
                      (first_stage_state), so the shipped checkpoints/synctrack_toy.pt is one file
  offline stage ..... OfflineFirstStage: no weights at all, the normalised log-mel itself as the latent (tests)
  make_first_stage .. every first stage by name or file: "offline", one of our checkpoints (the toy VAE), or
                      MusicLDM's weights (synctrack.load_first_stage); build_first_stage fits a config to it
  EncodedClips ...... clips kept as their posterior under a learned first stage, encoded once (train.py on a CPU)

    python toy.py gt/ --n 64 --seed 7      # toy ground-truth clips in sample.py's layout, for metrics.py
"""
import argparse
import dataclasses
import math
import pathlib
import shutil

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as nnf
from tqdm import tqdm

import data
import synctrack as st
from synctrack import MEL_BINS, MEL_HOP, SAMPLE_RATE, TRACKS

# ---- Toy songs: drums, bass, guitar-like plucks and piano-like chords over one tempo and meter -----------------------


def _tempo(rng):
    """First draws of every toy song, so toy_tempo can recover them without rendering."""
    bpm = rng.uniform(105, 145)  # slower songs get double tempo from madmom on ~4% of 10 s tracks; these get none
    beats_per_bar = int(rng.choice([3, 4], p=[0.25, 0.75]))
    return bpm, beats_per_bar


def toy_tempo(seed):
    """(bpm, beats_per_bar) of toy_song(seed): the ground truth for beat-tracking checks. Beat k is at k·60/bpm s."""
    return _tempo(np.random.default_rng(seed))


def _tone(midi, seconds, decay, bright, sr):
    """A struck/plucked tone: harmonics 1/k·bright^k, higher ones dying faster, 1.5 ms attack for a crisp onset."""
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    k = np.arange(1, 9, dtype=np.float32)[:, None]
    k = k[k[:, 0] * f0 < sr / 2]  # stay below Nyquist
    x = (bright ** k / k * np.sin(2 * np.pi * k * f0 * t) * np.exp(-decay * np.sqrt(k) * t)).sum(0)
    x *= np.minimum(1, t / 0.0015) * np.minimum(1, (t[-1] - t) / 0.01)  # attack ramp, 10 ms fade-out at the cut
    return x / np.abs(x).max()


def toy_song(seed, seconds, sr=SAMPLE_RATE):
    """A random 4-track song, float32 (S, N), deterministic by seed.

    One tempo (105-145 BPM), meter (3/4 or 4/4), key and 4-bar chord loop per song. Every pitched track strikes every
    beat (plus random off-beats) and the drums play kick/snare/hat patterns, so a beat tracker finds the beat in each
    track alone.
    """
    rng = np.random.default_rng(seed)
    bpm, meter = _tempo(rng)
    n = int(round(seconds * sr))
    beat = 60 / bpm
    key = int(rng.integers(36, 48))  # tonic of the bass register, C2..B2
    scale = [0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10]  # major or natural minor
    chords = [0] + list(rng.choice([1, 2, 3, 4, 5], size=3))  # scale degrees, one chord per bar

    def pitch(degree, octave):  # MIDI note of a scale degree (may exceed 7) in an octave above the key
        return key + 12 * (octave + degree // 7) + scale[degree % 7]

    t = np.arange(int(0.3 * sr)) / sr
    noise = rng.standard_normal(len(t))
    kick = np.sin(2 * np.pi * np.cumsum(45 + 90 * np.exp(-t / 0.03)) / sr) * np.exp(-t / 0.1)
    snare = (0.7 * noise + 0.5 * np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.05)
    hat = np.diff(noise, prepend=0) * np.exp(-t / 0.012)  # first difference = crude high-pass
    out = np.zeros((len(TRACKS), n))  # (S, N)

    def hit(s, wave, start, gain):
        i = int(round(start * sr))
        if i < n:
            m = min(len(wave), n - i)
            out[s, i:i + m] += gain * wave[:m]

    # Per-song patterns on a 16th-note grid (4 steps per beat): which off-beat eighths also get a hit. They stay sparse
    # and soft: denser or louder off-beats make madmom lock onto eighth notes (double tempo) in the slower songs.
    steps = 4 * meter
    extra_kick, extra_hat, extra_bass = rng.random(steps) < 0.1, rng.random(steps) < 0.35, rng.random(steps) < 0.3
    extra_guitar, extra_piano = rng.random(steps) < 0.35, rng.random(steps) < 0.2
    snares = {1, 3} if meter == 4 else {1, 2}
    tones = {}  # cache: the same note is rendered once per song

    def note(s, midi, start, gain):
        length, decay, bright = {0: (beat, 6, 0.7), 2: (2 * beat, 9, 0.85), 3: (beat, 3, 0.6)}[s]
        if (s, midi) not in tones:
            tones[s, midi] = _tone(midi, length, decay, bright, sr)
        hit(s, tones[s, midi], start, gain)

    for bar in range(int(seconds / (meter * beat)) + 1):
        degree = chords[bar % 4]
        triad = [degree, degree + 2, degree + 4]
        for step in range(steps):
            start = (bar * steps + step) * beat / 4
            on_beat, eighth = step % 4 == 0, step % 2 == 0
            gain = (1.0 if step == 0 else 0.8 if on_beat else 0.4) * rng.uniform(0.9, 1.0)  # accent the downbeat
            if step == 0 or (meter == 4 and step == 8) or (eighth and extra_kick[step]):
                hit(1, kick, start, gain)
            if on_beat and step // 4 in snares:
                hit(1, snare, start, 0.9 * gain)
            if on_beat or (eighth and extra_hat[step]):
                hit(1, hat, start, 0.25 * gain)
            if on_beat or (eighth and extra_bass[step]):
                note(0, pitch(degree + (4 if not on_beat else 0), 0), start, gain)
            if on_beat or (eighth and extra_guitar[step]):
                note(2, pitch(triad[step // 2 % 3], 2), start, 0.8 * gain)
            if on_beat or (eighth and extra_piano[step]):
                for d in triad:
                    note(3, pitch(d, 3), start, gain / 3)

    # Each track to a fixed peak (keeps the usual balance), then one gain for all so the mixture never clips.
    out *= np.array([0.45, 0.5, 0.3, 0.35])[:, None] / np.abs(out).max(axis=1, keepdims=True)
    out *= min(1.0, 0.95 / np.abs(out.sum(0)).max())
    return out.astype(np.float32)


class ToyDataset(data.Clips):
    """Clips of `n_songs` toy songs of `song_clips`·clip_samples samples, generated once and held in memory.

    Training and validation songs differ for the same seed (the `train` flag is part of each song's seed).
    """

    def __init__(self, n_songs, clip_samples, seed=0, train=True, song_clips=2):
        self.clip_samples, self.seed, self.train = clip_samples, seed, train
        seeds = np.random.SeedSequence([seed, int(train)]).generate_state(n_songs)
        self.song_seeds = [int(s) for s in seeds]
        self.songs = np.stack([toy_song(s, song_clips * clip_samples / SAMPLE_RATE) for s in self.song_seeds])
        self._index([self.songs.shape[-1]] * n_songs)
        self.report = {"songs": n_songs, "kept": n_songs, "clips": len(self.clips), "dropped": [], "notes": []}

    def song(self, k):
        return self.songs[k]


# ---- First stages without MusicLDM weights ---------------------------------------------------------------------------

# The toy first stage: MusicLDM's VAE design, but the log-mel is first folded 4×4 into 16
# channels (pixel-unshuffle, as the offline stage), so its convolutions run at 1/16 of the positions: 8× down in T and
# F, latent 8 × 32 × 8 per 2.56 s track. Trained by `train.py --stage vae`, decoded by GriffinLim (no vocoder to
# train).
TOY_VAE_DDCONFIG = dict(double_z=True, z_channels=8, in_channels=16, out_ch=16, ch=64, ch_mult=[1, 2],
                        num_res_blocks=1, attn_resolutions=[], fold=4)
TOY_VAE_EMBED_DIM = 8


class GriffinLim(nn.Module):
    """A weight-free vocoder with HiFiGAN's interface: log-mel (B, F, T) -> waveform (B, 1, 160·T) by fast Griffin-Lim.

    The vocoder of the offline stage and of the toy VAE stage: no weights to train or download, but it sounds phasey.
    """

    momentum = 0.99  # fast Griffin-Lim (Perraudin et al., 2013) acceleration, torchaudio's default
    mel_ceiling = math.log(100.0)  # above the log-mel of any full-scale 16 kHz signal (its mel stays below ~30)

    def __init__(self, iters=32):
        super().__init__()
        self.iters = iters  # 32: spectral convergence about 0.15, about 2 s per 10.24 s track on 2 CPU cores
        basis = st.mel_filterbank(SAMPLE_RATE, st.MEL_N_FFT, MEL_BINS, 0.0, st.MEL_FMAX).astype(np.float64)
        # minimum-norm least-squares inverse of the filterbank: mel magnitudes -> linear STFT magnitudes
        # (numpy's pinv: torch.linalg.pinv takes ~100x longer on CPU for this 64 x 513 matrix)
        inverse = torch.from_numpy(np.linalg.pinv(basis)).float()  # (513, F)
        self.register_buffer("mel_inverse", inverse, persistent=False)
        self.register_buffer("window", torch.hann_window(st.MEL_N_FFT, periodic=True), persistent=False)

    def stft(self, x):  # (B, N) -> (B, 513, N / hop + 1), the front end's STFT
        return torch.stft(x, st.MEL_N_FFT, MEL_HOP, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)

    def _istft(self, spec, n_samples):  # (B, 513, N / hop + 1) -> (B, N)
        return torch.istft(spec, st.MEL_N_FFT, MEL_HOP, window=self.window, center=True, length=n_samples)

    def forward(self, mel):
        """Log-mel (B, F, T) -> waveform (B, 1, 160·T), from zero phase."""
        n_samples = mel.shape[-1] * MEL_HOP
        # 1. log-mel -> linear STFT magnitude: least squares through the filterbank, negatives clamped. A generated
        #    log-mel can leave the range of real audio; clamp it there so exp() stays finite.
        mel = mel.float().clamp(math.log(st.MEL_FLOOR), self.mel_ceiling)
        magnitude = (self.mel_inverse @ mel.exp()).clamp(min=0.0)  # (B, F, T) -> (B, 513, T)
        # 2. the front end dropped the last of the 1 + N/hop centred frames: repeat the final frame in its place
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)  # (B, 513, T + 1)
        spec = magnitude.to(torch.complex64)
        previous = torch.zeros_like(spec)
        for _ in range(self.iters):
            # 3. project onto consistent spectrograms (STFTs of some signal)
            rebuilt = self.stft(self._istft(spec, n_samples))
            # 4. momentum step, then keep the phase and impose the target magnitude
            accelerated = rebuilt + self.momentum * (rebuilt - previous)
            previous = rebuilt
            spec = magnitude * accelerated / accelerated.abs().clamp(min=1e-8)
        return self._istft(spec, n_samples).unsqueeze(1)  # (B, N) -> (B, 1, N)


class OfflineFirstStage(nn.Module):
    """Weight-free first stage for tests, used when no MusicLDM or toy VAE weights are given.

    The latent is the log-mel itself, normalised by fixed constants and folded 4×4 into channels (pixel-unshuffle):
    (T, 64) -> (16, T/4, 16), exactly invertible. Audio comes back through Griffin-Lim, so it sounds phasey. Every
    denoiser error is heard directly as broadband noise: a model worth listening to needs a learned first stage
    (the toy VAE stage above).
    """

    kind = "offline"
    latent_channels = 16
    fold = 4  # 4×4 patches, matching MusicLDM's 4× downsampling of T and F
    # Log-mel statistics of Slakh2100 (co-author variant config comment "mean: -4.63, std: 2.74"): unit-scale latents
    mel_mean, mel_std = -4.63, 2.74

    def __init__(self, griffin_lim_iters=32):
        super().__init__()
        self.griffin_lim_iters = griffin_lim_iters
        self.multiple = MEL_HOP * self.fold
        self.vocoder = GriffinLim(griffin_lim_iters)

    def latent_shape(self, n_samples):
        """(C, T, F) of one track's latent: (16, 256, 16) for 10.24 s."""
        if n_samples <= 0 or n_samples % self.multiple:
            raise ValueError(f"n_samples must be a positive multiple of {self.multiple}; got {n_samples}")
        return (self.latent_channels, n_samples // self.multiple, MEL_BINS // self.fold)

    def mel_to_latent(self, mel):  # (B, T, F) -> (B, 16, T/4, F/4)
        x = (mel - self.mel_mean) / self.mel_std
        return nnf.pixel_unshuffle(x.unsqueeze(1), self.fold)  # channel 4·(t mod 4) + (f mod 4): mel[4t' + ., 4f' + .]

    def latent_to_mel(self, z):  # (B, 16, T/4, F/4) -> (B, T, F), the exact inverse of mel_to_latent
        return nnf.pixel_shuffle(z, self.fold).squeeze(1) * self.mel_std + self.mel_mean

    @torch.no_grad()
    def encode(self, wave, sample=True, generator=None):
        """(B, S, N) waveform -> (B, S, 16, N/640, 16); deterministic, so `sample` and `generator` are ignored."""
        b, s, n = st.check_wave(wave, self.multiple)
        z = self.mel_to_latent(st.log_mel(wave.reshape(b * s, n)))  # (B·S, N) -> (B·S, T, F) -> (B·S, 16, T/4, F/4)
        return z.reshape(b, s, *z.shape[1:])  # (B·S, C, T, F) -> (B, S, C, T, F)

    @torch.no_grad()
    def decode(self, z):
        """(B, S, 16, T, 16) -> (B, S, N) waveform through Griffin-Lim, N = 640·T."""
        b, s = st.check_latent(z, self.latent_channels, MEL_BINS // self.fold)[:2]
        mel = self.latent_to_mel(z.flatten(0, 1))  # (B, S, C, T, F) -> (B·S, 4T, 64)
        wave = self.vocoder(mel.transpose(1, 2))  # (B·S, 64, 4T) -> (B·S, 1, N)
        return wave[:, 0].reshape(b, s, -1)  # (B·S, N) -> (B, S, N)


def first_stage_state(vae, scale_factor):
    """Our own first-stage record, stored under "first_stage" in a checkpoint: a VAE decoded by Griffin-Lim (the toy
    stage). Tensors and plain values only, so it loads with weights_only=True."""
    return dict(ddconfig=dict(vae.ddconfig), embed_dim=vae.embed_dim, vocoder="griffin-lim",
                scale_factor=float(scale_factor), vae=vae.state_dict())


def toy_vae_stage(record, path):
    """The toy stage (VAE + GriffinLim) from a first_stage_state record of the checkpoint `path`."""
    vae = st.AutoencoderKL(record["ddconfig"], record["embed_dim"])
    state = {k: v.float() for k, v in record["vae"].items()}  # exported files hold float16
    vae = st.load_strict(vae, state, f"{path} (first_stage.vae)")
    return st.MusicLDMFirstStage(vae, GriffinLim(), record["scale_factor"], kind="toy-vae")


def make_first_stage(spec, trust=False):
    """The frozen first stage named by `spec`: None or "offline" -> OfflineFirstStage; one of our checkpoints with a
    "first_stage" record -> the toy VAE stage; anything else (a Lightning .ckpt, a vae-ckpt + hifigan-ckpt folder) ->
    MusicLDM's VAE + HiFi-GAN. Every stage has `.kind`, the SyncTrackConfig.first_stage of models trained on it."""
    if spec is None or spec == "offline":
        return OfflineFirstStage()
    path = pathlib.Path(spec)
    if path.is_file():
        checkpoint = st.read_checkpoint(path, trust)
        if isinstance(checkpoint, dict) and "first_stage" in checkpoint:  # ours: the toy VAE (train.py --stage vae)
            return toy_vae_stage(checkpoint["first_stage"], path)
        return st.MusicLDMFirstStage(*st.load_first_stage(checkpoint, name=path))
    return st.MusicLDMFirstStage(*st.load_first_stage(path, trust))


TOY_FIRST_STAGE = pathlib.Path(__file__).resolve().parent / "checkpoints" / "synctrack_toy.pt"  # its toy VAE inside


def build_first_stage(cfg, spec=None, trust=False):
    """The frozen first stage of a SyncTrackConfig and the config with its latent grid (C, T, F) fitted to it. spec:
    what make_first_stage reads; None: the config's own, "offline" or the shipped toy VAE (TOY_FIRST_STAGE). MusicLDM
    latents have no default: ValueError."""
    spec = spec or {"offline": "offline", "toy-vae": TOY_FIRST_STAGE}.get(cfg.first_stage)
    if spec is None:
        raise ValueError(f"{cfg.first_stage} latents need the first stage's weights")
    stage = make_first_stage(spec, trust)
    C, T, F = stage.latent_shape(cfg.clip_samples)
    return stage, dataclasses.replace(cfg, first_stage=stage.kind, latent_channels=C,
                                      latent_downsampling=MEL_BINS // F, latent_time=T, latent_freq=F)


# ---- Clips encoded once: a learned first stage costs more than a toy denoiser step on a CPU -------------------------

class EncodedClips(torch.utils.data.Dataset):
    """Clips of a ToyDataset or SlakhDataset, kept as their first-stage posterior: item (2, S, C, T, F) =
    [mean, std] of the scaled latent, so a training step draws z = mean + std·ε (what stage.encode(sample=True) draws)
    without running the encoder again. For a learned first stage on a CPU, where the encoder costs more than a toy
    denoiser step. The clips are fixed: in every song, one starts every `hop` samples (default: the clip length, the
    validation grid; train.py trains on half a clip: neighbouring clips overlap by half). Keys wrap as in data.Clips."""

    def __init__(self, dataset, stage, batch_size=32, device="cpu", hop=None):
        c, hop = dataset.clip_samples, hop or dataset.clip_samples
        self.clips = [(k, o) for k, n in enumerate(dataset.lengths) for o in range(0, n - c + 1, hop)]  # (song, start)
        posteriors = []
        for i in tqdm(range(0, len(self.clips), batch_size), "encoding clips", leave=False, disable=None):
            wave = torch.from_numpy(np.stack([np.asarray(dataset.song(k)[:, o:o + c], np.float32)
                                              for k, o in self.clips[i:i + batch_size]]))  # (b, S, c)
            posteriors.append(torch.stack(stage.posterior(wave.to(device)), 1).cpu())  # (b, 2, S, C, T, F)
        self.posteriors = torch.cat(posteriors)
        self.report = {**dataset.report, "clips": len(self.clips)}  # the encoded clips, on their own grid

    def __len__(self):
        return len(self.posteriors)

    def __getitem__(self, key):
        return self.posteriors[key % len(self.posteriors)]


def latents(stage, batch, sample=True):
    """Eq. (1) for a batch of waveforms (B, S, N), or for cached posteriors (B, 2, S, C, T, F) from EncodedClips:
    z = mean + std·ε when sampling (the official training target), the mean otherwise."""
    if batch.dim() == 3:
        return stage.encode(batch, sample=sample)
    mean, std = batch.unbind(1)                                          # (B, 2, S, C, T, F) -> 2 × (B, S, C, T, F)
    return mean + std * torch.randn_like(std) if sample else mean


# ---- Training the toy VAE (train.py --stage vae, toy songs or Slakh): LDM's autoencoder objective, no GAN ------

def vae_loss(vae, mel, kl_weight):
    """LDM autoencoder objective without its GAN: L1(log-mel, VAE_dec(z)) + kl_weight · KL(q(z|mel) ‖ N(0, I)),
    both averaged per value; z is drawn from the posterior (reparameterised). Returns (loss, L1)."""
    mean, logvar = vae.encode(mel)                                       # (B, T, F) -> (B, C, T/d, F/d) each
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    l1 = (vae.decode(z) - mel).abs().mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
    return l1 + kl_weight * kl, l1


@torch.no_grad()
def vae_scale_factor(vae, waves):
    """LDM's scale_factor: 1 / std of the posterior means, so the denoiser sees latents of about unit variance."""
    mean, _ = vae.encode(st.log_mel(waves.flatten(0, 1)))                # (B, S, N) -> (B·S, T, F) -> (B·S, C, T, F)
    return 1.0 / mean.std().item()


@torch.no_grad()
def vae_validation(vae, waves):
    """On fixed clips (B, S, N): L1 of the posterior-mean round trip of their log-mels, and vae_scale_factor."""
    mel = st.log_mel(waves.flatten(0, 1))                                # (B, S, N) -> (B·S, T, F)
    mean, _ = vae.encode(mel)
    return dict(val_l1=(vae.decode(mean) - mel).abs().mean().item(), scale_factor=vae_scale_factor(vae, waves))


# ---- Command line: toy clips as files, e.g. the ground truth that metrics.py scores ---------------------------------

def write_toy(out, n, clip_samples, seed=0, first_stage=None, overwrite=False):
    """Write n validation clips of ToyDataset as pieces toy_NNNN in sample.py's layout (write_piece), refusing a
    non-empty `out` unless overwrite (output_folder). With a first stage, each clip goes through encode → decode first
    (what its latents can at best give back)."""
    folder = data.output_folder(out, overwrite)
    clips = ToyDataset(n_songs=math.ceil(n / 2), clip_samples=clip_samples, seed=seed, train=False)
    stage = make_first_stage(first_stage) if first_stage else None
    try:
        for i in tqdm(range(n), "writing", unit="clip", leave=False, disable=None):
            wave = clips[i]                                                 # (S, c)
            if stage is not None:
                wave = stage.decode(stage.encode(wave[None], sample=False))[0]
            data.write_piece(folder, f"toy_{i:04d}", wave.numpy())
    except BaseException:
        if folder != pathlib.Path(out).absolute():  # a half-written replacement is ours to remove; `out` is untouched
            shutil.rmtree(folder, ignore_errors=True)
        raise
    data.finish_output(folder, out)


def main(argv=None):
    p = argparse.ArgumentParser(description="Write toy validation clips (the toy model's ground truth) in sample.py's "
                                            "layout: stem_0..stem_3, bass/drums/guitar/piano links, mix.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="output folder: absent or empty, or replaced whole with --overwrite")
    p.add_argument("--n", type=int, default=16, help="how many clips")
    p.add_argument("--clip-samples", type=int, default=40960, help="samples per clip (the toy preset's 2.56 s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation songs (ToyDataset)")
    p.add_argument("--first-stage", help="'offline' (or weights): write encode → decode round trips instead")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT (only once the new one is whole)")
    args = p.parse_args(argv)
    if args.n < 1 or args.clip_samples < 1:
        raise SystemExit(f"--n and --clip-samples must be at least 1; got {args.n} and {args.clip_samples}")
    try:
        write_toy(args.out, args.n, args.clip_samples, args.seed, args.first_stage, args.overwrite)
    except OSError as e:  # a non-empty OUT, a full disk: one line naming the folder or file
        raise SystemExit(str(e)) from None
    print(f"wrote {args.n} toy clips to {args.out}/ (stem_0..stem_3, bass/drums/guitar/piano, mix)")


if __name__ == "__main__":
    main()
