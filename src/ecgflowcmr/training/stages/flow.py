"""Training stage ``flow``: the AMDF DiT on (VAE latent, aligned PA-MAE ECG tokens) pairs (paper §2.2).

The PA-MAE and the VAE are frozen and stay outside the trained module: ``build`` encodes every paired
split once (batched, no_grad) into ``run_dir/cache/<split>-<rank>of<world>.safetensors`` — z1 (N, C, 50,
12, 12), cond (N, 50, D), index (N,) — reused on resume while the store and both upstream runs are unchanged. Items whose ECG
yields no valid aligned cycle (``AlignedECG.valid`` False) are left out and counted in the cache metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ecgflowcmr.atomic import atomic_file, write_text_atomic
from ecgflowcmr.config import from_dict
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.flow.sampler import sample
from ecgflowcmr.training.config import TrainConfig

if TYPE_CHECKING:
    from ecgflowcmr.training.loop import Setup

CACHE_VERSION = "1"
SPLITS = ("train", "val", "test")


@dataclass
class FlowStageConfig:
    encode_batch_size: int = 8
    """Batch size when encoding the store with the frozen PA-MAE and VAE (once, before training)."""
    eval_items: int = 64
    """Test items sampled in ``finalize`` (0 = all)."""
    eval_seed: int = 0
    """Seed of the sampling noise in ``finalize``."""

    def __post_init__(self) -> None:
        if self.encode_batch_size < 1:
            raise ConfigError("stage.encode_batch_size", f"must be ≥ 1, got {self.encode_batch_size}")
        if self.eval_items < 0:
            raise ConfigError("stage.eval_items", f"must be ≥ 0, got {self.eval_items}")


@dataclass
class RunConfig:
    model: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage: FlowStageConfig = field(default_factory=FlowStageConfig)


class LatentPairs(Dataset):
    """Item i: {"z1": (C, 50, H', W') float32, "cond": (50, D) float32}."""

    def __init__(self, z1: Tensor, cond: Tensor):
        self.z1, self.cond = z1, cond

    def __len__(self) -> int:
        return self.z1.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"z1": self.z1[index], "cond": self.cond[index]}


# --------------------------------------------------------------------------------------------------
# Encoding the store once with the frozen networks
# --------------------------------------------------------------------------------------------------


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _cache_key(data: Path, split: str, pamae: Path, vae: Path) -> dict[str, str]:
    return {"version": CACHE_VERSION, "split": split, "store": _fingerprint(Path(data) / "store.json"),
            "pamae": _fingerprint(Path(pamae) / "model.safetensors"),
            "vae": _fingerprint(Path(vae) / "model.safetensors")}


def _cache_is_current(path: Path, key: dict[str, str]) -> bool:
    if not path.exists():
        return False
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return all(meta.get(k) == v for k, v in key.items())


def _shard_path(run_dir: Path, split: str, rank: int, world: int) -> Path:
    return Path(run_dir) / "cache" / f"{split}-{rank}of{world}.safetensors"


@torch.no_grad()
def encode_split(data: Path, split: str, pamae_net: nn.Module, vae_net: nn.Module, batch_size: int,
                 device: torch.device, rank: int = 0, world: int = 1) -> tuple[dict[str, Tensor], int]:
    """Items rank, rank + world, … of a split → ({"z1", "cond", "index"}, items dropped as invalid ECG)."""
    from ecgflowcmr.data.store import StoreDataset

    dataset = StoreDataset(data, split, fields=("ecg", "cine"))
    loader = DataLoader(Subset(dataset, range(rank, len(dataset), world)), batch_size=batch_size)
    z1s, conds, indices, dropped = [torch.zeros(0)], [torch.zeros(0)], [torch.zeros(0, dtype=torch.int64)], 0
    for batch in loader:
        aligned = pamae_net.encode_aligned(batch["ecg"].to(device))
        keep = aligned.valid.bool().cpu()
        dropped += int((~keep).sum())
        if not keep.any():
            continue
        z = vae_net.encode_latent(batch["cine"][keep].to(device))  # (b, C, 50, H', W')
        z1s.append(z.float().cpu())
        conds.append(aligned.tokens[keep.to(aligned.tokens.device)].float().cpu())  # (b, 50, D)
        indices.append(batch["index"][keep])
    join = lambda parts: torch.cat(parts[1:]) if len(parts) > 1 else parts[0]  # noqa: E731
    return {"z1": join(z1s), "cond": join(conds), "index": join(indices)}, dropped


def load_frozen(pamae: Path, vae: Path, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The trained PA-MAE and VAE, frozen (eval mode, no gradients)."""
    from ecgflowcmr.training.stages import pamae as pamae_stage
    from ecgflowcmr.training.stages import vae as vae_stage

    nets = (pamae_stage.load(pamae, device=device), vae_stage.load(vae, device=device))
    for net in nets:
        net.eval().requires_grad_(False)
    return nets


