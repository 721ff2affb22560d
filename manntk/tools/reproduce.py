"""Named sets of runs with a budget and a results table: ``manntk reproduce SET``.

A *set* is a YAML file (the shipped ones are in the repository's ``reproduce/`` folder)::

    name: table1-copy
    description: what the set reproduces and how the budget differs from the paper
    source: ARMIN paper, table 1 (copy column)
    budget: {minutes: 16}          # per run: minutes (train.max_minutes) and/or steps (train.steps)
    parallel: 2                    # runs at once (default: the CPU count)
    threads: 1                     # train.threads of every run (default: 1 when parallel > 1)
    metric: bce                    # the metric reported (default: the task's headline metric)
    overrides: [train.device=cpu]  # applied to every run, before the run's own
    runs:
      - label: ARMIN
        recipe: ../recipes/algorithmic/copy/armin.yaml    # relative to the set file
        overrides: [train.eval_every=250]
        paper: {iterations_k: 7.6, minutes: 6}            # the paper's figures

Every run has a fixed directory, ``<runs root>/<set>/<label>``, so running the set again
skips the finished runs (those with ``results.json``), resumes the interrupted ones from
their latest checkpoint (``manntk train --resume``) and starts the rest. Runs are
subprocesses (``python -m manntk train``), ``parallel`` at a time, each logging to
``train.log`` in its directory. At the end (also after an interruption) the set's folder
gets ``results.md`` and ``results.json`` (the paper's figures beside the measured ones)
and ``curves.png`` (every run's validation curve, by :mod:`manntk.tools.plot`).

``paper`` keys that the table knows: ``iterations_k`` (solved in that many thousand
iterations), ``final_loss`` (unsolved: the mean loss of the last 10 validations),
``minutes``, ``accuracy`` (%), ``bpc``, ``chars_per_s``, ``params``, ``note``; a plain
string is shown as it is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import attrs
import yaml

from manntk.config import ConfigError, UsageError
from manntk.hookspecs import hookimpl

#: Where the shipped sets live: ``reproduce/`` beside the ``manntk`` package (a source checkout).
SETS_FOLDER = Path(__file__).resolve().parents[2] / "reproduce"
#: Recipe keys that do not change what a run computes (ignored when comparing recipes).
IRRELEVANT_KEYS = ("train.threads", "train.device")
#: Validations averaged for the "final loss" of an unsolved run (the paper's protocol).
LAST_VALIDATIONS = 10


class ReproduceError(ValueError):
    """A set file that cannot be used."""


@attrs.frozen
class Entry:
    """One run of a set.

    Attributes:
        label: the row's name (and, made file-safe, the run directory's).
        recipe: the recipe file.
        overrides: the set's overrides, then the entry's.
        paper: the paper's figures (a mapping) or a text.
    """

    label: str
    recipe: Path
    overrides: tuple[str, ...] = ()
    paper: Any = None

    @property
    def slug(self) -> str:
        """The label as a directory name."""
        return slug(self.label)


@attrs.frozen
class ReproSet:
    """A set of runs read from a YAML file (see the module)."""

    name: str
    path: Path
    entries: tuple[Entry, ...]
    description: str = ""
    source: str = ""
    budget_steps: int | None = None
    budget_minutes: float | None = None
    parallel: int | None = None
    threads: int | None = None
    metric: str | None = None


def slug(label: str) -> str:
    """``label`` as a file-safe name: letters, digits, ``.``, ``_`` and ``-``."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", label.strip()).strip("-.")
    return text or "run"


def find_set(name: str, folders: Sequence[Path] = ()) -> Path:
    """The set file ``name``: a path to a YAML file, or ``<name>.yaml`` in ``reproduce/``.

    Looked for in ``folders``, then ``./reproduce``, then the ``reproduce/`` folder of the
    source checkout that holds this package.
    """
    direct = Path(name)
    if direct.suffix in (".yaml", ".yml") and direct.is_file():
        return direct
    candidates = [*folders, Path("reproduce"), SETS_FOLDER]
    for folder in candidates:
        path = Path(folder) / f"{name}.yaml"
        if path.is_file():
            return path
    known = sorted({p.stem for folder in candidates if Path(folder).is_dir() for p in Path(folder).glob("*.yaml")})
    raise ReproduceError(f"no set {name!r}: give a set file or one of: {', '.join(known) or '(none found)'}")


