"""The ``dnc`` write policy: the DNC's write head with usage-based allocation.

From ``h_t`` one Linear (the write half of the DNC's interface vector) gives the write
key ``k^w`` (W), its strength ``beta^w``, the erase vector ``e`` (W), the write vector
``v`` (W), the free gate ``f``, the allocation gate ``g^a`` and the write gate ``g^w``.
Then, with ``w^r`` the read weights of this step (the address the engine passes in,
which is the DNC's previous read)::

    u_t  = (u_{t-1} + w^w_{t-1} - u_{t-1} w^w_{t-1}) (1 - f w^r)
    a_t  = allocation(u_t)
    c^w  = softmax(oneplus(beta^w) cos(k^w, M_{t-1}))
    w^w  = sigmoid(g^w) (sigmoid(g^a) a_t + (1 - sigmoid(g^a)) c^w)
    M_t  = M_{t-1} (1 - w^w sigmoid(e)^T) + w^w v^T
    p_t, L_t  (precedence and temporal link, when ``link`` is on)

The state holds ``usage``, ``write_weights`` and, with ``link``, ``precedence`` and
``link``. See [`manntk_dnc.functional`][manntk_dnc.functional] for the formulas and the
gradient through the allocation's sort. Inside ``manntk.trace.tracing()`` it records
``write`` (the write weights), ``usage`` and ``allocation``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn

from manntk import memory as mem
from manntk.config import positive
from manntk.context import BuildContext
from manntk.parts import Address, Write
from manntk.trace import record

from manntk_dnc import functional as F


@attrs.define
class DncWriteConfig:
    """Options of the DNC write.

    Attributes:
        link: keep the precedence and the temporal link matrix in the state. The
            ``dnc_read`` addressing cannot see them through today's engine (it tracks
            its own estimate, see the README) but reads them when handed the write's
            state; ``false`` saves the ``O(N^2)`` work and memory per step.
        eps: smooths the norms of the content lookup.
    """

    link: bool = True
    eps: float = attrs.field(default=1e-6, validator=positive)


class DncWrite(Write):
    """The DNC write head; ``interface`` is a Linear ``h_t -> [k, beta, e, v, f, g^a, g^w]``."""

    def __init__(self, config: DncWriteConfig, context: BuildContext) -> None:
        super().__init__()
        if context.slots < 1 or context.width < 1:
            raise ValueError("the dnc write needs memory.slots >= 1 and memory.width >= 1")
        self.config = config
        self.slots, self.width = context.slots, context.width
        self.sizes = [context.width, 1, context.width, context.width, 1, 1, 1]
        self.interface = nn.Linear(context.hidden_size, sum(self.sizes))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        zeros = torch.zeros(batch_size, self.slots, device=device, dtype=dtype)
        state = {"usage": zeros, "write_weights": zeros.clone()}
        if self.config.link:
            state["precedence"] = zeros.clone()
            state["link"] = torch.zeros(batch_size, self.slots, self.slots, device=device, dtype=dtype)
        return state

    def prepare(self, x: Tensor) -> None:
        return None

    def step(
        self, prepared: Any, t: int, memory: Tensor, hidden: Tensor, address: Address, state: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        key, strength, erase, vector, free, allocation_gate, write_gate = self.interface(hidden).split(self.sizes, dim=-1)
        read = address.dense(self.slots, memory.dtype)
        usage = F.usage(state["usage"], state["write_weights"], torch.sigmoid(free), read)
        allocation = F.allocation(usage)
        content = F.content_weights(key, F.oneplus(strength), memory, self.config.eps)
        weights = F.write_weights(allocation, content, torch.sigmoid(allocation_gate), torch.sigmoid(write_gate))
        memory = mem.erase_add(memory, weights, torch.sigmoid(erase), vector)
        record("write", weights)
        record("usage", usage)
        record("allocation", allocation)
        new_state = {"usage": usage, "write_weights": weights}
        if self.config.link:
            new_state["precedence"] = F.precedence(state["precedence"], weights)
            new_state["link"] = F.link(state["link"], weights, state["precedence"])
        return memory, new_state
