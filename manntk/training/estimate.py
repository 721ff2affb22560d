"""The whole run's time on this machine, said once its first steps are timed, so that a run
sized for a GPU is not discovered to take days on a CPU only from a progress bar's ETA.

The trainer times the real steps after the first (which pays for warm-up: allocation,
caches, lazy initialisation), so no step is run only to be timed; the estimate is of the
training steps (validation and checkpoints add to it).
"""

from __future__ import annotations

import torch

ESTIMATE_STEPS = 3
"""Steps timed for the estimate, after the first one..."""

ESTIMATE_SECONDS = 10.0
"""...or fewer, once they took this many seconds: a GPU-sized step on a CPU (~11 s for
armin_ptb on two cores) gets its estimate after the second step, not the fourth."""

CPU_NOTICE_HOURS = 3.0
"""A run estimated to take longer than this on a CPU gets a notice naming a CPU-sized
recipe to try instead (the recipe's ``cpu_alternative``)."""


def describe_duration(seconds: float) -> str:
    """``seconds`` in the unit a person reads it in: ``~40 s``, ``~14 min``, ``~2.5 h``, ``~13 days``."""
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"~{seconds / 3600:.1f} h"
    return f"~{seconds / 86400:.1f} days"


def describe_machine(device: torch.device, world_size: int = 1) -> str:
    """Where the run computes: ``this CPU (2 threads)`` or the GPU's name, and the process count."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        where = f"this CPU ({threads} thread{'s' if threads > 1 else ''})"
    return where if world_size == 1 else f"{where}, {world_size} processes"


def estimate_lines(
    steps_left: int,
    seconds_per_step: float,
    machine: str,
    *,
    on_cpu: bool,
    max_seconds: float | None = None,
    stops_when_solved: bool = False,
    cpu_alternative: str | None = None,
) -> list[str]:
    """The estimate line, and when the run would take longer than
    [`CPU_NOTICE_HOURS`][manntk.training.estimate.CPU_NOTICE_HOURS] on a CPU, a notice
    naming ``cpu_alternative`` (a shipped recipe) to try instead.

    Args:
        steps_left: optimizer steps still to run.
        seconds_per_step: the timed rate.
        machine: where the run computes ([`describe_machine`][manntk.training.estimate.describe_machine]).
        on_cpu: whether that is a CPU.
        max_seconds: ``train.max_minutes`` in seconds, which stops the run sooner.
        stops_when_solved: whether the run stops once the task is solved.
        cpu_alternative: the recipe's ``cpu_alternative``.
    """
    seconds = steps_left * seconds_per_step
    line = f"estimate: {steps_left:,} steps at ~{seconds_per_step:.3g} s/step = {describe_duration(seconds)} on {machine}"
    if max_seconds is not None and max_seconds < seconds:
        line += f"; train.max_minutes stops it after {describe_duration(max_seconds)}"
        seconds = max_seconds
    if stops_when_solved:
        line += "; less if it is solved sooner"
    lines = [line + "; training steps only, validation and checkpoints add to it"]
    if on_cpu and seconds > CPU_NOTICE_HOURS * 3600:
        if cpu_alternative:
            lines.append(f"notice: this recipe is sized for a GPU; on this CPU try the CPU-sized recipe instead: manntk train {cpu_alternative}")
        else:
            lines.append("notice: this is a long run for a CPU: run it on a GPU, or cap it with train.max_minutes=MINUTES")
    return lines