def load_set(path: str | Path) -> ReproSet:
    """Read and check a set file (recipe paths are relative to it)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ReproduceError(f"cannot read the set {path}: {error}") from None
    if not isinstance(data, dict):
        raise ReproduceError(f"{path}: a set is a mapping with runs:")
    problems: list[str] = []
    unknown = set(data) - {"name", "description", "source", "budget", "parallel", "threads", "metric", "overrides", "runs"}
    if unknown:
        problems.append(f"unknown keys: {', '.join(sorted(unknown))}")
    common = _string_list(data.get("overrides", []), "overrides", problems)
    budget = data.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"steps", "minutes"}:
        problems.append("budget must be a mapping with steps and/or minutes")
        budget = {}
    runs = data.get("runs")
    entries: list[Entry] = []
    if not isinstance(runs, list) or not runs:
        problems.append("runs: must be a non-empty list")
        runs = []
    for number, run in enumerate(runs):
        where = f"runs[{number}]"
        if not isinstance(run, dict) or "label" not in run or "recipe" not in run:
            problems.append(f"{where}: needs label and recipe")
            continue
        extra = set(run) - {"label", "recipe", "overrides", "paper"}
        if extra:
            problems.append(f"{where}: unknown keys: {', '.join(sorted(extra))}")
        recipe = Path(str(run["recipe"]))
        if not recipe.is_absolute():
            recipe = Path(os.path.normpath(path.parent / recipe))
        entries.append(Entry(str(run["label"]), recipe, tuple(common + _string_list(run.get("overrides", []), f"{where}.overrides", problems)),
                             run.get("paper")))
    slugs = [entry.slug for entry in entries]
    duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
    if duplicates:
        problems.append(f"labels must differ (as directory names): {', '.join(duplicates)}")
    if problems:
        raise ReproduceError(f"{path}: " + "; ".join(problems))
    return ReproSet(
        name=str(data.get("name") or path.stem), path=path, entries=tuple(entries),
        description=str(data.get("description", "")).strip(), source=str(data.get("source", "")).strip(),
        budget_steps=budget.get("steps"), budget_minutes=budget.get("minutes"),
        parallel=data.get("parallel"), threads=data.get("threads"), metric=data.get("metric"),
    )


def _string_list(value: Any, where: str, problems: list[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.append(f"{where} must be a list of key=value strings")
        return []
    return list(value)


# -- the runs ----------------------------------------------------------------------------


@attrs.define
class Plan:
    """What to do with one entry."""

    entry: Entry
    run_dir: Path
    overrides: list[str]
    action: str  # done | resume | start
    note: str = ""


def budget_overrides(steps: int | None, minutes: float | None) -> list[str]:
    """``train.steps`` and ``train.max_minutes`` overrides of a budget."""
    result = []
    if steps is not None:
        result.append(f"train.steps={int(steps)}")
    if minutes is not None:
        result.append(f"train.max_minutes={float(minutes)}")
    return result


def _flatten(mapping: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(mapping, dict):
        flat: dict[str, Any] = {}
        for key, value in mapping.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: mapping}


def recipe_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipe mappings (threads and device ignored)."""
    a, b = _flatten(saved), _flatten(wanted)
    return sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key) and key not in IRRELEVANT_KEYS)


