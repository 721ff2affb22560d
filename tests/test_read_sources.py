"""``manntk reads``: the source step of every answer's read, on hand-made traces and on a tiny trained run."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
import torch
import torch.nn.functional as F

from manntk.build import build_experiment
from manntk.cli import main
from manntk.recipe import load_recipe, recipe_from_mapping
from manntk.tools.inspect_memory import take_example
from manntk.tools.read_sources import count_reads, reaches, read_sources, shares
from manntk.trace import tracing
from manntk.training import train
from manntk.training.checkpoint import latest_checkpoint, load_weights

from tests.test_plot_inspect import png_size, tiny_copy
from tests.test_training import tiny_lm


def one_hot(slots: list[int | None], n: int) -> torch.Tensor:
    """``[T, N]`` weights: one-hot rows, a zero row for ``None`` (no write)."""
    return torch.stack([F.one_hot(torch.tensor(s), n).float() if s is not None else torch.zeros(n) for s in slots])


def test_read_sources_by_hand():
    # sequence 0: writes slot 0, 1, 0 (overwriting step 0's), nothing, 2; sequence 1 other slots
    writes = torch.stack([one_hot([0, 1, 0, None, 2], 3), one_hot([2, 2, 1, 0, 0], 3)], dim=1)
    reads = torch.stack([one_hot([0, 0, 1, 0, 2], 3), one_hot([1, 2, 2, 1, 0], 3)], dim=1)
    sources = read_sources(reads, writes)
    # a read at t sees the writes of steps before t only: step 4 of sequence 0 reads slot 2,
    # which step 4 itself writes afterwards
    assert sources[:, 0].tolist() == [-1, 0, 1, 2, -1]
    assert sources[:, 1].tolist() == [-1, 0, 1, 2, 3]


def test_count_reads_by_hand():
    """One copy-like sequence of 3 answers at steps 3-5, shown at steps 0-2 (leading channels)."""
    shown = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    inputs = torch.zeros(1, 6, 3)
    inputs[0, :3, :2] = shown
    inputs[0, :3, 2] = 1.0  # a channel past the target's width is not compared
    targets = torch.zeros(1, 6, 2)
    targets[0, 3:] = shown
    mask = torch.tensor([[False, False, False, True, True, True]])
    outputs = torch.full((1, 6, 2), -5.0)
    outputs[0, 3:] = 5 * (2 * shown - 1)  # every answer right ...
    outputs[0, 5, 0] = -5.0  # ... but the last one's first bit
    # answer 1 from step 0 (its target's step), answer 2 from step 3 (the step before),
    # answer 3 from an unwritten slot
    sources = torch.tensor([[-1], [-1], [-1], [0], [3], [-1]])
    tallies = {"by_position": defaultdict(Counter), "by_length": defaultdict(Counter)}
    count_reads(inputs, targets, mask, outputs, sources, tallies)
    positions = {key: shares(row) for key, row in tallies["by_position"].items()}
    assert positions[0] == {"steps": 1, "from_target": 1.0, "through_writes": 1.0, "from_previous_step": 0.0, "from_unwritten": 0.0,
                            "right": 1.0, "from_target_at_lag": [1.0, 0.0, 0.0], "wrong_read_elsewhere": None}
    assert positions[1]["from_previous_step"] == 1.0 and positions[1]["from_target"] == 0.0
    assert positions[2]["from_unwritten"] == 1.0 and positions[2]["right"] == 0.0 and positions[2]["wrong_read_elsewhere"] == 1.0
    length = shares(tallies["by_length"][3])
    assert length["steps"] == 3 and length["from_target"] == pytest.approx(1 / 3, abs=1e-5) and length["right"] == pytest.approx(2 / 3, abs=1e-5)

    # reading one step ahead: the read at step t comes from the step that showed step t+1's
    # target, so each answer's bits were read at the step before it (lag 1); with no lag
    # allowed, none of them counts as read from its target's step
    ahead = torch.tensor([[-1], [-1], [0], [1], [2], [-1]])
    for max_lag, expected in ((2, [0.0, 1.0, 0.0]), (0, [0.0])):
        tallies = {"by_position": defaultdict(Counter), "by_length": defaultdict(Counter)}
        count_reads(inputs, targets, mask, outputs, ahead, tallies, max_lag)
        total = shares(sum(tallies["by_position"].values(), Counter()), max_lag)
        assert total["from_target_at_lag"] == expected and total["from_target"] == sum(expected)


def test_reaches_through_slots_written_in_the_output_phase():
    """Step 0 shows v, step 1 shows w; steps 2 and 3 answer v. Step 2 reads step 0's slot;
    step 3 reads the slot step 2 wrote (step 2 showed nothing), which carries step 2's read."""
    v, w = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    shown = torch.stack([v, w, torch.zeros(2), torch.zeros(2)])
    sources = torch.tensor([-1, -1, 0, 2])
    assert reaches(sources, shown, v, 2, hops=False) and reaches(sources, shown, v, 2, hops=True)
    assert not reaches(sources, shown, v, 3, hops=False) and reaches(sources, shown, v, 3, hops=True)
    # a walk stops at a step that showed other bits, and at an unwritten slot
    assert not reaches(torch.tensor([-1, -1, 1, 2]), shown, v, 3, hops=True)
    assert not reaches(torch.tensor([-1, -1, -1, 2]), shown, v, 3, hops=True)


