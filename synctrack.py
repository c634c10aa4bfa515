"""SyncTrack, minimal: the paper in one file you read beside it.

"SyncTrack: Rhythmic Stability and Synchronization in Multi-Track Music Generation" (Wang, Zhang et al., ICLR 2026):
4-track (bass, drums, guitar, piano) latent diffusion on MusicLDM, a UNet denoiser with track-shared modules (ResBlock +
inner-track, global and time-specific cross-track attention) and track-specific modules with an instrument prior.

  I.   The paper (§3), standing on its own: SyncTrackConfig, PRESETS (Table A3, §5.1, official config);
       timestep_embedding, InstrumentPrior; ResBlock, downsample, Upsample (Fig. 3b); Attention (inner-track),
       GlobalCrossTrackAttention (Eq. 4), TimeCrossTrackAttention (Eq. 5), TrackSharedTransformer (Fig. 3a);
       TrackSpecificModule, TrackSharedModule (Fig. 2b); SyncTrack, the denoiser ε_θ({z_l^s}, l);
       q_sample, diffusion_loss (Eq. 2), ddim_sample (DDIM; App. A.8 arrangement)
  II.  The MusicLDM first stage, waveform <-> latent (Eqs. 1, 3: a frozen black box): log_mel ("STFT & MelFB"),
       AutoencoderKL (VAE_enc, VAE_dec), HiFiGAN, MusicLDMFirstStage, load_first_stage
  III. Checkpoints: read_checkpoint (safe by default), OFFICIAL_KEY_MAP + load_official (the released weights),
       save_checkpoint, write_checkpoint, export_checkpoint, load_model (ours: the config inside)

toy.py holds the first stages without MusicLDM weights; metrics.py the rhythm metrics (Eqs. 6-8). Left out: the
official code's dead mixture conditioning and classifier-free guidance (scale 0, a no-op there), Lightning, YAML.

Notation (code name -> paper symbol):
    B batch, S tracks (s), C channels, T time frames (t), F frequency bins (f), L tokens per track (T·F), N samples
    z: clean latent z^s (Eq. 1; z_0 of the diffusion), z_l: noisy latent at step l, step: the diffusion step l
    (paper: l of L; code: 0..n_timesteps−1), z_start: the pure noise DDIM starts from, z_hat: predicted ẑ_0,
    eps: ε, alpha_bar: ᾱ_l; t, f index time frames and frequency bins
"""
import collections
import contextlib
import errno
import math
import os
import pathlib
import pickle
import zipfile
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as nnf  # F is the frequency axis here (glossary)

TRACKS = ("bass", "drums", "guitar", "piano")  # §5.1: Slakh2100 4-stem subset, official stem order


# ======================================================================================================================
# PART I. THE PAPER (§3): config, denoiser ε_θ (Fig. 2b, 3; Table A3), training loss (Eq. 2), DDIM sampling
# ======================================================================================================================

# ---- Config ----------------------------------------------------------------------------------------------------------

SAMPLE_RATE = 16000  # §5.1: audio resampled to 16 kHz. These three fix the latent grid (and Part II's front end)
MEL_HOP = 160        # App. A.5: hop length 160, so one mel frame per 10 ms
MEL_BINS = 64        # official config: 64 mel bins


