"""A serving bundle: one self-contained folder exported from a finished run, loadable without its data.

Layout (written atomically: built in a temp folder, then renamed into place):
  bundle.json        format, name, model, heads, default fusion, versions, data fingerprints, ONNX check
  model.safetensors  the run's best weights
  encoders.json      fitted encoders, schema inside (request validation is generated from it)
  spec.json          model name, embed_dim, params and ModelSpec (the model is rebuilt from it)
  metrics.json       the run's final validation/test metrics
  joins/K.parquet    (runs with data.files.joins) each side table, keys as strings, only the columns the
                     schema reads: requests carry the keys, the bundle joins the rest
  model.onnx         (--onnx) scores [B, H] from the encoded tensors, dynamic batch axis
"""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from polyrec import __version__
from polyrec.data.encoders import EncodedSplit, Encoders
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError
from polyrec.models import ModelSpec
from polyrec.data.spec import Head
from polyrec.models.base import MultiTaskModel
from polyrec.serve.forward import ONNX_TOLERANCE, encoded_inputs, input_names, score_module
from polyrec.utils.io import atomic_directory, atomic_write_text, read_json

BUNDLE_FORMAT = 1
BUNDLE_FILES = ("bundle.json", "model.safetensors", "encoders.json", "spec.json", "metrics.json")
ONNX_FILE = "model.onnx"
ONNX_CHECK_ROWS = 10_000


@dataclass
class Bundle:
    """A loaded bundle: what backends and the HTTP app need, nothing from the training data."""

    path: Path
    info: dict[str, Any]
    encoders: Encoders
    spec: ModelSpec
    model: MultiTaskModel
    metrics: dict[str, Any] = field(default_factory=dict)
    joins: list[tuple[pa.Table, list[str], str]] = field(default_factory=list)  # (side, keys, name)
    request_encoder: Any = field(default=None, repr=False)  # RequestEncoder: the vocabularies indexed once

    def __post_init__(self) -> None:
        from polyrec.serve.lookup import RequestEncoder

        if self.request_encoder is None:  # built here, at load, not on the first request
            self.request_encoder = RequestEncoder(self.encoders)

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def heads(self) -> list[Head]:
        return self.model.heads

    @property
    def onnx_path(self) -> Path | None:
        p = self.path / ONNX_FILE
        return p if p.exists() else None

    @property
    def joined_columns(self) -> set[str]:
        """Columns the side tables bring (requests need not carry them)."""
        return {c for side, keys, _ in self.joins for c in side.column_names if c not in keys}

    def encode(self, table: pa.Table) -> EncodedSplit:
        """Raw request columns -> encoded arrays, through the same joins and derive steps as training."""
        table = model_inputs(table, self.encoders.schema, self.info.get("dataset"), "The request", self.joins)
        return self.request_encoder.encode(table)


def model_inputs(table: pa.Table, schema: Schema, dataset: str | None, where: str,
                 joins: list[tuple[pa.Table, list[str], str]] = ()) -> pa.Table:  # type: ignore[assignment]
    """Raw rows -> the columns the encoders read, as training made them: side tables left-joined (an
    unseen key leaves nulls, which encode as OOV / the fill value), the recipe's derived columns, then the
    schema's `derive` step (label columns skipped). Shared by `polyrec predict` and the served bundles."""
    from polyrec.data.derive import derive_columns, raw_columns
    from polyrec.data.sources import check_columns, join_side

    for side, keys, name in joins:
        table = join_side(table, side, keys, name)
    table = derive(dataset, table)
    if schema.derive:
        check_columns(table, raw_columns(schema, with_labels=False, aggregated=False), where)
        table = derive_columns(table, schema, where, with_labels=False)
    return table


def derive(dataset: str | None, table: pa.Table) -> pa.Table:
    """The recipe's derived columns when the recipe is known here (built-in or registered); else the table as is."""
    from polyrec.data.recipe import RECIPES

    recipe = RECIPES.get(dataset or "", None)
    return recipe.derive(table) if recipe is not None else table


