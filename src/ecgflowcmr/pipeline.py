"""The public inference API: ``load_pipeline(bundle)`` → ``.generate(ecg)`` and ``.ecg_phase(ecg)``.

The bundle it loads (a trained model folder) is read by ``bundle.read_bundle``; its layout is described
there and in ``docs/formats.md``.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgflowcmr.bundle import read_bundle
from ecgflowcmr.canonical import LEADS, N_FRAMES, N_SAMPLES, SIZE, SPACING_MM, token_centre
from ecgflowcmr.errors import InputError
from ecgflowcmr.limits import GUIDANCE_MAX, SAMPLER_MAX_STEPS, SCALE_ENV, limit

SAMPLERS = ("euler", "heun", "ancestral")


def item_seed(seed: int, subject_id: str) -> int:
    """The noise seed of one item: a function of (seed, subject_id) only, so reruns and batch sizes draw the
    same noise for it (the result still moves by float rounding with the batch size: README)."""
    digest = hashlib.sha256(f"{seed}:{subject_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class Timings:
    """Seconds spent per part of generation (accumulated over calls)."""

    read: float = 0.0
    encode_ecg: float = 0.0
    sample: float = 0.0
    decode: float = 0.0
    videos: int = 0
    network_passes: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """ECG → cine generator: PA-MAE (aligned tokens) → DiT flow from the noisy template → VAE decode."""

    def __init__(self, bundle: Path, pamae: torch.nn.Module, vae: torch.nn.Module, flow: torch.nn.Module,
                 meta: dict[str, Any], device: torch.device):
        self.bundle = bundle
        self.pamae, self.vae, self.flow = pamae, vae, flow
        self.meta = meta
        self.device = device
        config = flow.config  # the trained flow's sampling defaults, unless bundle.json overrides them
        self.sampling = {"steps": config.sample_steps, "method": config.sample_method,
                         "guidance": config.sample_guidance} | dict(meta.get("sampling", {}))
        self.timings = Timings()

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """(row, column) pixel spacing of generated cines: the bundle's output geometry."""
        row, col = self.meta.get("geometry", {}).get("spacing_mm", [SPACING_MM, SPACING_MM])
        return float(row), float(col)

    # ---- inputs ------------------------------------------------------------------------------
    def _ecg_batch(self, ecg: Any) -> tuple[torch.Tensor, list[np.ndarray] | None, bool]:
        """Path, canonical ECG, array (12, 5000) or (B, 12, 5000) → (float32 tensor (B, 12, 5000), the
        R-peaks ``read_ecg`` carried (None for arrays), single item?)."""
        from ecgflowcmr.io.ecg import CanonicalECG, read_ecg

        start = time.perf_counter()
        if isinstance(ecg, str | Path):
            ecg = read_ecg(ecg)
        if isinstance(ecg, CanonicalECG):
            self.timings.read += time.perf_counter() - start
            return torch.as_tensor(ecg.signal[None], dtype=torch.float32, device=self.device), [ecg.rpeaks], True
        array = np.asarray(ecg.detach().cpu() if isinstance(ecg, torch.Tensor) else ecg, dtype=np.float32)
        single = array.ndim == 2
        if single:
            array = array[None]
        if array.shape[1:] != (len(LEADS), N_SAMPLES):
            raise InputError("ecg", f"expected a canonical ECG (12, 5000) or a batch (B, 12, 5000), got {array.shape}")
        self.timings.read += time.perf_counter() - start
        return torch.as_tensor(array, dtype=torch.float32, device=self.device), None, single

    # ---- public API --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_ecg(self, ecg: Any):
        """PA-MAE aligned condition: ``AlignedECG`` with tokens (B, 50, D), phase, source, valid."""
        x, rpeaks, _ = self._ecg_batch(ecg)
        return self._encode(x, rpeaks)

    def _encode(self, x: torch.Tensor, rpeaks: list[np.ndarray] | None):
        """(B, 12, 5000) → ``AlignedECG``; R-peaks for the PA-MAE's fallback are found here (once) when the
        ECGs came as arrays, as ``read_ecg`` finds them."""
        from ecgflowcmr.signal.phase import find_rpeaks

        start = time.perf_counter()
        if rpeaks is None:
            rpeaks = [find_rpeaks(signal) for signal in x.cpu().numpy()]
        aligned = self.pamae.encode_aligned(x, rpeaks)
        self.timings.encode_ecg += time.perf_counter() - start
        return aligned

    @torch.no_grad()
    def ecg_phase(self, ecg: Any) -> np.ndarray:
        """Predicted cardiac phase per ECG sample, radians in [0, 2π): (5000,) or (B, 5000)."""
        x, _, single = self._ecg_batch(ecg)
        aligned = self.pamae.encode_aligned(x)  # its phase does not depend on R-peaks
        token_phase = aligned.phase.float()  # (B, 625)
        # unwrap, upsample to samples by linear interpolation between token centres, wrap back
        unwrapped = np.unwrap(token_phase.cpu().numpy(), axis=-1)
        config = self.pamae.config
        centres = token_centre(np.arange(unwrapped.shape[-1], dtype=np.float32), config.patch)
        samples = np.arange(config.samples, dtype=np.float32)
        phase = np.stack([np.interp(samples, centres, u) for u in unwrapped])
        phase = np.mod(phase, 2 * np.pi).astype(np.float32)
        return phase[0] if single else phase

    @torch.no_grad()
    def generate(self, ecg: Any, steps: int | None = None, seed: int = 0, guidance: float | None = None,
                 method: str | None = None) -> np.ndarray:
        """Cine(s) for an ECG: float32 (50, 96, 96) in [0, 1], or (B, 50, 96, 96) for a batch.

        ``ecg``: a file path (any supported format), a ``CanonicalECG``, or an array (12, 5000) /
        (B, 12, 5000) in mV. Raises InputError when an ECG yields no usable cardiac cycle.
        """
        x, rpeaks, single = self._ecg_batch(ecg)
        problems: list[str] = []
        frames, valid = self.generate_batch(x, steps=steps, seed=seed, guidance=guidance, method=method,
                                            rpeaks=rpeaks, problems=problems)
        if not valid.all():
            bad = np.flatnonzero(~valid).tolist()
            raise InputError("ecg", f"item(s) {bad}: {problems[bad[0]]}")
        return frames[0] if single else frames

    def sampling_settings(self, steps: int | None = None, guidance: float | None = None,
                          method: str | None = None) -> dict[str, Any]:
        """The sampler settings a call will use: each argument, or the bundle's default when None; checked.

        ``steps`` in 1…``SAMPLER_MAX_STEPS`` (0 is refused, not read as "the default"), ``guidance`` None or
        finite with |w| ≤ ``GUIDANCE_MAX``, ``method`` one of ``SAMPLERS``. Raises InputError naming the argument
        (or ``bundle.json``'s field when the default is at fault).
        """
        meta = self.bundle / "bundle.json"
        where = {"steps": "--steps" if steps is not None else f"{meta} sampling.steps",
                 "guidance": "--guidance" if guidance is not None else f"{meta} sampling.guidance",
                 "method": "--sampler" if method is not None else f"{meta} sampling.method"}
        steps = self.sampling["steps"] if steps is None else steps
        guidance = self.sampling["guidance"] if guidance is None else guidance
        method = self.sampling["method"] if method is None else method
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
            raise InputError(where["steps"], f"must be a whole number ≥ 1, got {steps!r}")
        if steps > limit(SAMPLER_MAX_STEPS):
            raise InputError(where["steps"], f"{steps:,} steps exceed the limit of {limit(SAMPLER_MAX_STEPS):,} "
                             f"(raise it with {SCALE_ENV})")
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, int | float)
                                     or not math.isfinite(guidance) or abs(guidance) > GUIDANCE_MAX):
            raise InputError(where["guidance"], f"must be a finite number with |w| ≤ {GUIDANCE_MAX:g}, got {guidance!r}")
        if method not in SAMPLERS:
            raise InputError(where["method"], f"must be one of {', '.join(SAMPLERS)}, got {method!r}")
        return {"steps": int(steps), "guidance": None if guidance is None else float(guidance), "method": method}

    @torch.no_grad()
    def generate_batch(self, x: torch.Tensor, steps: int | None = None, seed: int | list[int] = 0,
                       guidance: float | None = None, method: str | None = None,
                       rpeaks: list[np.ndarray] | None = None,
                       problems: list[str] | None = None,
                       null_condition: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(B, 12, 5000) mV → (frames (B, 50, 96, 96) in [0, 1], valid (B,) bool); invalid items are NaN.

        An item is invalid when its ECG gives no usable cardiac cycle or when its latent or decoded cine is
        not finite (NaN/inf weights, an extreme α or guidance): never a success. ``problems``, when given, is
        filled with one reason per item (``""`` for valid ones).

        ``seed``: one seed for the batch, or one per item. With one seed per item the noise of an item does
        not depend on its batch; the result still does, by float summation order in batched kernels:
        ≤ 1e-5 (README, "Limits and hostile input"). ``rpeaks``: each item's R-peaks as ``read_ecg`` carried
        them (``CanonicalECG.rpeaks``); None: found here. ``null_condition``: sample with the flow's learned
        "no ECG" condition instead of the ECG's (the template-only generator: same noise, no ECG; needs a flow
        trained with condition dropout).
        """
        from ecgflowcmr.flow.sampler import sample

        settings = self.sampling_settings(steps, guidance, method)
        x = x.to(self.device, torch.float32)
        aligned = self._encode(x, rpeaks)
        valid = aligned.valid.bool().cpu().numpy()
        frames = np.full((x.shape[0], N_FRAMES, SIZE, SIZE), np.nan, dtype=np.float32)
        reasons = ["" if ok else "no usable cardiac cycle (NaN, flat or no R-peaks)" for ok in valid]
        if problems is not None:
            problems[:] = reasons
        if not valid.any():
            return frames, valid
        keep = torch.from_numpy(np.flatnonzero(valid)).to(self.device)
        cond = aligned.tokens.index_select(0, keep)
        if null_condition:
            cond = self.flow.null_condition(cond.shape[0]).to(cond)
        steps, method, guidance = settings["steps"], settings["method"], settings["guidance"]
        # an item's start and its ancestral steps' noise come from its own generator, in that order
        extra = steps - 1 if method == "ancestral" else 0
        if isinstance(seed, int):
            generators = [torch.Generator(device=self.device).manual_seed(seed)]
            counts = [cond.shape[0]]
        else:
            generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s, ok in zip(seed, valid) if ok]
            counts = [1] * len(generators)
        draws = [(self.flow.initial_state(n, g), [self.flow.noise(n, g) for _ in range(extra)])
                 for n, g in zip(counts, generators)]
        z0 = torch.cat([start for start, _ in draws])
        step_noise = torch.stack([torch.cat(parts) for parts in zip(*[noise for _, noise in draws])]) if extra else None
        start = time.perf_counter()
        z1 = sample(self.flow, cond, steps=steps, method=method, guidance=guidance, z0=z0,
                    ecg_prior=not null_condition, step_noise=step_noise)
        self.timings.sample += time.perf_counter() - start
        start = time.perf_counter()
        video = self.vae.decode_latent(z1)  # (b, 1, 50, 96, 96) in [-1, 1]
        self.timings.decode += time.perf_counter() - start
        finite = (torch.isfinite(z1).flatten(1).all(1) & torch.isfinite(video).flatten(1).all(1)).cpu().numpy()
        kept = np.flatnonzero(valid)
        frames[kept[finite]] = ((video[finite, 0].float().clamp(-1, 1) + 1) / 2).cpu().numpy()
        for i in kept[~finite]:
            valid[i] = False
            reasons[i] = "the model produced non-finite values (NaN/inf in its weights, α or guidance)"
        self.timings.videos += int(valid.sum())
        if problems is not None:
            problems[:] = reasons
        return frames, valid


def load_pipeline(path: str | Path, device: str | torch.device = "cpu") -> Pipeline:
    """Load a bundle (or a flow run folder holding ``bundle/``); checks that every part is there and fits."""
    device = torch.device(device)
    bundle, meta, nets = read_bundle(path, device)
    return Pipeline(bundle, nets["pamae"], nets["vae"], nets["flow"], meta, device)


