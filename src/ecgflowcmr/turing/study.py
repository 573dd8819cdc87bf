"""A Turing study on disk: opaque MP4s and one SQLite database holding the items and the hidden key.

Layout::

    STUDY/study.sqlite        items, answer_key, raters, orders, answers, study (settings); WAL journal
    STUDY/videos/<32 hex>.mp4 one per cine; names from ``secrets``, never derived from the source

Tables (``SCHEMA``): ``items(item_id, video_a, video_b)`` — what raters see (``video_b`` only in pair mode);
``answer_key(item_id, truth, origin_a, origin_b)`` — single mode: truth ``real``/``generated``; pair mode:
the side (``a`` left, ``b`` right) that shows the real cine. Only ``score`` reads ``answer_key``: the
server's connections run under an SQLite authorizer that refuses any read of it (:func:`connect`).

What the seed decides: which cines are drawn from each source (so a study can be drawn again from the
same sources). What it does not decide: names, presentation order, pair sides and raters' orders, which
come from ``secrets`` — knowing the seed and the sources does not reveal the key.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ecgflowcmr.turing.encode as encode
from ecgflowcmr.atomic import atomic_dir
from ecgflowcmr.errors import InputError
from ecgflowcmr.turing.sources import CineRef, list_cines, load_cine

MODES = ("single", "pair")
ANSWERS = {"single": ("real", "generated"), "pair": ("a", "b")}
"""Allowed answers per mode. Pair mode: the side the rater takes for the real cine (a left, b right)."""
DB_NAME = "study.sqlite"
VIDEO_DIR = "videos"
KEY_TABLE = "answer_key"
TOKEN_HEX_CHARS = 32
FIXED_MTIME = 946684800
"""All videos get this modification time (2000-01-01), so file times do not tell the order of writing."""

SCHEMA = f"""
CREATE TABLE study (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE items (
    item_id TEXT PRIMARY KEY,
    video_a TEXT NOT NULL UNIQUE,
    video_b TEXT UNIQUE
) WITHOUT ROWID;
CREATE TABLE {KEY_TABLE} (
    item_id TEXT PRIMARY KEY REFERENCES items(item_id),
    truth TEXT NOT NULL,
    origin_a TEXT NOT NULL,
    origin_b TEXT
) WITHOUT ROWID;
CREATE TABLE raters (
    rater_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE orders (
    rater_id TEXT NOT NULL REFERENCES raters(rater_id),
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL REFERENCES items(item_id),
    PRIMARY KEY (rater_id, position),
    UNIQUE (rater_id, item_id)
) WITHOUT ROWID;
CREATE TABLE answers (
    rater_id TEXT NOT NULL REFERENCES raters(rater_id),
    item_id TEXT NOT NULL REFERENCES items(item_id),
    answer TEXT NOT NULL,
    confidence INTEGER CHECK (confidence IS NULL OR confidence BETWEEN 1 AND 5),
    answered_at REAL NOT NULL,
    PRIMARY KEY (rater_id, item_id)
) WITHOUT ROWID;
"""


def _deny_key(action: int, arg1: str | None, arg2: str | None, dbname: str | None, source: str | None) -> int:
    """SQLite authorizer for the server: any access to the key table is refused."""
    if arg1 == KEY_TABLE or arg2 == KEY_TABLE:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def connect(study: str | Path, *, read_key: bool = False) -> sqlite3.Connection:
    """Open the study database (WAL, full sync, foreign keys). Without ``read_key`` the key is unreadable."""
    path = Path(study) / DB_NAME
    if not path.is_file():
        raise InputError(study, f"not a Turing study: {DB_NAME} missing (make one with `ecgflowcmr turing create`)")
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")  # an answer acknowledged is an answer on disk
    if not read_key:
        conn.set_authorizer(_deny_key)
    return conn


def settings(conn: sqlite3.Connection) -> dict[str, str]:
    return {row["name"]: row["value"] for row in conn.execute("SELECT name, value FROM study")}


@dataclass
class CreateSummary:
    study: Path
    mode: str
    n_items: int
    n_videos: int
    video_bytes: int
    raw_bytes_real: list[int]
    raw_bytes_generated: list[int]
    skipped: list[str]
    seconds: float

    def __str__(self) -> str:
        real, gen = np.array(self.raw_bytes_real), np.array(self.raw_bytes_generated)
        return "\n".join([
            f"study {self.study}: {self.mode} mode, {self.n_items} items, {self.n_videos} videos",
            f"every video is {self.video_bytes:,} bytes (before padding: real {real.mean():,.0f} ± "
            f"{real.std():,.0f}, generated {gen.mean():,.0f} ± {gen.std():,.0f})",
            *[f"skipped (unreadable, another cine drawn instead): {reason}" for reason in self.skipped],
            f"{self.seconds:.1f} s",
            f"next: ecgflowcmr turing serve {self.study}",
        ])


def draw(refs: list[CineRef], n: int, rng: np.random.Generator, src: str,
         skipped: list[str]) -> list[tuple[CineRef, np.ndarray]]:
    """``n`` readable cines of ``refs`` in a seeded random order, with their presented frames (uint8).

    An unreadable cine is recorded in ``skipped`` (its one-line reason) and the next one is taken; too few
    readable cines is an error naming the source.
    """
    if n > len(refs):
        raise InputError(src, f"holds {len(refs)} cine(s) but --n {n} were asked for")
    drawn = []
    for i in rng.permutation(len(refs)):
        try:
            drawn.append((refs[i], encode.present(load_cine(refs[i]))))
        except InputError as err:
            skipped.append(str(err))
        if len(drawn) == n:
            return drawn
    first = f" (first problem: {skipped[0]})" if skipped else ""
    raise InputError(src, f"only {len(drawn)} of its {len(refs)} cines are readable, --n {n} were asked "
                     f"for{first}")


def create_study(real: str, generated: str, n: int, out: str | Path, *, seed: int = 0,
                 mode: str = "single", fps: float = encode.DEFAULT_FPS) -> CreateSummary:
    """Draw ``n`` real and ``n`` generated cines, encode them alike, and write the study at ``out``.

    Single mode: 2n items of one video each. Pair mode: n items, each a real and a generated cine side by
    side (pairs and sides at random). The study folder appears whole or not at all.
    """
    start = time.perf_counter()
    out = Path(out)
    if mode not in MODES:
        raise InputError("--mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if n < 1:
        raise InputError("--n", f"must be at least 1, got {n}")
    if not fps > 0:
        raise InputError("--fps", f"must be positive, got {fps}")
    if out.exists():
        raise InputError(out, "exists; choose a new study folder")
    real_refs, gen_refs = list_cines(real), list_cines(generated)
    shared = {(r.kind, r.path.resolve(), r.split, r.index) for r in real_refs} & \
             {(g.kind, g.path.resolve(), g.split, g.index) for g in gen_refs}
    if shared:
        raise InputError(generated, f"{len(shared)} of its cines are also in --real {real}: the groups must differ")
    rng = np.random.default_rng(seed)
    skipped: list[str] = []
    real_cines = draw(real_refs, n, rng, real, skipped)
    gen_cines = draw(gen_refs, n, rng, generated, skipped)

    shuffle = secrets.SystemRandom()
    cines = [("real", r) for r in real_cines] + [("generated", g) for g in gen_cines]
    shuffle.shuffle(cines)  # the order of encoding, writing and inserting reveals nothing either
    tokens = _unique_tokens(len(cines))

    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="turing-") as work:
        streams = []
        for (_, (_, grey)), token in zip(cines, tokens):
            h264 = encode.encode_h264(grey, Path(work) / f"{token}.h264", fps)
            streams.append(encode.access_units(h264.read_bytes()))
        targets = encode.padding_targets(streams)
        raw = {"real": [], "generated": []}
        (tmp / VIDEO_DIR).mkdir()
        for (group, _), token, units in zip(cines, tokens, streams):
            raw[group].append(sum(encode.sample_size(u) for u in units))
            padded = Path(work) / f"{token}.padded.h264"
            padded.write_bytes(encode.pad_access_units(units, targets))
            mp4 = encode.mux_mp4(padded, tmp / VIDEO_DIR / f"{token}.mp4", fps)
            os.utime(mp4, (FIXED_MTIME, FIXED_MTIME))
        sizes = {(tmp / VIDEO_DIR / f"{t}.mp4").stat().st_size for t in tokens}
        if len(sizes) != 1:  # the padding guarantees this; refuse to write a study that breaks it
            raise RuntimeError(f"encoded videos differ in size: {sorted(sizes)}")
        drawn = [(group, ref, token) for (group, (ref, _)), token in zip(cines, tokens)]
        _write_database(tmp / DB_NAME, mode, n, seed, fps, drawn, shuffle)
    return CreateSummary(out, mode, n * (2 if mode == "single" else 1), len(cines), sizes.pop(),
                         raw["real"], raw["generated"], skipped, time.perf_counter() - start)


def _unique_tokens(n: int) -> list[str]:
    tokens: set[str] = set()
    while len(tokens) < n:
        tokens.add(secrets.token_hex(TOKEN_HEX_CHARS // 2))
    return list(tokens)


def _write_database(path: Path, mode: str, n: int, seed: int, fps: float,
                    drawn: list[tuple[str, CineRef, str]], shuffle: secrets.SystemRandom) -> None:
    """The items and the key; ``drawn``: (group, source, video token) in the secret shuffled order."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)
        rows, key = [], []
        if mode == "single":
            for group, ref, token in drawn:
                item = secrets.token_hex(TOKEN_HEX_CHARS // 2)
                rows.append((item, token, None))
                key.append((item, group, ref.origin, None))
        else:
            reals = [(ref, token) for group, ref, token in drawn if group == "real"]
            gens = [(ref, token) for group, ref, token in drawn if group == "generated"]
            shuffle.shuffle(gens)  # pairs at random
            for real, gen in zip(reals, gens):
                item = secrets.token_hex(TOKEN_HEX_CHARS // 2)
                real_left = shuffle.random() < 0.5
                (ref_a, a), (ref_b, b) = (real, gen) if real_left else (gen, real)
                rows.append((item, a, b))
                key.append((item, "a" if real_left else "b", ref_a.origin, ref_b.origin))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)", rows)
        conn.executemany(f"INSERT INTO {KEY_TABLE} VALUES (?, ?, ?, ?)", key)
        conn.executemany("INSERT INTO study VALUES (?, ?)", [
            ("version", "1"), ("mode", mode), ("n_per_group", str(n)), ("seed", str(seed)),
            ("fps", f"{fps:g}"), ("created_at", f"{time.time():.0f}")])
        conn.execute("COMMIT")
    finally:
        conn.close()
