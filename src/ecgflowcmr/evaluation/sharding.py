"""Per-item work of an evaluation split over the ranks of a process group (``torchrun``), gathered on rank 0.

Rank r of W takes one contiguous block of the N items, cut at multiples of ``align`` items (a batch of the
work), so every batch a rank runs is a batch the single process runs too and the results are the same bit for
bit whatever W. Inputs may be :class:`StoreRows` (a store array read on demand): a rank then reads only its
block, a piece at a time. Rank 0 writes its block straight into the whole; the other ranks send theirs to it as
raw tensors received in place (no pickles, no copy on the ranks that do not need it) and get None back: only
rank 0 holds the whole.
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


PIECE = 64
"""Items per call of the mapped function (rounded to whole ``align`` units): a lazy input is read, and a result
that is not kept is held, a piece at a time."""


def shard_map(fn: Callable[..., Any], *arrays: Any, align: int = 1) -> Any:
    """``fn(*arrays)`` over items (first axis). Under an initialised process group rank r computes its
    ``block`` and rank 0 returns the whole result in item order, the other ranks None; alone it is a plain
    call. ``fn`` returns an array or a tuple of arrays with the items first; it runs on pieces of about
    ``PIECE`` items, each a run of whole ``align``-item units (the batch its work runs in), so the pieces and
    the blocks change no value."""
    rank, world = process_rank()
    n = len(arrays[0])
    mine = block(n, align, rank, world)
    is_tuple, full = _map_pieces(fn, arrays, mine, align, n if rank == 0 else mine.stop - mine.start)
    if world > 1:
        is_tuple, full = _gather_blocks(is_tuple, full, n, align, rank, world)
    if full is None:
        return None
    return full if is_tuple else full[0]


def _map_pieces(fn: Callable[..., Any], arrays: tuple[Any, ...], where: slice, align: int, size: int
                ) -> tuple[bool | None, tuple[np.ndarray, ...] | None]:
    """``fn`` over the items in ``where``, piece by piece; results written into arrays of ``size`` items (on
    rank 0 the whole, with its block at ``where``; elsewhere the block). (result is a tuple?, arrays), or
    (None, None) when ``where`` is empty."""
    step = align * max(1, PIECE // align)
    is_tuple, outs = None, None
    offset = where.start  # item where.start is row 0 of a block's arrays; rank 0's block starts at 0
    for start in range(where.start, where.stop, step):
        stop = min(start + step, where.stop)
        result = fn(*(np.asarray(a[start:stop]) for a in arrays))
        is_tuple = isinstance(result, tuple)
        parts = result if is_tuple else (result,)
        if outs is None:
            outs = tuple(np.empty((size, *p.shape[1:]), dtype=p.dtype) for p in parts)
        for out, p in zip(outs, parts, strict=True):
            out[start - offset:stop - offset] = p
    return is_tuple, outs


def _gather_blocks(is_tuple: bool | None, mine: tuple[np.ndarray, ...] | None, n: int, align: int, rank: int,
                   world: int) -> tuple[bool | None, tuple[np.ndarray, ...] | None]:
    """Each rank's block results (rank 0's already in place in its whole arrays; None for a rank without
    items) → rank 0's whole arrays, received in place (the other ranks get (None, None))."""
    import torch
    import torch.distributed as dist

    layout = None if mine is None else (is_tuple, [(p.shape[1:], p.dtype.str) for p in mine])
    layouts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(layout, layouts, dst=0)
    if rank != 0:
        for p in mine or ():
            dist.send(torch.from_numpy(p), dst=0)
        return None, None
    found = [x for x in layouts if x is not None]
    if not found:
        return None, None
    is_tuple, shapes = found[0]
    full = mine if mine is not None else tuple(np.empty((n, *shape), dtype=np.dtype(dtype)) for shape, dtype in shapes)
    for r in range(1, world):
        where = block(n, align, r, world)
        if where.stop > where.start:
            for out in full:
                dist.recv(torch.from_numpy(out[where]), src=r)
    return is_tuple, full
