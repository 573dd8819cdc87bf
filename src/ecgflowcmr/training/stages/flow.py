"""Training stage ``flow``: the AMDF DiT on (VAE latent, aligned PA-MAE ECG tokens) pairs (paper §2.2).

The PA-MAE and the VAE are frozen and stay outside the trained module: ``build`` encodes every paired
split once (batched, no_grad) into the folder ``run_dir/cache/<split>-<rank>of<world>/`` — ``z1.npy``
float32 (n, C, 50, 12, 12), ``cond.npy`` float32 (n, 50, D), ``index.npy`` int64 (n,), ``meta.json`` —
reused on resume while the store and both upstream runs are unchanged, and read memory-mapped (at UK
Biobank scale the arrays are ~8 GB: no process holds them). Plain .npy rather than safetensors because a
.npy can be written batch by batch and mapped by any process. Items whose ECG yields no valid aligned cycle
(``AlignedECG.valid`` False) are left out and counted in meta.json.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ecgflowcmr.atomic import atomic_dir, write_text_atomic
from ecgflowcmr.bundle import bundle_geometry, load_pamae, load_vae, read_template, write_bundle
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.flow.sampler import sample
from ecgflowcmr.training.config import EvalConfig, TrainConfig

if TYPE_CHECKING:
    from ecgflowcmr.training.loop import Setup

CACHE_VERSION = "2"
SPLITS = ("train", "val", "test")


@dataclass
class FlowStageConfig:
    encode_batch_size: int = 8
    """Batch size when encoding the store with the frozen PA-MAE and VAE (once, before training)."""

    def __post_init__(self) -> None:
        if self.encode_batch_size < 1:
            raise ConfigError("stage.encode_batch_size", f"must be ≥ 1, got {self.encode_batch_size}")


@dataclass
class RunConfig:
    model: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage: FlowStageConfig = field(default_factory=FlowStageConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_items=64))


class LatentPairs(Dataset):
    """Item i: {"z1": (C, 50, H', W') float32, "cond": (50, D) float32}, the i-th encoded item in store order.

    Reads cache shards ``folder/{z1,cond,index}.npy`` memory-mapped, joined in item order through a small
    (shard, row) table: a process holds only the rows its batches touch, and the pages are shared with every
    other process reading the same files (DDP ranks, DataLoader workers). The maps are never pickled: each
    worker opens its own.
    """

    def __init__(self, folders: Sequence[Path]):
        self.folders = [Path(f) for f in folders]
        indices = [np.load(f / "index.npy") for f in self.folders]  # (n_s,) int64 each: small
        where = np.concatenate([np.stack([np.full(len(ix), s), np.arange(len(ix))], axis=1)
                                for s, ix in enumerate(indices)])  # (N, 2) shard and row
        index = np.concatenate(indices)
        order = np.argsort(index, kind="stable")
        self.index = torch.from_numpy(index[order])  # (N,) the store item at each position
        self._where = where[order]
        self._arrays: list[dict[str, np.ndarray]] | None = None
        row_shapes = set()
        for folder, arrays, ix in zip(self.folders, self.arrays, indices, strict=True):
            if len(ix) == 0:  # a shard whose every ECG was invalid holds 1-D empty arrays
                continue
            if not len(arrays["z1"]) == len(arrays["cond"]) == len(ix):
                raise InputError(folder, "z1.npy, cond.npy and index.npy differ in length (a damaged cache)")
            row_shapes.add((arrays["z1"].shape[1:], arrays["cond"].shape[1:]))
        if len(row_shapes) > 1:
            raise InputError(self.folders[0].parent, f"cache shards differ in shape: {sorted(row_shapes)}")
        z1_row, cond_row = row_shapes.pop() if row_shapes else ((), ())
        self.z1_shape = (len(self), *z1_row)  # (N, C, 50, H', W')
        self.cond_shape = (len(self), *cond_row)  # (N, 50, D)

    @property
    def arrays(self) -> list[dict[str, np.ndarray]]:
        """Per shard {"z1", "cond"} memory-mapped (opened on first use in each process)."""
        if self._arrays is None:
            self._arrays = [{name: np.load(f / f"{name}.npy", mmap_mode="r") for name in ("z1", "cond")}
                            for f in self.folders]
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # a pickled memmap would carry its whole array

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        shard, row = self._where[index]
        arrays = self.arrays[shard]
        return {"z1": torch.from_numpy(np.array(arrays["z1"][row])),  # copied out of the map
                "cond": torch.from_numpy(np.array(arrays["cond"][row]))}

    def tensors(self, n: int | None = None) -> dict[str, Tensor]:
        """The first n (default all N) items in memory: {"z1": (n, C, 50, H', W'), "cond": (n, 50, D), "index": (n,)}."""
        n = len(self) if n is None else min(n, len(self))
        out = {"z1": torch.empty(n, *self.z1_shape[1:]), "cond": torch.empty(n, *self.cond_shape[1:]),
               "index": self.index[:n].clone()}
        for i in range(n):
            item = self[i]
            out["z1"][i], out["cond"][i] = item["z1"], item["cond"]
        return out


# --------------------------------------------------------------------------------------------------
# Encoding the store once with the frozen networks
# --------------------------------------------------------------------------------------------------


class NpyAppender:
    """A .npy file written batch by batch: rows appended, the row count put into the header by ``finish``.

    numpy pads every .npy header so that the first dimension can grow in place (``GROWTH_AXIS_MAX_DIGITS``
    in numpy/lib/format.py): the header for 0 rows and the one for the final count have the same length.
    """

    def __init__(self, path: Path, dtype: np.dtype | type):
        self.path, self.dtype, self.rows = Path(path), np.dtype(dtype), 0
        self.row_shape: tuple[int, ...] | None = None

    def _write_header(self, file: BinaryIO) -> int:
        file.seek(0)
        np.lib.format.write_array_header_1_0(file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                    "fortran_order": False, "shape": (self.rows, *self.row_shape)})
        return file.tell()

    def append(self, rows: np.ndarray) -> None:
        """rows: (b, *row_shape); every call must have the same row shape."""
        if self.row_shape is None:
            self.row_shape = tuple(rows.shape[1:])
            with open(self.path, "wb") as file:
                self.data_start = self._write_header(file)
        if tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {tuple(rows.shape[1:])} after {self.row_shape}")
        with open(self.path, "ab") as file:
            file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def finish(self) -> None:
        """Finish the file (an empty 1-D array if no row was appended)."""
        if self.row_shape is None:
            np.save(self.path, np.zeros(0, self.dtype))
            return
        with open(self.path, "r+b") as file:
            if self._write_header(file) != self.data_start:
                raise RuntimeError(f"{self.path}: the .npy header changed length")


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _cache_key(data: Path, split: str, pamae: Path, vae: Path) -> dict[str, str]:
    return {"version": CACHE_VERSION, "split": split, "store": _fingerprint(Path(data) / "store.json"),
            "pamae": _fingerprint(Path(pamae) / "model.safetensors"),
            "vae": _fingerprint(Path(vae) / "model.safetensors")}


def _read_cache_meta(folder: Path) -> dict[str, str] | None:
    path = Path(folder) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cache_is_current(folder: Path, key: dict[str, str]) -> bool:
    meta = _read_cache_meta(folder)
    return meta is not None and all(meta.get(k) == v for k, v in key.items())


def _shard_path(run_dir: Path, split: str, rank: int, world: int) -> Path:
    return Path(run_dir) / "cache" / f"{split}-{rank}of{world}"


@torch.no_grad()
def encode_split(data: Path, split: str, pamae_net: nn.Module, vae_net: nn.Module, batch_size: int,
                 device: torch.device, out: Path, key: dict[str, str], rank: int = 0, world: int = 1) -> int:
    """Items rank, rank + world, … of a split → the cache shard folder ``out``; returns the items dropped.

    ``out``: z1.npy float32 (n, C, 50, H', W'), cond.npy float32 (n, 50, D), index.npy int64 (n,), written
    batch by batch (nothing accumulates in memory), and meta.json (``key`` + the count of items left out
    because their ECG has no valid aligned cycle). The folder appears whole or not at all.
    """
    from ecgflowcmr.signal.phase import rpeaks_from_labels
    from ecgflowcmr.store.prepared import StoreDataset

    dataset = StoreDataset(data, split, fields=("ecg", "phase", "cine"))
    loader = DataLoader(Subset(dataset, range(rank, len(dataset), world)), batch_size=batch_size)
    dropped = 0
    with atomic_dir(out) as tmp:
        files = {name: NpyAppender(tmp / f"{name}.npy", dtype)
                 for name, dtype in (("z1", np.float32), ("cond", np.float32), ("index", np.int64))}
        for batch in loader:
            rpeaks = [rpeaks_from_labels(p) for p in batch["phase"].numpy()]  # the R-peaks read_ecg found
            aligned = pamae_net.encode_aligned(batch["ecg"].to(device), rpeaks)
            keep = aligned.valid.bool().cpu()
            dropped += int((~keep).sum())
            if not keep.any():
                continue
            z = vae_net.encode_latent(batch["cine"][keep].to(device))  # (b, C, 50, H', W')
            files["z1"].append(z.float().cpu().numpy())
            files["cond"].append(aligned.tokens[keep.to(aligned.tokens.device)].float().cpu().numpy())  # (b, 50, D)
            files["index"].append(batch["index"][keep].numpy())
        for file in files.values():
            file.finish()
        (tmp / "meta.json").write_text(json.dumps({**key, "dropped_invalid_ecg": str(dropped),
                                                    "items": str(files["index"].rows)}, indent=2))
    return dropped


def load_frozen(pamae: Path, vae: Path, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The trained PA-MAE and VAE, frozen (eval mode, no gradients)."""

    nets = (load_pamae(pamae, device=device), load_vae(vae, device=device))
    for net in nets:
        net.eval().requires_grad_(False)
    return nets


