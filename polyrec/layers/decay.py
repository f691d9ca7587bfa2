"""Which parameters weight decay may touch, declared where each parameter is created.

Decay (L2 / AdamW's decoupled decay) is meant to shrink weight matrices toward 0. Applied to the wrong
tensors it changes the model: STAR's multiplicative W_s starts at 1 and would be pulled to 0, scenario
gammas and betas and scenario / task embeddings to "no scenario", mixing scalars and uncertainty
log-variances to fixed values. So only matrices (>= 2 dims) that are not embedding tables and not marked
here are decayed; `train.embedding_weight_decay` decays embedding tables separately when asked.
"""

from __future__ import annotations

from torch import nn

_FLAG = "_polyrec_no_weight_decay"


def no_decay(param: nn.Parameter) -> nn.Parameter:
    """Mark `param` as never decayed (a bias, a scale, an embedding-like vector, a multiplicative weight)."""
    setattr(param, _FLAG, True)
    return param


def decayed(param: nn.Parameter) -> bool:
    """True for a weight matrix that `train.weight_decay` applies to (embedding tables are grouped apart)."""
    return param.dim() >= 2 and not getattr(param, _FLAG, False)
