"""The rows of docs/results.md's "Table 1 across seeds", regenerated from study directories.

Each row names a study directory and one of its arms (``benchmarks/table1_rows.yaml``);
the figures come from the study's report (``manntk study report``: the run directories
alone), so the page shows what the runs say, with the seeds run, the budget, the commit
the runs started from and the command that made them:

```bash
python benchmarks/table1_rows.py                          # Markdown rows on stdout
python benchmarks/table1_rows.py --write docs/results.md  # replace the table on the page
python benchmarks/table1_rows.py --check                  # also fail when a study directory is missing
```

A row whose runs are not on this machine (run directories live under the git-ignored
``runs/``, so a fresh clone has none) keeps the row the page already has: ``--write`` never
replaces measured figures by "not run yet".
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import yaml

from manntk.study import report_study
from manntk.training.checkpoint import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("| task | model (arm) | paper | seeds | solved [95% CI] | iterations to solve: median [IQR] | solved to the end from | "
          "relapsed | final test BCE: median [IQR] | budget | commit | command |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _steps(value: float | None, budget: int | None) -> str:
    if value is None:
        return f">{budget / 1000:g}k" if budget else "unsolved"
    return f"{value / 1000:g}k"


@functools.cache
def _report(folder: Path) -> dict:
    """A study directory's report, made once however many rows it has (reading every run's
    metrics takes seconds)."""
    return report_study(None, folder)


def table_span(lines: list[str]) -> tuple[int, int] | None:
    """Where the table that starts with ``HEADER``'s first line lies in ``lines`` (first
    line, one past the last), or ``None`` when the page has none."""
    first = HEADER.split("\n")[0]
    if first not in lines:
        return None
    start = end = lines.index(first)
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def replace_table(page: str, rows: list[str]) -> str:
    """``page`` with the table that starts with ``HEADER``'s first line replaced by ``rows``."""
    lines = page.split("\n")
    span = table_span(lines)
    if span is None:
        raise SystemExit(f"no table starting with {HEADER[:40]!r}... on the page")
    return "\n".join(lines[:span[0]] + rows + lines[span[1]:])


def row_key(line: str) -> tuple[str, str]:
    """A row's task and model cells: what names the row whatever its figures."""
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return cells[0], cells[1] if len(cells) > 1 else ""


def page_rows(page: str) -> dict[tuple[str, str], str]:
    """The rows of the page's table, by [`row_key`][]."""
    lines = page.split("\n")
    span = table_span(lines)
    if span is None:
        return {}
    return {row_key(line): line for line in lines[span[0] + 2:span[1]]}


def row(spec: dict) -> str | None:
    """One Markdown row for ``spec`` (study, arm, task, model, paper, command), or ``None``
    when no run of the arm has finished in the study directory here."""
    folder = ROOT / spec["study"]
    if not (folder / "study.yaml").exists():
        return None
    report = _report(folder)
    arm = next(entry for entry in report["arms"] if entry["arm"] == spec["arm"])
    runs = [run for run in report["runs"] if run["arm"] == spec["arm"] and run["finished"]]
    if not runs:
        return None
    seeds = ", ".join(str(run["seed"]) for run in runs) or "none yet"
    if arm["unfinished"]:
        seeds += f" (+{arm['unfinished']} not run or unfinished)"
    budget = arm["budget"]
    if arm["solved"] is None:
        solved = iterations = stays = "—"
    else:
        low, high = arm["solve_rate_ci95"]
        solved = f"**{arm['solved']} / {arm['n']}** [{low:.2f}, {high:.2f}]"
        it = arm["iterations_to_solve"]
        iterations = f"{_steps(it['median'], budget)} [{_steps(it['q1'], budget)}, {_steps(it['q3'], budget)}]"
        end = arm["solved_to_the_end_from"]
        stays = f"{_steps(end['median'], budget)} [{_steps(end['q1'], budget)}, {_steps(end['q3'], budget)}]"
    final = arm["final"]
    finals = "—" if not arm["n"] else f"{final['median']:.3g} [{final['q1']:.3g}, {final['q3']:.3g}]"
    commits = ", ".join(arm["commits"]) or "—"
    return (f"| {spec['task']} | {spec['model']} (`{spec['arm']}`) | {spec['paper']} | {seeds} | {solved} | {iterations} | {stays} | "
            f"{arm['relapsed']} | {finals} | {f'{budget:,} it' if budget else '—'} | {commits} | `{spec['command']}` |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", default=str(ROOT / "benchmarks" / "table1_rows.yaml"))
    parser.add_argument("--check", action="store_true", help="fail when a row's study directory is missing")
    parser.add_argument("--write", metavar="PAGE", help="replace the table on this Markdown page instead of printing it")
    args = parser.parse_args()
    specs = yaml.safe_load(Path(args.rows).read_text(encoding="utf-8"))
    page = Path(args.write) if args.write else None
    kept = page_rows(page.read_text(encoding="utf-8")) if page else {}
    lines = HEADER.split("\n")
    missing = []
    for spec in specs:
        line = row(spec)
        if line is None:
            missing.append(f"{spec['study']} --arms {spec['arm']}")
            name = (spec["task"], f"{spec['model']} (`{spec['arm']}`)")
            line = kept.get(name, f"| {name[0]} | {name[1]} | {spec['paper']} | not run yet | | | | | | | | `{spec['command']}` |")
        lines.append(line)
    if page:
        write_text_atomic(page, replace_table(page.read_text(encoding="utf-8"), lines))
    else:
        print("\n".join(lines))
    if missing:
        print("no finished run here (the page's row kept where it had one): " + "; ".join(missing), file=sys.stderr)
    return 1 if missing and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
