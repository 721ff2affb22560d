"""A whole chunk of an NTM-style layer as one C++ forward and one C++ backward (CPU).

The engine's step of the NTM-style layer (LSTM controller, an NTM read head, an erase/add
write with its own NTM head) costs about 100 PyTorch operations forward and as many
autograd nodes backward, each a few microseconds of Python and dispatch: at batch 1, the
paper's protocol for the algorithmic tasks, that overhead is nearly all of the time. Here
the chunk's recurrence runs in C++ (``ntm_sequence.cpp``), as the ARMIN chunk kernel
([`armin_sequence`][manntk.fast.armin_sequence]) does for ARMIN layers: per step four
matrix products over the batch (read head, gates, write head, erase/add) and one pass
over each row between them; backward the same in reverse, with each head's
intermediate values recomputed from its kept projection and every weight's gradient
added in one product over the whole chunk at the end.

It covers one composition: the ``lstm`` cell (without layer norm or zoneout; any
``forget_bias``; ``learned_state`` only changes the initial state, an input here), the
``ntm`` addressing and the ``erase_add`` write whose head is ``ntm`` too (every
``NtmConfig`` option: interpolation on or off, shifts ``-k..k`` for any ``k``,
sharpening on or off, ``eps``; ``add: tanh`` or ``linear``), in both step orders
(``model.read: before`` and ``after``). The numbers are those of the plain path up to
float rounding (``tests/test_ntm_sequence.py`` compares outputs, states and gradients
with it and gradchecks the operator in float64).

Speed (``python benchmarks/ntm_batch1.py``: training steps of
``recipes/algorithmic/copy/ntm.yaml`` at batch 1, forward, backward and Adam, one thread,
2-core AMD EPYC, machine shared): 5.5 steps/s on the plain path, 78 with the kernel (14x);
``ntm_pytorch_ntm.yaml`` (read after, shorter sequences) 24.5 and 199 (``docs/benchmarks.md``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from manntk.fast.armin_fused import extension, kernel_runs_on
from manntk.state import State



class Options(NamedTuple):
    """The chunk's settings: the operator's arguments after the tensors, in its order."""

    forget_bias: float
    after: bool
    read_interpolation: bool
    read_shift: int
    read_sharpen: bool
    read_eps: float
    write_interpolation: bool
    write_shift: int
    write_sharpen: bool
    write_eps: float
    linear_add: bool


class _NtmSequence(torch.autograd.Function):
    """``(options, keep, in_place, x [T, B, d_i], h_0, c_0, w^r_0, w^w_0, M_0, r_0, W, b, W_r,
    b_r, W_w, b_w, W_ea, b_ea) -> (o [T, B, d_h + D], h_T, c_T, w^r_T, w^w_T, M_T, r_T)``;
    ``r_0`` is ``None`` when the layer reads before the cell. ``keep``: a backward may come;
    without one the kernel holds a single step of what only backward reads, and with
    ``in_place`` (the caller gives the state up) writes into ``M_0`` instead of a copy.
    """

    @staticmethod
    def forward(ctx: Any, options: Options, keep: bool, in_place: bool, x: Tensor, h0: Tensor, c0: Tensor, wr0: Tensor,
                ww0: Tensor, m0: Tensor, read0: Tensor | None, *weights: Tensor) -> tuple[Tensor, ...]:
        W, _, W_r, _, W_w, _, W_ea, _ = weights
        out, h, c, wr, ww, memory, read, *saved = extension().ntm_forward(x, h0, c0, wr0, ww0, m0, read0, *weights, *options, keep, in_place)
        ctx.options = options
        if keep:
            ctx.save_for_backward(W, W_r, W_w, W_ea, c0, wr0, ww0, *saved)
        ctx.set_materialize_grads(False)
        return out, h, c, wr, ww, memory, read

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor | None, d_h: Tensor | None, d_c: Tensor | None, d_wr: Tensor | None, d_ww: Tensor | None,
                 d_memory: Tensor | None, d_read: Tensor | None) -> tuple[Tensor | None, ...]:
        options: Options = ctx.options
        d_x, d_h0, d_c0, d_wr0, d_ww0, d_m0, d_read0, *d_weights = extension().ntm_backward(
            d_out, d_h, d_c, d_wr, d_ww, d_memory, d_read, *ctx.saved_tensors, *options[1:]
        )
        # the previous weights reach the chunk only through interpolation, r_0 only when reading after
        d_wr0 = d_wr0 if options.read_interpolation else None
        d_ww0 = d_ww0 if options.write_interpolation else None
        d_read0 = d_read0 if options.after else None
        return None, None, None, d_x, d_h0, d_c0, d_wr0, d_ww0, d_m0, d_read0, *d_weights


class NtmSequence:
    """The chunk kernel of an NTM-style layer (``layer.cell``, ``.addressing``, ``.write``,
    read at every chunk, so parts swapped after the build are seen); [`for_parts`][manntk.fast.ntm_sequence.NtmSequence.for_parts]
    says whether parts are the composition it covers."""

    read_orders = ("before", "after")
    """The step orders it implements (``model.read``): both."""

    @staticmethod
    def covers(cell: Any, addressing: Any, write: Any) -> bool:
        """Whether these parts are the NTM-style layer the kernel implements."""
        from manntk.addressing.ntm import NtmAddressing
        from manntk.cells.lstm import LstmCell
        from manntk.writes.erase_add import EraseAdd

        return (
            type(cell) is LstmCell
            and not cell.config.layer_norm
            and type(addressing) is NtmAddressing
            and type(write) is EraseAdd
            and type(write.head) is NtmAddressing
        )

    @classmethod
    def for_parts(cls, cell: Any, addressing: Any, write: Any) -> "NtmSequence | None":
        """The kernel for a layer of these parts, or ``None`` when they are not the NTM-style layer it covers."""
        return cls() if cls.covers(cell, addressing, write) else None

    def applies(self, layer: Any, x: Tensor) -> bool:
        """Whether the chunk ``x`` of ``layer`` can run here: the parts it covers, a CPU
        float32/float64 input outside ``torch.compile``, autocast and tracing (manntk's,
        ``torch.jit``'s), a cell without zoneout (which also changes evaluation: the
        expected state), and kernels that built."""
        return (
            self.covers(layer.cell, layer.addressing, layer.write)
            and not layer.cell.config.zoneout
            and kernel_runs_on(x)
        )

    def __call__(self, layer: Any, x: Tensor, state: State, consume_state: bool = False) -> tuple[Tensor, State]:
        """``layer``'s chunk ``x`` ``[B, T, d_i]`` from ``state``: ``o`` ``[B, T, d_h + D]`` and the
        new state, as the plain path; ``consume_state`` as [`MemoryRNN`][manntk.engine.MemoryRNN]'s."""
        cell, addressing, write = layer.cell, layer.addressing, layer.write
        after = layer.read == "after"
        read_head, write_head = addressing.config, write.head.config
        options = Options(
            float(cell.config.forget_bias), after,
            read_head.interpolation, int(read_head.shift), read_head.sharpen, float(read_head.eps),
            write_head.interpolation, int(write_head.shift), write_head.sharpen, float(write_head.eps),
            not write.bounded_add,
        )
        weights = (cell.W.weight, cell.W.bias, addressing.W_head.weight, addressing.W_head.bias,
                   write.head.W_head.weight, write.head.W_head.bias, write.W_ea.weight, write.W_ea.bias)
        memory = state["memory"]
        initial = (state["cell"]["h"], state["cell"]["c"], state["addressing"]["weights"], state["write"]["head"]["weights"], memory)
        read0 = state["read"].contiguous() if after else None
        inputs = (x, *initial, *weights) + ((read0,) if after else ())
        keep = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in inputs)
        in_place = consume_state and memory.is_contiguous()
        out, h, c, wr, ww, memory, read = _NtmSequence.apply(
            options, keep, in_place, x.transpose(0, 1).contiguous(), *(tensor.contiguous() for tensor in initial), read0, *weights,
        )
        new_state = {"cell": {"h": h, "c": c}, "addressing": {"weights": wr}, "write": {"head": {"weights": ww}}, "memory": memory}
        if after:
            new_state["read"] = read
        return out.transpose(0, 1).contiguous(), new_state  # batch first and contiguous, as the plain path's
