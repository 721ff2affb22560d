"""TARDIS addressing (Gulcehre et al., 2017), used by TARDIS and AwTA.

Slot i holds a learned address vector ``A_i`` (``key_size``) beside its content ``C_i``
(the memory row). With ``u_t`` the usage so far (a feature of the sum of past read weights:
by default normalised to sum to one, see ``usage_feature``)::

    pi_t[i] = a^T tanh(W_h h_{t-1} + W_x x_t + W_m [A_i ; C_i] + w_u u_t[i])
    pi_t[i] -= reread_penalty * w_{t-1}[i]
    w_t     = gumbel_softmax(pi_t)   (straight-through, as auto-addressing)
    r_t     = w_t^T C

The usage enters per slot (``w_u`` is a vector scaled by slot i's usage), so it can
steer the choice among slots. With ``usage_scope: all`` (the ARMIN authors' code) every
slot's score sees the whole usage vector instead, through a matrix ``W_u`` ``[S, N]`` added
to the query: ``tanh(W_h h_{t-1} + W_x x_t + W_u u_t + W_m [A_i ; C_i])``. With
``content: false`` the ``C_i`` columns of ``W_m`` are gone: slots are told apart by their
address vectors and usage alone. The cost grows with the number of slots: every step
projects every slot's content.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import attrs
import torch
from torch import Tensor, nn

from manntk.cells.common import project_inputs
from manntk.config import non_negative, positive
from manntk.context import BuildContext
from manntk.fast.recurrent import RecurrentWeight
from manntk.hookspecs import hookimpl
from manntk.parts import Address
from manntk.sampling import HardAddressing, HardAddressingConfig


UsageFeature = Literal["share", "count", "seen", "l2"]
"""What TARDIS addressing's scores see of the read counts (``TardisAddressingConfig.usage_feature``)."""

UsageScope = Literal["slot", "all"]
"""Which slots' usage each slot's score sees (``TardisAddressingConfig.usage_scope``)."""

KeyInit = Literal["normal", "ordered"]
"""How TARDIS addressing's slot address vectors start (``TardisAddressingConfig.key_init``)."""


@attrs.define
class TardisAddressingConfig(HardAddressingConfig):
    """Options of TARDIS addressing (plus ``hard`` and ``temperature``).

    Attributes:
        key_size: width of the learned slot address vectors ``A_i``.
        attention_size: width of the ``tanh`` layer that scores slots (default: the
            slot width).
        reread_penalty: subtracted from the logit of the slot read at the previous
            step (the authors' code uses 100: do not re-read); 0 turns it off.
        usage: feed the usage ``u_t`` into the scores.
        usage_feature: what the scores see of the read counts ``n_t`` (the sum of past read
            weights): ``share``, each slot's share of the reads, ``n_t / max(sum n_t, 1)`` (the
            TARDIS paper's normalised usage; the default); ``count``, ``n_t`` itself; ``seen``,
            ``min(n_t, 1)``, whether the slot has been read (for one-hot reads). A share
            shrinks as ``1/t`` over a sequence, so a slot read once late in a long sequence
            looks almost unread; ``count`` and ``seen`` keep the same size at every step;
            ``l2``, ``n_t / max(||n_t||_2, 1e-12)`` (the ARMIN authors' AwTA and TARDIS code,
            ``F.normalize``).
        usage_scope: ``slot``, slot i's score sees its own usage ``u_t[i]`` through the
            vector ``w_u`` (the TARDIS paper); ``all``, every slot's score sees the whole
            ``u_t`` through a matrix ``W_u`` ``[S, N]`` added to the query (the ARMIN
            authors' code). With ``all`` the scores can tell which slots were read, so
            "the slot after the last one read" is a rule the scores can hold (a column of
            ``W_u`` for slot j can raise slot j + 1 and lower slot j) rather than one the
            query must carry as a position in ``h``.
        key_init: how the address vectors ``A_i`` start: ``normal`` (independent normal
            draws, each vector of norm about 1) or ``ordered``, ``key_size`` columns of a
            discrete cosine transform over the N slots,
            ``A[i, k] = sqrt(2 / key_size) cos(pi f_k (i + 1/2) / N)`` with frequencies
            ``f_k`` spaced geometrically from 1 to N - 1 (distinct; at most N - 1 of them):
            the first falls with the index (an order the reads can use from the start),
            the last tells neighbours apart.
            An ablation: with ``normal`` keys the order of the last slots, which fewer
            training sequences reach, is learned last.
        content: score each slot on its content ``C_i`` too (the paper). ``false``: on its
            address vector ``A_i`` and usage alone, so that what was written cannot draw a
            read: an ablation (AwTA's copy runs read the slot just written, whose content is
            close to the query, docs/results.md).
    """

    key_size: int = attrs.field(default=16, validator=positive)
    attention_size: int | None = attrs.field(default=None, validator=positive)
    reread_penalty: float = attrs.field(default=0.0, validator=non_negative)
    usage: bool = True
    usage_feature: UsageFeature = attrs.field(default="share", validator=attrs.validators.in_(get_args(UsageFeature)))
    usage_scope: UsageScope = attrs.field(default="slot", validator=attrs.validators.in_(get_args(UsageScope)))
    key_init: KeyInit = attrs.field(default="normal", validator=attrs.validators.in_(get_args(KeyInit)))
    content: bool = True


