"""Speed of ``ecgflowcmr evaluate`` at scale: each step's seconds, its share of the matmul peak, and the time
1,000 test subjects would take here and on a 70 GFLOP/s machine (issue 9 §6: under 10 minutes on the 2-core
CPU with the baselines subsampled, stated in metrics.json).

Without ``--data`` it synthesises the store: a phantom cohort (seed 2) split into about ``--max-test`` test
and ``--max-train`` training subjects (plus 16 validation subjects for the segmenter's Dice), prepared into
``OUT/store`` (reused when present). Then it runs the ``evaluate`` CLI itself (under ``torchrun`` with
``--nproc`` > 1, one thread per rank, as the issue's 2-core machine would) into ``OUT/evaluation`` and
reads its metrics.json. Every step's FLOPs are counted with torch's FlopCounterMode on one unit (a cine
generated from its ECG, a VAE encode + decode, a segmented frame) times the units the step processed.

Usage: python benchmarks/evaluate.py --model RUN/flow --out DIR [--data STORE] [--max-test 1000]
       [--max-train 240] [--max-baseline 200] [--nproc 2] [--seg-config default] [--segmenter SEGDIR]
       [--fid-frames 5] [--weights DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ecgflowcmr.evaluation.speed import counted_flops, matmul_gflops

TARGET_GFLOPS = 70.0
"""The slower 2-core machine the issue's budget is set for."""
FRAMES = 50


