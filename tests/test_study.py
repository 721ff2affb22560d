"""``manntk study``: study files, resumable runs, and every statistic of the report
checked against a hand computation from the run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
import yaml

from manntk.cli import main
from manntk.config import ConfigError
from manntk.study import jobs_of, load_study, report_study, run_study
from manntk.study import stats
from manntk.study.report import censored_quantiles

TINY = {
    "name": "tiny-copy",
    "task": {"name": "copy", "width": 2, "min_length": 1, "max_length": 2, "validation_batches": 1, "validation_batch_size": 8},
    "model": {"cell": {"name": "armin", "hidden_size": 6}, "addressing": {"name": "auto"}, "write": {"name": "overwrite"},
              "memory": {"slots": 3, "width": 6}},
    "train": {"batch_size": 4, "steps": 40, "log_every": 10, "eval_every": 10, "checkpoint_every": 20, "device": "cpu",
              "stop_when_solved": True, "optimizer": {"lr": 0.05}},
    "eval": {"batch_size": 8},
}


def write_study(folder: Path, **extra) -> Path:
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY), encoding="utf-8")
    study = {"name": "tiny", "base": "tiny.yaml", "seeds": 3, "baseline": "soft",
             "arms": {"soft": {}, "small": {"overrides": ["model.cell.hidden_size=3"]}}, **extra}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path


# -- statistics against known answers ------------------------------------------------------


def test_wilson_interval_known_values():
    # Wilson score intervals, z = 1.96 (e.g. Newcombe 1998, table I: 0/10, 1/10; 5/10 by the formula)
    low, high = stats.wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = stats.wilson_interval(1, 10)
    assert (low, high) == (pytest.approx(0.0179, abs=1e-4), pytest.approx(0.4042, abs=1e-4))
    low, high = stats.wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_quartiles_and_censored_quantiles_by_hand():
    assert stats.quartiles([1, 2, 3, 4]) == (1.75, 2.5, 3.25)  # linear interpolation: positions 0.75, 1.5, 2.25
    # 4 runs, 3 solved at 300, 100, 200: a quarter had solved by 100, half by 200, three quarters by 300
    assert censored_quantiles([300, 100, 200], 4) == [100, 200, 300]
    # 4 runs, 1 solved: the median is censored
    assert censored_quantiles([100], 4) == [100, math.inf, math.inf]
    assert stats.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_paired_bootstrap_by_hand():
    same = stats.paired_bootstrap({0: 1.5, 1: 2.5, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 2.5})
    assert same == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5), 3)  # constant differences
    mean, low, high, pairs = stats.paired_bootstrap({0: 0.0, 1: 1.0, 5: 9.0}, {0: 0.0, 1: 0.0, 2: 4.0})
    assert (mean, pairs) == (0.5, 2) and 0.0 <= low <= 0.5 <= high <= 1.0  # only seeds 0 and 1 pair up
    assert math.isnan(stats.paired_bootstrap({0: 1.0}, {1: 1.0})[0])


# -- the study file -------------------------------------------------------------------------


def test_a_study_file_expands_grids_and_zips(tmp_path):
    path = write_study(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["arms"]["lr"] = {"grid": {"train.optimizer.lr": [0.1, 0.01], "model.cell.hidden_size": [4, 5]}}
    data["arms"]["pair"] = {"zip": {"train.optimizer.lr": [0.1, 0.01], "model.cell.hidden_size": [4, 5]}}
    data["seeds"] = [3, 7]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    study = load_study(path)
    names = [arm.name for arm in study.arms]
    assert names[:2] == ["soft", "small"] and len(names) == 2 + 4 + 2
    assert "lr[train.optimizer.lr=0.1,model.cell.hidden_size=5]" in names
    assert study.arm("pair[train.optimizer.lr=0.01,model.cell.hidden_size=5]").overrides == ("train.optimizer.lr=0.01", "model.cell.hidden_size=5")
    assert study.seeds == (3, 7)
    job = jobs_of(study, tmp_path / "out", ["train.steps=5"])[0]
    assert job.run_dir == tmp_path / "out" / "soft" / "seed-3"
    assert job.overrides[-3:] == ("train.steps=5", "train.threads=1", "train.seed=3")


def test_an_arm_can_remove_a_key_of_the_base_recipe(tmp_path):
    """``~key`` (as on the command line): the arm trains without the base recipe's key."""
    from manntk.recipe import load_recipe

    path = write_study(tmp_path, arms={"soft": {}, "no-lr": {"overrides": ["~train.optimizer.lr"]}})
    arm = load_study(path).arm("no-lr")
    assert arm.overrides == ("~train.optimizer.lr",)
    assert load_recipe(arm.recipe, list(arm.overrides)).train.optimizer.lr != TINY["train"]["optimizer"]["lr"]


