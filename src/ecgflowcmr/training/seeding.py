"""Randomness and data order as functions of (seed, position), so a resumed run equals an uninterrupted one.

* Epoch ``e``'s data order is a permutation seeded by (seed, e) (:class:`EpochBatches`); global batch ``j``
  is the same set of items whatever the number of processes.
* Item ``i`` of epoch ``e`` is loaded after seeding torch/numpy/random from (seed, e, i)
  (:class:`SeededItems`), in whichever process loads it (main or DataLoader worker), so dataset
  augmentation depends neither on the workers nor on where a session started.
* The training loop seeds each micro-step's forward from (seed, rank, step, micro-step) and each
  validation pass from a fixed seed (comparable validation losses).

Seeds come from ``numpy.random.SeedSequence`` over a fixed-length key (it pads short keys with zeros, so
keys of different lengths could collide).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class Purpose(IntEnum):
    """What a derived seed is for (part of the key, so the streams never coincide)."""

    ORDER = 0
    ITEM = 1
    STEP = 2
    VAL = 3
    VAL_ITEM = 4
    INIT = 5
    """The model's initial weights (drawn in the stage's ``build``)."""


def derive_seed(seed: int, purpose: Purpose, a: int = 0, b: int = 0, c: int = 0) -> int:
    """A well-mixed 63-bit seed for (seed, purpose, a, b, c); all non-negative."""
    return int(np.random.SeedSequence([seed, int(purpose), a, b, c]).generate_state(1, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class EpochBatches:
    """Batch sampler yielding ``(epoch, index)`` keys for :class:`SeededItems`.

    Epoch ``e``'s order is ``randperm(n)`` seeded by (seed, e); global batch ``j`` is
    ``order[j·G:(j+1)·G]`` with ``G = batch_size × world``, of which rank ``r`` takes the ``r``-th
    ``batch_size`` items. Items left at an epoch's end are dropped (every step sees a full global batch).
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int):
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world)

    def set_position(self, epoch: int, start: int) -> None:
        """The next ``iter`` yields epoch ``epoch`` from its batch ``start`` on."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, Purpose.ORDER, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        for j in range(self.start, len(self)):
            lo = (j * self.world + self.rank) * self.batch_size
            yield [(self.epoch, i) for i in order[lo:lo + self.batch_size]]


class SeededItems(Dataset):
    """``dataset[i]`` for key ``(epoch, i)``, loaded with every RNG seeded from (seed, purpose, epoch, i)."""

    def __init__(self, dataset: Dataset, seed: int, purpose: Purpose = Purpose.ITEM):
        self.dataset, self.seed, self.purpose = dataset, seed, purpose

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed_everything(derive_seed(self.seed, self.purpose, epoch, index))
        return self.dataset[index]


class BatchStream:
    """Endless micro-batches, epoch after epoch; ``(epoch, batch)`` is the position of the next one."""

    def __init__(self, loader: DataLoader, sampler: EpochBatches, epoch: int = 0, batch: int = 0):
        self.loader, self.sampler, self.epoch, self.batch = loader, sampler, epoch, batch
        self._it: Iterator | None = None

    def __next__(self) -> Any:
        while True:
            if self._it is None:
                self.sampler.set_position(self.epoch, self.batch)
                self._it = iter(self.loader)
            try:
                item = next(self._it)
            except StopIteration:
                self._it, self.epoch, self.batch = None, self.epoch + 1, 0
                continue
            self.batch += 1
            return item


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, numbers and tuples (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    key = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {**np_state, "state": {"key": key, "pos": np_state["state"]["pos"]}},
            "random": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    key = np_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**np_state, "state": {"key": key, "pos": np_state["state"]["pos"]}})
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
