"""DiT speed: time and FLOPs per network pass and per video (K sampling passes), against matmul throughput.

    .venv/bin/python benchmarks/dit.py                  # tiny, paper, paper-alternating, public reference
    .venv/bin/python benchmarks/dit.py --quick          # tiny and paper at batch 1 only
    .venv/bin/python benchmarks/dit.py --device cuda --bf16

Prints one table. FLOPs per pass are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
attention; elementwise ops are not counted). The machine's fp32 matmul throughput is measured with a
2048×2048 matmul loop right before each configuration, so every row reads as a fraction of what the
machine could do at that moment (other processes on a shared machine move both numbers).
"public_reference" is the public code's cost at our shapes: one token per latent voxel (7,200 tokens),
≈73M parameters, 20 passes per video (10 midpoint steps with classifier-free guidance: the 2 guidance
branches of a pass are counted as 2 network passes of batch 1).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch

from ecgflowcmr.evaluation.speed import counted_flops, matmul_gflops, sync
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.flow.sampler import sample
from ecgflowcmr.models.dit import PRESETS, DiT, DiTConfig, count_parameters

PAPER_STEPS = FlowConfig().sample_steps


def inputs(cfg: DiTConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    z = torch.randn(batch, cfg.latent_channels, cfg.frames, cfg.latent_size, cfg.latent_size, device=device)
    return z, torch.rand(batch, device=device), torch.randn(batch, cfg.frames, cfg.cond_dim, device=device)


def pass_flops(cfg: DiTConfig) -> float:
    """FLOPs of one batch-1 pass, counted on the meta device (no compute)."""
    with torch.device("meta"), torch.no_grad():
        net = DiT(cfg)
        return counted_flops(lambda: net(*inputs(cfg, 1, torch.device("meta"))))


@torch.no_grad()
def seconds_per_pass(net: DiT, batch: int, device: torch.device, repeats: int, autocast, warmup: bool = True) -> float:
    """Median seconds of one pass; passes slower than 5 s are timed once."""
    args = inputs(net.config, batch, device)
    with autocast():
        times = []
        if warmup:
            start = time.perf_counter()
            net(*args)
            sync(device)
            if time.perf_counter() - start > 5:
                repeats = 1
        for _ in range(repeats):
            start = time.perf_counter()
            net(*args)
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def seconds_per_sampled_video(net: DiT, steps: int, device: torch.device, autocast) -> float:
    """One full Euler sampling call (steps passes) for one video, as the pipeline runs it."""
    cfg = net.config
    flow = FlowMatching(FlowConfig(dit=cfg, sample_steps=steps)).to(device)
    flow.dit = net
    cond = inputs(cfg, 1, device)[2]
    with autocast():
        start = time.perf_counter()
        sample(flow, cond, steps=steps, generator=torch.Generator(device=device).manual_seed(0))
        sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--batches", default="1,2,4", help="batch sizes to try (per-video time at each)")
    parser.add_argument("--no-public", action="store_true", help="skip the public reference (one ~7-s pass)")
    parser.add_argument("--steps", type=int, default=PAPER_STEPS, help="sampling passes per video (ours)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per point (median)")
    parser.add_argument("--quick", action="store_true", help="tiny and paper at batch 1 only")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bf16 and device.type != "cuda":
        parser.error("--bf16 is for CUDA only (on CPU it is far slower than fp32)")
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext)
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]

    paper = PRESETS["paper"]
    rows = [("tiny", PRESETS["tiny"], args.steps, batches),
            ("paper", paper, args.steps, batches)]
    if not args.quick:
        rows.append(("paper alternating", dataclasses.replace(paper, attention="alternating"), args.steps, batches))
    if not (args.quick or args.no_public):
        rows.append(("public_reference", PRESETS["public_reference"], 20, [1]))

    print(f"device {device}, threads {torch.get_num_threads()}, fp32{' + bf16 autocast' if args.bf16 else ''}; "
          f"our sampling: {args.steps} Euler passes per video, public: 20")
    header = (f"{'config':<18} {'params':>7} {'tok/vid':>7} {'GFLOP/pass':>10} {'batch':>5} {'s/pass':>8} "
              f"{'s/pass/vid':>10} {'passes':>6} {'s/video':>8} {'GFLOP/s':>8} {'matmul':>7} {'of peak':>7}")
    print(header)
    print("-" * len(header))
    for name, cfg, passes, sizes in rows:
        net = DiT(cfg).to(device).eval()
        flops = pass_flops(cfg)
        best = None
        for batch in sizes:
            peak = matmul_gflops(device)
            public = name == "public_reference"
            per_pass = seconds_per_pass(net, batch, device, 1 if public else args.repeats, autocast, not public)
            per_video = per_pass / batch
            achieved = flops * batch / per_pass / 1e9
            print(f"{name:<18} {count_parameters(net) / 1e6:>6.1f}M {cfg.frames * cfg.tokens_per_frame:>7} "
                  f"{flops / 1e9:>10.1f} {batch:>5} {per_pass:>8.3f} {per_video:>10.3f} {passes:>6} "
                  f"{per_video * passes:>8.2f} {achieved:>8.1f} {peak:>7.1f} {achieved / peak:>6.0%}")
            best = min(best or (per_video, batch), (per_video, batch))
        if name != "public_reference":
            line = f"{'':<18} best batch {best[1]}: {best[0] * passes:.2f} s/video"
            if best[0] * passes < 15:  # check the estimate against one real sampling call
                sampled = seconds_per_sampled_video(net, passes, device, autocast)
                line += f"; one full sample() call at batch 1 ({passes} Euler steps): {sampled:.2f} s"
            print(line)
    print("s/pass/vid = s/pass ÷ batch; s/video = s/pass/vid × passes; 'of peak' = GFLOP/s ÷ matmul GFLOP/s "
          "measured just before the row.")


if __name__ == "__main__":
    main()
