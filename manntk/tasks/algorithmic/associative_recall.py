"""The associative recall task (Graves et al. 2014, section 4.3; ARMIN paper, section 4.1).

The model is shown a list of items, each a short sequence of bit vectors, then one of them
again as a query, and must output the item that followed the query in the list. It tests
content-based lookup: the answer is found by what is stored, not by when.

Layout of one example with ``K`` items of ``n = item_length`` vectors each, the query
being item ``q`` (``0 <= q <= K - 2``), ``W = width``, ``K (n + 1) + 2n + 2`` steps:

| steps                          | inputs                                 | targets  | mask  |
|--------------------------------|----------------------------------------|----------|-------|
| ``k (n+1)``, ``k = 0 .. K-1``  | item delimiter: channel ``W`` = 1      | 0        | False |
| ``k (n+1) + 1 .. k (n+1) + n`` | item ``k``'s bits on ``0 .. W-1``      | 0        | False |
| ``K (n+1)``                    | query delimiter: channel ``W + 1`` = 1 | 0        | False |
| ``K (n+1) + 1 .. K (n+1) + n`` | item ``q``'s bits on ``0 .. W-1``      | 0        | False |
| ``K (n+1) + n + 1``            | query delimiter: channel ``W + 1`` = 1 | 0        | False |
| the last ``n`` steps           | 0                                      | item q+1 | True  |

``input_size = W + 2``, ``output_size = W``; the query is bracketed by its delimiter on
both sides, as in Graves et al. The items of one example are distinct (drawn uniformly
among distinct items), so the answer is never ambiguous; this needs
``max_items <= 2 ** (width * item_length)``.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import torch
from torch import Tensor

from manntk.tasks.algorithmic.batch import (
    Example,
    SequenceBatch,
    at_least_field,
    marker,
    output_start,
    positive_int,
    random_bits,
    random_int,
    sample_batch,
    two_phase,
    widen,
)


def _at_most_distinct_items(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    distinct = 2 ** (instance.width * instance.item_length)
    if value > distinct:
        raise ValueError(
            f"AssociativeRecallConfig.{attribute.name} must be <= 2 ** (width * item_length) "
            f"= {distinct}, the number of distinct items, got {value!r}"
        )


def _at_least_two(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 2:
        raise ValueError(
            f"AssociativeRecallConfig.{attribute.name} must be >= 2 (the query needs an item "
            f"after it), got {value!r}"
        )


@attrs.frozen
class AssociativeRecallConfig:
    """The associative recall task's options; the defaults are the paper's.

    Attributes:
        width: bits per vector (paper: 6).
        item_length: vectors per item (paper: 3).
        min_items: the fewest items (paper: 2; at least 2).
        max_items: the most items (paper: 6); ``>= min_items`` and at most the number of
            distinct items, ``2 ** (width * item_length)``.
    """

    width: int = attrs.field(default=6, validator=positive_int)
    item_length: int = attrs.field(default=3, validator=positive_int)
    min_items: int = attrs.field(default=2, validator=[positive_int, _at_least_two])
    max_items: int = attrs.field(
        default=6,
        validator=[positive_int, at_least_field("min_items"), _at_most_distinct_items],
    )

    @property
    def input_size(self) -> int:
        """``width + 2``: the bits, the item delimiter and the query delimiter."""
        return self.width + 2

    @property
    def output_size(self) -> int:
        """``width``: the bits of the answer item."""
        return self.width


def generate(
    config: AssociativeRecallConfig, batch_size: int, generator: torch.Generator
) -> SequenceBatch:
    """A batch of associative recall sequences; item count and query drawn uniformly.

    Args:
        config: the task's options.
        batch_size: the number of sequences (>= 1).
        generator: a CPU generator, the only source of randomness.

    Returns:
        The batch on the CPU, padded to its longest sequence (see the module for the layout).
    """
    return sample_batch(functools.partial(_example, config), batch_size, generator)


def task_lengths(config: AssociativeRecallConfig, mask: Tensor) -> Tensor:
    """Each sequence's length: its number of items ``K``, read from a batch's ``mask``
    ``[B, T]``: the output phase starts at step ``K (n + 1) + n + 2``. int64 ``[B]``."""
    n = config.item_length
    return (output_start(mask) - n - 2) // (n + 1)


def shortened(config: AssociativeRecallConfig, fraction: float) -> AssociativeRecallConfig:
    """``config`` with its most items cut to ``fraction`` of ``max_items`` (never under
    ``min_items``): a stage of a curriculum over lengths."""
    return attrs.evolve(config, max_items=max(config.min_items, round(fraction * config.max_items)))


def _example(config: AssociativeRecallConfig, generator: torch.Generator) -> Example:
    count = random_int(config.min_items, config.max_items, generator)
    items = _distinct_items(count, config, generator)
    query = random_int(0, count - 2, generator)
    size, width = config.input_size, config.width
    item_delimiter, query_delimiter = marker(size, width), marker(size, width + 1)
    listed = [step for item in items for step in (item_delimiter, widen(item, size))]
    presented = torch.cat([*listed, query_delimiter, widen(items[query], size), query_delimiter])
    return two_phase(presented, items[query + 1])


def _distinct_items(
    count: int, config: AssociativeRecallConfig, generator: torch.Generator
) -> list[torch.Tensor]:
    """``count`` distinct random items ``[item_length, width]``, uniform among distinct tuples.

    Each item is redrawn until it differs from the ones before it (sampling without
    replacement by rejection).
    """
    items: list[torch.Tensor] = []
    while len(items) < count:
        item = random_bits(config.item_length, config.width, generator)
        if not any(torch.equal(item, earlier) for earlier in items):
            items.append(item)
    return items
