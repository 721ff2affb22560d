"""Learning curves of runs: ``manntk plot RUN [RUN...]``.

Each run directory holds ``metrics.jsonl`` (rows with ``step``, ``split``, ``time`` and the
task's metrics), ``recipe.yaml`` (whose ``name`` labels the run) and, once finished,
``results.json``. One figure shows every run: the training curve (lightly smoothed, the raw
values faint behind it) and the validation points, against optimizer steps and against
wall-clock training time (two panels by default).

Needs matplotlib (``pip install manntk[plot]``); the figure is drawn with the Agg backend,
so no display is needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import attrs
import yaml

from manntk.training.metrics import read_metrics

#: Headline metrics of the built-in tasks, in the order they are looked for.
HEADLINE_METRICS = ("bce", "bpc", "accuracy")
#: Metrics where higher is better (everything else is a loss).
HIGHER_IS_BETTER = ("accuracy",)
#: The "solved" line of the algorithmic tasks (mean validation BCE per bit).
SOLVED_BCE = 0.01


class PlotError(ValueError):
    """A run that cannot be plotted (no metrics, unknown metric, no matplotlib)."""


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

    def metrics(self) -> set[str]:
        """Names of the numeric columns of the rows."""
        return {key for row in self.rows for key, value in row.items() if _number(value) is not None}


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
    if label is None:
        label = path.name
        recipe = path / "recipe.yaml"
        if recipe.exists():
            data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
            label = data.get("name") or label
    results_file = path / "results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.exists() else None
    return RunCurves(path, str(label), read_metrics(metrics), results)


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


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """An exponential moving average, bias-corrected; light by default (~3% of the points)."""
    if not values:
        return []
    if weight is None:
        weight = min(0.9, max(0.0, 1.0 - 1.0 / max(1.0, len(values) / 30.0)))
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
    positive = True
    span: list[float] = []
    for number, run in enumerate(curves):
        color = colors[number % len(colors)]
        train_steps, train_times, train_values = run.series("train", metric)
        valid_steps, valid_times, valid_values = run.validations(metric)
        positive = positive and all(v > 0 for v in train_values + valid_values)
        span += train_values + valid_values
        solved = (run.results or {}).get("solved_step")
        for axis, kind in zip(axes, axes_kinds):
            train_x = train_steps if kind == "step" else [t / divisor for t in train_times]
            valid_x = valid_steps if kind == "step" else [t / divisor for t in valid_times]
            if train_values:
                if len(train_values) > 20:
                    axis.plot(train_x, train_values, color=color, alpha=0.18, linewidth=0.8)
                axis.plot(train_x, smooth(train_values), color=color, linewidth=1.6, marker="." if len(train_values) == 1 else None)
            if valid_values:
                axis.plot(valid_x, valid_values, color=color, linestyle="--", linewidth=0.9, marker="o", markersize=3.5)
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
    figure.suptitle(title or f"{metric}: {len(curves)} run{'s' if len(curves) > 1 else ''}", fontsize=12)
    figure.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(names), 4),
                  fontsize=9, frameon=False)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return out


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    """``RUN/curves.png`` for one run; ``curves.png`` in the current folder for several."""
    return Path(run_dirs[0]) / "curves.png" if len(run_dirs) == 1 else Path("curves.png")
