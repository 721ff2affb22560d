"""Faults a run must survive without losing work: a reused run directory, two trainers on
one directory, torn and tampered files, signals, non-finite weights, planted pickles, and
every error a user can cause (bad recipe values, OS errors, out of memory, broken plugins,
a batch torchrun cannot split) as one clear message.
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


# -- every error a user can cause is one clear message ----------------------------------


def recipe_file(tmp_path: Path, text: str | None = None, **changes) -> Path:
    """``tiny_copy`` as a YAML file, with top-level sections replaced by ``changes``, or ``text`` as given."""
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({**tiny_copy(), **changes}, sort_keys=False), encoding="utf-8")
    return path


def run_dirs(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "runs").glob("*"))


def train_cli(tmp_path: Path, recipe: Path, *overrides: str) -> tuple[int, str]:
    """``manntk train RECIPE OVERRIDES`` with runs under ``tmp_path/runs``: the exit status and stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["train", str(recipe), *overrides, "--runs-root", str(tmp_path / "runs"), "--no-progress"])
    return status, err.getvalue()


@pytest.mark.parametrize("override, message", [
    ("train.optimizer.lr=.nan", "expected a finite number, got nan @ $.train.optimizer.lr"),
    ("train.optimizer.lr=.inf", "expected a finite number, got inf @ $.train.optimizer.lr"),
    ("train.optimizer.betas=[0.9, -.inf]", "expected a finite number, got -inf @ $.train.optimizer.betas[1]"),
    ("train.max_minutes=.nan", "expected a finite number, got nan @ $.train.max_minutes"),
    ("model.memory.slots=1e9", "expected an integer, got '1e9' @ $.model.memory.slots"),  # YAML 1.1 reads 1e9 as text
    ("model.memory.slots=1000000000", "the memory cannot fit: 1 layer(s) x batch 2 x 1000000000 slots x 8 wide x 4 bytes "
                                      "= 64,000,000,000 bytes (59.6 GiB)"),
    ("eval.splits=[valid, tset]", "unknown split 'tset'; task 'copy' has: valid, test @ $.eval.splits"),
])
def test_fault_a_bad_recipe_value_is_one_message_before_any_run_directory(tmp_path, monkeypatch, override, message):
    import manntk.build

    monkeypatch.setattr(manntk.build, "available_bytes", lambda device: 2**34)  # 16 GiB, whatever this machine has
    status, err = train_cli(tmp_path, recipe_file(tmp_path), override)
    assert status == 2 and message in err, err
    assert err.startswith("manntk train: error: 1 problem(s)") and "Traceback" not in err
    assert run_dirs(tmp_path) == []  # found before the run's directory was made (or kept)


def test_fault_every_bad_value_of_a_section_is_reported_at_once(tmp_path):
    status, err = train_cli(tmp_path, recipe_file(tmp_path), "train.optimizer.lr=-1", "train.optimizer.eps=0",
                            "train.batch_size=0", "train.log_every=0", "model.cell.hidden_size=x", "model.memory.slots=-4")
    assert status == 2 and "6 problem(s)" in err, err
    for line in ("lr must be positive, got -1.0 @ $.train.optimizer.lr", "eps must be positive, got 0.0 @ $.train.optimizer.eps",
                 "batch_size must be positive, got 0 @ $.train.batch_size", "log_every must be positive, got 0 @ $.train.log_every",
                 "expected an integer, got 'x' @ $.model.cell.hidden_size", "slots must be positive, got -4 @ $.model.memory.slots"):
        assert line in err


def test_fault_a_duplicate_key_names_both_lines(tmp_path):
    text = recipe_file(tmp_path).read_text(encoding="utf-8")
    lines = text.splitlines()
    first = next(number for number, line in enumerate(lines, 1) if line.strip().startswith("steps:"))
    path = recipe_file(tmp_path, text.replace("  log_every: 1\n", "  log_every: 1\n  steps: 60\n"))
    again = next(number for number, line in enumerate(path.read_text().splitlines(), 1) if line == "  steps: 60")
    status, err = train_cli(tmp_path, path)
    assert status == 2 and f"{path} (line {again}, column 3): duplicate key 'steps': first on line {first}, again on line {again}" in err
    assert main(["train", str(path), "train.optimizer={lr: 0.1, lr: 0.2}", "--dry-run"]) == 2  # an override's value too


