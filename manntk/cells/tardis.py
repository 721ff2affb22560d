"""The TARDIS cell (Gulcehre et al., 2017).

```
[i, f, o, a, b] = W_gates [x_t, h_{t-1}, r_t] + b           (i, f, o: sigmoid)
alpha, beta     = GumbelSigmoid(a), GumbelSigmoid(b)       (scalars per example)
c~  = tanh(W_x x_t + beta * W_h h_{t-1} + alpha * W_r r_t)
c_t = f * c_{t-1} + i * c~;   h_t = o * tanh(c_t);   o_t = [h_t, r_t]
```

GumbelSigmoid is ``sigmoid((a + logistic noise) / temperature)`` in training and
``sigmoid(a / temperature)`` in evaluation.
"""

from __future__ import annotations

from typing import NamedTuple

import attrs
import torch
from torch import Tensor, nn

from manntk.cells.common import project_inputs, split_input_weight
from manntk.config import positive
from manntk.context import BuildContext
from manntk.fast.recurrent import RecurrentWeight
from manntk.hookspecs import hookimpl
from manntk.parts import Cell


@attrs.define
class TardisCellConfig:
    """Options of the TARDIS cell.

    Attributes:
        hidden_size: width of ``h_t`` and ``c_t``.
        forget_bias: added to the forget gate's pre-activation.
        gate_temperature: temperature of the Gumbel-sigmoid gates ``alpha``, ``beta``.
    """

    hidden_size: int = attrs.field(validator=positive)
    forget_bias: float = 0.0
    gate_temperature: float = attrs.field(default=1.0, validator=positive)


class _Prepared(NamedTuple):
    gates_x: tuple[Tensor, ...]  # per step [B, 3 d_h + 2]
    candidate_x: tuple[Tensor, ...]  # per step [B, d_h]: W_x x_t + b
    gates_hr: RecurrentWeight  # W_gates' [h, r] columns
    W_h: RecurrentWeight  # h -> candidate
    W_r: RecurrentWeight  # r -> candidate
    noise: Tensor | None  # [T, B, 2] logistic noise in training


class TardisCell(Cell):
    """The TARDIS cell: LSTM gates plus two scalar gates on ``h`` and ``r``."""

    def __init__(self, config: TardisCellConfig, context: BuildContext) -> None:
        super().__init__()
        d_i, d_h, d_r = context.input_size, config.hidden_size, context.width
        self.config = config
        self.input_size, self.hidden_size, self.read_size = d_i, d_h, d_r
        self.output_size = d_h + d_r
        self.W_gates = nn.Linear(d_i + d_h + d_r, 3 * d_h + 2)
        self.W_x = nn.Linear(d_i, d_h)
        self.W_h = nn.Linear(d_h, d_h, bias=False)
        self.W_r = nn.Linear(d_r, d_h, bias=False)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return {"h": zeros, "c": zeros.clone()}

    def prepare(self, x: Tensor) -> _Prepared:
        w_x, w_hr = split_input_weight(self.W_gates, self.input_size, [self.hidden_size, self.read_size])
        gates_x = project_inputs(x, w_x, self.W_gates.bias)
        noise = None
        if self.training:
            uniform = torch.rand(x.shape[1], x.shape[0], 2, device=x.device, dtype=x.dtype).clamp(1e-6, 1 - 1e-6)
            noise = torch.log(uniform) - torch.log1p(-uniform)
        candidate_x = project_inputs(x, self.W_x.weight, self.W_x.bias)
        return _Prepared(gates_x, candidate_x, w_hr, RecurrentWeight.of(self.W_h), RecurrentWeight.of(self.W_r), noise)

    def step(self, prepared: _Prepared, t: int, state: dict[str, Tensor], read: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h, c = state["h"], state["c"]
        gates = prepared.gates_hr(prepared.gates_x[t], h, read)
        i, f, o, scalar_logits = gates.split([self.hidden_size] * 3 + [2], dim=1)
        if prepared.noise is not None:
            scalar_logits = scalar_logits + prepared.noise[t]
        alpha, beta = torch.sigmoid(scalar_logits / self.config.gate_temperature).split(1, dim=1)
        candidate = torch.tanh(prepared.candidate_x[t] + beta * prepared.W_h(None, h) + alpha * prepared.W_r(None, read))
        c_new = torch.sigmoid(f + self.config.forget_bias) * c + torch.sigmoid(i) * candidate
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return torch.cat([h_new, read], dim=1), {"h": h_new, "c": c_new}


@hookimpl
def register_cells(register):
    register("tardis", TardisCell, TardisCellConfig)
