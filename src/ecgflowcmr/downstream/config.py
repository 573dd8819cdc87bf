"""The downstream experiment's configuration (presets in ``configs/downstream/``: ``tiny``, ``paper``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ecgflowcmr.errors import ConfigError
from ecgflowcmr.models.video_vit import VideoViTConfig
from ecgflowcmr.training.config import TrainConfig

TASKS: tuple[str, ...] = ("cad", "cm", "hf", "four_class", "phenotypes")
"""Binary case–control tasks (label columns cad, cm, hf), HCM/DCM/RCM/normal, phenotype regression."""
CONTROLS: tuple[str, ...] = ("template", "shuffled")
"""ECG-blind synthetic sources beside the ECG-conditioned one (ablated generators are named by the user)."""
PAPER_PHENOTYPES: tuple[str, ...] = ("lvedv_ml", "lvef_pct", "lvm_g", "rvedv_ml")
"""Table 3's four, reported first."""
IMAGING_SUFFIXES: tuple[str, ...] = ("_ml", "_pct", "_g", "_mm", "_cm2", "_l_min", "_ml_m2", "_g_m2")
"""Manifest columns ending so are imaging phenotypes (regressed when ``phenotypes`` is empty); ECG
intervals (``_ms``), axis (``_deg``), voltages (``_mv``), demographics and heart rate are not."""


def _default_pretrain() -> TrainConfig:
    return TrainConfig(steps=2000, batch_size=16, lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95),
                       warmup_steps=200, ema_decay=0.0, val_every=0, ckpt_every=500, log_every=50)


def _default_finetune() -> TrainConfig:
    return TrainConfig(epochs=100.0, batch_size=16, lr=1e-4, weight_decay=0.05, warmup_steps=50,
                       ema_decay=0.0, val_every=0, ckpt_every=500, log_every=50)


@dataclass
class DownstreamConfig:
    """Everything ``ecgflowcmr downstream`` runs: model sizes, both trainings, folds, tasks, mixes."""

    model: VideoViTConfig = field(default_factory=VideoViTConfig)
    """The cine ViT (and its MAE decoder); the same encoder for every method."""
    pretrain: TrainConfig = field(default_factory=_default_pretrain)
    """MAE pretraining, once per method (per fold and method with ``pretrain_split: folds``). ``steps`` is
    fixed whatever the mix, so a larger mix means more distinct cines, not more updates; ``epochs`` > 0
    instead would scale updates with data."""
    finetune: TrainConfig = field(default_factory=_default_finetune)
    """Fine-tuning, once per (fold, method, mix, task); the paper: 100 epochs."""
    folds: int = 5
    """Subject-level cross-validation folds (the same folds for every method and task)."""
    seed: int = 0
    """Seeds the folds, the case–control draw, the synthetic subsets and (via the train configs) weights."""
    mix: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    """Synthetic cines per real pretraining cine (0 = MAE on real only; 1 = the paper's 100 %)."""
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """Which of ``TASKS`` to run."""
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    """ECG-blind synthetic sources run at every mix beside the ECG-conditioned one."""
    scratch: bool = True
    """Also fine-tune a randomly initialised ViT (the paper's "ViT" row)."""
    phenotypes: list[str] = field(default_factory=list)
    """Phenotype columns to regress; empty = every imaging phenotype column (``IMAGING_SUFFIXES``)."""
    pretrain_split: str = "folds"
    """Where the real MAE pretraining cines come from. ``folds`` (the paper's protocol): for fold k the
    real cines of the other folds, one pretraining per (fold, method). A store split name (``train``, the
    ``tiny`` default): that split's real cines, one pretraining per method shared by every fold, and the
    cross-validation runs over the other paired splits only (subjects never pretrained on): K times fewer
    pretrainings, a smaller CV cohort."""
    eval_batch_size: int = 8
    """Cines per batch when predicting test folds."""
    generate_steps: int = 0
    """Sampler steps for the synthetic cines (0 = the bundle's own)."""

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError("folds", f"need ≥ 2 folds, got {self.folds}")
        if not self.mix or any(m < 0 for m in self.mix) or len(set(self.mix)) != len(self.mix):
            raise ConfigError("mix", f"expected distinct ratios ≥ 0, got {self.mix}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ConfigError("tasks", f"unknown or no task(s) {unknown} (known: {', '.join(TASKS)})")
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ConfigError("controls", f"unknown control(s) {unknown} (known: {', '.join(CONTROLS)})")
        if self.pretrain_split not in ("folds", "train", "val", "test"):
            raise ConfigError("pretrain_split", f"expected folds, train, val or test, got {self.pretrain_split!r}")
        if self.eval_batch_size < 1 or self.generate_steps < 0:
            raise ConfigError("eval_batch_size", "eval_batch_size must be ≥ 1 and generate_steps ≥ 0")
