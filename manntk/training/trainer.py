"""The training loop: truncated BPTT with the whole recurrent state carried, resumable exactly.

Per step: training batch ``step`` of the task (this process's rows of it), forward from
the carried state (or a fresh one when the batch starts new sequences), the task's loss
averaged over every scored unit of the global batch, backward, clipping, optimizer and
schedule steps. The recurrent state (hidden state, memory, fill counter, addressing
state) is detached between steps. A checkpoint holds everything needed to continue
exactly where the run stopped: weights, optimizer, schedules, RNG states, the step
(which is the data position) and the recurrent state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import torch
import yaml
from tqdm import tqdm

from manntk import __version__
from manntk.build import build_experiment, build_model, check_memory_fits, model_config_for
from manntk.config import ConfigError, parse_every
from manntk.plugins import Plugins, default_plugins
from manntk.recipe import Recipe, recipe_to_mapping
from manntk.seeding import mixed_seed
from manntk.state import State, detach_state
from manntk.tasks.base import Task
from manntk.training import checkpoint as ckpt
from manntk.training.averaging import WeightAverage
from manntk.training.distributed import Distributed, pick_device
from manntk.training.estimate import ESTIMATE_SECONDS, ESTIMATE_STEPS, describe_machine, estimate_lines
from manntk.training.evaluate import autocast, evaluate, flush_subnormals
from manntk.training.metrics import MetricsLog
from manntk.training.optim import clip_gradients, gradient_norm, gradients_finite, make_optimizer, make_scheduler, reset_learning_rate, scale_learning_rate, set_momentum
from manntk.training.ownership import RunLock, check_new_run_dir, point_latest, resolve_run_dir
from manntk.training.replay import Replay
from manntk.training.signals import StopOnSignals, TrainingInterrupted
from manntk.training.spikes import SpikeSkipper


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@attrs.frozen
class TrainResult:
    """What a finished run reports.

    Attributes:
        run_dir: the run directory.
        step: optimizer steps done.
        metrics: final metrics per evaluated split.
        solved_step: the step at which the task first reported ``solved``, if it did.
        seconds: training wall-clock time, over all resumes.
        stop_reason: ``steps``, ``solved`` or ``time``.
    """

    run_dir: Path
    step: int
    metrics: dict[str, dict[str, float]]
    solved_step: int | None
    seconds: float
    stop_reason: str


def total_steps(recipe: Recipe, task: Task) -> int:
    """Optimizer steps of the run, from ``train.steps`` or ``train.epochs``."""
    if recipe.train.steps is not None:
        return recipe.train.steps
    if recipe.train.epochs is not None:
        per_epoch = task.steps_per_epoch(recipe.train.batch_size)
        if per_epoch is None:
            raise ConfigError(["this task generates its data, so it has no epochs: set train.steps @ $.train.epochs"])
        return max(1, math.ceil(recipe.train.epochs * per_epoch))
    raise ConfigError(["set train.steps or train.epochs @ $.train"])


def new_run_dir(recipe: Recipe, runs_root: Path) -> Path:
    """``runs/<name>-<timestamp>``, unique: made here (empty), so that runs of one recipe
    started in the same second each claim their own."""
    name = recipe.name or f"{recipe.task.name}-{recipe.model.cell.name}"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    runs_root.mkdir(parents=True, exist_ok=True)
    path, suffix = runs_root / f"{name}-{stamp}", 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            suffix += 1
            path = runs_root / f"{name}-{stamp}-{suffix}"


class Trainer:
    """One training run (one process of it under ``torchrun``)."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        *,
        dist: Distributed,
        plugins: Plugins | None = None,
        data_root: str | None = None,
        progress: bool = True,
    ) -> None:
        self.recipe, self.run_dir, self.progress, self.dist = recipe, run_dir, progress, dist
        self.plugins = plugins or default_plugins()
        train = recipe.train
        self.rows = self.dist.rows(train.batch_size)
        self.device = pick_device(train.device, self.dist.local_rank)
        check_memory_fits(recipe.model, self.rows[1] - self.rows[0], self.device, self.plugins)
        if train.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(["fp16 needs a CUDA device; use bf16 or fp32 on the CPU @ $.train.precision"])
        if train.threads is not None:
            torch.set_num_threads(train.threads)
        flush_subnormals(self.device, train.flush_denormal)
        torch.manual_seed(train.seed)
        self.task, self.model = build_experiment(recipe, data_root, self.plugins)
        self.model.to(self.device)
        if train.compile:
            try:
                self.model.compile_layers()
            except ValueError as error:
                raise ConfigError([f"{error}: turn off their fast path or compile @ $.train.compile"]) from None
        if self.dist.rank:
            torch.manual_seed(train.seed + self.dist.rank)  # each process its own sampling noise
        self.trained = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.total_steps = total_steps(recipe, self.task)
        self.optimizer = make_optimizer(train.optimizer, self.model.parameters())
        self.average = None if train.ema_decay is None else WeightAverage(self.model, train.ema_decay)
        self.spikes = None if train.skip_spikes is None else SpikeSkipper(train.skip_spikes)
        self.nonfinite_steps = 0
        self.gradient_norms: list[float] = []  # the log window's norms before clipping (train.clip_norm)
        self.replay = None if train.replay_above is None else Replay(train.replay_above, train.replay_times)
        if self.replay is not None and not self.task.train_batch(1, train.batch_size).fresh:
            raise ConfigError([f"replay trains on batches again, but task {recipe.task.name!r} carries the recurrent state "
                               "from one batch to the next: it is for tasks with independent batches @ $.train.replay_above"])
        self.elapsed = 0.0  # wall clock of the run so far, resumes included: run() keeps it
        self.scheduler = make_scheduler(train.schedule, self.optimizer, self.budget_spent)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train.precision == "fp16")
        self.checkpoints = run_dir / "checkpoints"
        #: how often each of logging, validation and checkpointing happens (steps, wall clock or both)
        self.every = {name: parse_every(getattr(train, f"{name}_every")) for name in ("log", "eval", "checkpoint")}
        self.best: dict[str, float] | None = None  # the best validation so far: its step and metric
        self.relapses = 0  # validations after the first solved one that were not solved
        self.regressions = 0  # validations before the first solved one that rolled back (schedule.regress_ratio)
        self.restarts: list[int] = []  # the steps at which the run started again (schedule.restart_after)
        self.mark: dict[str, float] | None = None  # the attempt's last validation that counted as progress
        self.metrics: MetricsLog | None = None  # opened by run(): building a trainer writes nothing

    # -- the loop ---------------------------------------------------------------------

    def run(self, resume: bool = False, stop: StopOnSignals | None = None) -> TrainResult:
        """Train to the end of the budget (or until solved), evaluate, and save; once ``stop``
        has received a signal, save after the current step and raise
        [`TrainingInterrupted`][manntk.training.signals.TrainingInterrupted]."""
        train = self.recipe.train
        if self.dist.is_main:
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        step, elapsed, state, solved_step = 0, 0.0, None, None
        if resume:
            step, elapsed, state, solved_step = self.restore()
        self.elapsed = elapsed
        stop_reason = "steps"
        show = self.progress and self.dist.is_main
        lines = show and not sys.stderr.isatty()  # a log file or a pipe: one line per log step, not a bar
        bar = tqdm(total=self.total_steps, initial=step, disable=not show or lines, unit="step", dynamic_ncols=True, file=sys.stderr)
        last_valid, first_step, last_logged = "", step, step
        if train.compile:
            bar.set_postfix_str("compiling each layer's chunk: the first steps take minutes")
        window: dict[str, float] = {}
        window_units, timed_from, estimated = 0, 0.0, False
        now = time.perf_counter()
        started, last = now - elapsed, dict.fromkeys(self.every, now)  # when each of log, eval, checkpoint last happened
        while step < self.total_steps and stop_reason == "steps":
            index, replayed = (step, False) if self.replay is None else self.replay.batch_index(step)
            batch = self.task.train_batch(index, train.batch_size).rows(*self.rows).to(self.device)
            state, sums = self.train_step(step, batch, None if batch.fresh else state)
            if self.replay is not None and solved_step is not None and not replayed:
                self.replay.offer(index, self.task.summarize(sums)["loss"])
            step += 1
            elapsed, due = self.clock(step, started, last)
            self.elapsed = elapsed
            self.scheduler.step()  # the next step's rate, from the clock after this one (schedule.over: time)
            timed = step - first_step - 1  # the first step paid for warm-up: the estimate times the next ones
            if show and timed == 0:
                timed_from = elapsed
            elif show and not estimated and (timed == ESTIMATE_STEPS or elapsed - timed_from >= ESTIMATE_SECONDS):
                estimated = True
                for line in self.estimate(step, elapsed, (elapsed - timed_from) / timed):
                    tqdm.write(line, file=sys.stderr)
            for key, value in sums.items():
                window[key] = window.get(key, 0.0) + value
            window_units += self.task.units(batch) * self.dist.world_size
            if not math.isfinite(sums["loss"]):
                self.diverged(step, f"the training loss became {sums['loss']}")
            bar.update(1)
            if due["log"] or step == self.total_steps:
                seconds = time.perf_counter() - last["log"]
                row = self.log_train(step, elapsed, window, window_units / max(seconds, 1e-9))
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("loss", self.task.metric, f"{self.task.unit}_per_s")})
                if lines:  # the time left at the rate of the last window, not of the whole run
                    left = (self.total_steps - step) * seconds / max(step - last_logged, 1)
                    rate = row[f"{self.task.unit}_per_s"]
                    print(f"step {step:,}/{self.total_steps:,}  loss {row['loss']:.4g}  {rate:.4g} {self.task.unit}/s  "
                          f"budget in {timedelta(seconds=round(left))}{last_valid}", file=sys.stderr, flush=True)
                last_logged = step
                window, window_units, last["log"] = {}, 0, time.perf_counter()
            saved = False
            if due["eval"]:
                valid = self.validate(step, elapsed)
                restarted = False
                if valid.get("solved") and solved_step is None and self.test_agrees(step, elapsed):
                    solved_step = step
                    if train.stop_when_solved:
                        stop_reason = "solved"
                    else:  # once solved, smaller steps (schedule.solved_gamma, solved_momentum)
                        if train.schedule.solved_gamma != 1.0:
                            scale_learning_rate(self.scheduler, train.schedule.solved_gamma)
                        if train.schedule.solved_momentum is not None:
                            set_momentum(self.optimizer, train.schedule.solved_momentum)
                elif solved_step is not None and not valid.get("solved", 1.0):
                    self.relapses += 1  # solved before, not now
                    if train.schedule.relapse_gamma is not None and not self.improves(valid):
                        self.roll_back(step, "solved before, not now")
                elif solved_step is None and self.regressed(valid):
                    self.regressions += 1
                    self.roll_back(step, f"{self.task.metric} more than x{train.schedule.regress_ratio:g} off the best")
                elif solved_step is None and self.stalled(step, valid):
                    self.start_again(step)
                    restarted = True  # this validation judged the weights given up: no best of the new attempt
                elif solved_step is None and self.first_near(valid):  # closing in: smaller steps (schedule.approach_at)
                    scale_learning_rate(self.scheduler, train.schedule.approach_gamma)
                if not restarted and self.improves(valid):
                    self.best = {"step": step, self.task.metric: valid[self.task.metric]}
                    self.save(step, elapsed, state, solved_step)
                    saved = True
                shown = {f"valid {self.task.metric}": f"{valid.get(self.task.metric, math.nan):.4g}"}
                if self.task.solved_below is not None:
                    shown["solved below"] = f"{self.task.solved_below:g}"
                bar.set_postfix(shown)
                last_valid = "  " + "  ".join(f"{key} {value}" for key, value in shown.items())
                last["eval"] = time.perf_counter()
            if due["checkpoint"] and not saved:
                self.save(step, elapsed, state, solved_step)
                saved = True
            if saved:
                last["checkpoint"] = time.perf_counter()
            if train.max_minutes is not None and elapsed >= 60 * train.max_minutes and step < self.total_steps:
                stop_reason = "time"
            if self.signalled(stop):
                stop_reason = "interrupted"
        bar.close()
        self.save(step, elapsed, state, solved_step)
        if stop_reason == "interrupted":
            if self.metrics is not None:
                self.metrics.close()
            received = stop.received or signal.SIGTERM  # another process of the job got it
            raise TrainingInterrupted(
                f"{received.name} at step {step}: checkpoint written to {ckpt.latest_checkpoint(self.run_dir)}; "
                f"continue with: manntk train --resume {self.run_dir}",
                status=128 + int(received),
            )
        results = self.final_evaluation(step, elapsed, solved_step, stop_reason)
        return TrainResult(self.run_dir, step, results, solved_step, elapsed, stop_reason)

    def budget_spent(self, step: int) -> float:
        """The share of the budget spent after ``step`` steps, which a cosine or cooldown
        schedule decays over: of the steps, or with ``schedule.over: time`` of the steps or of
        ``train.max_minutes`` of wall clock, whichever is further on (the run ends at the
        first of the two it meets)."""
        train = self.recipe.train
        spent = step / max(self.total_steps, 1)
        if train.schedule.over == "time":
            spent = max(spent, self.elapsed / (60 * train.max_minutes))
        return spent

    def clock(self, step: int, started: float, last: dict[str, float]) -> tuple[float, dict[str, bool]]:
        """The run's wall clock after ``step`` (``time.perf_counter()`` was ``started`` at its
        start), and which of ``log``, ``eval`` and ``checkpoint`` happen now, each by its step
        count or by the time since ``last`` it happened. Where anything goes by the clock (a
        ``max_minutes`` budget, which also sets a ``schedule.over: time`` rate, or an interval
        in minutes), rank 0's clock decides for every process of a job, in one broadcast, so
        that all stop, set their rate, validate and save at the same step (their own clocks,
        started apart, would not agree)."""
        now = time.perf_counter()
        elapsed = now - started
        due = {name: every.due(step, now - last[name]) for name, every in self.every.items()}
        if self.recipe.train.max_minutes is not None or any(every.seconds is not None for every in self.every.values()):
            agreed = self.dist.from_main([elapsed, *map(float, due.values())], self.device)
            elapsed, due = agreed[0], {name: verdict > 0 for name, verdict in zip(due, agreed[1:])}
        return elapsed, due

    def estimate(self, step: int, elapsed: float, seconds_per_step: float) -> list[str]:
        """The lines that say how long the rest of the run, after ``step`` and ``elapsed``
        seconds of training, will take at ``seconds_per_step`` (see
        [`estimate_lines`][manntk.training.estimate.estimate_lines])."""
        train = self.recipe.train
        return estimate_lines(
            self.total_steps - step, seconds_per_step, describe_machine(self.device, self.dist.world_size),
            on_cpu=self.device.type == "cpu",
            max_seconds=None if train.max_minutes is None else max(0.0, 60 * train.max_minutes - elapsed),
            stops_when_solved=train.stop_when_solved, cpu_alternative=self.recipe.cpu_alternative,
        )

    def test_agrees(self, step: int, elapsed: float) -> bool:
        """Whether the test split is solved too, once validation says so: a run counts as
        solved (and stops, with ``stop_when_solved``) only when both are; a lucky validation
        set alone does not end the run."""
        if "test" not in self.task.splits:
            return True
        return bool(self.validate(step, elapsed, split="test").get("solved"))

    def improves(self, valid: dict[str, float]) -> bool:
        """Whether this validation's metric beats the best so far (in the task's direction)."""
        value = valid.get(self.task.metric)
        if value is None or not math.isfinite(value):
            return False
        return self.best is None or self.beats(value, self.best[self.task.metric])

    def beats(self, value: float, other: float) -> bool:
        """Whether metric ``value`` is better than ``other`` in the task's direction."""
        return value > other if self.task.higher_is_better else value < other

    def signalled(self, stop: StopOnSignals | None) -> bool:
        """Whether any process of the job received a stop signal (all stop at the same step)."""
        received = stop is not None and stop.received is not None
        if not self.dist.enabled:
            return received
        return bool(self.dist.sum(torch.tensor([float(received)], device=self.device)).item() > 0)

    def train_step(self, step: int, batch: Any, state: State | None) -> tuple[State, dict[str, float]]:
        """One optimizer step on ``batch``; returns the detached state and the global score sums."""
        train = self.recipe.train
        self.trained.train()
        self.model.set_schedule_step(step)
        with autocast(self.device, train.precision):
            outputs, state = self.trained(batch.inputs, state)
        scores = self.task.score(outputs.float(), batch)
        names = sorted(scores)
        totals = self.dist.sum(torch.stack([scores[name].detach().float().to(self.device) for name in names]))
        count = totals[names.index("count")].clamp_min(1.0)
        loss = scores["loss"] * self.dist.world_size / count  # DDP averages gradients over processes
        batch_loss = float(totals[names.index("loss")] / count)  # the global batch's
        flooded = train.flood is not None and batch_loss < train.flood
        if flooded and train.flood_mode == "ascend":
            loss = -loss  # flooding: the gradient of |loss - flood| + flood
        self.optimizer.zero_grad(set_to_none=True)
        if flooded and train.flood_mode == "skip":
            self.optimizer.step()  # no gradient: no update, no change to the optimizer's state; the scheduler sees a step
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if not self.scaler.is_enabled() and math.isfinite(batch_loss) and not gradients_finite(self.model.parameters()):
                if train.nonfinite_gradients == "stop":
                    self.diverged(step + 1, "the gradient became non-finite (an overflow in the backward pass; the weights did not take it)")
                self.optimizer.zero_grad(set_to_none=True)  # skipped: the weights and the optimizer's state stay as they were
                self.nonfinite_steps += 1
            elif self.spikes is not None and self.spikes.skip(gradient_norm(self.model.parameters())):
                self.optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves the weights and its state alone
            norm = clip_gradients(self.model.parameters(), train.clip_norm, train.clip_value)
            if norm is not None:
                self.gradient_norms.append(norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.average is not None:
            self.average.update()
        return detach_state(state), dict(zip(names, totals.tolist()))

    def diverged(self, step: int, what: str) -> None:
        """Raise [`TrainingDiverged`][manntk.training.trainer.TrainingDiverged], after writing
        ``results.json`` with ``stop_reason: diverged`` (no final scores; unsolved where the task
        has a threshold): a run that diverged has an outcome, which a study counts rather than
        retrying the same seed into the same overflow (a study skips a run with that file:
        delete it to have the study resume the run from its last checkpoint)."""
        last = self.checkpoints / "latest"
        kept = f"the last good checkpoint is {self.checkpoints / last.read_text().strip()}" if last.exists() else "no checkpoint was written yet"
        message = f"{what} at step {step}; {kept}. Lower train.optimizer.lr, set train.clip_norm, or use precision fp32."
        if self.dist.is_main:
            self.write_results(step, None, None, "diverged", {}, False if self.task.solved_below is not None else None, diverged=message)
        raise TrainingDiverged(message)

    def write_results(self, step: int, seconds: float | None, solved_step: int | None, stop_reason: str,
                      metrics: dict[str, dict[str, float]], solved: bool | None, **extra: Any) -> None:
        """Write ``results.json``, the run's outcome: where and why it stopped, its seeds, the
        final scores, its best validation, relapses and rollbacks, the counters of the options
        that skip or replay steps, and ``solved`` when the task has a verdict."""
        summary = {
            "step": step, "seconds": seconds, "solved_step": solved_step, "stop_reason": stop_reason, **extra,
            "seeds": {"model": self.recipe.train.seed, "data": self.task.data_seed}, "metrics": metrics,
            "best": self.best, "relapses": self.relapses, "regressions": self.regressions, "restarts": self.restarts,
            **self.step_counters(),
        }
        if solved is not None:
            summary["solved"] = solved
        ckpt.write_text_atomic(self.run_dir / "results.json", json.dumps(summary, indent=2) + "\n")

    def check_finite(self, step: int) -> None:
        """Raise [`TrainingDiverged`][manntk.training.trainer.TrainingDiverged] when a weight or an optimizer state is not finite."""
        tensors = [(name, p) for name, p in self.model.named_parameters()]
        tensors += [(f"optimizer state {key}", value) for state in self.optimizer.state.values() for key, value in state.items()
                    if isinstance(value, torch.Tensor) and value.is_floating_point()]
        for name, tensor in tensors:
            if not bool(torch.isfinite(tensor).all()):
                self.diverged(step, f"{name} became non-finite (not saved)")

    # -- logging and evaluation --------------------------------------------------------

    @property
    def judged(self) -> torch.nn.Module:
        """The model that validation and the final scores evaluate: the weight average with
        ``train.ema_decay``, the trained model otherwise."""
        return self.model if self.average is None else self.average.averaged

    def step_counters(self) -> dict[str, int]:
        """The counts of the options that skip or replay steps, for the training rows and
        ``results.json``: only those of the options the recipe sets."""
        counters = {}
        if self.spikes is not None:
            counters["skipped_steps"] = self.spikes.skipped
        if self.recipe.train.nonfinite_gradients == "skip":
            counters["nonfinite_steps"] = self.nonfinite_steps
        if self.replay is not None:
            counters["replayed_steps"] = self.replay.replayed
        return counters

    def log_train(self, step: int, elapsed: float, window: dict[str, float], units_per_s: float) -> dict[str, Any]:
        row = {"step": step, "split": "train", "time": round(elapsed, 3), **self.task.summarize(window),
               f"{self.task.unit}_per_s": units_per_s, "lr": self.scheduler.get_last_lr()[0]}
        row.update(self.model.training_metrics())
        row.update(self.step_counters())
        if self.recipe.train.schedule.restart_after is not None:
            row["restarts"] = len(self.restarts)  # so that a plot of a running run finds its restarts
        row.update(self.gradient_summary())
        if self.metrics is not None:
            self.metrics.write(row)
        return row

    def gradient_summary(self) -> dict[str, float]:
        """With ``train.clip_norm``: the log window's mean gradient norm before the norm clip
        (``grad_norm``) and the share of its steps that the clip scaled down (``clipped``),
        then a fresh window: how large the gradients run, and whether the clip acts on a few
        spikes or on every step (for SGD, a clip on every step is a smaller rate; Adam and
        RMSprop divide most of a steady scale away, but not a varying one)."""
        norms, self.gradient_norms = self.gradient_norms, []
        if not norms:
            return {}
        limit = self.recipe.train.clip_norm
        return {"grad_norm": sum(norms) / len(norms), "clipped": sum(norm > limit for norm in norms) / len(norms)}

    def validate(self, step: int, elapsed: float, split: str = "valid") -> dict[str, float]:
        """Score ``split`` (the validation split by default) on rank 0. Every rank gets rank
        0's metric and verdict, since what follows from them (a best checkpoint, a rollback,
        a restart) is done by all processes together."""
        result: dict[str, float] = {}
        if self.dist.is_main:
            result = evaluate(self.judged, self.task, split, self.recipe.eval.batch_size, self.device, self.recipe.train.precision)
            self.metrics.write({"step": step, "split": split, "time": round(elapsed, 3), **result})
        metric, solved = self.dist.from_main([result.get(self.task.metric, math.nan), result.get("solved", 0.0)], self.device)
        if not self.dist.is_main and not math.isnan(metric):
            result[self.task.metric] = metric
        result["solved"] = float(solved > 0)
        return result

    def final_evaluation(self, step: int, elapsed: float, solved_step: int | None, stop_reason: str) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        if self.dist.is_main:
            for split in self.recipe.eval.splits:
                results[split] = evaluate(self.judged, self.task, split, self.recipe.eval.batch_size, self.device, self.recipe.train.precision)
                self.metrics.write({"step": step, "split": split, "time": round(elapsed, 3), "final": True, **results[split]})
            solved = None
            if solved_step is not None or any("solved" in split_metrics for split_metrics in results.values()):
                # solved on validation counts only if every final split (the test set too) agrees
                solved = solved_step is not None and all(bool(m.get("solved", 1.0)) for m in results.values())
            self.write_results(step, round(elapsed, 3), solved_step, stop_reason, results, solved)
            self.metrics.close()
        self.dist.barrier()
        return results

    # -- checkpoints ------------------------------------------------------------------

    def save(self, step: int, elapsed: float, state: State | None, solved_step: int | None) -> None:
        """Write a checkpoint, after checking that the weights and the optimizer state are
        finite (a checkpoint kept as the last good one must be good)."""
        self.check_finite(step)
        latest = self.checkpoints / "latest"
        if latest.exists() and latest.read_text(encoding="utf-8").strip() == ckpt.checkpoint_name(step):
            return  # this step is saved already (the best validation's, then the run's end): the same state
        staging = ckpt.staging_dir(self.checkpoints, step)
        if self.dist.is_main:
            staging.mkdir(parents=True, exist_ok=True)
            ckpt.save_weights(staging, self.model)
            if self.average is not None:
                ckpt.save_weights(staging, self.average.averaged, ckpt.AVERAGED)
            ckpt.fault_point("weights", step)
        self.dist.barrier()
        ckpt.save_recurrent_state(staging, self.dist.rank, state)
        ckpt.save_rng(staging, self.dist.rank, self.device)
        ckpt.fault_point("state", step)
        self.dist.barrier()
        if self.dist.is_main:
            ckpt.finish(self.checkpoints, step, {
                "step": step, "elapsed": elapsed, "solved_step": solved_step, "world_size": self.dist.world_size,
                "best": self.best, "relapses": self.relapses, "regressions": self.regressions,
                "restarts": self.restarts, "mark": self.mark,
                "average_updates": None if self.average is None else self.average.updates,
                "spikes": None if self.spikes is None else self.spikes.state_dict(), "nonfinite_steps": self.nonfinite_steps,
                "replay": None if self.replay is None else self.replay.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            }, keep=2, best=None if self.best is None else int(self.best["step"]))
        self.dist.barrier()

    def regressed(self, valid: dict[str, float]) -> bool:
        """Whether this validation is worse than the best so far by more than
        ``schedule.regress_ratio`` (never, without one)."""
        ratio, value = self.recipe.train.schedule.regress_ratio, valid.get(self.task.metric)
        if ratio is None or self.best is None or value is None:
            return False
        best = self.best[self.task.metric]
        return value < best / ratio if self.task.higher_is_better else value > best * ratio

    def first_near(self, valid: dict[str, float]) -> bool:
        """Whether this validation is the first to get past ``schedule.approach_at`` (never,
        without one): it beats the level, and the best so far did not (the best is
        checkpointed, so a resumed run does not drop its rate twice)."""
        level, value = self.recipe.train.schedule.approach_at, valid.get(self.task.metric)
        if level is None or value is None:
            return False
        return self.beats(value, level) and (self.best is None or not self.beats(self.best[self.task.metric], level))

    def roll_back(self, step: int, why: str) -> None:
        """Load the best checkpoint's weights (and weight average) and optimizer state, and
        multiply the rate by ``schedule.relapse_gamma`` (on a relapse, or a regress by
        ``schedule.regress_ratio``); the step count, schedule, data and recurrent state go
        on from ``step``.

        With a weight average (``train.ema_decay``), training goes on from the average:
        it is what was judged best, not the trained weights of that step, and from those
        the average would drift back to where they validate (an AwTA copy run rolled back
        20 times in a row so, its rate halved each time)."""
        self.load_weights_and_optimizer(self.checkpoints / ckpt.checkpoint_name(int(self.best["step"])))
        if self.average is not None:
            self.model.load_state_dict(self.average.averaged.state_dict())
        factor = self.rollback_factor()
        scale_learning_rate(self.scheduler, factor)
        if self.dist.is_main and self.progress:
            tqdm.write(f"step {step:,}: {why}: back to step {self.best['step']:,}'s weights, rate x{factor:g}", file=sys.stderr)

    def stalled(self, step: int, valid: dict[str, float]) -> bool:
        """Whether ``schedule.restart_after`` steps have passed since the attempt's last
        progress (never, without one). A validation is progress when it beats the last
        progress by ``schedule.restart_margin`` of its size (the attempt's first validation
        is); it then becomes the mark the next ones are held to."""
        schedule, value = self.recipe.train.schedule, valid.get(self.task.metric)
        if schedule.restart_after is None or value is None or not math.isfinite(value):
            return False
        if self.mark is not None:
            mark = self.mark[self.task.metric]
            if not self.beats(value, mark + schedule.restart_margin * abs(mark) * (1 if self.task.higher_is_better else -1)):
                return step - self.mark["step"] >= schedule.restart_after
        self.mark = {"step": step, self.task.metric: value}
        return False

    def start_again(self, step: int) -> None:
        """Start the run again at ``step`` (``schedule.restart_after``): fresh weights, drawn
        from ``train.seed`` and the number of restarts (the same in every process of a job,
        and the random stream of training untouched), an empty optimizer state, the weight
        average from the fresh weights, the rate back at the schedule's, the spike skipper's
        average of recent norms forgotten, no best and no mark; the step count, data and
        schedule go on."""
        self.restarts.append(step)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(restart_seed(self.recipe.train.seed, len(self.restarts)))
            fresh = build_model(model_config_for(self.recipe.model, self.task), self.plugins)
        self.model.load_state_dict(fresh.state_dict())
        self.optimizer.state.clear()
        reset_learning_rate(self.scheduler)
        if self.average is not None:
            self.average.reset()
        if self.spikes is not None:
            self.spikes.start_over()
        self.best = self.mark = None
        if self.dist.is_main and self.progress:
            tqdm.write(f"step {step:,}: no progress in {self.recipe.train.schedule.restart_after:,} steps: "
                       f"starting again from fresh weights (restart {len(self.restarts)})", file=sys.stderr)

    def rollback_factor(self) -> float:
        """What a rollback multiplies the rate by: ``schedule.relapse_gamma``, cut so that
        the rate stays at or above ``schedule.rollback_floor`` times the optimizer's
        ``lr`` (and never raised, when it is below already)."""
        schedule = self.recipe.train.schedule
        if schedule.rollback_floor is None:
            return schedule.relapse_gamma
        scale = self.scheduler.base_lrs[0] / self.recipe.train.optimizer.lr  # every change of the rate so far
        return min(1.0, max(schedule.relapse_gamma, schedule.rollback_floor / scale))

    def load_weights_and_optimizer(self, path: Path) -> dict[str, Any]:
        """Check checkpoint ``path`` and load its weights, weight average and optimizer
        state; returns its trainer state for the rest."""
        trainer_state = ckpt.load_trainer_state(path)
        if trainer_state["world_size"] != self.dist.world_size:
            raise ckpt.CheckpointError(
                f"{path} was written by {trainer_state['world_size']} process(es); resume it with the same number (now {self.dist.world_size})"
            )
        ckpt.verify(path, self.dist.world_size)
        self.model.load_state_dict(ckpt.load_weights(path, self.device))
        if self.average is not None:
            if trainer_state.get("average_updates") is None:
                raise ckpt.CheckpointError(
                    f"{path} holds no weight average, but the recipe sets train.ema_decay: "
                    "resume with the recipe the run started with")
            self.average.averaged.load_state_dict(ckpt.load_weights(path, self.device, ckpt.AVERAGED))
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        return trainer_state

    def restore(self) -> tuple[int, float, State | None, int | None]:
        """Load the latest checkpoint: weights, optimizer, schedules, RNG, recurrent state."""
        path = ckpt.latest_checkpoint(self.run_dir)
        trainer_state = self.load_weights_and_optimizer(path)
        if self.average is not None:
            self.average.updates = trainer_state["average_updates"]
        if self.spikes is not None and trainer_state.get("spikes") is not None:
            self.spikes.load_state_dict(trainer_state["spikes"])
        if self.replay is not None and trainer_state.get("replay") is not None:
            self.replay.load_state_dict(trainer_state["replay"])
        self.nonfinite_steps = trainer_state.get("nonfinite_steps", 0)  # checkpoints before the count have none
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        self.scaler.load_state_dict(trainer_state["scaler"])
        ckpt.load_rng(path, self.dist.rank, self.device)
        state = ckpt.load_recurrent_state(path, self.dist.rank, self.device)
        step = trainer_state["step"]
        if self.metrics is not None:
            self.metrics.truncate_after(step)
        self.best, self.relapses = trainer_state.get("best"), trainer_state.get("relapses", 0)
        self.regressions = trainer_state.get("regressions", 0)
        self.restarts, self.mark = trainer_state.get("restarts", []), trainer_state.get("mark")
        return step, trainer_state["elapsed"], state, trainer_state["solved_step"]


def restart_seed(seed: int, restarts: int) -> int:
    """The seed of the fresh weights of restart number ``restarts`` (from 1) of a run with
    ``train.seed`` ``seed``: the two mixed by numpy's ``SeedSequence``, so that neighbouring
    seeds and restarts draw unrelated weights."""
    return mixed_seed(seed, restarts)


def git_state(folder: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The commit of the git checkout at ``folder`` and whether its tree has changes
    (``git status --porcelain`` not empty): ``{"commit": ..., "dirty": ...}``, each ``None``
    when ``folder`` is not the top of a checkout, git is missing, fails or takes longer than
    ``timeout`` seconds."""
    state: dict[str, Any] = {"commit": None, "dirty": None}
    if not (folder / ".git").exists():  # an installed wheel: site-packages may sit in someone else's repository
        return state

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is not None:
        status = git("status", "--porcelain")
        state = {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}
    return state


def write_run_files(run_dir: Path, recipe: Recipe, plugins: Plugins, world_size: int = 1) -> None:
    """The resolved recipe, and ``meta.json``: the versions, the command line, the machine,
    the plugins, the code (the git commit and dirty flag of manntk's checkout, when it runs
    from one), the number of processes and the ``MANNTK_*`` environment variables."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe_to_mapping(recipe), sort_keys=False))
    meta = {
        "manntk": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.platform(), "command": sys.argv, "started": datetime.now().isoformat(timespec="seconds"),
        "git": git_state(Path(__file__).resolve().parents[2]), "world_size": world_size,
        "environment": {name: value for name, value in sorted(os.environ.items()) if name.startswith("MANNTK_")},
        "plugins": {name: [f"{kind}/{part}" for kind, part in parts] for name, parts in plugins.contributions.items()},
        "plugin_failures": [str(f) for f in plugins.failures],
    }
    ckpt.write_text_atomic(run_dir / "meta.json", json.dumps(meta, indent=2) + "\n")


def train(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    runs_root: str | Path = "runs",
    resume: bool = False,
    progress: bool = True,
    plugins: Plugins | None = None,
    data_root: str | None = None,
) -> TrainResult:
    """Train ``recipe``; with ``resume``, continue the run in ``run_dir`` from its latest checkpoint.

    Args:
        recipe: the experiment.
        run_dir: the run directory (default: a new ``runs_root/<name>-<timestamp>``, which
            ``runs_root/latest`` then names).
        runs_root: where new run directories go.
        resume: continue ``run_dir`` exactly where its latest checkpoint stopped.
        progress: show a progress bar.
        plugins: the plugins (default: all installed).
        data_root: a data folder to look in first.
    """
    plugins = plugins or default_plugins()
    if resume and run_dir is None:
        raise ValueError("resume needs the run directory")
    if resume:
        run_dir = resolve_run_dir(run_dir)  # runs/latest: the run it names
    device = recipe.train.device
    dist = Distributed.from_environment(pick_device(device).type)
    lock: RunLock | None = None
    claimed: Path | None = None  # a directory named for this run, removed (if still empty) when the run cannot start
    try:
        dist.rows(recipe.train.batch_size)  # every rank fails alike here, before any directory is made
        if run_dir is not None:
            path = Path(run_dir)
        elif dist.is_main:
            path = claimed = new_run_dir(recipe, Path(runs_root))
        else:
            path = Path()  # rank 0's, below
        if dist.enabled:  # every process uses rank 0's directory
            shared = [str(path)]
            torch.distributed.broadcast_object_list(shared, src=0)
            path = Path(shared[0])
        lock = RunLock(path)
        if dist.is_main:
            if resume:
                lock.acquire()  # a second trainer on the run refuses at once
            else:
                check_new_run_dir(path)
        # the task and the model: a recipe they cannot take (an unknown split, a memory that
        # cannot fit, a missing data file) fails here, before a new run's directory exists
        trainer = Trainer(recipe, path, dist=dist, plugins=plugins, data_root=data_root, progress=progress)
        if dist.is_main and not resume:
            check_new_run_dir(path)  # again: another run may have taken it while this one was built
            lock.acquire()
            write_run_files(path, recipe, plugins, dist.world_size)
            if run_dir is None:
                point_latest(Path(runs_root), path)
        claimed = None  # the run's own now
        dist.barrier()
        with StopOnSignals() as stop:
            return trainer.run(resume=resume, stop=stop)
    finally:
        if lock is not None:
            lock.release()
        if claimed is not None:
            with contextlib.suppress(OSError):  # only an empty directory goes
                claimed.rmdir()
        dist.shutdown()
