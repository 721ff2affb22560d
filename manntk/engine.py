"""The recurrent engine: per layer, per time step, read -> cell -> write.

```
w_t, a = addressing(x_t, h_{t-1}, M_{t-1}, a)     # read weights [B, N]
r_t    = read(M_{t-1}, w_t)                        # [B, D]
o_t, c = cell(x_t, c, r_t)                         # c["h"] is h_t
M_t, s = write(M_{t-1}, h_t, w_t, s)
```

With ``read="after"`` (``model.read: after``, pytorch-ntm's order) the same four calls run
with the cell first: it takes the previous step's read, and the head keys from ``h_t``:

```
_, c   = cell(x_t, c, r_{t-1})                     # c["h"] is h_t
w_t, a = addressing(x_t, h_t, M_{t-1}, a)
r_t    = read(M_{t-1}, w_t)
M_t, s = write(M_{t-1}, h_t, w_t, s)
o_t    = [h_t, r_t]                                # r_{t-1} is carried in the state as "read"
```

The engine follows ``torch.nn.LSTM``: ``model(x, state=None) -> (y, state)``, batch
first. Layers run one after another over the whole chunk, so every part can ``prepare``
its input projections for all T steps at once.

The step is the same four lines on every path; where the memory lives (dense slots, the
discrete evaluation path, the tape) is a backend chosen once per chunk from what the parts
can do ([`manntk.backends`][manntk.backends]).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from manntk.backends import IndexedMemory, SlotMemory, TapedMemory, backend_for, tape_capable
from manntk.fast.chunks import chunk_kernel_for
from manntk.parts import Address, Addressing, Cell, Part, Write
from manntk.state import State
from manntk.trace import record, scope


INDUCTOR_OPTIONS = {"realize_opcount_threshold": 0}
"""Inductor options of [`MemoryRNN.compile_layers`][manntk.engine.MemoryRNN.compile_layers].
With its default ``realize_opcount_threshold`` Inductor's CPU code computes wrong
gradients for ARMIN's gates (``[g_h * h, g_r * r]`` from one split gate: 25% off in
float64 on torch 2.13; docs/architecture.md has a reproducer without manntk); realizing every
intermediate that is read more than once makes them exact."""


READ_ORDERS = ("before", "after")
"""The two orders of the step (``model.read``): ``before`` the cell (the ARMIN paper) or
``after`` it (pytorch-ntm)."""


class _Prepared(NamedTuple):
    """What each part's ``prepare`` returned for the chunk."""

    cell: Any
    addressing: Any
    write: Any


class _Carry(NamedTuple):
    """What one step hands the next: the parts' states, the memory and ``r_t`` (``read="after"`` only)."""

    cell: dict[str, Tensor]
    addressing: dict[str, Tensor]
    write: dict[str, Tensor]
    memory: SlotMemory | IndexedMemory | TapedMemory
    read: Tensor | None


