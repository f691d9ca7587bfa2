"""Which metrics are minimised, declared once beside the metrics: early stopping, tuning and bench
tables all read it (RecBole keeps the same fact as a `smaller` flag on each metric)."""

from __future__ import annotations

# error and loss metrics, and costs; every other metric (AUC, gAUC, Recall/NDCG/HitRate/MRR@K) is maximised
LOWER_IS_BETTER = frozenset({"loss", "logloss", "mse", "mae", "rmse",
                             "train_seconds", "seconds_per_epoch", "wall_seconds"})


def lower_is_better(key: str) -> bool:
    """For a metric name or a flat key ('click/logloss', 'cell/<25/rating/rmse'): True when smaller is better."""
    return key.rsplit("/", 1)[-1] in LOWER_IS_BETTER
