"""A benchmark's report: ONE self-contained HTML file (``bench_dir/report.html``).

Everything the page shows is inside the file: figures are inline base64 PNGs (polyrec.report.figures), the
style sheet is inline, there is no JavaScript, and a Content-Security-Policy meta tag forbids the page from
fetching anything, so it opens offline and can be mailed or archived.

The page leads with the results: the aggregator's results.md tables (or, without one, summary tables computed
from the run folders), then the cap-bound runs (convergence) and the learning-rate selection, then each dataset's
figures; then the failed runs; then the experiment's configuration
and the environment. The bench folder is read by polyrec.bench.store, as the aggregator reads it.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from polyrec.bench.store import Bench, load_bench
from polyrec.report.figures import Figure, Figures, dataset_figures
from polyrec.report.markup import esc, flatten, kv_table, markdown_to_html, slug, table
from polyrec.report.tables import convergence_html, lr_grid_html, summary_html
from polyrec.utils.io import atomic_write_text

REPORT = "report.html"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2126;
 background:#fafafa;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:1.7em;margin:.2em 0 .3em}h2{border-bottom:2px solid #d9dde3;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}h4,h5,h6{margin:1.1em 0 .4em}
pre,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f3f4f6;padding:10px 12px;border-radius:6px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.88em;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #d9dde3;padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{background:#f6f7f9;font-weight:600;white-space:nowrap}table.kv td{word-break:break-all}
figure{margin:1.2em 0 1.8em}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:.88em;color:#555;margin-top:.3em}
nav ul{columns:2;font-size:.92em}.note{color:#555;font-size:.9em}.bad{color:#a40000}
details summary{cursor:pointer;color:#444}td.nw{white-space:nowrap}
"""


def _figure_html(fig: Figure, fid: str) -> str:
    return (f'<figure id="{esc(fid)}"><img src="data:image/png;base64,{fig.png_b64}" alt="{esc(fig.title)}" '
            f'title="{esc(fig.title)}"><figcaption><strong>{esc(fig.title)}.</strong> {esc(fig.caption)}'
            f"</figcaption></figure>")


def _command(spec: dict[str, Any]) -> str | None:
    cmd = spec.get("command")
    if cmd is None:
        return None
    if isinstance(cmd, (list, tuple)):
        return shlex.join(str(c) for c in cmd)
    return str(cmd)


def _experiment_html(bench: Bench) -> str:
    spec = bench.spec
    parts = []
    pairs = [("datasets", ", ".join(bench.datasets)), ("seeds", ", ".join(str(s) for s in spec.get("seeds") or []))]
    pairs += [(k, v) for k, v in flatten({k: v for k, v in spec.items()
                                            if k not in ("rows", "datasets", "seeds", "command")})]
    parts.append(kv_table([(k, v) for k, v in pairs if v not in (None, "")]))
    rows = [r for r in spec.get("rows") or [] if isinstance(r, dict)]
    if rows:
        body = []
        for r in rows:
            rest = {k: v for k, v in r.items() if k not in ("label", "model")}
            body.append([r.get("label", ""), r.get("model", ""),
                         "; ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"
                                   for k, v in flatten(rest))])
        parts.append(table(["row", "model", "settings"], body, numeric_from=99))
    return "\n".join(parts)


