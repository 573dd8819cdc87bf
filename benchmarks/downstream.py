"""Cine ViT speed on this machine: MAE pretraining and fine-tuning throughput per preset, beside the
machine's matmul rate; with ``--plan``, the projected wall time of a whole ``downstream`` run.

    .venv/bin/python benchmarks/downstream.py [--presets tiny tiny_tubes paper] [--threads N] [--device cpu|cuda]
    .venv/bin/python benchmarks/downstream.py --plan STORE [--config tiny] [--set k=v …] [--ablations N] [--cines N] \
        [--model BUNDLE --ecg-only MANIFEST | --generate-seconds S] [--threads N]

Prints one table. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` for one step, so
"GFLOP/s" = counted FLOPs / measured time; "machine GFLOP/s" is a loop of fp32 2048×2048 matmuls, the
best this device does on dense work. Random cines; the weights are untrained. Fine-tuning is the
four-class head (the regression head costs the same).

``--plan``: counts the run's units of work on STORE (``downstream.plan``), measures each unit's rate
through the real code paths (the training loop on random uint8 cines for MAE and fine-tuning, with its
checkpoints and files; prediction; ``generate`` on a few ECG-only subjects of MANIFEST), and prints the
projection. About a minute; ``--generate-seconds`` skips the generation measurement.
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


def loop_rates(cfg, device: torch.device, n_steps: int = 24) -> tuple[float, float, float, float]:
    """(MAE cines/s, fine-tuning cines/s, prediction cines/s, fixed seconds per training run) through the
    training loop on random uint8 cines, as the experiment feeds it."""
    import dataclasses
    import tempfile
    import time
    from pathlib import Path

    import numpy as np

    from ecgflowcmr.downstream.experiment import CineItems, _predict
    from ecgflowcmr.training.stages.cine_vit import finetune_setup, fit_once, pretrain_setup

    cines = np.random.default_rng(0).integers(0, 256, (64, cfg.model.frames, cfg.model.size, cfg.model.size),
                                              dtype=np.uint8)
    items = [(cines, i) for i in range(len(cines))]
    labels = np.arange(len(cines)) % 4
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, train, setup in (
                ("pretrain", cfg.pretrain, lambda: pretrain_setup(cfg.model, CineItems(items))),
                ("finetune", cfg.finetune, lambda: finetune_setup(cfg.model, "classify", 4,
                                                                   CineItems(items, labels=labels)))):
            train = dataclasses.replace(train, steps=n_steps, epochs=0.0, device=str(device))
            start = time.perf_counter()
            model_setup = setup()
            summary = fit_once(model_setup, train, Path(tmp) / name)
            wall = time.perf_counter() - start
            rate = summary["items_per_s"]
            out.append((rate, wall - n_steps * train.batch_size / rate))
        start = time.perf_counter()
        _predict(model_setup.model, items, cfg.eval_batch_size)
        predict = len(items) / (time.perf_counter() - start)
    (mae, mae_fixed), (fine, fine_fixed) = out
    return mae, fine, predict, max(0.0, (mae_fixed + fine_fixed) / 2)


def generate_rate(bundle: str, manifest: str, n: int = 16) -> float:
    """Seconds per cine of ``generate`` (NIfTI written, as the experiment does) on ``n`` ECG-only subjects."""
    import csv
    import tempfile

    from ecgflowcmr.commands.generate import generate

    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [r["subject_id"] for r in rows if r.get("split") == "ecg_only"][:n] or [r["subject_id"] for r in rows][:n]
    with tempfile.TemporaryDirectory() as tmp:
        generate(bundle, manifest, f"{tmp}/warm-up", subjects=ids[:8])  # loading, first batch
        summary = generate(bundle, manifest, f"{tmp}/timed", subjects=ids)
    return summary.seconds / max(summary.generated, 1)


def project_plan(args: argparse.Namespace, device: torch.device) -> None:
    from ecgflowcmr.config import load_config
    from ecgflowcmr.downstream.config import DownstreamConfig
    from ecgflowcmr.downstream.plan import Rates, plan, project

    cfg = load_config(DownstreamConfig, "downstream", args.config, args.set)
    work = plan(cfg, args.plan, ablations=args.ablations, supplied=args.cines)
    if args.generate_seconds is not None:
        gen = args.generate_seconds
    elif work.generated and args.model and args.ecg_only:
        gen = generate_rate(args.model, args.ecg_only)
    elif work.generated:
        raise SystemExit("the plan generates cines: give --model and --ecg-only, or --generate-seconds")
    else:
        gen = 0.0
    mae, fine, predict, fixed = loop_rates(cfg, device)
    rates = Rates(gen, mae, fine, predict, fixed)
    seconds = project(work, rates)
    print(f"plan of `downstream --config {args.config}` on {args.plan}: {work.sizes}")
    rows = [("generate", f"{work.generated} cines ({len(work.sources)} sources × {work.generated_per_source})",
             f"{gen:.3f} s/cine"),
            ("pretrain", f"{work.pretrainings} runs, {work.pretrain_cines} cine passes", f"{mae:.1f} cines/s"),
            ("finetune", f"{work.finetunes} runs, {work.finetune_cines} cine passes", f"{fine:.1f} cines/s"),
            ("predict", f"{work.predictions} cines", f"{predict:.1f} cines/s"),
            ("run_overhead", f"{work.pretrainings + work.finetunes} runs", f"{fixed:.2f} s/run")]
    rows = [(*r, f"{seconds[r[0]] / 60:.1f}") for r in rows] + [("total", "", "", f"{seconds['total'] / 60:.1f}")]
    print_table(("part", "work", "measured rate", "projected min"), rows, device, matmul_gflops(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "tiny_tubes", "paper"], choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plan", default=None, metavar="STORE", help="project a downstream run on STORE")
    parser.add_argument("--config", default="tiny", help="downstream preset or YAML for --plan (default tiny)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="downstream overrides")
    parser.add_argument("--model", default=None, help="bundle whose generation speed --plan measures")
    parser.add_argument("--ecg-only", default=None, help="manifest with the ECG-only subjects to generate from")
    parser.add_argument("--ablations", type=int, default=0, help="ablated bundles the run will add (--plan)")
    parser.add_argument("--cines", type=int, default=0, help="--cines folders the run will add (--plan)")
    parser.add_argument("--generate-seconds", type=float, default=None, help="seconds per generated cine, "
                        "measured elsewhere (skips that measurement)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.plan:
        project_plan(args, device)
        return
    machine = matmul_gflops(device)
    rows = [row for name in args.presets for row in bench(name, args.batch, args.repeats, device)]
    print_table(("preset", "size", "what", "batch", "cines/s", "GFLOP/cine", "GFLOP/s"), rows, device, machine)


if __name__ == "__main__":
    main()
