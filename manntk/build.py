"""From a recipe-shaped mapping to a [`MemoryRNN`][manntk.engine.MemoryRNN]."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch
from torch import Tensor, nn

from manntk.config import AddressingSpec, CellSpec, ConfigError, TaskSpec, WriteSpec, non_negative, positive, probability, structure
from manntk.context import BuildContext
from manntk.engine import MemoryLayer, MemoryRNN
from manntk.plugins import Plugins, default_plugins
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
    addressing_entry = context.registry.get("addressing", config.addressing.name)
    uses_memory = getattr(addressing_entry.factory, "uses_memory", True)
    hidden_size = getattr(config.cell.config, "hidden_size", None)
    if uses_memory:
        slots = config.memory.slots
        width = config.memory.width or hidden_size
        if width is None:
            raise ValueError(f"model.memory.width is required: cell {config.cell.name!r} has no hidden_size option")
    else:
        slots = width = 0
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
    )


def build_task(spec: TaskSpec, context: TaskContext | None = None, plugins: Plugins | None = None) -> Task:
    """Build the task that a ``task:`` node names."""
    registry = (plugins or default_plugins()).registry
    entry = registry.get("tasks", spec.name)
    config = spec.config if spec.config is not None or entry.config is None else entry.config()
    try:
        return entry.factory(config, context or TaskContext())
    except ValueError as error:
        raise ValueError(f"task ({spec.name!r}): {error}") from error


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
    return task, build_model(model_config_for(recipe.model, task), plugins)
