"""Per arm of a study, how many runs solved and then stayed solved to the end of their
budget: the NTM-style copy issue's acceptance ("solves copy, validation and test under
0.01, within 20k steps and stays under the threshold to the end of its budget").

    python benchmarks/stayed_solved.py runs/studies/ntm-copy-seeds [ARM ...]

Read from every ``seed-*`` folder's ``results.json``, whatever seeds the study file named
when it last ran (``manntk study report`` counts the seeds its ``study.yaml`` names; runs
of the same arm made from copies of the file with other seeds sit in the same folder).
A run counts as solved and stayed solved when it solved (the trainer's ``solved_step``:
validation and test under the threshold), had no relapse after that (``relapses``: a
validation not solved after the solved step) and ended solved. Unfinished runs (no
``results.json``, or stopped before their budget without diverging) are left out and
listed; a run that diverged counts as not solved.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def verdict(results: dict) -> str:
    """``stayed``, ``relapsed``, ``unsolved`` or ``diverged`` for a finished run's results."""
    if results.get("stop_reason") == "diverged":
        return "diverged"
    if results.get("solved_step") is None:
        return "unsolved"
    return "stayed" if results.get("relapses", 0) == 0 and results.get("solved") else "relapsed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study directory (runs/studies/<name>)")
    parser.add_argument("arms", nargs="*", help="arms to read (default: every arm folder)")
    args = parser.parse_args()
    arms = args.arms or sorted(path.name for path in args.study.iterdir() if any(path.glob("seed-*")))
    for arm in arms:
        verdicts: dict[int, str] = {}
        solved_at: list[int] = []
        unfinished: list[int] = []
        for folder in sorted((args.study / arm).glob("seed-*"), key=lambda path: int(path.name.split("-")[1])):
            seed = int(folder.name.split("-")[1])
            file = folder / "results.json"
            results = json.loads(file.read_text()) if file.exists() else None
            if results is None or (results.get("stop_reason") not in ("steps", "solved", "diverged")):
                unfinished.append(seed)
                continue
            verdicts[seed] = verdict(results)
            if results.get("solved_step") is not None:
                solved_at.append(results["solved_step"])
        stayed = [seed for seed, value in verdicts.items() if value == "stayed"]
        others = {value: [seed for seed, v in verdicts.items() if v == value] for value in ("relapsed", "unsolved", "diverged")}
        quartiles = statistics.quantiles(solved_at, n=4) if len(solved_at) > 1 else solved_at * 3
        print(f"{arm}: {len(stayed)} of {len(verdicts)} solved and stayed solved"
              + "".join(f"; {name} {seeds}" for name, seeds in others.items() if seeds)
              + (f"; solved at a median of {statistics.median(solved_at):g} [{quartiles[0]:g}, {quartiles[2]:g}]" if solved_at else "")
              + (f"; unfinished {unfinished}" if unfinished else ""))


if __name__ == "__main__":
    main()
