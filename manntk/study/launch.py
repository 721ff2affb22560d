"""Running a study's runs: each (arm, seed) is ``python -m manntk train`` in a process of its
own, on this machine (``local``: ``jobs`` at a time) or as SLURM jobs through submitit
(``submitit``; ``pip install 'manntk[cluster]'``). Nothing here schedules: the local pool
starts the next run when one ends, and SLURM does the rest.

A run with ``results.json`` is done and skipped; one with a checkpoint resumes exactly
(``--resume``); any other starts. Running a study again therefore finishes it, and
[`Job.changed_settings`][manntk.study.launch.Job.changed_settings] says when a run already
there was made by other settings than the arm's now (an arm edited since), which a rerun
would otherwise count silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, TextIO

import attrs
from tqdm import tqdm

if TYPE_CHECKING:
    from manntk.study.spec import Study


@attrs.frozen
class Job:
    """One run of a study.

    Attributes:
        label: ``arm/seed-S``, for messages.
        run_dir: the run directory.
        recipe: the recipe file.
        overrides: everything that makes the run (arm, study, seed, budget, threads).
    """

    label: str
    run_dir: Path
    recipe: Path
    overrides: tuple[str, ...]

    @property
    def state(self) -> str:
        """``done`` (``results.json``), ``resume`` (a checkpoint) or ``start``."""
        if (self.run_dir / "results.json").exists():
            return "done"
        if (self.run_dir / "checkpoints" / "latest").exists():
            return "resume"
        return "start"

    def changed_settings(self) -> list[str]:
        """How the run already in ``run_dir`` differs from the run this job would start now:
        one ``key: ran -> now`` line per resolved setting that differs (``train.threads``
        aside), or the reason its saved recipe no longer loads; empty when nothing ran yet
        or nothing changed."""
        from manntk.config import ConfigError
        from manntk.recipe import load_recipe, recipe_to_mapping, setting_differences

        saved = self.run_dir / "recipe.yaml"
        if self.state == "start" or not saved.exists():
            return []
        try:
            ran = recipe_to_mapping(load_recipe(saved))
        except ConfigError as error:
            return [f"its recipe.yaml no longer loads: {error}"]
        now = recipe_to_mapping(load_recipe(self.recipe, self.overrides))
        return [f"{key}: {before!r} -> {after!r}"
                for key, (before, after) in setting_differences(ran, now).items() if key != "train.threads"]

    def command(self, data_root: str | None = None) -> list[str]:
        """The ``python -m manntk train`` command line (``--resume`` when it resumes)."""
        command = [sys.executable, "-m", "manntk", "train"]
        if self.state == "resume":
            command += ["--resume", str(self.run_dir)]
        else:
            command += [str(self.recipe), *self.overrides, "--run-dir", str(self.run_dir)]
        command.append("--no-progress")
        return command + (["--data", data_root] if data_root else [])


def jobs_of(study: Study, root: str | Path, overrides: Sequence[str] = (), threads: int | None = 1) -> list[Job]:
    """Every (arm, seed) of ``study`` as a [`Job`][manntk.study.launch.Job] under ``root``.

    The overrides of a run, in order: the arm's (the study's common ones first), the
    budget, ``overrides`` (applied to every arm), ``train.threads`` and ``train.seed``.
    """
    root = Path(root)
    extra = [*study.budget, *overrides, *([f"train.threads={threads}"] if threads else [])]
    return [
        Job(f"{arm.name}/seed-{seed}", root / arm.name / f"seed-{seed}", arm.recipe, (*arm.overrides, *extra, f"train.seed={seed}"))
        for arm in study.arms
        for seed in study.seeds
    ]


def changed_runs(jobs: Sequence[Job]) -> dict[Job, list[str]]:
    """The jobs whose run directory holds a run made by other settings than the job's
    ([`Job.changed_settings`][manntk.study.launch.Job.changed_settings]), with the settings
    that differ; a job whose recipe no longer loads gets the reason."""
    from manntk.config import ConfigError

    changed: dict[Job, list[str]] = {}
    for job in jobs:
        try:
            differences = job.changed_settings()
        except (ConfigError, OSError) as error:
            differences = [f"the arm's recipe does not load: {error}"]
        if differences:
            changed[job] = differences
    return changed


def start_command(command: Sequence[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` with the command line, then its output, appended to ``log``."""
    with open(log, "a", encoding="utf-8") as file:  # the child keeps its own handle
        file.write(f"$ {' '.join(command)}\n")
        file.flush()
        return subprocess.Popen(list(command), stdout=file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def run_command(command: Sequence[str], log: str) -> int:
    """Run ``command`` as ``start_command`` does; its exit status (what a submitit job calls)."""
    return start_command(command, log).wait()


def _prepare(job: Job) -> str:
    if job.state == "start" and job.run_dir.exists():
        shutil.rmtree(job.run_dir)  # a start that never reached a checkpoint begins again
    job.run_dir.mkdir(parents=True, exist_ok=True)
    return str(job.run_dir / "train.log")


def run_local(jobs: Sequence[Job], parallel: int, data_root: str | None = None, out: TextIO | None = None, progress: bool = True) -> dict[str, int]:
    """Run the jobs that are not done, ``parallel`` at a time; returns each label's exit status.

    One progress bar counts the study's runs (done ones included) with an ETA; each finished
    run prints one line. Ctrl-C or SIGTERM stops the running trainings, which checkpoint on
    the way out, and is raised again as ``KeyboardInterrupt``: running the study again
    resumes them.
    """
    out = out or sys.stderr
    pending = [job for job in jobs if job.state != "done"]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), unit="run", file=out, disable=not progress, dynamic_ncols=True)
    running: list[tuple[Job, subprocess.Popen, float]] = []
    statuses: dict[str, int] = {}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        with _sigterm_as_interrupt():  # a scheduler's stop ends the trainings as Ctrl-C does
            while pending or running:
                while pending and len(running) < parallel:
                    job = pending.pop(0)
                    log = _prepare(job)
                    running.append((job, start_command(job.command(data_root), log, env), time.monotonic()))
                time.sleep(0.2)
                for item in list(running):
                    job, process, started = item
                    code = process.poll()
                    if code is None:
                        continue
                    running.remove(item)
                    statuses[job.label] = code
                    bar.update(1)
                    bar.write(_finished_line(job, code, time.monotonic() - started), file=out)
    except KeyboardInterrupt:
        bar.write("interrupted: stopping the running trainings (they checkpoint); run the study again to resume", file=out)
        for _, process, _ in running:
            process.terminate()
        for _, process, _ in running:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        raise
    finally:
        bar.close()
    return statuses


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does (in the main thread,
    where Python lets a handler be set; elsewhere nothing changes), so that a study stopped
    by a scheduler or ``kill`` stops its running trainings too instead of leaving them on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_submitit(jobs: Sequence[Job], folder: Path, data_root: str | None = None, cluster: str | None = None,
                 out: TextIO | None = None, **parameters: object) -> dict[str, int]:
    """Submit the jobs that are not done through submitit and wait for them.

    Args:
        folder: where submitit keeps its logs and pickles.
        cluster: ``None`` (SLURM when available, else local), ``"slurm"``, ``"local"`` or ``"debug"``.
        parameters: passed to ``executor.update_parameters`` (``timeout_min``,
            ``slurm_partition``, ``cpus_per_task``, ...).
    """
    try:
        import submitit
    except ImportError as error:
        raise RuntimeError("the submitit launcher needs submitit: pip install 'manntk[cluster]'") from error
    out = out or sys.stderr
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**{"timeout_min": 24 * 60, "cpus_per_task": 1, **parameters})
    pending = [job for job in jobs if job.state != "done"]
    submitted = [(job, executor.submit(run_command, job.command(data_root), _prepare(job)), time.monotonic()) for job in pending]
    statuses = {}
    for job, handle, started in submitted:
        code = handle.result()
        statuses[job.label] = code
        print(_finished_line(job, code, time.monotonic() - started), file=out, flush=True)
    return statuses


def _finished_line(job: Job, code: int, seconds: float) -> str:
    if code != 0:
        return f"FAILED {job.label} (exit status {code}): see {job.run_dir / 'train.log'}"
    import json

    results = json.loads((job.run_dir / "results.json").read_text(encoding="utf-8"))
    solved = results.get("solved")
    verdict = "" if solved is None else (f", solved at step {results['solved_step']}" if solved else ", not solved")
    return f"finished {job.label}: {results['step']} steps in {seconds / 60:.1f} min{verdict}"
