"""3D-VAE memory and speed on CPU: encode and decode one cine (1×50×96×96), per preset.

Each preset runs in its own child process so that its peak resident memory (``ru_maxrss``) is its own;
tracemalloc does not see torch's allocations. Prints, per preset: parameters, GFLOP per encode/decode
(``torch.utils.flop_counter``), seconds per encode/decode (best of ``--repeats``), achieved GFLOP/s, peak
RSS and the RSS after building the model, and for ``tiny`` the time of one training step (batch 2) —
beside the machine's measured fp32 matmul throughput. The target (issue 4 §1): ``paper`` encodes and
decodes one video in 24 GB (the public code's decoder needs 26.5 GB without xformers).

    python benchmarks/vae.py [--presets tiny paper] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child(preset: str, repeats: int) -> dict:
    """Measure one preset in this (fresh) process; returns a JSON-able row."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ecgflowcmr.models.vae3d import PRESETS, VideoVAE

    torch.manual_seed(0)
    cfg = PRESETS[preset]
    model = VideoVAE(cfg).eval()
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    x = torch.rand(1, 1, cfg.frames, cfg.size, cfg.size) * 2 - 1
    with torch.no_grad():
        with FlopCounterMode(display=False) as enc_flops:  # doubles as the warm-up run
            z = model.encode_latent(x)
        with FlopCounterMode(display=False) as dec_flops:
            model.decode_latent(z)
        t_enc = min(_timed(lambda: model.encode_latent(x)) for _ in range(repeats))
        t_dec = min(_timed(lambda: model.decode_latent(z)) for _ in range(repeats))
    row = {
        "preset": preset,
        "matmul_gflops": matmul_gflops(),  # measured here too: load on a shared machine changes it
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "enc_gflop": enc_flops.get_total_flops() / 1e9,
        "dec_gflop": dec_flops.get_total_flops() / 1e9,
        "enc_s": t_enc,
        "dec_s": t_dec,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "model_rss_gib": rss_model,
    }
    if preset == "tiny":  # the demo's budget is set by training steps
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = {"cine": torch.rand(2, 1, cfg.frames, cfg.size, cfg.size) * 2 - 1}

        def step() -> None:
            loss, _ = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        row["train_step_b2_s"] = min(_timed(step) for _ in range(repeats))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.repeats)))
        return

    print(f"CPU: {os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f} (timings under load are upper bounds)")
    peak = matmul_gflops()
    print(f"measured fp32 matmul throughput (2048², best of 5): {peak:.1f} GFLOP/s\n")
    header = (f"{'preset':<7}{'params':>9}{'enc GFLOP':>11}{'enc s':>8}{'dec GFLOP':>11}{'dec s':>8}"
              f"{'GFLOP/s':>9}{'of matmul':>11}{'peak RSS':>10}{'model RSS':>11}{'train step b2':>15}")
    print(header)
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--child", preset, "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rate = (r["enc_gflop"] + r["dec_gflop"]) / (r["enc_s"] + r["dec_s"])
        peak = max(peak, r["matmul_gflops"])
        train = f"{r['train_step_b2_s']:.2f} s" if "train_step_b2_s" in r else "-"
        print(f"{r['preset']:<7}{r['params_M']:>8.2f}M{r['enc_gflop']:>11.1f}{r['enc_s']:>8.2f}"
              f"{r['dec_gflop']:>11.1f}{r['dec_s']:>8.2f}{rate:>9.1f}{rate / peak:>10.0%}"
              f"{r['peak_rss_gib']:>9.2f}G{r['model_rss_gib']:>10.2f}G{train:>15}")
    print(f"\nof matmul: against the best matmul throughput measured in any process ({peak:.1f} GFLOP/s); "
          "peak RSS: ru_maxrss of the child process (model + one encode and one decode of 1×50×96×96, "
          "no grad); target for paper: < 24 GB")


if __name__ == "__main__":
    main()
