"""Multi-process training with torch.distributed, as started by `torchrun --nproc_per_node K -m polyrec train`.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a CTR-style run then joins the process
group (gloo on CPU, nccl on CUDA) and the one training loop (polyrec.train.trainer) runs on every process:

- the model is wrapped in DistributedDataParallel, so gradients are averaged over processes in backward;
- every global batch of `train.batch_size` rows (the same seeded epoch permutation on all processes) is dealt
  round-robin to the K processes, B/K rows each. A mean loss averaged over K equal shares is the mean over the
  whole batch, so a K-process run takes the single-process run's steps (up to float summation order; per-scenario
  loss means and batch statistics are computed per share). A final global batch with fewer rows than processes
  is skipped;
- validation and test rows are scored in K contiguous shares and gathered, so every process computes the
  whole split's AUC / LogLoss (never an average of per-process AUCs) and all reach the same early-stopping
  decision;
- process 0 alone writes the run folder (checkpoints, logs, metrics.json); the checkpoint holds every process's
  RNG state, so `--resume` with the same K replays the uninterrupted run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from polyrec.errors import PolyrecError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> World:
    """The process's place as torchrun's environment says (one process when it says nothing)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise PolyrecError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers (torchrun sets them): {exc}") from None
    if size < 1 or not 0 <= rank < size:
        raise PolyrecError(f"RANK {rank} is not within WORLD_SIZE {size}.")
    return World(rank, size, local)


def check_balancer(balancer: type | object) -> None:
    """A balancer that combines per-task gradients itself cannot be split over processes (yet)."""
    if getattr(balancer, "per_task_gradients", False):
        name = balancer.__name__ if isinstance(balancer, type) else type(balancer).__name__
        raise PolyrecError(
            f"The {name} balancer computes per-task gradients on each process's rows, which multi-process "
            "training does not combine yet; use --balance sum, fixed, uncertainty or dwa with torchrun, or train "
            "in one process.")


def current() -> World:
    """The joined process group's world (one process when none is joined)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), env_world().local_rank)
    return World()


def join(device: str) -> World:
    """Join torchrun's process group once (gloo on CPU, nccl on CUDA); the world after joining.

    On CUDA each process takes the device of its local rank, so `train.device=cuda` means "my GPU"."""
    world = env_world()
    if not world.active or (dist.is_available() and dist.is_initialized()):
        return current() if world.active else world
    if not dist.is_available():
        raise PolyrecError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return current()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().active:
        dist.barrier()


def contiguous_share(n: int, world: World) -> slice:
    """Rows [start, stop) of an n-row split that this process scores (shares differ by at most one row)."""
    start = n * world.rank // world.size
    return slice(start, n * (world.rank + 1) // world.size)


def gather_rows(part: np.ndarray, n: int, world: World) -> np.ndarray:
    """The whole n-row array from every process's contiguous share (see contiguous_share), on every process."""
    if not world.active:
        return part
    shares = [contiguous_share(n, World(r, world.size)) for r in range(world.size)]
    buf = torch.zeros((max(s.stop - s.start for s in shares), *part.shape[1:]), dtype=torch.from_numpy(part).dtype)
    buf[:len(part)] = torch.from_numpy(part)
    return np.concatenate([g[:s.stop - s.start].numpy() for g, s in zip(_all_gather(buf), shares)])


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every process's copy of the CPU tensor `t` (same shape everywhere), in rank order, on the CPU."""
    dev = _comm_device()  # nccl moves device tensors only
    out = [torch.empty_like(t, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.to(dev))
    return [o.cpu() for o in out]


def mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over processes (a copy; `t` itself when there is one process)."""
    world = current()
    if not world.active:
        return t
    out = t.detach().clone().to(_comm_device())
    dist.all_reduce(out)
    return (out / world.size).to(t.device)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average .grad over processes for parameters DDP does not hold (a balancer's own, e.g. log-variances)."""
    world = current()
    if not world.active:
        return
    for p in params:
        if p.grad is not None:
            p.grad.copy_(mean_over_processes(p.grad))


def average_sparse_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average sparse (row-wise) embedding gradients over processes with dense all_gathers of the touched rows.

    Why not DDP: gloo's sparse all-reduce, which DDP uses for such tables, corrupted the heap of a 2-process run on
    20M synthetic rows ("malloc(): unaligned tcache chunk detected" mid-epoch; 1M and 5M rows ran). Here each
    process sends its coalesced rows (padded to the largest count), and every process sums the same concatenation
    in the same order, so the tables stay identical on all processes."""
    world = current()
    if not world.active:
        return
    for p in params:
        g = p.grad.coalesce() if p.grad is not None else torch.sparse_coo_tensor(
            torch.zeros((1, 0), dtype=torch.long), torch.zeros((0, *p.shape[1:]), dtype=p.dtype), p.shape)
        rows, values = g.indices()[0].cpu(), g.values().cpu()
        counts = [int(c) for c in _all_gather(torch.tensor([len(rows)]))]
        if sum(counts) == 0:
            continue
        width = max(counts)
        pad_rows = torch.zeros(width, dtype=torch.long)
        pad_rows[:len(rows)] = rows
        pad_values = torch.zeros((width, *values.shape[1:]), dtype=values.dtype)
        pad_values[:len(rows)] = values
        all_rows = torch.cat([r[:c] for r, c in zip(_all_gather(pad_rows), counts)])
        all_values = torch.cat([v[:c] for v, c in zip(_all_gather(pad_values), counts)])
        p.grad = torch.sparse_coo_tensor(all_rows.unsqueeze(0), all_values / world.size, p.shape,
                                         device=p.device).coalesce()


def all_rng_states() -> list[torch.Tensor]:
    """Every process's CPU RNG state, in rank order (one list on every process)."""
    state = torch.get_rng_state()
    return _all_gather(state) if current().active else [state]


def broadcast_flag(value: bool) -> bool:
    """Process 0's value of a yes/no decision, on every process."""
    if not current().active:
        return value
    t = torch.tensor([1 if value else 0], device=_comm_device())
    dist.broadcast(t, 0)
    return bool(t.item())


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