@dataclass
class SyncTrackConfig:
    """Every hyper-parameter of the model; the defaults are the paper's (Table A3) / official values."""
    tracks: tuple = TRACKS                 # §5.1, official `stems`
    latent_channels: int = 8               # C: official VAE z_channels (16 for the offline first stage)
    latent_downsampling: int = 4           # the first stage's mel -> latent factor in T and F (official VAE: 4)
    latent_time: int | None = None         # T, derived: clip_samples / hop 160 / 4 = 256 (official hard-codes 256)
    latent_freq: int | None = None         # F, derived: 64 mel bins / 4 = 16 (official hard-codes 16)
    model_channels: int = 128              # Table A3 row 4-7
    channel_mult: tuple = (1, 2, 3, 5)     # Table A3 (widths 128/256/384/640)
    num_res_blocks: int = 2                # Table A3
    attention_ds: tuple = (2, 4, 8)        # official attention_resolutions: downsampling factors with attention
    head_channels: int = 32                # official num_head_channels
    norm_groups: int = 32                  # official GroupNorm32
    prior_hidden: int = 128                # Table A3 row 4-4: instrument prior MLP width
    # §3 variants: "paper" = Eq. 5 as written; "official" = what the released weights compute (README "Differences")
    variant: str = "paper"
    # Table 6 ablations: ① instrument prior, ② global, ③ time-specific cross-track attention, their order, alternation
    instrument_prior: bool = True
    global_attention: bool = True
    time_attention: bool = True
    reorder: bool = False                  # SyncTrack-reorder: ③ before ②
    alternate: bool = False                # SyncTrack-alternate: ② and ③ alternate across track-shared modules
    # diffusion (official config; the paper gives L = 1000)
    n_timesteps: int = 1000
    beta_start: float = 0.0015             # LDM "linear": linear in √β
    beta_end: float = 0.0195
    # which first stage maps waveforms to latents (Eqs. 1, 3): "musicldm" (VAE + HiFi-GAN weights), "toy-vae" (the toy
    # preset's small VAE, inside our checkpoints) or "offline" (no weights; tests). See toy.make_first_stage.
    first_stage: str = "musicldm"
    clip_samples: int = 163840             # 10.24 s at 16 kHz (official)

    def __post_init__(self):
        self.tracks, self.channel_mult, self.attention_ds = tuple(self.tracks), tuple(self.channel_mult), \
            tuple(self.attention_ds)
        if self.variant not in ("paper", "official"):
            raise ValueError(f"variant must be 'paper' or 'official', got {self.variant!r}")
        if self.model_channels % self.norm_groups:
            raise ValueError(f"model_channels must be a multiple of norm_groups ({self.norm_groups})")
        # T and F follow from the clip and the first stage; given values (a checkpoint's config) must agree
        d = self.latent_downsampling
        if self.clip_samples % (MEL_HOP * d):
            raise ValueError(f"clip_samples must be a multiple of {MEL_HOP * d} (hop {MEL_HOP} × downsampling {d}), "
                             f"got {self.clip_samples}")
        grid = (self.clip_samples // MEL_HOP // d, MEL_BINS // d)
        if (self.latent_time or grid[0], self.latent_freq or grid[1]) != grid:
            raise ValueError(f"latent T × F {self.latent_time} × {self.latent_freq} does not match clip_samples "
                             f"{self.clip_samples} at downsampling {d} ({grid[0]} × {grid[1]})")
        self.latent_time, self.latent_freq = grid

    @property
    def latent_shape(self):
        return (len(self.tracks), self.latent_channels, self.latent_time, self.latent_freq)

    @classmethod
    def from_dict(cls, d):
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown SyncTrackConfig keys: {unknown}")
        return cls(**d)

PRESETS = {
    "paper": dict(),
    # a laptop-CPU model: 2.56 s clips on the toy VAE (8 × 32 × 8 latents), attention at 1/2 and 1/4 resolution
    "toy": dict(latent_downsampling=8, model_channels=32, norm_groups=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                attention_ds=(2, 4), first_stage="toy-vae", clip_samples=40960),
    # for tests: the smallest model that still has every module
    "tiny": dict(latent_channels=16, model_channels=32, norm_groups=8, channel_mult=(1, 1), num_res_blocks=1,
                 attention_ds=(2,), head_channels=16, prior_hidden=32, first_stage="offline", clip_samples=10240),
}


# ---- Embeddings: diffusion step l and the learnable instrument prior -------------------------------------------------

def timestep_embedding(step, dim, max_period=10000):
    """Sinusoidal embedding of step l: [cos(l·ω_i), sin(l·ω_i)], ω_i = max_period^(-i/(dim/2)) (official: cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=step.device) / half)
    args = step[:, None].float() * freqs[None]                  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class InstrumentPrior(nn.Module):
    """§3 "Track-specific modules": one-hot track id V → positional encoding [sin(V), cos(V)] → two-layer MLP → e_s.
    The one-hot is anti-diagonal (official: track s is hot at position S−1−s); e_s joins the time embedding."""

    def __init__(self, n_tracks, hidden, out_dim):
        super().__init__()
        self.register_buffer("one_hot", torch.eye(n_tracks).fliplr())  # frozen (Table A3 row 2-1: 16 params)
        self.mlp = nn.Sequential(nn.Linear(2 * n_tracks, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self):
        v = torch.cat([torch.sin(self.one_hot), torch.cos(self.one_hot)], dim=-1)  # (S, 2S)
        return self.mlp(v)                                                           # (S, out_dim)


# ---- ResBlock (Fig. 3b): conv stage 1, + projected [time ‖ instrument] embedding, conv stage 2 -----------------------

def zero_init(module):
    """Zero a layer that ends a residual branch, so the branch starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM ResBlock. The paper's "first ResBlock + instrument prior + second ResBlock" (§3) is this block's two conv
    stages with the embedding added in between; every ResBlock of the UNet sees the prior (official)."""

    def __init__(self, ch_in, emb_dim, ch_out, groups):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, ch_in), nn.SiLU(),
                                       nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, ch_out))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, ch_out), nn.SiLU(),
                                        zero_init(nn.Conv2d(ch_out, ch_out, 3, padding=1)))
        self.skip_connection = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x, emb):
        # x: (B*S, C_in, T, F), emb: (B*S, E)
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]             # the prior enters here, broadcast over T, F
        return self.skip_connection(x) + self.out_layers(h)


def downsample(ch):  # (B*S, C, T, F) -> (B*S, C, T/2, F/2): a stride-2 3×3 conv, official name `op`
    return nn.Sequential(collections.OrderedDict(op=nn.Conv2d(ch, ch, 3, stride=2, padding=1)))


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(nnf.interpolate(x, scale_factor=2, mode="nearest"))


# ---- Attention: inner-track, global cross-track (Eq. 4), time-specific cross-track (Eq. 5) ---------------------------

def multi_head_attention(q, k, v, heads):
    """softmax(q kᵀ/√d) v with `heads` heads; q: (N, Lq, C), k, v: (N, Lk, C) -> (N, Lq, C)."""
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, L, C) -> (N, heads, L, C/heads)
    out = nnf.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).flatten(2)                           # (N, heads, Lq, C/heads) -> (N, Lq, C)


class Attention(nn.Module):
    """Multi-head self-attention over a token set (official `CrossAttention` with context None: no bias on q/k/v)."""

    def __init__(self, ch, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(ch, ch, bias=False) for _ in range(3))
        self.to_out = nn.Linear(ch, ch)

    def forward(self, x):
        # x: (N, L, C) -> (N, L, C)
        return self.to_out(multi_head_attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))


class GlobalCrossTrackAttention(nn.Module):
    """Eq. (4): Attn(W^Q1 z_{t,f}^s, W^K1 z_{1:T,1:F}^{1:S}, W^V1 z_{1:T,1:F}^{1:S}): every token of every track attends
    to all tokens of all tracks of its sample, plain self-attention over S·L tokens. (The official code pairs sample
    b's queries with another sample's keys when B > 1; ours is per-sample correct, and equal to it at B = 1.)"""

    def __init__(self, ch, heads, n_tracks):
        super().__init__()
        self.n_tracks = n_tracks
        self.norm = nn.LayerNorm(ch)
        self.attn = Attention(ch, heads)

    def forward(self, x, T, F):
        # x: (B*S, L, C); T and F are not needed (all tokens attend to all), only taken to match ③'s signature
        BS, L, C = x.shape
        h = self.norm(x).reshape(BS // self.n_tracks, self.n_tracks * L, C)  # (B*S, L, C) -> (B, S*L, C)
        return x + self.attn(h).reshape(BS, L, C)                              # (B, S*L, C) -> (B*S, L, C)


class TimeCrossTrackAttention(nn.Module):
    """Eq. (5): Attn(W^Q2 z_{t,f}^s, W^K2 z_{t,1:F}^{1:S}, W^V2 z_{t,1:F}^{1:S}), a pre-LN Transformer encoder layer
    (self-attention + ReLU feed-forward, as the official `attn_beat`).

    variant "paper":    at time t a token attends to all tracks × all frequencies, S·F tokens (Eq. 5 as written).
    variant "official": at (t, f) a token attends to the S tracks at the same (t, f), and the layer's output is added
                        to its input once more (the released weights were trained with this doubled residual)."""

    def __init__(self, ch, heads, n_tracks, variant):
        super().__init__()
        self.heads, self.n_tracks, self.variant = heads, n_tracks, variant
        self.norm1, self.norm2 = nn.LayerNorm(ch), nn.LayerNorm(ch)
        self.in_proj = nn.Linear(ch, 3 * ch)
        self.out_proj = nn.Linear(ch, ch)
        self.linear1, self.linear2 = nn.Linear(ch, 4 * ch), nn.Linear(4 * ch, ch)

    def encoder_layer(self, x):
        # x: (N, L, C), one sequence per time step (paper) or per time-frequency cell (official)
        q, k, v = self.in_proj(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.out_proj(multi_head_attention(q, k, v, self.heads))
        return x + self.linear2(nnf.relu(self.linear1(self.norm2(x))))

    def forward(self, x, T, F):
        # x: (B*S, L, C) with L = T·F (token index t·F + f)
        BS, L, C = x.shape
        S, B = self.n_tracks, BS // self.n_tracks
        h = x.reshape(B, S, T, F, C)
        if self.variant == "paper":
            h = h.permute(0, 2, 1, 3, 4).reshape(B * T, S * F, C)          # (B, S, T, F, C) -> (B*T, S*F, C)
            h = self.encoder_layer(h).reshape(B, T, S, F, C).permute(0, 2, 1, 3, 4)
            return h.reshape(BS, L, C)                                       # (B, S, T, F, C) -> (B*S, L, C)
        h = h.permute(0, 2, 3, 1, 4).reshape(B * T * F, S, C)              # (B, S, T, F, C) -> (B*T*F, S, C)
        h = self.encoder_layer(h).reshape(B, T, F, S, C).permute(0, 3, 1, 2, 4)
        # official variant: the layer already returns x + SA + FFN; adding x once more is the doubled residual
        return x + h.reshape(BS, L, C)


class GEGLU(nn.Module):
    """The first half of the feed-forward: a GELU-gated linear unit, ch -> 4ch (official `ff.net.0`)."""

    def __init__(self, ch):
        super().__init__()
        self.proj = nn.Linear(ch, 8 * ch)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * nnf.gelu(gate)


class TrackSharedTransformer(nn.Module):
    """The attention part of a track-shared module (Fig. 3a), weights shared by all tracks: inner-track attention →
    global cross-track (②) → time-specific cross-track (③) → inner-track attention → FFN (the official block has two
    inner-track attentions, `attn1`, `attn2`; the paper draws one). Table 6 ablations set ② or ③ to None."""

    def __init__(self, ch, cfg):
        super().__init__()
        heads, S = ch // cfg.head_channels, len(cfg.tracks)
        self.reorder = cfg.reorder
        self.norm = nn.GroupNorm(cfg.norm_groups, ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.norm1, self.attn1 = nn.LayerNorm(ch), Attention(ch, heads)
        self.global_attn = GlobalCrossTrackAttention(ch, heads, S) if cfg.global_attention else None
        self.time_attn = TimeCrossTrackAttention(ch, heads, S, cfg.variant) if cfg.time_attention else None
        self.norm2, self.attn2 = nn.LayerNorm(ch), Attention(ch, heads)
        self.norm3, self.ff = nn.LayerNorm(ch), nn.Sequential(GEGLU(ch), nn.Linear(4 * ch, ch))
        self.proj_out = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        # x: (B*S, C, T, F)
        _, C, T, F = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B*S, C, T, F) -> (B*S, L, C), L = T·F
        h = h + self.attn1(self.norm1(h))                          # inner-track attention
        cross_track = (self.time_attn, self.global_attn) if self.reorder else (self.global_attn, self.time_attn)
        for attn in filter(None, cross_track):                     # ② then ③ (Eqs. 4, 5)
            h = attn(h, T, F)
        h = h + self.attn2(self.norm2(h))
        h = h + self.ff(self.norm3(h))
        h = h.transpose(1, 2).reshape(x.shape)                     # (B*S, L, C) -> (B*S, C, T, F)
        return x + self.proj_out(h)


# ---- Track-specific and track-shared modules (Fig. 2b; Table A3 labels each UNet block one or the other) -------------

class UNetBlock(nn.ModuleList):
    """A UNet block: layers applied in order; ResBlocks also get the embedding. Indexed like the official blocks."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class TrackSpecificModule(UNetBlock):
    """Table A3 "track-specific": the input conv or a ResBlock alone. Its weights are shared too; what makes it
    track-specific is the instrument prior in the embedding, the only input that differs between tracks."""


class TrackSharedModule(UNetBlock):
    """Table A3 "track-shared": a ResBlock with a TrackSharedTransformer, or a down/upsampling layer."""


def unet_block(layers):
    """Table A3's label of a block: a ResBlock alone is track-specific, anything else track-shared."""
    only_resblock = len(layers) == 1 and isinstance(layers[0], ResBlock)
    return (TrackSpecificModule if only_resblock else TrackSharedModule)(layers)


# ---- The denoiser ε_θ({z_l^s}_{s=1}^S, l) ----------------------------------------------------------------------------

class SyncTrack(nn.Module):
    """The SyncTrack UNet (Fig. 2b, Table A3). forward(z_l (B, S, C, T, F), step (B,)) -> ε̂ (B, S, C, T, F).
    Tracks are folded into the batch, (B, S) -> B·S rows, so convolutions and inner-track attention see one track at
    a time; the cross-track attentions unfold them again. Module names follow the official UNet (OFFICIAL_KEY_MAP)."""

    def __init__(self, cfg: SyncTrackConfig):
        super().__init__()
        self.config = cfg
        mc, S, G = cfg.model_channels, len(cfg.tracks), cfg.norm_groups
        E = 4 * mc       # time embedding width (ADM/official: 512 at model_channels 128)
        emb_dim = 2 * E  # [time ‖ instrument prior] (official concat; Table A3 4-8), also without the prior (zeros)
        self.time_embed = nn.Sequential(nn.Linear(mc, E), nn.SiLU(), nn.Linear(E, E))
        self.instrument_prior = InstrumentPrior(S, cfg.prior_hidden, E) if cfg.instrument_prior else None

        def res_block(ch_in, ch_out, ds):  # a ResBlock, with a TrackSharedTransformer at the resolutions listed
            layers = [ResBlock(ch_in, emb_dim, ch_out, G)]
            return layers + [TrackSharedTransformer(ch_out, cfg)] if ds in cfg.attention_ds else layers

        # Table A3 prints a 64 × 64 input; the real latent is T × F = 256 × 16 (same 4096 positions), so "resolution
        # 32 × 32" there is our ds = 2 (128 × 8) and so on. Rows are numbered as in Table A3.
        # Encoder (Table A3 4-7 … 4-18): the channel count of every block output is kept for the skip connections.
        self.input_blocks = nn.ModuleList([TrackSpecificModule([nn.Conv2d(cfg.latent_channels, mc, 3, padding=1)])])
        skip_chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(unet_block(res_block(ch, mult * mc, ds)))
                ch = mult * mc
                skip_chans.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.input_blocks.append(TrackSharedModule([downsample(ch)]))
                skip_chans.append(ch)
                ds *= 2
        # Middle (Table A3 4-19 … 4-21, one official block): ResBlock, attention, ResBlock
        self.middle_block = TrackSharedModule([ResBlock(ch, emb_dim, ch, G), TrackSharedTransformer(ch, cfg),
                                               ResBlock(ch, emb_dim, ch, G)])
        # Decoder (Table A3 4-22 … 4-33, output layers 4-34 … 4-36): each block takes [previous output ‖ a skip]
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = res_block(ch + skip_chans.pop(), mult * mc, ds)
                ch = mult * mc
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(unet_block(layers))
        self.out = nn.Sequential(nn.GroupNorm(cfg.norm_groups, mc), nn.SiLU(),
                                 zero_init(nn.Conv2d(mc, cfg.latent_channels, 3, padding=1)))
        if cfg.alternate:  # SyncTrack-alternate: ② in the even-numbered transformers (build order), ③ in the odd ones
            for i, transformer in enumerate(m for m in self.modules() if isinstance(m, TrackSharedTransformer)):
                setattr(transformer, "global_attn" if i % 2 else "time_attn", None)
        self.register_buffer("alphas_cumprod", alpha_bar_schedule(cfg), persistent=False)

    def forward(self, z_l, step):
        # z_l: (B, S, C, T, F), step: (B,) diffusion steps l, one per sample, shared by its S tracks
        B, S, C, T, F = z_l.shape
        x = z_l.reshape(B * S, C, T, F)                                    # (B, S, C, T, F) -> (B*S, C, T, F)
        emb = self.time_embed(timestep_embedding(step, self.config.model_channels)).repeat_interleave(S, dim=0)
        # "added to the time embedding" (§3). Without the prior (Table 6 Backbone) its slot holds zeros, as the official
        # code's commented-out `th.zeros_like(switch_emb)`: every ResBlock keeps MusicLDM's shapes to initialise from
        prior = self.instrument_prior().repeat(B, 1) if self.instrument_prior is not None else torch.zeros_like(emb)
        emb = torch.cat([emb, prior], dim=-1)                              # (B*S, 2E), rows b·S + s
        skips = []
        for block in self.input_blocks:
            x = block(x, emb)
            skips.append(x)
        x = self.middle_block(x, emb)
        for block in self.output_blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.out(x).reshape(B, S, C, T, F)                          # (B*S, C, T, F) -> (B, S, C, T, F)


# ---- Diffusion: forward process, training loss (Eq. 2), DDIM sampling ------------------------------------------------

def alpha_bar_schedule(cfg):
    """ᾱ_l = Π_{i≤l} (1 − β_i) with β linear in √β (LDM "linear"; official config), in float64 then float32."""
    betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, cfg.n_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def q_sample(z, step, noise, alpha_bar):
    """z_l = √ᾱ_l z + √(1 − ᾱ_l) ε, for every track of each sample at that sample's l."""
    a = alpha_bar[step].view(-1, 1, 1, 1, 1)                           # (B,) -> (B, 1, 1, 1, 1)
    return a.sqrt() * z + (1 - a).sqrt() * noise


def diffusion_loss(model, z, generator=None):
    """Eq. (2): L(θ) = E_{ε, z, l} ||ε − ε_θ({z_l^s}_{s=1}^S, l)||², l uniform, one l per sample for all S tracks."""
    alpha_bar = getattr(model, "module", model).alphas_cumprod   # `model` may be wrapped in DistributedDataParallel
    step = torch.randint(0, len(alpha_bar), (z.shape[0],), device=z.device, generator=generator)
    noise = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
    z_l = q_sample(z, step, noise, alpha_bar)
    return nnf.mse_loss(model(z_l, step).float(), noise.float())   # Eq. (2): ||ε − ε_θ(z_l, l)||²


def ddim_timesteps(n_timesteps, steps):
    """Official convention: uniform steps shifted by one, e.g. 1, 6, …, 996 for 200 of 1000, visited in reverse."""
    if not 1 <= steps < n_timesteps:  # the +1 shift needs the last step below n_timesteps
        raise ValueError(f"steps must be in 1..{n_timesteps - 1}, got {steps}")
    # i·n // steps + 1 is the official i·(n // steps) + 1 when steps divides n, and spans the range otherwise too
    return torch.arange(steps) * n_timesteps // steps + 1


@torch.no_grad()
def ddim_sample(model, z_start, steps=200, eta=1.0, known=None, known_mask=None, generator=None):
    """DDIM (Song et al., 2021) from noise z_start (B, S, C, T, F) in `steps` steps; η = 1 (official) is stochastic,
    η = 0 deterministic. `generator`: one torch.Generator for all the noise, or a list of B (row b draws from its own).

    Arrangement (App. A.8, official `inpainting`): with `known` latents and `known_mask` (S,) or (B, S) bools, the known
    tracks are replaced by their ground truth noised to the current level before every model call, so only the other
    tracks are generated; the returned latent holds `known` exactly there. A mask of z's rank (e.g. (B, S, 1, T, 1))
    holds any part of z the same way, such as the first time frames of a window that continues a piece."""
    alpha_bar = model.alphas_cumprod
    visited = ddim_timesteps(model.config.n_timesteps, steps).tolist()
    previous = [0] + visited[:-1]                 # ᾱ_prev of the first (smallest) step is ᾱ_0, not 1 (official)
    shape, device, dtype = z_start.shape, z_start.device, z_start.dtype
    if known is not None:
        mask = torch.as_tensor(known_mask, dtype=torch.bool, device=device)
        if mask.dim() < len(shape):                                          # whole tracks: (S,) or (B, S)
            mask = mask.expand(shape[:2])[:, :, None, None, None]            # (B, S) -> (B, S, 1, 1, 1)
        mask = mask.to(dtype)

    def randn():  # N(0, I) of z's shape: (B, S, C, T, F) at once, or row b from generator b
        if isinstance(generator, (list, tuple)):
            return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in generator])
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    z_l = z_start
    for step, prev_step in reversed(list(zip(visited, previous))):
        step_batch = torch.full((shape[0],), step, device=device, dtype=torch.long)
        if known is not None:                     # hold the known tracks at q(z_l | z)
            z_l = mask * q_sample(known, step_batch, randn(), alpha_bar) + (1 - mask) * z_l
        eps = model(z_l, step_batch).to(dtype)
        a, a_prev = alpha_bar[step], alpha_bar[prev_step]
        # 1. predicted ẑ_0 = (z_l − √(1−ᾱ_l) ε̂) / √ᾱ_l                      (DDIM Eq. 12, first term)
        z_hat = (z_l - (1 - a).sqrt() * eps) / a.sqrt()
        # 2. σ_l = η √((1−ᾱ_prev)/(1−ᾱ_l)) √(1 − ᾱ_l/ᾱ_prev)               (DDIM Eq. 16)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        # 3. direction pointing to z_l: √(1 − ᾱ_prev − σ²) ε̂                  (DDIM Eq. 12, second term)
        direction = (1 - a_prev - sigma ** 2).sqrt() * eps
        # 4. z_prev = √ᾱ_prev ẑ_0 + direction + σ_l ε,  ε ~ N(0, I)           (DDIM Eq. 12)
        z_l = a_prev.sqrt() * z_hat + direction
        if eta > 0:
            z_l = z_l + sigma * randn()
    return z_l if known is None else mask * known + (1 - mask) * z_l


