"""Per-item work of an evaluation split over the ranks of a process group (``torchrun``), gathered on rank 0.

Rank r of W takes one contiguous block of the N items, cut at multiples of ``align`` items (a batch of the
work), so every batch a rank runs is a batch the single process runs too and the results are the same bit for
bit whatever W. Inputs may be :class:`StoreRows` (a store array read on demand): a rank then reads only its
block. The other ranks send their results to rank 0 as raw tensors into its preallocated output (no pickles,
no copy on the ranks that do not need it) and get None back: only rank 0 holds the whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def process_rank() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def block(n: int, align: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s items of n: the ``rank``-th of ``world`` contiguous runs of whole ``align``-item units."""
    units = -(-n // align)
    return slice(min(n, units * rank // world * align), min(n, units * (rank + 1) // world * align))


class StoreRows:
    """Rows of a (memory-mapped) array converted only when read, so a rank reads its block and no more.

    ``rows[i]`` → row i converted; ``rows[slice or index array]`` → a StoreRows of those rows (nothing read);
    ``np.asarray(rows)`` → every row converted. ``convert`` maps stored rows (k, ...) to values (k, ...) row by
    row (elementwise, so a block reads the same values as the whole)."""

    def __init__(self, source: np.ndarray, convert: Callable[[np.ndarray], np.ndarray],
                 index: np.ndarray | None = None):
        self.source, self.convert = source, convert
        self.index = np.arange(len(source)) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.source.shape[1:])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int | np.integer):
            return self.convert(self.source[self.index[key]][None])[0]
        return StoreRows(self.source, self.convert, self.index[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        idx = self.index
        contiguous = len(idx) > 0 and idx[-1] - idx[0] == len(idx) - 1 and bool(np.all(np.diff(idx) == 1))
        rows = self.source[idx[0]:idx[-1] + 1] if contiguous else self.source[idx]
        out = self.convert(rows)
        return out if dtype is None else out.astype(dtype, copy=False)


def shard_map(fn: Callable[..., Any], *arrays: Any, align: int = 1) -> Any:
    """``fn(*arrays)`` over items (first axis). Under an initialised process group rank r computes its
    ``block`` and rank 0 returns the whole result in item order, the other ranks None; alone it is a plain call.
    ``fn`` returns an array or a tuple of arrays with the items first; ``align``: the batch its work runs in."""
    rank, world = process_rank()
    if world == 1:
        return fn(*(np.asarray(a) for a in arrays))
    n = len(arrays[0])
    mine = block(n, align, rank, world)
    part = fn(*(np.asarray(a[mine]) for a in arrays)) if mine.stop > mine.start else None
    return _gather_blocks(part, n, align, rank, world)


def _gather_blocks(part: Any, n: int, align: int, rank: int, world: int) -> Any:
    """Each rank's block result (or None when it had no items) → the whole on rank 0 (None elsewhere)."""
    import torch
    import torch.distributed as dist

    parts = None if part is None else part if isinstance(part, tuple) else (part,)
    layout = None if parts is None else (isinstance(part, tuple), [(p.shape[1:], p.dtype.str) for p in parts])
    layouts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(layout, layouts, dst=0)
    if rank != 0:
        for p in parts or ():
            dist.send(torch.from_numpy(np.ascontiguousarray(p)), dst=0)
        return None
    is_tuple, shapes = next(x for x in layouts if x is not None)
    full = tuple(np.empty((n, *shape), dtype=np.dtype(dtype)) for shape, dtype in shapes)
    for r in range(world):
        where = block(n, align, r, world)
        if where.stop == where.start:
            continue
        for k, out in enumerate(full):
            if r == 0:
                out[where] = parts[k]
            else:
                dist.recv(torch.from_numpy(out[where]), src=r)
    return full if is_tuple else full[0]
