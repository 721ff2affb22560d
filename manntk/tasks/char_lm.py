"""Character-level language modelling: Penn Treebank, enwik8, or any text file.

Each split's token stream is laid out as ``batch_size`` contiguous rows and served in
``train.tbptt``-long chunks, as in standard truncated-BPTT language modelling: chunk
``k + 1`` continues every row of chunk ``k``, so the trainer carries the recurrent state
(hidden state and memory) across them; the first chunk of a pass starts afresh. Training
drops the ragged tail of the stream; evaluation pads and masks it, so the bits per
character (BPC) count every character of the split exactly once.
"""

from __future__ import annotations

import math
from typing import Iterator, Literal

import attrs
from torch import Tensor
from torch.nn import functional as F

from manntk.data.streams import LMStream
from manntk.data.text import ENWIK8_SPLIT, Corpus, load_enwik8, load_ptb_char, load_text_file
from manntk.hookspecs import hookimpl
from manntk.tasks.base import Batch, Task, TaskContext


def _three_fractions(instance: object, attribute: attrs.Attribute, value: list[float] | None) -> None:
    if value is not None and (len(value) != 3 or not math.isclose(sum(value), 1.0) or min(value) <= 0):
        raise ValueError(f"split must be three positive fractions (train, valid, test) summing to 1, got {value!r}")


@attrs.define
class CharLMConfig:
    """Options of character-level language modelling.

    Attributes:
        dataset: ``ptb_char`` (Mikolov's character files, or derived from the word
            files), ``enwik8`` (the 100M-byte file or its zip, split 90M/5M/5M, byte
            level) or ``text`` (any UTF-8 file at ``path``).
        path: the file for ``text``; for ``enwik8``, a file to use instead of the
            standard one (e.g. a prefix, with ``split``).
        split: train/valid/test fractions for ``text`` and for enwik8 files that are not
            the full 100M bytes.
        level: ``char`` (Unicode characters) or ``byte``, for ``text``.
        root: a data folder to look in first (then ``$MANNTK_DATA``, then the cache).
    """

    dataset: Literal["ptb_char", "enwik8", "text"] = attrs.field(
        default="ptb_char", validator=attrs.validators.in_(("ptb_char", "enwik8", "text"))
    )
    path: str | None = None
    split: list[float] | None = attrs.field(default=None, validator=_three_fractions)
    level: Literal["char", "byte"] = attrs.field(default="char", validator=attrs.validators.in_(("char", "byte")))
    root: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.dataset == "text" and not self.path:
            raise ValueError("dataset text needs path: the text file to model")


def load_corpus(config: CharLMConfig, context: TaskContext) -> Corpus:
    """The corpus that ``config`` names, found through the data search path."""
    root = config.root or context.root
    if config.dataset == "ptb_char":
        return load_ptb_char(root, download=context.download)
    if config.dataset == "enwik8":
        split = tuple(config.split) if config.split else ENWIK8_SPLIT
        return load_enwik8(root, download=context.download, path=config.path, split=split)
    return load_text_file(config.path, split=tuple(config.split) if config.split else (0.9, 0.05, 0.05), level=config.level)


class CharLM(Task):
    """Next-character prediction; metric: bits per character."""

    tokens = True
    metric = "bpc"
    unit = "chars"
    splits = ("train", "valid", "test")

    def __init__(self, config: CharLMConfig, context: TaskContext) -> None:
        self.corpus = load_corpus(config, context)
        self.input_size = self.output_size = self.corpus.vocab_size
        self.tbptt = context.tbptt
        self._streams: dict[tuple[str, int], LMStream] = {}

    def stream(self, split: str, batch_size: int) -> LMStream:
        """The split laid out in ``batch_size`` rows (cached)."""
        if split not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {split!r}; char_lm has: train, valid, test")
        key = (split, batch_size)
        if key not in self._streams:
            self._streams[key] = LMStream(getattr(self.corpus, split), batch_size, self.tbptt, drop_ragged=split == "train")
        return self._streams[key]

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.stream("train", batch_size))

    def train_batch(self, index: int, batch_size: int) -> Batch:
        stream = self.stream("train", batch_size)
        position = index % len(stream)
        chunk = stream[position]
        return Batch(chunk.inputs, chunk.targets, chunk.mask, fresh=position == 0)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        for position, chunk in enumerate(self.stream(split, batch_size)):
            yield Batch(chunk.inputs, chunk.targets, chunk.mask, fresh=position == 0)

    def score(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        losses = F.cross_entropy(outputs.flatten(0, 1), batch.targets.flatten(), reduction="none")
        mask = batch.mask.flatten()
        return {"loss": losses[mask].sum(), "count": mask.sum().float()}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss"] / max(sums["count"], 1.0)
        return {"loss": loss, "bpc": loss / math.log(2)}


@hookimpl
def register_tasks(register):
    register("char_lm", CharLM, CharLMConfig)
