"""A whole chunk of a layer with TARDIS addressing as one C++ forward and one C++ backward (CPU).

AwTA (the ``armin`` cell + ``tardis`` addressing + ``overwrite``) ran about 60 PyTorch
operations per step forward and as many autograd nodes backward, each a few microseconds of
Python and dispatch: at batch 1, the algorithmic tasks' protocol, that overhead is nearly
all of the time. Here the chunk's recurrence runs in C++ (``tardis_sequence.cpp``, the
structure of [`armin_sequence`][manntk.fast.armin_sequence] with the TARDIS scores in place
of ARMIN's ``W_s`` logits): per step the products over the batch (the query, the slots'
content projection, the cell's two) and one pass over each row between them, and backward
the same in reverse, with every weight's gradient added in one product over the whole chunk
at the end (the content projection's per step).

The addressing's weights enter in the form the kernel uses, computed here once per chunk
(autograd carries their gradients back to the parameters):

- ``W_q = [W_x, W_h]`` and ``b_q`` (``W_x``'s bias): the query ``q = W_q [x_t, h_{t-1}] + b_q``;
- ``K = A W_m[:, :key_size]^T`` ``[N, S]``: the slots' address vectors through ``W_m``;
- ``P = W_m[:, key_size:]`` ``[S, D]``: the content columns, applied to ``M_{t-1}`` each step
  (zeros with ``content: false``).

It covers the ``armin`` cell without layer norm or zoneout (AwTA) and the ``tardis`` cell
(TARDIS: its weights enter as ``W_all = [W_gates; blockdiag(W_x, W_h, W_r)]``, one product
per step, and the gates alpha, beta draw their logistic noise as ``TardisCell.prepare``
does), ``tardis`` addressing with
every option (hard reads: straight-through Gumbel-softmax in training, the argmax slot in
evaluation, as the engine's discrete path; soft reads; usage on or off, in every
``usage_feature`` and ``usage_scope``, the kernels telling the scope by ``w_u``'s shape, ``[S]``
or ``[S, N]``; any re-read penalty) and the ``overwrite`` write with every option
(``h_t`` or its projection, or ``value: input_and_hidden``; replacement by slot, argmax or
the soft blend; fill-empty-first). The numbers are those of the plain path up to float rounding
(``tests/test_tardis_sequence.py`` compares outputs, states and every gradient with it and
gradchecks the operator in float64).

Speed: training steps (forward, backward, clip, Adam) of ``recipes/algorithmic/copy/awta.yaml``
at batch 1, one thread, on a shared 2-core AMD EPYC (``python benchmarks/tardis_kernel.py``):
10.0 steps/s on the plain path (``model.fast: false``), 92 with the kernel (9.2x); for
``recipes/algorithmic/copy/tardis.yaml`` (the tardis cell), 13.4 and 106 steps/s (7.9x).
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
    usage: int
    penalty: float
    address_gradient: bool


USAGE_FORMS = {"share": 1, "count": 2, "seen": 3, "l2": 4}
"""The kernels' code of each ``usage_feature`` (0: no usage)."""


def usage_form(config: Any) -> int:
    """The kernels' code for the usage a ``TardisAddressingConfig`` asks for."""
    return USAGE_FORMS[config.usage_feature] if config.usage else 0