# ======================================================================================================================
# PART II. THE MUSICLDM FIRST STAGE: waveform <-> latent z, the frozen black box of Eqs. 1 and 3 (not the paper's own)
# ======================================================================================================================

# ---- Audio front end: waveform -> log-mel, the "STFT & MelFB" of Eq. (1) ---------------------------------------------
# The official TacotronSTFT(1024, 160, 1024, 64, 16000, 0, 8000); SAMPLE_RATE, MEL_HOP, MEL_BINS are in Part I.
MEL_N_FFT = 1024  # Appendix A.5: window size 1024 (n_fft = win_length)
MEL_FMAX = 8000.0  # official config
MEL_FLOOR = 1e-5  # official dynamic_range_compression clip value: silence = ln(1e-5) = -11.5129


def _hz_to_mel(hz):
    """Slaney mel scale (librosa htk=False): linear below 1 kHz, 200/3 Hz per mel; above, 27 mels per ×6.4."""
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) * 27.0 / np.log(6.4), hz * 3.0 / 200.0)


def _mel_to_hz(mel):  # the inverse of _hz_to_mel; 15 mels is the 1 kHz break point
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0), mel * 200.0 / 3.0)


def mel_filterbank(sr, n_fft, n_mels, fmin, fmax):
    """Slaney triangles, area-normalised (librosa.filters.mel's defaults): float32 (n_mels, 1 + n_fft // 2)."""
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # centre frequency of every STFT bin
    # n_mels + 2 edges evenly spaced in mel: band i rises from edge i to i + 1 and falls to i + 2
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    triangles = np.maximum(0.0, np.minimum((bin_hz - low) / (centre - low), (high - bin_hz) / (high - centre)))
    # Slaney norm: height 2 / width, so every triangle has unit area in Hz (norm=None differs by up to 0.99)
    return (triangles * (2.0 / (high - low))).astype(np.float32)


