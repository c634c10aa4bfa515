"""SyncTrack, minimal: one readable file beside the paper.

"SyncTrack: Rhythmic Stability and Synchronization in Multi-Track Music Generation" (Wang, Zhang et al., ICLR 2026).
SyncTrack is a 4-track (bass, drums, guitar, piano) latent diffusion model on top of MusicLDM. A UNet denoiser
processes each track's latent with track-shared modules (ResBlock + inner-track, global cross-track and time-specific
cross-track attention) and track-specific modules conditioned on a learnable instrument prior.

The file follows §3 of the paper, top to bottom:
    config ............................ SyncTrackConfig (Table A3, §5.1, official config)
    embeddings ........................ timestep_embedding, InstrumentPrior (§3 "Track-specific modules")
    ResBlock .......................... ResBlock (Fig. 3b)
    attention ......................... Attention (inner-track), GlobalCrossTrackAttention (Eq. 4),
                                        TimeCrossTrackAttention (Eq. 5), TrackSharedTransformer (Fig. 3a)
    modules ........................... TrackSpecificModule, TrackSharedModule (Fig. 2b, Table A3)
    denoiser .......................... SyncTrack: ε_θ({z_l^s}, l)
    diffusion ......................... q_sample, diffusion_loss (Eq. 2), ddim_sample (DDIM, App. A.8 arrangement)
    checkpoints ....................... load_official, save/load of our own checkpoints
    first stage ....................... log_mel, AutoencoderKL, HiFiGAN, offline stage (Eqs. 1 and 3)

Left out: the official code's dead mixture conditioning (its UNet discards the concat channels) and classifier-free
guidance (scale 0, a no-op there); Lightning, YAML and registries.

Notation (code name -> paper symbol):
    B batch, S tracks (s), C channels, T time frames (t), F frequency bins (f), L tokens per track (T·F), N audio samples
    z: latent z^s (Eq. 1), z_t / x: noisy latent z_l, t: diffusion step l, eps: ε, alpha_bar: ᾱ_l
"""
import math
import os
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

TRACKS = ("bass", "drums", "guitar", "piano")  # §5.1: Slakh2100 4-stem subset, official stem order


# ----------------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class SyncTrackConfig:
    """Every hyper-parameter of the model; the defaults are the paper's (Table A3) / official values."""
    tracks: tuple = TRACKS                 # §5.1, official `stems`
    latent_channels: int = 8               # C: official VAE z_channels (16 for the offline first stage)
    latent_time: int = 256                 # T: 1024 mel frames / 4 (official hard-codes 256)
    latent_freq: int = 16                  # F: 64 mel bins / 4 (official hard-codes 16)
    model_channels: int = 128              # Table A3 row 4-7
    channel_mult: tuple = (1, 2, 3, 5)     # Table A3 (widths 128/256/384/640)
    num_res_blocks: int = 2                # Table A3
    attention_ds: tuple = (2, 4, 8)        # official attention_resolutions: downsampling factors with attention
    head_channels: int = 32                # official num_head_channels
    prior_hidden: int = 128                # Table A3 row 4-4: instrument prior MLP width
    # §3 variants: "paper" = Eq. 5 as written; "official" = what the released weights compute (README "Differences")
    variant: str = "paper"
    # Table 6 ablations: ① instrument prior, ② global and ③ time-specific cross-track attention, their order, alternation
    instrument_prior: bool = True
    global_attention: bool = True
    time_attention: bool = True
    reorder: bool = False                  # SyncTrack-reorder: ③ before ②
    alternate: bool = False                # SyncTrack-alternate: ② and ③ alternate across track-shared modules
    # diffusion (official config; the paper gives L = 1000)
    n_timesteps: int = 1000
    beta_start: float = 0.0015             # LDM "linear": linear in √β
    beta_end: float = 0.0195
    # audio: which first stage maps waveforms to latents ("musicldm" = Eq. 1/3 with weights, "offline" = no weights)
    first_stage: str = "musicldm"
    sample_rate: int = 16000               # MusicLDM
    clip_samples: int = 163840             # 10.24 s (official)

    def __post_init__(self):
        self.tracks, self.channel_mult, self.attention_ds = tuple(self.tracks), tuple(self.channel_mult), \
            tuple(self.attention_ds)
        if self.variant not in ("paper", "official"):
            raise ValueError(f"variant must be 'paper' or 'official', got {self.variant!r}")
        if self.model_channels % 32:
            raise ValueError("model_channels must be a multiple of 32 (GroupNorm with 32 groups)")

    @property
    def time_embed_dim(self):
        return 4 * self.model_channels     # ADM/official: 512 at model_channels 128

    @property
    def latent_shape(self):
        return (len(self.tracks), self.latent_channels, self.latent_time, self.latent_freq)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SyncTrackConfig keys: {unknown}")
        return cls(**d)

    @classmethod
    def from_official(cls, unet_config, **overrides):
        """The config matching an official `unet_config` dict (variant "official")."""
        return cls(latent_channels=unet_config["in_channels"], model_channels=unet_config["model_channels"],
                   channel_mult=tuple(unet_config["channel_mult"]), num_res_blocks=unet_config["num_res_blocks"],
                   attention_ds=tuple(unet_config["attention_resolutions"]),
                   head_channels=unet_config["num_head_channels"], variant="official", **overrides)


