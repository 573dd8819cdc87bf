"""The downstream experiment: folds, tasks, leakage guards, metrics, resume, outputs, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgflowcmr.config import load_config
from ecgflowcmr.downstream import experiment
from ecgflowcmr.downstream.cohort import build_task, real_cohort
from ecgflowcmr.downstream.config import DownstreamConfig
from ecgflowcmr.downstream.experiment import SyntheticPool, check_pools, run_experiment
from ecgflowcmr.downstream.metrics import classification_metrics, paired_difference, regression_metrics
from ecgflowcmr.downstream.report import write_outputs
from ecgflowcmr.errors import ConfigError, InputError

DIAGNOSES = ("normal", "hcm", "dcm", "rcm", "mi")
FAST = ["folds=2", "pretrain.steps=2", "pretrain.batch_size=4", "pretrain.ckpt_every=1", "finetune.epochs=1",
        "finetune.batch_size=4", "model.width=24", "model.heads=2", "model.depth=1", "model.decoder_width=16",
        "model.decoder_heads=2", "eval_batch_size=4", "pretrain_split=folds"]


def label_store(store: Path) -> Path:
    """Give a synthetic store's rows the phantom's label and phenotype columns (diagnosis cycles)."""
    k = 0
    for split in ("train", "val", "test"):
        path = store / split / "rows.csv"
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            d = DIAGNOSES[k % 5]
            row.update(diagnosis=d, cad=int(d == "mi"), cm=int(d in ("hcm", "dcm", "rcm")),
                       hf=int(d in ("dcm", "rcm")), lvedv_ml=100 + 3 * k, lvef_pct=50 + k % 7, qrs_ms=90)
            k += 1
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return store


@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_synthetic_store

    root = tmp_path_factory.mktemp("downstream")
    return label_store(make_synthetic_store(root / "store", {"train": 14, "val": 3, "test": 3}))


def pool(n: int, prefix: str = "E") -> SyntheticPool:
    cines = np.random.default_rng(1).integers(0, 256, (n, 50, 96, 96), dtype=np.uint8)
    return SyntheticPool("ecg", cines, [f"{prefix}{i:03d}" for i in range(n)])


def test_folds_are_subject_level_disjoint_stratified_and_seeded(labelled_store: Path) -> None:
    subjects = real_cohort(labelled_store, folds=4, seed=3)
    assert len(subjects) == 20 and len({s.subject_id for s in subjects}) == 20
    assert {s.fold for s in subjects} == {0, 1, 2, 3}
    for d in DIAGNOSES:  # 4 of each diagnosis → one per fold
        assert sorted(s.fold for s in subjects if s.row["diagnosis"] == d) == [0, 1, 2, 3]
    again = real_cohort(labelled_store, folds=4, seed=3)
    assert [s.fold for s in again] == [s.fold for s in subjects]
    other = real_cohort(labelled_store, folds=4, seed=4)
    assert [s.fold for s in other] != [s.fold for s in subjects]


def test_tasks_case_control_four_class_and_phenotypes(labelled_store: Path) -> None:
    subjects = real_cohort(labelled_store, folds=2, seed=0)
    cm = build_task("cm", subjects, 0, [])
    assert cm.labels is not None and cm.labels.sum() == len(cm.labels) / 2  # 1:1
    assert all(subjects[i].row["cm"] == "0" for i, y in zip(cm.members, cm.labels) if y == 0)
    cad = build_task("cad", subjects, 0, [])  # 4 cases, 4 normals: the controls are the normals
    assert cad.labels is not None and len(cad.labels) == 8
    assert all(subjects[i].row["diagnosis"] == "normal" for i, y in zip(cad.members, cad.labels) if y == 0)
    four = build_task("four_class", subjects, 0, [])
    assert {subjects[i].row["diagnosis"] for i in four.members} == {"normal", "hcm", "dcm", "rcm"}
    ph = build_task("phenotypes", subjects, 0, [])
    assert ph.columns == ("lvedv_ml", "lvef_pct")  # imaging columns only (qrs_ms is ECG)
    with pytest.raises(InputError):
        build_task("phenotypes", subjects, 0, ["rvedv_ml"])


def test_invalid_downstream_configs_raise() -> None:
    for sets in (["folds=1"], ["mix=[1, 1]"], ["mix=[-1]"], ["tasks=[survival]"], ["controls=[noise]"],
                 ["model.patch=20"], ["pretrain.steps=0"], ["nonsense=1"]):
        with pytest.raises(ConfigError):
            load_config(DownstreamConfig, "downstream", "tiny", sets)


def test_a_pack_is_reused_only_for_the_same_files(tmp_path: Path) -> None:
    from ecgflowcmr.downstream.synthetic import pack_pool
    from ecgflowcmr.io.cmr import write_nifti_cine

    rng = np.random.default_rng(0)
    for name in ("a", "b", "other_a"):
        write_nifti_cine(tmp_path / f"{name}.nii.gz", rng.random((50, 96, 96), dtype=np.float32))
    files = [("a", tmp_path / "a.nii.gz"), ("b", tmp_path / "b.nii.gz")]
    first = np.array(pack_pool("cines:x", files, tmp_path / "pack").cines)
    stamp = (tmp_path / "pack" / "files.sha256").stat().st_mtime_ns
    assert np.array_equal(pack_pool("cines:x", files, tmp_path / "pack").cines, first)
    assert (tmp_path / "pack" / "files.sha256").stat().st_mtime_ns == stamp  # reused, not packed again
    moved = pack_pool("cines:x", [("a", tmp_path / "other_a.nii.gz"), files[1]], tmp_path / "pack")
    assert moved.subject_ids == ["a", "b"] and not np.array_equal(moved.cines[0], first[0])  # the new file's
    assert np.array_equal(moved.cines[1], first[1])


def test_pools_refuse_real_subjects_and_too_few(labelled_store: Path) -> None:
    cfg = load_config(DownstreamConfig, "downstream", "tiny", [*FAST, "mix=[0, 1]"])
    subjects = real_cohort(labelled_store, cfg.folds, cfg.seed)
    leak = pool(12)
    leak.subject_ids[3] = subjects[0].subject_id
    with pytest.raises(InputError, match="also in the real cohort"):
        check_pools({"ecg": leak}, subjects, cfg)
    with pytest.raises(InputError, match="needs"):
        check_pools({"ecg": pool(5)}, subjects, cfg)
    assert len(check_pools({"ecg": pool(12)}, subjects, cfg)) == 12


def test_pretraining_never_sees_the_test_fold(labelled_store: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(DownstreamConfig, "downstream", "tiny", [*FAST, "mix=[0, 1]", "tasks=[cm]", "scratch=false"])
    synthetic = pool(12)
    seen: list[list[tuple[np.ndarray, int]]] = []
    original = experiment.pretrain_setup

    def spy(model, train_set, val_set=None):
        seen.append(list(train_set.items))
        return original(model, train_set, val_set)

    monkeypatch.setattr(experiment, "pretrain_setup", spy)
    rows = run_experiment(cfg, labelled_store, {"ecg": synthetic}, tmp_path / "out", log=lambda m: None)
    subjects = real_cohort(labelled_store, cfg.folds, cfg.seed)
    arrays = {split: np.load(labelled_store / split / "cine.npy", mmap_mode="r") for split in ("train", "val", "test")}
    assert len(seen) == 4  # 2 folds × (real, ecg@1)
    for run, items in enumerate(seen):
        fold = run // 2
        real = [np.asarray(a[i]) for a, i in items if a is not synthetic.cines]
        assert len(real) == sum(s.fold != fold for s in subjects)
        for s in subjects:  # a test subject's real cine is never among the pretraining items
            assert any(np.array_equal(arrays[s.split][s.index], c) for c in real) == (s.fold != fold)
        n_synthetic = len(items) - len(real)
        assert n_synthetic == (0 if run % 2 == 0 else len(real))
    assert {r["method"] for r in rows} == {"real", "ecg@1"}
    tested = [json.loads((tmp_path / "out" / "runs" / f"fold{k}" / "real" / "cm" / "result.json").read_text())
              for k in range(2)]
    assert set(tested[0]["subjects_test"]).isdisjoint(tested[1]["subjects_test"])


def test_shared_pretraining_on_a_reserved_split(labelled_store: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(DownstreamConfig, "downstream", "tiny",
                      [*FAST, "mix=[0, 1]", "tasks=[four_class]", "scratch=false", "pretrain_split=train"])
    seen: list[int] = []
    original = experiment.pretrain_setup

    def spy(model, train_set, val_set=None):
        seen.append(len(train_set))
        return original(model, train_set, val_set)

    monkeypatch.setattr(experiment, "pretrain_setup", spy)
    rows = run_experiment(cfg, labelled_store, {"ecg": pool(14)}, tmp_path / "out", log=lambda m: None)
    assert seen == [14, 28]  # once per method (the 14 train cines, + 14 synthetic), reused by fold 1
    assert sorted(p.parent.name for p in (tmp_path / "out" / "runs" / "shared").glob("*/pretrain")) == ["ecg@1", "real"]
    tested = {sid for k in range(2) for sid in json.loads(
        (tmp_path / "out" / "runs" / f"fold{k}" / "real" / "four_class" / "result.json").read_text())["subjects_test"]}
    with open(labelled_store / "train" / "rows.csv", newline="") as fh:
        assert tested.isdisjoint(r["subject_id"] for r in csv.DictReader(fh))
    assert {r["fold"] for r in rows} == {0, 1}


def test_plan_counts_the_work_the_experiment_does(labelled_store: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """plan() counts the pretrainings, fine-tuning runs, cine passes and predictions run_experiment does."""
    from ecgflowcmr.downstream.plan import Rates, plan, project

    cfg = load_config(DownstreamConfig, "downstream", "tiny", [*FAST, "mix=[0, 1]", "tasks=[cm, phenotypes]",
                                                                "controls=[]", "finetune.epochs=0",
                                                                "finetune.steps=2", "pretrain_split=train"])
    work = plan(cfg, labelled_store, supplied=1)
    passes = {"pretrain": 0, "finetune": 0, "runs": 0}
    original = experiment.fit_once

    def spy(setup, train, run_dir, run_config=None):
        summary = original(setup, train, run_dir, run_config)
        kind = "pretrain" if run_dir.name == "pretrain" else "finetune"
        passes[kind] += summary["steps"] * train.batch_size
        passes["runs"] += 1
        return summary

    monkeypatch.setattr(experiment, "fit_once", spy)
    rows = run_experiment(cfg, labelled_store, {"ecg": pool(14), "cines:given": pool(14)}, tmp_path / "out",
                          log=lambda m: None)
    # the supplied folder is pretrained on and fine-tuned like a generated source, but never generated
    assert work.sources == ["ecg"] and work.sizes["synthetic_needed"] == 14 and work.generated_per_source == 17
    assert work.pretrainings == 3 and work.pretrain_cines == passes["pretrain"] == 3 * 2 * 4
    assert work.finetunes + work.pretrainings == passes["runs"] == 3 + 4 * 2 * 2  # 4 methods, 2 folds, 2 tasks
    assert work.finetune_cines == passes["finetune"]
    assert work.predictions == sum(r["n_test"] for r in rows if r["metric"] in ("auc", "mean_r2"))
    seconds = project(work, Rates(1.0, 16.0, 32.0, 64.0, 0.5))
    assert seconds["generate"] == 17 and seconds["pretrain"] == 1.5
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"))


def test_a_rerun_with_other_sizes_refuses_the_old_runs(labelled_store: Path, tmp_path: Path) -> None:
    """Finished runs answer for the settings they were trained with: a rerun into the same folder with other
    fine-tuning or pretraining sizes stops with the setting named; bookkeeping (logging) may change."""
    sets = [*FAST, "mix=[0]", "tasks=[cm]"]
    cfg = load_config(DownstreamConfig, "downstream", "tiny", sets)
    rows = run_experiment(cfg, labelled_store, {}, tmp_path / "out", log=lambda m: None)
    again = load_config(DownstreamConfig, "downstream", "tiny", [*sets, "finetune.log_every=7"])
    assert run_experiment(again, labelled_store, {}, tmp_path / "out", log=lambda m: None) == rows
    for changed, name in (("finetune.epochs=2", "finetune.epochs 1.0 → 2.0"), ("pretrain.lr=0.1", "pretrain.lr")):
        other = load_config(DownstreamConfig, "downstream", "tiny", [*sets, changed])
        with pytest.raises(InputError, match=f"other settings \\({re.escape(name)}"):
            run_experiment(other, labelled_store, {}, tmp_path / "out", log=lambda m: None)


def test_fit_once_resume_equals_uninterrupted(tmp_path: Path) -> None:
    from ecgflowcmr.training.stages.cine_vit import fit_once, pretrain_setup, seed_init

    cfg = load_config(DownstreamConfig, "downstream", "tiny", FAST)
    items = experiment.CineItems([(pool(6).cines, i) for i in range(6)])
    train = load_config(DownstreamConfig, "downstream", "tiny", [*FAST, "pretrain.steps=4"]).pretrain

    def run(folder: Path, stop: int) -> torch.nn.Module:
        seed_init(0, 0, 0)
        setup = pretrain_setup(cfg.model, items)
        fit_once(setup, type(train)(**{**train.__dict__, "stop_at_step": stop}), folder)
        return setup.model

    whole = run(tmp_path / "whole", 0)
    first = run(tmp_path / "split", 2)
    assert not (tmp_path / "split" / "fit.json").exists()
    assert (tmp_path / "split" / "checkpoints").is_dir()  # the interrupted run keeps what it resumes from
    resumed = run(tmp_path / "split", 0)
    assert json.loads((tmp_path / "split" / "fit.json").read_text())["steps"] == 4
    assert not (tmp_path / "split" / "checkpoints").exists()  # a finished run keeps its weights only
    assert torch.equal(next(iter(run(tmp_path / "split", 0).state_dict().values())),
                       next(iter(resumed.state_dict().values())))  # and reloads them
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), resumed.state_dict().values()))


def test_metrics_closed_forms() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = {r["metric"]: r["value"] for r in classification_metrics(labels, probs, 2)}
    assert m["accuracy"] == 0.75 and m["auc"] == 1.0 and m["balanced_accuracy"] == 0.75
    truth = np.array([[1.0, np.nan], [2.0, 5.0], [3.0, 7.0]])
    pred = np.array([[1.0, 0.0], [2.0, 6.0], [4.0, 6.0]])
    r = {x["metric"]: x["value"] for x in regression_metrics(truth, pred, ["a_ml", "b_pct"])}
    assert r["mae:a_ml"] == pytest.approx(1 / 3) and r["r2:a_ml"] == pytest.approx(0.5)
    assert r["mae:b_pct"] == 1.0 and r["r2:b_pct"] == pytest.approx(0.0)
    assert r["mean_r2"] == pytest.approx(0.25)
    d = paired_difference([0.7, 0.8, 0.9], [0.6, 0.6, 0.6])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) · sd / √n
    assert d["diff"] == pytest.approx(0.2) and d["high"] - d["diff"] == pytest.approx(half)
    assert d["sd"] == pytest.approx(0.1)
    assert d["detectable"] == pytest.approx((4.302652729911275 + 1.0606601717798212) * 0.1 / math.sqrt(3))


def test_outputs_tables_csv_json_plots(tmp_path: Path) -> None:
    rows = []
    for fold in range(3):
        for method, source, mix, auc in (("scratch", "scratch", 0, 0.6), ("real", "real", 0, 0.7),
                                         ("ecg@1", "ecg", 1, 0.75), ("template@1", "template", 1, 0.74)):
            rows.append({"task": "cm", "method": method, "source": source, "mix": mix, "fold": fold,
                         "metric": "auc", "value": auc + 0.01 * fold, "n_train": 8, "n_test": 4})
            rows.append({"task": "phenotypes", "method": method, "source": source, "mix": mix, "fold": fold,
                         "metric": "r2:lvedv_ml", "value": auc - 0.2, "n_train": 8, "n_test": 4})
    files = write_outputs(tmp_path, rows, {"folds": 3, "seed": 0, "cohort": {"subjects": 12}})
    assert {f.name for f in files} >= {"results.csv", "results.json", "tables.md", "cm_auc.png",
                                       "phenotypes_r2_lvedv_ml.png"}
    tables = (tmp_path / "tables.md").read_text()
    assert "Table 2" in tables and "Table 3" in tables and "Table 4" in tables
    assert "| MAE + ecg 100 % | – | 0.760 ± 0.010 |" in tables
    assert "- cm (auc): MAE + template 100 % is worse than MAE + ecg 100 %" in tables  # −0.01 every fold
    result = json.loads((tmp_path / "results.json").read_text())
    control = [d for d in result["paired_differences"] if d["method"] == "template@1" and d["against"] == "ecg@1"]
    assert control[0]["diff"] == pytest.approx(-0.01)
    assert (tmp_path / "plots" / "cm_auc.png").read_bytes()[:4] == b"\x89PNG"
    # 4 comparisons (3 methods vs real, template vs ecg), each the same on every fold: sd 0, all seen
    assert "## How small a difference these folds can see" in tables
    assert "| cm (auc) | 4 | 0.000 (0.000–0.000) | ±0.000 | 0.000 (0.000–0.000) |" in tables


def test_report_section_reads_a_finished_folder(tmp_path: Path) -> None:
    from ecgflowcmr.downstream.report import report_section

    with pytest.raises(InputError, match=r"no tables\.md"):
        report_section(tmp_path)
    rows = [{"task": "cm", "method": m, "source": m, "mix": 0, "fold": k, "metric": "auc", "value": v * (1 + k),
             "n_train": 8, "n_test": 4} for k in range(2) for m, v in (("scratch", 0.3), ("real", 0.4))]
    write_outputs(tmp_path, rows, {"folds": 2})
    markdown, plots = report_section(tmp_path)
    assert markdown == (tmp_path / "tables.md").read_text()
    assert [name for name, _ in plots] == ["cm_auc"] and plots[0][1][:4] == b"\x89PNG"


@pytest.mark.slow
def test_cli_end_to_end_on_a_tiny_bundle(phantom_cohort: Path, phantom_store: Path, tmp_path: Path) -> None:
    """phantom → a few-step bundle → `ecgflowcmr downstream` → outputs; a rerun trains nothing."""
    from ecgflowcmr.cli import main
    from ecgflowcmr.phantom import make_cohort
    from ecgflowcmr.training.tasks import train

    manifest, store = phantom_cohort / "manifest.csv", phantom_store
    quick = ["train.steps=2", "train.val_every=0", "train.ckpt_every=0", "train.batch_size=2"]
    train("pamae", store, tmp_path / "pamae", sets=quick)
    train("vae", store, tmp_path / "vae", sets=[*quick, "eval.max_items=2"])
    train("flow", store, tmp_path / "flow", sets=[*quick, "eval.max_items=2"], pamae=tmp_path / "pamae",
          vae=tmp_path / "vae")
    out = tmp_path / "downstream"
    truth = tmp_path / "truth"  # the same cohort with the ECG-only subjects' true cines beside it
    make_cohort(truth, n=24, seed=7, ecg_only_cines=True)
    args = ["downstream", "--model", str(tmp_path / "flow"), "--data", str(store), "--ecg-only", str(manifest),
            "--out", str(out), "--mix", "0,0.5", "--tasks", "cm,phenotypes", "--controls", "template,shuffled",
            "--cines", f"truth={truth / 'ecg_only_cines'}", *[x for s in FAST for x in ("--set", s)]]
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    methods = {s["method"] for s in result["summary"]}
    assert methods == {"scratch", "real", "ecg@0.5", "template@0.5", "shuffled@0.5", "cines:truth@0.5"}
    tables = (out / "tables.md").read_text()
    assert "Table 3" in tables and "MAE + cines:truth 50 %" in tables
    assert result["generation"]["cines:truth"]["found"] == result["generation"]["cines:truth"]["needed"]
    true_ids = (out / "synthetic" / "cines-truth" / "pack" / "subjects.csv").read_text().split()[1:]
    true_cines = np.load(out / "synthetic" / "cines-truth" / "pack" / "cines.npy")
    assert true_cines.shape[0] == len(true_ids) and true_cines.std() > 0
    ids = (out / "synthetic" / "ecg" / "pack" / "subjects.csv").read_text().split()[1:]
    with open(manifest, newline="") as fh:
        split_of = {r["subject_id"]: r["split"] for r in csv.DictReader(fh)}
    assert ids and all(split_of[i] == "ecg_only" for i in ids)
    ecg = np.load(out / "synthetic" / "ecg" / "pack" / "cines.npy")
    blind = np.load(out / "synthetic" / "template" / "pack" / "cines.npy")
    shuffled = np.load(out / "synthetic" / "shuffled" / "pack" / "cines.npy")
    assert ecg.shape == blind.shape == shuffled.shape
    assert not np.array_equal(ecg, blind) and not np.array_equal(ecg, shuffled)
    done = sorted(out.glob("runs/*/*/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    assert main(args) == 0  # resumes: every run is reused
    assert [p.stat().st_mtime_ns for p in done] == stamps
    assert main([*args[:-2 * len(FAST)], "--data", str(tmp_path / "nowhere")]) == 2
    assert main([*args, "--cines", f"other={tmp_path / 'nowhere'}"]) == 2  # names the missing folder
    assert main([*args, "--cines", "noequals"]) == 2


def test_phantom_labels_follow_the_documented_rules(phantom_cohort: Path) -> None:
    with open(phantom_cohort / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        d = r["diagnosis"]
        assert r["cad"] == str(int(d == "mi"))
        assert r["cm"] == str(int(d in ("hcm", "dcm", "rcm")))
        assert r["hf"] == str(int(float(r["lvef_pct"]) < 40 or d in ("dcm", "rcm")))


def test_phantom_ecg_only_cohort_can_be_many_times_the_paired_one() -> None:
    from ecgflowcmr.phantom.cohort import draw_split
    from ecgflowcmr.phantom.config import PhantomConfig

    cfg = PhantomConfig(ecg_only_fraction=0.9)
    splits = [draw_split(np.random.default_rng([0, i]), cfg) for i in range(2000)]
    assert splits.count("ecg_only") >= 8 * (len(splits) - splits.count("ecg_only"))


def _downstream_rank(rank: int, port: int, store: Path, out: Path) -> None:
    """One of two processes with the environment torchrun would give it: the whole experiment under DDP."""
    import os

    from ecgflowcmr.downstream import run_downstream
    from ecgflowcmr.training import distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.teardown_distributed()  # forget the parent's single-process state
    torch.set_num_threads(1)
    dist.setup_distributed("cpu")
    cfg = load_config(DownstreamConfig, "downstream", "tiny",
                      [*FAST, "mix=[0, 1]", "tasks=[cm]", "scratch=false", "finetune.batch_size=2"])
    rows = run_experiment(cfg, store, {"ecg": pool(12)}, out, log=lambda m: None)
    (out / f"rows-rank{rank}.json").write_text(json.dumps(rows))
    run_downstream(cfg, store, {"ecg": pool(12)}, out)  # everything reused; rank 0 writes the outputs
    dist.teardown_distributed()


def test_two_gloo_ranks_run_the_experiment_once(labelled_store: Path, tmp_path: Path) -> None:
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    out.mkdir()
    ranks = [multiprocessing.get_context("fork").Process(target=_downstream_rank, args=(r, port, labelled_store, out))
             for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=300)
        assert p.exitcode == 0
    rank0, rank1 = (json.loads((out / f"rows-rank{r}.json").read_text()) for r in range(2))
    assert rank0 == rank1 and {r["method"] for r in rank0} == {"real", "ecg@1"}
    assert len(list(out.glob("runs/fold*/*/cm/result.json"))) == 4
    assert len(list(out.glob("runs/fold*/*/pretrain/fit.json"))) == 4
    assert (out / "results.csv").read_text().count("\n") == 1 + len(rank0)
