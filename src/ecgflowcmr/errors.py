"""Errors the user can act on.

Every problem with a user's file, manifest or configuration is raised as one of these, carries one line
that names the file (or field) and what is wrong, and is printed by the CLI without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A user-supplied file or value is unusable: ``str(err)`` is ``"<where>: <problem>"`` on one line."""

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.where}: {self.problem}")


class ConfigError(InputError):
    """A configuration field is unknown, mistyped or out of range."""
