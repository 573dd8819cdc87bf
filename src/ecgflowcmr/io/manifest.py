"""The cohort manifest (docs/formats.md): one CSV row per subject, paths relative to the manifest's folder.

Required columns: ``subject_id``, ``split`` and ``ecg_path``; ``cmr_path`` and ``mask_path`` are optional
(empty for the ECG-only cohort); any other column (phenotypes with units, labels) is carried along.
A path that leaves the manifest's folder (``..``, absolute, or a symlink out) is refused for that row.

The file is read row by row (:meth:`Manifest.iter_rows`), never whole: a row that cannot be used (extra
non-empty fields, a NUL byte, more than ``MANIFEST_MAX_ROW_CHARS``) comes with its problem so that batch
jobs record it and go on; more than ``MANIFEST_MAX_ROWS`` rows or a CSV syntax error stop the job.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgflowcmr.errors import InputError
from ecgflowcmr.limits import (
    ID_MAX_CHARS,
    MANIFEST_MAX_ROW_CHARS,
    MANIFEST_MAX_ROWS,
    check_regular_file,
    limit,
)

REQUIRED_COLUMNS: tuple[str, ...] = ("subject_id", "split", "ecg_path")
SPLITS: tuple[str, ...] = ("train", "val", "test", "ecg_only")
PAIRED_SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class ManifestRow:
    """One data row: ``values`` by column (stripped strings, ``""`` when absent); ``problem`` says why the
    row cannot be used (None when it can); ``line`` is its 1-based line number in the file."""

    line: int
    values: dict[str, str]
    problem: str | None = None


@dataclass
class Manifest:
    """A manifest whose header has been checked; rows are streamed from ``path`` on each iteration."""

    path: Path
    root: Path
    columns: list[str]
    _rows: list[dict[str, str]] | None = field(default=None, repr=False)

    def iter_rows(self) -> Iterator[ManifestRow]:
        """The data rows in file order, one at a time (see the module docstring for what is refused)."""
        max_rows, max_chars = limit(MANIFEST_MAX_ROWS), limit(MANIFEST_MAX_ROW_CHARS)
        n = len(self.columns)
        with _open_csv(self.path) as reader:
            next(reader, None)  # the header
            count = 0
            try:
                for cells in reader:
                    if not any(c.strip() for c in cells):
                        continue  # blank line
                    count += 1
                    if count > max_rows:
                        raise InputError(self.path, f"more than {max_rows:,} rows (raise the limit with "
                                         "ECGFLOWCMR_LIMIT_SCALE, or split the manifest)")
                    values = {col: (cells[i].strip() if i < len(cells) else "") for i, col in enumerate(self.columns)}
                    problem = None
                    if any(c.strip() for c in cells[n:]):
                        problem = f"{len(cells)} fields but the header has {n} (an unquoted comma?)"
                    elif sum(len(c) for c in cells) > max_chars:
                        problem = f"row longer than {max_chars:,} characters"
                    elif any("\0" in c for c in cells):
                        problem = "NUL byte in a field"
                    yield ManifestRow(reader.line_num, values, problem)
            except csv.Error as err:
                raise InputError(f"{self.path}:{reader.line_num}", f"not a readable CSV row ({err})") from None
            except UnicodeDecodeError as err:
                raise InputError(self.path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None

    @property
    def rows(self) -> list[dict[str, str]]:
        """Every usable row, held in memory (for small tables; batch jobs stream :meth:`iter_rows`)."""
        if self._rows is None:
            self._rows = [r.values for r in self.iter_rows() if r.problem is None]
        return self._rows

    def resolve(self, row: dict[str, str], column: str) -> Path | None:
        """The absolute path in ``row[column]``; None when the cell is empty.

        Raises InputError (naming the manifest, the subject and the column) when the path leaves the
        manifest's folder or cannot be a path (a NUL byte, a symlink loop, a name too long).
        """
        value = (row.get(column) or "").strip()
        if not value:
            return None
        where = f"{self.path} (subject {row.get('subject_id', '?')!r}, {column})"
        if "\0" in value:
            raise InputError(where, "path contains a NUL byte")
        rel = Path(value)
        if rel.is_absolute():
            raise InputError(where, f"path {value!r} is absolute; paths must be relative to the manifest's folder")
        try:
            full = (self.root / rel).resolve()
            inside = full.is_relative_to(self.root.resolve())
        except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
            raise InputError(where, f"path {value[:200]!r} cannot be resolved ({err})") from None
        if not inside:
            raise InputError(where, f"path {value!r} leaves the manifest's folder")
        return self.root / rel


def read_manifest(path: str | Path, required: tuple[str, ...] = REQUIRED_COLUMNS) -> Manifest:
    """Check a manifest's header (missing file, missing required column, no data row: InputError).

    Rows are not read here beyond the first: iterate :meth:`Manifest.iter_rows`.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise InputError(path, "manifest not found")
    check_regular_file(path, "manifest")
    with _open_csv(path) as reader:
        try:
            header = next(reader, None) or []
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(path, f"not a readable CSV file ({err})") from None
    columns = [c.strip() for c in header]
    while columns and not columns[-1]:
        columns.pop()  # a trailing comma on the header line
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(path, f"missing required column(s) {', '.join(missing)} (has: {', '.join(columns)})")
    if len(set(columns)) != len(columns):
        raise InputError(path, f"repeated column name(s) in the header: {', '.join(columns)}")
    manifest = Manifest(path=path, root=path.parent, columns=columns)
    if next(manifest.iter_rows(), None) is None:
        raise InputError(path, "manifest has no rows")
    return manifest


def id_problem(subject_id: str) -> str | None:
    """Why ``subject_id`` cannot name an output file, or None when it can.

    Refused: empty, longer than ``ID_MAX_CHARS``, a path separator, a leading dot (hidden, ``.``/``..``),
    control characters (NUL, newline …).
    """
    if not subject_id:
        return "empty subject_id"
    if len(subject_id) > ID_MAX_CHARS:
        return f"subject_id longer than {ID_MAX_CHARS} characters"
    if "/" in subject_id or "\\" in subject_id:
        return f"subject_id {subject_id!r} contains a path separator"
    if subject_id.startswith("."):
        return f"subject_id {subject_id!r} starts with a dot"
    if any(ord(c) < 32 or ord(c) == 127 for c in subject_id):
        return f"subject_id {subject_id!r} contains a control character"
    return None


def spreadsheet_safe(cell: str) -> str:
    """A text cell for a CSV report that spreadsheets will not run as a formula: a leading ``=``, ``+``,
    ``-``, ``@``, tab or carriage return gets a ``'`` in front (OWASP's CSV-injection advice)."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


@contextlib.contextmanager
def _open_csv(path: Path) -> Iterator[Any]:
    """A csv.reader over the file (UTF-8, a byte-order mark tolerated), closed on exit."""
    with contextlib.ExitStack() as stack:
        try:
            fh = stack.enter_context(open(path, newline="", encoding="utf-8-sig"))
        except OSError as err:
            raise InputError(path, f"cannot open the manifest ({err.strerror or err})") from None
        yield csv.reader(fh)
