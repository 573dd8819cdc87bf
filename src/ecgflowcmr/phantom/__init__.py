"""The paired ECG–CMR phantom (docs/decisions.md): a seeded cohort of 12-lead ECGs and four-chamber cines.

``make_cohort(out, n, seed)`` writes WFDB + NIfTI + manifest.csv; ``simulate_subject(index, seed, cfg)``
returns one subject's arrays and phenotypes without writing anything.
"""

from ecgflowcmr.phantom.config import PhantomConfig, load_phantom_config
from ecgflowcmr.phantom.simulate import Subject, make_cohort, simulate_subject

__all__ = ["PhantomConfig", "Subject", "load_phantom_config", "make_cohort", "simulate_subject"]
