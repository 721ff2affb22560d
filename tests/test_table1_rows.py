"""benchmarks/table1_rows.py's ``--write``: the table on the page is replaced, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from table1_rows import HEADER, page_rows, replace_table, row_key  # noqa: E402


def test_the_table_is_replaced_and_the_text_around_it_kept() -> None:
    header = HEADER.split("\n")
    page = "\n".join(["# Results", "", "intro", *header, "| old | row |", "| another | old |", "", "after", "| other | table |"])
    rows = [*header, "| new | row |"]
    new = replace_table(page, rows)
    assert new.split("\n") == ["# Results", "", "intro", *header, "| new | row |", "", "after", "| other | table |"]


def test_a_page_without_the_table_is_an_error_that_names_it() -> None:
    with pytest.raises(SystemExit, match="no table starting with"):
        replace_table("# Results\n\nno table here\n", HEADER.split("\n"))


def test_the_page_rows_are_found_by_task_and_model() -> None:
    header = HEADER.split("\n")
    page = "\n".join(["intro", *header, "| copy | ARMIN (`armin`) | 7.6k | 0, 1 |", "| copy | LSTM (`lstm`) | x | 2 |", "", "| copy | other (`x`) |"])
    rows = page_rows(page)
    assert rows == {("copy", "ARMIN (`armin`)"): "| copy | ARMIN (`armin`) | 7.6k | 0, 1 |",
                    ("copy", "LSTM (`lstm`)"): "| copy | LSTM (`lstm`) | x | 2 |"}
    assert row_key("| copy | ARMIN (`armin`) | 7.6k |") == ("copy", "ARMIN (`armin`)")
    assert page_rows("no table") == {}


def test_write_keeps_the_measured_rows_of_runs_that_are_not_here(tmp_path) -> None:
    """A fresh clone has no run directories: --write keeps every measured row the page has
    rather than replacing it by "not run yet"."""
    import subprocess

    page = tmp_path / "results.md"
    measured = "| copy | ARMIN (`armin`) | solved in 7.6k it | 0, 1 | **2 / 2** | 3k | 3k | 0 | 0.008 | 20,000 it | abc | `cmd` |"
    page.write_text("\n".join(["# Results", *HEADER.split("\n"), measured, "", "after"]) + "\n")
    rows = tmp_path / "rows.yaml"
    rows.write_text("- {task: copy, model: ARMIN, paper: solved in 7.6k it, study: runs/studies/no-such-study, arm: armin, command: cmd}\n"
                    "- {task: copy, model: LSTM, paper: unsolved, study: runs/studies/no-such-study, arm: lstm, command: cmd2}\n")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "table1_rows.py"
    subprocess.run([sys.executable, str(script), str(rows), "--write", str(page)], check=True, capture_output=True)
    lines = page.read_text().split("\n")
    assert measured in lines
    assert "| copy | LSTM (`lstm`) | unsolved | not run yet | | | | | | | | `cmd2` |" in lines
    assert lines[-3:] == ["", "after", ""]
