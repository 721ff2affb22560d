"""The repeat copy task (Graves et al. 2014, section 4.2; ARMIN paper, section 4.1).

The model is shown a sequence of random bit vectors and a repeat count ``R``, and must
then output the sequence ``R`` times followed by an end marker. Beyond copying, it tests
whether a model can interpret a numeric input and count: the end marker must come exactly
after the ``R``-th repeat.

Layout of one example of length ``L`` repeated ``R`` times (``W = width``,
``S = count_scale``), ``L + 2 + R L + 1`` steps:

| steps                    | inputs                               | targets               | mask  |
|--------------------------|--------------------------------------|-----------------------|-------|
| ``0``                    | start marker: channel ``W`` = 1      | 0                     | False |
| ``1 .. L``               | the bits on channels ``0 .. W-1``    | 0                     | False |
| ``L + 1``                | count: channel ``W + 1`` = ``R / S`` | 0                     | False |
| ``L + 2 .. L + 1 + R L`` | 0                                    | the bits, ``R`` times | True  |
| ``L + 2 + R L``          | 0                                    | end marker: ``W`` = 1 | True  |

The copies are on target channels ``0 .. W-1``, the end marker alone on channel ``W``.
``input_size = W + 2``, ``output_size = W + 1``. The count step also ends the input phase.
Graves et al. normalised the count to zero mean and unit variance; here it is ``R / S``
with ``S = max_repeats`` by default, so in ``(0, 1]``. To test generalisation to more
repeats than in training, keep ``count_scale`` at the training ``max_repeats``: the count
then goes above 1 and keeps its meaning.
"""

from __future__ import annotations

import functools

import attrs
import torch
from torch import Tensor

from manntk.tasks.algorithmic.batch import (
    Density,
    Example,
    SequenceBatch,
    at_least_field,
    blanks_field,
    density_field,
    draw_density,
    marker,
    output_start,
    positive_int,
    random_bits,
    random_int,
    sample_batch,
    two_phase,
    widen,
)


@attrs.frozen
class RepeatCopyConfig:
    """The repeat copy task's options; the defaults are the paper's.

    Attributes:
        width: bits per vector (paper: 6).
        min_length: the shortest sequence, in vectors (paper: 1).
        max_length: the longest sequence, in vectors (paper: 10); ``>= min_length``.
        min_repeats: the fewest repeats (paper: 1).
        max_repeats: the most repeats (paper: 10); ``>= min_repeats``.
        count_scale: the divisor of the count channel, ``R / count_scale``; ``None``
            (the default) means ``max_repeats``.
        density: the range each sequence draws its probability of a one from,
            uniformly; ``[0.5, 0.5]`` (fair coins, the paper's) by default.
        blanks: the probability that a vector is all zeros whatever its density (a
            blank); 0 (the paper's data) by default.
    """

    width: int = attrs.field(default=6, validator=positive_int)
    min_length: int = attrs.field(default=1, validator=positive_int)
    max_length: int = attrs.field(
        default=10, validator=[positive_int, at_least_field("min_length")]
    )
    min_repeats: int = attrs.field(default=1, validator=positive_int)
    max_repeats: int = attrs.field(
        default=10, validator=[positive_int, at_least_field("min_repeats")]
    )
    count_scale: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive_int)
    )
    density: Density = density_field()
    blanks: float = blanks_field()

    @property
    def repeat_divisor(self) -> int:
        """The divisor of the count channel: ``count_scale``, or ``max_repeats`` if unset."""
        return self.max_repeats if self.count_scale is None else self.count_scale

    @property
    def input_size(self) -> int:
        """``width + 2``: the bits, the start marker and the repeat count."""
        return self.width + 2

    @property
    def output_size(self) -> int:
        """``width + 1``: the bits and the end marker."""
        return self.width + 1


def generate(
    config: RepeatCopyConfig, batch_size: int, generator: torch.Generator
) -> SequenceBatch:
    """A batch of repeat copy sequences; length and repeat count drawn uniformly for each.

    Args:
        config: the task's options.
        batch_size: the number of sequences (>= 1).
        generator: a CPU generator, the only source of randomness.

    Returns:
        The batch on the CPU, padded to its longest sequence (see the module for the layout).
    """
    return sample_batch(functools.partial(_example, config), batch_size, generator)


def task_lengths(config: RepeatCopyConfig, mask: Tensor) -> Tensor:
    """Each sequence's length ``L`` (the vectors shown; the repeat count is not part of
    it), read from a batch's ``mask`` ``[B, T]``: the output phase starts at step
    ``L + 2``. int64 ``[B]``."""
    return output_start(mask) - 2


def shortened(config: RepeatCopyConfig, fraction: float) -> RepeatCopyConfig:
    """``config`` with its longest sequence and its most repeats cut to ``fraction`` of
    theirs (never under the minimums): a stage of a curriculum over lengths. The count
    channel keeps the full task's divisor, so a count reads the same at every stage."""
    return attrs.evolve(
        config,
        max_length=max(config.min_length, round(fraction * config.max_length)),
        max_repeats=max(config.min_repeats, round(fraction * config.max_repeats)),
        count_scale=config.repeat_divisor,
    )


def _example(config: RepeatCopyConfig, generator: torch.Generator) -> Example:
    length = random_int(config.min_length, config.max_length, generator)
    repeats = random_int(config.min_repeats, config.max_repeats, generator)
    bits = random_bits(length, config.width, generator, draw_density(config.density, generator), config.blanks)
    size, width = config.input_size, config.width
    count = marker(size, width + 1, repeats / config.repeat_divisor)
    presented = torch.cat([marker(size, width), widen(bits, size), count])
    copies = widen(bits.repeat(repeats, 1), config.output_size)
    answer = torch.cat([copies, marker(config.output_size, width)])
    return two_phase(presented, answer)
