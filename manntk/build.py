"""From a recipe-shaped mapping to a [`MemoryRNN`][manntk.engine.MemoryRNN]."""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch
from torch import Tensor, nn

from manntk.config import AddressingSpec, CellSpec, ConfigError, TaskSpec, WriteSpec, non_negative, positive, probability, structure
from manntk.context import BuildContext
from manntk.engine import READ_ORDERS, MemoryLayer, MemoryRNN
from manntk.plugins import Plugins, default_plugins
from manntk.registry import PartError, Registry
from manntk.tasks.base import Task, TaskContext

if TYPE_CHECKING:
    from manntk.recipe import Recipe


@attrs.define
class MemoryConfig:
    """The slot memory of each layer.

    Every slot starting equal is a trap for content addressing: with equal slots and
    uniform initial head weights every address is uniform, a uniform write keeps the
    slots equal, and an NTM-style model never learns which slot is which.
    [`manntk.testing.check_symmetry`][manntk.testing.check_symmetry] catches it.

    Attributes:
        slots: N, the number of slots.
        width: D, the width of a slot, which is the read size ``d_r`` (default: the
            cell's hidden size, as in the paper).
        init: how the initial memory is made: ``constant`` (every entry ``value``; NTM
            replications use a small constant such as 1e-6, with initial head weights
            that are not uniform) or ``uniform`` (each entry drawn from
            ``U(-1/sqrt(N + D), 1/sqrt(N + D))`` when the model is built, as pytorch-ntm;
            saved with the weights).
        learned: the initial memory is a trained ``[N, D]`` parameter (as the authors'
            ARMIN code), starting from ``init``.
        per_sequence: with ``init: uniform``, every new sequence draws a memory of its
            own instead of sharing the one drawn at build time.
        value: the entries of the ``constant`` start.
    """

    slots: int = attrs.field(default=20, validator=positive)
    width: int | None = attrs.field(default=None, validator=positive)
    init: Literal["constant", "uniform"] = attrs.field(default="constant", validator=attrs.validators.in_(("constant", "uniform")))
    learned: bool = False
    per_sequence: bool = False
    value: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.per_sequence and (self.init != "uniform" or self.learned):
            raise ValueError("memory.per_sequence draws a uniform memory for every sequence: it needs init: uniform and learned: false")

    def start(self, slots: int, width: int) -> Tensor:
        """The ``[N, D]`` initial memory of a layer (drawn from torch's generator for ``uniform``)."""
        if self.init == "uniform":
            return torch.empty(slots, width).uniform_(-self.uniform_bound(slots, width), self.uniform_bound(slots, width))
        return torch.full((slots, width), float(self.value))

    @staticmethod
    def uniform_bound(slots: int, width: int) -> float:
        """``1 / sqrt(N + D)``, the bound of the ``uniform`` start."""
        return 1.0 / math.sqrt(slots + width) if slots + width else 0.0


@attrs.define
class ModelConfig:
    """A model: layers of cell + addressing + write over a slot memory.

    Attributes:
        cell: the cell plugin node (``{name: armin, hidden_size: 100}``).
        input_size: width of ``x_t``, or the vocabulary size with ``embedding`` (in a
            recipe: the task's, unless given).
        addressing: the addressing plugin node (``none``: no memory, e.g. an LSTM).
        write: the write plugin node.
        memory: slots and width of each layer's memory.
        layers: number of stacked layers, each with its own memory.
        output_size: with it, a Linear head maps ``o_t`` to this width; without, the
            model outputs ``o_t``.
        embedding: with it, inputs are token ids ``[B, T]`` embedded to this width.
        dropout: dropout on every layer's output, in training only.
        discrete_eval: in evaluation, read and write hard addresses by slot index.
        fast: run each chunk on the fastest path verified against the plain one where the
            parts, device and dtype allow (an ARMIN layer on the CPU: one C++ kernel per
            chunk, ``manntk.fast.armin_sequence``); ``false`` forces the plain per-step
            path everywhere.
        read: where in the step the read happens. ``before`` the cell (the ARMIN paper,
            figure 1): the head keys from ``[x_t, h_{t-1}]`` and the cell takes this
            step's read ``r_t``. ``after`` it (loudinthecloud/pytorch-ntm, ``ntm/ntm.py``):
            the cell takes the previous step's read ``r_{t-1}`` (zeros at the start of a
            sequence, carried across TBPTT chunks in the state), the head keys from
            ``[x_t, h_t]``, reads ``r_t`` from ``M_{t-1}`` before the write, and the layer
            outputs ``[h_t, r_t]`` (``d_h + D`` units) in place of the cell's ``o_t``.
            ``after`` always runs the plain per-step path (the ARMIN chunk kernel
            implements ``before`` only).
    """

    cell: CellSpec
    input_size: int | None = attrs.field(default=None, validator=positive)
    addressing: AddressingSpec = attrs.field(factory=lambda: AddressingSpec("none"))
    write: WriteSpec = attrs.field(factory=lambda: WriteSpec("none"))
    memory: MemoryConfig = attrs.field(factory=MemoryConfig)
    layers: int = attrs.field(default=1, validator=positive)
    output_size: int | None = attrs.field(default=None, validator=positive)
    embedding: int | None = attrs.field(default=None, validator=positive)
    dropout: float = attrs.field(default=0.0, validator=[non_negative, probability])
    discrete_eval: bool = True
    fast: bool = True
    read: Literal["before", "after"] = attrs.field(default="before", validator=attrs.validators.in_(READ_ORDERS))


