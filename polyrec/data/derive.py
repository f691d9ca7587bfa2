"""Schema-declared transformations, no Python needed: event-log aggregation and derived columns.

Expressions are SQL snippets parsed by polars (`polars.sql_expr`: `behavior = 'buy'`, `rating >= 4`,
`CASE WHEN ... END`), a maintained engine with vectorised execution; aggregation is polars `group_by`.
Tables stay pyarrow outside this module: polars reads them zero-copy and hands results back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.schema import AggregateColumn, AggregateSpec, DerivedColumn, Schema
from polyrec.data.columns import boolean_mask, polars_module as _polars, sql_expr as _sql
from polyrec.data.history import add_histories
from polyrec.errors import PolyrecError, close_matches

if TYPE_CHECKING:
    import polars as pl


def _spec(value: str | DerivedColumn) -> DerivedColumn:
    return DerivedColumn(expr=value) if isinstance(value, str) else value


def expression_inputs(schema: Schema) -> dict[str, list[str]]:
    """Raw columns each derived column reads (from the parsed expressions)."""
    out = {}
    for name, value in schema.derive.items():
        spec = _spec(value)
        out[name] = [spec.column] if spec.column else _sql(spec.expr, f"derive.{name}").meta.root_names()
    return out


def derived_needs(schema: Schema, with_labels: bool = True) -> list[str]:
    """Columns the rows must hold before `derive` (after any aggregation)."""
    labels = set(schema.label_columns())
    need = schema.input_columns() + (schema.label_columns() if with_labels else [])
    if schema.time and with_labels:
        need.append(schema.time)
    if schema.filter and with_labels:
        need += _sql(schema.filter, "filter").meta.root_names()
    if schema.history and with_labels:  # computed after derive: their inputs are needed instead
        produced = set(schema.history_columns())
        need = [c for c in need if c not in produced]
        for h in schema.history:
            need += h.inputs() + (_sql(h.events, "history events").meta.root_names() if h.events else [])
    inputs = expression_inputs(schema)
    for name in reversed(list(schema.derive)):
        if not with_labels and name in labels:
            continue
        need = [c for c in need if c != name] + inputs[name]
    return list(dict.fromkeys(need))


def raw_columns(schema: Schema, with_labels: bool = True, aggregated: bool = True) -> list[str]:
    """Columns the raw files must hold: what the schema uses, minus what derive/aggregate produce."""
    need = derived_needs(schema, with_labels)
    agg = schema.aggregate
    if agg is None or not aggregated:
        return need
    produced = set(_aggregate_outputs(agg)) | set(agg.by)
    need = list(agg.by) + [c for c in need if c not in produced]
    for a in agg.columns.values():
        if a.column:
            need.append(a.column)
        elif a.expr:
            need += _sql(a.expr, "aggregate").meta.root_names()
    if agg.labels:
        need.append(agg.labels.column)
    if agg.order_by:
        need.append(agg.order_by)
    return list(dict.fromkeys(need))


def _aggregate_outputs(agg: AggregateSpec) -> list[str]:
    names = list(agg.columns)
    if agg.labels:
        names += [f"{agg.labels.prefix}{v}" for v in agg.labels.values]
    return names


def _agg_expr(name: str, a: AggregateColumn) -> "pl.Expr":
    pl = _polars()
    if a.expr is not None:
        e = _sql(a.expr, f"aggregate.columns.{name}")
    elif a.column is not None:
        e = pl.col(a.column)
    else:
        return pl.len().alias(name)
    if a.equals is not None:
        values = a.equals if isinstance(a.equals, list) else [a.equals]
        e = e.cast(pl.String).is_in([str(v) for v in values])
    how = a.how
    if how == "any":
        return e.cast(pl.Boolean).any().cast(pl.Int8).alias(name)
    if how == "count":
        return (e.cast(pl.Boolean).sum() if a.equals is not None or a.expr is not None else e.count()).alias(name)
    return getattr(e, how)().alias(name)


def aggregate(table: pa.Table, agg: AggregateSpec, where: str, keep: list[str] | None = None) -> pa.Table:
    """Group rows by `agg.by`; `keep` lists further columns carried with their first value per group."""
    pl = _polars()
    from polyrec.data.sources import check_columns

    check_columns(table, agg.by, where)
    df = pl.from_arrow(table)
    if agg.order_by:
        check_columns(table, [agg.order_by], where)
        df = df.sort(agg.order_by, maintain_order=True)
    exprs = [_agg_expr(n, a) for n, a in agg.columns.items()]
    if agg.labels:
        check_columns(table, [agg.labels.column], where)
        col = pl.col(agg.labels.column).cast(pl.String)
        for v in agg.labels.values:
            hit = col == str(v)
            exprs.append((hit.any().cast(pl.Int8) if agg.labels.how == "any" else hit.sum())
                         .alias(f"{agg.labels.prefix}{v}"))
    produced = set(_aggregate_outputs(agg)) | set(agg.by)
    carried = [c for c in (keep or []) if c in df.columns and c not in produced]
    exprs += [pl.col(c).first() for c in carried]
    try:
        out = df.group_by(agg.by, maintain_order=True).agg(exprs)
    except Exception as exc:
        raise PolyrecError(f"{where}: aggregation failed ({str(exc).splitlines()[0]}).") from None
    return _to_arrow(out)


def _to_arrow(df: "pl.DataFrame") -> pa.Table:
    table = df.to_arrow()
    cols = []
    for c in table.columns:
        if pa.types.is_large_string(c.type) or pa.types.is_string_view(c.type):
            c = pc.cast(c, pa.string())
        cols.append(c)
    return pa.table(cols, names=table.column_names)


def _bucket(values: np.ndarray, spec: DerivedColumn) -> pa.Array:
    edges = np.asarray(spec.buckets, dtype=np.float64)
    labels = spec.labels or ([f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])]
                             + [f">={edges[-1]:g}"])
    x = values.astype(np.float64)
    idx = np.searchsorted(edges, x, side="right")
    out = pa.array(np.asarray(labels, dtype=object)[idx], type=pa.string())
    return pc.if_else(pa.array(np.isnan(x)), pa.scalar(None, pa.string()), out)


def check_label_inputs(table: pa.Table, schema: Schema, where: str) -> None:
    """A label derived from a missing value would be silently 0 or 1 (`NaN >= 4` is true in polars): an error,
    checked on the rows that are kept (after the filter)."""
    labels = set(schema.label_columns())
    for name, inputs in expression_inputs(schema).items():
        if name not in labels:
            continue
        for col in inputs:
            if col not in table.column_names:
                continue
            c = table[col]
            bad = c.null_count + (int(pc.sum(pc.is_nan(c)).as_py() or 0) if pa.types.is_floating(c.type) else 0)
            if bad:
                raise PolyrecError(f"{where}: label {name!r} is derived from column {col!r}, which has {bad} missing "
                                   "or NaN values; fix or drop those rows (a schema `filter:` can drop them).")


def derive_columns(table: pa.Table, schema: Schema, where: str, with_labels: bool = True) -> pa.Table:
    """Add the schema's derived columns in order. Without labels (prediction), label columns are skipped."""
    if not schema.derive:
        return table
    pl = _polars()
    labels = set(schema.label_columns())
    df = pl.from_arrow(table)
    added = []
    for name, value in schema.derive.items():
        if not with_labels and name in labels:
            continue
        spec = _spec(value)
        e = pl.col(spec.column) if spec.column else _sql(spec.expr, f"derive.{name}")
        missing = [c for c in e.meta.root_names() if c not in df.columns]
        if missing:
            hints = "".join(f" {c!r}:{close_matches(c, df.columns) or ' no close match.'}" for c in missing)
            raise PolyrecError(f"{where}: derived column {name!r} needs missing column(s) {missing}.{hints}")
        if spec.time_part:
            dt = pl.from_epoch(e, time_unit=spec.time_unit)
            e = {"hour": dt.dt.hour(), "weekday": dt.dt.weekday(), "day": dt.dt.day(), "month": dt.dt.month(),
                 "year": dt.dt.year(), "minute": dt.dt.minute()}[spec.time_part]
        if spec.transform:
            e = getattr(e.cast(pl.Float64), spec.transform)()
        if spec.clip:
            e = e.clip(spec.clip[0], spec.clip[1])
        try:
            res = df.select(e.alias(name)).to_series()
        except Exception as exc:
            raise PolyrecError(f"{where}: derived column {name!r} failed ({str(exc).splitlines()[0]}).") from None
        if spec.buckets is not None:
            res = pl.from_arrow(_bucket(res.cast(pl.Float64).to_numpy(), spec)).alias(name)
        elif spec.type == "int" or (spec.type == "auto" and res.dtype == pl.Boolean):
            res = res.cast(pl.Int8 if res.dtype == pl.Boolean else pl.Int64)
        elif spec.type == "float":
            res = res.cast(pl.Float64)
        elif spec.type == "string":
            res = res.cast(pl.String)
        df = df.with_columns(res.alias(name))
        added.append(name)
    out = _to_arrow(df.select(added))
    for name in added:
        col = out[name]
        table = (table.set_column(table.column_names.index(name), name, col) if name in table.column_names
                 else table.append_column(name, col))
    return table