class MemoryLayer(nn.Module):
    """One recurrent layer: a cell, an addressing and a write over a slot memory of its own.

    Attributes:
        cell: the cell.
        addressing: the read addressing.
        write: the write policy.
        slots: N, the number of memory slots (0 without memory).
        width: D, the width of a slot (0 without memory).
        discrete_eval: in evaluation, read and write hard addresses by index (faster;
            same outputs as the weighted path with one-hot weights).
        chunk_kernel: what runs a whole chunk of these parts in one call
            ([`chunk_kernel_for`][manntk.fast.chunks.chunk_kernel_for]: the ARMIN,
            TARDIS-addressing and NTM-style layers in C++, the memoryless LSTM through
            torch's), or
            ``None`` (no kernel covers the parts in this step order: only the NTM-style
            kernel implements ``read="after"``; or ``fast=False``).
        read: ``before`` (address from ``h_{t-1}``, then the cell) or ``after`` (the
            cell on ``r_{t-1}``, then address from ``h_t``; the output is ``[h_t, r_t]``).
    """

    def __init__(
        self,
        cell: Cell,
        addressing: Addressing,
        write: Write,
        slots: int,
        width: int,
        memory_start: Tensor | None = None,
        learned_start: bool = False,
        resample_bound: float | None = None,
        discrete_eval: bool = True,
        fast: bool = True,
        read: Literal["before", "after"] = "before",
    ) -> None:
        """``memory_start``: the ``[N, D]`` initial memory (zeros when ``None``), a trained
        parameter with ``learned_start``; with ``resample_bound`` every fresh state draws
        its own memory uniformly from ``[-bound, bound]`` instead. ``fast=False`` keeps
        every chunk on the plain per-step path. ``read``: the order of the step (module
        docstring)."""
        super().__init__()
        if read not in READ_ORDERS:
            raise ValueError(f"read must be one of {', '.join(map(repr, READ_ORDERS))}; got {read!r}")
        self.cell, self.addressing, self.write = cell, addressing, write
        self.slots, self.width = slots, width
        self.discrete_eval = discrete_eval
        self.tape_capable = tape_capable(addressing, write)
        self.resample_bound = resample_bound
        self.read = read
        self.chunk_kernel = chunk_kernel_for(cell, addressing, write, read) if fast else None
        initial = torch.zeros(slots, width) if memory_start is None else memory_start.detach().clone()
        if learned_start:
            self.memory_init = nn.Parameter(initial)
        else:
            self.register_buffer("memory_init", initial)

    @property
    def output_size(self) -> int:
        """Width of the layer's output ``o_t``: the cell's, or ``d_h + D`` (``[h_t, r_t]``) with ``read="after"``."""
        return self.cell.hidden_size + self.width if self.read == "after" else self.cell.output_size

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        """A fresh state: zero cell state, the initial memory and empty bookkeeping.

        With ``read="after"`` the state also holds ``"read"``, the previous step's read,
        which starts at zeros: pytorch-ntm starts from a fixed (untrained) vector drawn
        from N(0, 0.01^2), whose only effect is a shift of order 0.01 in the first step's
        gates, and the read of the initial weights would need each addressing's own
        state. The memory is a contiguous copy per row, not an expanded view, so a fresh
        state has the layout of a carried one (a compiled chunk would otherwise compile
        twice).
        """
        state = {
            "cell": self.cell.init_state(batch_size, device, dtype),
            "addressing": self.addressing.init_state(batch_size, device, dtype),
            "write": self.write.init_state(batch_size, device, dtype),
            "memory": self._initial_memory(batch_size, device, dtype),
        }
        if self.read == "after":
            state["read"] = torch.zeros(batch_size, self.width, device=device, dtype=dtype)
        return state

    def _initial_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        if self.resample_bound is not None:
            bound = self.resample_bound
            return torch.empty(batch_size, self.slots, self.width, device=device, dtype=dtype).uniform_(-bound, bound)
        # a copy of its own even for one row (expand + contiguous would then be a view of memory_init)
        return self.memory_init.to(device=device, dtype=dtype).expand(batch_size, -1, -1).clone(memory_format=torch.contiguous_format)

    def forward(self, x: Tensor, state: State, consume_state: bool = False) -> tuple[Tensor, State]:
        """Run the chunk ``x`` ``[B, T, input_size]`` from ``state``; returns ``o`` ``[B, T, output_size]`` and the new state.

        ``consume_state``: the caller gives ``state`` up, so the discrete path writes into
        its memory in place instead of into a copy (for ARMIN 800 with 256 slots at batch
        128 the copy is 105 MB per chunk).
        """
        if self.read == "after" and "read" not in state:
            raise ValueError("this layer reads after the cell (model.read: after) and needs the previous read, state['read']: "
                             "start from init_state() or a state this model returned, not one of a model that reads before")
        if self.chunk_kernel is not None and self.chunk_kernel.applies(self, x):
            return self.chunk_kernel(self, x, state, consume_state)
        discrete = self.discrete_eval and not self.training
        prepared = _Prepared(self.cell.prepare(x), self.addressing.prepare(x), self.write.prepare(x))
        memory = state["memory"]
        if discrete and not consume_state:
            memory = memory.clone()  # the discrete path writes in place; the caller's state stays intact
        memory = backend_for(memory, discrete=discrete, tape_capable=self.tape_capable)
        carry = _Carry(state["cell"], state.get("addressing", {}), state.get("write", {}), memory, state.get("read"))
        step = self._step_read_after if self.read == "after" else self._step_read_before
        outputs = []
        for t in range(x.shape[1]):
            output, carry = step(prepared, t, carry)
            outputs.append(output)
        new_state = {"cell": carry.cell, "addressing": carry.addressing, "write": carry.write, "memory": carry.memory.end()}
        if carry.read is not None:
            new_state["read"] = carry.read
        return torch.stack(outputs, dim=1), new_state

    def _step_read_before(self, prepared: _Prepared, t: int, carry: _Carry) -> tuple[Tensor, _Carry]:
        """Address from ``h_{t-1}``, read ``r_t``, the cell on ``r_t``, write from ``h_t``; ``o_t`` is the cell's."""
        address, addressing_state = self._address(prepared, t, carry.cell["h"], carry)
        address, read, memory = self._read(address, carry.memory)
        output, cell_state = self.cell.step(prepared.cell, t, carry.cell, read)
        memory, write_state = memory.write(self.write, prepared.write, t, cell_state["h"], address, carry.write)
        return output, _Carry(cell_state, addressing_state, write_state, memory, None)

    def _step_read_after(self, prepared: _Prepared, t: int, carry: _Carry) -> tuple[Tensor, _Carry]:
        """The cell on ``r_{t-1}``, address from ``h_t``, read ``r_t`` from ``M_{t-1}``, write from ``h_t``; ``o_t = [h_t, r_t]``."""
        _, cell_state = self.cell.step(prepared.cell, t, carry.cell, carry.read)
        address, addressing_state = self._address(prepared, t, cell_state["h"], carry)
        address, read, memory = self._read(address, carry.memory)
        memory, write_state = memory.write(self.write, prepared.write, t, cell_state["h"], address, carry.write)
        return torch.cat([cell_state["h"], read], dim=1), _Carry(cell_state, addressing_state, write_state, memory, read)

    def _address(self, prepared: _Prepared, t: int, hidden: Tensor, carry: _Carry) -> tuple[Address, dict[str, Tensor]]:
        """Step ``t``'s read address from ``hidden`` and ``M_{t-1}`` (and the write state, for a part that reads it)."""
        extra = {"write_state": carry.write} if self.addressing.reads_write_state else {}
        return self.addressing.step(prepared.addressing, t, hidden, carry.memory.values, carry.addressing, **extra)

    def _read(self, address: Address, memory: SlotMemory | IndexedMemory | TapedMemory) -> tuple[Address, Tensor, Any]:
        """``r_t`` at ``address`` (recorded for tracing); returns the address as the write sees it, ``r_t`` and the backend."""
        address, read, memory = memory.read(address)
        record("read", lambda: address.dense(self.slots, read.dtype))
        return address, read, memory


