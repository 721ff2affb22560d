"""ARMIN auto-addressing (paper, eq. 9-10).

```
s_t = gumbel_softmax(W_s [x_t, h_{t-1}] + b_s)      # N logits, one-hot sample   (9)
r_t = sum_i s_t(i) M(i, :)                                                        (10)
```

The address depends only on the input and the hidden state, never on the memory's
content, so its cost does not grow with the slot width, and on the discrete path (argmax,
read by index) the read itself costs the same for any number of slots.
"""

from __future__ import annotations

from typing import NamedTuple

import attrs
from torch import Tensor, nn

from manntk.cells.common import project_inputs, split_input_weight
from manntk.context import BuildContext
from manntk.fast.recurrent import RecurrentWeight
from manntk.hookspecs import hookimpl
from manntk.parts import Address
from manntk.sampling import HardAddressing, HardAddressingConfig


@attrs.define
class AutoConfig(HardAddressingConfig):
    """Options of auto-addressing: those of every hard addressing (``hard``, ``temperature``)."""


class _Prepared(NamedTuple):
    logits_x: tuple[Tensor, ...]  # per step [B, N]: W_s's x columns applied to x_t, plus b_s
    logits_h: RecurrentWeight  # W_s's h columns
    noise: Tensor | None  # [T, B, N] Gumbel noise in training
    tau: float | Tensor


class AutoAddressing(HardAddressing):
    """Auto-addressing; ``W_s`` is a Linear over ``[x, h]`` giving the N slot logits."""

    reads_content = False

    def __init__(self, config: AutoConfig, context: BuildContext) -> None:
        super().__init__(config)
        if context.slots < 1:
            raise ValueError("auto-addressing needs memory.slots >= 1")
        self.input_size = context.input_size
        self.W_s = nn.Linear(context.input_size + context.hidden_size, context.slots)

    def prepare(self, x: Tensor) -> _Prepared:
        w_x, w_h = split_input_weight(self.W_s, self.input_size, [self.W_s.in_features - self.input_size])
        logits_x = project_inputs(x, w_x, self.W_s.bias)
        noise = self.chunk_noise((x.shape[1], x.shape[0], self.W_s.out_features), x)
        return _Prepared(logits_x, w_h, noise, self.tau())

    def step(
        self, prepared: _Prepared, t: int, hidden: Tensor, memory: Tensor, state: dict[str, Tensor]
    ) -> tuple[Address, dict[str, Tensor]]:
        logits = prepared.logits_h(prepared.logits_x[t], hidden)
        noise = None if prepared.noise is None else prepared.noise[t]
        return self.sample(logits, prepared.tau, noise), state


@hookimpl
def register_addressing(register):
    register("auto", AutoAddressing, AutoConfig)
