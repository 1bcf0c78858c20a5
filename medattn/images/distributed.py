"""torch DDP under torchrun for ``medattn train image``: process group, exact sharding,
gathering.

``torchrun --nproc_per_node N $(which medattn) train image ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on
CUDA, gloo on CPU) and gives each process its device (``cuda:LOCAL_RANK`` when CUDA is used).

Validation shards the samples without padding (rank r takes samples r, r + N, ...), unlike
``DistributedSampler``, which repeats samples to even out the shards and so counts some
twice; predictions are gathered and put back in dataset order, and confusion matrices are
summed, so every sample counts exactly once and the metrics equal one process's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "broadcast_buffers", "gather_in_order", "setup", "shard", "sum_across"]


@dataclass
class World:
    """This process's place: ``rank`` of ``size`` processes; rank 0 writes the files."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    #: Whether :func:`setup` created the process group (and :func:`teardown` may end it).
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; the device this rank uses."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")),
                  owns_group=not dist.is_initialized())
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if world.owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def teardown(world: World) -> None:
    """End the process group if :func:`setup` started it (a caller's group stays)."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(length: int, world: World) -> list[int]:
    """This rank's sample indices, without padding."""
    return list(range(world.rank, length, world.size))


def gather_in_order(indices: list[int], values: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's rows of ``values`` (one per index), in index order (CPU tensors)."""
    values = values.cpu()
    if not world.distributed:
        order = torch.tensor(indices).argsort()
        return values[order]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, (indices, values))
    all_indices = [i for part, _ in gathered for i in part]
    stacked = torch.cat([v for _, v in gathered])
    return stacked[torch.tensor(all_indices).argsort()]


def sum_across(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (in place for distributed runs)."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart between ranks
    with plain BatchNorm), so that validation and the saved checkpoint agree."""
    if world.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
