"""How much of a copy run's relapses the validation sequences that end with two zero
vectors explain: for every validation above the solved threshold after a run's first
solved one, the share of its BCE that comes from the lengths of those sequences, and
whether the validation would be under the threshold without those lengths.

    python benchmarks/relapse_lengths.py runs/studies/ntm-copy-seeds [--arm ntm-rmsprop]

Validations log the BCE per bit of each sequence length (``bce_by_length``), not of each
sequence, so both figures are upper bounds: the same lengths hold other sequences too,
and leaving a whole length out can bring a validation under the threshold on its own.
"First solve" here is the first validation under the threshold (the report's solved
verdict also asks the test split).
Why: the NTM-style copy runs fail sequences that end with two all-zero vectors, inputs
that look like the output phase's (``benchmarks/copy_failures.py --zero-tail 2``), and
the fixed validation set holds two of them.

Then, over every validation after the first solved one, which lengths failed: those
whose BCE per bit was over ``--failed`` (0.05 by default; a length holds ~20 of the 1,000
sequences, so one wholly wrong sequence puts it at ~0.1-0.2), counted in the shortest and
the longest fifth of the lengths (1-10 and 41-50 for copy's 1..50). The long sequences'
failures are those of the read head's lookup at the end marker (docs/results.md, "NTM-style
copy across seeds").
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

from copy_failures import ending

from manntk.build import build_experiment
from manntk.recipe import load_recipe
from manntk.tasks.algorithmic.batch import SOLVED_BCE_THRESHOLD
from manntk.tools.plot import load_run


def validation_bits(run_dir: Path) -> tuple[Counter[str], set[str]]:
    """The scored bits per sequence length of the run's validation set, and the lengths of
    its sequences that end with two zero vectors (both keyed as ``bce_by_length`` is)."""
    task, _ = build_experiment(load_recipe(run_dir / "recipe.yaml"))
    bits: Counter[str] = Counter()
    zero_tail: set[str] = set()
    for batch in task.eval_batches("valid", 100):
        for row in range(batch.targets.shape[0]):
            targets = batch.targets[row][batch.mask[row]]
            bits[str(len(targets))] += targets.numel()
            if ending(targets) == "last two zero":
                zero_tail.add(str(len(targets)))
    return bits, zero_tail


def validations(run_dir: Path) -> tuple[list[dict], int | None]:
    """The run's validation rows with BCE per length, and the index of the first solved one
    (``None`` when none is)."""
    rows = [row for row in load_run(run_dir).rows if row.get("split") == "valid" and "bce_by_length" in row]
    return rows, next((i for i, row in enumerate(rows) if row["bce"] < SOLVED_BCE_THRESHOLD), None)


def relapses(run_dir: Path) -> list[tuple[int, float, float, float]]:
    """(step, BCE, share of it from the zero-tail lengths, BCE without them) of each
    validation above the threshold after the run's first solved one."""
    bits, zero_tail = validation_bits(run_dir)
    rows, first = validations(run_dir)
    rest_bits = sum(bits.values()) - sum(bits[length] for length in zero_tail)
    found = []
    for row in rows[first:] if first is not None else []:
        if row["bce"] < SOLVED_BCE_THRESHOLD:
            continue
        loss = {length: value * bits[length] for length, value in row["bce_by_length"].items()}
        total, tail = sum(loss.values()), sum(loss[length] for length in zero_tail)
        found.append((int(row["step"]), row["bce"], tail / total if total else 0.0, (total - tail) / rest_bits))
    return found


def failed_lengths(run_dir: Path, failed: float) -> tuple[Counter[int], int]:
    """How many validations, after the run's first solved one, had each sequence length's
    BCE per bit over ``failed``; and the longest length its validations hold."""
    rows, first = validations(run_dir)
    counts = Counter(int(length) for row in (rows[first + 1:] if first is not None else [])
                     for length, value in row["bce_by_length"].items() if value > failed)
    return counts, max((int(length) for row in rows for length in row["bce_by_length"]), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study directory of copy runs (runs/studies/<name>)")
    parser.add_argument("--arm", action="append", help="arms to read (default: every arm folder)")
    parser.add_argument("--failed", type=float, default=0.05, help="a length's BCE per bit over which it counts as failed")
    args = parser.parse_args()
    arms = args.arm or sorted(path.name for path in args.study.iterdir() if any(path.glob("seed-*")))
    for arm in arms:
        runs = sorted((args.study / arm).glob("seed-*"))
        counted = [failed_lengths(run, args.failed) for run in runs]
        lengths = sum((counts for counts, _ in counted), Counter())
        if lengths:
            longest = max(most for _, most in counted)
            fifth = max(1, round(longest / 5))
            short = sum(count for length, count in lengths.items() if length <= fifth)
            long = sum(count for length, count in lengths.items() if length > longest - fifth)
            print(f"{arm}: lengths failed (BCE per bit over {args.failed:g}) after a first solve: "
                  f"1-{fifth} {short} times, {longest - fifth + 1}-{longest} {long} times, "
                  f"most often {', '.join(f'{length} ({count})' for length, count in lengths.most_common(4))}")
        found = [item for run in runs for item in relapses(run)]
        if not found:
            print(f"{arm}: no validation above {SOLVED_BCE_THRESHOLD} after a first solve")
            continue
        explained = sum(rest < SOLVED_BCE_THRESHOLD for *_, rest in found)
        print(f"{arm}: {len(found)} validations above {SOLVED_BCE_THRESHOLD} after a first solve; "
              f"{explained} would be under it without the zero-tail sequences' lengths; "
              f"median share of their BCE from those lengths {statistics.median(share for _, _, share, _ in found):.2f}")


if __name__ == "__main__":
    main()
