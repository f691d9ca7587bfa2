"""Fusing per-task scores into one ranking score: weighted product prod_t p_t^w_t or weighted sum sum_t w_t p_t.

Product (the default) is the usual multiplicative fusion of probabilities: a candidate must be good on every
weighted task; sum lets one strong task compensate for another. Weights default to 1 for every trained
binary head."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polyrec.errors import PolyrecError, close_matches

EPS = 1e-12  # log(0) guard for the product


class Fusion(BaseModel):
    """How to fuse task scores. `weights` maps head name -> weight >= 0; heads left out weigh 0 (once given)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["product", "sum"] = "product"
    weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None

    def resolved(self, heads: list[str], default_heads: list[str]) -> "Fusion":
        """The same fusion with explicit weights, checked against the bundle's heads."""
        if self.weights is None:
            return Fusion(method=self.method, weights={h: 1.0 for h in default_heads or heads})
        unknown = [h for h in self.weights if h not in heads]
        if unknown:
            raise PolyrecError(f"Fusion weights name unknown head(s) {unknown}.{close_matches(unknown[0], heads)} "
                               f"Heads: {heads}")
        return self


def fuse(scores: np.ndarray, heads: list[str], fusion: Fusion) -> np.ndarray:
    """scores [N, H] -> fused [N] (float64), vectorised over candidates."""
    w = np.array([(fusion.weights or {}).get(h, 0.0) for h in heads], dtype=np.float64)
    s = scores.astype(np.float64)
    if fusion.method == "product":
        return np.exp(np.log(np.clip(s, EPS, None)) @ w)
    return s @ w
