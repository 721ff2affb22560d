"""Slot-memory primitives shared by the engine and the write policies.

Memory is ``M`` ``[B, slots, width]``; weights are ``w`` ``[B, slots]``; indices are
``[B]``. The weighted forms are differentiable; the ``*_`` index forms are the discrete
path: they touch one slot per row, so their cost does not grow with the slot count.
"""

from __future__ import annotations

import torch
from torch import Tensor


def read(memory: Tensor, weights: Tensor) -> Tensor:
    """``r = sum_i w_i M_i`` (eq. 10): ``[B, width]``."""
    return torch.bmm(weights.unsqueeze(1), memory).squeeze(1)


def read_index(memory: Tensor, index: Tensor) -> Tensor:
    """``r = M[b, index_b]``: the one-hot read as a gather, ``[B, width]``."""
    return memory[torch.arange(memory.shape[0], device=memory.device), index]


def overwrite(memory: Tensor, weights: Tensor, value: Tensor) -> Tensor:
    """``M_i <- (1 - w_i) M_i + w_i v``: replace the addressed slot with ``value`` ``[B, width]``."""
    w = weights.unsqueeze(-1)
    return memory * (1 - w) + w * value.unsqueeze(1)


def overwrite_index(memory: Tensor, index: Tensor, value: Tensor) -> Tensor:
    """``M[b, index_b] = v_b`` out of place and differentiable: the one-hot ``overwrite``
    without its three passes over the whole memory."""
    return memory.index_put((torch.arange(memory.shape[0], device=memory.device), index), value)


def overwrite_index_(memory: Tensor, index: Tensor, value: Tensor) -> Tensor:
    """``M[b, index_b] = v_b`` in place; returns ``memory``."""
    memory[torch.arange(memory.shape[0], device=memory.device), index] = value
    return memory


def erase_add(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """NTM write: ``M_i <- M_i * (1 - w_i e) + w_i a`` with ``e``, ``a`` ``[B, width]``."""
    w = weights.unsqueeze(-1)
    return memory * (1 - w * erase.unsqueeze(1)) + w * add.unsqueeze(1)


def fill_target(filled: Tensor, index: Tensor, slots: int) -> Tensor:
    """Fill-empty-first (paper, section 3.3): the slot to write, ``[B]``.

    While a row has empty slots (``filled < slots``) its write goes to slot ``filled``;
    afterwards to ``index``, the slot just read.
    """
    return torch.where(filled < slots, filled, index)


def fill_weights(filled: Tensor, weights: Tensor) -> Tensor:
    """Fill-empty-first on weights: one-hot at slot ``filled`` for rows still filling, else ``weights``."""
    slots = weights.shape[-1]
    empty = torch.nn.functional.one_hot(filled.clamp(max=slots - 1), slots).to(weights.dtype)
    return torch.where((filled < slots).unsqueeze(-1), empty, weights)
