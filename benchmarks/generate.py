"""End-to-end generation speed: ECG → aligned tokens → flow sampling → VAE decode, per video.

For the ``tiny`` and ``paper`` presets (randomly initialised networks: speed does not depend on the
weights) at batch 1 and larger batches: seconds per video split into ECG encoding, sampling and decoding;
FLOPs per video; achieved GFLOP/s against the machine's measured matmul throughput. Beside it, the public
code's configuration at the same shapes (docs/decisions.md: one token per latent voxel, 20 network passes).

A preset may carry overrides of its stage configs after a colon, comma-separated, each ``stage.key=value``
(stage: pamae, vae or flow, keys as ``--set`` of ``ecgflowcmr train``); e.g. the cheaper variants of the
paper preset: ``paper:vae.model.factorise_time=true,flow.model.dit.attention=alternating,flow.model.sample_steps=3``.

Usage: python benchmarks/generate.py [--presets tiny paper SPEC ...] [--batches 1 2 4 8] [--device cpu|cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch

from ecgflowcmr.config import load_config
from ecgflowcmr.evaluation.speed import counted_flops, matmul_gflops, sync, timed
from ecgflowcmr.flow.objective import FlowMatching
from ecgflowcmr.models.pa_mae import PAMAE
from ecgflowcmr.models.vae3d import VideoVAE
from ecgflowcmr.pipeline import Pipeline
from ecgflowcmr.training.stages import flow as flow_stage
from ecgflowcmr.training.stages import pamae as pamae_stage
from ecgflowcmr.training.stages import vae as vae_stage
from ecgflowcmr.training.stages.flow import fit_to_upstream


def phantom_ecgs(n: int) -> np.ndarray:
    from ecgflowcmr.phantom import PhantomConfig, simulate_subject

    return np.stack([simulate_subject(i, 0, PhantomConfig(), with_cine=False).ecg.signal for i in range(n)])


def stage_sets(spec: str) -> tuple[str, dict[str, list[str]]]:
    """"paper:vae.model.x=1,flow.model.y=2" → ("paper", {"pamae": [], "vae": ["model.x=1"], "flow": ["model.y=2"]})."""
    preset, _, rest = spec.partition(":")
    sets: dict[str, list[str]] = {"pamae": [], "vae": [], "flow": []}
    for item in filter(None, rest.split(",")):
        stage, _, key = item.partition(".")
        if stage not in sets:
            raise SystemExit(f"{spec}: override {item!r} must start with pamae., vae. or flow.")
        sets[stage].append(key)
    return preset, sets


def build(spec: str, device: torch.device) -> Pipeline:
    preset, sets = stage_sets(spec)
    pamae = PAMAE(load_config(pamae_stage.RunConfig, "pamae", preset, sets["pamae"]).model).to(device).eval()
    vae = VideoVAE(load_config(vae_stage.RunConfig, "vae", preset, sets["vae"]).model).to(device).eval()
    flow_cfg = load_config(flow_stage.RunConfig, "flow", preset, sets["flow"]).model
    with torch.no_grad():
        tokens = pamae.encode_aligned(torch.from_numpy(phantom_ecgs(1)).float().to(device)).tokens
    z1 = torch.zeros(1, *vae.config.latent_shape)
    flow = FlowMatching(fit_to_upstream(flow_cfg, z1, tokens.cpu())).to(device).eval()
    sampling = {"steps": flow_cfg.sample_steps, "method": flow_cfg.sample_method, "guidance": flow_cfg.sample_guidance}
    return Pipeline(Path("."), pamae, vae, flow, {"sampling": sampling}, device)


def bench(preset: str, batches: list[int], device: torch.device, bf16: bool, peak: float) -> list[tuple]:
    pipe = build(preset, device)
    big = preset.startswith("paper")
    ecgs = torch.from_numpy(phantom_ecgs(max(batches))).float()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda"
                else contextlib.nullcontext())
    with autocast:
        flops = counted_flops(lambda: pipe.generate_batch(ecgs[:1]))
    rows = []
    for batch in batches:
        x = ecgs[:batch]
        with autocast:
            pipe.generate_batch(x)  # warm-up
            sync(device)
            pipe.timings = type(pipe.timings)()
            total = timed(lambda x=x: pipe.generate_batch(x), device, repeats=1 if big else 3, warmup=0)
        t = pipe.timings
        n = max(t.videos, 1)
        per_video = total / batch
        rows.append((preset, batch, per_video, t.encode_ecg / n, t.sample / n, t.decode / n, flops / 1e9,
                     flops / 1e9 / per_video, 100 * flops / 1e9 / per_video / peak, pipe.sampling["steps"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--paper-batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = matmul_gflops(device, dtype=torch.bfloat16 if args.bf16 and device.type == "cuda" else torch.float32)
    rows = []
    for preset in args.presets:
        rows += bench(preset, args.paper_batches if preset.startswith("paper") else args.batches, device, args.bf16,
                      peak)
    print(f"\nend-to-end generation on {device} ({torch.get_num_threads()} threads); measured matmul peak "
          f"{peak:.1f} GFLOP/s\n")
    head = ("preset", "batch", "s/video", "encode", "sample", "decode", "GFLOP/video", "GFLOP/s", "% peak", "steps")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.1f} | {r[7]:.1f} | "
              f"{r[8]:.0f}% | {r[9]} |")
    print("\npublic code at the same shapes (docs/decisions.md, measured on this machine class): DiT 72.8M params, "
          "7,200 tokens, ≈6.4 s per pass × 20 passes ≈ 128 s per video before decoding; its VAE decoder "
          "needs 26.5 GB (does not run in 24 GB). benchmarks/dit.py measures that DiT configuration here.")


if __name__ == "__main__":
    main()
