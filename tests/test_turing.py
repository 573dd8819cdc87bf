"""The Turing-test kit: sources, blind encoding, the web app (API, bad input, route crawl, kill and
restart, a browser), and the statistics against hand-computed values."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from conftest import make_synthetic_store, synthetic_pair
from ecgflowcmr.cli import main
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.cmr import write_nifti_cine
from ecgflowcmr.turing import create_app, create_study, report_section, score_study, write_score
from ecgflowcmr.turing.encode import mp4_boxes
from ecgflowcmr.turing.score import binomial_vs_chance, fleiss_kappa, rates
from ecgflowcmr.turing.sources import list_cines, load_cine
from ecgflowcmr.turing.study import KEY_TABLE, VIDEO_DIR, connect

N = 4  # cines per group: 8 videos in a study


# --------------------------------------------------------------------------------------------------
# Fixtures: a store of sharp synthetic cines (real) and a folder of blurred ones (generated, as NIfTI
# the way `ecgflowcmr generate` writes them, in a shard sub-folder). Blurred cines compress to a
# quarter of the bytes: the size tell the encoder must hide.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("turing_sources")
    store = make_synthetic_store(root / "store", {"train": 2, "test": N + 1}, seed=3)
    rng = np.random.default_rng(11)
    for i in range(N + 1):
        cine = ndi.gaussian_filter(synthetic_pair(rng)[2], (0, 1.5, 1.5))
        path = root / "generated" / "a7" / f"subject{i}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_nifti_cine(path, ((cine + 1) / 2).astype(np.float32), frame_interval_s=0.017)
    return store, root / "generated"


@pytest.fixture(scope="module")
def single_study(sources, tmp_path_factory) -> tuple[Path, object]:
    store, generated = sources
    out = tmp_path_factory.mktemp("turing_single") / "study"
    return out, create_study(str(store), str(generated), N, out, seed=0)


@pytest.fixture(scope="module")
def pair_study(sources, tmp_path_factory) -> Path:
    store, generated = sources
    out = tmp_path_factory.mktemp("turing_pair") / "study"
    create_study(f"{store}:test", str(generated), N, out, seed=1, mode="pair")
    return out


@pytest.fixture
def study(single_study, tmp_path: Path) -> Path:
    """A fresh copy of the single-mode study (tests write answers into it)."""
    return Path(shutil.copytree(single_study[0], tmp_path / "study"))


def the_key(study: Path) -> dict[str, sqlite3.Row]:
    conn = connect(study, read_key=True)
    try:
        return {r["item_id"]: r for r in conn.execute(f"SELECT * FROM {KEY_TABLE}")}
    finally:
        conn.close()


def stored_answers(study: Path) -> list[tuple]:
    conn = connect(study)
    try:
        return [tuple(r) for r in conn.execute(
            "SELECT r.name, o.position, a.item_id, a.answer, a.confidence FROM answers a "
            "JOIN raters r ON r.rater_id = a.rater_id "
            "JOIN orders o ON o.rater_id = a.rater_id AND o.item_id = a.item_id ORDER BY r.name, o.position")]
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def test_sources_store_manifest_and_folder(sources, phantom_cohort: Path) -> None:
    store, generated = sources
    assert len(list_cines(str(store))) == N + 1  # default split: test
    assert len(list_cines(f"{store}:train")) == 2
    nifti = list_cines(str(generated))
    assert len(nifti) == N + 1 and all(r.kind == "nifti" for r in nifti)
    manifest = phantom_cohort / "manifest.csv"
    test_rows = list_cines(f"{manifest}:test")
    assert 0 < len(test_rows) < len(list_cines(str(manifest)))
    for ref in (list_cines(str(store))[0], nifti[0], test_rows[0]):
        frames = load_cine(ref)
        assert frames.shape == (50, 96, 96) and frames.dtype == np.float32
        assert -1.0 <= frames.min() and frames.max() <= 1.0


@pytest.mark.parametrize("bad", ["{missing}", "{store}:ecg_only_nope", "{generated}:test", "{empty}"])
def test_sources_refuse_bad_names(sources, tmp_path: Path, bad: str) -> None:
    store, generated = sources
    (tmp_path / "empty").mkdir()
    src = bad.format(missing=tmp_path / "nope", store=store, generated=generated, empty=tmp_path / "empty")
    with pytest.raises(InputError):
        list_cines(src)


def test_create_refuses_bad_requests(sources, tmp_path: Path) -> None:
    store, generated = sources
    with pytest.raises(InputError, match="--n 9"):
        create_study(str(store), str(generated), 9, tmp_path / "s")
    with pytest.raises(InputError, match="groups must differ"):
        create_study(str(generated), str(generated), 2, tmp_path / "s")
    with pytest.raises(InputError, match="mode"):
        create_study(str(store), str(generated), 2, tmp_path / "s", mode="triple")
    assert not (tmp_path / "s").exists()


def test_unreadable_cine_is_skipped_and_replaced(sources, tmp_path: Path) -> None:
    store, generated = sources
    folder = Path(shutil.copytree(generated, tmp_path / "gen"))
    (folder / "a7" / "broken.nii.gz").write_bytes(b"not a nifti")
    summary = create_study(str(store), str(folder), N + 1, tmp_path / "s", seed=0)  # needs every good one
    assert len(summary.skipped) == 1 and "broken.nii.gz" in summary.skipped[0]
    with pytest.raises(InputError, match="readable"):
        create_study(str(folder), str(store), N + 2, tmp_path / "t")  # N + 2 files, N + 1 readable


# --------------------------------------------------------------------------------------------------
# Blind encoding: nothing measurable separates the groups
# --------------------------------------------------------------------------------------------------


def _probe(path: Path) -> dict:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="gray", bpp=1)
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8) for f in reader]
    return {"fps": meta["fps"], "size": tuple(meta["size"]), "duration": meta["duration"],
            "codec": meta["codec"], "pix_fmt": meta["pix_fmt"], "frames": len(frames)}


def test_real_and_generated_videos_are_alike_but_their_pictures(single_study) -> None:
    study, summary = single_study
    key = the_key(study)
    conn = connect(study)
    items = {r["item_id"]: r["video_a"] for r in conn.execute("SELECT * FROM items")}
    conn.close()
    groups: dict[str, list[Path]] = {"real": [], "generated": []}
    for item, row in key.items():
        groups[row["truth"]].append(study / VIDEO_DIR / f"{items[item]}.mp4")
    assert len(groups["real"]) == len(groups["generated"]) == N
    files = sorted((study / VIDEO_DIR).iterdir())
    assert len(files) == 2 * N and all(len(f.name) == 36 and f.suffix == ".mp4" for f in files)

    # without padding the sizes would tell: blurred (generated) cines compress to a fraction
    assert max(summary.raw_bytes_generated) < 0.5 * min(summary.raw_bytes_real)
    # with it: every file has the same size, the same mtime and a byte-identical moov box
    assert len({f.stat().st_size for f in files}) == 1
    assert len({f.stat().st_mtime for f in files}) == 1
    moovs = {dict(mp4_boxes(f.read_bytes()))["moov"] for f in files}
    assert len(moovs) == 1
    assert [k for k, _ in mp4_boxes(files[0].read_bytes())] == ["ftyp", "moov", "free", "mdat"]
    # the decoded stream: same frame count, rate, size, duration, codec for both groups
    probes = {g: {json.dumps(_probe(f), sort_keys=True) for f in fs} for g, fs in groups.items()}
    assert probes["real"] == probes["generated"] and len(probes["real"]) == 1
    probe = json.loads(probes["real"].pop())
    assert probe["frames"] == 50 and probe["fps"] == 25.0 and probe["size"] == [96, 96]
    # no trace of the sources in any byte
    for f in files:
        data = f.read_bytes()
        for needle in (b"subject", b"store", b".nii", b"test-", b"generated", b"Lavf"):
            assert needle not in data, (f.name, needle)


def test_pair_study_pairs_one_real_with_one_generated(pair_study: Path) -> None:
    key = the_key(pair_study)
    assert len(key) == N
    for row in key.values():
        assert row["truth"] in ("a", "b")
        real_side = row["origin_a"] if row["truth"] == "a" else row["origin_b"]
        gen_side = row["origin_b"] if row["truth"] == "a" else row["origin_a"]
        assert real_side.startswith("store ") and gen_side.startswith("nifti ")


# --------------------------------------------------------------------------------------------------
# The web app through its HTTP API
# --------------------------------------------------------------------------------------------------


def enter(client, name: str) -> str:
    response = client.post("/api/raters", json={"name": name})
    assert response.status_code in (200, 201), response.json
    return response.json["rater_id"]


def answer_all(client, rater: str, choose, confidence=None) -> list[tuple[str, str]]:
    given = []
    while True:
        nxt = client.get(f"/api/raters/{rater}/next").json
        if nxt["done"]:
            return given
        item = nxt["item"]["id"]
        body = {"item_id": item, "answer": choose(item)}
        if confidence is not None:
            body["confidence"] = confidence(item)
        assert client.post(f"/api/raters/{rater}/answers", json=body).status_code == 201
        given.append((item, body["answer"]))


def test_rater_flow_resume_and_own_order(study: Path) -> None:
    client = create_app(study, "admin-token").test_client()
    ada = enter(client, "Ada Lovelace")
    assert client.post("/api/raters", json={"name": "  ada   LOVELACE "}).json["rater_id"] == ada  # same rater
    assert enter(client, "Åsa Öberg") == enter(client, "åsa öBERG")  # beyond ASCII too
    first = client.get(f"/api/raters/{ada}/next").json
    assert first["answered"] == 0 and first["total"] == 2 * N and first["mode"] == "single"
    item = first["item"]["id"]
    assert client.post(f"/api/raters/{ada}/answers", json={"item_id": item, "answer": "real",
                                                           "confidence": 4}).status_code == 201
    # a restarted server (a new app on the same files) resumes where the rater was
    client = create_app(study, "other-token").test_client()
    again = client.post("/api/raters", json={"name": "Ada Lovelace"})
    assert again.status_code == 200 and again.json["answered"] == 1
    assert client.get(f"/api/raters/{ada}/next").json["item"]["id"] != item
    answer_all(client, ada, lambda _: "generated")
    done = client.get(f"/api/raters/{ada}/next").json
    assert done["done"] and done["item"] is None and done["answered"] == 2 * N
    # each rater has an own order of all items
    conn = connect(study)
    bob = enter(client, "Bob")
    orders = {rid: [r[0] for r in conn.execute("SELECT item_id FROM orders WHERE rater_id = ? ORDER BY position",
                                               (rid,))] for rid in (ada, bob)}
    conn.close()
    assert sorted(orders[ada]) == sorted(orders[bob]) and len(set(orders[ada])) == 2 * N
    assert len(stored_answers(study)) == 2 * N


def test_bad_input_gets_a_clear_4xx_and_stores_nothing(study: Path) -> None:
    client = create_app(study, "admin-token").test_client()
    rater = enter(client, "Carol")
    item = client.get(f"/api/raters/{rater}/next").json["item"]["id"]
    other = next(i for i in the_key(study) if i != item)
    url = f"/api/raters/{rater}/answers"
    cases = [
        ("post", "/api/raters", {"json": {"name": ""}}, 400),
        ("post", "/api/raters", {"json": {"name": "x" * 65}}, 400),
        ("post", "/api/raters", {"json": {"name": "bad\x07name"}}, 400),
        ("post", "/api/raters", {"json": {"name": 42}}, 400),
        ("post", "/api/raters", {"json": ["Carol"]}, 400),
        ("post", "/api/raters", {"data": "name=Carol"}, 415),
        ("post", "/api/raters", {"data": "{not json", "content_type": "application/json"}, 400),
        ("post", "/api/raters", {"json": {"name": "y" * 5000}}, 413),
        ("post", url, {"json": {"item_id": item, "answer": "maybe"}}, 400),
        ("post", url, {"json": {"item_id": item, "answer": "real", "confidence": 6}}, 400),
        ("post", url, {"json": {"item_id": item, "answer": "real", "confidence": True}}, 400),
        ("post", url, {"json": {"item_id": item, "answer": "real", "confidence": "3"}}, 400),
        ("post", url, {"json": {"item_id": item, "answer": "real", "truth": "real"}}, 400),
        ("post", url, {"json": {"item_id": "../../study", "answer": "real"}}, 400),
        ("post", url, {"json": {"item_id": "0" * 32, "answer": "real"}}, 404),
        ("post", url, {"json": {"item_id": other, "answer": "real"}}, 409),  # not the current item
        ("post", "/api/raters/" + "0" * 32 + "/answers", {"json": {"item_id": item, "answer": "real"}}, 404),
        ("post", "/api/raters/nope/answers", {"json": {"item_id": item, "answer": "real"}}, 404),
        ("get", "/api/raters/" + "f" * 32 + "/next", {}, 404),
        ("get", "/rate/" + "f" * 32, {}, 404),
        ("get", "/rate/..%2F..%2Fstudy.sqlite", {}, 404),
        ("get", "/video/../study.sqlite", {}, 404),
        ("get", "/video/..%2Fstudy.sqlite", {}, 404),
        ("get", "/video/%2e%2e%2f%2e%2e%2fetc%2fpasswd", {}, 404),
        ("get", "/video/" + "0" * 32 + ".mp4", {}, 404),
        ("get", "/videos/" + "0" * 32 + ".mp4", {}, 404),
        ("get", "/study.sqlite", {}, 404),
        ("get", "/admin", {}, 403),
        ("get", "/admin?token=wrong", {}, 403),
        ("get", "/api/admin/progress", {"headers": {"Authorization": "Bearer wrong"}}, 403),
        ("put", url, {"json": {"item_id": item, "answer": "real"}}, 405),
        ("get", url, {}, 405),
    ]
    for method, path, kwargs, status in cases:
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == status, (method, path, kwargs, response.status_code, response.data[:200])
        if response.is_json:
            assert isinstance(response.json.get("error"), str) and response.json["error"]
    assert stored_answers(study) == []
    # a good answer, then the same again: 409, stored once
    assert client.post(url, json={"item_id": item, "answer": "real", "confidence": 2}).status_code == 201
    double = client.post(url, json={"item_id": item, "answer": "generated"})
    assert double.status_code == 409 and "already" in double.json["error"]
    assert [(a[2], a[3], a[4]) for a in stored_answers(study)] == [(item, "real", 2)]
    conn = connect(study)
    assert [r[0] for r in conn.execute("SELECT name FROM raters")] == ["Carol"]
    conn.close()


def test_the_server_cannot_read_the_key(study: Path) -> None:
    conn = connect(study)
    with pytest.raises(sqlite3.DatabaseError, match=r"prohibited|not authorized"):
        conn.execute(f"SELECT truth FROM {KEY_TABLE}").fetchall()
    with pytest.raises(sqlite3.DatabaseError, match=r"prohibited|not authorized"):
        conn.execute(f"SELECT item_id FROM items WHERE item_id IN (SELECT item_id FROM {KEY_TABLE} "
                     "WHERE truth = 'real')").fetchall()
    with pytest.raises(sqlite3.DatabaseError, match=r"prohibited|not authorized"):
        conn.execute(f"SELECT origin_a FROM {KEY_TABLE}").fetchall()
    conn.close()


def test_route_crawl_reveals_nothing_about_the_key(study: Path) -> None:
    """Every route is requested; what the server says about an item is the same for real and generated."""
    app = create_app(study, "admin-token")
    client = app.test_client()
    key = the_key(study)
    secrets_ = {s for row in key.values() for s in (row["origin_a"], row["origin_b"]) if s}
    secrets_ |= {s.split()[1] for s in secrets_} | {"answer_key", "origin", "truth"}

    seen_endpoints = set()
    bodies: list[bytes] = []

    def fetch(method: str, url: str, **kw):
        response = getattr(client, method)(url, **kw)
        assert response.status_code < 400, (method, url, response.status_code)
        seen_endpoints.add(app.url_map.bind("localhost").match(url.split("?")[0], method=method.upper())[0])
        bodies.append(response.data + str(response.headers).encode())
        return response

    def anonymous(value):
        text = json.dumps(value, sort_keys=True)
        for item in key:
            text = text.replace(item, "ITEM")
        return text

    fetch("get", "/")
    fetch("get", "/app.js")
    fetch("get", "/app.css")
    rater = fetch("post", "/api/raters", json={"name": "Crawler"}).json["rater_id"]
    fetch("get", f"/rate/{rater}")
    fingerprints: dict[str, set[str]] = {"real": set(), "generated": set()}
    while True:
        nxt = fetch("get", f"/api/raters/{rater}/next").json
        if nxt["done"]:
            break
        item = nxt["item"]["id"]
        shown = {k: v for k, v in nxt.items() if k not in ("answered",)}
        shown["item"] = {"id": "ITEM", "videos": [len(v) for v in nxt["item"]["videos"]]}
        video = fetch("get", nxt["item"]["videos"][0])
        ranged = fetch("get", nxt["item"]["videos"][0], headers={"Range": "bytes=0-1023"})
        headers = {k: v for k, v in video.headers.items() if k not in ("Date", "Expires", "Content-Disposition")}
        answered = fetch("post", f"/api/raters/{rater}/answers", json={"item_id": item, "answer": "real"}).json
        answered.pop("answered")
        fingerprints[key[item]["truth"]].add(anonymous(
            [shown, headers, len(video.data), ranged.status_code, len(ranged.data), answered]))
    fetch("get", "/admin?token=admin-token")
    fetch("get", "/api/admin/progress", headers={"Authorization": "Bearer admin-token"})

    routes = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert seen_endpoints == routes, f"routes the crawl missed: {routes - seen_endpoints}"
    # one fingerprint for all real items, the same one for all generated items
    assert len(fingerprints["real"]) == 1 and fingerprints["real"] == fingerprints["generated"]
    for body in bodies:
        for secret in secrets_:
            assert secret.encode() not in body, secret


# --------------------------------------------------------------------------------------------------
# A real server process: killed mid-way, restarted, nothing lost
# --------------------------------------------------------------------------------------------------


def start_server(study: Path, port: int = 0) -> tuple[subprocess.Popen, str, str]:
    """``ecgflowcmr turing serve`` in a subprocess; returns (process, base URL, admin URL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ecgflowcmr", "turing", "serve", str(study), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    raters = proc.stdout.readline().strip()
    admin = proc.stdout.readline().strip()
    if not raters.startswith("raters: http://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"server did not start: {raters!r} {proc.stderr.read()}")
    return proc, raters.split()[1].rstrip("/"), admin.split()[1]


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_killed_server_loses_no_answer(study: Path) -> None:
    proc, base, admin = start_server(study)
    try:
        assert "token=" in admin
        _, rater = http("POST", f"{base}/api/raters", {"name": "Dana"})
        rid = rater["rater_id"]
        for _ in range(3):
            item = http("GET", f"{base}/api/raters/{rid}/next")[1]["item"]["id"]
            assert http("POST", f"{base}/api/raters/{rid}/answers", {"item_id": item, "answer": "real"})[0] == 201
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(stored_answers(study)) == 3
    proc, base, _ = start_server(study)
    try:
        status, again = http("POST", f"{base}/api/raters", {"name": "Dana"})
        assert status == 200 and again["answered"] == 3
        assert http("GET", f"{base}/api/raters/{rid}/next")[1]["answered"] == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------
# End to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
# --------------------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1200,900")


@pytest.fixture
def browser(tmp_path: Path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"headless Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}); `make test` installs "
                    "Debian's chromium and chromium-driver when it runs as root")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a browser online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_browser_rater_survives_a_server_restart(study: Path, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    clicks: list[tuple[str, int]] = []

    def rate(count: int, keys: bool = False) -> None:
        for _ in range(count):
            progress = f"{len(clicks)} of {2 * N} rated"
            wait.until(lambda d, text=progress: d.find_element(By.ID, "progress").text.endswith(text))
            # Chromium decodes the padded H.264: the video has its 96×96 frames and plays (muted, looping)
            wait.until(lambda d: d.execute_script(
                "const v = document.querySelector('video');"
                "return v && v.readyState >= 2 && !v.paused && v.loop && v.videoWidth;") == 96)
            confidence = len(clicks) % 5 + 1
            answer = "generated" if len(clicks) % 3 else "real"
            if keys:  # the keyboard: a digit for the confidence, R or G for the answer
                browser.find_element(By.TAG_NAME, "body").send_keys(str(confidence), answer[0])
            else:
                browser.find_element(By.CSS_SELECTOR, f"input[name=confidence][value='{confidence}']").click()
                browser.find_element(By.CSS_SELECTOR, f"#choices button[data-answer='{answer}']").click()
            clicks.append((answer, confidence))

    proc, base, _ = start_server(study)
    port = int(base.rsplit(":", 1)[1])
    try:
        browser.get(f"{base}/")
        browser.find_element(By.ID, "name").send_keys("Dr Eve")
        browser.find_element(By.ID, "start").click()
        wait.until(lambda d: "/rate/" in d.current_url)
        rate(3)
        wait.until(lambda d: d.find_element(By.ID, "progress").text.endswith(f"3 of {2 * N} rated"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # while the server is down an answer fails visibly and nothing is stored
    browser.find_element(By.CSS_SELECTOR, "#choices button[data-answer='real']").click()
    wait.until(lambda d: "cannot be reached" in d.find_element(By.ID, "error").text)
    assert len(stored_answers(study)) == 3
    proc, base, _ = start_server(study, port)
    try:
        browser.get(f"{base}/")  # the rater comes back and enters the same name
        browser.find_element(By.ID, "name").send_keys("Dr Eve")
        browser.find_element(By.ID, "start").click()
        rate(2 * N - 3, keys=True)
        wait.until(lambda d: d.find_element(By.ID, "done").is_displayed())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    stored = stored_answers(study)
    assert [(a[3], a[4]) for a in stored] == clicks
    assert [a[1] for a in stored] == list(range(2 * N)) and {a[0] for a in stored} == {"Dr Eve"}


# --------------------------------------------------------------------------------------------------
# Statistics against hand-computed values
# --------------------------------------------------------------------------------------------------


def test_binomial_against_closed_forms() -> None:
    p, lo, hi = binomial_vs_chance(8, 8)  # P(8 of 8) = 1/256, two-sided 2/256; CI low = 0.025^(1/8)
    assert p == pytest.approx(2 / 256) and lo == pytest.approx(0.025 ** (1 / 8)) and hi == 1.0
    p, lo, hi = binomial_vs_chance(7, 8)  # 2 · (C(8,7) + C(8,8)) / 256 = 18/256
    assert p == pytest.approx(18 / 256)
    p, _, _ = binomial_vs_chance(2, 4)  # the middle: p = 1
    assert p == pytest.approx(1.0)
    p, lo, hi = binomial_vs_chance(0, 3)  # 0 of 3: p = 2/8, CI high = 1 − 0.025^(1/3)
    assert p == pytest.approx(0.25) and lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 3))
    assert binomial_vs_chance(0, 0) == (None, None, None)


def test_fleiss_kappa_against_the_textbook_example() -> None:
    # Fleiss (1971) as worked in the literature: 10 items, 14 raters, 5 categories, κ = 0.210
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    # 2 raters, 4 items, 2 categories: agree on items 1–3, disagree on 4. P̄ = 3/4; p = (5/8, 3/8);
    # Pe = 25/64 + 9/64 = 34/64; κ = (3/4 − 34/64) / (1 − 34/64) = 14/30
    assert fleiss_kappa(np.array([[2, 0], [0, 2], [2, 0], [1, 1]])) == pytest.approx(14 / 30)
    assert fleiss_kappa(np.array([[2, 0], [2, 0]])) is None  # everyone always said the same
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[2, 0], [1, 0]]))


