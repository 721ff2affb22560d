"""A chunk's memory on a tape: one tensor written in place, the writes undone in backward.

Through plain autograd each training step costs several passes over the whole memory
``[B, N, D]``: the write copies it (out of place), and backward the write's and the read's
whole-memory gradients are made and summed; the chunk also keeps all T copies alive. When
the addressing never looks at the memory's values (ARMIN auto-addressing) and every write
replaces one slot per row with a value, none of that is needed. [`MemoryTape`][manntk.fast.tape.MemoryTape]
keeps one memory tensor, writes into it in place, and keeps the rows each write
overwrote. Backward walks the steps in reverse: each write hands its slots' gradient to
the value it wrote (and clears it: before the write nothing read those values), each read
first puts back the rows that later writes overwrote, so that it finds the memory it read
(for its weights' gradient ``M_{t-1} dr_t``), and one gradient buffer ``dM`` gathers the
reads' rows. What is left is one pass over the memory per step (that product) and
``[B, D]`` rows; the chunk keeps no copies of the memory.

The numbers are those of the plain path (``manntk.memory.read`` and
``overwrite_index``) exactly: a one-hot read is the row it picks, and the gradients are
the same sums (``tests/test_tape.py``).

Autograd sees the tape's operations as a chain of nodes joined by empty "token" tensors:
each node takes the token of the one before and gives a new one, which orders their
backward calls newest first. A write whose token reaches nothing (the chunk's last, when
the final memory is not used) is never called backward, which costs nothing: nothing read
what it wrote. A second backward pass over a retained graph redoes the writes as its
reads need them (``_seek``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


TAPE_FROM = 1 << 15
"""Memories (``B * N * D``) of at least this many elements go on a tape. Each tape
operation is a Python autograd node (tens of microseconds a step): for ARMIN with 5 slots
of 500 on a 2-core Xeon the tape was level with the plain path at batch 4 and 16 (10k and
40k elements), 2-3% faster at 32 and 128; at the copy protocol's batch 1 (50 x 32) it was
12% slower."""


class MemoryTape:
    """One chunk's memory, written in place; ``start`` it, then ``read``, ``overwrite`` and ``end``.

    ``memory`` holds the current values (``M_{t-1}`` before step t's write), outside
    autograd: an addressing that does not depend on them may look (the engine hands them to
    its ``step``); differentiable values come only from ``read`` and ``end``.
    """

    __slots__ = ("applied", "empty", "grad", "last_visited", "memory", "rows", "serial", "token", "writes")

    def __init__(self, memory: Tensor) -> None:
        self.memory = memory.detach().clone(memory_format=torch.contiguous_format)
        self.rows = torch.arange(memory.shape[0], device=memory.device) * memory.shape[1]  # each row's first slot
        self.writes: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows of slots(), old values, new values), in order
        self.applied = 0  # how many of `writes` are in `memory`
        self.grad: Tensor | None = None  # dM of the memory as `applied` writes leave it
        self.serial = 0  # operations recorded so far
        self.last_visited = math.inf  # serial of the last node run backward
        self.empty = memory.new_empty(0)  # outside autograd: what tokens and their gradients are made from
        self.token: Tensor | None = self.empty  # the last node's output, until `end`

    @staticmethod
    def pays(memory: Tensor) -> bool:
        """Whether the tape is worth its Python nodes for ``memory``: from ``TAPE_FROM`` elements."""
        return memory.numel() >= TAPE_FROM

    @classmethod
    def start(cls, memory: Tensor) -> MemoryTape:
        """A tape holding a copy of ``memory`` ``[B, N, D]``; its gradient reaches ``memory`` when it requires one."""
        tape = cls(memory)
        if memory.requires_grad:
            tape.token = _Start.apply(tape, tape._next(), memory)
        return tape

    def read(self, weights: Tensor, index: Tensor) -> Tensor:
        """``r = M[b, index_b]`` ``[B, D]``: the read of one-hot ``weights`` ``[B, N]`` (one at ``index`` ``[B]``)."""
        read, self.token = _Read.apply(self, self._next(), self.token, weights, index)
        return read

    def overwrite(self, slot: Tensor, value: Tensor) -> None:
        """``M[b, slot_b] = value_b``: replace one slot per row (``slot`` ``[B]``, ``value`` ``[B, D]``)."""
        self.token = _Write.apply(self, self._next(), self.token, slot, value)

    def end(self) -> Tensor:
        """The memory now, ``[B, N, D]``, as a tensor of its own that gradients flow through;
        the tape takes no more operations.

        The tape lets go of its last token here: the nodes hold the tape, and a token held
        by the tape would hold its node, a cycle that keeps the chunk's graph alive until
        Python's garbage collector runs (measured: a training iteration 40% slower).
        """
        token, self.token = self.token, None
        return _End.apply(self, self._next(), token)

    def _next(self) -> int:
        self.serial += 1
        return self.serial

    # backward

    def _visit(self, serial: int) -> None:
        """Called first by each node's backward: a node no older than the last one called
        begins a new backward pass, which starts from a zero gradient."""
        if serial >= self.last_visited:
            self.grad = None
        self.last_visited = serial

    def _seek(self, applied: int) -> None:
        """Undo or redo writes until the first ``applied`` of them are in ``memory``."""
        while self.applied > applied:
            self.applied -= 1
            at, old, _ = self.writes[self.applied]
            self.slots().index_copy_(0, at, old)
        while self.applied < applied:
            at, _, new = self.writes[self.applied]
            self.slots().index_copy_(0, at, new)
            self.applied += 1

    def slots(self, tensor: Tensor | None = None) -> Tensor:
        """``memory`` (or a tensor of its shape) as ``[B * N, D]``: one slot per row, so that
        the operations on one slot per batch row are ``index_select``, ``index_copy_`` and
        ``index_add_`` at ``rows + slot`` (on a 2-core Xeon 3-10x faster than the same
        operations indexed ``[rows, slot]``; ``index_put_`` with ``accumulate`` on two
        threads took 260 us, ``index_add_`` 20)."""
        tensor = self.memory if tensor is None else tensor
        return tensor.view(-1, tensor.shape[-1])

    def _at(self, slot: Tensor) -> Tensor:
        """The rows of ``slots()`` that hold slot ``slot_b`` of batch row b (``slot`` ``[B]``)."""
        return self.rows + slot

    def _grad(self) -> Tensor:
        if self.grad is None:
            self.grad = torch.zeros_like(self.memory)
        return self.grad


def _token_grad(ctx: Any) -> Tensor | None:
    """The (empty) gradient of a node's input token (its third input): a tensor, not ``None``,
    so that the node before it runs backward."""
    return ctx.tape.empty.new_empty(0) if ctx.needs_input_grad[2] else None


class _Start(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tape: MemoryTape, serial: int, memory: Tensor) -> Tensor:
        ctx.tape, ctx.serial = tape, serial
        return memory.new_empty(0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, _token: Tensor | None) -> tuple[None, None, Tensor | None]:
        tape = ctx.tape
        tape._visit(ctx.serial)
        grad, tape.grad = tape.grad, None
        return None, None, grad


class _Read(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tape: MemoryTape, serial: int, token: Tensor, weights: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        at = tape._at(index)
        ctx.tape, ctx.serial, ctx.applied, ctx.at = tape, serial, tape.applied, at
        ctx.set_materialize_grads(False)
        return tape.slots().index_select(0, at), token.new_empty(0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_read: Tensor | None, _token: Tensor | None) -> tuple[Tensor | None, ...]:
        tape = ctx.tape
        tape._visit(ctx.serial)
        d_weights = None
        if d_read is not None:
            tape._seek(ctx.applied)
            if ctx.needs_input_grad[3]:  # dw_i = <M_i, dr>: the one pass over the memory
                d_weights = torch.bmm(tape.memory, d_read.unsqueeze(2)).squeeze(2)
            tape.slots(tape._grad()).index_add_(0, ctx.at, d_read)
        return None, None, _token_grad(ctx), d_weights, None


class _Write(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tape: MemoryTape, serial: int, token: Tensor, slot: Tensor, value: Tensor) -> Tensor:
        assert tape.applied == len(tape.writes), "a tape is written in order, before any backward pass"
        at = tape._at(slot)
        ctx.tape, ctx.serial, ctx.at = tape, serial, at
        new = value.detach()
        tape.writes.append((at, tape.slots().index_select(0, at), new))
        tape.slots().index_copy_(0, at, new)
        tape.applied += 1
        ctx.set_materialize_grads(False)
        return token.new_empty(0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, _token: Tensor | None) -> tuple[Tensor | None, ...]:
        tape = ctx.tape
        tape._visit(ctx.serial)
        d_value = None
        if tape.grad is not None:  # the slot's gradient goes to the value; before the write it had none
            grad = tape.slots(tape.grad)
            d_value = grad.index_select(0, ctx.at)
            grad.index_fill_(0, ctx.at, 0)
        return None, None, _token_grad(ctx), None, d_value


class _End(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tape: MemoryTape, serial: int, token: Tensor) -> Tensor:
        ctx.tape, ctx.serial = tape, serial
        ctx.set_materialize_grads(False)
        return tape.memory.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor | None) -> tuple[None, None, Tensor | None]:
        tape = ctx.tape
        tape._visit(ctx.serial)
        tape.grad = None if grad is None else grad.clone(memory_format=torch.contiguous_format)
        return None, None, _token_grad(ctx)
