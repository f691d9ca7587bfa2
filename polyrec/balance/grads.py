"""The one helper every gradient-level balancer (gradnorm, pcgrad, metabalance) builds on.

`task_gradients(losses, params)` returns each task's gradient of some parameters (normally the
model's shared ones) as one row of a [T, P] matrix, computed with `torch.autograd.grad(...,
retain_graph=True)`, one pass per task. `TaskGrads.write(vector)` puts a combined [P] gradient back
into the parameters' `.grad`. With `rest_weights`, the same passes also give every *other*
parameter the losses reach (towers, task experts, gates) its ordinary gradient, so a gradient-level
balancer costs T backward passes in all, not T + 1.

Sparse embedding gradients (`nn.Embedding(sparse=True)`, used with SparseAdam) stay cheap: a
sparse parameter occupies only the rows that some task's gradient touches (the union of their row
ids) in the flat vector, and is written back as a coalesced sparse tensor with those rows. All
other rows are zero in every task's gradient, so dot products and norms are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

EPS = 1e-12  # guards every division by a gradient norm or a loss: zero gradients must not give NaN


@dataclass
class TaskGrads:
    """Per-task gradients of `params`: `flat[t]` is task t's gradient, parameter after parameter."""

    params: list[nn.Parameter]
    flat: torch.Tensor  # [T, P]
    sizes: list[int]  # each parameter's length in `flat`
    rows: list[torch.Tensor | None]  # None: dense; else the sorted row ids a sparse gradient occupies
    used: list[bool]  # False: no task's loss reaches the parameter (write leaves its .grad alone)

    def segments(self) -> list[slice]:
        out, start = [], 0
        for n in self.sizes:
            out.append(slice(start, start + n))
            start += n
        return out

    def norms(self) -> torch.Tensor:
        """[T] L2 norm of each task's whole gradient."""
        return torch.linalg.vector_norm(self.flat, dim=1)

    def segment_norms(self) -> torch.Tensor:
        """[T, n_params]: the L2 norm of each task's gradient of each parameter."""
        if not self.sizes:
            return self.flat.new_zeros(self.flat.shape[0], 0)
        return torch.stack([torch.linalg.vector_norm(self.flat[:, s], dim=1) for s in self.segments()], 1)

    def write(self, combined: torch.Tensor) -> None:
        """Set (or add to) each parameter's .grad from a combined [P] vector (parameters no loss reaches: untouched,
        as a plain backward leaves them)."""
        for p, s, rows, used in zip(self.params, self.segments(), self.rows, self.used):
            if not used:
                continue
            part = combined[s]
            if rows is None:
                g = part.view(p.shape)
            else:
                g = torch.sparse_coo_tensor(rows.unsqueeze(0), part.view(len(rows), *p.shape[1:]), p.shape,
                                            is_coalesced=True, check_invariants=False)
            p.grad = g if p.grad is None else p.grad + g


def trainable(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def task_gradients(losses: torch.Tensor, params: Sequence[nn.Parameter],
                   rest_weights: torch.Tensor | None = None) -> TaskGrads:
    """Each task's gradient of `params` (requires_grad ones only), flattened: rows of a [T, P] matrix.

    A parameter a task's loss does not reach gets a zero gradient for it, and so does every
    parameter for a loss that has no graph at all (a task with no sample).

    `rest_weights` None: the graph is retained (the caller runs its own backward afterwards).
    `rest_weights` [T]: every *other* parameter the losses reach gets the gradient of
    sum_t rest_weights[t] * losses[t] added to its .grad, taken from the same T backward passes
    (no extra pass over the model, which matters when non-shared layers sit below shared ones, as
    in PLE), and the graph is freed by the last pass.
    """
    params = trainable(params)
    n_tasks = losses.shape[0]
    rest: list[torch.Tensor] = []
    if rest_weights is not None and losses.requires_grad:
        skip = {id(p) for p in params}
        rest = [p for p in leaf_parameters(losses) if id(p) not in skip]
    rest_sum: list[torch.Tensor | None] = [None] * len(rest)
    inputs = params + rest
    coefs = rest_weights.tolist() if rest_weights is not None else []
    per_task: list[Sequence[torch.Tensor | None]] = []
    for t in range(n_tasks):
        if not (losses.requires_grad and inputs):
            per_task.append([None] * len(params))
            continue
        retain = rest_weights is None or t < n_tasks - 1
        out = torch.autograd.grad(losses[t], inputs, retain_graph=retain, allow_unused=True)
        per_task.append(out[:len(params)])
        for k, g in enumerate(out[len(params):]):
            if g is not None:
                g = g if coefs[t] == 1.0 else g * coefs[t]
                rest_sum[k] = g if rest_sum[k] is None else rest_sum[k] + g
    for p, g in zip(rest, rest_sum):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    sizes: list[int] = []
    rows: list[torch.Tensor | None] = []
    blocks: list[list[torch.Tensor | None]] = []  # per parameter: per task [n] (None = zero)
    used: list[bool] = []
    for k, p in enumerate(params):
        col = [g[k] for g in per_task]
        used.append(any(g is not None for g in col))
        if any(g is not None and g.is_sparse for g in col):
            coalesced = [g.coalesce() if g is not None else None for g in col]
            present = [c.indices()[0] for c in coalesced if c is not None]
            ids = torch.unique(torch.cat(present)) if present else torch.zeros(0, dtype=torch.long, device=p.device)
            width = int(p[0].numel())  # one row of the table
            block: list[torch.Tensor | None] = []
            for c in coalesced:
                if c is None or c._nnz() == 0:
                    block.append(None)
                    continue
                dense_rows = p.new_zeros(len(ids), width)
                dense_rows[torch.searchsorted(ids, c.indices()[0])] = c.values().reshape(-1, width)
                block.append(dense_rows.reshape(-1))
            rows.append(ids)
            sizes.append(len(ids) * width)
        else:
            block = [g.reshape(-1) if g is not None else None for g in col]
            rows.append(None)
            sizes.append(p.numel())
        blocks.append(block)
    like = params[0] if params else losses
    flat = torch.zeros(n_tasks, sum(sizes), dtype=like.dtype, device=like.device)
    start = 0
    for block, n in zip(blocks, sizes):
        for t, g in enumerate(block):
            if g is not None:
                flat[t, start:start + n] = g
        start += n
    return TaskGrads(params, flat, sizes, rows, used)


def leaf_parameters(root: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors requiring grad that `root`'s backward would reach (its graph's AccumulateGrad nodes)."""
    if root.grad_fn is None:
        return [root] if root.requires_grad else []
    seen, stack, out = set(), [root.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            out.append(var)
        else:
            stack.extend(nxt for nxt, _ in fn.next_functions)
    return out


def ratio(applied: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """applied / raw gradient norm per task, 1 where the raw gradient is zero (nothing was rescaled)."""
    return torch.where(raw > 0, applied / raw.clamp_min(EPS), torch.ones_like(raw))
