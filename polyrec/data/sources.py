"""Reading a user's own files: CSV/TSV/any delimiter, Parquet (a file or a Spark/Ray shard folder), JSON lines.

gzip and zstd are detected from the file's magic bytes (not its name) and decompressed by pyarrow.
Id columns are always read as strings, never type-guessed: "024" stays "024" whatever the format,
and ids longer than 64 bits are just strings. Every failure is a one-line PolyrecError naming the file.
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, model_validator

from polyrec.errors import PolyrecError, close_matches

Format = Literal["auto", "csv", "tsv", "parquet", "jsonl"]
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
_SUFFIX_FORMAT = {".csv": "csv", ".tsv": "tsv", ".txt": "csv", ".dat": "csv", ".parquet": "parquet",
                  ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_COMPRESSED = (".gz", ".zst", ".zstd")


class ReadOptions(BaseModel):
    """How to read one file (or shard folder / glob). Everything defaults from the file name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Format = "auto"
    delimiter: str | None = None  # csv: ','; tsv: tab; any string, e.g. '::' (MovieLens .dat)
    header: bool = True  # False: give `columns`
    columns: list[str] | None = None  # column names (required without a header; renames with one)
    encoding: str = "utf-8"
    quote: str | None = '"'  # null: quotes are ordinary characters (MovieLens titles)


class JoinSpec(ReadOptions):
    """A side table left-joined onto the main rows on `on` (e.g. users.dat on user_id)."""

    path: str
    on: str | list[str]

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean True
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @property
    def keys(self) -> list[str]:
        return [self.on] if isinstance(self.on, str) else list(self.on)


