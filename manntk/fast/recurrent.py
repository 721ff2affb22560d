"""Matrix products applied at every time step, with one weight gradient per chunk.

A recurrent weight ``W`` is applied at each of the T steps of a chunk. Plain autograd
gives every step its own weight-gradient product ``u_t^T g_t`` and then adds it to the
running sum: a full-size temporary and an extra pass over it, T times, and the product's
inner dimension is only the batch size. [`RecurrentWeight`][manntk.fast.recurrent.RecurrentWeight]
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
gradient itself. Fused steps that keep their inputs where ``step_inputs`` says
(``RecurrentWeight(..., steps=T)``) go further: the gradient is summed over groups of
steps, one product with inner dimension G * B per group instead of G products.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

SUM_IN_PLACE_FROM = 1 << 17
"""Recurrent columns with at least this many elements sum their weight gradient in place
(and, in float32 on a CPU, are packed for MKL: `RecurrentWeight.joined_product`)."""

_MKL_PACKING = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")

PACK_FROM_BATCH = 32
"""Products with at least this many rows (the batch) run on columns packed for MKL. MKL's
packed copy carries a fixed ~9 MB on top of the weight (a ``[512, 288]`` block packs into
2.3 M floats), and below this batch the packing cost more than it saved: at batch 16
ARMIN 128-256, the NTM-style model and their inference were 3-13% slower packed (2-core
Xeon, one and two threads); at 32 and 128 packing gained 3-5% with two threads and was
level with one."""

GROUP_BYTES = 16 << 20
"""The most bytes of step gradients that one grouped weight-gradient product takes (16 MiB)."""


class _StepGroups:
    """Steps' joined inputs and gradients side by side, so that a group of G steps adds its
    weight gradient in one product (``[in_rec, G B] x [G B, out]``) instead of G products
    whose inner dimension is the batch.

    A step's inputs go into its group's buffer in the forward pass. Backward, each step's
    gradient is copied into one ``[G, B, out]`` buffer that the groups share in turn (at
    most ``GROUP_BYTES``, so that glibc reuses it from the heap instead of mapping fresh
    pages); when a group's last gradient is in, its product is added to the sum. A step
    of a group already added, or of another group than the one being filled, is not
    waited for: the group being filled is added with the steps it has, and later steps
    add their own products.
    """

    __slots__ = ("added", "grads", "inputs", "open", "out", "size", "steps", "stored")

    def __init__(self, steps: int, out: int) -> None:
        self.steps, self.out = steps, out
        self.size = 1  # steps per group, set from the batch at the first step
        self.inputs: dict[int, Tensor] = {}  # group -> [steps in it, B, in_rec]
        self.grads: Tensor | None = None  # [size, B, out]
        self.open: int | None = None  # the group whose gradients are in `grads`
        self.stored: list[int] = []  # their rows
        self.added: set[int] = set()

    def inputs_of(self, t: int, like: Tensor, width: int) -> Tensor:
        """The ``[B, width]`` slot of step ``t``'s inputs (``like``: a ``[B, ...]`` tensor of the step)."""
        batch = like.shape[0]
        if not self.inputs:
            self.size = max(1, GROUP_BYTES // (batch * self.out * like.element_size()))
        group, row = divmod(t, self.size)
        if group not in self.inputs:
            self.inputs[group] = like.new_empty(min(self.size, self.steps - group * self.size), batch, width)
        return self.inputs[group][row]

    def add(self, total: Tensor, t: int, grad: Tensor) -> None:
        """Take step ``t``'s gradient ``[B, out]``; add a group's product to ``total`` once it is complete."""
        group, row = divmod(t, self.size)
        self.enter(group, total)
        if group in self.added:
            total.addmm_(self.inputs[group][row].t(), grad)
            return
        slot = self.slot(t, grad)
        if slot.data_ptr() != grad.data_ptr():  # not written in place
            slot.copy_(grad)
        self.stored.append(row)
        self.open = group
        if len(self.stored) == len(self.inputs[group]):
            self.flush(total)

    def slot(self, t: int, like: Tensor) -> Tensor:
        """Step ``t``'s row of the shared gradient buffer (``like``: a ``[B, out]`` tensor)."""
        if self.grads is None:
            self.grads = like.new_empty(self.size, *like.shape)
        return self.grads[t % self.size]

    def enter(self, group: int, total: Tensor) -> None:
        """Before a step of ``group``: add the open group to ``total`` if it is another one."""
        if self.open is not None and self.open != group:
            self.flush(total)

    def flush(self, total: Tensor) -> None:
        """Add the open group's product (with the steps it has) to ``total``."""
        assert self.open is not None and self.grads is not None
        inputs = self.inputs[self.open]
        if len(self.stored) == len(inputs):
            count = len(inputs) * inputs.shape[1]
            total.addmm_(inputs.view(count, -1).t(), self.grads[: len(inputs)].view(count, -1))
        else:
            for row in self.stored:
                total.addmm_(inputs[row].t(), self.grads[row])
        self.added.add(self.open)
        self.open, self.stored = None, []

    def restart(self) -> None:
        """Forget what was added: a second backward pass sums again."""
        self.added.clear()
        self.open, self.stored = None, []


class _GradientSum:
    """The weight gradient of one chunk, summed over its steps (shared by its nodes).

    Kept as one contiguous ``[in_rec, out]`` sum, the layout of the transposed columns the
    steps use (row blocks of it are contiguous too): an ``addmm_`` into a column slice of the
    ``[out, in]`` weight would go through a temporary copy at every step.
    """

    __slots__ = ("columns", "groups", "shape", "sizes", "total")

    def __init__(self, shape: torch.Size, columns: tuple[int, int], sizes: tuple[int, ...]) -> None:
        self.shape, self.columns, self.sizes = shape, columns, sizes
        self.total: Tensor | None = None
        self.groups: _StepGroups | None = None

    def add(self, grad: Tensor, inputs: Sequence[Tensor]) -> None:
        """Add one step's products ``u_i^T grad`` to the rows of each block."""
        for rows, value in zip(self._sum(grad).split(self.sizes), inputs, strict=True):
            rows.addmm_(value.t(), grad)

    def add_joined(self, grad: Tensor, joined: Tensor) -> None:
        """Add ``[u_1, ..., u_k]^T grad`` for the blocks' inputs side by side (one product)."""
        self._sum(grad).addmm_(joined.t(), grad)

    def add_step(self, t: int, grad: Tensor) -> None:
        """Add step ``t``'s gradient, whose inputs are in ``groups``."""
        assert self.groups is not None
        self.groups.add(self._sum(grad), t, grad)

    def step_slot(self, t: int, like: Tensor) -> Tensor | None:
        """Where step ``t``'s gradient can be written for ``add_step``, or ``None`` (its group
        was added already); adds the group being filled when ``t`` is of another."""
        groups = self.groups
        assert groups is not None
        group = t // groups.size
        groups.enter(group, self._sum(like))
        return None if group in groups.added else groups.slot(t, like)

    def _sum(self, like: Tensor) -> Tensor:
        if self.total is None:
            self.total = like.new_zeros(self.columns[1] - self.columns[0], self.shape[0])
        return self.total

    def take(self, grad: Tensor | None) -> Tensor | None:
        """The ``[out, in]`` weight gradient: the steps' sum plus ``grad`` (the columns' gradient
        from uses outside step products); then a fresh start (a second backward sums again)."""
        if self.groups is not None:
            if self.groups.open is not None:
                self.groups.flush(self._sum(self.groups.grads))
            self.groups.restart()
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
        ctx.gradient, ctx.weight = gradient, weight
        ctx.base_shape = None if base is None else base.shape
        ctx.save_for_backward(rows, *inputs)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        _, *inputs = ctx.saved_tensors  # the rows are saved so that autograd catches a weight changed in place
        needs = ctx.needs_input_grad
        grad_inputs: tuple[Tensor | None, ...] = (None,) * len(inputs)
        if any(needs[4:]):  # one product for all the blocks: [B, out] x [out, in_rec]
            grad_inputs = tuple(ctx.weight.gradient_product(grad).split(ctx.gradient.sizes, dim=1))
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
        steps: the chunk's length, for fused steps that keep their inputs in
            ``step_inputs``: the weight gradient is then summed over groups of steps.
    """

    def __init__(
        self, weight: Tensor, start: int, sizes: Sequence[int], sum_in_place: bool | None = None, steps: int | None = None
    ) -> None:
        stop = start + sum(sizes)
        if stop > weight.shape[1]:
            raise ValueError(f"blocks {list(sizes)} from column {start} pass the weight's {weight.shape[1]} columns")
        self._gradient = _GradientSum(weight.shape, (start, stop), tuple(sizes))
        self.rows = weight.detach()[:, start:stop]
        """``W[:, a:b]`` outside autograd, for the backward's ``grad @ rows`` (MKL runs the
        plain ``[out, in_rec]`` layout 15% faster than the transposed columns)."""
        self._packed: Tensor | None = None  # rows packed for joined_product
        self._packed_columns: Tensor | None = None  # columns packed for gradient_product
        cpu_float32 = weight.dtype == torch.float32 and weight.device.type == "cpu"
        self._packs = _MKL_PACKING and cpu_float32 and self.rows.numel() >= SUM_IN_PLACE_FROM
        if torch.compiler.is_compiling():  # the compiler sums the weight gradient itself
            self.columns: Tensor = weight[:, start:stop].t()
            self.sum_in_place = False
            return
        self.columns = _ChunkColumns.apply(weight, self._gradient)
        if sum_in_place is None:
            sum_in_place = self.columns.numel() >= SUM_IN_PLACE_FROM
        self.sum_in_place = sum_in_place and not torch.is_autocast_enabled(weight.device.type)
        if steps is not None and self.sum_in_place and torch.is_grad_enabled() and weight.requires_grad:
            self._gradient.groups = _StepGroups(steps, weight.shape[0])

    @classmethod
    def of(cls, linear: torch.nn.Linear) -> RecurrentWeight:
        """All the columns of ``linear`` as one block: ``product(linear.bias, u)`` is ``linear(u)``."""
        return cls(linear.weight, 0, [linear.in_features])

    def step_inputs(self, t: int, like: Tensor) -> Tensor | None:
        """Where step ``t`` of a fused step puts its joined inputs ``[B, in_rec]``, or ``None``.

        With ``steps`` given (and ``sum_in_place``, in a pass that records gradients) the
        steps' inputs are kept in groups, so that ``add_step_gradient`` can sum a group's
        weight gradient in one product (``like``: any ``[B, ...]`` tensor of the step).
        """
        groups = self._gradient.groups
        return None if groups is None else groups.inputs_of(t, like, self.rows.shape[1])

    def step_gradient(self, t: int, like: Tensor) -> Tensor | None:
        """Where step ``t`` of a fused step may write its gradient ``[B, out]`` before
        handing it to ``add_step_gradient`` (saves a copy), or ``None``.

        ``like``: a ``[B, out]`` tensor of the step's dtype and device.
        """
        return None if self._gradient.groups is None else self._gradient.step_slot(t, like)

    def add_step_gradient(self, grad: Tensor, inputs: Tensor, t: int | None = None) -> None:
        """Add one step's weight gradient ``inputs^T grad`` to the chunk's in-place sum.

        For a fused step that applied ``columns`` itself; only when ``sum_in_place``.
        ``inputs``: the blocks side by side, ``[B, in_rec]`` (step ``t``'s ``step_inputs``
        when the weight keeps them: the gradient then joins its group's product).
        """
        if t is not None and self._gradient.groups is not None:
            self._gradient.add_step(t, grad)
        else:
            self._gradient.add_joined(grad, inputs)

    def joined_product(self, joined: Tensor) -> Tensor:
        """``joined @ columns`` (``[B, in_rec] -> [B, out]``) outside autograd, for steps that
        compute their own gradients.

        In float32 on a CPU the columns are packed for MKL at the first step and the steps
        use the packed copy: MKL's sgemm otherwise packs its right-hand side again at every
        call, 0.7 of the 5.1 ms of a ``[128, 1128] x [1128, 2500]`` product (ARMIN 500's
        ``W_go``; 2-core Xeon). Only for large columns (``SUM_IN_PLACE_FROM``) and batches
        of ``PACK_FROM_BATCH`` rows or more: packing takes milliseconds and memory, which
        small batches do not win back.
        """
        if not self._packable(joined):
            return joined.mm(self.columns)
        if self._packed is None:
            self._packed = torch.ops.mkl._mkl_reorder_linear_weight(self.rows, joined.shape[0])
        return torch.ops.mkl._mkl_linear(joined, self._packed, self.rows, None, joined.shape[0])

    def gradient_product(self, grad: Tensor, into: Tensor | None = None) -> Tensor:
        """``grad @ W[:, a:b]`` (``[B, out] -> [B, in_rec]``) outside autograd: the inputs'
        gradient of a step product; added to ``into`` (and ``into`` returned) when given.

        The plain product uses ``rows``. Where ``joined_product`` packs and torch runs more
        than one thread, the columns are packed too (at the first backward step) and serve
        as the right-hand side: with two threads MKL runs ``[128, 2500] x [2500, 1128]`` in
        2.3 ms packed against 2.6-3.1 unpacked (2-core Xeon), and a training iteration of
        ARMIN 500 takes 15 ms less; with one thread the product alone is level and the
        iteration 35 ms slower (the packed copy is one more 11 MB operand in cache).
        """
        if not (self._packable(grad) and torch.get_num_threads() > 1):
            return grad.mm(self.rows) if into is None else into.addmm_(grad, self.rows)
        columns = self.columns.detach()
        if self._packed_columns is None:
            self._packed_columns = torch.ops.mkl._mkl_reorder_linear_weight(columns, grad.shape[0])
        product = torch.ops.mkl._mkl_linear(grad, self._packed_columns, columns, None, grad.shape[0])
        return product if into is None else into.add_(product)

    def _packable(self, operand: Tensor) -> bool:
        """Whether a product with ``operand`` ``[B, ...]`` runs on columns packed for MKL."""
        return self._packs and operand.shape[0] >= PACK_FROM_BATCH and operand.dtype == torch.float32

    def __call__(self, base: Tensor | None, *inputs: Tensor) -> Tensor:
        """``base + sum_i inputs[i] W_i^T``; ``base`` (``[B, out]`` or broadcastable, e.g. a bias) may be ``None``."""
        if len(inputs) != len(self._gradient.sizes):
            raise ValueError(f"expected {len(self._gradient.sizes)} inputs (one per block), got {len(inputs)}")
        if self.sum_in_place:
            return _StepProduct.apply(self, base, self.columns, self.rows, *inputs)
        joined = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)
        return torch.mm(joined, self.columns) if base is None else torch.addmm(base, joined, self.columns)
