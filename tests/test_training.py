"""The trainer: a run end to end, exact resume, divergence, corrupt checkpoints, DDP, schedules."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manntk.cli import main
from manntk.config import ConfigError
from manntk.recipe import OptimizerConfig, ScheduleConfig, recipe_from_mapping
from manntk.tools.runs import run_status
from manntk.training import CheckpointError, TrainingDiverged, train
from manntk.training.evaluate import evaluate_run
from manntk.training.metrics import read_metrics
from manntk.training.optim import lr_factor, make_optimizer

REPO = Path(__file__).resolve().parents[1]


def tiny_copy(**train):
    """ARMIN on a short copy task, small enough for a few seconds of CPU."""
    return {
        "name": "tiny-copy",
        "task": {"name": "copy", "width": 3, "max_length": 4, "validation_batches": 2, "validation_batch_size": 4},
        "model": {"cell": {"name": "armin", "hidden_size": 8}, "addressing": {"name": "auto"},
                  "write": {"name": "overwrite"}, "memory": {"slots": 4, "width": 8}},
        "train": {"batch_size": 2, "steps": 6, "log_every": 1, "device": "cpu", "optimizer": {"lr": 0.01}, **train},
    }


def train_rows(run_dir: Path) -> list[dict]:
    return [row for row in read_metrics(run_dir / "metrics.jsonl") if row["split"] == "train"]


def test_a_run_writes_its_directory_and_evaluates(tmp_path, capsys):
    result = train(recipe_from_mapping(tiny_copy(eval_every=3)), tmp_path / "run", progress=False)
    run = result.run_dir
    assert result.step == 6 and result.stop_reason == "steps"
    assert {"recipe.yaml", "meta.json", "metrics.jsonl", "results.json", "checkpoints"} <= {p.name for p in run.iterdir()}
    meta = json.loads((run / "meta.json").read_text())
    assert meta["manntk"] and "manntk.cells.armin" in meta["plugins"]
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["split"] == "valid" and not r.get("final")] == [3, 6]
    assert {"valid", "test"} <= set(result.metrics) and 0 < result.metrics["test"]["bce"] < 2
    # evaluations, not training rows, break the BCE down by sequence length (1..4 here)
    assert not any("bce_by_length" in r for r in rows if r["split"] == "train")
    evaluations = [r for r in rows if r["split"] != "train"]
    assert len(evaluations) == 4 and all(set(r["bce_by_length"]) <= {"1", "2", "3", "4"} for r in evaluations)
    summary = json.loads((run / "results.json").read_text())
    assert summary["metrics"]["test"]["bce_by_length"] == result.metrics["test"]["bce_by_length"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    assert main(["eval", str(run), "--split", "test", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"bce {result.metrics['test']['bce']:.4f}" in printed
    first = next(iter(result.metrics["test"]["bce_by_length"].items()))
    assert f"bce_by_length {{{first[0]}: {first[1]:.4f}" in printed


def test_a_long_breakdown_is_printed_by_its_extremes():
    from manntk.cli import SHOWN_IN_FULL, metrics_line

    many = {str(length): 0.5 - length / 1000 for length in range(1, SHOWN_IN_FULL + 3)}
    assert metrics_line({"bce": 0.25, "bce_by_length": many}) == (
        f"bce 0.2500, bce_by_length {{{SHOWN_IN_FULL + 2} keys; lowest {0.5 - (SHOWN_IN_FULL + 2) / 1000:.4f} at "
        f"{SHOWN_IN_FULL + 2}, highest 0.4990 at 1}}")
    few = dict(list(many.items())[:2])
    assert metrics_line({"bce_by_length": few}) == "bce_by_length {1: 0.4990, 2: 0.4980}"


def test_the_run_seed_drives_the_data_unless_the_task_names_its_own(tmp_path):
    from manntk.build import build_task
    from manntk.recipe import recipe_from_mapping as recipe
    from manntk.tasks.base import TaskContext

    def first_batch(seed: int, task_seed: int | None = None):
        mapping = tiny_copy(seed=seed)
        if task_seed is not None:
            mapping["task"]["seed"] = task_seed
        task = build_task(recipe(mapping).task, TaskContext(seed=seed))
        return task.data_seed, task.train_batch(0, 2).inputs

    (seed_a, a), (seed_b, b) = first_batch(1), first_batch(2)
    assert (seed_a, seed_b) == (1, 2) and not torch.equal(a, b)  # another run seed, other data
    (seed_c, c), (seed_d, d) = first_batch(1, task_seed=7), first_batch(2, task_seed=7)
    assert seed_c == seed_d == 7 and torch.equal(c, d)  # task.seed pins the data


def test_results_record_the_seeds_and_whether_the_test_set_agrees(tmp_path):
    result = train(recipe_from_mapping(tiny_copy(seed=3)), tmp_path / "run", progress=False)
    summary = json.loads((result.run_dir / "results.json").read_text())
    assert summary["seeds"] == {"model": 3, "data": 3}
    assert summary["solved"] is False and summary["solved_step"] is None  # six steps solve nothing


def test_resume_continues_exactly(tmp_path):
    """N steps straight equals N/2 steps, a stop, a resume and N/2 more (Gumbel noise included)."""
    straight = train(recipe_from_mapping(tiny_copy(checkpoint_every=3)), tmp_path / "straight", progress=False).run_dir
    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-00000006")
    (interrupted / "checkpoints" / "latest").write_text("step-00000003\n")
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    expected = [(r["step"], r["loss"]) for r in train_rows(straight)]
    resumed = [(r["step"], r["loss"]) for r in train_rows(interrupted)]
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]  # rows after the checkpoint were rewritten, not duplicated
    for (_, a), (_, b) in zip(expected, resumed):
        assert a == pytest.approx(b, rel=1e-5)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path, capsys):
    run = train(recipe_from_mapping(tiny_copy(steps=2)), tmp_path / "run", progress=False).run_dir
    weights = run / "checkpoints" / "step-00000002" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="weights.safetensors does not match its SHA-256"):
        train(recipe_from_mapping(tiny_copy(steps=2)), run, resume=True, progress=False)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    assert "CheckpointError" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2  # no recipe there: a clean error, not a traceback


def change_loss_on_call(monkeypatch, call: int, change) -> None:
    """The training loss of the ``call``-th scored batch (from 1) becomes ``change(loss)``."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask

    original, calls = AlgorithmicTask.score, {"n": 0}

    def scored(self, outputs, batch):
        calls["n"] += 1
        scores = original(self, outputs, batch)
        if calls["n"] == call:
            scores["loss"] = change(scores["loss"])
        return scores

    monkeypatch.setattr(AlgorithmicTask, "score", scored)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    change_loss_on_call(monkeypatch, 4, lambda loss: loss * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"became nan at step 4; the last good checkpoint is .*step-00000002"):
        train(recipe_from_mapping(tiny_copy(checkpoint_every=2)), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000002"


class _OverflowingBackward(torch.autograd.Function):
    """The identity forward; a backward whose gradient is infinite (0 * inf: NaN where it is
    0), as a float32 overflow inside the backward pass gives."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def overflow_on_call(monkeypatch, call: int) -> None:
    """The training loss of the ``call``-th scored batch (from 1) overflows in the backward."""
    change_loss_on_call(monkeypatch, call, _OverflowingBackward.apply)


def test_gradients_finite_by_hand():
    """inf, -inf or NaN anywhere makes the gradients non-finite; the largest finite float
    and an empty parameter do not; a parameter without a gradient is left out."""
    from manntk.training.optim import gradients_finite

    def parameters(*grads):
        result = []
        for grad in grads:
            parameter = torch.nn.Parameter(torch.zeros(grad.shape) if grad is not None else torch.zeros(2))
            parameter.grad = grad
            result.append(parameter)
        return result

    big = torch.finfo(torch.float32).max
    assert gradients_finite(parameters(torch.tensor([1.0, -big]), torch.zeros(0), None))
    assert gradients_finite(parameters())
    for bad in (float("inf"), -float("inf"), float("nan")):
        assert not gradients_finite(parameters(torch.tensor([[1.0, 2.0], [3.0, bad]]), torch.ones(3))), bad
        assert not gradients_finite(parameters(torch.ones(3), torch.tensor([bad, 0.0]))), bad


def test_a_non_finite_gradient_stops_the_run_before_the_weights_take_it(tmp_path, monkeypatch):
    overflow_on_call(monkeypatch, 3)
    with pytest.raises(TrainingDiverged, match=r"the gradient became non-finite .* at step 3; the last good checkpoint is .*step-00000002"):
        train(recipe_from_mapping(tiny_copy(checkpoint_every=2)), tmp_path / "run", progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())  # the outcome, for studies and `manntk runs`
    assert results["stop_reason"] == "diverged" and results["step"] == 3 and results["solved"] is False
    assert results["metrics"] == {} and "the gradient became non-finite" in results["diverged"]
    assert run_status(tmp_path / "run").status == "diverged"


def test_a_skipped_non_finite_gradient_leaves_the_weights_and_is_counted(tmp_path, monkeypatch):
    """train.nonfinite_gradients: skip. The third step's gradient overflows: the weights after
    it are those after the second, the run goes on, and the rows and results count one step."""
    from manntk.training import trainer as trainer_module

    overflow_on_call(monkeypatch, 3)
    weights = []
    original = trainer_module.Trainer.train_step

    def recording_step(self, *args):
        result = original(self, *args)
        weights.append({name: p.detach().clone() for name, p in self.model.named_parameters()})
        return result

    monkeypatch.setattr(trainer_module.Trainer, "train_step", recording_step)
    result = train(recipe_from_mapping(tiny_copy(steps=5, nonfinite_gradients="skip")), tmp_path / "run", progress=False)
    assert result.step == 5 and len(weights) == 5
    for name, weight in weights[1].items():
        assert torch.equal(weights[2][name], weight), name
        assert torch.isfinite(weights[4][name]).all(), name
    assert any(not torch.equal(weights[3][name], weight) for name, weight in weights[2].items())  # the next step trains
    assert [row["nonfinite_steps"] for row in train_rows(result.run_dir)] == [0, 0, 1, 1, 1]
    assert json.loads((result.run_dir / "results.json").read_text())["nonfinite_steps"] == 1


def test_stop_when_solved_and_time_budget(tmp_path, monkeypatch):
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask

    monkeypatch.setattr(AlgorithmicTask, "summarize", lambda self, sums: {"loss": 0.001, "bce": 0.001, "solved": 1.0})
    result = train(recipe_from_mapping(tiny_copy(eval_every=2, stop_when_solved=True)), tmp_path / "a", progress=False)
    assert result.stop_reason == "solved" and result.solved_step == 2 and result.step == 2
    result = train(recipe_from_mapping(tiny_copy(max_minutes=1e-9)), tmp_path / "b", progress=False)
    assert result.stop_reason == "time" and result.step == 1


def test_the_rate_drops_once_when_first_solved_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    """schedule.solved_gamma: from the first solved validation (step 2) on, the rate is
    gamma times the schedule's, also after a resume from a later checkpoint, and it drops
    only once although every later validation is solved too."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask

    monkeypatch.setattr(AlgorithmicTask, "summarize", lambda self, sums: {"loss": 0.001, "bce": 0.001, "solved": 1.0})
    schedule = {"name": "step", "milestones": [5], "gamma": 0.5, "solved_gamma": 0.1}
    recipe = tiny_copy(steps=8, eval_every=2, checkpoint_every=4, stop_when_solved=False, schedule=schedule)
    straight = train(recipe_from_mapping(recipe), tmp_path / "straight", progress=False)
    assert straight.solved_step == 2
    expected = [0.01, 0.01, 0.001, 0.001, 0.0005, 0.0005, 0.0005, 0.0005]  # the drop at 2 (x0.1), the milestone at 5 (x0.5)
    assert [r["lr"] for r in train_rows(straight.run_dir)] == pytest.approx(expected)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight.run_dir, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-00000008")
    (interrupted / "checkpoints" / "latest").write_text("step-00000004\n")
    train(recipe_from_mapping(recipe), interrupted, resume=True, progress=False)
    assert [r["lr"] for r in train_rows(interrupted)] == pytest.approx(expected)
    without = train(recipe_from_mapping(tiny_copy(steps=4, eval_every=2, stop_when_solved=False)), tmp_path / "without", progress=False)
    assert [r["lr"] for r in train_rows(without.run_dir)] == pytest.approx([0.01] * 4)  # the default keeps the rate


def test_the_momentum_changes_once_when_first_solved_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    """schedule.solved_momentum: RMSprop's momentum is 0.9 for the steps before the first
    solved validation (step 2) and 0 after it, also in a run resumed from a later
    checkpoint; Adam's first beta the same way."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask
    from manntk.training import trainer as trainer_module
    from manntk.training.checkpoint import load_trainer_state

    monkeypatch.setattr(AlgorithmicTask, "summarize", lambda self, sums: {"loss": 0.001, "bce": 0.001, "solved": 1.0})
    seen = []
    original = trainer_module.Trainer.train_step

    def recording_step(self, *args):
        group = self.optimizer.param_groups[0]
        seen.append(group["momentum"] if "momentum" in group else group["betas"][0])
        return original(self, *args)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", recording_step)
    rmsprop = {"name": "rmsprop", "lr": 0.01, "momentum": 0.9}
    recipe = tiny_copy(steps=6, eval_every=2, checkpoint_every=4, stop_when_solved=False, optimizer=rmsprop,
                       schedule={"solved_momentum": 0.0})
    straight = train(recipe_from_mapping(recipe), tmp_path / "straight", progress=False)
    assert straight.solved_step == 2 and seen == [0.9, 0.9, 0.0, 0.0, 0.0, 0.0]
    assert load_trainer_state(straight.run_dir / "checkpoints" / "step-00000004")["optimizer"]["param_groups"][0]["momentum"] == 0.0
    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight.run_dir, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-00000006")
    (interrupted / "checkpoints" / "latest").write_text("step-00000004\n")
    seen.clear()
    train(recipe_from_mapping(recipe), interrupted, resume=True, progress=False)
    assert seen == [0.0, 0.0]
    seen.clear()
    adam = tiny_copy(steps=3, eval_every=2, stop_when_solved=False, schedule={"solved_momentum": 0.5})
    train(recipe_from_mapping(adam), tmp_path / "adam", progress=False)
    assert seen == [0.9, 0.9, 0.5]


def test_solved_momentum_needs_an_optimizer_with_momentum() -> None:
    with pytest.raises(ValueError, match=r"solved_momentum changes the momentum of rmsprop, which has none"):
        recipe_from_mapping(tiny_copy(optimizer={"name": "rmsprop"}, schedule={"solved_momentum": 0.0}))


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state dict."""
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def script_validations(monkeypatch, valid: list[dict], test: dict) -> None:
    """``Trainer.validate`` answers the validation split with the verdicts ``valid`` in
    turn, and the test split with ``test``."""
    from manntk.training import trainer as trainer_module

    verdicts = iter(valid)
    monkeypatch.setattr(trainer_module.Trainer, "validate",
                        lambda self, step, elapsed, split="valid": test if split == "test" else next(verdicts))


def record_roll_backs(monkeypatch, record) -> list:
    """``Trainer.roll_back`` as it is, and after each one ``record(trainer, step, before)``
    (``before``: the model's weights just before it) appended to the list returned."""
    from manntk.training import trainer as trainer_module

    rolled = []
    original = trainer_module.Trainer.roll_back

    def recording_roll_back(self, step, why):
        before = weights(self.model)
        original(self, step, why)
        rolled.append(record(self, step, before))

    monkeypatch.setattr(trainer_module.Trainer, "roll_back", recording_roll_back)
    return rolled


RELAPSE_AT_6 = [{"bce": 0.005, "solved": 1.0}, {"bce": 0.001, "solved": 1.0}, {"bce": 0.5, "solved": 0.0}, {"bce": 0.5, "solved": 0.0}]
"""Validations at steps 2, 4, 6, 8: solved, solved and better (the best), not solved, not solved."""


def test_a_relapse_rolls_back_to_the_best_checkpoint_and_lowers_the_rate(tmp_path, monkeypatch):
    """schedule.relapse_gamma: the validations at steps 2, 4, 6 are solved, solved and
    better, not solved: after step 6 the weights and RMSprop's state are step 4's (the
    best) again, and the rate is gamma times the schedule's from step 7 on."""
    from manntk.training import checkpoint as ckpt

    script_validations(monkeypatch, RELAPSE_AT_6, {"bce": 0.001, "solved": 1.0})
    rolled = record_roll_backs(monkeypatch, lambda trainer, step, before: (
        step, before, weights(trainer.model), copy.deepcopy(trainer.optimizer.state_dict()["state"])))
    optimizer = {"name": "rmsprop", "lr": 0.01, "momentum": 0.9}
    recipe = tiny_copy(steps=8, eval_every=2, stop_when_solved=False, optimizer=optimizer, schedule={"relapse_gamma": 0.5})
    result = train(recipe_from_mapping(recipe), tmp_path / "run", progress=False)
    assert [step for step, *_ in rolled] == [6, 8] and result.solved_step == 2
    assert [r["lr"] for r in train_rows(result.run_dir)] == pytest.approx([0.01] * 6 + [0.005] * 2)
    best = result.run_dir / "checkpoints" / ckpt.checkpoint_name(4)
    _, before, after, optimizer_state = rolled[0]
    for name, tensor in ckpt.load_weights(best, "cpu").items():
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0)
    assert any(not torch.equal(before[name], after[name]) for name in after)  # the run had moved on since step 4
    for index, state in ckpt.load_trainer_state(best)["optimizer"]["state"].items():
        assert torch.equal(optimizer_state[index]["square_avg"], state["square_avg"])
    assert json.loads((result.run_dir / "results.json").read_text())["relapses"] == 2