class _TardisSequence(torch.autograd.Function):
    """``(options, keep, in_place, x [T, B, d_i], h_0, M_0, filled_0, usage_0, previous_0, noise,
    W_q, b_q, K, P, w_u, a, W_ig, b_ig, W_go, b_go, W_v, b_v) -> (o [T, B, d_o], h_T, M_T,
    filled_T, usage_T, previous_T)``; ``W_v`` and ``b_v`` are ``None`` without a projection.
    ``keep``: a backward may come; without one the kernel holds a single step of what only
    backward reads, and with ``in_place`` (the caller gives the state up) writes into ``M_0``
    instead of a copy.
    """

    @staticmethod
    def forward(ctx: Any, options: Options, keep: bool, in_place: bool, x: Tensor, h0: Tensor, m0: Tensor, filled0: Tensor,
                usage0: Tensor, previous0: Tensor, noise: Tensor | None, *weights: Tensor | None) -> tuple[Tensor, ...]:
        W_q, _, _, P, _, a, W_ig, _, W_go, _, W_v, _ = weights
        out, h, memory, filled, usage, previous, *saved = extension().tardis_sequence_forward(
            x, h0, m0, filled0, usage0, previous0, noise, *weights, *options[:-1], keep, in_place)
        ctx.options, ctx.usage_all = options, weights[4].dim() == 2  # w_u [S, N]: usage_scope all
        if keep:  # a copy of M_T of its own: the caller may change the returned state in place before backward
            ctx.save_for_backward(memory.clone(), W_q, P, a, W_ig, W_go, W_v, *saved)
        ctx.mark_non_differentiable(filled, usage, previous)
        ctx.set_materialize_grads(False)
        return out, h, memory, filled, usage, previous

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor | None, d_h: Tensor | None, d_memory: Tensor | None, *_bookkeeping: None) -> tuple[Tensor | None, ...]:
        memory, W_q, P, a, W_ig, W_go, W_v, *saved = ctx.saved_tensors
        options: Options = ctx.options
        grads = extension().tardis_sequence_backward(d_out, d_h, d_memory, memory, W_q, P, a, W_ig, W_go, W_v, *saved, options.tau,
                                                     options.squash, options.read_output, options.hard, options.address_gradient,
                                                     ctx.usage_all)
        d_x, d_h0, d_m0, *d_address, d_W_ig, d_b_ig, d_W_go, d_b_go, d_W_v, d_b_v = grads
        if not options.address_gradient:  # an argmax read: the scores' weights get no gradient, as on the discrete path
            d_address = [None] * 6
        elif not options.usage:  # w_u is not used
            d_address[4] = None
        if W_v is None:  # no projection: v = h_t
            d_W_v = d_b_v = None
        return (None, None, None, d_x, d_h0, d_m0, None, None, None, None, *d_address, d_W_ig, d_b_ig, d_W_go, d_b_go,
                d_W_v, d_b_v)


class CellOptions(NamedTuple):
    """The settings of a chunk with the TARDIS cell, as [`Options`][manntk.fast.tardis_sequence.Options]."""

    tau: float
    forget_bias: float
    gate_temperature: float
    hard: bool
    argmax_write: bool
    fill: bool
    usage: int
    penalty: float
    address_gradient: bool


