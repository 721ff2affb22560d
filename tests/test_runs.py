"""``manntk runs``: the status of run directories told from their files alone (fabricated here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from manntk.cli import main
from manntk.training.ownership import RunLock


def fabricate(path: Path, name: str, rows: list[dict], results: dict | None = None, checkpoint: int | None = None) -> Path:
    """A run directory as the trainer leaves it: recipe, metrics, and results or a checkpoint."""
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump({"name": name}), encoding="utf-8")
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    if results is not None:
        (path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    if checkpoint is not None:
        (path / "checkpoints" / f"step-{checkpoint:08d}").mkdir(parents=True)
        (path / "checkpoints" / "latest").write_text(f"step-{checkpoint:08d}\n", encoding="utf-8")
    return path


def valid(step: int, **metrics) -> dict:
    return {"step": step, "split": "valid", **metrics}


def test_runs_lists_status_step_best_and_solved_step(tmp_path, capsys):
    root = tmp_path / "runs"
    fabricate(root / "copy-solved", "armin-copy",
              [{"step": 500, "split": "train", "bce": 0.5}, valid(500, bce=0.3, solved=0.0), valid(1000, bce=0.004, solved=1.0),
               {"step": 1000, "split": "test", "bce": 0.005, "solved": 1.0}],
              results={"step": 1000, "solved_step": 1000, "solved": True, "stop_reason": "solved"})
    fabricate(root / "copy-budget", "armin-copy", [valid(500, bce=0.2, solved=0.0), valid(1000, bce=0.25, solved=0.0)],
              results={"step": 1000, "solved_step": None, "stop_reason": "steps"})
    running = fabricate(root / "studies" / "s" / "arm" / "seed-0", "ntm-copy",
                        [valid(300, bce=0.008, solved=1.0), {"step": 300, "split": "test", "bce": 0.02, "solved": 0.0},
                         valid(400, bce=0.009, solved=1.0), {"step": 400, "split": "test", "bce": 0.009, "solved": 1.0},
                         {"step": 450, "split": "train", "bce": 0.01}], checkpoint=400)
    fabricate(root / "pmnist-stopped", "pmnist-armin", [valid(100, accuracy=0.4), valid(200, accuracy=0.6), valid(300, accuracy=0.5),
                                                        {"step": 350, "split": "train", "accuracy": 0.55}], checkpoint=300)
    (root / "empty-start").mkdir()
    (root / "empty-start" / "recipe.yaml").write_text("name: lstm-copy\n", encoding="utf-8")
    os.symlink("copy-solved", root / "latest")
    with RunLock(running):  # a trainer holds it now
        assert main(["runs", "--runs-root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "run                   recipe        status       step   best valid          solved at",
        "copy-budget           armin-copy    finished     1,000  bce 0.2 @ 500       -",
        "copy-solved           armin-copy    solved       1,000  bce 0.004 @ 1,000   1,000",
        "empty-start           lstm-copy     interrupted  0      -                   -",
        "pmnist-stopped        pmnist-armin  interrupted  300    accuracy 0.6 @ 200  -",  # accuracy: the highest
        "studies/s/arm/seed-0  ntm-copy      running      450    bce 0.008 @ 300     400",  # 300: the test disagreed
    ]
    assert main(["runs", "--runs-root", str(root)]) == 0  # the lock released: stopped, where a resume would start
    assert "studies/s/arm/seed-0  ntm-copy      interrupted  400 " in capsys.readouterr().out
    assert main(["runs", "--runs-root", str(root), "--json"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first == {"path": str(root / "copy-budget"), "recipe": "armin-copy", "status": "finished", "step": 1000,
                     "metric": "bce", "best": 0.2, "best_step": 500, "solved_step": None}


def test_runs_of_an_empty_or_missing_folder(tmp_path, capsys):
    assert main(["runs", "--runs-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"no runs under {tmp_path}\n"
    assert main(["runs", "--runs-root", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder of runs" in capsys.readouterr().err
