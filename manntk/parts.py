"""The contracts of the three kinds of part: cells, addressing and write policies.

Every part is an ``nn.Module`` with two-phase compute: ``prepare(x)`` runs once per
chunk on the whole input ``x`` ``[B, T, input_size]`` (for instance the input half of
every projection, for all T steps as one matrix product), and ``step(prepared, t, ...)``
runs once per time step. Recurrent state lives in plain dicts of tensors that the engine
passes in and gets back; no part keeps recurrent state on itself.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn


class Address(NamedTuple):
    """Where a head reads or writes.

    Attributes:
        weights: ``[B, slots]``, summing to one over slots; ``None`` on the discrete
            path, where only ``index`` is known.
        index: ``[B]`` slot indices when the weights are one-hot (hard addressing),
            else ``None``.
    """

    weights: Tensor | None
    index: Tensor | None = None

    def dense(self, slots: int, dtype: torch.dtype) -> Tensor:
        """The weights ``[B, slots]``, built from ``index`` as one-hot rows when absent."""
        if self.weights is not None:
            return self.weights
        return nn.functional.one_hot(self.index, slots).to(dtype)


class Part(nn.Module):
    """What every part has: a fresh state, a per-chunk preparation, and hooks into the
    training loop (so that the trainer knows no part by name).

    Attributes:
        compiles: ``False`` for a part whose step ``torch.compile`` cannot trace (custom
            C++ kernels): ``train.compile`` is then refused with the part named.
    """

    compiles: bool = True

    def set_training_step(self, step: int) -> None:
        """Move the part's per-step schedules (a temperature, say) to training step
        ``step``; called before every training step and on resume. Default: nothing."""

    def training_metrics(self) -> dict[str, float]:
        """Values to log beside the training loss (the current temperature, say). Default: none."""
        return {}

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """The state at the start of a sequence (default: no state)."""
        return {}

    def prepare(self, x: Tensor) -> Any:
        """Per-chunk work on ``x`` ``[B, T, D]`` (default: the T steps ``x_t``, each ``[B, D]``).

        Return per-step tensors as a sequence (``unbind``), not one tensor indexed at every
        step: each index would cost a whole-chunk gradient in backward.
        """
        return x.unbind(1)


class Cell(Part):
    """A recurrent cell: ``(x_t, state, r_t) -> (o_t, state)``.

    Attributes:
        hidden_size: width of ``state["h"]``, the state that addressing and writes see.
        output_size: width of ``o_t``.
    """

    hidden_size: int
    output_size: int

    def step(self, prepared: Any, t: int, state: dict[str, Tensor], read: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One time step.

        Args:
            prepared: what ``prepare`` returned for this chunk.
            t: the time step within the chunk.
            state: the cell state; ``state["h"]`` is ``h_{t-1}`` ``[B, hidden_size]``.
            read: ``r_t`` ``[B, width]``, the memory read of this step (``r_{t-1}``, the
                previous step's, with ``model.read: after``).

        Returns:
            ``o_t`` ``[B, output_size]`` and the new state (``"h"`` holds ``h_t``).
        """
        raise NotImplementedError


class Addressing(Part):
    """An addressing mechanism: ``(x_t, h, M, state) -> (Address, state)``.

    Attributes:
        uses_memory: ``False`` for a part that never reads (the LSTM baseline): the
            layer then gets no memory at all.
        reads_write_state: ``True`` for a part that needs the write policy's state (as it
            was after the previous step's write), e.g. DNC reads that follow the write
            head's temporal links: the engine then passes it as ``step(...,
            write_state=...)``.
        reads_content: ``False`` for a part whose addresses never depend on the
            memory's values (ARMIN auto-addressing). With a write policy that
            ``replaces_slots``, training then keeps the memory on a
            [`MemoryTape`][manntk.fast.tape.MemoryTape] (in-place writes, undone in backward),
            and ``step`` gets its current values outside autograd.
    """

    uses_memory: ClassVar[bool] = True
    reads_write_state: ClassVar[bool] = False
    reads_content: ClassVar[bool] = True

    def step(
        self, prepared: Any, t: int, hidden: Tensor, memory: Tensor, state: dict[str, Tensor]
    ) -> tuple[Address, dict[str, Tensor]]:
        """One time step.

        Args:
            prepared: what ``prepare`` returned for this chunk.
            t: the time step within the chunk.
            hidden: the controller state ``[B, hidden_size]``: ``h_{t-1}`` for a read
                head (``h_t`` with ``model.read: after``), ``h_t`` for a write head.
            memory: ``M_{t-1}`` ``[B, slots, width]``.
            state: the addressing state.

        Returns:
            The address and the new state. In evaluation a hard addressing may return
            ``Address(None, index)``: the engine then reads and writes by index.
        """
        raise NotImplementedError


class Write(Part):
    """A write policy: ``(M, h_t, address) -> (M, state)``.

    Attributes:
        replaces_slots: ``True`` for a policy whose ``replacement`` can say, at least at
            some steps, that the write replaces one slot per row with a value.
    """

    replaces_slots: ClassVar[bool] = False

    def replacement(
        self, prepared: Any, t: int, hidden: Tensor, address: Address, state: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]] | None:
        """This step's write as ``(slot [B], value [B, width], new state)`` when it
        replaces slot ``slot_b`` of each row with ``value_b`` and changes nothing else;
        ``None`` when it does not (then the engine calls ``step``).

        Lets the engine write without the whole memory in hand: in place on a
        [`MemoryTape`][manntk.fast.tape.MemoryTape] in training. The arguments are those of ``step``.
        """
        return None

    def step(
        self, prepared: Any, t: int, memory: Tensor, hidden: Tensor, address: Address, state: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One time step.

        Args:
            prepared: what ``prepare`` returned for this chunk.
            t: the time step within the chunk.
            memory: ``M_{t-1}`` ``[B, slots, width]``. When ``address.weights`` is
                ``None`` (the discrete path) the engine owns this tensor for the chunk
                and the write may update it in place.
            hidden: ``h_t`` ``[B, hidden_size]``.
            address: where this step read.
            state: the write state.

        Returns:
            ``M_t`` and the new state.
        """
        raise NotImplementedError