class _TardisCellSequence(torch.autograd.Function):
    """``(options, keep, in_place, x [T, B, d_i], h_0, c_0, M_0, filled_0, usage_0, previous_0, noise,
    cell_noise, W_q, b_q, K, P, w_u, a, W_all, b_all, W_v, b_v) -> (o [T, B, d_h + D], h_T, c_T, M_T,
    filled_T, usage_T, previous_T)``: the chunk with the TARDIS cell, whose weights enter as
    ``W_all = [W_gates; blockdiag(W_x, W_h, W_r)]`` and ``b_all = [b_gates, b_x, 0]``;
    ``cell_noise`` ``[T, B, 2]`` is the logistic noise of the gates alpha, beta (training)."""

    @staticmethod
    def forward(ctx: Any, options: CellOptions, keep: bool, in_place: bool, x: Tensor, h0: Tensor, c0: Tensor, m0: Tensor,
                filled0: Tensor, usage0: Tensor, previous0: Tensor, noise: Tensor | None, cell_noise: Tensor | None,
                *weights: Tensor | None) -> tuple[Tensor, ...]:
        W_q, _, _, P, _, a, W_all, _, W_v, _ = weights
        out, h, c, memory, filled, usage, previous, *saved = extension().tardis_cell_sequence_forward(
            x, h0, c0, m0, filled0, usage0, previous0, noise, cell_noise, *weights, *options[:-1], keep, in_place)
        ctx.options, ctx.usage_all = options, weights[4].dim() == 2
        if keep:  # copies of their own: the caller may change the state in place before backward
            ctx.save_for_backward(memory.clone(), c0.clone(), W_q, P, a, W_all, W_v, *saved)
        ctx.mark_non_differentiable(filled, usage, previous)
        ctx.set_materialize_grads(False)
        return out, h, c, memory, filled, usage, previous

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor | None, d_h: Tensor | None, d_c: Tensor | None, d_memory: Tensor | None,
                 *_bookkeeping: None) -> tuple[Tensor | None, ...]:
        memory, c0, W_q, P, a, W_all, W_v, *saved = ctx.saved_tensors
        options: CellOptions = ctx.options
        grads = extension().tardis_cell_sequence_backward(d_out, d_h, d_c, d_memory, memory, c0, W_q, P, a, W_all, W_v, *saved,
                                                          options.tau, options.gate_temperature, options.hard,
                                                          options.address_gradient, ctx.usage_all)
        d_x, d_h0, d_c0, d_m0, *d_address, d_W_all, d_b_all, d_W_v, d_b_v = grads
        if not options.address_gradient:
            d_address = [None] * 6
        elif not options.usage:
            d_address[4] = None
        if W_v is None:
            d_W_v = d_b_v = None
        return (None, None, None, d_x, d_h0, d_c0, d_m0, None, None, None, None, None, *d_address, d_W_all, d_b_all,
                d_W_v, d_b_v)


