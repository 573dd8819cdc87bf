"""The downstream experiment (paper Tables 2–4): pretrain per fold and method, fine-tune per task, score.

For each fold k (subject-level, :mod:`ecgflowcmr.downstream.cohort`) and each method:

* ``scratch``: no pretraining;
* ``real``: MAE on the real cines of the folds ≠ k (``pretrain_split: folds``), or on those of a split held
  out of the cross-validation, one run shared by every fold (``pretrain_split: train``, the ``tiny`` default);
* ``<source>@<mix>``: MAE on those real cines plus ``round(mix × n_real)`` synthetic cines of one source
  (``ecg``: generated from the ECG-only cohort's own ECGs; the controls ``template``, ``shuffled`` and
  ``ablation:NAME``). The synthetic subset is nested (the cines of mix 1 are in mix 2, …) and the same
  ECG-only subjects are used for every source, so sources differ only in how their cines were made.

then, per task, fine-tune on the task's subjects in the folds ≠ k and predict those in fold k. Synthetic
cines come only from ECG-only subjects, never from a subject of the real cohort (checked), so no test
subject's ECG or cine reaches pretraining in any form. Every run is a folder under ``OUT/runs/`` trained
by the project's loop: a finished run is reused, an interrupted one resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ecgflowcmr.atomic import write_text_atomic
from ecgflowcmr.downstream.cohort import Subject, Task, build_task, cohorts, pretraining_real
from ecgflowcmr.downstream.config import DownstreamConfig
from ecgflowcmr.downstream.metrics import classification_metrics, regression_metrics
from ecgflowcmr.errors import InputError
from ecgflowcmr.store.prepared import cine_from_uint8
from ecgflowcmr.training import distributed as dist
from ecgflowcmr.training.stages.cine_vit import DONE_FILE, finetune_setup, fit_once, pretrain_setup, seed_init

RESULT_FILE = "result.json"
SETTINGS_FILE = "settings.json"
BOOKKEEPING = ("num_workers", "log_every", "val_every", "val_batches", "ckpt_every", "keep_last", "max_nonfinite",
               "tensorboard", "time_limit_s", "stop_at_step", "device", "find_unused_parameters")
"""Training settings that do not change what a run learns: changing them keeps finished runs valid."""


@dataclass
class SyntheticPool:
    """Synthetic cines of one source: uint8 (N, 50, 96, 96) as the store encodes them, one per subject."""

    source: str
    cines: np.ndarray
    subject_ids: list[str]


@dataclass
class Method:
    name: str
    """scratch, real, or SOURCE@MIX."""
    source: str
    """"" for scratch and real."""
    mix: float


class CineItems(Dataset):
    """Items ``{"cine": (1, 50, 96, 96) float32 in [-1, 1]}`` (+ ``label`` int64 or ``target`` float32)."""

    def __init__(self, items: list[tuple[np.ndarray, int]], labels: np.ndarray | None = None,
                 targets: np.ndarray | None = None):
        self.items, self.labels, self.targets = items, labels, targets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        array, index = self.items[i]
        item = {"cine": torch.from_numpy(cine_from_uint8(np.asarray(array[index])))[None]}
        if self.labels is not None:
            item["label"] = torch.tensor(int(self.labels[i]))
        if self.targets is not None:
            item["target"] = torch.from_numpy(self.targets[i].astype(np.float32))
        return item


def methods_of(cfg: DownstreamConfig, sources: list[str]) -> list[Method]:
    out = [Method("scratch", "", 0.0)] if cfg.scratch else []
    if 0 in cfg.mix:
        out.append(Method("real", "", 0.0))
    for mix in sorted(m for m in cfg.mix if m > 0):
        out += [Method(f"{source}@{mix:g}", source, mix) for source in sources]
    return out


def synthetic_needed(cfg: DownstreamConfig, subjects: list[Subject], reserved: list[Subject]) -> int:
    """Synthetic cines the largest mix needs (in the fold with the most real pretraining cines)."""
    n_real = max(len(pretraining_real(subjects, reserved, k)) for k in range(cfg.folds))
    return round(max(cfg.mix) * n_real)


def check_pools(pools: dict[str, SyntheticPool], subjects: list[Subject], cfg: DownstreamConfig,
                reserved: list[Subject] | None = None) -> list[str]:
    """The ECG-only subjects every pool has (sorted), after refusing any that belongs to the real cohort;
    raises if they are too few for the largest mix."""
    if not pools:
        return []
    real = {s.subject_id for s in [*subjects, *(reserved or [])]}
    common = set.intersection(*(set(p.subject_ids) for p in pools.values()))
    leaked = sorted(common & real)
    if leaked:
        raise InputError("--ecg-only", f"{len(leaked)} ECG-only subject(s) are also in the real cohort "
                         f"(e.g. {leaked[0]}): their synthetic cines could reach a test fold")
    need = synthetic_needed(cfg, subjects, reserved or [])
    if len(common) < need:
        raise InputError("--ecg-only", f"{len(common)} synthetic cines in every source, but mix "
                         f"{max(cfg.mix):g} needs {need}")
    return sorted(common)


def run_experiment(cfg: DownstreamConfig, store: Path, pools: dict[str, SyntheticPool], out: Path,
                   log=None) -> list[dict[str, Any]]:
    """Every (fold, method, task) run; returns the per-fold metric rows (also written per run)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    store, out = Path(store), Path(out)
    subjects, reserved = cohorts(store, cfg.folds, cfg.seed, cfg.pretrain_split)
    tasks = [build_task(name, subjects, cfg.seed, cfg.phenotypes) for name in cfg.tasks]
    synthetic_ids = check_pools(pools, subjects, cfg, reserved)
    real_arrays = {split: np.load(store / split / "cine.npy", mmap_mode="r")
                   for split in {s.split for s in [*subjects, *reserved]}}
    methods = methods_of(cfg, list(pools))
    rows: list[dict[str, Any]] = []
    for fold in range(cfg.folds):
        train_real = [(real_arrays[s.split], s.index) for s in pretraining_real(subjects, reserved, fold)]
        # the synthetic subset of this fold (nested over mixes); with a reserved split, one for every fold
        key = [cfg.seed, 5] if reserved else [cfg.seed, 3, fold]
        order = np.random.default_rng(key).permutation(len(synthetic_ids))
        for method in methods:
            name = method.name.replace(":", "-")
            folder = out / "runs" / f"fold{fold}" / name
            pretrain_dir = (out / "runs" / "shared" / name if reserved else folder) / "pretrain"
            pretrained = None
            n_synthetic = round(method.mix * len(train_real)) if method.source else 0
            if method.name != "scratch":
                claim_run(pretrain_dir, {**_training(cfg.pretrain, "pretrain"), **_flat(cfg.model, "model"),
                                         "seed": cfg.seed, "real": len(train_real), "synthetic": n_synthetic})
            if method.name != "scratch" and not (pretrain_dir / DONE_FILE).exists():
                items = list(train_real)
                if method.source:
                    pool = pools[method.source]
                    position = {sid: j for j, sid in enumerate(pool.subject_ids)}
                    chosen = [synthetic_ids[j] for j in order[:n_synthetic]]
                    items += [(pool.cines, position[sid]) for sid in chosen]
                start = time.perf_counter()
                seed_init(cfg.seed, 0 if reserved else fold, 0)  # the same initial weights for every method
                setup = pretrain_setup(cfg.model, CineItems(items))
                summary = fit_once(setup, cfg.pretrain, pretrain_dir, run_config=cfg)
                _check_finished(summary, pretrain_dir)
                log(f"fold {fold} {method.name}: pretrained on {len(items)} cines "
                    f"({len(items) - len(train_real)} synthetic) in {time.perf_counter() - start:.1f} s")
            if method.name != "scratch":
                pretrained = pretrain_dir
            for t, task in enumerate(tasks):
                result = _finetune(cfg, task, t, subjects, real_arrays, fold, pretrained, folder / task.name)
                rows += [{"task": task.name, "method": method.name, "source": method.source or method.name,
                          "mix": method.mix, "fold": fold, **r} for r in result["metrics"]]
    return rows


