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
input vector with the ``j``-th highest priority: vectors are reordered whole.
``input_size = W + 2``, ``output_size = W``.

The ARMIN authors' generator (github zoharli/armin,
``algorithimic_tasks/ntm/datasets/prioritysort.py``, fed to the model by their
``train.py``) differs in two ways, each an option here so that their figures can be
reproduced beside the correct task:

- ``sort: columns``: it sorts with ``torch.sort(input_seq, 0, descending=True)``, which
  sorts each column's *values* on its own, so the priorities play no part: target bit
  ``(j, c)`` is 1 exactly when ``j`` is below the number of ones in bit column ``c``
  (every column is a run of ones, then zeros). A bug, not the task of Graves et al.
- ``end_marker: false``: its inputs have no end marker (``input_size = W + 1``, ``N + M``
  steps); the output phase starts right after the last vector.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import attrs
import torch
from torch import Tensor

from manntk.tasks.algorithmic.batch import (
    Density,
    Example,
    SequenceBatch,
    at_most_field,
    boolean,
    density_field,
    draw_density,
    marker,
    one_of,
    output_start,
    positive_int,
    random_bits,
    sample_batch,
    two_phase,
    widen,
)


Sort = Literal["vector", "columns"]
"""The values of ``PrioritySortConfig.sort``."""


@attrs.frozen
class PrioritySortConfig:
    """The priority sort task's options; the defaults are the paper's.

    Attributes:
        width: bits per vector (paper: 8).
        num_inputs: the vectors shown (paper: 40).
        num_outputs: the highest-priority vectors to output (paper: 30); ``<= num_inputs``.
        sort: ``vector`` (the task: whole vectors in order of priority) or ``columns``
            (the ARMIN authors' generator, which sorts each bit column on its own: their
            bug, kept so that the paper's 33.4k iterations can be reproduced beside the
            correct task).
        end_marker: whether an end-marker step follows the vectors (``false``: none, as
            the authors' generator; ``input_size = width + 1``).
        density: the range each sequence draws its probability of a one from,
            uniformly; ``[0.5, 0.5]`` (fair coins, the paper's) by default.
    """

    width: int = attrs.field(default=8, validator=positive_int)
    num_inputs: int = attrs.field(default=40, validator=positive_int)
    num_outputs: int = attrs.field(
        default=30, validator=[positive_int, at_most_field("num_inputs")]
    )
    sort: Sort = attrs.field(default="vector", validator=one_of(get_args(Sort)))
    end_marker: bool = attrs.field(default=True, validator=boolean)
    density: Density = density_field()

    @property
    def input_size(self) -> int:
        """``width + 2``: the bits, the priority and the end marker (``width + 1``
        without the end marker)."""
        return self.width + (2 if self.end_marker else 1)

    @property
    def output_size(self) -> int:
        """``width``: the bits of the sorted vectors."""
        return self.width


def generate(
    config: PrioritySortConfig, batch_size: int, generator: torch.Generator
) -> SequenceBatch:
    """A batch of priority sort sequences, all of length ``num_inputs + 1 + num_outputs``
    (``num_inputs + num_outputs`` without the end marker).

    Args:
        config: the task's options.
        batch_size: the number of sequences (>= 1).
        generator: a CPU generator, the only source of randomness.

    Returns:
        The batch on the CPU (see the module for the layout).
    """
    return sample_batch(functools.partial(_example, config), batch_size, generator)


def task_lengths(config: PrioritySortConfig, mask: Tensor) -> Tensor:
    """Each sequence's length ``N`` (the vectors shown), read from a batch's ``mask``
    ``[B, T]``: the output phase starts at step ``N + 1`` (``N`` without the end
    marker). int64 ``[B]``."""
    return output_start(mask) - int(config.end_marker)


def sorted_answer(config: PrioritySortConfig, bits: Tensor, priorities: Tensor) -> Tensor:
    """The targets of one example: ``num_outputs`` rows ``[M, width]``.

    Args:
        config: the task's options (``sort`` and ``num_outputs``).
        bits: the vectors shown, ``[N, width]``.
        priorities: their priorities, ``[N]``.

    Returns:
        With ``sort: vector``, the vectors of highest priority, highest first; with
        ``sort: columns``, each bit column's values sorted in descending order on their
        own, as the authors' ``torch.sort(input_seq, 0, descending=True)`` (the
        priorities then play no part).
    """
    if config.sort == "columns":
        return torch.sort(bits, dim=0, descending=True).values[: config.num_outputs]
    return bits[torch.argsort(priorities, descending=True)[: config.num_outputs]]


def shortened(config: PrioritySortConfig, fraction: float) -> PrioritySortConfig:
    """``config`` with the vectors shown and the vectors asked for cut to ``fraction`` of
    theirs (at least one of each): a stage of a curriculum over lengths."""
    shown = max(1, round(fraction * config.num_inputs))
    return attrs.evolve(config, num_inputs=shown, num_outputs=min(shown, max(1, round(fraction * config.num_outputs))))


def _example(config: PrioritySortConfig, generator: torch.Generator) -> Example:
    bits = random_bits(config.num_inputs, config.width, generator, draw_density(config.density, generator))
    priorities = torch.rand(config.num_inputs, 1, generator=generator) * 2 - 1
    size = config.input_size
    presented = widen(torch.cat([bits, priorities], dim=1), size)
    if config.end_marker:
        presented = torch.cat([presented, marker(size, config.width + 1)])
    return two_phase(presented, sorted_answer(config, bits, priorities.squeeze(1)))
