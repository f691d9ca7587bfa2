"""The command line: listing commands, and user errors exit 2 with 'error:' and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.models import MODELS
from polyrec.recipes import RECIPES

runner = CliRunner()


def polyrec_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real entry point (polyrec.cli:main) in a subprocess with this session's environment."""
    return subprocess.run([sys.executable, "-c", "from polyrec.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_models_list_names_every_registered_model():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for name in MODELS:
        assert name in result.output
    assert "n_experts" in result.output  # parameters with defaults are shown


def test_datasets_list_names_every_recipe_and_the_data_dir():
    from polyrec.settings import data_dir

    result = runner.invoke(app, ["datasets", "list"])
    assert result.exit_code == 0, result.output
    for name in ("movielens-100k", "movielens-1m", "census-income"):
        assert name in RECIPES and name in result.output
    assert "data directory" in result.output and str(data_dir())[:40] in result.output.replace("\n", "")


@pytest.mark.parametrize("args,expected", [
    (["train", "--model", "mmeo"], "Did you mean 'mmoe'"),
    (["train", "--dataset", "movielens-10k"], "Unknown dataset 'movielens-10k'"),
    (["train", "--set", "train.lrr=0.1"], "Did you mean 'lr'"),
])
def test_user_errors_exit_2_without_traceback(args, expected, tmp_path):
    proc = polyrec_cli(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr
    assert expected in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists()  # failed before creating the run folder


def test_evaluate_missing_run_exits_2(tmp_path):
    proc = polyrec_cli("evaluate", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "config.yaml is missing" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
