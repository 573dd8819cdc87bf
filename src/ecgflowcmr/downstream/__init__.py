"""Does pretraining on ECG-generated cines help? The paper's Tables 2–4 with ECG-blind controls beside.

:func:`run_downstream` runs the experiment on a store's real cines and given pools of synthetic cines and
writes its outputs; ``ecgflowcmr downstream`` (``commands/downstream.py``) makes the pools with
``generate`` first. Protocol, label rules and sizes: ``docs/downstream.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecgflowcmr.downstream.config import DownstreamConfig
from ecgflowcmr.downstream.experiment import SyntheticPool, config_record, run_experiment
from ecgflowcmr.downstream.report import write_outputs

__all__ = ["DownstreamConfig", "SyntheticPool", "run_downstream"]


def run_downstream(cfg: DownstreamConfig, store: Path, pools: dict[str, SyntheticPool], out: Path,
                   meta: dict[str, Any] | None = None) -> list[Path]:
    """Run (or resume) every fold, method and task; write results.csv/json, tables.md and plots."""
    from ecgflowcmr.downstream.cohort import build_task, cohorts

    subjects, reserved = cohorts(store, cfg.folds, cfg.seed, cfg.pretrain_split)
    tasks = {}
    for name in cfg.tasks:
        task = build_task(name, subjects, cfg.seed, cfg.phenotypes)
        tasks[name] = (f"{len(task.members)} subjects" if task.kind == "regress" else
                       f"{len(task.members)} ({', '.join(f'{c} {int((task.labels == k).sum())}' for k, c in enumerate(task.classes))})")
    rows = run_experiment(cfg, store, pools, out)
    record = {"folds": cfg.folds, "seed": cfg.seed, "store": str(store),
              "cohort": {"subjects": len(subjects), "pretrain_only_subjects": len(reserved), "synthetic_subjects": min((len(p.subject_ids) for p in pools.values()), default=0),
                         "tasks": tasks, "fold_sizes": [sum(s.fold == k for s in subjects) for k in range(cfg.folds)]},
              "sources": sorted(pools), "config": config_record(cfg), **(meta or {})}
    from ecgflowcmr.training import distributed as dist

    files = write_outputs(Path(out), rows, record) if dist.is_main() else []
    dist.barrier()
    return files
