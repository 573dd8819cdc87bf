"""The AMDF flow-matching objective (paper §2.2, Eq. 4–7) around a DiT velocity network.

    z0  = z_template + α·ε,  ε ~ N(0, I)         (Eq. 4, the noise-injected anatomical template)
    z_t = (1 − t)·z0 + t·z1,  t ~ U(0, 1)        (Eq. 4)
    v_true = z1 − z0                              (Eq. 5)
    v̂ = v_θ(z_t, t, c)                            (Eq. 6)
    L = E ‖v̂ − v_true‖²                           (Eq. 7, mean over elements)

``prediction`` chooses what the network outputs; the path (Eq. 4) and the loss (Eq. 7) stay the same:

    "velocity":  v̂ = net(z_t, t, c)                                  (the paper)
    "clean":     ẑ1 = z_template + net(z_t, t, c),  v̂ = (ẑ1 − z_t) / max(1 − t, clean_t_eps)

``prior`` chooses where the flow starts (``flow.prior``):

    "template":    z0 = z_template + α·ε                                (the paper, Eq. 4)
    "ecg_linear":  z0 = z_template + Δ(c) + α·ε, network input z_t − Δ(c), ẑ1 = z_template + Δ(c) + net(…)

with Δ(c) a closed-form linear prediction of the latent's deviation from the template from the ECG
(``LinearPrior``, fitted by the flow stage): the paper's flow on what the linear map leaves unexplained.
An item whose condition is dropped (classifier-free guidance) starts from the plain template, so the
unconditional model stays ECG-blind.

The clean prediction is the same velocity field reparameterised (the straight line from z_t through ẑ1, as JiT, Li &
He 2025): the network predicts the clean latent as a deviation from the anatomical template, so an untrained
or uncertain network lands on (a blur of) the template rather than on leftover noise, and Euler's last step
returns ẑ1 itself.

Latents z are (B, C, T=50, H'=12, W'=12) in the VAE's scaled units; the ECG condition c is (B, T, D_ecg)
aligned PA-MAE tokens. ``FlowMatching`` holds the network, the template buffer (C, T, H', W') and the
learned null condition used for classifier-free guidance; α and the sampling defaults live in its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgflowcmr.errors import ConfigError
from ecgflowcmr.flow.prior import LinearPrior
from ecgflowcmr.models.dit import DiT, DiTConfig
from ecgflowcmr.models.unet import UNetConfig, VelocityUNet


@dataclass
class FlowConfig:
    dit: DiTConfig = field(default_factory=DiTConfig)
    """The velocity network (the paper's DiT); its latent-shape fields (latent_channels, frames, latent_size,
    cond_dim) describe the latent and the ECG for either network and are set from the upstream runs."""
    network: Literal["dit", "unet"] = "dit"
    """'dit' (paper) or 'unet': a convolutional (2+1)-D U-Net (``models.unet``) with the same contract."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    """Sizes of the U-Net (used with network = 'unet')."""
    alpha: float = 1.0
    """α of Eq. 4: noise scale around the template; one value for training and sampling (paper: 1.0 best)."""
    use_template: bool = True
    """False = ablation 'no template': z0 = α·ε (pure noise)."""
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """How t is drawn in training: U(0, 1) (paper), or sigmoid(N(logit_mean, logit_std²))."""
    standardise_condition: bool = False
    """Feed the network (c − μ)/σ, with μ, σ (T, D_ecg) the mean and spread over the training subjects of each
    aligned token channel (buffers computed by the flow stage, saved with the weights): what tells subjects apart
    is ~10× smaller than an ECG token's own scale, and the DiT's condition embeddings start near zero."""
    noise_time_correlation: float = 0.0
    """ρ: correlation of ε between the T frames, ε = √(1−ρ)·ε_frame + √ρ·ε_shared with ε_shared (C, 1, H', W')
    broadcast over time. 0 = Eq. 4 (i.i.d.); 1 = one noisy static anatomy, like the static template, so that
    the noise varies the anatomy and the ECG drives the motion (cine latents are nearly constant over time)."""
    noise_harmonics: int = 0
    """K > 0: the per-frame part of ε (weight √(1−ρ)) is a random periodic curve over the T frames made of the
    cycle's harmonics 1…K (unit variance per element, nothing above harmonic K) instead of white noise. With ρ = 1
    the noise is one static anatomy and the flow has no source of randomness for the motion, which then collapses
    to its conditional mean (docs/generator.md, round 12); this gives the motion its own slow noise without the
    flicker of Eq. 4's white per-frame noise. 0: white (Eq. 4 at ρ = 0)."""
    noise_harmonic_decay: float = 0.0
    """p: with ``noise_harmonics`` K > 0, harmonic k carries a share k^−p / Σ_j j^−p of the per-frame part's
    variance (still unit in all). 0 = every harmonic alike; real cine latents' motion falls off as ~k^−2.4 over
    harmonics 1–3 (docs/generator.md, round 13)."""
    noise_motion_components: int = 0
    """J > 0: the per-frame part of ε (weight √(1 − ρ)) is Σ_j a_j·u_j(τ), a_j ~ N(0, 1), with u_j the J leading
    temporal principal components of the training latents' motion (their deviation from their mean over the
    frames, pooled over channels and positions), each scaled by its share of the J's variance: a noise in the
    motion's own shapes and phases, fitted by the flow stage and saved with the weights. Its variance is 1 on
    average over the frames and follows the real motion's over the cycle (larger at end-systole). Excludes
    ``noise_harmonics``."""
    logit_mean: float = 0.0
    """Mean of the logit-normal t distribution."""
    logit_std: float = 1.0
    """Standard deviation of the logit-normal t distribution."""
    cond_dropout: float = 0.1
    """Probability that a training item's ECG condition is replaced by the learned null token (enables
    classifier-free guidance; 0 disables it and guidance is then refused)."""
    sample_steps: int = 4
    """Default number of integration steps from t = 0 to 1 (benchmarks/dit.py: speed vs steps)."""
    sample_method: Literal["euler", "heun", "ancestral"] = "euler"
    """Default integrator: 'euler' (Eq. 8, 1 pass per step), 'heun' (2 passes per step) or 'ancestral'
    (stochastic Euler, 1 pass per step: fresh noise at each step's noise level; ``flow.sampler``)."""
    sample_guidance: float | None = None
    """Default classifier-free guidance weight w (v = v_u + w·(v_c − v_u); with the ECG prior each branch on its
    own path, ``flow.sampler.guided_velocity``); None or 1 = conditional only."""
    prediction: Literal["velocity", "clean"] = "velocity"
    """What the network outputs: the velocity (paper, Eq. 6) or the clean latent ẑ1 as a deviation from the
    template, turned into v̂ = (ẑ1 − z_t)/max(1 − t, clean_t_eps) (see the module docstring)."""
    loss_space: Literal["velocity", "clean"] = "velocity"
    """Where the squared error is taken: on the velocity (Eq. 7), or on the clean latent ẑ1 = z_t + (1 − t)·v̂
    against z1, i.e. Eq. 7 weighted by (1 − t)² (the weighting of x-prediction with an x-loss)."""
    clean_t_eps: float = 0.05
    """Floor of 1 − t when a clean prediction is turned into a velocity (bounds the loss weight near t = 1)."""
    motion_weight: float = 1.0
    """λ: weight of the squared error's motion part. The error splits exactly into its mean over the T frames
    (static: anatomy, and all of the ρ = 1 noise) and the deviation from that mean (motion); the loss is
    static + λ·motion, so 1 is Eq. 7 as it is. With ρ = 1 the motion part is the only one the noise does not
    enter, and it is a sixth of the latent's spread around the template (docs/generator.md, round 12)."""
    prior: Literal["template", "ecg_linear"] = "template"
    """Where the flow starts: the one anatomical template (paper, Eq. 4), or the template plus the ECG's linear
    prediction of the subject's deviation from it (``flow.prior.LinearPrior``, fitted in closed form on the
    training split by the flow stage; see the module docstring)."""
    prior_components: int = 64
    """K: principal directions of the latent's deviation from the template that the ECG prior predicts."""
    prior_time_bins: int = 10
    """The ECG prior's features: the aligned tokens averaged over this many equal groups of frames."""
    prior_align_phase: bool = False
    """Fit the ECG prior on training latents warped in time to a common end-systolic frame, and move its
    prediction back onto the end-systolic frame a ridge regression predicts from the same ECG features
    (``flow.prior``, phase alignment): a linear map alone blurs the timing (docs/generator.md, round 15). Like
    ``prior_components`` and ``prior_time_bins``, it shapes the ECG prior only: without one (prior 'template')
    it does nothing, so the paper's start stays ``model.prior=template`` alone."""
    flow_align_phase: bool = False
    """Run the flow itself in the aligned prior's time (needs ``prior_align_phase``): each training latent is
    warped so that its end-systole sits on the prior's mean frame E before Eq. 4, the flow starts from the
    template plus the prior's aligned prediction, and a sample is moved onto the end-systolic frame ê(c) the
    ECG predicts only at the end (``LinearPrior.align`` / ``place``). The timing is then the closed form's, which
    the network cannot give back; the network learns shapes and amplitudes on a common clock. A dropped
    condition still starts from the plain template and ends on E. Measured at `small` size (docs/generator.md,
    round 16) it does not help: the samples' contraction peak is imprecise by ~0.9 frames even on the common
    clock, so the end-systole error stays (1.29 frames, 1.23 without); an option for a larger network."""

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ConfigError("model.alpha", f"must be ≥ 0, got {self.alpha}")
        if not self.use_template and self.alpha == 0:
            raise ConfigError("model.alpha", "must be > 0 without a template (z0 would be all zeros)")
        if not 0 <= self.noise_time_correlation <= 1:
            raise ConfigError("model.noise_time_correlation", f"must be in [0, 1], got {self.noise_time_correlation}")
        if not 0 <= self.noise_harmonics < self.dit.frames / 2:
            raise ConfigError("model.noise_harmonics", f"must be in [0, {self.dit.frames / 2:g}), got "
                                                      f"{self.noise_harmonics}")
        if not 0 <= self.noise_motion_components < self.dit.frames:
            raise ConfigError("model.noise_motion_components", f"must be in [0, {self.dit.frames}), got "
                                                              f"{self.noise_motion_components}")
        if self.noise_motion_components and self.noise_harmonics:
            raise ConfigError("model.noise_motion_components", "and model.noise_harmonics both shape the per-frame "
                                                              "noise: set one")
        if self.noise_harmonic_decay < 0:
            raise ConfigError("model.noise_harmonic_decay", f"must be ≥ 0, got {self.noise_harmonic_decay}")
        if self.logit_std <= 0:
            raise ConfigError("model.logit_std", f"must be > 0, got {self.logit_std}")
        if not 0 <= self.cond_dropout < 1:
            raise ConfigError("model.cond_dropout", f"must be in [0, 1), got {self.cond_dropout}")
        if self.sample_steps < 1:
            raise ConfigError("model.sample_steps", f"must be ≥ 1, got {self.sample_steps}")
        if not 0 < self.clean_t_eps <= 1:
            raise ConfigError("model.clean_t_eps", f"must be in (0, 1], got {self.clean_t_eps}")
        if self.motion_weight < 0:
            raise ConfigError("model.motion_weight", f"must be ≥ 0, got {self.motion_weight}")
        if self.prior_components < 1:
            raise ConfigError("model.prior_components", f"must be ≥ 1, got {self.prior_components}")
        if self.prior_time_bins < 1:
            raise ConfigError("model.prior_time_bins", f"must be ≥ 1, got {self.prior_time_bins}")
        if self.flow_align_phase and not (self.prior == "ecg_linear" and self.prior_align_phase):
            raise ConfigError("model.flow_align_phase", "runs the flow in the aligned prior's time: needs "
                                                       "model.prior=ecg_linear and model.prior_align_phase=true")
        if self.prior == "ecg_linear" and not self.use_template:
            raise ConfigError("model.prior", "'ecg_linear' predicts the deviation from the template: needs use_template")
        if self.sample_guidance is not None and self.cond_dropout == 0:
            raise ConfigError("model.sample_guidance", "guidance needs cond_dropout > 0 (an unconditional model); "
                                                      "with model.cond_dropout=0 set model.sample_guidance=null too")

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H', W')."""
        d = self.dit
        return (d.latent_channels, d.frames, d.latent_size, d.latent_size)


def _unit(tt: Tensor) -> float:
    return 1.0


def _one_minus(tt: Tensor) -> Tensor:
    """(1 − t): the velocity error times it is the clean-latent error, ẑ1 − z1 = (1 − t)(v̂ − v_true)."""
    return 1 - tt


class FlowMatching(nn.Module):
    """AMDF flow: ``forward(batch) -> (loss, parts)`` with batch {"z1": (B, C, T, H', W'), "cond": (B, T, D)}."""

    def __init__(self, config: FlowConfig, template: Tensor | None = None,
                 cond_stats: tuple[Tensor, Tensor] | None = None):
        """``cond_stats``: (μ, σ) each (T, D_ecg) when ``standardise_condition`` (None: 0 and 1 until loaded)."""
        super().__init__()
        self.config = config
        # ``dit`` holds whichever velocity network (the name keeps saved DiT weights' keys)
        self.dit = DiT(config.dit) if config.network == "dit" else VelocityUNet(config.unet, config.dit)
        if config.standardise_condition:
            shape = (config.dit.frames, config.dit.cond_dim)
            mean, std = cond_stats if cond_stats is not None else (torch.zeros(shape), torch.ones(shape))
            if tuple(mean.shape) != shape or tuple(std.shape) != shape:
                raise ConfigError("cond_stats", f"shapes {tuple(mean.shape)}, {tuple(std.shape)} are not {shape}")
            self.register_buffer("cond_mean", mean.detach().float().clone())  # (T, D_ecg)
            self.register_buffer("cond_std", std.detach().float().clamp_min(1e-6).clone())  # (T, D_ecg)
        elif cond_stats is not None:
            raise ConfigError("model.standardise_condition", "is false, yet condition statistics were given")
        if config.cond_dropout > 0:  # only then trained (and an unused parameter would trouble DDP)
            self.null_cond = nn.Parameter(torch.randn(config.dit.frames, config.dit.cond_dim) * 0.02)  # (T, D_ecg)
        if template is None:
            template = torch.zeros(config.latent_shape)
        elif not config.use_template:
            raise ConfigError("model.use_template", "is false, yet a template was given")
        elif tuple(template.shape) != config.latent_shape:
            raise ConfigError("template", f"shape {tuple(template.shape)} is not {config.latent_shape}")
        self.register_buffer("template", template.detach().float().clone())  # (C, T, H', W')
        if config.noise_motion_components:  # fitted by the flow stage (fit_motion_noise), then saved with the weights
            self.register_buffer("motion_basis", torch.zeros(config.noise_motion_components, config.dit.frames))
        self.prior = None
        if config.prior == "ecg_linear":  # fitted by the flow stage (LinearPrior.fit), then saved with the weights
            self.prior = LinearPrior((config.dit.frames, config.dit.cond_dim), config.latent_shape,
                                     config.prior_components, config.prior_time_bins, config.prior_align_phase)
        self._to_velocity = self._velocity_from_clean if config.prediction == "clean" else self._velocity_as_is
        self._loss_weight = _one_minus if config.loss_space == "clean" else _unit

    # -- the paper's pieces --------------------------------------------------------------------------

    def noise(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """ε (batch, C, T, H', W'): N(0, 1) per element, with correlation ρ between frames; its per-frame part
        white, made of the cycle's first K harmonics (``noise_harmonics``, ``noise_harmonic_decay``) or of the
        training motion's J leading shapes (``noise_motion_components``: variance 1 on average over the frames)."""
        shape, device, rho = (batch, *self.template.shape), self.template.device, self.config.noise_time_correlation
        harmonics = self.config.noise_harmonics
        if self.config.noise_motion_components:  # Σ_j a_j·u_j(τ) in the training latents' motion shapes
            basis = self.motion_basis  # (J, T)
        elif harmonics:  # Σ_k a_k·cos(2πkτ/T) + b_k·sin(2πkτ/T), a_k, b_k ~ N(0, w_k), Σ w_k = 1: unit variance
            frames, order = shape[2], torch.arange(1, harmonics + 1, device=device)
            angle = 2 * torch.pi * torch.outer(order, torch.arange(frames, device=device)) / frames  # (K, T)
            share = order.double().pow(-self.config.noise_harmonic_decay)
            scale = (share / share.sum()).sqrt().float()[:, None]  # w_k^½; k^−0 = 1: every harmonic 1/K
            basis = torch.cat([angle.cos() * scale, angle.sin() * scale])  # (2K, T)
        if self.config.noise_motion_components or harmonics:  # the per-frame part: N(0, 1) weights on the rows
            coef = torch.randn((batch, shape[1], len(basis), *shape[3:]), generator=generator, device=device)
            eps = torch.einsum("bcjhw,jt->bcthw", coef, basis)  # (B, C, T, H', W')
        else:
            eps = torch.randn(shape, generator=generator, device=device)
        if rho == 0:
            return eps
        shared = torch.randn((batch, shape[1], 1, *shape[3:]), generator=generator, device=device)
        return (1 - rho) ** 0.5 * eps + rho**0.5 * shared  # still unit variance per element

    @torch.no_grad()
    def fit_motion_noise(self, z1: Tensor) -> dict[str, float]:
        """Set the motion noise's basis (``noise_motion_components`` J) from training latents z1 (N, C, T, H', W'):
        the J leading eigenvectors u_j of the frames' covariance of z1 − mean_τ(z1), pooled over items, channels
        and positions, as rows √(T·λ_j / Σ_{i≤J} λ_i)·u_j (mean variance 1 per frame). Returns the share of the
        motion's variance the J hold and the motion's variance per element."""
        frames = z1.shape[2]
        motion = (z1 - z1.mean(dim=2, keepdim=True)).double().movedim(2, -1).reshape(-1, frames)  # (N·C·H'·W', T)
        values, vectors = torch.linalg.eigh(motion.T @ motion / len(motion))  # ascending
        values, vectors = values.flip(0), vectors.flip(1)
        j = len(self.motion_basis)
        kept = values[:j].clamp_min(0)
        self.motion_basis.copy_(((frames * kept / kept.sum()).sqrt()[:, None] * vectors[:, :j].T).float())
        return {"items": len(z1), "motion_variance": float(values.sum() / frames),
                "share_kept": float(kept.sum() / values.clamp_min(0).sum())}

    def initial_state(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Eq. 4: z0 = z_template + α·ε, (batch, C, T, H', W'); ε from :meth:`noise` drawn from ``generator``."""
        return self.template + self.config.alpha * self.noise(batch, generator)

    def sample_time(self, batch: int) -> Tensor:
        """t (batch,) in (0, 1): U(0, 1) or logit-normal, per the config."""
        device = self.template.device
        if self.config.time_sampling == "uniform":
            return torch.rand(batch, device=device)
        normal = torch.randn(batch, device=device)
        return torch.sigmoid(self.config.logit_mean + self.config.logit_std * normal)

    def null_condition(self, batch: int) -> Tensor:
        """The learned 'no ECG' condition, (batch, T, D_ecg); only meaningful if trained with dropout."""
        if self.config.cond_dropout == 0:
            raise ConfigError("guidance", "this flow was trained without condition dropout (cond_dropout = 0)")
        return self.null_cond.expand(batch, -1, -1)

    def prior_shift(self, c: Tensor) -> Tensor | None:
        """Δ(c) (B, C, T, H', W'): the ECG prior's start relative to the template (in aligned time with
        ``flow_align_phase``); None without one."""
        if self.prior is None:
            return None
        return self.prior.aligned(c) if self.config.flow_align_phase else self.prior(c)

    def target(self, z1: Tensor) -> Tensor:
        """The latents z1 (B, C, T, H', W') as the flow learns them: in aligned time with ``flow_align_phase``."""
        return self.prior.align(z1) if self.config.flow_align_phase else z1

    def place(self, z1: Tensor, c: Tensor) -> Tensor:
        """A sample z1 (B, C, T, H', W') for conditions c moved onto the subject's own time: onto the end-systolic
        frame ê(c) with ``flow_align_phase`` (the inverse of :meth:`target` where ê is exact), else as it is."""
        return self.prior.place(z1, c) if self.config.flow_align_phase else z1

    def velocity(self, z_t: Tensor, t: Tensor, c: Tensor, shift: Tensor | None = None) -> Tensor:
        """Eq. 6: v̂ = v_θ(z_t − Δ, t, c); z_t (B, C, T, H', W'), t (B,), c (B, T, D_ecg), ``shift`` Δ (B, C, T,
        H', W') the ECG prior's start relative to the template (None or zeros: the plain template)."""
        if self.config.standardise_condition:
            c = (c - self.cond_mean) / self.cond_std  # (B, T, D_ecg)
        z_in = z_t if shift is None else z_t - shift
        return self._to_velocity(self.dit(z_in, t, c), z_in, t)

    def _velocity_as_is(self, out: Tensor, z_in: Tensor, t: Tensor) -> Tensor:
        return out

    def _velocity_from_clean(self, out: Tensor, z_in: Tensor, t: Tensor) -> Tensor:
        """out = ẑ1 − z_template − Δ (B, C, T, H', W') → v̂ = (ẑ1 − z_t) / max(1 − t, ε); z_in = z_t − Δ."""
        one_minus_t = (1 - t).clamp_min(self.config.clean_t_eps)[:, None, None, None, None]
        return (self.template + out - z_in) / one_minus_t

    def loss(self, z1: Tensor, c: Tensor, t: Tensor, eps: Tensor, drop: Tensor | None = None) -> tuple[Tensor, dict]:
        """Eq. 4–7 for given t (B,), ε (B, C, T, H', W') and condition-dropout mask drop (B,) bool; z1 in the
        subject's own time (moved to the flow's by :meth:`target`)."""
        z1 = self.target(z1)
        shift = self.prior_shift(c)  # (B, C, T, H', W') or None
        if drop is not None:
            c = torch.where(drop[:, None, None], self.null_condition(c.shape[0]), c)  # (B, T, D_ecg)
            if shift is not None:  # a dropped item starts from the plain template: the null model is ECG-blind
                shift = shift * (~drop)[:, None, None, None, None]
        z0 = self.template + self.config.alpha * eps  # (B, C, T, H', W')  Eq. 4
        if shift is not None:
            z0 = z0 + shift
        tt = t[:, None, None, None, None]
        z_t = (1 - tt) * z0 + tt * z1  # (B, C, T, H', W')  Eq. 4
        v = self.velocity(z_t, t, c, shift)  # (B, C, T, H', W')  Eq. 6
        loss = F.mse_loss(v * self._loss_weight(tt), (z1 - z0) * self._loss_weight(tt))  # Eq. 5, 7
        if self.config.motion_weight != 1:  # static + λ·motion: Eq. 7's error is static + motion exactly
            error = (v - (z1 - z0)) * self._loss_weight(tt)  # (B, C, T, H', W')
            motion = error - error.mean(dim=2, keepdim=True)
            loss = loss + (self.config.motion_weight - 1) * motion.pow(2).mean()
        return loss, {"mse": loss.detach()}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """Draw t, ε and the dropout mask, then Eq. 4–7. Returns (loss scalar, {"mse"})."""
        z1, c = batch["z1"], batch["cond"]
        b = z1.shape[0]
        t = self.sample_time(b)
        eps = self.noise(b)
        drop = torch.rand(b, device=z1.device) < self.config.cond_dropout if self.config.cond_dropout > 0 else None
        return self.loss(z1, c, t, eps, drop)
