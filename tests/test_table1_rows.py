"""benchmarks/table1_rows.py's ``--write``: the table on the page is replaced, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from table1_rows import HEADER, replace_table  # noqa: E402


def test_the_table_is_replaced_and_the_text_around_it_kept() -> None:
    header = HEADER.split("\n")
    page = "\n".join(["# Results", "", "intro", *header, "| old | row |", "| another | old |", "", "after", "| other | table |"])
    rows = [*header, "| new | row |"]
    new = replace_table(page, rows)
    assert new.split("\n") == ["# Results", "", "intro", *header, "| new | row |", "", "after", "| other | table |"]


def test_a_page_without_the_table_is_an_error_that_names_it() -> None:
    with pytest.raises(SystemExit, match="no table starting with"):
        replace_table("# Results\n\nno table here\n", HEADER.split("\n"))
