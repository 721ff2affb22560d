"""The algorithmic task generators: layouts, known answers, determinism, config checks."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from torch import Tensor
from hypothesis import given, settings
from hypothesis import strategies as st

from manntk.tasks.algorithmic import (
    SOLVED_BCE_THRESHOLD,
    AssociativeRecallConfig,
    CopyConfig,
    Example,
    PrioritySortConfig,
    RepeatCopyConfig,
    SequenceBatch,
    associative_recall,
    bce_per_bit,
    copy,
    make_validation_set,
    pad_examples,
    priority_sort,
    repeat_copy,
    solved,
)

TASKS = [
    pytest.param(copy.generate, CopyConfig(), id="copy"),
    pytest.param(repeat_copy.generate, RepeatCopyConfig(), id="repeat_copy"),
    pytest.param(associative_recall.generate, AssociativeRecallConfig(), id="associative"),
    pytest.param(priority_sort.generate, PrioritySortConfig(), id="priority_sort"),
]


def draw(generate, config, batch_size: int = 8, seed: int = 0) -> SequenceBatch:
    return generate(config, batch_size, torch.Generator().manual_seed(seed))


def differ(a: SequenceBatch, b: SequenceBatch) -> bool:
    return a.inputs.shape != b.inputs.shape or not torch.equal(a.inputs, b.inputs)


def output_phase(batch: SequenceBatch, b: int) -> tuple[int, int]:
    """``(start, stop)`` of example ``b``'s output phase, from its mask."""
    steps = torch.nonzero(batch.mask[b]).squeeze(1)
    return int(steps[0]), int(steps[-1]) + 1


# --- properties shared by every task -------------------------------------------------------


@pytest.mark.parametrize(("generate", "config"), TASKS)
def test_shapes_and_dtypes_match_the_config(generate, config) -> None:
    batch = draw(generate, config)
    steps = batch.mask.shape[1]
    assert batch.inputs.shape == (8, steps, config.input_size)
    assert batch.targets.shape == (8, steps, config.output_size)
    assert batch.inputs.dtype == batch.targets.dtype == torch.float32
    assert batch.mask.dtype == torch.bool and batch.lengths.dtype == torch.long
    assert int(batch.lengths.max()) == steps


@pytest.mark.parametrize(("generate", "config"), TASKS)
def test_mask_is_exactly_the_output_phase(generate, config) -> None:
    batch = draw(generate, config)
    for b in range(batch.mask.shape[0]):
        start, stop = output_phase(batch, b)
        # one block, ending with the sequence; padding after it is all zero and unmasked
        assert bool(batch.mask[b, start:stop].all())
        assert stop == int(batch.lengths[b])
        assert not bool(batch.mask[b, :start].any()) and not bool(batch.mask[b, stop:].any())
        # inputs are zero in the output phase, targets zero outside it
        assert not bool(batch.inputs[b, start:].any())
        assert not bool(batch.targets[b, :start].any())
        assert not bool(batch.targets[b, stop:].any())


@pytest.mark.parametrize(("generate", "config"), TASKS)
def test_same_seed_same_batch_and_different_seed_different_batch(generate, config) -> None:
    first, again = draw(generate, config), draw(generate, config)
    other = draw(generate, config, seed=1)
    for name in ("inputs", "targets", "mask", "lengths"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert differ(first, other)


@pytest.mark.parametrize(("generate", "config"), TASKS)
def test_only_the_given_generator_is_used(generate, config) -> None:
    torch.manual_seed(123)
    first = draw(generate, config)
    torch.manual_seed(456)
    second = draw(generate, config)
    assert torch.equal(first.inputs, second.inputs) and torch.equal(first.targets, second.targets)


@pytest.mark.parametrize(("generate", "config"), TASKS)
def test_validation_set_is_fixed_by_its_seed(generate, config) -> None:
    torch.manual_seed(1)
    first = make_validation_set(generate, config, num_batches=3, batch_size=2, seed=7)
    torch.manual_seed(2)
    again = make_validation_set(generate, config, num_batches=3, batch_size=2, seed=7)
    other = make_validation_set(generate, config, num_batches=3, batch_size=2, seed=8)
    assert len(first) == 3
    for a, b in zip(first, again):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.lengths, b.lengths)
    # the batches of one set differ from each other, and from another seed's
    assert differ(first[0], first[1])
    assert any(differ(a, c) for a, c in zip(first, other))


# --- known answers --------------------------------------------------------------------------


def test_copy_target_is_the_input_sequence() -> None:
    config = CopyConfig(width=6, min_length=1, max_length=20)
    batch = draw(copy.generate, config, batch_size=16)
    w = config.width
    for b in range(16):
        length = int(batch.mask[b].sum())
        assert int(batch.lengths[b]) == 2 * length + 2
        x, y = batch.inputs[b], batch.targets[b]
        assert torch.equal(x[0], torch.eye(w + 2)[w])  # start marker alone
        assert torch.equal(x[length + 1], torch.eye(w + 2)[w + 1])  # end marker alone
        assert not bool(x[1 : length + 1, w:].any())  # no markers beside the bits
        assert torch.equal(y[length + 2 : 2 * length + 2], x[1 : length + 1, :w])