def log_mel(wave):
    """Official log-mel: (..., N) waveform at 16 kHz -> (..., N // 160, 64) natural-log mel, time-major. Periodic
    Hann, centred STFT, reflect padding, magnitude, Slaney mel, ln(max(mel, 1e-5)); the first N // 160 frames."""
    lead, n = wave.shape[:-1], wave.shape[-1]
    x = wave.reshape(-1, n)  # (..., N) -> (B, N)
    window = torch.hann_window(MEL_N_FFT, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, MEL_N_FFT, MEL_HOP, MEL_N_FFT, window, center=True, pad_mode="reflect",
                      return_complex=True).abs()  # (B, 1 + n_fft / 2, 1 + N // hop)
    basis = torch.from_numpy(mel_filterbank(SAMPLE_RATE, MEL_N_FFT, MEL_BINS, 0.0, MEL_FMAX)).to(x)
    mel = torch.log(torch.clamp(basis @ spec, min=MEL_FLOOR))[..., :n // MEL_HOP]  # (B, F, T), T = N // hop
    return mel.transpose(1, 2).reshape(*lead, n // MEL_HOP, MEL_BINS)  # (B, F, T) -> (..., T, F)


# ---- VAE: MusicLDM's AutoencoderKL, VAE_enc of Eq. (1) and VAE_dec of Eq. (3) ----------------------------------------
# Module names follow the official LDM code (encoder.down.i.block.j, mid.attn_1, nin_shortcut, ...) so that
# vae-ckpt.ckpt loads strictly. The log-mel is an image with height T (time) and width F (mel bins).

class VAEResnetBlock(nn.Module):
    """GN -> swish -> conv3x3, twice, plus a skip (1x1 conv where the width changes); dropout 0 in MusicLDM."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(32, c_in, eps=1e-6), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(32, c_out, eps=1e-6), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):  # (B, C_in, T, F) -> (B, C_out, T, F)
        h = self.conv1(nnf.silu(self.norm1(x)))
        h = self.conv2(nnf.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class VAEAttnBlock(nn.Module):
    """Single-head self-attention over all T·F positions, 1x1-conv projections (official q, k, v, proj_out)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):  # (B, C, T, F) -> (B, C, T, F)
        b, c, t, f = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # -> (B, T·F, C)
        h = nnf.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √C) v
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, t, f))  # (B, T·F, C) -> (B, C, T, F)


class VAEDownsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):  # (B, C, T, F) -> (B, C, T/2, F/2)
        return self.conv(nnf.pad(x, (0, 1, 0, 1)))  # official asymmetric padding: a row and a column at the end


def _vae_mid(ch):  # the bottleneck both halves share (official `mid`): ResBlock, attention, ResBlock
    return nn.Sequential(collections.OrderedDict(block_1=VAEResnetBlock(ch, ch), attn_1=VAEAttnBlock(ch),
                                                 block_2=VAEResnetBlock(ch, ch)))


def _vae_level(blocks, resize=None, name=""):
    """One resolution level (official names: level.block.j, level.downsample / level.upsample), applied in order."""
    return nn.Sequential(collections.OrderedDict(block=nn.Sequential(*blocks), **({name: resize} if resize else {})))


class VAEEncoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, in_channels, z_channels):
        super().__init__()
        widths = [ch] + [ch * m for m in ch_mult]  # widths[i] enters level i, widths[i + 1] leaves it
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels = []
        for i in range(len(ch_mult)):  # the coarsest level keeps its resolution
            blocks = [VAEResnetBlock(widths[i + (j > 0)], widths[i + 1]) for j in range(num_res_blocks)]
            down = VAEDownsample(widths[i + 1]) if i < len(ch_mult) - 1 else None
            levels.append(_vae_level(blocks, down, "downsample"))
        self.down = nn.Sequential(*levels)
        self.mid = _vae_mid(widths[-1])
        self.norm_out = nn.GroupNorm(32, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels, 3, padding=1)  # double_z: mean and log-variance

    def forward(self, x):  # (B, 1, T, F) -> (B, 2·Z, T/4, F/4) for three levels
        return self.conv_out(nnf.silu(self.norm_out(self.mid(self.down(self.conv_in(x))))))


class VAEDecoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, out_ch, z_channels):
        super().__init__()
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = _vae_mid(width)
        levels = []
        for i in reversed(range(len(ch_mult))):  # built coarse to fine, stored fine to coarse as the official `up`
            blocks = [VAEResnetBlock(width if j == 0 else ch * ch_mult[i], ch * ch_mult[i])
                      for j in range(num_res_blocks + 1)]
            width = ch * ch_mult[i]
            levels.insert(0, _vae_level(blocks, Upsample(width) if i > 0 else None, "upsample"))  # Part I's Upsample
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(32, width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, z):  # (B, Z, T/4, F/4) -> (B, 1, T, F) for three levels
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(nnf.silu(self.norm_out(h)))  # no output activation: the decoder emits the log-mel itself


class AutoencoderKL(nn.Module):
    """MusicLDM's KL-regularised VAE from the official `ddconfig` dict (unused keys ignored). Our one extra key,
    `fold` (MusicLDM: 1), folds fold×fold mel patches into channels (in_channels = out_ch = fold²) for the toy stage."""

    def __init__(self, ddconfig, embed_dim):
        super().__init__()
        self.fold = ddconfig.get("fold", 1)
        if not ddconfig.get("double_z", True) or ddconfig.get("attn_resolutions") or \
                ddconfig["in_channels"] != self.fold ** 2 or ddconfig["out_ch"] != self.fold ** 2:
            raise ValueError(f"ddconfig {ddconfig}: implemented: double_z=True, attn_resolutions=[] (MusicLDM's VAE) "
                             f"and in_channels = out_ch = fold² = {self.fold ** 2}")
        ch, ch_mult, n_res, z = ddconfig["ch"], ddconfig["ch_mult"], ddconfig["num_res_blocks"], ddconfig["z_channels"]
        self.encoder = VAEEncoder(ch, ch_mult, n_res, ddconfig["in_channels"], z)
        self.decoder = VAEDecoder(ch, ch_mult, n_res, ddconfig["out_ch"], z)
        self.quant_conv = nn.Conv2d(2 * z, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z, 1)
        self.ddconfig, self.embed_dim = ddconfig, embed_dim
        self.downsampling = self.fold * 2 ** (len(ch_mult) - 1)  # T and F shrink by this factor (4 for MusicLDM)

    def encode(self, mel):
        """Eq. (1) VAE_enc: log-mel (B, T, F) -> posterior mean and log-variance, each (B, C, T/d, F/d), d = 4 here."""
        x = nnf.pixel_unshuffle(mel.unsqueeze(1), self.fold)  # (B, T, F) -> (B, fold², T/fold, F/fold); MusicLDM: 1
        moments = self.quant_conv(self.encoder(x))  # -> (B, 2C, T/d, F/d)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # official DiagonalGaussianDistribution clamp

    def decode(self, z):
        """Eq. (3) VAE_dec: latent (B, C, T/d, F/d) -> log-mel (B, T, F)."""
        x = self.decoder(self.post_quant_conv(z))  # (B, fold², T/fold, F/fold)
        return nnf.pixel_shuffle(x, self.fold).squeeze(1)  # -> (B, 1, T, F) -> (B, T, F)


