"""How often the runs of a study's arms were wrong after they had first solved, counted in
wrong bits rather than BCE: a model that is less sure of itself pays less BCE for the same
mistake, so an arm can stay under a BCE threshold more often without being right more
often.

    python benchmarks/relapse_errors.py runs/studies/ntm-copy-seeds [ARM ...]

For each finished run with a solved validation (the task's own verdict, read as the study
report reads it): the share of its validations from the first solved one on with at least
one wrong bit, and how many of its last ten validations had one; per arm, the median share
over its runs. Then how the runs first solved against whether they went back above the
threshold afterwards: a run that first solves with a sequence still wrong sits at about
half the threshold (one confidently wrong sequence of ~30 vectors costs ~0.004 BCE on
1,000), where a second wrong one tips it over (docs/results.md, "NTM-style copy across
seeds"); ``--margin`` (0.005 by default) splits the first solved BCEs.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import NamedTuple

from manntk.tools.plot import load_run


class AfterSolving(NamedTuple):
    """What a solved run did from its first solved validation on."""

    wrong_share: float  # share of those validations with a wrong bit
    wrong_last: int  # validations with a wrong bit among the run's last ten
    first_metric: float  # the metric of the first solved validation
    relapsed: bool  # a later validation was not solved


def after_solving(run_dir: Path) -> AfterSolving | None:
    """A finished run's record from its first solved validation on, or ``None`` for a run
    that is unfinished or never solved."""
    run = load_run(run_dir)
    if run.results is None:
        return None
    _, _, solved = run.validations("solved")
    _, _, errors = run.validations("bit_errors_per_sequence")
    _, _, metric = run.validations(run.results.get("metric", "bce"))
    first = next((i for i, flag in enumerate(solved) if flag), None)
    if first is None:
        return None
    wrong = [value > 0 for value in errors]
    return AfterSolving(sum(wrong[first:]) / len(wrong[first:]), sum(wrong[-10:]), metric[first], not all(solved[first:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study directory (runs/studies/<name>)")
    parser.add_argument("arms", nargs="*", help="arms to show (default: every arm folder)")
    parser.add_argument("--margin", type=float, default=0.005, help="split the first solved validations here (default 0.005)")
    args = parser.parse_args()
    arms = args.arms or sorted(path.name for path in args.study.iterdir() if path.is_dir())
    for arm in arms:
        runs = sorted((args.study / arm).glob("seed-*"), key=lambda path: int(path.name.removeprefix("seed-")))
        found = {run.name: after_solving(run) for run in runs}
        solved = {name: record for name, record in found.items() if record is not None}
        if not solved:
            print(f"{arm}: no finished run solved")
            continue
        shares = [record.wrong_share for record in solved.values()]
        per_run = ", ".join(f"{name} {record.wrong_share:.2f} ({record.wrong_last}/10)" for name, record in solved.items())
        print(f"{arm}: {len(solved)} solved runs; validations with a wrong bit after the first solved one: "
              f"median {statistics.median(shares):.2f}; per run, share (wrong among the last 10): {per_run}")
        for label, under in (("under", True), ("at or over", False)):
            group = [record.relapsed for record in solved.values() if (record.first_metric < args.margin) == under]
            print(f"  first solved {label} {args.margin:g}: {sum(group)} of {len(group)} went back above the threshold")


if __name__ == "__main__":
    main()
