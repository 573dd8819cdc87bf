"""A ViT over the cine (50×96×96) for the downstream experiment (paper §3, Tables 2–4): MAE pretraining
(He et al. 2022) and fine-tuning for classification or phenotype regression.

Patching (one code path, a 3-D convolution with stride = kernel over the (1, T, H, W) cine):

* ``tube_frames = frames`` (50, the paper's downstream protocol): the 50 frames are the input channels of
  16×16 patches, 36 tokens, each seeing the whole cycle of its patch;
* ``tube_frames < frames`` (e.g. 5): spatiotemporal tubes (VideoMAE-style), (50/5)·36 = 360 tokens.

Positions are fixed sin-cos embeddings per axis (time, row, column), concatenated. MAE masks a random
``mask_ratio`` of the tokens per cine, encodes the kept ones only, decodes all with mask tokens, and the
loss is the MSE on the masked patches (pixels normalised per patch when ``norm_pix_loss``). Fine-tuning
mean-pools the encoder tokens (no class token), LayerNorm, one linear head: cross-entropy over classes,
or MSE over standardised targets ignoring missing (NaN) ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgflowcmr.errors import ConfigError
from ecgflowcmr.models.layers import TransformerBlock, init_transformer_weights, sincos_position_embedding


@dataclass
class VideoViTConfig:
    """Sizes of the cine ViT, its MAE decoder and objective. Defaults are the ``paper`` preset (ViT-B/16)."""

    frames: int = 50
    """Frames per cine (the canonical 50)."""
    size: int = 96
    """Cine height = width in pixels (the canonical 96)."""
    patch: int = 16
    """Spatial patch side (the paper's downstream models: 16×16)."""
    tube_frames: int = 50
    """Frames per token: ``frames`` = frames as input channels (paper); fewer = spatiotemporal tubes."""
    width: int = 768
    """Encoder width (ViT-Base)."""
    depth: int = 12
    """Encoder blocks."""
    heads: int = 12
    """Encoder attention heads."""
    mlp_ratio: float = 4.0
    """Hidden width of each block's MLP / width."""
    decoder_width: int = 512
    """MAE decoder width (MAE's default lightweight decoder: 512, depth 8, 16 heads)."""
    decoder_depth: int = 8
    """MAE decoder blocks."""
    decoder_heads: int = 16
    """MAE decoder attention heads."""
    mask_ratio: float = 0.75
    """Fraction of tokens masked in MAE pretraining (MAE: 0.75; 0.9 is usual for video tubes)."""
    norm_pix_loss: bool = True
    """MAE target: each patch's pixels normalised by their own mean and std (MAE's better default)."""
    head_dropout: float = 0.0
    """Dropout before the fine-tuning head."""

    def __post_init__(self) -> None:
        if self.size % self.patch:
            raise ConfigError("model.patch", f"{self.patch} does not divide the cine size {self.size}")
        if self.tube_frames < 1 or self.frames % self.tube_frames:
            raise ConfigError("model.tube_frames", f"{self.tube_frames} does not divide the {self.frames} frames")
        for name, dim, heads in (("", self.width, self.heads), ("decoder_", self.decoder_width, self.decoder_heads)):
            if dim < 2 or dim % 2 or heads < 1 or dim % heads:
                raise ConfigError(f"model.{name}width", f"{dim} must be even and divisible by {name}heads {heads}")
        if self.depth < 1 or self.decoder_depth < 1:
            raise ConfigError("model.depth", "depth and decoder_depth must be ≥ 1")
        if not 0 < self.mask_ratio < 1:
            raise ConfigError("model.mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError("model.head_dropout", f"must be in [0, 1), got {self.head_dropout}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens along (time, rows, columns)."""
        return self.frames // self.tube_frames, self.size // self.patch, self.size // self.patch

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def patch_pixels(self) -> int:
        return self.tube_frames * self.patch * self.patch


def grid_position_embedding(grid: tuple[int, int, int], dim: int) -> Tensor:
    """Fixed sin-cos positions for a (t, h, w) token grid: per-axis 1-D embeddings concatenated, float32
    (t·h·w, dim) in raster order (time slowest). ``dim`` even; the column axis takes the remainder."""
    third = 2 * (dim // 6)
    dims = (third, third, dim - 2 * third)
    t, h, w = grid
    axes = [sincos_position_embedding(n, d) if d else torch.zeros(n, 0) for n, d in zip(grid, dims)]
    return torch.cat([axes[0][:, None, None].expand(t, h, w, -1), axes[1][None, :, None].expand(t, h, w, -1),
                      axes[2][None, None, :].expand(t, h, w, -1)], dim=-1).reshape(t * h * w, dim)


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------


class VideoViT(nn.Module):
    """Cine (B, 1, T, H, W) in [-1, 1] → tokens (B, N, D); ``ids_keep`` (B, K) selects kept tokens (MAE)."""

    def __init__(self, config: VideoViTConfig):
        super().__init__()
        self.config = cfg = config
        kernel = (cfg.tube_frames, cfg.patch, cfg.patch)
        self.patch_embed = nn.Conv3d(1, cfg.width, kernel, stride=kernel)  # (B, 1, T, H, W) → (B, D, t, h, w)
        self.register_buffer("pos", grid_position_embedding(cfg.grid, cfg.width)[None], persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)

    def forward(self, cine: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        x = self.patch_embed(cine).flatten(2).transpose(1, 2) + self.pos  # (B, N, D)
        if ids_keep is not None:
            x = x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, N or K, D)


def _init_patch_embed(conv: nn.Conv3d) -> None:
    w = conv.weight.data  # as a linear layer over the flattened patch (MAE)
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(conv.bias)


# --------------------------------------------------------------------------------------------------
# MAE pretraining
# --------------------------------------------------------------------------------------------------


class VideoMAE(nn.Module):
    """``forward(batch) → (loss, parts)`` with ``batch["cine"]`` (B, 1, T, H, W) in [-1, 1]."""

    def __init__(self, config: VideoViTConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = VideoViT(cfg)
        self.decoder_embed = nn.Linear(cfg.width, cfg.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_width))
        self.register_buffer("decoder_pos", grid_position_embedding(cfg.grid, cfg.decoder_width)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(TransformerBlock(cfg.decoder_width, cfg.decoder_heads, cfg.mlp_ratio)
                                            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(cfg.decoder_width, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_width, cfg.patch_pixels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        self.apply(init_transformer_weights)
        _init_patch_embed(self.encoder.patch_embed)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, cine: Tensor) -> Tensor:
        """(B, 1, T, H, W) → (B, N, tube·p·p), tokens in the encoder's raster order (time slowest)."""
        cfg = self.config
        t, h, w = cfg.grid
        x = cine.reshape(cine.shape[0], t, cfg.tube_frames, h, cfg.patch, w, cfg.patch)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(cine.shape[0], t * h * w, cfg.patch_pixels)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, N, tube·p·p) → (B, 1, T, H, W); the inverse of :meth:`patchify`."""
        cfg = self.config
        t, h, w = cfg.grid
        x = patches.reshape(patches.shape[0], t, h, w, cfg.tube_frames, cfg.patch, cfg.patch)
        return x.permute(0, 1, 4, 2, 5, 3, 6).reshape(patches.shape[0], 1, cfg.frames, cfg.size, cfg.size)

    def random_masking(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample random masking by argsort of noise (MAE): ids_keep (B, K), mask (B, N) 1 = masked (in
        token order), ids_restore (B, N) such that gathering [kept, masked] with it gives token order."""
        n = self.config.tokens
        keep = max(1, int(n * (1 - self.config.mask_ratio)))
        noise = torch.rand(batch, n, device=device)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the first `keep` are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(batch, n, device=device)
        mask[:, :keep] = 0
        mask = mask.gather(1, ids_restore)  # (B, N) in token order
        return ids_shuffle[:, :keep], mask, ids_restore

    def forward_encoder(self, cine: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """cine → latent (B, K, D) of the kept tokens, mask (B, N), ids_restore (B, N)."""
        ids_keep, mask, ids_restore = self.random_masking(cine.shape[0], cine.device)
        return self.encoder(cine, ids_keep), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent (B, K, D) → predicted patches (B, N, tube·p·p) for every token."""
        y = self.decoder_embed(latent)  # (B, K, Dd)
        b, k, dd = y.shape
        masked = self.mask_token.expand(b, ids_restore.shape[1] - k, dd)  # (B, N−K, Dd)
        y = torch.cat([y, masked], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, dd))  # token order
        y = y + self.decoder_pos
        for block in self.decoder_blocks:
            y = block(y)
        return self.decoder_pred(self.decoder_norm(y))  # (B, N, P)

    def forward_loss(self, cine: Tensor, pred: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """MSE per patch (normalised pixels if ``norm_pix_loss``), averaged over the masked patches only."""
        target = self.patchify(cine)  # (B, N, P)
        if self.config.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(-1)  # (B, N)
        loss = (per_patch * mask).sum() / mask.sum()
        visible = (per_patch * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
        return loss, {"masked_mse": loss.detach(), "visible_mse": visible.detach()}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        latent, mask, ids_restore = self.forward_encoder(batch["cine"])  # (B, K, D)
        pred = self.forward_decoder(latent, ids_restore)  # (B, N, P)
        return self.forward_loss(batch["cine"], pred, mask)


# --------------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------------


class VideoViTPredictor(nn.Module):
    """Encoder + mean pool + linear head. ``kind="classify"``: ``batch["label"]`` (B,) int64, cross-entropy;
    ``kind="regress"``: ``batch["target"]`` (B, K) standardised float, NaN = missing, MSE over known ones."""

    def __init__(self, config: VideoViTConfig, kind: Literal["classify", "regress"], outputs: int):
        super().__init__()
        if kind not in ("classify", "regress"):
            raise ConfigError("kind", f"must be classify or regress, got {kind!r}")
        if outputs < (2 if kind == "classify" else 1):
            raise ConfigError("outputs", f"{outputs} outputs for {kind}")
        self.config, self.kind, self.outputs = config, kind, outputs
        self.encoder = VideoViT(config)
        self.head_norm = nn.LayerNorm(config.width, eps=1e-6)
        self.head_drop = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(config.width, outputs)
        self.apply(init_transformer_weights)
        _init_patch_embed(self.encoder.patch_embed)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE fine-tuning: a near-zero head

    def predict(self, cine: Tensor) -> Tensor:
        """cine (B, 1, T, H, W) → logits (B, classes) or standardised predictions (B, K)."""
        pooled = self.encoder(cine).mean(1)  # (B, D)
        return self.head(self.head_drop(self.head_norm(pooled)))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.predict(batch["cine"])
        if self.kind == "classify":
            loss = F.cross_entropy(out, batch["label"])
            acc = (out.argmax(1) == batch["label"]).float().mean()
            return loss, {"ce": loss.detach(), "accuracy": acc.detach()}
        target = batch["target"]
        known = torch.isfinite(target)
        err = torch.where(known, out - torch.nan_to_num(target), torch.zeros_like(out)) ** 2
        loss = err.sum() / known.sum().clamp_min(1)
        return loss, {"mse": loss.detach()}


PRESETS: dict[str, VideoViTConfig] = {
    "paper": VideoViTConfig(),
    "paper_tubes": VideoViTConfig(tube_frames=5, mask_ratio=0.9),
    "tiny": VideoViTConfig(width=96, depth=3, heads=3, decoder_width=64, decoder_depth=1, decoder_heads=2),
    "tiny_tubes": VideoViTConfig(tube_frames=10, width=96, depth=3, heads=3, decoder_width=64, decoder_depth=1,
                                 decoder_heads=2, mask_ratio=0.9),
}
"""Named sizes. ``paper``: ViT-B/16 with frames as channels, MAE's decoder; ``tiny``: a 2-core CPU in minutes."""
