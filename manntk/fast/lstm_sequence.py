"""A whole chunk of a memoryless LSTM layer (the paper's LSTM baseline) through torch's own
LSTM (``torch.lstm``, what ``torch.nn.LSTM`` runs: one fused kernel per chunk on the CPU).

The ``lstm`` cell with ``none`` addressing and ``none`` write is the LSTM of
``torch.nn.LSTM``: the same gates in the same order (``i, f, g, o``) over ``[x_t, h_{t-1}]``.
The engine's step spends ~25 PyTorch operations forward and as many autograd nodes
backward per time step on it, which at batch 1 (the algorithmic tasks' protocol) is most
of the time; torch's LSTM runs the chunk in one call. The cell's ``W`` is split into
torch's ``w_ih`` (the ``x`` columns) and ``w_hh`` (the ``h`` columns), and ``forget_bias`` is
added to the ``f`` block of the bias, so gradients reach ``W`` and the bias as on the
plain path; the numbers are the plain path's up to float rounding
(``tests/test_lstm_sequence.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from manntk.fast.armin_fused import chunk_runs_on
from manntk.state import State


class LstmSequence:
    """The chunk path of a memoryless ``lstm`` layer; [`for_parts`][manntk.fast.lstm_sequence.LstmSequence.for_parts]
    says whether parts are the composition it covers. The parts are read at every chunk."""

    read_orders = ("before",)
    """The step orders it implements: the read before the cell only."""

    @staticmethod
    def covers(cell: Any, addressing: Any, write: Any) -> bool:
        """Whether these parts are a memoryless LSTM without layer norm (torch's LSTM has none)."""
        from manntk.addressing.none import NoAddressing
        from manntk.cells.lstm import LstmCell
        from manntk.writes.none import NoWrite

        return (type(cell) is LstmCell and type(addressing) is NoAddressing and type(write) is NoWrite
                and cell.read_size == 0 and not cell.config.layer_norm)

    @classmethod
    def for_parts(cls, cell: Any, addressing: Any, write: Any) -> "LstmSequence | None":
        """The chunk path for a layer of these parts, or ``None`` when they are not a memoryless LSTM."""
        return cls() if cls.covers(cell, addressing, write) else None

    def applies(self, layer: Any, x: Tensor) -> bool:
        """Whether the chunk ``x`` of ``layer`` can run here: the parts it covers, no zoneout
        (a per-step mask torch's LSTM cannot apply), and where any chunk kernel may run
        ([`chunk_runs_on`][manntk.fast.armin_fused.chunk_runs_on]; no C++ build needed)."""
        return self.covers(layer.cell, layer.addressing, layer.write) and not layer.cell.config.zoneout and chunk_runs_on(x)

    def __call__(self, layer: Any, x: Tensor, state: State, consume_state: bool = False) -> tuple[Tensor, State]:
        """``layer``'s chunk ``x`` ``[B, T, d_i]`` from ``state``: ``o`` ``[B, T, d_h]`` and the new
        state, as the plain path (``consume_state`` changes nothing: there is no memory)."""
        cell = layer.cell
        d_i, d_h = cell.input_size, cell.hidden_size
        weight, bias = cell.W.weight, cell.W.bias
        if cell.config.forget_bias:
            shift = torch.zeros_like(bias)
            shift[d_h:2 * d_h] = cell.config.forget_bias
            bias = bias + shift
        params = [weight[:, :d_i], weight[:, d_i:], bias, torch.zeros_like(bias)]
        h0, c0 = state["cell"]["h"].unsqueeze(0), state["cell"]["c"].unsqueeze(0)
        out, h, c = torch.lstm(x, (h0, c0), params, True, 1, 0.0, layer.training, False, True)
        new_state = {"cell": {"h": h.squeeze(0), "c": c.squeeze(0)}, "addressing": state.get("addressing", {}),
                     "write": state.get("write", {}), "memory": state["memory"]}
        return out, new_state
