"""Matrix products applied at every time step, with one weight gradient per chunk.

A recurrent weight ``W`` is applied at each of the T steps of a chunk. Plain autograd
gives every step its own weight-gradient product ``u_t^T g_t`` and then adds it to the
running sum: a full-size temporary and an extra pass over it, T times, and the product's
inner dimension is only the batch size. [`RecurrentWeight`][manntk.recurrent.RecurrentWeight]
sums the steps' products in place into one buffer (``addmm_``) and hands the sum to
autograd once, when the chunk's weight node runs. The steps' products use the columns in
two layouts made once per chunk, each the one MKL runs fastest: ``[in, out]`` (packed for
MKL in float32 on the CPU) forward, the weight's own ``[out, in]`` slice backward.

The numbers are those of ``torch.addmm(base, torch.cat(inputs, 1), W_cols.t())`` up to
float rounding: the base is added after the product, and the weight gradient's terms are
added in another order.

The summing costs a Python autograd node per step (tens of microseconds), which pays only
when the weight is large enough for a full-size add per step to cost more: from
``SUM_IN_PLACE_FROM`` elements (measured on a 2-core Xeon for batch 1 to 128: slower
below 128 x 1024 elements, 1.1-1.5x faster from 512 x 1024 on). Smaller weights take
the plain path: one ``addmm`` over the concatenated inputs, as does every product under
autocast (mixed precision casts per operation, which the in-place sum cannot follow), and
under ``torch.compile``, whose graphs cannot hold the shared sum and which plans the weight
gradient itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

SUM_IN_PLACE_FROM = 1 << 17
"""Recurrent columns with at least this many elements sum their weight gradient in place."""

_MKL_PACKING = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


class _GradientSum:
    """The weight gradient of one chunk, summed over its steps (shared by its nodes).

    Kept as one contiguous ``[in_rec, out]`` sum, the layout of the transposed columns the
    steps use (row blocks of it are contiguous too): an ``addmm_`` into a column slice of the
    ``[out, in]`` weight would go through a temporary copy at every step.
    """

    __slots__ = ("columns", "shape", "sizes", "total")

    def __init__(self, shape: torch.Size, columns: tuple[int, int], sizes: tuple[int, ...]) -> None:
        self.shape, self.columns, self.sizes = shape, columns, sizes
        self.total: Tensor | None = None

    def add(self, grad: Tensor, inputs: Sequence[Tensor]) -> None:
        """Add one step's products ``u_i^T grad`` to the rows of each block."""
        for rows, value in zip(self._sum(grad).split(self.sizes), inputs, strict=True):
            rows.addmm_(value.t(), grad)

    def add_joined(self, grad: Tensor, joined: Tensor) -> None:
        """Add ``[u_1, ..., u_k]^T grad`` for the blocks' inputs side by side (one product)."""
        self._sum(grad).addmm_(joined.t(), grad)

    def _sum(self, grad: Tensor) -> Tensor:
        if self.total is None:
            self.total = grad.new_zeros(self.columns[1] - self.columns[0], grad.shape[1])
        return self.total

    def take(self, grad: Tensor | None) -> Tensor | None:
        """The ``[out, in]`` weight gradient: the steps' sum plus ``grad`` (the columns' gradient
        from uses outside step products); then a fresh start (a second backward sums again)."""
        total, self.total = self.total, None
        if grad is not None:
            total = grad if total is None else total + grad
        if total is None:
            return None
        start, stop = self.columns
        whole = start == 0 and stop == self.shape[1]
        full = total.new_empty(self.shape) if whole else total.new_zeros(self.shape)
        transposed(total, out=full[:, start:stop])
        return full


TRANSPOSE_ROWS = 256
"""Rows of the weight transposed per copy when the columns are laid out for the steps."""


def transposed(matrix: Tensor, out: Tensor | None = None) -> Tensor:
    """``matrix.t().contiguous()`` (or copied into ``out``), in blocks of ``TRANSPOSE_ROWS`` rows on the CPU.

    One strided copy of a ``[2500, 1000]`` slice takes 15 ms on a 2-core Xeon (its writes
    jump by a whole row at every element); blocks of 256 rows keep the destination's lines
    in cache and take 1.7 ms. Other devices copy in one go.
    """
    if out is None:
        out = matrix.new_empty(matrix.shape[1], matrix.shape[0])
    if matrix.device.type != "cpu":
        return out.copy_(matrix.t())
    for start in range(0, matrix.shape[0], TRANSPOSE_ROWS):
        out[:, start : start + TRANSPOSE_ROWS].copy_(matrix[start : start + TRANSPOSE_ROWS].t())
    return out


class _ChunkColumns(torch.autograd.Function):
    """``W[:, a:b].t().contiguous()``; backward returns the steps' summed gradient."""

    @staticmethod
    def forward(ctx, weight: Tensor, gradient: _GradientSum) -> Tensor:
        ctx.gradient = gradient
        ctx.set_materialize_grads(False)
        start, stop = gradient.columns
        return transposed(weight[:, start:stop])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor | None) -> tuple[Tensor | None, None]:
        return ctx.gradient.take(grad), None


