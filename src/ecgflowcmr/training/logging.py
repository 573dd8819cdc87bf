"""What a run reports: a progress bar, ``metrics.jsonl`` (one JSON object per logged step) and, behind a
flag, TensorBoard. Only rank 0 constructs an enabled logger; on other ranks every method does nothing.

``metrics.jsonl`` lines::

    {"split": "train", "step": 10, "epoch": 0, "loss": 0.51, "parts": {"rec": 0.4}, "lr": 1e-4,
     "grad_norm": 0.8, "items_per_s": 120.3, "skipped": 0, "time": 12.5}
    {"split": "val", "step": 200, "loss": 0.48, "parts": {...}, "items": 64, "time": 250.1}

``step`` counts optimizer steps completed; ``time`` is seconds of training since the run began (summed
over resumed sessions).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ecgflowcmr.atomic import write_text_atomic
from ecgflowcmr.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
LINE_EVERY_S = 10.0
"""Without a TTY (no progress bar), a plain progress line at most this often."""


class RunLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int,
                 tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.bar: tqdm | None = None
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rewind(start_step)
        self.file = self.path.open("a", buffering=1)  # line-buffered: a crash loses at most one line
        self.total, self.last_line = total_steps, -math.inf
        if sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard", "needs the tensorboard package "
                                  "(pip install 'ecgflowcmr[tensorboard]')") from None
            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def _rewind(self, step: int) -> None:
        """Drop lines logged after ``step`` (by a session that was interrupted and is now resumed)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a crash
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def train(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._write({"split": "train", **record})
        loss = f"{record['loss']:.4g}"
        if self.bar is not None:
            self.bar.set_postfix(loss=loss, items_s=f"{record['items_per_s']:.1f}", refresh=False)
        elif time.monotonic() - self.last_line >= LINE_EVERY_S or record["step"] == self.total:
            self.last_line = time.monotonic()
            self.message(f"step {record['step']}/{self.total}: loss {loss}, {record['items_per_s']:.1f} items/s")
        if self.tb is not None:
            self._scalars("train", record)

    def val(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._write({"split": "val", **record})
        self.message(f"step {record['step']}: val loss {record['loss']:.5g}")
        if self.tb is not None:
            self._scalars("val", record)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        """One line for the user (printed above the bar on a TTY, plain on stderr otherwise)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.file.close()

    def _write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(_finite_or_none(record)) + "\n")

    def _scalars(self, split: str, record: dict[str, Any]) -> None:
        step = record["step"]
        for key in ("loss", "lr", "grad_norm", "items_per_s"):
            if key in record:
                self.tb.add_scalar(f"{split}/{key}", record[key], step)
        for key, value in record.get("parts", {}).items():
            self.tb.add_scalar(f"{split}/{key}", value, step)


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