def test_repeat_copy_target_is_the_sequence_repeated_then_the_end_marker() -> None:
    config = RepeatCopyConfig(width=5, min_length=1, max_length=6, min_repeats=1, max_repeats=7)
    batch = draw(repeat_copy.generate, config, batch_size=16)
    w = config.width
    repeats_seen = set()
    for b in range(16):
        x, y = batch.inputs[b], batch.targets[b]
        count_steps = torch.nonzero(x[:, w + 1]).squeeze(1)
        assert count_steps.numel() == 1
        length = int(count_steps[0]) - 1
        repeats = round(float(x[length + 1, w + 1]) * config.max_repeats)
        repeats_seen.add(repeats)
        assert 1 <= repeats <= 7
        bits = x[1 : length + 1, :w]
        start, stop = output_phase(batch, b)
        assert (start, stop) == (length + 2, length + 3 + repeats * length)
        expected = torch.cat([bits] * repeats)
        assert torch.equal(y[start : stop - 1, :w], expected)
        assert not bool(y[start : stop - 1, w].any())  # no end marker during the copies
        assert torch.equal(y[stop - 1], torch.eye(w + 1)[w])  # then the end marker alone
    assert len(repeats_seen) > 1


def test_repeat_copy_count_scale_overrides_the_normaliser() -> None:
    config = RepeatCopyConfig(min_repeats=15, max_repeats=15, count_scale=10)
    batch = draw(repeat_copy.generate, config, batch_size=1)
    assert batch.inputs[0, :, config.width + 1].max().item() == pytest.approx(1.5)


def parse_associative_recall(x: torch.Tensor, width: int, item_length: int):
    """The items, the query and the output-phase start, read from one input sequence."""
    items, t = [], 0
    while x[t, width] == 1:
        items.append(x[t + 1 : t + 1 + item_length, :width])
        t += item_length + 1
    assert x[t, width + 1] == 1 and x[t + item_length + 1, width + 1] == 1
    query = x[t + 1 : t + 1 + item_length, :width]
    return items, query, t + item_length + 2


def test_associative_recall_target_is_the_item_after_the_query() -> None:
    config = AssociativeRecallConfig(width=6, item_length=3, min_items=2, max_items=6)
    batch = draw(associative_recall.generate, config, batch_size=32)
    counts = set()
    for b in range(32):
        x, y = batch.inputs[b], batch.targets[b]
        items, query, start = parse_associative_recall(x, config.width, config.item_length)
        counts.add(len(items))
        assert 2 <= len(items) <= 6
        matches = [k for k, item in enumerate(items) if torch.equal(item, query)]
        assert len(matches) == 1 and matches[0] < len(items) - 1
        assert output_phase(batch, b) == (start, start + config.item_length)
        assert torch.equal(y[start : start + config.item_length], items[matches[0] + 1])
    assert len(counts) > 1


def test_associative_recall_items_are_distinct_even_when_few_exist() -> None:
    config = AssociativeRecallConfig(width=1, item_length=2, min_items=4, max_items=4)
    batch = draw(associative_recall.generate, config, batch_size=8)
    for b in range(8):
        items, _, _ = parse_associative_recall(batch.inputs[b], 1, 2)
        assert len({tuple(item.flatten().tolist()) for item in items}) == 4


def test_priority_sort_target_is_the_top_rows_by_descending_priority() -> None:
    config = PrioritySortConfig(width=8, num_inputs=40, num_outputs=30)
    batch = draw(priority_sort.generate, config, batch_size=4)
    w, n, m = config.width, config.num_inputs, config.num_outputs
    for b in range(4):
        x, y = batch.inputs[b], batch.targets[b]
        rows = [(float(x[i, w]), x[i, :w].tolist()) for i in range(n)]
        assert all(-1.0 <= priority <= 1.0 for priority, _ in rows)
        assert torch.equal(x[n], torch.eye(w + 2)[w + 1])
        expected = [bits for _, bits in sorted(rows, key=lambda row: row[0], reverse=True)[:m]]
        assert y[n + 1 : n + 1 + m].tolist() == expected
        assert output_phase(batch, b) == (n + 1, n + 1 + m)


def test_priority_sort_columns_sorts_each_bit_column_on_its_own_by_hand() -> None:
    # Three vectors of three bits, their priorities, the two highest wanted:
    #   vector 0: 1 0 1  priority -0.5
    #   vector 1: 0 1 1  priority  0.9
    #   vector 2: 1 0 0  priority  0.1
    bits = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    priorities = torch.tensor([-0.5, 0.9, 0.1])
    # vector: whole vectors by priority, highest first: vector 1, then vector 2
    vector = PrioritySortConfig(width=3, num_inputs=3, num_outputs=2)
    assert priority_sort.sorted_answer(vector, bits, priorities).tolist() == [[0, 1, 1], [1, 0, 0]]
    # columns (the authors' torch.sort(input_seq, 0, descending=True)): each column's values
    # sorted on their own, priorities unused; column 0 (1, 0, 1) -> (1, 1, 0), column 1
    # (0, 1, 0) -> (1, 0, 0), column 2 (1, 1, 0) -> (1, 1, 0); the first two rows are kept
    columns = PrioritySortConfig(width=3, num_inputs=3, num_outputs=2, sort="columns")
    assert priority_sort.sorted_answer(columns, bits, priorities).tolist() == [[1, 1, 1], [1, 0, 1]]