def plan_runs(repro: ReproSet, root: Path, extra: Sequence[str], fresh: bool = False, only: Sequence[str] = ()) -> list[Plan]:
    """Check every recipe and decide, per entry: skip (done), resume, or start.

    With ``fresh``, the run directories (of the ``only`` labels, when given) are deleted first.
    """
    from manntk.recipe import load_recipe, recipe_to_mapping

    plans, problems = [], []
    for entry in repro.entries:
        overrides = [*entry.overrides, *extra]
        try:
            recipe = load_recipe(entry.recipe, overrides)
        except ConfigError as error:
            problems.append(f"{entry.label}: {error}")
            continue
        wanted = yaml.safe_load(yaml.safe_dump(recipe_to_mapping(recipe), sort_keys=False))
        run_dir = root / entry.slug
        if fresh and (not only or entry.label in only) and run_dir.exists():
            shutil.rmtree(run_dir)
        saved_file = run_dir / "recipe.yaml"
        differences = []
        if saved_file.exists():
            differences = recipe_differences(yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}, wanted)
        note = ""
        if differences:
            shown = ", ".join(differences[:4]) + (", ..." if len(differences) > 4 else "")
            note = f"its saved recipe differs from the set's now ({shown}); kept (--fresh starts over)"
        if (run_dir / "results.json").exists():
            action = "done"
        elif (run_dir / "checkpoints" / "latest").exists():
            action = "resume"
        else:
            action = "start"
        plans.append(Plan(entry, run_dir, overrides, action, note))
    if problems:
        raise ConfigError(problems)
    return plans


def train_command(plan: Plan, data_root: str | None = None) -> list[str]:
    """The ``python -m manntk train`` command of a plan (``--resume`` when it resumes)."""
    command = [sys.executable, "-m", "manntk", "train"]
    if plan.action == "resume":
        command += ["--resume", str(plan.run_dir)]
    else:
        command += [str(plan.entry.recipe), *plan.overrides, "--run-dir", str(plan.run_dir)]
    command.append("--no-progress")
    if data_root:
        command += ["--data", data_root]
    return command


