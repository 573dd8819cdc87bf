"""``ecgflowcmr train STAGE``: config → build → fit → export → finalize, for any stage module.

A stage module (``ecgflowcmr.training.stages.<name>``) defines ``RunConfig`` (a dataclass with ``model``,
``train: TrainConfig`` and usually ``eval: EvalConfig``), ``build(cfg, data, run_dir, *, pamae=None,
vae=None) -> Setup`` and ``finalize(model, cfg, data, run_dir) -> dict``. Its trained network is loaded
with ``bundle.load_model(run_dir, stage)``.

Run folder written here: ``config.yaml`` (the resolved config), everything :func:`fit` writes, and
``metrics.json`` = ``{"training": {...summary...}, **finalize(...)}``.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch.distributed

from ecgflowcmr.atomic import ensure_dir, write_text_atomic
from ecgflowcmr.bundle import load_weights
from ecgflowcmr.config import dump_yaml, load_config
from ecgflowcmr.errors import InputError
from ecgflowcmr.training import distributed as dist
from ecgflowcmr.training import seeding
from ecgflowcmr.training.loop import fit

STAGES = {
    "pamae": "ecgflowcmr.training.stages.pamae",
    "vae": "ecgflowcmr.training.stages.vae",
    "flow": "ecgflowcmr.training.stages.flow",
}
"""The production stages, by CLI name. Tests run other stage modules through :func:`run_stage`."""


def train(stage: str, data: Path, out: Path, config: str | None = "tiny", sets: list[str] | None = None,
          resume: str | None = None, pamae: Path | None = None, vae: Path | None = None) -> Path:
    """Train ``stage`` (pamae, vae or flow) on the store ``data`` into run folder ``out``; returns ``out``.

    ``config``: a preset name for the stage (``tiny``, ``paper``) or a YAML path; ``sets``: ``key=value``
    overrides; ``resume``: ``"latest"`` or a checkpoint path; ``pamae``/``vae``: trained run folders the
    flow stage builds on.
    """
    if stage not in STAGES:
        raise InputError("stage", f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    module = importlib.import_module(STAGES[stage])
    return run_stage(module, stage, data, out, config=config, sets=sets, resume=resume, pamae=pamae, vae=vae)


def run_stage(module: ModuleType, stage: str, data: Path, out: Path, *, config: str | Path | None = None,
              sets: list[str] | None = None, resume: str | None = None, pamae: Path | None = None,
              vae: Path | None = None) -> Path:
    """:func:`train` for a given stage module (any module following the stage contract)."""
    data, out = Path(data), Path(out)
    cfg = load_config(module.RunConfig, stage, config, sets)
    caller_joined = torch.distributed.is_initialized()  # a caller's group (a sweep's) outlives this run
    dist.setup_distributed(cfg.train.device)
    try:
        if dist.is_main():
            ensure_dir(out, "run folder")
            write_text_atomic(out / "config.yaml", dump_yaml(cfg))
        dist.barrier()
        start = time.time()
        # initial weights from the config's seed, not from whatever drew random numbers before in this process
        seeding.seed_everything(seeding.derive_seed(cfg.train.seed, seeding.Purpose.INIT))
        setup = module.build(cfg, data, out, pamae=pamae, vae=vae)
        result = fit(setup, cfg.train, out, resume=resume, run_config=cfg)
        if dist.is_main():
            model = load_weights(setup.model, out).eval()  # the exported EMA weights
            metrics: dict[str, Any] = {"training": {
                "stage": stage,
                "steps": result.steps,
                "stopped": result.stopped,
                "wall_time_s": round(time.time() - start, 3),
                "fit_wall_time_s": round(result.wall_time_s, 3),
                "items_per_s": round(result.items_per_s, 3),
                "items_per_s_definition": "training items (all processes) per second of this session's fit",
                "best_val_loss": result.best_val_loss,
                "last_val_loss": result.last_val_loss,
                "val_loss_definition": "mean over the val split of the stage's loss, EMA weights",
            }}
            metrics.update(module.finalize(model, cfg, data, out))
            write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
        dist.barrier()
    finally:
        if not caller_joined:
            dist.teardown_distributed()
    return out