def test_rates_single_and_pair() -> None:
    truths = ["real", "real", "real", "generated", "generated", "generated", "generated", "real"]
    answers = ["real", "generated", "real", "generated", "generated", "real", "generated", "real"]
    r = rates("x", answers, truths, "single")
    # correct: 1,0,1,1,1,0,1,1 = 6 of 8; generated called generated 3 of 4; real called real 3 of 4
    assert (r.correct, r.answered, r.accuracy) == (6, 8, 0.75)
    assert r.sensitivity == 0.75 and r.specificity == 0.75
    assert r.p_value == pytest.approx(2 * (28 + 8 + 1) / 256)
    pair = rates("y", ["a", "a", "b", "a"], ["a", "b", "b", "a"], "pair")
    assert pair.accuracy == 0.75 and pair.left_rate == 0.75 and pair.sensitivity is None
    assert pair.d_prime == pytest.approx(np.sqrt(2) * 0.6744898, abs=1e-6)  # √2 · Φ⁻¹(0.75)


def test_score_a_study_by_hand(study: Path, tmp_path: Path) -> None:
    client = create_app(study, "t").test_client()
    key = {item: row["truth"] for item, row in the_key(study).items()}
    # Ada is always right; Bob always says "real"; Cy answers 3 items, all right, confidence 5
    answer_all(client, enter(client, "Ada"), lambda i: key[i], confidence=lambda i: 5)
    answer_all(client, enter(client, "Bob"), lambda _: "real", confidence=lambda i: 1)
    cy = enter(client, "Cy")
    for _ in range(3):
        item = client.get(f"/api/raters/{cy}/next").json["item"]["id"]
        client.post(f"/api/raters/{cy}/answers", json={"item_id": item, "answer": key[item], "confidence": 5})
    score = score_study(study)
    by_name = {r.who: r for r in score.raters}
    assert (by_name["Ada"].accuracy, by_name["Ada"].sensitivity, by_name["Ada"].specificity) == (1.0, 1.0, 1.0)
    assert (by_name["Bob"].accuracy, by_name["Bob"].sensitivity, by_name["Bob"].specificity) == (0.5, 0.0, 1.0)
    assert by_name["Cy"].answered == 3 and by_name["Cy"].accuracy == 1.0
    assert (score.overall.correct, score.overall.answered) == (8 + 4 + 3, 19)
    # κ over Ada and Bob (the raters who finished): per item they agree on the N real ones only.
    # P̄ = N/2N = 1/2; categories: real 3N of 4N, generated N of 4N → Pe = 9/16 + 1/16 = 10/16
    assert score.kappa_raters == 2 and score.kappa == pytest.approx((0.5 - 10 / 16) / (1 - 10 / 16))
    conf = {c["confidence"]: c for c in score.by_confidence}
    assert (conf[5]["answered"], conf[5]["accuracy"]) == (2 * N + 3, 1.0)
    assert (conf[1]["answered"], conf[1]["accuracy"]) == (2 * N, 0.5)
    assert score.unfinished == ["Cy"]
    files = write_score(score, tmp_path / "score")
    assert [f.name for f in files] == ["score.md", "score.json", "raters.csv", "confidence.csv"]
    assert json.loads(files[1].read_text())["overall"]["correct"] == 15
    assert "| Ada | 8 | 8 | 1.000 |" in files[0].read_text()
    assert (tmp_path / "score" / "raters.csv").read_text().splitlines()[0].startswith("who,answered,correct")
    assert report_section(study).startswith("## Turing test")


