"""The task contract: batches by index, evaluation splits, and scoring.

A task serves training batch ``i`` on demand (``train_batch(i, batch_size)``), so a run
that resumes at step ``i`` sees exactly the data it would have seen, and each rank of a
distributed run can take its own rows of the same global batch. Scores are *sums* (a
loss summed over the units that count, and the count) so that batches, chunks and ranks
combine exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, NamedTuple

import attrs
import torch
from torch import Tensor


Metrics = dict[str, float | dict[str, float]]
"""What ``Task.summarize`` returns: metric names to floats, or to a mapping of floats for a
breakdown (``bce_by_length``: ``{"1": ..., "2": ...}``)."""


class Batch(NamedTuple):
    """One batch of a task.

    Attributes:
        inputs: ``[B, T, input_size]`` floats, or ``[B, T]`` token ids.
        targets: what the task's ``score`` compares outputs with (task-specific shape,
            batch first).
        mask: ``[B, T]`` bool, True at the steps whose outputs are scored.
        fresh: the batch starts new sequences: the recurrent state (memory included)
            starts afresh. False for the next chunk of a carried stream (TBPTT).
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    fresh: bool = True

    def rows(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` of the batch (a rank's share in distributed training)."""
        return Batch(self.inputs[start:stop], self.targets[start:stop], self.mask[start:stop], self.fresh)

    def to(self, device: torch.device | str) -> "Batch":
        """The batch on ``device``."""
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device), self.fresh)


@attrs.frozen
class TaskContext:
    """What a task factory knows about the run.

    Attributes:
        root: a data folder given by the recipe or the command line, looked in first.
        download: whether missing data files may be downloaded.
        seed: the run's seed.
        tbptt: the truncated-BPTT length (``train.tbptt``), for streamed tasks.
    """

    root: Path | None = None
    download: bool = True
    seed: int = 0
    tbptt: int = 100

    @classmethod
    def from_environment(cls, root: str | os.PathLike[str] | None = None, seed: int = 0, tbptt: int = 100) -> "TaskContext":
        """A context with ``root`` (when given) and downloads allowed unless ``MANNTK_OFFLINE`` is set."""
        return cls(root=Path(root) if root else None, download=not os.environ.get("MANNTK_OFFLINE"), seed=seed, tbptt=tbptt)


class Task:
    """Base class of tasks.

    Attributes:
        input_size: width of an input step, or the vocabulary size when ``tokens``.
        output_size: width of the model's output (logits).
        tokens: inputs are token ids (the model needs an ``embedding``).
        metric: the headline metric that ``summarize`` returns (``bce``, ``bpc``,
            ``accuracy``, ...).
        higher_is_better: whether a larger ``metric`` is better.
        unit: what a scored unit is, for throughput (``chars``, ``sequences``, ...).
        data_seed: the seed of generated training data (recorded in ``results.json``);
            ``None`` for data read from files.
        splits: the splits ``eval_batches`` serves; a recipe's ``eval.splits`` is checked
            against them when the run is built, not found wrong after training.
        solved_below: the value of ``metric`` under which ``summarize`` reports
            ``solved`` (shown beside the validation metric while training); ``None`` for
            tasks without a solved line.
    """

    input_size: int
    output_size: int
    tokens: bool = False
    metric: str = "loss"
    higher_is_better: bool = False
    unit: str = "steps"
    data_seed: int | None = None
    splits: tuple[str, ...] = ("valid", "test")
    solved_below: float | None = None

    def steps_per_epoch(self, batch_size: int) -> int | None:
        """Training batches in one pass over the data; ``None`` for generated data."""
        return None

    def train_batch(self, index: int, batch_size: int) -> Batch:
        """Training batch number ``index`` (a pure function of the index and the task's seed)."""
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """The batches of ``split`` (one of ``splits``), the same every time."""
        raise NotImplementedError

    def score(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Sums over the scored units of ``batch``: at least ``loss`` (summed) and ``count``."""
        raise NotImplementedError

    def eval_score(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        """The sums of an evaluation (validation, test): ``score``'s, and any that only
        evaluations report, such as a breakdown that would cost every training step time
        or whose keys vary from batch to batch. By default ``score``'s."""
        return self.score(outputs, batch)

    def example_scores(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor] | None:
        """One score per example of ``batch`` (each tensor ``[B]``), at least ``wrong``: how
        many of its scored units the model got wrong; ``None`` (the default) for a task
        whose examples are not scored one by one (a language-model stream). ``manntk eval
        --failures`` lists the examples with ``wrong > 0``."""
        return None

    def units(self, batch: Batch) -> int:
        """How many units (characters, sequences, ...) the batch holds, for throughput."""
        return int(batch.mask.sum())

    def summarize(self, sums: dict[str, float]) -> Metrics:
        """Metrics from accumulated sums; includes ``loss`` (mean) and ``metric``.

        Values are floats; a breakdown from ``eval_score``'s sums may be a mapping of
        floats (the algorithmic tasks' ``bce_by_length``), which curves and reports skip.
        """
        return {"loss": sums["loss"] / max(sums["count"], 1.0)}
