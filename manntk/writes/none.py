"""Never write: the memory keeps its initial content (for ablations and read-only layers)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from manntk.context import BuildContext
from manntk.hookspecs import hookimpl
from manntk.parts import Address, Write


class NoWrite(Write):
    """Leaves the memory unchanged."""

    def __init__(self, config: None, context: BuildContext) -> None:
        super().__init__()

    def prepare(self, x: Tensor) -> None:
        return None

    def step(self, prepared: Any, t: int, memory: Tensor, hidden: Tensor, address: Address, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return memory, state


@hookimpl
def register_writes(register):
    register("none", NoWrite)
