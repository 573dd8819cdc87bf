"""Cine ViT speed on this machine: MAE pretraining and fine-tuning throughput per preset, beside the
machine's matmul rate.

    .venv/bin/python benchmarks/downstream.py [--presets tiny tiny_tubes paper] [--threads N] [--device cpu|cuda]

Prints one table. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` for one step, so
"GFLOP/s" = counted FLOPs / measured time; "machine GFLOP/s" is a loop of fp32 2048×2048 matmuls, the
best this device does on dense work. Random cines; the weights are untrained. Fine-tuning is the
four-class head (the regression head costs the same).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from ecgflowcmr.evaluation.speed import counted_flops, matmul_gflops, print_table, timed
from ecgflowcmr.models.video_vit import PRESETS, VideoMAE, VideoViTPredictor


def bench(name: str, batch: int, repeats: int, device: torch.device) -> list[tuple[str, ...]]:
    cfg = PRESETS[name]
    torch.manual_seed(0)
    cine = torch.rand(batch, 1, 50, 96, 96, device=device) * 2 - 1
    label = torch.randint(0, 4, (batch,), device=device)
    rows = []
    for what, model in (("MAE pretrain step", VideoMAE(cfg)), ("fine-tune step", VideoViTPredictor(cfg, "classify", 4))):
        model = model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        data = {"cine": cine, "label": label}

        def step(model=model, opt=opt, data=data) -> None:
            loss, _ = model(data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def forward_backward(model=model, data=data) -> None:
            model(data)[0].backward()

        rows.append(_row(name, cfg, model, what, batch, step, forward_backward, repeats, device))
    predictor = VideoViTPredictor(cfg, "classify", 4).to(device).eval()
    with torch.no_grad():
        rows.append(_row(name, cfg, predictor, "predict (eval)", batch, lambda: predictor.predict(cine),
                         lambda: predictor.predict(cine), repeats, device))
    return rows


def _row(name: str, cfg, model: torch.nn.Module, what: str, batch: int, fn: Callable[[], object],
         count_fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[str, ...]:
    seconds = timed(fn, device, repeats)
    flops = counted_flops(count_fn)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    size = f"D={cfg.width} depth={cfg.depth} tokens={cfg.tokens} ({params:.1f}M)"
    return (name, size, what, str(batch), f"{batch / seconds:.1f}", f"{flops / batch / 1e9:.2f}",
            f"{flops / seconds / 1e9:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "tiny_tubes", "paper"], choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = matmul_gflops(device)
    rows = [row for name in args.presets for row in bench(name, args.batch, args.repeats, device)]
    print_table(("preset", "size", "what", "batch", "cines/s", "GFLOP/cine", "GFLOP/s"), rows, device, machine)


if __name__ == "__main__":
    main()
