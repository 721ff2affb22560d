"""What a run records about where it came from (meta.json: the code's git commit and dirty
flag, the number of processes, the MANNTK_* settings), and ``runs/latest``, which names
the newest run wherever a run directory is asked for."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from manntk.cli import main
from manntk.recipe import recipe_from_mapping
from manntk.training import train
from manntk.training.ownership import LATEST, resolve_run_dir
from manntk.training.trainer import git_state

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny-copy",
    "task": {"name": "copy", "width": 3, "max_length": 3, "validation_batches": 1, "validation_batch_size": 2},
    "model": {"cell": {"name": "armin", "hidden_size": 8}, "addressing": {"name": "auto"},
              "write": {"name": "overwrite"}, "memory": {"slots": 4, "width": 8}},
    "train": {"batch_size": 2, "steps": 2, "log_every": 1, "device": "cpu"},
    "eval": {"splits": ["valid"]},
}


def git_available() -> bool:
    try:
        return subprocess.run(["git", "--version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_meta_json_records_the_code_the_processes_and_the_environment(tmp_path, monkeypatch):
    for name in [name for name in os.environ if name.startswith("MANNTK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MANNTK_OFFLINE", "1")
    monkeypatch.setenv("MANNTK_DEBUG", "0")
    monkeypatch.setenv("UNRELATED_SETTING", "x")
    run = train(recipe_from_mapping(TINY), tmp_path / "run", progress=False).run_dir
    meta = json.loads((run / "meta.json").read_text())
    assert meta["world_size"] == 1
    assert meta["environment"] == {"MANNTK_DEBUG": "0", "MANNTK_OFFLINE": "1"}
    if (REPO / ".git").exists() and git_available():  # the tests run from a checkout: its commit
        assert re.fullmatch(r"[0-9a-f]{40}", meta["git"]["commit"]), meta["git"]
        assert isinstance(meta["git"]["dirty"], bool)
    else:
        assert meta["git"] == {"commit": None, "dirty": None}


@pytest.mark.skipif(not git_available(), reason="needs git")
def test_git_state_reads_the_commit_and_the_dirty_flag(tmp_path, monkeypatch):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "file.txt").write_text("one\n")
    subprocess.run([*git, "add", "file.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "file.txt").write_text("two\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # git missing: recorded as unknown
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def train_cli(tmp_path: Path, capsys) -> Path:
    """``manntk train RECIPE --runs-root RUNS``; returns the run directory it printed."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY, sort_keys=False))
    capsys.readouterr()
    assert main(["train", str(recipe), "--runs-root", str(tmp_path / "runs"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    return Path(re.search(r"^run: (.+)$", printed, re.MULTILINE).group(1))


def test_runs_latest_names_the_newest_run_for_eval_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    first = train_cli(tmp_path, capsys)
    latest = runs / LATEST
    assert latest.is_symlink() and latest.resolve() == first.resolve()
    second = train_cli(tmp_path, capsys)
    assert second != first and latest.is_symlink() and latest.resolve() == second.resolve()
    assert sorted(p.name for p in runs.iterdir()) == sorted([first.name, second.name, LATEST])  # no temporary link left
    assert main(["eval", str(latest), "--split", "valid", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{second.resolve()} [valid]: loss ")
    assert main(["plot", str(latest)]) == 0
    assert (second / "curves.png").is_file() and not (first / "curves.png").exists()


def test_runs_latest_is_a_text_file_where_symlinks_fail(tmp_path, capsys, monkeypatch):
    def no_symlinks(self, target, target_is_directory=False):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "symlink_to", no_symlinks)
    run = train_cli(tmp_path, capsys)
    latest = tmp_path / "runs" / LATEST
    assert not latest.is_symlink() and latest.read_text().strip() == run.name
    assert resolve_run_dir(latest) == run
    assert main(["eval", str(latest), "--split", "valid", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{run} [valid]: loss ")


def test_a_run_given_its_directory_leaves_latest_alone(tmp_path):
    train(recipe_from_mapping(TINY), tmp_path / "runs" / "mine", runs_root=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs" / LATEST).exists()
