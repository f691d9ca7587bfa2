"""Batch prediction for new rows: raw table -> the run's own encoders -> model -> one score per head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyrec.data.batching import TensorTable
from polyrec.data.io import read_table
from polyrec.train.run import load_run
from polyrec.train.trainer import predict_scores
from polyrec.utils.io import atomic_write


def predict_table(run_dir: str | Path, table: pa.Table, batch_size: int = 16384) -> pa.Table:
    """Scores for every row of `table` (raw columns as in training; labels not needed)."""
    from polyrec.recipes.prepare import get_recipe

    run = load_run(run_dir)
    table = get_recipe(run.config.data.dataset).derive(table)
    encoded = run.encoders.encode(table, with_labels=False, what="The prediction input")
    scores = predict_scores(run.model, TensorTable(encoded), batch_size)
    return pa.table({h.name: pa.array(scores[:, i].astype(np.float32)) for i, h in enumerate(run.model.heads)})


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path) -> int:
    out = predict_table(run_dir, read_table(input_path))
    atomic_write(Path(output_path), lambda p: pq.write_table(out, p))
    return out.num_rows