def last_row(run_dir: Path) -> dict[str, Any] | None:
    """The last complete row of a run's ``metrics.jsonl`` (cheap: reads the file's tail)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - 4096))
        lines = file.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def execute(plans: Sequence[Plan], parallel: int, data_root: str | None = None, out: TextIO | None = None,
            report_every: float = 60.0) -> dict[str, int]:
    """Run the plans that are not done, ``parallel`` at a time; returns each label's exit status.

    An interruption (Ctrl-C, or SIGTERM) stops the running trainings (their last checkpoint
    stays) and is raised again as ``KeyboardInterrupt`` after them.
    """
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return _execute(plans, parallel, data_root, out, report_every)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return _execute(plans, parallel, data_root, out, report_every)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _execute(plans: Sequence[Plan], parallel: int, data_root: str | None, out: TextIO | None, report_every: float) -> dict[str, int]:
    out = out or sys.stdout
    pending = [plan for plan in plans if plan.action != "done"]
    running: list[tuple[Plan, subprocess.Popen, TextIO, float]] = []
    statuses: dict[str, int] = {}
    last_report = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=out, flush=True)

    try:
        while pending or running:
            while pending and len(running) < parallel:
                plan = pending.pop(0)
                if plan.action == "start" and plan.run_dir.exists():
                    shutil.rmtree(plan.run_dir)  # a start that never reached a checkpoint: begin again
                plan.run_dir.mkdir(parents=True, exist_ok=True)
                log = (plan.run_dir / "train.log").open("a", encoding="utf-8")
                command = train_command(plan, data_root)
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                running.append((plan, process, log, time.monotonic()))
                say(f"{'resuming' if plan.action == 'resume' else 'starting'} {plan.entry.label} in {plan.run_dir}")
            time.sleep(1.0)
            for item in list(running):
                plan, process, log, started = item
                code = process.poll()
                if code is None:
                    continue
                running.remove(item)
                log.close()
                statuses[plan.entry.label] = code
                minutes = (time.monotonic() - started) / 60
                if code == 0:
                    say(f"finished {plan.entry.label} ({minutes:.1f} min)")
                else:
                    tail = (plan.run_dir / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
                    say(f"FAILED {plan.entry.label} (exit status {code}); the end of its train.log:\n    " + "\n    ".join(tail))
            if running and time.monotonic() - last_report >= report_every:
                last_report = time.monotonic()
                states = []
                for plan, *_ in running:
                    row = last_row(plan.run_dir) or {}
                    states.append(f"{plan.entry.label} step {row.get('step', 0)}")
                say("running: " + "; ".join(states))
    except KeyboardInterrupt:
        say("interrupted: stopping the running trainings (run the set again to resume them)")
        for _, process, _, _ in running:
            process.terminate()
        for _, process, _, _ in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        raise
    return statuses


# -- the results -------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def measure(run_dir: Path, metric: str | None = None) -> dict[str, Any]:
    """The measured figures of a run directory (whatever exists of them)."""
    from manntk.tools.plot import _number, headline_metric, load_run

    if not (run_dir / "metrics.jsonl").exists():
        return {"status": "not started"}
    run = load_run(run_dir)
    metric = metric or headline_metric([run])
    results = run.results or {}
    valid_steps, valid_times, valid_values = run.validations(metric)  # with the end-of-training one
    speed_keys = sorted({key for row in run.rows if row.get("split") == "train" for key in row if key.endswith("_per_s")})
    speeds = [_number(row.get(speed_keys[0])) for row in run.rows if row.get("split") == "train"] if speed_keys else []
    speeds = [value for value in speeds if value is not None]
    last_train = [row for row in run.rows if row.get("split") == "train"]
    measured: dict[str, Any] = {
        "status": "finished" if run.results else "incomplete",
        "metric": metric,
        "steps": results.get("step", last_train[-1]["step"] if last_train else 0),
        "stop_reason": results.get("stop_reason"),
        "minutes": (results["seconds"] / 60) if "seconds" in results else (last_train[-1]["time"] / 60 if last_train else None),
        "solved_step": results.get("solved_step"),
        "solved_minutes": None,
        "valid": None,
        "test": None,
        f"last{LAST_VALIDATIONS}_valid": _mean(valid_values[-LAST_VALIDATIONS:]),
        "best_valid": (max(valid_values) if metric == "accuracy" else min(valid_values)) if valid_values else None,
        "speed": _mean(speeds),
        "speed_unit": speed_keys[0].removesuffix("_per_s") + "/s" if speed_keys else None,
        "validations": len(valid_values),
    }
    if measured["solved_step"] is not None and measured["solved_step"] in valid_steps:
        measured["solved_minutes"] = valid_times[valid_steps.index(measured["solved_step"])] / 60
    for split in ("valid", "test"):
        value = _number((results.get("metrics", {}).get(split) or {}).get(metric))
        if value is None and split == "valid" and valid_values:
            value = valid_values[-1]
        measured[split] = value
    return measured


def paper_text(paper: Any) -> str:
    """The paper's figures of an entry, as a table cell."""
    if paper is None:
        return ""
    if not isinstance(paper, dict):
        return str(paper)
    parts = []
    if "iterations_k" in paper:
        parts.append(f"solved in {paper['iterations_k']}k it")
    if "final_loss" in paper:
        parts.append(f"unsolved, loss {paper['final_loss']}")
    if "minutes" in paper:
        parts.append(f"{paper['minutes']} min")
    if "accuracy" in paper:
        parts.append(f"{paper['accuracy']}% test acc")
    if "bpc" in paper:
        parts.append(f"{paper['bpc']} test BPC")
    if "chars_per_s" in paper:
        parts.append(f"{paper['chars_per_s'] / 1000:g}k chars/s")
    if "params" in paper:
        parts.append(f"{paper['params']} params")
    known = {"iterations_k", "final_loss", "minutes", "accuracy", "bpc", "chars_per_s", "params", "note"}
    parts += [f"{key} {value}" for key, value in paper.items() if key not in known]
    if "note" in paper:
        parts.append(str(paper["note"]))
    return ", ".join(parts)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _iterations(steps: int) -> str:
    return f"{steps / 1000:.1f}k it" if steps >= 1000 else f"{steps} it"


