"""ESCM2 (Wang et al., SIGIR 2022): "ESCM2: Entire Space Counterfactual Multi-Task Model for
Post-Click Conversion Rate Estimation".

ESMM (same towers, heads and head names: see polyrec.models.esmm) plus a counterfactual risk on the
CVR tower, so that pCVR estimates P(conversion | do(click)) over the entire space:
    L = L_CTR + L_CTCVR + lambda_c * R_cf          (R_cf via `extra_loss`; L_CTR, L_CTCVR are the heads)
with o = click label, r = conversion label, e = BCE(r, pCVR), o_hat = clip(pCTR, propensity_min)
detached (the propensity), N = all rows of the batch (the entire space, not only the clicked ones):
  ips:  R_IPS = (1/N) sum_i o_i e_i / o_hat_i
  dr:   R_DR  = (1/N) sum_i [ e_hat_i + o_i (e_i - e_hat_i) / o_hat_i ]        (doubly robust risk)
              + (1/N) sum_i o_i (e_i - e_hat_i)^2 / o_hat_i                     (imputation loss)
        where e_hat = softplus(imputation tower), an estimate of the CVR error e (>= 0, like e).

Choices where the paper is silent (or only the authors' code, the PaddleRec release, speaks):
- The DR risk and the imputation loss are summed and learnt jointly in one backward pass, with no
  stop-gradient on e or e_hat, as in that release (with e detached in the imputation loss the CVR
  tower's gradient would be exactly the IPS one). The imputation tower reads the shared embedding
  with the same tower sizes; softplus keeps e_hat >= 0 (the release squashes it into (0, 1)).
- The propensity is detached in both variants (the release detaches it for IPS only): the
  counterfactual risk trains the CVR (and imputation) tower, never the CTR tower. It is clipped at
  `propensity_min` (default 0.05, i.e. weights <= 20; the release clips IPS weights at 15).
- lambda_g (the weight of the global CTCVR risk) is 1 here: it is an ordinary trained head, which a
  balancer may reweight. The paper tunes lambda_c; the release ships lambda_c = lambda_g = 0.5. We
  default to lambda_c = 0.1: R_cf is an unbiased but high-variance estimate of the entire-space CVR
  loss, on the same scale as the head BCEs, so a weight one order below the main losses keeps it a
  regulariser rather than a second, noisy CVR objective (tune it: `counterfactual_weight`).
- The conversion label on clicked rows is the ctcvr task's label (which implies the click).
- With no clicked row in a batch R_IPS = 0 (no NaN); R_DR = mean(e_hat).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from polyrec.data.batching import Batch
from polyrec.errors import PolyrecError
from polyrec.layers.mlp import MLP
from polyrec.models.base import register
from polyrec.models.esmm import ESMM, ESMMParams


class ESCM2Params(ESMMParams):
    variant: Literal["ips", "dr"] = "ips"
    counterfactual_weight: float = Field(default=0.1, ge=0)  # lambda_c
    propensity_min: float = Field(default=0.05, gt=0, le=1)


@register("escm2")
class ESCM2(ESMM):
    Params = ESCM2Params
    deviations = (
        "counterfactual weight lambda_c = 0.1 by default; the authors' release uses 0.5",
    )

    def __init__(self, spec, embed_dim, params: ESCM2Params) -> None:
        super().__init__(spec, embed_dim, params)
        p = params
        self.imputation = MLP(self.embedding.flat_dim, p.tower_dims, 1, p.dropout, p.activation,
                              p.batch_norm) if p.variant == "dr" else None
        self.not_shared(self.imputation)  # e_hat serves the CVR's doubly robust term only
        self._imputed: torch.Tensor | None = None  # e_hat [B] of the last training forward

    def forward(self, batch: Batch) -> torch.Tensor:
        out = super().forward(batch)  # [B, T + 1]: ESMM's heads, pCVR logit last
        self._imputed = None
        if self.imputation is not None and self.training:  # only the training loss needs e_hat
            self._imputed = F.softplus(self.imputation(self.embedding.flat(batch))).squeeze(-1)
        return out

    def extra_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        p = self.params
        if p.counterfactual_weight == 0:
            return None
        clicked, converted = labels[:, self.ctr_idx], labels[:, self.ctcvr_idx]
        e = F.binary_cross_entropy_with_logits(logits[:, -1], converted, reduction="none")
        w = clicked / torch.sigmoid(logits[:, self.ctr_idx]).detach().clamp(min=p.propensity_min)  # o / o_hat
        if p.variant == "ips":
            return p.counterfactual_weight * (w * e).mean()
        if self._imputed is None or self._imputed.shape != e.shape:
            raise PolyrecError("ESCM2-DR: extra_loss needs the imputed errors of a training-mode forward "
                               "on the same batch.")
        delta = e - self._imputed
        return p.counterfactual_weight * (self._imputed + w * delta + w * delta ** 2).mean()

