"""Recipes: the whole experiment as YAML, structured into attrs classes.

A recipe is a YAML file, given by its path or, for the recipes shipped with manntk, by its
name (``armin_copy``, ``algorithmic/copy/ntm`` or ``copy/ntm``: see
[`find_recipe`][manntk.recipe.find_recipe]). A recipe file may ``extends: base.yaml`` (a path relative to it) to merge a parent;
command-line overrides ``key.path=value`` (value parsed as YAML) and ``~key.path``
(delete) apply last. A plugin node (``task``, ``model.cell``, ``model.addressing``,
``model.write``, ...) is tagged by ``name:``: giving it another name, by ``extends`` or
by an override, swaps the part together with its options (the parent's options of the
old part are dropped). Every problem is reported at once, with its path.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import attrs
import yaml

from manntk.build import ModelConfig
from manntk.config import (
    ConfigError, EverySetting, PartSpec, TaskSpec, every_setting, non_negative, positive, probability, structure,
)
from manntk.plugins import Plugins, default_plugins

_in = attrs.validators.in_


@attrs.define
class OptimizerConfig:
    """The optimizer.

    Attributes:
        name: ``adam``, ``adamw``, ``rmsprop`` or ``sgd``.
        lr: the (peak) learning rate.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        momentum: momentum of ``sgd`` and ``rmsprop``.
        betas: Adam's ``(beta1, beta2)``.
        eps: the optimizer's epsilon.
        alpha: ``rmsprop``'s smoothing constant of the squared gradients (torch's
            default 0.99; the ARMIN authors and pytorch-ntm use 0.95).
        amsgrad: ``adam``/``adamw`` divide by the largest second-moment estimate so far
            (Reddi et al., 2018) instead of the current one, so that once the gradients
            have shrunk near a solution, a sudden large one does not meet a tiny
            denominator on every coordinate it touches.
        update_clip: ``rmsprop`` only: cap the root mean square of each tensor's
            normalised step ``g / (sqrt(v) + eps)`` at this value before momentum and
            the rate apply (the update clipping of Adafactor, Shazeer & Stern 2018,
            section 6, there with 1). A gradient much larger than the recent ones meets
            an out-of-date, small ``v``: near a solution RMSprop (alpha 0.95) then steps
            ~4.5 times the rate on every coordinate it touches, and momentum repeats the
            step; clipped, what each step adds to a tensor's momentum has a root mean
            square of at most ``update_clip`` (times the rate). On NTM-style copy it did not
            prevent collapses (docs/results.md). ``None`` (the default): torch's RMSprop.
    """

    name: Literal["adam", "adamw", "rmsprop", "sgd"] = attrs.field(default="adam", validator=_in(("adam", "adamw", "rmsprop", "sgd")))
    lr: float = attrs.field(default=1e-3, validator=positive)
    weight_decay: float = attrs.field(default=0.0, validator=non_negative)
    momentum: float = attrs.field(default=0.0, validator=non_negative)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = attrs.field(default=1e-8, validator=positive)
    alpha: float = attrs.field(default=0.99, validator=[positive, probability])
    amsgrad: bool = attrs.field(default=False)
    update_clip: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))

    @update_clip.validator
    def _update_clip_needs_rmsprop(self, attribute: attrs.Attribute, value: float | None) -> None:
        if value is not None and self.name != "rmsprop":
            raise ValueError(f"update_clip is an option of rmsprop, not of {self.name}")

    @amsgrad.validator
    def _amsgrad_needs_adam(self, attribute: attrs.Attribute, value: bool) -> None:
        if value and self.name not in ("adam", "adamw"):
            raise ValueError(f"amsgrad is an option of adam and adamw, not of {self.name}")


@attrs.define
class ScheduleConfig:
    """The learning-rate schedule.

    Attributes:
        name: ``constant``, ``step`` (multiply by ``gamma`` at each of ``milestones``),
            ``cosine`` (to ``min_lr`` at the end of the budget, see ``over``) or
            ``cooldown`` (constant, then a straight line to ``min_lr`` over the last
            ``cooldown`` share of the budget: the warm-up-stable-decay schedule of Hu et
            al. 2024 and Hägele et al. 2024, which keeps the full rate for most of a short
            budget, where a cosine lowers it from the start).
        cooldown: the share of the budget ``cooldown`` decays over, at its end.
        over: the budget ``cosine`` and ``cooldown`` decay over: ``steps`` (to the last step,
            ``train.steps`` or ``train.epochs``) or ``time`` (to ``train.max_minutes`` of
            wall clock, the time already spent before a resume included, or to the last
            step if that comes first). ``time`` is for comparisons at equal wall clock,
            where models that make different numbers of steps in the budget should each
            end at ``min_lr``.
        warmup_steps: linear warm-up from 0 over this many steps (any schedule).
        milestones: steps at which ``step`` multiplies the rate by ``gamma``.
        gamma: the factor of ``step``.
        min_lr: the final rate of ``cosine`` and ``cooldown``.
        solved_gamma: multiply the rate by this once, when the run first solves its task
            (validation and test under the threshold) and goes on training
            (``stop_when_solved: false``); 1 keeps it. A smaller step size once solved
            keeps the weights from being knocked out of the solution by the steps that
            RMSprop and Adam still take at a near-zero loss.
        solved_momentum: the optimizer's momentum once the run first solves and goes on
            training (RMSprop's and SGD's ``momentum``, Adam's first beta), kept from
            then on. ``null`` (the default): unchanged. At batch 1 a solved run's rare
            wrong sequence brings a gradient far above the recent ones; RMSprop's
            normalised step on it is bounded (by ``lr / sqrt(1 - alpha)`` per weight),
            but momentum 0.9 goes on taking it for about ten more steps, so one wrong
            sequence moves the weights about ten times as far as the step itself.
        relapse_gamma: when a validation after the run first solved is not solved (a
            relapse), go back to the best checkpoint's weights and optimizer state and
            multiply the rate by this, schedule and all; training then goes on from
            there with the next batches. ``null`` (the default): carry on as if nothing
            happened. A run that keeps relapsing keeps halving (0.5) its rate, so it
            ends on weights that solved the task, moving less and less. With
            ``train.ema_decay``, training goes on from the best checkpoint's average,
            the weights that were judged.
        regress_ratio: with ``relapse_gamma``, a validation before the run has solved
            whose metric is worse than the best so far by more than this factor (above
            ``ratio`` times the best, or under best / ``ratio`` where higher is better)
            is rolled back the same way: for runs that reach a good point and swing away
            from it before they solve. ``null`` (the default): only relapses roll back.
        rollback_floor: with ``relapse_gamma``, the rollbacks lower the rate to no less
            than this fraction of the optimizer's ``lr`` (the last rollback's factor is
            cut to meet it, later ones keep the rate): a run that keeps swinging (an AwTA
            copy run rolled back 7 times, its rate halved to 8e-6) goes on learning
            rather than freezing. ``null`` (the default): no floor.
        approach_at: a validation metric that counts as near solving: the first time a
            validation that does not solve is under it (over it, where higher is better),
            the rate is multiplied by ``approach_gamma``, once. Smaller steps over the
            last stretch, so that a run does not swing out of the solution it is closing
            in on (an NTM-style copy run that jumps from a swing straight under the
            threshold lands there with a sequence still wrong, and tends to relapse).
            ``null`` (the default): no such drop.
        approach_gamma: the factor of ``approach_at``.
        restart_after: before the run has solved, when this many steps have passed since the
            current attempt's last progress (its first validation, or one better than the
            last progress by ``restart_margin``), start again: fresh weights (drawn from
            ``train.seed`` and the number of restarts so far), a fresh optimizer state and
            weight average, the rate back at the schedule's; the step count, the schedule's
            position, the data and the budget go on. For runs stuck on a plateau that neither
            more steps nor a rollback leaves (three of 60 ARMIN copy seeds: one output
            position wrong, the loss flat at a gradient norm of 0.01 from 15k to 72k steps,
            docs/results.md). The steps to solve count every attempt. ``null`` (the default):
            never.
        restart_margin: how much better than the last progress a validation must be to
            count as progress for ``restart_after``: under ``(1 - margin)`` times it (over
            ``(1 + margin)`` times it where higher is better; by ``margin`` of its magnitude
            for a negative metric), so that a metric drifting in its fourth digit on a
            plateau does not put the restart off.
    """

    name: Literal["constant", "step", "cosine", "cooldown"] = attrs.field(
        default="constant", validator=_in(("constant", "step", "cosine", "cooldown")))
    cooldown: float = attrs.field(default=0.2, validator=[positive, probability])
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    milestones: list[int] = attrs.field(factory=list)
    gamma: float = attrs.field(default=0.1, validator=positive)
    min_lr: float = attrs.field(default=0.0, validator=non_negative)
    over: Literal["steps", "time"] = attrs.field(default="steps", validator=_in(("steps", "time")))
    solved_gamma: float = attrs.field(default=1.0, validator=positive)
    solved_momentum: float | None = attrs.field(default=None, validator=attrs.validators.optional(
        [non_negative, attrs.validators.lt(1.0)]))
    relapse_gamma: float | None = attrs.field(default=None, validator=positive)
    regress_ratio: float | None = attrs.field(default=None)
    rollback_floor: float | None = attrs.field(default=None, validator=attrs.validators.optional([positive, probability]))
    approach_at: float | None = attrs.field(default=None)
    approach_gamma: float = attrs.field(default=1.0, validator=positive)
    restart_after: int | None = attrs.field(default=None, validator=positive)
    restart_margin: float = attrs.field(default=0.1, validator=[positive, probability])

    @rollback_floor.validator
    def _rollback_floor_needs_rollbacks(self, attribute: attrs.Attribute, value: float | None) -> None:
        if value is not None and self.relapse_gamma is None:
            raise ValueError("rollback_floor bounds the rate of the rollbacks (relapse_gamma): set relapse_gamma too")

    @approach_gamma.validator
    def _approach_gamma_needs_a_level(self, attribute: attrs.Attribute, value: float) -> None:
        if value != 1.0 and self.approach_at is None:
            raise ValueError("approach_gamma multiplies the rate when a validation first gets past approach_at: set approach_at too")

    @restart_margin.validator
    def _restart_margin_needs_restarts(self, attribute: attrs.Attribute, value: float) -> None:
        if value != 0.1 and self.restart_after is None:
            raise ValueError("restart_margin says what counts as progress for restart_after: set restart_after too")

    @regress_ratio.validator
    def _regress_ratio(self, attribute: attrs.Attribute, value: float | None) -> None:
        if value is None:
            return
        if value <= 1.0:
            raise ValueError(f"regress_ratio must be more than 1 (how many times worse than the best a validation may be), got {value!r}")
        if self.relapse_gamma is None:
            raise ValueError("regress_ratio rolls back with relapse_gamma's rate factor: set relapse_gamma too")


def _spike_factor(instance: Any, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and value <= 1.0:
        raise ValueError(f"{attribute.name} must be more than 1 (a spike is a gradient norm that many times the recent ones), got {value!r}")


@attrs.define
class TrainConfig:
    """Training.

    Attributes:
        batch_size: sequences (or streams) per step, over all processes together.
        tbptt: truncated-BPTT length for streamed tasks (language modelling).
        steps: optimizer steps to run (or give ``epochs``).
        epochs: passes over the training data, for tasks with a fixed training set.
        max_minutes: stop (after a checkpoint) once this much wall-clock time is spent
            (in a job of several processes, by rank 0's clock: all stop at one step).
        optimizer: the optimizer.
        schedule: the learning-rate schedule.
        clip_norm: clip the gradient's global norm to this value.
        clip_value: clip every gradient entry to ``[-clip_value, clip_value]``.
        ema_decay: judge the run by an exponential moving average of its weights with this
            decay per step (``0.999``: about the last thousand steps; see
            [`WeightAverage`][manntk.training.averaging.WeightAverage]): validation, the
            best checkpoint, whether and when it solved, the final scores, ``manntk
            eval`` and ``manntk inspect`` use the average, and checkpoints hold it beside
            the trained weights. ``null`` (the default): the trained weights themselves.
        skip_spikes: skip the optimizer step (the weights, the optimizer's averages and
            momentum stay as they are) when the gradient's norm, before clipping, exceeds
            this many times the geometric moving average of the recent norms (about the
            last hundred steps; never in the first hundred). Meant to keep one sequence a
            solved run gets wrong from knocking its weights out of the solution (see
            [`SpikeSkipper`][manntk.training.spikes.SpikeSkipper]); on NTM-style copy it
            also skipped the corrections of a confidently wrong model, and runs broke
            down (docs/results.md). The count is in the training rows and
            ``results.json`` (``skipped_steps``). ``null`` (the default): every step
            updates.
        flood: the flood level of the training loss (Ishida et al. 2020, "Do we need zero
            training loss after achieving zero training error?"): a step whose batch
            loss is under this level climbs the loss instead of descending it, so the
            training loss hovers at the level rather than falling towards zero. Meant for
            the algorithmic tasks, where a solved run left alone drives its logits (and
            NTM-style sharpening) on towards infinity and its optimizer's
            squared-gradient averages towards zero, and the first sequence it gets wrong
            knocks it out of the solution. In the task's loss units (mean BCE per target
            bit); keep it well under the task's threshold. ``null`` (the default): every
            step descends.
        flood_mode: what a step under the ``flood`` level does. ``ascend`` (the
            default, Ishida et al.): it climbs the loss. ``skip``: it makes no update and
            leaves the optimizer's state alone, so the loss is no longer driven down but
            never pushed up either, and the optimizer's averages are made only of the
            steps above the level (on NTM-style copy a flooded run's ascent steps were
            seen to tip a solved run over: docs/results.md).
        nonfinite_gradients: what a step whose gradient is not finite does (an overflow
            inside the backward pass, which clipping, applied after it, cannot reach: an
            NTM-style model with a 200-unit controller met one, its gradient through the
            heads' weights growing to 1e37 over one sequence). ``stop`` (the default): the
            run ends with ``TrainingDiverged`` before the weights take the step. ``skip``:
            the weights and the optimizer's state stay as they were, and the step is
            counted (``nonfinite_steps`` in the training rows and ``results.json``).
            Not used with fp16, whose loss scaler skips such steps itself.
        replay_above: once the run has solved, a training batch whose loss is above this
            is trained on again ``replay_times`` times, on every second step until done
            (hard-example replay: [`manntk.training.replay`][manntk.training.replay]),
            for the rare inputs a solved run still gets wrong. Tasks with independent
            batches only (the algorithmic ones). ``null`` (the default): no replay.
        replay_times: how many more times a batch above ``replay_above`` is trained on.
        precision: ``fp32``, or autocast ``bf16`` / ``fp16`` on CUDA.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        seed: seeds weights, sampling noise and dropout.
        threads: CPU threads for PyTorch's intra-op parallelism (default: PyTorch's
            choice). Batch-1 runs (the algorithmic tasks) are fastest with 1, and then
            several runs can share a machine.
        flush_denormal: on the CPU, flush subnormal floats (below ~1e-38) to zero. Long
            recurrences let gradients decay into that range, where x86 arithmetic is one
            to two orders of magnitude slower: an LSTM's backward on pMNIST (784 steps)
            ran 7.7x faster with it. The values flushed are far below anything that
            changes a float32 update. The setting is process-wide and stays after the run.
        compile: compile each layer's chunk with ``torch.compile`` (Inductor) before
            training: same numbers up to float rounding. For fixed-length chunks
            (language modelling, pMNIST; ARMIN 500 trained 1.1x faster than eager on a
            2-core CPU); each new chunk length compiles again, so not for the
            algorithmic tasks. Compiling takes minutes, which count in ``max_minutes``.
            Not with the fused ARMIN cell (already compiled C++).
        log_every: how often a training-metric row (and progress line) is written: every
            so many steps (``50``), once so much wall clock has passed since the last one
            (``2min``; units ``s``, ``min``, ``h``), or both, whichever comes first
            (``[50, 2min]``: a recipe sized for a GPU still reports every few minutes on a CPU).
        eval_every: how often the validation split is scored, in the same forms (``0``:
            only at the end).
        checkpoint_every: how often a checkpoint is written, in the same forms (``0``: only
            at the end; a validation that improves on the best also writes one).
        stop_when_solved: stop once the task reports ``solved`` on validation.
    """

    batch_size: int = attrs.field(default=32, validator=positive)
    tbptt: int = attrs.field(default=100, validator=positive)
    steps: int | None = attrs.field(default=None, validator=positive)
    epochs: float | None = attrs.field(default=None, validator=positive)
    max_minutes: float | None = attrs.field(default=None, validator=positive)
    optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig)
    schedule: ScheduleConfig = attrs.field(factory=ScheduleConfig)
    clip_norm: float | None = attrs.field(default=None, validator=positive)
    clip_value: float | None = attrs.field(default=None, validator=positive)
    ema_decay: float | None = attrs.field(default=None, validator=attrs.validators.optional([positive, probability]))
    skip_spikes: float | None = attrs.field(default=None, validator=_spike_factor)
    flood: float | None = attrs.field(default=None, validator=positive)
    flood_mode: Literal["ascend", "skip"] = attrs.field(default="ascend", validator=_in(("ascend", "skip")))
    nonfinite_gradients: Literal["stop", "skip"] = attrs.field(default="stop", validator=_in(("stop", "skip")))
    replay_above: float | None = attrs.field(default=None, validator=attrs.validators.optional(non_negative))
    replay_times: int = attrs.field(default=1, validator=positive)
    precision: Literal["fp32", "bf16", "fp16"] = attrs.field(default="fp32", validator=_in(("fp32", "bf16", "fp16")))
    device: Literal["auto", "cpu", "cuda"] = attrs.field(default="auto", validator=_in(("auto", "cpu", "cuda")))
    seed: int = 0
    threads: int | None = attrs.field(default=None, validator=positive)
    flush_denormal: bool = True
    compile: bool = False
    log_every: EverySetting = attrs.field(default=50, validator=every_setting(minimum_steps=1))
    eval_every: EverySetting = attrs.field(default=0, validator=every_setting(minimum_steps=0))
    checkpoint_every: EverySetting = attrs.field(default=0, validator=every_setting(minimum_steps=0))
    stop_when_solved: bool = False

    @flood_mode.validator
    def _flood_mode_needs_a_level(self, attribute: attrs.Attribute, value: str) -> None:
        if value != "ascend" and self.flood is None:
            raise ValueError(f"flood_mode {value!r} says what a step under the flood level does: set flood too")

    @schedule.validator
    def _time_schedule_needs_a_time_budget(self, attribute: attrs.Attribute, value: ScheduleConfig) -> None:
        if value.over == "time" and value.name not in ("cosine", "cooldown"):
            raise ValueError(f"schedule.over: time says what {value.name!r} decays over, but only cosine and cooldown "
                             "decay: set schedule.name: cosine or cooldown, or leave over at steps")
        if value.over == "time" and self.max_minutes is None:
            raise ValueError("schedule.over: time decays the rate over the wall-clock budget: set max_minutes too")

    @schedule.validator
    def _solved_momentum_needs_momentum(self, attribute: attrs.Attribute, value: ScheduleConfig) -> None:
        optimizer = self.optimizer
        if value.solved_momentum is not None and optimizer.name in ("rmsprop", "sgd") and optimizer.momentum == 0:
            raise ValueError(f"schedule.solved_momentum changes the momentum of {optimizer.name}, which has none "
                             "(optimizer.momentum: 0): set optimizer.momentum too")

    @replay_times.validator
    def _replay_times_needs_a_level(self, attribute: attrs.Attribute, value: int) -> None:
        if value != 1 and self.replay_above is None:
            raise ValueError("replay_times says how often a batch above replay_above is trained on again: set replay_above too")


@attrs.define
class EvalConfig:
    """Evaluation.

    Attributes:
        batch_size: streams per evaluation batch (language modelling).
        splits: the splits scored at the end of training.
    """

    batch_size: int = attrs.field(default=32, validator=positive)
    splits: list[str] = attrs.field(factory=lambda: ["valid", "test"])


def shipped_recipe_name(instance: Any, attribute: attrs.Attribute, value: str | None) -> None:
    """attrs validator: ``None`` or the whole name of a shipped recipe (one that ``manntk
    recipes list`` lists), the closest names suggested otherwise."""
    if value is None:
        return
    names = [name for folder in recipe_folders() for name in recipe_names(folder)]
    if value not in names:
        close = closest_recipe_names(value, names)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "; `manntk recipes list` names them"
        raise ValueError(f"{attribute.name}: {value!r} is not the name of a shipped recipe{hint}")


@attrs.define
class Recipe:
    """A whole experiment.

    Attributes:
        task: the task plugin node (``{name: copy, max_length: 20}``).
        model: the model; ``input_size``, ``output_size`` default to the task's.
        train: training settings.
        eval: evaluation settings.
        name: a short name, used in run directories and plot legends.
        description: free text.
        cpu_alternative: a shipped recipe's name (``ptb/armin_500_cpu``) that the trainer
            names when this recipe's first steps show that the run would take more than a
            few hours on a CPU (see [`estimate_lines`][manntk.training.estimate.estimate_lines]);
            ``null``: none.
    """

    task: TaskSpec
    model: ModelConfig
    train: TrainConfig = attrs.field(factory=TrainConfig)
    eval: EvalConfig = attrs.field(factory=EvalConfig)
    name: str = ""
    description: str = ""
    cpu_alternative: str | None = attrs.field(default=None, validator=shipped_recipe_name)


PLUGIN_NODES = ("task", "model.cell", "model.addressing", "model.write", "model.write.addressing")
"""Paths of the plugin nodes, whose ``name`` swaps the part and its options together."""


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error naming
    both lines (plain PyYAML keeps the last silently, so a setting could vanish unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides on purpose
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: the safe loader reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r}: first on line {first}, again on line {line}", key_node.start_mark,
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML text as data, with duplicate keys refused (see [`RecipeLoader`][manntk.recipe.RecipeLoader])."""
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: no tags that run code


def read_yaml(path: Path) -> dict[str, Any]:
    """One YAML file as a mapping, with a clear error for a missing file, a file that is not
    UTF-8 (naming the byte offset), bad YAML and duplicate keys (naming the lines)."""
    try:
        data_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"recipe file not found: {path}"]) from None
    except OSError as error:
        raise ConfigError([f"cannot read recipe file {path}: {error.strerror or error}"]) from None
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([
            f"recipe file {path} is not UTF-8 text: byte 0x{data_bytes[error.start]:02x} at byte offset {error.start} "
            f"({error.reason}); save it as UTF-8"
        ]) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError([f"invalid YAML in {path}{line}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"a recipe must be a mapping of keys, got {type(data).__name__} in {path}"])
    return data


def load_mapping(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file with its ``extends:`` chain merged (not yet validated)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError([f"recipe extends itself: {chain}"])
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError([f"extends must be a path, got {parent!r} in {path}"])
    return merge(load_mapping(path.parent / parent, (*_seen, path)), data)


def merge(base: dict[str, Any], child: dict[str, Any], path: str = "") -> dict[str, Any]:
    """``child`` merged into ``base``: mappings recursively, everything else replaced.

    A plugin node whose ``name`` changes is replaced whole (its old options go with it).
    """
    merged = copy.deepcopy(base)
    for key, value in child.items():
        where = f"{path}.{key}" if path else key
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and not _renamed(where, old, value):
            merged[key] = merge(old, value, where)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _renamed(path: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    return path in PLUGIN_NODES and "name" in new and new["name"] != old.get("name")


def apply_overrides(mapping: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` (value parsed as YAML) and ``~key.path`` (delete) overrides."""
    result = copy.deepcopy(mapping)
    errors = []
    for override in overrides:
        try:
            _apply_one(result, override)
        except ValueError as error:
            errors.append(str(error))
    if errors:
        raise ConfigError(errors)
    return result


def _apply_one(mapping: dict[str, Any], override: str) -> None:
    if override.startswith("~"):
        *parents, leaf = _keys(override[1:], override)
        node = _walk(mapping, parents, override, create=False)
        if not isinstance(node, dict) or leaf not in node:
            raise ValueError(f"override {override!r}: there is no key {override[1:]!r} to delete")
        del node[leaf]
        return
    if "=" not in override:
        raise ValueError(f"override {override!r}: expected key.path=value or ~key.path")
    key, text = override.split("=", 1)
    *parents, leaf = _keys(key, override)
    try:
        value = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise ValueError(f"override {override!r}: the value is not valid YAML ({getattr(error, 'problem', error)})") from None
    node = _walk(mapping, parents, override, create=True)
    if leaf == "name" and ".".join(parents) in PLUGIN_NODES and node.get("name") != value:
        node.clear()
    node[leaf] = value


def _keys(path: str, override: str) -> list[str]:
    keys = path.strip().split(".")
    if not all(keys):
        raise ValueError(f"override {override!r}: {path!r} is not a dotted key path")
    return keys


def _walk(mapping: dict[str, Any], keys: list[str], override: str, create: bool) -> Any:
    node: Any = mapping
    for depth, key in enumerate(keys):
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {'.'.join(keys[:depth])!r} is not a mapping")
        if key not in node and create:
            node[key] = {}
        node = node.get(key)
    if create and not isinstance(node, dict):
        raise ValueError(f"override {override!r}: {'.'.join(keys)!r} is not a mapping")
    return node


def recipe_folders() -> list[Path]:
    """The folders of the shipped recipes, where [`find_recipe`][manntk.recipe.find_recipe]
    looks names up: ``manntk/recipes/`` of an installed wheel (the build copies the
    repository's ``recipes/`` there), then the ``recipes/`` folder beside the package in a
    source checkout (an editable install); those that exist."""
    package = Path(__file__).resolve().parent
    return [folder for folder in (package / "recipes", package.parent / "recipes") if folder.is_dir()]


def recipe_names(folder: Path) -> list[str]:
    """The recipes under ``folder`` by name: their paths below it without ``.yaml``
    (``armin_copy``, ``algorithmic/copy/ntm``), sorted."""
    return sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml"))


def find_recipe(recipe: str | Path) -> Path:
    """The recipe file that ``recipe`` names: an existing file, or else the name of a shipped
    recipe (one of [`recipe_folders`][manntk.recipe.recipe_folders]), with or without
    ``.yaml`` and a leading ``recipes/``: its whole name (``algorithmic/copy/ntm``) or the
    end of exactly one name (``copy/ntm``).

    Raises:
        manntk.config.ConfigError: neither a file nor a recipe name (the closest names are
            suggested), or the end of several names (they are listed).
    """
    path = Path(recipe)
    if path.exists() or path.is_absolute():
        return path  # a missing absolute path is reported by read_yaml, as a file
    key = path.as_posix().removeprefix("recipes/")
    key = key.removesuffix(".yaml").removesuffix(".yml")
    names: list[str] = []
    for folder in recipe_folders():
        here = recipe_names(folder)
        if key in here:
            return folder / f"{key}.yaml"
        ending = [name for name in here if name.endswith(f"/{key}")]
        if len(ending) == 1:
            return folder / f"{ending[0]}.yaml"
        if ending:
            raise ConfigError([f"recipe {str(recipe)!r} could be any of: {', '.join(ending)} (in {folder}); give more of its name"])
        names += here
    if path.suffix in (".yaml", ".yml"):
        message = f"recipe file not found: {recipe}"
    else:
        where = ", ".join(str(folder) for folder in recipe_folders()) or "none found"
        message = f"no recipe file or shipped recipe named {str(recipe)!r} (shipped recipes: {where}; `manntk recipes list` names them)"
    close = closest_recipe_names(key, names)
    raise ConfigError([f"{message}; did you mean {' or '.join(map(repr, close))}?" if close else message])


def closest_recipe_names(key: str, names: list[str]) -> list[str]:
    """Up to three of ``names`` closest to ``key``: by whole name, else by their ends
    (``copy/nmt`` finds ``algorithmic/copy/ntm``)."""
    close = difflib.get_close_matches(key, names, n=3)
    if close:
        return close
    ends: dict[str, list[str]] = {}
    for name in names:
        parts = name.split("/")
        for start in range(1, len(parts)):
            ends.setdefault("/".join(parts[start:]), []).append(name)
    found: list[str] = []
    for end in difflib.get_close_matches(key, list(ends), n=3):
        found += [name for name in ends[end] if name not in found]
    return found[:3]


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), plugins: Plugins | None = None) -> Recipe:
    """Load, merge, override and validate a recipe: a file, or a shipped recipe's name
    (see [`find_recipe`][manntk.recipe.find_recipe]).

    Raises:
        manntk.config.ConfigError: every problem at once, each with its path.
    """
    found = find_recipe(path)
    mapping = apply_overrides(load_mapping(found), list(overrides))
    return recipe_from_mapping(mapping, plugins, source=str(found))


def recipe_from_mapping(mapping: Any, plugins: Plugins | None = None, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping; errors name ``source``."""
    if not isinstance(mapping, dict):
        raise ConfigError([f"{source}: a recipe must be a mapping of keys, got {type(mapping).__name__}"])
    registry = (plugins or default_plugins()).registry
    try:
        return structure(mapping, Recipe, registry, path="")
    except ConfigError as error:
        raise ConfigError([f"{source}: {e}" for e in error.errors]) from None


def recipe_to_mapping(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (what a run saves), loadable by ``recipe_from_mapping``."""
    return _plain(recipe)


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()
"""What [`setting_differences`][manntk.recipe.setting_differences] puts for a setting one side lacks."""


def setting_differences(first: dict[str, Any], second: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings (leaves, by dotted path such as ``model.cell.hidden_size``) whose values
    differ between two recipe mappings, each with its two values (``ABSENT`` where a side
    lacks it); lists are compared whole."""
    a, b = _leaves(first), _leaves(second)
    return {key: (a.get(key, ABSENT), b.get(key, ABSENT))
            for key in sorted(a.keys() | b.keys()) if a.get(key, ABSENT) != b.get(key, ABSENT)}


def _leaves(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(value: Any) -> Any:
    if isinstance(value, PartSpec):
        options = _plain(value.config) if value.config is not None else {}
        return {"name": value.name, **options}
    if attrs.has(type(value)):
        return {field.name: _plain(getattr(value, field.name)) for field in attrs.fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
