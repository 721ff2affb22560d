"""The four algorithmic tasks as task plugins: ``copy``, ``repeat_copy``,
``associative_recall`` and ``priority_sort``.

One [`AlgorithmicTask`][manntk.tasks.algorithmic.plugin.AlgorithmicTask] serves them all:
training batch ``i`` is drawn from a generator seeded with ``(seed, i)``, so any batch
can be re-created on demand (exact resume, and every distributed rank draws the same
global batch and keeps its own rows); the validation and test sets are fixed by their own
seeds. Loss and metric: binary cross-entropy per output bit on the output phase (the
paper's); the task counts as solved when the validation BCE is below 0.01.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import attrs
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from manntk.config import positive
from manntk.hookspecs import hookimpl
from manntk.tasks.algorithmic import associative_recall, copy, priority_sort, repeat_copy
from manntk.tasks.algorithmic.batch import SOLVED_BCE_THRESHOLD, SequenceBatch, make_validation_set
from manntk.tasks.base import Batch, Task, TaskContext

EVALUATION_DOC = """
    Evaluation options (all algorithmic tasks):
        seed: seeds the training batches (batch i comes from the seed pair (seed, i));
            by default the run's ``train.seed``, so that runs of different seeds see
            different data, not only different initial weights.
        validation_batches: batches in the fixed validation set (and in the test set);
            10 of 100 sequences by default: with 1,000 sequences a BCE just under the
            0.01 threshold is not luck of the draw.
        validation_batch_size: sequences per validation batch.
        validation_seed: seed of the validation set.
        test_seed: seed of the test set.
"""


def task_config(generator_config: type) -> type:
    """The recipe config of a task: its generator's options plus the evaluation options."""
    cls = attrs.make_class(
        generator_config.__name__.replace("Config", "TaskConfig"),
        {
            "seed": attrs.field(default=None, type=int | None),
            "validation_batches": attrs.field(default=10, validator=positive, type=int),
            "validation_batch_size": attrs.field(default=100, validator=positive, type=int),
            "validation_seed": attrs.field(default=1000, type=int),
            "test_seed": attrs.field(default=2000, type=int),
        },
        bases=(generator_config,),
        frozen=True,
    )
    cls.__doc__ = (generator_config.__doc__ or "") + EVALUATION_DOC
    return cls


def batch_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for training batch ``index`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class AlgorithmicTask(Task):
    """A task made of a generator function and its config."""

    metric = "bce"
    unit = "sequences"
    solved_below = SOLVED_BCE_THRESHOLD

    def __init__(self, generate: Callable[[Any, int, torch.Generator], SequenceBatch], config: Any, run_seed: int = 0) -> None:
        self.generate, self.config = generate, config
        self.input_size, self.output_size = config.input_size, config.output_size
        self.data_seed = run_seed if config.seed is None else config.seed

    def train_batch(self, index: int, batch_size: int) -> Batch:
        generator = torch.Generator().manual_seed(batch_seed(self.data_seed, index))
        return _as_batch(self.generate(self.config, batch_size, generator))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        seeds = {"valid": self.config.validation_seed, "test": self.config.test_seed}
        if split not in seeds:
            raise ValueError(f"unknown split {split!r}; this task has: {', '.join(seeds)}")
        batches = make_validation_set(
            self.generate, self.config, self.config.validation_batches, self.config.validation_batch_size, seeds[split]
        )
        return (_as_batch(batch) for batch in batches)

    def score(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        losses = F.binary_cross_entropy_with_logits(outputs, batch.targets, reduction="none")[batch.mask]
        wrong_bits = ((outputs[batch.mask] > 0) != (batch.targets[batch.mask] > 0.5)).sum()
        return {"loss": losses.sum(), "count": torch.tensor(float(losses.numel())), "bit_errors": wrong_bits.float(),
                "sequences": torch.tensor(float(batch.inputs.shape[0]))}

    def units(self, batch: Batch) -> int:
        return batch.inputs.shape[0]

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        bce = sums["loss"] / max(sums["count"], 1.0)
        return {
            "loss": bce,
            "bce": bce,
            "bit_errors_per_sequence": sums.get("bit_errors", 0.0) / max(sums.get("sequences", 0.0), 1.0),
            "solved": float(bce < SOLVED_BCE_THRESHOLD),
        }


def _as_batch(batch: SequenceBatch) -> Batch:
    return Batch(batch.inputs, batch.targets, batch.mask, fresh=True)


def _factory(generate: Callable[..., SequenceBatch]) -> Callable[[Any, TaskContext], AlgorithmicTask]:
    def build(config: Any, context: TaskContext) -> AlgorithmicTask:
        return AlgorithmicTask(generate, config, context.seed)

    return build


CopyTaskConfig = task_config(copy.CopyConfig)
RepeatCopyTaskConfig = task_config(repeat_copy.RepeatCopyConfig)
AssociativeRecallTaskConfig = task_config(associative_recall.AssociativeRecallConfig)
PrioritySortTaskConfig = task_config(priority_sort.PrioritySortConfig)


@hookimpl
def register_tasks(register):
    register("copy", _factory(copy.generate), CopyTaskConfig)
    register("repeat_copy", _factory(repeat_copy.generate), RepeatCopyTaskConfig)
    register("associative_recall", _factory(associative_recall.generate), AssociativeRecallTaskConfig)
    register("priority_sort", _factory(priority_sort.generate), PrioritySortTaskConfig)
