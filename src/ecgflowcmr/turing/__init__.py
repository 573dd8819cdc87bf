"""A Turing-test kit: raters tell shuffled real from generated cines in their browser (docs/turing.md).

``create_study`` draws and encodes the cines and writes the study (``study.py``, ``encode.py``,
``sources.py``); ``serve`` runs the raters' web app (``server.py``, ``pages.py``); ``score_study`` and
``report_section`` compute the statistics (``score.py``), the only code that reads the answer key.
"""

from ecgflowcmr.turing.score import report_section, score_study, write_score
from ecgflowcmr.turing.server import create_app, serve
from ecgflowcmr.turing.study import create_study

__all__ = ["create_app", "create_study", "report_section", "score_study", "serve", "write_score"]
