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
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ecgflowcmr.errors import ConfigError, InputError

RIDGE_PENALTIES = np.logspace(-2, 5, 15)
"""Candidate ridge penalties (on standardised features); the leave-one-out error picks one."""


class LinearPrior(nn.Module):
    """c (B, T, D) → Δ(c) (B, C, T, H', W'), the ECG's linear prediction of the latent minus the template."""

    def __init__(self, cond_shape: tuple[int, int], latent_shape: tuple[int, int, int, int], components: int,
                 time_bins: int):
        super().__init__()
        frames, dim = cond_shape
        if frames % time_bins:
            raise ConfigError("model.prior_time_bins", f"{time_bins} does not divide the {frames} ECG tokens")
        self.time_bins, self.latent_shape = time_bins, latent_shape
        features, size = time_bins * dim, int(np.prod(latent_shape))
        self.register_buffer("feature_mean", torch.zeros(features))  # (F,)
        self.register_buffer("feature_std", torch.ones(features))  # (F,)
        self.register_buffer("coef", torch.zeros(features, components))  # (F, K)
        self.register_buffer("intercept", torch.zeros(components))  # (K,)
        self.register_buffer("basis", torch.zeros(components, size))  # (K, C·T·H'·W')
        self.register_buffer("offset", torch.zeros(size))  # (C·T·H'·W',)

    def features(self, c: Tensor) -> Tensor:
        """(B, T, D) → (B, bins·D): the tokens averaged over ``time_bins`` equal groups of frames."""
        b, t, d = c.shape
        return c.reshape(b, self.time_bins, t // self.time_bins, d).mean(2).reshape(b, -1)

    def forward(self, c: Tensor) -> Tensor:
        scores = ((self.features(c) - self.feature_mean) / self.feature_std) @ self.coef + self.intercept  # (B, K)
        return (self.offset + scores @ self.basis).reshape(c.shape[0], *self.latent_shape)

    @torch.no_grad()
    def fit(self, deviation: Tensor, cond: Tensor) -> dict[str, float]:
        """Fit on training items: ``deviation`` z1 − template (n, C, T, H', W'), ``cond`` (n, T, D).

        Returns what the fit found: the penalty, the share of the deviation's variance the K directions hold,
        and the share the prediction explains on the items it was fitted on.
        """
        from sklearn.linear_model import RidgeCV

        n, components = deviation.shape[0], self.coef.shape[1]
        if n < 3:
            raise InputError("train split", f"the ECG prior needs at least 3 training items, got {n}")
        y = deviation.reshape(n, -1).double()  # (n, L)
        offset = y.mean(0)
        _, s, vt = torch.linalg.svd(y - offset, full_matrices=False)  # vt (min(n, L), L)
        k = min(components, vt.shape[0])
        basis = torch.zeros_like(self.basis, dtype=torch.float64)
        basis[:k] = vt[:k]
        x = self.features(cond.double())  # (n, F)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        scores = ((y - offset) @ basis.T).numpy()  # (n, K)
        ridge = RidgeCV(alphas=RIDGE_PENALTIES).fit(((x - mean) / std).numpy(), scores)
        for name, value in (("feature_mean", mean), ("feature_std", std), ("coef", torch.from_numpy(ridge.coef_.T)),
                            ("intercept", torch.from_numpy(np.asarray(ridge.intercept_))), ("basis", basis),
                            ("offset", offset)):
            getattr(self, name).copy_(value.float())
        explained = 1 - float(((y.float() - self(cond.float()).reshape(n, -1)) ** 2).sum() / ((y - offset) ** 2).sum())
        return {"ridge_penalty": float(ridge.alpha_), "components_variance": float((s[:k] ** 2).sum() / (s**2).sum()),
                "train_variance_explained": explained}
