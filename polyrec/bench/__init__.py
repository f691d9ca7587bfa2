"""Benchmarks: run grids of models x datasets x seeds, aggregate them, and report.

  spec.py       rows (model[key=value] ablations, named VARIANTS, optimiser studies), experiment YAML
  runner.py     `polyrec bench`: one ordinary run folder per (dataset, row, seed); resumable; failures isolated
  lrgrid.py     learning-rate selection on validation: a grid that must bracket the best rate (extended at an edge)
  aggregate.py  results.json / results.csv / results-per-seed.csv / results.md from the run folders
  stats.py      mean ± std over seeds, paired t-test and Wilcoxon signed-rank test between rows
  store.py      reading a bench folder (bench.yaml, run folders): the one reader of aggregate and the report
The report (report.html) is polyrec.report, which imports this package (not the other way round).
"""
