"""The training engine's configuration: one dataclass shared by every stage (PA-MAE, VAE, flow)."""

from __future__ import annotations

from dataclasses import dataclass

from ecgflowcmr.errors import ConfigError


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps to run (after gradient accumulation). Ignored when ``epochs`` > 0."""
    epochs: float = 0.0
    """If > 0, train for this many passes over the training split (the paper: 10)."""
    batch_size: int = 4
    """Per-process micro-batch; the global batch is batch_size × grad_accum × world size."""
    grad_accum: int = 1
    """Micro-batches summed before one optimizer step."""
    lr: float = 1e-4
    """Peak AdamW learning rate (paper: 1e-4)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (paper: 1e-4); not applied to biases and norm weights."""
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    """Linear warmup from 0 to ``lr``."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr × min_lr_ratio."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    ema_decay: float = 0.999
    """Exponential moving average of the weights (0 disables); exported weights are the EMA's."""
    bf16: bool = False
    """bf16 autocast: opt-in, CUDA only (on CPU it is ~100× slower than fp32)."""
    seed: int = 0
    num_workers: int = 0
    """DataLoader worker processes."""
    log_every: int = 10
    val_every: int = 200
    """Run the validation pass every this many steps (and at the end); 0 disables."""
    val_batches: int = 0
    """Cap on validation batches per pass (0 = the whole split)."""
    ckpt_every: int = 500
    """Write checkpoints/step-N every this many steps (and at the end)."""
    keep_last: int = 3
    """Keep this many most recent checkpoints."""
    max_nonfinite: int = 5
    """Stop after this many non-finite steps in a row (each is skipped on every rank)."""
    tensorboard: bool = False
    time_limit_s: float = 0.0
    """If > 0, stop cleanly (checkpoint, export) once this much wall time has passed."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "keep_last", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}", f"must be ≥ 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError("train.lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
