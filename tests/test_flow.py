"""AMDF flow: the objective's closed form (Eq. 4–7), the samplers (Eq. 8, Heun, guidance), the flow stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ecgflowcmr.bundle import load_model, read_template, save_weights
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.evaluation.stage_metrics import flow_metrics
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.flow.sampler import sample
from ecgflowcmr.models.dit import DiTConfig
from ecgflowcmr.models.unet import UNetConfig
from ecgflowcmr.store import latents

SMALL = DiTConfig(latent_channels=2, frames=6, latent_size=4, cond_dim=8, width=32, depth=1, heads=2)
SHAPE = (2, 6, 4, 4)


def small_flow(seed: int = 0, **kw) -> FlowMatching:
    torch.manual_seed(seed)
    cfg = FlowConfig(dit=SMALL, **kw)
    template = torch.randn(SHAPE) if cfg.use_template else None
    flow = FlowMatching(cfg, template)
    for name, p in flow.dit.named_parameters():  # leave the adaLN-Zero start: a non-trivial field
        if "adaLN_modulation" in name or "final_layer.linear" in name:
            nn.init.normal_(p, std=0.05)
    return flow


class Recorder(nn.Module):
    """Stands in for the DiT: remembers its inputs and returns a fixed velocity."""

    def __init__(self, v: Tensor):
        super().__init__()
        self.v = v

    def forward(self, z_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        self.seen = (z_t, t, c)
        return self.v


# --------------------------------------------------------------------------------------------------
# Objective
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,use_template", [(1.0, True), (0.5, True), (1.0, False), (0.3, False)])
def test_objective_is_eq_4_to_7(alpha: float, use_template: bool) -> None:
    flow = small_flow(alpha=alpha, use_template=use_template)
    g = torch.Generator().manual_seed(3)
    z1, eps, v = (torch.randn(3, *SHAPE, generator=g) for _ in range(3))
    c = torch.randn(3, 6, 8, generator=g)
    t = torch.tensor([0.0, 0.25, 0.9])
    flow.dit = Recorder(v)
    loss, parts = flow.loss(z1, c, t, eps)
    template = flow.template if use_template else torch.zeros(SHAPE)
    z0 = template + alpha * eps
    expected_zt = torch.stack([(1 - t[i]) * z0[i] + t[i] * z1[i] for i in range(3)])
    z_t, t_seen, c_seen = flow.dit.seen
    torch.testing.assert_close(z_t, expected_zt)
    assert torch.equal(t_seen, t) and torch.equal(c_seen, c)
    torch.testing.assert_close(loss, ((v - (z1 - z0)) ** 2).mean())
    assert parts["mse"] == loss.detach()
    torch.testing.assert_close(z_t[0], z0[0])  # t = 0 is the noisy template


@pytest.mark.parametrize("loss_space", ["velocity", "clean"])
def test_clean_prediction_is_the_same_path_reparameterised(loss_space: str) -> None:
    """prediction = clean: the network's output is ẑ1 − template and v̂ = (ẑ1 − z_t)/max(1 − t, ε); the loss is
    Eq. 7 on that v̂, or (loss_space = clean) the squared error of ẑ1 = z_t + (1 − t)·v̂ against z1."""
    flow = small_flow(alpha=0.8, prediction="clean", loss_space=loss_space, clean_t_eps=0.05)
    g = torch.Generator().manual_seed(4)
    z1, eps, out = (torch.randn(3, *SHAPE, generator=g) for _ in range(3))
    c = torch.randn(3, 6, 8, generator=g)
    t = torch.tensor([0.0, 0.5, 0.99])  # the last one hits the floor of 1 − t
    flow.dit = Recorder(out)
    loss, _ = flow.loss(z1, c, t, eps)
    z0 = flow.template + 0.8 * eps
    z_t = flow.dit.seen[0]
    one_minus_t = torch.tensor([1.0, 0.5, 0.05])[:, None, None, None, None]
    v = (flow.template + out - z_t) / one_minus_t
    torch.testing.assert_close(flow.velocity(z_t, t, c), v)
    weight = (1 - t)[:, None, None, None, None] if loss_space == "clean" else torch.ones(3, 1, 1, 1, 1)
    torch.testing.assert_close(loss, ((weight * (v - (z1 - z0))) ** 2).mean())
    if loss_space == "clean":  # above the floor the error is that of the clean latent: ẑ1 − z1
        torch.testing.assert_close(weight[:2] * (v - (z1 - z0))[:2], (flow.template + out - z1)[:2])


@pytest.mark.parametrize("loss_space", ["velocity", "clean"])
def test_motion_weight_weighs_the_errors_deviation_from_its_mean_over_frames(loss_space: str) -> None:
    """λ = model.motion_weight: loss = mean(static²) + λ·mean(motion²), static the error's mean over the T frames
    (broadcast back), motion the rest; λ = 1 is Eq. 7 itself."""
    g = torch.Generator().manual_seed(5)
    z1, eps, v = (torch.randn(3, *SHAPE, generator=g) for _ in range(3))
    c = torch.randn(3, 6, 8, generator=g)
    t = torch.tensor([0.1, 0.5, 0.8])
    losses = {}
    for weight in (1.0, 0.0, 4.0):
        flow = small_flow(alpha=0.5, noise_time_correlation=1.0, motion_weight=weight, loss_space=loss_space)
        flow.dit = Recorder(v)
        losses[weight] = flow.loss(z1, c, t, eps)[0]
    z0 = flow.template + 0.5 * eps
    scale = (1 - t)[:, None, None, None, None] if loss_space == "clean" else torch.ones(3, 1, 1, 1, 1)
    error = scale * (v - (z1 - z0))
    static = error.mean(dim=2, keepdim=True).expand_as(error)
    torch.testing.assert_close(losses[1.0], (error**2).mean())
    torch.testing.assert_close(losses[0.0], (static**2).mean())
    torch.testing.assert_close(losses[4.0], (static**2).mean() + 4 * ((error - static) ** 2).mean())


def test_initial_state_is_template_plus_alpha_noise() -> None:
    flow = small_flow(alpha=0.7)
    z0 = flow.initial_state(2, torch.Generator().manual_seed(5))
    eps = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z0, flow.template + 0.7 * eps)


@pytest.mark.parametrize("rho", [1.0, 0.9])
def test_time_correlated_noise(rho: float) -> None:
    """ε = √(1−ρ)·ε_frame + √ρ·ε_shared: unit variance per element, correlation ρ between any two frames; with
    ρ = 1 one static noise image broadcast over time; the same draw in training and sampling."""
    flow = small_flow(alpha=0.5, noise_time_correlation=rho)
    eps = flow.noise(4000, torch.Generator().manual_seed(0))  # (4000, C, T, H', W')
    assert eps.shape == (4000, *SHAPE)
    assert abs(float(eps.var()) - 1) < 0.03
    frames = eps[:, 0, :, 0, 0]  # (4000, T)
    corr = torch.corrcoef(frames.T)[~torch.eye(SHAPE[1], dtype=torch.bool)]
    assert (corr - rho).abs().max() < 0.06
    if rho == 1.0:
        torch.testing.assert_close(eps, eps[:, :, :1].expand_as(eps))
    z0 = flow.initial_state(2, torch.Generator().manual_seed(7))
    torch.testing.assert_close(z0, flow.template + 0.5 * flow.noise(2, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize(("rho", "harmonics", "decay"), [(0.0, 2, 0.0), (0.6, 1, 0.0), (0.3, 2, 2.0)])
def test_harmonic_noise_is_slow_periodic_and_unit_variance(rho: float, harmonics: int, decay: float) -> None:
    """model.noise_harmonics K, noise_harmonic_decay p: the per-frame part of ε is made of the cycle's harmonics
    1…K with variance shares w_k ∝ k^−p, so two frames i, j correlate as ρ + (1 − ρ)·Σ_k w_k·cos(2πk(i − j)/T),
    the power at harmonic k is ∝ w_k and there is none above K, and at ρ = 0 each element's mean over the
    frames is 0; the variance stays 1 per element."""
    flow = small_flow(alpha=0.5, noise_time_correlation=rho, noise_harmonics=harmonics, noise_harmonic_decay=decay)
    eps = flow.noise(4000, torch.Generator().manual_seed(0))  # (4000, C, T, H', W')
    assert eps.shape == (4000, *SHAPE) and abs(float(eps.var()) - 1) < 0.03
    frames = SHAPE[1]
    lag = torch.arange(frames)[:, None] - torch.arange(frames)[None, :]
    share = torch.tensor([k**-decay for k in range(1, harmonics + 1)])
    share = share / share.sum()
    expected = rho + (1 - rho) * sum(w * torch.cos(2 * torch.pi * k * lag / frames)
                                     for k, w in enumerate(share.tolist(), start=1))
    assert (torch.corrcoef(eps[:, 0, :, 0, 0].T) - expected).abs().max() < 0.06
    power = torch.fft.rfft(eps - eps.mean(dim=2, keepdim=True), dim=2).abs().pow(2).mean(dim=(0, 1, 3, 4))
    assert float(power[harmonics + 1:].sum()) < 1e-8 * float(power.sum())
    torch.testing.assert_close(power[1:harmonics + 1] / power[1:harmonics + 1].sum(), share, atol=0.02, rtol=0)
    if rho == 0:
        assert float(eps.mean(dim=2).abs().max()) < 1e-5
    z0 = flow.initial_state(2, torch.Generator().manual_seed(7))
    torch.testing.assert_close(z0, flow.template + 0.5 * flow.noise(2, torch.Generator().manual_seed(7)))


def test_forward_draws_and_returns_a_scalar_loss() -> None:
    flow = small_flow(time_sampling="logit_normal", cond_dropout=0.5)
    loss, parts = flow({"z1": torch.randn(4, *SHAPE), "cond": torch.randn(4, 6, 8)})
    assert loss.ndim == 0 and torch.isfinite(loss) and "mse" in parts
    t = flow.sample_time(1000)
    assert 0 < t.min() and t.max() < 1


def test_dropped_condition_equals_the_null_token() -> None:
    flow = small_flow(cond_dropout=0.2)
    g = torch.Generator().manual_seed(0)
    z1, eps = torch.randn(2, *SHAPE, generator=g), torch.randn(2, *SHAPE, generator=g)
    c, t = torch.randn(2, 6, 8, generator=g), torch.tensor([0.3, 0.6])
    real_dit = flow.dit
    seen = {}

    class Spy(nn.Module):
        def forward(self, z_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
            seen["c"], seen["v"] = c, real_dit(z_t, t, c)
            return seen["v"]

    flow.dit = Spy()
    flow.loss(z1, c, t, eps, drop=torch.tensor([True, False]))
    assert torch.equal(seen["c"][0], flow.null_condition(1)[0])
    assert torch.equal(seen["c"][1], c[1])
    z0 = flow.template + eps
    z_t = (1 - t[0]) * z0[:1] + t[0] * z1[:1]
    unconditional = real_dit(z_t, t[:1], flow.null_condition(1))  # what the sampler's guidance uses
    torch.testing.assert_close(seen["v"][:1], unconditional, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_every_parameter_gets_a_gradient(dropout: float) -> None:  # DDP without find_unused_parameters
    flow = small_flow(cond_dropout=dropout)
    loss, _ = flow({"z1": torch.randn(2, *SHAPE), "cond": torch.randn(2, 6, 8)})
    loss.backward()
    assert all(p.grad is not None for p in flow.parameters())
    assert hasattr(flow, "null_cond") == (dropout > 0)


def test_motion_noise_is_drawn_in_the_training_motions_shapes() -> None:
    """model.noise_motion_components J: fitted on latents whose motion is a·u(τ) + b·w(τ) (u, w orthogonal, zero
    mean, var a = 4·var b), the per-frame part of ε is in those two shapes with their variance shares (frame
    covariance (4·u uᵀ + w wᵀ)·T / 5 for unit u, w), has no motion outside them and mean variance 1 per frame;
    at ρ it is weighted √(1 − ρ), the static part √ρ."""
    frames, g = SHAPE[1], torch.Generator().manual_seed(0)
    tau = torch.arange(frames) * 2 * torch.pi / frames
    u, w = tau.cos() + 0.5 * (2 * tau).sin(), (2 * tau).cos()
    u, w = u / u.norm(), w / w.norm()
    a, b = 2 * torch.randn(300, 2, 1, 4, 4, generator=g), torch.randn(300, 2, 1, 4, 4, generator=g)
    z1 = torch.randn(300, 2, 1, 4, 4, generator=g) + a * u[:, None, None] + b * w[:, None, None]
    rho = 0.3
    flow = small_flow(alpha=0.5, noise_time_correlation=rho, noise_motion_components=2)
    found = flow.fit_motion_noise(z1)
    assert found["share_kept"] == pytest.approx(1, abs=1e-5) and found["items"] == 300
    eps = flow.noise(4000, torch.Generator().manual_seed(1))  # (4000, C, T, H', W')
    assert eps.shape == (4000, *SHAPE)
    per_frame = (eps - eps.mean(dim=2, keepdim=True)) / (1 - rho) ** 0.5
    x = per_frame.movedim(2, -1).reshape(-1, frames)
    expected = (4 * torch.outer(u, u) + torch.outer(w, w)) * frames / 5
    assert (x.T @ x / len(x) - expected).abs().max() < 0.08
    assert float(eps.mean(dim=2).var()) == pytest.approx(rho, abs=0.03)  # the static part: √ρ·ε_shared
    assert float(eps.var(dim=0).mean()) == pytest.approx(1, abs=0.03)
    with pytest.raises(ConfigError, match="noise_harmonics"):
        FlowConfig(dit=SMALL, noise_motion_components=2, noise_harmonics=1)


@pytest.mark.parametrize(
    ("bad", "field"),
    [(dict(alpha=-1.0), "alpha"), (dict(use_template=False, alpha=0.0), "alpha"), (dict(cond_dropout=1.0), "cond_dropout"),
     (dict(logit_std=0.0), "logit_std"), (dict(sample_steps=0), "sample_steps"),
     (dict(cond_dropout=0.0, sample_guidance=2.0), "sample_guidance"),
     (dict(noise_time_correlation=1.5), "noise_time_correlation"),
     (dict(noise_time_correlation=-0.1), "noise_time_correlation"), (dict(clean_t_eps=0.0), "clean_t_eps"),
     (dict(motion_weight=-1.0), "motion_weight"), (dict(noise_harmonics=3), "noise_harmonics"),
     (dict(noise_harmonics=-1), "noise_harmonics"), (dict(noise_harmonic_decay=-0.5), "noise_harmonic_decay"),
     (dict(noise_motion_components=6), "noise_motion_components"),
     (dict(prior="ecg_linear", flow_align_phase=True), "flow_align_phase")],
)
def test_invalid_flow_configs_raise(bad: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        FlowConfig(dit=SMALL, **bad)
    assert info.value.where == f"model.{field}"


def test_template_shape_and_switch_are_checked() -> None:
    with pytest.raises(ConfigError):
        FlowMatching(FlowConfig(dit=SMALL), torch.zeros(2, 6, 4, 5))
    with pytest.raises(ConfigError):
        FlowMatching(FlowConfig(dit=SMALL, use_template=False), torch.zeros(SHAPE))


# --------------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------------


class Field:
    """A known velocity field v(z, t) = a + b·t (no network), counting passes and their batch sizes."""

    def __init__(self, a: Tensor, b: Tensor, z0: Tensor):
        self.a, self.b, self.z0, self.calls = a, b, z0, []

    def velocity(self, z: Tensor, t: Tensor, c: Tensor, shift: Tensor | None = None) -> Tensor:
        self.calls.append(z.shape[0])
        return (self.a + self.b * t[:, None]).expand_as(z)

    def initial_state(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        return self.z0.expand(batch, -1).clone()

    def prior_shift(self, c: Tensor) -> None:
        return None

    def null_condition(self, batch: int) -> Tensor:
        return torch.zeros(batch, 1)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_euler_lands_exactly_on_a_constant_field(steps: int) -> None:
    field = Field(torch.tensor([1.5, -2.0]), torch.zeros(2), torch.tensor([0.25, 1.0]))
    z1 = sample(field, torch.zeros(3, 1), steps=steps, method="euler")
    torch.testing.assert_close(z1, torch.tensor([[1.75, -1.0]] * 3), atol=1e-6, rtol=0)
    assert field.calls == [3] * steps


@pytest.mark.parametrize("steps", [1, 4])
def test_heun_is_exact_for_a_field_linear_in_t(steps: int) -> None:
    a, b, z0 = torch.tensor([1.0, 0.5]), torch.tensor([2.0, -4.0]), torch.tensor([0.0, 1.0])
    field = Field(a, b, z0)
    z1 = sample(field, torch.zeros(2, 1), steps=steps, method="heun")
    torch.testing.assert_close(z1, (z0 + a + b / 2).expand(2, -1), atol=1e-6, rtol=0)  # ∫0¹ a + b·t dt
    assert len(field.calls) == 2 * steps
    euler = sample(Field(a, b, z0), torch.zeros(2, 1), steps=steps, method="euler")
    torch.testing.assert_close(euler[0], z0 + a + b * (steps - 1) / (2 * steps))  # Euler's known bias


def test_guidance_is_one_batched_pass_equal_to_two_passes() -> None:
    flow = small_flow(cond_dropout=0.1)
    cond = torch.randn(3, 6, 8)
    w, steps = 2.5, 3
    z0 = flow.initial_state(3, torch.Generator().manual_seed(1))
    calls = []
    original = flow.velocity

    def counting(z: Tensor, t: Tensor, c: Tensor, shift: Tensor | None = None) -> Tensor:
        calls.append(z.shape[0])
        return original(z, t, c, shift)

    flow.velocity = counting
    guided = sample(flow, cond, steps=steps, guidance=w, z0=z0)
    assert calls == [6] * steps  # conditional and unconditional in one pass per step
    z = z0
    null = flow.null_condition(3)
    for i in range(steps):
        t = torch.full((3,), i / steps)
        v_c, v_u = original(z, t, cond), original(z, t, null)
        z = z + (1 / steps) * (v_u + w * (v_c - v_u))
    torch.testing.assert_close(guided, z, atol=1e-5, rtol=1e-5)
    flow.velocity = original
    assert not torch.allclose(guided, sample(flow, cond, steps=steps, z0=z0))  # guidance changes the result


def test_seeded_sampling_is_reproducible() -> None:
    flow = small_flow()
    cond = torch.randn(2, 6, 8)
    for method in ("euler", "heun"):
        one = sample(flow, cond, steps=3, method=method, generator=torch.Generator().manual_seed(7))
        two = sample(flow, cond, steps=3, method=method, generator=torch.Generator().manual_seed(7))
        other = sample(flow, cond, steps=3, method=method, generator=torch.Generator().manual_seed(8))
        assert torch.equal(one, two) and not torch.allclose(one, other)


class GaussianFlow:
    """The exact velocity of Eq. 4's path from z0 ~ N(0, α²) to z1 ~ N(μ, s²), per element (no network):
    v(z, t) = E[z1 − z0 | z_t = z] = μ + (t·s² − (1 − t)·α²)/((1 − t)²·α² + t²·s²)·(z − t·μ)."""

    def __init__(self, mu: float, s: float, alpha: float, size: int):
        self.mu, self.s, self.template = mu, s, torch.zeros(size, dtype=torch.float64)
        self.config = SimpleNamespace(alpha=alpha)

    def velocity(self, z: Tensor, t: Tensor, c: Tensor, shift: Tensor | None = None) -> Tensor:
        t, a2, s2 = t[:, None], self.config.alpha**2, self.s**2
        return self.mu + (t * s2 - (1 - t) * a2) / ((1 - t) ** 2 * a2 + t**2 * s2) * (z - t * self.mu)

    def noise(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn((batch, *self.template.shape), generator=generator, dtype=torch.float64)

    def initial_state(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        return self.template + self.config.alpha * self.noise(batch, generator)

    def prior_shift(self, c: Tensor) -> None:
        return None


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_stochastic_steps_keep_the_path_and_reach_the_data_distribution(eta: float) -> None:
    flow = GaussianFlow(mu=2.0, s=0.5, alpha=1.5, size=4000)
    cond = torch.zeros(4, 1)
    z0 = flow.initial_state(4, torch.Generator().manual_seed(0))
    euler = sample(flow, cond, steps=400, z0=z0)
    torch.testing.assert_close(sample(flow, cond, steps=400, z0=z0, method="ancestral", eta=0.0,
                                      step_noise=torch.randn(399, 4, 4000)), euler, rtol=0, atol=1e-12)  # η = 0: Euler
    noisy = sample(flow, cond, steps=400, z0=z0, method="ancestral", eta=eta,
                   generator=torch.Generator().manual_seed(1))
    for out in (euler, noisy):  # 16,000 draws each: mean and spread of N(2, 0.5²) within 1.5 % / 3 %
        assert abs(out.mean().item() - 2.0) < 0.03 and abs(out.std().item() - 0.5) < 0.015
    # the same path as Euler in distribution, not the same samples: the fresh noise moved them
    assert (noisy - euler).abs().mean() > 0.05
    again = sample(flow, cond, steps=400, z0=z0, method="ancestral", eta=eta,
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_sampler_rejects_bad_arguments() -> None:
    flow = small_flow(cond_dropout=0.0)
    cond = torch.randn(1, 6, 8)
    with pytest.raises(ConfigError):
        sample(flow, cond, steps=0)
    with pytest.raises(ConfigError):
        sample(flow, cond, steps=2, method="rk4")
    with pytest.raises(ConfigError):  # no unconditional model to guide with
        sample(flow, cond, steps=2, guidance=2.0)
    for bad in ({"method": "ancestral", "eta": -0.1}, {"method": "ancestral", "eta": 1.5}, {"eta": 0.5},
                {"eta": 0.5, "method": "heun"},
                {"method": "ancestral", "step_noise": torch.zeros(2, 1, *flow.template.shape)}):  # 4 steps: 3 draws
        with pytest.raises(ConfigError):
            sample(flow, cond, steps=4 if "step_noise" in bad else 2, **bad)


# --------------------------------------------------------------------------------------------------
# Training on a tiny problem
# --------------------------------------------------------------------------------------------------


def test_a_few_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    flow = FlowMatching(FlowConfig(dit=SMALL, cond_dropout=0.0), torch.zeros(SHAPE))
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(8, 6, 8, generator=g)
    z1 = torch.tanh(cond[:, :, :2].permute(0, 2, 1)[..., None, None].expand(-1, -1, -1, 4, 4) * 2)  # c → z1
    fixed = (torch.rand(8, generator=g), torch.randn(8, *SHAPE, generator=g))

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(flow.loss(z1, cond, *fixed)[0])

    before = held_out_loss()
    opt = torch.optim.AdamW(flow.parameters(), lr=3e-3)
    for _ in range(30):
        loss, _ = flow({"z1": z1, "cond": cond})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out_loss() < 0.7 * before


@pytest.mark.parametrize("network", ["dit", "unet"])
def test_a_flow_trained_on_two_latents_reproduces_them_by_sampling(network: str) -> None:
    """Plumbing end to end (objective → network → sampler): two conditions, each paired with one fixed latent.
    A flow that memorised them must carry any noisy template to the right latent, for every noise draw."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    targets = torch.randn(2, *SHAPE, generator=g)  # (2, C, T, H', W')
    template = targets.mean(0)
    cond = torch.randn(2, 6, 8, generator=g)
    config = FlowConfig(dit=dataclasses.replace(SMALL, width=64), network=network,
                        unet=UNetConfig(width=16, multipliers=(1, 2), heads=2), alpha=0.5, cond_dropout=0.0)
    flow = FlowMatching(config, template)
    opt = torch.optim.AdamW(flow.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(150):
        loss, _ = flow({"z1": targets.repeat(4, 1, 1, 1, 1), "cond": cond.repeat(4, 1, 1)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    z = sample(flow, cond.repeat(4, 1, 1), steps=20, generator=torch.Generator().manual_seed(2))  # (8, ...)
    own = ((z - targets.repeat(4, 1, 1, 1, 1)) ** 2).flatten(1).mean(1)
    other = ((z - targets.flip(0).repeat(4, 1, 1, 1, 1)) ** 2).flatten(1).mean(1)
    spread = ((targets[0] - targets[1]) ** 2).mean()
    assert (own < 0.05 * spread).all(), (own, spread)
    assert (other > 0.5 * spread).all()


# --------------------------------------------------------------------------------------------------
# The flow stage on real (tiny, briefly trained) PA-MAE and VAE runs
# --------------------------------------------------------------------------------------------------

UPSTREAM_SETS = ["train.steps=2", "train.batch_size=2", "train.warmup_steps=1", "train.val_every=0",
                 "train.ckpt_every=0", "train.log_every=1", "train.device=cpu", "eval.max_items=2"]


@pytest.fixture(scope="module")
def real_upstream(synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PA-MAE run and a VAE run (tiny presets, 2 steps each) on the synthetic store."""
    from ecgflowcmr.training.tasks import train

    root = tmp_path_factory.mktemp("upstream")
    return {"pamae": train("pamae", synthetic_store, root / "pamae", "tiny", sets=UPSTREAM_SETS),
            "vae": train("vae", synthetic_store, root / "vae", "tiny", sets=[*UPSTREAM_SETS, "train.batch_size=1"])}


def test_stage_build_returns_a_setup(synthetic_store: Path, tmp_path: Path, real_upstream: dict) -> None:
    from ecgflowcmr.config import load_config
    from ecgflowcmr.training.stages import flow as flow_stage

    cfg = load_config(flow_stage.RunConfig, "flow", "tiny")
    setup = flow_stage.build(cfg, synthetic_store, tmp_path, **real_upstream)
    batch = next(iter(torch.utils.data.DataLoader(setup.train_set, batch_size=2)))
    assert batch["z1"].shape == (2, 4, 50, 12, 12) and batch["cond"].shape == (2, 50, 64)  # tiny VAE, PA-MAE
    loss, parts = setup.model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and "mse" in parts
    assert len(setup.train_set) == 8 and len(setup.val_set) == 4  # every synthetic ECG aligns
    assert torch.equal(setup.model.template, read_template(real_upstream["vae"]))


def test_stage_trains_end_to_end_and_its_bundle_generates(synthetic_store: Path, tmp_path: Path,
                                                          real_upstream: dict) -> None:
    import json

    import numpy as np

    from ecgflowcmr import load_pipeline
    from ecgflowcmr.training.stages import flow as flow_stage
    from ecgflowcmr.training.tasks import run_stage

    sets = ["train.steps=4", "train.batch_size=2", "train.val_every=2", "train.ckpt_every=2", "train.log_every=1",
            "train.device=cpu", "model.sample_steps=2", "eval.max_items=2"]
    run = run_stage(flow_stage, "flow", synthetic_store, tmp_path / "run", config="tiny", sets=sets, **real_upstream)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 4 and metrics["flow_test_items"]["value"] == 2
    assert np.isfinite([metrics[k]["value"] for k in ("flow_latent_mse", "flow_latent_mse_template")]).all()
    flow = load_model(run, "flow")
    assert flow.config.sample_steps == 2 and flow.config.dit.cond_dim == 64 and flow.config.dit.patch == 3
    pipe = load_pipeline(run)  # run/bundle: the real PA-MAE, VAE and this flow
    ecg = first_test_ecg(synthetic_store)
    video = pipe.generate(ecg, seed=1)
    assert video.shape == (50, 96, 96) and video.dtype == np.float32 and 0 <= video.min() <= video.max() <= 1
    np.testing.assert_array_equal(video, pipe.generate(ecg, seed=1))
    assert pipe.sampling["steps"] == 2


def first_test_ecg(store: Path):
    """The first test ECG of a store, (12, 5000) mV."""
    from ecgflowcmr.store.prepared import StoreDataset

    return StoreDataset(store, "test", fields=("ecg",))[0]["ecg"].numpy()


# --------------------------------------------------------------------------------------------------
# The latent cache, with the frozen networks stubbed (known encodings): the cache's own logic only
# --------------------------------------------------------------------------------------------------


class StubPAMAE(nn.Module):
    """encode_aligned: (B, 12, 5000) → tokens (B, 50, 8); the first item of every batch is 'invalid'."""

    def encode_aligned(self, ecg: Tensor, rpeaks: list | None = None) -> SimpleNamespace:
        tokens = ecg[:, :8, :5000].reshape(ecg.shape[0], 8, 50, 100).mean(-1).transpose(1, 2)
        valid = torch.ones(ecg.shape[0], dtype=torch.bool)
        valid[0] = False
        return SimpleNamespace(tokens=tokens, phase=None, source=None, valid=valid)


class StubVAE(nn.Module):
    def encode_latent(self, x: Tensor) -> Tensor:
        z = F.avg_pool3d(x, (1, 8, 8))  # (B, 1, 50, 12, 12)
        return torch.cat([z, -z], dim=1)


@pytest.fixture
def upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    from ecgflowcmr.training.stages import flow as flow_stage

    pamae, vae = tmp_path / "pamae", tmp_path / "vae"
    for run in (pamae, vae):
        run.mkdir()
        (run / "model.safetensors").write_bytes(b"stub")
        (run / "config.json").write_text("{}")  # enough for finalize to assemble a (stub) bundle
    save_file({"template": torch.full((2, 50, 12, 12), 0.1)}, str(vae / "template.safetensors"))
    loads = []

    def fake_load(p: Path, v: Path, device: torch.device) -> tuple[nn.Module, nn.Module]:
        loads.append((p, v))
        return StubPAMAE(), StubVAE()

    monkeypatch.setattr(flow_stage, "load_frozen", fake_load)
    return {"pamae": pamae, "vae": vae, "loads": loads}


def test_stage_encodes_caches_finalizes_and_loads(synthetic_store: Path, tmp_path: Path, upstream: dict) -> None:
    from ecgflowcmr.training.stages import flow as flow_stage

    run = tmp_path / "run"
    run.mkdir()
    args = (synthetic_store, run, upstream["pamae"], upstream["vae"], 3, torch.device("cpu"))
    encoded = flow_stage.encoded_splits(*args)
    assert set(encoded) == {"train", "val", "test"}
    assert encoded["train"].z1_shape == (8 - 3, 2, 50, 12, 12)  # batches of 3: 3 first items invalid
    assert encoded["train"].cond_shape == (5, 50, 8) and len(encoded["train"]) == 5
    assert encoded["train"].index.tolist() == [1, 2, 4, 5, 7]
    assert len(upstream["loads"]) == 1
    again = flow_stage.encoded_splits(*args)  # reused from run/cache, the networks are not even loaded
    assert len(upstream["loads"]) == 1
    assert torch.equal(again["val"].tensors()["cond"], encoded["val"].tensors()["cond"])

    cfg = flow_stage.RunConfig(model=FlowConfig(dit=DiTConfig(width=16, depth=2, heads=2), sample_steps=2))
    first = encoded["train"][0]
    model_cfg = flow_stage.fit_to_upstream(cfg.model, first["z1"][None], first["cond"][None])
    assert (model_cfg.dit.latent_channels, model_cfg.dit.cond_dim, model_cfg.dit.width) == (2, 8, 16)
    model = FlowMatching(model_cfg, read_template(upstream["vae"]))
    metrics = flow_metrics(model, latents.open_encoded_split(run, "test"), cfg.eval)  # finalize: this + the bundle
    test = encoded["test"].tensors()
    z1, template = test["z1"], model.template
    assert metrics["flow_test_items"]["value"] == len(z1) == 2  # 4 test items in batches of 3: 2 invalid (stub)
    assert metrics["flow_latent_mse_template"]["value"] == pytest.approx(float(((template - z1) ** 2).mean()))
    assert metrics["flow_latent_mse_real_pairs"]["value"] == pytest.approx(float(((z1.roll(1, 0) - z1) ** 2).mean()))
    assert all(d["definition"] for d in metrics.values())
    # an untrained flow returns z0 = template + ε, so its MSE is the template's plus about α² = 1
    assert metrics["flow_latent_mse"]["value"] == pytest.approx(metrics["flow_latent_mse_template"]["value"] + 1,
                                                                abs=0.2)

    save_weights(model, run, dataclasses.asdict(model.config))
    loaded = load_model(run, "flow")
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded.template, model.template)
    cond = encoded["test"].tensors()["cond"][:2]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(sample(loaded, cond, steps=2, generator=g()), sample(model, cond, steps=2, generator=g()))


def test_stage_needs_both_upstream_runs(synthetic_store: Path, tmp_path: Path) -> None:
    from ecgflowcmr.training.stages import flow as flow_stage

    with pytest.raises(InputError, match="needs a trained PA-MAE run and a trained VAE run"):
        flow_stage.build(flow_stage.RunConfig(), synthetic_store, tmp_path, pamae=None, vae=tmp_path)


def test_standardised_condition_uses_the_training_statistics(synthetic_store: Path, tmp_path: Path,
                                                             real_upstream: dict) -> None:
    """standardise_condition: the stage computes μ, σ (T, D) over the training split's aligned tokens, the flow
    feeds the DiT (c − μ)/σ, and both buffers travel with the weights."""
    from ecgflowcmr.store.latents import read_encoded_split
    from ecgflowcmr.training.stages import flow as flow_stage
    from ecgflowcmr.training.tasks import run_stage

    sets = ["train.steps=2", "train.batch_size=2", "train.val_every=0", "train.device=cpu", "model.sample_steps=1",
            "eval.max_items=2", "model.standardise_condition=true", "model.noise_time_correlation=1.0"]
    run = run_stage(flow_stage, "flow", synthetic_store, tmp_path / "run", config="tiny", sets=sets, **real_upstream)
    cond = read_encoded_split(run, "train")["cond"]  # (N, T, D)
    flow = load_model(run, "flow")
    torch.testing.assert_close(flow.cond_mean, cond.mean(0))
    torch.testing.assert_close(flow.cond_std, cond.std(0, unbiased=False).clamp_min(1e-6), rtol=1e-4, atol=1e-5)
    z, t, c = torch.randn(2, *flow.template.shape), torch.tensor([0.2, 0.7]), cond[:2]
    seen = {}
    flow.dit.register_forward_hook(lambda module, args, out: seen.update(c=args[2]))
    flow.velocity(z, t, c)
    torch.testing.assert_close(seen["c"], (c - flow.cond_mean) / flow.cond_std)
    with pytest.raises(ConfigError):
        FlowMatching(FlowConfig(dit=SMALL), cond_stats=(torch.zeros(6, 8), torch.ones(6, 8)))


def test_the_ecg_prior_and_motion_noise_fits_travel_with_the_weights(synthetic_store: Path, tmp_path: Path,
                                                                     real_upstream: dict) -> None:
    """model.prior=ecg_linear (phase-aligned): the stage fits Δ(c) on the training split (prior.json says how
    well), the buffers are saved with the weights, and a bundle's sampling starts from template + Δ(c); likewise
    the motion noise's shapes (model.noise_motion_components, motion_noise.json)."""
    import json

    from ecgflowcmr.store.latents import read_encoded_split
    from ecgflowcmr.training.stages import flow as flow_stage
    from ecgflowcmr.training.tasks import run_stage

    sets = ["train.steps=2", "train.batch_size=2", "train.val_every=0", "train.device=cpu", "model.sample_steps=1",
            "eval.max_items=2", "model.prior=ecg_linear", "model.prior_components=4", "model.prior_time_bins=5",
            "model.noise_time_correlation=0.5", "model.noise_motion_components=2", "model.prior_align_phase=true"]
    run = run_stage(flow_stage, "flow", synthetic_store, tmp_path / "run", config="tiny", sets=sets, **real_upstream)
    found = json.loads((run / "prior.json").read_text())
    assert found["items"] == 8 and 0 < found["components_variance"] <= 1 + 1e-6
    assert 1 <= found["end_systole_mean"] <= 48 and found["end_systole_loo_rmse"] >= 0
    flow = load_model(run, "flow")
    assert flow.prior is not None and flow.prior.basis.abs().sum() > 0  # fitted, not the zeros it starts as
    torch.testing.assert_close(flow.prior.template, flow.template)
    train = read_encoded_split(run, "train")
    refit = FlowMatching(flow.config, flow.template)
    refit.prior.fit(train["z1"] - flow.template, train["cond"], template=flow.template)
    torch.testing.assert_close(refit.prior_shift(train["cond"]), flow.prior_shift(train["cond"]))
    motion = json.loads((run / "motion_noise.json").read_text())
    assert motion["items"] == 8 and 0 < motion["share_kept"] <= 1 + 1e-6 and motion["motion_variance"] > 0
    assert refit.fit_motion_noise(train["z1"]) == motion
    torch.testing.assert_close(refit.motion_basis, flow.motion_basis)
    assert flow.motion_basis.abs().sum() > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["flow_latent_mse_prior"]["value"])


def test_the_prior_fit_recovers_a_known_linear_map() -> None:
    from ecgflowcmr.flow.prior import LinearPrior

    g = torch.Generator().manual_seed(0)
    n, frames, dim, bins = 200, 6, 8, 3
    cond = torch.randn(n + 50, frames, dim, generator=g)
    prior = LinearPrior((frames, dim), SHAPE, components=3, time_bins=bins)
    features = prior.features(cond)  # (n, bins·dim)
    directions = torch.linalg.qr(torch.randn(int(np.prod(SHAPE)), 3, generator=g))[0].T  # (3, L) orthonormal
    deviation = (0.3 + features @ torch.randn(bins * dim, 3, generator=g) @ directions).reshape(-1, *SHAPE)
    found = prior.fit(deviation[:n], cond[:n])
    assert found["components_variance"] == pytest.approx(1, abs=1e-5)
    assert found["train_variance_explained"] > 0.99
    error = (prior(cond[n:]) - deviation[n:]).pow(2).mean() / deviation[n:].var()
    assert error < 0.01  # held-out items: the map itself was found, not the training points
    with pytest.raises(ConfigError, match="prior_time_bins"):
        LinearPrior((frames, dim), SHAPE, components=3, time_bins=4)


def test_warp_time_moves_one_frame_onto_another_and_closes_the_cycle() -> None:
    from ecgflowcmr.flow.prior import warp_time

    frames = 20
    z = torch.randn(3, 2, frames, 4, 4, generator=torch.Generator().manual_seed(0))
    same = torch.tensor([7.0, 9.5, 12.0])
    torch.testing.assert_close(warp_time(z, same, same), z)  # no move: every frame read where it is
    spike = torch.zeros(2, 1, frames, 1, 1)
    spike[0, 0, 6], spike[1, 0, 12] = 1.0, 1.0
    moved = warp_time(spike, torch.tensor([6.0, 12.0]), torch.tensor([10.0, 8.0]))[:, 0, :, 0, 0]
    assert moved.argmax(1).tolist() == [10, 8] and moved.max(1).values.tolist() == [1.0, 1.0]
    ramp = torch.arange(frames, dtype=torch.float64).reshape(1, 1, frames, 1, 1)
    stretched = warp_time(ramp, torch.tensor([5.0]), torch.tensor([10.0])).flatten()
    torch.testing.assert_close(stretched[:11], torch.arange(11, dtype=torch.float64) / 2)  # systole twice as long
    torch.testing.assert_close(stretched[10:], 5 + torch.arange(10, dtype=torch.float64) * 1.5)  # diastole shorter


def test_the_phase_aligned_prior_keeps_the_timing_a_linear_map_blurs() -> None:
    """Latents whose contraction (a bump in time) peaks at a frame set by the ECG: the plain linear prior mixes
    the training cycles and misplaces the peak on held-out items; aligned, it puts it where the ECG says."""
    from ecgflowcmr.flow.prior import LinearPrior, latent_end_systole

    g = torch.Generator().manual_seed(0)
    n, frames, dim, shape = 300, 50, 4, (2, 50, 3, 3)  # 300 items: more than one WARP_CHUNK
    cond = torch.randn(n + 100, frames, dim, generator=g)
    es = 20 + 3 * cond[:, :, 0].mean(1) * frames**0.5  # (n,) the end-systolic frame, ~ 20 ± 3
    lag = (torch.arange(frames) - es[:, None] + frames / 2) % frames - frames / 2  # (n, T) circular distance
    bump = torch.exp(-0.5 * (lag / 3) ** 2)  # (n, T)
    pattern = torch.randn(shape[0], 1, *shape[2:], generator=g)  # where in space it contracts
    z1 = bump[:, None, :, None, None] * pattern + 0.05 * torch.randn(n + 100, *shape, generator=g)
    template = z1[:n].mean(0)
    truth = latent_end_systole(z1[n:])
    errors = {}
    for align in (False, True):
        prior = LinearPrior((frames, dim), shape, components=8, time_bins=5, align_phase=align)
        found = prior.fit(z1[:n] - template, cond[:n], template=template)
        start = template + prior(cond[n:])
        errors[align] = float((latent_end_systole(start) - truth).abs().mean())
    assert found["end_systole_loo_rmse"] < 0.5 and found["end_systole_mean"] == pytest.approx(20, abs=0.5)
    assert errors[True] < 0.5 < errors[False] / 2, errors
    # what a flow in aligned time learns and gives back (model.flow_align_phase): every training latent's
    # end-systole on E; a latent on E placed onto the frame the ECG predicts
    aligned = prior.align(z1[:n])
    off = (latent_end_systole(aligned) - prior.es_mean.double()).abs()  # the rule reads whole and half frames
    assert float(off.mean()) < 0.5 and float((off <= 0.5).double().mean()) > 0.95, off
    placed = prior.place(template + prior.aligned(cond[n:]), cond[n:])
    torch.testing.assert_close(placed, template + prior(cond[n:]))
    assert float((latent_end_systole(placed) - truth).abs().mean()) < 0.5
    with pytest.raises(ValueError, match="template"):
        prior.fit(z1[:n] - template, cond[:n])
    assert FlowMatching(FlowConfig(dit=SMALL, prior_align_phase=True)).prior is None  # shapes the ECG prior only


def test_with_the_prior_an_untrained_clean_flow_lands_on_template_plus_prior() -> None:
    """ẑ1 = template + Δ(c) + net(·): with the output layer at zero (adaLN-Zero start), every noise draw lands on
    the ECG prior's prediction; without the prior, sampling is unchanged (Δ = None)."""
    torch.manual_seed(0)
    flow = FlowMatching(FlowConfig(dit=SMALL, prior="ecg_linear", prediction="clean", prior_time_bins=3),
                        torch.randn(SHAPE))
    for name in ("coef", "basis", "intercept", "offset"):
        getattr(flow.prior, name).normal_()
    cond = torch.randn(3, 6, 8)
    expected = flow.template + flow.prior_shift(cond)
    for seed in (1, 2):
        z = sample(flow, cond, steps=3, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(z, expected)
    plain = sample(flow, cond, steps=3, generator=torch.Generator().manual_seed(1), ecg_prior=False)
    torch.testing.assert_close(plain, flow.template.expand_as(plain))


def test_a_flow_in_aligned_time_starts_there_and_places_its_sample_on_the_ecgs_timing() -> None:
    """model.flow_align_phase: the start is template + the prior's aligned prediction, and the sample is moved
    onto ê(c) only at the end — an untrained clean flow lands on the prior's prediction in the subject's time;
    the null condition starts from the template and is not moved."""
    torch.manual_seed(0)
    config = FlowConfig(dit=SMALL, prior="ecg_linear", prior_align_phase=True, flow_align_phase=True,
                        prediction="clean", prior_time_bins=3)
    flow = FlowMatching(config, torch.randn(SHAPE))
    for name in ("coef", "basis", "intercept", "offset", "es_coef"):
        getattr(flow.prior, name).normal_()
    flow.prior.template.copy_(flow.template)
    flow.prior.es_mean.fill_(2.5)
    flow.prior.es_intercept.fill_(2.5)
    cond = torch.randn(3, 6, 8)
    torch.testing.assert_close(flow.prior_shift(cond), flow.prior.aligned(cond))
    assert not torch.allclose(flow.prior_shift(cond), flow.prior(cond))  # the ECG moves the timing
    for seed in (1, 2):
        z = sample(flow, cond, steps=3, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(z, flow.template + flow.prior(cond))
    plain = sample(flow, cond, steps=3, generator=torch.Generator().manual_seed(1), ecg_prior=False)
    torch.testing.assert_close(plain, flow.template.expand_as(plain))
    z1 = torch.randn(2, *SHAPE)
    torch.testing.assert_close(flow.target(z1), flow.prior.align(z1))


def test_guidance_with_the_prior_combines_clean_estimates_each_from_its_own_path() -> None:
    """The unconditional model was trained from the plain template: at the conditional path's z its own path
    is at z − (1 − t)·Δ. Guidance is ẑ1_u + w·(ẑ1_c − ẑ1_u) of the two clean estimates ẑ1 = z + (1 − t)·v, each
    from its own path; w = 1 is the conditional velocity."""
    from ecgflowcmr.flow.sampler import guided_velocity

    flow = small_flow(prior="ecg_linear", prior_time_bins=3, cond_dropout=0.1)
    for name in ("coef", "basis", "intercept", "offset"):
        getattr(flow.prior, name).normal_()
    cond = torch.randn(2, 6, 8)
    shift, null = flow.prior_shift(cond), flow.null_condition(2)
    z = flow.initial_state(2, torch.Generator().manual_seed(3)) + shift + 0.3 * torch.randn(2, *SHAPE)
    with torch.no_grad():
        for t_value, w in ((0.0, 2.0), (0.4, 2.0), (0.7, 1.5)):
            t = torch.tensor(t_value)
            clean_c = z + (1 - t) * flow.velocity(z, t.expand(2), cond, shift)
            z_u = z - (1 - t) * shift
            clean_u = z_u + (1 - t) * flow.velocity(z_u, t.expand(2), null)
            expected = (clean_u + w * (clean_c - clean_u) - z) / (1 - t)
            torch.testing.assert_close(guided_velocity(flow, cond, w, shift)(z, t), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(guided_velocity(flow, cond, 1.0, shift)(z, t),
                                       flow.velocity(z, t.expand(2), cond, shift), atol=1e-5, rtol=1e-5)


def test_a_dropped_condition_starts_from_the_plain_template() -> None:
    flow = small_flow(prior="ecg_linear", prior_time_bins=3, cond_dropout=0.5)
    z1, c = torch.randn(2, *SHAPE), torch.randn(2, 6, 8)
    t, eps = torch.tensor([0.3, 0.6]), torch.randn(2, *SHAPE)
    drop = torch.tensor([True, True])
    before = flow.loss(z1, c, t, eps, drop)[0]
    for name in ("coef", "basis", "intercept", "offset"):
        getattr(flow.prior, name).normal_()
    assert torch.equal(flow.loss(z1, c, t, eps, drop)[0], before)  # Δ(c) does not reach a dropped item
    assert not torch.equal(flow.loss(z1, c, t, eps, ~drop)[0], before)


# --------------------------------------------------------------------------------------------------
# The latent cache: memory-mapped, written once, joined in item order
# --------------------------------------------------------------------------------------------------


def stub_encoding(store: Path, split: str, items: list[int]) -> dict[str, Tensor]:
    """What the stubs give for these store items, computed item by item in memory (the reference)."""
    from ecgflowcmr.store.prepared import StoreDataset

    dataset = StoreDataset(store, split, fields=("ecg", "cine"))
    batch = torch.utils.data.default_collate([dataset[i] for i in items])
    return {"z1": StubVAE().encode_latent(batch["cine"]), "cond": StubPAMAE().encode_aligned(batch["ecg"]).tokens}


def test_latent_pairs_map_the_cache_and_pickle_without_it(synthetic_store: Path, tmp_path: Path,
                                                          upstream: dict) -> None:
    import pickle

    import numpy as np

    from ecgflowcmr.training.stages import flow as flow_stage

    encoded = flow_stage.encoded_splits(synthetic_store, tmp_path, upstream["pamae"], upstream["vae"], 3,
                                        torch.device("cpu"))
    train = encoded["train"]
    item = train[1]
    expected = stub_encoding(synthetic_store, "train", [2])
    torch.testing.assert_close(item["z1"], expected["z1"][0], rtol=0, atol=0)
    torch.testing.assert_close(item["cond"], expected["cond"][0], rtol=0, atol=0)
    assert all(isinstance(a, np.memmap) for shard in train.arrays for a in shard.values())
    item["z1"].add_(1.0)  # an item is a copy: neither the map nor the file change
    assert torch.equal(train[1]["z1"], expected["z1"][0])
    assert not any(isinstance(v, Tensor) and v.numel() > len(train) for v in vars(train).values())
    z1_bytes = int(np.prod(train.z1_shape)) * 4
    blob = pickle.dumps(train)  # what a DataLoader worker receives under spawn
    assert len(blob) < z1_bytes / 10
    copy = pickle.loads(blob)
    assert copy._arrays is None and torch.equal(copy[4]["cond"], train[4]["cond"])
    on_disk = np.load(tmp_path / "cache" / "train-0of1" / "z1.npy")
    assert on_disk.shape == (5, 2, 50, 12, 12) and on_disk.dtype == np.float32


def test_cache_is_reused_unchanged_and_rebuilt_when_stale(synthetic_store: Path, tmp_path: Path,
                                                          upstream: dict) -> None:
    import json
    import os

    from ecgflowcmr.training.stages import flow as flow_stage

    args = (synthetic_store, tmp_path, upstream["pamae"], upstream["vae"], 3, torch.device("cpu"))
    flow_stage.encoded_splits(*args)
    cache = tmp_path / "cache"
    snapshot = lambda: {p.relative_to(cache): (p.read_bytes(), p.stat().st_mtime_ns)  # noqa: E731
                        for p in sorted(cache.rglob("*")) if p.is_file()}
    (cache / "train-0of1.safetensors").write_bytes(b"a version-1 cache: deleted on the next build")
    flow_stage.encoded_splits(*args)
    first = snapshot()
    assert sorted(p.name for p in cache.iterdir()) == ["test-0of1", "train-0of1", "val-0of1"]  # no temp left
    meta = json.loads((cache / "train-0of1" / "meta.json").read_text())
    assert meta["dropped_invalid_ecg"] == "3" and meta["items"] == "5" and meta["version"] == latents.CACHE_VERSION
    flow_stage.encoded_splits(*args)
    assert snapshot() == first and len(upstream["loads"]) == 1  # not rewritten, networks not loaded

    stat = (upstream["vae"] / "model.safetensors").stat()  # a retrained VAE: the cache is stale
    os.utime(upstream["vae"] / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = flow_stage.encoded_splits(*args)
    assert len(upstream["loads"]) == 2
    assert all(first[name][1] != mtime for name, (_, mtime) in snapshot().items() if name.suffix == ".npy")
    assert again["train"].index.tolist() == [1, 2, 4, 5, 7]
    (upstream["pamae"] / "config.json").write_text('{"model": {"align_cut": "uniform"}}')  # same weights
    flow_stage.encoded_splits(*args)
    assert len(upstream["loads"]) == 3


def test_shards_join_in_item_order_and_train_like_tensors_in_memory(synthetic_store: Path, tmp_path: Path) -> None:

    for rank in (1, 0):  # two ranks of items 0..7 in batches of 3: 0, 6 and 1, 7 open a batch (invalid)
        out = latents.shard_path(tmp_path, "train", rank, 2)
        out.parent.mkdir(parents=True, exist_ok=True)
        dropped = latents.encode_split(synthetic_store, "train", StubPAMAE(), StubVAE(), 3, torch.device("cpu"),
                                          out, {"version": latents.CACHE_VERSION}, rank, 2)
        assert dropped == 2
    pairs = latents.open_encoded_split(tmp_path, "train")
    assert pairs is not None and pairs.index.tolist() == [2, 3, 4, 5] and len(pairs.folders) == 2
    reference = stub_encoding(synthetic_store, "train", [2, 3, 4, 5])
    loaded = latents.read_encoded_split(tmp_path, "train", world=2)
    assert torch.equal(loaded["z1"], reference["z1"]) and torch.equal(loaded["cond"], reference["cond"])

    def losses(dataset: torch.utils.data.Dataset) -> list[float]:
        torch.manual_seed(1)
        dit = dataclasses.replace(SMALL, latent_channels=2, frames=50, latent_size=12, cond_dim=8, patch=4)
        flow = FlowMatching(FlowConfig(dit=dit, cond_dropout=0.0), torch.full((2, 50, 12, 12), 0.1))
        opt = torch.optim.AdamW(flow.parameters(), lr=1e-3)
        torch.manual_seed(0)
        out = []
        for batch in torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True):
            loss, _ = flow(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    in_memory = [{"z1": z1, "cond": c} for z1, c in zip(reference["z1"], reference["cond"], strict=True)]
    mapped, expected = losses(pairs), losses(in_memory)
    assert len(mapped) == 2 and mapped == pytest.approx(expected, abs=1e-6, rel=0)
