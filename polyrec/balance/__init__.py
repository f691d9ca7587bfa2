"""Task balancing: how per-head losses (or their gradients) become one update.

A balancer knows nothing about model architectures: it receives the vector of trained heads'
losses and the model's shared parameters, and performs the backward pass. Any balancer works with
any model, chosen by name (`train.balance`).

Loss-level: sum, fixed, uncertainty (Kendall et al. 2018), dwa (Liu et al. 2019).
Gradient-level, over the shared parameters (polyrec.balance.grads): gradnorm (Chen et al. 2018),
pcgrad (Yu et al. 2020), metabalance (He et al. 2022).
"""

from polyrec.balance.base import (BALANCERS, Balancer, balancer_for_heads, balancer_params, build_balancer,
                                  register_balancer)
from polyrec.balance import simple  # noqa: F401  (registers sum, fixed)
from polyrec.balance import dwa, gradnorm, metabalance, pcgrad, uncertainty  # noqa: F401  (register the rest)

__all__ = ["BALANCERS", "Balancer", "balancer_for_heads", "balancer_params", "build_balancer", "register_balancer"]
