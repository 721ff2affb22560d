"""The four algorithmic tasks as task plugins: ``copy``, ``repeat_copy``,
``associative_recall`` and ``priority_sort``.

One [`AlgorithmicTask`][manntk.tasks.algorithmic.plugin.AlgorithmicTask] serves them all:
training batch ``i`` is drawn from a generator seeded with ``(seed, i)``, so any batch
can be re-created on demand (exact resume, and every distributed rank draws the same
global batch and keeps its own rows); the validation and test sets are fixed by their own
seeds. Loss and metric: binary cross-entropy per output bit on the output phase (the
paper's); the task counts as solved when the validation BCE is below 0.01. Evaluations
also report the bit errors per sequence and, in ``bce_by_length``, the BCE per output bit
of the sequences of each length (as each task module's ``task_lengths`` defines it: the
vectors shown for copy, repeat copy and priority sort, the items for associative recall).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Iterator

import attrs
import torch
from torch import Tensor
from torch.nn import functional as F

from manntk.config import positive
from manntk.hookspecs import hookimpl
from manntk.seeding import mixed_seed
from manntk.tasks.algorithmic import associative_recall, copy, priority_sort, repeat_copy
from manntk.tasks.algorithmic.batch import (
    SOLVED_BCE_THRESHOLD,
    Density,
    SequenceBatch,
    at_least_field,
    blanks_field,
    density_field,
    make_validation_set,
    positive_int,
)
from manntk.tasks.base import Batch, Metrics, Task, TaskContext

DATA_DOC = """
    Training and evaluation data (all algorithmic tasks):
        seed: seeds the training batches (batch i comes from the seed pair (seed, i));
            by default the run's ``train.seed``, so that runs of different seeds see
            different data, not only different initial weights.
        validation_batches: batches in the fixed validation set (and in the test set);
            10 of 100 sequences by default: with 1,000 sequences a BCE just under the
            0.01 threshold is not luck of the draw.
        validation_batch_size: sequences per validation batch.
        validation_seed: seed of the validation set.
        test_seed: seed of the test set.
        curriculum_steps: when set, the training sequences grow over this many batches,
            linearly from the shortest the task allows to the configured lengths (each
            task module's ``shortened`` says which options scale: the longest sequence,
            the most repeats or items, the vectors shown and asked for); the validation
            and test sets always have the configured lengths. ``None`` (the default):
            every training batch has them too.
"""


TRAIN_DENSITY_DOC = """
    Training option (tasks of random bits):
        train_density: the range ``[low, high]`` each *training* sequence draws its
            probability of a one from (the validation and test sets keep ``density``);
            ``None``, the default, trains on ``density`` too. A wider range shows the
            model all-zero vectors in the data, which the output phase's zero inputs
            otherwise make a shortcut (docs/results.md, "Sequences that end in zeros").
        train_density_share: the share of training batches drawn with ``train_density``
            (and ``train_blanks``); the others keep the task's own data. 1, the default,
            draws every batch with them; less mixes the task's own data with the
            broader ones (at batch 1, per sequence).
"""

TRAIN_MAX_LENGTH_DOC = """
    Training options (tasks with a ``max_length``):
        train_max_length: the longest *training* sequence (the validation and test sets
            keep ``max_length``); ``None``, the default, trains on ``max_length`` too.
            Above ``max_length``, the evaluated lengths lie inside the training range
            rather than at its edge, where they are the rarest training sequences
            (docs/results.md, "NTM-style copy across seeds"); under it, the runs test
            generalisation to longer sequences (Graves et al. 2014, section 4.1).
        train_min_length: the shortest *training* sequence (the validation and test sets
            keep ``min_length``); ``None``, the default, trains on ``min_length`` too.
            Above ``min_length``, more of the training sequences reach the far end of the
            memory: a length drawn from ``1..50`` uses the k-th stored vector only when it
            is at least k long, so the last slots are the least trained.
"""

TRAIN_BLANKS_DOC = """
        train_blanks: the probability that a *training* vector is all zeros (a blank),
            whatever its sequence's density (the validation and test sets keep
            ``blanks``); ``None``, the default, trains on ``blanks`` too. Runs of zero
            vectors in dense data are what a copying model takes for the output phase
            (docs/results.md, "Sequences that end in zeros"); fair-coin data have a
            blank once in 2 ** width vectors.
"""


def share_of_batches(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a share in ``(0, 1]``, and under 1 only with ``train_density`` set."""
    name = f"{type(instance).__name__}.{attribute.name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a share in (0, 1], got {value!r}")
    if value < 1 and instance.train_density is None and getattr(instance, "train_blanks", None) is None:
        raise ValueError(f"{name} is {value!r} but neither train_density nor train_blanks is set: set the data the share draws")


