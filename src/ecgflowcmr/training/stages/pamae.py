"""Training stage ``pamae``: the Phase-Aware Masked Autoencoder on ECGs alone (paper §2.1).

``ecgflowcmr train pamae --data STORE --out RUN [--config tiny|paper|FILE] [--set k=v] [--resume]``.
Trains on the ``train`` split plus, by default, the ``ecg_only`` cohort (PA-MAE needs no cine); validates
on ``val``; ``finalize`` measures reconstruction, phase and cycle finding on ``test``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ecgflowcmr.errors import InputError
from ecgflowcmr.evaluation.stage_metrics import EvalConfig, pamae_metrics
from ecgflowcmr.models.pa_mae import PAMAE, PAMAEConfig
from ecgflowcmr.store.prepared import StoreDataset, split_size
from ecgflowcmr.training.config import TrainConfig
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


def finalize(model: nn.Module, cfg: RunConfig, data: Path, run_dir: Path) -> dict[str, Any]:
    """Held-out metrics (``evaluation.stage_metrics.pamae_metrics``)."""
    return pamae_metrics(model, Path(data), cfg.eval)
