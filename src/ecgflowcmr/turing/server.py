"""``turing serve``: the raters' web app (Flask on waitress), one SQLite transaction per answer.

Routes (every one is exercised by the route crawl in ``tests/test_turing.py``)::

    GET  /                              name form
    GET  /app.js, /app.css              the page's script and style (no inline code: strict CSP)
    POST /api/raters                    {"name"} → {"rater_id", …}: new rater (201) or the same one (200)
    GET  /rate/<rater_id>               the rating page
    GET  /api/raters/<rater_id>/next    {"answered", "total", "done", "mode", "item": {"id", "videos"}}
    POST /api/raters/<rater_id>/answers {"item_id", "answer", "confidence"?} → 201
    GET  /video/<32 hex>.mp4            a study video (byte ranges; no ETag, one fixed Last-Modified)
    GET  /admin?token=…                 progress per rater (HTML); /api/admin/progress the same as JSON

The server's database connections cannot read the answer key (``study.connect``: an SQLite authorizer
denies it), so no route can serve it. Answers come in each rater's own order (a random permutation drawn
from ``secrets`` when the rater first enters their name); an answer is acknowledged only after its
transaction committed with ``synchronous=FULL``, so a killed server loses none.
"""

from __future__ import annotations

import hmac
import re
import secrets
import sqlite3
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request, send_file
from werkzeug.exceptions import HTTPException

import ecgflowcmr.turing.pages as pages
from ecgflowcmr.errors import InputError
from ecgflowcmr.turing.study import ANSWERS, TOKEN_HEX_CHARS, VIDEO_DIR, connect, settings

