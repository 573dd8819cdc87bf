"""A convolutional velocity network v_θ(z_t, t, c) for the AMDF flow: a (2+1)-D U-Net beside the paper's DiT.

Issue 10 asks whether a convolutional network learns the flow faster at CPU scale than the DiT. At `small`
size the DiT's samples keep the start's noise as fragmented chambers (docs/generator.md, round 5): its job
there is mostly denoising, which convolutions do with a strong locality prior. The same contract as
``DiT``: z_t (B, C, T, H', W'), t (B,) in [0, 1], c (B, T, D_ecg) → v (B, C, T, H', W').

Each of the T frames passes 2-D residual blocks (two 3×3 convolutions, FiLM from the frame's own embedding)
on a U-Net of ``len(multipliers)`` resolutions (stride-2 down, nearest up, skip connections); after every
block a circular convolution over time mixes each pixel's T frames (the cine is one cycle, so frame T−1
neighbours frame 0), and at the coarsest resolution temporal self-attention sees the whole cycle. Frame i's
embedding is the flow time t + the aligned ECG token i (so the ECG's timing enters each frame directly) +
the pooled ECG + frame i's position. Every residual branch and the output convolution start at zero: an
untrained network outputs 0 (with clean prediction: the template, as the DiT's adaLN-Zero start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgflowcmr.errors import ConfigError
from ecgflowcmr.limits import check_model_sizes
from ecgflowcmr.models.dit import DiTConfig, TimestepEmbedder
from ecgflowcmr.models.layers import Attention, sincos_position_embedding


@dataclass
class UNetConfig:
    """Sizes of the U-Net; the latent's shape and the ECG width come from ``model.dit`` (set from the runs)."""

    width: int = 32
    """Channels at the latent's own resolution."""
    multipliers: tuple[int, ...] = (1, 2, 2)
    """Channels per resolution as multiples of ``width``; each level after the first halves H' and W'
    (12 → 6 → 3), so the latent size must be divisible by 2^(levels − 1)."""
    blocks: int = 1
    """Residual blocks per level on the way down (the way up has one more, as DDPM's U-Net)."""
    heads: int = 4
    """Heads of the temporal self-attention at the coarsest level."""
    temporal_kernel: int = 3
    """Frames seen by each circular temporal convolution (odd)."""

    def __post_init__(self) -> None:
        self.multipliers = tuple(self.multipliers)
        check_model_sizes("model.unet.", self, widths=("width", "heads"), depths=("blocks",))
        if self.width < 8 or self.width % 8:
            raise ConfigError("model.unet.width", f"must be a positive multiple of 8 (group norm), got {self.width}")
        if not 1 <= len(self.multipliers) <= 4 or any(not 1 <= m <= 8 for m in self.multipliers):
            raise ConfigError("model.unet.multipliers", f"1–4 levels of 1–8 each, got {self.multipliers}")
        if self.blocks < 1:
            raise ConfigError("model.unet.blocks", f"must be ≥ 1, got {self.blocks}")
        coarsest = self.width * self.multipliers[-1]
        if self.heads < 1 or coarsest % self.heads:
            raise ConfigError("model.unet.heads", f"{self.heads} does not divide the coarsest width {coarsest}")
        if self.temporal_kernel < 1 or self.temporal_kernel % 2 == 0:
            raise ConfigError("model.unet.temporal_kernel", f"must be odd and ≥ 1, got {self.temporal_kernel}")

    def check_latent(self, shape: DiTConfig) -> None:
        """Refuse a latent the levels cannot halve evenly."""
        factor = 2 ** (len(self.multipliers) - 1)
        if shape.latent_size % factor:
            raise ConfigError("model.unet.multipliers", f"{len(self.multipliers)} levels need a latent size "
                              f"divisible by {factor}, got {shape.latent_size}")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Two 3×3 convolutions with FiLM from the frame embedding, then a circular temporal convolution.

    x (B·T, C_in, H, W), emb (B·T, E) → (B·T, C_out, H, W); ``frames`` T (the batch's frames are consecutive)."""

    def __init__(self, c_in: int, c_out: int, emb: int, temporal_kernel: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.norm_t = _norm(c_out)
        self.temporal = nn.Conv1d(c_out, c_out, temporal_kernel, padding=temporal_kernel // 2,
                                  padding_mode="circular")

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B·T, C_out, H, W)
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # each (B·T, C_out, 1, 1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        x = self.skip(x) + h
        bt, c, hh, ww = x.shape
        seq = F.silu(self.norm_t(x)).reshape(bt // frames, frames, c, hh * ww).permute(0, 3, 2, 1)  # (B, HW, C, T)
        seq = self.temporal(seq.reshape(-1, c, frames))  # (B·HW, C, T)
        return x + seq.reshape(bt // frames, hh * ww, c, frames).permute(0, 3, 2, 1).reshape(bt, c, hh, ww)


class TemporalSelfAttention(nn.Module):
    """Every pixel attends over the T frames of its own position: (B·T, C, H, W) → same; residual, zero start."""

    def __init__(self, channels: int, heads: int, frames: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.attn = Attention(channels, heads)
        self.register_buffer("pos", sincos_position_embedding(frames, channels), persistent=False)  # (T, C)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        bt, c, h, w = x.shape
        seq = x.reshape(bt // frames, frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, frames, c)  # (B·HW, T, C)
        seq = self.attn(self.norm(seq + self.pos))
        return x + seq.reshape(bt // frames, h * w, frames, c).permute(0, 2, 3, 1).reshape(bt, c, h, w)


class VelocityUNet(nn.Module):
    """v_θ(z_t, t, c): z_t (B, C, T, H', W'), t (B,) in [0, 1], c (B, T, D_ecg) → v (B, C, T, H', W')."""

    def __init__(self, config: UNetConfig, shape: DiTConfig):
        super().__init__()
        config.check_latent(shape)
        self.config, self.shape = config, shape
        widths = [config.width * m for m in config.multipliers]
        emb = 4 * config.width
        self.t_embedder = TimestepEmbedder(emb)
        self.cond_norm = nn.LayerNorm(shape.cond_dim, eps=1e-6)
        self.frame_cond = nn.Linear(shape.cond_dim, emb)  # token i → frame i's embedding
        self.global_cond = nn.Sequential(nn.Linear(shape.cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.register_buffer("pos_time", sincos_position_embedding(shape.frames, emb), persistent=False)  # (T, E)
        self.stem = nn.Conv2d(shape.latent_channels, widths[0], 3, padding=1)
        k = config.temporal_kernel
        self.down, self.downsample, skips, c = nn.ModuleList(), nn.ModuleList(), [widths[0]], widths[0]
        for level, w in enumerate(widths):
            for _ in range(config.blocks):
                self.down.append(ResBlock(c, w, emb, k))
                c = w
                skips.append(c)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResBlock(c, c, emb, k)
        self.mid_attn = TemporalSelfAttention(c, config.heads, shape.frames)
        self.mid2 = ResBlock(c, c, emb, k)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(config.blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), widths[level], emb, k))
                c = widths[level]
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = _norm(c)
        self.out = nn.Conv2d(c, shape.latent_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Every residual branch's last layer and the output start at zero; embeddings small (as the DiT)."""
        for block in (*self.down, self.mid1, self.mid2, *self.up):
            for layer in (block.conv2, block.temporal):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.mid_attn.attn.proj.weight)
        nn.init.zeros_(self.mid_attn.attn.proj.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        for mlp in (self.t_embedder.mlp, self.global_cond):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        nn.init.normal_(self.frame_cond.weight, std=0.02)

    def forward(self, z_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """Eq. 6: v̂ = v_θ(z_t, t, c)."""
        b, ch, frames, h, w = z_t.shape
        c = self.cond_norm(c)  # (B, T, D_ecg)
        emb = self.t_embedder(t)[:, None] + self.global_cond(c.mean(dim=1))[:, None] + self.frame_cond(c)
        emb = F.silu(emb + self.pos_time).reshape(b * frames, -1)  # (B·T, E): frame i's own embedding
        x = self.stem(z_t.transpose(1, 2).reshape(b * frames, ch, h, w))  # (B·T, width, H', W')
        skips = [x]
        blocks = iter(self.down)
        for level in range(len(self.config.multipliers)):
            for _ in range(self.config.blocks):
                x = next(blocks)(x, emb, frames)
                skips.append(x)
            if level < len(self.downsample):
                x = self.downsample[level](x)
                skips.append(x)
        x = self.mid2(self.mid_attn(self.mid1(x, emb, frames), frames), emb, frames)
        blocks = iter(self.up)
        for step, level in enumerate(reversed(range(len(self.config.multipliers)))):
            for _ in range(self.config.blocks + 1):
                x = next(blocks)(torch.cat([x, skips.pop()], dim=1), emb, frames)
            if level > 0:
                x = self.upsample[step](F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = self.out(F.silu(self.out_norm(x)))  # (B·T, C, H', W')
        return x.reshape(b, frames, ch, h, w).transpose(1, 2)  # (B, C, T, H', W')
