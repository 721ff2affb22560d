"""Pieces the built-in cells share: per-gate layer norm, zoneout, weight splitting."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from manntk.fast.recurrent import RecurrentWeight


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


def split_input_weight(linear: nn.Linear, input_size: int, sizes: Sequence[int]) -> tuple[Tensor, RecurrentWeight]:
    """Split a Linear over ``[x, u_1, ..., u_k]`` into its ``x`` columns and its recurrent blocks.

    Done once per chunk: the ``x`` columns ``[out, input_size]`` serve one matrix product
    over all steps (``project_inputs``); the blocks of widths ``sizes`` come back as a
    [`RecurrentWeight`][manntk.fast.recurrent.RecurrentWeight] for ``product(base, u_1, ..., u_k)``
    at every step. Slicing the weight at every step instead would make every step's
    backward scatter a full-size gradient into the weight.
    """
    return linear.weight[:, :input_size], RecurrentWeight(linear.weight, input_size, sizes)


PROJECTION_PIECE_BYTES = 16 << 20
"""The largest input projection ``project_inputs`` makes in one product (16 MiB)."""


def project_inputs(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, ...]:
    """``x W^T + b`` for all steps in a few matrix products, split into T tensors ``[B, F]``.

    The split is one ``unbind`` per product: indexing the projection at every step instead
    would make every step's backward allocate a gradient of the whole chunk. The steps are
    projected in pieces of at most ``PROJECTION_PIECE_BYTES``: glibc serves blocks above
    32 MiB with a fresh ``mmap`` every time, whose first-touch page faults, in the
    projection and in its backward's ``stack`` of the steps' gradients, cost ARMIN 500
    (B 128, TBPTT 50: 64 MB per projection) 3-5% of its training time; smaller blocks are
    reused from the heap.
    """
    steps = x.transpose(0, 1)
    step_bytes = x.shape[0] * weight.shape[0] * x.element_size()
    piece = max(1, PROJECTION_PIECE_BYTES // max(step_bytes, 1))
    return tuple(step for chunk in steps.split(piece) for step in nn.functional.linear(chunk, weight, bias).unbind(0))
