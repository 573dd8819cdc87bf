"""Shared network primitives: fixed sin-cos position embeddings and a pre-norm transformer block.

Kept small on purpose: only what more than one model family uses. Attention always goes through
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where the backend has them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_position_embedding(length: int, dim: int) -> Tensor:
    """Fixed 1-D sin-cos embedding (Vaswani et al. 2017; as in MAE): float32 (length, dim), dim even.

    Channel pairs ``(2i, 2i+1)`` hold ``sin, cos`` of ``position / 10000^(2i/dim)``.
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    omega = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angle = position * omega  # (L, dim/2)
    out = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(length, dim)
    return out.float()


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, D) via SDPA; no mask (all tokens see all tokens)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d/H)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, d/H)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class MLP(nn.Module):
    """Two-layer GELU feed-forward network, hidden width ``ratio × dim``."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` on (B, N, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module) -> None:
    """MAE/ViT initialisation: Xavier-uniform linear weights, zero biases, unit LayerNorm. Use with ``apply``."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