MUSICLDM_DDCONFIG = dict(double_z=True, z_channels=8, resolution=256, in_channels=1, out_ch=1, ch=128,
                         ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)  # official config
MUSICLDM_EMBED_DIM = 8  # official config: embed_dim 8, latent 8 × 256 × 16 per track


# ---- HiFi-GAN vocoder, the HiFiGAN of Eq. (3): the official generator (V1 layout, ResBlock1 whatever the config's
# "resblock" says) with plain convolutions; weight-norm checkpoints are folded at load time (fold_weight_norm).

class HiFiGANResBlock(nn.Module):
    """Three dilated/undilated conv pairs with residuals; official names convs1 (dilated) and convs2."""

    def __init__(self, channels, kernel, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList([nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                     for d in dilations])
        self.convs2 = nn.ModuleList([nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2)
                                     for _ in dilations])

    def forward(self, x):  # (B, C, N) -> (B, C, N)
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(nnf.leaky_relu(conv1(nnf.leaky_relu(x, 0.1)), 0.1))
        return x


class HiFiGAN(nn.Module):
    """HiFi-GAN generator built from the official config_16k_64.json dict (training-only keys are ignored)."""

    def __init__(self, config):
        super().__init__()
        width = config["upsample_initial_channel"]
        self.kernels_per_stage = len(config["resblock_kernel_sizes"])
        self.conv_pre = nn.Conv1d(config["num_mels"], width, 7, padding=3)
        self.ups, self.resblocks = nn.ModuleList(), nn.ModuleList()
        for rate, kernel in zip(config["upsample_rates"], config["upsample_kernel_sizes"]):
            self.ups.append(nn.ConvTranspose1d(width, width // 2, kernel, stride=rate, padding=(kernel - rate) // 2))
            width //= 2
            self.resblocks.extend(HiFiGANResBlock(width, k, d)
                                  for k, d in zip(config["resblock_kernel_sizes"], config["resblock_dilation_sizes"]))
        self.conv_post = nn.Conv1d(width, 1, 7, padding=3)

    def forward(self, mel):
        """Natural-log mel (B, F, T) -> waveform (B, 1, 160·T + 32): the first up-conv makes 5T + 1 frames of 32."""
        x, n = self.conv_pre(mel), self.kernels_per_stage
        for i, up in enumerate(self.ups):
            x = up(nnf.leaky_relu(x, 0.1))  # (B, C, L) -> (B, C/2, rate·L)
            # multi-receptive-field fusion: the mean of the stage's parallel residual blocks
            x = sum(block(x) for block in self.resblocks[i * n:(i + 1) * n]) / n
        x = self.conv_post(nnf.leaky_relu(x))  # official quirk: default slope 0.01 here, 0.1 everywhere else
        return torch.tanh(x)


HIFIGAN_16K_64 = dict(num_mels=64, upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
                      upsample_initial_channel=1024, resblock_kernel_sizes=[3, 7, 11],
                      resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]])  # official hifigan/config_16k_64.json


# ---- First stages: the latent interface. Every first stage (this one and toy.py's) takes (B, S, N) waveforms at 16 kHz
# and gives (B, S, C, T, F) latents; N is a multiple of 640 = hop 160 × the 4× time downsampling (MusicLDM).

def check_wave(wave, multiple):
    """Validate a (B, S, N) float waveform batch (its sample rate is assumed: a tensor does not carry it)."""
    if wave.dim() != 3 or wave.shape[-1] == 0 or wave.shape[-1] % multiple or not wave.is_floating_point():
        raise ValueError(f"expected mono {SAMPLE_RATE} Hz float audio of shape (B, S, N) with N a positive multiple of "
                         f"{multiple} (10.24 s = 163840 samples); got {wave.dtype} of shape {tuple(wave.shape)}")
    if wave.abs().max() > 2.0:  # int16-scaled audio; a resampled full-scale file may overshoot 1 a little, fine
        raise ValueError(f"expected audio in [-1, 1]; got peak {wave.abs().max():.4g} (divide int16 samples by 32768)")
    return wave.shape


def check_latent(z, channels, bins):
    if z.dim() != 5 or z.shape[2] != channels or z.shape[3] == 0 or z.shape[4] != bins:
        raise ValueError(f"expected a latent of shape (B, S, {channels}, T, {bins}); got {tuple(z.shape)}")
    return z.shape


