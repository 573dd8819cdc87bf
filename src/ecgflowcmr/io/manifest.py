"""The cohort manifest (docs/formats.md): one CSV row per subject, paths relative to the manifest's folder.

Required columns: ``subject_id``, ``split`` and ``ecg_path``; ``cmr_path`` and ``mask_path`` are optional
(empty for the ECG-only cohort); any other column (phenotypes with units, labels) is carried along.
A path that leaves the manifest's folder (``..``, absolute, or a symlink out) is refused for that row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ecgflowcmr.errors import InputError

REQUIRED_COLUMNS: tuple[str, ...] = ("subject_id", "split", "ecg_path")
SPLITS: tuple[str, ...] = ("train", "val", "test", "ecg_only")
PAIRED_SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Manifest:
    """A parsed manifest: ``rows`` as read (strings), ``root`` the folder paths are relative to."""

    path: Path
    root: Path
    columns: list[str]
    rows: list[dict[str, str]]

    def resolve(self, row: dict[str, str], column: str) -> Path | None:
        """The absolute path in ``row[column]``; None when the cell is empty.

        Raises InputError (naming the manifest, the subject and the column) when the path leaves the
        manifest's folder.
        """
        value = (row.get(column) or "").strip()
        if not value:
            return None
        rel = Path(value)
        where = f"{self.path} (subject {row.get('subject_id', '?')}, {column})"
        if rel.is_absolute():
            raise InputError(where, f"path {value!r} is absolute; paths must be relative to the manifest's folder")
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise InputError(where, f"path {value!r} leaves the manifest's folder")
        return self.root / rel


def read_manifest(path: str | Path, required: tuple[str, ...] = REQUIRED_COLUMNS) -> Manifest:
    """Parse ``manifest.csv``; a missing file, a missing required column or an empty table is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"not a readable CSV file ({err})") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(path, f"missing required column(s) {', '.join(missing)} (has: {', '.join(columns)})")
    if not rows:
        raise InputError(path, "manifest has no rows")
    return Manifest(path=path, root=path.parent, columns=columns, rows=rows)
