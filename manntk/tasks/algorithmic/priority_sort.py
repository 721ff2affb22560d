"""The priority sort task (Graves et al. 2014, section 4.5; ARMIN paper, section 4.1).

The model is shown random bit vectors, each with a scalar priority, and must output the
``num_outputs`` vectors of highest priority, highest first. It tests whether a model can
write by priority and read back in sorted order.

Layout of one example (``N = num_inputs``, ``M = num_outputs``, ``W = width``),
``N + 1 + M`` steps, the same for every example:

| steps              | inputs                                             | targets     | mask  |
|--------------------|----------------------------------------------------|-------------|-------|
| ``0 .. N-1``       | vector ``i``'s bits on ``0 .. W-1``, priority on ``W`` | 0       | False |
| ``N``              | end marker: channel ``W + 1`` = 1                  | 0           | False |
| ``N + 1 .. N + M`` | 0                                                  | sorted bits | True  |

Priorities are uniform in ``[-1, 1)``. Target step ``N + 1 + j`` holds the bits of the
input vector with the ``j``-th highest priority: vectors are reordered whole. (The
authors' generator sorted each bit column independently, a bug, and had no end marker:
``input_size = W + 1``.) ``input_size = W + 2``, ``output_size = W``.
"""

from __future__ import annotations

import functools

import attrs
import torch

from manntk.tasks.algorithmic.batch import (
    Example,
    SequenceBatch,
    at_most_field,
    marker,
    positive_int,
    random_bits,
    sample_batch,
    two_phase,
    widen,
)


@attrs.frozen
class PrioritySortConfig:
    """The priority sort task's options; the defaults are the paper's.

    Attributes:
        width: bits per vector (paper: 8).
        num_inputs: the vectors shown (paper: 40).
        num_outputs: the highest-priority vectors to output (paper: 30); ``<= num_inputs``.
    """

    width: int = attrs.field(default=8, validator=positive_int)
    num_inputs: int = attrs.field(default=40, validator=positive_int)
    num_outputs: int = attrs.field(
        default=30, validator=[positive_int, at_most_field("num_inputs")]
    )

    @property
    def input_size(self) -> int:
        """``width + 2``: the bits, the priority and the end marker."""
        return self.width + 2

    @property
    def output_size(self) -> int:
        """``width``: the bits of the sorted vectors."""
        return self.width


def generate(
    config: PrioritySortConfig, batch_size: int, generator: torch.Generator
) -> SequenceBatch:
    """A batch of priority sort sequences, all of length ``num_inputs + 1 + num_outputs``.

    Args:
        config: the task's options.
        batch_size: the number of sequences (>= 1).
        generator: a CPU generator, the only source of randomness.

    Returns:
        The batch on the CPU (see the module for the layout).
    """
    return sample_batch(functools.partial(_example, config), batch_size, generator)


def _example(config: PrioritySortConfig, generator: torch.Generator) -> Example:
    bits = random_bits(config.num_inputs, config.width, generator)
    priorities = torch.rand(config.num_inputs, 1, generator=generator) * 2 - 1
    order = torch.argsort(priorities.squeeze(1), descending=True)[: config.num_outputs]
    size = config.input_size
    shown = widen(torch.cat([bits, priorities], dim=1), size)
    presented = torch.cat([shown, marker(size, config.width + 1)])
    return two_phase(presented, bits[order])