MAX_BODY_BYTES = 4096
"""Largest request body accepted (413 above); an answer is under 200 bytes."""
MAX_NAME_CHARS = 64
LOOPBACK = ("127.0.0.1", "::1", "localhost")
_HEX_ID = re.compile(rf"[0-9a-f]{{{TOKEN_HEX_CHARS}}}")
_VIDEO_NAME = re.compile(rf"([0-9a-f]{{{TOKEN_HEX_CHARS}}})\.mp4")

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class RequestError(HTTPException):
    """A 4xx with a one-line JSON reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


def create_app(study: str | Path, admin_token: str) -> Flask:
    """The WSGI app for one study folder. ``admin_token`` guards the progress pages."""
    study = Path(study).resolve()
    probe = connect(study)
    try:
        config = settings(probe)
        n_items = probe.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    finally:
        probe.close()
    mode = config["mode"]
    allowed = ANSWERS[mode]
    videos = study / VIDEO_DIR

    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    def db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = connect(study)
        return g.db

    @app.teardown_appcontext
    def close_db(_: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.update(_SECURITY_HEADERS)
        if not request.path.startswith("/video/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        response = jsonify(error=err.description if isinstance(err, RequestError) else err.name)
        response.status_code = err.code or 500
        return response

    def rater_or_404(rater_id: str) -> sqlite3.Row:
        row = None
        if _HEX_ID.fullmatch(rater_id):
            row = db().execute("SELECT rater_id, name FROM raters WHERE rater_id = ?", (rater_id,)).fetchone()
        if row is None:
            raise RequestError(404, "unknown rater")
        return row

    def json_body() -> dict[str, Any]:
        if not request.is_json:
            raise RequestError(415, "send JSON (Content-Type: application/json)")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    # ---------------------------------------------------------------- pages

    @app.get("/")
    def index() -> Response:
        return Response(pages.INDEX_HTML, mimetype="text/html")

    @app.get("/app.js")
    def script() -> Response:
        return Response(pages.APP_JS, mimetype="text/javascript")

    @app.get("/app.css")
    def style() -> Response:
        return Response(pages.APP_CSS, mimetype="text/css")

    @app.get("/rate/<rater_id>")
    def rate_page(rater_id: str) -> Response:
        rater_or_404(rater_id)
        return Response(pages.RATE_HTML, mimetype="text/html")

    @app.get("/video/<name>")
    def video(name: str) -> Response:
        match = _VIDEO_NAME.fullmatch(name)
        token = match.group(1) if match else None
        known = token is not None and db().execute(
            "SELECT 1 FROM items WHERE video_a = ? OR video_b = ?", (token, token)).fetchone()
        if not known:
            raise RequestError(404, "no such video")
        return send_file(videos / f"{token}.mp4", mimetype="video/mp4", conditional=True, etag=False,
                         max_age=3600)

    # ---------------------------------------------------------------- rater API

    @app.post("/api/raters")
    def enter() -> tuple[Response, int]:
        name = _clean_name(json_body().get("name"))
        conn = db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT rater_id FROM raters WHERE name_key = ?", (name.casefold(),)).fetchone()
            status = 200
            if row is None:
                rater_id = secrets.token_hex(TOKEN_HEX_CHARS // 2)
                items = [r[0] for r in conn.execute("SELECT item_id FROM items")]
                secrets.SystemRandom().shuffle(items)
                conn.execute("INSERT INTO raters VALUES (?, ?, ?, ?)", (rater_id, name, name.casefold(), time.time()))
                conn.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                                 [(rater_id, k, item) for k, item in enumerate(items)])
                status = 201
            else:
                rater_id = row[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        answered = _answered(conn, rater_id)
        name = conn.execute("SELECT name FROM raters WHERE rater_id = ?", (rater_id,)).fetchone()[0]
        return jsonify(rater_id=rater_id, name=name, answered=answered, total=n_items), status

    @app.get("/api/raters/<rater_id>/next")
    def next_item(rater_id: str) -> Response:
        rater = rater_or_404(rater_id)
        conn = db()
        answered = _answered(conn, rater_id)
        body: dict[str, Any] = {"name": rater["name"], "mode": mode, "answers": list(allowed),
                                "answered": answered, "total": n_items, "done": answered >= n_items,
                                "item": None}
        if answered < n_items:
            row = conn.execute("SELECT i.item_id, i.video_a, i.video_b FROM orders o JOIN items i "
                               "ON i.item_id = o.item_id WHERE o.rater_id = ? AND o.position = ?",
                               (rater_id, answered)).fetchone()
            names = [v for v in (row["video_a"], row["video_b"]) if v]
            body["item"] = {"id": row["item_id"], "videos": [f"/video/{v}.mp4" for v in names]}
        return jsonify(body)

    @app.post("/api/raters/<rater_id>/answers")
    def answer(rater_id: str) -> tuple[Response, int]:
        rater_or_404(rater_id)
        body = json_body()
        unknown = set(body) - {"item_id", "answer", "confidence"}
        if unknown:
            raise RequestError(400, f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        item_id, choice, confidence = body.get("item_id"), body.get("answer"), body.get("confidence")
        if not isinstance(item_id, str) or not _HEX_ID.fullmatch(item_id):
            raise RequestError(400, "item_id must be a 32-character hex id")
        if choice not in allowed:
            raise RequestError(400, f"answer must be one of {', '.join(allowed)}")
        if confidence is not None and (type(confidence) is not int or not 1 <= confidence <= 5):
            raise RequestError(400, "confidence must be an integer from 1 to 5, or absent")
        conn = db()
        if conn.execute("SELECT 1 FROM items WHERE item_id = ?", (item_id,)).fetchone() is None:
            raise RequestError(404, "unknown item")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM answers WHERE rater_id = ? AND item_id = ?",
                            (rater_id, item_id)).fetchone():
                raise RequestError(409, "this item was already answered")
            answered = _answered(conn, rater_id)
            current = conn.execute("SELECT item_id FROM orders WHERE rater_id = ? AND position = ?",
                                   (rater_id, answered)).fetchone()
            if current is None or current[0] != item_id:
                raise RequestError(409, "not the current item: ask /next for it")
            conn.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?)",
                         (rater_id, item_id, choice, confidence, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return jsonify(stored=True, answered=answered + 1, total=n_items), 201

    # ---------------------------------------------------------------- admin

    def check_admin() -> None:
        given = request.args.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth.removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise RequestError(403, "admin token missing or wrong (it is printed when the server starts)")

    def progress() -> list[dict[str, Any]]:
        rows = db().execute(
            "SELECT r.name, r.created_at, COUNT(a.item_id) AS answered, MAX(a.answered_at) AS last "
            "FROM raters r LEFT JOIN answers a ON a.rater_id = r.rater_id GROUP BY r.rater_id "
            "ORDER BY r.created_at").fetchall()
        return [{"name": r["name"], "answered": r["answered"], "total": n_items,
                 "started": r["created_at"], "last_answer": r["last"]} for r in rows]

    @app.get("/admin")
    def admin() -> Response:
        check_admin()
        return Response(pages.admin_html(progress(), mode, n_items), mimetype="text/html")

    @app.get("/api/admin/progress")
    def admin_progress() -> Response:
        check_admin()
        return jsonify(mode=mode, items=n_items, raters=progress())

    return app


def _answered(conn: sqlite3.Connection, rater_id: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM answers WHERE rater_id = ?", (rater_id,)).fetchone()[0]


def _clean_name(value: Any) -> str:
    """A rater's name: text, 1–64 characters after collapsing white space, no control characters.

    Names match case-insensitively (``str.casefold``, so also beyond ASCII): the same person entering
    "Dr Ng" and "dr  NG" resumes one rater.
    """
    if not isinstance(value, str):
        raise RequestError(400, "name must be text")
    name = " ".join(unicodedata.normalize("NFC", value).split())
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise RequestError(400, f"name must have 1 to {MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise RequestError(400, "name must not contain control characters")
    return name


def serve(study: str | Path, host: str = "127.0.0.1", port: int = 8000, threads: int = 8) -> None:
    """Run the study's web app until interrupted; prints the raters' URL and the admin URL with its token."""
    from waitress import create_server

    token = secrets.token_urlsafe(24)
    app = create_app(study, token)
    try:
        server = create_server(app, host=host, port=port, threads=threads, ident="turing",
                               max_request_body_size=MAX_BODY_BYTES, clear_untrusted_proxy_headers=True)
    except OSError as err:
        raise InputError(f"{host}:{port}", f"cannot listen there ({err.strerror or err})") from None
    shown = f"[{server.effective_host}]" if ":" in str(server.effective_host) else server.effective_host
    base = f"http://{shown}:{server.effective_port}"
    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach this machine can open the study",
              file=sys.stderr)
    print(f"raters: {base}/", flush=True)
    print(f"admin:  {base}/admin?token={token}", flush=True)
    try:
        server.run()
    finally:
        server.close()
