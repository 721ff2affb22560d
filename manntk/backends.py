"""Where a layer's memory lives during a chunk: the backends of the engine's step.

The step is one algorithm (address, read, cell, write); how the memory is read and
written depends on what the parts can do and on the pass, and is chosen once per chunk by
[`backend_for`][manntk.backends.backend_for]:

- [`SlotMemory`][manntk.backends.SlotMemory]: dense ``[B, N, D]`` slots; weighted reads,
  the write policy's own ``step``. Always correct; every other backend is checked against
  it (``tests/test_tape.py``, ``tests/test_engine.py``).
- [`IndexedMemory`][manntk.backends.IndexedMemory]: the discrete evaluation path; a hard
  address arrives as slot indices only, reads gather one row, writes go in place.
- [`TapedMemory`][manntk.backends.TapedMemory]: training with an addressing that never
  looks at the memory's values and a write that replaces one slot per row: the memory is a
  [`MemoryTape`][manntk.fast.tape.MemoryTape], written in place and undone in backward. A step
  it cannot hold (a soft read, a write that is not a replacement) hands the chunk over to
  ``SlotMemory`` from that step on.

Each backend's ``read`` and ``write`` return the backend to use next, so a hand-over is a
return value, not a flag inside the step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from manntk import memory as mem
from manntk.fast.tape import MemoryTape
from manntk.parts import Address, Addressing, Write


class SlotMemory:
    """Dense slots, read by weights and written by the write policy's ``step``."""

    def __init__(self, values: Tensor) -> None:
        self.values = values  # M_{t-1}, [B, N, D]

    def read(self, address: Address) -> tuple[Address, Tensor, "SlotMemory"]:
        """The address as the write will see it (with dense weights), ``r_t`` ``[B, D]`` and the next backend."""
        if address.weights is None:
            address = Address(address.dense(self.values.shape[1], self.values.dtype), address.index)
        return address, mem.read(self.values, address.weights), self

    def write(self, write: Write, prepared: Any, t: int, hidden: Tensor, address: Address, state: dict) -> tuple[Any, dict]:
        """Step ``t``'s write; returns the next backend and the write state."""
        self.values, state = write.step(prepared, t, self.values, hidden, address, state)
        return self, state

    def end(self) -> Tensor:
        """The memory after the chunk, ``[B, N, D]``."""
        return self.values


class IndexedMemory(SlotMemory):
    """The discrete evaluation path: index-only addresses read one row; the write policy
    writes the slot in place (the engine owns ``values`` for the chunk)."""

    def read(self, address: Address) -> tuple[Address, Tensor, "IndexedMemory"]:
        if address.weights is None:
            return address, mem.read_index(self.values, address.index), self
        return address, mem.read(self.values, address.weights), self


class TapedMemory:
    """The memory on a [`MemoryTape`][manntk.fast.tape.MemoryTape]: one-hot reads by index,
    replacements in place."""

    def __init__(self, values: Tensor) -> None:
        self.tape = MemoryTape.start(values)

    @property
    def values(self) -> Tensor:
        """``M_{t-1}`` outside autograd (the addressing does not depend on it)."""
        return self.tape.memory

    def read(self, address: Address) -> tuple[Address, Tensor, Any]:
        if address.index is None:  # a soft read: the plain path from here on
            return SlotMemory(self.tape.end()).read(address)
        return address, self.tape.read(address.weights, address.index), self

    def write(self, write: Write, prepared: Any, t: int, hidden: Tensor, address: Address, state: dict) -> tuple[Any, dict]:
        replaced = write.replacement(prepared, t, hidden, address, state)
        if replaced is None:  # a write the tape cannot hold: the plain path from here on
            return SlotMemory(self.tape.end()).write(write, prepared, t, hidden, address, state)
        slot, value, state = replaced
        self.tape.overwrite(slot, value)
        return self, state

    def end(self) -> Tensor:
        return self.tape.end()


def tape_capable(addressing: Addressing, write: Write) -> bool:
    """Whether a layer's parts allow the tape: addresses that never depend on the memory's
    values, and a write that can replace slots (a capability of the parts, fixed when the
    model is built)."""
    return not addressing.reads_content and write.replaces_slots


def backend_for(memory: Tensor, *, discrete: bool, tape_capable: bool) -> SlotMemory | IndexedMemory | TapedMemory:
    """The backend of one chunk.

    Args:
        memory: the chunk's initial memory (the discrete path writes into it in place).
        discrete: the discrete evaluation path is on (evaluation with hard addressing).
        tape_capable: the layer's parts allow the tape ([`tape_capable`][manntk.backends.tape_capable]).
    """
    if discrete:
        return IndexedMemory(memory)
    if (
        tape_capable
        and torch.is_grad_enabled()
        and MemoryTape.pays(memory)
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled(memory.device.type)
    ):
        return TapedMemory(memory)
    return SlotMemory(memory)
