"""Training stage ``pamae``: the Phase-Aware Masked Autoencoder on ECGs alone (paper §2.1).

``ecgflowcmr train pamae --data STORE --out RUN [--config tiny|paper|FILE] [--set k=v] [--resume]``.
Trains on the ``train`` split plus, by default, the ``ecg_only`` cohort (PA-MAE needs no cine); validates
on ``val``; ``finalize`` measures reconstruction, phase and cycle finding on ``test``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ecgflowcmr.canonical import token_centre
from ecgflowcmr.errors import InputError
from ecgflowcmr.models.align import cycle_boundaries, token_labels
from ecgflowcmr.models.pa_mae import PAMAE, PAMAEConfig
from ecgflowcmr.signal.phase import rpeak_f1, rpeaks_from_labels
from ecgflowcmr.store.prepared import StoreDataset, split_size
from ecgflowcmr.training.config import EvalConfig, TrainConfig
from ecgflowcmr.training.loop import Setup

FIELDS = ("ecg", "phase")


@dataclass
class RunConfig:
    model: PAMAEConfig = field(default_factory=PAMAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(batch_size=16))
    use_ecg_only: bool = True
    """Also train on the store's ``ecg_only`` split (the ECG-only cohort; PA-MAE needs no cine)."""



def build(cfg: RunConfig, data: Path, run_dir: Path, *, pamae: Path | None = None,
          vae: Path | None = None) -> Setup:
    data = Path(data)
    parts: list[Dataset] = [StoreDataset(data, "train", fields=FIELDS)]
    if cfg.use_ecg_only and split_size(data, "ecg_only") > 0:
        parts.append(StoreDataset(data, "ecg_only", fields=FIELDS))
    train_set = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    if len(train_set) == 0:
        raise InputError(data, "the store has no training ECGs")
    val_set = StoreDataset(data, "val", fields=FIELDS) if split_size(data, "val") > 0 else None
    return Setup(model=PAMAE(cfg.model), train_set=train_set, val_set=val_set)


def _circular_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| on the circle, in [0, π]."""
    d = a - b
    return torch.atan2(torch.sin(d), torch.cos(d)).abs()


@torch.no_grad()
def finalize(model: nn.Module, cfg: RunConfig, data: Path, run_dir: Path) -> dict[str, Any]:
    """Held-out metrics (``test`` split, else ``val``), each ``{"value", "definition"}``."""
    from ecgflowcmr.signal.phase import detect_rpeaks

    data = Path(data)
    split = "test" if split_size(data, "test") > 0 else "val"
    ds = StoreDataset(data, split, fields=FIELDS)
    n = len(ds) if cfg.eval.max_items == 0 else min(len(ds), cfg.eval.max_items)
    if n == 0:
        raise InputError(data, "no held-out ECGs (test and val splits are empty)")
    mc = cfg.model
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.eval.seed)
    sums = {"rec_all": 0.0, "rec_masked": 0.0, "masked": 0.0, "phase_err": 0.0, "known": 0.0, "power": 0.0}
    f1, f1_ref, sources, valid = [], [], [], []
    for start in range(0, n, cfg.eval.batch_size):
        idx = range(start, min(n, start + cfg.eval.batch_size))
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


