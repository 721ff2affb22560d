"""The command line: the demo composes and runs every paper model; overrides anywhere,
"did you mean" for commands, keys and recipe names, recipes by name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from manntk.cli import build_parser, main
from manntk.tools.demo import PAPER_MODELS, run_demo


def test_demo_runs_every_paper_model_forward_and_backward(capsys):
    assert main(["demo", "--batch-size", "2", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    for name in PAPER_MODELS:
        assert name in out
    losses = run_demo(batch_size=2, steps=5)
    assert set(losses) == set(PAPER_MODELS)
    assert all(math.isfinite(loss) and 0.5 < loss < 1.0 for loss in losses.values())  # BCE near log 2 at init


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("manntk ")
    assert main([]) == 2


def test_a_closed_pipe_is_not_an_error():
    """`manntk recipes list | head` must not end in a traceback when the reader goes away."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with a broken pipe
    try:
        writer = subprocess.run([sys.executable, "-m", "manntk", "plugins"], cwd=repo, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in writer.stderr
    assert writer.returncode == 0


def dry_run(capsys, *argv: str) -> tuple[int, str, str]:
    """``manntk train ARGV --dry-run``-style call: the exit status, stdout and stderr."""
    status = main(["train", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_overrides_may_follow_options(capsys):
    """`manntk train R --dry-run key=value` is `manntk train R key=value --dry-run`."""
    status, after, err = dry_run(capsys, "recipes/armin_copy.yaml", "--dry-run", "model.cell.hidden_size=64")
    assert status == 0, err
    status, before, err = dry_run(capsys, "recipes/armin_copy.yaml", "model.cell.hidden_size=64", "--dry-run")
    assert status == 0, err
    assert after == before and "89,004 parameters" not in after  # the override applied (the recipe's model has 89,004)


def test_a_dry_run_prints_the_resolved_recipe(capsys):
    """What `--dry-run` prints before its summary line is the resolved recipe, overrides
    and inherited settings included, as the run would save it."""
    import yaml

    from manntk.recipe import load_recipe, recipe_to_mapping

    status, out, err = dry_run(capsys, "recipes/algorithmic/copy/armin_authors.yaml", "--dry-run", "train.optimizer.lr=2.0e-4")
    assert status == 0, err
    printed, summary = out.rsplit("\n", 2)[0], out.rstrip("\n").rsplit("\n", 1)[1]
    assert summary.startswith("recipes/algorithmic/copy/armin_authors.yaml: valid; task copy")
    expected = recipe_to_mapping(load_recipe("recipes/algorithmic/copy/armin_authors.yaml", ["train.optimizer.lr=2.0e-4"]))
    assert yaml.safe_load(printed) == expected
    assert expected["train"]["optimizer"]["lr"] == 2.0e-4 and expected["train"]["optimizer"]["alpha"] == 0.95


def test_a_plugin_command_takes_overrides_between_its_options():
    args = build_parser().parse_args(["study", "run", "S", "--seeds", "2", "train.steps=200", "--out", "D"])
    assert (args.study, args.seeds, args.overrides, args.out) == ("S", 2, ["train.steps=200"], "D")


def test_a_mistyped_command_names_the_closest(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["trian", "armin_copy"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "invalid choice: 'trian'" in err and err.rstrip().endswith("did you mean 'train'?")
    with pytest.raises(SystemExit):
        main(["eval", "runs/x", "--device", "cuad"])
    assert "did you mean 'cuda'?" in capsys.readouterr().err


def test_a_mistyped_key_names_the_closest(capsys):
    status, _, err = dry_run(capsys, "recipes/armin_copy.yaml", "--dry-run", "model.cell.hiden_size=64", "train.batchsize=2")
    assert status == 2
    assert "unknown key(s): hiden_size; did you mean 'hidden_size'? @ $.model.cell" in err
    assert "unknown key(s): batchsize; did you mean 'batch_size'? @ $.train" in err


@pytest.mark.parametrize("name, parameters", [
    ("armin_copy", "89,004"), ("recipes/armin_copy.yaml", "89,004"), ("algorithmic/copy/ntm", "83,914"), ("copy/ntm", "83,914"),
    ("copy/ntm.yaml", "83,914"),
])
def test_recipes_by_name_from_anywhere(capsys, tmp_path, monkeypatch, name, parameters):
    monkeypatch.chdir(tmp_path)  # not the checkout: the names are looked up in the shipped recipes
    status, out, err = dry_run(capsys, name, "--dry-run")
    assert status == 0, err
    assert f"{name}: valid; task copy; model {parameters} parameters" in out


@pytest.mark.parametrize("name, message", [
    ("armin_cpy", "no recipe file or shipped recipe named 'armin_cpy'"),
    ("copy/nmt", "did you mean 'algorithmic/copy/ntm'"),
    ("recipes/armin_copyy.yaml", "recipe file not found: recipes/armin_copyy.yaml; did you mean 'armin_copy'"),
    ("ntm", "could be any of: algorithmic/associative_recall/ntm, algorithmic/copy/ntm,"),
])
def test_an_unknown_recipe_name_names_the_closest(capsys, tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    status, _, err = dry_run(capsys, name, "--dry-run")
    assert status == 2 and message in err, err


def test_recipes_list_names_the_shipped_recipes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here
    assert main(["recipes", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and lines[0].rstrip().endswith("train one with `manntk train NAME`")
    names = {line.split()[0] for line in lines[1:]}
    assert {"armin_copy", "algorithmic/copy/ntm", "ptb/armin_500"} <= names


def test_progress_off_a_terminal_is_one_line_per_log_step_with_the_validation_and_its_solved_line(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "armin_copy.yaml"
    overrides = ["train.steps=20", "train.log_every=10", "train.eval_every=10", "task.max_length=3", "task.validation_batches=1"]
    assert main(["train", str(recipe), *overrides, "--run-dir", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["10/20", "20/20"]
    assert all("sequences/s  budget in 0:00:0" in line for line in lines)
    assert "valid bce" in lines[1] and lines[1].endswith("solved below 0.01")
