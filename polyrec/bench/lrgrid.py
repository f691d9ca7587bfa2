"""Learning-rate selection inside a bench, on validation only, with a grid that must bracket the best rate.

For each (dataset, row) with a grid, every grid rate is trained on the bench's selection seeds (its first
`lr_selection_seeds`, by default seed 0 alone: a grid costs one run per rate, not one per rate and seed) and
scored by the mean of their validation monitor (`best_val_monitor` in metrics.json, the early-stopping metric:
test metrics are never read). A rate with a failed seed cannot win. When the best rate is the smallest or the
largest of the grid, the optimum may lie beyond it, so the grid grows by one log step in that direction (the
ratio of its two outermost rates at that edge: 1e-3, 3e-3, 1e-2 -> 3.33e-2) and the new rate is trained; after
`lr_grid_extensions` such steps with the winner still at an edge the row fails, with one line naming it.
Ties go to the smaller rate. The selection seeds' runs at the chosen rate are the bench's runs for those seeds
(linked, not retrained); the other seeds are trained at the chosen rate.

This module decides; polyrec.bench.runner trains; lr-grid.json (written by the runner, read by
polyrec.bench.store) keeps every rate's values, the extensions and the choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LR_GRID = "lr-grid.json"


def lr_text(lr: float) -> str:
    """A rate as folder names and tables show it: 0.003 -> '0.003', 3.33e-05 -> '3.33e-05'."""
    return f"{lr:g}"


def extension(grid: Sequence[float], direction: str) -> float:
    """The next rate beyond the grid's edge ('up' or 'down'), one log step (the edge's own ratio) away,
    rounded to 3 significant digits."""
    rates = sorted(grid)
    if len(rates) < 2:
        raise ValueError("a grid needs two rates to have a step")
    if direction == "up":
        raw = rates[-1] * rates[-1] / rates[-2]
    elif direction == "down":
        raw = rates[0] * rates[0] / rates[1]
    else:
        raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
    rounded = float(f"{raw:.3g}")
    return rounded if rounded not in rates else raw


@dataclass
class Point:
    """One grid rate: the selection seeds' validation monitor values, and the seeds that failed."""

    lr: float
    values: dict[int, float] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # seed -> why
    missing: list[int] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """Mean validation monitor; None when a seed failed, is missing or is not finite (cannot win)."""
        if self.failed or self.missing or not self.values:
            return None
        vals = list(self.values.values())
        return sum(vals) / len(vals) if all(math.isfinite(v) for v in vals) else None

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "values": {str(s): v for s, v in self.values.items()}, "mean": self.score,
                "failed": {str(s): e for s, e in self.failed.items()}, "missing": list(self.missing)}


@dataclass
class Decision:
    """What to do after a grid round: 'chosen' (lr), 'extend' (lr = the new rate, direction), or 'failed'."""

    action: str
    lr: float | None = None
    direction: str | None = None
    message: str = ""


def best_point(points: Sequence[Point], higher_is_better: bool) -> Point | None:
    """The best scored point (ties: the smaller rate), None when none has a score."""
    scored = sorted((p for p in points if p.score is not None), key=lambda p: p.lr)
    if not scored:
        return None
    sign = 1.0 if higher_is_better else -1.0
    return max(scored, key=lambda p: sign * p.score)  # max keeps the first (smallest rate) of equals


def decide(points: Sequence[Point], higher_is_better: bool, extensions_done: int, max_extensions: int,
           where: str) -> Decision:
    """Choose, extend or fail after every rate of the grid has been run. `where` names the row in messages."""
    rates = sorted(p.lr for p in points)
    best = best_point(points, higher_is_better)
    if best is None:
        return Decision("failed", message=f"lr grid of {where}: no rate of {[lr_text(r) for r in rates]} finished "
                                          "all its selection seeds (see their error.json under lr-grid/).")
    if len(rates) >= 2 and best.lr in (rates[0], rates[-1]):
        direction = "up" if best.lr == rates[-1] else "down"
        if extensions_done >= max_extensions:
            side = "largest" if direction == "up" else "smallest"
            return Decision("failed", best.lr, direction,
                            f"lr grid of {where}: the best validation rate {lr_text(best.lr)} is still the {side} "
                            f"of the grid {[lr_text(r) for r in rates]} after {extensions_done} extension(s) "
                            f"(lr_grid_extensions={max_extensions}); widen the row's lr_grid.")
        return Decision("extend", extension(rates, direction), direction)
    return Decision("chosen", best.lr)


@dataclass
class Selection:
    """The lr selection of one (dataset, row), as lr-grid.json stores it."""

    dataset: str
    label: str
    folder: str
    monitor: str
    higher_is_better: bool
    seeds: list[int]
    initial: list[float]
    points: dict[float, Point] = field(default_factory=dict)
    extensions: list[dict[str, Any]] = field(default_factory=list)
    chosen: float | None = None
    status: str = "running"  # running -> chosen | failed
    message: str = ""

    @property
    def grid(self) -> list[float]:
        return sorted(self.points)

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "monitor": self.monitor, "mode": "max" if self.higher_is_better else "min",
                "seeds": list(self.seeds), "initial_grid": list(self.initial), "grid": self.grid,
                "extensions": list(self.extensions), "points": [self.points[lr].to_dict() for lr in self.grid],
                "chosen": self.chosen, "status": self.status, "message": self.message}


def chosen_rates(lr_grid: Mapping[str, Any], dataset: str) -> dict[str, float]:
    """{row label: chosen lr} of one dataset from lr-grid.json's content (rows whose selection failed left out)."""
    rows = ((lr_grid.get("datasets") or {}).get(dataset) or {})
    return {lb: float(s["chosen"]) for lb, s in rows.items()
            if isinstance(s, dict) and s.get("status") == "chosen" and isinstance(s.get("chosen"), (int, float))}
