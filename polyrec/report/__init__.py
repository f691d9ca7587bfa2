"""The benchmark report (report.html) of a bench folder; it reads the folder with polyrec.bench.store.

  figures.py  matplotlib figures (per-cell test metric, learning curves, gates, task weights, optimisers)
  tables.py   summary tables from the run folders, for a bench without the aggregator's results.md
  markup.py   HTML building blocks (escaping, tables, the aggregator's Markdown)
  html.py     the page: results and figures first, then failures, configuration and environment

This package imports polyrec.bench, never the other way round: `polyrec bench` is handed `write_report`.
"""

from polyrec.report.html import REPORT, render_report, write_report

__all__ = ["REPORT", "render_report", "write_report"]
