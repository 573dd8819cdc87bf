"""The flow stage's latent cache: the store encoded once by the frozen PA-MAE and VAE, memory-mapped.

Folder ``<cache>/<split>-<rank>of<world>/``: ``z1.npy`` float32 (n, C, 50, 12, 12), ``cond.npy`` float32
(n, 50, D), ``index.npy`` int64 (n,), ``meta.json`` (the key it was built for + counts). Reused while the
store and both upstream runs are unchanged, and read memory-mapped (at UK Biobank scale the arrays are
~8 GB: no process holds them). Plain .npy rather than safetensors because a .npy can be written batch by
batch and mapped by any process. Items whose ECG yields no valid aligned cycle (``AlignedECG.valid``
False) are left out and counted in meta.json.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ecgflowcmr.atomic import atomic_dir
from ecgflowcmr.errors import InputError

CACHE_VERSION = "3"
"""Version 3: the PA-MAE's R-peak fallback uses the R-peaks read_ecg found (from the store's phase labels)."""


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


def cache_key(data: Path, split: str, pamae_weights: Path, vae_weights: Path,
              configs: Sequence[Path] = ()) -> dict[str, str]:
    """What a cache shard was built from: the store, both networks' weight files (path, size, mtime) and
    the content of their ``configs`` (an edited PA-MAE alignment, ``align_cut`` …, changes the conditions
    encoded from the same weights)."""
    digest = hashlib.sha256()
    for config in configs:
        digest.update(Path(config).read_bytes() if Path(config).exists() else b"")
    return {"version": CACHE_VERSION, "split": split, "store": _fingerprint(Path(data) / "store.json"),
            "pamae": _fingerprint(Path(pamae_weights)), "vae": _fingerprint(Path(vae_weights)),
            "configs": digest.hexdigest()}


def read_cache_meta(folder: Path) -> dict[str, str] | None:
    path = Path(folder) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def cache_is_current(folder: Path, key: dict[str, str]) -> bool:
    meta = read_cache_meta(folder)
    return meta is not None and all(meta.get(k) == v for k, v in key.items())


def shard_path(run_dir: Path, split: str, rank: int, world: int) -> Path:
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
    folders = [shard_path(run_dir, split, r, world) for r in range(world)]
    if any(read_cache_meta(f) is None for f in folders):
        return None
    pairs = LatentPairs(folders)
    return pairs if len(pairs) else None


def read_encoded_split(run_dir: Path, split: str, world: int | None = None) -> dict[str, Tensor] | None:
    """The cached {"z1", "cond", "index"} of a split in memory (shards joined in item order); None if absent.

    For evaluation; training reads the cache memory-mapped (:func:`open_encoded_split`).
    """
    pairs = open_encoded_split(run_dir, split, world)
    return None if pairs is None else pairs.tensors()