class MusicLDMFirstStage(nn.Module):
    """MusicLDM's frozen VAE + HiFi-GAN: Eq. (1) z = scale·VAE_enc(STFT&MelFB(x)), (3) x̂ = HiFiGAN(VAE_dec(z/scale)).
    The toy stage (toy.py, kind "toy-vae") is this pipeline in miniature: a small VAE, Griffin-Lim as vocoder."""

    def __init__(self, vae, vocoder, scale_factor, kind="musicldm"):
        super().__init__()
        self.kind = kind  # SyncTrackConfig.first_stage of a model trained on these latents
        # frozen first stage: SyncTrack trains only the denoiser, so no gradients and inference-mode layers
        self.vae = vae.eval().requires_grad_(False)
        self.vocoder = vocoder.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)  # brings the latents to about unit variance for the diffusion
        self.latent_channels = vae.embed_dim
        self.multiple = MEL_HOP * vae.downsampling  # samples per latent time step

    def latent_shape(self, n_samples):
        """(C, T, F) of one track's latent for an n_samples waveform: (8, 256, 16) for 10.24 s."""
        if n_samples <= 0 or n_samples % self.multiple:
            raise ValueError(f"n_samples must be a positive multiple of {self.multiple}; got {n_samples}")
        return (self.latent_channels, n_samples // self.multiple, MEL_BINS // self.vae.downsampling)

    @torch.no_grad()
    def encode(self, wave, sample=True, generator=None):
        """(B, S, N) waveform -> (B, S, C, T, F): a posterior sample (the official training target) or the mean."""
        mean, std = self.posterior(wave)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype) if sample else 0
        return mean + std * noise

    @torch.no_grad()
    def posterior(self, wave):
        """(B, S, N) -> the scaled posterior's mean and std, each (B, S, C, T, F), as toy.EncodedClips keeps them."""
        b, s, n = check_wave(wave, self.multiple)
        mean, logvar = self.vae.encode(log_mel(wave.reshape(b * s, n)))  # (B·S, N) -> (B·S, T, F) -> (B·S, C, T/d, F/d)
        std = torch.exp(0.5 * logvar)
        return [(self.scale_factor * x).reshape(b, s, *x.shape[1:]) for x in (mean, std)]  # -> (B, S, C, T, F)

    @torch.no_grad()
    def decode(self, z):
        """(B, S, C, T, F) scaled latent -> (B, S, N) waveform, N = 160·d·T for a VAE that is d× down (MusicLDM: 4)."""
        b, s = check_latent(z, self.latent_channels, MEL_BINS // self.vae.downsampling)[:2]
        mel = self.vae.decode(z.flatten(0, 1) / self.scale_factor)  # (B·S, C, T, F) -> (B·S, 4T, 64)
        wave = self.vocoder(mel.transpose(1, 2))  # (B·S, 64, 4T) -> (B·S, 1, N + 32)
        n = mel.shape[1] * MEL_HOP  # the 32 extra samples (the official eval keeps them) trimmed: lengths round-trip
        return wave[:, 0, :n].reshape(b, s, n)  # (B·S, N) -> (B, S, N)


# ---- Loading the first stage: a Lightning .ckpt (MusicLDM's or SyncTrack's: first_stage_model.* + scale_factor), or a
# folder with the official vae-ckpt.ckpt + hifigan-ckpt.ckpt (weight-norm HiFi-GAN), which carry no scale factor:
MUSICLDM_SCALE_FACTOR = 1.075324296951294  # ucsd-reach/musicldm vae/config.json (from musicldm-ckpt.ckpt)


def load_strict(module, state, source):
    """Load `state` into `module` strictly (torch names missing, unexpected, misshapen tensors), in eval mode."""
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(f"{source}: tensors do not match: {' '.join(str(e).split())}") from None
    return module.eval()


def fold_weight_norm(state):
    """weight_g, weight_v -> weight = v · g / ‖v‖ (torch weight_norm, dim 0); other tensors pass through."""
    pairs = {k[:-2] for k in state if k.endswith(".weight_v") and k[:-1] + "g" in state}  # "...weight"
    folded = {k: v for k, v in state.items() if not (k.endswith(("_g", "_v")) and k[:-2] in pairs)}
    for base in pairs:
        v, g = state[base + "_v"].float(), state[base + "_g"].float()
        folded[base] = v * (g / v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1)))
    return folded


def _load_official_pair(folder, trust):
    """The official separate files: a Lightning-style VAE state dict and a weight-norm HiFi-GAN generator."""
    vae_file = read_checkpoint(folder / "vae-ckpt.ckpt", trust)
    vae_state = {k: v for k, v in vae_file.get("state_dict", vae_file).items()  # loss.*: LPIPS and discriminator
                 if not k.startswith(("loss.", "vocoder."))}                   # vocoder.*: ignored officially too
    hifigan_file = read_checkpoint(folder / "hifigan-ckpt.ckpt", trust)
    if "generator" not in hifigan_file:
        raise ValueError(f"{folder / 'hifigan-ckpt.ckpt'}: no 'generator' entry (keys: {sorted(hifigan_file)[:10]})")
    vae = load_strict(AutoencoderKL(MUSICLDM_DDCONFIG, MUSICLDM_EMBED_DIM), vae_state, folder / "vae-ckpt.ckpt")
    vocoder = load_strict(HiFiGAN(HIFIGAN_16K_64), fold_weight_norm(hifigan_file["generator"]),
                          folder / "hifigan-ckpt.ckpt")
    return vae, vocoder, MUSICLDM_SCALE_FACTOR


