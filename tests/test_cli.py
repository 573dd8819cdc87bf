"""The CLI: every subcommand explains itself; user errors are one line, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ecgflowcmr.cli import build_parser, main

COMMANDS = [["phantom"], ["inspect"], ["prepare"], ["show"], ["train", "pamae"], ["train", "vae"],
            ["train", "flow"], ["generate"], ["demo"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: ecgflowcmr" in text and len(text.splitlines()) > 4


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


def test_unknown_config_key_is_refused(synthetic_store: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "pamae", "--data", str(synthetic_store), "--out", str(tmp_path / "run"),
                 "--set", "train.learning_rate=1"])
    assert code == 2
    assert "train.learning_rate" in capsys.readouterr().err
