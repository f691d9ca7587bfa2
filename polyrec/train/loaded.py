"""A finished CTR-style run folder read back: its config, encoders, spec and weights (evaluate, predict, export,
warm starts). Kept apart from polyrec.train.run so what reads a run (polyrec.train.warmstart) needs no training code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from polyrec.config import RunConfig, load_config
from polyrec.data.encoders import Encoders
from polyrec.errors import PolyrecError
from polyrec.models import ModelSpec, build_model
from polyrec.models.base import MultiTaskModel
from polyrec.train.checkpoint import load_state
from polyrec.train.trainer import WEIGHTS
from polyrec.utils.io import read_json


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    encoders: Encoders
    spec: ModelSpec
    model: MultiTaskModel


def load_run(run_dir: str | Path) -> LoadedRun:
    run_dir = Path(run_dir)
    for name in ("config.yaml", "encoders.json", "spec.json", WEIGHTS):
        if not (run_dir / name).exists():
            raise PolyrecError(f"{run_dir} is not a finished polyrec run: {name} is missing.")
    cfg = load_config(run_dir / "config.yaml")
    spec, model = rebuild_model(run_dir / "spec.json", run_dir / WEIGHTS, "retrain the run")
    return LoadedRun(run_dir, cfg, Encoders.load(run_dir / "encoders.json"), spec, model)


def rebuild_model(spec_path: Path, weights: Path, remedy: str) -> tuple[ModelSpec, MultiTaskModel]:
    """The model a spec.json describes, with its weights, in eval mode (run folders and bundles alike);
    a damaged spec or weights that do not fit are one line naming the file and `remedy`."""
    info = read_json(spec_path)
    try:
        spec = ModelSpec.from_dict(info["spec"])
        model = build_model(info["model"], spec, info["embed_dim"], info["params"])
    except (KeyError, TypeError) as exc:
        raise PolyrecError(f"{spec_path} is damaged (no valid {exc}); {remedy}.") from None
    load_state(model, weights)
    return spec, model.eval()
