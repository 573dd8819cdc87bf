"""The one training loop: every stage (PA-MAE, VAE, flow) trains through :func:`fit`.

A stage hands over a :class:`Setup` whose ``model(batch)`` returns ``(loss, parts)``; the loop never knows
which stage it runs. The same code runs on a CPU, one GPU, or ``torchrun --nproc_per_node=N`` (DDP).

Per optimizer step (nanoGPT-like): learning rate from the step (linear warmup, cosine decay) →
``grad_accum`` micro-batches (DDP synchronises on the last only) → global gradient-norm clip → the step
is skipped on every rank together if the loss or the gradient is non-finite → AdamW → EMA update. Every ``val_every`` steps a validation pass with the EMA weights
(``checkpoints/best/`` keeps the best); every ``ckpt_every`` steps ``checkpoints/step-N/``; at the end the
EMA weights are exported to ``run_dir/model.safetensors`` + ``config.json``.

Reproducibility: every random draw is a function of the config's seed and a position (epoch, item,
step), never of how the process got there (see :mod:`ecgflowcmr.training.seeding`), so a resumed run
equals an uninterrupted one bit for bit on CPU. Checkpoints also store the RNG states and data position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ecgflowcmr.bundle import save_weights
from ecgflowcmr.config import dump_yaml
from ecgflowcmr.errors import InputError
from ecgflowcmr.training import checkpoint as ckpt
from ecgflowcmr.training import distributed as dist
from ecgflowcmr.training import seeding
from ecgflowcmr.training.adversary import Adversary
from ecgflowcmr.training.config import TrainConfig
from ecgflowcmr.training.logging import RunLogger
from ecgflowcmr.training.seeding import BatchStream, EpochBatches, Purpose, SeededItems, derive_seed


@dataclass
class Setup:
    """What a stage's ``build`` returns: everything :func:`fit` needs, nothing stage-specific."""

    model: nn.Module
    """``model(batch) -> (loss: scalar Tensor, parts: dict[str, Tensor | float])``; the same ``parts`` keys
    every step. Has attribute ``config`` (a dataclass) written to config.json on export."""
    train_set: Dataset
    val_set: Dataset | None = None
    collate_fn: Callable | None = None
    """Default: torch's default collate (dicts of tensors stack)."""
    adversary: Adversary | None = None
    """A discriminator trained against the model (e.g. the VAE's PatchGAN): then the loop calls
    ``model(batch, adversary)`` and steps the adversary once per optimizer step, after the model's backward."""


@dataclass
class FitResult:
    steps: int
    """Optimizer steps completed in the whole run (over resumed sessions)."""
    wall_time_s: float
    """This session's wall time in fit."""
    items_per_s: float
    """This session's training throughput, items over all ranks per second."""
    stopped: str
    """Why training ended: "done", "time_limit" or "stop_at_step"."""
    best_val_loss: float | None
    last_val_loss: float | None


class TrainingError(InputError):
    """Training cannot go on (e.g. non-finite losses in a row); the message says what to change."""


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (inside dicts, lists, tuples) moved to ``device``; everything else as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# --------------------------------------------------------------------------------------------------
# Optimizer, schedule, EMA
# --------------------------------------------------------------------------------------------------


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and kernels only (biases, norm weights and other 1-D params: none)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr: linear warmup (step+1)/(warmup+1), then cosine from 1 to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """θ_ema ← d·θ_ema + (1−d)·θ with d = min(decay, (1+k)/(10+k)) at update k. The warm-up of d keeps
    short runs from exporting mostly the initial weights; decay 0 makes the EMA the weights themselves.
    Parameters only: buffers (e.g. norm statistics, a latent scale) are always the live ones."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in model.named_parameters():
            if d == 0:
                self.shadow[n].copy_(p)
            else:
                self.shadow[n].lerp_(p, 1 - d)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the EMA weights for the duration; the training weights are restored after."""
        params = dict(model.named_parameters())
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def fit(setup: Setup, cfg: TrainConfig, run_dir: str | Path, *, resume: str | Path | None = None,
        run_config: Any = None) -> FitResult:
    """Train ``setup.model`` in place for ``cfg.steps`` (or ``cfg.epochs``) optimizer steps.

    ``resume``: ``"latest"`` (the latest complete ``run_dir/checkpoints/step-N``) or a checkpoint path.
    ``run_config``: the stage's resolved config dataclass, saved in every checkpoint. Only rank 0 writes
    files. On return the model holds the training weights; the EMA weights are in ``run_dir``.
    Raises :class:`TrainingError` after ``cfg.max_nonfinite`` non-finite steps in a row.
    """
    run = _Run(setup, cfg, Path(run_dir), run_config, resume)
    with contextlib.closing(run.log):
        stopped = run.train()
    return run.finish(stopped)


