"""Batches of variable-length sequences and the pieces shared by the algorithmic tasks.

Every algorithmic task (Graves et al. 2014, as used in the ARMIN paper, section 4.1) has
the same shape: an *input phase*, in which the model is shown the data and some marker
channels, followed by an *output phase*, in which its inputs are zero and it must emit the
answer. Only the output phase is scored. This module holds what the tasks share:

- [`SequenceBatch`][manntk.tasks.algorithmic.batch.SequenceBatch], padded and masked;
- the per-example building blocks (random bits, marker steps, the two-phase layout) and
  [`pad_examples`][manntk.tasks.algorithmic.batch.pad_examples];
- the config validators, so that every task reports a bad field the same way;
- the evaluation protocol: a seeded validation set, the BCE per output bit and the
  "solved" criterion of the paper.

All randomness comes from an explicit CPU ``torch.Generator``: a batch is fully determined
by the generator's state, independent of the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

ConfigT = TypeVar("ConfigT")

SOLVED_BCE_THRESHOLD = 0.01
"""The paper's success criterion: mean validation BCE per output bit below this value.

Two orders of magnitude below the initial loss of about 0.70 (ARMIN paper, section 4.1,
following Gulcehre et al. 2017 and Campos et al. 2017).
"""


class Example(NamedTuple):
    """One unpadded sequence of a task.

    Attributes:
        inputs: float32 ``[T, input_size]``.
        targets: float32 ``[T, output_size]``, zero outside the output phase.
        mask: bool ``[T]``, True exactly at the output-phase steps.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor


@attrs.frozen
class SequenceBatch:
    """A batch of sequences, padded at the end to the longest one.

    Step ``t`` of example ``b`` is real when ``t < lengths[b]``; padded steps have zero
    inputs, zero targets and ``mask`` False, so a loss restricted to ``mask`` ignores them.

    Attributes:
        inputs: float32 ``[B, T, input_size]``.
        targets: float32 ``[B, T, output_size]``.
        mask: bool ``[B, T]``, True where the loss counts (the output phase only).
        lengths: int64 ``[B]``, the length of each sequence before padding (input and
            output phase together).
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    lengths: Tensor

    def __attrs_post_init__(self) -> None:
        if self.mask.dim() != 2:
            raise ValueError(f"mask must be [B, T], got {tuple(self.mask.shape)}")
        batch, steps = self.mask.shape
        for name in ("inputs", "targets"):
            shape = tuple(getattr(self, name).shape)
            if len(shape) != 3 or shape[:2] != (batch, steps):
                raise ValueError(f"{name} must be [B={batch}, T={steps}, channels], got {shape}")
        if tuple(self.lengths.shape) != (batch,):
            raise ValueError(f"lengths must be [B={batch}], got {tuple(self.lengths.shape)}")
        if self.mask.dtype != torch.bool or self.lengths.dtype != torch.long:
            dtypes = f"{self.mask.dtype} and {self.lengths.dtype}"
            raise ValueError(f"mask must be bool and lengths int64, got {dtypes}")

    @property
    def num_target_bits(self) -> int:
        """The number of scored target bits: output-phase steps times ``output_size``."""
        return int(self.mask.sum()) * self.targets.shape[-1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SequenceBatch:
        """The same batch with every tensor (``lengths`` included) on ``device``."""
        tensors = attrs.astuple(self, recurse=False)
        return SequenceBatch(*(tensor.to(device, non_blocking=non_blocking) for tensor in tensors))


def pad_examples(examples: Sequence[Example | tuple[Tensor, Tensor, Tensor]]) -> SequenceBatch:
    """Stack unpadded ``(inputs, targets, mask)`` sequences into a padded batch.

    Each sequence is padded at the end, up to the longest one, with zero inputs, zero
    targets and mask False.

    Args:
        examples: at least one ``(inputs [T_b, I], targets [T_b, O], mask [T_b])``; all
            with the same ``I`` and ``O``.

    Returns:
        The batch, with ``lengths[b] = T_b``.
    """
    if not examples:
        raise ValueError("pad_examples needs at least one example")
    inputs, targets, masks = zip(*examples)
    lengths = torch.tensor([mask.shape[0] for mask in masks], dtype=torch.long)
    return SequenceBatch(
        inputs=torch.nn.utils.rnn.pad_sequence(list(inputs), batch_first=True).float(),
        targets=torch.nn.utils.rnn.pad_sequence(list(targets), batch_first=True).float(),
        mask=torch.nn.utils.rnn.pad_sequence(list(masks), batch_first=True, padding_value=False),
        lengths=lengths,
    )


def sample_batch(
    sample_example: Callable[[torch.Generator], Example],
    batch_size: int,
    generator: torch.Generator,
) -> SequenceBatch:
    """Draw ``batch_size`` examples one after the other from ``generator`` and pad them."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return pad_examples([sample_example(generator) for _ in range(batch_size)])


