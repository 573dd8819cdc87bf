"""The cine ViT: shapes, MAE masking identities, honest masking, invalid configs, the fine-tuning head."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ecgflowcmr.errors import ConfigError
from ecgflowcmr.models.video_vit import (
    PRESETS,
    VideoMAE,
    VideoViTConfig,
    VideoViTPredictor,
    grid_position_embedding,
)

SMALL = dataclasses.replace(PRESETS["tiny"], width=24, heads=2, depth=1, decoder_width=16, decoder_heads=2)
TUBES = dataclasses.replace(SMALL, tube_frames=10, mask_ratio=0.9)


def cines(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 1, 50, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("cfg, tokens", [(SMALL, 36), (TUBES, 180)])
def test_shapes_and_patchify_round_trip(cfg: VideoViTConfig, tokens: int) -> None:
    mae = VideoMAE(cfg)
    x = cines()
    patches = mae.patchify(x)
    assert patches.shape == (2, tokens, cfg.tube_frames * 256)
    assert torch.equal(mae.unpatchify(patches), x)
    # token 1 is the second patch of the first row, over the first tube of frames
    assert torch.equal(patches[0, 1].reshape(cfg.tube_frames, 16, 16), x[0, 0, :cfg.tube_frames, :16, 16:32])
    assert mae.encoder(x).shape == (2, tokens, cfg.width)
    loss, parts = mae({"cine": x})
    assert loss.ndim == 0 and set(parts) == {"masked_mse", "visible_mse"}
    pred = VideoViTPredictor(cfg, "regress", 3).predict(x)
    assert pred.shape == (2, 3)


def test_masking_identities() -> None:
    mae = VideoMAE(SMALL)
    torch.manual_seed(1)
    ids_keep, mask, ids_restore = mae.random_masking(3, torch.device("cpu"))
    keep = int(36 * (1 - SMALL.mask_ratio))
    assert ids_keep.shape == (3, keep)
    assert torch.equal(mask.sum(1), torch.full((3,), 36.0 - keep))
    assert torch.equal(mask.gather(1, ids_keep), torch.zeros(3, keep))  # kept tokens are unmasked
    shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(shuffle.gather(1, ids_restore), torch.arange(36).expand(3, -1))


def test_encoder_never_sees_masked_patches() -> None:
    mae = VideoMAE(SMALL).eval()
    x = cines(1)
    torch.manual_seed(3)
    ids_keep, mask, _ = mae.random_masking(1, torch.device("cpu"))
    patches = mae.patchify(x)
    changed = torch.where(mask[..., None].bool(), torch.randn_like(patches), patches)
    a = mae.encoder(x, ids_keep)
    b = mae.encoder(mae.unpatchify(changed), ids_keep)
    assert torch.allclose(a, b, atol=1e-6)


def test_loss_counts_masked_patches_only() -> None:
    mae = VideoMAE(dataclasses.replace(SMALL, norm_pix_loss=False))
    x = cines(1)
    mask = torch.zeros(1, 36)
    mask[0, :9] = 1
    target = mae.patchify(x)
    wrong_visible = target.clone()
    wrong_visible[0, 9:] += 5.0
    assert mae.forward_loss(x, wrong_visible, mask)[0].item() == 0.0
    wrong_masked = target.clone()
    wrong_masked[0, 0] += 3.0  # one of 9 masked patches off by 3 everywhere → mean 9 / 9
    assert mae.forward_loss(x, wrong_masked, mask)[0].item() == pytest.approx(1.0)


def test_regression_loss_ignores_missing_targets() -> None:
    model = VideoViTPredictor(SMALL, "regress", 2)
    x = cines(2)
    out = model.predict(x).detach()
    target = out.clone()
    target[0, 1] = float("nan")
    target[1, 0] += 2.0
    loss, _ = model({"cine": x, "target": target})
    assert loss.item() == pytest.approx(4.0 / 3.0, rel=1e-4)


def test_position_embedding_distinguishes_tokens() -> None:
    pos = grid_position_embedding((10, 6, 6), 24)
    assert pos.shape == (360, 24)
    assert torch.unique(pos, dim=0).shape[0] == 360


@pytest.mark.parametrize("change", [{"patch": 20}, {"tube_frames": 7}, {"width": 25}, {"heads": 5},
                                    {"mask_ratio": 1.0}, {"mask_ratio": 0.0}, {"depth": 0}, {"head_dropout": 1.0}])
def test_invalid_configs_raise(change: dict) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(SMALL, **change)


def test_invalid_heads_raise() -> None:
    with pytest.raises(ConfigError):
        VideoViTPredictor(SMALL, "segment", 2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        VideoViTPredictor(SMALL, "classify", 1)


def test_downstream_tiny_preset_is_the_model_tiny_preset() -> None:
    from ecgflowcmr.config import load_config
    from ecgflowcmr.downstream.config import DownstreamConfig

    assert load_config(DownstreamConfig, "downstream", "tiny").model == PRESETS["tiny"]
    assert load_config(DownstreamConfig, "downstream", "paper").model == PRESETS["paper"]