def read_encoded_split(run_dir: Path, split: str, world: int | None = None) -> dict[str, Tensor] | None:
    """The cached {"z1", "cond", "index"} of a split (its shards joined in item order); None if absent.

    ``world``: the number of shards; None = that of the most recently written shard set.
    """
    if world is None:
        firsts = sorted((Path(run_dir) / "cache").glob(f"{split}-0of*.safetensors"), key=lambda p: p.stat().st_mtime)
        if not firsts:
            return None
        world = int(firsts[-1].stem.rsplit("of", 1)[1])
    paths = [_shard_path(run_dir, split, r, world) for r in range(world)]
    if not all(p.exists() for p in paths):
        return None
    shards = [load_file(str(p)) for p in paths]
    shards = [s for s in shards if s["index"].numel()]
    if not shards:
        return None
    joined = {k: torch.cat([s[k] for s in shards]) for k in ("z1", "cond", "index")}
    order = joined["index"].argsort()
    return {k: v[order] for k, v in joined.items()}


def encoded_splits(data: Path, run_dir: Path, pamae: Path, vae: Path, batch_size: int,
                   device: torch.device) -> dict[str, dict[str, Tensor]]:
    """{split: {"z1", "cond", "index"}} for the paired splits of the store, from or into run_dir/cache.

    Under torchrun each process encodes its share (items rank::world) into its own shard file, then all
    wait for each other and read every shard; a shard is reused while store and upstream runs are unchanged.
    """
    from ecgflowcmr.data.store import read_store_meta
    from ecgflowcmr.training import distributed

    rank, world = distributed.info().rank, distributed.info().world_size
    present = [s for s in SPLITS if read_store_meta(data)["splits"].get(s, 0) > 0]
    nets: tuple[nn.Module, nn.Module] | None = None
    for split in present:
        path = _shard_path(run_dir, split, rank, world)
        key = _cache_key(data, split, pamae, vae)
        if not _cache_is_current(path, key):
            if nets is None:
                nets = load_frozen(pamae, vae, device)
            tensors, dropped = encode_split(data, split, *nets, batch_size, device, rank, world)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                save_file(tensors, str(tmp), metadata={**key, "dropped_invalid_ecg": str(dropped)})
    distributed.barrier()
    out = {}
    for split in present:
        encoded = read_encoded_split(run_dir, split, world)
        if encoded is None:
            raise InputError(Path(data) / split, "no item with a valid ECG alignment (see PA-MAE's AlignedECG.valid)")
        out[split] = encoded
    return out


def read_template(vae: Path) -> Tensor:
    """The VAE stage's anatomical template (C, 50, H', W') in scaled latent units."""
    path = Path(vae) / "template.safetensors"
    if not path.exists():
        raise InputError(path, "template not found (the VAE stage's finalize writes it)")
    tensors = load_file(str(path))
    if "template" not in tensors:
        raise InputError(path, f"has no 'template' tensor (has: {', '.join(tensors)})")
    return tensors["template"].float()


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
# The stage contract: build, finalize, load
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
    config = fit_to_upstream(cfg.model, train["z1"], train["cond"])
    template = read_template(Path(vae)) if config.use_template else None
    model = FlowMatching(config, template)
    write_text_atomic(Path(run_dir) / "upstream.json",
                      json.dumps({"pamae": str(Path(pamae).resolve()), "vae": str(Path(vae).resolve())}, indent=2))
    val = encoded.get("val")
    return Setup(model=model, train_set=LatentPairs(train["z1"], train["cond"]),
                 val_set=LatentPairs(val["z1"], val["cond"]) if val is not None else None)


