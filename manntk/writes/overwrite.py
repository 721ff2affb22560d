"""Overwrite the slot just read with the new hidden state (paper, section 3.3).

``M_t = M_{t-1} * (1 - w) + w v^T`` with ``w`` the read weights, detached, and ``v = h_t``
(through a Linear ``d_h -> d_r`` when the widths differ; ``value: input_and_hidden``:
``v = W_v [x_t, h_t]``, as the authors' code). For the first N steps of a
sequence the write goes to empty slot t instead (fill-empty-first); a per-row counter in
the write state keeps track, so it carries across TBPTT chunks. With hard (one-hot)
addresses the slot is replaced by index, which touches one slot per row instead of the
whole memory: out of place in training, in place on the discrete evaluation path.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import attrs
import torch
from torch import Tensor, nn

from manntk import memory as mem
from manntk.cells.common import project_inputs, split_input_weight
from manntk.context import BuildContext
from manntk.fast.recurrent import RecurrentWeight
from manntk.hookspecs import hookimpl
from manntk.parts import Address, Write
from manntk.trace import record


class _Prepared(NamedTuple):
    x: tuple[Tensor, ...] | None  # per step [B, D]: W_v's x columns applied to x_t, plus the bias (value: input_and_hidden)
    h: RecurrentWeight  # W_v's h columns


@attrs.define
class OverwriteConfig:
    """Options of the overwrite policy.

    Attributes:
        fill_empty_first: write the first N steps of a sequence into empty slots.
        projection: pass ``h_t`` through a Linear before writing; ``null`` (default):
            only when the hidden size differs from the slot width (the paper);
            ``true``: always (the authors' code).
        value: what is written: ``hidden`` (``h_t``, projected as ``projection`` says) or
            ``input_and_hidden`` (a Linear over ``[x_t, h_t]``, the authors' ``W_v``).
        argmax: with soft reads, replace only the slot of the largest read weight, as a
            one-hot read would, instead of blending ``h_t`` into every slot by its
            weight. The write address carries no gradient either way; the blend slowly
            overwrites slots that are still to be read (the copy task's longest
            sequences, docs/architecture.md).
    """

    fill_empty_first: bool = True
    projection: bool | None = None
    value: Literal["hidden", "input_and_hidden"] = attrs.field(default="hidden", validator=attrs.validators.in_(("hidden", "input_and_hidden")))
    argmax: bool = False


class Overwrite(Write):
    """Overwrite the read slot; ``W_v`` (when present) maps ``h_t`` to the slot width."""

    def __init__(self, config: OverwriteConfig, context: BuildContext) -> None:
        super().__init__()
        if context.slots < 1:
            raise ValueError("the overwrite policy needs memory.slots >= 1")
        from_input = config.value == "input_and_hidden"
        project = from_input or (config.projection if config.projection is not None else context.hidden_size != context.width)
        if from_input and config.projection is False:
            raise ValueError("value: input_and_hidden writes a projection of [x_t, h_t]: it needs projection true or null")
        if not project and context.hidden_size != context.width:
            raise ValueError(
                f"projection: false needs memory.width == the cell's hidden size, got {context.width} and {context.hidden_size}"
            )
        self.fill_empty_first = config.fill_empty_first
        self.argmax = config.argmax
        self.slots = context.slots
        self.input_size = context.input_size if from_input else 0
        self.W_v = nn.Linear(self.input_size + context.hidden_size, context.width) if project else nn.Identity()

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {"filled": torch.zeros(batch_size, dtype=torch.long, device=device)} if self.fill_empty_first else {}

    def prepare(self, x: Tensor) -> _Prepared | None:
        if not isinstance(self.W_v, nn.Linear):
            return None
        if not self.input_size:
            return _Prepared(None, RecurrentWeight.of(self.W_v))
        w_x, w_h = split_input_weight(self.W_v, self.input_size, [self.W_v.in_features - self.input_size])
        return _Prepared(project_inputs(x, w_x, self.W_v.bias), w_h)

    replaces_slots = True

    def replacement(self, prepared: _Prepared | None, t: int, hidden: Tensor, address: Address, state: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]] | None:
        """With a hard address (or ``argmax``): the slot to replace, ``v`` and the new state."""
        index = address.index
        if index is None and self.argmax:
            index = address.weights.argmax(dim=-1)
        if index is None:
            return None
        slot = mem.fill_target(state["filled"], index, self.slots) if self.fill_empty_first else index
        record("write", lambda: nn.functional.one_hot(slot, self.slots))
        return slot, self._value(prepared, t, hidden), self._advance(state)

    def step(self, prepared: _Prepared | None, t: int, memory: Tensor, hidden: Tensor, address: Address, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        replaced = self.replacement(prepared, t, hidden, address, state)
        if replaced is not None:  # replace one slot by index
            slot, value, state = replaced
            write = mem.overwrite_index_ if address.weights is None else mem.overwrite_index
            return write(memory, slot, value), state
        weights = address.weights.detach()
        if self.fill_empty_first:
            weights = mem.fill_weights(state["filled"], weights)
        record("write", weights)
        return mem.overwrite(memory, weights, self._value(prepared, t, hidden)), self._advance(state)

    def _value(self, prepared: _Prepared | None, t: int, hidden: Tensor) -> Tensor:
        if prepared is None:
            return hidden
        return prepared.h(self.W_v.bias if prepared.x is None else prepared.x[t], hidden)

    def _advance(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"filled": (state["filled"] + 1).clamp_max(self.slots)} if self.fill_empty_first else state


@hookimpl
def register_writes(register):
    register("overwrite", Overwrite, OverwriteConfig)
