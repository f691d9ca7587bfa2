"""The README's "Your own data" worked example, command for command: raw event log -> AUC -> predictions."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- own-data-example -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README lost its own-data-example block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(command.replace("examples/", f"{REPO}/examples/"))
    out = None
    if ">" in argv:  # `polyrec schema infer events.csv > draft.yaml`
        out = cwd / argv[argv.index(">") + 1]
        argv = argv[: argv.index(">")]
    if argv[0] == "polyrec":
        argv = [sys.executable, "-c", "from polyrec.cli import main; main()", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
    if out is not None:
        out.write_text(proc.stdout)
    return proc


@pytest.mark.slow
def test_readme_event_log_example_end_to_end(tmp_path):
    commands = readme_commands()
    assert any(c.startswith("polyrec train --data events.csv") for c in commands)
    for command in commands:
        run(command, tmp_path)
    draft = yaml.safe_load((tmp_path / "draft.yaml").read_text())
    assert draft["aggregate"]["labels"]["column"] == "behavior"  # the infer step recognised an event log
    metrics = json.loads((tmp_path / "runs/events/metrics.json").read_text())
    aucs = {t: metrics["test"]["heads"][t]["auc"] for t in ("cart", "fav", "buy")}
    assert all(a > 0.6 for a in aucs.values()), aucs  # the synthetic labels carry signal
    assert set(metrics["test"]["cells"]) == {"night", "morning", "afternoon", "evening"}
    scores = pacsv.read_csv(tmp_path / "scores.csv", convert_options=pacsv.ConvertOptions(
        column_types={"item_id": "string"}))
    assert scores.column_names == ["user_id", "item_id", "cart", "fav", "buy"] and scores.num_rows == 1000
    assert all(len(v) == 6 for v in scores["item_id"].to_pylist())  # zero-padded ids kept as strings
