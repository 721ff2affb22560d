"""Ablation studies: arms x seeds, with the statistics a reviewer accepts.

```python
from manntk.study import load_study, run_study, report_study

study = load_study("studies/armin_copy_ablations.yaml").with_seeds(3)
run_study(study, "runs/studies/ablations", overrides=["train.steps=200"], jobs=2)
report = report_study(study, "runs/studies/ablations")   # also writes report.md/.json/.csv
```

A study is a tool on top of the core, like a third party's: every (arm, seed) is an
ordinary run directory trained by ``manntk train``, and the statistics are computed from
those directories alone, so a study resumes like a run and can be reported while it runs.
The ``manntk study`` command comes from this package's ``register_commands`` hook.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, TextIO

import yaml

from manntk.study.launch import Job, changed_runs, jobs_of, run_local, run_submitit
from manntk.study.report import markdown, plot, summarize, write_report
from manntk.study.spec import Arm, Study, check_arms, load_study

__all__ = ["Arm", "Job", "Study", "jobs_of", "load_study", "markdown", "plot", "report_study", "run_study"]

STUDY_FILE = "study.yaml"
"""The study file copied into its directory, so that ``manntk study report DIR`` needs nothing else."""


def run_study(
    study: Study,
    root: str | Path,
    *,
    overrides: Sequence[str] = (),
    jobs: int | None = None,
    launcher: str = "local",
    threads: int | None = 1,
    data_root: str | None = None,
    cluster: str | None = None,
    out: TextIO | None = None,
    progress: bool = True,
    arms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run every (arm, seed) not yet done (resuming the interrupted ones), then report.

    Args:
        study: the study ([`load_study`][manntk.study.spec.load_study]).
        root: the study directory.
        overrides: ``key=value`` for every run (``train.steps=200`` for a quick look).
        jobs: local runs at once (default: the number of CPU cores).
        launcher: ``local`` or ``submitit`` (SLURM through submitit; ``cluster`` passes on).
        threads: ``train.threads`` of every run (``None``: the recipe's).
        data_root: a data folder every run looks in first.
        arms: run only these arms (``None``: all); the study file and the report still
            cover every arm, the others' runs as far as they got.

    Returns:
        The report ([`report_study`][manntk.study.report_study]).

    Raises:
        ValueError: an arm of ``arms`` that the study does not have, or runs already in
            ``root`` that were made by other settings than their arm gives now (each named
            with the settings that differ), before anything runs.
    """
    from manntk.recipe import load_recipe
    from manntk.training.checkpoint import write_text_atomic

    root = Path(root)
    jobs_list = jobs_of(study, root, overrides, threads)
    if arms is not None:
        check_arms(study.name, [arm.name for arm in study.arms], arms)
        jobs_list = [job for job in jobs_list if job.label.split("/")[0] in arms]
    for arm in study.arms:  # every arm's recipe must load before anything runs
        load_recipe(arm.recipe, [*arm.overrides, *study.budget, *overrides])
    _refuse_changed_runs(jobs_list)
    root.mkdir(parents=True, exist_ok=True)
    saved = _study_mapping(study, overrides)
    saved["seeds"] = sorted(set(saved["seeds"]) | set(_saved_seeds(root)))  # a run with fewer seeds hides no earlier run
    write_text_atomic(root / STUDY_FILE, yaml.safe_dump(saved, sort_keys=False))
    if launcher == "submitit":
        run_submitit(jobs_list, root / ".submitit", data_root=data_root, cluster=cluster, out=out)
    elif launcher == "local":
        run_local(jobs_list, jobs or os.cpu_count() or 1, data_root=data_root, out=out, progress=progress)
    else:
        raise ValueError(f"unknown launcher {launcher!r}: local or submitit")
    return report_study(None, root)  # the saved study file: the run overrides are part of what made the runs


def _refuse_changed_runs(jobs: Sequence[Job]) -> None:
    """Raise when a run already there differs from its arm's settings now: a rerun would
    skip or resume it and report it under an arm that no longer made it."""
    changed = changed_runs(jobs)
    if not changed:
        return
    lines = [f"{job.label} ({job.run_dir}): {'; '.join(differences[:4])}{' ...' if len(differences) > 4 else ''}"
             for job, differences in changed.items()]
    shown = "\n  ".join(lines[:5]) + (f"\n  ... and {len(lines) - 5} more" if len(lines) > 5 else "")
    raise ValueError(
        f"{len(changed)} run(s) already in the study directory were made by other settings than their arm "
        f"gives now (setting: ran -> now):\n  {shown}\nMove those run folders away to train them again, or "
        f"give the arm its former settings."
    )


def report_study(study: Study | None, root: str | Path) -> dict[str, Any]:
    """The report of the study in ``root`` (the study file saved there when ``study`` is ``None``),
    written to ``report.md``, ``report.json`` and ``report.csv`` beside the runs."""
    root = Path(root)
    if study is None:
        saved = root / STUDY_FILE
        if not saved.exists():
            raise FileNotFoundError(f"{root} is not a study directory (no {STUDY_FILE}; run manntk study run first)")
        study = load_study(saved)
    report = summarize(study, root)
    write_report(report, root)
    return report


def _saved_seeds(root: Path) -> list[int]:
    """The seeds of the study file already in ``root`` (none when there is none): the runs
    made so far, which the report must go on covering whatever seeds the next run names."""
    saved = root / STUDY_FILE
    return list(yaml.safe_load(saved.read_text(encoding="utf-8")).get("seeds") or []) if saved.exists() else []


def _study_mapping(study: Study, overrides: Sequence[str]) -> dict[str, Any]:
    """The study as a file of its own (absolute recipe paths, arms expanded, run overrides kept)."""
    return {
        "name": study.name, "description": study.description, "seeds": list(study.seeds), "baseline": study.baseline,
        **({"metric": study.metric} if study.metric else {}),
        **({"higher_is_better": study.higher_is_better} if study.higher_is_better is not None else {}),
        "arms": {arm.name: {"recipe": str(arm.recipe), "overrides": [*arm.overrides, *study.budget, *overrides]} for arm in study.arms},
    }

