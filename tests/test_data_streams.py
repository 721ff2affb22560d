"""Tests for manntk.data.streams: TBPTT layout, coverage, resumption, bits per char."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from manntk.data.streams import Chunk, LMStream, bits_per_char


def collect(stream: LMStream) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate all chunks along time: [B, row_length] inputs, targets, mask."""
    chunks = list(stream)
    return tuple(torch.cat([getattr(c, f) for c in chunks], dim=1) for f in Chunk._fields)  # type: ignore[return-value]


@pytest.mark.parametrize(("n", "batch_size", "tbptt"), [(23, 4, 3), (21, 4, 5), (10, 3, 1), (9, 8, 2), (50, 1, 7)])
def test_every_target_appears_exactly_once_in_order(n: int, batch_size: int, tbptt: int) -> None:
    tokens = torch.arange(100, 100 + n)
    stream = LMStream(tokens, batch_size, tbptt)
    inputs, targets, mask = collect(stream)
    assert inputs.shape == (batch_size, stream.row_length)
    assert targets[mask].tolist() == tokens[1:].tolist()  # row-major order = stream order
    assert inputs[mask].tolist() == tokens[:-1].tolist()
    assert stream.n_targets == n - 1 == int(mask.sum())
    assert len(stream) == math.ceil(stream.row_length / tbptt)


def test_known_layout_with_padding() -> None:
    stream = LMStream(torch.arange(8), batch_size=3, tbptt=2)  # 7 predictions -> rows of 3
    assert len(stream) == 2
    first, last = stream
    assert first.inputs.tolist() == [[0, 1], [3, 4], [6, 7]]  # 7 is input to a padded target
    assert first.targets.tolist() == [[1, 2], [4, 5], [7, 0]]
    assert first.mask.tolist() == [[True, True], [True, True], [True, False]]
    assert last.inputs.tolist() == [[2], [5], [0]]
    assert last.targets.tolist() == [[3], [6], [0]]
    assert last.mask.tolist() == [[True], [True], [False]]


def test_rows_are_contiguous_across_chunks() -> None:
    stream = LMStream(torch.arange(41), batch_size=4, tbptt=3)
    chunks = list(stream)
    for previous, current in itertools.pairwise(chunks):
        real = current.mask[:, 0]
        # each row's next input is the target it was just asked to predict
        assert torch.equal(current.inputs[real, 0], previous.targets[real, -1])
    for chunk in chunks:
        assert torch.equal(chunk.inputs[:, 1:], chunk.targets[:, :-1])


def test_drop_ragged_drops_only_the_tail() -> None:
    tokens = torch.arange(23)  # 22 predictions, 4 rows of 5, 2 dropped
    stream = LMStream(tokens, batch_size=4, tbptt=2, drop_ragged=True)
    inputs, targets, mask = collect(stream)
    assert bool(mask.all())
    assert stream.n_targets == 20
    assert targets.flatten().tolist() == list(range(1, 21))
    assert inputs.flatten().tolist() == list(range(0, 20))


def test_resume_from_chunk_k_matches_the_tail_of_a_full_pass() -> None:
    stream = LMStream(torch.randint(0, 50, (1000,)), batch_size=5, tbptt=16)
    full = list(stream)
    for k in (0, 3, len(stream) - 1, len(stream)):
        resumed = list(stream.iter_from(k))
        assert len(resumed) == len(full) - k
        for a, b in zip(resumed, full[k:], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(stream[-1], full[-1], strict=True))


def test_chunks_are_long_and_independent_of_the_stream() -> None:
    tokens = torch.arange(20, dtype=torch.uint8)
    chunk = LMStream(tokens, batch_size=2, tbptt=100)[0]
    assert chunk.inputs.dtype == chunk.targets.dtype == torch.long
    assert chunk.mask.dtype == torch.bool
    assert chunk.inputs.is_contiguous()
    chunk.inputs.zero_()
    assert tokens.tolist() == list(range(20))


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(TypeError, match="integer token ids"):
        LMStream(torch.zeros(10), 2, 2)
    with pytest.raises(ValueError, match="1-D"):
        LMStream(torch.zeros(2, 5, dtype=torch.long), 2, 2)
    with pytest.raises(ValueError, match="fewer than batch_size=5"):
        LMStream(torch.arange(5), 5, 2)
    with pytest.raises(ValueError, match="at least 1"):
        LMStream(torch.arange(5), 2, 0)
    stream = LMStream(torch.arange(10), 3, 2)
    with pytest.raises(IndexError):
        stream[len(stream)]
    with pytest.raises(ValueError, match="start must be in"):
        stream.iter_from(len(stream) + 1)


def test_bits_per_char_of_a_hand_computed_case() -> None:
    # four characters, each predicted with probability 1/2 -> 1 bit each; one with 1/4 -> 2 bits
    nll = 4 * math.log(2) + math.log(4)
    assert bits_per_char(nll, 5) == pytest.approx(6 / 5)
    assert bits_per_char(torch.tensor(math.log(2) * 3), 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 1"):
        bits_per_char(1.0, 0)


def test_bits_per_char_over_a_stream_with_a_uniform_model() -> None:
    vocab = 8
    stream = LMStream(torch.randint(0, vocab, (101,)), batch_size=4, tbptt=7)
    nll = 0.0
    for inputs, targets, mask in stream:
        logits = torch.zeros(*inputs.shape, vocab)
        nll += torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
    # n_targets float32 roundings of log(8), summed in torch's (CPU-dependent) order: n eps apart at most
    assert bits_per_char(nll, stream.n_targets) == pytest.approx(3.0, rel=stream.n_targets * torch.finfo(torch.float32).eps)
