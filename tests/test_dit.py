"""The DiT velocity network: shapes, adaLN-Zero start, patching, conditioning, bad configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ecgflowcmr.errors import ConfigError
from ecgflowcmr.models.dit import PRESETS, DiT, DiTConfig, count_parameters

SMALL = {"latent_channels": 2, "frames": 6, "latent_size": 6, "cond_dim": 8, "width": 32, "depth": 2, "heads": 2}

CONFIGS = [
    pytest.param(dict(patch=1), id="patch1"),
    pytest.param(dict(patch=2), id="patch2"),
    pytest.param(dict(patch=3), id="patch3"),
    pytest.param(dict(patch=2, attention="alternating"), id="alternating"),
    pytest.param(dict(patch=2, pos_embed="learned"), id="learned-pos"),
    pytest.param(dict(patch=2, cross_attention=True), id="cross-attention"),
    pytest.param(dict(patch=2, frame_adaln=True), id="frame-adaln"),
]


def inputs(cfg: DiTConfig, b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, cfg.latent_channels, cfg.frames, cfg.latent_size, cfg.latent_size, generator=g)
    return z, torch.rand(b, generator=g), torch.randn(b, cfg.frames, cfg.cond_dim, generator=g)


def randomize_output(net: DiT) -> None:
    """Leave the adaLN-Zero start (and the cross-attention's zero output) so the output depends on the inputs."""
    torch.manual_seed(1)
    for name, p in net.named_parameters():
        if "adaLN_modulation" in name or "final_layer.linear" in name or "cross.proj" in name:
            torch.nn.init.normal_(p, std=0.05)


@pytest.mark.parametrize("extra", CONFIGS)
def test_shape_and_zero_start(extra: dict) -> None:
    cfg = DiTConfig(**SMALL, **extra)
    net = DiT(cfg)
    z, t, c = inputs(cfg)
    v = net(z, t, c)
    assert v.shape == z.shape
    assert torch.equal(v, torch.zeros_like(z))  # adaLN-Zero: the initial velocity is exactly 0
    randomize_output(net)
    assert net(z, t, c).abs().max() > 0


@pytest.mark.parametrize("extra", CONFIGS)
def test_patchify_inverts(extra: dict) -> None:
    cfg = DiTConfig(**SMALL, **extra)
    net = DiT(cfg)
    z = inputs(cfg)[0]
    tokens = net.patchify(z)
    assert tokens.shape == (2, cfg.frames, cfg.tokens_per_frame, cfg.latent_channels * cfg.patch**2)
    assert torch.equal(net.unpatchify(tokens), z)


def test_patch_token_counts() -> None:
    one, two = DiTConfig(patch=1), DiTConfig(patch=2)
    assert one.tokens_per_frame * one.frames == 7200  # the public code: one token per latent voxel
    assert two.tokens_per_frame * two.frames == 1800  # 4× fewer
    z = torch.zeros(1, 4, 50, 12, 12)
    small = dict(cond_dim=8, width=16, depth=2, heads=2)
    assert DiT(DiTConfig(patch=1, **small)).patchify(z).shape[1:3] == (50, 144)
    assert DiT(DiTConfig(patch=2, **small)).patchify(z).shape[1:3] == (50, 36)


def test_patch_is_a_spatial_block() -> None:
    cfg = DiTConfig(**{**SMALL, "latent_channels": 1}, patch=2)
    z = torch.arange(cfg.frames * 36, dtype=torch.float32).reshape(1, 1, cfg.frames, 6, 6)
    first = DiT(cfg).patchify(z)[0, 0, 0]  # frame 0, top-left patch
    assert first.tolist() == [0.0, 1.0, 6.0, 7.0]


def test_conditions_change_the_output() -> None:
    cfg = DiTConfig(**SMALL)
    net = DiT(cfg)
    randomize_output(net)
    z, t, c = inputs(cfg)
    v = net(z, t, c)
    assert not torch.allclose(v, net(z, t.flip(0), c))
    c2 = c.clone()
    c2[:, 3] = torch.randn_like(c2[:, 3])  # one aligned ECG token
    assert not torch.allclose(v, net(z, t, c2))


def test_ecg_token_i_enters_frame_i() -> None:
    cfg = DiTConfig(**SMALL)
    net = DiT(cfg)
    torch.nn.init.normal_(net.final_layer.linear.weight, std=0.05)  # blocks still identity (adaLN-Zero gates)
    z, t, c = inputs(cfg)
    c2 = c.clone()
    c2[:, 3] = torch.randn_like(c2[:, 3])
    changed = (net(z, t, c) - net(z, t, c2)).abs().amax(dim=(0, 1, 3, 4))  # per frame
    assert changed[3] > 0
    assert torch.all(changed[torch.arange(cfg.frames) != 3] == 0)


def test_batch_items_are_independent() -> None:
    cfg = DiTConfig(**SMALL)
    net = DiT(cfg)
    randomize_output(net)
    z, t, c = inputs(cfg, b=3)
    together = net(z, t, c)
    alone = torch.cat([net(z[i : i + 1], t[i : i + 1], c[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_frame_adaln_starts_as_the_pooled_model_and_reads_token_i_at_frame_i() -> None:
    pooled_cfg = DiTConfig(**SMALL)
    pooled, framed = DiT(pooled_cfg), DiT(DiTConfig(**SMALL, frame_adaln=True))
    randomize_output(pooled)
    missing, unexpected = framed.load_state_dict(pooled.state_dict(), strict=False)
    assert missing == ["frame_adaln.weight", "frame_adaln.bias"] and not unexpected
    z, t, c = inputs(pooled_cfg)
    torch.testing.assert_close(framed(z, t, c), pooled(z, t, c), atol=1e-6, rtol=0)  # frame_adaln starts at 0

    for net in (pooled, framed):  # the ECG now enters only through the final layer's adaLN
        torch.nn.init.zeros_(net.frame_cond.weight)
        for block in net.blocks:
            torch.nn.init.zeros_(block.adaLN_modulation[-1].weight)  # blocks: modulation (bias) blind to y
    torch.nn.init.normal_(framed.frame_adaln.weight, std=0.5)
    swapped = c.clone()
    swapped[:, [2, 3]] = c[:, [3, 2]]  # same pooled mean, tokens 2 and 3 in each other's frames
    torch.testing.assert_close(pooled(z, t, c), pooled(z, t, swapped))  # the pooled embedding cannot see order
    changed = (framed(z, t, c) - framed(z, t, swapped)).abs().amax(dim=(0, 1, 3, 4))  # per frame
    assert changed[2] > 1e-2 and changed[3] > 1e-2
    assert torch.all(changed[[0, 1, 4, 5]] < 1e-5)  # (the pooled mean's summation order: rounding only)


@pytest.mark.parametrize("extra", [dict(pos_embed="learned"), dict(cross_attention=True, frame_adaln=True)])
def test_gradients_reach_every_parameter(extra: dict) -> None:
    cfg = DiTConfig(**SMALL, **extra)
    net = DiT(cfg)
    randomize_output(net)
    z, t, c = inputs(cfg)
    net(z, t, c).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing


def test_presets_and_paper_size() -> None:
    assert set(PRESETS) >= {"tiny", "paper"}
    with torch.device("meta"):  # sizes only, no memory or init time
        paper = count_parameters(DiT(PRESETS["paper"]))
        public = count_parameters(DiT(PRESETS["public_reference"]))
    assert 40e6 < paper < 70e6
    assert 65e6 < public < 80e6  # the public code: 72.8M


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (dict(patch=5), "patch"),  # does not divide 12
        (dict(heads=3), "heads"),  # does not divide 64
        (dict(width=66, heads=2), "width"),  # not a multiple of 4
        (dict(depth=0), "depth"),
        (dict(depth=3, attention="alternating"), "depth"),
        (dict(mlp_ratio=0.0), "mlp_ratio"),
        (dict(cond_dim=0), "cond_dim"),
        (dict(width=10**9, heads=1), "width"),  # absurd: refused before anything is allocated
        (dict(depth=10**6), "depth"),
    ],
)
def test_invalid_configs_raise(bad: dict, field: str) -> None:
    base = dataclasses.asdict(PRESETS["tiny"])
    with pytest.raises(ConfigError) as info:
        DiTConfig(**{**base, **bad})
    assert info.value.where == f"model.dit.{field}"
