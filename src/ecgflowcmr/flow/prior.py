"""The ECG-conditioned template: a closed-form linear prediction of the latent from the ECG (``model.prior``).

The paper starts the flow from one anatomical template for every subject (Eq. 4). Measured on the phantom
(docs/generator.md), the aligned ECG tokens say a great deal about the latent — a ridge regression from them
explains a third of the latent's variance around the template and puts a subject's diagnosis within reach of
a classifier — yet a DiT trained for the few thousand steps a CPU affords does not learn that conditional mean:
its estimate at t = 0 stays at the template, and every subject's own noise then hides the ECG's effect.

``LinearPrior`` gives the flow that mean in closed form, as a data-dependent prior (PriorGrad, Lee et al. 2022):

    φ(c)    = the T aligned tokens averaged in ``time_bins`` equal groups of frames, flattened   (B, bins·D)
    s(c)    = ((φ(c) − μ_φ) / σ_φ) · W + b                                                      (B, K)
    Δ(c)    = offset + s(c) · U                                                                  (B, C, T, H', W')

U (K, C·T·H'·W') holds the top K principal directions of the training latents' deviation from the template;
W, b a ridge regression (penalty chosen by leave-one-out) from the standardised features to the scores on
them; ``offset`` the mean deviation. The flow then runs from z0 = template + Δ(c) + α·ε to z1 and its network
sees z_t − Δ(c) (``FlowMatching``): the paper's flow on the part of the latent that the linear map does not
explain. Everything is fitted once, by the flow stage, on the training split, and saved with the weights.

**Phase alignment** (``align_phase``, ``model.prior_align_phase``). A linear map cannot move a contraction in
time: the ECG says when end-systole falls (its frame moves with heart rate and QT), and a linear prediction
from the ECG mixes the training cycles' shapes instead of shifting one, so the predicted cycle's end-systole is
a blur of the cohort's (docs/generator.md, round 15). With alignment each training latent is first warped in
time, piecewise linearly, so its end-systole sits on the cohort's mean frame E (``warp_time``; end-systole of a
latent: the peak of its distance from frame 0, the end-diastolic R-peak, by the evaluation instrument's rule —
``latent_end_systole``); U, W, b and the offset are fitted on the aligned latents, a second ridge regression
predicts the end-systolic frame ê(c) from the same features, and

    Δ(c)    = warp(offset + s(c) · U,  E → ê(c)) − z_template

the aligned prediction moved back onto the subject's own timing. ``align`` (a latent onto E) and ``place`` (a latent
on E onto ê(c)) are the two warps, which ``model.flow_align_phase`` also applies to the flow's own training
latents and samples (``FlowMatching.target`` / ``place``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.signal.phase import PEAK_LEVEL, peak_centre, smooth_circular

RIDGE_PENALTIES = np.logspace(-2, 5, 15)
"""Candidate ridge penalties (on standardised features); the leave-one-out error picks one."""
WARP_CHUNK = 256
"""Training latents warped at a time when the phase is aligned (the warp's temporaries are a few latents each)."""


def warp_time(z: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """z (B, C, T, H', W') resampled along its T frames so that frame ``source[b]`` lands on frame ``target[b]``
    (each (B,), in (0, T)), frame 0 stays and the cycle closes (frame T is frame 0 again).

    Output frame u reads z at s(u) = u·src/tgt for u ≤ tgt and src + (u − tgt)·(T − src)/(T − tgt) beyond —
    systole and diastole each stretched linearly — interpolating linearly between neighbouring frames.
    """
    frames = z.shape[2]
    src, tgt = source.double()[:, None], target.double()[:, None]  # (B, 1)
    u = torch.arange(frames, dtype=torch.float64, device=z.device)[None]  # (1, T)
    s = torch.where(u <= tgt, u * src / tgt, src + (u - tgt) * (frames - src) / (frames - tgt))  # (B, T)
    low = s.floor()
    weight = (s - low).to(z.dtype)[:, None, :, None, None]  # (B, 1, T, 1, 1)
    index = low.long() % frames

    def at(frame: Tensor) -> Tensor:
        return z.gather(2, frame[:, None, :, None, None].expand(-1, z.shape[1], -1, *z.shape[3:]))

    return (1 - weight) * at(index) + weight * at((index + 1) % frames)


def latent_end_systole(z: Tensor) -> Tensor:
    """z (B, C, T, H', W') → (B,) float64, the end-systolic frame (sub-frame): the peak of Σ (z_t − z_0)², frame 0
    being the R-peak (end-diastole), circularly smoothed [1, 2, 1]/4, as the centre of the run of frames within
    ``PEAK_LEVEL`` of the maximum around the argmax (the instrument's ``es_frame`` rule, on the latent)."""
    distance = (z - z[:, :, :1]).double().pow(2).sum((1, 3, 4)).cpu().numpy()  # (B, T)
    return torch.from_numpy(peak_centre(smooth_circular(distance), PEAK_LEVEL))


class LinearPrior(nn.Module):
    """c (B, T, D) → Δ(c) (B, C, T, H', W'), the ECG's linear prediction of the latent minus the template."""

    def __init__(self, cond_shape: tuple[int, int], latent_shape: tuple[int, int, int, int], components: int,
                 time_bins: int, align_phase: bool = False):
        super().__init__()
        frames, dim = cond_shape
        if frames % time_bins:
            raise ConfigError("model.prior_time_bins", f"{time_bins} does not divide the {frames} ECG tokens")
        self.time_bins, self.latent_shape, self.align_phase = time_bins, latent_shape, align_phase
        features, size = time_bins * dim, int(np.prod(latent_shape))
        self.register_buffer("feature_mean", torch.zeros(features))  # (F,)
        self.register_buffer("feature_std", torch.ones(features))  # (F,)
        self.register_buffer("coef", torch.zeros(features, components))  # (F, K)
        self.register_buffer("intercept", torch.zeros(components))  # (K,)
        self.register_buffer("basis", torch.zeros(components, size))  # (K, C·T·H'·W')
        self.register_buffer("offset", torch.zeros(size))  # (C·T·H'·W',); aligned: the aligned latents' mean
        if align_phase:
            self.register_buffer("template", torch.zeros(latent_shape))  # (C, T, H', W') Δ is relative to
            self.register_buffer("es_mean", torch.full((1,), frames / 2))  # E: the aligned end-systolic frame
            self.register_buffer("es_coef", torch.zeros(features))  # (F,) ê(c) = x · es_coef + es_intercept
            self.register_buffer("es_intercept", torch.full((1,), frames / 2))

    def features(self, c: Tensor) -> Tensor:
        """(B, T, D) → (B, bins·D): the tokens averaged over ``time_bins`` equal groups of frames."""
        b, t, d = c.shape
        return c.reshape(b, self.time_bins, t // self.time_bins, d).mean(2).reshape(b, -1)

    def standardised(self, c: Tensor) -> Tensor:
        """(B, T, D) → (B, F): the features, standardised by the training items' mean and spread."""
        return (self.features(c) - self.feature_mean) / self.feature_std

    def forward(self, c: Tensor) -> Tensor:
        x = self.standardised(c)  # (B, F)
        if not self.align_phase:
            return self.linear(x)
        return warp_time(self.linear(x), self.es_mean.expand(len(c)), self.end_systole(x)) - self.template

    def linear(self, x: Tensor) -> Tensor:
        """Standardised features (B, F) → offset + s(c)·U (B, C, T, H', W'): aligned, the prediction in aligned time."""
        return (self.offset + (x @ self.coef + self.intercept) @ self.basis).reshape(x.shape[0], *self.latent_shape)

    def aligned(self, c: Tensor) -> Tensor:
        """Aligned: the prediction relative to the template in aligned time (end-systole on E), (B, C, T, H', W')."""
        return self.linear(self.standardised(c)) - self.template

    def align(self, z: Tensor) -> Tensor:
        """Aligned: latents z (B, C, T, H', W') warped in time so that their own end-systole sits on E."""
        return warp_time(z, self.own_end_systole(z).to(z.device), self.es_mean.expand(len(z)))

    def own_end_systole(self, z: Tensor) -> Tensor:
        """Latents z (B, C, T, H', W') → (B,) float64: their own end-systole, kept within [1, T − 2] as ê is."""
        return latent_end_systole(z).clamp(1, self.latent_shape[1] - 2)

    def place(self, z: Tensor, c: Tensor) -> Tensor:
        """Aligned: z (B, C, T, H', W') in aligned time moved onto the end-systolic frame ê(c) the ECG predicts."""
        return warp_time(z, self.es_mean.expand(len(z)), self.end_systole(self.standardised(c)))

    def end_systole(self, x: Tensor) -> Tensor:
        """Standardised features (B, F) → ê (B,): the predicted end-systolic frame, kept within [1, T − 2]."""
        frames = self.latent_shape[1]
        return (x @ self.es_coef + self.es_intercept).clamp(1, frames - 2)

    @torch.no_grad()
    def fit(self, deviation: Tensor, cond: Tensor, template: Tensor | None = None) -> dict[str, float]:
        """Fit on training items: ``deviation`` z1 − template (n, C, T, H', W'), ``cond`` (n, T, D); ``template``
        (C, T, H', W') is needed to align the phase.

        Returns what the fit found: the penalty, the share of the deviation's variance the K directions hold,
        the share the prediction explains on the items it was fitted on and, aligned, the end-systolic frames'
        mean and spread and the leave-one-out error of their prediction (frames, RMS).
        """
        from sklearn.linear_model import RidgeCV

        n, components = deviation.shape[0], self.coef.shape[1]
        if n < 3:
            raise InputError("train split", f"the ECG prior needs at least 3 training items, got {n}")
        x = self.features(cond.double())  # (n, F)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = ((x - mean) / std).numpy()
        found: dict[str, float] = {}
        target = deviation.double()
        if self.align_phase:
            if template is None:
                raise ValueError("aligning the prior's phase needs the template")
            z1 = target + template.double()
            es = self.own_end_systole(z1)  # (n,)
            self.es_mean.fill_(float(es.mean()))
            chunks = [slice(i, i + WARP_CHUNK) for i in range(0, n, WARP_CHUNK)]  # bound the warp's memory
            target = torch.cat([warp_time(z1[k], es[k], self.es_mean.expand(len(es[k]))) for k in chunks])  # as align
            timing = RidgeCV(alphas=RIDGE_PENALTIES).fit(x, es.numpy())
            self.template.copy_(template)
            self.es_coef.copy_(torch.from_numpy(timing.coef_))
            self.es_intercept.fill_(float(timing.intercept_))
            found = {"end_systole_mean": float(self.es_mean), "end_systole_sd": float(es.std()),
                     "end_systole_loo_rmse": float(-timing.best_score_) ** 0.5,
                     "end_systole_ridge_penalty": float(timing.alpha_)}
        y = target.reshape(n, -1)  # (n, L)
        offset = y.mean(0)
        _, s, vt = torch.linalg.svd(y - offset, full_matrices=False)  # vt (min(n, L), L)
        k = min(components, vt.shape[0])
        basis = torch.zeros_like(self.basis, dtype=torch.float64)
        basis[:k] = vt[:k]
        scores = ((y - offset) @ basis.T).numpy()  # (n, K)
        ridge = RidgeCV(alphas=RIDGE_PENALTIES).fit(x, scores)
        for name, value in (("feature_mean", mean), ("feature_std", std), ("coef", torch.from_numpy(ridge.coef_.T)),
                            ("intercept", torch.from_numpy(np.asarray(ridge.intercept_))), ("basis", basis),
                            ("offset", offset)):
            getattr(self, name).copy_(value.float())
        residual = deviation.reshape(n, -1) - self(cond.float()).reshape(n, -1)
        spread = deviation.reshape(n, -1) - deviation.reshape(n, -1).mean(0)
        return {"ridge_penalty": float(ridge.alpha_), "components_variance": float((s[:k] ** 2).sum() / (s**2).sum()),
                "train_variance_explained": 1 - float(residual.pow(2).sum() / spread.pow(2).sum()), **found}
