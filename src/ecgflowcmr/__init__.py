"""ecgflowcmr: 12-lead ECG → cine cardiac MRI (ECGFlowCMR), with a paired ECG–CMR phantom.

Public API: :func:`read_ecg`, :func:`read_cine`, :func:`load_pipeline`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ecgflowcmr.version import __version__

__all__ = ["__version__", "load_pipeline", "read_cine", "read_ecg"]

if TYPE_CHECKING:
    from ecgflowcmr.io.cmr import read_cine
    from ecgflowcmr.io.ecg import read_ecg
    from ecgflowcmr.pipeline import load_pipeline


def __getattr__(name: str) -> Any:  # lazy: `import ecgflowcmr` stays cheap (no torch) for the CLI
    if name == "read_ecg":
        from ecgflowcmr.io.ecg import read_ecg

        return read_ecg
    if name == "read_cine":
        from ecgflowcmr.io.cmr import read_cine

        return read_cine
    if name == "load_pipeline":
        from ecgflowcmr.pipeline import load_pipeline

        return load_pipeline
    raise AttributeError(name)
