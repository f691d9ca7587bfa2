"""Run kinds by name, and the commands' entry points to them: train, validate, evaluate, load.

CTR-style rows (polyrec.train.run) and top-K ranking (polyrec.topk.run) implement polyrec.train.kind's
RunKind; this module sits above both so neither imports the other. A config picks its kind (a `topk`
section: top-K); a finished run folder says its kind in spec.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyrec.config import RunConfig
from polyrec.errors import PolyrecError, close_matches, unknown_name
from polyrec.topk.run import TopKKind
from polyrec.train.kind import EpochCallback, RunKind, RunResult, execute
from polyrec.train.run import CTRKind
from polyrec.utils.io import read_json

KINDS: dict[str, RunKind] = {k.name: k for k in (CTRKind(), TopKKind())}
SPLITS = ("train", "val", "test")


def kind_of(cfg: RunConfig) -> RunKind:
    return KINDS[cfg.kind]


def kind_of_folder(run_dir: str | Path) -> RunKind:
    """The kind that wrote a run folder (spec.json's "kind"; folders from before it was recorded are CTR-style)."""
    spec = Path(run_dir) / "spec.json"
    name = read_json(spec).get("kind", "ctr") if spec.exists() else "ctr"
    if name not in KINDS:
        raise unknown_name("run kind", name, KINDS)
    return KINDS[name]


def validate_config(cfg: RunConfig) -> None:
    """Fail fast on unknown names and parameters and on a device this machine lacks, before any data is read."""
    kind_of(cfg).validate(cfg)


def train_run(cfg: RunConfig, run_dir: Path, resume: bool = False, log: Callable[[str], None] = print,
              progress_factory: Callable[[int], Any] | None = None, download: bool = True,
              epoch_callback: EpochCallback | None = None, evaluate_test: bool = True) -> RunResult:
    """Train `cfg` into `run_dir` with its run kind (see polyrec.train.kind.execute)."""
    return execute(kind_of(cfg), cfg, run_dir, resume=resume, log=log, progress_factory=progress_factory,
                   download=download, epoch_callback=epoch_callback, evaluate_test=evaluate_test)


def evaluate_run(run_dir: str | Path, split: str = "test", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Metrics of a finished run on one split of its data (re-read with the run's config)."""
    if split not in SPLITS:
        raise PolyrecError(f"Unknown split {split!r}; use train, val or test.{close_matches(split, list(SPLITS))}")
    return kind_of_folder(run_dir).evaluate_folder(Path(run_dir), split, log)


def load_run(run_dir: str | Path, log: Callable[[str], None] = print) -> Any:
    """A finished run of any kind (polyrec.train.run.LoadedRun or polyrec.topk.run.LoadedTopKRun)."""
    return kind_of_folder(run_dir).load(Path(run_dir), log)


__all__ = ["KINDS", "RunResult", "evaluate_run", "kind_of", "kind_of_folder", "load_run", "train_run",
           "validate_config"]
