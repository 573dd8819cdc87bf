"""Held-out measures of each trained stage (``finalize`` writes them into the run's ``metrics.json``).

Every number is ``{"value", "definition"}``: what was measured, on which items, against which reference.
The stage modules in ``training/stages`` only call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ecgflowcmr.canonical import token_centre
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.flow.sampler import sample
from ecgflowcmr.models.align import cycle_boundaries, token_labels
from ecgflowcmr.models.image_metrics import PSNR_DEFINITION, SSIM_DEFINITION, psnr, ssim
from ecgflowcmr.models.pa_mae import PAMAE
from ecgflowcmr.models.vae3d import VideoVAE
from ecgflowcmr.signal.phase import detect_rpeaks, rpeak_f1, rpeaks_from_labels
from ecgflowcmr.store.latents import LatentPairs
from ecgflowcmr.store.prepared import StoreDataset, split_size


@dataclass
class EvalConfig:
    """How a stage measures its trained model on held-out data after training (``finalize``)."""

    max_items: int = 0
    """Cap on held-out items measured (0 = the whole split)."""
    batch_size: int = 8
    """Items per batch while measuring."""
    seed: int = 0
    """Seed of the measurement's randomness (masks, sampling noise): the same for every run."""

    def __post_init__(self) -> None:
        if self.max_items < 0:
            raise ConfigError("eval.max_items", f"must be ≥ 0 (0 = the whole split), got {self.max_items}")
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size", f"must be ≥ 1, got {self.batch_size}")


def held_out_split(data: Path) -> str:
    """The split a stage is measured on: ``test``, else ``val``."""
    return "test" if split_size(Path(data), "test") > 0 else "val"


def cine_batches(ds: StoreDataset, n: int, batch_size: int, device: torch.device):
    """Cines (b, 1, T, H, W) float32 in [-1, 1], in item order."""
    for start in range(0, n, batch_size):
        yield torch.stack([ds[i]["cine"] for i in range(start, min(n, start + batch_size))]).to(device)


