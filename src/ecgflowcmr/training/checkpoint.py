"""Exported weights (safetensors + JSON) and resumable training state (``checkpoints/step-N/``).

Two kinds of files, kept apart on purpose:

* **Weights** — ``model.safetensors`` + ``config.json`` in a run folder: what later stages and the pipeline
  load. Loading never unpickles, checks every key and shape, and names what is missing or unexpected.
* **Training state** — ``checkpoints/step-N/state.pt`` (+ ``config.yaml``): model, EMA, optimizer, step
  (the learning-rate schedule is a pure function of it), data position (epoch, batch), per-rank RNG
  states, best validation loss, training time and the resolved config, written with ``torch.save`` and
  read back with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts only).

Every folder and file appears whole or not at all (``ecgflowcmr.atomic``): a checkpoint folder is written
under a hidden temporary name and renamed when complete, so ``latest_checkpoint`` never sees a partial one.
"""

from __future__ import annotations

import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from ecgflowcmr.atomic import atomic_dir
from ecgflowcmr.errors import InputError

STATE_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------------------------------
# Exported weights
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Training state
# --------------------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_checkpoint(folder: str | Path, state: dict[str, Any], config_yaml: str = "") -> Path:
    """Write ``state`` (torch.save) and the resolved config into ``folder``, atomically (replacing it)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        torch.save(state, tmp / STATE_FILE)
        (tmp / "config.yaml").write_text(config_yaml)
    return folder


def step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete ``checkpoints/step-N`` folders as (N, path), oldest first (temporary folders are hidden)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete step checkpoint with the highest step, or None."""
    found = step_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` most recent step checkpoints (``best/`` is never touched)."""
    for _, path in step_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def resolve_resume(run_dir: str | Path, resume: str | Path) -> Path:
    """``"latest"`` → the latest complete checkpoint of ``run_dir``; else a checkpoint folder, its
    ``state.pt``, or another run folder (its latest checkpoint). Raises InputError if there is none."""
    if str(resume) == "latest":
        found = latest_checkpoint(run_dir)
        if found is None:
            raise InputError(checkpoint_dir(run_dir), "no complete checkpoint to resume from "
                             "(run without --resume to start fresh)")
        return found
    path = Path(resume)
    if path.is_file() and path.name == STATE_FILE:
        return path.parent
    if (path / STATE_FILE).is_file():
        return path
    if path.is_dir() and (found := latest_checkpoint(path)) is not None:
        return found
    raise InputError(path, f"not a checkpoint folder (expected {STATE_FILE} inside, or a run folder "
                     "with checkpoints/step-N)")


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The training state saved by :func:`write_checkpoint` (CPU tensors; never unpickles code)."""
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "checkpoint not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        # UnpicklingError: the safe loader refused an object; RuntimeError/BadZipFile: not a torch zip archive
        raise InputError(path, f"not a readable training checkpoint ({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    """One line about why torch refused the file. Its unpickling error carries paragraphs of advice, among
    them loading with ``weights_only=False`` (running the file's code): for a file we did not write that
    advice is wrong, so only what was refused is kept."""
    text = " ".join(str(err).split())
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"Unsupported operand \d+", text)
        what = f" ({found.group(1) if found.groups() else found.group(0)})" if found else ""
        return f"it holds objects other than tensors and plain data{what}; such files are never loaded"
    return text[:300]
