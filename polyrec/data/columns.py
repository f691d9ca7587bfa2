"""Column helpers the data steps share: time columns as numbers, SQL expressions over a table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.errors import PolyrecError, close_matches

if TYPE_CHECKING:
    import polars as pl


def polars_module():
    try:
        import polars as pl
    except ImportError:  # pragma: no cover - polars is a dependency
        raise PolyrecError("Derived columns and aggregation need polars: pip install polars") from None
    return pl


def sql_expr(text: str, where: str) -> "pl.Expr":
    pl = polars_module()
    try:
        return pl.sql_expr(text)
    except Exception as exc:  # polars raises several types for a bad expression
        raise PolyrecError(f"{where}: cannot parse the expression {text!r} ({str(exc).splitlines()[0]}).") from None


def time_values(table: pa.Table, column: str) -> np.ndarray:
    """A time column as float64 (timestamps and dates as their integer value); missing values are an error."""
    col = table[column]
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        col = pc.cast(col, pa.int64())
    try:
        times = np.asarray(pc.cast(col, pa.float64()).to_numpy(), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise PolyrecError(f"Time column {column!r} is not numeric (type {col.type}): give unix times.") from None
    if np.isnan(times).any():
        raise PolyrecError(f"Time column {column!r} has {int(np.isnan(times).sum())} missing values.")
    return times


def boolean_mask(table: pa.Table, expr: str, where: str, what: str) -> np.ndarray:
    """bool [N]: where the SQL expression `expr` holds on the table's rows (null counts as false)."""
    pl = polars_module()
    e = sql_expr(expr, what)
    missing = [c for c in e.meta.root_names() if c not in table.column_names]
    if missing:
        raise PolyrecError(f"{where}: the schema's {what} {expr!r} needs missing column(s) {missing}."
                           f"{close_matches(missing[0], table.column_names)}")
    try:
        keep = pl.from_arrow(table).select(e.cast(pl.Boolean).fill_null(False)).to_series().to_numpy()
    except Exception as exc:
        raise PolyrecError(f"{where}: the schema's {what} {expr!r} failed ({str(exc).splitlines()[0]}).") from None
    return keep.astype(bool)
