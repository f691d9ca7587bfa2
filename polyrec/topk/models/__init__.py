"""Top-K models: importing this package registers mf, kgat and waata; build_topk_model also runs any
registered multi-task CTR model (polyrec.models) on (user, item) pairs through CTRAdapter."""

from polyrec.topk.models import kgat, mf, waata  # noqa: F401  (registers the built-in models)
from polyrec.topk.models.adapter import CTRAdapter
from polyrec.topk.models.base import (
    TOPK_MODELS,
    DotProductModel,
    TopKInfo,
    TopKModel,
    build_topk_model,
    register_topk,
    topk_model_names,
    topk_model_params,
)

__all__ = ["TOPK_MODELS", "CTRAdapter", "DotProductModel", "TopKInfo", "TopKModel", "build_topk_model",
           "register_topk", "topk_model_names", "topk_model_params"]