def expand(path: str | Path) -> list[Path]:
    """A file, a shard folder, or a glob -> the list of files (sorted), or an error naming the pattern."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise PolyrecError(f"No file matches {text!r}.")
        return files
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(("_", "."))
                       and f.stat().st_size > 0)
        if not files:
            raise PolyrecError(f"Folder {p} holds no data file.")
        shards = [f for f in files if f.suffix.lower() in (".parquet", ".pq")]
        return shards or files  # a folder of Parquet shards: side files (schema.yaml, a manifest) are not data
    if not p.exists():
        raise PolyrecError(f"Data file not found: {p}")
    return [p]


def _compression(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def detect_format(path: Path, fmt: Format = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    if suffixes and suffixes[-1] in _SUFFIX_FORMAT:
        return _SUFFIX_FORMAT[suffixes[-1]]
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(4) == b"PAR1":
                return "parquet"
    raise PolyrecError(f"Cannot tell the format of {path} from its name: set format to csv, tsv, parquet or jsonl.")


def _read_bytes(path: Path) -> bytes:
    comp = _compression(path)
    try:
        with pa.input_stream(str(path), compression=comp) as stream:
            return stream.read()
    except (OSError, pa.ArrowInvalid) as exc:
        raise PolyrecError(f"Could not decompress {path} ({comp}): the file is truncated or corrupt ({exc}).") from None


def _cast_ids(table: pa.Table, id_columns: Iterable[str]) -> pa.Table:
    for name in id_columns:
        if name in table.column_names and not pa.types.is_string(table[name].type):
            col = table[name]
            if pa.types.is_dictionary(col.type):
                col = pc.cast(col, col.type.value_type)
            if pa.types.is_floating(col.type):  # JSON/Parquet floats holding integral ids: 12.0 -> "12"
                big = pc.max(pc.abs(col)).as_py()
                if big is not None and big >= 2 ** 53:
                    raise PolyrecError(f"Id column {name!r} holds numbers up to {big:.3g}, beyond what a float keeps "
                                       "exactly (JSON numbers are doubles): write these ids as strings.")
                if pc.all(pc.equal(col, pc.floor(col))).as_py() is not False:
                    col = pc.cast(col, pa.int64())
            table = table.set_column(table.column_names.index(name), name, pc.cast(col, pa.string()))
    return table


def _read_delimited(path: Path, opts: ReadOptions, fmt: str, id_columns: set[str]) -> pa.Table:
    import io

    delim = opts.delimiter or ("\t" if fmt == "tsv" else ",")
    utf8 = opts.encoding.lower().replace("-", "") in ("utf8", "ascii")
    comp = _compression(path)
    if len(delim) > 1 or not utf8:  # rewritten in memory: re-encoded to UTF-8, long delimiters to one byte
        raw = _read_bytes(path)
        if not utf8:
            try:
                raw = raw.decode(opts.encoding).encode("utf-8")
            except (UnicodeDecodeError, LookupError) as exc:
                raise PolyrecError(f"{path} is not valid {opts.encoding}: {exc}") from None
        if len(delim) > 1:
            raw, delim = raw.replace(delim.encode(), b"\x1f"), "\x1f"
        source: Any = io.BytesIO(raw)
    else:  # streamed: no second copy of a large file in memory
        source = pa.input_stream(str(path), compression=comp)
    if not opts.header and not opts.columns:
        raise PolyrecError(f"{path}: header is false, so give the column names (columns: [...]).")
    read = pacsv.ReadOptions(column_names=opts.columns if not opts.header else None, block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter=delim, quote_char=opts.quote or False)
    types = {c: pa.string() for c in id_columns}
    if opts.header and opts.columns:  # renamed afterwards: id types apply to the header's own names
        with pa.input_stream(str(path), compression=comp) as fh:
            first = fh.read(1 << 16).split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r").split(delim)
        types = {old: pa.string() for old, new in zip(first, opts.columns) if new in id_columns}
    convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
    try:
        table = pacsv.read_csv(source, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        msg = str(exc).replace("\n", " ")
        if "utf8" in msg.lower():
            raise PolyrecError(f"{path} is not valid UTF-8 ({msg}); set encoding (e.g. latin-1).") from None
        if comp is not None and isinstance(exc, OSError) or "compressed" in msg.lower():
            raise PolyrecError(f"Could not decompress {path} ({comp}): the file is truncated or corrupt ({msg}).") from None
        if "Empty CSV" in msg:
            raise PolyrecError(f"{path} is empty.") from None
        raise PolyrecError(f"Could not parse {path}: {msg}") from None
    binary = [c for c in table.column_names if pa.types.is_binary(table[c].type)]
    if binary:
        raise PolyrecError(f"{path} is not valid UTF-8 in column(s) {binary}; set encoding (e.g. latin-1).")
    if opts.header and opts.columns:
        if table.num_columns != len(opts.columns):
            raise PolyrecError(f"{path} has {table.num_columns} columns, but {len(opts.columns)} names were given.")
        table = table.rename_columns(opts.columns)
    return table


def read_file(path: Path, opts: ReadOptions = ReadOptions(), id_columns: Iterable[str] = ()) -> pa.Table:
    """One file in any supported format; id columns as strings. Header-only files are an error."""
    path = Path(path)
    ids = set(id_columns)
    fmt = detect_format(path, opts.format)
    if path.stat().st_size == 0:
        raise PolyrecError(f"{path} is empty.")
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        elif fmt == "jsonl":
            import io

            table = pajson.read_json(io.BytesIO(_read_bytes(path)))
        else:
            table = _read_delimited(path, opts, fmt, ids)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PolyrecError(f"Could not read {path} as {fmt}: {str(exc).splitlines()[0]}") from None
    if opts.columns and fmt in ("parquet", "jsonl"):
        table = table.rename_columns(opts.columns) if len(opts.columns) == table.num_columns else table
    if table.num_rows == 0:
        raise PolyrecError(f"{path} has no data rows (only a header?).")
    return _cast_ids(table, ids)


def read_source(path: str | Path, opts: ReadOptions = ReadOptions(), id_columns: Iterable[str] = ()) -> pa.Table:
    """A file, shard folder or glob as one table (shards concatenated; schemas unified)."""
    files = expand(path)
    ids = list(id_columns)
    if len(files) > 1 and all(detect_format(f, opts.format) == "parquet" for f in files):
        try:
            table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
        except (pa.ArrowInvalid, OSError) as exc:
            raise PolyrecError(f"Could not read the Parquet shards of {path}: {str(exc).splitlines()[0]}") from None
        return _cast_ids(table, ids)
    tables = [read_file(f, opts, ids) for f in files]
    try:
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as exc:
        raise PolyrecError(f"The files of {path} disagree on their columns: {exc}") from None


def check_columns(table: pa.Table, needed: Iterable[str], where: str) -> None:
    """Missing columns named with close matches; a single-column table hints at a wrong delimiter."""
    present = table.column_names
    missing = [c for c in dict.fromkeys(needed) if c not in present]
    if not missing:
        return
    if len(present) == 1 and any(d in present[0] for d in (",", ";", "\t", "|", ":")):
        raise PolyrecError(f"{where}: found 1 column {present[0]!r} — wrong delimiter? "
                           f"(set data.files.delimiter; schema columns {missing[:5]} not found)")
    hints = "".join(f" {c!r}:{close_matches(c, present) or ' no close match.'}" for c in missing)
    raise PolyrecError(f"{where} lacks column(s) {missing}.{hints} Present: {present[:30]}")


def _string_keys(table: pa.Table, keys: list[str]) -> pa.Table:
    for k in keys:
        if not pa.types.is_string(table[k].type):
            table = table.set_column(table.column_names.index(k), k, pc.cast(table[k], pa.string()))
    return table


def read_join(j: JoinSpec, id_columns: Iterable[str]) -> pa.Table:
    """One side table as training reads it (ids and keys as strings), checked for unique keys."""
    side = _string_keys(read_source(j.path, j, set(id_columns) | set(j.keys)), j.keys)
    check_columns(side, j.keys, f"Join file {j.path}")
    if len(j.keys) == 1 and pc.count_distinct(side[j.keys[0]]).as_py() != side.num_rows:
        raise PolyrecError(f"Join file {j.path} has duplicate keys in {j.keys[0]!r}: each key must appear once.")
    return side


def join_side(table: pa.Table, side: pa.Table, keys: list[str], where: str) -> pa.Table:
    """Left-join one side table (string keys, unique) onto the rows, keeping row order; a key the side
    lacks leaves its columns null; a column the rows already hold is kept from the rows. Used by training,
    `polyrec predict` and the serving bundles (whose side tables are stored as Parquet)."""
    check_columns(table, keys, f"The rows joined with {where}")
    table = _string_keys(table, keys)  # keys compare as strings on both sides
    dup = [c for c in side.column_names if c in table.column_names and c not in keys]
    if dup:
        side = side.drop_columns(dup)
    n = table.num_rows
    table = table.append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
    table = table.join(side, keys=keys, join_type="left outer", use_threads=False)
    if table.num_rows != n:
        raise PolyrecError(f"Join file {where} has duplicate keys {keys}: the join changed the row count "
                           f"from {n} to {table.num_rows}.")
    return table.sort_by("__row").drop_columns(["__row"])  # joins do not keep row order


def apply_joins(table: pa.Table, joins: list[JoinSpec], id_columns: Iterable[str]) -> pa.Table:
    """Left-join side tables (users, items) onto the rows; a key missing on either side is an error."""
    for j in joins:
        table = join_side(table, read_join(j, id_columns), j.keys, str(j.path))
    return table
