"""`ecgflowcmr evaluate --sweep SPEC` end to end at toy size: 2 training variants × 2 seeds trained on shared
latents from tiny PA-MAE and VAE runs, evaluated by the instrument, one table, charts, resumable; bad SPECs
fail with one line."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import yaml

from ecgflowcmr.cli import main

QUICK = ["train.steps=2", "train.batch_size=2", "train.warmup_steps=1", "train.val_every=0", "train.ckpt_every=0",
         "train.log_every=1", "train.device=cpu"]


@pytest.fixture(scope="module")
def upstream(phantom_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PA-MAE and VAE runs (tiny, the VAE narrowed, 2 steps) and a 3-step 2-level segmenter on the phantom store:
    every network as small as runs end to end (the evaluation's cost is the VAE decode and the segmenter)."""
    from ecgflowcmr.evaluation.segmentation import SegConfig, train_segmenter
    from ecgflowcmr.training.tasks import train

    root = tmp_path_factory.mktemp("sweep_upstream")
    pamae = train("pamae", phantom_store, root / "pamae", "tiny", sets=[*QUICK, "eval.max_items=2"])
    vae = train("vae", phantom_store, root / "vae", "tiny",
                sets=[*QUICK, "model.channels=[2,2,4,4]", "model.norm_groups=2", "train.batch_size=1",
                      "eval.max_items=1"])
    train_segmenter(phantom_store, root / "seg", SegConfig(widths=(2, 4), steps=3, batch_size=4, val_items=1))
    return {"pamae": pamae, "vae": vae, "seg": root / "seg", "store": phantom_store}


def write_spec(path: Path, upstream: dict[str, Path], variants: list[dict], seeds: list[int] | None = None) -> Path:
    spec = {"pamae": str(upstream["pamae"]), "vae": str(upstream["vae"]), "preset": "tiny",
            "sets": [*QUICK, "eval.max_items=2", "model.sample_steps=1"], "seeds": seeds or [0, 1],
            "variants": variants}
    path.write_text(yaml.safe_dump(spec))
    return path


def run_sweep(spec: Path, upstream: dict[str, Path], out: Path) -> int:
    return main(["evaluate", "--sweep", str(spec), "--data", str(upstream["store"]), "--out", str(out),
                 "--segmenter", str(upstream["seg"]), "--max-test", "3", "--max-train", "3", "--fid-frames", "0",
                 "--batch-size", "4"])