class _Prepared(NamedTuple):
    query_x: tuple[Tensor, ...]  # per step [B, S]: W_x x_t + b
    slot_keys: Tensor  # [N, S]: W_m's A part applied to the slot address vectors
    content_weight: Tensor  # W_m's C columns (zeros with content: false)
    W_h: RecurrentWeight  # h -> query
    noise: Tensor | None
    tau: float | Tensor


class TardisAddressing(HardAddressing):
    """TARDIS addressing; parameters ``A`` (slot keys), ``W_h``, ``W_x``, ``W_m``, ``w_u``
    (``[S]``, or ``[S, N]`` with ``usage_scope: all``), ``a``."""

    def __init__(self, config: TardisAddressingConfig, context: BuildContext) -> None:
        super().__init__(config)
        if context.slots < 1:
            raise ValueError("TARDIS addressing needs memory.slots >= 1")
        size = config.attention_size or context.width
        self.config = config
        self.slots, self.key_size, self.width = context.slots, config.key_size, context.width
        self.A = nn.Parameter(initial_keys(context.slots, config.key_size, config.key_init))
        self.W_h = nn.Linear(context.hidden_size, size, bias=False)
        self.W_x = nn.Linear(context.input_size, size)
        self.W_m = nn.Linear(config.key_size + (context.width if config.content else 0), size, bias=False)
        self.w_u = nn.Parameter(torch.zeros(size, context.slots) if config.usage_scope == "all" else torch.zeros(size))
        self.a = nn.Parameter(torch.randn(size) / size**0.5)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        zeros = torch.zeros(batch_size, self.slots, device=device, dtype=dtype)
        return {"usage": zeros, "previous": zeros.clone()}

    def slot_weights(self) -> tuple[Tensor, Tensor]:
        """What every step scores the slots with: ``A W_m[:, :key_size]^T`` ``[N, S]``, the
        address vectors through ``W_m``, and the content columns ``W_m[:, key_size:]``
        ``[S, D]`` (zeros, a constant, with ``content: false``)."""
        keys = nn.functional.linear(self.A, self.W_m.weight[:, : self.key_size])
        if not self.config.content:
            return keys, self.W_m.weight.new_zeros(self.W_m.out_features, self.width)
        return keys, self.W_m.weight[:, self.key_size :]

    def prepare(self, x: Tensor) -> _Prepared:
        query_x = project_inputs(x, self.W_x.weight, self.W_x.bias)
        noise = self.chunk_noise((x.shape[1], x.shape[0], self.slots), x)
        return _Prepared(query_x, *self.slot_weights(), RecurrentWeight.of(self.W_h), noise, self.tau())

    def step(
        self, prepared: _Prepared, t: int, hidden: Tensor, memory: Tensor, state: dict[str, Tensor]
    ) -> tuple[Address, dict[str, Tensor]]:
        query = prepared.W_h(prepared.query_x[t], hidden)  # [B, S]
        slots = prepared.slot_keys  # [N, S], and with the contents [B, N, S]
        if self.config.content:
            slots = slots + nn.functional.linear(memory, prepared.content_weight)
        if self.config.usage:
            usage = usage_feature(state["usage"], self.config.usage_feature)
            if self.config.usage_scope == "all":
                query = query + usage @ self.w_u.t()
            else:
                slots = slots + usage.unsqueeze(-1) * self.w_u
        logits = torch.tanh(query.unsqueeze(1) + slots) @ self.a  # [B, N]
        if self.config.reread_penalty:
            logits = logits - self.config.reread_penalty * state["previous"]
        noise = None if prepared.noise is None else prepared.noise[t]
        address = self.sample(logits, prepared.tau, noise)
        weights = address.dense(self.slots, logits.dtype).detach()
        return address, {"usage": state["usage"] + weights, "previous": weights}


def initial_keys(slots: int, key_size: int, kind: KeyInit) -> Tensor:
    """The address vectors ``A`` ``[slots, key_size]`` as ``TardisAddressingConfig.key_init``
    says they start; ``ordered`` needs ``key_size <= slots - 1`` (the transform's non-zero
    frequencies, each used once)."""
    if kind == "normal":
        return torch.randn(slots, key_size) / key_size**0.5
    if key_size > slots - 1:
        raise ValueError(f"key_init: ordered gives each of the key_size ({key_size}) columns its own frequency "
                         f"of 1..slots - 1 ({slots - 1}): use a key_size of at most {slots - 1}, or key_init: normal")
    geometric = torch.logspace(0.0, math.log10(slots - 1), key_size, dtype=torch.float64).round().tolist()
    frequency = []
    for column, value in enumerate(geometric):  # rounded up where rounding repeats one, kept under the last
        low = frequency[-1] + 1 if frequency else 1
        frequency.append(min(max(value, low), slots - 1 - (key_size - 1 - column)))
    index = torch.arange(slots, dtype=torch.float64).unsqueeze(1) + 0.5
    return ((2 / key_size) ** 0.5 * torch.cos(torch.pi * torch.tensor(frequency, dtype=torch.float64) * index / slots)).float()


def usage_feature(counts: Tensor, form: UsageFeature) -> Tensor:
    """The usage ``u_t`` ``[B, N]`` the scores see, from the read counts ``[B, N]`` (the sum
    of past read weights), in the ``form`` of ``TardisAddressingConfig.usage_feature``."""
    if form == "share":
        return counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    if form == "count":
        return counts
    if form == "l2":
        return nn.functional.normalize(counts, dim=-1)
    return counts.clamp_max(1.0)


@hookimpl
def register_addressing(register):
    register("tardis", TardisAddressing, TardisAddressingConfig)