PRESETS = {
    "paper": dict(),
    # a laptop-CPU model: 2.56 s clips on the offline first stage (16 × 64 × 16 latents)
    "toy": dict(latent_channels=16, latent_time=64, latent_freq=16, model_channels=64, channel_mult=(1, 2, 2),
                num_res_blocks=1, attention_ds=(2, 4), first_stage="offline", clip_samples=40960),
    # for tests: the smallest model that still has every module. 64 channels, not 32: with GroupNorm(32) on
    # 32 channels every group is one channel, which normalises away the per-channel time/instrument embedding.
    "tiny": dict(latent_channels=16, latent_time=16, latent_freq=16, model_channels=64, channel_mult=(1, 1),
                 num_res_blocks=1, attention_ds=(2,), prior_hidden=32, first_stage="offline", clip_samples=10240),
}


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings: diffusion step l and the learnable instrument prior
# ----------------------------------------------------------------------------------------------------------------------

def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of the step l: [cos(l·ω_i), sin(l·ω_i)], ω_i = max_period^(-i/(dim/2)) (official: cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]                     # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class InstrumentPrior(nn.Module):
    """§3 "Track-specific modules": one-hot track id V → positional encoding → two-layer MLP → e_s.

    The encoding is [sin(V), cos(V)] (one frequency, as the official code) of the anti-diagonal one-hot (official:
    track s is hot at position S−1−s). The result is concatenated to the time embedding (see SyncTrack.forward)."""

    def __init__(self, n_tracks, hidden, out_dim):
        super().__init__()
        self.register_buffer("one_hot", torch.eye(n_tracks).fliplr())  # frozen (Table A3 row 2-1: 16 params)
        self.mlp = nn.Sequential(nn.Linear(2 * n_tracks, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self):
        v = torch.cat([torch.sin(self.one_hot), torch.cos(self.one_hot)], dim=-1)  # (S, 2S)
        return self.mlp(v)                                                           # (S, out_dim)


# ----------------------------------------------------------------------------------------------------------------------
# ResBlock (Fig. 3b): conv stage 1, + projected [time ‖ instrument] embedding, conv stage 2
# ----------------------------------------------------------------------------------------------------------------------

def group_norm(ch, eps=1e-5):
    return nn.GroupNorm(32, ch, eps=eps)


def zero_init(module):
    """Zero a layer that ends a residual branch, so the branch starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM ResBlock. The paper's "first ResBlock + instrument prior + second ResBlock" (§3) is this block's two conv
    stages with the embedding added in between; every ResBlock of the UNet sees the prior (official)."""

    def __init__(self, ch_in, emb_dim, ch_out):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, ch_out))
        self.out_layers = nn.Sequential(group_norm(ch_out), nn.SiLU(), nn.Dropout(0.0),
                                        zero_init(nn.Conv2d(ch_out, ch_out, 3, padding=1)))
        self.skip_connection = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x, emb):
        # x: (B*S, C_in, T, F), emb: (B*S, E)
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]             # the prior enters here, broadcast over T, F
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


