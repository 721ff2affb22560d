"""``manntk reproduce``: a tiny set of two runs, its results table, and a second invocation that resumes or skips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("matplotlib")

from manntk.cli import main
from manntk.tools.reproduce import SETS_FOLDER, find_set, load_set, paper_text, plan_runs, recipe_differences
from manntk.training.metrics import read_metrics

TINY = {
    "name": "tiny-copy",
    "task": {"name": "copy", "width": 3, "max_length": 4, "validation_batches": 2, "validation_batch_size": 4},
    "model": {"cell": {"name": "armin", "hidden_size": 8}, "addressing": {"name": "auto"},
              "write": {"name": "overwrite"}, "memory": {"slots": 4, "width": 8}},
    "train": {"batch_size": 2, "steps": 1000, "log_every": 1, "eval_every": 1, "checkpoint_every": 1, "device": "cpu",
              "optimizer": {"lr": 0.01}},
}


@pytest.fixture
def tiny_set(tmp_path) -> Path:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    lstm = ["model.cell={name: lstm, hidden_size: 8}", "model.addressing={name: none}", "model.write={name: none}", "name=tiny-lstm"]
    the_set = {
        "name": "tiny", "source": "a test", "budget": {"minutes": 30}, "parallel": 2, "metric": "bce",
        "runs": [
            {"label": "ARMIN tiny", "recipe": "recipes/tiny.yaml", "paper": {"iterations_k": 7.6, "minutes": 6}},
            {"label": "LSTM", "recipe": "recipes/tiny.yaml", "overrides": lstm, "paper": {"final_loss": 0.359, "minutes": 66}},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(the_set, sort_keys=False))
    return path


def rows(run_dir: Path, split: str = "train") -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in read_metrics(run_dir / "metrics.jsonl") if row["split"] == split and not row.get("final")]


def test_a_set_runs_tabulates_then_skips_and_resumes(tiny_set, tmp_path, capsys):
    root = tmp_path / "runs"
    args = ["reproduce", str(tiny_set), "--budget-steps", "3", "--runs-root", str(root)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "starting ARMIN tiny" in out and "starting LSTM" in out
    folder = root / "tiny"
    armin, lstm = folder / "ARMIN-tiny", folder / "LSTM"
    report = json.loads((folder / "results.json").read_text())
    assert [row["label"] for row in report["rows"]] == ["ARMIN tiny", "LSTM"]
    for row in report["rows"]:
        assert row["measured"]["status"] == "finished" and row["measured"]["steps"] == 3
        assert 0 < row["measured"]["valid"] < 2 and row["measured"]["stop_reason"] == "steps"
    assert report["rows"][0]["paper_text"] == "solved in 7.6k it, 6 min"
    assert report["budget"] == ["train.steps=3"]  # the command line replaced the set's 30 minutes
    markdown = (folder / "results.md").read_text()
    assert "| ARMIN tiny | solved in 7.6k it, 6 min | unsolved after 3 it" in markdown
    assert "unsolved, loss 0.359, 66 min" in markdown and "![learning curves](curves.png)" in markdown
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((lstm / "recipe.yaml").read_text())
    assert saved["model"]["cell"]["name"] == "lstm" and saved["train"]["threads"] == 1  # parallel runs: one thread each
    before = {run: (run / "metrics.jsonl").read_text() for run in (armin, lstm)}
    assert [step for step, _ in rows(armin)] == [1, 2, 3]

    # again: both finished, nothing runs, nothing changes
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2 and "starting" not in out
    assert {run: (run / "metrics.jsonl").read_text() for run in (armin, lstm)} == before

    # interrupt ARMIN after its checkpoint of step 2: it resumes there, LSTM stays as it was
    (armin / "results.json").unlink()
    shutil.rmtree(armin / "checkpoints" / "step-00000003")
    (armin / "checkpoints" / "latest").write_text("step-00000002\n")
    straight = rows(armin)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resuming ARMIN tiny" in out and "LSTM             finished, skipped" in out
    assert [step for step, _ in rows(armin)] == [1, 2, 3]  # rows after step 2 rewritten, not duplicated
    assert [loss for _, loss in rows(armin)] == pytest.approx([loss for _, loss in straight], rel=1e-5)
    assert "--resume" in (armin / "train.log").read_text()
    assert (lstm / "metrics.jsonl").read_text() == before[lstm]
    assert json.loads((folder / "results.json").read_text())["rows"][0]["measured"]["status"] == "finished"

    # a bigger budget does not silently redo finished runs; --fresh does (here only the LSTM)
    assert main([*args[:3], "4", *args[4:], "--dry-run"]) == 0
    assert "saved recipe differs from the set's now (train.steps)" in capsys.readouterr().out
    assert main([*args[:3], "4", *args[4:], "--only", "LSTM", "--fresh"]) == 0
    assert [step for step, _ in rows(lstm)] == [1, 2, 3, 4]
    assert [step for step, _ in rows(armin)] == [1, 2, 3]
    report = json.loads((folder / "results.json").read_text())
    assert [row["measured"]["steps"] for row in report["rows"]] == [3, 4]  # the table still lists every run


def test_set_errors(tiny_set, tmp_path, capsys):
    assert main(["reproduce", str(tiny_set), "--only", "GRU", "--runs-root", str(tmp_path)]) == 2
    assert "no run labelled GRU" in capsys.readouterr().err
    assert main(["reproduce", "no-such-set"]) == 2
    assert "table1-copy" in capsys.readouterr().err  # the known sets are listed
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [{label: a, recipe: missing.yaml}, {label: a, recipe: x.yaml, color: red}]\n")
    assert main(["reproduce", str(bad), "--dry-run"]) == 2
    assert "unknown keys: color" in capsys.readouterr().err




def test_the_shipped_sets_load_and_their_recipes_validate(tmp_path):
    names = sorted(path.stem for path in SETS_FOLDER.glob("*.yaml"))
    assert {"table1-copy", "table1-armin", "pmnist", "ptb-cpu"} <= set(names)
    for name in names:
        repro = load_set(find_set(name))
        assert repro.entries and all(entry.recipe.is_file() for entry in repro.entries)
        assert all(paper_text(entry.paper) for entry in repro.entries)
        plans = plan_runs(repro, tmp_path / name, ["train.threads=1"])  # every recipe + overrides validates
        assert all(plan.action == "start" for plan in plans)
    copy = load_set(find_set("table1-copy"))
    assert {entry.label for entry in copy.entries} == {"ARMIN", "AwTA", "TARDIS", "NTM-style", "LSTM"}
    # 5 runs, 2 at a time: at most 3 waves of the budget must fit in the 90 minutes of the acceptance test
    assert copy.budget_minutes * 3 <= 80 and copy.parallel == 2


def test_recipe_differences_ignore_threads_and_device():
    saved = {"train": {"steps": 3, "threads": 1, "device": "cpu"}, "name": "a"}
    assert recipe_differences(saved, {"train": {"steps": 3, "threads": None, "device": "auto"}, "name": "a"}) == []
    assert recipe_differences(saved, {"train": {"steps": 4}, "name": "a"}) == ["train.steps"]
