"""``manntk runs``: the run directories under a folder, one line each, told from their files
alone: the recipe's name, the status, the step, the best validation metric and the step at
which the task was solved.

Status:

- ``solved``: finished (``results.json``), and the task was solved on validation and test;
- ``finished``: finished without being solved (its budget of steps or time ran out);
- ``running``: a trainer holds the directory's lock (``.lock``) now;
- ``interrupted``: neither: stopped by a signal, a crash or a kill. Its step is its latest
  checkpoint's, where ``manntk train --resume`` continues (0 without one).

A directory counts as a run's when it holds any of a run's files (the recipe, metrics,
checkpoints or results); runs inside a study's folders are found too, and ``latest`` is
not listed twice.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import attrs

from manntk.config import UsageError
from manntk.hookspecs import hookimpl
from manntk.tools.plot import HIGHER_IS_BETTER, PlotError, RunCurves, headline_metric, load_run, read_results, run_label
from manntk.training.checkpoint import CheckpointError, checkpoint_step, latest_checkpoint
from manntk.training.ownership import LATEST, RUN_FILES, held_by


@attrs.frozen
class RunStatus:
    """What ``manntk runs`` says about one run directory.

    Attributes:
        path: the run directory.
        recipe: the recipe's ``name`` (else the folder's name).
        status: ``solved``, ``finished``, ``diverged`` (stopped on a non-finite value), ``running`` or ``interrupted``.
        step: the final step (finished), the latest logged one (running), or the latest
            checkpoint's (interrupted: where a resume starts).
        metric: the task's headline metric (``bce``, ``bpc``, ``accuracy``, else ``loss``).
        best: the best validation value of ``metric`` so far, ``None`` before any validation.
        best_step: the step of ``best``.
        solved_step: the step at which validation and test were first solved, if they were.
    """

    path: Path
    recipe: str
    status: str
    step: int
    metric: str
    best: float | None
    best_step: int | None
    solved_step: int | None


def find_runs(root: Path) -> list[Path]:
    """The run directories under ``root`` (``root`` itself if it is one), sorted by path;
    a run's own folders are not searched, and the ``latest`` link is skipped."""
    if any((root / name).exists() for name in RUN_FILES):
        return [root]
    if not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name != LATEST and not child.name.startswith("."):
            found += find_runs(child)
    return found


def run_status(path: Path) -> RunStatus:
    """Read what ``path``'s files say of the run (see the module's description)."""
    try:
        curves = load_run(path)
    except PlotError:  # no metrics yet (a run in its first steps, or one that never logged)
        curves = RunCurves(path, run_label(path), [], read_results(path))
    results = curves.results
    metric = headline_metric([curves])
    steps, _, values = curves.validations(metric)
    best, best_step = None, None
    if values:
        pick = max if metric in HIGHER_IS_BETTER else min
        best = pick(values)
        best_step = steps[values.index(best)]
    if results is not None:
        status = "diverged" if results.get("stop_reason") == "diverged" else "solved" if results.get("solved") else "finished"
        return RunStatus(path, curves.label, status, int(results["step"]), metric, best, best_step, results.get("solved_step"))
    logged = max((int(row.get("step", 0)) for row in curves.rows), default=0)
    if held_by(path) is not None:
        status, step = "running", logged
    else:
        try:
            status, step = "interrupted", checkpoint_step(latest_checkpoint(path))
        except CheckpointError:
            status, step = "interrupted", 0
    return RunStatus(path, curves.label, status, step, metric, best, best_step, solved_step(curves))


def solved_step(curves: RunCurves) -> int | None:
    """The first step whose validation was solved and whose test, when the trainer scored it
    there (it does at the first solved validation of a task with a test split), was too:
    what the trainer records as the solved step."""
    tests = {int(row["step"]): row for row in curves.rows if row.get("split") == "test" and not row.get("final")}
    for row in curves.rows:
        if row.get("split") == "valid" and not row.get("final") and row.get("solved") == 1:
            test = tests.get(int(row["step"]))
            if test is None or test.get("solved") == 1:
                return int(row["step"])
    return None


def format_runs(runs: list[RunStatus], root: Path) -> str:
    """A table of ``runs``, their paths relative to ``root``."""
    header = ("run", "recipe", "status", "step", "best valid", "solved at")
    rows = [header]
    for run in runs:
        where = run.path.relative_to(root).as_posix() if run.path != root else run.path.name
        best = "-" if run.best is None else f"{run.metric} {run.best:.4g} @ {run.best_step:,}"
        solved = "-" if run.solved_step is None else f"{run.solved_step:,}"
        rows.append((where, run.recipe, run.status, f"{run.step:,}", best, solved))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _plain(run: RunStatus) -> dict[str, Any]:
    fields = attrs.asdict(run)
    fields["path"] = str(run.path)
    if fields["best"] is not None and not math.isfinite(fields["best"]):
        fields["best"] = str(fields["best"])
    return fields


@hookimpl
def register_commands(commands: argparse._SubParsersAction) -> None:
    """``manntk runs``."""
    runs = commands.add_parser("runs", help="list run directories: recipe, status, step, best validation metric, solved step")
    runs.add_argument("--runs-root", default="runs", help="the folder to list (default: runs); runs in its subfolders too")
    runs.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")
    runs.set_defaults(handler=_runs)


def _runs(args: argparse.Namespace) -> int:
    root = Path(args.runs_root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder of runs (give one with --runs-root)")
    found = [run_status(path) for path in find_runs(root)]
    if args.json:
        for run in found:
            print(json.dumps(_plain(run)))
    elif found:
        print(format_runs(found, root))
    else:
        print(f"no runs under {root}")
    return 0
