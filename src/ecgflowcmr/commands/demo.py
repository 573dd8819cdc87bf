"""``make demo`` / ``ecgflowcmr demo``: the whole pipeline on the phantom at ``tiny`` size.

phantom → prepare → train PA-MAE → train VAE (+ template) → train flow (+ bundle) → generate the test
split → ``ecgflowcmr evaluate`` into ``OUT/evaluation/`` → ``OUT/report.html`` (real vs generated cines with
the ECG beneath, loss curves, Table 1 and the instrument's headline beside floors and ceiling, metrics) and
``OUT/metrics.json``. Each training stage gets a wall-time budget so the whole demo fits in ~15 minutes
on a 2-core CPU. Rerunning continues: finished steps are not redone.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from ecgflowcmr.commands.demo_report import write_report

# Wall-time budget per stage (seconds) for the full demo, and step caps for --quick (tests).
BUDGET_S = {"pamae": 60, "vae": 200, "flow": 120}
QUICK_STEPS = {"pamae": 4, "vae": 4, "flow": 4}
N_SUBJECTS = 240
# Evaluation caps: finalize measures on this many held-out items so the demo keeps its time budget.
EVAL_SETS = {"pamae": [], "vae": ["eval.max_items=12"], "flow": ["eval.max_items=8"]}
# The evaluation in the demo: the "demo" segmenter preset (≤ 60 s of training), the instrument on at most
# EVAL_TEST_SUBJECTS held-out and EVAL_TRAIN_SUBJECTS training subjects (generated and segmented again), and no
# Inception FID (the standard FID needs far more cines than a demo has; `ecgflowcmr evaluate` computes it).
# These and BUDGET_S keep the demo under 15 minutes on a 70 GFLOP/s 2-core CPU: the evaluation costs ~3× its
# seconds on a 210 GFLOP/s one, and the training stages stop at their budgets.
EVAL_TEST_SUBJECTS = 16
EVAL_TRAIN_SUBJECTS = 32
EVAL_FID_FRAMES = 0
# Full-demo step counts (the schedule's length); the wall-time budget above stops a slower machine early.
DEMO_STEPS = {"pamae": 400, "vae": 400, "flow": 600}


def _log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_demo(out: str | Path = "runs/demo", n: int | None = None, quick: bool = False) -> Path:
    """Run every stage into ``out``; returns the path of ``report.html``."""
    from ecgflowcmr.commands.evaluate import evaluate
    from ecgflowcmr.commands.generate import generate
    from ecgflowcmr.phantom import make_cohort
    from ecgflowcmr.store.prepared import prepare
    from ecgflowcmr.training.tasks import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = n or (40 if quick else N_SUBJECTS)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    cohort = out / "cohort"
    if not (cohort / "manifest.csv").exists():
        _log(f"simulating a phantom cohort of {n} subjects")
        make_cohort(cohort, n=n, seed=0, workers=2)
    timings["phantom_s"] = time.perf_counter() - t0

    store = out / "store"
    if not (store / "store.json").exists():
        _log("preparing the training store")
        _log(str(prepare(cohort / "manifest.csv", store, workers=2)).splitlines()[0])
    timings["prepare_s"] = time.perf_counter() - t0 - timings["phantom_s"]

    runs = {stage: out / stage for stage in ("pamae", "vae", "flow")}
    for stage in ("pamae", "vae", "flow"):
        t = time.perf_counter()
        if not (runs[stage] / "metrics.json").exists():
            sets = ([f"train.steps={QUICK_STEPS[stage]}", "train.val_every=2", "train.ckpt_every=2"] if quick
                    else [f"train.time_limit_s={BUDGET_S[stage]}", f"train.steps={DEMO_STEPS[stage]}"]) + EVAL_SETS[stage]
            _log(f"training {stage} (tiny{', quick' if quick else f', ≤ {BUDGET_S[stage]} s'})")
            resume = "latest" if (runs[stage] / "checkpoints").exists() else None
            extra = {"pamae": runs["pamae"], "vae": runs["vae"]} if stage == "flow" else {}
            train(stage, data=store, out=runs[stage], config="tiny", sets=sets, resume=resume, **extra)
        timings[f"train_{stage}_s"] = time.perf_counter() - t

    t = time.perf_counter()
    test_manifest = _test_manifest(cohort)
    _log("generating cines for the test split")
    summary = generate(runs["flow"], test_manifest, out / "generated", formats=["nii", "npy"], batch_size=8)
    _log(str(summary))
    timings["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    evaluation = out / "evaluation"
    if not (evaluation / "metrics.json").exists():
        _log("evaluating: segmenter, instrument (floors, baselines, ECG ceiling), Table 1")
        evaluate(runs["flow"], store, evaluation, seg_config="tiny" if quick else "demo",
                 max_test=None if quick else EVAL_TEST_SUBJECTS, max_train=8 if quick else EVAL_TRAIN_SUBJECTS,
                 fid_frames=0 if quick else EVAL_FID_FRAMES, examples=2)
    timings["evaluate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    report = write_report(out, store, runs, summary, timings, evaluation=evaluation)
    timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    _log(f"done in {timings['total_s']:.0f} s: {report}")
    return report


def _test_manifest(cohort: Path) -> Path:
    """The cohort's test rows as their own manifest, beside the original (paths stay valid)."""
    with open(cohort / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["split"] == "test"]
        columns = reader.fieldnames or []
    path = cohort / "test_manifest.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
