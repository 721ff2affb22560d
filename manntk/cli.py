"""The ``manntk`` command: the core commands (``train``, ``eval``, ``recipes``,
``plugins``) and every command a plugin adds through the ``register_commands`` hook
(manntk's own tools in ``manntk/tools/`` among them)."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

import torch

from manntk.config import ConfigError, UsageError
from manntk.data.files import DataError
from manntk.registry import PartError
from manntk.plugins import Plugins, default_plugins, describe_failure, load_plugins
from manntk.tasks.base import Metrics
from manntk.training.checkpoint import CheckpointError
from manntk.training.metrics import MetricsError
from manntk.training.ownership import RunDirectoryError
from manntk.training.signals import TrainingInterrupted
from manntk.training.trainer import TrainingDiverged

__all__ = ["Parser", "UsageError", "build_parser", "format_plugins", "main"]


class Parser(argparse.ArgumentParser):
    """argparse's parser, forgiving in two ways: a command's options and positionals may
    come in any order (``manntk train R --dry-run key=value`` reads like ``manntk train R
    key=value --dry-run``: a parser without sub-commands parses as ``parse_intermixed_args``
    does, options first, then positionals), and an invalid choice (a mistyped command, a
    ``--device`` value) names the closest valid one. The parsers of sub-commands, plugins'
    commands among them, are of this class too (argparse gives them their parent's)."""

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):  # type: ignore[override]
        """Options and positionals intermixed where argparse supports it (no sub-commands,
        no positional in a mutually exclusive group); the ordinary parse otherwise."""
        if self._intermixing or not self._intermixable():
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls parse_known_args itself (Python < 3.13)
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def _intermixable(self) -> bool:
        positionals = self._get_positional_actions()
        if any(action.nargs in (argparse.PARSER, argparse.REMAINDER) for action in positionals):
            return False
        return not any(action in positionals for group in self._mutually_exclusive_groups for action in group._group_actions)

    def _check_value(self, action: argparse.Action, value: object) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            close = difflib.get_close_matches(str(value), [str(choice) for choice in action.choices or ()], n=1)
            if not close:
                raise
            raise argparse.ArgumentError(action, f"{error.message}; did you mean {close[0]!r}?") from None


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``manntk`` command (also the source of the CLI reference),
    with the commands of ``plugins`` (default: the installed plugins)."""
    loaded = plugins or default_plugins()
    parser = Parser(prog="manntk", description="Memory-augmented recurrent networks from interchangeable parts.")
    parser.add_argument("--version", action="store_true", help="print the manntk version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error that is otherwise said in one line (also: MANNTK_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins = commands.add_parser("plugins", help="list plugins, what each registers, and failures")
    plugins.add_argument("--strict", action="store_true", help="raise the first plugin failure instead of listing it")
    plugins.set_defaults(handler=_plugins)
    train = commands.add_parser("train", help="train a recipe (or resume a run)")
    train.add_argument("recipe", nargs="?", help="recipe YAML file, or a shipped recipe's name (armin_copy, copy/ntm)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides: key.path=value (YAML) or ~key.path")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory (runs/latest: the newest) from its latest checkpoint")
    train.add_argument("--run-dir", help="the run directory (default: runs/<name>-<timestamp>)")
    train.add_argument("--runs-root", default="runs", help="where new run directories go (default: runs)")
    train.add_argument("--data", help="data folder to look in first (also: $MANNTK_DATA)")
    train.add_argument("--dry-run", action="store_true",
                       help="validate, build, print the resolved recipe (as the run would save it) and the parameter count, exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)
    evaluate = commands.add_parser("eval", help="score a run's latest checkpoint on a split")
    evaluate.add_argument("run", help="run directory (runs/latest: the newest run)")
    evaluate.add_argument("--split", default="test", help="split to score (default: test)")
    evaluate.add_argument("--data", help="data folder to look in first (also: $MANNTK_DATA)")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.add_argument("--failures", nargs="?", type=int, const=20, default=None, metavar="N",
                          help="also list the examples the model gets wrong (the first N, default 20), "
                               "by the index manntk inspect --index takes")
    evaluate.set_defaults(handler=_eval)
    recipes = commands.add_parser("recipes", help="list or validate recipes")
    recipe_commands = recipes.add_subparsers(dest="recipes_command", metavar="ACTION", required=True)
    listing = recipe_commands.add_parser("list", help="the shipped recipes by name, or the recipes in a folder")
    listing.add_argument("folder", nargs="?", help="folder to list (default: the shipped recipes, by the names `train` takes)")
    listing.set_defaults(handler=_recipes_list)
    validate = recipe_commands.add_parser("validate", help="validate recipe files; every problem is reported")
    validate.add_argument("paths", nargs="+", help="recipe files")
    validate.set_defaults(handler=_recipes_validate)
    add_plugin_commands(commands, loaded)
    return parser


def add_plugin_commands(commands: argparse._SubParsersAction, plugins: Plugins) -> None:
    """Let every plugin add its commands; one that fails is recorded in ``plugins.failures``
    (and listed by ``manntk plugins``) without breaking the others."""
    for impl in plugins.manager.hook.register_commands.get_hookimpls():
        before = set(commands.choices)
        try:
            impl.function(commands=commands)
        except (Exception, SystemExit) as error:  # a broken plugin must not break the command line
            plugins.fail(impl.plugin_name, f"register_commands: {describe_failure(error)}")
            continue
        added = [("commands", name) for name in commands.choices if name not in before]
        contributed = plugins.contributions.setdefault(impl.plugin_name, [])
        contributed += [entry for entry in added if entry not in contributed]


DEBUG_VARIABLE = "MANNTK_DEBUG"
"""Set to ``1`` (anything but empty and ``0``), it does what ``manntk --debug`` does."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``manntk`` command; returns the exit status.

    An error the command expects (a bad recipe, a missing file, a part of a plugin that
    fails to build, ...) is said in one line; with ``--debug`` or ``MANNTK_DEBUG=1`` its
    full traceback follows.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from manntk import __version__

        print(f"manntk {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except BrokenPipeError:  # the reader went away (`manntk recipes list | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConfigError, UsageError) as error:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same problem: rank 0 says it
            say(args, f"error: {error}", error)
        return 2
    except PartError as error:  # a plugin's constructor (or a built-in's check of its options) raised
        say(args, f"error: {error}", error, hint=True)
        return 1
    except (CheckpointError, DataError, MetricsError, RunDirectoryError, TrainingDiverged) as error:
        say(args, f"{type(error).__name__}: {error}", error)
        return 1
    except TrainingInterrupted as error:
        say(args, f"stopped: {error}", error)
        return error.status
    except KeyboardInterrupt as error:  # a second Ctrl-C, or one outside training
        say(args, "interrupted", error)
        return 130
    except OSError as error:  # disk full, a read-only or missing directory, permission denied
        say(args, f"error: {describe_os_error(error)}", error)
        return 1
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        say(
            args,
            f"error: out of memory: {allocator_message(error)}\n"
            "  lower train.batch_size (or eval.batch_size), or the model's sizes (model.memory.slots, "
            "model.memory.width, the cell's hidden_size, model.layers)",
            error,
        )
        return 1


def debugging(args: argparse.Namespace) -> bool:
    """Whether full tracebacks were asked for: ``--debug``, or ``$MANNTK_DEBUG`` set (not to ``0``)."""
    return args.debug or os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")


def say(args: argparse.Namespace, text: str, error: BaseException, hint: bool = False) -> None:
    """Print ``manntk <command>: <text>`` on stderr, then ``error``'s traceback when
    [`debugging`][manntk.cli.debugging], or else with ``hint`` how to see it (on the same line)."""
    debug = debugging(args)
    if hint and not debug:
        text += f" (the traceback: manntk --debug {args.command} ..., or {DEBUG_VARIABLE}=1)"
    print(f"manntk {args.command}: {text}", file=sys.stderr)
    if debug:
        traceback.print_exception(error, file=sys.stderr)


def describe_os_error(error: OSError) -> str:
    """An OS error as one line: the path(s) and the system's words (``strerror``)."""
    paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    reason = error.strerror or str(error) or type(error).__name__
    return f"{paths}: {reason}" if paths else reason


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator's failure (CUDA's, or the CPU's "can't allocate")."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "DefaultCPUAllocator" in text


def allocator_message(error: BaseException) -> str:
    """The allocator's own first line (it holds the size that failed), without the C++ source location."""
    text = str(error).strip() or type(error).__name__
    if "DefaultCPUAllocator" in text:
        text = text[text.index("DefaultCPUAllocator"):]
    return text.splitlines()[0]


def format_plugins(plugins: Plugins) -> str:
    """A readable listing: each plugin with the parts it registered, then failures."""
    lines = []
    for kind in plugins.registry.kinds:
        lines.append(f"{kind}:")
        for entry in plugins.registry.entries(kind):
            lines.append(f"  {entry.name:<20} from {entry.plugin}")
    lines.append("plugins:")
    for name, contributed in plugins.contributions.items():
        parts = ", ".join(f"{kind}/{part}" for kind, part in contributed) or "(registers nothing)"
        lines.append(f"  {name}: {parts}")
    if plugins.failures:
        lines.append("failed plugins:")
        for failure in plugins.failures:
            lines.append(f"  {failure}")
    return "\n".join(lines)


def _plugins(args: argparse.Namespace) -> int:
    plugins = load_plugins(strict=args.strict)
    add_plugin_commands(argparse.ArgumentParser().add_subparsers(), plugins)  # to find commands that fail to register
    print(format_plugins(plugins))
    return 1 if plugins.failures else 0


def _train(args: argparse.Namespace) -> int:
    import yaml

    from manntk.build import build_experiment, check_memory_fits
    from manntk.recipe import load_recipe, recipe_to_mapping
    from manntk.training import train
    from manntk.training.distributed import pick_device
    from manntk.training.ownership import resolve_run_dir

    if args.resume:
        if args.recipe or args.overrides:
            raise UsageError("--resume continues a run with its saved recipe: give no recipe or overrides")
        recipe = load_recipe(resolve_run_dir(args.resume) / "recipe.yaml")
        result = train(recipe, args.resume, resume=True, progress=not args.no_progress, data_root=args.data)
    else:
        if not args.recipe:
            raise UsageError("give a recipe (a file or a shipped recipe's name), or --resume RUN")
        recipe = load_recipe(args.recipe, args.overrides)
        if args.dry_run:
            check_memory_fits(recipe.model, recipe.train.batch_size, pick_device(recipe.train.device))
            _, model = build_experiment(recipe, args.data)
            count = sum(p.numel() for p in model.parameters())
            print(yaml.safe_dump(recipe_to_mapping(recipe), sort_keys=False), end="")
            print(f"{args.recipe}: valid; task {recipe.task.name}; model {count:,} parameters")
            return 0
        result = train(recipe, args.run_dir, runs_root=args.runs_root, progress=not args.no_progress, data_root=args.data)
    print(f"run: {result.run_dir}")
    print(f"steps: {result.step} ({result.stop_reason}); training time {result.seconds:.1f} s")
    if result.solved_step is not None:
        print(f"solved at step {result.solved_step}")
    for split, metrics in result.metrics.items():
        print(f"{split}: {metrics_line(metrics)}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from manntk.training.evaluate import evaluate, failed_examples, load_judged_model
    from manntk.training.ownership import resolve_run_dir

    run = resolve_run_dir(args.run)
    recipe, task, model, device = load_judged_model(run, args.split, device=args.device, data_root=args.data)
    metrics = evaluate(model, task, args.split, recipe.eval.batch_size, device, recipe.train.precision)
    print(f"{run} [{args.split}]: {metrics_line(metrics)}")
    if args.failures is not None:
        if args.failures < 1:
            raise UsageError(f"--failures takes a positive count, got {args.failures}")
        try:
            failed = failed_examples(model, task, args.split, recipe.eval.batch_size, device, recipe.train.precision)
        except ValueError as error:
            raise UsageError(f"--failures: {error}") from None
        print(f"{len(failed)} example(s) wrong" + (f"; the first {args.failures}:" if len(failed) > args.failures else ":" if failed else ""))
        for example in failed[: args.failures]:
            details = ", ".join(f"{key} {value:.4g}" for key, value in example.items() if key != "index")
            print(f"  #{int(example['index'])}: {details}")
        if failed:
            print(f"draw one: manntk inspect {run} --split {args.split} --index {int(failed[0]['index'])}")
    return 0


SHOWN_IN_FULL = 8
"""A breakdown (``bce_by_length``) with at most this many keys is printed in full; a longer
one by its extremes (the whole of it is in metrics.jsonl and results.json)."""


def metrics_line(metrics: Metrics) -> str:
    """A split's metrics on one line: ``bce 0.6931, ...``; a breakdown such as
    ``bce_by_length`` as ``bce_by_length {1: 0.6931, 2: ...}``, or, past
    ``SHOWN_IN_FULL`` keys, as ``{50 keys; lowest 0.0012 at 3, highest 0.0410 at 50}``."""

    def shown(value: float | dict[str, float]) -> str:
        if isinstance(value, dict) and len(value) > SHOWN_IN_FULL:
            low, high = min(value, key=value.__getitem__), max(value, key=value.__getitem__)
            return f"{{{len(value)} keys; lowest {value[low]:.4f} at {low}, highest {value[high]:.4f} at {high}}}"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{key}: {item:.4f}" for key, item in value.items()) + "}"
        return f"{value:.4f}"

    return ", ".join(f"{key} {shown(value)}" for key, value in metrics.items())


def _recipes_list(args: argparse.Namespace) -> int:
    from manntk.recipe import read_yaml, recipe_folders, recipe_names

    if args.folder is None:  # the shipped recipes, by name
        folders = recipe_folders()
        if not folders:
            raise UsageError("no shipped recipes found (neither manntk/recipes nor a checkout's recipes/): give a folder")
        folder = folders[0]
        print(f"# {folder}: train one with `manntk train NAME`")
        entries = [(name, folder / f"{name}.yaml") for name in recipe_names(folder)]
    else:
        folder = Path(args.folder)
        entries = [(str(path), path) for path in sorted(folder.rglob("*.yaml"))]
    if not entries:
        raise UsageError(f"no recipes (*.yaml) in {folder}")
    for name, path in entries:
        data = read_yaml(path)
        print(f"{name:<48} {data.get('description', '')}")
    return 0


def _recipes_validate(args: argparse.Namespace) -> int:
    from manntk.recipe import load_recipe

    failed = 0
    for path in args.paths:
        try:
            load_recipe(path)
        except ConfigError as error:
            failed += 1
            print(error, file=sys.stderr)
        else:
            print(f"{path}: valid")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
