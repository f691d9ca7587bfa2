"""Encoding a log larger than memory: two passes over Parquet record batches, columns written to memory maps.

Why: the whole path (polyrec.data.prepare) holds the log and every split in memory at once. With
`data.chunk_rows` the files source's Parquet files are read that many rows at a time, twice:

  1. fit: each chunk goes through the schema's row-local steps (joins, derive, filter), its rows are given a
     split by a counter-based hash of their row number in the files (so the split never depends on the chunk
     size), and the training rows update streaming statistics (polyrec.data.streaming_fit) that end where
     Encoders.fit on the whole training split ends;
  2. encode: each chunk is encoded with the fitted encoders and its rows written into the split's .npy memory
     maps (their sizes are known from pass 1) and appended to the split's raw Parquet file.

Memory holds one chunk, the side tables and the fitted statistics: it is flat in the row count. Steps that need
the whole log at once are refused with a line naming them: aggregate, history, vector features, fill: median,
and the temporal / leave-last-out / cold-start / k-fold splits. Differences from the whole path, by design:
the random split is a per-row draw (each split's share matches data.ratios in expectation; the whole path cuts
an exact-size permutation), user ids for gAUC are 64-bit hashes of the id (groups are the same), and no
cold-start columns are written (those need data.split=cold_start).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polyrec.data.cache import write_entry_files
from polyrec.data.derive import raw_columns, transform_raw
from polyrec.data.encoders import EncodedSplit, Encoders, fnv1a64, require_columns
from polyrec.data.schema import Schema
from polyrec.data.sources import _cast_ids, check_columns, detect_format, expand, join_side, read_join
from polyrec.data.split import _check
from polyrec.data.stats import split_stats
from polyrec.data.streaming_fit import StreamingFit, check_streamable
from polyrec.data.synth import Streams
from polyrec.errors import PolyrecError
from polyrec.utils.io import atomic_directory

if TYPE_CHECKING:
    from polyrec.config import DataConfig, FilesConfig

ROW = "__polyrec_row"  # the row's number in the files, carried through derive and filter
SPLIT_NAMES = ("train", "val", "test")


def check_chunked(cfg: DataConfig, schema: Schema, method: str, warm_start: bool) -> None:
    """What data.chunk_rows cannot honour, as one line each, before any data is read."""
    if cfg.files is None:
        raise PolyrecError(f"data.chunk_rows reads your own Parquet files (polyrec train --data DIR --schema S.yaml); "
                           f"the {cfg.dataset!r} recipe is read whole: drop data.chunk_rows.")
    if method not in ("random", "official"):
        raise PolyrecError(f"data.split={method} needs the whole log at once (rows ordered per user or time); with "
                           "data.chunk_rows use data.split=random or give official --val/--test files.")
    for what, present in (("aggregate", schema.aggregate is not None), ("history", bool(schema.history))):
        if present:
            raise PolyrecError(f"The schema's {what} needs the whole log at once; data.chunk_rows cannot apply it "
                               "(drop it from the schema, or leave data.chunk_rows unset).")
    check_streamable(schema)
    if warm_start:
        raise PolyrecError("train.init_from (a warm start) grows encoders on a whole training split; it cannot be "
                           "combined with data.chunk_rows yet.")


def split_codes(rows: np.ndarray, ratios: tuple[float, float, float], seed: int) -> np.ndarray:
    """0/1/2 (train/val/test) per row number: a pure function of (seed, row), whatever the chunking."""
    r = _check(ratios)
    u = Streams(seed).uniform("split", rows, 0)
    return np.where(u < r[0], 0, np.where(u < r[0] + r[1], 1, 2)).astype(np.int8)


class ChunkReader:
    """The files source's rows as tables of at most `chunk_rows` rows, joined, derived and filtered, with their
    split code; the same sequence on every pass."""

    def __init__(self, files: FilesConfig, schema: Schema, chunk_rows: int, ratios: tuple[float, float, float],
                 seed: int) -> None:
        self.schema, self.chunk_rows, self.ratios, self.seed = schema, chunk_rows, ratios, seed
        self.parts = {"train": files.main} if files.val is None else {
            "train": files.main, "val": files.val, "test": files.test}
        self.paths = {part: expand(p) for part, p in self.parts.items()}
        for p in (f for fs in self.paths.values() for f in fs):
            if detect_format(p, files.format) != "parquet":
                raise PolyrecError(f"data.chunk_rows reads Parquet files; {p} is not one (convert it, e.g. with "
                                   "polars: pl.scan_csv(p).sink_parquet(out)).")
        self.ids = set(schema.id_columns()) | {k for j in files.joins for k in j.keys}
        self.joins = [(read_join(j, self.ids), j.keys, str(j.path)) for j in files.joins]
        self.need = raw_columns(schema)

    def __iter__(self) -> Iterator[tuple[str, pa.Table, np.ndarray]]:
        """(where, table, split codes) per chunk."""
        for part, paths in self.paths.items():
            row = 0
            for path in paths:
                where = f"The {part} file {path}"
                try:
                    pf = pq.ParquetFile(path)
                    names = set(pf.schema_arrow.names)
                    batches = pf.iter_batches(batch_size=self.chunk_rows, columns=[c for c in self.need if c in names])
                    for batch in batches:
                        n = batch.num_rows
                        table = pa.Table.from_batches([batch]).append_column(ROW, pa.array(np.arange(row, row + n)))
                        row += n
                        yield where, self._rows(table, where), part
                except (pa.ArrowInvalid, OSError) as exc:
                    raise PolyrecError(f"Could not read {path} as parquet: {str(exc).splitlines()[0]}") from None

    def _rows(self, table: pa.Table, where: str) -> pa.Table:
        table = _cast_ids(table, self.ids)
        for side, keys, name in self.joins:
            table = join_side(table, side, keys, name)
        check_columns(table, self.need, where)
        return transform_raw(table, self.schema, where)

    def chunks(self) -> Iterator[tuple[str, pa.Table, np.ndarray]]:
        for where, table, part in self:
            rows = table[ROW].to_numpy()
            codes = (split_codes(rows, self.ratios, self.seed) if part == "train" and len(self.parts) == 1
                     else np.full(len(rows), SPLIT_NAMES.index(part), np.int8))
            yield where, table.drop_columns([ROW]), codes


def _add_stats(total: dict[str, Any] | None, st: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return st
    out = {"rows": total["rows"] + st["rows"],
           "oov": {k: total["oov"][k] + v for k, v in st["oov"].items()},
           "nan_filled": {k: total["nan_filled"][k] + v for k, v in st["nan_filled"].items()}}
    if "unknown_scenario" in st:
        out["unknown_scenario"] = total["unknown_scenario"] + st["unknown_scenario"]
    return out


def _encode(encoders: Encoders, table: pa.Table, where: str) -> EncodedSplit:
    """Encoders.encode, with user ids as 64-bit hashes: a chunk's own dictionary ids would not agree across chunks."""
    enc = encoders.encode(table, what=where)
    if encoders.schema.user is not None:
        enc.user = fnv1a64(table[encoders.schema.user]).view(np.int64)
    return enc