def test_every_problem_of_a_study_file_is_reported_with_its_path(tmp_path):
    path = write_study(tmp_path)
    data = yaml.safe_load(path.read_text())
    data.update(seed=3, seeds=0, baseline="nope", budget={"step": 5})
    data["arms"]["bad"] = {"recipe": "missing.yaml", "overides": []}
    data["arms"]["z"] = {"zip": {"a": [1], "b": [1, 2]}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_study(path)
    text = str(caught.value)
    for expected in ("unknown key(s): seed", "seeds: at least 1", "baseline 'nope' is not an arm", "budget:",
                     "missing.yaml does not exist @ $.arms.bad.recipe", "unknown key(s): overides", "same length"):
        assert expected in text, expected


def test_the_shipped_studies_load_and_their_recipes_validate():
    from manntk.recipe import load_recipe

    for path in sorted(Path(__file__).resolve().parents[1].glob("studies/*.yaml")):
        study = load_study(path)
        for arm in study.arms:
            load_recipe(arm.recipe, [*arm.overrides, *study.budget])


# -- running and reporting ------------------------------------------------------------------


def hand_report(root: Path, arms: list[str], seeds: list[int]) -> dict[str, dict]:
    """Solve counts, iterations to solve and final BCE per arm, straight from results.json."""
    expected = {}
    for arm in arms:
        results = [json.loads((root / arm / f"seed-{s}" / "results.json").read_text()) for s in seeds]
        solved = sorted(r["solved_step"] for r in results if r["solved"])
        finals = sorted(r["metrics"]["test"]["bce"] for r in results)
        n = len(results)
        metas = [json.loads((root / arm / f"seed-{s}" / "meta.json").read_text()) for s in seeds]
        commits = {m["git"]["commit"][:7] + ("+dirty" if m["git"]["dirty"] else "") for m in metas if m.get("git")}
        expected[arm] = {"n": n, "solved": len(solved), "finals": finals, "solved_steps": solved,
                         "by_seed": {s: r["metrics"]["test"]["bce"] for s, r in zip(seeds, results)},
                         "relapsed": sum(1 for r in results if r["relapses"]), "commits": sorted(commits)}
    return expected


def test_a_tiny_study_runs_resumes_and_reports_what_the_run_directories_say(tmp_path, capsys):
    path = write_study(tmp_path)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--jobs", "2", "--out", str(out), "--plot", str(tmp_path / "study.png")]) == 0
    printed = capsys.readouterr().out
    assert "| soft | 3 |" in printed and "| small | 3 |" in printed
    assert (tmp_path / "study.png").stat().st_size > 10_000
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/results.json")}
    assert len(stamps) == 6

    # a run cut short after its checkpoint: its results go, its checkpoint stays
    interrupted = out / "small" / "seed-1"
    (interrupted / "results.json").unlink()
    assert main(["study", "run", str(path), "--jobs", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    for results, stamp in stamps.items():  # finished runs were not redone
        if results.parent != interrupted:
            assert results.stat().st_mtime_ns == stamp
    log = (interrupted / "train.log").read_text()
    assert f"--resume {interrupted}" in log.splitlines()[-1] or "--resume" in log  # the interrupted run resumed

    assert main(["study", "report", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = hand_report(out, ["soft", "small"], [0, 1, 2])
    assert report["metric"] == "bce" and report["higher_is_better"] is False and report["baseline"] == "soft"
    for arm in report["arms"]:
        hand = expected[arm["arm"]]
        n, k = hand["n"], hand["solved"]
        assert arm["n"] == n == 3 and arm["solved"] == k and arm["solve_rate"] == pytest.approx(k / n)
        assert arm["relapsed"] == hand["relapsed"] and arm["commits"] == hand["commits"]
        # the runs stop when solved: no validation after the solved one, so they stay solved from it
        assert arm["solved_to_the_end_from"] == arm["iterations_to_solve"]
        z = 1.959963984540054
        centre = (k / n + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert arm["solve_rate_ci95"] == [pytest.approx(max(0, centre - half)), pytest.approx(min(1, centre + half))]
        steps = hand["solved_steps"]  # the censored quantiles: the ceil(q n)-th solved step, if that many solved
        for name, q in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
            rank = math.ceil(q * n)
            assert arm["iterations_to_solve"][name] == (steps[rank - 1] if rank <= len(steps) else None)
        finals = hand["finals"]  # three values: the median is the middle one, the quartiles halfway to the ends
        assert arm["final"]["median"] == pytest.approx(finals[1])
        assert arm["final"]["q1"] == pytest.approx((finals[0] + finals[1]) / 2)
        assert arm["final"]["q3"] == pytest.approx((finals[1] + finals[2]) / 2)
        assert arm["final"]["mean"] == pytest.approx(sum(finals) / 3)
        mean = sum(finals) / 3
        assert arm["final"]["std"] == pytest.approx(math.sqrt(sum((f - mean) ** 2 for f in finals) / 2))
    small = next(arm for arm in report["arms"] if arm["arm"] == "small")
    differences = [expected["small"]["by_seed"][s] - expected["soft"]["by_seed"][s] for s in (0, 1, 2)]
    assert small["vs_baseline"]["mean_difference"] == pytest.approx(sum(differences) / 3)
    assert small["vs_baseline"]["pairs"] == 3
    low, high = small["vs_baseline"]["ci95"]
    assert min(differences) - 1e-12 <= low <= sum(differences) / 3 <= high <= max(differences) + 1e-12
    for name in ("report.md", "report.json", "report.csv"):
        assert (out / name).exists()
    assert (out / "report.csv").read_text().splitlines()[0].startswith("arm,n,unfinished,budget,solved")


def test_the_submitit_launcher_runs_a_tiny_study_through_its_local_executor(tmp_path):
    pytest.importorskip("submitit", reason="the cluster extra is not installed (pip install 'manntk[cluster]')")
    path = write_study(tmp_path, seeds=1)
    study = load_study(path)
    report = run_study(study, tmp_path / "out", overrides=["train.steps=10"], launcher="submitit", cluster="local", out=None)
    assert [arm["n"] for arm in report["arms"]] == [1, 1]
    assert (tmp_path / "out" / ".submitit").is_dir()


def test_a_run_that_fails_is_reported_and_the_study_exits_non_zero(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the failing arm asks for CUDA, which this machine has")
    path = write_study(tmp_path, seeds=1)
    data = yaml.safe_load(path.read_text())
    data["arms"] = {"soft": {"overrides": ["train.steps=2"]}, "gpu": {"overrides": ["train.steps=2", "train.device=cuda"]}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["study", "run", str(path), "--jobs", "2", "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "FAILED gpu/seed-0 (exit status" in captured.err
    assert "1 run(s) did not finish (gpu/seed-0)" in captured.err
    assert "| soft | 1 |" in captured.out and "| gpu | 0 (+1 unfinished) |" in captured.out


def test_a_run_that_diverged_counts_as_an_unsolved_finished_run_and_is_not_retried(tmp_path, monkeypatch, capsys):
    """small/seed-0 is trained in this process, as the study would run it, with its third
    step's gradient overflowing: it stops with results.json saying so. The study then runs
    the other arm only, exits 0, and its report counts the diverged run (1 of 1, unsolved)."""
    from manntk.recipe import load_recipe
    from manntk.training import TrainingDiverged, train
    from tests.test_training import overflow_on_call

    path = write_study(tmp_path, seeds=1)
    out = tmp_path / "out"
    job = next(job for job in jobs_of(load_study(path), out) if job.label == "small/seed-0")
    with monkeypatch.context() as patched:
        overflow_on_call(patched, 3)
        with pytest.raises(TrainingDiverged):
            train(load_recipe(job.recipe, job.overrides), job.run_dir, progress=False)
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| small | 1 | 0/1 |" in printed
    assert "**1 run(s) diverged**" in printed and "small/seed-0 at step 3" in printed
    results = json.loads((job.run_dir / "results.json").read_text())
    assert results["stop_reason"] == "diverged" and results["solved"] is False and results["step"] == 3
    report = report_study(None, out)
    assert [arm["diverged"] for arm in report["arms"]] == [0, 1]


def test_restarts_are_counted_in_the_report_and_drawn_on_the_curves(tmp_path, monkeypatch, capsys):
    """An arm whose rate is too small to make progress starts again (restart_after 10 steps)
    and an arm that learns does not: the report counts the restarted runs per arm and lists
    each run's restart steps as results.json has them, and the run's plot draws a line at
    each of them."""
    pytest.importorskip("matplotlib")
    from manntk.tools import plot as plot_module

    arms = {"soft": {}, "stuck": {"overrides": ["train.optimizer.lr=0.000000000001", "train.schedule.restart_after=10",
                                 "train.log_every=1"]}}
    path = write_study(tmp_path, seeds=1, arms=arms)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    restarts = json.loads((out / "stuck" / "seed-0" / "results.json").read_text())["restarts"]
    assert restarts and json.loads((out / "soft" / "seed-0" / "results.json").read_text())["restarts"] == []
    report = report_study(None, out)
    assert {arm["arm"]: arm["restarted"] for arm in report["arms"]} == {"soft": 0, "stuck": 1}
    assert {run["arm"]: run["restarts"] for run in report["runs"]} == {"soft": [], "stuck": restarts}
    assert "| relapsed | restarted | commit |" in printed and "restarted = runs that started again" in printed
    assert (out / "report.csv").read_text().splitlines()[1].split(",")[-2] == "0"  # soft's restarted column

    # while a run has no results.json, its training rows' restart counts place the restarts
    # (those with a training row after them: here all but one at the last step)
    running = plot_module.load_run(out / "stuck" / "seed-0")
    last_row = max(row["step"] for row in running.rows if row["split"] == "train")
    shown = [step for step in restarts if step < last_row]
    assert shown and [step for step, _ in attrs.evolve(running, results=None).restarts()] == shown

    drawn = []
    monkeypatch.setattr(plot_module, "save_figure", lambda figure, out: drawn.append(figure) or out)
    plot_module.plot_runs([out / "stuck" / "seed-0"], tmp_path / "stuck.png", x="step")
    lines = drawn[0].axes[0].lines
    vertical = [line.get_xdata()[0] for line in lines if len(set(line.get_xdata())) == 1 and line.get_linestyle() == "-."]
    assert vertical == restarts
    # the smoothed training curve starts over after each restart: at the first row after it, it is that row's loss
    steps, _, losses = running.series("train", "bce")
    smoothed = next(line.get_ydata() for line in lines if line.get_linewidth() == 1.6)
    for step in shown:
        after = next(i for i, s in enumerate(steps) if s > step)
        assert smoothed[after] == pytest.approx(losses[after]) and smoothed[after - 1] != pytest.approx(losses[after - 1])


def test_arms_runs_only_the_named_arms_and_the_report_still_lists_every_arm(tmp_path, capsys):
    path = write_study(tmp_path, seeds=1)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out), "--arms", "small", "train.steps=4"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.parent.parent.name for p in out.glob("*/seed-*/results.json")) == ["small"]
    assert "| small | 1 |" in printed and "| soft | 0 (+1 unfinished) |" in printed


def test_a_later_run_with_fewer_seeds_keeps_the_earlier_runs_in_the_report(tmp_path, capsys):
    """Seeds 0-1 of one arm, then --seeds 1 of the other into the same directory: the saved
    study file and the report still cover seed 1 of the first arm (the union of the seeds)."""
    path = write_study(tmp_path, seeds=2)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out), "--arms", "small", "train.steps=4"]) == 0
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out), "--arms", "soft", "--seeds", "1", "train.steps=4"]) == 0
    printed = capsys.readouterr().out.split("\n")
    assert yaml.safe_load((out / "study.yaml").read_text())["seeds"] == [0, 1]
    assert any(line.startswith("| small | 2 |") for line in printed[-40:])
    assert any(line.startswith("| soft | 1 (+1 unfinished) |") for line in printed[-40:])


def test_sigterm_to_a_study_stops_its_running_trainings_with_a_checkpoint(tmp_path):
    """``kill`` (SIGTERM, a scheduler's stop) of ``manntk study run`` ends the training it
    runs as Ctrl-C does: the training checkpoints and stops before the study exits (130),
    rather than running on alone."""
    import signal
    import subprocess
    import sys
    import time

    path = write_study(tmp_path, seeds=1)
    out = tmp_path / "out"
    run = out / "soft" / "seed-0"
    command = [sys.executable, "-m", "manntk", "study", "run", str(path), "--jobs", "1", "--out", str(out), "--arms", "soft",
               "train.steps=100000", "train.log_every=1"]
    study = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    study.send_signal(signal.SIGTERM)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 130, err
    assert "stopping the running trainings" in err
    log = (run / "train.log").read_text()
    assert "stopped: SIGTERM at step" in log and f"--resume {run}" in log  # the training took the signal and saved
    assert (run / "checkpoints" / "latest").exists() and not (run / "results.json").exists()


def test_report_arms_shows_and_plots_only_the_named_arms(tmp_path, capsys):
    path = write_study(tmp_path, seeds=1)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out), "train.steps=4"]) == 0
    capsys.readouterr()
    assert main(["study", "report", str(out), "--arms", "soft", "--plot", str(tmp_path / "soft.png")]) == 0
    printed = capsys.readouterr().out
    assert "| soft | 1 |" in printed and "| small |" not in printed and (tmp_path / "soft.png").stat().st_size > 0
    assert "| small |" in (out / "report.md").read_text()  # the files beside the runs keep every arm
    assert main(["study", "report", str(out), "--arms", "smal"]) != 0
    assert "no arm 'smal' (did you mean 'small'?)" in capsys.readouterr().err
    assert main(["study", "report", str(out), "--arms", ","]) != 0
    assert "--arms names no arm" in capsys.readouterr().err


