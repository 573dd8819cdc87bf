"""What a downstream run will cost, before running it: its units of work counted from the config and the
store, and its wall time projected from measured per-unit rates (``benchmarks/downstream.py --plan``).

Units: generated cines (every source, the same ECG-only subjects), MAE pretrainings and the cines they
pass through (steps × batch), fine-tuning runs and their cine passes (per fold and task, as the loop
counts them), and test-fold predictions. Time = Σ units / rate + a fixed cost per training run (model
set-up, checkpoints, the result files), all measured on the machine that will run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgflowcmr.downstream.cohort import build_task, cohorts, pretraining_real
from ecgflowcmr.downstream.config import DownstreamConfig
from ecgflowcmr.downstream.experiment import methods_of, synthetic_needed
from ecgflowcmr.training.config import TrainConfig


def to_generate(need: int) -> int:
    """ECG-only subjects generated per source for ``need`` synthetic cines: 5 % + 2 more, for ECGs that fail."""
    return math.ceil(need * 1.05) + 2 if need > 0 else 0


@dataclass
class Work:
    """The units of work of one ``downstream`` run."""

    sources: list[str]
    generated_per_source: int
    pretrainings: int
    pretrain_cines: int
    """Cine passes over all pretrainings (steps × batch)."""
    finetunes: int
    finetune_cines: int
    """Cine passes over all fine-tuning runs."""
    predictions: int
    """Test-fold cines predicted over all fine-tuning runs."""
    sizes: dict[str, Any] = field(default_factory=dict)
    """Pretraining cines, cross-validated subjects, fold sizes and task sizes."""

    @property
    def generated(self) -> int:
        return self.generated_per_source * len(self.sources)


@dataclass
class Rates:
    """Measured throughput of each unit on one machine."""

    generate_s_per_cine: float
    pretrain_cines_per_s: float
    finetune_cines_per_s: float
    predict_cines_per_s: float
    run_overhead_s: float = 0.3
    """Per training run outside the steps: building the model, checkpoints, fit.json, result.json."""


def _steps(train: TrainConfig, n_train: int) -> tuple[int, int]:
    """(optimizer steps, batch size) of one run on ``n_train`` items, as the loop and the experiment set
    them: a set smaller than one batch trains on full-batch steps; ``epochs`` counts whole batches."""
    batch = min(train.batch_size, n_train)
    if train.epochs > 0:
        return math.ceil(train.epochs * (n_train // batch) / train.grad_accum), batch
    return train.steps, batch


def plan(cfg: DownstreamConfig, store: str | Path, ablations: int = 0, supplied: int = 0) -> Work:
    """Count the work of ``cfg`` on ``store`` (ECG-conditioned source, ``cfg.controls``, ``ablations``
    more bundles; ``supplied`` folders of cines given with ``--cines``: pretrained on, never generated)."""
    subjects, reserved = cohorts(store, cfg.folds, cfg.seed, cfg.pretrain_split)
    need = synthetic_needed(cfg, subjects, reserved)
    sources = ["ecg", *cfg.controls, *(f"ablation{i}" for i in range(ablations))] if need else []
    given = [f"cines:{i}" for i in range(supplied)] if need else []
    methods = methods_of(cfg, [*sources, *given])
    pretrained = [m for m in methods if m.name != "scratch"]
    runs = len(pretrained) * (1 if reserved else cfg.folds)
    finetunes = finetune_cines = predictions = 0
    task_sizes = {}
    for name in cfg.tasks:
        task = build_task(name, subjects, cfg.seed, cfg.phenotypes)
        task_sizes[name] = len(task.members)
        for fold in range(cfg.folds):
            n_test = sum(subjects[i].fold == fold for i in task.members)
            steps, batch = _steps(cfg.finetune, len(task.members) - n_test)
            finetunes += len(methods)
            finetune_cines += len(methods) * steps * batch * cfg.finetune.grad_accum
            predictions += len(methods) * n_test
    sizes = {"pretrain_real": max(len(pretraining_real(subjects, reserved, k)) for k in range(cfg.folds)),
             "synthetic_needed": need, "cross_validated": len(subjects),
             "fold_sizes": [sum(s.fold == k for s in subjects) for k in range(cfg.folds)], "tasks": task_sizes}
    return Work(sources=sources, generated_per_source=to_generate(need), pretrainings=runs,
                pretrain_cines=runs * cfg.pretrain.steps * cfg.pretrain.batch_size * cfg.pretrain.grad_accum,
                finetunes=finetunes, finetune_cines=finetune_cines, predictions=predictions, sizes=sizes)


def project(work: Work, rates: Rates) -> dict[str, float]:
    """Projected seconds per part and in total."""
    parts = {"generate": work.generated * rates.generate_s_per_cine,
             "pretrain": work.pretrain_cines / rates.pretrain_cines_per_s,
             "finetune": work.finetune_cines / rates.finetune_cines_per_s,
             "predict": work.predictions / rates.predict_cines_per_s,
             "run_overhead": (work.pretrainings + work.finetunes) * rates.run_overhead_s}
    return {**parts, "total": sum(parts.values())}
