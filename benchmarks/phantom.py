"""Phantom generation speed: subjects per second with 1 and 2 workers (target ≥ 50/s on 2 cores).

    .venv/bin/python benchmarks/phantom.py [--n 200] [--workers 1 2]

Prints a table, the per-stage cost of one worker (ECG, cine render, file writing), and two reference
throughputs of this machine (numpy element-wise, zlib level 1) so that results from a loaded machine
can be read as a fraction of what it can do. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from ecgflowcmr.phantom import PhantomConfig, make_cohort, simulate_subject
from ecgflowcmr.phantom.simulate import write_subject


def machine_reference() -> tuple[float, float]:
    """(numpy float32 multiply-add, GB/s touched; zlib level-1, MB/s on noisy uint8)."""
    a = np.random.default_rng(0).random((50, 128, 128), dtype=np.float32)
    b = np.empty_like(a)
    t = time.perf_counter()
    for _ in range(50):
        np.multiply(a, 1.01, out=b)
        b += a
    numpy_gbs = 50 * 4 * a.nbytes / (time.perf_counter() - t) / 1e9
    img = (np.random.default_rng(1).normal(60, 20, (50, 128, 128)).clip(0, 255)).astype(np.uint8).tobytes()
    t = time.perf_counter()
    for _ in range(5):
        zlib.compress(img, 1)
    zlib_mbs = 5 * len(img) / (time.perf_counter() - t) / 1e6
    return numpy_gbs, zlib_mbs


def stage_costs(n: int, folder: Path) -> dict[str, float]:
    """CPU milliseconds per subject for simulate (ECG only), simulate (with cine), and simulate + write."""
    cfg = PhantomConfig()
    (folder / "ecg").mkdir(parents=True)
    (folder / "cmr").mkdir()
    out = {}
    for name, fn in (("ECG + phenotypes", lambda i: simulate_subject(i, 0, cfg, with_cine=False)),
                     ("+ cine render", lambda i: simulate_subject(i, 0, cfg, with_cine=True)),
                     ("+ write files", lambda i: write_subject(i, 0, cfg, folder))):
        fn(0)
        t = time.process_time()
        for i in range(n):
            fn(i)
        out[name] = 1000 * (time.process_time() - t) / n
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="subjects per run (default 200)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    numpy_gbs, zlib_mbs = machine_reference()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f}; numpy {numpy_gbs:.1f} GB/s, "
          f"zlib-1 {zlib_mbs:.0f} MB/s")
    with tempfile.TemporaryDirectory() as tmp:
        costs = stage_costs(min(args.n, 30), Path(tmp) / "stages")
        print("\nper subject, 1 worker (CPU ms, cumulative; the write step includes the ecg_only subjects):")
        for name, ms in costs.items():
            print(f"  {name:<18} {ms:7.1f}")
        print(f"\n{'workers':>7} {'subjects':>8} {'seconds':>8} {'subjects/s':>11} {'CPU ms/subject':>15} "
              f"{'CPU-bound subjects/s':>21}")
        for workers in args.workers:
            folder = Path(tmp) / f"w{workers}"
            t, cpu = time.perf_counter(), _cpu_seconds()
            make_cohort(folder, n=args.n, seed=0, workers=workers)
            seconds, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
            # What the run would reach if each worker had a core to itself (the machine may be shared).
            bound = workers * args.n / cpu
            print(f"{workers:>7} {args.n:>8} {seconds:>8.2f} {args.n / seconds:>11.1f} {1000 * cpu / args.n:>15.1f} "
                  f"{bound:>21.1f}")
            shutil.rmtree(folder)
    print("\n(30% of subjects are ecg_only by default: no cine is rendered or written for them.)")


if __name__ == "__main__":
    main()
