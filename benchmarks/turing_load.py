"""Load check of `ecgflowcmr turing serve`: simulated raters answering at once against one server on loopback.

Builds a small single-mode study from synthetic cines (sharp "real", blurred "generated"), starts the
server as its own process (`python -m ecgflowcmr turing serve STUDY --port 0`), lets every rater enter a
name and answer all items as fast as the server allows (keep-alive HTTP, no think time), then checks in
the database that every acknowledged answer is stored exactly once. Prints answers/s and latencies.
Requests go to 127.0.0.1 only.

Usage: python benchmarks/turing_load.py [--raters 20] [--n 25] [--threads 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def synthetic_cines(n: int, rng: np.random.Generator, blur: float) -> np.ndarray:
    """(n, 50, 96, 96) beating discs with noise in [-1, 1]; ``blur`` > 0 smooths them (a 'generated' look)."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[:96, :96]
    out = np.empty((n, 50, 96, 96), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(40, 56, size=2)
        for k in range(50):
            radius = 18 - 6 * np.sin(np.pi * k / 50) ** 2
            out[i, k] = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, 0.7, -0.6)
        out[i] += 0.08 * rng.standard_normal((50, 96, 96)).astype(np.float32)
        if blur:
            out[i] = gaussian_filter(out[i], (0, blur, blur))
    return np.clip(out, -1, 1)


def build_study(work: Path, n: int) -> Path:
    from ecgflowcmr.io.cmr import write_nifti_cine
    from ecgflowcmr.store.prepared import write_store
    from ecgflowcmr.turing import create_study

    rng = np.random.default_rng(0)
    real = synthetic_cines(n, rng, blur=0)
    write_store(work / "store", {"test": {"ecg": np.zeros((n, 12, 5000)), "phase": np.zeros((n, 5000)),
                                          "cine": real}})
    (work / "generated").mkdir()
    for i, cine in enumerate(synthetic_cines(n, rng, blur=1.5)):
        write_nifti_cine(work / "generated" / f"g{i}.nii.gz", (cine + 1) / 2)
    summary = create_study(str(work / "store"), str(work / "generated"), n, work / "study", seed=0)
    print(summary)
    return work / "study"


def rater(port: int, name: str, start: threading.Barrier, out: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict, float]:
        t = time.perf_counter()
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        data = json.loads(response.read())
        return response.status, data, time.perf_counter() - t

    status, data, _ = call("POST", "/api/raters", {"name": name})
    rid = data["rater_id"]
    start.wait()
    answers, nexts, acked, errors = [], [], 0, 0
    while True:
        status, nxt, dt = call("GET", f"/api/raters/{rid}/next")
        nexts.append(dt)
        if nxt["done"]:
            break
        status, _, dt = call("POST", f"/api/raters/{rid}/answers",
                             {"item_id": nxt["item"]["id"], "answer": "real", "confidence": 3})
        answers.append(dt)
        acked += status == 201
        errors += status != 201
    conn.close()
    out[name] = {"answer_s": answers, "next_s": nexts, "acked": acked, "errors": errors}


def run_raters(study: Path, raters: int, threads: int, log, results: dict) -> float:
    """Start the server, run the raters against it at once, stop it; returns the raters' wall time."""
    server = subprocess.Popen([sys.executable, "-m", "ecgflowcmr", "turing", "serve", str(study), "--port", "0",
                               "--threads", str(threads)], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        port = int(server.stdout.readline().strip().rstrip("/").rsplit(":", 1)[1])
        barrier = threading.Barrier(raters + 1)
        workers = [threading.Thread(target=rater, args=(port, f"rater {k:02d}", barrier, results))
                   for k in range(raters)]
        for t in workers:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in workers:
            t.join()
        return time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raters", type=int, default=20, help="simulated raters at once (default 20)")
    parser.add_argument("--n", type=int, default=25, help="cines per group: 2n items per rater (default 25)")
    parser.add_argument("--threads", type=int, default=8, help="server request threads (default 8)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from ecgflowcmr.turing.study import connect

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-turing-"))
    study = build_study(work, args.n)
    results: dict = {}
    with open(work / "server.log", "w") as log:  # waitress warns "Task queue depth" when all threads are busy
        wall = run_raters(study, args.raters, args.threads, log, results)

    conn = connect(study)
    stored = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    per_rater = [r[0] for r in conn.execute("SELECT COUNT(*) FROM answers GROUP BY rater_id")]
    conn.close()
    answer_s = np.array([x for r in results.values() for x in r["answer_s"]]) * 1000
    next_s = np.array([x for r in results.values() for x in r["next_s"]]) * 1000
    acked = sum(r["acked"] for r in results.values())
    errors = sum(r["errors"] for r in results.values())
    expected = args.raters * 2 * args.n
    rows = [
        ("raters at once / server threads", f"{args.raters} / {args.threads}"),
        ("answers acknowledged (201) / expected", f"{acked} / {expected}"),
        ("answers stored in study.sqlite", f"{stored} (every rater: {sorted(set(per_rater))})"),
        ("answers lost / errors", f"{acked - stored} / {errors}"),
        ("wall time", f"{wall:.2f} s"),
        ("server log: queue-depth warnings", str((work / "server.log").read_text().count("queue depth"))),
        ("answers/s", f"{acked / wall:.0f}"),
        ("POST answer latency p50 / p95 / max", f"{np.percentile(answer_s, 50):.1f} / "
         f"{np.percentile(answer_s, 95):.1f} / {answer_s.max():.1f} ms"),
        ("GET next latency p50 / p95", f"{np.percentile(next_s, 50):.1f} / {np.percentile(next_s, 95):.1f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n{'turing serve load check':<{width}}  result")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if stored != acked or acked != expected or errors:
        sys.exit(f"FAILED: {expected} answers expected, {acked} acknowledged, {stored} stored, {errors} errors")


if __name__ == "__main__":
    main()
