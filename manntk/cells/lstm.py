"""An LSTM controller: input ``[x_t, r_t]``, output ``[h_t, r_t]``.

```
[i, f, g, o] = W [x_t, h_{t-1}, r_t] + b
c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
h_t = sigmoid(o) * tanh(c_t)
o_t = [h_t, r_t]
```

With no memory (addressing ``none``) it is a plain LSTM: the baseline of the paper.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import attrs
import torch
from torch import Tensor, nn

from manntk.cells.common import GateNorm, project_inputs, split_input_weight, zoneout
from manntk.config import positive, probability
from manntk.context import BuildContext
from manntk.fast.recurrent import RecurrentWeight
from manntk.hookspecs import hookimpl
from manntk.parts import Cell


@attrs.define
class LstmConfig:
    """Options of the LSTM controller.

    Attributes:
        hidden_size: width of ``h_t`` and ``c_t``.
        forget_bias: added to the forget gate's pre-activation.
        layer_norm: normalise each gate block's pre-activation and ``c_t`` before the
            output ``tanh`` (Ba et al., 2016).
        zoneout: probability that a unit of ``h`` and of ``c`` keeps its previous value.
        learned_state: ``h_0`` and ``c_0`` are trained parameters (starting at zero, as
            pytorch-ntm's controller) instead of zeros.
        init: the initialisation of ``W``: ``default`` (torch's Linear) or
            ``pytorch_ntm`` (pytorch-ntm's controller, ``ntm/controller.py``
            ``reset_parameters``: weights uniform in ``+-5 / sqrt(d_i + d_r + d_h)``, its
            LSTM's inputs ``[x_t, r]`` plus its outputs, and biases zero).
    """

    hidden_size: int = attrs.field(validator=positive)
    forget_bias: float = 0.0
    layer_norm: bool = False
    zoneout: float = attrs.field(default=0.0, validator=probability)
    learned_state: bool = False
    init: Literal["default", "pytorch_ntm"] = attrs.field(default="default", validator=attrs.validators.in_(("default", "pytorch_ntm")))


class _Prepared(NamedTuple):
    gates_x: tuple[Tensor, ...]  # per step [B, 4 d_h]
    gates_hr: RecurrentWeight  # W's [h, r] columns


class LstmCell(Cell):
    """LSTM controller; ``W`` is a Linear over ``[x, h, r]`` giving ``[i, f, g, o]``."""

    def __init__(self, config: LstmConfig, context: BuildContext) -> None:
        super().__init__()
        d_i, d_h, d_r = context.input_size, config.hidden_size, context.width
        self.config = config
        self.input_size, self.hidden_size, self.read_size = d_i, d_h, d_r
        self.output_size = d_h + d_r
        self.W = nn.Linear(d_i + d_h + d_r, 4 * d_h)
        if config.init == "pytorch_ntm":
            bound = 5 / math.sqrt(d_i + d_r + d_h)
            with torch.no_grad():
                nn.init.uniform_(self.W.weight, -bound, bound)
                nn.init.zeros_(self.W.bias)
        self.norm_gates = GateNorm([d_h] * 4) if config.layer_norm else nn.Identity()
        self.norm_cell = nn.LayerNorm(d_h) if config.layer_norm else nn.Identity()
        if config.learned_state:
            self.h_0 = nn.Parameter(torch.zeros(d_h))
            self.c_0 = nn.Parameter(torch.zeros(d_h))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        if self.config.learned_state:
            return {name: start.to(device=device, dtype=dtype).expand(batch_size, -1).clone() for name, start in (("h", self.h_0), ("c", self.c_0))}
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return {"h": zeros, "c": zeros.clone()}

    def prepare(self, x: Tensor) -> _Prepared:
        w_x, w_hr = split_input_weight(self.W, self.input_size, [self.hidden_size, self.read_size])
        return _Prepared(project_inputs(x, w_x, self.W.bias), w_hr)

    def step(self, prepared: _Prepared, t: int, state: dict[str, Tensor], read: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h, c = state["h"], state["c"]
        gates = self.norm_gates(prepared.gates_hr(prepared.gates_x[t], h, read))
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f + self.config.forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(self.norm_cell(c_new))
        output = torch.cat([h_new, read], dim=1)
        rate, training = self.config.zoneout, self.training
        return output, {"h": zoneout(h, h_new, rate, training), "c": zoneout(c, c_new, rate, training)}


@hookimpl
def register_cells(register):
    register("lstm", LstmCell, LstmConfig)
