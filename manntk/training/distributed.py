"""Where a run computes: the device, and distributed data parallel under ``torchrun``
(process group, ranks and reductions)."""

from __future__ import annotations

import os

import attrs
import torch
import torch.distributed as dist

from manntk.config import ConfigError, UsageError


@attrs.frozen
class Distributed:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 logs and saves).
        world_size: number of processes.
        local_rank: rank on this machine (picks the CUDA device).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_type: str) -> "Distributed":
        """Join the ``torchrun`` job described by the environment (a single process otherwise).

        Uses NCCL on CUDA and gloo on CPU.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def rows(self, batch_size: int) -> tuple[int, int]:
        """This rank's rows ``[start, stop)`` of a global batch of ``batch_size``; a batch that
        does not split evenly is a [`ConfigError`][manntk.config.ConfigError] (the same on every rank)."""
        if batch_size % self.world_size:
            raise ConfigError([
                f"train.batch_size ({batch_size}) must be divisible by the number of processes ({self.world_size}): "
                f"give a multiple of {self.world_size} @ $.train.batch_size"
            ])
        share = batch_size // self.world_size
        return self.rank * share, (self.rank + 1) * share

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes."""
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def from_main(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's ``values`` on every process (``values`` themselves in a single process)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is a
    [`UsageError`][manntk.config.UsageError]."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("device cuda was asked for (train.device, or --device) but no CUDA device is available: use auto or cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
