"""Overwrite the slot just read with the new hidden state (paper, section 3.3).

``M_t = M_{t-1} * (1 - w) + w v^T`` with ``w`` the read weights, detached, and ``v = h_t``
(through a Linear ``d_h -> d_r`` when the widths differ). For the first N steps of a
sequence the write goes to empty slot t instead (fill-empty-first); a per-row counter in
the write state keeps track, so it carries across TBPTT chunks. With hard (one-hot)
addresses the slot is replaced by index, which touches one slot per row instead of the
whole memory: out of place in training, in place on the discrete evaluation path.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from manntk import memory as mem
from manntk.context import BuildContext
from manntk.hookspecs import hookimpl
from manntk.parts import Address, Write
from manntk.fast.recurrent import RecurrentWeight
from manntk.trace import record


@attrs.define
class OverwriteConfig:
    """Options of the overwrite policy.

    Attributes:
        fill_empty_first: write the first N steps of a sequence into empty slots.
        projection: pass ``h_t`` through a Linear before writing; ``null`` (default):
            only when the hidden size differs from the slot width (the paper);
            ``true``: always (the authors' code).
        argmax: with soft reads, replace only the slot of the largest read weight, as a
            one-hot read would, instead of blending ``h_t`` into every slot by its
            weight. The write address carries no gradient either way; the blend slowly
            overwrites slots that are still to be read (the copy task's longest
            sequences, docs/architecture.md).
    """

    fill_empty_first: bool = True
    projection: bool | None = None
    argmax: bool = False


class Overwrite(Write):
    """Overwrite the read slot; ``W_v`` (when present) maps ``h_t`` to the slot width."""

    def __init__(self, config: OverwriteConfig, context: BuildContext) -> None:
        super().__init__()
        if context.slots < 1:
            raise ValueError("the overwrite policy needs memory.slots >= 1")
        project = config.projection if config.projection is not None else context.hidden_size != context.width
        if not project and context.hidden_size != context.width:
            raise ValueError(
                f"projection: false needs memory.width == the cell's hidden size, got {context.width} and {context.hidden_size}"
            )
        self.fill_empty_first = config.fill_empty_first
        self.argmax = config.argmax
        self.slots = context.slots
        self.W_v = nn.Linear(context.hidden_size, context.width) if project else nn.Identity()

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {"filled": torch.zeros(batch_size, dtype=torch.long, device=device)} if self.fill_empty_first else {}

    def prepare(self, x: Tensor) -> RecurrentWeight | None:
        return RecurrentWeight.of(self.W_v) if isinstance(self.W_v, nn.Linear) else None

    replaces_slots = True

    def replacement(self, prepared: RecurrentWeight | None, t: int, hidden: Tensor, address: Address, state: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]] | None:
        """With a hard address (or ``argmax``): the slot to replace, ``v`` and the new state."""
        index = address.index
        if index is None and self.argmax:
            index = address.weights.argmax(dim=-1)
        if index is None:
            return None
        slot = mem.fill_target(state["filled"], index, self.slots) if self.fill_empty_first else index
        record("write", lambda: nn.functional.one_hot(slot, self.slots))
        return slot, self._value(prepared, hidden), self._advance(state)

    def step(self, prepared: RecurrentWeight | None, t: int, memory: Tensor, hidden: Tensor, address: Address, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        replaced = self.replacement(prepared, t, hidden, address, state)
        if replaced is not None:  # replace one slot by index
            slot, value, state = replaced
            write = mem.overwrite_index_ if address.weights is None else mem.overwrite_index
            return write(memory, slot, value), state
        weights = address.weights.detach()
        if self.fill_empty_first:
            weights = mem.fill_weights(state["filled"], weights)
        record("write", weights)
        return mem.overwrite(memory, weights, self._value(prepared, hidden)), self._advance(state)

    def _value(self, prepared: RecurrentWeight | None, hidden: Tensor) -> Tensor:
        return hidden if prepared is None else prepared(self.W_v.bias, hidden)

    def _advance(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"filled": (state["filled"] + 1).clamp_max(self.slots)} if self.fill_empty_first else state


@hookimpl
def register_writes(register):
    register("overwrite", Overwrite, OverwriteConfig)
