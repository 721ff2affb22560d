"""Permuted-pixel MNIST: 784 pixels, one per step, in a fixed random order; classify at the last step.

The permutation comes from its own seed, so every model of a comparison sees the same
one. Pixels are scaled to [0, 1]. The training set's last ``validation_size`` images
are held out for validation (the authors' code: 54k/6k); test is MNIST's 10k. Each epoch
visits the training images in an order drawn from ``(seed, epoch)``, so training batch
``i`` is a pure function of ``i`` (exact resume; every distributed rank draws the same
global batch and keeps its own rows).
"""

from __future__ import annotations

from typing import Iterator

import attrs
import torch
from torch import Tensor
from torch.nn import functional as F

from manntk.config import non_negative
from manntk.data.mnist import load_mnist
from manntk.hookspecs import hookimpl
from manntk.seeding import mixed_seed
from manntk.tasks.base import Batch, Task, TaskContext

PIXELS = 28 * 28


@attrs.define
class PMnistConfig:
    """Options of permuted-pixel MNIST.

    Attributes:
        permutation_seed: seed of the pixel permutation.
        permute: ``false`` gives sequential (unpermuted) pixel MNIST.
        validation_size: training images held out for validation.
        seed: seed of the per-epoch order of training images.
        root: a data folder to look in first (then ``$MANNTK_DATA``, then the cache).
    """

    permutation_seed: int = 0
    permute: bool = True
    validation_size: int = attrs.field(default=6000, validator=non_negative)
    seed: int = 0
    root: str | None = None


class PMnist(Task):
    """Classification of pixel sequences; metric: accuracy."""

    input_size = 1
    output_size = 10
    metric = "accuracy"
    higher_is_better = True
    unit = "images"

    def __init__(self, config: PMnistConfig, context: TaskContext) -> None:
        mnist = load_mnist(config.root or context.root, download=context.download)
        if not 0 <= config.validation_size < len(mnist.train_labels):
            raise ValueError(f"validation_size must be below {len(mnist.train_labels)}, got {config.validation_size}")
        order = torch.randperm(PIXELS, generator=torch.Generator().manual_seed(config.permutation_seed))
        self.permutation = order if config.permute else torch.arange(PIXELS)
        self.seed = config.seed
        train = self._sequences(mnist.train_images)
        keep = len(train) - config.validation_size
        self.images = {"train": train[:keep], "valid": train[keep:], "test": self._sequences(mnist.test_images)}
        self.labels = {"train": mnist.train_labels[:keep], "valid": mnist.train_labels[keep:], "test": mnist.test_labels}

    def _sequences(self, images: Tensor) -> Tensor:
        return (images.reshape(len(images), PIXELS).float() / 255.0)[:, self.permutation]

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.labels["train"]) // batch_size

    def train_batch(self, index: int, batch_size: int) -> Batch:
        per_epoch = self.steps_per_epoch(batch_size)
        if per_epoch == 0:
            raise ValueError(f"train.batch_size {batch_size} is larger than the {len(self.labels['train'])} training images")
        epoch, position = divmod(index, per_epoch)
        seed = mixed_seed(self.seed, epoch)
        order = torch.randperm(len(self.labels["train"]), generator=torch.Generator().manual_seed(seed))
        chosen = order[position * batch_size : (position + 1) * batch_size]
        return self._batch(self.images["train"][chosen], self.labels["train"][chosen])

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split not in ("valid", "test"):
            raise ValueError(f"unknown split {split!r}; pmnist has: valid, test")
        images, labels = self.images[split], self.labels[split]
        for start in range(0, len(labels), batch_size):
            yield self._batch(images[start : start + batch_size], labels[start : start + batch_size])

    @staticmethod
    def _batch(images: Tensor, labels: Tensor) -> Batch:
        mask = torch.zeros(len(labels), PIXELS, dtype=torch.bool)
        mask[:, -1] = True
        return Batch(images.unsqueeze(-1), labels, mask)

    def score(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        logits = outputs[:, -1]
        return {
            "loss": F.cross_entropy(logits, batch.targets, reduction="sum"),
            "count": torch.tensor(float(len(batch.targets))),
            "correct": (logits.argmax(-1) == batch.targets).sum().float(),
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(sums["count"], 1.0)
        return {"loss": sums["loss"] / count, "accuracy": sums.get("correct", 0.0) / count}


@hookimpl
def register_tasks(register):
    register("pmnist", PMnist, PMnistConfig)
