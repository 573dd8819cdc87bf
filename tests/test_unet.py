"""The convolutional velocity network (``model.network=unet``): contract, start, conditioning, saving."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from ecgflowcmr.bundle import load_model, save_weights
from ecgflowcmr.errors import ConfigError
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.flow.sampler import sample
from ecgflowcmr.models.dit import DiTConfig
from ecgflowcmr.models.unet import UNetConfig, VelocityUNet

SHAPE = DiTConfig(latent_channels=2, frames=6, latent_size=4, cond_dim=8, width=32, depth=1, heads=2)
UNET = UNetConfig(width=8, multipliers=(1, 2), heads=2)


def perturbed(net: nn.Module, seed: int = 0) -> nn.Module:
    """Leave the zero start: every parameter gets a small random offset (a non-trivial field)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def inputs(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 2, 6, 4, 4, generator=g), torch.rand(batch, generator=g),
            torch.randn(batch, 6, 8, generator=g))


def test_an_untrained_unet_outputs_zero_in_the_latents_shape() -> None:
    z, t, c = inputs()
    out = VelocityUNet(UNET, SHAPE)(z, t, c)
    assert out.shape == z.shape and torch.equal(out, torch.zeros_like(z))


def test_each_output_depends_on_its_own_item_its_time_and_its_ecg() -> None:
    net = perturbed(VelocityUNet(UNET, SHAPE)).eval()
    z, t, c = inputs()
    out = net(z, t, c)
    other = c.clone()
    other[1] = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))  # item 1's ECG only
    moved = (net(z, t, other) - out).flatten(2).abs().amax(2)  # (B, C)
    assert (moved[1] > 1e-4).all() and torch.equal(moved[[0, 2]], torch.zeros_like(moved[[0, 2]]))
    assert not torch.allclose(net(z, t.flip(0), c), out)
    # one frame's ECG token reaches its own frame and, through the circular temporal mixing, the others
    token = c.clone()
    token[:, 0] = token[:, 0].flip(-1)  # (a constant shift would vanish in the condition's layer norm)
    assert ((net(z, t, token) - out).abs().flatten(3).amax(3) > 1e-5).all()


@pytest.mark.parametrize(("field", "value", "where"), [
    ("width", 12, "model.unet.width"), ("multipliers", (), "model.unet.multipliers"),
    ("multipliers", (1, 9), "model.unet.multipliers"), ("blocks", 0, "model.unet.blocks"),
    ("heads", 3, "model.unet.heads"), ("temporal_kernel", 2, "model.unet.temporal_kernel"),
    ("width", 10**9, "model.unet.width")])
def test_bad_sizes_are_refused_naming_the_field(field: str, value: object, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(UNET, **{field: value})
    assert info.value.where == where


def test_a_latent_the_levels_cannot_halve_is_refused() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        VelocityUNet(UNetConfig(width=8, multipliers=(1, 2, 2)), dataclasses.replace(SHAPE, latent_size=6))


def test_a_unet_flow_saves_and_loads_as_the_same_sampler(tmp_path: Path) -> None:
    torch.manual_seed(0)
    flow = FlowMatching(FlowConfig(dit=SHAPE, network="unet", unet=UNET, alpha=0.5), torch.randn(2, 6, 4, 4))
    perturbed(flow.dit)
    save_weights(flow, tmp_path, dataclasses.asdict(flow.config))
    loaded = load_model(tmp_path, "flow")
    assert loaded.config == flow.config and isinstance(loaded.dit, VelocityUNet)
    c = inputs()[2]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(sample(loaded, c, steps=2, generator=g()), sample(flow.eval(), c, steps=2, generator=g()))
