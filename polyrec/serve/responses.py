"""What every endpoint answers with: request errors (a status and FastAPI's detail shape), compact JSON, and a
bundle's headline metrics for /v1/models."""

from __future__ import annotations

import json
import math
from typing import Any


class RequestError(Exception):
    """A request problem found after validation (422 with FastAPI's detail shape, or another status)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per split: each head's headline metrics and the overall ones (NaN -> null: JSON has no NaN)."""
    keys = ("auc", "logloss", "gauc", "rmse", "mae", "n")
    out = {}
    for split in ("val", "test"):
        m = metrics.get(split)
        if not isinstance(m, dict):
            continue
        out[split] = {"heads": {h: {k: _clean(v[k]) for k in keys if k in v} for h, v in m.get("heads", {}).items()},
                      "overall": {k: _clean(v) for k, v in (m.get("overall") or {}).items()}}
    return out


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (no NaN: scores are checked finite before they get here)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