# --- export -----------------------------------------------------------------------------------
def _register_symbolics() -> None:
    """ONNX forms of the two aten ops polyrec models use that opset 17 lacks: expm1 (ESMM's stable
    log(1 - p)) as Exp(x) - 1, and diag of a vector (M3oE's balance matrix) as EyeLike(outer) * v.
    The parity check on real rows says whether Exp - 1 is precise enough for a given model."""
    from torch.onnx import register_custom_op_symbolic

    def expm1(g: Any, x: Any) -> Any:
        return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0)))

    def diag(g: Any, x: Any, diagonal: Any = None) -> Any:
        axis0, axis1 = (g.op("Constant", value_t=torch.tensor([a])) for a in (0, 1))
        row, col = g.op("Unsqueeze", x, axis0), g.op("Unsqueeze", x, axis1)
        return g.op("Mul", g.op("EyeLike", g.op("Mul", row, col)), row)

    register_custom_op_symbolic("aten::expm1", expm1, 17)
    register_custom_op_symbolic("aten::diag", diag, 17)


def export_onnx(model: MultiTaskModel, path: Path, sample: dict[str, np.ndarray]) -> None:
    """torch.onnx.export (TorchScript exporter, opset 17) with a dynamic batch axis on every input and the output."""
    import warnings

    from polyrec.serve.deps import need

    need("onnx")
    _register_symbolics()
    names = input_names(model.spec)
    module = score_module(model)
    args = tuple(torch.from_numpy(sample[n][:7]) for n in names)  # traced on 7 rows, checked on all: the axis is dynamic
    axes = {n: {0: "batch"} for n in [*names, "scores"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["scores"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def _fingerprints(spec_info: dict[str, Any]) -> dict[str, Any]:
    """The data the run was trained on: cache entry (a hash of schema, files and split), rows, file digests."""
    from polyrec.data.cache import file_fingerprint
    from polyrec.settings import cache_dir

    entry = spec_info.get("cache_entry")
    out: dict[str, Any] = {"dataset": spec_info.get("dataset"), "cache_entry": entry}
    meta_path = cache_dir() / str(entry) / "meta.json" if entry else None
    if meta_path is not None and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        out.update(rows=meta.get("rows"), split=meta.get("split"), split_seed=meta.get("split_seed"))
        files = {}
        for k, p in (meta.get("files") or {}).items():
            files[k] = file_fingerprint(Path(p)) if Path(p).exists() else {"name": Path(p).name, "missing": True}
        out["files"] = files
    else:
        out["note"] = "the run's cache entry is not on this machine: only its name (a hash of schema, files, split) is kept"
    return out


def check_rows_table(spec_info: dict[str, Any], rows: pa.Table | None) -> tuple[pa.Table | None, str]:
    """Rows for the ONNX check: the caller's, else the run's raw test split from its cache entry."""
    from polyrec.settings import cache_dir

    if rows is not None:
        return rows.slice(0, ONNX_CHECK_ROWS), "caller rows"
    entry = spec_info.get("cache_entry")
    raw = cache_dir() / str(entry) / "raw-test.parquet" if entry else None
    if raw is not None and raw.exists():
        import pyarrow.parquet as pq

        return pq.read_table(raw).slice(0, ONNX_CHECK_ROWS), f"test split ({raw.parent.name})"
    return None, "no rows: the run's cache entry is absent and no --rows were given"


def export_ctr_bundle(run_dir: str | Path, out: str | Path, onnx: bool = False, rows: pa.Table | None = None,
                  name: str | None = None, fusion: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export a finished CTR-style run to a bundle folder `out` (polyrec.serve.bundles checked that it is
    one and that `out` does not exist); returns bundle.json."""
    from polyrec.serve.fusion import Fusion
    from polyrec.train.run import load_run

    run_dir, out = Path(run_dir), Path(out)
    spec_path = run_dir / "spec.json"
    run = load_run(run_dir)
    spec_info = read_json(spec_path)
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    heads = run.model.heads
    default_fusion = Fusion.model_validate(fusion or {}).resolved([h.name for h in heads],
                                                                 [h.name for h in heads if h.kind == "binary" and h.train])
    info: dict[str, Any] = {
        "format": BUNDLE_FORMAT, "name": name or out.name, "model": spec_info["model"],
        "dataset": spec_info.get("dataset"), "source_run": str(run_dir.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "heads": [h.__dict__ for h in heads], "fusion": default_fusion.model_dump(),
        "versions": {"polyrec": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "data": _fingerprints(spec_info), "onnx": None,
    }

    info["joins"] = []
    side_tables = _side_tables(run)

    def build(tmp: Path) -> None:
        for fname in ("model.safetensors", "encoders.json", "spec.json"):
            shutil.copyfile(run_dir / fname, tmp / fname)
        if side_tables:
            import pyarrow.parquet as pq

            (tmp / "joins").mkdir()
            for k, (side, keys, source) in enumerate(side_tables):
                pq.write_table(side, tmp / "joins" / f"{k}.parquet")
                info["joins"].append({"file": f"joins/{k}.parquet", "on": keys, "columns": side.column_names,
                                      "rows": side.num_rows, "source": source})
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=1))
        if onnx:
            info["onnx"] = _export_checked(run, spec_info, rows, tmp, log)
        atomic_write_text(tmp / "bundle.json", json.dumps(info, indent=1))

    atomic_directory(out, build)
    return info


def _side_tables(run: Any) -> list[tuple[pa.Table, list[str], str]]:
    """The run's join side tables (data.files.joins), read as training read them, cut to the key columns and
    the columns the schema reads (a request-time join needs no more)."""
    from polyrec.data.derive import raw_columns
    from polyrec.data.sources import read_join

    files = run.config.data.files
    if files is None or not files.joins:
        return []
    schema = run.encoders.schema
    needed = set(raw_columns(schema, with_labels=False, aggregated=False))
    out = []
    for j in files.joins:
        side = read_join(j, schema.id_columns())
        out.append((side.select([c for c in side.column_names if c in j.keys or c in needed]), j.keys, str(j.path)))
    return out


def _export_checked(run: Any, spec_info: dict[str, Any], rows: pa.Table | None, tmp: Path,
                    log: Callable[[str], None]) -> dict[str, Any]:
    table, source = check_rows_table(spec_info, rows)
    if table is None or table.num_rows == 0:
        raise PolyrecError(f"--onnx needs rows to check the graph against torch ({source}); give --rows FILE.")
    where = "The --rows table"
    enc = run.encoders.encode(model_inputs(table, run.encoders.schema, spec_info.get("dataset"), where,
                                           _side_tables(run)), with_labels=False, what=where)
    try:
        export_onnx(run.model, tmp / ONNX_FILE, encoded_inputs(enc, run.spec))
    except PolyrecError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter's own errors: the model cannot be exported
        raise PolyrecError(f"Model {spec_info['model']!r} cannot be exported to ONNX: "
                           f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}") from None
    from polyrec.serve.backends import onnx_parity

    check = {**onnx_parity(run.model, tmp / ONNX_FILE, enc), "rows_from": source, "opset": 17}
    log(f"ONNX check on {check['rows']} rows ({source}): max |p_onnx - p_torch| = {check['max_abs_diff']:.2e}")
    if not check["ok"]:
        raise PolyrecError(f"The ONNX graph differs from torch by {check['max_abs_diff']:.2e} "
                           f"(> {ONNX_TOLERANCE}) on {check['rows']} rows: not exported.")
    return check


# --- load -------------------------------------------------------------------------------------
def load_ctr_bundle(path: Path, info: dict[str, Any]) -> Bundle:
    """A CTR-style bundle folder -> model (eval mode), encoders, metadata (bundle.json already read and checked
    by polyrec.serve.bundles.load_bundle). Needs no run folder and no data."""
    from polyrec.train.run import rebuild_model

    for fname in BUNDLE_FILES:
        if not (path / fname).exists():
            raise PolyrecError(f"{path} is not a polyrec bundle: {fname} is missing.")
    spec, model = rebuild_model(path / "spec.json", path / "model.safetensors", "re-export the bundle")
    joins = []
    for j in info.get("joins") or []:
        import pyarrow.parquet as pq

        if not (path / j["file"]).exists():
            raise PolyrecError(f"{path} is not a complete bundle: {j['file']} (side table {j['source']}) is missing.")
        joins.append((pq.read_table(path / j["file"]), list(j["on"]), j["source"]))
    return Bundle(path, info, Encoders.load(path / "encoders.json"), spec, model, read_json(path / "metrics.json"),
                  joins)
