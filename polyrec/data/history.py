"""Behaviour histories computed from the log itself, without leakage (the schema's `history:`).

For every row r of user u at time t, its history is the events e of u with time(e) < t, strictly: an event
at the row's own timestamp (the row itself included) is never in its history, and rows that share a
timestamp never see each other, so no row sees its own label or anything later. Events are newest first
(ties in time: later rows of the table first), cut to max_len.

Histories are computed over all rows of the table after `derive` and before `filter` and the split, so a
validation or test row sees the user's earlier events whatever split they fall in (as a deployed model sees
the log up to the request), and events of rows the filter drops (e.g. page views) still count as history.

Vectorised: events are sorted once by (user, time); each row's history is the index range that ends at the
first event of its user at or after its time (one searchsorted over an int64 (user, time-rank) key), read
backwards; no per-row Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.columns import boolean_mask, time_values
from polyrec.data.encoders import as_strings
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError


def history_positions(users: np.ndarray, times: np.ndarray, is_event: np.ndarray | None, max_len: int,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(events, ranges): `events` int64 [E] row indices of the events sorted by (user, time, row); for each
    row, `ranges` int64 [N, 2] = (start, end) with events[start:end] its history oldest to newest, at most
    max_len long. users: int64 codes [N]; times: float64 [N]; is_event: bool [N] or None (every row)."""
    n = len(users)
    ev = np.arange(n) if is_event is None else np.flatnonzero(is_event)
    _, t_rank = np.unique(times, return_inverse=True)
    t_rank = t_rank.astype(np.int64)
    width = np.int64(t_rank.max() + 2 if n else 1)
    key = users.astype(np.int64) * width + t_rank  # orders by user, then time
    order = np.lexsort((ev, key[ev]))
    events = ev[order]
    ekey = key[events]
    end = np.searchsorted(ekey, key, side="left")  # first event of the user at or after the row's time
    first = np.searchsorted(ekey, users.astype(np.int64) * width, side="left")  # the user's first event
    start = np.maximum(first, end - max_len)
    return events, np.stack([start, end], axis=1)


def newest_first(events: np.ndarray, ranges: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """(offsets, take): list offsets [N + 1] and, per history position, the row index of its event; position
    k of row r is events[end_r - 1 - k] (newest first). Computed once per history part, shared by its columns."""
    lengths = ranges[:, 1] - ranges[:, 0]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    return pa.array(offsets), events[np.repeat(ranges[:, 1] - 1, lengths) - within]


def gap_tokens(times: np.ndarray, offsets: pa.Array, take: np.ndarray) -> pa.Array:
    """Per history position, floor(log2(1 + row time - event time)) as a token (time units of the column)."""
    gap = np.repeat(times, np.diff(offsets.to_numpy())) - times[take]
    return pa.array(np.floor(np.log2(1.0 + gap)).astype(np.int64)).cast(pa.string())


def add_histories(table: pa.Table, schema: Schema, where: str, event_rows: np.ndarray | None = None) -> pa.Table:
    """The table with every history column of the schema appended (list<string>, newest first).
    `event_rows` (bool [N]) restricts which rows may be events (e.g. only the log's rows, not the queries)."""
    for h in schema.history:
        missing = [c for c in h.inputs() if c not in table.column_names]
        if missing:
            raise PolyrecError(f"{where}: history {h.name!r} needs missing column(s) {missing}.")
        codes = pc.dictionary_encode(_plain(as_strings(table[h.user]))).indices.to_numpy().astype(np.int64)
        times = time_values(table, h.time)
        events = np.ones(table.num_rows, bool) if h.events is None else boolean_mask(table, h.events, where,
                                                                                     f"history {h.name!r} events")
        if event_rows is not None:
            events = events & event_rows
        items = _plain(as_strings(table[h.item]))
        sides = {f: _plain(as_strings(table[f])) for f in h.fields}
        by = _plain(as_strings(table[h.by])) if h.by else None
        for part, value in h.parts():
            mask = events if value is None else events & pc.equal(by, str(value)).to_numpy(zero_copy_only=False)
            offsets, take = newest_first(*history_positions(codes, times, mask, h.max_len))
            picked = pa.array(take)
            table = table.append_column(part, pa.LargeListArray.from_arrays(offsets, items.take(picked)))
            for f, values in sides.items():
                table = table.append_column(f"{part}__{f}", pa.LargeListArray.from_arrays(offsets, values.take(picked)))
            if h.gap:
                gaps = gap_tokens(times, offsets, take)
                table = table.append_column(f"{part}__gap", pa.LargeListArray.from_arrays(offsets, gaps))
    return table


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def histories_from_log(rows: pa.Table, log: pa.Table, schema: Schema, where: str) -> pa.Table:
    """`rows` with their history columns computed from `log` alone (the training log at prediction time):
    each row's history is its user's log events strictly before the row's time; rows are never events."""
    need = sorted({c for h in schema.history for c in (h.user, h.time)} - set(rows.column_names))
    if need:
        raise PolyrecError(f"{where} lacks the history column(s) {schema.history_columns()} and the column(s) "
                           f"{need} that would compute them from the training log: supply either.")
    inputs = list(dict.fromkeys(c for h in schema.history for c in h.inputs()))
    queries = pa.table({c: rows[c] if c in rows.column_names else pa.nulls(rows.num_rows, log[c].type)
                        for c in inputs})
    try:
        joined = pa.concat_tables([log.select(inputs), queries], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PolyrecError(f"{where}: its history inputs do not match the training log's types ({exc}).") from None
    is_log = np.zeros(joined.num_rows, bool)
    is_log[:log.num_rows] = True
    full = add_histories(joined, schema, where, event_rows=is_log).slice(log.num_rows)
    for c in schema.history_columns():
        rows = rows.append_column(c, full[c])
    return rows
