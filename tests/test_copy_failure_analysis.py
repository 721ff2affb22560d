"""The copy-failure analysis of benchmarks/copy_failures.py: how a sequence's ending is
classified, and that ``zero_tail`` zeroes exactly the last vectors of inputs and targets."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_zero_tail_changes_only_the_last_vectors_of_inputs_and_targets() -> None:
    config = CopyConfig(width=6, min_length=1, max_length=8)
    batch = generate(config, 50, torch.Generator().manual_seed(3))
    changed = zero_tail(batch, 2, config.width)
    for row, length in enumerate(batch.mask.sum(dim=1).tolist()):
        shown = batch.targets[row][batch.mask[row]]
        after = changed.targets[row][changed.mask[row]]
        # the bits sit at input steps 1..L (step 0 is the start marker, L + 1 the end marker)
        bits, bits_after = batch.inputs[row, 1:length + 1, :6], changed.inputs[row, 1:length + 1, :6]
        if length <= 2:
            assert torch.equal(changed.inputs[row], batch.inputs[row]) and torch.equal(after, shown)
            continue
        assert torch.equal(bits, shown) and torch.equal(bits_after, after)
        assert not after[-2:].any() and torch.equal(after[:-2], shown[:-2])
        unchanged = torch.ones(batch.inputs.shape[1], dtype=torch.bool)
        unchanged[length - 1:length + 1] = False
        assert torch.equal(changed.inputs[row][unchanged], batch.inputs[row][unchanged])
