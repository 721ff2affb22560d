"""Pieces the built-in cells share: per-gate layer norm, zoneout, weight splitting."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GateNorm(nn.Module):
    """Layer normalisation of each gate block of a concatenated pre-activation.

    ``sizes`` are the widths of the blocks (e.g. ``[d_h, d_h, d_h, d_h, d_r]``); each is
    normalised on its own with its own gain and bias (Ba et al., 2016).
    """

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = [size for size in sizes]
        self.norms = nn.ModuleList(nn.LayerNorm(size) if size > 0 else nn.Identity() for size in sizes)

    def forward(self, x: Tensor) -> Tensor:
        blocks = x.split(self.sizes, dim=-1)
        return torch.cat([norm(block) for norm, block in zip(self.norms, blocks)], dim=-1)


def zoneout(previous: Tensor, new: Tensor, rate: float, training: bool) -> Tensor:
    """Zoneout (Krueger et al., 2016): each unit keeps its previous value with probability ``rate``.

    In evaluation the expectation ``rate * previous + (1 - rate) * new`` is used.
    """
    if rate == 0.0:
        return new
    if training:
        keep = torch.rand_like(new) < rate
        return torch.where(keep, previous, new)
    return rate * previous + (1.0 - rate) * new


def split_input_weight(linear: nn.Linear, input_size: int) -> tuple[Tensor, Tensor]:
    """Split a Linear over ``[x, rest]`` into its ``x`` columns and its ``rest`` columns, transposed.

    Done once per chunk: the ``x`` columns ``[out, input_size]`` serve one matrix product
    over all steps (``project_inputs``); the recurrent columns come back as a contiguous
    ``[rest, out]`` matrix for ``torch.addmm(bias, rest, w)`` at every step. Slicing (and
    transposing) the weight at every step instead would make every step's backward
    scatter a full-size, strided gradient into the weight.
    """
    return linear.weight[:, :input_size], linear.weight[:, input_size:].t().contiguous()


def project_inputs(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, ...]:
    """``x W^T + b`` for all steps as one matrix product, split into T tensors ``[B, F]``.

    The split is one ``unbind``: indexing the projection at every step instead would make
    every step's backward allocate a gradient of the whole chunk.
    """
    return nn.functional.linear(x.transpose(0, 1), weight, bias).unbind(0)
