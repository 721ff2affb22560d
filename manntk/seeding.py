"""Seeds derived from other seeds: one run's training seed and a counter (a batch index, an
epoch, a restart) mixed into a seed for its own random stream."""

from __future__ import annotations

from typing import Literal

import numpy as np


def mixed_seed(*parts: int, bits: Literal[32, 63] = 32) -> int:
    """A seed of ``bits`` bits mixed from the non-negative ints ``parts`` by numpy's
    ``SeedSequence``, so that neighbouring seeds or counters give unrelated streams (seeding
    a generator with ``seed + index`` would give run 1's batch 0 to run 0's batch 1).

    32 bits are the sequence's first 32-bit word; 63 bits its first 64-bit word shifted right
    by one, which ``torch.Generator.manual_seed`` takes without sign trouble."""
    sequence = np.random.SeedSequence(list(parts))
    if bits == 32:
        return int(sequence.generate_state(1)[0])
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))
