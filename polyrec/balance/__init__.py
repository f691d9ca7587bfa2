"""Task balancing: how per-head losses (or their gradients) become one update.

A balancer knows nothing about model architectures: it receives the vector of trained heads'
losses and the model's shared parameters, and performs the backward pass. Any balancer works with
any model, chosen by name (`train.balance`).
"""

from polyrec.balance.base import BALANCERS, Balancer, balancer_params, build_balancer, register_balancer
from polyrec.balance import simple  # noqa: F401  (registers sum, fixed)

__all__ = ["BALANCERS", "Balancer", "balancer_params", "build_balancer", "register_balancer"]