def random_int(low: int, high: int, generator: torch.Generator) -> int:
    """An integer drawn uniformly from ``low..high``, both included."""
    return int(torch.randint(low, high + 1, (), generator=generator))


Density = tuple[float, float]
"""A range ``(low, high)`` of the probability of a one in a task's random bits; each
sequence draws its own probability uniformly in it."""

PAPER_DENSITY: Density = (0.5, 0.5)
"""Fair coin bits, the paper's (and Graves et al.'s) data."""


def random_bits(
    steps: int, width: int, generator: torch.Generator, density: float = 0.5, blanks: float = 0.0
) -> Tensor:
    """Independent Bernoulli(``density``) bits, float32 ``[steps, width]``; then each row
    is all zeros (a blank) with probability ``blanks``. With no blanks nothing more is
    drawn, so the bits are those of a generator without them."""
    bits = torch.bernoulli(torch.full((steps, width), float(density)), generator=generator)
    if blanks > 0:
        bits[torch.rand(steps, generator=generator) < blanks] = 0
    return bits


def draw_density(density: Density, generator: torch.Generator) -> float:
    """One sequence's probability of a one: uniform in ``density``'s range.

    A range of one value draws nothing, so the data of ``PAPER_DENSITY`` are the bits a
    generator gave before densities existed.
    """
    low, high = density
    if low == high:
        return low
    return low + (high - low) * float(torch.rand((), generator=generator))