def _check_finished(summary: dict[str, Any], run_dir: Path) -> None:
    if summary.get("stopped", "done") != "done":
        raise InputError(run_dir, f"training stopped early ({summary['stopped']}); rerun to resume")


def _finetune(cfg: DownstreamConfig, task: Task, t: int, subjects: list[Subject], arrays: dict[str, np.ndarray],
              fold: int, pretrained: Path | None, run_dir: Path) -> dict[str, Any]:
    """Fine-tune on the task's training folds, predict fold ``fold``; ``run_dir/result.json`` caches it."""
    train = [j for j, i in enumerate(task.members) if subjects[i].fold != fold]
    test = [j for j, i in enumerate(task.members) if subjects[i].fold == fold]
    claim_run(run_dir, {**_training(cfg.finetune, "finetune"), **_flat(cfg.model, "model"), "seed": cfg.seed,
                        "folds": cfg.folds, "pretrain_split": cfg.pretrain_split, "pretrained": pretrained.parent.name if pretrained else None,
                        "columns": list(task.columns), "train": len(train), "test": len(test)})
    done = run_dir / RESULT_FILE
    if done.exists():
        return json.loads(done.read_text())
    items = [(arrays[subjects[i].split], subjects[i].index) for i in task.members]
    if task.kind == "classify":
        assert task.labels is not None
        train_set = CineItems([items[j] for j in train], labels=task.labels[train])
        outputs = len(task.classes)
    else:
        assert task.targets is not None
        known = np.isfinite(task.targets[train])
        count = known.sum(0).clip(min=1)
        mean = np.where(known, task.targets[train], 0.0).sum(0) / count  # NaN-aware, 0 for an empty column
        sd = np.sqrt(np.where(known, (task.targets[train] - mean) ** 2, 0.0).sum(0) / count)
        sd = np.where(sd > 0, sd, 1.0)
        train_set = CineItems([items[j] for j in train], targets=(task.targets[train] - mean) / sd)
        outputs = len(task.columns)
    seed_init(cfg.seed, fold, 1 + t)
    setup = finetune_setup(cfg.model, task.kind, outputs, train_set, pretrained)
    # a task smaller than one batch trains on full-batch steps (recorded in fit.json)
    world = dist.info().world_size
    train_cfg = dataclasses.replace(cfg.finetune, batch_size=min(cfg.finetune.batch_size, len(train_set) // world))
    summary = fit_once(setup, train_cfg, run_dir, run_config=cfg)
    summary["batch_size"] = train_cfg.batch_size
    _check_finished(summary, run_dir)
    predictions = _predict(setup.model, [items[j] for j in test], cfg.eval_batch_size)
    if task.kind == "classify":
        metrics = classification_metrics(task.labels[test], predictions, len(task.classes))
    else:
        metrics = regression_metrics(task.targets[test], predictions * sd + mean, task.columns)
    result = {"task": task.name, "fold": fold, "n_train": len(train), "n_test": len(test),
              "subjects_test": [subjects[task.members[j]].subject_id for j in test],
              "metrics": [{**m, "n_train": len(train), "n_test": len(test)} for m in metrics],
              "fit": summary}
    if dist.is_main():  # every rank predicted the same fold with the same weights
        write_text_atomic(done, json.dumps(result, indent=2) + "\n")
    dist.barrier()
    return result


def _flat(obj: Any, prefix: str) -> dict[str, Any]:
    return {f"{prefix}.{k}": list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


def _training(train: Any, prefix: str) -> dict[str, Any]:
    return {k: v for k, v in _flat(train, prefix).items() if k.partition(".")[2] not in BOOKKEEPING}


def claim_run(run_dir: Path, settings: dict[str, Any]) -> None:
    """Record what a run folder is trained with (``settings.json``), or check that a folder from an earlier
    call was trained with the same: rerunning into an output folder with other sizes must not reuse runs
    that answer another question. Raises InputError naming the settings that changed."""
    path = Path(run_dir) / SETTINGS_FILE
    settings = json.loads(json.dumps(settings, default=str))
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            shown = ", ".join(f"{k} {old.get(k)} → {settings.get(k)}" for k in changed[:3])
            raise InputError(run_dir, f"was trained with other settings ({shown}{', …' if len(changed) > 3 else ''}): "
                             "use another --out, or delete this folder to train it again")
    elif dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    dist.barrier()


@torch.no_grad()
def _predict(model: torch.nn.Module, items: list[tuple[np.ndarray, int]], batch_size: int) -> np.ndarray:
    """Softmax probabilities (classification) or standardised predictions (regression), (N, K)."""
    model.eval()
    device = next(model.parameters()).device
    data = CineItems(items)
    outs = []
    for start in range(0, len(data), batch_size):
        cine = torch.stack([data[i]["cine"] for i in range(start, min(len(data), start + batch_size))])
        out = model.predict(cine.to(device)).float().cpu()
        outs.append(out.softmax(-1) if model.kind == "classify" else out)
    return torch.cat(outs).numpy().astype(np.float64)


def config_record(cfg: DownstreamConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
