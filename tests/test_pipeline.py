"""End to end: the quick demo trains every stage; the bundle loads; `generate` is resumable and robust."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ecgflowcmr import load_pipeline
from ecgflowcmr.cli import main
from ecgflowcmr.commands.generate import shard_of
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.cmr import read_cine


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    return out


def test_demo_writes_report_and_metrics(demo_run: Path) -> None:
    report = (demo_run / "report.html").read_text()
    assert "<img" in report and "generated" in report
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics["generation"]["videos"] > 0 and metrics["generation"]["failed"] == 0
    assert set(metrics["stages"]) == {"pamae", "vae", "flow"}
    assert any(p.suffix == ".gif" for p in (demo_run / "report_media").iterdir())


def test_pipeline_generates_from_a_file(demo_run: Path) -> None:
    pipe = load_pipeline(demo_run / "flow")
    ecg = next((demo_run / "cohort" / "ecg").glob("*.hea"))
    video = pipe.generate(ecg, steps=2, seed=3)
    assert video.shape == (50, 96, 96) and video.dtype == np.float32
    assert 0.0 <= video.min() and video.max() <= 1.0
    again = pipe.generate(ecg, steps=2, seed=3)
    np.testing.assert_array_equal(video, again)  # seeded
    phase = pipe.ecg_phase(ecg)
    assert phase.shape == (5000,) and np.isfinite(phase).all()
    with pytest.raises(InputError, match="no usable cardiac cycle"):
        pipe.generate(np.full((12, 5000), np.nan, dtype=np.float32), steps=1)


def test_generate_manifest_resumes_and_records_failures(demo_run: Path, tmp_path: Path) -> None:
    cohort = demo_run / "heldout_cohort"  # the quick demo generates a held-out cohort's test split, as `small`
    with open(cohort / "test_manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:3]
    (cohort / "broken.hea").write_text("not a header\n")
    rows.append({**rows[0], "subject_id": "broken", "ecg_path": "broken.hea"})
    manifest = cohort / "gen_manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "gen"
    args = ["generate", "--model", str(demo_run / "flow"), "--ecg", str(manifest), "--out", str(out),
            "--format", "nii,npy", "--steps", "2", "--batch-size", "2"]
    assert main(args) == 0
    sid = rows[0]["subject_id"]
    nii = out / shard_of(sid) / f"{sid}.nii.gz"
    img = nib.load(nii)
    assert img.shape == (96, 96, 1, 50)
    zooms = img.header.get_zooms()
    assert zooms[0] > 0 and 0.005 < zooms[3] < 0.03  # spacing in mm, frame interval in s (RR / 50)
    generated = np.load(out / shard_of(sid) / f"{sid}.npy")
    np.testing.assert_array_equal(read_cine(nii).frames01, generated)  # read back: the generated array
    with open(out / "failed.csv", newline="") as fh:
        failed = list(csv.DictReader(fh))
    assert [f["subject_id"] for f in failed] == ["broken"]
    before = nii.stat().st_mtime_ns
    assert main(args) == 0  # rerun: finished items are skipped
    assert nii.stat().st_mtime_ns == before
    assert not list(out.rglob(".tmp-*"))
    single = tmp_path / "gen1"
    assert main([*args[:5], "--out", str(single), "--format", "npy", "--steps", "2", "--batch-size", "1"]) == 0
    for row in rows[:3]:  # an item's cine does not depend on its batch
        sid = row["subject_id"]
        np.testing.assert_allclose(np.load(single / shard_of(sid) / f"{sid}.npy"),
                                   np.load(out / shard_of(sid) / f"{sid}.npy"), atol=1e-5)  # batched matmul order


def test_each_ecgs_rpeaks_are_found_once(demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_ecg finds the R-peaks; generation (PA-MAE fallback, frame interval) uses the carried ones."""
    from ecgflowcmr.signal import phase

    calls = []
    detect = phase.detect_rpeaks
    monkeypatch.setattr(phase, "detect_rpeaks", lambda *a, **k: calls.append(1) or detect(*a, **k))
    ecg = next((demo_run / "cohort" / "ecg").glob("*.hea"))
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(demo_run / "flow"), "--ecg", str(ecg), "--out", str(out),
                 "--format", "nii", "--steps", "1"]) == 0
    assert len(calls) == 1
    load_pipeline(demo_run / "flow").generate(ecg, steps=1)
    assert len(calls) == 2


