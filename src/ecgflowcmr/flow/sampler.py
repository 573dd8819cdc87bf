"""Integrating the learned velocity field from t = 0 (noisy template) to t = 1 (paper Eq. 8).

Apart from the network: ``flow`` is anything with ``velocity(z_t, t, c, shift)``, ``initial_state(batch,
generator)``, ``prior_shift(c)`` (the ECG prior's start relative to the template, or None), ``place(z1, c)``
(a sample moved onto the subject's own time; called only with a prior) and, for guidance,
``null_condition(batch)`` (``FlowMatching`` has all five).

    Euler (Eq. 8):  z_{t+Δt} = z_t + Δt·v(z_t, t)                                 1 pass per step
    Heun:           z' = z_t + Δt·v(z_t, t);  z_{t+Δt} = z_t + Δt/2·(v(z_t, t) + v(z', t+Δt))   2 passes
    Guidance:       v = v_u + w·(v_c − v_u), v_c and v_u from ONE batched pass (2B items)
                    (with the ECG prior, each branch evaluated on its own path: ``guided_velocity``)

Ancestral (stochastic Euler, 1 pass per step; ``eta`` = η in [0, 1], default 1: DDIM's η for the straight
path of Eq. 4). One pass gives both ends of the straight line through z_t: ẑ1 = z_t + (1 − t)·v̂ and
ẑ0 = z_t − t·v̂ = m + α·ε̂, with m the start's mean (template, plus the ECG prior's Δ). Euler is
z_{t'} = (1 − t')·ẑ0 + t'·ẑ1; the ancestral step replaces a share λ of the recovered noise ε̂ by fresh
noise ε' of the same structure (``flow.noise``, which then also belongs to ``flow``'s contract, with
``flow.template`` and ``flow.config.alpha``):

    z_{t'} = (1 − t')·(m + α·(√(1 − λ²)·ε̂ + λ·ε')) + t'·ẑ1,   λ = η·√(1 − r²),  r = t·(1 − t') / (t'·(1 − t))

λ is η times the spread of z_{t'} given z_t and z1 relative to its noise level (1 − t')·α (the path is
z_t − (1 − t)·m = t·z1 + (1 − t)·α·ε): η = 1 is the ancestral (DDPM) sampler of this path, η = 0 Euler
exactly. λ → 0 as the steps shrink (√Δt), so every η keeps the path's marginals; what the fresh noise
changes is that an error of the network in removing the start's noise is not carried to the end. The last
step (t' = 1) adds none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ecgflowcmr.errors import ConfigError

Velocity = Callable[[Tensor, Tensor], Tensor]
METHODS = ("euler", "heun", "ancestral")


def guided_velocity(flow: Any, cond: Tensor, guidance: float | None, shift: Tensor | None = None) -> Velocity:
    """v(z (B, C, T, H', W'), t scalar tensor) → (B, C, T, H', W'), conditional or guided; ``shift`` the ECG
    prior's Δ(c) for the conditional branch.

    With a prior the two branches lie on different paths: the unconditional model was trained from the plain
    template, so the point of its path with the same noise and the same z1 is z − (1 − t)·Δ. Guidance combines
    the two clean estimates, each from its own path, ẑ1 = ẑ1_u + w·(ẑ1_c − ẑ1_u) with ẑ1 = z + (1 − t)·v, which
    as a velocity at z is v_u(z − (1 − t)·Δ) + w·(v_c(z) − v_u(…)) + (w − 1)·Δ (w = 1: the conditional one, computed
    as such).
    """
    b = cond.shape[0]
    if guidance is None or guidance == 1:  # w = 1 is the conditional velocity: one pass, not two
        return lambda z, t: flow.velocity(z, t.expand(b), cond, shift)
    both = torch.cat([cond, flow.null_condition(b).to(cond)])  # (2B, T, D): conditional, then unconditional

    def velocity(z: Tensor, t: Tensor) -> Tensor:
        shifts = None if shift is None else torch.cat([shift, (1 - t) * shift])  # (2B, C, T, H', W')
        v_c, v_u = flow.velocity(torch.cat([z, z]), t.expand(2 * b), both, shifts).chunk(2)
        guided = v_u + guidance * (v_c - v_u)
        return guided if shift is None else guided + (guidance - 1) * shift

    return velocity


def euler_step(v: Velocity, z: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Eq. 8: z + Δt·v(z, t)."""
    return z + (t_next - t) * v(z, t)


