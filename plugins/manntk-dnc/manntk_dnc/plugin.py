"""The entry point of ``manntk-dnc``: registers ``dnc_read`` (addressing) and ``dnc`` (write).

``pyproject.toml`` declares it under the ``manntk`` entry-point group, so installing the
distribution is all it takes for recipes to name these parts.
"""

from __future__ import annotations

from manntk.hookspecs import Register, hookimpl

from manntk_dnc.read import DncRead, DncReadConfig
from manntk_dnc.write import DncWrite, DncWriteConfig


@hookimpl
def register_addressing(register: Register) -> None:
    register("dnc_read", DncRead, DncReadConfig)


@hookimpl
def register_writes(register: Register) -> None:
    register("dnc", DncWrite, DncWriteConfig)