def source_by_loop(read_slots: list[int], write_slots: list[int], t: int) -> int:
    """The last step before ``t`` that wrote the slot read at ``t``, by a plain scan."""
    return max((s for s in range(t) if write_slots[s] == read_slots[t]), default=-1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(recipe_from_mapping(tiny_copy()), tmp_path_factory.mktemp("reads") / "armin", progress=False).run_dir


def test_reads_over_a_split_match_a_count_example_by_example(run, tmp_path, capsys):
    out = tmp_path / "reads"
    assert main(["reads", str(run), "--split", "valid", "--out", str(out)]) == 0
    assert "answers:" in capsys.readouterr().out
    png_size(out / "reads.png")
    data = json.loads((out / "reads.json").read_text())

    recipe = load_recipe(run / "recipe.yaml")
    task, model = build_experiment(recipe)
    model.load_state_dict(load_weights(latest_checkpoint(run)))
    model.eval()
    expected = Counter()
    for index in range(8):  # 2 batches of 4 sequences
        example = take_example(task, "valid", index, recipe.eval.batch_size)
        with torch.no_grad(), tracing() as trace:
            outputs, _ = model(example.inputs)
        read_slots = trace["layer0.read"][:, 0].argmax(-1).tolist()
        write_slots = trace["layer0.write"][:, 0].argmax(-1).tolist()
        for t in example.mask[0].nonzero().flatten().tolist():
            expected["steps"] += 1
            for lag in range(3):  # the read at t, t - 1 or t - 2 (the default --max-lag 2)
                source = source_by_loop(read_slots, write_slots, t - lag)
                if source >= 0 and torch.equal(example.inputs[0, source, :3], example.targets[0, t]):
                    expected["from_target"] += 1
                    expected[f"lag{lag}"] += 1
                    break
            expected["from_previous_step"] += source_by_loop(read_slots, write_slots, t) == t - 1
            expected["right"] += bool(((outputs[0, t] > 0) == (example.targets[0, t] > 0.5)).all())
    totals = data["totals"]
    assert totals["steps"] == expected["steps"] == sum(row["steps"] for row in data["by_length"].values())
    for name in ("from_target", "from_previous_step", "right"):
        assert totals[name] == pytest.approx(expected[name] / expected["steps"], abs=1e-5), name
    assert totals["through_writes"] >= totals["from_target"]  # the direct reads, and more
    assert totals["from_target_at_lag"] == pytest.approx([expected[f"lag{lag}"] / expected["steps"] for lag in range(3)], abs=1e-5)
    assert set(data["by_length"]) <= {"3", "4"} and set(data["by_position"]) <= {"0", "1", "2", "3"}


def test_reads_needs_a_memory_and_a_run(run, tmp_path, capsys):
    lstm = train(recipe_from_mapping(tiny_copy("tiny-lstm", cell={"name": "lstm", "hidden_size": 8}, addressing={"name": "none"},
                                               write={"name": "none"})), tmp_path / "lstm", progress=False).run_dir
    assert main(["reads", str(lstm)]) == 2
    assert "has no memory to read from (layers with one: none)" in capsys.readouterr().err
    assert main(["reads", str(run), "--layer", "1"]) == 2
    assert "layer 1 of the model" in (error := capsys.readouterr().err) and "(layers with one: layer0)" in error
    assert main(["reads", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["reads", str(run), "--max-lag", "-1"]) == 2
    assert "--max-lag must be >= 0, got -1" in capsys.readouterr().err


def test_reads_refuses_answers_that_are_not_bit_vectors(tmp_path, capsys):
    """A character language model answers with token ids, which no input step shows as bits."""
    lm = train(recipe_from_mapping(tiny_lm(tmp_path, steps=2)), tmp_path / "lm", progress=False).run_dir
    assert main(["reads", str(lm), "--split", "valid"]) == 2
    assert "counts answers that are bit vectors; task 'char_lm' has other targets" in capsys.readouterr().err