class MemoryRNN(nn.Module):
    """A stack of [`MemoryLayer`][manntk.engine.MemoryLayer]s with an optional embedding and output head.

    ``model(x, state=None) -> (y, state)``: ``x`` is ``[B, T, input_size]`` (or token ids
    ``[B, T]`` with an embedding); ``y`` is ``[B, T, output_size]`` with a head, else the
    last layer's ``o_t``. ``state=None`` starts fresh memories. ``model(x, state,
    consume_state=True)`` promises that the caller will not use ``state`` again (an
    evaluation loop that carries only the returned state): the discrete evaluation path
    then writes into its memories in place instead of copying them first. ``state`` is
    never modified otherwise.

    Attributes:
        layers: the layers; ``layers[i].cell``, ``.addressing`` and ``.write`` are the parts.
        embedding: maps token ids to vectors, or ``None``.
        head: a Linear from the last ``o_t`` to ``output_size``, or ``None``.
        dropout: dropout rate on every layer's output (training only).
    """

    def __init__(
        self,
        layers: list[MemoryLayer],
        embedding: nn.Embedding | None = None,
        head: nn.Linear | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.embedding = embedding
        self.head = head
        self.dropout = dropout

    def init_state(self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> State:
        """A fresh state for ``batch_size`` sequences (parameters' device and dtype by default)."""
        reference = next(self.parameters())
        device = torch.device(device) if device is not None else reference.device
        dtype = dtype or reference.dtype
        return {"layers": [layer.init_state(batch_size, device, dtype) for layer in self.layers]}

    def forward(self, x: Tensor, state: State | None = None, consume_state: bool = False) -> tuple[Tensor, State]:
        if self.embedding is not None:
            x = self.embedding(x)
        if state is None:  # a state of our own
            state, consume_state = self.init_state(x.shape[0], x.device, x.dtype), True
        layer_states = []
        for index, (layer, layer_state) in enumerate(zip(self.layers, state["layers"], strict=True)):
            with scope(f"layer{index}"):
                x, layer_state = layer(x, layer_state, consume_state)
            x = nn.functional.dropout(x, self.dropout, self.training)
            layer_states.append(layer_state)
        if self.head is not None:
            x = self.head(x)
        return x, {"layers": layer_states}

    def compile_layers(self, backend: str = "inductor") -> None:
        """Compile each layer's chunk with ``torch.compile`` (Inductor by default), in place.

        The state dict keeps its keys, so checkpoints load either way. Dynamo unrolls the
        loop over the chunk's T steps, so each new chunk length (and batch size) compiles
        again: this fits fixed-length chunks (language modelling, pMNIST), not the
        algorithmic tasks' variable lengths, which fall back to eager once
        ``torch._dynamo``'s cache limit is reached. ``backend="aot_eager"`` traces the same
        graphs without generating code (seconds instead of a minute: what the fast tests use).
        """
        refused = sorted({type(part).__name__ for part in self.parts() if not part.compiles})
        if refused:
            raise ValueError(f"torch.compile cannot trace {', '.join(refused)} as configured (custom kernels)")
        options = INDUCTOR_OPTIONS if backend == "inductor" else None
        for layer in self.layers:
            layer.compile(dynamic=False, backend=backend, options=options)

    def parts(self) -> list[Part]:
        """Every part of every layer (heads that parts build for themselves included)."""
        return [module for module in self.modules() if isinstance(module, Part)]

    def set_schedule_step(self, step: int) -> None:
        """Move every part's schedules (e.g. the Gumbel-softmax temperature) to training step ``step``."""
        for part in self.parts():
            part.set_training_step(step)

    def training_metrics(self) -> dict[str, float]:
        """What the parts ask to log beside the training loss (the first part to name a value gives it)."""
        metrics: dict[str, float] = {}
        for part in self.parts():
            for name, value in part.training_metrics().items():
                metrics.setdefault(name, value)
        return metrics


def consuming(model: nn.Module) -> dict[str, bool]:
    """The keyword arguments with which a loop that drops each chunk's old state calls
    ``model``: ``consume_state=True`` for a [`MemoryRNN`][manntk.engine.MemoryRNN], none for
    other modules (a baseline or a task's own model)."""
    return {"consume_state": True} if isinstance(model, MemoryRNN) else {}
