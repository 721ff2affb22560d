"""A study's statistics, read from its run directories alone (so a report works on a study
that is still running, or was copied from a cluster).

Per arm: the runs finished, the solve rate with its 95% Wilson interval, iterations and
seconds to solve (median and IQR), the final metric (median, IQR, mean, std), and the
difference from the baseline arm over the seeds both ran (mean, 95% paired bootstrap
interval). A run counts as solved when its ``results.json`` says so (validation and test
under the task's threshold). Runs that did not solve are right-censored at their budget:
the quantiles of iterations to solve are those of the empirical distribution over *all*
runs (the smallest iteration by which that fraction of the runs had solved), shown as
``>budget`` where fewer runs than that solved at all.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import attrs
import yaml

from manntk.study import stats
from manntk.study.launch import changed_runs, jobs_of
from manntk.study.spec import Study, check_arms

HIGHER_IS_BETTER = ("accuracy",)
"""Metrics where higher is better (the others are losses), as the built-in tasks report them."""


@attrs.frozen
class RunSummary:
    """What a report needs of one run directory."""

    arm: str
    seed: int
    path: Path
    finished: bool
    steps: int
    budget: int | None
    seconds: float | None
    solved: bool | None
    solved_step: int | None
    solved_seconds: float | None
    final: float | None
    curve: tuple[tuple[int, float], ...]
    relapses: int | None = None
    commit: str | None = None
    stays_solved_step: int | None = None
    diverged: str | None = None
    restarts: tuple[int, ...] = ()


def read_run(path: Path, arm: str, seed: int, metric: str | None) -> tuple[RunSummary, str | None]:
    """The summary of one run directory and the metric it reports (``None`` before any row)."""
    from manntk.tools.plot import PlotError, RunCurves, headline_metric, load_run, read_results, run_label

    try:
        run = load_run(path)
    except PlotError:  # no metrics: not started yet, or stopped (diverged) before its first row
        results = read_results(path)
        if results is None:
            return RunSummary(arm, seed, path, False, 0, None, None, None, None, None, None, ()), metric
        run = RunCurves(path, run_label(path), [], results)
    results = run.results  # results.json, read by load_run
    metric = metric or (headline_metric([run]) if run.rows else None)  # a run without rows says nothing of it
    steps, times, values = run.validations(metric)
    recipe = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8")) if (path / "recipe.yaml").exists() else {}
    budget = (recipe.get("train") or {}).get("steps")
    final = None
    solved = solved_step = solved_seconds = None
    if results is not None:
        split = "test" if metric in results["metrics"].get("test", {}) else "valid"
        final = results["metrics"].get(split, {}).get(metric)
        solved, solved_step = results.get("solved"), results.get("solved_step")
        if solved and solved_step is not None and solved_step in steps:
            solved_seconds = times[steps.index(solved_step)]
    last_step = results["step"] if results else (steps[-1] if steps else 0)
    return RunSummary(
        arm, seed, path, results is not None, last_step, budget, results["seconds"] if results else None,
        solved, solved_step if solved else None, solved_seconds, final, tuple(zip(steps, values)),
        results.get("relapses") if results else None, run_commit(path),
        _stays_solved_step(run, solved_step) if solved else None, results.get("diverged") if results else None,
        tuple(step for step, _ in run.restarts()),
    ), metric


def _stays_solved_step(run: Any, solved_step: int | None) -> int | None:
    flag_steps, _, flags = run.validations("solved")
    return stays_solved_from(flag_steps, flags, solved_step)


def stays_solved_from(steps: Sequence[int], solved: Sequence[float], solved_step: int | None) -> int | None:
    """The first validation step, at or after ``solved_step``, from which every validation
    to the end of the run was solved: ``solved_step`` itself for a run that never went back
    above the threshold, later for one that relapsed; ``None`` when the last one was not solved."""
    if solved_step is None:
        return None
    since = None
    for step, flag in zip(steps, solved):
        if step < solved_step:
            continue
        if not flag:
            since = None
        elif since is None:
            since = step
    return since


def run_commit(path: Path) -> str | None:
    """The code a run started from: the short git commit in its ``meta.json``, with ``+dirty``
    when the working tree had changes; ``None`` when it was not recorded."""
    try:
        git = json.loads((path / "meta.json").read_text(encoding="utf-8")).get("git") or {}
    except (OSError, ValueError):
        return None
    commit = git.get("commit")
    return None if not commit else commit[:7] + ("+dirty" if git.get("dirty") else "")


def censored_quantiles(solved_at: Sequence[float], runs: int) -> list[float]:
    """Q1, median and Q3 of a right-censored sample: the smallest solved value by which at
    least that fraction of all ``runs`` had solved; ``inf`` where too few solved."""
    ordered = sorted(solved_at)
    result = []
    for fraction in (0.25, 0.5, 0.75):
        needed = math.ceil(fraction * runs - 1e-9)
        result.append(ordered[needed - 1] if 0 < needed <= len(ordered) else (math.inf if runs else math.nan))
    return result


def summarize(study: Study, root: Path) -> dict[str, Any]:
    """The report of the study in ``root`` as a JSON-ready mapping."""
    runs: list[RunSummary] = []
    metric = study.metric
    for arm in study.arms:
        for seed in study.seeds:
            summary, metric = read_run(root / arm.name / f"seed-{seed}", arm.name, seed, metric)
            runs.append(summary)
    metric = metric or "loss"
    higher = study.higher_is_better if study.higher_is_better is not None else metric in HIGHER_IS_BETTER
    baseline_finals = {r.seed: r.final for r in runs if r.arm == study.baseline and r.final is not None}
    changed = {job.label: differences for job, differences in changed_runs(jobs_of(study, root, threads=None)).items()}
    arms = []
    for arm in study.arms:
        mine = [r for r in runs if r.arm == arm.name]
        finished = [r for r in mine if r.finished]
        solvable = [r for r in finished if r.solved is not None]
        solved = [r for r in solvable if r.solved]
        finals = [r.final for r in finished if r.final is not None]
        q1, median, q3 = stats.quartiles(finals)
        mean, std = stats.mean_std(finals)
        low, high = stats.wilson_interval(len(solved), len(solvable))
        entry: dict[str, Any] = {
            "arm": arm.name, "n": len(finished), "seeds": [r.seed for r in finished], "unfinished": len(mine) - len(finished),
            "budget": max((r.budget for r in mine if r.budget), default=None),
            "solved": len(solved) if solvable else None, "solve_rate": len(solved) / len(solvable) if solvable else None,
            "solve_rate_ci95": [low, high] if solvable else None,
            "iterations_to_solve": _quantile_dict(censored_quantiles([r.solved_step for r in solved], len(solvable))) if solvable else None,
            "solved_to_the_end_from": _quantile_dict(censored_quantiles(
                [r.stays_solved_step for r in solved if r.stays_solved_step is not None], len(solvable))) if solvable else None,
            "seconds_to_solve": _quantile_dict(censored_quantiles([r.solved_seconds for r in solved if r.solved_seconds is not None], len(solvable))) if solvable else None,
            "final": {"median": median, "q1": q1, "q3": q3, "mean": mean, "std": std},
            "relapsed": sum(1 for r in finished if r.relapses),
            "diverged": sum(1 for r in finished if r.diverged),
            "restarted": sum(1 for r in finished if r.restarts),
            "commits": sorted({r.commit for r in mine if r.commit}),
            "changed": sum(1 for r in mine if f"{r.arm}/seed-{r.seed}" in changed),
        }
        if arm.name != study.baseline:
            difference, d_low, d_high, pairs = stats.paired_bootstrap({r.seed: r.final for r in finished if r.final is not None}, baseline_finals)
            entry["vs_baseline"] = {"mean_difference": difference, "ci95": [d_low, d_high], "pairs": pairs}
        arms.append(entry)
    return {
        "study": study.name, "metric": metric, "higher_is_better": higher, "baseline": study.baseline,
        "seeds": list(study.seeds), "arms": arms,
        "runs": [{"arm": r.arm, "seed": r.seed, "finished": r.finished, "steps": r.steps, "solved": r.solved,
                  "solved_step": r.solved_step, "stays_solved_step": r.stays_solved_step, "final": r.final, "relapses": r.relapses,
                  "commit": r.commit, "path": str(r.path), "changed_settings": changed.get(f"{r.arm}/seed-{r.seed}", []),
                  "diverged": r.diverged, "restarts": list(r.restarts)}
                 for r in runs],
        "curves": {r.arm + f"/seed-{r.seed}": [list(point) for point in r.curve] for r in runs if r.curve},
    }


def _quantile_dict(values: list[float]) -> dict[str, float | None]:
    return {name: (None if math.isinf(value) else value) for name, value in zip(("q1", "median", "q3"), values)}


def _censored(value: float | None, budget: int | None, digits: int = 0) -> str:
    if value is None:
        return f">{budget:,}" if budget else "unsolved"
    return f"{value:,.{digits}f}"


def _censored_iqr(quantiles: dict[str, float | None], budget: int | None) -> str:
    """``median [q1, q3]`` of censored quantiles, ``>budget`` where too few runs solved."""
    return f"{_censored(quantiles['median'], budget)} [{_censored(quantiles['q1'], budget)}, {_censored(quantiles['q3'], budget)}]"


def select_arms(report: dict[str, Any], arms: Sequence[str]) -> dict[str, Any]:
    """``report`` cut to ``arms`` (in the report's order) and their runs, for reading or
    plotting a few arms of a large study (the plot draws the curves of the arms listed).
    The arms keep their figures against the baseline whether or not it is among them."""
    check_arms(report["study"], [arm["arm"] for arm in report["arms"]], arms)
    return {
        **report,
        "arms": [arm for arm in report["arms"] if arm["arm"] in arms],
        "runs": [run for run in report["runs"] if run["arm"] in arms],
    }


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (one row per arm) with a legend."""
    metric = report["metric"]
    lines = [
        f"Study {report['study']}: {metric} ({'higher' if report['higher_is_better'] else 'lower'} is better), "
        f"baseline {report['baseline']}, seeds {', '.join(map(str, report['seeds']))}",
        "",
        f"| arm | n | solved | rate [95% CI] | iterations to solve: median [IQR] | solved to the end from: median [IQR] | seconds to solve: median | final {metric}: median [IQR] | mean ± std | vs baseline: mean diff [95% CI] | relapsed | restarted | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in report["arms"]:
        budget = arm["budget"]
        if arm["solved"] is None:
            solved = rate = iterations = stays = seconds = "—"
        else:
            solved = f"{arm['solved']}/{arm['n']}"
            low, high = arm["solve_rate_ci95"]
            rate = f"{arm['solve_rate']:.2f} [{low:.2f}, {high:.2f}]"
            iterations = _censored_iqr(arm["iterations_to_solve"], budget)
            stays = _censored_iqr(arm["solved_to_the_end_from"], budget)
            seconds = _censored(arm["seconds_to_solve"]["median"], None)
        final = arm["final"]
        vs = "(baseline)"
        if "vs_baseline" in arm:
            d = arm["vs_baseline"]
            vs = f"{_number(d['mean_difference'])} [{_number(d['ci95'][0])}, {_number(d['ci95'][1])}] ({d['pairs']} pairs)"
        pending = f" (+{arm['unfinished']} unfinished)" if arm["unfinished"] else ""
        lines.append(
            f"| {arm['arm']} | {arm['n']}{pending} | {solved} | {rate} | {iterations} | {stays} | {seconds} | "
            f"{_number(final['median'])} [{_number(final['q1'])}, {_number(final['q3'])}] | "
            f"{_number(final['mean'])} ± {_number(final['std'])} | {vs} | {arm['relapsed']} | {arm['restarted']} | {', '.join(arm['commits']) or '—'} |"
        )
    lines += ["", "Unsolved runs are censored at the budget (`>budget`); final = the test split's metric "
              "(validation when there is no test split); the difference is arm - baseline over the seeds both ran; "
              "relapsed = runs with a validation above the threshold after they had solved (solved = solved at the end), "
              "and solved to the end from = the validation from which every later one was solved; "
              "restarted = runs that started again from fresh weights after a plateau (`train.schedule.restart_after`); "
              "commit = the code the runs started from (`+dirty`: with uncommitted changes)."]
    changed = [run for run in report["runs"] if run["changed_settings"]]
    if changed:
        listed = "; ".join(f"{run['arm']}/seed-{run['seed']} ({', '.join(run['changed_settings'][:3])})" for run in changed[:5])
        more = f"; and {len(changed) - 5} more" if len(changed) > 5 else ""
        lines += ["", f"**{len(changed)} run(s) were made by other settings than their arm gives now** (setting: ran -> now), "
                      f"and their arms' figures include them: {listed}{more}."]
    diverged = [run for run in report["runs"] if run["diverged"]]
    if diverged:
        listed = "; ".join(f"{run['arm']}/seed-{run['seed']} at step {run['steps']:,}" for run in diverged)
        lines += ["", f"**{len(diverged)} run(s) diverged** (stopped on a non-finite loss, gradient or weight; counted as "
                      f"finished and unsolved, with no final score; their train.log says why): {listed}."]
    return "\n".join(lines) + "\n"


def csv_text(report: dict[str, Any]) -> str:
    """One row per arm, flat columns."""
    buffer = io.StringIO()
    columns = ["arm", "n", "unfinished", "budget", "solved", "solve_rate", "solve_rate_ci95_low", "solve_rate_ci95_high",
               "iterations_q1", "iterations_median", "iterations_q3", "solved_to_the_end_from_median", "seconds_median", "final_median", "final_q1",
               "final_q3", "final_mean", "final_std", "vs_baseline_mean_difference", "vs_baseline_ci95_low", "vs_baseline_ci95_high",
               "relapsed", "restarted", "commits"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for arm in report["arms"]:
        iterations, seconds = arm["iterations_to_solve"] or {}, arm["seconds_to_solve"] or {}
        ci = arm["solve_rate_ci95"] or [None, None]
        vs = arm.get("vs_baseline", {"mean_difference": None, "ci95": [None, None]})
        writer.writerow({
            "arm": arm["arm"], "n": arm["n"], "unfinished": arm["unfinished"], "budget": arm["budget"], "solved": arm["solved"],
            "solve_rate": arm["solve_rate"], "solve_rate_ci95_low": ci[0], "solve_rate_ci95_high": ci[1],
            "iterations_q1": iterations.get("q1"), "iterations_median": iterations.get("median"), "iterations_q3": iterations.get("q3"),
            "solved_to_the_end_from_median": (arm["solved_to_the_end_from"] or {}).get("median"),
            "seconds_median": seconds.get("median"), **{f"final_{k}": v for k, v in arm["final"].items()},
            "vs_baseline_mean_difference": vs["mean_difference"], "vs_baseline_ci95_low": vs["ci95"][0], "vs_baseline_ci95_high": vs["ci95"][1],
            "relapsed": arm["relapsed"], "restarted": arm["restarted"], "commits": " ".join(arm["commits"]),
        })
    return buffer.getvalue()


def write_report(report: dict[str, Any], root: Path) -> list[Path]:
    """``report.md``, ``report.json`` and ``report.csv`` in the study directory (each through a rename)."""
    from manntk.training.checkpoint import write_text_atomic

    written = []
    for name, text in (("report.md", markdown(report)), ("report.json", json.dumps(report, indent=2) + "\n"), ("report.csv", csv_text(report))):
        write_text_atomic(root / name, text)
        written.append(root / name)
    return written


def plot(report: dict[str, Any], out: Path) -> Path:
    """Learning curves (median and IQR band of the validation metric per arm; a run that
    stopped when solved keeps its last value) beside the ECDF of iterations to solve; the
    curves alone for a task with no threshold (character LM: no run has a verdict)."""
    import numpy as np

    from manntk.tools.plot import _pyplot, save_figure

    plt = _pyplot()
    solvable = any(r["finished"] and r["solved"] is not None for r in report["runs"])
    figure, axes = plt.subplots(1, 2 if solvable else 1, figsize=(12, 4.5) if solvable else (6.5, 4.5), squeeze=False)
    curves, ecdf_axes = axes[0][0], axes[0][1] if solvable else None
    for index, arm in enumerate(report["arms"]):
        color = f"C{index}"
        series = [report["curves"][key] for key in report["curves"] if key.split("/seed-")[0] == arm["arm"]]
        if series:
            grid = sorted({step for points in series for step, _ in points})
            filled = np.array([[_value_at(points, step) for step in grid] for points in series], dtype=float)
            q1, median, q3 = np.nanpercentile(filled, [25, 50, 75], axis=0)
            curves.plot(grid, median, color=color, label=f"{arm['arm']} (n={len(series)})")
            curves.fill_between(grid, q1, q3, color=color, alpha=0.2, linewidth=0)
        runs = [r for r in report["runs"] if r["arm"] == arm["arm"] and r["finished"] and r["solved"] is not None]
        if ecdf_axes is not None and runs:
            steps, fractions = stats.ecdf([r["solved_step"] for r in runs if r["solved"]], len(runs))
            ecdf_axes.step([0, *steps, arm["budget"] or (steps[-1] if steps else 1)], [0, *fractions, fractions[-1] if fractions else 0],
                           where="post", color=color, label=arm["arm"])
    curves.set_xlabel("iteration")
    curves.set_ylabel(f"validation {report['metric']}")
    if report["metric"] in ("bce", "loss"):
        curves.set_yscale("log")
    curves.set_title("median and IQR over seeds")
    curves.legend(fontsize="small")
    if ecdf_axes is not None:
        ecdf_axes.set_xlabel("iteration")
        ecdf_axes.set_ylabel("fraction of runs solved")
        ecdf_axes.set_ylim(0, 1.02)
        ecdf_axes.set_title("iterations to solve (ECDF; unsolved runs never count)")
        ecdf_axes.legend(fontsize="small")
    figure.suptitle(f"study {report['study']}")
    figure.tight_layout()
    return save_figure(figure, out)


def _value_at(points: list[list[float]], step: float) -> float:
    """The run's value at ``step``: its last validation at or before it (its first before the first)."""
    value = points[0][1]
    for at, metric in points:
        if at > step:
            break
        value = metric
    return value