# ----------------------------------------------------------------------------------------------------------------------
# Attention: inner-track, global cross-track (Eq. 4), time-specific cross-track (Eq. 5)
# ----------------------------------------------------------------------------------------------------------------------

def multi_head_attention(q, k, v, heads):
    """softmax(q kᵀ/√d) v with `heads` heads; q: (N, Lq, C), k, v: (N, Lk, C) -> (N, Lq, C)."""
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, L, C) -> (N, heads, L, C/heads)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).flatten(2)                           # (N, heads, Lq, C/heads) -> (N, Lq, C)


class Attention(nn.Module):
    """Multi-head self-attention over a token set (official `CrossAttention` with context None: no bias on q/k/v)."""

    def __init__(self, ch, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(ch, ch, bias=False) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(ch, ch))

    def forward(self, x):
        # x: (N, L, C) -> (N, L, C)
        return self.to_out(multi_head_attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))


class GlobalCrossTrackAttention(nn.Module):
    """Eq. (4): Attn(W^Q1 z_{t,f}^s, W^K1 z_{1:T,1:F}^{1:S}, W^V1 z_{1:T,1:F}^{1:S}).

    Every token of every track attends to all tokens of all tracks of the same sample, which is plain self-attention
    over the sample's S·L tokens. (The official code pairs the queries of sample b with the keys of another sample
    when B > 1; both variants here are per-sample correct, and equal to the official at B = 1.)"""

    def __init__(self, ch, heads, n_tracks):
        super().__init__()
        self.n_tracks = n_tracks
        self.norm = nn.LayerNorm(ch)
        self.attn = Attention(ch, heads)

    def forward(self, x):
        # x: (B*S, L, C)
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
        return x + self.linear2(F.relu(self.linear1(self.norm2(x))))

    def forward(self, x, T, F_):
        # x: (B*S, L, C) with L = T·F (token index t·F + f)
        BS, L, C = x.shape
        S, B = self.n_tracks, BS // self.n_tracks
        h = x.reshape(B, S, T, F_, C)
        if self.variant == "paper":
            h = h.permute(0, 2, 1, 3, 4).reshape(B * T, S * F_, C)         # (B, S, T, F, C) -> (B*T, S*F, C)
            h = self.encoder_layer(h).reshape(B, T, S, F_, C).permute(0, 2, 1, 3, 4)
            return h.reshape(BS, L, C)                                       # (B, S, T, F, C) -> (B*S, L, C)
        h = h.permute(0, 2, 3, 1, 4).reshape(B * T * F_, S, C)             # (B, S, T, F, C) -> (B*T*F, S, C)
        h = self.encoder_layer(h).reshape(B, T, F_, S, C).permute(0, 3, 1, 2, 4)
        return x + h.reshape(BS, L, C)                                       # official: 2x + SA + FFN


