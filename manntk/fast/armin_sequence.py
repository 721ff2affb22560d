"""A whole chunk of an ARMIN layer as one C++ forward and one C++ backward (CPU).

The engine's step costs about 40 PyTorch operations forward and as many autograd nodes
backward, each a few microseconds of Python and dispatch: at batch 1, the paper's protocol
for the algorithmic tasks, that overhead is nearly all of the time (a copy sequence of 56
steps took ~18 ms forward and ~22 ms backward). Here the chunk's recurrence runs in C++
(``armin_sequence.cpp``): per step four matrix products over the batch and one pass over
each row between them, and backward the same in reverse, with every weight's gradient added
in one product over the whole chunk at the end.

It covers one composition, the ARMIN layer: the ``armin`` cell (without layer norm or
zoneout), ``auto`` addressing (soft reads; hard reads: straight-through Gumbel-softmax in
training, the argmax row in evaluation) and the ``overwrite`` write (``h_t``, or its projection ``W_v``, or ``value:
input_and_hidden``; replacement by slot, argmax or the soft blend; fill-empty-first). The
numbers are those of the plain path up to float rounding (``tests/test_armin_sequence.py``
compares outputs, states and gradients with it and gradchecks the operator in float64).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from manntk.fast.armin_fused import extension, kernel_runs_on
from manntk.state import State



class Options(NamedTuple):
    """The chunk's settings: the operator's arguments after the tensors, in its order, then
    whether the address passes a gradient (soft reads, and hard reads in training,
    straight-through; not an argmax read in evaluation, as on the discrete path)."""

    tau: float
    forget_bias: float
    squash: bool
    read_output: bool
    hard: bool
    argmax_write: bool
    fill: bool
    address_gradient: bool


class _ArminSequence(torch.autograd.Function):
    """``(options, keep, in_place, x [B, T, d_i], h_0, M_0, filled_0, noise [T, B, N], W_s, b_s, W_ig,
    b_ig, W_go, b_go, W_v, b_v) -> (o [B, T, d_o], h_T, M_T, filled_T)``, batch first as the
    engine's layers; ``W_v`` and ``b_v`` are ``None`` without a projection. ``keep``: a backward may come; without one the kernel holds
    a single step of what only backward reads, and with ``in_place`` (the caller gives the
    state up) writes into ``M_0`` instead of a copy.
    """

    @staticmethod
    def forward(ctx: Any, options: Options, keep: bool, in_place: bool, x: Tensor, h0: Tensor, m0: Tensor, filled0: Tensor,
                noise: Tensor | None, *weights: Tensor | None) -> tuple[Tensor, ...]:
        W_s, _, W_ig, _, W_go, _, W_v, _ = weights
        out, h, memory, filled, *saved = extension().sequence_forward(x, h0, m0, filled0, *weights, noise, *options[:-1], keep, in_place)
        ctx.options = options
        if keep:  # a copy of M_T of its own: the caller may change the returned state in place before backward
            ctx.save_for_backward(memory.clone(), W_s, W_ig, W_go, W_v, *saved)
        ctx.mark_non_differentiable(filled)
        ctx.set_materialize_grads(False)
        return out, h, memory, filled

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor | None, d_h: Tensor | None, d_memory: Tensor | None, _filled: None) -> tuple[Tensor | None, ...]:
        memory, W_s, W_ig, W_go, W_v, *saved = ctx.saved_tensors
        options: Options = ctx.options
        grads = extension().sequence_backward(d_out, d_h, d_memory, memory, W_s, W_ig, W_go, W_v, *saved, options.tau, options.squash,
                                              options.read_output, options.hard, options.address_gradient)
        d_x, d_h0, d_m0, d_W_s, d_b_s, *d_cell, d_W_v, d_b_v = grads
        if not options.address_gradient:  # an argmax read: W_s gets no gradient, as on the discrete path
            d_W_s = d_b_s = None
        if W_v is None:  # no projection: v = h_t
            d_W_v = d_b_v = None
        return None, None, None, d_x, d_h0, d_m0, None, None, d_W_s, d_b_s, *d_cell, d_W_v, d_b_v


class ArminSequence:
    """The chunk kernel of a layer (``layer.cell``, ``.addressing``, ``.write``, read at every
    chunk, so parts swapped after the build are seen); [`for_parts`][manntk.fast.armin_sequence.ArminSequence.for_parts]
    says whether parts are the composition it covers."""

    read_orders = ("before",)
    """The step orders it implements: the read before the cell only."""

    @staticmethod
    def covers(cell: Any, addressing: Any, write: Any) -> bool:
        """Whether these parts are the ARMIN layer the kernel implements."""
        from manntk.addressing.auto import AutoAddressing
        from manntk.cells.armin import ArminCell
        from manntk.writes.overwrite import Overwrite

        return type(cell) is ArminCell and type(addressing) is AutoAddressing and type(write) is Overwrite and not cell.config.layer_norm

    @classmethod
    def for_parts(cls, cell: Any, addressing: Any, write: Any) -> "ArminSequence | None":
        """The kernel for a layer of these parts, or ``None`` when they are not the ARMIN layer it covers."""
        return cls() if cls.covers(cell, addressing, write) else None

    def applies(self, layer: Any, x: Tensor) -> bool:
        """Whether the chunk ``x`` of ``layer`` can run here: the parts it covers, a CPU
        float32/float64 input outside ``torch.compile``, autocast and tracing (manntk's,
        ``torch.jit``'s), a cell without zoneout (which also changes evaluation: the
        expected state), and kernels that built. (In evaluation, hard reads are the argmax
        row and hard writes replace it, as on the engine's discrete path.)"""
        return (
            self.covers(layer.cell, layer.addressing, layer.write)
            and not layer.cell.config.zoneout
            and kernel_runs_on(x)
        )

    def __call__(self, layer: Any, x: Tensor, state: State, consume_state: bool = False) -> tuple[Tensor, State]:
        """``layer``'s chunk ``x`` ``[B, T, d_i]`` from ``state``: ``o`` ``[B, T, d_o]`` and the new
        state, as the plain path; ``consume_state`` as [`MemoryRNN`][manntk.engine.MemoryRNN]'s."""
        cell, addressing, write = layer.cell, layer.addressing, layer.write
        batch, steps = x.shape[0], x.shape[1]
        memory = state["memory"]
        noise = addressing.chunk_noise((steps, batch, memory.shape[1]), x)  # drawn as the plain path draws it
        fill = write.fill_empty_first
        filled = state["write"]["filled"] if fill else torch.zeros(batch, dtype=torch.long)
        options = Options(float(addressing.tau()), float(cell.config.forget_bias), cell.config.squash_state, cell.config.read_output,
                          addressing.hard, write.argmax, fill, address_gradient=addressing.training or not addressing.hard)
        projection = (write.W_v.weight, write.W_v.bias) if isinstance(write.W_v, torch.nn.Linear) else (None, None)
        weights = (addressing.W_s.weight, addressing.W_s.bias, cell.W_ig.weight, cell.W_ig.bias, cell.W_go.weight, cell.W_go.bias,
                   *projection)
        inputs = (x, state["cell"]["h"], memory, *(weight for weight in weights if weight is not None))
        keep = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in inputs)
        in_place = consume_state and memory.is_contiguous()
        out, h, memory, filled = _ArminSequence.apply(
            options, keep, in_place, x.contiguous(), state["cell"]["h"].contiguous(), memory.contiguous(), filled,
            None if noise is None else noise.contiguous(), *weights,
        )
        new_state = {"cell": {"h": h}, "addressing": state.get("addressing", {}), "write": {"filled": filled} if fill else {}, "memory": memory}
        return out, new_state
