"""Bundles of either run kind: `polyrec export` and `polyrec serve` go through here.

A CTR-style run gives a model bundle (polyrec.serve.bundle: weights, encoders, optional ONNX graph); a
top-K run gives a top-K bundle (polyrec.serve.topk: user and item vectors, or stored scores, and the seen
items). bundle.json's "kind" tells them apart when loading.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from polyrec.errors import PolyrecError
from polyrec.serve.bundle import BUNDLE_FORMAT, Bundle, export_ctr_bundle, load_ctr_bundle
from polyrec.serve.topk import TopKBundle, export_topk_bundle, load_topk_bundle
from polyrec.utils.io import read_json


def export_bundle(run_dir: str | Path, out: str | Path, onnx: bool = False, rows: pa.Table | None = None,
                  name: str | None = None, fusion: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export a finished run to a bundle folder `out` (which must not exist); returns bundle.json."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise PolyrecError(f"{out} already exists: choose another --out, or delete it first.")
    spec_path = run_dir / "spec.json"
    if spec_path.exists() and read_json(spec_path).get("kind") == "topk":
        if onnx:
            raise PolyrecError(f"{run_dir} is a top-K run: its bundle is served by numpy (a dot product over "
                               "stored vectors, or stored scores), there is no ONNX graph; export without --onnx.")
        return export_topk_bundle(run_dir, out, name, log)
    return export_ctr_bundle(run_dir, out, onnx=onnx, rows=rows, name=name, fusion=fusion, log=log)


def load_bundle(path: str | Path) -> Bundle | TopKBundle:
    """A bundle folder -> what serving needs; no run folder and no data."""
    path = Path(path)
    if not path.is_dir():
        raise PolyrecError(f"Bundle not found: {path} is not a folder (create one with `polyrec export`).")
    if not (path / "bundle.json").exists():
        raise PolyrecError(f"{path} is not a polyrec bundle: bundle.json is missing.")
    info = read_json(path / "bundle.json")
    if info.get("format") != BUNDLE_FORMAT:
        raise PolyrecError(f"{path}: bundle format {info.get('format')!r} is not {BUNDLE_FORMAT}; re-export it.")
    if info.get("kind") == "topk":
        return load_topk_bundle(path, info)
    return load_ctr_bundle(path, info)
