"""The copy task (Graves et al. 2014, section 4.1; ARMIN paper, section 4.1).

The model is shown a sequence of random bit vectors and must then reproduce it. It tests
whether a model can store a sequence and read it back in order.

Layout of one example of length ``L`` (``W = width``), ``2L + 2`` steps:

| steps               | inputs                             | targets  | mask  |
|---------------------|------------------------------------|----------|-------|
| ``0``               | start marker: channel ``W`` = 1    | 0        | False |
| ``1 .. L``          | the bits on channels ``0 .. W-1``  | 0        | False |
| ``L + 1``           | end marker: channel ``W + 1`` = 1  | 0        | False |
| ``L + 2 .. 2L + 1`` | 0                                  | the bits | True  |

``input_size = W + 2``, ``output_size = W``. The two marker channels match the authors'
code (``seq_width + 2`` inputs). With ``markers: end`` (pytorch-ntm's layout) there is no
start marker: the bits come first and a delimiter on channel ``W`` ends them
(``input_size = W + 1``, ``2L + 1`` steps).
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
    positive_int,
    random_bits,
    random_int,
    sample_batch,
    two_phase,
    widen,
)


@attrs.frozen
class CopyConfig:
    """The copy task's options; the defaults are the paper's.

    Attributes:
        width: bits per vector (paper: 6).
        min_length: the shortest sequence, in vectors (paper: 1).
        max_length: the longest sequence, in vectors (paper: 50); ``>= min_length``.
        markers: ``start_end`` (a start and an end marker channel, as the ARMIN authors'
            code) or ``end`` (one delimiter channel after the bits, as pytorch-ntm).
        density: the range each sequence draws its probability of a one from,
            uniformly; ``[0.5, 0.5]`` (fair coins, the paper's) by default.
        blanks: the probability that a vector is all zeros whatever its density (a
            blank); 0 (the paper's data) by default.
    """

    width: int = attrs.field(default=6, validator=positive_int)
    min_length: int = attrs.field(default=1, validator=positive_int)
    max_length: int = attrs.field(
        default=50, validator=[positive_int, at_least_field("min_length")]
    )
    markers: str = attrs.field(default="start_end", validator=attrs.validators.in_(("start_end", "end")))
    density: Density = density_field()
    blanks: float = blanks_field()

    @property
    def input_size(self) -> int:
        """``width + 2``: the bits, the start marker and the end marker (``width + 1``
        with ``markers: end``)."""
        return self.width + (2 if self.markers == "start_end" else 1)

    @property
    def output_size(self) -> int:
        """``width``: the bits."""
        return self.width


def generate(config: CopyConfig, batch_size: int, generator: torch.Generator) -> SequenceBatch:
    """A batch of copy sequences, each of a length drawn uniformly in the configured range.

    Args:
        config: the task's options.
        batch_size: the number of sequences (>= 1).
        generator: a CPU generator, the only source of randomness.

    Returns:
        The batch on the CPU, padded to its longest sequence (see the module for the layout).
    """
    return sample_batch(functools.partial(_example, config), batch_size, generator)


def task_lengths(config: CopyConfig, mask: Tensor) -> Tensor:
    """Each sequence's length ``L`` (the vectors shown), read from a batch's ``mask``
    ``[B, T]``: the ``L`` output steps, with either marker layout. int64 ``[B]``."""
    return mask.sum(dim=1)


def shortened(config: CopyConfig, fraction: float) -> CopyConfig:
    """``config`` with its longest sequence cut to ``fraction`` of ``max_length`` (never
    under ``min_length``): a stage of a curriculum over lengths."""
    return attrs.evolve(config, max_length=max(config.min_length, round(fraction * config.max_length)))


def _example(config: CopyConfig, generator: torch.Generator) -> Example:
    length = random_int(config.min_length, config.max_length, generator)
    bits = random_bits(length, config.width, generator, draw_density(config.density, generator), config.blanks)
    size = config.input_size
    if config.markers == "end":
        presented = torch.cat([widen(bits, size), marker(size, config.width)])
    else:
        presented = torch.cat([marker(size, config.width), widen(bits, size), marker(size, config.width + 1)])
    return two_phase(presented, bits)
