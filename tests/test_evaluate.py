"""`ecgflowcmr evaluate` end to end on the quick demo bundle: metrics.json with a definition for every number,
metrics.csv, and a self-contained report.html whose tables, images and videos render in headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ecgflowcmr.cli import main
from ecgflowcmr.evaluation.report import flatten_metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const r = [];
  document.querySelectorAll('img').forEach(e => r.push('img ' + (e.complete && e.naturalWidth > 0)));
  document.querySelectorAll('video').forEach(e => r.push('video ' + (e.readyState >= 2 && e.videoWidth > 0 && !e.error)));
  document.querySelectorAll('table').forEach(e => r.push('table ' + (e.rows.length > 1 && e.offsetHeight > 0)));
  const p = document.createElement('pre'); p.id = 'probe'; p.textContent = r.join(';'); document.body.appendChild(p);
}, 2000));</script>"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick demo, which runs `evaluate` (tiny segmenter, 8 training subjects, no Inception FID) into
    demo/evaluation and shows its tables in the demo's own report."""
    root = tmp_path_factory.mktemp("evaluate")
    assert main(["demo", "--out", str(root / "demo"), "--quick"]) == 0
    return root / "demo" / "evaluation"


def test_every_number_has_a_definition(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    rows = flatten_metrics(metrics)
    assert len(rows) > 100
    undefined = [(s, n) for s, n, _, d in rows if not d and not s.startswith(("speed", "headline"))]
    assert not undefined, undefined[:5]
    instrument = metrics["instrument"]
    for measure in ("lv_fac", "es_frame"):
        assert set(instrument["agreement"][measure]) >= {"generated", "ecg_ceiling", "retrieval", "shuffled_ecg",
                                                         "template_only", "constant", "vae_reconstruction"}
    q = metrics["quality"]
    assert "unavailable" in q["generated"]["lpips"] and "--weights" in q["generated"]["lpips"]["unavailable"]
    assert q["generated"]["fid_inception"] == {"unavailable": "disabled (--fid-frames 0)"}
    assert "value" in q["real_floor"]["psnr_db"] and "value" in q["retrieval"]["ssim"]
    assert instrument["realism"]["fid_cmr_real_floor"]["value"] >= 0
    assert set(metrics["headline"]) >= {"lv_fac_spearman_generated", "diagnosis_chance",
                                       "diagnosis_real_trained_on_vae_reconstruction"}
    with open(evaluated / "metrics.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["section", "metric", "value", "definition"] and len(table) == len(rows) + 1
    assert (evaluated / "segmenter" / "model.safetensors").exists()


def test_demo_report_shows_the_evaluation(evaluated: Path) -> None:
    page = (evaluated.parent / "report.html").read_text()
    assert "<table id='table1'>" in page and "<table id='agreement'>" in page
    demo_metrics = json.loads((evaluated.parent / "metrics.json").read_text())
    assert "lv_fac_spearman_generated" in demo_metrics["evaluation"]["headline"]
    assert demo_metrics["evaluation"]["over_noise_seeds"]["seeds"] == [0, 1]  # the quick recipe's two
    assert "<table id='noise-seeds'>" in page
    assert demo_metrics["timings_s"]["evaluate_s"] > 0


def test_report_is_self_contained(evaluated: Path) -> None:
    page = (evaluated / "report.html").read_text()
    assert "<table id='table1'>" in page and "<table id='agreement'>" in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "every image and video must be inline"
    assert "proxies for the paper's short-axis volumes" in page
    assert (evaluated / "report.html").stat().st_size < 30e6


def test_report_renders_in_chromium(evaluated: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package `chromium`): cannot open the report headless")
    probe = tmp_path / "report.html"
    probe.write_text((evaluated / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=15000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert found, "the page did not finish loading in Chromium"
    checks = found.group(1).split(";")
    kinds = {c.split()[0] for c in checks}
    assert kinds == {"img", "video", "table"}, checks
    assert all(c.endswith("true") for c in checks), checks


def _evaluate_rank(rank: int, world: int, port: int, demo: Path, out: Path, options: dict) -> None:
    """One of ``world`` processes with the environment torchrun would give it (one thread each): ``evaluate`` on
    the quick demo's held-out store with its segmenter."""
    import os

    import torch

    from ecgflowcmr.commands.evaluate import evaluate

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    path = evaluate(demo / "flow", demo / "heldout_store", out, segmenter=demo / "evaluation" / "segmenter",
                    seg_config="tiny", max_test=6, max_train=4, batch_size=2, max_baseline=3, fid_frames=0, examples=0,
                    sampler="ancestral", guidance=1.5, **options)  # its fresh noise per item shards like the rest
    (out.parent / f"{out.name}-rank{rank}.json").write_text(json.dumps(str(path) if path else None))


def _run_ranks(world: int, demo: Path, out: Path, **options) -> None:
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [multiprocessing.get_context("fork").Process(target=_evaluate_rank, args=(r, world, port, demo, out, options))
             for r in range(world)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=300)
        assert p.exitcode == 0


@pytest.fixture(scope="module")
def one_process(evaluated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`evaluate` in one process on 6 held-out subjects of the quick demo, at noise seeds 0 and 1."""
    out = tmp_path_factory.mktemp("one-process") / "one"
    _run_ranks(1, evaluated.parent, out, noise_seeds=2)
    return out


def test_two_gloo_ranks_give_the_single_process_metrics(evaluated: Path, one_process: Path, tmp_path: Path) -> None:
    """Sharded (each rank generates, reconstructs and segments its block, rank 0 scores and writes) = one process,
    number for number: the blocks are whole batches, so every batch is one the single process runs."""
    _run_ranks(2, evaluated.parent, tmp_path / "two", noise_seeds=2)
    assert json.loads((tmp_path / "two-rank1.json").read_text()) is None  # rank 1 wrote nothing
    one, two = (json.loads((path / "metrics.json").read_text()) for path in (one_process, tmp_path / "two"))
    assert one["instrument"]["subjects"]["test"] == 6 and one["instrument"]["subjects"]["baseline"] == 3
    definition = one["speed"]["seconds_per_video"]["definition"]
    assert "sampler ancestral" in definition and "guidance 1.5" in definition
    for metrics in (one, two):
        del metrics["speed"]
    assert two == one
    report = (tmp_path / "two" / "report.html").read_text()  # examples=0: no example videos or area curves
    assert "<video" not in report and "LV area over the cycle" not in report
    assert "<table id='noise-seeds'>" in report


def test_noise_seeds_repeat_the_generator_measures_as_single_seed_runs_would(evaluated: Path, one_process: Path,
                                                                              tmp_path: Path) -> None:
    """`--noise-seeds 2` (seeds 0, 1): each seed's column is what a run with that seed alone measures, though the
    real cines' readings and VAE reconstructions are computed once; the noise-free numbers are not repeated."""
    _run_ranks(1, evaluated.parent, tmp_path / "seed1", seed=1)
    both, seed1 = (json.loads((path / "metrics.json").read_text()) for path in (one_process, tmp_path / "seed1"))
    over = both["over_noise_seeds"]
    assert over["seeds"] == [0, 1] and "seed 0's" in over["definition"]
    rows = over["measures"]
    assert "diagnosis_real_trained_on_real" not in rows and "fid_cmr_real_floor" not in rows
    for name in ("fid_cmr_generated", "es_frame_mae_own_ecg", "diagnosis_real_trained_on_generated"):
        assert rows[name]["values"] == [both["headline"][name], seed1["headline"][name]], name
    fid = rows["fid_cmr_generated"]["values"]
    assert fid[0] != fid[1]  # another noise, other cines
    share = rows["fid_cmr_over_floor"]["values"][1]
    assert share == pytest.approx(fid[1] / seed1["headline"]["fid_cmr_real_floor"])
    assert "over_noise_seeds" not in seed1  # one seed: no section
    assert both["speed"]["timings_s"]["other_noise_seeds_s"] > 0


def test_bad_inputs_exit_2(evaluated: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = evaluated.parent / "flow"
    store = evaluated.parent / "store"
    assert main(["evaluate", "--model", str(bundle), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--segmenter", str(evaluated / "segmenter")]) == 2
    assert "store.json missing" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(bundle), "--data", str(store), "--out", str(tmp_path / "o"),
                 "--segmenter", str(tmp_path)]) == 2
    assert "no trained segmenter" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(bundle), "--data", str(store), "--out", str(tmp_path / "o"),
                 "--noise-seeds", "0"]) == 2
    assert "--noise-seeds: must be ≥ 1, got 0" in capsys.readouterr().err
    for bad, why in (("2", "must be ≥ 3"), ("many", "expected a whole number ≥ 3 or 'all'")):
        assert main(["evaluate", "--model", str(bundle), "--data", str(store), "--out", str(tmp_path / "o"),
                     "--max-baseline", bad]) == 2
        err = capsys.readouterr().err
        assert "--max-baseline" in err and why in err and len(err.strip().splitlines()) == 1


def _downstream_folder(folder: Path) -> Path:
    """A finished `downstream` output folder, from made-up per-fold scores (the report only reads it)."""
    from ecgflowcmr.downstream.report import write_outputs

    rows = [{"task": "cm", "method": m, "source": m.partition("@")[0], "mix": float(m.partition("@")[2] or 0),
             "fold": k, "metric": "auc", "value": v + 0.01 * k, "n_train": 8, "n_test": 4}
            for k in range(3) for m, v in (("scratch", 0.6), ("real", 0.7), ("ecg@1", 0.75))]
    write_outputs(folder, rows, {"folds": 3, "seed": 0, "cohort": {"subjects": 12}})
    return folder


def test_turing_study_and_downstream_join_the_report(evaluated: Path, tmp_path: Path) -> None:
    """`evaluate --turing STUDY --downstream DIR` puts the study's section (here a study nobody rated yet)
    and the downstream tables and plots into report.html; with `--max-baseline 3` the references cover the
    first 3 of the 4 test subjects, the generated cines all 4, and metrics.json says so."""
    from ecgflowcmr.turing import create_study

    demo = evaluated.parent
    study = tmp_path / "study"
    create_study(f"{demo / 'store'}:test", str(demo / "generated"), 3, study, seed=0)
    downstream = _downstream_folder(tmp_path / "downstream")
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(demo / "flow"), "--data", str(demo / "store"), "--out", str(out),
                 "--segmenter", str(evaluated / "segmenter"), "--max-test", "4", "--max-train", "8",
                 "--fid-frames", "0", "--turing", str(study), "--downstream", str(downstream),
                 "--max-baseline", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    subjects = metrics["instrument"]["subjects"]
    assert (subjects["test"], subjects["baseline"], subjects["max_baseline"]) == (4, 3, 3)
    assert "over N = 4 test subjects; shuffled_ecg and vae_reconstruction over the first 3" in \
        metrics["instrument"]["agreement"]["lv_fac"]["definition"]
    assert "first 3 of the 4 test items" in metrics["instrument"]["timing"]["es_frame_mae_swapped_ecg"]["definition"]
    quality = metrics["quality"]
    assert "mean over 4 subjects" in quality["generated"]["psnr_db"]["definition"]
    for source in ("shuffled_ecg", "vae_reconstruction", "retrieval", "template_only", "real_floor"):
        assert "the first 3 of the 4 test subjects" in quality[source]["psnr_db"]["definition"], source
    page = (out / "report.html").read_text()
    assert "<h2>Turing test (raters)</h2>" in page
    assert "has no answers yet" in page
    assert "<h2>Downstream: does pretraining on generated cines help?</h2>" in page
    assert "Table 2: disease classification" in page and "MAE + ecg 100 %" in page
    assert "<img alt='cm_auc' src='data:image/png;base64," in page
    first = (evaluated / "report.html").read_text()
    assert "Turing test (raters)" not in first and "Downstream:" not in first


def test_a_folder_without_downstream_tables_exits_2_at_once(evaluated: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    demo = evaluated.parent
    assert main(["evaluate", "--model", str(demo / "flow"), "--data", str(demo / "store"), "--out",
                 str(tmp_path / "o"), "--downstream", str(tmp_path)]) == 2
    assert "no tables.md here" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work
