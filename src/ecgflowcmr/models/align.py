"""Cycle alignment ("ROI Align", paper §2.1): per-token ECG features → one cardiac cycle of 50 frames.

From the predicted phase per token, complete cardiac cycles are cut at R-peaks (the 2π→0 wrap, docs/decisions.md;
the public code's mid-RR cut at φ=π is ``cut="mid_rr"``), each cycle is resampled to ``frames`` tokens by
linear interpolation on the token axis *at equal phase steps* (frame j ↔ phase 2πj/frames, so frame 0 is the
R-peak = end-diastole = cine frame 0), and the cycles of one record are aggregated (median, mean or the
middle one). Everything is vectorised over the batch: cycles are padded to the batch's largest count and
invalid ones are NaN-masked, never looped over in Python.

Phase is handled *unwrapped*: ``u = φ + 2π·(number of wraps so far)``, made monotone with a running max.
Cycle n spans ``u ∈ [2πn + o, 2π(n+1) + o)`` (``o`` = 0 for R-peak cuts, π for mid-RR); a cycle is complete
when both ends lie inside the record. Positions are in token units: token k is centred on sample
``stride·k + stride/2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ecgflowcmr.canonical import N_FRAMES, TOKEN_STRIDE, token_centre

TWO_PI = 2.0 * math.pi

Cut = Literal["rpeak", "mid_rr"]
Aggregate = Literal["median", "mean", "single"]


@dataclass
class CycleAlignment:
    """Result of :func:`align_unwrapped`: ``tokens`` (B, F, D) (zeros where ``found`` is False),
    ``frame_phase`` (F,) phase of each output frame in rad, ``cycles`` (B,) int64 number of complete valid
    cycles used, ``found`` (B,) bool."""

    tokens: Tensor
    frame_phase: Tensor
    cycles: Tensor
    found: Tensor


def token_labels(phase: Tensor, stride: int = TOKEN_STRIDE) -> Tensor:
    """Per-sample phase labels (B, S) → per-token labels (B, S // stride): the label at each token's centre
    sample (``canonical.token_centre``; NaN stays NaN = unknown)."""
    return phase[:, token_centre(0, stride) :: stride]


def unwrap_phase(phase: Tensor) -> Tensor:
    """Wrapped phase (B, L) in [0, 2π) → unwrapped phase (B, L): steps are taken modulo 2π into [-π, π)
    (so jitter around the wrap does not count as extra cycles), then summed. Not yet monotone."""
    step = torch.diff(phase, dim=1)
    step = torch.remainder(step + math.pi, TWO_PI) - math.pi
    return torch.cat([phase[:, :1], phase[:, :1] + torch.cumsum(step, dim=1)], dim=1)


def invert_monotone(u: Tensor, v: Tensor) -> Tensor:
    """Fractional positions p (B, Q) with ``u(p) = v`` for non-decreasing ``u`` (B, L), linear between tokens;
    clamped to [0, L-1]. ``u`` is the (monotone) unwrapped phase, ``v`` the query phases."""
    length = u.shape[1]
    i = torch.searchsorted(u.contiguous(), v.contiguous())  # first index with u[i] >= v
    hi = i.clamp(1, length - 1)
    lo = hi - 1
    u_lo, u_hi = u.gather(1, lo), u.gather(1, hi)
    frac = ((v - u_lo) / (u_hi - u_lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    pos = lo + frac
    pos = torch.where(i == 0, torch.zeros_like(pos), pos)
    return torch.where(i >= length, torch.full_like(pos, length - 1.0), pos)


def interpolate_tokens(tokens: Tensor, pos: Tensor) -> Tensor:
    """Linear interpolation of ``tokens`` (B, L, D) at fractional positions ``pos`` (B, Q) → (B, Q, D)."""
    length, dim = tokens.shape[1], tokens.shape[2]
    pos = pos.clamp(0.0, length - 1.0)
    lo = pos.floor().long().clamp(max=length - 2)
    frac = (pos - lo).unsqueeze(-1)  # (B, Q, 1)
    lo_tok = tokens.gather(1, lo.unsqueeze(-1).expand(-1, -1, dim))
    hi_tok = tokens.gather(1, (lo + 1).unsqueeze(-1).expand(-1, -1, dim))
    return lo_tok + frac * (hi_tok - lo_tok)


def cycle_boundaries(phase: Tensor, offset: float = 0.0) -> list[np.ndarray]:
    """Token positions (float) where the predicted phase (B, L) wraps (crosses 2πn + offset), per sample.
    Sample index of a boundary = ``stride·p + stride/2``."""
    u = torch.cummax(unwrap_phase(phase), dim=1).values
    out = []
    for row in u:  # metrics only: a handful of boundaries per record
        if not torch.isfinite(row).all():
            out.append(np.zeros(0))
            continue
        n = torch.arange(math.ceil((row[0].item() - offset) / TWO_PI), math.floor((row[-1].item() - offset) / TWO_PI) + 1)
        if len(n) == 0:
            out.append(np.zeros(0))
            continue
        v = (n.to(row.dtype) * TWO_PI + offset)[None]
        out.append(invert_monotone(row[None], v)[0].numpy())
    return out


def align_unwrapped(tokens: Tensor, u: Tensor, *, frames: int = N_FRAMES, offset: float = 0.0,
                    aggregate: Aggregate = "median", min_len: float = 18.0, max_len: float = 125.0,
                    max_drop: float = math.pi / 2) -> CycleAlignment:
    """Resample every complete cycle of ``tokens`` (B, L, D) to ``frames`` tokens at equal phase steps and
    aggregate over cycles. ``u`` (B, L): unwrapped phase (rows with a non-finite value have no cycle).

    A cycle is kept when its length in tokens is within [``min_len``, ``max_len``] and the raw phase never
    runs backwards inside it by more than ``max_drop`` rad (an incoherent prediction is not a cycle).
    """
    batch, _, dim = tokens.shape
    finite = torch.isfinite(u).all(dim=1)  # (B,)
    u = torch.where(finite[:, None], u, torch.zeros_like(u)).to(torch.float64)
    u_mono = torch.cummax(u, dim=1).values  # (B, L)
    first = torch.ceil((u_mono[:, 0] - offset) / TWO_PI)  # index of the first cycle start
    last = torch.floor((u_mono[:, -1] - offset) / TWO_PI)  # index of the last cycle end
    count = torch.where(finite, (last - first).clamp_min(0), torch.zeros_like(first)).long()  # (B,)
    n_max = max(int(count.max().item()), 1)

    # query phases: cycle c, frame j in 0..F (F = the next cycle's start, used for the cycle's length)
    c = torch.arange(n_max, dtype=torch.float64)
    j = torch.arange(frames + 1, dtype=torch.float64) / frames
    v = (first[:, None, None] + c[None, :, None] + j[None, None, :]) * TWO_PI + offset  # (B, C, F+1)
    pos = invert_monotone(u_mono, v.reshape(batch, -1)).reshape(batch, n_max, frames + 1)

    # which cycles are complete, of plausible length and coherent
    cycle_len = pos[:, :, -1] - pos[:, :, 0]  # (B, C) tokens
    keep = (c[None, :] < count[:, None]) & (cycle_len >= min_len) & (cycle_len <= max_len)
    drop = u_mono - u  # (B, L) how far the raw phase fell behind its running max
    cycle_of_token = (torch.floor((u_mono - offset) / TWO_PI) - first[:, None]).long()  # (B, L)
    inside = (cycle_of_token >= 0) & (cycle_of_token < n_max)
    worst = torch.zeros(batch, n_max, dtype=u.dtype).scatter_reduce(
        1, cycle_of_token.clamp(0, n_max - 1), torch.where(inside, drop, torch.zeros_like(drop)), reduce="amax")
    keep &= worst <= max_drop

    sampled = interpolate_tokens(tokens, pos[:, :, :frames].reshape(batch, -1).to(tokens.dtype))
    sampled = sampled.reshape(batch, n_max, frames, dim)  # (B, C, F, D)
    sampled = torch.where(keep[:, :, None, None], sampled, torch.full_like(sampled, float("nan")))
    cycles = keep.sum(dim=1)
    found = cycles > 0

    if aggregate == "median":
        out = torch.nanmedian(sampled, dim=1).values  # lower middle value for an even count
    elif aggregate == "mean":
        out = torch.nanmean(sampled, dim=1)
    else:  # "single": the middle kept cycle
        rank = torch.cumsum(keep.long(), dim=1) - 1  # (B, C) ordinal among kept cycles
        pick = (keep & (rank == ((cycles - 1) // 2)[:, None])).float().argmax(dim=1)  # (B,)
        out = sampled[torch.arange(batch), pick]
    out = torch.where(found[:, None, None], out, torch.zeros_like(out))
    frame_phase = torch.remainder(torch.arange(frames, dtype=torch.float32) / frames * TWO_PI + offset, TWO_PI)
    return CycleAlignment(tokens=out, frame_phase=frame_phase, cycles=cycles, found=found)


def align_cycles(tokens: Tensor, phase: Tensor, *, frames: int = N_FRAMES, cut: Cut = "rpeak",
                 aggregate: Aggregate = "median", min_len: float = 18.0, max_len: float = 125.0,
                 max_drop: float = math.pi / 2) -> CycleAlignment:
    """Align ``tokens`` (B, L, D) on the *wrapped* predicted phase ``phase`` (B, L) rad in [0, 2π)."""
    offset = math.pi if cut == "mid_rr" else 0.0
    return align_unwrapped(tokens, unwrap_phase(phase), frames=frames, offset=offset, aggregate=aggregate,
                           min_len=min_len, max_len=max_len, max_drop=max_drop)


def unwrapped_phase_from_rpeaks(rpeaks: list[np.ndarray], length: int, stride: int = TOKEN_STRIDE) -> Tensor:
    """Unwrapped phase (B, L) at token centres from R-peak sample indices: 2πn at the n-th R-peak, linear in
    between and extrapolated with the nearest R-R interval at the ends. Fewer than 2 R-peaks → a NaN row."""
    centres = token_centre(np.arange(length, dtype=np.float64), stride)
    out = np.full((len(rpeaks), length), np.nan)
    for b, peaks in enumerate(rpeaks):  # tiny per-record work (a dozen R-peaks), only for fallback records
        r = np.sort(np.asarray(peaks, dtype=np.float64))
        if len(r) < 2 or np.any(np.diff(r) <= 0):
            continue
        u = np.interp(centres, r, TWO_PI * np.arange(len(r)))
        before, after = centres < r[0], centres > r[-1]
        u[before] = TWO_PI * (centres[before] - r[0]) / (r[1] - r[0])
        u[after] = TWO_PI * (len(r) - 1 + (centres[after] - r[-1]) / (r[-1] - r[-2]))
        out[b] = u
    return torch.from_numpy(out)


def fixed_window(tokens: Tensor, start: float, length: float, frames: int = N_FRAMES) -> Tensor:
    """Resample the token span [start, start + length) (token units) of ``tokens`` (B, L, D) to ``frames``
    tokens, frame j at ``start + length·j/frames`` (the fallback window, and the "uniform" ablation)."""
    pos = start + length * torch.arange(frames, dtype=tokens.dtype) / frames
    return interpolate_tokens(tokens, pos.expand(tokens.shape[0], -1))