def measured_text(measured: dict[str, Any]) -> str:
    """The measured figures in the paper's form."""
    if measured.get("status") == "not started":
        return "not started"
    metric = measured.get("metric")
    minutes = measured.get("minutes")
    suffix = "" if measured.get("status") == "finished" else " (incomplete)"
    if metric in ("bce", "loss"):
        if measured.get("solved_step") is not None:
            return f"solved in {_iterations(measured['solved_step'])}, {_fmt(measured.get('solved_minutes'), 3)} min" + suffix
        loss = measured.get(f"last{LAST_VALIDATIONS}_valid")
        return f"unsolved after {_iterations(measured['steps'])}, loss {_fmt(loss, 3)}, {_fmt(minutes, 3)} min" + suffix
    if metric == "accuracy":
        value = measured.get("test") if measured.get("test") is not None else measured.get("valid")
        split = "test" if measured.get("test") is not None else "valid"
        accuracy = "-" if value is None else f"{100 * value:.1f}%"
        return f"{accuracy} {split} acc after {_iterations(measured['steps'])}, {_fmt(minutes, 3)} min" + suffix
    value = measured.get("test") if measured.get("test") is not None else measured.get("valid")
    text = f"{_fmt(value, 4)} {'test' if measured.get('test') is not None else 'valid'} {metric} after {_iterations(measured['steps'])}"
    if measured.get("speed") is not None:
        text += f", {measured['speed'] / 1000:.1f}k {measured['speed_unit']}"
    return text + f", {_fmt(minutes, 3)} min" + suffix


