"""Careless command lines and full disks: one line naming the field or file, exit status 2, no traceback."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from ecgflowcmr.cli import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("sets", "field"), [
    (["train=1"], "train"),
    (["train.lr=nan"], "train.lr"),
    (["train.lr=1e400"], "train.lr"),
    (["train.lr=[1"], "train.lr"),                         # a YAML error in the value
    (["model.width=10000000"], "model.width"),             # absurd model size
    (["train=1", "train.lr=2"], "train"),
    (["train..lr=2"], "train..lr"),
    (["model={a: 1}"], "model.a"),
])
def test_bad_overrides_name_their_field(synthetic_store: Path, tmp_path: Path, capsys, sets, field) -> None:
    args = ["train", "pamae", "--data", str(synthetic_store), "--out", str(tmp_path / "run")]
    assert main([*args, *(a for s in sets for a in ("--set", s))]) == 2
    assert _one_line(capsys).startswith(f"error: {field}: ")
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("config", ["folder", "bad.yaml", "deep.yaml", "list.yaml"])
def test_bad_config_files(synthetic_store: Path, tmp_path: Path, capsys, config: str) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "bad.yaml").write_text("train: {lr: [1\n")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 20_000 + "]" * 20_000 + "\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    args = ["train", "pamae", "--data", str(synthetic_store), "--out", str(tmp_path / "run"),
            "--config", str(tmp_path / config)]
    assert main(args) == 2
    assert str(tmp_path / config) in _one_line(capsys)


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_cannot_be_a_folder(synthetic_store: Path, tmp_path: Path, capsys, where: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    assert main(["train", "pamae", "--data", str(synthetic_store), "--out", str(out), "--set", "train.steps=1"]) == 2
    assert str(out) in _one_line(capsys)
    assert main(["phantom", "--out", str(out), "--n", "1"]) == 2
    _one_line(capsys)


def test_prepare_refuses_when_the_disk_is_too_small(phantom_cohort: Path, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 << 20))
    assert main(["prepare", "--manifest", str(phantom_cohort / "manifest.csv"), "--out", str(tmp_path / "s")]) == 2
    assert "free disk space" in _one_line(capsys)
    assert not (tmp_path / "s").exists()
    assert not list((tmp_path / "s.partial").rglob("*.npy"))  # nothing allocated


def test_a_full_disk_mid_job_is_one_line(phantom_cohort: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """ENOSPC (or a read-only folder) while writing: one line, exit 2, no file left under its final name."""
    from ecgflowcmr.store import prepared as store

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s.partial" / "skipped.csv"))

    monkeypatch.setattr(store, "_write_csv", full)
    assert main(["prepare", "--manifest", str(phantom_cohort / "manifest.csv"), "--out", str(tmp_path / "s")]) == 2
    assert "No space left on device" in _one_line(capsys)
    assert not (tmp_path / "s").exists()  # the store is visible only when complete


def test_checkpoint_refusal_gives_no_unsafe_advice(tmp_path: Path) -> None:
    """A state.pt holding a pickled object is refused in one line that never suggests weights_only=False."""
    import torch

    from ecgflowcmr.errors import InputError
    from ecgflowcmr.training.checkpoint import load_checkpoint

    torch.save({"step": 3, "path": Path("x")}, tmp_path / "state.pt")
    with pytest.raises(InputError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "weights_only" not in message and "\n" not in message and "never loaded" in message


def test_read_only_out_folder_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """As root a chmod cannot make a folder read-only, so the check itself is exercised."""
    import os

    from ecgflowcmr.atomic import ensure_dir
    from ecgflowcmr.errors import InputError

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="not writable"):
        ensure_dir(tmp_path / "out")
