"""Scoring examples one by one: the algorithmic tasks' ``example_scores`` on a
hand-computed case, and ``manntk eval --failures`` against the split's own bit-error count."""

from __future__ import annotations

import math
import re

import pytest
import torch

from manntk.build import build_experiment
from manntk.cli import main
from manntk.recipe import recipe_from_mapping
from manntk.training import train

TINY = {
    "name": "tiny-copy",
    "task": {"name": "copy", "width": 3, "min_length": 2, "max_length": 4, "validation_batches": 2, "validation_batch_size": 4},
    "model": {"cell": {"name": "armin", "hidden_size": 8}, "addressing": {"name": "auto"},
              "write": {"name": "overwrite"}, "memory": {"slots": 4, "width": 8}},
    "train": {"batch_size": 2, "steps": 2, "log_every": 1, "device": "cpu"},
}


def test_example_scores_by_hand():
    """Logits of +-3 on the right side of every target bit, then one bit of example 1 and
    two of example 2 turned to the wrong side: the wrong counts are 0, 1, 2, 0 and each
    BCE is (right bits * log(1 + e^-3) + wrong bits * log(1 + e^3)) / scored bits."""
    task, _ = build_experiment(recipe_from_mapping(TINY), None)
    batch = next(iter(task.eval_batches("valid", 4)))
    logits = torch.where(batch.targets > 0.5, 3.0, -3.0)
    flips = {1: 1, 2: 2}
    for row, count in flips.items():
        steps = batch.mask[row].nonzero().flatten()
        for step in steps[:count].tolist():
            logits[row, step, 0] = -logits[row, step, 0]
    scores = task.example_scores(logits, batch)
    assert scores["wrong"].tolist() == [0, 1, 2, 0]
    assert torch.equal(scores["length"], task.task_lengths(task.config, batch.mask))
    for row in range(4):
        bits = int(batch.mask[row].sum()) * logits.shape[-1]
        wrong = flips.get(row, 0)
        expected = ((bits - wrong) * math.log1p(math.exp(-3.0)) + wrong * math.log1p(math.exp(3.0))) / bits
        assert float(scores["bce"][row]) == pytest.approx(expected, rel=1e-5)  # float32: a sum of <= 15 terms, n * 2^-24 relative


def test_eval_failures_lists_the_wrong_examples(tmp_path, capsys):
    """An untrained model gets most sequences wrong: the count printed is the number of
    sequences with a wrong bit, their wrong bits add up to the split's own
    bit_errors_per_sequence x sequences, and at most N are listed."""
    from manntk.training.evaluate import failed_examples, load_judged_model

    run = train(recipe_from_mapping(TINY), tmp_path / "run", progress=False).run_dir
    recipe, task, model, device = load_judged_model(run, "valid", device="cpu")
    failed = failed_examples(model, task, "valid", recipe.eval.batch_size, device)
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "valid", "--device", "cpu", "--failures", "2"]) == 0
    printed = capsys.readouterr().out
    errors = float(re.search(r"bit_errors_per_sequence ([0-9.]+)", printed).group(1))
    assert failed and sum(example["wrong"] for example in failed) == pytest.approx(errors * 8, abs=1e-3)
    assert f"{len(failed)} example(s) wrong" in printed
    listed = re.findall(r"^  #(\d+): length (\d+), wrong (\d+)", printed, re.MULTILINE)
    assert [int(index) for index, _, _ in listed] == [example["index"] for example in failed[:2]]
    assert all(0 <= example["index"] < 8 for example in failed)
    assert f"--index {failed[0]['index']}" in printed
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--failures", "x"])
    assert main(["eval", str(run), "--split", "valid", "--device", "cpu", "--failures", "0"]) == 2
    assert "--failures takes a positive count" in capsys.readouterr().err


def test_eval_failures_on_a_task_without_example_scores_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """A task whose examples are not scored one by one (``example_scores`` gives ``None``,
    the default, as a language-model stream) gets a usage error that says so, after its
    metrics."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask
    from manntk.tasks.base import Task

    run = train(recipe_from_mapping(TINY), tmp_path / "run", progress=False).run_dir
    monkeypatch.setattr(AlgorithmicTask, "example_scores", Task.example_scores)
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "valid", "--device", "cpu", "--failures"]) == 2
    captured = capsys.readouterr()
    assert "[valid]: loss " in captured.out and "does not score its examples one by one" in captured.err