def write_results(repro: ReproSet, plans: Sequence[Plan], root: Path, budget: list[str], metric: str | None = None) -> dict[str, Any]:
    """``results.json``, ``results.md`` and ``curves.png`` of a set in ``root``."""
    from manntk.tools.plot import PlotError, plot_runs

    metric = metric or repro.metric
    rows = []
    for plan in plans:
        measured = measure(plan.run_dir, metric)
        rows.append({
            "label": plan.entry.label, "recipe": str(plan.entry.recipe), "overrides": plan.overrides,
            "run_dir": str(plan.run_dir), "paper": plan.entry.paper, "paper_text": paper_text(plan.entry.paper),
            "measured_text": measured_text(measured), "measured": measured,
        })
    report = {"set": repro.name, "source": repro.source, "description": repro.description, "budget": budget,
              "written": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    started = [plan.run_dir for plan in plans if (plan.run_dir / "metrics.jsonl").exists()]
    curves = None
    if started:
        labels = [plan.entry.label for plan in plans if (plan.run_dir / "metrics.jsonl").exists()]
        try:
            curves = plot_runs(started, root / "curves.png", metric=metric, labels=labels, title=(f"{repro.name}: {repro.source}" if repro.source else repro.name)[:110])
        except PlotError as error:
            print(f"no curves: {error}", file=sys.stderr)
    (root / "results.md").write_text(results_markdown(report, curves), encoding="utf-8")
    return report


def results_markdown(report: dict[str, Any], curves: Path | None) -> str:
    """The results table as Markdown."""
    lines = [f"# {report['set']}", ""]
    if report["source"]:
        lines += [f"Reproduces: {report['source']}.", ""]
    if report["description"]:
        lines += [report["description"], ""]
    lines += [f"Budget per run: {', '.join(report['budget']) or 'the recipes own'}. Written {report['written']}.", ""]
    metric = next((row["measured"].get("metric") for row in report["rows"] if row["measured"].get("metric")), "metric")
    speed_unit = next((row["measured"].get("speed_unit") for row in report["rows"] if row["measured"].get("speed_unit")), "units/s")
    header = ["run", "paper", "measured", "steps", "stop", "solved at", "minutes", f"valid {metric}",
              f"last {LAST_VALIDATIONS} valid", f"test {metric}", speed_unit]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        m = row["measured"]
        cells = [row["label"], row["paper_text"] or "-", row["measured_text"], _fmt(m.get("steps")), _fmt(m.get("stop_reason") or m.get("status")),
                 _fmt(m.get("solved_step")), _fmt(m.get("minutes"), 3), _fmt(m.get("valid")),
                 _fmt(m.get(f"last{LAST_VALIDATIONS}_valid")), _fmt(m.get("test")), _fmt(m.get("speed"), 3)]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    lines += ["", "Runs: " + ", ".join(f"`{row['run_dir']}`" for row in report["rows"]), ""]
    if curves is not None:
        lines += [f"![learning curves]({curves.name})", ""]
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------


def reproduce(
    name: str,
    *,
    budget_steps: int | None = None,
    budget_minutes: float | None = None,
    parallel: int | None = None,
    runs_root: str | Path = "runs/reproduce",
    threads: int | None = None,
    data_root: str | None = None,
    fresh: bool = False,
    only: Sequence[str] = (),
    dry_run: bool = False,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run (or resume) the set ``name`` and write its results table; returns the report.

    Args:
        name: a set name (``reproduce/<name>.yaml``) or a set file.
        budget_steps: steps per run, instead of the set's budget.
        budget_minutes: training minutes per run, instead of the set's budget.
        parallel: runs at once (default: the set's, else the CPU count).
        runs_root: the runs go in ``runs_root/<set>/<label>``.
        threads: ``train.threads`` of each run (default: the set's, else 1 when runs are parallel).
        data_root: a data folder to look in first.
        fresh: delete the set's run directories first and start every run again.
        only: run only these labels (the table still lists every run).
        dry_run: print the plan (and the commands) without running anything.
        out: where progress lines go (default: standard output).
    """
    out = out or sys.stdout
    repro = load_set(find_set(name))
    unknown = sorted(set(only) - {entry.label for entry in repro.entries})
    if unknown:
        raise ReproduceError(f"--only: no run labelled {', '.join(unknown)} in {repro.name} (labels: "
                             f"{', '.join(entry.label for entry in repro.entries)})")
    if budget_steps is None and budget_minutes is None:
        budget_steps, budget_minutes = repro.budget_steps, repro.budget_minutes
    budget = budget_overrides(budget_steps, budget_minutes)
    count = sum(1 for entry in repro.entries if not only or entry.label in only)
    parallel = max(1, min(parallel or repro.parallel or os.cpu_count() or 1, count))
    threads = threads or repro.threads or (1 if parallel > 1 else None)
    extra = budget + ([f"train.threads={threads}"] if threads else [])
    root = Path(runs_root) / repro.name
    plans = plan_runs(repro, root, extra, fresh=fresh and not dry_run, only=only)
    chosen = [plan for plan in plans if not only or plan.entry.label in only]
    print(f"set {repro.name} ({repro.path}): {len(repro.entries)} runs in {root}; budget per run: "
          f"{', '.join(budget) or 'the recipes own'}; {parallel} at a time, threads {threads or 'default'}", file=out)
    for plan in chosen:
        action = {"done": "finished, skipped", "resume": "interrupted, resumes", "start": "starts"}[plan.action]
        print(f"  {plan.entry.label:<16} {action}" + (f"; {plan.note}" if plan.note else ""), file=out)
        if dry_run and plan.action != "done":
            print("    " + " ".join(train_command(plan, data_root)), file=out)
    if dry_run:
        return {"set": repro.name, "plans": [(plan.entry.label, plan.action) for plan in plans]}
    try:
        statuses = execute(chosen, parallel, data_root, out)
    finally:
        report = write_results(repro, plans, root, budget)
        print(f"results: {root / 'results.md'}, {root / 'results.json'}", file=out)
    report["failed"] = sorted(label for label, code in statuses.items() if code != 0)
    return report


@hookimpl
def register_commands(commands: argparse._SubParsersAction) -> None:
    """``manntk reproduce``."""
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


def _reproduce(args: argparse.Namespace) -> int:
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
