"""NTM content-based addressing (Graves et al., 2014), with optional location steps.

From ``[x_t, h]`` a head emits a key ``k``, a strength ``beta``, an interpolation gate
``g``, a shift distribution ``s`` and a sharpening exponent ``gamma``::

    K(k, M_i) = k . M_i / (||k|| ||M_i|| + eps)
    w^c = softmax(beta * K),                beta = softplus(.)
    w^g = g w^c + (1 - g) w_{t-1},          g = sigmoid(.)          (interpolation)
    w~  = circular_conv(w^g, s),            s = softmax over shifts -k..k
    w   = w~^gamma / sum_j w~_j^gamma,      gamma = 1 + softplus(.) (sharpening)

Norms and powers carry an ``eps`` so an all-zero memory gives finite weights and
finite gradients. Sharpening is computed as ``softmax(gamma * log(w~ + eps))``, equal to
the power form, so that a large ``gamma`` (every ``w~_j^gamma`` under float32's smallest
number) still gives weights that sum to 1 rather than 0 / 0.

The weights ``w_0`` before the first step (``start``) matter: uniform weights over a
memory whose slots are all equal give uniform content weights, which interpolation,
shifting and sharpening keep uniform, and the write then keeps the slots equal: the model
cannot learn. Either the memory (``model.memory.init: uniform``) or ``w_0``
(``first_slot``, ``learned``) must break the symmetry.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import attrs
import torch
from torch import Tensor, nn

from manntk.cells.common import project_inputs, split_input_weight
from manntk.config import non_negative, positive
from manntk.context import BuildContext
from manntk.fast.recurrent import RecurrentWeight
from manntk.hookspecs import hookimpl
from manntk.parts import Address, Addressing


@attrs.define
class NtmConfig:
    """Options of NTM addressing.

    Attributes:
        interpolation: blend with the previous weights through a gate ``g``.
        shift: largest location shift ``k`` (shifts ``-k..k``); 0 turns shifting off.
        sharpen: sharpen with an exponent ``gamma >= 1``.
        eps: added to norms and to the weights before sharpening.
        start: the weights before the first step: ``uniform`` (1/N on every slot),
            ``first_slot`` (all on slot 0, as a tape head starts) or ``learned`` (the
            softmax of trained logits, drawn from N(0, 1) when the model is built).
        init: the head Linear's initialisation: ``default`` (torch's) or ``xavier``
            (pytorch-ntm's heads, ``ntm/head.py``: Xavier-uniform weights with gain 1.4,
            biases from N(0, 0.01^2); the fan-in here counts ``x_t`` too, which
            pytorch-ntm's heads do not see).
    """

    interpolation: bool = True
    shift: int = attrs.field(default=1, validator=non_negative)
    sharpen: bool = True
    eps: float = attrs.field(default=1e-6, validator=positive)
    start: Literal["uniform", "first_slot", "learned"] = attrs.field(
        default="first_slot", validator=attrs.validators.in_(("uniform", "first_slot", "learned"))
    )
    init: Literal["default", "xavier"] = attrs.field(default="default", validator=attrs.validators.in_(("default", "xavier")))


def xavier_head_init(linear: nn.Linear) -> None:
    """pytorch-ntm's initialisation of a head's Linear (``ntm/head.py``, ``reset_parameters``),
    in place: weights Xavier-uniform with gain 1.4, biases from N(0, 0.01^2)."""
    with torch.no_grad():
        nn.init.xavier_uniform_(linear.weight, gain=1.4)
        nn.init.normal_(linear.bias, std=0.01)


def cosine_similarity(key: Tensor, memory: Tensor, eps: float) -> Tensor:
    """``K(k, M_i) = k . M_i / (||k|| ||M_i|| + eps)``: ``[B, W]`` x ``[B, N, W]`` -> ``[B, N]``.

    The norms are ``sqrt(sum x^2 + eps^2)``, whose gradient is finite at zero.
    """
    dot = torch.bmm(memory, key.unsqueeze(-1)).squeeze(-1)
    key_norm = (key.square().sum(-1, keepdim=True) + eps**2).sqrt()
    memory_norm = (memory.square().sum(-1) + eps**2).sqrt()
    return dot / (key_norm * memory_norm + eps)


def circular_shift(weights: Tensor, shift: Tensor) -> Tensor:
    """``w~_i = sum_d s_d w_{(i - d) mod N}`` for shifts ``d = -k..k``; ``shift`` is ``[B, 2k+1]``."""
    k = (shift.shape[-1] - 1) // 2
    rolled = torch.stack([torch.roll(weights, d, dims=-1) for d in range(-k, k + 1)], dim=-1)  # [B, N, 2k+1]
    return (rolled * shift.unsqueeze(1)).sum(-1)


class _Prepared(NamedTuple):
    head_x: tuple[Tensor, ...]  # per step [B, P]: the head projection's x columns, plus bias
    head_h: RecurrentWeight  # the head projection's h columns


class NtmAddressing(Addressing):
    """NTM addressing; ``W_head`` is a Linear over ``[x, h]`` giving ``[k, beta, g, s, gamma]``."""

    def __init__(self, config: NtmConfig, context: BuildContext) -> None:
        super().__init__()
        if context.slots < 1 or context.width < 1:
            raise ValueError("NTM addressing needs memory.slots >= 1 and memory.width >= 1")
        self.config = config
        self.input_size, self.slots, self.width = context.input_size, context.slots, context.width
        self.sizes = [context.width, 1, 1 if config.interpolation else 0, 2 * config.shift + 1 if config.shift else 0, 1 if config.sharpen else 0]
        self.W_head = nn.Linear(context.input_size + context.hidden_size, sum(self.sizes))
        if config.init == "xavier":
            xavier_head_init(self.W_head)
        if config.start == "learned":
            self.start_logits = nn.Parameter(torch.randn(self.slots))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        if self.config.start == "learned":
            start = torch.softmax(self.start_logits.to(device=device, dtype=dtype), dim=0)
        elif self.config.start == "first_slot":
            start = torch.zeros(self.slots, device=device, dtype=dtype)
            start[0] = 1.0
        else:
            start = torch.full((self.slots,), 1.0 / self.slots, device=device, dtype=dtype)
        return {"weights": start.expand(batch_size, -1).clone()}

    def prepare(self, x: Tensor) -> _Prepared:
        w_x, w_h = split_input_weight(self.W_head, self.input_size, [self.W_head.in_features - self.input_size])
        return _Prepared(project_inputs(x, w_x, self.W_head.bias), w_h)

    def step(
        self, prepared: _Prepared, t: int, hidden: Tensor, memory: Tensor, state: dict[str, Tensor]
    ) -> tuple[Address, dict[str, Tensor]]:
        head = prepared.head_h(prepared.head_x[t], hidden)
        key, beta, gate, shift, gamma = head.split(self.sizes, dim=-1)
        eps = self.config.eps
        weights = torch.softmax(nn.functional.softplus(beta) * cosine_similarity(key, memory, eps), dim=-1)
        if self.config.interpolation:
            gate = torch.sigmoid(gate)
            weights = gate * weights + (1 - gate) * state["weights"]
        if self.config.shift:
            weights = circular_shift(weights, torch.softmax(shift, dim=-1))
        if self.config.sharpen:
            # (w + eps)^gamma / sum (w + eps)^gamma as a softmax of gamma * log(w + eps): the same
            # weights, but a large gamma can no longer underflow every power to 0 (and 0 / 0)
            weights = torch.softmax((1 + nn.functional.softplus(gamma)) * torch.log(weights + eps), dim=-1)
        return Address(weights), {"weights": weights}


@hookimpl
def register_addressing(register):
    register("ntm", NtmAddressing, NtmConfig)
