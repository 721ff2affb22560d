"""The NTM-style copy acceptance counts of benchmarks/stayed_solved.py (which runs solved
and stayed solved) and the failing-length counts of benchmarks/relapse_lengths.py, on
run folders written by hand."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import relapse_lengths  # noqa: E402
import stayed_solved  # noqa: E402


def test_verdict_of_each_kind_of_finished_run() -> None:
    assert stayed_solved.verdict({"stop_reason": "steps", "solved_step": 8000, "relapses": 0, "solved": True}) == "stayed"
    assert stayed_solved.verdict({"stop_reason": "steps", "solved_step": 8000, "relapses": 2, "solved": True}) == "relapsed"
    assert stayed_solved.verdict({"stop_reason": "steps", "solved_step": 8000, "relapses": 0, "solved": False}) == "relapsed"
    assert stayed_solved.verdict({"stop_reason": "steps", "solved_step": None, "relapses": 0, "solved": False}) == "unsolved"
    assert stayed_solved.verdict({"stop_reason": "diverged", "solved_step": None, "relapses": 0, "solved": False}) == "diverged"


def test_counts_every_seed_folder_and_lists_the_unfinished(tmp_path, monkeypatch, capsys) -> None:
    arm = tmp_path / "arm"
    runs = {3: {"stop_reason": "steps", "solved_step": 6000, "relapses": 0, "solved": True},
            12: {"stop_reason": "steps", "solved_step": 9000, "relapses": 1, "solved": True},
            50: {"stop_reason": "diverged", "solved_step": None, "relapses": 0, "solved": False},
            51: None}  # no results.json: still running
    for seed, results in runs.items():
        (arm / f"seed-{seed}").mkdir(parents=True)
        if results is not None:
            (arm / f"seed-{seed}" / "results.json").write_text(json.dumps(results))
    monkeypatch.setattr(sys, "argv", ["stayed_solved.py", str(tmp_path)])
    stayed_solved.main()
    low, _, high = statistics.quantiles([6000, 9000], n=4)  # the quartiles of the two solved steps
    assert capsys.readouterr().out.strip() == (
        "arm: 1 of 3 solved and stayed solved; relapsed [12]; diverged [50]; "
        f"solved at a median of 7500 [{low:g}, {high:g}]; unfinished [51]")


def test_failed_lengths_count_the_validations_after_the_first_solved_one(tmp_path) -> None:
    rows = [
        {"step": 500, "split": "valid", "bce": 0.3, "bce_by_length": {"1": 0.2, "2": 0.4}},  # before solving: not counted
        {"step": 1000, "split": "valid", "bce": 0.005, "bce_by_length": {"1": 0.001, "2": 0.06}},  # the first solved
        {"step": 1500, "split": "valid", "bce": 0.02, "bce_by_length": {"1": 0.01, "2": 0.06, "3": 0.2}},
        {"step": 2000, "split": "valid", "bce": 0.004, "bce_by_length": {"1": 0.07, "2": 0.01}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    counts, longest = relapse_lengths.failed_lengths(tmp_path, 0.05)
    assert counts == {2: 1, 3: 1, 1: 1} and longest == 3
