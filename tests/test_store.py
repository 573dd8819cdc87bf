"""Manifest parsing, `prepare` (store building, skips, resume) and StoreDataset reads."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from ecgflowcmr.cli import main
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.manifest import read_manifest
from ecgflowcmr.signal.phase import rpeak_f1
from ecgflowcmr.store import prepared as store_mod
from ecgflowcmr.store.prepared import StoreDataset, prepare, read_store_meta


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_store_matches_manifest(phantom_cohort: Path, phantom_store: Path) -> None:
    rows = _rows(phantom_cohort / "manifest.csv")
    meta = read_store_meta(phantom_store)
    for split, n in meta["splits"].items():
        assert n == sum(r["split"] == split for r in rows)
    assert not phantom_store.with_name(phantom_store.name + ".partial").exists()
    train = StoreDataset(phantom_store, "train")
    item = train[0]
    assert item["ecg"].shape == (12, 5000) and item["phase"].shape == (5000,)
    assert item["cine"].shape == (1, 50, 96, 96)
    assert -1.0 <= float(item["cine"].min()) and float(item["cine"].max()) <= 1.0
    assert float(item["cine"].max()) - float(item["cine"].min()) > 1.0  # normalised, not blank
    assert np.isfinite(item["ecg"].numpy()).all()
    ecg_only = StoreDataset(phantom_store, "ecg_only", fields=("ecg", "phase"))
    assert len(ecg_only) > 0
    with pytest.raises(InputError, match="no cines"):
        StoreDataset(phantom_store, "ecg_only", fields=("cine",))


def test_phase_labels_match_true_rpeaks(phantom_store: Path) -> None:
    """The stored phase wraps (2π→0) are the phantom's true R-peaks: F1 ≥ 0.99 within 20 ms."""
    scores = []
    for split in ("train", "ecg_only"):
        ds = StoreDataset(phantom_store, split, fields=("phase",))
        for i, row in enumerate(ds.rows):
            phase = ds.array("phase")[i].astype(np.float32)
            known = np.flatnonzero(np.isfinite(phase))
            wraps = known[1:][np.diff(phase[known]) < -np.pi]
            found = np.concatenate([[known[0]], wraps])  # the first known sample is the first R-peak
            true = np.array([int(v) for v in row["rpeak_samples"].split()])
            scores.append(rpeak_f1(true, found, tol_samples=10))
    assert np.mean(scores) >= 0.99, np.mean(scores)


def test_bad_items_are_skipped_and_batch_goes_on(phantom_cohort: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(phantom_cohort, cohort)
    rows = _rows(cohort / "manifest.csv")
    train = [r for r in rows if r["split"] == "train"]
    (cohort / "empty.hea").write_text("")
    train[0]["ecg_path"] = "empty.hea"                    # empty file
    train[1]["ecg_path"] = "../outside.hea"               # leaves the manifest's folder
    train[2]["cmr_path"] = ""                             # paired split without a cine
    train[3]["split"] = "holdout"                         # unknown split
    _write_rows(cohort / "manifest.csv", rows)
    summary = prepare(cohort / "manifest.csv", tmp_path / "store")
    reasons = {sid: reason for sid, _, reason in summary.skipped}
    assert set(reasons) == {train[i]["subject_id"] for i in range(4)}
    assert "empty" in reasons[train[0]["subject_id"]]
    assert "leaves the manifest's folder" in reasons[train[1]["subject_id"]]
    assert "cmr_path is empty" in reasons[train[2]["subject_id"]]
    assert "unknown split" in reasons[train[3]["subject_id"]]
    skipped = _rows(tmp_path / "store" / "skipped.csv")
    assert len(skipped) == 4
    kept = StoreDataset(tmp_path / "store", "train")
    assert len(kept) == len(train) - 4
    assert train[4]["subject_id"] in {r["subject_id"] for r in kept.rows}


class SimulatedCrash(RuntimeError):
    pass


def test_prepare_resumes_after_interruption(phantom_cohort: Path, tmp_path: Path, monkeypatch) -> None:
    calls, crashed = [], []
    real = store_mod.prepare_item

    def flaky(manifest, row, position, paired):
        calls.append(row["subject_id"])
        if len(calls) == 5 and not crashed:
            crashed.append(True)
            raise SimulatedCrash
        return real(manifest, row, position, paired)

    monkeypatch.setattr(store_mod, "prepare_item", flaky)
    out = tmp_path / "store"
    with pytest.raises(SimulatedCrash):
        prepare(phantom_cohort / "manifest.csv", out)
    assert not out.exists() and out.with_name("store.partial").exists()  # never visible half-written
    first = list(calls)
    calls.clear()
    prepare(phantom_cohort / "manifest.csv", out)
    assert set(first[:4]).isdisjoint(calls)  # finished items were not redone
    n_rows = len(_rows(phantom_cohort / "manifest.csv"))
    assert len(first) - 1 + len(calls) == n_rows
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(store_mod, "prepare_item", real)
    prepare(phantom_cohort / "manifest.csv", fresh)
    for split in read_store_meta(fresh)["splits"]:
        for name in ("ecg", "phase", "cine"):
            if (fresh / split / f"{name}.npy").exists():
                np.testing.assert_array_equal(np.load(fresh / split / f"{name}.npy"), np.load(out / split / f"{name}.npy"))


def test_prepare_in_parallel_equals_serial(phantom_cohort: Path, phantom_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    prepare(phantom_cohort / "manifest.csv", out, workers=2)
    np.testing.assert_array_equal(np.load(out / "train" / "cine.npy"), np.load(phantom_store / "train" / "cine.npy"))
    np.testing.assert_array_equal(np.load(out / "test" / "ecg.npy"), np.load(phantom_store / "test" / "ecg.npy"))


def test_manifest_errors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "manifest.csv"
    bad.write_text("subject_id,split\n1,train\n")
    with pytest.raises(InputError, match="missing required column"):
        read_manifest(bad)
    assert main(["prepare", "--manifest", str(bad), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ecg_path" in err and "Traceback" not in err
    assert main(["prepare", "--manifest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "s")]) == 2


def test_existing_store_is_not_overwritten(phantom_cohort: Path, phantom_store: Path) -> None:
    with pytest.raises(InputError, match="already exists"):
        prepare(phantom_cohort / "manifest.csv", phantom_store)


def test_synthetic_store_fixture(synthetic_store: Path) -> None:
    ds = StoreDataset(synthetic_store, "val", fields=("ecg", "cine"))
    assert len(ds) == 4 and set(ds[1]) == {"index", "ecg", "cine"}
    with pytest.raises(InputError, match="no split"):
        StoreDataset(synthetic_store, "holdout")