def synthesise_store(out: Path, n_test: int, n_train: int, seed: int = 2) -> Path:
    """A phantom store with ≥ n_test test and ≥ n_train training subjects (splits are drawn at random, so
    the cohort is 15 % larger than their sum; ``evaluate --max-test/--max-train`` take the first ones)."""
    from ecgflowcmr.phantom import make_cohort
    from ecgflowcmr.phantom.config import PhantomConfig
    from ecgflowcmr.store.prepared import prepare

    store = out / "store"
    if (store / "store.json").exists():
        return store
    n_val = 16
    total = n_test + n_train + n_val
    fractions = (n_train / total, n_val / total, n_test / total)
    cohort = out / "cohort"
    if not (cohort / "manifest.csv").exists():
        t = time.perf_counter()
        make_cohort(cohort, n=math.ceil(1.15 * total) + 20, seed=seed, workers=os.cpu_count() or 1,
                    config=PhantomConfig(ecg_only_fraction=0.0, split_fractions=fractions))
        print(f"phantom cohort: {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    prepare(cohort / "manifest.csv", store, workers=os.cpu_count() or 1)
    print(f"prepare: {time.perf_counter() - t:.0f} s", flush=True)
    return store


def unit_flops(model: Path, store: Path, segmenter: Path) -> dict[str, float]:
    """FLOPs of one generated cine (ECG encode, sampling, decode), one VAE reconstruction and one
    segmented frame, as FlopCounterMode counts them (matmuls and convolutions)."""
    from ecgflowcmr.evaluation.instrument import Cohort, vae_reconstruct
    from ecgflowcmr.evaluation.segmentation import load_segmenter
    from ecgflowcmr.pipeline import load_pipeline

    pipe = load_pipeline(model)
    test = Cohort.from_store(store, "test", 1)
    seg = load_segmenter(segmenter)
    x = torch.from_numpy(test.ecgs[:1])
    return {
        "generate": counted_flops(lambda: pipe.generate_batch(x, seed=[0])),
        "vae": counted_flops(lambda: vae_reconstruct(pipe, test.cines01[:1])),
        "segment": counted_flops(lambda: seg.net(torch.zeros(1, 1, *test.cines01.shape[-2:]))),
    }


def step_units(n: int, nb: int, m: int) -> dict[str, tuple[float, str, str | None]]:
    """Per step: (units it processes with n test, nb baseline and m training subjects, unit name, the
    ``unit_flops`` key of one unit or None when it has no counted network work)."""
    cines_segmented = 2 * n + 2 * nb + 2 * m + 1  # real + generated test, shuffled, VAE, real + generated train, template
    return {
        "generate_test_s": (n, "cine", "generate"),
        "generate_shuffled_s": (nb, "cine", "generate"),
        "generate_train_s": (m, "cine", "generate"),
        "baselines_s": (nb, "cine", "vae"),
        "segment_s": (cines_segmented * FRAMES, "frame", "segment"),
        "scores_s": (n, "subject", None),
        "quality_s": (n + 5 * nb, "cine", None),  # generated + 4 baselines + the real floor (Table 1)
    }


def report(metrics: dict, flops: dict[str, float], peak: float, nproc: int, target_n: int) -> None:
    """The table: each step's seconds, per unit, GFLOP/s and share of the peak, and the projection."""
    subjects = metrics["instrument"]["subjects"]
    n, nb, m = int(subjects["test"]), int(subjects.get("baseline", subjects["test"])), int(subjects["train"])
    timings = metrics["speed"]["timings_s"]
    cap = subjects.get("max_baseline")
    now = step_units(n, nb, m)
    then = step_units(target_n, target_n if cap is None else min(target_n, int(cap)), m)
    print(f"\nmachine: fp32 2048² matmul {peak:.0f} GFLOP/s ({torch.get_num_threads()} threads); evaluate ran on "
          f"{nproc} process(es); {n} test, {nb} baseline (--max-baseline {cap}), {m} training subjects")
    header = f"{'step':22s} {'s':>8s} {'units':>8s} {'unit':6s} {'ms/unit':>8s} {'GFLOP/s':>8s} {'% peak':>7s} " \
             f"{f'{target_n} here':>10s} {f'@{TARGET_GFLOPS:.0f} GF/s':>10s}"
    print(header)
    total_here = total_then = 0.0
    for name in [*now, "agreement_s", "segmenter_training_s", "read_store_s"]:  # the last three: fixed costs
        seconds = float(timings.get(name, 0.0))
        if name in now:
            units, unit, key = now[name]
            at_target = seconds * then[name][0] / max(units, 1)
            rate = flops[key] * units / seconds / 1e9 if key and seconds > 0 else float("nan")
            share = f"{rate / peak:7.0%}" if key and seconds > 0 else f"{'-':>7s}"
            per = f"{seconds / max(units, 1) * 1e3:8.2f}"
        else:
            units, unit, at_target, rate, share, per = 0, "fixed", seconds, float("nan"), f"{'-':>7s}", f"{'-':>8s}"
        slow = at_target * peak / TARGET_GFLOPS
        total_here += at_target
        total_then += slow
        print(f"{name:22s} {seconds:8.1f} {units:8.0f} {unit:6s} {per} {rate:8.1f} {share} {at_target / 60:9.1f}m "
              f"{slow / 60:9.1f}m")
    print(f"{'total':22s} {timings.get('before_report_s', float('nan')):8.1f} {'':8s} {'':6s} {'':8s} {'':8s} "
          f"{'':7s} {total_here / 60:9.1f}m {total_then / 60:9.1f}m")
    print(f"(projection: each step's measured seconds scaled by its units at {target_n} test subjects, same training "
          f"and baseline subjects; the last column also by {peak:.0f}/{TARGET_GFLOPS:.0f}, i.e. the same share of a "
          f"slower machine's peak; the report's rendering is not included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a bundle (the tiny demo's flow run)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="a store (default: synthesise OUT/store)")
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--max-train", type=int, default=240)
    parser.add_argument("--max-baseline", default="200", help="N or all (evaluate --max-baseline)")
    parser.add_argument("--nproc", type=int, default=2, help="evaluate's processes (torchrun when > 1)")
    parser.add_argument("--seg-config", default="default")
    parser.add_argument("--segmenter", type=Path, default=None, help="a trained segmenter (else trained once into "
                        "OUT/evaluation/segmenter and counted as a fixed step)")
    parser.add_argument("--fid-frames", type=int, default=5)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--target", type=int, default=1000, help="test subjects to project to (default 1,000)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.data or synthesise_store(args.out, args.max_test, args.max_train)
    evaluation = args.out / "evaluation"
    cli = ["evaluate", "--model", str(args.model), "--data", str(store), "--out", str(evaluation),
           "--max-test", str(args.max_test), "--max-train", str(args.max_train), "--max-baseline",
           str(args.max_baseline), "--seg-config", args.seg_config, "--fid-frames", str(args.fid_frames)]
    cli += ["--segmenter", str(args.segmenter)] if args.segmenter else []
    cli += ["--weights", str(args.weights)] if args.weights else []
    env = dict(os.environ)
    if args.nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                   "-m", "ecgflowcmr", *cli]
        env["OMP_NUM_THREADS"] = "1"
    else:
        command = [sys.executable, "-m", "ecgflowcmr", *cli]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    wall = time.perf_counter() - start
    # the largest peak resident set of one process among the finished children: rank 0's under torchrun (Linux: kB)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    torch.set_num_threads(max(torch.get_num_threads(), args.nproc))  # the peak of all the cores the ranks use
    peak = matmul_gflops()
    metrics = json.loads((evaluation / "metrics.json").read_text())
    seg_dir = args.segmenter or evaluation / "segmenter"
    flops = unit_flops(args.model, store, seg_dir)
    print(f"\nevaluate wall time {wall:.0f} s (with the report); per unit: generated cine {flops['generate'] / 1e9:.1f} "
          f"GFLOP, VAE reconstruction {flops['vae'] / 1e9:.1f} GFLOP, segmented frame {flops['segment'] / 1e9:.3f} GFLOP")
    print(f"peak memory: {peak_gb:.1f} GB (max RSS of the largest child process: rank 0 of evaluate under torchrun, "
          f"or a phantom worker when the store was made in this run)")
    report(metrics, flops, peak, args.nproc, args.target)


if __name__ == "__main__":
    main()