def filter_rows(table: pa.Table, expr: str, where: str) -> pa.Table:
    """The rows where the boolean SQL expression `expr` holds (null counts as false)."""
    return table.filter(pa.array(boolean_mask(table, expr, where, "filter")))


def transform_raw(table: pa.Table, schema: Schema, where: str, with_labels: bool = True) -> pa.Table:
    """The whole declarative step on one table: `derive_rows` then `finish_rows`."""
    return finish_rows(derive_rows(table, schema, where, with_labels), schema, where, with_labels)


def derive_rows(table: pa.Table, schema: Schema, where: str, with_labels: bool = True) -> pa.Table:
    """Aggregation (training data only: prediction rows are scored as they come), then derived columns."""
    if schema.aggregate is not None and with_labels:
        table = aggregate(table, schema.aggregate, where, derived_needs(schema))
    return derive_columns(table, schema, where, with_labels)


def finish_rows(table: pa.Table, schema: Schema, where: str, with_labels: bool = True,
                histories: bool = True) -> pa.Table:
    """Histories over every row (unless `histories=False`: already added), then the row filter and the label
    checks (training data only; prediction rows bring their history columns)."""
    if with_labels:
        if schema.history and histories:
            table = add_histories(table, schema, where)
        if schema.filter is not None:
            table = filter_rows(table, schema.filter, where)
        check_label_inputs(table, schema, where)
    return table


def histories_across(tables: dict[str, pa.Table], schema: Schema, where: str) -> dict[str, pa.Table]:
    """Histories of given splits computed over all of them together (a validation row sees the user's
    earlier training events, as with a split the project makes itself)."""
    names = list(tables)
    sizes = [tables[k].num_rows for k in names]
    try:
        joined = pa.concat_tables([tables[k] for k in names], promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PolyrecError(f"{where}: the splits' columns do not agree, so histories cannot span them ({exc}).") from None
    joined = add_histories(joined, schema, where)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return {k: joined.slice(int(bounds[i]), sizes[i]) for i, k in enumerate(names)}
