"""Where this process stands among torchrun's ranks (one process of one without torchrun)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes run files, reports and summaries."""
        return self.rank == 0

    @property
    def tag(self) -> str:
        """The cache writer tag: ``w0`` for a single process, ``rank<r>`` under torchrun."""
        return f"rank{self.rank}" if self.world > 1 else "w0"

    def tags(self) -> set[str]:
        """The writer tags of this run, all ranks."""
        return {Ranks(r, self.world).tag for r in range(self.world)}

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def ranks_from_env(env: os._Environ | dict | None = None) -> Ranks:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; one process without them."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return Ranks(rank, world, local)


def join_process_group(device: torch.device) -> Ranks:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, nccl on GPU."""
    ranks = ranks_from_env()
    if ranks.world <= 1:
        return ranks
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), ranks.local_rank)