class GEGLU(nn.Module):
    """Feed-forward with a GELU-gated linear unit (official `ff`: ch -> 4ch -> ch)."""

    def __init__(self, ch):
        super().__init__()
        self.proj = nn.Linear(ch, 8 * ch)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class TrackSharedTransformer(nn.Module):
    """The attention part of a track-shared module (Fig. 3a), weights shared by all tracks:
    inner-track attention → global cross-track (②) → time-specific cross-track (③) → inner-track attention → FFN.
    (The official block has two inner-track self-attentions, `attn1` and `attn2`; the paper draws one.)"""

    def __init__(self, ch, cfg, use_global, use_time):
        super().__init__()
        heads = ch // cfg.head_channels
        self.reorder = cfg.reorder
        self.norm = group_norm(ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.norm1, self.attn1 = nn.LayerNorm(ch), Attention(ch, heads)
        self.global_attn = GlobalCrossTrackAttention(ch, heads, len(cfg.tracks)) if use_global else None
        self.time_attn = TimeCrossTrackAttention(ch, heads, len(cfg.tracks), cfg.variant) if use_time else None
        self.norm2, self.attn2 = nn.LayerNorm(ch), Attention(ch, heads)
        self.norm3, self.ff = nn.LayerNorm(ch), nn.Sequential(GEGLU(ch), nn.Dropout(0.0), nn.Linear(4 * ch, ch))
        self.proj_out = zero_init(nn.Conv2d(ch, ch, 1))

    def cross_track(self, x, T, F_):
        steps = [lambda h: self.global_attn(h) if self.global_attn else h,
                 lambda h: self.time_attn(h, T, F_) if self.time_attn else h]
        for step in reversed(steps) if self.reorder else steps:
            x = step(x)
        return x

    def forward(self, x):
        # x: (B*S, C, T, F)
        _, C, T, F_ = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B*S, C, T, F) -> (B*S, L, C), L = T·F
        h = h + self.attn1(self.norm1(h))                          # inner-track attention
        h = self.cross_track(h, T, F_)                             # ② then ③ (Eqs. 4, 5)
        h = h + self.attn2(self.norm2(h))
        h = h + self.ff(self.norm3(h))
        h = h.transpose(1, 2).reshape(x.shape)                     # (B*S, L, C) -> (B*S, C, T, F)
        return x + self.proj_out(h)


# ----------------------------------------------------------------------------------------------------------------------
# Track-specific and track-shared modules (Fig. 2b; Table A3 labels each UNet block one or the other)
# ----------------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------------
# The denoiser ε_θ({z_l^s}_{s=1}^S, l)
# ----------------------------------------------------------------------------------------------------------------------