def _load_lightning(checkpoint, path):
    """A MusicLDM or SyncTrack Lightning checkpoint: the first_stage_model.* subtree (loss.* only trains the VAE)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}
    prefix = "first_stage_model."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(prefix + "loss.")}
    if not sub or "scale_factor" not in state:
        raise ValueError(f"{path}: no first_stage_model.* tensors and scale_factor: not a MusicLDM/SyncTrack Lightning "
                         "checkpoint (for vae-ckpt.ckpt and hifigan-ckpt.ckpt, give the folder holding both)")
    vae = load_strict(AutoencoderKL(MUSICLDM_DDCONFIG, MUSICLDM_EMBED_DIM),
                      {k: v for k, v in sub.items() if not k.startswith("vocoder.")}, f"{path} ({prefix}*)")
    vocoder = load_strict(HiFiGAN(HIFIGAN_16K_64), fold_weight_norm(
        {k[len("vocoder."):]: v for k, v in sub.items() if k.startswith("vocoder.")}), f"{path} ({prefix}vocoder.*)")
    return vae, vocoder, float(state["scale_factor"])


def load_first_stage(src, trust=False, name=None):
    """MusicLDM's (AutoencoderKL, HiFiGAN, scale_factor) in eval mode from a Lightning .ckpt, a folder with
    vae-ckpt.ckpt + hifigan-ckpt.ckpt, or a loaded Lightning dict (`name` names it); pickled files need `trust`."""
    if isinstance(src, dict):
        return _load_lightning(src, name or "checkpoint")
    path = pathlib.Path(src)
    if not path.is_dir():  # a file: read_checkpoint names one that is missing or unreadable
        return _load_lightning(read_checkpoint(path, trust), path)
    if (path / "vae-ckpt.ckpt").is_file() and (path / "hifigan-ckpt.ckpt").is_file():
        return _load_official_pair(path, trust)
    hint = " (a diffusers folder: convert it with extras/convert_musicldm.py)" if (path / "vae").is_dir() else ""
    raise ValueError(f"{path}: expected a folder with vae-ckpt.ckpt and hifigan-ckpt.ckpt{hint}")


# ======================================================================================================================
# PART III. CHECKPOINTS: reading files, the official UNet key map, our save / load / export
# ======================================================================================================================

def read_checkpoint(path, trust=False):
    """torch.load on CPU. Tensors-only files load safely; pickled objects (Lightning) need trust=True. A file that
    cannot be a checkpoint (a folder, empty, neither torch.save's zip nor a pickle: truncated, text) is named."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    problem = ("a folder, not a checkpoint file" if os.path.isdir(path) else
               "an empty file" if os.path.getsize(path) == 0 else None)
    if problem is None and not zipfile.is_zipfile(path):
        with open(path, "rb") as f:  # else a pickle (protocol 2+) or nothing torch.load reads
            problem = None if f.read(1) == b"\x80" else "not a PyTorch checkpoint (truncated, or another format)"
    if problem:
        raise ValueError(f"{path}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses objects beyond tensors and plain containers
        if not trust:
            raise ValueError(f"{path}: this checkpoint stores pickled Python objects (e.g. a Lightning checkpoint); "
                             f"load it only if you trust its source, with trust=True (--trust)") from e
        return torch.load(path, map_location="cpu", weights_only=False)


# ---- The official SyncTrack / MusicLDM UNet weights: one key table, strict on what we claim --------------------------

# Official UNet key fragment -> ours, applied in order (each row at most once); every other key is the same in both.
# The rows below the blank line drop the official Dropout(0)s and one-layer Sequentials from the indices.
OFFICIAL_KEY_MAP = (
    ("switcher_transform.", "instrument_prior.mlp."),
    ("switcher", "instrument_prior.one_hot"),
    ("transformer_blocks.0.", ""),
    ("norm_ct.", "global_attn.norm."),
    ("attn_cross_track.", "global_attn.attn."),
    ("attn_beat.self_attn.in_proj_", "time_attn.in_proj."),
    ("attn_beat.self_attn.out_proj.", "time_attn.out_proj."),
    ("attn_beat.", "time_attn."),

    ("out_layers.3.", "out_layers.2."),  # ResBlock: GN, SiLU, Dropout(0), conv
    ("to_out.0.", "to_out."),            # attention: Sequential(Linear, Dropout(0))
    ("ff.net.0.", "ff.0."),              # feed-forward: Sequential(GEGLU, Dropout(0), Linear)
    ("ff.net.2.", "ff.1."),
)
SYNCTRACK_NEW = (".global_attn.", ".time_attn.", ".instrument_prior.")  # absent from MusicLDM: start fresh there
MUSICLDM_IGNORED = ("film_emb.",)                                   # MusicLDM's CLAP FiLM, replaced by the prior


def is_synctrack_new(key):
    return any(part in "." + key for part in SYNCTRACK_NEW)


def official_to_ours(key):  # OFFICIAL_KEY_MAP's rows in order
    for theirs, ours in OFFICIAL_KEY_MAP:
        key = key.replace(theirs, ours, 1)
    return key


def official_config(unet_config, **overrides):
    """The SyncTrackConfig matching an official `unet_config` dict (variant "official")."""
    u = unet_config
    return SyncTrackConfig(latent_channels=u["in_channels"], model_channels=u["model_channels"],
                           channel_mult=u["channel_mult"], num_res_blocks=u["num_res_blocks"],
                           attention_ds=u["attention_resolutions"], head_channels=u["num_head_channels"],
                           variant="official", **overrides)


def load_official(model, src, ema=True, trust=False, name=None):
    """Load a SyncTrack or MusicLDM Lightning checkpoint (a path, or a loaded dict and its `name`) into `model`;
    returns a report. UNet tensors are `model.diffusion_model.<key>`; with ema=True the EMA shadow `model_ema.<
    "diffusion_model." + key without dots>` is preferred (the official code samples with it). Keys go through
    OFFICIAL_KEY_MAP, shapes are checked; from MusicLDM the SYNCTRACK_NEW tensors start fresh; misfits raise KeyError.
    The released SyncTrack weights need SyncTrackConfig(variant="official")."""
    name = src if isinstance(src, str) else name or "checkpoint"
    loaded = src if isinstance(src, dict) else read_checkpoint(src, trust)
    state = loaded.get("state_dict", loaded)
    prefix = "model.diffusion_model."
    unet = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not unet:
        raise KeyError(f"{name}: no '{prefix}*' tensors: not a SyncTrack or MusicLDM checkpoint")
    shadow = {k: state[e] for k in unet if (e := "model_ema." + ("diffusion_model." + k).replace(".", "")) in state}
    unet.update(shadow if ema else {})
    source = "ema" if ema and shadow else "raw"
    ours = model.state_dict()
    ignored = [k for k in unet if k.startswith(MUSICLDM_IGNORED)]
    mapped = {official_to_ours(k): v for k, v in unet.items() if k not in ignored}
    unexpected = [k for k in mapped if k not in ours]
    misshapen = [f"{k} {tuple(v.shape)} != ours {tuple(ours[k].shape)}" for k, v in mapped.items()
                 if k in ours and v.shape != ours[k].shape]
    has_new = any(map(is_synctrack_new, mapped))  # a SyncTrack checkpoint must have all of them
    new = [] if has_new else [k for k in ours if k not in mapped and is_synctrack_new(k)]
    missing = [k for k in ours if k not in mapped and k not in new]
    problems = [f"{len(v)} {what}: {', '.join(v[:12])}{' …' if len(v) > 12 else ''}" for what, v in
                (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if v]
    if problems:
        raise KeyError(f"{name}: " + "; ".join(problems))
    model.load_state_dict(mapped, strict=False)
    warning = (f"{name}: SyncTrack weights were trained with the official variant; this model is variant="
               f"{model.config.variant!r} and computes a different function with them"
               if has_new and model.config.variant != "official" else None)
    scale = state.get("scale_factor")
    return dict(loaded=len(mapped), source=source, new=new, ignored=ignored, warning=warning,
                scale_factor=None if scale is None else float(scale))


# ---- Our checkpoints: the config inside (rebuilt from it), atomic writes, a float16 export to share ------------------

def save_checkpoint(path, model, **extra):
    """Our checkpoint: {"config": asdict(config), "model": state_dict, **extra}, written by write_checkpoint."""
    write_checkpoint(path, {"config": asdict(model.config), "model": model.state_dict(), **extra})


def write_checkpoint(path, obj):
    """torch.save through PATH.tmp and a rename, so an interrupted save never corrupts the previous file; a failed
    write removes the temp file (a full disk: OSError ENOSPC saying so)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:  # a Python file: torch.save(obj, name) reports a full disk as a RuntimeError
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash cannot leave a renamed, empty file
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if getattr(err, "errno", None) == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"disk full while writing {path}; the previous file is unchanged") from err
        raise


def export_checkpoint(src, dst):
    """A small file to ship or share: the config and the EMA weights in float16 (load_model reads it)."""
    ckpt = read_checkpoint(src)
    half = lambda state: {k: v.half() if v.is_floating_point() else v for k, v in state.items()}  # noqa: E731
    out = dict(config=ckpt["config"], model=half(ckpt.get("ema") or ckpt["model"]), step=ckpt.get("step"),
               scale_factor=ckpt.get("scale_factor"))
    if "first_stage" in ckpt:  # the toy VAE: shipped with the denoiser
        out["first_stage"] = {**ckpt["first_stage"], "vae": half(ckpt["first_stage"]["vae"])}
    write_checkpoint(dst, out)


def load_model(src, ema=True):
    """(SyncTrack rebuilt from its config, in eval mode, with the EMA weights unless ema=False; the checkpoint dict)."""
    ckpt = src if isinstance(src, dict) else read_checkpoint(src)
    if "config" not in ckpt or "model" not in ckpt:
        raise KeyError(f"{'checkpoint' if isinstance(src, dict) else src}: not a SyncTrack-minimal checkpoint (no "
                       f"'config'/'model'); for official checkpoints use load_official")
    model = SyncTrack(SyncTrackConfig.from_dict(ckpt["config"]))
    weights = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    return model.eval(), ckpt