class TardisSequence:
    """The chunk kernel of a layer with TARDIS addressing (``layer.cell``, ``.addressing``,
    ``.write``, read at every chunk, so parts swapped after the build are seen);
    [`for_parts`][manntk.fast.tardis_sequence.TardisSequence.for_parts] says whether parts
    are a composition it covers."""

    read_orders = ("before",)
    """The step orders it implements: the read before the cell only."""

    @staticmethod
    def covers(cell: Any, addressing: Any, write: Any) -> bool:
        """Whether these parts are a composition the kernel implements (AwTA or TARDIS)."""
        from manntk.addressing.tardis import TardisAddressing
        from manntk.cells.armin import ArminCell
        from manntk.cells.tardis import TardisCell
        from manntk.writes.overwrite import Overwrite

        cell_covered = (type(cell) is ArminCell and not cell.config.layer_norm) or type(cell) is TardisCell
        return cell_covered and type(addressing) is TardisAddressing and type(write) is Overwrite

    @classmethod
    def for_parts(cls, cell: Any, addressing: Any, write: Any) -> "TardisSequence | None":
        """The kernel for a layer of these parts, or ``None`` when they are not a composition it covers."""
        return cls() if cls.covers(cell, addressing, write) else None

    def applies(self, layer: Any, x: Tensor) -> bool:
        """Whether the chunk ``x`` of ``layer`` can run here: the parts it covers, a CPU
        float32/float64 input outside ``torch.compile``, autocast and tracing (manntk's,
        ``torch.jit``'s), a cell without zoneout, and kernels that built."""
        return (
            self.covers(layer.cell, layer.addressing, layer.write)
            and not getattr(layer.cell.config, "zoneout", 0.0)
            and kernel_runs_on(x)
        )

    def __call__(self, layer: Any, x: Tensor, state: State, consume_state: bool = False) -> tuple[Tensor, State]:
        """``layer``'s chunk ``x`` ``[B, T, d_i]`` from ``state``: ``o`` ``[B, T, d_o]`` and the new
        state, as the plain path; ``consume_state`` as [`MemoryRNN`][manntk.engine.MemoryRNN]'s."""
        from manntk.cells.tardis import TardisCell

        cell, addressing, write = layer.cell, layer.addressing, layer.write
        batch, steps = x.shape[0], x.shape[1]
        tardis_cell = type(cell) is TardisCell
        cell_noise = None
        if tardis_cell and cell.training:  # drawn as TardisCell.prepare draws it, before the addressing's noise
            uniform = torch.rand(steps, batch, 2, device=x.device, dtype=x.dtype).clamp(1e-6, 1 - 1e-6)
            cell_noise = torch.log(uniform) - torch.log1p(-uniform)
        memory = state["memory"]
        noise = addressing.chunk_noise((steps, batch, addressing.slots), x)  # drawn as the plain path draws it
        fill = write.fill_empty_first
        filled = state["write"]["filled"] if fill else torch.zeros(batch, dtype=torch.long)
        config = addressing.config
        address_gradient = addressing.training or not addressing.hard
        projection = (write.W_v.weight, write.W_v.bias) if isinstance(write.W_v, torch.nn.Linear) else (None, None)
        with torch.set_grad_enabled(torch.is_grad_enabled() and address_gradient):  # an argmax read: no gradient, as the discrete path
            slot_keys, content_weight = addressing.slot_weights()
            address_weights = (
                torch.cat([addressing.W_x.weight, addressing.W_h.weight], dim=1),
                addressing.W_x.bias,
                slot_keys,
                content_weight.contiguous(),
                addressing.w_u,
                addressing.a,
            )
            if not address_gradient:
                address_weights = tuple(weight.detach() for weight in address_weights)
        if tardis_cell:
            W_all = torch.cat([cell.W_gates.weight, torch.block_diag(cell.W_x.weight, cell.W_h.weight, cell.W_r.weight)])
            b_all = torch.cat([cell.W_gates.bias, cell.W_x.bias, cell.W_x.bias.new_zeros(2 * cell.hidden_size)])
            cell_weights: tuple[Tensor, ...] = (W_all, b_all)
        else:
            cell_weights = (cell.W_ig.weight, cell.W_ig.bias, cell.W_go.weight, cell.W_go.bias)
        weights = (*address_weights, *cell_weights, *projection)
        inputs = (x, state["cell"]["h"], memory, *(weight for weight in weights if weight is not None))
        keep = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in inputs)
        if tardis_cell:
            keep = keep or (torch.is_grad_enabled() and state["cell"]["c"].requires_grad)
        in_place = consume_state and memory.is_contiguous()
        bookkeeping = state["addressing"]
        sequence = (x.transpose(0, 1).contiguous(),)
        carried = (memory.contiguous(), filled, bookkeeping["usage"].contiguous(), bookkeeping["previous"].contiguous(),
                   None if noise is None else noise.contiguous())
        if tardis_cell:
            options = CellOptions(float(addressing.tau()), float(cell.config.forget_bias), float(cell.config.gate_temperature),
                                  addressing.hard, write.argmax, fill, usage_form(config), float(config.reread_penalty), address_gradient)
            out, h, c, memory, filled, usage, previous = _TardisCellSequence.apply(
                options, keep, in_place, *sequence, state["cell"]["h"].contiguous(), state["cell"]["c"].contiguous(), *carried,
                cell_noise, *weights,
            )
            cell_state = {"h": h, "c": c}
        else:
            options = Options(float(addressing.tau()), float(cell.config.forget_bias), cell.config.squash_state, cell.config.read_output,
                              addressing.hard, write.argmax, fill, usage_form(config), float(config.reread_penalty), address_gradient)
            out, h, memory, filled, usage, previous = _TardisSequence.apply(
                options, keep, in_place, *sequence, state["cell"]["h"].contiguous(), *carried, *weights,
            )
            cell_state = {"h": h}
        new_state = {"cell": cell_state, "addressing": {"usage": usage, "previous": previous},
                     "write": {"filled": filled} if fill else {}, "memory": memory}
        return out.transpose(0, 1).contiguous(), new_state  # batch first and contiguous, as the plain path's
