"""Who is in the downstream experiment: the real cohort, its subject-level folds and each task's subjects.

* The **real cohort** is every paired subject of the store (splits train, val and test pooled): each has
  one real cine and its manifest row (labels, phenotypes). A subject appears once.
* **Folds** are drawn once over the whole real cohort, stratified by ``diagnosis`` when the column exists
  (seeded), so every task and every method sees the same test subjects in fold k. MAE pretraining for
  fold k uses the real cines of the other folds only, or (``pretrain_split`` a split name) those of a
  split held out of the cross-validation: either way a test subject's cine is never pretrained on.
* **Tasks** (labels 0/1 as in the manifest):
  - ``cad``, ``cm``, ``hf``: every case (label 1) and as many controls (label 0, preferring
    ``diagnosis == normal`` when that column exists), drawn at random with the config's seed: a 1:1
    case–control cohort. If controls are fewer than cases, cases are drawn down to match.
  - ``four_class``: diagnosis ∈ {normal, hcm, dcm, rcm} (Table 4); other diagnoses are left out.
  - ``phenotypes``: every subject with at least one of the phenotype columns; targets standardised with
    the training folds' mean and SD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ecgflowcmr.downstream.config import IMAGING_SUFFIXES, PAPER_PHENOTYPES
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.manifest import PAIRED_SPLITS
from ecgflowcmr.store.prepared import read_store_meta

FOUR_CLASSES: tuple[str, ...] = ("normal", "hcm", "dcm", "rcm")
BINARY_TASKS: tuple[str, ...] = ("cad", "cm", "hf")


@dataclass
class Subject:
    subject_id: str
    split: str
    """The store split holding its cine."""
    index: int
    """Item index inside that split."""
    row: dict[str, str]
    fold: int = -1


@dataclass
class Task:
    name: str
    kind: str
    """classify or regress."""
    members: list[int]
    """Positions in the cohort's subject list."""
    labels: np.ndarray | None = None
    """int64 (len(members),) for classification."""
    classes: tuple[str, ...] = ()
    targets: np.ndarray | None = None
    """float64 (len(members), K) in physical units, NaN missing, for regression."""
    columns: tuple[str, ...] = ()


def real_cohort(store: str, folds: int, seed: int, exclude: tuple[str, ...] = ()) -> list[Subject]:
    """Every paired subject of ``store`` (but those of the ``exclude`` splits) with its fold (stratified by
    diagnosis when present)."""
    subjects = split_subjects(store, [s for s in PAIRED_SPLITS if s not in exclude])
    ids = [s.subject_id for s in subjects]
    if len(set(ids)) != len(ids):
        raise InputError(store, "a subject_id appears in more than one paired split")
    if len(subjects) < 2 * folds:
        raise InputError(store, f"{len(subjects)} paired subjects: too few for {folds} folds")
    assign_folds(subjects, folds, seed)
    return subjects


def split_subjects(store: str, splits: list[str]) -> list[Subject]:
    """The subjects of the given paired splits of ``store``, in store order."""
    import csv
    from pathlib import Path

    meta = read_store_meta(store)
    subjects: list[Subject] = []
    for split in splits:
        if meta["splits"].get(split, 0) == 0:
            continue
        with open(Path(store) / split / "rows.csv", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                subjects.append(Subject(row["subject_id"], split, i, row))
    return subjects


def cohorts(store: str, folds: int, seed: int, pretrain_split: str) -> tuple[list[Subject], list[Subject]]:
    """(the cross-validated real cohort, the real subjects reserved for pretraining only: those of
    ``pretrain_split``, none when it is ``folds``)."""
    if pretrain_split == "folds":
        return real_cohort(store, folds, seed), []
    reserved = split_subjects(store, [pretrain_split])
    if not reserved:
        raise InputError(store, f"pretrain_split {pretrain_split!r}: the store has no such paired split")
    return real_cohort(store, folds, seed, exclude=(pretrain_split,)), reserved


def pretraining_real(subjects: list[Subject], reserved: list[Subject], fold: int) -> list[Subject]:
    """The real subjects whose cines fold ``fold`` pretrains on: the reserved ones, or the other folds."""
    return reserved if reserved else [s for s in subjects if s.fold != fold]


def assign_folds(subjects: list[Subject], folds: int, seed: int) -> None:
    """Stratified round-robin over a seeded permutation: fold sizes differ by at most one per stratum."""
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(subjects))
    strata: dict[str, list[int]] = {}
    for i in order:
        strata.setdefault(subjects[i].row.get("diagnosis", ""), []).append(int(i))
    position = 0
    for key in sorted(strata):
        for i in strata[key]:
            subjects[i].fold = position % folds
            position += 1


