"""``manntk bench --plot``: the growth sweeps of a report drawn as time and memory against N
and the hidden size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from manntk.cli import main
from manntk.tools.plot import PlotError, growth_lines, plot_growth, save_figure
from tests.test_plot_inspect import png_size


def point(axis: str, value: int, time: float, memory: float | None) -> dict:
    return {axis: value, "label": f"{axis}{value}", "rate": 100 / time, "rate_relative": 1 / time,
            "time_relative": time, "peak_memory_bytes": None if memory is None else int(memory * 2**20),
            **({} if memory is None else {"memory_relative": memory})}


def report(axes: tuple[str, ...] = ("slots", "hidden")) -> dict:
    """A report with the sweeps of a growth run: ARMIN and NTM-style against N, and ARMIN
    and torch.nn.LSTM against the hidden size."""
    sweeps = []
    if "slots" in axes:
        sweeps += [
            {"axis": "slots", "model": "armin", "name": "ARMIN", "mode": "eval", "hidden": 128, "slots": None,
             "points": [point("slots", 4, 1.0, 1.0), point("slots", 64, 1.02, 1.4), point("slots", 256, 1.05, 2.5)]},
            {"axis": "slots", "model": "ntm", "name": "NTM-style", "mode": "train", "hidden": 128, "slots": None,
             "points": [point("slots", 4, 1.0, 1.0), point("slots", 64, 2.0, None), point("slots", 256, 4.5, 9.0)]},
        ]
    if "hidden" in axes:
        sweeps += [
            {"axis": "hidden", "model": "armin", "name": "ARMIN", "mode": "train", "hidden": None, "slots": 16,
             "points": [point("hidden", 64, 1.0, 1.0), point("hidden", 512, 11.0, 20.0)]},
            {"axis": "hidden", "model": "torch-lstm", "name": "torch.nn.LSTM", "mode": "train", "hidden": None, "slots": 0,
             "points": [point("hidden", 64, 1.0, 1.0), point("hidden", 512, 9.0, 13.0)]},
        ]
    machine = {"cpu": "a CPU", "cores": 2, "torch": "2.13.0", "torch_threads": 1, "device": "cpu", "device_name": "a CPU"}
    return {"preset": "growth", "description": "a hand-made report", "machine": machine,
            "settings": {"dtype": "float32", "repeats": 3, "warmup": 1}, "results": [], "targets": [], "sweeps": sweeps}


def test_growth_lines_carry_each_sweep_with_what_it_holds_fixed():
    lines = growth_lines(report())
    assert [(line.name, line.mode, line.axis, line.fixed) for line in lines] == [
        ("ARMIN", "eval", "slots", "hidden 128"),
        ("NTM-style", "train", "slots", "hidden 128"),
        ("ARMIN", "train", "hidden", "N=16"),
        ("torch.nn.LSTM", "train", "hidden", "no memory"),
    ]
    assert lines[0].x == (4, 64, 256) and lines[0].time == (1.0, 1.02, 1.05) and lines[0].memory == (1.0, 1.4, 2.5)
    assert lines[1].memory == (1.0, None, 9.0)  # a point without a memory figure stays a gap
    assert lines[3].x == (64, 512) and lines[3].time == (1.0, 9.0)


def test_plot_growth_writes_one_column_per_swept_axis(tmp_path):
    both = plot_growth(report(), tmp_path / "figures" / "growth.png", title="both")
    slots_only = plot_growth(report(("slots",)), tmp_path / "slots.png", title="N")  # short titles: the panels set the width
    assert both == tmp_path / "figures" / "growth.png"
    (both_width, both_height), (one_width, one_height) = png_size(both), png_size(slots_only)
    assert both_width > 1.6 * one_width and abs(both_height - one_height) < 0.1 * both_height
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["figures", "growth.png", "slots.png"]  # no temporary files left


def test_a_report_without_sweeps_is_refused_with_what_to_run():
    with pytest.raises(PlotError, match="--preset growth"):
        growth_lines({"sweeps": []})


def test_a_figure_that_fails_to_save_leaves_the_previous_file(tmp_path):
    import matplotlib.pyplot as plt

    out = tmp_path / "growth.png"
    out.write_bytes(b"the previous figure")
    figure = plt.figure()

    def broken_savefig(path, **options):
        Path(path).write_bytes(b"half a fig")
        raise OSError("disk full")

    figure.savefig = broken_savefig
    with pytest.raises(OSError, match="disk full"):
        save_figure(figure, out)
    assert out.read_bytes() == b"the previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["growth.png"]


def test_bench_plot_from_a_run_and_from_a_saved_report(tmp_path, capsys):
    run_json, run_png = tmp_path / "run.json", tmp_path / "run.png"
    argv = ["bench", "--models", "armin", "--modes", "eval", "--hidden", "8", "--slots", "4,8", "--batch", "2", "--tbptt", "3",
            "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-memory", "--quiet", "--json", str(run_json), "--plot", str(run_png)]
    assert main(argv) == 0
    assert f"wrote {run_png}" in capsys.readouterr().err
    png_size(run_png)
    assert [(line.name, line.x) for line in growth_lines(json.loads(run_json.read_text()))] == [("ARMIN", (4, 8))]

    saved, shown = tmp_path / "saved.json", tmp_path / "shown.png"
    saved.write_text(json.dumps(report()))
    assert main(["bench", "--show", str(saved), "--plot", str(shown)]) == 0
    png_size(shown)

    assert main(["bench", "--show", str(saved), "--plot", str(tmp_path / "shown.svg")]) == 0  # the format from the suffix
    assert (tmp_path / "shown.svg").read_text().lstrip().startswith("<?xml")
    capsys.readouterr()
    assert main(["bench", "--preset", "tiny", "--plot", str(tmp_path / "growth.docx")]) == 2  # refused before the run
    captured = capsys.readouterr()
    assert "--plot: " in captured.err and "cannot write .docx images" in captured.err and "png" in captured.err
    assert "manntk bench: preset" not in captured.out  # no table: nothing ran
    assert not list(tmp_path.glob("*growth*"))

    saved.write_text(json.dumps({**report(), "sweeps": []}))
    assert main(["bench", "--show", str(saved), "--plot", str(tmp_path / "none.png")]) == 2
    assert "--plot: the report has no sweeps" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()