def test_fault_a_recipe_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: caf\u00e9\n".encode("latin-1"))
    status, err = train_cli(tmp_path, path)
    assert status == 2 and f"recipe file {path} is not UTF-8 text: byte 0xe9 at byte offset 16" in err, err


def test_fault_a_missing_text_file_is_named_before_any_run_directory(tmp_path):
    missing = tmp_path / "corpus.txt"
    path = recipe_file(tmp_path, task={"name": "char_lm", "dataset": "text", "path": str(missing)})
    status, err = train_cli(tmp_path, path)
    assert status == 1 and f"DataError: task.path (the text file to model): {missing} does not exist" in err, err
    assert run_dirs(tmp_path) == []


def test_fault_os_errors_are_one_line_with_the_path(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    status, err = train_cli(tmp_path, recipe_file(tmp_path), "--run-dir", str(tmp_path / "file" / "run"))
    assert (status, err) == (1, f"manntk train: error: {tmp_path / 'file' / 'run'}: Not a directory\n")

    from safetensors import SafetensorError

    def disk_full(tensors, filename):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    status, err = train_cli(tmp_path, recipe_file(tmp_path), "--run-dir", str(tmp_path / "full"))
    weights = tmp_path / "full" / "checkpoints" / ".step-00000006.tmp" / ckpt.WEIGHTS
    assert status == 1 and err == f"manntk train: error: {weights}: writing failed: Error while serializing: I/O error: " \
                                  "No space left on device (os error 28)\n", err


@pytest.mark.parametrize("error, message", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 281474976710656 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory: DefaultCPUAllocator: can't allocate memory: you tried to allocate 281474976710656 bytes."),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB"),
     "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB."),
])
def test_fault_out_of_memory_is_one_line_with_a_hint(tmp_path, monkeypatch, error, message):
    from manntk.training.trainer import Trainer

    def allocate(self, step, batch, state):
        raise error

    monkeypatch.setattr(Trainer, "train_step", allocate)
    status, err = train_cli(tmp_path, recipe_file(tmp_path))
    assert status == 1 and message in err and "lower train.batch_size" in err and "Traceback" not in err, err


EXITS_ON_IMPORT = "import sys\nsys.exit(3)\n"
RAISES_ON_IMPORT = "raise RuntimeError('this plugin is broken')\n"
EXITS_ON_REGISTER = '''
import sys
from manntk.hookspecs import hookimpl


@hookimpl
def register_commands(commands):
    sys.exit("no commands today")
'''


