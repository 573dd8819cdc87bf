"""One process per device: the same code runs alone, on one GPU, or under ``torchrun --nproc_per_node=N``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; when they say
more than one process, :func:`setup_distributed` joins the process group (NCCL on CUDA, gloo on CPU) and
picks ``cuda:LOCAL_RANK``. Without them it is a single process and every collective here is a no-op, so
callers never branch on the world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ecgflowcmr.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    """This process's index in [0, world_size)."""
    world_size: int
    local_rank: int
    """Index on this machine; selects the GPU."""
    device: torch.device


_INFO: DistInfo | None = None


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun (idempotent) and choose this process's device.

    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    """
    global _INFO
    if _INFO is not None:
        return _INFO
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError("train.device", f"must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda was asked for but no CUDA device is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
                                device_id=chosen if use_cuda else None)
    _INFO = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)
    return _INFO


def teardown_distributed() -> None:
    """Leave the process group (if joined) and forget the device choice."""
    global _INFO
    if dist.is_initialized():
        dist.destroy_process_group()
    _INFO = None


def info() -> DistInfo:
    """The current process's rank, world size and device (single CPU process if not set up)."""
    return _INFO if _INFO is not None else DistInfo(0, 1, 0, torch.device("cpu"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on the process that logs and writes files (rank 0)."""
    return info().rank == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_flag(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (so all ranks take the same branch)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a 1-D float tensor (returned on the tensor's original device)."""
    if not is_distributed():
        return values
    t = values.detach().to(_collective_device(), torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(values.device, values.dtype)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable) in rank order, on every rank; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    return info().device if dist.get_backend() == "nccl" else torch.device("cpu")
