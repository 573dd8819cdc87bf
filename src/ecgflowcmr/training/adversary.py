"""A discriminator trained against the model, stepped by the training loop (the VAE's optional PatchGAN).

Per optimizer step, :func:`~ecgflowcmr.training.loop.fit`

1. runs ``model(batch, adversary)`` for each micro-batch: the model adds ``w·generator_loss(real, fake)``
   (hinge generator term ``−mean D(fake)``, the discriminator frozen) to its loss, and the adversary keeps
   the detached pair;
2. after the model's backward, calls :meth:`Adversary.step`: one hinge-loss update of the discriminator
   (Isola et al. 2017; as LDM's autoencoders) on the pairs of this step, with its own Adam.

The discriminator is not part of the model: the engine's optimizer, EMA and weight export never see it;
checkpoints carry it (``state_dict``) so that a resumed run continues it. Before ``start`` optimizer
steps the generator term is 0; the discriminator is updated from ``start − warmup`` on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgflowcmr.training import distributed as dist


class Adversary:
    """Discriminator ``D`` (any module mapping a batch to logits) with its own Adam (β = 0.5, 0.9)."""

    def __init__(self, discriminator: nn.Module, lr: float, start: int = 0, warmup: int = 0):
        self.discriminator = discriminator
        self.optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
        self.start = start
        self.disc_start = max(start - warmup, 0)
        """The discriminator trains alone from here until ``start`` (``warmup`` steps), so that the generator
        term begins against a discriminator that already tells real from reconstructed."""
        self.steps = 0
        """Optimizer steps taken by the model so far."""
        self._pairs: list[tuple[Tensor, Tensor]] = []

    @property
    def active(self) -> bool:
        return self.steps >= self.start

    def generator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """``−mean D(fake)`` with D frozen (0 before ``start``); from ``disc_start`` on keeps (real, fake.detach())
        for :meth:`step`."""
        if self.steps >= self.disc_start:
            self._pairs.append((real.detach(), fake.detach()))
        if not self.active:
            return fake.new_zeros(())
        disc = self.discriminator.to(fake.device).train()
        disc.requires_grad_(False)  # the generator term must not leave gradients on D
        term = -disc(fake).mean()
        disc.requires_grad_(True)
        return term

    def step(self) -> dict[str, float]:
        """One hinge-loss update of D on this step's pairs (gradient of their mean); ``{"disc_loss": …}``
        summed over the micro-batches, as the loop sums the model's parts.

        Under torch.distributed D's gradients are averaged over ranks, so every rank keeps the same D.
        """
        self.steps += 1
        pairs, self._pairs = self._pairs, []
        if not pairs:
            return {"disc_loss": 0.0}
        disc = self.discriminator
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for real, fake in pairs:
            d_loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake)).mean()
            (d_loss / len(pairs)).backward()
            total += float(d_loss.detach())
        if dist.is_distributed():
            for p in disc.parameters():
                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
        self.optimizer.step()
        return {"disc_loss": total}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "discriminator": self.discriminator.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