class _Run:
    """One call of :func:`fit`: the model, its optimizer and EMA, the data position and the progress, with
    one method per part of the loop (a training step, validation and checkpoints, the export)."""

    def __init__(self, setup: Setup, cfg: TrainConfig, run_dir: Path, run_config: Any,
                 resume: str | Path | None):
        info = dist.setup_distributed(cfg.device)
        self.device, self.rank, self.world = info.device, info.rank, info.world_size
        self.setup, self.cfg, self.run_dir = setup, cfg, run_dir
        self.model = model = setup.model.to(self.device)
        self.sampler = EpochBatches(len(setup.train_set), cfg.batch_size, self.rank, self.world, cfg.seed)
        if len(self.sampler) == 0:
            raise InputError("train_set", f"{len(setup.train_set)} items: fewer than one global batch "
                             f"(train.batch_size {cfg.batch_size} × {self.world} processes)")
        self.total = cfg.steps if cfg.epochs == 0 else math.ceil(cfg.epochs * len(self.sampler) / cfg.grad_accum)
        self.optimizer = build_optimizer(model, cfg)
        self.ema = EMA(model, cfg.ema_decay)
        self.config_yaml = dump_yaml(run_config) if run_config is not None else ""
        self.step, epoch, batch_in_epoch, self.best_val, self.elapsed = 0, 0, 0, math.inf, 0.0
        if resume is not None:
            path = ckpt.resolve_resume(run_dir, resume)
            state = ckpt.load_checkpoint(path)
            _restore(path, state, model, self.ema, self.optimizer, setup.adversary, self.rank, self.world)
            self.step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch"]
            self.best_val, self.elapsed = state["best_val_loss"], state["time"]
        self.log = RunLogger(run_dir, enabled=dist.is_main(), total_steps=self.total, start_step=self.step,
                             tensorboard=cfg.tensorboard)
        self.use_bf16 = cfg.bf16 and self.device.type == "cuda"
        if cfg.bf16 and not self.use_bf16:
            self.log.message("train.bf16 ignored: bf16 autocast is CUDA-only; training in fp32 on CPU")
        self.net = model
        if self.world > 1:
            self.net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                               else None, find_unused_parameters=cfg.find_unused_parameters)
        loader = DataLoader(SeededItems(setup.train_set, cfg.seed), batch_sampler=self.sampler,
                            collate_fn=setup.collate_fn, num_workers=cfg.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=cfg.num_workers > 0)
        self.stream = BatchStream(loader, self.sampler, epoch, batch_in_epoch)
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.world
        self.validate = setup.val_set is not None and len(setup.val_set) > 0
        self.start_step, self.nonfinite, self.last_val = self.step, 0, None
        self.t0 = time.perf_counter()

    def now(self) -> float:
        """Training time over every session of this run, seconds."""
        return self.elapsed + time.perf_counter() - self.t0

    def train(self) -> str:
        """Optimizer steps until the total, a time limit or ``stop_at_step``; returns why it stopped."""
        cfg, stopped = self.cfg, "done"
        interval_t, interval_steps = time.perf_counter(), 0
        while self.step < self.total:
            lr, loss_sum, parts_sum, grad_norm = self.train_step()
            interval_steps += 1
            if self.step % cfg.log_every == 0 or self.step == self.total:
                loss, parts = _mean_over_ranks(loss_sum, parts_sum, self.world * cfg.grad_accum)
                self.log.train({"step": self.step, "epoch": self.stream.epoch + self.stream.batch / len(self.sampler),
                                "loss": loss, "parts": parts, "lr": lr, "grad_norm": grad_norm.item(),
                                "items_per_s": interval_steps * self.global_batch / (time.perf_counter() - interval_t),
                                "skipped": self.nonfinite, "time": self.now()})
                interval_t, interval_steps = time.perf_counter(), 0
            if self.step == cfg.stop_at_step and self.step < self.total:
                stopped = "stop_at_step"
            elif cfg.time_limit_s and dist.all_reduce_flag(time.perf_counter() - self.t0 >= cfg.time_limit_s):
                stopped = "time_limit"
            if self.evaluate_and_save(at_end=self.step == self.total or stopped != "done"):
                interval_t = time.perf_counter()  # items/s counts training time only
            if stopped != "done":
                self.log.message(f"stopping at step {self.step} of {self.total} ({stopped.replace('_', ' ')}); "
                                 "continue with --resume")
                break
        return stopped

    def train_step(self) -> tuple[float, torch.Tensor, dict[str, Any], torch.Tensor]:
        """One optimizer step (skipped on every rank together when the loss or the gradient is non-finite);
        returns (lr, summed loss, summed parts, gradient norm)."""
        cfg, model = self.cfg, self.model
        lr = cfg.lr * lr_factor(self.step, cfg.warmup_steps, self.total, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        loss_sum, parts_sum = _accumulate_gradients(self.net, self.stream, cfg, self.step, self.use_bf16,
                                                    self.setup.adversary)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        if dist.all_reduce_flag(not (torch.isfinite(loss_sum) and torch.isfinite(grad_norm))):
            self.nonfinite += 1
            self.log.message(f"step {self.step}: non-finite loss or gradient, step skipped "
                             f"({self.nonfinite} in a row)")
            if self.nonfinite >= cfg.max_nonfinite:
                raise TrainingError(self.run_dir, f"loss or gradients non-finite for {self.nonfinite} steps in a "
                                    f"row (at step {self.step}); lower train.lr, raise train.warmup_steps or "
                                    "check the data; the last checkpoint is intact")
        else:
            self.nonfinite = 0
            self.optimizer.step()
            self.ema.update(model)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.log.advance()
        return lr, loss_sum, parts_sum, grad_norm

    def evaluate_and_save(self, at_end: bool) -> bool:
        """Validation pass and/or checkpoint when due; True if either ran."""
        cfg = self.cfg
        do_val = self.validate and (at_end or (cfg.val_every > 0 and self.step % cfg.val_every == 0))
        do_ckpt = at_end or (cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0)
        if do_val:
            with self.ema.applied(self.model):
                self.last_val, parts, n = _evaluate(self.model, self.setup, cfg, self.device, self.use_bf16)
            self.log.val({"step": self.step, "loss": self.last_val, "parts": parts, "items": n, "time": self.now()})
            if self.last_val < self.best_val:
                self.best_val = self.last_val
                self.save(ckpt.checkpoint_dir(self.run_dir) / "best")
        if do_ckpt:
            self.save(ckpt.checkpoint_dir(self.run_dir) / f"step-{self.step}")
            if dist.is_main():
                ckpt.prune_checkpoints(self.run_dir, cfg.keep_last)
        return do_val or do_ckpt

    def save(self, folder: Path) -> None:
        """A checkpoint: weights, EMA, optimizer, data position, progress, every rank's RNG states."""
        state = {"step": self.step, "epoch": self.stream.epoch, "batch": self.stream.batch,
                 "best_val_loss": self.best_val, "time": self.now(), "config": self.config_yaml,
                 "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict()}
        if self.setup.adversary is not None:
            state["adversary"] = self.setup.adversary.state_dict()
        _check_finite(state, folder)
        state["rng"] = dist.all_gather_objects(seeding.rng_state())
        if dist.is_main():
            ckpt.write_checkpoint(folder, state, self.config_yaml)

    def finish(self, stopped: str) -> FitResult:
        """Export the EMA weights (rank 0) and summarise the session."""
        wall = time.perf_counter() - self.t0
        if dist.is_main():
            with self.ema.applied(self.model):
                save_weights(self.model, self.run_dir, config=_model_config(self.model))
        dist.barrier()
        items_per_s = (self.step - self.start_step) * self.global_batch / max(wall, 1e-9)
        return FitResult(steps=self.step, wall_time_s=wall, items_per_s=items_per_s, stopped=stopped,
                         best_val_loss=self.best_val if math.isfinite(self.best_val) else None,
                         last_val_loss=self.last_val)


def _accumulate_gradients(net: nn.Module, stream: BatchStream, cfg: TrainConfig, step: int, use_bf16: bool,
                          adversary: Adversary | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Forward + backward over ``grad_accum`` micro-batches (gradients of their mean loss); under DDP the
    gradient all-reduce runs on the last one only; then the adversary's update, if any. Returns the summed
    loss and parts."""
    info = dist.info()
    loss_sum, parts_sum = torch.zeros((), device=info.device), {}
    for micro in range(cfg.grad_accum):
        batch = to_device(next(stream), info.device)
        seeding.seed_everything(derive_seed(cfg.seed, Purpose.STEP, info.rank, step, micro))
        last = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if info.world_size == 1 or last else net.no_sync():
            with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, parts = net(batch) if adversary is None else net(batch, adversary)
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else v)
    if adversary is not None:
        parts_sum |= adversary.step()
    return loss_sum, parts_sum


def _mean_over_ranks(loss_sum: torch.Tensor, parts_sum: dict[str, Any], count: int) -> tuple[float, dict]:
    """Loss and parts summed over micro-batches → means over the global batch (one all-reduce)."""
    names = sorted(parts_sum)
    sums = torch.tensor([float(loss_sum)] + [float(parts_sum[k]) for k in names], dtype=torch.float64)
    means = (dist.all_reduce_sum(sums) / count).tolist()
    return means[0], dict(zip(names, means[1:]))


@torch.no_grad()
def _evaluate(model: nn.Module, setup: Setup, cfg: TrainConfig, device: torch.device,
              use_bf16: bool) -> tuple[float, dict[str, float], int]:
    """Mean loss and parts over the validation split (sharded over ranks; ≤ val_batches per rank)."""
    info = dist.info()
    keys = [(0, i) for i in range(info.rank, len(setup.val_set), info.world_size)]
    chunks = [keys[i:i + cfg.batch_size] for i in range(0, len(keys), cfg.batch_size)]
    chunks = chunks[:cfg.val_batches] if cfg.val_batches else chunks
    loader = DataLoader(SeededItems(setup.val_set, cfg.seed, Purpose.VAL_ITEM), batch_sampler=chunks,
                        collate_fn=setup.collate_fn, num_workers=cfg.num_workers)
    model.eval()
    seeding.seed_everything(derive_seed(cfg.seed, Purpose.VAL, info.rank))
    sums: dict[str, float] = {}
    for chunk, batch in zip(chunks, loader):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, parts = model(to_device(batch, device))
        for k, v in {"": loss, **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
    names = dist.broadcast_object(sorted(sums))  # rank 0 always has ≥ 1 item
    totals = dist.all_reduce_sum(torch.tensor([float(sum(len(c) for c in chunks))] +
                                              [sums.get(k, 0.0) for k in names], dtype=torch.float64))
    n = int(totals[0].item())
    means = dict(zip(names, (totals[1:] / n).tolist()))
    return means.pop(""), means, n


def _restore(path: Path, state: dict[str, Any], model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
             adversary: Adversary | None, rank: int, world: int) -> None:
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if adversary is not None:
            if "adversary" not in state:
                raise KeyError("the checkpoint has no discriminator state (gan_weight was 0 when it was written)")
            adversary.load_state_dict(state["adversary"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise InputError(path, f"checkpoint does not fit this model/config ({' '.join(str(err).split())[:300]})"
                         ) from None
    if len(state["rng"]) == world:
        seeding.set_rng_state(state["rng"][rank])


def _check_finite(state: dict[str, Any], folder: Path) -> None:
    """Never write a checkpoint holding non-finite weights (every rank checks: their weights are equal)."""
    for name, t in [*state["model"].items(), *state["ema"]["shadow"].items()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise TrainingError(folder, f"weight {name} is non-finite; checkpoint not written "
                                "(lower train.lr or check the data)")


def _model_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(config) if isinstance(config, dict) else {}