def _failures_html(bench: Bench) -> str:
    seen = {(r.dataset, r.label, r.seed) for r in bench.runs}
    items = []
    for r in bench.runs:
        if r.ok:
            continue
        if r.error is not None:
            err = r.error if isinstance(r.error, dict) else {"error": r.error}
            message = next((str(err[k]) for k in ("error", "message", "exception", "msg") if k in err),
                           json.dumps(err, indent=1))
            kind = err.get("type") or err.get("error_type")
            extra = {k: v for k, v in err.items() if k not in ("error", "message", "exception", "msg", "type",
                                                               "error_type", "traceback")}
            tb = err.get("traceback")
            if isinstance(tb, list):
                tb = "".join(str(x) for x in tb)
        else:
            message, kind, extra, tb = "incomplete: neither metrics.json nor error.json was written", None, {}, None
        items.append((r.dataset, r.label, str(r.seed), kind, message, extra, tb))
    for ds in bench.datasets:  # planned by bench.yaml but no run folder at all
        for label in [str(x["label"]) for x in bench.spec.get("rows") or [] if isinstance(x, dict) and "label" in x]:
            for seed in bench.spec.get("seeds") or []:
                if isinstance(seed, int) and (ds, label, seed) not in seen:
                    items.append((ds, label, str(seed), None, "not run: no run folder", {}, None))
    if not items:
        return "<p>None: every run finished.</p>"
    rows = []
    for ds, label, seed, kind, message, extra, tb in items:
        detail = f"<pre>{esc(message)}</pre>"
        if kind:
            detail = f"<code>{esc(kind)}</code>" + detail
        if extra:
            detail += kv_table(flatten(extra))
        if tb:
            detail += f"<details><summary>traceback</summary><pre>{esc(tb)}</pre></details>"
        rows.append(f'<tr><td class="nw">{esc(ds)}</td><td class="nw">{esc(label)}</td><td class="num">{esc(seed)}</td>'
                    f"<td>{detail}</td></tr>")
    return (f'<p class="bad">{len(items)} run(s) did not finish.</p><table><thead><tr><th>dataset</th><th>row</th>'
            f"<th>seed</th><th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def render_report(bench: Bench) -> str:
    """The report's HTML text (pure function of the loaded bench): results and figures first, then what
    failed, then the configuration and environment they came from."""
    figs = Figures()
    title = str(bench.spec.get("name") or bench.spec.get("title") or bench.path.resolve().name)
    sections: list[tuple[str, str, str]] = []  # (id, heading, html)
    results = markdown_to_html(bench.results_md) if bench.results_md is not None else summary_html(bench)
    sections.append(("results", "Results", results))
    sections.append(("convergence", "Convergence", convergence_html(bench)))
    if bench.lr_grid.get("datasets"):
        sections.append(("lr-grid", "Learning-rate selection", lr_grid_html(bench)))
    n_figures = 0
    for ds in bench.datasets:
        figures = dataset_figures(figs, bench, ds)
        n_ok = sum(r.ok for r in bench.runs_of(ds))
        body = [f'<p class="note">{n_ok} of {len(bench.runs_of(ds))} run(s) finished.</p>']
        for f in figures:
            n_figures += 1
            body.append(_figure_html(f, f"fig-{n_figures}"))
        if not figures:
            body.append('<p class="note">No finished runs to plot.</p>')
        sections.append((f"dataset-{slug(ds)}", f"Dataset {ds}", "\n".join(body)))
    sections.append(("failures", "Failed runs", _failures_html(bench)))
    command = _command(bench.spec)
    sections.append(("experiment", "Experiment",
                     (f"<h3>Command</h3><pre>{esc(command)}</pre>" if command else "") + _experiment_html(bench)))
    env = bench.environment
    sections.append(("environment", "Environment", kv_table(flatten(env)) if env else
                     '<p class="note">environment.json is missing.</p>'))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<li><a href="#{esc(sid)}">{esc(h)}</a></li>' for sid, h, _ in sections)
    body = "\n".join(f'<section id="{esc(sid)}"><h2>{esc(h)}</h2>\n{content}</section>' for sid, h, content in sections)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} — polyrec benchmark</title><style>{_CSS}</style></head>\n"
        f"<body><main><h1>polyrec benchmark: {esc(title)}</h1>"
        f'<p class="note">Generated {stamp} from <code>{esc(bench.path)}</code>; '
        f"{len(bench.runs)} run folder(s), {n_figures} figure(s).</p>"
        f"<nav><ul>{nav}</ul></nav>\n{body}\n</main></body></html>\n"
    )


def write_report(bench_dir: str | Path) -> Path:
    """Write ``bench_dir/report.html`` (self-contained: inline PNG figures, inline CSS, no JS) and return it."""
    bench_dir = Path(bench_dir)
    text = render_report(load_bench(bench_dir))
    out = bench_dir / REPORT
    atomic_write_text(out, text)
    out.chmod(0o644)  # a temp file's 0600 would keep a report meant for sharing private
    return out
