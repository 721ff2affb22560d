"""The ``manntk`` command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from manntk.config import ConfigError
from manntk.data.files import DataError
from manntk.plugins import Plugins, load_plugins
from manntk.training.checkpoint import CheckpointError
from manntk.training.trainer import TrainingDiverged


class UsageError(ValueError):
    """A command line that cannot work as given."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``manntk`` command (also the source of the CLI reference)."""
    parser = argparse.ArgumentParser(prog="manntk", description="Memory-augmented recurrent networks from interchangeable parts.")
    parser.add_argument("--version", action="store_true", help="print the manntk version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins = commands.add_parser("plugins", help="list plugins, what each registers, and failures")
    plugins.add_argument("--strict", action="store_true", help="raise the first plugin failure instead of listing it")
    plugins.set_defaults(handler=_plugins)
    train = commands.add_parser("train", help="train a recipe (or resume a run)")
    train.add_argument("recipe", nargs="?", help="recipe YAML file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides: key.path=value (YAML) or ~key.path")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its latest checkpoint")
    train.add_argument("--run-dir", help="the run directory (default: runs/<name>-<timestamp>)")
    train.add_argument("--runs-root", default="runs", help="where new run directories go (default: runs)")
    train.add_argument("--data", help="data folder to look in first (also: $MANNTK_DATA)")
    train.add_argument("--dry-run", action="store_true", help="validate, build, print the parameter count, exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)
    evaluate = commands.add_parser("eval", help="score a run's latest checkpoint on a split")
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--split", default="test", help="split to score (default: test)")
    evaluate.add_argument("--data", help="data folder to look in first (also: $MANNTK_DATA)")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.set_defaults(handler=_eval)
    recipes = commands.add_parser("recipes", help="list or validate recipes")
    recipe_commands = recipes.add_subparsers(dest="recipes_command", metavar="ACTION", required=True)
    listing = recipe_commands.add_parser("list", help="the recipes shipped in a folder")
    listing.add_argument("folder", nargs="?", default="recipes", help="folder to list (default: recipes)")
    listing.set_defaults(handler=_recipes_list)
    validate = recipe_commands.add_parser("validate", help="validate recipe files; every problem is reported")
    validate.add_argument("paths", nargs="+", help="recipe files")
    validate.set_defaults(handler=_recipes_validate)
    demo = commands.add_parser("demo", help="build ARMIN, AwTA, TARDIS, NTM-style and LSTM models and run each forward and backward")
    demo.add_argument("--batch-size", type=int, default=4, help="sequences in the batch (default: 4)")
    demo.add_argument("--steps", type=int, default=20, help="sequence length (default: 20)")
    demo.set_defaults(handler=_demo)
    plot = commands.add_parser("plot", help="learning curves of one or several runs as a PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    plot.add_argument("--out", help="PNG file (default: RUN/curves.png for one run, ./curves.png for several)")
    plot.add_argument("--metric", help="metric to draw (default: the task's: bce, bpc or accuracy)")
    plot.add_argument("--x", default="both", choices=["step", "time", "both"], help="x axis: steps, wall time, or both panels (default)")
    plot.add_argument("--title", help="figure title")
    plot.set_defaults(handler=_plot)
    inspect = commands.add_parser("inspect", help="draw what a trained model's memory did on one example (PNG + JSON)")
    inspect.add_argument("run", help="run directory")
    inspect.add_argument("--split", default="valid", help="split to take the example from (default: valid)")
    inspect.add_argument("--index", type=int, default=0, help="which example of the split (default: 0)")
    inspect.add_argument("--steps", type=int, help="show at most this many steps (language models: 100 by default)")
    inspect.add_argument("--out", help="folder for inspect.png and inspect.json (default: the run directory)")
    inspect.add_argument("--data", help="data folder to look in first (also: $MANNTK_DATA)")
    inspect.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    inspect.set_defaults(handler=_inspect)
    reproduce = commands.add_parser("reproduce", help="run a named set of recipes with a budget, resumably, and tabulate the results")
    reproduce.add_argument("set", help="set name (reproduce/<name>.yaml: table1-copy, table1-armin, pmnist, ptb-cpu) or a set file")
    reproduce.add_argument("--budget-steps", type=int, metavar="N", help="steps per run (replaces the set's budget)")
    reproduce.add_argument("--budget-minutes", type=float, metavar="M", help="training minutes per run (replaces the set's budget)")
    reproduce.add_argument("--parallel", type=int, metavar="K", help="runs at once (default: the set's, else the CPU count)")
    reproduce.add_argument("--threads", type=int, metavar="T", help="train.threads per run (default: 1 when runs are parallel)")
    reproduce.add_argument("--runs-root", default="runs/reproduce", help="runs go in RUNS_ROOT/<set>/<label> (default: runs/reproduce)")
    reproduce.add_argument("--data", help="data folder to look in first (also: $MANNTK_DATA)")
    reproduce.add_argument("--only", nargs="+", metavar="LABEL", help="run only these labels of the set")
    reproduce.add_argument("--fresh", action="store_true", help="delete the set's run directories and start every run again")
    reproduce.add_argument("--dry-run", action="store_true", help="print what would run (and the commands), run nothing")
    reproduce.set_defaults(handler=_reproduce)
    from manntk.bench import add_bench_command

    add_bench_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``manntk`` command; returns the exit status."""
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
        print(f"manntk {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, DataError, TrainingDiverged) as error:
        print(f"manntk {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


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
            lines.append(f"  {failure.name}: {failure.error}")
    return "\n".join(lines)


def _plugins(args: argparse.Namespace) -> int:
    plugins = load_plugins(strict=args.strict)
    print(format_plugins(plugins))
    return 1 if plugins.failures else 0


def _train(args: argparse.Namespace) -> int:
    from manntk.build import build_experiment
    from manntk.recipe import load_recipe
    from manntk.training import train

    if args.resume:
        if args.recipe or args.overrides:
            raise UsageError("--resume continues a run with its saved recipe: give no recipe or overrides")
        recipe = load_recipe(Path(args.resume) / "recipe.yaml")
        result = train(recipe, args.resume, resume=True, progress=not args.no_progress, data_root=args.data)
    else:
        if not args.recipe:
            raise UsageError("give a recipe file, or --resume RUN")
        recipe = load_recipe(args.recipe, args.overrides)
        if args.dry_run:
            _, model = build_experiment(recipe, args.data)
            count = sum(p.numel() for p in model.parameters())
            print(f"{args.recipe}: valid; task {recipe.task.name}; model {count:,} parameters")
            return 0
        result = train(recipe, args.run_dir, runs_root=args.runs_root, progress=not args.no_progress, data_root=args.data)
    print(f"run: {result.run_dir}")
    print(f"steps: {result.step} ({result.stop_reason}); training time {result.seconds:.1f} s")
    if result.solved_step is not None:
        print(f"solved at step {result.solved_step}")
    for split, metrics in result.metrics.items():
        print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from manntk.training.evaluate import evaluate_run

    metrics = evaluate_run(args.run, args.split, device=args.device, data_root=args.data)
    print(f"{args.run} [{args.split}]: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def _recipes_list(args: argparse.Namespace) -> int:
    from manntk.recipe import read_yaml

    folder = Path(args.folder)
    paths = sorted(folder.rglob("*.yaml"))
    if not paths:
        raise UsageError(f"no recipes (*.yaml) in {folder}")
    for path in paths:
        data = read_yaml(path)
        print(f"{str(path):<48} {data.get('description', '')}")
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


def _demo(args: argparse.Namespace) -> int:
    from manntk.demo import run_demo

    run_demo(batch_size=args.batch_size, steps=args.steps, out=sys.stdout)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from manntk.plot import PlotError, default_output, plot_runs

    try:
        path = plot_runs(args.runs, args.out or default_output(args.runs), metric=args.metric, x=args.x, title=args.title)
    except PlotError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from manntk.inspect import InspectError, inspect_run

    if not (Path(args.run) / "recipe.yaml").exists():
        raise UsageError(f"{args.run} is not a run directory (no recipe.yaml)")
    try:
        result = inspect_run(args.run, split=args.split, index=args.index, out=args.out, steps=args.steps,
                             device=args.device, data_root=args.data)
    except InspectError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {result.png} and {result.json}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from manntk.reproduce import ReproduceError, reproduce

    try:
        report = reproduce(args.set, budget_steps=args.budget_steps, budget_minutes=args.budget_minutes,
                           parallel=args.parallel, runs_root=args.runs_root, threads=args.threads, data_root=args.data,
                           fresh=args.fresh, only=args.only or (), dry_run=args.dry_run)
    except ReproduceError as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if report.get("failed"):
        print(f"failed runs: {', '.join(report['failed'])} (see their train.log)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