@pytest.fixture(scope="module")
def swept(upstream: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep of 2 training variants (base, α = 1.5) × 2 seeds."""
    root = tmp_path_factory.mktemp("sweep")
    spec = write_spec(root / "sweep.yaml", upstream, [{"name": "base"}, {"name": "alpha", "grid": {"model.alpha": [1.5]}}])
    assert run_sweep(spec, upstream, root / "out") == 0
    return root


@pytest.mark.slow
def test_sweep_table_charts_and_resume(upstream: dict[str, Path], swept: Path) -> None:
    out = swept / "out"
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("alpha[alpha=1.5]", "0"), ("alpha[alpha=1.5]", "1"),
                                                               ("base", "0"), ("base", "1")]
    assert {r["alpha"] for r in rows} == {"0.5", "1.5"}  # the tiny default, the override
    assert {(r["steps"], r["method"]) for r in rows} == {("1", "ancestral")}  # the tiny default
    assert {r["overrides"] for r in rows} == {"", "model.alpha=1.5"}
    assert all(float(r["psnr_db"]) > 0 and float(r["fid_cmr"]) >= 0 for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["base"]["psnr_db"]["n"] == 2 and metrics["summary"]["base"]["psnr_db"]["std"] is not None
    assert set(metrics["columns"]) >= {"lv_fac_spearman", "es_frame_mae", "dx_gen_clf", "fid_cmr"}
    page = (out / "report.html").read_text()
    assert "<img alt='metric vs alpha' src='data:image/png;base64," in page
    assert "<table id='sweep-summary'>" in page and "<table id='sweep-rows'>" in page
    # the latents were encoded once, into the shared cache every run links to
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 4 and all((r / "cache").is_symlink() for r in runs)
    assert {(r / "cache").resolve() for r in runs} == {(out / "cache" / "pamae").resolve()}
    # each seed trained its own flow
    weights = {(r / "model.safetensors").read_bytes() for r in runs}
    assert len(weights) == 4

    # rerun: nothing is trained or evaluated again
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("runs/*/metrics.json"), *out.glob("variants/*/metrics.json")]}
    start = time.perf_counter()
    assert run_sweep(swept / "sweep.yaml", upstream, out) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert time.perf_counter() - start < 30


def test_a_sampling_variant_samples_the_trained_flow_with_its_settings(upstream: dict[str, Path], swept: Path) -> None:
    """`from: base, sample: {steps: 2, method: heun}` generates exactly what base's bundle generates when asked
    for 2 Heun steps, and differs from base's own default (1 Euler step)."""
    import numpy as np
    import torch

    from ecgflowcmr.commands.sweep import Variant, variant_pipeline
    from ecgflowcmr.pipeline import load_pipeline
    from ecgflowcmr.store.prepared import StoreDataset

    run = swept / "out" / "runs" / "base-s0"
    pipe = variant_pipeline(run, Variant("heun2", parent="base", sampling={"steps": 2, "method": "heun"}))
    plain = load_pipeline(run)
    assert pipe.sampling == {"steps": 2, "method": "heun", "guidance": plain.sampling["guidance"]}  # kept: not asked
    ecg = torch.from_numpy(np.asarray(StoreDataset(upstream["store"], "test", fields=("ecg",)).array("ecg")[:1],
                                      dtype=np.float32))
    mine, valid = pipe.generate_batch(ecg, seed=3)
    asked, _ = plain.generate_batch(ecg, steps=2, method="heun", seed=3)
    default, _ = plain.generate_batch(ecg, seed=3)
    assert valid.all()
    np.testing.assert_array_equal(mine, asked)
    assert not np.array_equal(mine, default)


def test_bad_specs_exit_2(upstream: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [
        ([{"name": "typo", "sets": ["model.alphaa=1"]}], "model.alphaa"),
        ([{"name": "base"}, {"name": "s", "from": "nope", "sample": {"steps": 2}}], "not a training variant"),
        ([{"name": "base"}, {"name": "s", "from": "base", "sample": {"method": "rk4"}}], "euler, heun"),
        ([{"name": "plain", "sets": ["model.cond_dropout=0", "model.sample_guidance=null"]},
          {"name": "g", "from": "plain", "sample": {"guidance": 2}}],
         "no unconditional branch"),
        ([{"name": "wide", "pamae": ["model.width=8"]}], "alignment fields"),
        ([{"name": "base", "colour": "red"}], "unknown key"),
        ([{"name": "a"}, {"name": "a"}], "share the folder name"),
    ]
    for i, (variants, message) in enumerate(cases):
        spec = write_spec(tmp_path / f"bad{i}.yaml", upstream, variants)
        assert run_sweep(spec, upstream, tmp_path / f"out{i}") == 2, variants
        err = capsys.readouterr().err
        assert message in err and str(spec) in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / f"out{i}" / "runs").exists()
    assert main(["evaluate", "--sweep", str(tmp_path / "bad0.yaml"), "--model", "x", "--data", "d", "--out", "o"]) == 2
    assert "not with --sweep" in capsys.readouterr().err


def test_uniform_tokens_variant_reuses_the_pamae_weights(upstream: dict[str, Path], tmp_path: Path) -> None:
    """`pamae: [model.align_cut=uniform]` gives a PA-MAE run with the same weights whose tokens are placed
    uniformly over the record (the 'no phase alignment' ablation)."""
    import torch

    from ecgflowcmr.bundle import load_model
    from ecgflowcmr.commands.sweep import pamae_run, read_spec

    spec = read_spec(write_spec(tmp_path / "s.yaml", upstream,
                                [{"name": "uniform", "pamae": ["model.align_cut=uniform"]}]))
    folder = pamae_run(spec, spec.variants[0].pamae_sets, tmp_path / "out")
    assert folder != upstream["pamae"] and pamae_run(spec, [], tmp_path / "out") == upstream["pamae"]
    uniform, aligned = load_model(folder, "pamae"), load_model(upstream["pamae"], "pamae")
    assert uniform.config.align_cut == "uniform" and aligned.config.align_cut == "rpeak"
    for a, b in zip(uniform.state_dict().values(), aligned.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    ecg = torch.randn(2, 12, 5000)
    with torch.no_grad():
        assert (uniform.encode_aligned(ecg).source == 2).all()  # every item: the whole record resampled
    assert pamae_run(spec, spec.variants[0].pamae_sets, tmp_path / "out") == folder  # written once


def test_charts_show_alpha_and_steps_with_seed_spread(tmp_path: Path) -> None:
    """The report draws metric vs α and metric vs steps (Euler and Heun) from the rows; the summary's spread
    is the standard deviation over seeds."""
    from ecgflowcmr.evaluation.sweep_report import COLUMNS, write_sweep

    rows = []
    for seed in (0, 1):
        base = {c: None for c in COLUMNS} | {"kind": "train", "of": "", "overrides": "", "prior": "template",
                                             "seed": seed, "use_template": True,
                                             "cond_dropout": 0.1, "align_cut": "rpeak", "guidance": None,
                                             "train_steps": 2, "train_s": 1.0, "only_alpha": True}
        for alpha in (0.5, 1.0):
            rows.append(base | {"variant": f"a{alpha}", "alpha": alpha, "steps": 4, "method": "euler",
                                "psnr_db": 20 + alpha + seed, "fid_cmr": 1.0})
        for method in ("euler", "heun"):
            for steps in (1, 2, 4):
                rows.append(base | {"variant": f"{method}{steps}", "kind": "sample", "of": "a1.0", "alpha": 1.0,
                                    "steps": steps, "method": method, "psnr_db": 20 + steps, "fid_cmr": 1.0 / steps})
    write_sweep(tmp_path, rows, {"spec": "s.yaml", "seeds": [0, 1]}, seconds=1.0)
    page = (tmp_path / "report.html").read_text()
    assert "<img alt='metric vs alpha'" in page and "<img alt='metric vs steps'" in page
    summary = json.loads((tmp_path / "metrics.json").read_text())["summary"]
    assert summary["a0.5"]["psnr_db"] == {"mean": 21.0, "std": pytest.approx(0.5**0.5), "min": 20.5, "max": 21.5,
                                          "n": 2}
    assert summary["heun2"]["lpips"] is None
    write_sweep(tmp_path, [r for r in rows if r["kind"] == "train" and r["alpha"] == 1.0],
                {"spec": "s.yaml", "seeds": [0, 1]}, seconds=1.0)
    page = (tmp_path / "report.html").read_text()
    assert "metric vs alpha" not in page and "metric vs steps" not in page  # one α, no sampling rows: no chart
    assert "One seed only" not in page
    write_sweep(tmp_path, rows[:2], {"spec": "s.yaml", "seeds": [0]}, seconds=1.0)
    assert "One seed only for a0.5, a1.0" in (tmp_path / "report.html").read_text()


def test_the_documented_fig2_spec_is_valid(upstream: dict[str, Path], tmp_path: Path) -> None:
    """docs/sweep-fig2.yaml (pointed at this module's runs) parses into the paper's Fig. 2a–b variants."""
    from ecgflowcmr.commands.sweep import read_spec

    raw = yaml.safe_load((Path(__file__).parents[1] / "docs" / "sweep-fig2.yaml").read_text())
    raw |= {"pamae": str(upstream["pamae"]), "vae": str(upstream["vae"])}
    (tmp_path / "fig2.yaml").write_text(yaml.safe_dump(raw))
    spec = read_spec(tmp_path / "fig2.yaml")
    assert [v.name for v in spec.training()] == ["base", "paper_start", "alpha[alpha=0.25]", "alpha[alpha=1.0]",
                                                  "alpha[alpha=1.5]", "no_template", "uniform_tokens",
                                                  "no_cfg_training"]
    assert len(spec.sampling()) == 12 and spec.seeds == [0, 1]
    assert {(v.sampling["steps"], v.sampling["method"]) for v in spec.sampling() if "steps" in v.sampling} == {
        (s, m) for s in (1, 2, 4, 8, 16) for m in ("euler", "heun")}
