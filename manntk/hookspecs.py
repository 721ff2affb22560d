"""The plugin contract: pluggy hook specifications of manntk.

Plugins (the built-ins included) implement these hooks to add parts to the registry and
commands to the ``manntk`` command line. Hooks run while a model is *built*, never inside
``forward``: they register factories, and the engine then calls plain
``torch.nn.Module`` objects.

Every part hook receives a ``register`` callback::

    register(name: str, factory: Callable[[Config, BuildContext], nn.Module],
             config: type | None = None) -> None

``name`` is what recipes write after ``name:``; ``config`` is an attrs class that
structures the other keys of the recipe node (``None``: the node takes no options);
``factory(config, context)`` returns the part. A name registered twice is an error that
names both plugins.
"""

from __future__ import annotations

import argparse
from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("manntk")
hookimpl = pluggy.HookimplMarker("manntk")

Register = Callable[..., None]


@hookspec
def register_cells(register: Register) -> None:
    """Register recurrent cells.

    A cell is a [`Cell`][manntk.parts.Cell]: from the input ``x_t`` ``[B, input_size]``,
    its state (a dict holding at least ``"h"`` ``[B, hidden_size]``) and the memory read
    ``r_t`` ``[B, read_size]`` it computes the output ``o_t`` ``[B, output_size]`` and
    the new state. Its factory gets ``context.input_size`` and ``context.width`` (the read size).

    Args:
        register: ``register(name, factory, config=None)``.
    """


@hookspec
def register_addressing(register: Register) -> None:
    """Register addressing mechanisms.

    An addressing is an [`Addressing`][manntk.parts.Addressing]: from ``x_t``
    ``[B, input_size]``, a controller state ``h`` ``[B, hidden_size]``, the memory
    ``M`` ``[B, slots, width]`` and its own state it computes an
    [`Address`][manntk.parts.Address]: weights ``[B, slots]`` that sum to one, and the
    slot index ``[B]`` when the weights are one-hot. Its factory gets
    ``context.input_size``, ``context.hidden_size``, ``context.slots`` and
    ``context.width``.

    Args:
        register: ``register(name, factory, config=None)``.
    """


@hookspec
def register_writes(register: Register) -> None:
    """Register write policies.

    A write is a [`Write`][manntk.parts.Write]: from the memory ``M``
    ``[B, slots, width]``, the new controller state ``h_t`` ``[B, hidden_size]``, the
    input ``x_t`` and the read [`Address`][manntk.parts.Address] it computes the new
    memory and its own state. Its factory gets the same context as an addressing, and
    ``context.build(spec, path=...)`` to build a head of its own.

    Args:
        register: ``register(name, factory, config=None)``.
    """


@hookspec
def register_tasks(register: Register) -> None:
    """Register tasks: data and the way to score a model on it.

    A task is a [`Task`][manntk.tasks.base.Task]: it serves training batches by index
    (so runs resume exactly), evaluation batches per split, and scores model outputs. Its
    factory gets a [`TaskContext`][manntk.tasks.base.TaskContext] (data folder, whether it
    may download, the run's seed).

    Args:
        register: ``register(name, factory, config=None)``.
    """


@hookspec
def register_commands(commands: argparse._SubParsersAction) -> None:
    """Add subcommands to the ``manntk`` command line.

    manntk's own tools (``bench``, ``plot``, ``inspect``, ``reproduce``, ``demo``) are
    added through this hook, as a third-party plugin's would be. A command failing to
    register is reported by ``manntk plugins`` and does not break the other commands.

    Args:
        commands: the sub-parsers of ``manntk``'s argparse parser. Add a command with
            ``parser = commands.add_parser(name, help=...)`` and give it a handler with
            ``parser.set_defaults(handler=function)``: ``function(args) -> int`` runs
            the command and returns the exit status; raising
            [`UsageError`][manntk.config.UsageError] prints ``manntk NAME: error: ...``
            and exits with status 2.
    """
