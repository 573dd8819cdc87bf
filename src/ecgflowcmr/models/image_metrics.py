"""Pixel-level image/video quality: PSNR and SSIM in torch (differentiable, no downloaded weights).

Both take images in a known data range (``data_range``; 1.0 for display images in [0, 1]) and reduce
everything but the first (batch) dimension, so a video batch ``(B, [1,] T, H, W)`` gives one number per
video. SSIM follows Wang et al., IEEE TIP 13(4) 2004: a 2-D Gaussian window (size 11, σ 1.5),
K1 = 0.01, K2 = 0.03, computed per frame over the *valid* window positions (no padding, as
``pytorch-msssim`` and the authors' reference code), then averaged over frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

PSNR_DEFINITION = "PSNR = 10·log10(R² / MSE) per video over all voxels, R = 1 on the [0, 1] display scale; mean over videos (dB)"
SSIM_DEFINITION = (
    "SSIM (Wang et al. 2004) per frame with an 11×11 Gaussian window (σ 1.5), K1 0.01, K2 0.03, data range 1 "
    "on the [0, 1] display scale, valid window positions only; mean over frames, then over videos"
)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio (dB) per item: ``10·log10(R² / mean((x − y)²))``, +inf when identical.

    x, y: (B, ...) same shape. Returns (B,) float.
    """
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)  # (B,)
    return (10 * torch.log10(data_range**2 / mse)).to(x.dtype)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian (size,) centred on the middle tap."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _band(g: Tensor, n: int) -> Tensor:
    """(n − k + 1, n) matrix whose row i is the window g at columns i … i + k − 1 (valid-mode filtering)."""
    k = g.shape[0]
    rows = torch.arange(n - k + 1, device=g.device)
    band = torch.zeros(n - k + 1, n, dtype=g.dtype, device=g.device)
    band[rows[:, None], rows[:, None] + torch.arange(k, device=g.device)] = g
    return band


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable valid-mode Gaussian filter of (N, 1, H, W) → (N, 1, H − k + 1, W − k + 1).

    As two banded matrix products (rows, then columns), the same sums as a (k, 1) then a (1, k) convolution
    in another order (equal within float round-off): one-channel convolutions ran ~30× slower on CPU."""
    return _band(g, x.shape[-2]) @ x @ _band(g, x.shape[-1]).T


def ssim_frames(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """SSIM of each frame: x, y (N, H, W) → (N,), mean of the SSIM map over valid window positions."""
    if x.shape != y.shape or x.dim() != 3:
        raise ValueError(f"ssim_frames expects two (N, H, W) tensors, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim: frames {tuple(x.shape[-2:])} are smaller than the {window}-pixel window")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = gaussian_window(window, sigma, x.dtype).to(x.device)
    x, y = x[:, None], y[:, None]  # (N, 1, H, W)
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    var_x = _blur(x * x, g) - mu_x**2
    var_y = _blur(y * y, g) - mu_y**2
    cov = _blur(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean per-frame SSIM per item: x, y (B, ..., H, W) → (B,) (all middle dims are frames)."""
    if x.shape != y.shape or x.dim() < 3:
        raise ValueError(f"ssim expects two (B, ..., H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    b, (h, w) = x.shape[0], x.shape[-2:]
    per_frame = ssim_frames(x.reshape(-1, h, w), y.reshape(-1, h, w), data_range, window, sigma)
    return per_frame.view(b, -1).mean(1)
