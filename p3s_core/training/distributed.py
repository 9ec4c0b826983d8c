"""Data-parallel training across processes (torchrun): what DistributedDataParallel would do for the adapter.

The adapter is called through the U-Net's patches rather than through a ``forward``, so the gradient
averaging DDP does is done here by hand after every backward. Rank 0 logs and writes the files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistContext":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def broadcast_params(self, module: torch.nn.Module) -> None:
        if self.world_size > 1:
            import torch.distributed as dist
            for p in module.parameters():
                dist.broadcast(p.data, src=0)

    def average_grads(self, module: torch.nn.Module) -> None:
        """All-reduce and average the gradients of ``module`` (one flat buffer, one collective)."""
        if self.world_size <= 1:
            return
        import torch.distributed as dist
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        off = 0
        for g in grads:
            g.copy_(flat[off: off + g.numel()].view_as(g))
            off += g.numel()

    def mean(self, values: dict[str, float], device) -> dict[str, float]:
        """The mean of each value over the processes (the logged loss)."""
        if self.world_size <= 1:
            return values
        import torch.distributed as dist
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}