def _flag(value: str) -> int | None:
    value = value.strip().lower()
    if value in ("1", "true", "yes"):
        return 1
    if value in ("0", "false", "no"):
        return 0
    return None


def phenotype_columns(subjects: list[Subject], wanted: list[str]) -> tuple[str, ...]:
    """The regressed columns: ``wanted``, or every imaging phenotype column; the paper's four first."""
    columns = list(subjects[0].row)
    if wanted:
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise InputError("phenotypes", f"column(s) {missing} not in the store's rows")
        chosen = list(wanted)
    else:
        # the store's own notes (cine_spacing_mm, …) are not phenotypes; nor is a column without numbers
        chosen = [c for c in columns if c.endswith(IMAGING_SUFFIXES) and not c.startswith(("cine_", "ecg_"))
                  and any(math.isfinite(_number(s.row.get(c, ""))) for s in subjects)]
    return tuple(sorted(chosen, key=lambda c: (PAPER_PHENOTYPES.index(c) if c in PAPER_PHENOTYPES else 99)))


def build_task(name: str, subjects: list[Subject], seed: int, phenotypes: list[str]) -> Task:
    """The subjects, labels or targets of one task (see the module docstring)."""
    columns = subjects[0].row
    if name in BINARY_TASKS:
        if name not in columns:
            raise InputError("task", f"task {name} needs a {name!r} label column (0/1) in the manifest")
        flags = [_flag(s.row[name]) for s in subjects]
        cases = [i for i, f in enumerate(flags) if f == 1]
        controls = [i for i, f in enumerate(flags) if f == 0]
        if "diagnosis" in columns:
            normal = [i for i in controls if subjects[i].row["diagnosis"] == "normal"]
            controls = normal if len(normal) >= len(cases) else controls
        rng = np.random.default_rng([seed, 2, BINARY_TASKS.index(name)])
        n = min(len(cases), len(controls))
        if n < 2:
            raise InputError("task", f"task {name}: {len(cases)} cases and {len(controls)} controls")
        chosen_cases = sorted(rng.choice(cases, n, replace=False).tolist())
        chosen_controls = sorted(rng.choice(controls, n, replace=False).tolist())
        members = chosen_cases + chosen_controls
        labels = np.array([1] * n + [0] * n, dtype=np.int64)
        return Task(name, "classify", members, labels=labels, classes=("control", name))
    if name == "four_class":
        if "diagnosis" not in columns:
            raise InputError("task", "task four_class needs a 'diagnosis' column (normal/hcm/dcm/rcm)")
        members = [i for i, s in enumerate(subjects) if s.row["diagnosis"] in FOUR_CLASSES]
        labels = np.array([FOUR_CLASSES.index(subjects[i].row["diagnosis"]) for i in members], dtype=np.int64)
        return Task(name, "classify", members, labels=labels, classes=FOUR_CLASSES)
    if name == "phenotypes":
        cols = phenotype_columns(subjects, phenotypes)
        if not cols:
            raise InputError("task", "task phenotypes: no phenotype columns (units in the names, e.g. lvedv_ml)")
        values = np.array([[_number(s.row.get(c, "")) for c in cols] for s in subjects], dtype=np.float64)
        members = [i for i in range(len(subjects)) if np.isfinite(values[i]).any()]
        return Task(name, "regress", members, targets=values[members], columns=cols)
    raise InputError("task", f"unknown task {name!r}")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan
