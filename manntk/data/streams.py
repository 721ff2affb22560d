"""Truncated-BPTT batching of a token stream for language modelling.

A stream of ``N`` tokens holds ``N - 1`` predictions: token ``i + 1`` given tokens
``0..i``. [`LMStream`][manntk.data.streams.LMStream] deals these predictions out
to ``batch_size`` rows of consecutive positions and cuts the rows into chunks of
``tbptt`` steps. Row ``b`` of chunk ``k + 1`` continues row ``b`` of chunk ``k``,
so a model that carries its recurrent state from chunk to chunk (detaching it
between chunks) reads each row as one long sequence. Row ``b`` starts with the
input that row ``b - 1`` ends on as a target, so no prediction is lost at a row
boundary.

Example:
    ```python
    stream = LMStream(corpus.valid, batch_size=16, tbptt=100)
    nll, state = 0.0, None
    for inputs, targets, mask in stream:
        logits, state = model(inputs, state)
        nll += F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
    print(bits_per_char(nll, stream.n_targets))
    ```
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch

__all__ = ["Chunk", "LMStream", "bits_per_char"]


class Chunk(NamedTuple):
    """One TBPTT step of a batch; all three tensors are ``[batch_size, T]``.

    Attributes:
        inputs: Token ids fed to the model (``torch.long``).
        targets: The id to predict at each position (``torch.long``).
        mask: True where the target is real, False on padding (``torch.bool``).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


class LMStream:
    """A 1-D token stream laid out as contiguous rows and served in TBPTT chunks.

    The ``N - 1`` predictions of the stream are split into ``batch_size`` rows of
    ``row_length`` consecutive predictions each. By default the last rows are
    padded (masked, with id 0) up to equal length, so that every target of the
    stream, ``stream[1:]``, appears exactly once in some chunk under a True mask:
    this is what evaluation needs. With ``drop_ragged=True`` the last
    ``(N - 1) % batch_size`` predictions are dropped instead and masks are all
    True, which is usual for training. Chunks are ``tbptt`` steps long except
    possibly the last one, which is shorter.

    The layout is a view of the stream (only the padding is copied), and a chunk
    is built on demand, so the object is cheap for a 100M-token stream. Chunks can
    be taken in any order with ``stream[k]``; ``iter_from(k)`` resumes an epoch at
    chunk ``k``.

    Args:
        stream: 1-D tensor of token ids, of any integer dtype and device; chunks
            are ``torch.long`` on the same device.
        batch_size: Number of rows, the batch dimension of every chunk.
        tbptt: Steps per chunk, i.e. the truncated-BPTT length.
        drop_ragged: Drop the ragged end instead of padding it.

    Raises:
        TypeError: ``stream`` is not an integer tensor.
        ValueError: ``stream`` is not 1-D, has fewer than 2 tokens or fewer
            predictions than ``batch_size``, or ``batch_size`` or ``tbptt`` is below 1.
    """

    batch_size: int
    """Number of rows."""
    tbptt: int
    """Steps per chunk (the last chunk may be shorter)."""
    row_length: int
    """Predictions per row, padding included."""
    n_targets: int
    """Number of real (unmasked) targets over all chunks: the divisor for per-character loss."""

    def __init__(self, stream: torch.Tensor, batch_size: int, tbptt: int, *, drop_ragged: bool = False) -> None:
        if stream.dtype.is_floating_point or stream.dtype.is_complex or stream.dtype == torch.bool:
            raise TypeError(f"stream must hold integer token ids, got dtype {stream.dtype}")
        if stream.dim() != 1:
            raise ValueError(f"stream must be 1-D, got shape {tuple(stream.shape)}")
        if batch_size < 1 or tbptt < 1:
            raise ValueError(f"batch_size and tbptt must be at least 1, got {batch_size} and {tbptt}")
        predictions = stream.numel() - 1
        if predictions < batch_size:
            raise ValueError(
                f"a stream of {stream.numel()} tokens has {max(predictions, 0)} predictions, "
                f"fewer than batch_size={batch_size} rows"
            )
        self.batch_size = batch_size
        self.tbptt = tbptt
        if drop_ragged:
            self.row_length = predictions // batch_size
            self.n_targets = self.row_length * batch_size
            layout = stream[: self.n_targets + 1].contiguous()
        else:
            self.row_length = math.ceil(predictions / batch_size)
            self.n_targets = predictions
            padding = self.row_length * batch_size - predictions
            layout = torch.cat([stream, stream.new_zeros(padding)]) if padding else stream.contiguous()
        self._inputs = layout[:-1].view(batch_size, self.row_length)
        self._targets = layout[1:].view(batch_size, self.row_length)
        self._row_starts = torch.arange(batch_size, device=stream.device).unsqueeze(1) * self.row_length

    def __len__(self) -> int:
        """Return the number of chunks in one pass."""
        return math.ceil(self.row_length / self.tbptt)

    def __getitem__(self, index: int) -> Chunk:
        """Return chunk ``index`` (negative indices count from the end)."""
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"chunk index {index} out of range for {count} chunks")
        start = (index % count) * self.tbptt
        stop = min(start + self.tbptt, self.row_length)
        steps = torch.arange(start, stop, device=self._row_starts.device)
        return Chunk(
            inputs=self._inputs[:, start:stop].long().contiguous(),
            targets=self._targets[:, start:stop].long().contiguous(),
            mask=(self._row_starts + steps) < self.n_targets,
        )

    def iter_from(self, start: int = 0) -> Iterator[Chunk]:
        """Iterate over chunks ``start, start + 1, ...``, to resume an epoch mid-way.

        Args:
            start: The first chunk, from 0 to ``len(self)`` (which yields nothing).
        """
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        return (self[index] for index in range(start, len(self)))

    def __iter__(self) -> Iterator[Chunk]:
        """Iterate over all chunks in order."""
        return self.iter_from(0)


def bits_per_char(total_nll_nats: float | torch.Tensor, n_chars: int) -> float:
    """Convert a summed negative log-likelihood in nats to bits per character.

    Args:
        total_nll_nats: Sum over all predicted characters of ``-ln p(target)``.
        n_chars: Number of predicted characters, e.g. ``LMStream.n_targets``.

    Returns:
        ``total_nll_nats / (n_chars * ln 2)``.
    """
    if n_chars < 1:
        raise ValueError(f"n_chars must be at least 1, got {n_chars}")
    return float(total_nll_nats) / (n_chars * math.log(2))
