"""Training stage ``vae``: the 3D video VAE on cines alone, then the anatomical template (paper §2.2).

``ecgflowcmr train vae --data STORE --out RUN [--config tiny|paper|FILE] [--set k=v] [--resume]``.
Trains on the ``train`` split's cines, validates on ``val``. ``finalize`` (after the EMA weights are
exported) then

1. encodes the training cines (posterior means), sets ``latent_scale`` = 1 / std of all their elements and
   re-saves ``model.safetensors`` with it (the export happened before the scale was known);
2. writes ``RUN/template.safetensors``: key ``template``, (C, 50, h, w) in scaled latent units — the mean
   latent over subjects and frames broadcast over time (``static``, as the public code) or the mean over
   subjects per frame (``per_frame``);
3. measures reconstruction PSNR/SSIM on the held-out cines (``test``, else ``val``).

With ``stage.train: decoder`` (from ``stage.init``) steps 1–2 keep the init's latent scale and template.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from ecgflowcmr.atomic import atomic_file
from ecgflowcmr.bundle import TEMPLATE_FILE, load_weights, read_template, save_weights
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.evaluation.stage_metrics import EvalConfig, cine_batches, vae_metrics
from ecgflowcmr.models.vae3d import PatchDiscriminator3d, VAEConfig, VideoVAE
from ecgflowcmr.store.prepared import StoreDataset, read_store_meta, split_size
from ecgflowcmr.training.adversary import Adversary
from ecgflowcmr.training.config import TrainConfig
from ecgflowcmr.training.loop import Setup

FIELDS = ("cine",)


@dataclass
class StageConfig:
    template: Literal["static", "per_frame"] = "static"
    """Template = mean latent over subjects and frames, broadcast over time (paper, public code), or per frame."""
    init: str = ""
    """A trained VAE run folder to start from ("": random initial weights)."""
    train: Literal["all", "decoder"] = "all"
    """What trains: the whole VAE, or (from ``init``) its decoder alone. With ``decoder`` the encoder, and so
    every latent, the latent scale and the template, stay ``init``'s (copied, not re-estimated): a flow trained
    on ``init``'s latents decodes with the new decoder (LDM's decoder fine-tuning; e.g. with ``model.gan_weight``)."""

    def __post_init__(self) -> None:
        if self.train == "decoder" and not self.init:
            raise ConfigError("stage.train", "decoder needs stage.init: the trained VAE whose encoder is kept")


@dataclass
class RunConfig:
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(batch_size=2))
    """``eval.batch_size`` also batches the template's pass over the training set."""



def build(cfg: RunConfig, data: Path, run_dir: Path, *, pamae: Path | None = None,
          vae: Path | None = None) -> Setup:
    data = Path(data)
    train_set = StoreDataset(data, "train", fields=FIELDS)
    if len(train_set) == 0:
        raise InputError(data, "the store has no training cines")
    cine = tuple(read_store_meta(data)["shapes"]["cine"])
    if cine != (cfg.model.frames, cfg.model.size, cfg.model.size):
        raise InputError(data, f"cines are {cine} but model.frames/size expect "
                               f"{(cfg.model.frames, cfg.model.size, cfg.model.size)}")
    val_set = StoreDataset(data, "val", fields=FIELDS) if split_size(data, "val") > 0 else None
    model = VideoVAE(cfg.model)
    if cfg.stage.init:
        load_weights(model, cfg.stage.init)
    if cfg.stage.train == "decoder":
        read_template(Path(cfg.stage.init))  # a finished run: fail now, not after training
        model.encoder.requires_grad_(False)
    adversary = None
    if cfg.model.gan_weight > 0:  # the optional PatchGAN, trained against the VAE by the loop
        disc = PatchDiscriminator3d(cfg.model.in_channels, cfg.model.disc_channels)
        adversary = Adversary(disc, lr=cfg.model.disc_lr, start=cfg.model.gan_start,
                              warmup=cfg.model.disc_warmup)
    return Setup(model=model, train_set=train_set, val_set=val_set, adversary=adversary)


@torch.no_grad()
def latent_statistics(model: VideoVAE, ds: StoreDataset, batch_size: int) -> tuple[float, torch.Tensor]:
    """(std of all posterior-mean elements, per-frame mean latent (C, T, h, w)) over ``ds``, unscaled."""
    device = next(model.parameters()).device
    total, total_sq, count = 0.0, 0.0, 0
    frame_sum = torch.zeros(model.config.latent_shape, dtype=torch.float64)
    for x in cine_batches(ds, len(ds), batch_size, device):
        mean = model.encode(x)[0].double().cpu()  # (b, C, T, h, w)
        frame_sum += mean.sum(0)
        total, total_sq, count = total + mean.sum().item(), total_sq + mean.pow(2).sum().item(), count + mean.numel()
    mu = total / count
    std = max(total_sq / count - mu * mu, 0.0) ** 0.5
    return std, (frame_sum / len(ds)).float()


def template_latent(frame_mean: torch.Tensor, mode: str) -> torch.Tensor:
    """(C, T, h, w) per-frame mean → the template (C, T, h, w): unchanged (per_frame) or time-averaged (static)."""
    if mode == "per_frame":
        return frame_mean.clone()
    return frame_mean.mean(1, keepdim=True).expand_as(frame_mean).clone()


def write_template(run_dir: Path, template: torch.Tensor, mode: str, n: int) -> Path:
    path = Path(run_dir) / TEMPLATE_FILE
    with atomic_file(path) as tmp:
        save_file({"template": template.contiguous()}, str(tmp),
                  metadata={"mode": mode, "units": "scaled latent (encode_latent)", "n_train_cines": str(n)})
    return path


@torch.no_grad()
def finalize(model: nn.Module, cfg: RunConfig, data: Path, run_dir: Path) -> dict[str, Any]:
    """Latent scale + template (written into ``run_dir``) and held-out metrics, each ``{"value", "definition"}``."""
    data, run_dir = Path(data), Path(run_dir)
    model.eval()
    bs = cfg.eval.batch_size

    if cfg.stage.train == "decoder":  # the init's encoder: its latent scale (loaded with it) and template
        template = read_template(Path(cfg.stage.init))
        with atomic_file(run_dir / TEMPLATE_FILE) as tmp:
            shutil.copyfile(Path(cfg.stage.init) / TEMPLATE_FILE, tmp)
    else:
        train_set = StoreDataset(data, "train", fields=FIELDS)
        std, frame_mean = latent_statistics(model, train_set, bs)
        if not std > 0:
            raise InputError(data, "the training latents have zero spread; cannot set the latent scale")
        model.latent_scale.fill_(1.0 / std)
        save_weights(model, run_dir, config=dataclasses.asdict(model.config))  # now with the latent scale
        template = template_latent(frame_mean, cfg.stage.template) / std
        write_template(run_dir, template, cfg.stage.template, len(train_set))

    kept = f" (kept with the encoder from {cfg.stage.init})" if cfg.stage.train == "decoder" else ""
    return vae_metrics(model, data, template, cfg.eval) | {
        "latent_scale": {"value": float(model.latent_scale), "definition":
                         f"1 / std of all posterior-mean latent elements over the training cines{kept}; "
                         "encode_latent multiplies by it (saved in model.safetensors)"},
        "template_mode": {"value": cfg.stage.template, "definition":
                          "static: mean latent over subjects and frames, broadcast over time; per_frame: "
                          f"mean over subjects per frame; written to {TEMPLATE_FILE} (scaled latent units){kept}"},
    }


