"""Training stage ``flow``: the AMDF DiT on (VAE latent, aligned PA-MAE ECG tokens) pairs (paper §2.2).

The PA-MAE and the VAE are frozen and stay outside the trained module: ``build`` encodes every paired
split once into the latent cache ``run_dir/cache/`` (``store.latents``: memory-mapped, reused while the
store and both upstream runs are unchanged), then builds the flow around the VAE's template.
``finalize`` measures the test split (``evaluation.stage_metrics.flow_metrics``) and assembles
``run_dir/bundle/`` (``bundle.write_bundle``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ecgflowcmr.atomic import write_text_atomic
from ecgflowcmr.bundle import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    bundle_geometry,
    load_model,
    read_template,
    write_bundle,
)
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.evaluation.stage_metrics import EvalConfig, flow_metrics
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.store.latents import (
    LatentPairs,
    cache_is_current,
    cache_key,
    encode_split,
    open_encoded_split,
    shard_path,
)
from ecgflowcmr.training.config import TrainConfig

if TYPE_CHECKING:
    from ecgflowcmr.training.loop import Setup

SPLITS = ("train", "val", "test")


@dataclass
class FlowStageConfig:
    encode_batch_size: int = 8
    """Batch size when encoding the store with the frozen PA-MAE and VAE (once, before training)."""
    prior_max_items: int = 2048
    """With ``model.prior: ecg_linear`` (or ``model.noise_motion_components``): the ECG prior (the motion noise's
    shapes) is fitted on the first this-many training items (store order; the split is random), which bounds its
    memory (~0.23 GB per 1,000 items at paper latent size)."""

    def __post_init__(self) -> None:
        if self.encode_batch_size < 1:
            raise ConfigError("stage.encode_batch_size", f"must be ≥ 1, got {self.encode_batch_size}")
        if self.prior_max_items < 3:
            raise ConfigError("stage.prior_max_items", f"must be ≥ 3, got {self.prior_max_items}")


@dataclass
class RunConfig:
    model: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage: FlowStageConfig = field(default_factory=FlowStageConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_items=64))


# --------------------------------------------------------------------------------------------------
# Encoding the store once with the frozen networks
# --------------------------------------------------------------------------------------------------


def load_frozen(pamae: Path, vae: Path, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The trained PA-MAE and VAE, frozen (eval mode, no gradients)."""

    nets = (load_model(pamae, "pamae", device), load_model(vae, "vae", device))
    for net in nets:
        net.eval().requires_grad_(False)
    return nets


def encoded_splits(data: Path, run_dir: Path, pamae: Path, vae: Path, batch_size: int,
                   device: torch.device) -> dict[str, LatentPairs]:
    """{split: LatentPairs} for the paired splits of the store, from or into run_dir/cache.

    Under torchrun each process encodes its share (items rank::world) into its own shard folder, then all
    wait for each other and map every shard; a shard is reused while store and upstream runs are unchanged.
    """
    from ecgflowcmr.store.prepared import read_store_meta
    from ecgflowcmr.training import distributed

    rank, world = distributed.info().rank, distributed.info().world_size
    present = [s for s in SPLITS if read_store_meta(data)["splits"].get(s, 0) > 0]
    nets: tuple[nn.Module, nn.Module] | None = None
    for split in present:
        path = shard_path(run_dir, split, rank, world)
        key = cache_key(data, split, Path(pamae) / WEIGHTS_FILE, Path(vae) / WEIGHTS_FILE,
                        configs=(Path(pamae) / CONFIG_FILE, Path(vae) / CONFIG_FILE))
        if not cache_is_current(path, key):
            if nets is None:
                nets = load_frozen(pamae, vae, device)
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_split(data, split, *nets, batch_size, device, path, key, rank, world)
    if rank == 0:  # version-1 caches (one .safetensors per shard) are never read again: ~8 GB at UKB scale
        for old in (Path(run_dir) / "cache").glob("*.safetensors"):
            old.unlink()
    distributed.barrier()
    out = {}
    for split in present:
        encoded = open_encoded_split(run_dir, split, world)
        if encoded is None:
            raise InputError(Path(data) / split, "no item with a valid ECG alignment (see PA-MAE's AlignedECG.valid)")
        out[split] = encoded
    return out


