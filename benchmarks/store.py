"""Prepare rate and random-access read rate of the training store (target ≥ 1,000 items/s read on 2 cores).

Usage: python benchmarks/store.py [--n 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="phantom subjects")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from ecgflowcmr.phantom import make_cohort
    from ecgflowcmr.store.prepared import StoreDataset, prepare

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-store-"))
    make_cohort(work / "cohort", n=args.n, seed=0, workers=2)
    rows = []
    for workers in (1, 2):
        out = work / f"store-w{workers}"
        t = time.perf_counter()
        summary = prepare(work / "cohort" / "manifest.csv", out, workers=workers)
        seconds = time.perf_counter() - t
        rows.append((f"prepare, {workers} worker(s)", args.n / seconds, f"{seconds:.1f} s for {args.n} items"))
        del summary

    store = work / "store-w2"
    rng = np.random.default_rng(0)
    for fields in (("ecg", "phase"), ("ecg", "phase", "cine"), ("cine",)):
        ds = StoreDataset(store, "train", fields=fields)
        ds[0]  # map the files
        order = rng.integers(0, len(ds), size=3000)
        t = time.perf_counter()
        for i in order:
            ds[int(i)]
        seconds = time.perf_counter() - t
        rows.append((f"random read {'+'.join(fields)}", len(order) / seconds, "StoreDataset.__getitem__, warm cache"))

    import torch

    ds = StoreDataset(store, "train", fields=("ecg", "phase", "cine"))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, persistent_workers=True)
    for _ in loader:  # warm-up epoch
        pass
    t = time.perf_counter()
    n = 0
    for _ in range(3):
        for batch in loader:
            n += len(batch["index"])
    seconds = time.perf_counter() - t
    rows.append(("DataLoader, 2 workers, batch 8", n / seconds, "ecg+phase+cine, shuffled"))

    print(f"\nstore benchmark ({args.n} phantom subjects, {work})\n")
    print(f"| {'what':38s} | {'items/s':>9s} | note")
    print(f"|{'-' * 40}|{'-' * 11}|------")
    for what, rate, note in rows:
        print(f"| {what:38s} | {rate:9.1f} | {note}")


if __name__ == "__main__":
    main()
