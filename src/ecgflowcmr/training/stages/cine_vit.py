"""Training stage ``cine_vit``: MAE pretraining of the cine ViT, and the fine-tuning runs built on it.

As a stage (``run_stage``): MAE on the store's ``train`` cines, validated on ``val``; ``finalize`` reports
the masked-patch MSE on held-out cines. The downstream experiment uses the pieces directly:
:func:`pretrain_setup` / :func:`finetune_setup` give a :class:`Setup` for any cine datasets, and
:func:`fit_once` trains it through the one loop, resumably: a finished run (``fit.json`` present) is
skipped, an interrupted one resumes exactly from its latest checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from ecgflowcmr.atomic import write_text_atomic
from ecgflowcmr.bundle import WEIGHTS_FILE, load_weights
from ecgflowcmr.errors import InputError
from ecgflowcmr.models.video_vit import VideoMAE, VideoViTConfig, VideoViTPredictor
from ecgflowcmr.store.prepared import StoreDataset, split_size
from ecgflowcmr.training import checkpoint as ckpt
from ecgflowcmr.training import distributed as dist
from ecgflowcmr.training import seeding
from ecgflowcmr.training.config import TrainConfig
from ecgflowcmr.training.loop import Setup, fit

FIELDS = ("cine",)
DONE_FILE = "fit.json"


@dataclass
class RunConfig:
    model: VideoViTConfig = field(default_factory=VideoViTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build(cfg: RunConfig, data: Path, run_dir: Path, *, pamae: Path | None = None,
          vae: Path | None = None) -> Setup:
    train_set = StoreDataset(data, "train", fields=FIELDS)
    if len(train_set) == 0:
        raise InputError(data, "the store has no training cines")
    val_set = StoreDataset(data, "val", fields=FIELDS) if split_size(data, "val") > 0 else None
    return pretrain_setup(cfg.model, train_set, val_set)


@torch.no_grad()
def finalize(model: nn.Module, cfg: RunConfig, data: Path, run_dir: Path) -> dict[str, Any]:
    split = "test" if split_size(data, "test") > 0 else "val"
    held_out = StoreDataset(data, split, fields=FIELDS)
    model.eval()
    torch.manual_seed(cfg.train.seed)
    losses = [model({"cine": held_out[i]["cine"][None]})[0].item() for i in range(len(held_out))]
    return {"masked_mse": {"value": sum(losses) / max(1, len(losses)), "definition":
                           f"MAE loss (masked patches) on the {len(losses)} '{split}' cines, one random mask each"}}


# --------------------------------------------------------------------------------------------------
# Pieces for the downstream experiment
# --------------------------------------------------------------------------------------------------


def pretrain_setup(model: VideoViTConfig, train_set: Dataset, val_set: Dataset | None = None) -> Setup:
    """MAE over cine items ``{"cine": (1, T, H, W)}``."""
    return Setup(model=VideoMAE(model), train_set=train_set, val_set=val_set)


def finetune_setup(model: VideoViTConfig, kind: str, outputs: int, train_set: Dataset,
                   pretrained: Path | None = None) -> Setup:
    """A predictor over items with ``label`` or ``target``; its encoder from an MAE run folder if given."""
    predictor = VideoViTPredictor(model, kind, outputs)
    if pretrained is not None:
        load_encoder(predictor, pretrained)
    return Setup(model=predictor, train_set=train_set)


def load_encoder(predictor: VideoViTPredictor, mae_run: Path) -> None:
    """Copy the ``encoder.*`` weights of an exported MAE run into ``predictor.encoder`` (all keys checked)."""
    path = Path(mae_run) / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(path, "pretrained weights not found (is the pretraining run finished?)")
    weights = {k.removeprefix("encoder."): v for k, v in load_file(str(path)).items() if k.startswith("encoder.")}
    try:
        predictor.encoder.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise InputError(path, f"encoder does not fit ({' '.join(str(err).split())[:200]})") from None


def fit_once(setup: Setup, train: TrainConfig, run_dir: Path, run_config: Any = None) -> dict[str, Any]:
    """Train ``setup`` into ``run_dir`` unless finished; resume from the latest checkpoint if interrupted.
    Under torchrun every rank calls it (DDP); rank 0 writes the files.

    Returns the run's ``fit.json`` (steps, time, items/s). On return ``setup.model`` holds the exported
    (EMA) weights of the finished run. A finished run keeps its weights and drops its training state
    (the downstream experiment makes ~100 runs; their optimiser states were 3 GB of the `tiny` default).
    """
    run_dir = Path(run_dir)
    done = run_dir / DONE_FILE
    if done.exists():
        load_weights(setup.model, run_dir)
        return json.loads(done.read_text())
    resume = "latest" if ckpt.latest_checkpoint(run_dir) is not None else None
    result = fit(setup, train, run_dir, resume=resume, run_config=run_config)
    load_weights(setup.model, run_dir)
    summary = {"steps": result.steps, "stopped": result.stopped, "wall_time_s": round(result.wall_time_s, 3),
               "items_per_s": round(result.items_per_s, 3), "train_items": len(setup.train_set)}
    if result.stopped == "done" and dist.is_main():
        write_text_atomic(done, json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(ckpt.checkpoint_dir(run_dir), ignore_errors=True)  # fit.json first: done either way
    dist.barrier()  # every rank sees the run finished before any moves on
    return summary


def seed_init(seed: int, *key: int) -> None:
    """Seed the initial weights from (seed, key): one stream per run, whatever ran before in the process."""
    seeding.seed_everything(seeding.derive_seed(seed, seeding.Purpose.INIT, *key))