class SyncTrack(nn.Module):
    """The SyncTrack UNet (Fig. 2b, Table A3). forward(z_t (B, S, C, T, F), t (B,)) -> ε̂ (B, S, C, T, F).

    Tracks are folded into the batch, (B, S) -> B·S rows, so convolutions and inner-track attention see one track at
    a time; the cross-track attentions unfold them again. The module names follow the official UNet, so the released
    weights map onto it through OFFICIAL_KEY_MAP."""

    def __init__(self, cfg: SyncTrackConfig):
        super().__init__()
        self.config = cfg
        mc, E, S = cfg.model_channels, cfg.time_embed_dim, len(cfg.tracks)
        emb_dim = 2 * E if cfg.instrument_prior else E   # [time ‖ instrument prior] (official concat; Table A3 4-8)
        self.time_embed = nn.Sequential(nn.Linear(mc, E), nn.SiLU(), nn.Linear(E, E))
        self.instrument_prior = InstrumentPrior(S, cfg.prior_hidden, E) if cfg.instrument_prior else None
        n_transformers = 0

        def shared(ch_in, ch_out):  # ResBlock + TrackSharedTransformer; `alternate` keeps ② on even, ③ on odd ones
            nonlocal n_transformers
            odd = n_transformers % 2 == 1
            n_transformers += 1
            use_global = cfg.global_attention and not (cfg.alternate and odd)
            use_time = cfg.time_attention and not (cfg.alternate and not odd)
            return [ResBlock(ch_in, emb_dim, ch_out), TrackSharedTransformer(ch_out, cfg, use_global, use_time)]

        # Encoder: the channel count of every block output is remembered for the skip connections.
        self.input_blocks = nn.ModuleList([TrackSpecificModule([nn.Conv2d(cfg.latent_channels, mc, 3, padding=1)])])
        skip_chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = shared(ch, mult * mc) if ds in cfg.attention_ds else [ResBlock(ch, emb_dim, mult * mc)]
                self.input_blocks.append((TrackSharedModule if len(block) > 1 else TrackSpecificModule)(block))
                ch = mult * mc
                skip_chans.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.input_blocks.append(TrackSharedModule([Downsample(ch)]))
                skip_chans.append(ch)
                ds *= 2
        res_in, attn, res_out = ResBlock(ch, emb_dim, ch), shared(ch, ch)[1], ResBlock(ch, emb_dim, ch)
        self.middle_block = TrackSharedModule([res_in, attn, res_out])
        # Decoder: each block takes the previous output concatenated with a skip.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                ch_in = ch + skip_chans.pop()
                block = shared(ch_in, mult * mc) if ds in cfg.attention_ds else [ResBlock(ch_in, emb_dim, mult * mc)]
                ch = mult * mc
                if level and i == cfg.num_res_blocks:
                    block.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append((TrackSpecificModule if len(block) == 1 else TrackSharedModule)(block))
        self.out = nn.Sequential(group_norm(mc), nn.SiLU(), zero_init(nn.Conv2d(mc, cfg.latent_channels, 3, padding=1)))
        self.register_buffer("alphas_cumprod", alpha_bar_schedule(cfg), persistent=False)

    def forward(self, z_t, t):
        # z_t: (B, S, C, T, F), t: (B,) diffusion steps l, one per sample, shared by its S tracks
        B, S, C, T, F_ = z_t.shape
        x = z_t.reshape(B * S, C, T, F_)                                   # (B, S, C, T, F) -> (B*S, C, T, F)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels)).repeat_interleave(S, dim=0)
        if self.instrument_prior is not None:                              # "added to the time embedding" (§3)
            emb = torch.cat([emb, self.instrument_prior().repeat(B, 1)], dim=-1)  # (B*S, 2E), rows b·S + s
        skips = []
        for block in self.input_blocks:
            x = block(x, emb)
            skips.append(x)
        x = self.middle_block(x, emb)
        for block in self.output_blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.out(x).reshape(B, S, C, T, F_)                         # (B*S, C, T, F) -> (B, S, C, T, F)


# ----------------------------------------------------------------------------------------------------------------------
# Diffusion: forward process, training loss (Eq. 2), DDIM sampling
# ----------------------------------------------------------------------------------------------------------------------

def alpha_bar_schedule(cfg):
    """ᾱ_l = Π_{i≤l} (1 − β_i) with β linear in √β (LDM "linear"; official config), in float64 then float32."""
    betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, cfg.n_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def q_sample(z0, t, noise, alpha_bar):
    """z_l = √ᾱ_l z_0 + √(1 − ᾱ_l) ε, for every track of each sample at that sample's l."""
    a = alpha_bar[t].view(-1, 1, 1, 1, 1)                              # (B,) -> (B, 1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def diffusion_loss(model, z0, generator=None):
    """Eq. (2): L(θ) = E_{ε, z, l} ||ε − ε_θ({z_l^s}_{s=1}^S, l)||², l uniform, one l per sample for all S tracks."""
    t = torch.randint(0, model.config.n_timesteps, (z0.shape[0],), device=z0.device, generator=generator)
    noise = torch.randn(z0.shape, device=z0.device, dtype=z0.dtype, generator=generator)
    z_t = q_sample(z0, t, noise, model.alphas_cumprod)
    return F.mse_loss(model(z_t, t).float(), noise.float())