class SplitWriter:
    """One split's columns as preallocated .npy memory maps, filled chunk by chunk; its raw rows as Parquet."""

    def __init__(self, folder: Path, raw_path: Path, n: int, example: EncodedSplit) -> None:
        folder.mkdir()
        self.n, self.at, self.raw_path, self.raw = n, 0, raw_path, None
        self.columns = {}
        for name, col in example.columns().items():
            shape = (n, *col.shape[1:])
            if n == 0:  # (an empty file cannot be memory-mapped)
                np.save(folder / f"{name}.npy", np.zeros(shape, col.dtype))
            else:
                self.columns[name] = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", col.dtype, shape)

    def write(self, enc: EncodedSplit, table: pa.Table) -> None:
        m = len(enc)
        for name, col in enc.columns().items():
            self.columns[name][self.at:self.at + m] = col
        self.at += m
        if self.raw is None:
            self.raw = pq.ParquetWriter(self.raw_path, table.schema)
        try:
            self.raw.write_table(table.cast(self.raw.schema))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PolyrecError(f"The chunks of {self.raw_path.stem[4:]} disagree on column types ({exc}).") from None

    def close(self) -> None:
        for col in self.columns.values():
            col.flush()
        self.columns = {}
        if self.raw is not None:
            self.raw.close()
        if self.at != self.n:
            raise PolyrecError(f"the files changed while being encoded ({self.at} rows on the second pass, {self.n} "
                               "on the first)")


def build_chunked(entry: Path, reader: ChunkReader, meta: dict[str, Any], log: Callable[[str], None],
                  finish: Callable[[Encoders, dict[str, Any], dict[str, np.ndarray]], dict[str, Any]]) -> None:
    """Pass 1 (fit and count), pass 2 (encode into memory maps), then `finish(encoders, stats, label_means)`'s meta
    with `meta`; the entry appears whole or not at all."""
    schema = reader.schema
    fit, rows, chunks = StreamingFit(schema), np.zeros(3, np.int64), 0
    for where, table, codes in reader.chunks():
        if chunks == 0:
            require_columns(table, schema.input_columns() + schema.label_columns(), where)
        fit.add(table.filter(pa.array(codes == 0)))
        rows += np.bincount(codes, minlength=3)
        chunks += 1
    if rows[0] == 0:
        raise PolyrecError("The training split is empty (no row drew train): check the files and data.ratios.")
    encoders = fit.encoders()
    log(f"files: fitted on {int(rows[0])} training rows in {chunks} chunk(s); encoding")
    names = SPLIT_NAMES
    stats: dict[str, Any] = {n: None for n in names}
    label_sums = {n: np.zeros(len(schema.tasks)) for n in names}

    def build(tmp: Path) -> None:
        writers: dict[str, SplitWriter] = {}
        for where, table, codes in reader.chunks():
            enc_all = _encode(encoders, table, where)
            for k, name in enumerate(SPLIT_NAMES):
                if name not in stats:
                    continue
                mask = codes == k
                part = enc_all.rows(mask)
                if name not in writers:
                    writers[name] = SplitWriter(tmp / name, tmp / f"raw-{name}.parquet", int(rows[k]), part)
                if not mask.any():
                    continue
                rows_k = table.filter(pa.array(mask))
                writers[name].write(part, rows_k)
                stats[name] = _add_stats(stats[name], split_stats(encoders, rows_k, part))
                label_sums[name] += part.labels.sum(0, dtype=np.float64)
        for w in writers.values():
            w.close()
        for name in names:
            if stats[name] is None:
                stats[name] = {"rows": 0, "oov": {f.name: 0 for f in schema.categorical},
                               "nan_filled": {f.name: 0 for f in schema.numeric},
                               **({"unknown_scenario": 0} if schema.scenario is not None else {})}
        means = {n: label_sums[n] / max(stats[n]["rows"], 1) for n in names}
        write_entry_files(tmp, encoders, {n: int(rows[SPLIT_NAMES.index(n)]) for n in names},
                          {**meta, **finish(encoders, stats, means)})

    atomic_directory(entry, build)
