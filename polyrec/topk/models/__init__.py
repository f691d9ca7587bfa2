"""Top-K models: importing this package registers mf, kgat, waata, gru4rec, sasrec and sasrec-mt;
build_topk_model also runs any
registered multi-task CTR model (polyrec.models) on (user, item) pairs through CTRAdapter."""

from __future__ import annotations

from typing import Any

from polyrec.data.schema import validate_params
from polyrec.errors import unknown_name
from polyrec.models.base import MODELS, ModelParams, model_params
from polyrec.topk.models import gru4rec, kgat, mf, sasrec, waata  # noqa: F401  (registers the built-in models)
from polyrec.topk.models.adapter import CTRAdapter
from polyrec.topk.models.base import TOPK_MODELS, DotProductModel, TopKInfo, TopKModel, register_topk


def topk_model_names() -> list[str]:
    """Every name build_topk_model accepts: the top-K models, then the CTR models (run by CTRAdapter)."""
    return [*TOPK_MODELS, *(m for m in MODELS if m not in TOPK_MODELS)]


def topk_model_params(name: str, params: dict[str, Any] | None = None) -> ModelParams:
    """Validate a model's parameters without building it (PolyrecError on unknown names or bad values).
    For CTR models, ESMM-style task defaults are filled in only when the model is built."""
    if name in TOPK_MODELS:
        return validate_params(TOPK_MODELS[name].Params, dict(params or {}), f"parameters for model {name!r}")
    if name in MODELS:
        return model_params(name, dict(params or {}))
    raise unknown_name("model", name, topk_model_names())


def build_topk_model(name: str, info: TopKInfo, embed_dim: int, params: dict[str, Any] | None = None) -> TopKModel:
    """A top-K model by name; a registered multi-task CTR model name gives a CTRAdapter around it."""
    raw = dict(params or {})
    if name in TOPK_MODELS:
        cls = TOPK_MODELS[name]
        return cls(info, embed_dim, validate_params(cls.Params, raw, f"parameters for model {name!r}"))
    if name in MODELS:
        return CTRAdapter(name, info, embed_dim, raw)
    raise unknown_name("model", name, topk_model_names())


__all__ = ["TOPK_MODELS", "CTRAdapter", "DotProductModel", "TopKInfo", "TopKModel", "build_topk_model",
           "register_topk", "topk_model_names", "topk_model_params"]