def test_pair_study_scores_as_two_alternative_forced_choice(pair_study: Path, tmp_path: Path) -> None:
    study = Path(shutil.copytree(pair_study, tmp_path / "pair"))
    client = create_app(study, "t").test_client()
    key = {item: row["truth"] for item, row in the_key(study).items()}
    first = client.get(f"/api/raters/{enter(client, 'Ann')}/next").json
    assert first["mode"] == "pair" and len(first["item"]["videos"]) == 2 and first["answers"] == ["a", "b"]
    assert report_section(study) is None  # no answers yet
    answer_all(client, enter(client, "Ann"), lambda i: key[i])
    answer_all(client, enter(client, "Ben"), lambda _: "a")
    score = score_study(study)
    ben = next(r for r in score.raters if r.who == "Ben")
    assert ben.left_rate == 1.0 and ben.correct == sum(t == "a" for t in key.values())
    assert next(r for r in score.raters if r.who == "Ann").d_prime is None  # PC = 1: d′ unbounded


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


def test_cli_create_and_score(sources, tmp_path: Path, capsys) -> None:
    store, generated = sources
    out = tmp_path / "study"
    assert main(["turing", "create", "--real", str(store), "--generated", str(generated), "--n", "2",
                 "--out", str(out), "--mode", "pair"]) == 0
    assert "every video is" in capsys.readouterr().out
    assert main(["turing", "score", str(out)]) == 0
    assert "No answers yet" in capsys.readouterr().out and (out / "score" / "score.md").exists()
    assert main(["turing", "create", "--real", str(tmp_path / "nope"), "--generated", str(generated),
                 "--out", str(tmp_path / "x")]) == 2
    assert main(["turing", "score", str(tmp_path / "nope")]) == 2
    assert "not a Turing study" in capsys.readouterr().err
    assert main(["turing", "serve", str(tmp_path / "nope")]) == 2
    assert "not a Turing study" in capsys.readouterr().err
