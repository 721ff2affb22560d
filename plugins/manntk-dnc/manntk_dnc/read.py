"""The ``dnc_read`` addressing: the DNC's read head (content lookup and temporal links).

From ``h_{t-1}`` one Linear (the read half of the DNC's interface vector) gives the read
key ``k^r`` (W), its strength ``beta^r`` and the three read-mode logits. Then::

    c^r = softmax(oneplus(beta^r) cos(k^r, M_{t-1}))
    f   = L w^r_{t-1},   b = L^T w^r_{t-1}
    w^r = pi_b b + pi_c c^r + pi_f f,          pi = softmax(mode logits)

The engine calls the addressing before the cell and the write after it, and hands each
part only its own state, so the read head cannot see the link matrix that the ``dnc``
write keeps. It therefore keeps its own: at every step it sees ``M_{t-1}``, compares it
with the memory it saw one step earlier (kept in its state) and takes how much each slot
changed as the write weights of the last write
([`estimated_write_weights`][manntk_dnc.functional.estimated_write_weights]); from these
it updates its precedence and link with the DNC's formulas. This is exact for sharp
writes of vectors much larger than ``tolerance``, and an approximation otherwise (see
the README). When the engine hands it the write's state (``step(..., write_state=...)``,
which needs the engine change described in the README) it reads the write's own link
and precedence instead: the exact DNC.

By default (``complete``) the link mass that the forward and backward weights miss goes
to the content weights, so the weights sum to one as manntk's contract asks; the DNC's
own weights (``complete: false``) may sum to less.

State: ``weights`` (the last read weights), ``precedence``, ``link``, ``memory`` (the
memory seen at the last step) and ``started`` (0 before the first step of a sequence).
Inside ``manntk.trace.tracing()`` it records ``read_modes`` (backward, content, forward)
and ``estimated_write`` (the write weights it inferred).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor, nn

from manntk.config import positive
from manntk.context import BuildContext
from manntk.parts import Address, Addressing
from manntk.trace import record

from manntk_dnc import functional as F


@attrs.define
class DncReadConfig:
    """Options of the DNC read head.

    Attributes:
        complete: give the link mass that forward and backward reads miss to the content
            weights, so the weights sum to one (manntk's contract); ``false``: the
            DNC's weights as they are, summing to at most one.
        tolerance: how much a slot must change to count as written, in the estimate of
            the write weights: a change ``d`` counts ``d / (sum d + tolerance)``.
        eps: smooths the norms of the content lookup and of the memory change.
    """

    complete: bool = True
    tolerance: float = attrs.field(default=0.1, validator=positive)
    eps: float = attrs.field(default=1e-6, validator=positive)


class DncRead(Addressing):
    """The DNC read head; ``interface`` is a Linear ``h_{t-1} -> [k^r, beta^r, pi (3)]``.

    Attributes:
        reads_write_state: tells an engine that hands the write's state to the
            addressing (not today's) that this part can use it.
    """

    reads_write_state: ClassVar[bool] = True

    def __init__(self, config: DncReadConfig, context: BuildContext) -> None:
        super().__init__()
        if context.slots < 1 or context.width < 1:
            raise ValueError("the dnc_read addressing needs memory.slots >= 1 and memory.width >= 1")
        self.config = config
        self.slots, self.width = context.slots, context.width
        self.sizes = [context.width, 1, 3]
        self.interface = nn.Linear(context.hidden_size, sum(self.sizes))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        zeros = torch.zeros(batch_size, self.slots, device=device, dtype=dtype)
        return {
            "weights": zeros,
            "precedence": zeros.clone(),
            "link": torch.zeros(batch_size, self.slots, self.slots, device=device, dtype=dtype),
            "memory": torch.zeros(batch_size, self.slots, self.width, device=device, dtype=dtype),
            "started": torch.zeros(batch_size, device=device, dtype=dtype),
        }

    def prepare(self, x: Tensor) -> None:
        return None

    def step(
        self,
        prepared: Any,
        t: int,
        hidden: Tensor,
        memory: Tensor,
        state: dict[str, Tensor],
        write_state: dict[str, Tensor] | None = None,
    ) -> tuple[Address, dict[str, Tensor]]:
        """One read; ``write_state`` (the ``dnc`` write's state after the last write) makes the links exact."""
        config = self.config
        if write_state is not None:
            if "link" not in write_state:
                raise ValueError("write_state has no link: give the dnc write link: true")
            link, precedence = write_state["link"], write_state["precedence"]
        else:
            written = F.estimated_write_weights(memory, state["memory"], config.tolerance, config.eps)
            written = written * state["started"].unsqueeze(-1)  # nothing to compare with at a sequence's start
            link = F.link(state["link"], written, state["precedence"])
            precedence = F.precedence(state["precedence"], written)
            record("estimated_write", written)
        key, strength, modes = self.interface(hidden).split(self.sizes, dim=-1)
        content = F.content_weights(key, F.oneplus(strength), memory, config.eps)
        previous = state["weights"]
        modes = torch.softmax(modes, dim=-1)
        record("read_modes", modes)
        weights = F.read_weights(
            F.backward_weights(link, previous), content, F.forward_weights(link, previous), modes, config.complete
        )
        new_state = {
            "weights": weights,
            "precedence": precedence,
            "link": link,
            "memory": memory,
            "started": torch.ones_like(state["started"]),
        }
        return Address(weights), new_state
