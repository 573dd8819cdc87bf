"""Table 1 metrics per source: floors, unavailable networks, temporal measures on known motion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgflowcmr.evaluation.quality import fid_frame_indices, quality_metrics, temporal_change, temporal_jerk


def beating(n: int, seed: int, frames: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    t = np.arange(frames)
    out = np.empty((n, frames, 32, 32), dtype=np.float32)
    for i in range(n):
        r = rng.uniform(6, 9) * (1 - 0.2 * np.sin(np.pi * t / frames) ** 2)
        out[i] = 0.8 / (1 + np.exp((np.hypot(yy - 16, xx - 16)[None] - r[:, None, None]) / 1.5)) + 0.1
    return out


def test_temporal_measures() -> None:
    x = beating(2, 0)
    assert temporal_change(np.repeat(x[:, :1], 50, axis=1)) == 0
    noisy = np.clip(x + 0.2 * np.random.default_rng(0).standard_normal(x.shape), 0, 1).astype(np.float32)
    assert temporal_jerk(noisy) > temporal_jerk(x) + 0.3  # flicker: second differences as large as first
    assert fid_frame_indices(50, 5).tolist() == [0, 10, 20, 30, 40]
    with pytest.raises(ValueError):
        fid_frame_indices(50, 0)


def test_quality_metrics_without_networks_and_with_floor() -> None:
    real, train = beating(3, 1), beating(4, 2)
    frozen = np.repeat(real[:, :1], 50, axis=1)
    out = quality_metrics(real, {"copy": real, "frozen": frozen}, train, lpips=None, lpips_info="no weights",
                          inception=None, inception_info="not installed")
    assert out["copy"]["lpips"] == {"unavailable": "no weights"}
    assert "unavailable" in out["copy"]["fid_inception"] and "unavailable" in out["copy"]["fvd_i3d"]
    assert out["copy"]["psnr_db"]["value"] == np.inf and out["copy"]["ssim"]["value"] == pytest.approx(1)
    assert out["copy"]["temporal_change_ratio"]["value"] == pytest.approx(1)
    assert out["frozen"]["temporal_change_ratio"]["value"] == 0
    assert np.isfinite(out["real_floor"]["psnr_db"]["value"])
    with pytest.raises(ValueError, match="floor needs"):
        quality_metrics(real, {}, train[:2], lpips=None, lpips_info="", inception=None, inception_info="")


def test_fvd_with_an_i3d_and_its_floor(tmp_path) -> None:
    import torch

    from ecgflowcmr.evaluation.feature_networks import I3D

    torch.manual_seed(0)
    i3d = I3D().eval()
    real, train = beating(3, 1, frames=8), beating(3, 2, frames=8)
    out = quality_metrics(real, {"copy": real}, train, lpips=None, lpips_info="-", inception=None,
                          inception_info="-", i3d=i3d, i3d_info="random weights (test)", i3d_size=32)
    assert out["copy"]["fvd_i3d"]["value"] == pytest.approx(0, abs=1e-6)
    assert out["real_floor"]["fvd_i3d"]["value"] > 0
    assert "random weights (test)" in out["copy"]["fvd_i3d"]["definition"]


def test_chunked_means_equal_the_whole_set_formulas() -> None:
    """The measures run over chunks of cines (bounded memory at 1,000 subjects); more items than one chunk
    must give the whole-set formula's value."""
    from ecgflowcmr.evaluation.quality import CHUNK
    from ecgflowcmr.evaluation.readout import sharpness

    x = np.random.default_rng(0).random((CHUNK * 2 + 5, 6, 12, 12), dtype=np.float32)
    change = np.abs(np.roll(x, -1, axis=1) - x).mean()
    second = np.abs(np.roll(x, -1, axis=1) - 2 * x + np.roll(x, 1, axis=1)).mean()
    gy, gx = np.diff(x, axis=-2)[..., :, :-1], np.diff(x, axis=-1)[..., :-1, :]
    assert temporal_change(x) == pytest.approx(change, rel=1e-6)
    assert temporal_jerk(x) == pytest.approx(second / change, rel=1e-6)
    assert sharpness(x) == pytest.approx(np.sqrt(gy**2 + gx**2).mean(), rel=1e-6)


def test_paired_measures_one_cine_at_a_time_equal_the_batched_ones() -> None:
    """PSNR and SSIM run one cine at a time (``CHUNK``, for the cache): the same values as the whole batch."""
    from ecgflowcmr.evaluation.quality import _paired
    from ecgflowcmr.models.image_metrics import psnr, ssim

    rng = np.random.default_rng(1)
    real = rng.random((5, 4, 16, 16), dtype=np.float32)
    other = np.clip(real + 0.1 * rng.standard_normal(real.shape, dtype=np.float32), 0, 1)
    r, o = torch.from_numpy(real), torch.from_numpy(other)
    paired = _paired(real, other)
    assert paired["psnr_db"] == pytest.approx(psnr(o, r).double().mean().item(), rel=1e-12)
    assert paired["ssim"] == pytest.approx(ssim(o, r).double().mean().item(), rel=1e-12)
