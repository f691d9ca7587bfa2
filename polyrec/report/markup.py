"""HTML building blocks of the report: escaping, number formatting, tables, the aggregator's Markdown."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from typing import Any


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict) and d:
        out = []
        for k, v in d.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(d, (list, tuple)) and d and all(not isinstance(x, (dict, list)) for x in d):
        return [(prefix, ", ".join(str(x) for x in d))]
    if isinstance(d, (dict, list, tuple)):
        return [(prefix, json.dumps(d, sort_keys=True))] if d or prefix else []
    return [(prefix, d)]


def kv_table(pairs: Sequence[tuple[str, Any]], cls: str = "kv") -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="{cls}"><tbody>{rows}</tbody></table>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if j >= numeric_from else ""}">{esc(c)}</td>'
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_to_html(text: str) -> str:
    """The aggregator's Markdown (headings, pipe tables, lists, paragraphs) as HTML; raw HTML stays text.

    markdown-it-py comes with rich (a polyrec dependency), so this costs no extra package.
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    # raw HTML stays text, except the aggregator's <u> for "second best"
    html_text = md.render(text).replace("&lt;u&gt;", "<u>").replace("&lt;/u&gt;", "</u>")
    return _shift_headings(html_text)


def _shift_headings(fragment: str, by: int = 2) -> str:
    """Markdown's '#' headings sit under the report's own h1/h2."""
    return re.sub(r"<(/?)h([1-6])>", lambda m: f"<{m.group(1)}h{min(int(m.group(2)) + by, 6)}>", fragment)