def ddim_timesteps(n_timesteps, steps):
    """Official convention: uniform steps shifted by one, e.g. 1, 6, …, 996 for 200 of 1000, visited in reverse."""
    if not 1 <= steps <= n_timesteps:
        raise ValueError(f"steps must be in 1..{n_timesteps}, got {steps}")
    return torch.arange(steps) * (n_timesteps // steps) + 1


@torch.no_grad()
def ddim_sample(model, x_T, steps=200, eta=1.0, known=None, known_mask=None, generator=None, progress=True):
    """DDIM (Song et al., 2021) from x_T (B, S, C, T, F); η = 1 is the official default (stochastic), η = 0 deterministic.

    Arrangement (App. A.8, official `inpainting`): with `known` latents and `known_mask` (S,) or (B, S) bools, the known
    tracks are replaced by their ground truth noised to the current level before every model call, so only the other
    tracks are generated; the returned latent holds `known` exactly on those tracks."""
    alpha_bar = model.alphas_cumprod
    ts = ddim_timesteps(model.config.n_timesteps, steps).tolist()
    prev = [0] + ts[:-1]                          # ᾱ_prev of the first (smallest) step is ᾱ_0, not 1 (official)
    mask = None
    if known is not None:
        mask = torch.as_tensor(known_mask, dtype=torch.bool, device=x_T.device).expand(x_T.shape[:2])
        mask = mask[:, :, None, None, None].to(x_T.dtype)                   # (B, S) -> (B, S, 1, 1, 1)
    x = x_T
    for t, t_prev in tqdm(list(zip(ts, prev))[::-1], desc="DDIM", disable=not progress, leave=False):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if mask is not None:                      # hold the known tracks at q(z_t | z_0)
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = mask * q_sample(known, t_batch, noise, alpha_bar) + (1 - mask) * x
        eps = model(x, t_batch).to(x.dtype)
        a, a_prev = alpha_bar[t], alpha_bar[t_prev]
        # 1. predicted z_0 = (z_t − √(1−ᾱ_t) ε̂) / √ᾱ_t                      (DDIM Eq. 12, first term)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        # 2. σ_t = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)               (DDIM Eq. 16)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        # 3. direction pointing to z_t: √(1 − ᾱ_prev − σ²) ε̂                  (DDIM Eq. 12, second term)
        direction = (1 - a_prev - sigma ** 2).sqrt() * eps
        # 4. z_prev = √ᾱ_prev ẑ_0 + direction + σ_t z,  z ~ N(0, I)           (DDIM Eq. 12)
        x = a_prev.sqrt() * x0 + direction
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    if mask is not None:
        x = mask * known + (1 - mask) * x
    return x


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: the official SyncTrack / MusicLDM weights, and our own
# ----------------------------------------------------------------------------------------------------------------------

# Official UNet key fragment -> ours; the first matching row applies. Every other key is the same in both.
OFFICIAL_KEY_MAP = (
    ("switcher_transform.", "instrument_prior.mlp."),
    ("switcher", "instrument_prior.one_hot"),
    ("transformer_blocks.0.norm_ct.", "global_attn.norm."),
    ("transformer_blocks.0.attn_cross_track.", "global_attn.attn."),
    ("transformer_blocks.0.attn_beat.self_attn.in_proj_", "time_attn.in_proj."),
    ("transformer_blocks.0.attn_beat.self_attn.out_proj.", "time_attn.out_proj."),
    ("transformer_blocks.0.attn_beat.", "time_attn."),
    ("transformer_blocks.0.ff.net.", "ff."),
    ("transformer_blocks.0.", ""),
)
SYNCTRACK_NEW = (".global_attn.", ".time_attn.", ".instrument_prior.")  # absent from MusicLDM: start fresh there
MUSICLDM_IGNORED = ("film_emb.",)                                   # MusicLDM's CLAP FiLM, replaced by the prior


def is_synctrack_new(key):
    return any(part in "." + key for part in SYNCTRACK_NEW)


def official_to_ours(key):
    for theirs, ours in OFFICIAL_KEY_MAP:
        if theirs in key:
            return key.replace(theirs, ours, 1)
    return key


def read_checkpoint(path, trust=False):
    """torch.load on CPU. Tensors-only files load safely; pickled objects (Lightning) need trust=True."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for objects beyond plain tensors
        if not trust:
            raise ValueError(f"{path}: this checkpoint stores pickled Python objects (e.g. a Lightning checkpoint); "
                             f"load it only if you trust its source, with trust=True (--trust)") from e
        return torch.load(path, map_location="cpu", weights_only=False)


def load_official(model, src, ema=True, trust=False):
    """Load a SyncTrack or MusicLDM Lightning checkpoint (path or loaded dict) into `model`; returns a report dict.

    UNet tensors are `state_dict["model.diffusion_model.<key>"]`; with ema=True the EMA shadow
    `model_ema.<"diffusion_model."+key without dots>` is preferred where present (the official code samples with it).
    Keys are mapped by OFFICIAL_KEY_MAP and shape-checked. For a MusicLDM checkpoint the SyncTrack-new tensors
    (SYNCTRACK_NEW) are reported as newly initialised; anything else missing, unexpected or misshapen raises KeyError.
    The released SyncTrack weights need SyncTrackConfig(variant="official")."""
    name = src if isinstance(src, str) else "checkpoint"
    state = src if isinstance(src, dict) else read_checkpoint(src, trust)
    state = state.get("state_dict", state)
    prefix = "model.diffusion_model."
    unet = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not unet:
        raise KeyError(f"{name}: no '{prefix}*' tensors: not a SyncTrack or MusicLDM checkpoint")
    source = "raw"
    if ema:
        shadow = {k: state["model_ema." + ("diffusion_model." + k).replace(".", "")] for k in unet
                  if "model_ema." + ("diffusion_model." + k).replace(".", "") in state}
        if shadow:
            unet.update(shadow)
            source = "ema"
    ours = model.state_dict()
    mapped, unexpected, ignored, misshapen = {}, [], [], []
    for key, value in unet.items():
        if key.startswith(MUSICLDM_IGNORED):
            ignored.append(key)
            continue
        our_key = official_to_ours(key)
        if our_key not in ours:
            unexpected.append(key)
        elif ours[our_key].shape != value.shape:
            misshapen.append(f"{key} {tuple(value.shape)} != ours {tuple(ours[our_key].shape)}")
        else:
            mapped[our_key] = value
    missing = [k for k in ours if k not in mapped]
    has_new = any(map(is_synctrack_new, mapped))  # a SyncTrack checkpoint must have all of them
    new = [] if has_new else [k for k in missing if is_synctrack_new(k)]
    missing = [k for k in missing if k not in new]
    problems = [(f"{len(v)} {what}", v) for what, v in
                (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if v]
    if problems:
        raise KeyError(f"{name}: " + "; ".join(f"{head}: {', '.join(v[:12])}{' …' if len(v) > 12 else ''}"
                                               for head, v in problems))
    model.load_state_dict(mapped, strict=False)
    scale = state.get("scale_factor")
    return dict(loaded=len(mapped), source=source, new=new, ignored=ignored,
                scale_factor=None if scale is None else float(scale))


def save_checkpoint(path, model, **extra):
    """Our checkpoint: {"config": asdict(config), "model": state_dict, **extra}, written atomically (temp + rename)
    so an interrupted save never corrupts the previous file."""
    tmp = f"{path}.tmp"
    torch.save({"config": asdict(model.config), "model": model.state_dict(), **extra}, tmp)
    os.replace(tmp, path)


def load_model(path, ema=True, map_location="cpu"):
    """Rebuild SyncTrack from one of our checkpoints (config inside); EMA weights when present and ema=True.
    Returns (model, checkpoint dict)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if "config" not in ckpt or "model" not in ckpt:
        raise KeyError(f"{path}: not a SyncTrack-minimal checkpoint (no 'config'/'model'); "
                       f"for official checkpoints use load_official")
    model = SyncTrack(SyncTrackConfig.from_dict(ckpt["config"]))
    weights = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    return model.eval(), ckpt