def condition_statistics(pairs: LatentPairs) -> tuple[Tensor, Tensor]:
    """(mean, std) over the items of each aligned ECG token channel, each (T, D); read shard by shard."""
    total, total_sq, n = 0.0, 0.0, 0
    for arrays in pairs.arrays:
        cond = np.asarray(arrays["cond"], dtype=np.float64)  # (n_s, T, D)
        if cond.ndim == 3:
            total, total_sq, n = total + cond.sum(0), total_sq + (cond**2).sum(0), n + len(cond)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def fit_start(model: FlowMatching, train: LatentPairs, max_items: int, run_dir: Path) -> None:
    """Fit what the flow's start needs from the data, on up to ``max_items`` training items read once: the ECG
    prior (``flow.prior.LinearPrior``; prior.json) and the motion noise's shapes (motion_noise.json)."""
    items = train.tensors(max_items)
    if model.prior is not None:
        found = model.prior.fit(items["z1"] - model.template, items["cond"], template=model.template)
        write_text_atomic(run_dir / "prior.json", json.dumps({"items": len(items["z1"]), **found}, indent=2))
    if model.config.noise_motion_components:
        found = model.fit_motion_noise(items["z1"])
        write_text_atomic(run_dir / "motion_noise.json", json.dumps(found, indent=2))


def fit_to_upstream(config: FlowConfig, z1: Tensor, cond: Tensor) -> FlowConfig:
    """The DiT's latent shape and ECG width are not free choices: take them from the encoded data."""
    _, c, t, h, w = z1.shape
    if h != w:
        raise InputError("vae", f"latent frames must be square, got {h}×{w}")
    if cond.shape[1] != t:
        raise InputError("pamae", f"aligned ECG has {cond.shape[1]} tokens but the latent has {t} frames")
    dit = dataclasses.replace(config.dit, latent_channels=c, frames=t, latent_size=h, cond_dim=cond.shape[2])
    return dataclasses.replace(config, dit=dit)


# --------------------------------------------------------------------------------------------------
# The stage contract: build, finalize
# --------------------------------------------------------------------------------------------------


def build(cfg: RunConfig, data: Path, run_dir: Path, *, pamae: Path | None = None,
          vae: Path | None = None) -> Setup:
    """Encode the store with the frozen PA-MAE and VAE (cached), then the flow module with the VAE's template."""
    from ecgflowcmr.training.distributed import info
    from ecgflowcmr.training.loop import Setup

    if pamae is None or vae is None:
        raise InputError("--pamae/--vae", "the flow stage needs a trained PA-MAE run and a trained VAE run")
    encoded = encoded_splits(Path(data), Path(run_dir), Path(pamae), Path(vae), cfg.stage.encode_batch_size,
                             info().device)
    if "train" not in encoded:
        raise InputError(data, "has no paired train split")
    train = encoded["train"]
    first = train[0]
    config = fit_to_upstream(cfg.model, first["z1"][None], first["cond"][None])
    template = read_template(Path(vae)) if config.use_template else None
    model = FlowMatching(config, template, condition_statistics(train) if config.standardise_condition else None)
    if model.prior is not None or config.noise_motion_components:  # closed form, the same on every rank
        fit_start(model, train, cfg.stage.prior_max_items, Path(run_dir))  # (and restored exactly on resume)
    write_text_atomic(Path(run_dir) / "upstream.json",
                      json.dumps({"pamae": str(Path(pamae).resolve()), "vae": str(Path(vae).resolve())}, indent=2))
    return Setup(model=model, train_set=train, val_set=encoded.get("val"))


def finalize(model: nn.Module, cfg: RunConfig, data: Path, run_dir: Path) -> dict[str, Any]:
    """Evaluate on the test split, then assemble ``run_dir/bundle/`` (PA-MAE + VAE + flow + template)."""
    metrics = flow_metrics(model, open_encoded_split(run_dir, "test"), cfg.eval)
    upstream = json.loads((Path(run_dir) / "upstream.json").read_text())
    config: FlowConfig = model.config
    sampling = {"steps": config.sample_steps, "method": config.sample_method, "guidance": config.sample_guidance}
    write_bundle(Path(run_dir) / "bundle", pamae_run=Path(upstream["pamae"]), vae_run=Path(upstream["vae"]),
                 flow_run=Path(run_dir), sampling=sampling, geometry=bundle_geometry(Path(data)))
    return metrics


