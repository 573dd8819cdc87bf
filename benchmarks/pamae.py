"""PA-MAE speed on this machine: training and encoding throughput per preset, beside the machine's matmul rate.

    .venv/bin/python benchmarks/pamae.py [--presets tiny paper] [--threads N] [--device cpu|cuda]

Prints one table. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
attention) for one step, so "achieved GFLOP/s" = counted FLOPs / measured time; "machine GFLOP/s" is a loop
of fp32 2048×2048 matmuls, the best this device does on dense work. Synthetic ECGs; the weights are untrained.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from ecgflowcmr.config import load_config
from ecgflowcmr.evaluation.speed import counted_flops, matmul_gflops, print_table, timed
from ecgflowcmr.models.align import align_cycles, unwrapped_phase_from_rpeaks
from ecgflowcmr.models.pa_mae import PAMAE
from ecgflowcmr.training.stages.pamae import RunConfig


def synthetic_batch(batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    t = torch.arange(5000, dtype=torch.float32)
    beat = sum(torch.exp(-0.5 * ((t - r) / 6.0) ** 2) for r in range(150, 5000, 430))
    ecg = beat * torch.linspace(0.4, 1.4, 12)[:, None] + 0.03 * torch.randn(batch, 12, 5000)
    rpeaks = torch.arange(150, 5000, 430)
    phase = torch.full((5000,), float("nan"))
    for a, b in itertools.pairwise(rpeaks.tolist()):
        phase[a:b] = 2 * math.pi * torch.arange(b - a) / (b - a)
    return {"ecg": ecg.to(device), "phase": phase.expand(batch, -1).contiguous().to(device)}


def bench_preset(name: str, encoder: str | None, batch: int, repeats: int,
                 device: torch.device) -> list[tuple[str, ...]]:
    sets = [f"model.encoder={encoder}"] if encoder else []
    cfg = load_config(RunConfig, "pamae", name, sets)
    torch.manual_seed(0)
    model = PAMAE(cfg.model).to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    data = synthetic_batch(batch, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        loss, _ = model(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward_backward() -> None:
        model(data)[0].backward()

    model.train()
    train_s = timed(train_step, device, repeats)
    train_flops = counted_flops(forward_backward)
    model.eval()
    with torch.no_grad():
        encode_s = timed(lambda: model.encode(data["ecg"]), device, repeats)
        encode_flops = counted_flops(lambda: model.encode(data["ecg"]))
        tokens, _ = model.encode(data["ecg"])
        phase = torch.remainder(unwrapped_phase_from_rpeaks([list(range(150, 5000, 430))] * batch, 625),
                                2 * math.pi).float().to(device)
        align_s = timed(lambda: align_cycles(tokens, phase), device, repeats)
    size = f"{cfg.model.encoder} D={cfg.model.width} depth={cfg.model.depth} ({params:.1f}M)"
    return [
        (name, size, "train step (fwd+bwd+AdamW)", str(batch), f"{batch / train_s:.2f}",
         f"{train_flops / batch / 1e9:.1f}", f"{train_flops / train_s / 1e9:.1f}"),
        (name, size, "encode (625 tokens, no mask)", str(batch), f"{batch / encode_s:.2f}",
         f"{encode_flops / batch / 1e9:.1f}", f"{encode_flops / encode_s / 1e9:.1f}"),
        (name, size, "cycle alignment (median)", str(batch), f"{batch / align_s:.1f}", "-", "-"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch per preset (default 16 tiny, 2 else)")
    parser.add_argument("--encoders", nargs="+", default=[None], choices=["conv", "vit"],
                        help="encoder variants to time (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = matmul_gflops(device)
    rows = []
    for i, name in enumerate(args.presets):
        batch = args.batch[i] if args.batch else (16 if name == "tiny" else 2)
        for encoder in args.encoders:
            rows += bench_preset(name, encoder, batch, args.repeats, device)
    print_table(("preset", "size", "what", "batch", "ECGs/s", "GFLOP/ECG", "GFLOP/s"), rows, device, machine)


if __name__ == "__main__":
    main()
