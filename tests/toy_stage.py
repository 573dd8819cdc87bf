"""A tiny stage module following the training engine contract, for the engine's tests.

Regression of y = w·x + noise with a small MLP (LayerNorm, dropout) on generated data: the dataset draws
augmentation noise from torch's RNG and the model uses dropout, so a resume that lost an RNG state or the
data position would show. Run as a script it trains like ``ecgflowcmr train`` (also under torchrun)::

    python tests/toy_stage.py OUT [--set train.steps=10 ...] [--resume latest] [--fit-only]

``--fit-only`` calls :func:`fit` directly and saves every rank's final parameters as
``OUT/params-rank{R}.pt`` (for the DDP test).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ecgflowcmr.bundle import load_weights, read_config
from ecgflowcmr.config import load_config
from ecgflowcmr.training import distributed as dist
from ecgflowcmr.training.config import TrainConfig
from ecgflowcmr.training.loop import Setup, fit
from ecgflowcmr.training.tasks import run_stage


@dataclass
class ToyModelConfig:
    inputs: int = 4
    width: int = 16
    dropout: float = 0.1
    nan_buffer: bool = False
    """A NaN in an unused buffer: the loss stays finite but a checkpoint must be refused."""


@dataclass
class ToyDataConfig:
    n_train: int = 24
    n_val: int = 8
    augment: float = 0.05
    """Std of the noise added to x when an item is loaded (drawn from torch's global RNG)."""
    nan_items: list[int] = field(default_factory=list)
    """Training items whose x is NaN (non-finite loss)."""


def _default_train() -> TrainConfig:
    return TrainConfig(steps=12, batch_size=4, warmup_steps=2, lr=1e-2, log_every=1, val_every=4,
                       ckpt_every=4, keep_last=2, ema_decay=0.9, device="cpu")


@dataclass
class RunConfig:
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    train: TrainConfig = field(default_factory=_default_train)
    data: ToyDataConfig = field(default_factory=ToyDataConfig)


class ToySet(Dataset):
    def __init__(self, n: int, inputs: int, seed: int, augment: float, nan_items: list[int] = ()):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, inputs, generator=g)
        self.y = self.x @ torch.linspace(-1, 1, inputs) + 0.1 * torch.randn(n, generator=g)
        self.x[list(nan_items)] = float("nan")
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i] + self.augment * torch.randn_like(self.x[i]), "y": self.y[i]}


class ToyRegressor(nn.Module):
    def __init__(self, config: ToyModelConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(config.inputs, config.width), nn.LayerNorm(config.width), nn.GELU(),
                                 nn.Dropout(config.dropout), nn.Linear(config.width, 1))
        self.register_buffer("unused", torch.full((1,), float("nan") if config.nan_buffer else 0.0))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = self.net(batch["x"]).squeeze(-1)  # (B,)
        err = pred - batch["y"]
        return err.pow(2).mean(), {"mae": err.abs().mean(), "const": 1.0}


def build(cfg: RunConfig, data: Path, run_dir: Path, *, pamae: Path | None = None,
          vae: Path | None = None) -> Setup:
    torch.manual_seed(cfg.train.seed)
    d = cfg.data
    return Setup(model=ToyRegressor(cfg.model),
                 train_set=ToySet(d.n_train, cfg.model.inputs, 1, d.augment, d.nan_items),
                 val_set=ToySet(d.n_val, cfg.model.inputs, 2, 0.0) if d.n_val else None)


def finalize(model: nn.Module, cfg: RunConfig, data: Path, run_dir: Path) -> dict:
    val = ToySet(8, cfg.model.inputs, 3, 0.0)
    with torch.no_grad():
        loss, _ = model({"x": val.x, "y": val.y})
    return {"test_mse": float(loss), "test_mse_definition": "mean squared error on 8 held-out toy items"}


def load(run_dir: Path, device: str = "cpu") -> nn.Module:
    model = ToyRegressor(ToyModelConfig(**read_config(run_dir)))
    return load_weights(model, run_dir).to(device).eval()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--resume", default=None)
    parser.add_argument("--fit-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.fit_only:
        run_stage(sys.modules[__name__], "toy", Path("unused"), args.out, sets=args.set, resume=args.resume)
        return
    cfg = load_config(RunConfig, "toy", None, args.set)
    info = dist.setup_distributed(cfg.train.device)
    setup = build(cfg, Path("unused"), args.out)
    fit(setup, cfg.train, args.out, resume=args.resume, run_config=cfg)
    torch.save(setup.model.state_dict(), args.out / f"params-rank{info.rank}.pt")
    dist.teardown_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
