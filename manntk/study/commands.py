"""``manntk study run`` and ``manntk study report``, added through the ``register_commands`` hook."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from manntk.config import UsageError
from manntk.hookspecs import hookimpl


@hookimpl
def register_commands(commands: argparse._SubParsersAction) -> None:
    """``manntk study``."""
    study = commands.add_parser("study", help="ablation studies: arms x seeds, solve rates and confidence intervals")
    actions = study.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run every (arm, seed) of a study file, resumably, then report")
    run.add_argument("study", help="study YAML file")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides for every run (train.steps=200)")
    run.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 instead of the file's")
    run.add_argument("--arms", metavar="A,B", help="run only these arms (comma-separated); the report still covers every arm")
    run.add_argument("--jobs", type=int, metavar="J", help="runs at once (default: the number of CPU cores)")
    run.add_argument("--launcher", choices=["local", "submitit"], default="local", help="local processes, or SLURM jobs through submitit")
    run.add_argument("--threads", type=int, default=1, metavar="T", help="train.threads of every run (default 1)")
    run.add_argument("--out", help="the study directory (default: runs/studies/<name>)")
    run.add_argument("--data", help="data folder to look in first (also: $MANNTK_DATA)")
    run.add_argument("--plot", metavar="PNG", help="also draw the curves and the ECDF of iterations to solve")
    run.set_defaults(handler=_run)
    report = actions.add_parser("report", help="the statistics of a study directory: Markdown, or --json")
    report.add_argument("dir", help="the study directory")
    report.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    report.add_argument("--plot", metavar="PNG", help="also draw the curves and the ECDF of iterations to solve")
    report.add_argument("--arms", metavar="A,B", help="show and plot only these arms (comma-separated); "
                        "report.md, .json and .csv beside the runs still cover every arm")
    report.set_defaults(handler=_report)


def _run(args: argparse.Namespace) -> int:
    from manntk.study import load_study, run_study

    study = load_study(args.study)
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
        study = study.with_seeds(args.seeds)
    out = Path(args.out or Path("runs") / "studies" / study.name)
    arms = _names(args.arms) if args.arms is not None else None
    try:
        report = run_study(study, out, overrides=args.overrides, jobs=args.jobs, launcher=args.launcher,
                           threads=args.threads, data_root=args.data, arms=arms)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume ({out})", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as error:
        raise UsageError(str(error)) from None
    status = _show(report, out, as_json=False, plot_to=args.plot)
    unfinished = [f"{run['arm']}/seed-{run['seed']}" for run in report["runs"]  # of the arms and seeds that ran
                  if not run["finished"] and (arms is None or run["arm"] in arms) and run["seed"] in study.seeds]
    if unfinished:  # a run that failed: the study is not done, and the exit status says so
        print(f"{len(unfinished)} run(s) did not finish ({', '.join(unfinished[:5])}{', ...' if len(unfinished) > 5 else ''}): "
              f"see their train.log; running the study again retries them", file=sys.stderr)
        return 1
    return status


def _report(args: argparse.Namespace) -> int:
    from manntk.study import report_study
    from manntk.study.report import select_arms

    try:
        report = report_study(None, args.dir)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    if args.arms is not None:
        try:
            report = select_arms(report, _names(args.arms))
        except ValueError as error:
            raise UsageError(str(error)) from None
    return _show(report, Path(args.dir), as_json=args.json, plot_to=args.plot)


def _names(arms: str) -> list[str]:
    """The arm names of an ``--arms A,B`` option (at least one)."""
    names = [name.strip() for name in arms.split(",") if name.strip()]
    if not names:
        raise UsageError(f"--arms names no arm ({arms!r}): give one or more, comma-separated")
    return names


def _show(report: dict, root: Path, as_json: bool, plot_to: str | None) -> int:
    from manntk.study.report import markdown, plot

    if as_json:
        print(json.dumps({key: value for key, value in report.items() if key != "curves"}, indent=2))
    else:
        print(markdown(report), end="")
        print(f"(also in {root / 'report.md'}, report.json and report.csv)")
    if plot_to:
        print(f"wrote {plot(report, Path(plot_to))}", file=sys.stderr)
    return 0
