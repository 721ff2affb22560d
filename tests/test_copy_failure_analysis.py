"""The copy-failure analysis of benchmarks/copy_failures.py: how a sequence's ending is
classified, and that ``zero_tail`` zeroes exactly the last vectors of inputs and targets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from copy_failures import ending, zero_tail  # noqa: E402

from manntk.tasks.algorithmic.copy import CopyConfig, generate  # noqa: E402


def test_ending_kinds() -> None:
    zero, one = torch.zeros(6), torch.ones(6)
    assert ending(torch.stack([one, zero, zero])) == "last two zero"
    assert ending(torch.stack([zero, one, one])) == "last two equal, not zero"
    assert ending(torch.stack([zero, zero, one])) == "others"
    assert ending(torch.stack([zero])) == "others"


@pytest.mark.parametrize("markers, first", [("start_end", 1), ("end", 0)])
@pytest.mark.parametrize("count", [2, 3])
def test_zero_tail_changes_only_the_last_vectors_of_inputs_and_targets(count: int, markers: str, first: int) -> None:
    config = CopyConfig(width=6, min_length=1, max_length=8, markers=markers)
    batch = generate(config, 50, torch.Generator().manual_seed(3))
    original = generate(config, 50, torch.Generator().manual_seed(3))  # the same batch, never passed in
    changed = zero_tail(batch, count, config)
    assert torch.equal(batch.inputs, original.inputs) and torch.equal(batch.targets, original.targets)
    for row, length in enumerate(original.mask.sum(dim=1).tolist()):
        shown = original.targets[row][original.mask[row]]
        after = changed.targets[row][changed.mask[row]]
        if length <= count:
            assert torch.equal(changed.inputs[row], original.inputs[row]) and torch.equal(after, shown)
            continue
        # the bits sit at input steps first..first + L - 1 (after the start marker, if any)
        assert torch.equal(original.inputs[row, first:first + length, :6], shown)
        assert torch.equal(changed.inputs[row, first:first + length, :6], after)
        assert not after[-count:].any() and torch.equal(after[:-count], shown[:-count])
        unchanged = torch.ones(original.inputs.shape[1], dtype=torch.bool)
        unchanged[first + length - count:first + length] = False
        assert torch.equal(changed.inputs[row][unchanged], original.inputs[row][unchanged])
