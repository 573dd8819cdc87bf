"""3D-VAE speed and memory on CPU: encode and decode one cine (1×50×96×96), per preset and thread count.

    .venv/bin/python benchmarks/vae.py                          # tiny, paper, public at 1 and 2 threads
    .venv/bin/python benchmarks/vae.py --presets paper --threads 2 --repeats 3

Each preset runs in its own child process so that its peak resident memory (``ru_maxrss``) is its own;
tracemalloc does not see torch's allocations. Prints one row per preset and thread count: parameters,
GFLOP per encode/decode (``torch.utils.flop_counter``: convolutions and matmuls; norms and activations are
not counted), seconds per encode/decode (mean of ``--repeats`` calls after a warm-up call; one call where a
call takes over 10 s), achieved GFLOP/s and its share of the fp32 matmul throughput measured in the same
process at the same thread count just before, the child's peak RSS, and for ``tiny`` the time of one
training step (batch 2). ``public`` is the public code's widths and 3-D convolutions (configs/vae/public.yaml)
with our factorised latent-scale attention (its own full attention needs 26.5 GB for one video).
Targets (issue 4): ``paper`` encodes and decodes one video in 24 GB; decode ≤ ~0.5 TFLOP so that the
whole generation fits ~10 s per video on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

SLOW_CALL_S = 10.0


def child(preset: str, threads: list[int], repeats: int) -> dict:
    """Measure one preset in this (fresh) process; returns a JSON-able row with one timing per thread count."""
    import torch

    from ecgflowcmr.config import load_config
    from ecgflowcmr.evaluation.speed import counted_flops, matmul_gflops, timed
    from ecgflowcmr.models.vae3d import VideoVAE
    from ecgflowcmr.training.stages.vae import RunConfig

    torch.manual_seed(0)
    cfg = load_config(RunConfig, "vae", preset).model
    model = VideoVAE(cfg).eval()
    x = torch.rand(1, 1, cfg.frames, cfg.size, cfg.size) * 2 - 1
    z = torch.randn(1, *cfg.latent_shape)
    row: dict = {"preset": preset, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "timings": []}
    with torch.no_grad():
        row["enc_gflop"] = counted_flops(lambda: model.encode_latent(x)) / 1e9  # doubles as a warm-up run
        row["dec_gflop"] = counted_flops(lambda: model.decode_latent(z)) / 1e9
        for n in threads:
            torch.set_num_threads(n)
            timing = {"threads": n, "matmul_gflops": matmul_gflops()}  # load on a shared machine changes it
            for name, fn in (("enc_s", lambda: model.encode_latent(x)), ("dec_s", lambda: model.decode_latent(z))):
                first = timed(fn, repeats=1, warmup=0)
                timing[name] = first if first > SLOW_CALL_S else timed(fn, repeats=repeats, warmup=0)
            row["timings"].append(timing)
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    if preset == "tiny":  # the demo's budget is set by training steps
        torch.set_num_threads(threads[-1])
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = {"cine": torch.rand(2, 1, cfg.frames, cfg.size, cfg.size) * 2 - 1}

        def step() -> None:
            loss, _ = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

        row["train_step_b2_s"] = timed(step, repeats=repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper", "public"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch thread counts to time")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per point (mean), after a warm-up")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.repeats)))
        return

    import torch

    print(f"CPU: {os.cpu_count()} logical cores, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f} (the machine is shared: timings under load are upper bounds)\n")
    header = (f"{'preset':<7}{'params':>9}{'enc GFLOP':>10}{'dec GFLOP':>10}{'thr':>4}{'enc s':>8}{'dec s':>8}"
              f"{'GFLOP/s':>9}{'matmul':>8}{'of matmul':>10}{'peak RSS':>10}{'train step b2':>15}")
    print(header)
    print("-" * len(header))
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--child", preset, "--repeats", str(args.repeats),
               "--threads", *map(str, args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        train = f"{r['train_step_b2_s']:.2f} s" if "train_step_b2_s" in r else "-"
        for t in r["timings"]:
            rate = (r["enc_gflop"] + r["dec_gflop"]) / (t["enc_s"] + t["dec_s"])
            print(f"{r['preset']:<7}{r['params_M']:>8.2f}M{r['enc_gflop']:>10.1f}{r['dec_gflop']:>10.1f}"
                  f"{t['threads']:>4}{t['enc_s']:>8.2f}{t['dec_s']:>8.2f}{rate:>9.1f}{t['matmul_gflops']:>8.1f}"
                  f"{rate / t['matmul_gflops']:>10.0%}{r['peak_rss_gib']:>9.2f}G{train:>15}")
    print("\nGFLOP/s: (enc + dec GFLOP) ÷ (enc + dec s); matmul: fp32 2048² matmul GFLOP/s measured in the same "
          "process at the same thread count just before; peak RSS: ru_maxrss of the preset's child process "
          "(model + encode and decode of 1×50×96×96, no grad); target for paper: far below 24 GB.")


if __name__ == "__main__":
    main()
