"""Batch prediction for new rows: raw table -> the run's own encoders -> model -> one score per head.

Inputs and outputs are CSV / TSV, Parquet or JSON lines (format from the suffix, gzip/zstd allowed on
input). Id columns are read as strings whatever the format, so the same rows score identically from
any of them. The schema's derived columns are computed from the input (labels are not needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from polyrec.data.batching import TensorTable
from polyrec.data.history import histories_from_log
from polyrec.data.sources import ReadOptions, check_columns, detect_format, read_source
from polyrec.errors import PolyrecError
from polyrec.settings import cache_dir
from polyrec.train.run import LoadedRun, load_run
from polyrec.train.trainer import predict_scores
from polyrec.utils.io import atomic_write, read_json

OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
                  ".ndjson": "jsonl"}


def _score(run: LoadedRun, table: pa.Table, batch_size: int) -> pa.Table:
    from polyrec.serve.bundle import model_inputs

    table = model_inputs(table, run.encoders.schema, run.config.data.dataset, "The prediction input")
    table = with_histories(run, table, "The prediction input")
    encoded = run.encoders.encode(table, with_labels=False, what="The prediction input")
    scores = predict_scores(run.model, TensorTable(encoded), batch_size)
    return pa.table({h.name: pa.array(scores[:, i].astype(np.float32)) for i, h in enumerate(run.model.heads)})


def with_histories(run: LoadedRun, table: pa.Table, where: str) -> pa.Table:
    """The input as it is when it carries every history column; otherwise the histories computed from the
    run's training log (the training split's raw rows in its cache entry), strictly before each row's time."""
    schema = run.encoders.schema
    missing = [c for c in schema.history_columns() if c not in table.column_names]
    if not missing:
        return table
    if len(missing) < len(schema.history_columns()):
        raise PolyrecError(f"{where} carries some history columns but lacks {missing}: supply all or none.")
    entry = (read_json(run.run_dir / "spec.json") or {}).get("cache_entry")
    log_path = cache_dir() / str(entry) / "raw-train.parquet"
    if not entry or not log_path.exists():
        raise PolyrecError(f"{where} lacks the history column(s) {missing}, and the run's training log "
                           f"({log_path}) is not on this machine: supply the history columns.")
    return histories_from_log(table, pq.read_table(log_path), schema, where)


def predict_table(run_dir: str | Path, table: pa.Table, batch_size: int = 16384) -> pa.Table:
    """Scores for every row of `table` (raw columns as in training; labels not needed)."""
    return _score(load_run(run_dir), table, batch_size)


def read_input(run: LoadedRun, path: str | Path, delimiter: str | None = None) -> pa.Table:
    """The input file read like the training files (the run's delimiter / column names for text files)."""
    path = Path(path)
    opts = ReadOptions()
    files = run.config.data.files
    fmt = detect_format(path) if path.is_file() else "auto"
    if files is not None and fmt in ("csv", "tsv"):
        opts = ReadOptions(format=files.format if files.format in ("csv", "tsv") else "auto",
                           delimiter=files.delimiter, header=files.header, columns=files.columns,
                           encoding=files.encoding, quote=files.quote)
    if delimiter is not None:
        opts = opts.model_copy(update={"delimiter": delimiter})
    if not path.exists() and not any(ch in str(path) for ch in "*?["):
        raise PolyrecError(f"Input file not found: {path}")
    ids = run.encoders.schema.id_columns()
    table = read_source(path, opts, ids)
    if files is not None and files.joins:  # side tables the input lacks are joined as in training
        from polyrec.data.sources import apply_joins

        present = set(table.column_names)
        need = [j for j in files.joins
                if set(j.keys) <= present and not set(j.columns or []) - set(j.keys) <= present]
        if need:
            table = apply_joins(table, need, set(ids) | {k for j in need for k in j.keys})
    return table


def write_output(table: pa.Table, path: Path) -> None:
    """Atomic write in the format of the suffix."""
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PolyrecError(f"--output {path}: use a .parquet, .csv, .tsv or .jsonl name.")

    def write(tmp: Path) -> None:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        elif fmt in ("csv", "tsv"):
            pacsv.write_csv(table, tmp, pacsv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
        else:
            import polars as pl

            pl.from_arrow(table).write_ndjson(tmp)

    atomic_write(path, write)


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path,
                 keep_columns: list[str] | None = None, delimiter: str | None = None) -> int:
    """Score a file; `keep_columns` (e.g. user_id, item_id) are copied from the input in front of the scores."""
    output_path = Path(output_path)
    if output_path.suffix.lower() not in OUTPUT_FORMATS:
        raise PolyrecError(f"--output {output_path}: use a .parquet, .csv, .tsv or .jsonl name.")
    run = load_run(run_dir)
    table = read_input(run, input_path, delimiter)
    keep = list(keep_columns or [])
    if keep:
        check_columns(table, keep, f"--keep-columns: the input {input_path}")
    out = _score(run, table, 16384)
    clash = [c for c in keep if c in out.column_names]
    if clash:
        raise PolyrecError(f"--keep-columns {clash} clash with score columns {out.column_names}.")
    if keep:
        out = pa.table({**{c: table[c] for c in keep}, **{c: out[c] for c in out.column_names}})
    write_output(out, output_path)
    return out.num_rows
