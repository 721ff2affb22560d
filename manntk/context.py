"""What a part's factory knows about its surroundings when it is built."""

from __future__ import annotations

from typing import Any

import attrs
from torch import nn

from manntk.config import ConfigError, PartSpec
from manntk.registry import PartError, Registry


@attrs.frozen
class BuildContext:
    """Sizes around a part, and a way to build sub-parts.

    Attributes:
        input_size: width of ``x_t`` for this layer.
        hidden_size: width of the cell's ``h`` (0 while the cell itself is built).
        slots: number of memory slots N (0 without memory).
        width: width of a memory slot, which is the read size ``d_r`` (0 without memory).
        registry: the registry to build sub-parts from.
        path: where this part sits in the recipe, for error messages (``model.write``).
    """

    input_size: int
    hidden_size: int
    slots: int
    width: int
    registry: Registry
    path: str = "model"

    def build(self, spec: PartSpec, path: str | None = None) -> nn.Module:
        """Build the part that ``spec`` names, with this context.

        Raises:
            manntk.registry.PartError: the part's factory raised (its options, or a bug of
                its plugin): one line naming the recipe path, the part and its plugin.
        """
        entry = self.registry.get(spec.kind, spec.name)
        config = spec.config
        if config is None and entry.config is not None:
            config = entry.config()
        context = attrs.evolve(self, path=path or self.path)
        try:
            return entry.factory(config, context)
        except (ConfigError, PartError):  # a sub-part's (erase_add's head), said already
            raise
        except Exception as error:  # a plugin's constructor may raise anything: said in one line with its origin
            raise PartError(context.path, spec.kind, entry, error) from error

    def with_(self, **changes: Any) -> "BuildContext":
        """A copy with some fields changed."""
        return attrs.evolve(self, **changes)
