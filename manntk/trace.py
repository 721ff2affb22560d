"""Recording what a model does at every step, for pictures of memory access.

Parts call [`record`][manntk.trace.record] with a name and a tensor; outside a
[`tracing`][manntk.trace.tracing] block that is a no-op, so the hot loop pays one function
call. Inside it, every recorded tensor is kept (detached, on the CPU) per layer and step::

    with manntk.trace.tracing() as trace:
        model(x)
    trace["layer0.read"]      # [T, B, N] read weights
    trace["layer0.g_h"]       # [T, B, d_h] the ARMIN cell's h gate
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import Tensor

_active: ContextVar[dict[str, list[Tensor]] | None] = ContextVar("manntk_trace", default=None)
_depth = 0  # open tracing blocks anywhere: a plain global, cheaper to test than the context variable
_scope: ContextVar[str] = ContextVar("manntk_trace_scope", default="")


class Trace(dict):
    """Recorded tensors by name, each stacked over time: ``[T, ...]``."""


@contextmanager
def tracing() -> Iterator[Trace]:
    """Record every [`record`][manntk.trace.record] call made inside the block."""
    global _depth
    recordings: dict[str, list[Tensor]] = {}
    result = Trace()
    token = _active.set(recordings)
    _depth += 1
    try:
        yield result
    finally:
        _depth -= 1
        _active.reset(token)
        result.update({name: torch.stack(values) for name, values in recordings.items()})


def is_tracing() -> bool:
    """Whether a [`tracing`][manntk.trace.tracing] block is open in this context (a fast
    path that records nothing steps aside then)."""
    return bool(_depth) and _active.get() is not None


@contextmanager
def scope(name: str) -> Iterator[None]:
    """Prefix the names recorded inside the block (the engine uses ``layer<i>``)."""
    token = _scope.set(name)
    try:
        yield
    finally:
        _scope.reset(token)


def record(name: str, value: Tensor | Callable[[], Tensor]) -> None:
    """Keep ``value`` under ``name`` (within the current scope) when tracing; otherwise nothing.

    ``value`` may be a function of no arguments that makes the tensor: it is called only
    when tracing, so the hot loop does not build tensors that nobody keeps.
    """
    if not _depth:
        return
    recordings = _active.get()
    if recordings is not None:
        if callable(value):
            value = value()
        prefix = _scope.get()
        key = f"{prefix}.{name}" if prefix else name
        recordings.setdefault(key, []).append(value.detach().float().cpu())