def test_runs_made_by_other_settings_than_their_arm_now_are_refused_before_anything_runs(tmp_path, capsys):
    path = write_study(tmp_path, seeds=1)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out), "train.steps=4"]) == 0
    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/results.json")}
    # a saved recipe from before a setting existed (its default filled in) and another thread
    # count are not changes
    saved = out / "soft" / "seed-0" / "recipe.yaml"
    data = yaml.safe_load(saved.read_text())
    del data["train"]["ema_decay"]
    saved.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out), "--threads", "2", "train.steps=4"]) == 0
    capsys.readouterr()

    study = yaml.safe_load(path.read_text())
    study["arms"]["small"]["overrides"] = ["model.cell.hidden_size=4"]
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    assert main(["study", "run", str(path), "--jobs", "1", "--out", str(out), "train.steps=4"]) != 0
    error = capsys.readouterr().err
    assert "1 run(s) already in the study directory were made by other settings" in error
    assert "small/seed-0" in error and "model.cell.hidden_size: 3 -> 4" in error and "soft/seed-0" not in error
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/results.json")} == stamps  # nothing ran again
    # a recipe file edited since: the report of the directory (its saved study file, run
    # overrides included) names the runs its arms' figures include by other settings
    base = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    base["model"]["cell"]["hidden_size"] = 5  # the small arm overrides it: only soft's run changed
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    report = report_study(None, out)
    assert {arm["arm"]: arm["changed"] for arm in report["arms"]} == {"soft": 1, "small": 0}
    assert [run["changed_settings"] for run in report["runs"] if run["arm"] == "soft"] == [["model.cell.hidden_size: 6 -> 5"]]
    assert "**1 run(s) were made by other settings than their arm gives now**" in (out / "report.md").read_text()


