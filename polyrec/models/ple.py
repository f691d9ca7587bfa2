"""PLE (Tang et al., RecSys 2020): multi-level Customized Gate Control (CGC).

Each level has `n_shared_experts` shared experts and `n_task_experts` experts per task. Task t's
gate (input: task t's stream) is a softmax over its own experts plus the shared ones. Every level
but the last also keeps a shared stream whose gate mixes all experts of the level. Level 1's
streams all start from the input embedding; towers read the task streams of the last level.
"""

from __future__ import annotations

import torch
from torch import nn

from polyrec.data.batching import Batch
from polyrec.layers.embedding import InputEmbedding
from polyrec.layers.experts import mix
from polyrec.layers.mlp import ParallelMLP
from polyrec.models.base import ModelParams, MultiTaskModel, register


class PLEParams(ModelParams):
    n_levels: int = 2
    n_shared_experts: int = 2
    n_task_experts: int = 2
    expert_dims: list[int] = [64]
    tower_dims: list[int] = [32]


class CGCLevel(nn.Module):
    """One extraction level: experts and gates for T task streams (+ the shared stream if not last).

    Returns the task streams, the shared stream and the task gates' weights [B, T, nt + ns]
    (each task's own experts first, then the shared ones)."""

    def __init__(self, n_tasks: int, d_in: int, p: PLEParams, last: bool) -> None:
        super().__init__()
        self.n_tasks, self.ns, self.nt, self.last = n_tasks, p.n_shared_experts, p.n_task_experts, last
        mlp = dict(dims=p.expert_dims, dropout=p.dropout, act=p.activation, batch_norm=p.batch_norm)
        self.shared_experts = ParallelMLP(self.ns, d_in, **mlp)
        self.task_experts = ParallelMLP(n_tasks * self.nt, d_in, **mlp)
        self.task_gates = ParallelMLP(n_tasks, d_in, [], out_dim=self.nt + self.ns)  # one linear gate per task
        self.shared_gate = None if last else nn.Linear(d_in, n_tasks * self.nt + self.ns)
        self.out_dim = self.shared_experts.out_dim

    def task_parts(self) -> list[nn.Module]:
        """The per-task experts and gates (not shared; the shared experts and gate are)."""
        return [self.task_experts, self.task_gates]

    def forward(self, task_in: torch.Tensor, shared_in: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """task_in: [B, T, d] (or [B, d] when all streams are the input); shared_in: [B, d]."""
        b, t, nt = shared_in.shape[0], self.n_tasks, self.nt
        shared = self.shared_experts(shared_in)  # [B, ns, D]
        if task_in.dim() == 2:
            own = self.task_experts(task_in)  # shared input -> [B, T*nt, D]
        else:
            own = self.task_experts(task_in.repeat_interleave(nt, dim=1))
        own = own.view(b, t, nt, -1)
        # candidates per task: its own experts then the shared ones -> [B*T, nt+ns, D]
        cand = torch.cat([own, shared.unsqueeze(1).expand(b, t, self.ns, shared.shape[-1])], dim=2)
        gate_logits = self.task_gates(task_in)  # [B, T, nt+ns]
        task_out = mix(gate_logits.reshape(b * t, 1, -1), cand.reshape(b * t, nt + self.ns, -1)).view(b, t, -1)
        shared_out = None
        if self.shared_gate is not None:
            everything = torch.cat([own.reshape(b, t * nt, -1), shared], dim=1)
            shared_out = mix(self.shared_gate(shared_in), everything)
        return task_out, shared_out, torch.softmax(gate_logits, -1)


@register("ple")
class PLE(MultiTaskModel):
    Params = PLEParams

    def __init__(self, spec, embed_dim, params: PLEParams) -> None:
        super().__init__(spec, embed_dim, params)
        p = params
        self.embedding = InputEmbedding(spec, embed_dim, numeric_fields=False)
        levels, d_in = [], self.embedding.flat_dim
        for i in range(p.n_levels):
            levels.append(CGCLevel(self.n_tasks, d_in, p, last=i == p.n_levels - 1))
            d_in = levels[-1].out_dim
        self.levels = nn.ModuleList(levels)
        self.towers = ParallelMLP(self.n_tasks, d_in, p.tower_dims, 1, p.dropout, p.activation, p.batch_norm)
        self.not_shared(self.towers, *(part for level in levels for part in level.task_parts()))

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.embedding.flat(batch)
        task_in, shared_in = x, x
        for i, level in enumerate(self.levels):
            task_in, shared_in, gates = level(task_in, shared_in)
            self.record_gate(f"level{i + 1}_task_gates", gates)
        return self.towers(task_in).squeeze(-1)

    def last_shared_layer(self) -> nn.Parameter:
        """GradNorm's W: the last level's shared experts."""
        return self.levels[-1].shared_experts.weights[-1]
