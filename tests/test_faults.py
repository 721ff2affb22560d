"""Faults a run must survive without losing work: a reused run directory, two trainers on
one directory, torn and tampered files, signals, non-finite weights, planted pickles.
``python -m pytest -k fault`` runs them (docs/runs.md lists each fault and its test)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from manntk.cli import main
from manntk.recipe import recipe_from_mapping
from manntk.training import CheckpointError, RunDirectoryError, TrainingDiverged, train
from manntk.training import checkpoint as ckpt
from manntk.training.metrics import read_metrics
from tests.test_training import REPO, tiny_copy, train_rows

pytestmark = pytest.mark.fault


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step-*"))


def test_fault_a_new_run_never_writes_into_an_existing_run(tmp_path, capsys):
    run = train(recipe_from_mapping(tiny_copy(steps=4, checkpoint_every=2)), tmp_path / "run", progress=False).run_dir
    before, metrics = checkpoints(run), (run / "metrics.jsonl").read_bytes()
    with pytest.raises(RunDirectoryError, match=r"already holds a run.*--resume .*run.*new --run-dir"):
        train(recipe_from_mapping(tiny_copy(steps=4)), run, progress=False)
    assert checkpoints(run) == before == ["step-00000002", "step-00000004"]
    assert (run / "metrics.jsonl").read_bytes() == metrics
    assert main(["train", str(REPO / "recipes/armin_copy.yaml"), "--run-dir", str(run), "--no-progress"]) == 1
    assert "RunDirectoryError" in capsys.readouterr().err


HOLD_LOCK = """
import sys, time
from pathlib import Path
from manntk.training.ownership import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()
print("holding", flush=True)
time.sleep(60)
"""


def test_fault_a_second_trainer_on_a_run_directory_refuses_at_once(tmp_path):
    run = train(recipe_from_mapping(tiny_copy(steps=2)), tmp_path / "run", progress=False).run_dir
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.perf_counter()
        with pytest.raises(RunDirectoryError, match=rf"in use by process {holder.pid} "):
            train(recipe_from_mapping(tiny_copy(steps=4)), run, resume=True, progress=False)
        assert time.perf_counter() - started < 5
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (as after a crash): its lock went with it, the file stays
    assert (run / ".lock").exists()
    assert train(recipe_from_mapping(tiny_copy(steps=4)), run, resume=True, progress=False).step == 4


def test_fault_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    run = train(recipe_from_mapping(tiny_copy(steps=2)), tmp_path / "run", progress=False).run_dir
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as file:
        file.write('{"step": 3, "split": "train", "lo')  # a kill mid-write
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped line \d+, cut short"):
        train(recipe_from_mapping(tiny_copy(steps=4)), run, resume=True, progress=False)
    rows = read_metrics(run / "metrics.jsonl", torn_tail="raise")  # the file is whole again
    assert [row["step"] for row in train_rows(run)] == [1, 2, 3, 4]  # no duplicates, no gap
    assert len(rows) == len({(r["step"], r["split"], r.get("final", False)) for r in rows})


def test_fault_a_corrupt_metrics_line_in_the_middle_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n', encoding="utf-8")
    from manntk.training.metrics import MetricsError

    with pytest.raises(MetricsError, match=r"metrics.jsonl, line 2: not a JSON row"):
        read_metrics(path)


@pytest.mark.parametrize("fault", ["flip a bit of the weights", "flip a bit of trainer.pt", "delete the recurrent state", "delete the manifest"])
def test_fault_a_tampered_checkpoint_is_refused_naming_the_file(tmp_path, fault):
    mapping = tiny_copy(steps=2)
    mapping["task"] = {"name": "char_lm", "dataset": "text", "path": str(write_text(tmp_path))} if "state" in fault else mapping["task"]
    if "state" in fault:
        mapping["model"]["embedding"] = 4
        mapping["train"].update(tbptt=4)
    run = train(recipe_from_mapping(mapping), tmp_path / "run", progress=False).run_dir
    path = ckpt.latest_checkpoint(run)
    name = {"weights": ckpt.WEIGHTS, "trainer.pt": ckpt.TRAINER, "state": ckpt.state_file(0), "manifest": ckpt.MANIFEST}
    target = path / next(value for key, value in name.items() if key in fault)
    assert target.exists()
    if fault.startswith("flip"):
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x10
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=rf"{target.name}"):
        train(recipe_from_mapping(mapping), run, resume=True, progress=False)
    assert checkpoints(run) == ["step-00000002"]  # nothing was overwritten


def write_text(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return path


class Planted:
    """Unpickling this runs code: a checkpoint must never do that."""

    def __reduce__(self):
        return (os.system, ("touch PLANTED",))


def test_fault_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = train(recipe_from_mapping(tiny_copy(steps=2)), tmp_path / "run", progress=False).run_dir
    path = ckpt.latest_checkpoint(run)
    state = torch.load(path / ckpt.TRAINER, weights_only=True)
    state["planted"] = Planted()
    torch.save(state, path / ckpt.TRAINER)
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    manifest[ckpt.TRAINER] = ckpt.sha256(path / ckpt.TRAINER)  # a consistent manifest: only the pickle guards
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"trainer.pt is unreadable"):
        train(recipe_from_mapping(tiny_copy(steps=4)), run, resume=True, progress=False)
    assert not (tmp_path / "PLANTED").exists()
    assert pickle.dumps(Planted())  # the plant itself works: only the loader stops it


def test_fault_a_non_finite_optimizer_state_is_never_saved(tmp_path, monkeypatch):
    """Adam with an infinite second moment takes zero steps: the loss and the weights stay
    finite, and only the check before saving sees it."""
    from manntk.training.trainer import Trainer

    original = Trainer.train_step

    def poisoned(self, step, batch, state):
        result = original(self, step, batch, state)
        if step == 2:
            next(iter(self.optimizer.state.values()))["exp_avg_sq"].fill_(float("inf"))
        return result

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"optimizer state exp_avg_sq became non-finite \(not saved\) at step 4; the last good checkpoint is .*step-00000002"):
        train(recipe_from_mapping(tiny_copy(steps=6, checkpoint_every=2)), tmp_path / "run", progress=False)
    assert checkpoints(tmp_path / "run") == ["step-00000002"]


@pytest.mark.parametrize("sent, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_fault_a_signal_ends_the_run_with_a_checkpoint_and_a_resume_hint(tmp_path, sent, status):
    recipe = tmp_path / "recipe.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(tiny_copy(steps=100000, log_every=1)), encoding="utf-8")
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "manntk", "train", str(recipe), "--run-dir", str(run), "--no-progress"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(sent)
    out, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert f"stopped: {sent.name} at step" in err and f"manntk train --resume {run}" in err
    assert "Traceback" not in err
    step = json.loads((ckpt.latest_checkpoint(run) / ckpt.MANIFEST).read_text()) and int(ckpt.latest_checkpoint(run).name.split("-")[1])
    assert step > 0
    rows = train_rows(run)
    assert rows[-1]["step"] == step  # the checkpoint is at the last logged step