def test_partial_bundle_fails_clearly(demo_run: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(demo_run / "flow" / "bundle", bundle)
    (bundle / "vae" / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"vae/model\.safetensors missing"):
        load_pipeline(bundle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a bundle"):
        load_pipeline(tmp_path / "empty")


def test_report_metric_rows_pair_each_number_with_its_definition():
    """One row per number: {"value", "definition"} metrics, shared definitions for plain numbers, nested sections."""
    from ecgflowcmr.commands.demo_report import _metrics_table, metric_rows

    metrics = {
        "generated_vs_real": {"psnr_db": 12.5, "n": 3, "definition": "shared"},
        "stages": {"vae": {"psnr_db": {"value": 20.1, "definition": "held-out"}, "note": "text is not a number"}},
        "timings_s": {"demo_s": 700.0, "flag": True},
    }
    assert metric_rows(metrics) == [
        ("generated_vs_real", "psnr_db", 12.5, "shared"), ("generated_vs_real", "n", 3, "shared"),
        ("stages › vae", "psnr_db", 20.1, "held-out"), ("timings_s", "demo_s", 700.0, ""),
    ]
    html = _metrics_table(metrics)
    assert html.count("<tr>") == 5 and "20.1" in html and "held-out" in html and "value</th>" in html


def test_the_pipeline_decodes_the_template_the_vae_stage_reported(demo_run: Path) -> None:
    """Template shape and scale agree between the VAE stage and generation: the bundle's flow starts from the
    VAE run's template, and decoding it on the pipeline's path scores the template PSNR the VAE stage reported
    on the same held-out cines."""
    import torch
    from safetensors.torch import load_file

    from ecgflowcmr.models.image_metrics import psnr
    from ecgflowcmr.store.prepared import StoreDataset, split_size

    pipe = load_pipeline(demo_run / "flow")
    template = load_file(str(demo_run / "vae" / "template.safetensors"))["template"]
    torch.testing.assert_close(pipe.flow.template, template)
    z0 = pipe.flow.initial_state(1, torch.Generator().manual_seed(0))  # template + α·ε (Eq. 4)
    eps = pipe.flow.noise(1, torch.Generator().manual_seed(0))  # the preset's ε (frame-correlated: test_flow)
    torch.testing.assert_close(z0, template + pipe.flow.config.alpha * eps)
    decoded = (pipe.vae.decode_latent(template[None]) + 1) / 2  # (1, 1, T, H, W) as generate_batch decodes
    vae_metrics = json.loads((demo_run / "vae" / "metrics.json").read_text())
    split = "test" if split_size(demo_run / "store", "test") > 0 else "val"  # as the VAE stage chooses
    held_out = StoreDataset(demo_run / "store", split, fields=("cine",))
    real = torch.stack([held_out[i]["cine"] for i in range(vae_metrics["n_held_out"]["value"])])
    scores = psnr(decoded.expand_as(real), (real + 1) / 2)
    assert abs(float(scores.mean()) - vae_metrics["template_psnr_db"]["value"]) < 1e-3


def test_the_null_condition_ignores_the_ecg_and_its_prior(demo_run: Path) -> None:
    """The template-only generator (the downstream 'template' control) is ECG-blind: with the ECG prior
    (the tiny default) its start is the plain template, so two ECGs with the same seed give the same cine."""
    import torch

    from ecgflowcmr.io.ecg import read_ecg

    pipe = load_pipeline(demo_run / "flow")
    assert pipe.flow.prior is not None  # the preset's ECG-conditioned template
    files = sorted((demo_run / "cohort" / "ecg").glob("*.hea"))[:2]
    ecgs = [read_ecg(f) for f in files]
    x = torch.from_numpy(np.stack([e.signal for e in ecgs]))
    rpeaks = [e.rpeaks for e in ecgs]
    blind, valid = pipe.generate_batch(x, steps=2, seed=[5, 5], rpeaks=rpeaks, null_condition=True)
    assert valid.all()
    np.testing.assert_allclose(blind[0], blind[1], atol=1e-5)
    seen, _ = pipe.generate_batch(x, steps=2, seed=[5, 5], rpeaks=rpeaks)
    assert np.abs(seen[0] - seen[1]).mean() > 1e-3  # with the ECG (and its prior) they differ
