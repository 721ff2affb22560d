"""No memory at all: with this addressing a layer is a plain recurrent network."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from manntk.context import BuildContext
from manntk.hookspecs import hookimpl
from manntk.parts import Address, Addressing


class NoAddressing(Addressing):
    """Reads nothing: the layer gets a memory of 0 slots and the cell an empty ``r_t``."""

    uses_memory = False

    def __init__(self, config: None, context: BuildContext) -> None:
        super().__init__()

    def prepare(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], 0)

    def step(self, prepared: Any, t: int, hidden: Tensor, memory: Tensor, state: dict[str, Tensor]) -> tuple[Address, dict[str, Tensor]]:
        return Address(prepared), state


@hookimpl
def register_addressing(register):
    register("none", NoAddressing)