def test_an_unknown_arm_is_refused_with_the_nearest_name_before_anything_runs(tmp_path, capsys):
    path = write_study(tmp_path, seeds=1)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--out", str(out), "--arms", "smal"]) != 0
    error = capsys.readouterr().err
    assert "no arm 'smal'" in error and "did you mean 'small'?" in error and "its arms: soft, small" in error
    assert not out.exists()


def test_a_runs_commit_is_read_from_its_meta_json(tmp_path):
    from manntk.study.report import run_commit

    assert run_commit(tmp_path) is None  # no meta.json
    (tmp_path / "meta.json").write_text(json.dumps({"git": {"commit": "0123456789abcdef", "dirty": True}}))
    assert run_commit(tmp_path) == "0123456+dirty"
    (tmp_path / "meta.json").write_text(json.dumps({"git": {"commit": "fedcba9876543210", "dirty": False}}))
    assert run_commit(tmp_path) == "fedcba9"
    (tmp_path / "meta.json").write_text(json.dumps({"git": None}))  # not a git checkout
    assert run_commit(tmp_path) is None


def test_the_plot_leaves_out_the_solve_panel_for_a_task_without_a_threshold(tmp_path, monkeypatch):
    """A study of character LM runs (no verdict: ``solved`` is None) gets the curves alone;
    one with verdicts also the ECDF of iterations to solve."""
    pytest.importorskip("matplotlib")
    from manntk.study import report as report_module
    from manntk.tools import plot as plot_module

    drawn = []
    monkeypatch.setattr(plot_module, "save_figure", lambda figure, out: drawn.append(len(figure.axes)) or out)

    def study(solved):
        return {"study": "s", "metric": "bpc", "arms": [{"arm": "a", "budget": 4}], "curves": {"a/seed-0": [[1, 2.0], [2, 1.5]]},
                "runs": [{"arm": "a", "finished": True, "solved": solved, "solved_step": 2 if solved else None}]}

    report_module.plot(study(None), tmp_path / "lm.png")
    report_module.plot(study(True), tmp_path / "copy.png")
    assert drawn == [1, 2]


def test_solved_to_the_end_from_is_the_validation_after_the_last_relapse():
    from manntk.study.report import stays_solved_from

    steps = [500, 1000, 1500, 2000, 2500, 3000]
    assert stays_solved_from(steps, [0, 1, 1, 1, 1, 1], 1000) == 1000  # no relapse: the first solved validation
    assert stays_solved_from(steps, [0, 1, 0, 1, 0, 1], 1000) == 3000  # the last relapse at 2500
    assert stays_solved_from(steps, [1, 0, 1, 1, 1, 1], 1500) == 1500  # before solved_step (not test-confirmed) ignored
    assert stays_solved_from(steps, [0, 1, 1, 1, 1, 0], 1000) is None  # unsolved at the end
    assert stays_solved_from(steps, [0, 1, 1, 1, 1, 1], None) is None