def test_priority_sort_columns_draws_the_same_inputs_and_targets_runs_of_ones() -> None:
    vector = PrioritySortConfig(width=8, num_inputs=12, num_outputs=9)
    columns = attrs.evolve(vector, sort="columns")
    default, explicit = draw(priority_sort.generate, vector), draw(priority_sort.generate, attrs.evolve(vector, sort="vector"))
    assert torch.equal(default.targets, explicit.targets)  # vector is the default
    drawn = draw(priority_sort.generate, columns)
    assert torch.equal(drawn.inputs, default.inputs) and torch.equal(drawn.mask, default.mask)
    n, m = vector.num_inputs, vector.num_outputs
    ones = drawn.inputs[:, :n, : vector.width].sum(dim=1)  # [B, W]: the ones of each bit column
    rows = torch.arange(m).view(1, m, 1)
    assert torch.equal(drawn.targets[:, n + 1 :], (rows < ones.unsqueeze(1)).float())
    assert not torch.equal(drawn.targets, default.targets)


def test_priority_sort_without_the_end_marker_answers_right_after_the_vectors() -> None:
    config = PrioritySortConfig(width=4, num_inputs=5, num_outputs=3, end_marker=False)
    batch = draw(priority_sort.generate, config, batch_size=2)
    assert config.input_size == 5 and batch.inputs.shape == (2, 8, 5)
    assert output_phase(batch, 0) == (5, 8)
    marked = draw(priority_sort.generate, attrs.evolve(config, end_marker=True), batch_size=2)
    assert torch.equal(batch.inputs[:, :5], marked.inputs[:, :5, :5])  # the same vectors and priorities
    assert torch.equal(batch.targets[:, 5:], marked.targets[:, 6:])


# --- each sequence's length, read back from the batch ----------------------------------------


