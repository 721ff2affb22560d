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
- ``P = W_m[:, key_size:]`` ``[S, D]``: the content columns, applied to ``M_{t-1}`` each step.

It covers the ``armin`` cell without layer norm or zoneout, ``tardis`` addressing with
every option (hard reads: straight-through Gumbel-softmax in training, the argmax slot in
evaluation, as the engine's discrete path; soft reads; usage on or off; any re-read
penalty) and the ``overwrite`` write with every option (``h_t`` or its projection, or
``value: input_and_hidden``; replacement by slot, argmax or the soft blend;
fill-empty-first). The numbers are those of the plain path up to float rounding
(``tests/test_tardis_sequence.py`` compares outputs, states and every gradient with it and
gradchecks the operator in float64).

Speed: training steps (forward, backward, clip, Adam) of ``recipes/algorithmic/copy/awta.yaml``
at batch 1, one thread, on a shared 2-core AMD EPYC (``python benchmarks/tardis_kernel.py``):
10.0 steps/s on the plain path (``model.fast: false``), 92 with the kernel (9.2x).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from manntk.fast.armin_fused import extension
from manntk.state import State
from manntk.trace import is_tracing

DTYPES = (torch.float32, torch.float64)
"""dtypes the kernels are built for."""


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
    usage: bool
    penalty: float
    address_gradient: bool


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
        ctx.options = options
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
                                                     options.squash, options.read_output, options.hard, options.address_gradient)
        d_x, d_h0, d_m0, *d_address, d_W_ig, d_b_ig, d_W_go, d_b_go, d_W_v, d_b_v = grads
        if not options.address_gradient:  # an argmax read: the scores' weights get no gradient, as on the discrete path
            d_address = [None] * 6
        elif not options.usage:  # w_u is not used
            d_address[4] = None
        if W_v is None:  # no projection: v = h_t
            d_W_v = d_b_v = None
        return (None, None, None, d_x, d_h0, d_m0, None, None, None, None, *d_address, d_W_ig, d_b_ig, d_W_go, d_b_go,
                d_W_v, d_b_v)


class TardisSequence:
    """The chunk kernel of a layer with TARDIS addressing (``layer.cell``, ``.addressing``,
    ``.write``, read at every chunk, so parts swapped after the build are seen);
    [`for_parts`][manntk.fast.tardis_sequence.TardisSequence.for_parts] says whether parts
    are a composition it covers."""

    @staticmethod
    def covers(cell: Any, addressing: Any, write: Any) -> bool:
        """Whether these parts are a composition the kernel implements (AwTA)."""
        from manntk.addressing.tardis import TardisAddressing
        from manntk.cells.armin import ArminCell
        from manntk.writes.overwrite import Overwrite

        return type(cell) is ArminCell and type(addressing) is TardisAddressing and type(write) is Overwrite and not cell.config.layer_norm

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
            and x.device.type == "cpu"
            and x.dtype in DTYPES
            and not layer.cell.config.zoneout
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu")
            and not is_tracing()
            and available()
        )

    def __call__(self, layer: Any, x: Tensor, state: State, consume_state: bool = False) -> tuple[Tensor, State]:
        """``layer``'s chunk ``x`` ``[B, T, d_i]`` from ``state``: ``o`` ``[B, T, d_o]`` and the new
        state, as the plain path; ``consume_state`` as [`MemoryRNN`][manntk.engine.MemoryRNN]'s."""
        cell, addressing, write = layer.cell, layer.addressing, layer.write
        batch, steps = x.shape[0], x.shape[1]
        memory = state["memory"]
        noise = addressing.chunk_noise((steps, batch, addressing.slots), x)  # drawn as the plain path draws it
        fill = write.fill_empty_first
        filled = state["write"]["filled"] if fill else torch.zeros(batch, dtype=torch.long)
        config = addressing.config
        address_gradient = addressing.training or not addressing.hard
        options = Options(float(addressing.tau()), float(cell.config.forget_bias), cell.config.squash_state, cell.config.read_output,
                          addressing.hard, write.argmax, fill, config.usage, float(config.reread_penalty), address_gradient)
        projection = (write.W_v.weight, write.W_v.bias) if isinstance(write.W_v, torch.nn.Linear) else (None, None)
        key_size = addressing.key_size
        with torch.set_grad_enabled(torch.is_grad_enabled() and address_gradient):  # an argmax read: no gradient, as the discrete path
            address_weights = (
                torch.cat([addressing.W_x.weight, addressing.W_h.weight], dim=1),
                addressing.W_x.bias,
                torch.nn.functional.linear(addressing.A, addressing.W_m.weight[:, :key_size]),
                addressing.W_m.weight[:, key_size:].contiguous(),
                addressing.w_u,
                addressing.a,
            )
            if not address_gradient:
                address_weights = tuple(weight.detach() for weight in address_weights)
        weights = (*address_weights, cell.W_ig.weight, cell.W_ig.bias, cell.W_go.weight, cell.W_go.bias, *projection)
        inputs = (x, state["cell"]["h"], memory, *(weight for weight in weights if weight is not None))
        keep = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in inputs)
        in_place = consume_state and memory.is_contiguous()
        bookkeeping = state["addressing"]
        out, h, memory, filled, usage, previous = _TardisSequence.apply(
            options, keep, in_place, x.transpose(0, 1).contiguous(), state["cell"]["h"].contiguous(), memory.contiguous(), filled,
            bookkeeping["usage"].contiguous(), bookkeeping["previous"].contiguous(), None if noise is None else noise.contiguous(),
            *weights,
        )
        new_state = {"cell": {"h": h}, "addressing": {"usage": usage, "previous": previous},
                     "write": {"filled": filled} if fill else {}, "memory": memory}
        return out.transpose(0, 1).contiguous(), new_state  # batch first and contiguous, as the plain path's


_built: bool | None = None


def available() -> bool:
    """Whether the kernels are built (on the first call: built now); when they cannot be
    (no C++ compiler), one warning says why and the plain path runs."""
    global _built
    if _built is None:
        try:
            extension()
            _built = True
        except RuntimeError as error:
            import warnings

            cause = error.__cause__ or error
            warnings.warn(f"model.fast: the TARDIS-addressing chunk kernel could not be built ({cause}); running the plain (slower) "
                          "path. Install a C++ compiler and ninja, or set model.fast: false to run the plain path without this "
                          "warning.", RuntimeWarning, stacklevel=3)
            _built = False
    return _built