def finalize(model: nn.Module, cfg: RunConfig, data: Path, run_dir: Path) -> dict[str, Any]:
    """Evaluate on the test split, then assemble ``run_dir/bundle/`` (PA-MAE + VAE + flow + template)."""
    from ecgflowcmr.pipeline import bundle_geometry, write_bundle

    metrics = evaluate(model, cfg, run_dir)
    upstream = json.loads((Path(run_dir) / "upstream.json").read_text())
    config: FlowConfig = model.config
    sampling = {"steps": config.sample_steps, "method": config.sample_method, "guidance": config.sample_guidance}
    write_bundle(Path(run_dir) / "bundle", pamae_run=Path(upstream["pamae"]), vae_run=Path(upstream["vae"]),
                 flow_run=Path(run_dir), sampling=sampling, geometry=bundle_geometry(Path(data)))
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Sample test latents with the config's sampling defaults; latent MSEs against the real latents."""
    test = read_encoded_split(run_dir, "test")
    if test is None:
        return {"flow_test_items": {"value": 0, "definition": "no paired test item with a valid ECG alignment"}}
    n = test["z1"].shape[0] if cfg.stage.eval_items == 0 else min(cfg.stage.eval_items, test["z1"].shape[0])
    z1, cond = test["z1"][:n], test["cond"][:n]
    config: FlowConfig = model.config
    device = model.template.device
    model.eval()

    def generate(c: Tensor) -> Tensor:  # the same noise for every call
        generator = torch.Generator(device=device).manual_seed(cfg.stage.eval_seed)
        out = []
        for start in range(0, n, cfg.stage.encode_batch_size):
            part = c[start : start + cfg.stage.encode_batch_size].to(device)
            out.append(sample(model, part, steps=config.sample_steps, method=config.sample_method,
                              guidance=config.sample_guidance, generator=generator).cpu())
        return torch.cat(out)

    how = (f"{config.sample_steps} {config.sample_method} steps, guidance {config.sample_guidance}, "
           f"α={config.alpha}, seed {cfg.stage.eval_seed}, {n} test items, scaled VAE latent units")
    other = "item i paired with test item i − 1 (cyclic)"
    metrics: dict[str, Any] = {
        "flow_latent_mse": {
            "value": float(((generate(cond) - z1) ** 2).mean()),
            "definition": f"mean over items and latent elements of (ẑ1 − z1)², ẑ1 sampled from the subject's own "
                          f"ECG; {how}. A sample, not a mean prediction: compare with flow_latent_mse_real_pairs "
                          f"(the value if the ECG told nothing), not with the template"},
        "flow_latent_mse_template": {
            "value": float(((model.template.cpu() - z1) ** 2).mean()),
            "definition": "template-only baseline: mean of (z_template − z1)² (z_template = 0 if use_template is "
                          "false), no ECG, no sampling, same items"},
        "flow_test_items": {"value": n, "definition": "test items with a valid ECG alignment that were sampled"},
    }
    if n < 2:  # the comparisons below need two subjects
        return metrics
    metrics |= {
        "flow_latent_mse_other_ecg": {
            "value": float(((generate(cond.roll(1, dims=0)) - z1) ** 2).mean()),
            "definition": f"as flow_latent_mse but ẑ1 sampled from another subject's ECG ({other}), same noise: "
                          f"above flow_latent_mse when the ECG controls the result; {how}"},
        "flow_latent_mse_real_pairs": {
            "value": float(((z1.roll(1, dims=0) - z1) ** 2).mean()),
            "definition": f"real-vs-real reference: mean of (z1_other − z1)² between two real test latents "
                          f"({other}); a perfect sampler that ignored the ECG would score this"},
    }
    return metrics


def load(run_dir: Path, device: str | torch.device = "cpu") -> FlowMatching:
    """The trained flow (DiT, template, α, sampling defaults) from run_dir, in eval mode."""
    from ecgflowcmr.training.checkpoint import load_weights, read_config

    config = from_dict(FlowConfig, read_config(run_dir), prefix="model.")
    model = FlowMatching(config)
    load_weights(model, run_dir)
    return model.to(device).eval()