def heun_step(v: Velocity, z: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Heun (trapezoid predictor-corrector): exact when v is linear in t."""
    dt = t_next - t
    v0 = v(z, t)
    v1 = v(z + dt * v0, t_next)
    return z + dt / 2 * (v0 + v1)


def stochastic_step(v: Velocity, z: Tensor, t: Tensor, t_next: Tensor, mean: Tensor, alpha: float, eta: float,
                    fresh: Tensor) -> Tensor:
    """One stochastic Euler step from t to t_next < 1 (module docstring): ``mean`` m the start's mean,
    ``fresh`` ε' like z."""
    velocity = v(z, t)
    z1_hat = z + (1 - t) * velocity
    z0_hat = z - t * velocity  # m + α·ε̂
    r = t * (1 - t_next) / (t_next * (1 - t))
    share = eta * (1 - r**2).clamp_min(0).sqrt()  # λ
    noise = (1 - share**2).sqrt() * (z0_hat - mean) + share * alpha * fresh  # α·(√(1 − λ²)·ε̂ + λ·ε')
    return (1 - t_next) * (mean + noise) + t_next * z1_hat


@torch.no_grad()
def sample(flow: Any, cond: Tensor, *, steps: int, method: str = "euler", guidance: float | None = None,
           generator: torch.Generator | None = None, z0: Tensor | None = None, ecg_prior: bool = True,
           eta: float | None = None, step_noise: Tensor | None = None) -> Tensor:
    """z1 (B, C, T, H', W') for ECG conditions ``cond`` (B, T, D_ecg).

    Starts from ``z0`` if given, else ``flow.initial_state`` (template + α·ε, Eq. 4) drawn from
    ``generator``, moved by the flow's ECG prior Δ(cond) when it has one (``ecg_prior=False``: not, as for
    the learned null condition); ``steps`` uniform steps from t = 0 to 1 with ``method``; ``guidance`` None
    or w. The defaults a trained model uses (steps, method, guidance) are its ``FlowConfig.sample_*``, kept in
    its bundle.

    ``method="ancestral"``: stochastic Euler steps with ``eta`` (None: 1; module docstring; needs
    ``flow.template``, ``flow.config.alpha`` and ``flow.noise``), their fresh noise ``step_noise`` (steps − 1,
    B, C, T, H', W') or else drawn from ``generator`` after the start's.
    """
    if steps < 1:
        raise ConfigError("steps", f"must be ≥ 1, got {steps}")
    if method not in METHODS:
        raise ConfigError("method", f"{method!r} is not one of {list(METHODS)}")
    if eta is not None and method != "ancestral":
        raise ConfigError("eta", f"is the ancestral sampler's; got method {method!r}")
    eta = 1.0 if eta is None else eta
    if not 0 <= eta <= 1:
        raise ConfigError("eta", f"must be in [0, 1], got {eta}")
    step = heun_step if method == "heun" else euler_step
    shift = flow.prior_shift(cond) if ecg_prior else None  # (B, C, T, H', W') or None
    v = guided_velocity(flow, cond, guidance, shift)
    b = cond.shape[0]
    z = flow.initial_state(b, generator) if z0 is None else z0
    if shift is not None:
        z = z + shift
    times = torch.linspace(0, 1, steps + 1, device=z.device, dtype=z.dtype)
    if method == "ancestral":
        mean = flow.template if shift is None else flow.template + shift  # (C, T, H', W') or (B, …)
        if step_noise is None:
            step_noise = torch.stack([flow.noise(b, generator) for _ in range(steps - 1)]) if steps > 1 else None
        elif tuple(step_noise.shape) != (steps - 1, *z.shape):
            raise ConfigError("step_noise", f"shape {tuple(step_noise.shape)} is not {(steps - 1, *z.shape)}")
        for i in range(steps - 1):
            z = stochastic_step(v, z, times[i], times[i + 1], mean, flow.config.alpha, eta, step_noise[i].to(z))
        z = euler_step(v, z, times[-2], times[-1])  # t' = 1: no noise left to draw
    else:
        for i in range(steps):
            z = step(v, z, times[i], times[i + 1])
    return z if shift is None else flow.place(z, cond)
