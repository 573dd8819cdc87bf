"""Speed of ``ecgflowcmr evaluate``: seconds per step and per test subject, and the projection to 1,000.

Runs the whole evaluation of a trained bundle on a store (``--max-test`` subjects, ``--max-train`` training
subjects, ``--fid-frames`` Inception frames per cine) and prints each step's wall time from the run's
metrics.json, per test subject, with the time 1,000 test subjects would take at that rate (generation and
segmentation grow with the subjects; segmenter training and fixed costs do not). The machine's measured matmul
throughput is printed beside it.

Usage: python benchmarks/evaluate.py --model RUN/flow --data STORE --out DIR [--segmenter SEGDIR]
       [--max-test N] [--max-train N] [--fid-frames K]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ecgflowcmr.commands.evaluate import evaluate
from ecgflowcmr.evaluation.speed import matmul_gflops

FIXED = {"segmenter_training_s", "read_store_s", "agreement_s", "scores_s", "total_s", "before_report_s",
         "quality_s", "generate_train_s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--segmenter", type=Path, default=None)
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--fid-frames", type=int, default=5)
    args = parser.parse_args()
    peak = matmul_gflops()
    start = time.perf_counter()
    path = evaluate(args.model, args.data, args.out, segmenter=args.segmenter, max_test=args.max_test,
                    max_train=args.max_train, fid_frames=args.fid_frames)
    wall = time.perf_counter() - start
    metrics = json.loads(path.read_text())
    n = int(metrics["instrument"]["subjects"]["test"])
    timings = metrics["speed"]["timings_s"]
    print(f"machine matmul peak {peak:.0f} GFLOP/s; {n} test subjects, "
          f"{metrics['instrument']['subjects']['train']} training subjects, FID frames {args.fid_frames}")
    print(f"{'step':42s} {'s':>9s} {'s/subject':>10s} {'at 1,000':>10s}")
    per_subject_total = 0.0
    for name, seconds in timings.items():
        if name.startswith("quality_") and name != "quality_s":
            continue  # the per-source parts of quality_s
        scales = name not in FIXED or name == "quality_s"
        per = seconds / n if scales else 0.0
        per_subject_total += per
        print(f"{name:42s} {seconds:9.1f} {per if scales else float('nan'):10.2f} "
              f"{(per * 1000 if scales else seconds) / 60:9.1f}m")
    fixed = sum(timings.get(k, 0.0) for k in ("segmenter_training_s", "generate_train_s"))
    print(f"wall {wall:.0f} s; projected for 1,000 test subjects: {(per_subject_total * 1000 + fixed) / 60:.1f} min "
          f"(same training subjects)")


if __name__ == "__main__":
    main()
