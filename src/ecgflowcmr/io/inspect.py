"""``ecgflowcmr inspect``: describe any supported ECG or cine file (format sniffed, then the right reader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecgflowcmr.io.formats import is_ecg, sniff


def inspect_file(path: str | Path) -> dict[str, Any]:
    """A JSON-serialisable description; ``kind`` is ``"ecg"`` or ``"cine"`` (keys in the README)."""
    fmt = sniff(path)
    if is_ecg(fmt):
        from ecgflowcmr.io.ecg import inspect_ecg

        return {"kind": "ecg", **inspect_ecg(path)}
    from ecgflowcmr.io.cmr import inspect_cine

    return {"kind": "cine", **inspect_cine(path)}


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned ``key: value`` lines for people."""
    width = max(len(k) for k in report)
    lines = []
    for key, value in report.items():
        if isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value) if value else "-"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)
