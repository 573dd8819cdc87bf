"""The CLI: every subcommand explains itself; user errors are one line, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ecgflowcmr.cli import build_parser, main

COMMANDS = [["phantom"], ["inspect"], ["prepare"], ["show"], ["train", "pamae"], ["train", "vae"],
            ["train", "flow"], ["swap-decoder"], ["generate"], ["evaluate"], ["demo"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: ecgflowcmr" in text and len(text.splitlines()) > 4


def test_sampler_choices_are_the_pipelines() -> None:
    from ecgflowcmr.cli import SAMPLER_FLAG
    from ecgflowcmr.pipeline import SAMPLERS

    assert SAMPLER_FLAG["choices"] == SAMPLERS
    for command in (["generate"], ["evaluate"]):
        args = build_parser().parse_args([*command, "--model", "m", "--sampler", "ancestral", *(
            ["--ecg", "e", "--out", "o"] if command == ["generate"] else ["--data", "d", "--out", "o"])])
        assert args.sampler == "ancestral"
    args = build_parser().parse_args(["evaluate", "--model", "m", "--data", "d", "--out", "o", "--guidance", "1.5"])
    assert args.guidance == 1.5


def test_python_dash_m_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "ecgflowcmr", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "phantom" in result.stdout


def test_user_error_is_one_line(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    assert main(["inspect", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(empty) in err and err.count("\n") == 1


def test_demo_refuses_a_bad_noise_seed_count_before_any_work(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--recipe", "small", "--noise-seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --noise-seeds: must be ≥ 1, got 0\n" and not (tmp_path / "demo").exists()


def test_unknown_config_key_is_refused(synthetic_store: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "pamae", "--data", str(synthetic_store), "--out", str(tmp_path / "run"),
                 "--set", "train.learning_rate=1"])
    assert code == 2
    assert "train.learning_rate" in capsys.readouterr().err


def test_inspect_describes_an_ecg_and_a_cine(tmp_path: Path, capsys) -> None:
    import json

    import numpy as np

    from conftest import synthetic_pair
    from ecgflowcmr.io.cmr import write_cine
    from ecgflowcmr.io.ecg import write_wfdb
    from ecgflowcmr.signal.phase import rpeaks_from_labels

    ecg, phase, cine = synthetic_pair(np.random.default_rng(3))
    write_wfdb(tmp_path / "rec", ecg)
    assert main(["inspect", str(tmp_path / "rec.hea"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rr = np.diff(rpeaks_from_labels(phase))  # the synthetic record's true R-R interval
    assert report["format"] == "wfdb" and report["readable"] and report["sampling_rate_hz"] == 500
    assert report["heart_rate_bpm"] == pytest.approx(60 * 500 / np.median(rr), abs=0.5)
    write_cine(tmp_path / "c.nii.gz", (cine + 1) / 2, spacing_mm=(1.8, 1.8), frame_interval_s=0.02)
    assert main(["inspect", str(tmp_path / "c.nii.gz")]) == 0
    text = capsys.readouterr().out
    assert "format" in text and "nifti" in text and "heart_rate_bpm" in text


def test_train_every_stage_then_generate(synthetic_store: Path, tmp_path: Path) -> None:
    """The CLI's successful path end to end on tiny settings: train pamae, vae, flow, then generate."""
    import numpy as np

    from ecgflowcmr.io.cmr import read_cine
    from ecgflowcmr.io.ecg import write_wfdb
    from ecgflowcmr.store.prepared import StoreDataset

    quick = ["--set", "train.steps=2", "--set", "train.batch_size=2", "--set", "train.warmup_steps=1",
             "--set", "train.val_every=0", "--set", "train.ckpt_every=0", "--set", "eval.max_items=2"]
    runs = {stage: tmp_path / stage for stage in ("pamae", "vae", "flow")}
    for stage in ("pamae", "vae"):
        assert main(["train", stage, "--data", str(synthetic_store), "--out", str(runs[stage]), *quick]) == 0
    assert main(["train", "flow", "--data", str(synthetic_store), "--out", str(runs["flow"]), *quick,
                 "--set", "model.sample_steps=2", "--pamae", str(runs["pamae"]), "--vae", str(runs["vae"])]) == 0
    for run in runs.values():
        assert (run / "model.safetensors").exists() and (run / "metrics.json").exists()
    write_wfdb(tmp_path / "ecg", StoreDataset(synthetic_store, "test", fields=("ecg",))[0]["ecg"].numpy())
    out = tmp_path / "generated"
    assert main(["generate", "--model", str(runs["flow"]), "--ecg", str(tmp_path / "ecg.hea"), "--out", str(out),
                 "--format", "nii,npy"]) == 0
    frames = np.load(out / "ecg.npy")
    assert frames.shape == (50, 96, 96)
    np.testing.assert_array_equal(read_cine(out / "ecg.nii.gz").frames01, frames)