def test_fault_a_plugin_that_exits_or_raises_breaks_no_command(tmp_path, monkeypatch, capsys):
    import manntk.plugins
    from tests.test_plugins import install_fake_distribution

    install_fake_distribution(tmp_path, "manntk_exits", {"exits_plugin": EXITS_ON_IMPORT}, {"exits": "exits_plugin"})
    install_fake_distribution(tmp_path, "manntk_raises", {"raises_plugin": RAISES_ON_IMPORT}, {"raises": "raises_plugin"})
    install_fake_distribution(tmp_path, "manntk_quits", {"quits_plugin": EXITS_ON_REGISTER}, {"quits": "quits_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(manntk.plugins, "_default", None)  # the process-wide plugins load again, with them
    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "exits (manntk_exits 0.1): SystemExit: the plugin called sys.exit(3)" in out
    assert "raises (manntk_raises 0.1): RuntimeError: this plugin is broken" in out
    assert "quits (manntk_quits 0.1): register_commands: SystemExit: the plugin called sys.exit('no commands today')" in out
    assert main(["recipes", "validate", str(recipe_file(tmp_path))]) == 0  # the other commands work
    with pytest.raises((SystemExit, RuntimeError)):  # strict: the first failure, as it came
        manntk.plugins.load_plugins(strict=True)


@pytest.mark.parametrize("rank", [0, 1])
def test_fault_torchrun_with_a_batch_that_does_not_split_is_one_error_from_rank_0(tmp_path, monkeypatch, rank):
    from manntk.training.distributed import Distributed

    monkeypatch.setattr(Distributed, "from_environment", classmethod(lambda cls, device_type: cls(rank=rank, world_size=2)))
    monkeypatch.setenv("RANK", str(rank))
    status, err = train_cli(tmp_path, recipe_file(tmp_path), "train.batch_size=3")
    assert status == 2
    if rank == 0:
        assert "train.batch_size (3) must be divisible by the number of processes (2): give a multiple of 2 @ $.train.batch_size" in err
    else:
        assert err == ""  # the other ranks find the same problem and leave the saying of it to rank 0
    assert run_dirs(tmp_path) == []


def test_fault_the_best_checkpoint_survives_pruning_and_relapses_are_counted(tmp_path, monkeypatch):
    """A run that solved, then relapsed: the checkpoint of its best validation is kept (and
    named by checkpoints/best) however many newer ones pruning removes, and results.json
    counts the relapses."""
    import manntk.training.trainer as trainer_module

    verdicts = iter([0.5, 0.005, 0.2, 0.3, 0.4, 0.45])  # solved at the second validation, then worse
    last: dict[str, float] = {}

    def evaluate(model, task, split, *args, **kwargs):
        if split == "valid":
            bce = next(verdicts)
            last.update(loss=bce, bce=bce, solved=float(bce < 0.01))
        return dict(last)  # the test split agrees with the validation before it

    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    mapping = tiny_copy(steps=6, eval_every=1, checkpoint_every=1, stop_when_solved=False)
    mapping["eval"] = {"splits": ["test"]}
    run = train(recipe_from_mapping(mapping), tmp_path / "run", progress=False).run_dir
    assert (run / "checkpoints" / "best").read_text().strip() == "step-00000002"
    assert checkpoints(run) == ["step-00000002", "step-00000005", "step-00000006"]
    summary = json.loads((run / "results.json").read_text())
    assert summary["best"] == {"step": 2, "bce": 0.005} and summary["solved_step"] == 2 and summary["relapses"] == 4


@pytest.mark.parametrize("phase", ["weights", "state", "trainer", "manifest", "rename", "latest", "prune"])
def test_fault_a_kill_at_any_phase_of_a_checkpoint_write_loses_no_checkpoint(tmp_path, monkeypatch, phase):
    """The run dies while writing its second checkpoint (step 4), at each phase in turn
    (``$MANNTK_FAULT_AT``; a ``Killed`` exception stands for the kill). The first
    checkpoint stays whole, the resume continues from the newest whole one, and the run
    ends exactly as one that was never killed."""
    mapping = tiny_copy(steps=6, checkpoint_every=2)
    straight = train(recipe_from_mapping(mapping), tmp_path / "straight", progress=False)
    monkeypatch.setenv(ckpt.FAULT_AT, f"{phase}@4")
    with pytest.raises(ckpt.Killed):
        train(recipe_from_mapping(mapping), tmp_path / "run", progress=False)
    monkeypatch.delenv(ckpt.FAULT_AT)
    newest = ckpt.latest_checkpoint(tmp_path / "run")
    ckpt.verify(newest)  # whatever latest names is whole
    assert newest.name == ("step-00000004" if phase in ("latest", "prune") else "step-00000002")
    resumed = train(recipe_from_mapping(mapping), tmp_path / "run", resume=True, progress=False)
    assert resumed.step == 6 and [row["step"] for row in train_rows(resumed.run_dir)] == [1, 2, 3, 4, 5, 6]
    assert resumed.metrics["test"]["bce"] == pytest.approx(straight.metrics["test"]["bce"], rel=1e-6)


def test_fault_a_validation_the_test_split_does_not_confirm_neither_solves_nor_stops_the_run(tmp_path, monkeypatch):
    """A lucky validation set: validation under the threshold, test above it. The run is
    not solved there and goes on; it stops at the first step both agree."""
    import manntk.training.trainer as trainer_module

    scores = {"valid": iter([0.005, 0.004, 0.003]), "test": iter([0.02, 0.006])}

    def evaluate(model, task, split, *args, **kwargs):
        bce = next(scores[split], 0.5)
        return {"loss": bce, "bce": bce, "solved": float(bce < 0.01)}

    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    result = train(recipe_from_mapping(tiny_copy(steps=6, eval_every=1, stop_when_solved=True)), tmp_path / "run", progress=False)
    assert result.solved_step == 2 and result.stop_reason == "solved" and result.step == 2
    rows = [(row["step"], row["split"]) for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if row["split"] != "train" and not row.get("final")]
    assert rows == [(1, "valid"), (1, "test"), (2, "valid"), (2, "test")]
