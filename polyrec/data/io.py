"""Reading raw recipe files once with pyarrow: delimited text (plain or gzip, any separator)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from polyrec.errors import PolyrecError


def read_delimited(
    path: Path,
    sep: str,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    header: bool = False,
    strip: bool = False,
) -> pa.Table:
    """Read a delimited text file into string columns (callers cast what they need).

    Multi-character separators (MovieLens-1M's '::') are rewritten to a tab first; gzip is detected
    by the file name. `strip` trims the spaces around fields (census-income's ', ').
    """
    path = Path(path)
    if not path.exists():
        raise PolyrecError(f"File not found: {path}")
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if encoding.lower().replace("-", "") not in ("utf8", "ascii"):
        raw = raw.decode(encoding).encode("utf-8")
    delim = sep
    if len(sep) > 1:
        raw, delim = raw.replace(sep.encode(), b"\t"), "\t"
    read = pacsv.ReadOptions(column_names=None if header else names, autogenerate_column_names=False,
                             block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter=delim, quote_char=False)
    convert = pacsv.ConvertOptions(strings_can_be_null=False, quoted_strings_can_be_null=False,
                                   column_types={n: pa.string() for n in names or []})
    try:
        table = pacsv.read_csv(io.BytesIO(raw), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise PolyrecError(f"Could not parse {path}: {exc}") from None
    if header and names:
        if table.num_columns != len(names):
            raise PolyrecError(f"{path} has {table.num_columns} columns, expected {len(names)}")
        table = table.rename_columns(names)
    if strip:
        import pyarrow.compute as pc

        table = pa.table({c: pc.utf8_trim_whitespace(table[c]) if pa.types.is_string(table[c].type) else table[c]
                          for c in table.column_names})
    return table