def test_rollbacks_lower_the_rate_no_further_than_the_floor(tmp_path, monkeypatch):
    """schedule.rollback_floor 0.3 with relapse_gamma 0.5 and lr 0.01: validations 0.3, 0.1
    (the best), then 0.5 four times, each more than 2 x the best (regress_ratio): the
    rollbacks take the rate to 0.005, then 0.003 (the floor), and leave it there."""
    script_validations(monkeypatch, [{"bce": value, "solved": 0.0} for value in (0.3, 0.1, 0.5, 0.5, 0.5, 0.5)],
                       {"bce": 0.5, "solved": 0.0})
    schedule = {"relapse_gamma": 0.5, "regress_ratio": 2.0, "rollback_floor": 0.3}
    recipe = tiny_copy(steps=12, eval_every=2, stop_when_solved=False, optimizer={"name": "rmsprop", "lr": 0.01}, schedule=schedule)
    result = train(recipe_from_mapping(recipe), tmp_path / "run", progress=False)
    assert [r["lr"] for r in train_rows(result.run_dir)] == pytest.approx([0.01] * 6 + [0.005] * 2 + [0.003] * 4)
    assert json.loads((result.run_dir / "results.json").read_text())["regressions"] == 4


def test_a_roll_back_with_a_weight_average_trains_on_from_the_average(tmp_path, monkeypatch):
    """train.ema_decay with relapse_gamma: the relapse at step 6 goes back to step 4 (the
    best), and both the trained weights and the average are step 4's *average* (the
    weights that validated best), not step 4's trained weights."""
    from manntk.training import checkpoint as ckpt

    script_validations(monkeypatch, RELAPSE_AT_6, {"bce": 0.001, "solved": 1.0})
    rolled = record_roll_backs(monkeypatch, lambda trainer, step, before: (weights(trainer.model), weights(trainer.average.averaged)))
    recipe = tiny_copy(steps=8, eval_every=2, stop_when_solved=False, optimizer={"name": "rmsprop", "lr": 0.01},
                       schedule={"relapse_gamma": 0.5}, ema_decay=0.5)
    result = train(recipe_from_mapping(recipe), tmp_path / "run", progress=False)
    best = result.run_dir / "checkpoints" / ckpt.checkpoint_name(4)
    averaged, trained = ckpt.load_weights(best, "cpu", ckpt.AVERAGED), ckpt.load_weights(best, "cpu")
    assert any(not torch.equal(averaged[name], trained[name]) for name in averaged if averaged[name].is_floating_point())
    model_after, average_after = rolled[0]
    for name, tensor in averaged.items():
        torch.testing.assert_close(model_after[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(average_after[name], tensor, rtol=0, atol=0)


def test_a_regress_before_solving_rolls_back_with_regress_ratio(tmp_path, monkeypatch):
    """schedule.regress_ratio 2: validations 0.3, 0.1, 0.15 (not above 2 x 0.1), 0.5
    (above), 0.12: only step 8 goes back to step 4's weights, and the rate halves from step 9
    on; without regress_ratio nothing rolls back."""
    from manntk.training import checkpoint as ckpt

    def run(name, schedule):
        script_validations(monkeypatch, [{"bce": value, "solved": 0.0} for value in (0.3, 0.1, 0.15, 0.5, 0.12)],
                           {"bce": 0.5, "solved": 0.0})
        rolled = record_roll_backs(monkeypatch, lambda trainer, step, before: (step, weights(trainer.model)))
        recipe = tiny_copy(steps=10, eval_every=2, stop_when_solved=False, optimizer={"name": "rmsprop", "lr": 0.01},
                           schedule=schedule)
        return train(recipe_from_mapping(recipe), tmp_path / name, progress=False), rolled

    result, rolled = run("ratio", {"relapse_gamma": 0.5, "regress_ratio": 2.0})
    assert [step for step, _ in rolled] == [8]
    assert [r["lr"] for r in train_rows(result.run_dir)] == pytest.approx([0.01] * 8 + [0.005] * 2)
    for name, tensor in ckpt.load_weights(result.run_dir / "checkpoints" / ckpt.checkpoint_name(4), "cpu").items():
        torch.testing.assert_close(rolled[0][1][name], tensor, rtol=0, atol=0)
    assert json.loads((result.run_dir / "results.json").read_text())["regressions"] == 1
    result, rolled = run("without", {"relapse_gamma": 0.5})
    assert rolled == [] and json.loads((result.run_dir / "results.json").read_text())["regressions"] == 0


def test_the_rate_drops_once_when_a_validation_first_gets_near_solving(tmp_path, monkeypatch):
    """schedule.approach_at 0.2, approach_gamma 0.5: validations 0.5, 0.3, 0.1 (the first
    under 0.2), 0.15, 0.05: the rate halves from step 7 on, once; a resumed run from step 8
    (its best, 0.1, is past the level) does not halve it again; a run that jumps from 0.5
    to solved gets no approach drop; without approach_at the rate stays."""
    verdicts = [{"bce": value, "solved": 0.0} for value in (0.5, 0.3, 0.1, 0.15, 0.05)]

    def run(name, schedule, valid=verdicts, test=None, resume_from=None):
        script_validations(monkeypatch, valid, test or {"bce": 0.5, "solved": 0.0})
        recipe = tiny_copy(steps=10, eval_every=2, checkpoint_every=4, stop_when_solved=False, schedule=schedule)
        if resume_from is not None:
            train(recipe_from_mapping(recipe), resume_from, resume=True, progress=False)
            return resume_from
        return train(recipe_from_mapping(recipe), tmp_path / name, progress=False).run_dir

    near = {"approach_at": 0.2, "approach_gamma": 0.5}
    expected = [0.01] * 6 + [0.005] * 4
    straight = run("near", near)
    assert [r["lr"] for r in train_rows(straight)] == pytest.approx(expected)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000010")
    (resumed / "checkpoints" / "latest").write_text("step-00000008\n")
    run("resumed", near, valid=verdicts[4:], resume_from=resumed)
    assert [r["lr"] for r in train_rows(resumed)] == pytest.approx(expected)
    solved = {"bce": 0.001, "solved": 1.0}
    jump = run("jump", near, valid=[{"bce": 0.5, "solved": 0.0}] + [solved] * 4, test=solved)
    assert [r["lr"] for r in train_rows(jump)] == pytest.approx([0.01] * 10)
    assert [r["lr"] for r in train_rows(run("without", {}))] == pytest.approx([0.01] * 10)


def test_a_solved_run_trains_again_on_the_batches_it_gets_wrong(tmp_path, monkeypatch):
    """train.replay_above: from the first solved validation (step 2) on, every fresh batch
    (the untrained model's loss is ~0.69 per bit, above 0.01) is queued twice, and every
    second step trains on the queue's head: batches 0, 1, 2, 2, 4, 2, 6, 4 (step i draws
    batch i when fresh). A run resumed from step 4 draws the same (the queue is in the
    checkpoint); before solving, and without replay_above, step i draws batch i."""
    from manntk.tasks.algorithmic.plugin import AlgorithmicTask

    drawn = []
    original = AlgorithmicTask.train_batch
    monkeypatch.setattr(AlgorithmicTask, "train_batch", lambda self, index, size: drawn.append(index) or original(self, index, size))

    def run(name, valid, resume_from=None, **options):
        drawn.clear()
        script_validations(monkeypatch, valid, {"bce": 0.001, "solved": 1.0})
        recipe = recipe_from_mapping(tiny_copy(steps=8, eval_every=2, checkpoint_every=4, stop_when_solved=False, **options))
        if resume_from is not None:
            train(recipe, resume_from, resume=True, progress=False)
            return resume_from, drawn[1:]  # the first draw checks that the task's batches are independent
        return train(recipe, tmp_path / name, progress=False).run_dir, drawn[1:] if options else list(drawn)

    solved = [{"bce": 0.001, "solved": 1.0}] * 4
    straight, indices = run("replay", solved, replay_above=0.01, replay_times=2)
    assert indices == [0, 1, 2, 2, 4, 2, 6, 4]
    assert json.loads((straight / "results.json").read_text())["replayed_steps"] == 3
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000008")
    (resumed / "checkpoints" / "latest").write_text("step-00000004\n")
    assert run("resumed", solved[2:], resume_from=resumed, replay_above=0.01, replay_times=2)[1] == [4, 2, 6, 4]
    assert run("unsolved", [{"bce": 0.5, "solved": 0.0}] * 4, replay_above=0.01, replay_times=2)[1] == list(range(8))
    assert run("without", solved)[1] == list(range(8))


def test_replay_refuses_a_task_that_carries_state_between_batches(tmp_path):
    with pytest.raises(ConfigError, match="independent batches"):
        train(recipe_from_mapping(tiny_lm(tmp_path, replay_above=0.01)), tmp_path / "run", progress=False)


def test_the_replay_queue_alternates_with_fresh_batches_and_drops_the_oldest():
    """Replay by hand: queued batches come on odd steps only, fresh ones on the others;
    a batch at or under the level is not queued; the queue keeps the newest ``capacity``."""
    from manntk.training.replay import Replay

    replay = Replay(above=0.5, times=2, capacity=3)
    assert replay.batch_index(1) == (1, False)  # nothing queued
    replay.offer(7, 0.5)
    assert not replay.queue
    replay.offer(7, 0.9)
    replay.offer(8, 0.9)  # 7, 7, 8, 8 in a queue of 3: the first 7 goes
    assert list(replay.queue) == [7, 8, 8]
    assert [replay.batch_index(step) for step in (2, 3, 4, 5, 7, 9)] == [(2, False), (7, True), (4, False), (8, True), (8, True), (9, False)]
    assert replay.replayed == 3
    with pytest.raises(ValueError, match="at least once"):
        Replay(above=0.5, times=0)


def test_the_weight_average_by_hand():
    """After n updates the average is sum_i d^(n-i) (1-d) w_i / (1-d^n) over the weights
    after each step (computed here as a plain weighted sum); integer buffers are copied."""
    from manntk.training.averaging import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, dtype=torch.float64)
    model.register_buffer("counter", torch.zeros((), dtype=torch.long))
    decay, history = 0.7, []
    average = WeightAverage(model, decay)
    for step in range(1, 6):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
            model.counter.fill_(step)
        history.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
        average.update()
    n = len(history)
    weights = [decay ** (n - i) * (1 - decay) / (1 - decay**n) for i in range(1, n + 1)]
    assert sum(weights) == pytest.approx(1.0)
    for name in ("weight", "bias"):
        expected = sum(w * h[name] for w, h in zip(weights, history))
        torch.testing.assert_close(average.averaged.state_dict()[name], expected, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(expected, history[-1][name])  # the average is not the last weights
    assert int(average.averaged.counter) == 5 and not any(p.requires_grad for p in average.averaged.parameters())
    with pytest.raises(ValueError, match="must lie in"):
        WeightAverage(model, 1.0)


def test_a_run_with_a_weight_average_is_judged_and_resumed_by_it(tmp_path, capsys):
    """train.ema_decay: validation, the final scores and manntk eval score the average (kept
    beside the trained weights in each checkpoint), and a resumed run continues it exactly."""
    from manntk.build import build_experiment
    from manntk.training import checkpoint as ckpt
    from manntk.training.evaluate import evaluate

    recipe = recipe_from_mapping(tiny_copy(steps=6, eval_every=3, checkpoint_every=3, ema_decay=0.5))
    straight = train(recipe, tmp_path / "straight", progress=False)
    last = ckpt.latest_checkpoint(straight.run_dir)
    task, model = build_experiment(recipe, None)

    def test_bce(file: str) -> float:
        model.load_state_dict(ckpt.load_weights(last, "cpu", file))
        return evaluate(model, task, "test", recipe.eval.batch_size, torch.device("cpu"))["bce"]

    judged = straight.metrics["test"]["bce"]
    assert test_bce(ckpt.AVERAGED) == pytest.approx(judged, rel=1e-6)
    assert abs(test_bce(ckpt.WEIGHTS) - judged) > 1e-4 * judged  # the trained weights score otherwise
    assert main(["eval", str(straight.run_dir), "--split", "test", "--device", "cpu"]) == 0
    assert f"bce {judged:.4f}" in capsys.readouterr().out

    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight.run_dir, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-00000006")
    (interrupted / "checkpoints" / "latest").write_text("step-00000003\n")
    resumed = train(recipe, interrupted, resume=True, progress=False)
    assert resumed.metrics["test"]["bce"] == pytest.approx(judged, rel=1e-5)
    again = ckpt.load_weights(ckpt.latest_checkpoint(interrupted), "cpu", ckpt.AVERAGED)
    for name, tensor in ckpt.load_weights(last, "cpu", ckpt.AVERAGED).items():
        torch.testing.assert_close(again[name], tensor, rtol=1e-5, atol=1e-7)

    plain = train(recipe_from_mapping(tiny_copy(steps=3)), tmp_path / "plain", progress=False).run_dir
    with pytest.raises(CheckpointError, match="holds no weight average"):
        train(recipe, plain, resume=True, progress=False)


def test_the_spike_skipper_by_hand():
    """A norm over factor x the geometric moving average is skipped and enters the average
    capped at that bound; the warm-up steps are never skipped and enter uncapped; a lasting
    rise lifts the average until the steps resume; a norm that is not finite is left alone."""
    from manntk.training.spikes import SpikeSkipper

    skipper = SpikeSkipper(factor=4.0, decay=0.5, warmup=2)
    assert [skipper.skip(n) for n in (1.0, 100.0)] == [False, False]  # warm-up: 100 is taken, uncapped
    assert skipper.average == pytest.approx(10.0)  # sqrt(1 x 100)
    assert skipper.skip(39.0) is False and skipper.average == pytest.approx(math.sqrt(390.0))  # under 4 x 10
    before = skipper.average
    assert skipper.skip(1e9) is True and skipper.average == pytest.approx(2 * before)  # capped at 4 x: sqrt(a x 4a)
    assert skipper.skip(math.inf) is False and skipper.skip(math.nan) is False and skipper.steps == 4
    lasting = [skipper.skip(1e5) for _ in range(16)]  # a new level: skipped until the average has risen to it
    assert lasting[0] and not lasting[-1] and lasting.index(False) == sum(lasting)
    assert skipper.skipped == 1 + sum(lasting)
    zero = SpikeSkipper(factor=4.0)
    assert zero.skip(0.0) is False and zero.average == pytest.approx(1e-30)  # a zero norm counts as the floor
    restored = SpikeSkipper(factor=4.0, decay=0.5, warmup=2)
    restored.load_state_dict(skipper.state_dict())
    assert (restored.average, restored.steps, restored.skipped) == (skipper.average, skipper.steps, skipper.skipped)
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError, match="factor must exceed 1"):
            SpikeSkipper(bad)
    with pytest.raises(ValueError, match="skip_spikes must be more than 1"):
        recipe_from_mapping(tiny_copy(skip_spikes=1.0))


def test_a_skipped_step_leaves_the_weights_and_the_optimizer_alone(tmp_path, monkeypatch):
    """train.skip_spikes: the step whose gradient norm is a spike (step 4 here, by a
    patched norm) changes neither the weights nor RMSprop's averages and momentum; the
    steps around it do; the count is in the training rows and results.json."""
    import functools

    from manntk.training import trainer as trainer_module
    from manntk.training.spikes import SpikeSkipper

    norms = iter([1.0, 1.0, 1.0, 1e6, 1.0, 1.0])
    monkeypatch.setattr(trainer_module, "gradient_norm", lambda parameters: next(norms))
    monkeypatch.setattr(trainer_module, "SpikeSkipper", functools.partial(SpikeSkipper, warmup=1))
    after = []  # (weights, optimizer state) after each step
    original = trainer_module.Trainer.train_step

    def recording_step(self, *args):
        result = original(self, *args)
        after.append(copy.deepcopy((dict(self.model.named_parameters()), self.optimizer.state_dict()["state"])))
        return result

    monkeypatch.setattr(trainer_module.Trainer, "train_step", recording_step)
    optimizer = {"name": "rmsprop", "lr": 0.01, "momentum": 0.9}
    result = train(recipe_from_mapping(tiny_copy(skip_spikes=10.0, optimizer=optimizer, clip_value=1.0, clip_norm=1.0)), tmp_path / "run", progress=False)
    assert [row["skipped_steps"] for row in train_rows(result.run_dir)] == [0, 0, 0, 1, 1, 1]
    assert json.loads((result.run_dir / "results.json").read_text())["skipped_steps"] == 1
    (weights_3, state_3), (weights_4, state_4), (weights_5, _) = after[2:5]
    for name, tensor in weights_3.items():
        assert torch.equal(weights_4[name], tensor), name
    assert any(not torch.equal(weights_5[name], tensor) for name, tensor in weights_4.items())
    assert any(not torch.equal(after[1][0][name], tensor) for name, tensor in weights_3.items())  # step 3 did update
    for index, state in state_3.items():
        for key in ("square_avg", "momentum_buffer"):
            assert torch.equal(state_4[index][key], state[key])


def test_a_resumed_run_continues_the_spike_average_exactly(tmp_path, monkeypatch):
    """The skipper's average and counts travel in the checkpoint: with a factor that skips
    often, a resumed run skips the same steps and logs the same losses as a straight one."""
    import functools

    from manntk.training import trainer as trainer_module
    from manntk.training.spikes import SpikeSkipper

    monkeypatch.setattr(trainer_module, "SpikeSkipper", functools.partial(SpikeSkipper, warmup=1, decay=0.5))
    recipe = recipe_from_mapping(tiny_copy(steps=10, skip_spikes=1.3, checkpoint_every=5))
    straight = train(recipe, tmp_path / "straight", progress=False).run_dir
    skipped = [row["skipped_steps"] for row in train_rows(straight)]
    assert 0 < skipped[-1] < 9  # some steps skipped, not all
    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-00000010")
    (interrupted / "checkpoints" / "latest").write_text("step-00000005\n")
    train(recipe, interrupted, resume=True, progress=False)
    assert [row["skipped_steps"] for row in train_rows(interrupted)] == skipped
    assert [row["loss"] for row in train_rows(interrupted)] == pytest.approx([row["loss"] for row in train_rows(straight)], rel=1e-5)


def test_flooding_turns_the_gradient_round_under_the_level_only(tmp_path, monkeypatch):
    """train.flood (Ishida et al. 2020): from the same weights on the same batch, the
    gradient the optimizer steps with is exactly the opposite of the plain one when the
    batch loss (~0.7 here) is under the flood level, and exactly the plain one above it."""
    from manntk.training import trainer as trainer_module

    gradients = {}
    original = trainer_module.Trainer.train_step

    def recording_step(self, *args):
        result = original(self, *args)
        gradients[self.recipe.train.flood] = {name: p.grad.clone() for name, p in self.model.named_parameters() if p.grad is not None}
        return result

    monkeypatch.setattr(trainer_module.Trainer, "train_step", recording_step)
    for flood in (None, 100.0, 1e-6):
        train(recipe_from_mapping(tiny_copy(steps=1, flood=flood)), tmp_path / f"run-{flood}", progress=False)
    plain = gradients[None]
    assert plain and any(bool(gradient.abs().max() > 0) for gradient in plain.values())
    for flood in (100.0, 1e-6):
        assert gradients[flood].keys() == plain.keys()
    for name, gradient in plain.items():
        assert torch.equal(gradients[100.0][name], -gradient), name  # under the level: turned round
        assert torch.equal(gradients[1e-6][name], gradient), name  # above it: an ordinary step
    with pytest.raises(ValueError, match="flood must be positive"):
        recipe_from_mapping(tiny_copy(flood=0.0))


def test_a_skipped_flood_step_leaves_the_weights_and_the_optimizer_alone(tmp_path, monkeypatch):
    """train.flood_mode: skip. Under the level (100: every batch) three steps leave every
    weight where it started and the optimizer without state; above it (1e-6) the step is
    the plain one, to the bit."""
    from manntk.training import trainer as trainer_module

    seen = {}
    original = trainer_module.Trainer.train_step

    def recording_step(self, *args):
        key = (self.recipe.train.flood, self.recipe.train.flood_mode)
        seen.setdefault(key, {"start": {name: p.detach().clone() for name, p in self.model.named_parameters()}})
        result = original(self, *args)
        seen[key]["end"] = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        seen[key]["optimizer_state"] = len(self.optimizer.state)
        return result

    monkeypatch.setattr(trainer_module.Trainer, "train_step", recording_step)
    for flood, mode, steps in ((100.0, "skip", 3), (100.0, "ascend", 3), (1e-6, "skip", 1), (None, "ascend", 1)):
        train(recipe_from_mapping(tiny_copy(steps=steps, flood=flood, flood_mode=mode)), tmp_path / f"run-{flood}-{mode}", progress=False)
    skipped, ascended = seen[(100.0, "skip")], seen[(100.0, "ascend")]
    assert skipped["optimizer_state"] == 0 and ascended["optimizer_state"] > 0
    for name, start in skipped["start"].items():
        assert torch.equal(skipped["end"][name], start), name
    assert any(not torch.equal(ascended["end"][name], start) for name, start in ascended["start"].items())
    plain = seen[(None, "ascend")]["end"]
    for name, weight in seen[(1e-6, "skip")]["end"].items():
        assert torch.equal(weight, plain[name]), name


def test_lr_schedules_by_hand():
    by_steps = lambda step: step / 100  # noqa: E731
    warm = lr_factor(ScheduleConfig(name="constant", warmup_steps=4), 1.0, by_steps)
    assert [warm(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    step = lr_factor(ScheduleConfig(name="step", milestones=[10, 20], gamma=0.5), 1.0, by_steps)
    assert [step(s) for s in (0, 9, 10, 19, 20, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    cosine = lr_factor(ScheduleConfig(name="cosine", min_lr=0.1), 1.0, by_steps)
    assert cosine(0) == pytest.approx(1.0) and cosine(50) == pytest.approx(0.55) and cosine(100) == pytest.approx(0.1)
    # the cosine follows the budget spent, whatever the step; past the budget it stays at min_lr
    spent = iter([0.5, 1.0, 3.0])
    cosine = lr_factor(ScheduleConfig(name="cosine", min_lr=0.1), 1.0, lambda step: next(spent))
    assert [cosine(7) for _ in range(3)] == [pytest.approx(0.55), pytest.approx(0.1), pytest.approx(0.1)]
    # cooldown: the full rate to 80% of the budget, then a straight line to min_lr at its end
    cooldown = lr_factor(ScheduleConfig(name="cooldown", cooldown=0.2, min_lr=0.1), 1.0, by_steps)
    assert [cooldown(s) for s in (0, 50, 80)] == [1.0, 1.0, pytest.approx(1.0)]
    assert cooldown(90) == pytest.approx(0.55) and cooldown(95) == pytest.approx(0.325) and cooldown(100) == pytest.approx(0.1)
    assert cooldown(300) == pytest.approx(0.1)


def test_a_cosine_over_time_decays_with_the_wall_clock(tmp_path, monkeypatch):
    """schedule.over: time: the rate after each step is the cosine of the wall clock spent,
    over train.max_minutes, not of the steps (the budget of 100,000 steps would keep a step
    cosine near its start); where the steps run out first, it follows the steps. A fake
    clock ticking a second per read."""
    import types

    ticks = iter(range(10**9))
    monkeypatch.setattr("manntk.training.trainer.time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    cosine = {"name": "cosine", "over": "time"}
    result = train(recipe_from_mapping(tiny_copy(steps=100_000, max_minutes=1, schedule=cosine)), tmp_path / "time", progress=False)
    rows = train_rows(result.run_dir)
    assert result.stop_reason == "time" and 5 < len(rows) < 60
    for row in rows:
        assert row["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * min(row["time"] / 60, 1))), rel=1e-9, abs=1e-15)
    assert rows[-1]["lr"] == 0.0
    result = train(recipe_from_mapping(tiny_copy(steps=20, max_minutes=600, schedule=cosine)), tmp_path / "steps", progress=False)
    rows = train_rows(result.run_dir)
    assert result.stop_reason == "steps" and rows[-1]["time"] < 600
    for row in rows:
        assert row["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * row["step"] / 20)), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("schedule, max_minutes, message", [
    ({"name": "cosine", "over": "time"}, None, "set max_minutes too"),
    ({"name": "step", "over": "time"}, 5, "only cosine and cooldown decay"),
    ({"name": "cooldown", "cooldown": 0.0}, None, "cooldown"),
    ({"name": "cooldown", "cooldown": 1.5}, None, "cooldown"),
    ({"name": "cosine", "over": "clock"}, 5, "'steps', 'time'"),
])
def test_a_schedule_over_time_needs_a_decay_and_a_time_budget(schedule, max_minutes, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_mapping(tiny_copy(max_minutes=max_minutes, schedule=schedule))


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    optimizer = make_optimizer(OptimizerConfig(name=name, lr=0.5, momentum=0.9), [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, cls) and optimizer.param_groups[0]["lr"] == 0.5
    if name.startswith("adam"):
        assert optimizer.param_groups[0]["amsgrad"] is False
        amsgrad = make_optimizer(OptimizerConfig(name=name, amsgrad=True), [torch.nn.Parameter(torch.zeros(2))])
        assert amsgrad.param_groups[0]["amsgrad"] is True
    else:
        with pytest.raises(ValueError, match=f"amsgrad is an option of adam and adamw, not of {name}"):
            OptimizerConfig(name=name, amsgrad=True)


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01)])
def test_clipped_rmsprop_is_torchs_rmsprop_while_the_clip_is_not_reached(momentum, weight_decay):
    """float64, 20 steps of random gradients: the same parameters as torch.optim.RMSprop
    to rounding (the same operations; the clip at 1e9 never scales)."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    grads = [torch.randn(3, 4, generator=generator, dtype=torch.float64) * 10 ** (i % 3) for i in range(20)]
    options = dict(lr=0.01, alpha=0.95, eps=1e-8, momentum=momentum, weight_decay=weight_decay)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    clipped = make_optimizer(OptimizerConfig(name="rmsprop", update_clip=1e9, **options), [ours])
    reference = torch.optim.RMSprop([theirs], **options)
    assert type(clipped).__name__ == "ClippedRMSprop"
    for grad in grads:
        for param, optimizer in ((ours, clipped), (theirs, reference)):
            param.grad = grad.clone()
            optimizer.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)


def test_clipped_rmsprop_caps_the_step_of_a_gradient_far_above_the_recent_ones():
    """By hand: v = 1e-20 on both coordinates (a solved run's), then g = (3, 4). RMSprop
    (alpha 0.95) divides by sqrt(0.05 g^2) ~ 0.2236 |g|: u = (4.4721, 4.4721), rms
    4.4721; clipped at 1, u = (1, 1), and the step is lr * u."""
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = make_optimizer(OptimizerConfig(name="rmsprop", lr=0.1, alpha=0.95, eps=1e-8, update_clip=1.0), [param])
    param.grad = torch.full((2,), 1e-10, dtype=torch.float64)
    optimizer.step()
    optimizer.state[param]["square_avg"].fill_(1e-20)
    before = param.detach().clone()
    param.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    optimizer.step()
    step = (param.detach() - before) / -0.1
    unclipped = torch.tensor([3.0, 4.0]) / (torch.sqrt(0.95 * 1e-20 + 0.05 * torch.tensor([9.0, 16.0])) + 1e-8)
    torch.testing.assert_close(step, (unclipped / unclipped.pow(2).mean().sqrt()).double(), rtol=1e-6, atol=0)
    assert unclipped.pow(2).mean().sqrt() == pytest.approx(1 / math.sqrt(0.05), rel=1e-6)


def test_update_clip_is_an_option_of_rmsprop_only():
    for name in ("adam", "adamw", "sgd"):
        with pytest.raises(ValueError, match=f"update_clip is an option of rmsprop, not of {name}"):
            OptimizerConfig(name=name, update_clip=1.0)
    with pytest.raises(ValueError, match="update_clip"):
        OptimizerConfig(name="rmsprop", update_clip=0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_on_two_processes(mapping: dict, folder: Path, timeout: float = 240) -> Path:
    """Train the recipe ``mapping`` under torchrun, 2 gloo processes of one thread each, in
    ``folder / "ddp"``; returns that run directory (the job must succeed)."""
    import yaml

    recipe = folder / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(mapping))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "manntk", "train", str(recipe), "--run-dir", str(folder / "ddp"), "--no-progress"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return folder / "ddp"


def without_sampling(mapping: dict) -> dict:
    """``mapping`` with an LSTM, NTM addressing and erase-add writes: no sampled reads, whose
    noise differs between processes, so that a job's losses can equal one process's."""
    model = {**mapping["model"], "cell": {"name": "lstm", "hidden_size": 8}, "addressing": {"name": "ntm"}, "write": {"name": "erase_add"}}
    return {**mapping, "model": model}


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    """Same global batch: 2 gloo processes with 2 rows each == 1 process with 4 rows."""
    mapping = without_sampling(tiny_copy(batch_size=4, steps=4))
    single = train(recipe_from_mapping(mapping), tmp_path / "single", progress=False).run_dir
    ddp = train_on_two_processes(mapping, tmp_path)
    single_losses = [r["loss"] for r in train_rows(single)]
    ddp_losses = [r["loss"] for r in train_rows(ddp)]
    assert len(ddp_losses) == 4
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)


def test_ddp_processes_take_rank_0s_validation_and_start_again_together(tmp_path):
    """Validations every 2 steps in a job of 2 gloo processes: each that improves saves a
    best checkpoint, which every process must join (they once waited for each other there
    for ever, only rank 0 knowing the metric), and a restart (schedule.restart_after 2, a rate
    too small for progress) gives every process the same fresh weights at step 4: the losses
    equal one process's with the same global batch, the restart included."""
    mapping = without_sampling(tiny_copy(batch_size=4, steps=6, eval_every=2, checkpoint_every=1000, stop_when_solved=False,
                                         optimizer={"lr": 1e-9}, schedule={"restart_after": 2}))
    single = train(recipe_from_mapping(mapping), tmp_path / "single", progress=False).run_dir
    ddp = train_on_two_processes(mapping, tmp_path)
    for run in (single, ddp):
        assert json.loads((run / "results.json").read_text())["restarts"] == [4]
    assert [r["loss"] for r in train_rows(ddp)] == pytest.approx([r["loss"] for r in train_rows(single)], rel=1e-4)


def test_ddp_processes_stop_on_rank_0s_clock(tmp_path):
    """A time budget in a job of 2 gloo processes, which take rank 0's clock by a broadcast
    at every step: the job ends on time (a process that stopped a step before the other
    would leave it waiting in the gradient all-reduce until the timeout; whether clocks
    apart would do that here depends on their skew, so the next test checks that the clock
    comes from rank 0), and a cosine over the wall clock runs down to near 0 by then."""
    mapping = tiny_copy(batch_size=4, steps=100_000, max_minutes=0.05, schedule={"name": "cosine", "over": "time"})
    ddp = train_on_two_processes(mapping, tmp_path, timeout=120)
    rows = train_rows(ddp)
    assert json.loads((ddp / "results.json").read_text())["stop_reason"] == "time"
    rates = [row["lr"] for row in rows]
    assert len(rates) > 5 and rates == sorted(rates, reverse=True) and rates[0] > 0.005 > 0.001 > rates[-1]


def test_the_time_budget_and_a_time_schedule_run_on_rank_0s_clock(tmp_path, monkeypatch):
    """The trainer takes its clock from ``Distributed.from_main`` (rank 0's, in a job of
    several processes): a rank 0 whose clock reads 1,000 s ahead ends a 1-minute run after
    its first step, with the rate of a spent budget."""
    from manntk.training.distributed import Distributed

    monkeypatch.setattr(Distributed, "from_main", lambda self, values, device: [values[0] + 1000.0, *values[1:]])
    recipe = tiny_copy(steps=100_000, max_minutes=1, schedule={"name": "cosine", "over": "time"})
    result = train(recipe_from_mapping(recipe), tmp_path / "run", progress=False)
    assert (result.stop_reason, result.step) == ("time", 1) and train_rows(result.run_dir)[-1]["lr"] == 0.0


def tiny_lm(tmp_path: Path, **train) -> dict:
    """ARMIN on character LM of a small text file written to ``tmp_path`` (hard reads)."""
    text = tmp_path / "tiny.txt"
    text.write_text("the cat sat on the mat and the bat ate the hat. " * 20)
    return {
        "name": "tiny-lm",
        "task": {"name": "char_lm", "dataset": "text", "path": str(text), "split": [0.8, 0.1, 0.1]},
        "model": {"embedding": 6, "cell": {"name": "armin", "hidden_size": 8}, "addressing": {"name": "auto"},
                  "write": {"name": "overwrite"}, "memory": {"slots": 3}},
        "train": {"batch_size": 2, "tbptt": 5, "steps": 8, "log_every": 1, "device": "cpu", **train},
        "eval": {"batch_size": 2},
    }


def test_resume_carries_the_language_model_state_exactly(tmp_path):
    """Streams carry hidden state and memory across steps: a resumed run must restore them."""
    mapping = tiny_lm(tmp_path, checkpoint_every=4)
    straight = train(recipe_from_mapping(mapping), tmp_path / "straight", progress=False).run_dir
    state_file = straight / "checkpoints" / "step-00000004" / "state-rank0.safetensors"
    assert state_file.exists()  # the carried recurrent state is part of the checkpoint
    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-00000008")
    (interrupted / "checkpoints" / "latest").write_text("step-00000004\n")
    train(recipe_from_mapping(mapping), interrupted, resume=True, progress=False)
    expected = [r["loss"] for r in train_rows(straight)]
    assert [r["loss"] for r in train_rows(interrupted)] == pytest.approx(expected, rel=1e-5)
    rows = read_metrics(interrupted / "metrics.jsonl")
    assert any(r["split"] == "test" and "bpc" in r for r in rows)


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_is_applied_on_the_cpu_by_train_and_eval(tmp_path, flush):
    """Subnormals are flushed exactly when the recipe says so (conftest restores IEEE floats)."""
    subnormal = torch.tensor([1e-40], dtype=torch.float32)
    run = train(recipe_from_mapping(tiny_copy(steps=1, flush_denormal=flush)), tmp_path / "run", progress=False).run_dir
    assert bool((subnormal * 1.0 == 0).item()) is flush
    torch.set_flush_denormal(not flush)
    evaluate_run(run, "valid", device="cpu")
    assert bool((subnormal * 1.0 == 0).item()) is flush


# -- how often: step counts, durations, both ----------------------------------------------


def test_every_setting_reads_steps_durations_and_both():
    from manntk.config import Every, parse_every

    assert parse_every(50) == Every(steps=50)
    assert parse_every("90s") == Every(seconds=90.0) and parse_every("10min") == Every(seconds=600.0)
    assert parse_every("1.5h") == Every(seconds=5400.0) and parse_every(["2min", 50]) == Every(steps=50, seconds=120.0)
    every = parse_every([50, "2min"])
    assert every.due(100, since=1.0) and every.due(7, since=120.0) and not every.due(7, since=119.0)
    assert not parse_every(0).due(100, since=1e9)  # 0: never (only at the end)
    for bad in ("10 parsecs", "10", "-5min", "0s", 1.5, True, [50, 60], ["1min", "2min"], [50]):
        with pytest.raises(ValueError, match="log_every"):
            parse_every(bad, "log_every", minimum_steps=1)


def test_a_bad_duration_is_an_error_naming_the_key_and_the_value(tmp_path):
    from manntk.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        recipe_from_mapping(tiny_copy(log_every="10 parsecs", checkpoint_every="5 min", eval_every=-1))
    assert caught.value.errors == [
        "recipe: log_every: '10 parsecs' is neither a step count nor a duration like 10min "
        "(units: s, sec, min, h; or both, whichever comes first: [50, 10min]) @ $.train.log_every",
        "recipe: eval_every must be >= 0, got -1 @ $.train.eval_every",
    ]  # "5 min" is a duration: the space is allowed
    assert recipe_from_mapping(tiny_copy(log_every=[5, "2min"])).train.log_every == [5, "2min"]  # kept as written


class FakeClock:
    """``time`` for the trainer: each training step takes ``step_seconds`` of wall clock, nothing else takes any."""

    def __init__(self, step_seconds: float) -> None:
        self.now, self.step_seconds = 1000.0, step_seconds

    def perf_counter(self) -> float:
        return self.now


def run_on_a_fake_clock(monkeypatch, tmp_path, step_seconds: float, mapping: dict, progress: bool = False):
    """Train ``mapping`` with each step ``step_seconds`` long; returns the result and the steps saved at."""
    import manntk.training.trainer as trainer_module

    clock, saved = FakeClock(step_seconds), []
    monkeypatch.setattr(trainer_module, "time", clock)
    step_once, save = trainer_module.Trainer.train_step, trainer_module.Trainer.save

    def timed_step(self, *args, **kwargs):
        clock.now += clock.step_seconds
        return step_once(self, *args, **kwargs)

    def recorded_save(self, step, *args):
        saved.append(step)
        return save(self, step, *args)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", timed_step)
    monkeypatch.setattr(trainer_module.Trainer, "save", recorded_save)
    return train(recipe_from_mapping(mapping), tmp_path / "run", progress=progress), saved


def test_logs_validations_and_checkpoints_by_wall_clock(tmp_path, monkeypatch):
    """40 s a step: a 2-minute log every 3 steps, a 5-minute checkpoint every 8; with both a
    step count and a duration, whichever comes first."""
    mapping = tiny_copy(steps=10, log_every="2min", eval_every=[4, "100s"], checkpoint_every="5min")
    result, saved = run_on_a_fake_clock(monkeypatch, tmp_path, 40.0, mapping)
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [3, 6, 9, 10]  # and the last step
    assert [r["step"] for r in rows if r["split"] == "valid" and not r.get("final")] == [3, 4, 7, 8]
    assert saved[-2:] == [8, 10] and all(step in (3, 4, 7, 8, 10) for step in saved)  # 8: 5 minutes since the start


def test_the_clock_and_the_duration_decisions_are_rank_0s_in_a_job_of_several_processes():
    """Each process's clock says something else (rank 0 started 100 s ago with every interval
    long overdue, rank 1 5 s ago with every interval just reset): rank 0's elapsed time and
    verdicts go to every process in one broadcast, so that all validate, save, stop and set
    their rate at the same step."""
    import time

    from manntk.config import parse_every
    from manntk.training.distributed import Distributed
    from manntk.training.trainer import Trainer

    sent = {}

    class Broadcast(Distributed):
        def from_main(self, values: list[float], device: torch.device) -> list[float]:
            if self.rank == 0:
                sent["values"] = values
            return sent["values"]

    seen = []
    for rank, (ago, last_seen) in ((0, (100.0, -1e9)), (1, (5.0, None))):
        trainer = Trainer.__new__(Trainer)
        trainer.recipe = recipe_from_mapping(tiny_copy())
        trainer.every = {"log": parse_every(5), "eval": parse_every("1min"), "checkpoint": parse_every([3, "1h"])}
        trainer.dist, trainer.device = Broadcast(rank=rank, world_size=2), torch.device("cpu")
        now = time.perf_counter()
        seen.append(trainer.clock(3, now - ago, dict.fromkeys(trainer.every, now if last_seen is None else last_seen)))
    (elapsed, due), theirs = seen
    assert theirs == seen[0] and elapsed >= 100.0 and due == {"log": False, "eval": True, "checkpoint": True}


def test_the_run_estimate_and_the_cpu_notice(tmp_path, monkeypatch, capsys):
    """The steps after the first are timed, three of them or as many as take ESTIMATE_SECONDS
    (one at 40 s a step), and the rest of the budget estimated from them; past the CPU
    threshold the recipe's cpu_alternative is named."""
    import manntk.training.estimate as estimate

    mapping = tiny_copy(steps=10, log_every=100)
    mapping["cpu_alternative"] = "armin_copy"
    threads = torch.get_num_threads()
    machine = f"this CPU ({threads} thread{'s' if threads > 1 else ''})"
    monkeypatch.setattr(estimate, "CPU_NOTICE_HOURS", 0.05)  # 3 minutes: 8 steps x 40 s = 5.3 minutes is over it
    run_on_a_fake_clock(monkeypatch, tmp_path / "over", 40.0, mapping, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"estimate: 8 steps at ~40 s/step = ~5 min on {machine}; training steps only, validation and checkpoints add to it"
    assert err[1] == "notice: this recipe is sized for a GPU; on this CPU try the CPU-sized recipe instead: manntk train armin_copy"
    monkeypatch.setattr(estimate, "CPU_NOTICE_HOURS", 0.1)  # 6 minutes: not over it
    run_on_a_fake_clock(monkeypatch, tmp_path / "under", 40.0, mapping, progress=True)
    err = capsys.readouterr().err
    assert "estimate: 8 steps" in err and "notice" not in err
    run_on_a_fake_clock(monkeypatch, tmp_path / "quick", 1.0, mapping, progress=True)  # 3 steps take 3 s: all three timed
    assert f"estimate: 6 steps at ~1 s/step = ~6 s on {machine}" in capsys.readouterr().err


def test_the_estimate_names_the_cap_and_the_solved_stop():
    from manntk.training.estimate import describe_duration, estimate_lines

    assert [describe_duration(s) for s in (40, 14 * 60, 2.5 * 3600, 13 * 86400)] == ["~40 s", "~14 min", "~2.5 h", "~13.0 days"]
    lines = estimate_lines(100_000, 11.2, "this CPU (2 threads)", on_cpu=True, max_seconds=3600.0, stops_when_solved=True)
    assert lines == ["estimate: 100,000 steps at ~11.2 s/step = ~13.0 days on this CPU (2 threads); train.max_minutes stops it "
                     "after ~60 min; less if it is solved sooner; training steps only, validation and checkpoints add to it"]
    long = estimate_lines(100_000, 11.2, "this CPU (2 threads)", on_cpu=True)
    assert long[1] == "notice: this is a long run for a CPU: run it on a GPU, or cap it with train.max_minutes=MINUTES"
    assert len(estimate_lines(100_000, 11.2, "NVIDIA H200", on_cpu=False, cpu_alternative="armin_copy")) == 1  # a GPU: no notice


def test_cpu_alternative_must_name_a_shipped_recipe():
    from manntk.config import ConfigError

    mapping = tiny_copy()
    mapping["cpu_alternative"] = "ptb/armin_500_cpus"
    with pytest.raises(ConfigError, match=r"cpu_alternative: 'ptb/armin_500_cpus' is not the name of a shipped recipe; "
                                          r"did you mean 'ptb/armin_500_cpu'"):
        recipe_from_mapping(mapping)


@pytest.mark.parametrize("clip_norm, clipped", [(1e-9, 1.0), (1e9, 0.0)])
def test_training_rows_carry_the_gradient_norm_before_the_clip(tmp_path, monkeypatch, clip_norm, clipped):
    """With train.clip_norm each training row has the window's mean norm before clipping, as
    computed independently from the step's gradients, and the share of steps the clip scaled
    down: all of them under a limit of 1e-9, none under 1e9."""
    from manntk.training import trainer as trainer_module

    seen = []
    original = trainer_module.clip_gradients

    def recording_clip(parameters, norm, value):
        parameters = list(parameters)
        seen.append(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in parameters if p.grad is not None]))))
        return original(parameters, norm, value)

    monkeypatch.setattr(trainer_module, "clip_gradients", recording_clip)
    result = train(recipe_from_mapping(tiny_copy(steps=4, log_every=2, clip_norm=clip_norm)), tmp_path / "run", progress=False)
    rows = train_rows(result.run_dir)
    assert [row["clipped"] for row in rows] == [clipped, clipped]
    for row, window in zip(rows, (seen[:2], seen[2:])):
        assert row["grad_norm"] == pytest.approx(sum(window) / 2, rel=1e-5) and row["grad_norm"] > 0


def test_without_a_norm_clip_the_training_rows_have_no_gradient_norm(tmp_path):
    result = train(recipe_from_mapping(tiny_copy(steps=2, clip_norm=None)), tmp_path / "run", progress=False)
    assert all("grad_norm" not in row and "clipped" not in row for row in train_rows(result.run_dir))


def test_a_run_without_progress_starts_again_from_fresh_weights(tmp_path, monkeypatch):
    """schedule.restart_after 4 (progress: 10 % better than the last progress): validations
    0.5 (the mark), 0.46 (better, not by 10 %), 1.5 (a regress: rolled back, rate halved),
    0.45 (six steps since the mark): at step 8 the run starts again with fresh weights from
    restart_seed(seed, 1), an empty optimizer state, the average on the fresh weights, the
    spike skipper warming up again and the schedule's rate; then 0.6 (the new attempt's
    mark), 0.58, 0.58: again at step 14. A run resumed from step 12 keeps the mark and the
    restarts and starts again at 14 too."""
    from manntk.build import build_experiment
    from manntk.training import checkpoint as ckpt
    from manntk.training import trainer as trainer_module

    verdicts = [{"bce": value, "solved": 0.0} for value in (0.5, 0.46, 1.5, 0.45, 0.6, 0.58, 0.58)]
    started = []
    original = trainer_module.Trainer.start_again

    def recording_start_again(self, step):
        original(self, step)
        assert (self.spikes.steps, self.spikes.log_average) == (0, None)  # the old attempt's norms forgotten
        started.append((step, weights(self.model), weights(self.average.averaged), dict(self.optimizer.state)))

    monkeypatch.setattr(trainer_module.Trainer, "start_again", recording_start_again)
    schedule = {"restart_after": 4, "relapse_gamma": 0.5, "regress_ratio": 2.0}
    recipe = recipe_from_mapping(tiny_copy(steps=14, eval_every=2, checkpoint_every=4, stop_when_solved=False, seed=5,
                                           ema_decay=0.5, skip_spikes=1e6, schedule=schedule))
    script_validations(monkeypatch, verdicts, {"bce": 0.5, "solved": 0.0})
    result = train(recipe, tmp_path / "run", progress=False)
    assert [step for step, *_ in started] == [8, 14]
    assert json.loads((result.run_dir / "results.json").read_text())["restarts"] == [8, 14]
    assert [r["lr"] for r in train_rows(result.run_dir)] == pytest.approx([0.01] * 6 + [0.005] * 2 + [0.01] * 6)
    torch.manual_seed(recipe.train.seed)
    _, initial = build_experiment(recipe)
    for restart, (_, model, average, optimizer_state) in enumerate(started, start=1):
        torch.manual_seed(trainer_module.restart_seed(recipe.train.seed, restart))
        _, fresh = build_experiment(recipe)
        for name, tensor in fresh.state_dict().items():
            torch.testing.assert_close(model[name], tensor, rtol=0, atol=0)
            torch.testing.assert_close(average[name], tensor, rtol=0, atol=0)
        assert optimizer_state == {}
        assert any(not torch.equal(tensor, initial.state_dict()[name]) for name, tensor in fresh.state_dict().items())
    resumed = tmp_path / "resumed"
    shutil.copytree(result.run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / ckpt.checkpoint_name(14))
    (resumed / "checkpoints" / "latest").write_text(ckpt.checkpoint_name(12) + "\n")
    script_validations(monkeypatch, verdicts[-1:], {"bce": 0.5, "solved": 0.0})
    train(recipe, resumed, resume=True, progress=False)
    assert json.loads((resumed / "results.json").read_text())["restarts"] == [8, 14]
    script_validations(monkeypatch, verdicts, {"bce": 0.5, "solved": 0.0})
    without = train(recipe_from_mapping(tiny_copy(steps=14, eval_every=2, stop_when_solved=False)), tmp_path / "without", progress=False)
    assert json.loads((without.run_dir / "results.json").read_text())["restarts"] == []