def density_range(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: two numbers ``low <= high`` in ``[0, 1]``."""
    numbers = isinstance(value, tuple) and len(value) == 2
    numbers = numbers and all(isinstance(end, (int, float)) and not isinstance(end, bool) for end in value)
    if not numbers or not 0 <= value[0] <= value[1] <= 1:
        name = f"{type(instance).__name__}.{attribute.name}"
        raise ValueError(
            f"{name} must be two probabilities [low, high] with 0 <= low <= high <= 1, got {value!r}"
        )


def density_field(default: Density | None = PAPER_DENSITY, **options: Any) -> Any:
    """A density range field of a task config whose data are random bits (``None``
    allowed when it is the default); a YAML list becomes the tuple. ``options`` go to
    ``attrs.field`` (``type`` for a field made without an annotation)."""
    validator = density_range if default is not None else attrs.validators.optional(density_range)
    return attrs.field(default=default, converter=as_tuple, validator=validator, **options)


def blanks_field(default: float | None = 0.0, **options: Any) -> Any:
    """A blanks field of a task config whose data are random bits: the probability in
    ``[0, 1)`` that a vector is all zeros, 0 (none) by default (``None`` allowed when it
    is the default). ``options`` go to ``attrs.field`` (``type`` for a field made
    without an annotation)."""
    return attrs.field(default=default, validator=probability_below_one, **options)


def probability_below_one(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a number in ``[0, 1)`` (``None`` allowed for an optional field
    whose default is ``None``)."""
    if value is None and attribute.default is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        name = f"{type(instance).__name__}.{attribute.name}"
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")


def as_tuple(value: Any) -> Any:
    """A list as a tuple; anything else as it is (for the validator to judge)."""
    return tuple(value) if isinstance(value, list) else value


def marker(size: int, channel: int, value: float = 1.0) -> Tensor:
    """One input step ``[1, size]`` that is zero except ``value`` on ``channel``."""
    step = torch.zeros(1, size)
    step[0, channel] = value
    return step


def widen(rows: Tensor, size: int) -> Tensor:
    """``rows`` ``[T, w]`` in the leading channels of ``[T, size]``, zeros in the others."""
    return F.pad(rows, (0, size - rows.shape[-1]))


def two_phase(presented: Tensor, answer: Tensor) -> Example:
    """The example that shows ``presented`` and then asks for ``answer``.

    Args:
        presented: the input phase, ``[T_in, input_size]``.
        answer: the targets of the output phase, ``[T_out, output_size]``.

    Returns:
        ``T_in + T_out`` steps: inputs ``presented`` then zeros; targets zeros then
        ``answer``; mask False then True.
    """
    shown, asked = presented.shape[0], answer.shape[0]
    return Example(
        inputs=torch.cat([presented, presented.new_zeros(asked, presented.shape[1])]),
        targets=torch.cat([answer.new_zeros(shown, answer.shape[1]), answer]),
        mask=torch.cat([torch.zeros(shown, dtype=torch.bool), torch.ones(asked, dtype=torch.bool)]),
    )


def output_start(mask: Tensor) -> Tensor:
    """The first scored step of each sequence of a batch: where its output phase starts.

    Every task's output phase begins at a step fixed by the example's length (the copy
    task's ``L + 2``, for instance), so each task module reads its lengths back from it.

    Args:
        mask: bool ``[B, T]``, each row with at least one True step.

    Returns:
        int64 ``[B]``.
    """
    return mask.long().argmax(dim=1)  # argmax returns the first of equal maxima


def make_validation_set(
    generate_fn: Callable[[ConfigT, int, torch.Generator], SequenceBatch],
    config: ConfigT,
    num_batches: int,
    batch_size: int,
    seed: int,
) -> list[SequenceBatch]:
    """A fixed validation set: ``num_batches`` batches drawn from a generator seeded ``seed``.

    The same arguments always give identical tensors, whatever the global RNG state, so
    every model and every evaluation of a run is scored on the same sequences.

    Args:
        generate_fn: a task's ``generate``, e.g. ``manntk.tasks.algorithmic.copy.generate``.
        config: that task's config.
        num_batches: the number of batches (>= 1).
        batch_size: the examples per batch (>= 1).
        seed: the seed of the private generator.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches!r}")
    generator = torch.Generator().manual_seed(seed)
    return [generate_fn(config, batch_size, generator) for _ in range(num_batches)]


def bce_per_bit(logits: Tensor, batch: SequenceBatch) -> Tensor:
    """The binary cross-entropy per scored target bit: the paper's loss and metric.

    The mean of ``BCE(sigmoid(logits), targets)`` over the output-phase steps (``mask``)
    and all output channels; padded and input-phase steps do not count. For a validation
    set, weight each batch by ``batch.num_target_bits`` to get the mean per bit.

    Args:
        logits: ``[B, T, output_size]``, before the sigmoid.
        batch: the batch that ``logits`` answer.

    Returns:
        A scalar tensor.
    """
    losses = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none")
    return losses[batch.mask].mean()


def solved(bce: float, threshold: float = SOLVED_BCE_THRESHOLD) -> bool:
    """Whether a mean validation BCE per output bit counts as solving the task.

    Args:
        bce: the mean validation BCE per output bit (see ``bce_per_bit``).
        threshold: the criterion; the paper's is ``SOLVED_BCE_THRESHOLD`` (0.01).

    Returns:
        ``bce < threshold``; False for NaN.
    """
    return bce < threshold


def positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        name = f"{type(instance).__name__}.{attribute.name}"
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def one_of(choices: Sequence[Any]) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: the value is one of ``choices``."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices or isinstance(value, bool):
            name = f"{type(instance).__name__}.{attribute.name}"
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")

    return validate


def boolean(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        name = f"{type(instance).__name__}.{attribute.name}"
        raise ValueError(f"{name} must be true or false, got {value!r}")


def at_least_field(other: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: the value is >= the (earlier, already validated) field ``other``."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        bound = getattr(instance, other)
        if value < bound:
            name = f"{type(instance).__name__}.{attribute.name}"
            raise ValueError(f"{name} must be >= {other} ({bound}), got {value!r}")

    return validate


def at_most_field(other: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: the value is <= the (earlier, already validated) field ``other``."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        bound = getattr(instance, other)
        if value > bound:
            name = f"{type(instance).__name__}.{attribute.name}"
            raise ValueError(f"{name} must be <= {other} ({bound}), got {value!r}")

    return validate