def open_encoded_split(run_dir: Path, split: str, world: int | None = None) -> LatentPairs | None:
    """The cached split as a memory-mapped :class:`LatentPairs` (shards joined in item order); None if
    absent or empty.

    ``world``: the number of shards; None = that of the most recently written shard set.
    """
    if world is None:
        firsts = [p for p in (Path(run_dir) / "cache").glob(f"{split}-0of*") if (p / "meta.json").exists()]
        if not firsts:
            return None
        world = int(max(firsts, key=lambda p: (p / "meta.json").stat().st_mtime_ns).name.rsplit("of", 1)[1])
    folders = [_shard_path(run_dir, split, r, world) for r in range(world)]
    if any(_read_cache_meta(f) is None for f in folders):
        return None
    pairs = LatentPairs(folders)
    return pairs if len(pairs) else None


def read_encoded_split(run_dir: Path, split: str, world: int | None = None) -> dict[str, Tensor] | None:
    """The cached {"z1", "cond", "index"} of a split in memory (shards joined in item order); None if absent.

    For evaluation; training reads the cache memory-mapped (:func:`open_encoded_split`).
    """
    pairs = open_encoded_split(run_dir, split, world)
    return None if pairs is None else pairs.tensors()


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
        path = _shard_path(run_dir, split, rank, world)
        key = _cache_key(data, split, pamae, vae)
        if not _cache_is_current(path, key):
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
    first = train[0]
    config = fit_to_upstream(cfg.model, first["z1"][None], first["cond"][None])
    template = read_template(Path(vae)) if config.use_template else None
    model = FlowMatching(config, template)
    write_text_atomic(Path(run_dir) / "upstream.json",
                      json.dumps({"pamae": str(Path(pamae).resolve()), "vae": str(Path(vae).resolve())}, indent=2))
    return Setup(model=model, train_set=train, val_set=encoded.get("val"))


