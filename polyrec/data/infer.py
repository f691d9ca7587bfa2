"""`polyrec schema infer FILE`: a commented draft schema guessed from column types and cardinalities.

It is a starting point to edit, never used silently: roles are guesses (low-cardinality strings and
id-like integers -> categorical, floats -> numeric, 0/1 columns -> binary task candidates, unix-time
integers -> the time column, a few-valued string such as a behaviour type -> label expressions).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

UNIX_RANGE = (9.0e8, 2.2e9)  # 1998 .. 2039 in seconds
TIME_NAMES = ("time", "ts", "timestamp", "date", "datetime", "created", "event_time")


@dataclass
class ColumnGuess:
    name: str
    type: str
    distinct: int
    nulls: int
    role: str  # categorical | numeric | binary | time | behaviour | text
    note: str = ""


def guess_columns(table: pa.Table, max_categorical: int = 1000) -> list[ColumnGuess]:
    """One guess per column, from the arrow type and a value count (vectorised, whole column)."""
    n = table.num_rows
    out = []
    for name in table.column_names:
        col = table[name]
        typ = col.type
        distinct = int(pc.count_distinct(col).as_py())
        nulls = col.null_count
        lname = name.lower()
        role, note = "categorical", ""
        if pa.types.is_boolean(typ):
            role, note = "binary", "0/1 values: a binary task candidate"
        elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
            lo, hi = pc.min_max(col).values()
            lo, hi = lo.as_py(), hi.as_py()
            values01 = distinct <= 2 and lo is not None and lo >= 0 and hi <= 1
            is_time = lo is not None and UNIX_RANGE[0] <= lo and hi <= UNIX_RANGE[1] and (
                any(t in lname for t in TIME_NAMES) or distinct > 0.5 * n)
            if values01:
                role, note = "binary", "0/1 values: a binary task candidate"
            elif is_time or (any(lname == t or lname.endswith("_" + t) for t in TIME_NAMES) and lo is not None):
                role, note = "time", f"looks like unix time ({lo} .. {hi})"
            elif pa.types.is_floating(typ):
                role, note = "numeric", f"float, {lo:g} .. {hi:g}"
            elif lname.endswith("id") or distinct <= max_categorical:
                role, note = "categorical", f"integer with {distinct} values"
            else:
                role, note = "numeric", f"integer, {lo} .. {hi}"
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
            if 2 <= distinct <= 12 and distinct < 0.01 * n + 3 and not lname.endswith("id"):
                role, note = "behaviour", f"few values: {sorted(map(str, pc.unique(col).drop_null().to_pylist()))}"
            else:
                role, note = "categorical", f"string with {distinct} values"
        else:
            role, note = "text", f"type {typ}: not used"
        out.append(ColumnGuess(name, str(typ), distinct, nulls, role, note))
    return out


def draft_schema(table: pa.Table, source: str) -> str:
    """The draft YAML (with comments saying why each role was guessed)."""
    guesses = guess_columns(table)
    lines = [f"# Draft schema for {source} ({table.num_rows} rows read), written by `polyrec schema infer`.",
             "# Roles are guesses from types and cardinalities: check every line, then",
             "#   polyrec data check --data FILE --schema THIS.yaml   and   polyrec train --data FILE --schema THIS.yaml",
             "# Id columns (categorical, user, scenario) are always read as strings ('024' stays '024')."]
    time = next((g for g in guesses if g.role == "time"), None)
    behaviours = [g for g in guesses if g.role == "behaviour"]
    binaries = [g for g in guesses if g.role == "binary"]
    users = [g for g in guesses if "user" in g.name.lower() and g.role == "categorical"]
    features = [g for g in guesses if g.role in ("categorical", "numeric")]
    event_log = bool(behaviours) and not binaries
    time_col = None
    if event_log:
        b = behaviours[0]
        values = sorted(map(str, pc.unique(table[b.name]).drop_null().to_pylist()))
        items = [g.name for g in features if g.role == "categorical" and not (users and g is users[0])]
        by = [users[0].name if users else "USER_COLUMN", items[0] if items else "ITEM_COLUMN"]
        lines += ["", f"# {b.name!r} has few values ({', '.join(values)}): an event log? Aggregated here into one",
                  "# row per (user, item) with one label per behaviour type seen (drop the types you do not predict).",
                  "aggregate:", f"  by: [{', '.join(by)}]"]
        if time:
            lines.append(f"  order_by: {time.name}")
        lines.append(f"  labels: {{column: {b.name}, values: [{', '.join(values)}], how: any}}")
        if time:
            time_col = "first_ts"
            lines += ["  columns:", f"    first_ts: {{column: {time.name}, how: min}}   # first contact"]
        lines += ["# or, instead of aggregate, one labelled row per event:", "# derive:",
                  *(f"#   {v}: \"{b.name} = '{v}'\"" for v in values[:4])]
        binaries = [ColumnGuess(v, "int8", 2, 0, "binary", f"1 if {b.name} = {v!r} was seen") for v in values]
    elif time:
        time_col = time.name
    if time_col:
        lines += ["", "derive:",
                  f"  hour_bucket: {{column: {time_col}, time_part: hour, buckets: [6, 12, 18], "
                  "labels: [night, morning, afternoon, evening]}   # a scenario from the hour (UTC)"]
    lines += ["", "features:"]
    for g in features:
        extra = ", min_freq: 1" if g.role == "categorical" else ", fill: mean, scale: standard"
        lines.append(f"  - {{name: {g.name}, type: {g.role}{extra}}}   # {g.note}; {g.nulls} nulls")
    lines += ["", "# scenario: the column whose values select scenario-specific parameters (optional)"]
    lines.append("scenario: {name: hour_bucket}" if time_col else "# scenario: {name: COLUMN}")
    lines += ["", "tasks:"]
    if binaries:
        lines += [f"  - {{name: {g.name}, type: binary}}   # {g.note}" for g in binaries]
    else:
        lines += ["  - {name: LABEL, type: binary}   # no 0/1 column found: derive one, e.g. like: \"rating >= 4\""]
    lines.append("")
    lines.append(f"user: {users[0].name}   # enables gAUC and per-user splits" if users else "# user: USER_COLUMN")
    if time_col:
        lines.append(f"time: {time_col}   # {time.note}; for temporal / leave_last_out splits")
    return "\n".join(lines) + "\n"
