"""The NTM write: a head with its own addressing, then erase and add.

``M_i <- M_i * (1 - w_i e) + w_i a`` with ``e = sigmoid(W_e h_t)``, ``a = tanh(W_a h_t)``
(or ``a = W_a h_t`` with ``add: linear``, as pytorch-ntm) and ``w`` the write head's
weights. The head is any addressing plugin (``ntm`` by
default); it sees ``[x_t, h_t]`` and ``M_{t-1}``. Unlike the overwrite policy the weights
are not detached: the write is fully differentiable.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import attrs
import torch
from torch import Tensor, nn

from manntk import memory as mem
from manntk.addressing.ntm import xavier_head_init
from manntk.config import AddressingSpec
from manntk.context import BuildContext
from manntk.fast.recurrent import RecurrentWeight
from manntk.hookspecs import hookimpl
from manntk.parts import Address, Write
from manntk.trace import record


@attrs.define
class EraseAddConfig:
    """Options of the erase/add write.

    Attributes:
        addressing: the write head's addressing (a plugin node, like ``model.addressing``).
        add: the add vector's activation: ``tanh`` (bounded, Graves et al.) or ``linear``
            (pytorch-ntm).
        init: the initialisation of ``W_ea``, the Linear giving ``[e, a]``: ``default``
            (torch's) or ``xavier`` (pytorch-ntm's write head: Xavier-uniform weights with
            gain 1.4, biases from N(0, 0.01^2); pytorch-ntm's one Linear also gives the
            head's addressing, whose own ``init`` is the head's option).
    """

    addressing: AddressingSpec = attrs.field(factory=lambda: AddressingSpec("ntm"))
    add: Literal["tanh", "linear"] = attrs.field(default="tanh", validator=attrs.validators.in_(("tanh", "linear")))
    init: Literal["default", "xavier"] = attrs.field(default="default", validator=attrs.validators.in_(("default", "xavier")))


class _Prepared(NamedTuple):
    head: Any  # the write head's prepared input
    W_ea: RecurrentWeight


class EraseAdd(Write):
    """Erase/add write; ``head`` is the write head's addressing, ``W_ea`` gives ``[e, a]``."""

    def __init__(self, config: EraseAddConfig, context: BuildContext) -> None:
        super().__init__()
        if context.slots < 1:
            raise ValueError("the erase_add policy needs memory.slots >= 1")
        self.slots, self.width = context.slots, context.width
        self.head = context.build(config.addressing, path=f"{context.path}.addressing")
        self.W_ea = nn.Linear(context.hidden_size, 2 * context.width)
        if config.init == "xavier":
            xavier_head_init(self.W_ea)
        self.bounded_add = config.add == "tanh"

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {"head": self.head.init_state(batch_size, device, dtype)}

    def prepare(self, x: Tensor) -> _Prepared:
        return _Prepared(self.head.prepare(x), RecurrentWeight.of(self.W_ea))

    def step(self, prepared: _Prepared, t: int, memory: Tensor, hidden: Tensor, address: Address, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        head_address, head_state = self.head.step(prepared.head, t, hidden, memory, state["head"])
        erase, add = prepared.W_ea(self.W_ea.bias, hidden).chunk(2, dim=-1)
        weights = head_address.dense(self.slots, memory.dtype)
        record("write", weights)
        return mem.erase_add(memory, weights, torch.sigmoid(erase), torch.tanh(add) if self.bounded_add else add), {"head": head_state}


@hookimpl
def register_writes(register):
    register("erase_add", EraseAdd, EraseAddConfig)