def finalize(model: nn.Module, cfg: RunConfig, data: Path, run_dir: Path) -> dict[str, Any]:
    """Evaluate on the test split, then assemble ``run_dir/bundle/`` (PA-MAE + VAE + flow + template)."""
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
    pairs = open_encoded_split(run_dir, "test")
    if pairs is None:
        return {"flow_test_items": {"value": 0, "definition": "no paired test item with a valid ECG alignment"}}
    n = len(pairs) if cfg.eval.max_items == 0 else min(cfg.eval.max_items, len(pairs))
    test = pairs.tensors(n)  # only the items evaluated are read into memory
    z1, cond = test["z1"], test["cond"]
    config: FlowConfig = model.config
    device = model.template.device
    model.eval()

    def generate(c: Tensor) -> Tensor:  # the same noise for every call
        generator = torch.Generator(device=device).manual_seed(cfg.eval.seed)
        out = []
        for start in range(0, n, cfg.eval.batch_size):
            part = c[start : start + cfg.eval.batch_size].to(device)
            out.append(sample(model, part, steps=config.sample_steps, method=config.sample_method,
                              guidance=config.sample_guidance, generator=generator).cpu())
        return torch.cat(out)

    how = (f"{config.sample_steps} {config.sample_method} steps, guidance {config.sample_guidance}, "
           f"α={config.alpha}, seed {cfg.eval.seed}, {n} test items, scaled VAE latent units")
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


