"""``manntk plot`` and ``manntk inspect`` on tiny trained runs: PNGs and the numbers of the memory."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from manntk.build import build_experiment
from manntk.cli import main
from manntk.tools.inspect_memory import take_example
from manntk.tools.plot import headline_metric, load_run, smooth
from manntk.recipe import load_recipe, recipe_from_mapping
from manntk.trace import tracing
from manntk.training import train
from manntk.training.checkpoint import latest_checkpoint, load_weights

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_copy(name: str = "tiny-armin", **model) -> dict:
    """ARMIN (or the given parts) on a copy task of 1..4 3-bit vectors: a few seconds of CPU."""
    parts = {"cell": {"name": "armin", "hidden_size": 8}, "addressing": {"name": "auto"},
             "write": {"name": "overwrite"}, "memory": {"slots": 4, "width": 8}, **model}
    return {
        "name": name,
        "task": {"name": "copy", "width": 3, "min_length": 3, "max_length": 4, "validation_batches": 2, "validation_batch_size": 4},
        "model": parts,
        "train": {"batch_size": 2, "steps": 8, "log_every": 1, "eval_every": 4, "device": "cpu", "optimizer": {"lr": 0.01}},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    armin = train(recipe_from_mapping(tiny_copy()), root / "armin", progress=False).run_dir
    lstm = train(recipe_from_mapping(tiny_copy("tiny-lstm", cell={"name": "lstm", "hidden_size": 8}, addressing={"name": "none"},
                                               write={"name": "none"})), root / "lstm", progress=False).run_dir
    return {"armin": armin, "lstm": lstm}


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (and a check that it is one)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small ({path.stat().st_size} bytes)"
    return struct.unpack(">II", data[16:24])


def test_plot_one_run_writes_curves_png_into_the_run(runs, capsys):
    assert main(["plot", str(runs["armin"])]) == 0
    width, height = png_size(runs["armin"] / "curves.png")
    assert width > 1.5 * height  # two panels side by side: steps and wall time
    assert "curves.png" in capsys.readouterr().out


def test_plot_several_runs_one_axis_and_errors(runs, tmp_path, capsys):
    out = tmp_path / "both.png"
    assert main(["plot", str(runs["armin"]), str(runs["lstm"]), "--out", str(out), "--x", "time", "--metric", "loss"]) == 0
    width, height = png_size(out)
    assert width < 2 * height  # one panel
    assert main(["plot", str(runs["armin"]), "--out", str(tmp_path / "x.png"), "--metric", "nonsense"]) == 2
    assert "no run has the metric 'nonsense'" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_curves_labels_and_metric_come_from_the_runs(runs):
    run = load_run(runs["armin"])
    assert run.label == "tiny-armin"  # the recipe's name
    assert headline_metric([run, load_run(runs["lstm"])]) == "bce"
    steps, _, values = run.series("valid", "bce")
    assert steps == [4, 8] and all(0 < v < 2 for v in values)
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])


def test_the_smoothed_curve_is_a_bias_corrected_average_that_starts_over_at_a_restart():
    # by hand, weight 0.5: 0 / 0.5 = 0, then (0.5 * 0 + 0.5 * 2) / (0.5 + 0.25) = 4/3
    assert smooth([0.0, 2.0], 0.5) == pytest.approx([0.0, 4 / 3])
    assert smooth([0.0, 2.0, 2.0], 0.5, breaks=[1]) == pytest.approx([0.0, 2.0, 2.0])
    assert smooth([1.0, 1.0, 3.0, 3.0], 0.5)[2] < 3.0  # without the break the old losses hold it down
    assert smooth([1.0, 1.0, 3.0, 3.0], 0.5, breaks=[2]) == pytest.approx([1.0, 1.0, 3.0, 3.0])


def test_inspect_draws_memory_and_matches_the_trace(runs, tmp_path, capsys):
    out = tmp_path / "inspect"
    assert main(["inspect", str(runs["armin"]), "--out", str(out), "--index", "1"]) == 0
    assert "inspect.png" in capsys.readouterr().out
    width, height = png_size(out / "inspect.png")
    assert height > width / 2  # input, target, output, read, write, gates stacked
    data = json.loads((out / "inspect.json").read_text())

    # the same example, run here under tracing
    recipe = load_recipe(runs["armin"] / "recipe.yaml")
    task, model = build_experiment(recipe)
    model.load_state_dict(load_weights(latest_checkpoint(runs["armin"])))
    model.eval()
    example = take_example(task, "valid", 1, recipe.eval.batch_size)
    length = example.inputs.shape[1]
    assert length in (2 * 3 + 2, 2 * 4 + 2)  # 2L + 2 steps, the padding trimmed
    assert data["steps"] == length and len(data["input"]) == length and len(data["output"]) == length
    assert data["scored_steps"] == list(range(length // 2 + 1, length))
    with torch.no_grad(), tracing() as trace:
        model(example.inputs)
    layer = data["layers"]["layer0"]
    assert layer["read_slot"] == trace["layer0.read"][:, 0].argmax(-1).tolist()
    assert layer["write_slot"] == trace["layer0.write"][:, 0].argmax(-1).tolist()
    assert layer["write_slot"][:4] == [0, 1, 2, 3]  # fill-empty-first: the 4 slots in order
    assert len(layer["read_weights"]) == length and len(layer["read_weights"][0]) == 4
    assert set(layer["gates"]) == {"g_h", "g_r", "o_r"}
    assert layer["gates"]["g_h"]["mean"] == pytest.approx(trace["layer0.g_h"][:, 0].mean(-1).tolist(), abs=1e-4)
    assert all(0 <= value <= 1 for row in data["output"] for value in row)  # sigmoid of the logits
    assert 0 < data["metrics"]["bce"] < 2


def test_inspect_default_folder_and_a_model_without_memory(runs, capsys):
    assert main(["inspect", str(runs["lstm"])]) == 0
    png_size(runs["lstm"] / "inspect.png")
    data = json.loads((runs["lstm"] / "inspect.json").read_text())
    assert data["layers"] == {}  # no memory, no ARMIN gates: only input, target and output
    assert main(["inspect", str(runs["lstm"]), "--index", "99"]) == 2
    assert "past its end" in capsys.readouterr().err
