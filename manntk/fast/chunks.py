"""Which chunk kernel runs a layer: the first whose ``for_parts`` accepts its parts.

A chunk kernel runs a whole chunk of one composition of parts in one call (forward and
backward) instead of the engine's per-step loop; each is checked against the plain path
by its own tests. It is chosen once, when the layer is built, by what the parts are, and
asked again at every chunk whether it ``applies`` (device, dtype, compile, tracing).
"""

from __future__ import annotations

from typing import Any

from manntk.fast.armin_sequence import ArminSequence
from manntk.fast.lstm_sequence import LstmSequence
from manntk.fast.ntm_sequence import NtmSequence
from manntk.fast.tardis_sequence import TardisSequence

CHUNK_KERNELS = (ArminSequence, TardisSequence, LstmSequence, NtmSequence)
"""The kernels, tried in order. Each implements the step orders in its ``read_orders``
(the ARMIN, TARDIS-addressing and LSTM kernels the read before the cell; the NTM-style
kernel both)."""


def chunk_kernel_for(cell: Any, addressing: Any, write: Any, read: str = "before") -> Any | None:
    """The chunk kernel for a layer of these parts and this read order, or ``None`` (the plain path)."""
    for kernel in CHUNK_KERNELS:
        if read not in kernel.read_orders:
            continue
        chosen = kernel.for_parts(cell, addressing, write)
        if chosen is not None:
            return chosen
    return None
