"""Scoring a model on a task's split."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from manntk.engine import consuming
from manntk.state import State, detach_state
from manntk.tasks.base import Batch, Metrics, Task


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (``fp32``: none)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def flush_subnormals(device: torch.device, enabled: bool) -> None:
    """On the CPU, flush subnormal floats to zero or not (``train.flush_denormal``).

    The setting belongs to the process and stays after the run (PyTorch offers no way to
    read it back and restore it).
    """
    if device.type == "cpu":
        torch.set_flush_denormal(enabled)


@torch.no_grad()
def scored_batches(
    model: torch.nn.Module, task: Task, split: str, batch_size: int, device: torch.device, precision: str = "fp32"
) -> Iterator[tuple[Batch, Tensor]]:
    """Each batch of ``split`` (on ``device``) with ``model``'s float outputs, in evaluation
    mode; the model's mode is restored afterwards.

    Streams (language modelling) carry the recurrent state from batch to batch; every
    batch marked ``fresh`` starts a new state. Random number generators are left as they
    were, so evaluating in the middle of training does not change the training run.
    """
    was_training = model.training
    model.eval()
    state: State | None = None
    options = consuming(model)  # each batch's old state is dropped: a MemoryRNN may write into it
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for batch in task.eval_batches(split, batch_size):
                batch = batch.to(device)
                with autocast(device, precision):
                    outputs, state = model(batch.inputs, None if batch.fresh else state, **options)
                state = detach_state(state)
                yield batch, outputs.float()
    finally:
        model.train(was_training)


def evaluate(
    model: torch.nn.Module, task: Task, split: str, batch_size: int, device: torch.device, precision: str = "fp32"
) -> Metrics:
    """The task's metrics of ``model`` on ``split`` (see
    [`scored_batches`][manntk.training.evaluate.scored_batches])."""
    sums: dict[str, float] = {}
    for batch, outputs in scored_batches(model, task, split, batch_size, device, precision):
        for key, value in task.eval_score(outputs, batch).items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return task.summarize(sums)


def failed_examples(
    model: torch.nn.Module, task: Task, split: str, batch_size: int, device: torch.device, precision: str = "fp32"
) -> list[dict[str, float]]:
    """The examples of ``split`` that ``model`` gets wrong, in the split's order: each with
    its ``index`` in the split (what ``manntk inspect --index`` takes) and the task's
    [`example_scores`][manntk.tasks.base.Task.example_scores]. Raises ``ValueError`` for a
    task that does not score examples one by one."""
    failed: list[dict[str, float]] = []
    index = 0
    for batch, outputs in scored_batches(model, task, split, batch_size, device, precision):
        scores = task.example_scores(outputs, batch)
        if scores is None:
            raise ValueError(f"task {type(task).__name__} does not score its examples one by one (no example_scores)")
        for row in (scores["wrong"] > 0).nonzero().flatten().tolist():
            failed.append({"index": index + row, **{key: float(value[row]) for key, value in scores.items()}})
        index += batch.inputs.shape[0]
    return failed


def load_judged_model(run_dir: str | Path, split: str, device: str = "auto", data_root: str | None = None):
    """A run's recipe, task and model, for scoring ``split``: the model holds the weights
    the run is judged by (the weight average of a run with ``train.ema_decay``, the trained
    weights otherwise) from its latest checkpoint, on ``device``. Returns ``(recipe, task,
    model, device)``; a split the task does not have is a usage error naming its splits."""
    from manntk.build import build_experiment
    from manntk.config import UsageError
    from manntk.recipe import load_recipe
    from manntk.training.checkpoint import latest_checkpoint, load_judged_weights
    from manntk.training.distributed import pick_device
    from manntk.training.ownership import resolve_run_dir

    run_dir = resolve_run_dir(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    target = pick_device(device)
    flush_subnormals(target, recipe.train.flush_denormal)
    task, model = build_experiment(recipe, data_root)
    if split not in task.splits:
        raise UsageError(f"unknown split {split!r}; task {recipe.task.name!r} has: {', '.join(task.splits)}")
    model.to(target)
    model.load_state_dict(load_judged_weights(latest_checkpoint(run_dir), target))
    return recipe, task, model, target


def evaluate_run(run_dir: str | Path, split: str, device: str = "auto", data_root: str | None = None) -> Metrics:
    """Score the latest checkpoint of a run on ``split`` with the run's saved recipe
    (``run_dir`` may be ``runs/latest``), by the weights the run is judged by (see
    [`load_judged_model`][manntk.training.evaluate.load_judged_model])."""
    recipe, task, model, target = load_judged_model(run_dir, split, device, data_root)
    return evaluate(model, task, split, recipe.eval.batch_size, target, recipe.train.precision)
