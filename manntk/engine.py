"""The recurrent engine: per layer, per time step, read -> cell -> write.

```
w_t, a = addressing(x_t, h_{t-1}, M_{t-1}, a)     # read weights [B, N]
r_t    = read(M_{t-1}, w_t)                        # [B, D]
o_t, c = cell(x_t, c, r_t)                         # c["h"] is h_t
M_t, s = write(M_{t-1}, h_t, w_t, s)
```

The engine follows ``torch.nn.LSTM``: ``model(x, state=None) -> (y, state)``, batch
first. Layers run one after another over the whole chunk, so every part can ``prepare``
its input projections for all T steps at once.

The step is the same four lines on every path; where the memory lives (dense slots, the
discrete evaluation path, the tape) is a backend chosen once per chunk from what the parts
can do ([`manntk.backends`][manntk.backends]).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from manntk.backends import backend_for, tape_capable
from manntk.fast.armin_sequence import ArminSequence
from manntk.parts import Addressing, Cell, Part, Write
from manntk.state import State
from manntk.trace import record, scope


#: Inductor options of [`MemoryRNN.compile_layers`][manntk.engine.MemoryRNN.compile_layers].
#: With its default ``realize_opcount_threshold`` Inductor's CPU code computes wrong
#: gradients for ARMIN's gates (``[g_h * h, g_r * r]`` from one split gate: 25% off in
#: float64 on torch 2.13; docs/architecture.md has a reproducer without manntk); realizing every
#: intermediate that is read more than once makes them exact.
INDUCTOR_OPTIONS = {"realize_opcount_threshold": 0}


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
        chunk_kernel: the C++ kernel that runs a whole chunk of these parts
            ([`ArminSequence`][manntk.fast.armin_sequence.ArminSequence]), or ``None`` (the
            parts are not a composition it covers, or ``fast=False``).
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
    ) -> None:
        """``memory_start``: the ``[N, D]`` initial memory (zeros when ``None``), a trained
        parameter with ``learned_start``; with ``resample_bound`` every fresh state draws
        its own memory uniformly from ``[-bound, bound]`` instead. ``fast=False`` keeps
        every chunk on the plain per-step path."""
        super().__init__()
        self.cell, self.addressing, self.write = cell, addressing, write
        self.slots, self.width = slots, width
        self.discrete_eval = discrete_eval
        self.tape_capable = tape_capable(addressing, write)
        self.resample_bound = resample_bound
        self.chunk_kernel = ArminSequence.for_parts(cell, addressing, write) if fast else None
        initial = torch.zeros(slots, width) if memory_start is None else memory_start.detach().clone()
        if learned_start:
            self.memory_init = nn.Parameter(initial)
        else:
            self.register_buffer("memory_init", initial)

    @property
    def output_size(self) -> int:
        """Width of the layer's output ``o_t``."""
        return self.cell.output_size

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        """A fresh state: zero cell state, the initial memory and empty bookkeeping.

        The memory is a contiguous copy per row, not an expanded view, so a fresh state has
        the layout of a carried one (a compiled chunk would otherwise compile twice).
        """
        return {
            "cell": self.cell.init_state(batch_size, device, dtype),
            "addressing": self.addressing.init_state(batch_size, device, dtype),
            "write": self.write.init_state(batch_size, device, dtype),
            "memory": self._initial_memory(batch_size, device, dtype),
        }

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
        if self.chunk_kernel is not None and self.chunk_kernel.applies(x):
            return self.chunk_kernel(x, state)
        discrete = self.discrete_eval and not self.training
        prepared_cell, prepared_addressing, prepared_write = self.cell.prepare(x), self.addressing.prepare(x), self.write.prepare(x)
        cell_state, addressing_state = state["cell"], state.get("addressing", {})
        write_state, memory = state.get("write", {}), state["memory"]
        if discrete and not consume_state:
            memory = memory.clone()  # the discrete path writes in place; the caller's state stays intact
        memory = backend_for(memory, discrete=discrete, tape_capable=self.tape_capable)
        outputs = []
        for t in range(x.shape[1]):
            extra = {"write_state": write_state} if self.addressing.reads_write_state else {}
            address, addressing_state = self.addressing.step(prepared_addressing, t, cell_state["h"], memory.values, addressing_state, **extra)
            address, read, memory = memory.read(address)
            record("read", lambda address=address: address.dense(self.slots, read.dtype))
            output, cell_state = self.cell.step(prepared_cell, t, cell_state, read)
            memory, write_state = memory.write(self.write, prepared_write, t, cell_state["h"], address, write_state)
            outputs.append(output)
        new_state = {"cell": cell_state, "addressing": addressing_state, "write": write_state, "memory": memory.end()}
        return torch.stack(outputs, dim=1), new_state


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
