"""Speed measurement shared by the benchmarks: the machine's matmul peak, timed calls, counted FLOPs.

Every benchmark prints the measured fp32 (or bf16) matmul throughput beside its own achieved FLOP/s, so
results read as a fraction of what the machine can do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU) so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device | str = "cpu", seconds: float = 1.5, n: int = 2048,
                  dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a repeated n×n matmul: the machine's practical peak for dense layers."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def timed(fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 3,
          warmup: int = 1) -> float:
    """Seconds per call of ``fn`` (mean over ``repeats`` after ``warmup`` calls)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def counted_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` as torch's FlopCounterMode counts them (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], device: torch.device, peak: float) -> None:
    """The benchmarks' table: the device, its measured matmul peak, then left-aligned columns."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"device {device} ({torch.get_num_threads()} threads); fp32 2048² matmul: {peak:.1f} GFLOP/s")
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
