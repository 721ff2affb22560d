"""Figures: learning curves of runs (``manntk plot RUN [RUN...]``) and the growth sweeps of a
benchmark report (``manntk bench --plot PNG``).

Each run directory holds ``metrics.jsonl`` (rows with ``step``, ``split``, ``time`` and the
task's metrics), ``recipe.yaml`` (whose ``name`` labels the run) and, once finished,
``results.json``. One figure shows every run: the training curve (lightly smoothed, the raw
values faint behind it), the validation points, a star where it solved and a dash-dotted line
where it started again from fresh weights, against optimizer steps and against wall-clock
training time (two panels by default).

A benchmark report's sweeps ([`manntk.tools.bench`][manntk.tools.bench]: one model and mode measured at
several slot counts N, or hidden sizes, with all else equal) are drawn as time and memory
relative to the smallest point, against N and against the hidden size.

Needs matplotlib (``pip install manntk[plot]``); the figures are drawn with the Agg backend,
so no display is needed, and written through a temporary name and a rename.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import attrs
import yaml

from manntk.config import UsageError
from manntk.hookspecs import hookimpl
from manntk.training.metrics import read_metrics
from manntk.training.ownership import resolve_run_dir

HEADLINE_METRICS = ("bce", "bpc", "accuracy")
"""Headline metrics of the built-in tasks, in the order they are looked for."""
HIGHER_IS_BETTER = ("accuracy",)
"""Metrics where higher is better (everything else is a loss)."""
SOLVED_BCE = 0.01
"""The "solved" line of the algorithmic tasks (mean validation BCE per bit)."""


class PlotError(ValueError):
    """Something that cannot be plotted (a run without metrics, an unknown metric, a report
    without sweeps, no matplotlib)."""


@attrs.frozen
class RunCurves:
    """What a plot needs of one run.

    Attributes:
        path: the run directory.
        label: the legend entry (the recipe's ``name``, else the folder name).
        rows: every row of ``metrics.jsonl``.
        results: ``results.json`` when the run finished, else ``None``.
    """

    path: Path
    label: str
    rows: list[dict[str, Any]]
    results: dict[str, Any] | None

    def series(self, split: str, metric: str, final: bool = False) -> tuple[list[int], list[float], list[float]]:
        """Steps, times (s) and values of ``metric`` on ``split`` rows (final rows only with ``final``)."""
        steps, times, values = [], [], []
        for row in self.rows:
            if row.get("split") != split or bool(row.get("final")) != final:
                continue
            value = _number(row.get(metric))
            if value is None:
                continue
            steps.append(int(row.get("step", 0)))
            times.append(float(row.get("time", 0.0)))
            values.append(value)
        return steps, times, values

    def validations(self, metric: str) -> tuple[list[int], list[float], list[float]]:
        """The validation series of ``metric``, ending with the end-of-training validation when it is at a new step."""
        steps, times, values = self.series("valid", metric)
        final = self.series("valid", metric, final=True)
        if final[0] and final[0][-1] not in steps:
            steps, times, values = steps + final[0][-1:], times + final[1][-1:], values + final[2][-1:]
        return steps, times, values

    def _restarts_in_rows(self) -> list[int]:
        """A running run's restarts: each training row whose ``restarts`` count went up follows
        a restart decided at the last validation before it (a restart shows from the next
        training row on)."""
        validations = [int(row["step"]) for row in self.rows if row.get("split") == "valid"]
        found: list[int] = []
        for row in self.rows:
            while row.get("split") == "train" and int(row.get("restarts", 0)) > len(found):
                before = [step for step in validations if step < int(row["step"])]
                found.append(before[-1] if before else int(row["step"]))
        return found

    def metrics(self) -> set[str]:
        """Names of the numeric columns of the rows."""
        return {key for row in self.rows for key, value in row.items() if _number(value) is not None}

    def restarts(self) -> list[tuple[int, float]]:
        """The steps at which the run started again from fresh weights
        (``train.schedule.restart_after``), each with the training time of the first row at or
        after it: from ``results.json`` once the run finished, else from the training rows."""
        listed = (self.results or {}).get("restarts")
        marks = []
        for step in self._restarts_in_rows() if listed is None else listed:
            later = [row for row in self.rows if int(row.get("step", 0)) >= step] or self.rows[-1:]
            marks.append((int(step), float(later[0].get("time", 0.0)) if later else 0.0))
        return marks


def _number(value: Any) -> float | None:
    """``value`` as a finite float (JSON writes NaN as a string), else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def load_run(path: str | Path, label: str | None = None) -> RunCurves:
    """Read a run directory's metrics, recipe name and results."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        raise PlotError(f"{path} is not a run directory with metrics (no {metrics.name})")
    return RunCurves(path, label or run_label(path), read_metrics(metrics), read_results(path))


def run_label(path: Path) -> str:
    """A run's name: its recipe's ``name``, else the folder's name."""
    recipe = path / "recipe.yaml"
    if recipe.exists():
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        if data.get("name"):
            return str(data["name"])
    return path.name


def read_results(path: Path) -> dict[str, Any] | None:
    """A run's ``results.json``, or ``None`` while it has not finished."""
    results_file = path / "results.json"
    return json.loads(results_file.read_text(encoding="utf-8")) if results_file.exists() else None


def headline_metric(runs: Sequence[RunCurves]) -> str:
    """The first of ``bce``, ``bpc``, ``accuracy`` present in every run's rows (else ``loss``)."""
    present = [run.metrics() for run in runs]
    for name in HEADLINE_METRICS:
        if all(name in columns for columns in present):
            return name
    for name in HEADLINE_METRICS:
        if any(name in columns for columns in present):
            return name
    return "loss"


def smooth(values: Sequence[float], weight: float | None = None, breaks: Sequence[int] = ()) -> list[float]:
    """An exponential moving average, bias-corrected; light by default (~3% of the points).
    The average starts over at each index in ``breaks`` (a restart from fresh weights), so
    that it does not carry the old weights' losses past the restart."""
    if not values:
        return []
    if weight is None:
        weight = min(0.9, max(0.0, 1.0 - 1.0 / max(1.0, len(values) / 30.0)))
    if breaks:
        bounds = [0, *breaks, len(values)]
        return [v for start, end in zip(bounds, bounds[1:]) for v in smooth(values[start:end], weight)]
    result, average, norm = [], 0.0, 0.0
    for value in values:
        average = weight * average + (1.0 - weight) * value
        norm = weight * norm + (1.0 - weight)
        result.append(average / norm)
    return result


def time_unit(seconds: float) -> tuple[str, float]:
    """A readable unit for a time axis reaching ``seconds``: (name, divisor)."""
    if seconds >= 3 * 3600:
        return "h", 3600.0
    if seconds >= 180:
        return "min", 60.0
    return "s", 1.0


def unique_labels(runs: Sequence[RunCurves]) -> list[str]:
    """The runs' labels, with the folder name added where two runs share a label."""
    labels = [run.label for run in runs]
    return [f"{label} ({run.path.name})" if labels.count(label) > 1 else label for label, run in zip(labels, runs)]


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - matplotlib is an optional extra
        raise PlotError("plots need matplotlib: pip install 'manntk[plot]'") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_runs(
    runs: Sequence[str | Path | RunCurves],
    out: str | Path,
    *,
    metric: str | None = None,
    x: str = "both",
    title: str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Draw the learning curves of ``runs`` into the PNG ``out``.

    Args:
        runs: run directories (or loaded curves).
        out: the PNG file to write (its folder is created).
        metric: the metric to draw (default: the task's headline metric found in the rows:
            ``bce``, ``bpc`` or ``accuracy``).
        x: ``step``, ``time`` or ``both`` (two panels).
        title: the figure title (default: the metric and the number of runs).
        labels: legend entries, one per run (default: the recipes' names).

    Returns:
        The path of the PNG.

    Raises:
        PlotError: no runs, no metrics, or a metric that no run has.
    """
    if x not in ("step", "time", "both"):
        raise PlotError(f"x must be step, time or both, not {x!r}")
    if not runs:
        raise PlotError("no runs to plot")
    curves = [run if isinstance(run, RunCurves) else load_run(run) for run in runs]
    if labels is not None:
        if len(labels) != len(curves):
            raise PlotError(f"{len(labels)} labels for {len(curves)} runs")
        curves = [attrs.evolve(run, label=label) for run, label in zip(curves, labels)]
    metric = metric or headline_metric(curves)
    if not any(metric in run.metrics() for run in curves):
        known = sorted(set().union(*(run.metrics() for run in curves)) - {"step", "time"})
        raise PlotError(f"no run has the metric {metric!r}; the rows have: {', '.join(known) or 'nothing'}")

    plt = _pyplot()
    axes_kinds = ["step", "time"] if x == "both" else [x]
    figure, axes = plt.subplots(1, len(axes_kinds), figsize=(6.4 * len(axes_kinds) + 0.6, 4.6), squeeze=False)
    axes = list(axes[0])
    longest = max((max(run.series("train", metric)[1] + run.validations(metric)[1] + [0.0]) for run in curves), default=0.0)
    unit, divisor = time_unit(longest)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    positive, restarted = True, False
    span: list[float] = []
    for number, run in enumerate(curves):
        color = colors[number % len(colors)]
        train_steps, train_times, train_values = run.series("train", metric)
        valid_steps, valid_times, valid_values = run.validations(metric)
        positive = positive and all(v > 0 for v in train_values + valid_values)
        span += train_values + valid_values
        solved = (run.results or {}).get("solved_step")
        restarts = run.restarts()
        restarted = restarted or bool(restarts)
        breaks = [bisect.bisect_right(train_steps, step) for step, _ in restarts]
        for axis, kind in zip(axes, axes_kinds):
            train_x = train_steps if kind == "step" else [t / divisor for t in train_times]
            valid_x = valid_steps if kind == "step" else [t / divisor for t in valid_times]
            if train_values:
                if len(train_values) > 20:
                    axis.plot(train_x, train_values, color=color, alpha=0.18, linewidth=0.8)
                axis.plot(train_x, smooth(train_values, breaks=breaks), color=color, linewidth=1.6, marker="." if len(train_values) == 1 else None)
            if valid_values:
                axis.plot(valid_x, valid_values, color=color, linestyle="--", linewidth=0.9, marker="o", markersize=3.5)
            for step, seconds in restarts:
                axis.axvline(step if kind == "step" else seconds / divisor, color=color, linestyle="-.", linewidth=1.1)
            if solved is not None and solved in valid_steps:
                where = valid_steps.index(solved)
                axis.plot([valid_x[where]], [valid_values[where]], marker="*", markersize=14, color=color,
                          markeredgecolor="black", linestyle="none")
    logarithmic = metric not in HIGHER_IS_BETTER and positive and bool(span) and max(span) / max(min(span), 1e-12) > 20
    for axis, kind in zip(axes, axes_kinds):
        axis.set_xlabel("training step" if kind == "step" else f"wall-clock training time ({unit})")
        axis.set_ylabel(metric + (" (log scale)" if logarithmic else ""))
        if logarithmic:
            axis.set_yscale("log")
        if metric == "bce" and span and min(span) < 10 * SOLVED_BCE:
            axis.axhline(SOLVED_BCE, color="grey", linestyle=":", linewidth=1.0)
            axis.annotate("solved (0.01)", xy=(0.01, SOLVED_BCE), xycoords=("axes fraction", "data"),
                          xytext=(0, 3), textcoords="offset points", fontsize=8, color="grey")
        axis.grid(True, which="major", alpha=0.3)
        axis.set_xlim(left=0)
    from matplotlib.lines import Line2D  # after _pyplot() chose the backend

    handles = [Line2D([], [], color=colors[n % len(colors)], linewidth=2.5) for n in range(len(curves))]
    names = unique_labels(curves)
    handles += [Line2D([], [], color="grey", linewidth=1.6),
                Line2D([], [], color="grey", linestyle="--", linewidth=0.9, marker="o", markersize=3.5)]
    names += ["train (smoothed)", "validation"]
    if any(run.results and run.results.get("solved_step") is not None for run in curves):
        handles.append(Line2D([], [], marker="*", markersize=11, color="grey", markeredgecolor="black", linestyle="none"))
        names.append("solved")
    if restarted:
        handles.append(Line2D([], [], color="grey", linestyle="-.", linewidth=1.1))
        names.append("restart (fresh weights)")
    figure.suptitle(title or f"{metric}: {len(curves)} run{'s' if len(curves) > 1 else ''}", fontsize=12)
    figure.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(names), 4),
                  fontsize=9, frameon=False)
    figure.tight_layout()
    return save_figure(figure, out)


def image_format(out: str | Path) -> str:
    """The image format that ``out``'s suffix names (``png`` without a suffix).

    Raises:
        PlotError: matplotlib cannot write that format (checked before any work is done).
    """
    _pyplot()  # matplotlib is there, with the Agg backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    supported = FigureCanvasAgg.get_supported_filetypes()
    kind = Path(out).suffix[1:].lower() or "png"
    if kind not in supported:
        raise PlotError(f"{out}: matplotlib cannot write .{kind} images; use one of {', '.join(sorted(supported))}")
    return kind


def save_figure(figure: Any, out: str | Path) -> Path:
    """Write ``figure`` to ``out`` (its format from the suffix, PNG without one) through a
    temporary name and a rename, so that a reader never finds half a file; creates the
    folder and closes the figure.

    Raises:
        PlotError: the suffix names a format that matplotlib cannot write.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    temporary = out.with_name(f".{out.name}.tmp")
    try:
        kind = image_format(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(temporary, format=kind, dpi=110, bbox_inches="tight")
        os.replace(temporary, out)
    finally:
        plt.close(figure)
        temporary.unlink(missing_ok=True)
    return out


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    """``RUN/curves.png`` for one run; ``curves.png`` in the current folder for several."""
    return Path(run_dirs[0]) / "curves.png" if len(run_dirs) == 1 else Path("curves.png")


@attrs.frozen
class GrowthLine:
    """One sweep of a benchmark report, ready to draw.

    Attributes:
        name: the model's display name (``ARMIN``, ``NTM-style``...), which picks the colour.
        mode: ``train``, ``eval`` or ``algo``, which picks the line style.
        axis: ``slots`` or ``hidden``: what the sweep varies.
        fixed: what it holds fixed (``hidden 128``, ``N=16``, ``no memory``).
        x: the values of ``axis``, ascending.
        time: time per unit of work relative to the first point (1 / relative rate).
        memory: peak memory relative to the first point (``None`` where not measured).
    """

    name: str
    mode: str
    axis: str
    fixed: str
    x: tuple[int, ...]
    time: tuple[float, ...]
    memory: tuple[float | None, ...]


GROWTH_AXES = {"slots": "memory slots N", "hidden": "hidden size"}
"""The axes a benchmark sweeps, and their labels."""
_MODE_STYLES = {"train": "-", "eval": "--", "algo": ":"}


def growth_lines(report: dict[str, Any]) -> list[GrowthLine]:
    """The sweeps of a ``manntk bench`` report (its ``sweeps``), as lines.

    Raises:
        PlotError: the report has no sweeps (no model was measured at two or more slot
            counts or hidden sizes with all else equal).
    """
    sweeps = report.get("sweeps") or []
    if not sweeps:
        raise PlotError(
            "the report has no sweeps to plot: run a preset that varies the memory or the hidden size "
            "(--preset growth), or give several slot counts (--slots 4,16,64)"
        )
    lines = []
    for sweep in sweeps:
        axis, points = sweep["axis"], sweep["points"]
        fixed = f"hidden {sweep['hidden']}" if axis == "slots" else (f"N={sweep['slots']}" if sweep["slots"] else "no memory")
        lines.append(GrowthLine(
            name=sweep["name"],
            mode=sweep["mode"],
            axis=axis,
            fixed=fixed,
            x=tuple(int(point[axis]) for point in points),
            time=tuple(float(point["time_relative"]) for point in points),
            memory=tuple(_number(point.get("memory_relative")) for point in points),
        ))
    return lines


def plot_growth(report: dict[str, Any], out: str | Path, *, title: str | None = None) -> Path:
    """Draw a benchmark report's growth sweeps into ``out``: time (top) and peak memory
    (bottom) relative to the smallest point, against N and against the hidden size (one
    column per axis the report sweeps), log-log, one colour per model and one line style
    per mode. What a column holds fixed goes into its title when every line shares it,
    else into the legend.

    Args:
        report: a ``manntk bench`` report (the JSON of ``--json``).
        out: the image file to write (PNG unless its suffix names another format).
        title: the figure title (default: the preset, the machine and the thread count).

    Returns:
        The path of the image.

    Raises:
        PlotError: the report has no sweeps.
    """
    lines = growth_lines(report)
    columns = [axis for axis in GROWTH_AXES if any(line.axis == axis for line in lines)]
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    figure, grid = plt.subplots(2, len(columns), figsize=(6.0 * len(columns) + 0.6, 8.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    names = list(dict.fromkeys(line.name for line in lines))
    for column, axis_kind in enumerate(columns):
        time_axis, memory_axis = grid[0][column], grid[1][column]
        drawn = [line for line in lines if line.axis == axis_kind]
        shared = {line.fixed for line in drawn}
        for line in drawn:
            label = f"{line.name} {line.mode}" + ("" if len(shared) == 1 else f" ({line.fixed})")
            style = dict(color=colors[names.index(line.name) % len(colors)], linestyle=_MODE_STYLES.get(line.mode, "-"),
                         marker="o", markersize=3.5, linewidth=1.5, label=label)
            time_axis.plot(line.x, line.time, **style)
            measured = [(x, memory) for x, memory in zip(line.x, line.memory) if memory is not None]
            if measured:
                memory_axis.plot(*zip(*measured), **style)
        smallest = "N" if axis_kind == "slots" else "hidden size"
        for axis, what in ((time_axis, "time per unit of work"), (memory_axis, "peak memory")):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log", base=2)
            axis.xaxis.set_major_locator(FixedLocator(sorted({x for line in drawn for x in line.x})))
            axis.xaxis.set_minor_locator(NullLocator())
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.yaxis.set_major_formatter(ScalarFormatter())
            axis.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
            axis.set_ylabel(f"{what} (x at the smallest {smallest})")
            axis.grid(True, which="major", alpha=0.3)
        memory_axis.set_xlabel(GROWTH_AXES[axis_kind])
        time_axis.set_title(f"against {GROWTH_AXES[axis_kind]}" + (f" ({shared.pop()})" if len(shared) == 1 else ""), fontsize=11)
        time_axis.legend(fontsize=8, frameon=False)
    if title is None:
        machine, settings = report.get("machine", {}), report.get("settings", {})
        threads = machine.get("torch_threads")
        where = ", ".join(str(part) for part in (
            machine.get("device_name") or machine.get("device"),
            f"{threads} thread{'s' if threads != 1 else ''}" if threads else None,
            settings.get("dtype"),
        ) if part)
        title = f"manntk bench {report.get('preset', '')}: time and memory relative to the smallest point ({where})"
    figure.suptitle(title, fontsize=12)
    figure.tight_layout()
    return save_figure(figure, out)


@hookimpl
def register_commands(commands: argparse._SubParsersAction) -> None:
    """``manntk plot``."""
    plot = commands.add_parser("plot", help="learning curves of one or several runs as a PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directories (runs/latest: the newest run)")
    plot.add_argument("--out", help="PNG file (default: RUN/curves.png for one run, ./curves.png for several)")
    plot.add_argument("--metric", help="metric to draw (default: the task's: bce, bpc or accuracy)")
    plot.add_argument("--x", default="both", choices=["step", "time", "both"], help="x axis: steps, wall time, or both panels (default)")
    plot.add_argument("--title", help="figure title")
    plot.set_defaults(handler=_plot)


def _plot(args: argparse.Namespace) -> int:
    runs = [resolve_run_dir(run) for run in args.runs]
    try:
        path = plot_runs(runs, args.out or default_output(runs), metric=args.metric, x=args.x, title=args.title)
    except PlotError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {path}")
    return 0
