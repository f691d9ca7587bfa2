"""The validation quantity early stopping and model selection follow.

Either one metric key ('click/auc', 'rating/rmse', 'cell/<25/like/auc') or a weighted sum of
keys ('0.7*click/auc + 0.3*like/auc'). The direction is inferred from the metric names
(loss-like names are minimised) unless given, and mixing directions requires giving it.
"""

from __future__ import annotations

import math

from polyrec.errors import PolyrecError, close_matches
from polyrec.metrics.direction import lower_is_better



class Monitor:
    def __init__(self, expression: str, mode: str | None = None) -> None:
        self.expression = expression
        self.terms: list[tuple[float, str]] = []
        for part in expression.split("+"):
            part = part.strip()
            weight, _, key = part.rpartition("*")
            try:
                w = float(weight) if weight else 1.0
            except ValueError:
                raise PolyrecError(f"train.monitor term {part!r}: {weight!r} is not a number") from None
            if not key:
                raise PolyrecError(f"train.monitor={expression!r} has an empty term")
            self.terms.append((w, key.strip()))
        if mode is None:
            modes = {"min" if lower_is_better(k) else "max" for _, k in self.terms}
            if len(modes) > 1:
                raise PolyrecError(f"train.monitor={expression!r} mixes metrics to minimise and to maximise; "
                                   "set train.monitor_mode to min or max.")
            mode = modes.pop()
        self.sign = 1.0 if mode == "max" else -1.0

    def value(self, flat: dict[str, float]) -> float:
        total = 0.0
        for w, key in self.terms:
            if key not in flat:
                raise PolyrecError(
                    f"train.monitor names {key!r}, which is not a validation metric.{close_matches(key, flat)} "
                    f"Examples: {', '.join(list(flat)[:8])}"
                )
            total += w * flat[key]
        return total

    def score(self, flat: dict[str, float]) -> float:
        """Higher is better; NaN (e.g. a split with one class) never counts as an improvement."""
        v = self.value(flat)
        return -math.inf if math.isnan(v) else self.sign * v
