"""The evaluation instrument's eyes: a small 2-D U-Net that segments the four-chamber cine frame by frame.

Labels (DESIGN.md §4): 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool, 4 LA, 5 RA. It is
trained on the real cines of the user's own cohort with their masks (never on generated cines), with
blur, noise and contrast augmentation so that it also reads the softer generated frames. Its bottleneck,
pooled over the image, is the in-domain feature of ``fid_cmr`` / ``fvd_cmr``.

A trained segmenter is a folder: ``model.safetensors`` + ``config.json`` (+ ``metrics.json``: Dice per
class on the validation split). Cines are given in [0, 1] (the display scale of generated cines),
(N, T, H, W) float.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgflowcmr.atomic import atomic_dir
from ecgflowcmr.canonical import SPACING_MM
from ecgflowcmr.errors import ConfigError, InputError

CLASSES = ("background", "lv_pool", "lv_myocardium", "rv_pool", "la", "ra")
PIXEL_AREA_MM2 = SPACING_MM * SPACING_MM


@dataclass
class SegConfig:
    """Network size and training schedule of the segmenter."""

    widths: tuple[int, ...] = (12, 24, 48, 64)
    """Channels per U-Net level (full resolution first); each level halves the image side."""
    steps: int = 300
    """Optimiser steps (batches of random frames)."""
    batch_size: int = 16
    lr: float = 5e-3
    seed: int = 0
    augment: bool = True
    """Random blur (σ ≤ 1.5 px), Gaussian noise, contrast and brightness: generated frames are softer."""
    val_items: int = 8
    """Validation cines for the Dice figures in metrics.json."""
    time_limit_s: float | None = None
    """Stop after this many seconds of training even before ``steps`` (the demo's budget), but never before
    ``min_steps``; None: no limit. The learning-rate schedule is laid out for ``steps``."""
    min_steps: int = 0
    """Steps done whatever the time limit: on a busy machine a time budget alone gave 8 steps and Dice ≈ 0."""

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ConfigError("segmentation.widths", f"need ≥ 2 positive widths, got {self.widths}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("segmentation", "steps, batch_size must be ≥ 1 and lr > 0")


PRESETS: dict[str, SegConfig] = {
    "default": SegConfig(),
    "tiny": SegConfig(widths=(4, 8, 16), steps=150, batch_size=8, lr=1e-2, val_items=2),
    "demo": SegConfig(widths=(8, 16, 32, 48), steps=200, batch_size=12, time_limit_s=60.0, min_steps=120),
}


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3×3 convolutions with GroupNorm(1) (per-image normalisation) and SiLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(1, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(1, c_out), nn.SiLU())


class SegmentationNet(nn.Module):
    """U-Net: x (N, 1, H, W) in [-1, 1] → logits (N, 6, H, W); H, W divisible by 2^(levels − 1)."""

    def __init__(self, config: SegConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.down = nn.ModuleList([_block(1, w[0])] + [_block(a, b) for a, b in itertools.pairwise(w)])
        self.up = nn.ModuleList([_block(b + a, a) for a, b in itertools.pairwise(w)])
        self.head = nn.Conv2d(w[0], len(CLASSES), 1)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Skip features per level, full resolution first; the last is the bottleneck."""
        skips = [self.down[0](x)]
        for block in self.down[1:]:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        return skips

    def decode(self, skips: list[Tensor]) -> Tensor:
        """Skip features (from :meth:`encode`) → logits (N, 6, H, W)."""
        h = skips[-1]
        for skip, block in zip(reversed(skips[:-1]), reversed(self.up)):
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return self.head(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def features(self, x: Tensor) -> Tensor:
        """x (N, 1, H, W) → (N, widths[-1]): the bottleneck averaged over the image (in-domain feature)."""
        return self.encode(x)[-1].mean(dim=(2, 3))


# --------------------------------------------------------------------------------------------------
# A trained segmenter: predictions, chamber areas, features
# --------------------------------------------------------------------------------------------------


class Segmenter:
    """A trained :class:`SegmentationNet` in eval mode, applied to cines in [0, 1] frame by frame.

    Inference runs in channels-last layout (NHWC: ~1.5× faster convolutions on CPU than NCHW here) on
    batches of ``BATCH_FRAMES`` frames (they stay in cache: 16- to 200-frame batches were 1.3–1.6× slower per
    frame). Labels and areas equal the NCHW network's (checked on real and generated cines, docs/evaluation.md
    §5); the weights keep their values, only their memory layout changes.
    """

    BATCH_FRAMES = 8

    def __init__(self, net: SegmentationNet, folder: Path | None = None, checksum: str = ""):
        self.net = net.eval().to(memory_format=torch.channels_last)
        self.folder = folder
        self.checksum = checksum

    @property
    def config(self) -> SegConfig:
        return self.net.config

    def _frames(self, cines01: np.ndarray, batch_frames: int):
        """Yield (N·T slice, float tensor (b, 1, H, W) in [-1, 1], channels-last) over all frames of the cines."""
        x = np.asarray(cines01)
        if x.ndim != 4:
            raise InputError("cines", f"expected (N, T, H, W) in [0, 1], got shape {x.shape}")
        flat = x.reshape(-1, *x.shape[-2:])
        for start in range(0, len(flat), batch_frames):
            chunk = torch.from_numpy(np.ascontiguousarray(flat[start:start + batch_frames], dtype=np.float32))
            yield slice(start, start + len(chunk)), (chunk[:, None] * 2 - 1).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _labels(logits: Tensor) -> Tensor:
        """logits (b, 6, H, W) → labels (b, H, W) int64: the first maximal class, as ``argmax`` (whose NCHW
        kernel took a fifth of the network's time; ``max`` returns the same index and is ~20× faster)."""
        return logits.max(dim=1).indices

    @torch.inference_mode()
    def predict(self, cines01: np.ndarray, batch_frames: int = BATCH_FRAMES) -> np.ndarray:
        """(N, T, H, W) in [0, 1] → labels uint8 (N, T, H, W)."""
        x = np.asarray(cines01)
        out = np.empty(x.shape, dtype=np.uint8)
        flat = out.reshape(-1, *x.shape[-2:])
        for where, frames in self._frames(x, batch_frames):
            flat[where] = self._labels(self.net(frames)).to(torch.uint8).numpy()
        return out

    @torch.inference_mode()
    def analyse(self, cines01: np.ndarray, batch_frames: int = BATCH_FRAMES) -> tuple[np.ndarray, np.ndarray]:
        """One pass: chamber areas (N, T, 5) mm² (classes 1–5, canonical 1.8 mm pixels) and frame features
        (N, T, widths[-1])."""
        x = np.asarray(cines01)
        n, t = x.shape[:2]
        k = len(CLASSES)
        areas = np.empty((n * t, k - 1), dtype=np.float64)
        feats = np.empty((n * t, self.config.widths[-1]), dtype=np.float32)
        for where, frames in self._frames(x, batch_frames):
            skips = self.net.encode(frames)
            feats[where] = skips[-1].mean(dim=(2, 3)).numpy()
            labels = self._labels(self.net.decode(skips))  # (b, H, W)
            b = labels.shape[0]
            offset = torch.arange(b).view(b, 1, 1) * k  # one bin per (frame, class)
            counts = torch.bincount((labels + offset).flatten(), minlength=b * k).view(b, k)  # (b, 6)
            areas[where] = counts[:, 1:].numpy() * PIXEL_AREA_MM2
        return areas.reshape(n, t, -1), feats.reshape(n, t, -1)


def dice_per_class(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of labels 1–5 over all given frames (NaN where a class is absent from both)."""
    out = {}
    for k, name in enumerate(CLASSES[1:], start=1):
        p, t = pred == k, truth == k
        denom = p.sum() + t.sum()
        out[name] = float(2 * (p & t).sum() / denom) if denom else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
# Masks of a store's cines (the store keeps none: read them through the manifest, same canonical crop)
# --------------------------------------------------------------------------------------------------


def read_store_masks(store: str | Path, split: str, indices: list[int] | None = None) -> np.ndarray:
    """Label masks uint8 (n, 50, 96, 96) of items of one store split, on the canonical grid of its cines.

    The store records its manifest; each row's ``mask_path`` is read with ``read_mask`` against the cine
    re-read with that mask (the crop the store used), and the re-read cine must match the stored one.
    """
    from ecgflowcmr.io.cmr import read_cine, read_mask
    from ecgflowcmr.io.manifest import read_manifest
    from ecgflowcmr.store.prepared import StoreDataset, cine_to_uint8, read_store_meta

    meta = read_store_meta(store)
    if "manifest" not in meta:
        raise InputError(store, "the store does not record its manifest, so its masks cannot be found")
    manifest = read_manifest(meta["manifest"])
    data = StoreDataset(store, split, fields=("cine",))
    indices = list(range(len(data))) if indices is None else list(indices)
    out = np.empty((len(indices), *data.array("cine").shape[1:]), dtype=np.uint8)
    for j, i in enumerate(indices):
        row = data.rows[i]
        mask_path = manifest.resolve(row, "mask_path")
        if mask_path is None:
            raise InputError(f"{meta['manifest']} (subject {row['subject_id']})",
                             "no mask_path: the segmenter trains on cines with masks")
        cine = read_cine(manifest.resolve(row, "cmr_path"), mask=mask_path)
        if np.abs(cine_to_uint8(cine.frames).astype(np.int16) - data.array("cine")[i]).mean() > 1.0:
            raise InputError(mask_path, f"the cine re-read for subject {row['subject_id']} differs from the "
                                        f"store's: the manifest changed since `prepare`?")
        mask = read_mask(mask_path, like=cine)
        out[j] = mask if mask.shape[0] == out.shape[1] else np.repeat(mask, out.shape[1], axis=0)
    return out


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """x (B, 1, H, W) in [-1, 1]: per image random blur σ ∈ [0, 1.5], contrast ×[0.7, 1.3], shift ±0.2,
    noise σ ∈ [0, 0.08]; clipped to [-1, 1]."""
    from ecgflowcmr.models.image_metrics import gaussian_window

    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator)
    out = torch.empty_like(x)
    for i in range(b):
        sigma = 1.5 * float(u[i, 0])
        img = x[i:i + 1]
        if sigma > 0.3:
            g = gaussian_window(7, sigma)
            img = F.conv2d(F.pad(img, (3, 3, 3, 3), mode="replicate"), g.view(1, 1, -1, 1) * g.view(1, 1, 1, -1))
        out[i] = img[0]
    contrast = 0.7 + 0.6 * u[:, 1].view(b, 1, 1, 1)
    shift = 0.4 * (u[:, 2].view(b, 1, 1, 1) - 0.5)
    noise = 0.08 * u[:, 3].view(b, 1, 1, 1) * torch.randn(x.shape, generator=generator)
    return (out * contrast + shift + noise).clamp(-1, 1)


def _loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy + soft Dice over the five heart classes (the small chambers count as much as the LV)."""
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(1)[:, 1:]  # (B, 5, H, W)
    onehot = F.one_hot(target, len(CLASSES)).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    dice = (2 * inter + 1) / (prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3)) + 1)
    return ce + (1 - dice).mean()


@dataclass
class SegTraining:
    """What training measured: seconds, the last losses, validation Dice per class."""

    seconds: float
    final_loss: float
    steps: int = 0
    val_dice: dict[str, float] = field(default_factory=dict)


def fit_segmenter(cines01: np.ndarray, masks: np.ndarray, config: SegConfig,
                  val: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Segmenter, SegTraining]:
    """Train on cines (N, T, H, W) in [0, 1] (uint8 codes of the store are accepted too) with masks
    (N, T, H, W) uint8: random (item, frame) batches, AdamW, cosine schedule."""
    if cines01.shape != masks.shape:
        raise InputError("masks", f"shape {masks.shape} differs from the cines' {cines01.shape}")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    net = SegmentationNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    scale = 1 / 255 if cines01.dtype == np.uint8 else 1.0
    n, t = cines01.shape[:2]
    losses = []
    net.train()
    for _ in range(config.steps):
        if (config.time_limit_s is not None and len(losses) >= config.min_steps
                and time.perf_counter() - start > config.time_limit_s):
            break
        pick = torch.randint(0, n * t, (config.batch_size,), generator=generator).numpy()
        items, frames = pick // t, pick % t
        x = torch.from_numpy(cines01[items, frames].astype(np.float32) * scale)[:, None] * 2 - 1
        y = torch.from_numpy(masks[items, frames].astype(np.int64))
        if config.augment:
            x = _augment(x, generator)
        loss = _loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    seg = Segmenter(net)
    report = SegTraining(time.perf_counter() - start, float(np.mean(losses[-10:])), steps=len(losses))
    if val is not None:
        v_cines, v_masks = val
        v = v_cines.astype(np.float32) * (1 / 255 if v_cines.dtype == np.uint8 else 1.0)
        report.val_dice = dice_per_class(seg.predict(v), v_masks)
    return seg, report


def train_segmenter(store: str | Path, out: str | Path, config: SegConfig | str = "default") -> Segmenter:
    """Train on the store's train split (masks via its manifest), Dice on up to ``val_items`` val cines,
    and save to ``out`` (model.safetensors, config.json, metrics.json)."""
    from ecgflowcmr.store.prepared import StoreDataset

    config = PRESETS[config] if isinstance(config, str) else config
    train = StoreDataset(store, "train", fields=("cine",))
    cines = np.asarray(train.array("cine"))  # uint8 codes: (x + 1) · 127.5, i.e. x01 · 255
    masks = read_store_masks(store, "train")
    val = None
    val_split = "val" if "val" in _splits(store) else "test"
    n_val = min(config.val_items, len(StoreDataset(store, val_split, fields=())))
    if n_val:
        val = (np.asarray(StoreDataset(store, val_split, fields=("cine",)).array("cine")[:n_val]),
               read_store_masks(store, val_split, list(range(n_val))))
    seg, report = fit_segmenter(cines, masks, config, val)
    metrics = {
        "val_dice": {"value": report.val_dice,
                     "definition": f"Dice per class over all 50 frames of the first {n_val} {val_split} cines"},
        "train_seconds": {"value": report.seconds, "definition": "wall time of training on this machine"},
        "train_steps": {"value": report.steps, "definition": f"optimiser steps of {config.batch_size} random "
                        f"frames done (of {config.steps}; time limit {config.time_limit_s} s)"},
        "final_loss": {"value": report.final_loss,
                       "definition": "cross-entropy + (1 − mean soft Dice), mean of the last 10 steps"},
        "train_items": {"value": len(cines), "definition": "train cines (all their frames with masks)"},
    }
    save_segmenter(seg, out, metrics)
    return load_segmenter(out)


def _splits(store: str | Path) -> list[str]:
    from ecgflowcmr.store.prepared import read_store_meta

    return list(read_store_meta(store)["splits"])


def save_segmenter(seg: Segmenter, out: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in seg.net.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"kind": "ecgflowcmr-segmenter", **asdict(seg.config)},
                                                    indent=2))
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def load_segmenter(folder: str | Path) -> Segmenter:
    """A segmenter saved by :func:`train_segmenter`; every weight key checked."""
    import hashlib

    from safetensors.torch import load_file

    folder = Path(folder)
    for name in ("model.safetensors", "config.json"):
        if not (folder / name).exists():
            raise InputError(folder, f"not a trained segmenter: {name} missing")
    raw = json.loads((folder / "config.json").read_text())
    if raw.pop("kind", None) != "ecgflowcmr-segmenter":
        raise InputError(folder / "config.json", "not a segmenter config (kind ≠ ecgflowcmr-segmenter)")
    try:
        config = SegConfig(**raw)
    except TypeError as err:
        raise ConfigError(folder / "config.json", str(err)) from None
    net = SegmentationNet(config)
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        raise InputError(folder / "model.safetensors", f"keys missing {sorted(missing)[:3]}, "
                                                       f"unexpected {sorted(unexpected)[:3]}")
    net.load_state_dict(state)
    checksum = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return Segmenter(net, folder, checksum)