def build_model(mapping: dict[str, Any] | ModelConfig, plugins: Plugins | None = None) -> MemoryRNN:
    """Build a model from a recipe-shaped mapping (or a [`ModelConfig`][manntk.build.ModelConfig]).

    Example:
        ```python
        model = manntk.build_model({
            "input_size": 10, "output_size": 8,
            "cell": {"name": "armin", "hidden_size": 100},
            "addressing": {"name": "auto"},
            "write": {"name": "overwrite"},
            "memory": {"slots": 50, "width": 32},
        })
        y, state = model(torch.randn(4, 20, 10))    # y: [4, 20, 8]
        ```

    Raises:
        manntk.config.ConfigError: every problem of the mapping at once, with its path.
    """
    plugins = plugins or default_plugins()
    registry = plugins.registry
    config = mapping if isinstance(mapping, ModelConfig) else structure(mapping, ModelConfig, registry)
    if config.input_size is None:
        raise ConfigError(["required key missing @ $.model.input_size"])
    check_memory_fits(config, 1, torch.device("cpu"), plugins)  # the initial memories are built on the CPU
    input_size = config.embedding or config.input_size
    layers = []
    for index in range(config.layers):
        layer = _build_layer(config, input_size, BuildContext(input_size, 0, 0, 0, registry, path="model"), index)
        layers.append(layer)
        input_size = layer.output_size
    embedding = nn.Embedding(config.input_size, config.embedding) if config.embedding else None
    head = nn.Linear(input_size, config.output_size) if config.output_size else None
    return MemoryRNN(layers, embedding=embedding, head=head, dropout=config.dropout)


def _build_layer(config: ModelConfig, input_size: int, context: BuildContext, index: int) -> MemoryLayer:
    slots, width = memory_shape(config, context.registry)
    context = context.with_(input_size=input_size, slots=slots, width=width)
    cell = context.build(config.cell, path="model.cell")
    context = context.with_(hidden_size=cell.hidden_size)
    addressing = context.build(config.addressing, path="model.addressing")
    write = context.build(config.write, path="model.write")
    return MemoryLayer(
        cell, addressing, write, slots, width,
        memory_start=config.memory.start(slots, width),
        learned_start=config.memory.learned,
        resample_bound=config.memory.uniform_bound(slots, width) if config.memory.per_sequence else None,
        discrete_eval=config.discrete_eval,
        fast=config.fast,
        read=config.read,
    )


def memory_shape(config: ModelConfig, registry: Registry) -> tuple[int, int]:
    """``(slots, width)`` of each layer's memory; ``(0, 0)`` when the addressing uses none."""
    addressing_entry = registry.get("addressing", config.addressing.name)
    if not getattr(addressing_entry.factory, "uses_memory", True):
        return 0, 0
    width = config.memory.width or getattr(config.cell.config, "hidden_size", None)
    if width is None:
        raise ConfigError([f"required: cell {config.cell.name!r} has no hidden_size option to take it from @ $.model.memory.width"])
    return config.memory.slots, width


def check_memory_fits(config: ModelConfig, batch_size: int, device: torch.device, plugins: Plugins | None = None) -> None:
    """Raise [`ConfigError`][manntk.config.ConfigError] when the slot memories of a batch
    (layers x batch x slots x width float32 numbers) alone need more than ``device`` has
    free: said with the estimate before anything is allocated, instead of an allocator's
    traceback (or the machine swapping) once the run has started."""
    slots, width = memory_shape(config, (plugins or default_plugins()).registry)
    needed = 4 * config.layers * batch_size * slots * width
    available = available_bytes(device)
    if needed > available:
        raise ConfigError([
            f"the memory cannot fit: {config.layers} layer(s) x batch {batch_size} x {slots} slots x {width} wide x 4 bytes "
            f"= {_bytes(needed)}, but {device.type} has {_bytes(available)} free; lower model.memory.slots, "
            f"model.memory.width or the batch size @ $.model.memory"
        ])


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free bytes, or the system's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no way to tell (Windows): assume it fits
        return sys.maxsize


def _bytes(count: int) -> str:
    return f"{count:,} bytes ({count / 2**30:,.1f} GiB)"


def build_task(spec: TaskSpec, context: TaskContext | None = None, plugins: Plugins | None = None) -> Task:
    """Build the task that a ``task:`` node names."""
    registry = (plugins or default_plugins()).registry
    entry = registry.get("tasks", spec.name)
    config = spec.config if spec.config is not None or entry.config is None else entry.config()
    try:
        return entry.factory(config, context or TaskContext())
    except ConfigError:
        raise
    except ValueError as error:  # options the task's data cannot take
        raise ConfigError([f"task {spec.name!r}: {error} @ $.task"]) from None
    except Exception as error:  # a plugin's task may raise anything: one line naming it and where it comes from
        raise PartError("task", "tasks", entry, error) from error


def model_config_for(config: ModelConfig, task: Task) -> ModelConfig:
    """``config`` with the task's input and output sizes filled in where the recipe left them out."""
    if task.tokens and config.embedding is None:
        raise ConfigError([f"the task gives token ids (vocabulary {task.input_size}): set model.embedding @ $.model.embedding"])
    return attrs.evolve(
        config,
        input_size=config.input_size or task.input_size,
        output_size=config.output_size or task.output_size,
    )


def build_experiment(recipe: "Recipe", data_root: str | None = None, plugins: Plugins | None = None) -> tuple[Task, MemoryRNN]:
    """The task and the model of a recipe (the model sized by the task)."""
    context = TaskContext.from_environment(data_root, recipe.train.seed, recipe.train.tbptt)
    task = build_task(recipe.task, context, plugins)
    unknown = [split for split in recipe.eval.splits if split not in task.splits]
    if unknown:
        raise ConfigError([f"unknown split {split!r}; task {recipe.task.name!r} has: {', '.join(task.splits)} @ $.eval.splits"
                           for split in unknown])
    return task, build_model(model_config_for(recipe.model, task), plugins)
