"""One run across processes: PyTorch DDP semantics, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m aecli.train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set; ``World.from_env`` reads them (a
plain run is a world of one, and nothing here costs it anything). What a world of several does:

- every rank holds the dataset and trains on its shard of each epoch's permutation, as
  ``DistributedSampler`` does (the same permutation everywhere, padded to a multiple of the
  world size, rank r taking every N-th index): ``trainer.batch_size`` is per process, the global
  batch N times that;
- gradients are averaged across ranks after each backward (one all-reduce of one flat buffer)
  before the optimizer steps, so every rank keeps the same model;
- loss sums, non-finite checks and stop requests are all-reduced at the loop's sync points;
- rank 0 alone writes (run dir, lock, checkpoints, TensorBoard, metrics.json).

The process group uses NCCL when every rank has a GPU of its own, gloo otherwise (CPU runs, or
several ranks sharing one GPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch itself is imported where it is used: aecli train --help needs no torch (~3 s)
    import torch
    from torch import Tensor


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                   int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def init(self) -> None:
        """Join the process group (coordination over gloo; see ``backend``)."""
        import torch.distributed as dist

        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend=self.backend())

    def leave(self) -> None:
        """Leave the process group together: a barrier, then ``destroy_process_group``. A rank that
        exits while another still works (rank 0 writing the last checkpoint) makes torchrun
        terminate that one, or its gloo connection abort; every rank leaves after the slowest."""
        import torch.distributed as dist

        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def backend(self) -> str:
        import torch

        if torch.cuda.is_available() and self.local_size <= torch.cuda.device_count():
            return "cpu:gloo,cuda:nccl"
        return "gloo"  # NCCL wants a GPU per rank; gloo also moves CUDA tensors

    def shard(self, perm: Tensor) -> Tensor:
        """This rank's part of an epoch's permutation (DistributedSampler: padded with its first
        indices to a multiple of the world size, then every ``size``-th from ``rank``)."""
        if not self.distributed:
            return perm
        import torch

        pad = (-len(perm)) % self.size
        full = torch.cat([perm, perm[:pad]]) if pad else perm
        return full[self.rank :: self.size]

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Make every rank's gradients the mean over all ranks (one flat all-reduce)."""
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def total(self, value: Tensor) -> Tensor:
        """The sum of ``value`` over ranks (a copy; ``value`` itself unchanged)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        out = value.detach().clone()
        dist.all_reduce(out)
        return out

    def min(self, value: Tensor) -> Tensor:
        if not self.distributed:
            return value
        import torch.distributed as dist

        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
        return out

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any."""
        if not self.distributed:
            return flag
        import torch

        return bool(self.total(torch.tensor(int(flag), device=device)).item())

    def largest(self, number: int, device: torch.device) -> int:
        """The largest of the ranks' ``number``s, on every rank."""
        if not self.distributed:
            return number
        import torch

        return -int(self.min(torch.tensor(-number, device=device)).item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


WORLD = World.from_env()


def epoch_totals(world: World, sums: dict[str, Tensor], seen: int,
                 device: torch.device) -> tuple[dict[str, float], int]:
    """An epoch's loss sums and image count over all ranks, on the host (a sync; a collective)."""
    if not world.distributed:
        return {k: v.item() for k, v in sums.items()}, seen
    import torch

    names = sorted(sums)
    packed = torch.stack([sums[k].float() for k in names] + [torch.tensor(float(seen), device=device)])
    total = world.total(packed).tolist()
    return dict(zip(names, total[:-1])), int(round(total[-1]))


def gather(world: World, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
