"""Integrating the learned velocity field from t = 0 (noisy template) to t = 1 (paper Eq. 8).

Apart from the network: ``flow`` is anything with ``velocity(z_t, t, c, shift)``, ``initial_state(batch,
generator)``, ``prior_shift(c)`` (the ECG prior's start relative to the template, or None) and, for guidance,
``null_condition(batch)`` (``FlowMatching`` has all four).

    Euler (Eq. 8):  z_{t+Δt} = z_t + Δt·v(z_t, t)                                 1 pass per step
    Heun:           z' = z_t + Δt·v(z_t, t);  z_{t+Δt} = z_t + Δt/2·(v(z_t, t) + v(z', t+Δt))   2 passes
    Guidance:       v = v_u + w·(v_c − v_u), v_c and v_u from ONE batched pass (2B items)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ecgflowcmr.errors import ConfigError

Velocity = Callable[[Tensor, Tensor], Tensor]
METHODS = ("euler", "heun")


def guided_velocity(flow: Any, cond: Tensor, guidance: float | None, shift: Tensor | None = None) -> Velocity:
    """v(z (B, C, T, H', W'), t scalar tensor) → (B, C, T, H', W'), conditional or guided; ``shift`` the ECG
    prior's Δ(c) for the conditional branch (the unconditional one was trained from the plain template)."""
    b = cond.shape[0]
    if guidance is None:
        return lambda z, t: flow.velocity(z, t.expand(b), cond, shift)
    both = torch.cat([cond, flow.null_condition(b).to(cond)])  # (2B, T, D): conditional, then unconditional
    shifts = None if shift is None else torch.cat([shift, torch.zeros_like(shift)])  # (2B, C, T, H', W')

    def velocity(z: Tensor, t: Tensor) -> Tensor:
        v_c, v_u = flow.velocity(torch.cat([z, z]), t.expand(2 * b), both, shifts).chunk(2)
        return v_u + guidance * (v_c - v_u)

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


@torch.no_grad()
def sample(flow: Any, cond: Tensor, *, steps: int, method: str = "euler", guidance: float | None = None,
           generator: torch.Generator | None = None, z0: Tensor | None = None, ecg_prior: bool = True) -> Tensor:
    """z1 (B, C, T, H', W') for ECG conditions ``cond`` (B, T, D_ecg).

    Starts from ``z0`` if given, else ``flow.initial_state`` (template + α·ε, Eq. 4) drawn from
    ``generator``, moved by the flow's ECG prior Δ(cond) when it has one (``ecg_prior=False``: not, as for
    the learned null condition); ``steps`` uniform steps from t = 0 to 1 with ``method``; ``guidance`` None
    or w. The defaults a trained model uses (steps, method, guidance) are its ``FlowConfig.sample_*``, kept in
    its bundle.
    """
    if steps < 1:
        raise ConfigError("steps", f"must be ≥ 1, got {steps}")
    if method not in METHODS:
        raise ConfigError("method", f"{method!r} is not one of {list(METHODS)}")
    step = euler_step if method == "euler" else heun_step
    shift = flow.prior_shift(cond) if ecg_prior else None  # (B, C, T, H', W') or None
    v = guided_velocity(flow, cond, guidance, shift)
    z = flow.initial_state(cond.shape[0], generator) if z0 is None else z0
    if shift is not None:
        z = z + shift
    times = torch.linspace(0, 1, steps + 1, device=z.device, dtype=z.dtype)
    for i in range(steps):
        z = step(v, z, times[i], times[i + 1])
    return z
