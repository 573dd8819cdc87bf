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
    """AdamW (β1, β2)."""
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
    """Seeds the data order (per epoch), per-item randomness and per-step model randomness (dropout,
    masking): a run is a function of (seed, config, data), so a resumed run equals an uninterrupted one."""
    num_workers: int = 0
    """DataLoader worker processes."""
    log_every: int = 10
    """Write a metrics.jsonl line (loss averaged over ranks) every this many steps."""
    val_every: int = 200
    """Run the validation pass every this many steps (and at the end); 0 disables."""
    val_batches: int = 0
    """Cap on validation batches per pass (0 = the whole split)."""
    ckpt_every: int = 500
    """Write checkpoints/step-N every this many steps (and at the end); 0 = only at the end."""
    keep_last: int = 3
    """Keep this many most recent checkpoints."""
    max_nonfinite: int = 5
    """Stop after this many non-finite steps in a row (each is skipped on every rank)."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to run_dir/tensorboard (needs the tensorboard package)."""
    time_limit_s: float = 0.0
    """If > 0, stop cleanly (checkpoint, export) once this session has trained this many seconds."""
    stop_at_step: int = 0
    """If > 0, stop cleanly (checkpoint, export) after this step, keeping the schedule of the full run:
    a long run split into bounded jobs (resume continues it exactly)."""
    device: str = "auto"
    """auto (CUDA if available), cpu or cuda. Under torchrun each process takes cuda:LOCAL_RANK."""
    find_unused_parameters: bool = False
    """DDP only: set when some parameters get no gradient in a step (slower; a clear DDP error otherwise)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "keep_last", "max_nonfinite", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}", f"must be ≥ 1, got {getattr(self, name)}")
        for name in ("epochs", "warmup_steps", "grad_clip", "weight_decay", "seed", "num_workers", "val_every",
                     "val_batches", "ckpt_every", "time_limit_s", "stop_at_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}", f"must be ≥ 0, got {getattr(self, name)}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("train.betas", f"each must be in [0, 1), got {self.betas}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("train.device", f"must be auto, cpu or cuda, got {self.device!r}")
        if self.lr <= 0:
            raise ConfigError("train.lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