@pytest.mark.parametrize("markers", ["start_end", "end"])
def test_copy_task_lengths_are_the_vectors_shown(markers: str) -> None:
    config = CopyConfig(width=3, min_length=1, max_length=9, markers=markers)
    batch = draw(copy.generate, config, batch_size=16)
    markers_steps = 2 if markers == "start_end" else 1
    assert torch.equal(copy.task_lengths(config, batch.mask), (batch.lengths - markers_steps) // 2)


def test_repeat_copy_task_lengths_leave_the_repeats_out() -> None:
    config = RepeatCopyConfig(width=3, min_length=1, max_length=6, min_repeats=1, max_repeats=5)
    batch = draw(repeat_copy.generate, config, batch_size=16)
    count_steps = torch.nonzero(batch.inputs[..., config.width + 1])[:, 1]  # one count step per sequence
    assert torch.equal(repeat_copy.task_lengths(config, batch.mask), count_steps - 1)


def test_associative_recall_task_lengths_are_the_items() -> None:
    config = AssociativeRecallConfig(width=3, item_length=2, min_items=2, max_items=6)
    batch = draw(associative_recall.generate, config, batch_size=16)
    items = [len(parse_associative_recall(batch.inputs[b], 3, 2)[0]) for b in range(16)]
    assert associative_recall.task_lengths(config, batch.mask).tolist() == items


@pytest.mark.parametrize("end_marker", [True, False])
def test_priority_sort_task_lengths_are_the_vectors_shown(end_marker: bool) -> None:
    config = PrioritySortConfig(width=3, num_inputs=7, num_outputs=4, end_marker=end_marker)
    batch = draw(priority_sort.generate, config, batch_size=3)
    assert priority_sort.task_lengths(config, batch.mask).tolist() == [7, 7, 7]


def test_bce_by_length_by_hand() -> None:
    """Three copy sequences of width 1, lengths 1, 2 and 2, with chosen logits.

    The BCE of logit z and target y is softplus(z) - y z:
      z = 0:             ln 2 whatever y
      z = ln 3,  y = 1:  ln 4 - ln 3 = ln(4/3)
      z = ln 3,  y = 0:  ln 4
      z = -ln 3, y = 0:  ln(1 + 1/3) = ln(4/3)
    Sequence A (length 1): target 1,     logit 0           -> ln 2
    Sequence B (length 2): targets 1, 0, logits ln 3, ln 3 -> ln(4/3) + ln 4 = ln(16/3)
    Sequence C (length 2): targets 0, 0, logits 0, -ln 3   -> ln 2 + ln(4/3) = ln(8/3)
    Length 1: ln 2 / 1 bit                          = 0.693147...
    Length 2: (ln(16/3) + ln(8/3)) / 4 = ln(128/9) / 4 = 0.663702...
    All:      (ln 2 + ln(128/9)) / 5   = ln(256/9) / 5 = 0.669590...
    Bit errors (a logit > 0 says 1): A's (0 says 0, target 1) and B's second (ln 3 says 1,
    target 0): 2 over 3 sequences.
    """
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask, CopyTaskConfig
    from manntk.tasks.base import Batch

    ln3 = math.log(3)
    # copy layout: start marker, L bits, end marker, then the L scored steps; padded to 6
    mask = torch.tensor([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    targets = torch.tensor([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    logits = torch.full((3, 6), 7.0)  # unscored steps: large logits that must not count
    logits[0, 3] = 0.0
    logits[1, 4:] = ln3
    logits[2, 4:] = torch.tensor([0.0, -ln3])
    logits = logits.unsqueeze(-1)
    batch = Batch(torch.zeros(3, 6, 3), targets.unsqueeze(-1), mask)
    task = AlgorithmicTask(copy, CopyTaskConfig(width=1, max_length=2))
    # scored in two batches, as an evaluation accumulates them
    sums: dict[str, float] = {}
    for start, stop in ((0, 2), (2, 3)):
        for key, value in task.eval_score(logits[start:stop], batch.rows(start, stop)).items():
            sums[key] = sums.get(key, 0.0) + float(value)
    metrics = task.summarize(sums)
    expected = {"1": math.log(2), "2": math.log(128 / 9) / 4}
    assert list(metrics["bce_by_length"]) == ["1", "2"]
    for length, value in expected.items():
        assert metrics["bce_by_length"][length] == pytest.approx(value, rel=1e-6)
    assert metrics["bce"] == pytest.approx(math.log(256 / 9) / 5, rel=1e-6)
    assert metrics["bit_errors_per_sequence"] == pytest.approx(2 / 3)
    # training's score has no per-length sums: its keys are the same for every batch
    training = {key: float(value) for key, value in task.score(logits, batch).items()}
    assert set(training) == {"loss", "count", "bit_errors", "sequences"}
    assert "bce_by_length" not in task.summarize(training)


# --- lengths within the configured bounds, random configs ----------------------------------

small = st.integers(min_value=1, max_value=6)


@settings(max_examples=25, deadline=None)
@given(width=small, low=small, extra=st.integers(0, 8), seed=st.integers(0, 2**31))
def test_copy_lengths_within_bounds(width: int, low: int, extra: int, seed: int) -> None:
    config = CopyConfig(width=width, min_length=low, max_length=low + extra)
    batch = draw(copy.generate, config, batch_size=4, seed=seed)
    lengths = batch.mask.sum(dim=1)
    assert bool(((lengths >= low) & (lengths <= low + extra)).all())
    assert torch.equal(batch.lengths, 2 * lengths + 2)


@settings(max_examples=25, deadline=None)
@given(
    width=small,
    low=small,
    extra=st.integers(0, 4),
    r_low=small,
    r_extra=st.integers(0, 4),
    seed=st.integers(0, 2**31),
)
def test_repeat_copy_lengths_within_bounds(
    width: int, low: int, extra: int, r_low: int, r_extra: int, seed: int
) -> None:
    config = RepeatCopyConfig(
        width=width,
        min_length=low,
        max_length=low + extra,
        min_repeats=r_low,
        max_repeats=r_low + r_extra,
    )
    batch = draw(repeat_copy.generate, config, batch_size=4, seed=seed)
    for b in range(4):
        start, stop = output_phase(batch, b)
        length = start - 2
        repeats = (stop - start - 1) // length
        assert low <= length <= low + extra and r_low <= repeats <= r_low + r_extra
        assert stop - start == repeats * length + 1
        count = float(batch.inputs[b, length + 1, width + 1])
        assert count == pytest.approx(repeats / config.max_repeats)


@settings(max_examples=25, deadline=None)
@given(
    width=small,
    item_length=st.integers(1, 4),
    low=st.integers(2, 4),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**31),
)
def test_associative_recall_lengths_within_bounds(
    width: int, item_length: int, low: int, extra: int, seed: int
) -> None:
    fields = dict(width=width, item_length=item_length, min_items=low, max_items=low + extra)
    if low + extra > 2 ** (width * item_length):
        with pytest.raises(ValueError, match="max_items"):
            AssociativeRecallConfig(**fields)
        return
    config = AssociativeRecallConfig(**fields)
    batch = draw(associative_recall.generate, config, batch_size=4, seed=seed)
    for b in range(4):
        items, _, start = parse_associative_recall(batch.inputs[b], width, item_length)
        assert low <= len(items) <= low + extra
        assert int(batch.lengths[b]) == len(items) * (item_length + 1) + 2 * item_length + 2
        assert int(batch.mask[b].sum()) == item_length


@settings(max_examples=25, deadline=None)
@given(
    width=small, num_inputs=st.integers(1, 12), fraction=st.floats(0, 1), seed=st.integers(0, 2**31)
)
def test_priority_sort_lengths_are_fixed(
    width: int, num_inputs: int, fraction: float, seed: int
) -> None:
    num_outputs = max(1, math.floor(fraction * num_inputs))
    config = PrioritySortConfig(width=width, num_inputs=num_inputs, num_outputs=num_outputs)
    batch = draw(priority_sort.generate, config, batch_size=3, seed=seed)
    assert bool((batch.lengths == num_inputs + 1 + num_outputs).all())
    assert bool((batch.mask.sum(dim=1) == num_outputs).all())


# --- config validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: CopyConfig(width=0), "width"),
        (lambda: CopyConfig(min_length=0), "min_length"),
        (lambda: CopyConfig(min_length=5, max_length=3), "max_length"),
        (lambda: CopyConfig(width=True), "width"),
        (lambda: CopyConfig(width=2.5), "width"),
        (lambda: RepeatCopyConfig(width=0), "width"),
        (lambda: RepeatCopyConfig(min_length=4, max_length=2), "max_length"),
        (lambda: RepeatCopyConfig(min_repeats=3, max_repeats=2), "max_repeats"),
        (lambda: RepeatCopyConfig(count_scale=0), "count_scale"),
        (lambda: AssociativeRecallConfig(width=0), "width"),
        (lambda: AssociativeRecallConfig(item_length=0), "item_length"),
        (lambda: AssociativeRecallConfig(min_items=1), "min_items"),
        (lambda: AssociativeRecallConfig(min_items=5, max_items=4), "max_items"),
        (lambda: AssociativeRecallConfig(width=1, item_length=1, max_items=3), "max_items"),
        (lambda: PrioritySortConfig(width=0), "width"),
        (lambda: PrioritySortConfig(num_inputs=0), "num_inputs"),
        (lambda: PrioritySortConfig(num_inputs=40, num_outputs=41), "num_outputs"),
        (lambda: PrioritySortConfig(sort="rows"), "sort"),
        (lambda: PrioritySortConfig(end_marker=1), "end_marker"),
        (lambda: CopyConfig(density=(0.6, 0.4)), "density"),
        (lambda: CopyConfig(density=(-0.1, 0.4)), "density"),
        (lambda: RepeatCopyConfig(density=(0.2, 1.5)), "density"),
        (lambda: PrioritySortConfig(density=(0.5,)), "density"),
        (lambda: PrioritySortConfig(density=0.5), "density"),
    ],
)
def test_invalid_configs_name_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=rf"\.{field} must"):
        make()


@pytest.mark.parametrize(("generate", "config"), TASKS)
def test_invalid_batch_size_is_rejected(generate, config) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        generate(config, 0, torch.Generator())


def test_paper_defaults() -> None:
    assert attrs.astuple(CopyConfig()) == (6, 1, 50, "start_end", (0.5, 0.5), 0.0)
    assert attrs.astuple(RepeatCopyConfig()) == (6, 1, 10, 1, 10, None, (0.5, 0.5), 0.0)
    assert attrs.astuple(AssociativeRecallConfig()) == (6, 3, 2, 6)
    assert attrs.astuple(PrioritySortConfig()) == (8, 40, 30, "vector", True, (0.5, 0.5))
    assert (CopyConfig().input_size, CopyConfig().output_size) == (8, 6)
    assert (RepeatCopyConfig().input_size, RepeatCopyConfig().output_size) == (8, 7)
    assert (PrioritySortConfig().input_size, PrioritySortConfig().output_size) == (10, 8)


# --- bit density -----------------------------------------------------------------------------

BIT_TASKS = [
    pytest.param(copy.generate, CopyConfig, slice(0, 6), id="copy"),
    pytest.param(repeat_copy.generate, RepeatCopyConfig, slice(0, 6), id="repeat_copy"),
    pytest.param(priority_sort.generate, PrioritySortConfig, slice(0, 8), id="priority_sort"),
]


def bits_of_each_sequence(batch: SequenceBatch, channels: slice) -> tuple[Tensor, Tensor]:
    """The ones of each sequence's input phase on the data channels, and the bits there
    (marker steps included: they are zero on the data channels)."""
    shown = ~batch.mask & (torch.arange(batch.mask.shape[1]) < batch.lengths.unsqueeze(1))
    ones = (batch.inputs[:, :, channels] * shown.unsqueeze(-1)).sum(dim=(1, 2))
    return ones, shown.sum(dim=1) * (channels.stop - channels.start)


@pytest.mark.parametrize(("generate", "make", "channels"), BIT_TASKS)
def test_a_fixed_density_sets_the_rate_of_ones(generate, make, channels) -> None:
    """With ``density`` (p, p) the ones are Binomial(n, p) over the n data bits (marker
    steps add zeros, counted in n, so the rate is a little under p: bounded by 5 standard
    deviations of the binomial and the markers' share)."""
    for p in (0.1, 0.9):
        batch = draw(generate, make(density=(p, p)), batch_size=64)
        ones, bits = bits_of_each_sequence(batch, channels)
        n = float(bits.sum())
        marker_share = 2 * 64 * (channels.stop - channels.start) / n
        rate = float(ones.sum()) / n
        assert p * (1 - marker_share) - 5 * math.sqrt(p * (1 - p) / n) <= rate <= p + 5 * math.sqrt(p * (1 - p) / n)


LONG = {CopyConfig: {"min_length": 40}, RepeatCopyConfig: {"min_length": 10}, PrioritySortConfig: {}}
"""Sequences long enough that a fair coin's rate of ones varies little."""


@pytest.mark.parametrize(("generate", "make", "channels"), BIT_TASKS)
def test_a_density_range_gives_each_sequence_its_own_rate(generate, make, channels) -> None:
    """Densities drawn uniformly in [0, 1]: the sequences' rates of ones spread far more
    than fair coins let them (their variance holds 1/12, the uniform's, besides the
    binomial's); with (0.5, 0.5) they spread as the binomial alone."""
    spreads = {}
    for density in ((0.0, 1.0), (0.5, 0.5)):
        ones, bits = bits_of_each_sequence(draw(generate, make(density=density, **LONG[make]), batch_size=200), channels)
        spreads[density] = float((ones / bits).var())
    assert spreads[(0.0, 1.0)] > 1 / 24
    assert spreads[(0.5, 0.5)] < 1 / 24


def test_the_paper_density_draws_the_bits_it_drew_before_densities() -> None:
    """(0.5, 0.5) draws no density, so the generator's stream is the former one: the bits
    of a copy example are length, then Bernoulli(0.5) bits, from the same generator."""
    generator = torch.Generator().manual_seed(3)
    length = int(torch.randint(1, 51, (), generator=generator))
    bits = torch.bernoulli(torch.full((length, 6), 0.5), generator=generator)
    batch = draw(copy.generate, CopyConfig(), batch_size=1, seed=3)
    assert torch.equal(batch.targets[0][batch.mask[0]], bits)


def test_train_density_changes_the_training_batches_only() -> None:
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask, CopyTaskConfig

    plain = AlgorithmicTask(copy, CopyTaskConfig(validation_batches=2))
    sparse = AlgorithmicTask(copy, CopyTaskConfig(validation_batches=2, train_density=[0.05, 0.05]))
    for split in ("valid", "test"):
        for a, b in zip(plain.eval_batches(split, 100), sparse.eval_batches(split, 100)):
            assert torch.equal(a.inputs, b.inputs)
    rates = [float(task.train_batch(0, 64).targets.mean() / task.train_batch(0, 64).mask.float().mean()) for task in (plain, sparse)]
    assert rates[1] < 0.1 < 0.4 < rates[0]


def test_train_density_share_mixes_the_two_densities_by_batch() -> None:
    """A share of 0.5 draws about half of the batches sparse and the others fair; which
    ones is fixed by the batch's seed, so a batch is the same when drawn again."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask, CopyTaskConfig

    mixed = AlgorithmicTask(copy, CopyTaskConfig(train_density=[0.05, 0.05], train_density_share=0.5))
    rates = []
    for index in range(200):
        batch = mixed.train_batch(index, 16)
        rates.append(float(batch.targets.sum() / (batch.mask.sum() * batch.targets.shape[-1])))
        assert torch.equal(batch.inputs, mixed.train_batch(index, 16).inputs)
    sparse = sum(rate < 0.15 for rate in rates)
    assert all(rate < 0.15 or 0.35 < rate < 0.65 for rate in rates)
    assert 70 <= sparse <= 130  # Binomial(200, 0.5): outside with probability ~3e-5


def test_blanks_zero_whole_vectors_at_their_rate_and_draw_nothing_when_off() -> None:
    """Each row is blanked with probability ``blanks`` (Binomial(20000, 0.2): 4,000 +- 57
    sd, so 3,700..4,300 fails with probability ~1e-7); with none, the bits are the same
    draws as before blanks existed."""
    from manntk.tasks.algorithmic.batch import random_bits

    plain = random_bits(20_000, 6, torch.Generator().manual_seed(4))
    assert torch.equal(plain, torch.bernoulli(torch.full((20_000, 6), 0.5), generator=torch.Generator().manual_seed(4)))
    assert torch.equal(plain, random_bits(20_000, 6, torch.Generator().manual_seed(4), blanks=0.0))
    blanked = random_bits(20_000, 6, torch.Generator().manual_seed(4), blanks=0.2)
    zero_rows = blanked.sum(dim=1) == 0
    assert torch.equal(blanked[~zero_rows], plain[~zero_rows])
    natural = int((plain.sum(dim=1) == 0).sum())  # fair coins: 1 row in 64
    assert 3_700 <= int(zero_rows.sum()) - natural * 0.8 <= 4_300


def test_train_blanks_blank_training_vectors_only() -> None:
    """The training copy sequences of ``train_blanks: 0.25`` have about a quarter of their
    answers all zeros (fair coins alone: 1 in 64); the validation set is the task's own."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask, CopyTaskConfig

    plain = AlgorithmicTask(copy, CopyTaskConfig(validation_batches=2))
    blanked = AlgorithmicTask(copy, CopyTaskConfig(validation_batches=2, train_blanks=0.25))
    for a, b in zip(plain.eval_batches("valid", 100), blanked.eval_batches("valid", 100)):
        assert torch.equal(a.inputs, b.inputs)
    shares = []
    for task in (plain, blanked):
        batch = task.train_batch(0, 256)
        answers = batch.targets[batch.mask]
        shares.append(float((answers.sum(dim=-1) == 0).float().mean()))
    assert shares[0] < 0.04 and 0.2 < shares[1] < 0.3  # ~6,400 answers: sd of the share ~0.005


def test_train_density_share_mixes_blanked_batches_with_the_tasks_own() -> None:
    """With train_blanks alone, a share of 0.5 blanks about half of the training batches
    (half their answers zero) and leaves the others fair coins (1 in 64 zero)."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask, CopyTaskConfig

    mixed = AlgorithmicTask(copy, CopyTaskConfig(train_blanks=0.5, train_density_share=0.5))
    shares = []
    for index in range(200):
        batch = mixed.train_batch(index, 16)
        shares.append(float((batch.targets[batch.mask].sum(dim=-1) == 0).float().mean()))
    blanked = sum(share > 0.25 for share in shares)
    assert all(share > 0.25 or share < 0.15 for share in shares)  # ~400 answers a batch: sd of a share <= 0.025
    assert 70 <= blanked <= 130  # Binomial(200, 0.5): outside with probability ~3e-5


def test_train_max_length_lengthens_the_training_sequences_only() -> None:
    """``train_max_length: 60`` draws training lengths up to 60 (of 400 uniform draws in
    1..60, none above 50 has probability (50/60)**400 ~ 1e-32), with or without the
    share's batches of the task's own bits; the validation and test sets keep 1..50."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask, CopyTaskConfig

    plain = AlgorithmicTask(copy, CopyTaskConfig(validation_batches=2))
    longer = AlgorithmicTask(copy, CopyTaskConfig(validation_batches=2, train_max_length=60))
    mixed = AlgorithmicTask(copy, CopyTaskConfig(train_max_length=60, train_blanks=0.5, train_density_share=0.5))
    for split in ("valid", "test"):
        for a, b in zip(plain.eval_batches(split, 100), longer.eval_batches(split, 100)):
            assert torch.equal(a.inputs, b.inputs)
    for task, longest in ((plain, 50), (longer, 60), (mixed, 60)):
        lengths = torch.cat([task.train_batch(index, 8).mask.sum(dim=1) for index in range(50)])
        assert int(lengths.max()) == longest and int(lengths.min()) >= 1


def test_train_min_length_shortens_the_range_of_the_training_sequences_only() -> None:
    """``train_min_length: 25`` draws training lengths from 25..50 (of 400 uniform draws, none
    at 25 or none at 50 has probability ~2 (25/26)**400 ~ 3e-7); the validation and test sets
    keep 1..50, also with a curriculum (whose stages never go under the training minimum)."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask, CopyTaskConfig

    plain = AlgorithmicTask(copy, CopyTaskConfig(validation_batches=2))
    longer = AlgorithmicTask(copy, CopyTaskConfig(validation_batches=2, train_min_length=25))
    for split in ("valid", "test"):
        for a, b in zip(plain.eval_batches(split, 100), longer.eval_batches(split, 100)):
            assert torch.equal(a.inputs, b.inputs)
    lengths = torch.cat([longer.train_batch(index, 8).mask.sum(dim=1) for index in range(50)])
    assert (int(lengths.min()), int(lengths.max())) == (25, 50)
    staged = AlgorithmicTask(copy, CopyTaskConfig(train_min_length=25, curriculum_steps=100))
    assert int(staged.train_batch(0, 8).mask.sum(dim=1).min()) == 25
    # the batches of the task's own bits (outside train_density_share) keep the minimum too
    mixed = AlgorithmicTask(copy, CopyTaskConfig(train_min_length=25, train_blanks=0.5, train_density_share=0.5))
    assert int(torch.cat([mixed.train_batch(index, 8).mask.sum(dim=1) for index in range(50)]).min()) == 25


def test_train_max_length_below_min_length_is_refused() -> None:
    from manntk.tasks.algorithmic import plugin

    with pytest.raises(ValueError, match=r"train_max_length must be >= min_length \(5\), got 4"):
        plugin.CopyTaskConfig(min_length=5, train_max_length=4)
    with pytest.raises(ValueError, match=r"train_max_length must be a positive integer, got 6.5"):
        plugin.CopyTaskConfig(train_max_length=6.5)
    with pytest.raises(ValueError, match=r"train_min_length must be <= max_length \(50\), got 51"):
        plugin.CopyTaskConfig(train_min_length=51)
    with pytest.raises(ValueError, match=r"train_min_length must be <= train_max_length \(20\), got 30"):
        plugin.CopyTaskConfig(train_min_length=30, train_max_length=20)
    assert "train_max_length" not in attrs.fields_dict(plugin.AssociativeRecallTaskConfig)


def test_train_density_exists_only_for_tasks_of_random_bits() -> None:
    from manntk.tasks.algorithmic import plugin

    assert "train_density" in attrs.fields_dict(plugin.CopyTaskConfig)
    assert "train_density" not in attrs.fields_dict(plugin.AssociativeRecallTaskConfig)
    with pytest.raises(ValueError, match="train_density must be two probabilities"):
        plugin.CopyTaskConfig(train_density=(0.3, 0.2))


# --- curriculum over lengths -----------------------------------------------------------------


def algorithmic_task(name: str, **options):
    from manntk.tasks.algorithmic import plugin

    module = {"copy": copy, "repeat_copy": repeat_copy, "associative_recall": associative_recall,
              "priority_sort": priority_sort}[name]
    config_class = {"copy": plugin.CopyTaskConfig, "repeat_copy": plugin.RepeatCopyTaskConfig,
                    "associative_recall": plugin.AssociativeRecallTaskConfig,
                    "priority_sort": plugin.PrioritySortTaskConfig}[name]
    return plugin.AlgorithmicTask(module, config_class(**options))


@pytest.mark.parametrize(
    ("name", "longest_first", "longest_at_half", "longest_full"),
    [
        # the largest task_lengths of 500 training sequences at index 0, at the ramp's middle
        # (index 49 of 100: fraction 0.5) and after it; hand-computed from the defaults
        ("copy", 1, 25, 50),  # max_length 50 -> max(1, round(0.01 * 50)) = 1, then 25
        ("repeat_copy", 1, 5, 10),  # max_length 10 -> 1, then 5
        ("associative_recall", 2, 3, 6),  # max_items 6 -> max(2, 0) = 2, then 3
        ("priority_sort", 1, 20, 40),  # num_inputs 40 -> 1 (round(0.4) = 0, at least 1), then 20
    ],
)
def test_a_curriculum_grows_the_training_lengths_and_leaves_evaluation_alone(
    name: str, longest_first: int, longest_at_half: int, longest_full: int
) -> None:
    task = algorithmic_task(name, curriculum_steps=100, validation_batches=1)
    plain = algorithmic_task(name, validation_batches=1)

    def longest(index: int) -> int:
        batch = task.train_batch(index, 500)  # a length of 1 in 50 is missed with odds 4e-5
        return int(task.task_lengths(task.config, batch.mask).max())

    assert (longest(0), longest(49), longest(99), longest(5000)) == (longest_first, longest_at_half, longest_full, longest_full)
    assert torch.equal(task.train_batch(100, 4).inputs, plain.train_batch(100, 4).inputs)
    for split in ("valid", "test"):
        (ramped,), (full,) = task.eval_batches(split, 50), plain.eval_batches(split, 50)
        assert torch.equal(ramped.inputs, full.inputs)


def test_a_curriculum_keeps_the_repeat_count_on_the_full_tasks_scale() -> None:
    """At half the ramp the most repeats are 5, but the count channel still reads
    repeats / 10 (the full task's max_repeats), as the validation set's does."""
    task = algorithmic_task("repeat_copy", curriculum_steps=100)
    batch = task.train_batch(49, 64)
    counts = batch.inputs[:, :, 7].amax(dim=1)  # the count channel, W + 1
    lengths = task.task_lengths(task.config, batch.mask)
    repeats = (batch.mask.sum(dim=1) - 1) // lengths  # output steps: L * R + the end marker
    assert int(repeats.max()) == 5
    assert torch.allclose(counts, repeats / 10)


def test_a_curriculum_cuts_priority_sort_outputs_with_its_inputs() -> None:
    config = algorithmic_task("priority_sort").config
    half = priority_sort.shortened(config, 0.5)
    assert (half.num_inputs, half.num_outputs) == (20, 15)
    tiny = priority_sort.shortened(config, 0.01)
    assert (tiny.num_inputs, tiny.num_outputs) == (1, 1)


def test_curriculum_steps_must_be_positive() -> None:
    from manntk.tasks.algorithmic import plugin

    with pytest.raises(ValueError, match="curriculum_steps"):
        plugin.CopyTaskConfig(curriculum_steps=0)


# --- batches, loss and criterion ------------------------------------------------------------


def test_pad_examples_pads_at_the_end_with_zeros_and_no_mask() -> None:
    short = Example(torch.ones(2, 3), torch.ones(2, 1), torch.tensor([False, True]))
    long = (torch.ones(4, 3), torch.ones(4, 1), torch.tensor([False, False, True, True]))
    batch = pad_examples([short, long])
    assert batch.lengths.tolist() == [2, 4]
    assert not bool(batch.inputs[0, 2:].any()) and not bool(batch.targets[0, 2:].any())
    assert batch.mask.tolist() == [[False, True, False, False], [False, False, True, True]]
    with pytest.raises(ValueError, match="at least one"):
        pad_examples([])


def test_sequence_batch_to_moves_every_tensor() -> None:
    batch = draw(copy.generate, CopyConfig(max_length=5), batch_size=2).to("meta")
    tensors = (batch.inputs, batch.targets, batch.mask, batch.lengths)
    assert {tensor.device.type for tensor in tensors} == {"meta"}


def test_sequence_batch_rejects_inconsistent_shapes() -> None:
    with pytest.raises(ValueError, match="targets"):
        SequenceBatch(
            inputs=torch.zeros(2, 3, 4),
            targets=torch.zeros(2, 2, 1),
            mask=torch.zeros(2, 3, dtype=torch.bool),
            lengths=torch.tensor([3, 3]),
        )


def test_bce_per_bit_counts_only_the_output_phase() -> None:
    batch = draw(copy.generate, CopyConfig(max_length=8), batch_size=4)
    perfect = 30.0 * (2 * batch.targets - 1)
    assert bce_per_bit(perfect, batch).item() < 1e-6
    # whatever the model says outside the output phase does not count
    noisy = torch.where(batch.mask.unsqueeze(-1), perfect, torch.randn_like(perfect) * 10)
    assert bce_per_bit(noisy, batch).item() == pytest.approx(bce_per_bit(perfect, batch).item())
    # chance level: logits 0 give log(2) per bit, here the float32 mean of num_target_bits
    # roundings of log(2) summed in torch's (CPU-dependent) order: n eps apart at most
    chance = pytest.approx(math.log(2), rel=batch.num_target_bits * torch.finfo(torch.float32).eps)
    assert bce_per_bit(torch.zeros_like(perfect), batch).item() == chance
    assert batch.num_target_bits == int(batch.mask.sum()) * 6


def test_solved_criterion() -> None:
    assert SOLVED_BCE_THRESHOLD == 0.01
    assert solved(0.0099) and not solved(0.01) and not solved(0.7) and not solved(float("nan"))
    assert solved(0.04, threshold=0.05)


class _PerStepLinear(torch.nn.Module):
    """A stand-in model: a fixed linear map of each input step (and an empty state)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(inputs, outputs)

    def forward(self, inputs: torch.Tensor, state: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(inputs), inputs.new_zeros(0)


def test_an_evaluation_reports_the_bce_of_each_length_in_the_split() -> None:
    from torch.nn import functional as F

    from manntk.tasks.algorithmic.plugin import AlgorithmicTask, CopyTaskConfig
    from manntk.training.evaluate import evaluate

    config = CopyTaskConfig(width=2, min_length=1, max_length=5, validation_batches=2, validation_batch_size=16)
    task = AlgorithmicTask(copy, config)
    torch.manual_seed(0)
    model = _PerStepLinear(config.input_size, config.output_size)
    metrics = evaluate(model, task, "valid", 16, torch.device("cpu"))
    # the reference, sequence by sequence: the length from the end marker's step (L + 1)
    losses: dict[str, float] = {}
    bits: dict[str, int] = {}
    with torch.no_grad():
        for batch in task.eval_batches("valid", 16):
            outputs, _ = model(batch.inputs)
            for b in range(batch.inputs.shape[0]):
                length = str(int(torch.nonzero(batch.inputs[b, :, config.width + 1])[0]) - 1)
                scored = batch.mask[b]
                loss = F.binary_cross_entropy_with_logits(outputs[b][scored], batch.targets[b][scored], reduction="sum")
                losses[length] = losses.get(length, 0.0) + float(loss)
                bits[length] = bits.get(length, 0) + int(scored.sum()) * config.width
    expected = {length: losses[length] / bits[length] for length in sorted(losses, key=int)}
    assert list(metrics["bce_by_length"]) == list(expected) == ["1", "2", "3", "4", "5"]
    assert metrics["bce_by_length"] == pytest.approx(expected, rel=1e-5)
    assert len({round(value, 4) for value in expected.values()}) == 5  # the lengths differ