def _within_the_training_lengths(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    """attrs validator of ``train_min_length``: at most the longest training sequence."""
    longest, name = ((instance.train_max_length, "train_max_length") if instance.train_max_length is not None
                     else (instance.max_length, "max_length"))
    if value > longest:
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be <= {name} ({longest}), got {value!r}")


def task_config(generator_config: type) -> type:
    """The recipe config of a task: its generator's options plus the data options (and
    ``train_density`` when the generator has a ``density``)."""
    fields = {
        "seed": attrs.field(default=None, type=int | None),
        "validation_batches": attrs.field(default=10, validator=positive, type=int),
        "validation_batch_size": attrs.field(default=100, validator=positive, type=int),
        "validation_seed": attrs.field(default=1000, type=int),
        "test_seed": attrs.field(default=2000, type=int),
        "curriculum_steps": attrs.field(default=None, validator=attrs.validators.optional(positive), type=int | None),
    }
    doc = (generator_config.__doc__ or "") + DATA_DOC
    if "density" in attrs.fields_dict(generator_config):
        fields["train_density"] = density_field(default=None, type=Density | None)
        fields["train_density_share"] = attrs.field(default=1.0, validator=share_of_batches, type=float)
        doc += TRAIN_DENSITY_DOC
    if "max_length" in attrs.fields_dict(generator_config):
        fields["train_max_length"] = attrs.field(
            default=None, validator=attrs.validators.optional([positive_int, at_least_field("min_length")]), type=int | None)
        fields["train_min_length"] = attrs.field(
            default=None, validator=attrs.validators.optional([positive_int, _within_the_training_lengths]), type=int | None)
        doc += TRAIN_MAX_LENGTH_DOC
    if "blanks" in attrs.fields_dict(generator_config):
        fields["train_blanks"] = blanks_field(default=None, type=float | None)
        doc += TRAIN_BLANKS_DOC
    cls = attrs.make_class(generator_config.__name__.replace("Config", "TaskConfig"), fields,
                           bases=(generator_config,), frozen=True)
    cls.__doc__ = doc
    return cls


def batch_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for training batch ``index`` of a run seeded ``seed``."""
    return mixed_seed(seed, index, bits=63)


LENGTH_SEPARATOR = "@"


def length_key(name: str, length: int) -> str:
    """The key, among ``eval_score``'s sums, of sum ``name`` over the sequences of one
    length: ``loss@3``, ``count@3``."""
    return f"{name}{LENGTH_SEPARATOR}{length}"


def _summed_per_sequence(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` ``[B, T, W]`` summed over each sequence's scored steps (``mask`` ``[B, T]``): ``[B]``."""
    steps = values.sum(dim=-1)
    return torch.where(mask, steps, torch.zeros_like(steps)).sum(dim=1)


def _with_training_options(config: Any, options: Any, *names: str) -> Any:
    """``config`` with each setting of ``names`` replaced by the task option ``train_<name>``
    of ``options``, where the task has that option and it is set."""
    return attrs.evolve(config, **{
        name: value for name in names if (value := getattr(options, f"train_{name}", None)) is not None
    })


class AlgorithmicTask(Task):
    """A task made of a task module (its ``generate``, ``task_lengths`` and
    ``shortened``) and the task's config."""

    metric = "bce"
    unit = "sequences"
    solved_below = SOLVED_BCE_THRESHOLD

    def __init__(
        self,
        module: ModuleType,
        config: Any,
        run_seed: int = 0,
    ) -> None:
        self.generate: Callable[[Any, int, torch.Generator], SequenceBatch] = module.generate
        self.task_lengths: Callable[[Any, Tensor], Tensor] = module.task_lengths
        self.shortened: Callable[[Any, float], Any] = module.shortened
        self.config = config
        self.input_size, self.output_size = config.input_size, config.output_size
        self.data_seed = run_seed if config.seed is None else config.seed
        # the task's own bits at the training lengths (the batches outside train_density_share)
        self.plain_train_config = _with_training_options(config, config, "max_length", "min_length")
        self.train_config = _with_training_options(self.plain_train_config, config, "density", "blanks")

    def train_batch(self, index: int, batch_size: int) -> Batch:
        generator = torch.Generator().manual_seed(batch_seed(self.data_seed, index))
        return _as_batch(self.generate(self.train_config_at(index, generator), batch_size, generator))

    def train_config_at(self, index: int, generator: torch.Generator) -> Any:
        """The config training batch ``index`` is drawn with: ``train_density``'s and
        ``train_blanks``' (for the share ``train_density_share`` of the batches, chosen by a first draw from the
        batch's ``generator`` when the share is under 1; the other batches the task's own bits), all
        at ``train_min_length`` and ``train_max_length`` when set, cut to the curriculum's stage
        ``(index + 1) / curriculum_steps`` until the ramp ends."""
        config = self.train_config
        share = getattr(self.config, "train_density_share", 1.0)
        if share < 1 and float(torch.rand((), generator=generator)) >= share:
            config = self.plain_train_config
        steps = self.config.curriculum_steps
        if steps is None or index + 1 >= steps:
            return config
        return self.shortened(config, (index + 1) / steps)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        seeds = {"valid": self.config.validation_seed, "test": self.config.test_seed}
        if split not in seeds:
            raise ValueError(f"unknown split {split!r}; this task has: {', '.join(seeds)}")
        batches = make_validation_set(
            self.generate, self.config, self.config.validation_batches, self.config.validation_batch_size, seeds[split]
        )
        return (_as_batch(batch) for batch in batches)

    def score(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        """The BCE summed over the scored bits (``loss``), their number (``count``), the
        wrongly predicted bits (``bit_errors``) and the sequences (``sequences``)."""
        return self._sums(outputs, batch, by_length=False)

    def eval_score(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        """``score``'s sums, and for each sequence length ``L`` in the batch the BCE summed
        over the scored bits of the sequences of length ``L`` (``loss@L``) and their number
        (``count@L``). Evaluation only: the keys vary from batch to batch."""
        return self._sums(outputs, batch, by_length=True)

    def _sums(self, outputs: Tensor, batch: Batch, by_length: bool) -> dict[str, Tensor]:
        losses = F.binary_cross_entropy_with_logits(outputs, batch.targets, reduction="none")
        scored = losses[batch.mask]
        wrong_bits = ((outputs[batch.mask] > 0) != (batch.targets[batch.mask] > 0.5)).sum()
        sums = {"loss": scored.sum(), "count": torch.tensor(float(scored.numel())), "bit_errors": wrong_bits.float(),
                "sequences": torch.tensor(float(batch.inputs.shape[0]))}
        if by_length:
            per_sequence = _summed_per_sequence(losses, batch.mask)
            bits = batch.mask.sum(dim=1) * outputs.shape[-1]
            lengths = self.task_lengths(self.config, batch.mask)
            for length in lengths.unique().tolist():
                rows = lengths == length
                sums[length_key("loss", length)] = per_sequence[rows].sum()
                sums[length_key("count", length)] = bits[rows].sum().float()
        return sums

    def example_scores(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Per sequence: its task length (``length``, as ``bce_by_length`` counts it), its
        wrongly predicted bits (``wrong``) and its mean BCE per scored bit (``bce``)."""
        losses = F.binary_cross_entropy_with_logits(outputs, batch.targets, reduction="none")
        wrong = ((outputs > 0) != (batch.targets > 0.5)).float()
        bits = (batch.mask.sum(dim=1) * outputs.shape[-1]).clamp_min(1)
        return {"length": self.task_lengths(self.config, batch.mask), "wrong": _summed_per_sequence(wrong, batch.mask),
                "bce": _summed_per_sequence(losses, batch.mask) / bits}

    def units(self, batch: Batch) -> int:
        return batch.inputs.shape[0]

    def summarize(self, sums: dict[str, float]) -> Metrics:
        """``loss`` and ``bce`` (the mean BCE per scored bit), ``bit_errors_per_sequence``,
        ``solved``; from an evaluation's sums also ``bce_by_length``, the mean BCE per bit
        of the sequences of each length, keyed by the length as a string (JSON's keys are
        strings), shortest first."""
        bce = sums["loss"] / max(sums["count"], 1.0)
        metrics: Metrics = {
            "loss": bce,
            "bce": bce,
            "bit_errors_per_sequence": sums.get("bit_errors", 0.0) / max(sums.get("sequences", 0.0), 1.0),
            "solved": float(bce < SOLVED_BCE_THRESHOLD),
        }
        prefix = f"loss{LENGTH_SEPARATOR}"
        lengths = sorted(int(key.removeprefix(prefix)) for key in sums if key.startswith(prefix))
        if lengths:
            metrics["bce_by_length"] = {
                str(length): sums[length_key("loss", length)] / max(sums[length_key("count", length)], 1.0)
                for length in lengths
            }
        return metrics


def _as_batch(batch: SequenceBatch) -> Batch:
    return Batch(batch.inputs, batch.targets, batch.mask, fresh=True)


def _factory(module: ModuleType) -> Callable[[Any, TaskContext], AlgorithmicTask]:
    """The task factory of a task module."""

    def build(config: Any, context: TaskContext) -> AlgorithmicTask:
        return AlgorithmicTask(module, config, context.seed)

    return build


CopyTaskConfig = task_config(copy.CopyConfig)
RepeatCopyTaskConfig = task_config(repeat_copy.RepeatCopyConfig)
AssociativeRecallTaskConfig = task_config(associative_recall.AssociativeRecallConfig)
PrioritySortTaskConfig = task_config(priority_sort.PrioritySortConfig)


@hookimpl
def register_tasks(register):
    register("copy", _factory(copy), CopyTaskConfig)
    register("repeat_copy", _factory(repeat_copy), RepeatCopyTaskConfig)
    register("associative_recall", _factory(associative_recall), AssociativeRecallTaskConfig)
    register("priority_sort", _factory(priority_sort), PrioritySortTaskConfig)