class _StepProduct(torch.autograd.Function):
    """``base + sum_i u_i W_i`` for one step; the weight gradient goes to the chunk's sum."""

    @staticmethod
    def forward(ctx, weight: RecurrentWeight, base: Tensor | None, columns: Tensor, rows: Tensor, *inputs: Tensor) -> Tensor:
        gradient = weight._gradient
        out = weight.joined_product(inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1))
        if base is not None:
            out.add_(base)
        ctx.gradient = gradient
        ctx.base_shape = None if base is None else base.shape
        ctx.save_for_backward(rows, *inputs)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        rows, *inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_inputs: tuple[Tensor | None, ...] = (None,) * len(inputs)
        if any(needs[4:]):  # one product for all the blocks: [B, out] x [out, in_rec]
            grad_inputs = tuple(grad.mm(rows).split(ctx.gradient.sizes, dim=1))
        if needs[2]:
            ctx.gradient.add(grad, inputs)
        grad_base = None
        if needs[1]:
            grad_base = grad if ctx.base_shape == grad.shape else grad.sum_to_size(ctx.base_shape)
        return (None, grad_base, None, None, *grad_inputs)


class RecurrentWeight:
    """Column blocks of a weight, prepared once per chunk for products at every step.

    ``RecurrentWeight(linear.weight, start, [d_h, d_r])`` covers the columns
    ``start .. start + d_h + d_r`` of the ``[out, in]`` weight; ``product(base, h, r)`` is
    ``base + h W_h^T + r W_r^T`` (``[B, out]``), the same as ``torch.addmm(base,
    torch.cat([h, r], 1), W[:, start:start + d_h + d_r].t())``. Make a new one per chunk
    (in a part's ``prepare``): its steps' weight gradients are summed together.

    Args:
        weight: ``[out, in]``, usually ``linear.weight``.
        start: the first column of the first block.
        sizes: the widths of the blocks, in the order of the inputs at each step.
        sum_in_place: sum the steps' weight gradients in place; ``None``: when the columns
            have at least ``SUM_IN_PLACE_FROM`` elements. Never under autocast (made inside
            the same autocast context as the steps that use it, as in ``prepare``).
    """

    def __init__(self, weight: Tensor, start: int, sizes: Sequence[int], sum_in_place: bool | None = None) -> None:
        stop = start + sum(sizes)
        if stop > weight.shape[1]:
            raise ValueError(f"blocks {list(sizes)} from column {start} pass the weight's {weight.shape[1]} columns")
        self._gradient = _GradientSum(weight.shape, (start, stop), tuple(sizes))
        self.rows = weight.detach()[:, start:stop]
        self._packed: Tensor | None = None
        """``W[:, a:b]`` outside autograd, for the backward's ``grad @ rows`` (MKL runs the
        plain ``[out, in_rec]`` layout 15% faster than the transposed columns)."""
        if torch.compiler.is_compiling():  # the compiler sums the weight gradient itself
            self.columns: Tensor = weight[:, start:stop].t()
            self.sum_in_place = False
            return
        self.columns = _ChunkColumns.apply(weight, self._gradient)
        if sum_in_place is None:
            sum_in_place = self.columns.numel() >= SUM_IN_PLACE_FROM
        self.sum_in_place = sum_in_place and not torch.is_autocast_enabled(weight.device.type)

    @classmethod
    def of(cls, linear: torch.nn.Linear) -> RecurrentWeight:
        """All the columns of ``linear`` as one block: ``product(linear.bias, u)`` is ``linear(u)``."""
        return cls(linear.weight, 0, [linear.in_features])

    def add_step_gradient(self, grad: Tensor, inputs: Tensor) -> None:
        """Add one step's weight gradient ``inputs^T grad`` to the chunk's in-place sum.

        For a fused step that applied ``columns`` itself (``inputs``: the blocks
        concatenated, ``[B, in_rec]``); only when ``sum_in_place``.
        """
        self._gradient.add_joined(grad, inputs)

    def joined_product(self, joined: Tensor) -> Tensor:
        """``joined @ columns`` (``[B, in_rec] -> [B, out]``) outside autograd, for steps that
        compute their own gradients.

        In float32 on a CPU the columns are packed for MKL at the first step and the steps
        use the packed copy: MKL's sgemm otherwise packs its right-hand side again at every
        call, 0.8 of the 4.8 ms of ARMIN 500's ``W_go`` product per step (2-core Xeon).
        """
        if not (_MKL_PACKING and joined.dtype == torch.float32 and joined.device.type == "cpu"):
            return joined.mm(self.columns)
        if self._packed is None:
            self._packed = torch.ops.mkl._mkl_reorder_linear_weight(self.rows, joined.shape[0])
        return torch.ops.mkl._mkl_linear(joined, self._packed, self.rows, None, joined.shape[0])

    def __call__(self, base: Tensor | None, *inputs: Tensor) -> Tensor:
        """``base + sum_i inputs[i] W_i^T``; ``base`` (``[B, out]`` or broadcastable, e.g. a bias) may be ``None``."""
        if len(inputs) != len(self._gradient.sizes):
            raise ValueError(f"expected {len(self._gradient.sizes)} inputs (one per block), got {len(inputs)}")
        if self.sum_in_place:
            return _StepProduct.apply(self, base, self.columns, self.rows, *inputs)
        joined = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)
        return torch.mm(joined, self.columns) if base is None else torch.addmm(base, joined, self.columns)