def _circular_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| on the circle, in [0, π]."""
    d = a - b
    return torch.atan2(torch.sin(d), torch.cos(d)).abs()


@torch.no_grad()
def pamae_metrics(model: PAMAE, data: Path, cfg: EvalConfig) -> dict[str, Any]:
    """The PA-MAE on held-out ECGs (``test`` split, else ``val``), each ``{"value", "definition"}``."""
    data = Path(data)
    split = held_out_split(data)
    ds = StoreDataset(data, split, fields=("ecg", "phase"))
    n = len(ds) if cfg.max_items == 0 else min(len(ds), cfg.max_items)
    if n == 0:
        raise InputError(data, "no held-out ECGs (test and val splits are empty)")
    mc = model.config
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    sums = {"rec_all": 0.0, "rec_masked": 0.0, "masked": 0.0, "phase_err": 0.0, "known": 0.0, "power": 0.0}
    f1, f1_ref, sources, valid = [], [], [], []
    for start in range(0, n, cfg.batch_size):
        idx = range(start, min(n, start + cfg.batch_size))
        ecg = torch.from_numpy(np.asarray(ds.array("ecg")[idx.start:idx.stop], dtype=np.float32)).to(device)
        label = np.asarray(ds.array("phase")[idx.start:idx.stop], dtype=np.float32)
        # reconstruction under the training mask ratio, with seeded masks (mV² after undoing the scale)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            latent, ids, mask = model.forward_encoder(ecg, mc.mask_ratio)
        pred = model.forward_decoder(latent, ids) * mc.input_scale_mv
        err = ((pred - ecg) ** 2).reshape(len(idx), mc.leads, mc.tokens, mc.patch).mean(dim=(1, 3))  # (B, L)
        sums["rec_all"] += err.mean(dim=1).sum().item()
        sums["rec_masked"] += (err * mask).sum().item()
        sums["masked"] += mask.sum().item()
        sums["power"] += ((ecg - ecg.mean(dim=2, keepdim=True)) ** 2).mean(dim=(1, 2)).sum().item()
        # phase on every token (no masking), against the label at token centres
        _, phase = model.encode(ecg)
        y = token_labels(torch.from_numpy(label), mc.patch).to(device)
        known = torch.isfinite(y)
        sums["phase_err"] += _circular_error(phase, torch.nan_to_num(y))[known].sum().item()
        sums["known"] += known.sum().item()
        # cycle boundaries (predicted phase wraps) vs the label's R-peaks
        truths = [rpeaks_from_labels(row) for row in label]  # the R-peaks read_ecg found (store labels)
        for b, pos in enumerate(cycle_boundaries(phase.cpu())):
            f1.append(rpeak_f1(truths[b], np.round(token_centre(pos, mc.patch)).astype(np.int64)))
            f1_ref.append(rpeak_f1(truths[b], detect_rpeaks(ecg[b, 1].cpu().numpy(), fs=mc.fs)))
        aligned = model.encode_aligned(ecg, truths)
        sources.append(aligned.source.cpu())
        valid.append(aligned.valid.cpu())
    source = torch.cat(sources)
    where = f"{n} held-out ECGs of the store's '{split}' split"
    return {
        "rec_mse_mv2": {"value": sums["rec_all"] / n, "definition":
                        f"mean squared error (mV²) between input and reconstruction over all 12×5000 samples, "
                        f"{mc.mask_ratio:.2f} of tokens randomly masked (seeded), {where}"},
        "rec_mse_masked_mv2": {"value": sums["rec_masked"] / max(sums["masked"], 1.0), "definition":
                               f"as rec_mse_mv2 but over masked tokens only, {where}"},
        "reference_lead_mean_mse_mv2": {"value": sums["power"] / n, "definition":
                                        "for scale: the MSE of predicting each lead's own mean (the signal's "
                                        f"variance about its baseline, mV²), {where}"},
        "phase_circular_mae_rad": {"value": sums["phase_err"] / max(sums["known"], 1.0), "definition":
                                   "mean |wrapped(φ̂ − φ)| (rad, in [0, π]) over tokens of known label phase, "
                                   f"label at each token's centre sample, encoder without masking, {where}"},
        "rpeak_f1_20ms": {"value": float(np.mean(f1)), "definition":
                          "per-ECG F1 of cycle boundaries (wraps of the predicted phase, at token resolution) "
                          f"against the label's R-peaks, match within 20 ms (10 samples), averaged over {where}"},
        "reference_detector_rpeak_f1_20ms": {"value": float(np.mean(f1_ref)), "definition":
                                             "same F1 for the classical detector on lead II alone "
                                             "(ecgflowcmr.signal.phase.detect_rpeaks), for reference"},
        "fraction_cycle_from_predicted_phase": {"value": float((source == 0).float().mean()), "definition":
                                                f"fraction of ECGs whose aligned cycle came from the predicted "
                                                f"phase (source 0; cut {mc.align_cut}, {mc.align_aggregate}), "
                                                f"{where}"},
        "fraction_cycle_from_detected_rpeaks": {"value": float((source == 1).float().mean()), "definition":
                                                "fraction that fell back on the ECG's R-peaks (source 1)"},
        "fraction_valid": {"value": float(torch.cat(valid).float().mean()), "definition":
                           "fraction of ECGs accepted as input (finite, no flat lead)"},
        "n_ecgs": {"value": n, "definition": where},
    }


@torch.no_grad()
def vae_metrics(model: VideoVAE, data: Path, template: Tensor, cfg: EvalConfig) -> dict[str, Any]:
    """Reconstruction PSNR/SSIM of held-out cines from the posterior mean, and of the decoded ``template``
    (C, T, h, w), scaled latent units) against them, each ``{"value", "definition"}``."""
    data = Path(data)
    device = next(model.parameters()).device
    split = held_out_split(data)
    held_out = StoreDataset(data, split, fields=("cine",))
    n = len(held_out) if cfg.max_items == 0 else min(len(held_out), cfg.max_items)
    if n == 0:
        raise InputError(data, "no held-out cines (test and val splits are empty)")
    anatomy = (model.decode_latent(template[None].to(device)) + 1) / 2  # (1, 1, T, H, W) in [0, 1]
    p, s, p_template = [], [], []
    for x in cine_batches(held_out, n, cfg.batch_size, device):
        x_hat = model.decode_latent(model.encode_latent(x))  # posterior mean, clamped to [-1, 1]
        real, rec = (x + 1) / 2, (x_hat + 1) / 2  # [0, 1] display scale
        p.append(psnr(rec, real).cpu())
        s.append(ssim(rec.flatten(1, 2), real.flatten(1, 2)).cpu())
        p_template.append(psnr(anatomy.expand_as(real), real).cpu())
    where = f"{n} held-out cines of the store's '{split}' split, reconstructed from the posterior mean"
    return {
        "psnr_db": {"value": torch.cat(p).mean().item(), "definition": f"{PSNR_DEFINITION}; {where}"},
        "ssim": {"value": torch.cat(s).mean().item(), "definition": f"{SSIM_DEFINITION}; {where}"},
        "template_psnr_db": {"value": torch.cat(p_template).mean().item(), "definition":
                             "PSNR (as psnr_db) of the decoded template against each held-out cine: the "
                             "floor a generator that ignores the ECG reaches"},
        "n_held_out": {"value": n, "definition": where},
    }


@torch.no_grad()
def flow_metrics(model: FlowMatching, pairs: LatentPairs | None, cfg: EvalConfig) -> dict[str, Any]:
    """Sample the test latents (``pairs``: the cached test split) with the model's sampling defaults;
    latent MSEs against the real latents, each ``{"value", "definition"}``."""
    if pairs is None:
        return {"flow_test_items": {"value": 0, "definition": "no paired test item with a valid ECG alignment"}}
    n = len(pairs) if cfg.max_items == 0 else min(cfg.max_items, len(pairs))
    test = pairs.tensors(n)  # only the items evaluated are read into memory
    z1, cond = test["z1"], test["cond"]
    config: FlowConfig = model.config
    device = model.template.device
    model.eval()

    def generate(c: Tensor) -> Tensor:  # the same noise for every call
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        out = []
        for start in range(0, n, cfg.batch_size):
            part = c[start : start + cfg.batch_size].to(device)
            out.append(sample(model, part, steps=config.sample_steps, method=config.sample_method,
                              guidance=config.sample_guidance, generator=generator).cpu())
        return torch.cat(out)

    how = (f"{config.sample_steps} {config.sample_method} steps, guidance {config.sample_guidance}, "
           f"α={config.alpha}, seed {cfg.seed}, {n} test items, scaled VAE latent units")
    other = "item i paired with test item i − 1 (cyclic)"
    metrics: dict[str, Any] = {
        "flow_latent_mse": {
            "value": float(((generate(cond) - z1) ** 2).mean()),
            "definition": f"mean over items and latent elements of (ẑ1 − z1)², ẑ1 sampled from the subject's own "
                          f"ECG; {how}. A sample, not a mean prediction: compare with flow_latent_mse_real_pairs "
                          f"(the value if the ECG told nothing), not with the template"},
        "flow_latent_mse_template": {
            "value": float(((model.template.cpu() - z1) ** 2).mean()),
            "definition": "template-only baseline: mean of (z_template − z1)² (z_template = 0 if use_template is "
                          "false), no ECG, no sampling, same items"},
        "flow_test_items": {"value": n, "definition": "test items with a valid ECG alignment that were sampled"},
    }
    if model.prior is not None:
        shift = torch.cat([model.prior(cond[i : i + cfg.batch_size].to(device)).cpu()  # in the subject's time
                           for i in range(0, n, cfg.batch_size)])
        metrics["flow_latent_mse_prior"] = {
            "value": float(((model.template.cpu() + shift - z1) ** 2).mean()),
            "definition": "the ECG prior alone: mean of (z_template + Δ(c) − z1)², Δ the closed-form linear "
                          "prediction from the subject's own ECG (the flow's start without noise), same items"}
    if n < 2:  # the comparisons below need two subjects
        return metrics
    metrics |= {
        "flow_latent_mse_other_ecg": {
            "value": float(((generate(cond.roll(1, dims=0)) - z1) ** 2).mean()),
            "definition": f"as flow_latent_mse but ẑ1 sampled from another subject's ECG ({other}), same noise: "
                          f"above flow_latent_mse when the ECG controls the result; {how}"},
        "flow_latent_mse_real_pairs": {
            "value": float(((z1.roll(1, dims=0) - z1) ** 2).mean()),
            "definition": f"real-vs-real reference: mean of (z1_other − z1)² between two real test latents "
                          f"({other}); a perfect sampler that ignored the ECG would score this"},
    }
    return metrics
