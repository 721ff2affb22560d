"""``manntk bench`` as a smoke test at toy sizes: it runs, prints its table and writes its JSON.

No timing assertions: the figures of a benchmark are reports, not test results.
"""

from __future__ import annotations

import json
import os

import pytest

from manntk.tools.bench import ALL_MODELS, MODELS, PRESETS, Case, format_table
from manntk.cli import main
from tests.conftest import fused_kernels_error

RESULT_KEYS = {
    "label", "model", "name", "mode", "unit", "hidden", "slots", "batch", "tbptt", "parameters", "rates",
    "median", "q1", "q3", "min", "max", "iqr_relative", "peak_memory_bytes", "reference", "ratio", "memory_ratio",
}


def test_tiny_preset_prints_a_table_with_every_model_and_writes_json(capsys, tmp_path):
    path = tmp_path / "results" / "tiny.json"
    assert main(["bench", "--preset", "tiny", "--quiet", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    for model in ALL_MODELS:
        assert MODELS[model].name in out
    for heading in ("median", "x LSTM", "peak MiB", "mem x LSTM", "targets", "allocator:"):
        assert heading in out
    report = json.loads(path.read_text())
    assert {"machine", "settings", "results", "targets", "sweeps", "preset", "memory_method"} <= set(report)
    assert {"cpu", "cpu_identity", "cpu_capability", "cores", "torch", "device", "device_name", "allocator", "products"} <= set(report["machine"])
    assert report["machine"]["products"] in ((None,) if fused_kernels_error() is not None else ("blas", "onednn"))
    if report["machine"]["cpu_identity"]:  # the generation is printed with the model name
        assert report["machine"]["cpu_identity"] in out
    assert report["preset"] == "tiny"
    results = report["results"]
    expected = {(m, mode) for m in ALL_MODELS for mode in ("train", "eval", "algo")}
    assert {(r["model"], r["mode"]) for r in results} == expected
    for entry in results:
        assert RESULT_KEYS <= set(entry)
        if entry["model"] == "armin-fused" and fused_kernels_error() is not None:
            assert "could not be built" in entry["error"]  # reported in the table, not fatal
            continue
        assert entry["error"] is None
        assert len(entry["rates"]) == report["settings"]["repeats"]
        assert entry["median"] > 0 and entry["peak_memory_bytes"] > 0
        if entry["model"] == "torch-lstm":
            assert entry["reference"] is None
        else:
            assert entry["reference"].startswith(f"{entry['mode']}/torch-lstm/") and entry["ratio"] > 0
    assert [t["status"] for t in report["targets"]] == ["INFO"]
    # the table can be rebuilt from the JSON alone
    assert "ARMIN" in format_table(report)
    assert main(["bench", "--show", str(path)]) == 0
    assert "NTM-style" in capsys.readouterr().out


def test_json_to_stdout_with_sizes_from_the_command_line(capsys):
    argv = ["bench", "--models", "armin,ntm", "--modes", "train,eval", "--hidden", "armin=8,ntm=6,torch-lstm=10",
            "--slots", "4,8", "--batch", "2", "--tbptt", "3", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", "-", "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout is the JSON alone; the table goes to stderr
    assert "NTM-style" in captured.err
    labels = {entry["label"] for entry in report["results"]}
    assert {"train/armin/h8/n4/b2/t3", "train/armin/h8/n8/b2/t3", "eval/ntm/h6/n8/b2/t3", "train/torch-lstm/h10/b2/t3"} <= labels
    sweeps = {(s["model"], s["mode"], s["axis"]) for s in report["sweeps"]}
    assert ("armin", "eval", "slots") in sweeps and ("ntm", "train", "slots") in sweeps


@pytest.mark.parametrize(
    "argv",
    [
        ["--preset", "tiny", "--batch", "4"],
        ["--models", "armin,nope"],
        ["--hidden", "armn=5"],
        ["--slots", "0"],
        ["--repeats", "0", "--preset", "tiny"],
    ],
)
def test_bad_command_lines_are_usage_errors(argv, capsys):
    assert main(["bench", *argv]) == 2
    assert "manntk bench: error:" in capsys.readouterr().err


def test_presets_define_their_cases_and_targets():
    for name, make in PRESETS.items():
        preset = make()
        assert preset.name == name and preset.cases
        labels = [case.label for case in preset.cases]
        assert len(labels) == len(set(labels))
        for target in preset.targets:
            assert target.numerator in preset.cases
            assert target.denominator is None or target.denominator in preset.cases
    cpu = PRESETS["cpu-targets"]()
    assert Case("armin", "train", 500, 5, batch=128, tbptt=50) in cpu.cases
    assert {case.model for case in cpu.cases if case.mode == "algo"} == set(ALL_MODELS)
    assert Case("armin-compiled", "train", 500, 5, batch=128, tbptt=50) in cpu.cases


def test_bench_flushes_subnormals_like_the_trainer_and_restores_them(monkeypatch):
    import torch

    from manntk.tools import bench

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    subnormal = torch.tensor([1e-39])
    seen = []
    monkeypatch.setattr(bench, "_run_benchmark", lambda *args: seen.append(float(subnormal * 1.0)) or {})
    bench.run_benchmark(PRESETS["tiny"](), bench.Settings(), None)
    bench.run_benchmark(PRESETS["tiny"](), bench.Settings(flush_denormal=False), None)
    # x * 1.0 is exact, subnormals included, unless they are flushed: compare exactly (approx's
    # default abs=1e-12 would take a flushed 0.0 for 1e-39)
    assert seen[0] == 0.0 and seen[1] == subnormal.item() > 0
    assert float(subnormal * 1.0) == subnormal.item()


def test_reports_say_which_allocator_they_ran_under(monkeypatch):
    import torch

    from manntk.tools import bench

    for name in [name for name in os.environ if name.startswith("MALLOC_") or name in bench.ALLOCATOR_VARIABLES]:
        monkeypatch.delenv(name)
    assert bench.machine_info(torch.device("cpu"))["allocator"] == {}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "68719476736")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    monkeypatch.setenv("MALLOCATOR", "not an allocator setting")
    settings = bench.machine_info(torch.device("cpu"))["allocator"]
    assert settings == {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
    assert bench._allocator_text(settings) == "LD_PRELOAD=/usr/lib/libjemalloc.so.2 MALLOC_TRIM_THRESHOLD_=68719476736"
    assert bench._allocator_text({}) == "the C library's defaults"
    assert bench._allocator_text(None) == "not recorded"  # a report saved before the allocator was recorded


def test_each_timed_block_follows_untimed_settling_iterations(monkeypatch):
    """On a fake clock: a case's first iteration after another case costs 10, the next ones
    1 (the heap the other case left); the timed block starts after ``settle`` iterations."""
    import types

    import torch

    from manntk.tools import bench

    clock, last = [0.0], [None]

    class FakeRunner(bench.Runner):
        work = 1.0

        def __init__(self) -> None:
            self.model = torch.nn.Linear(1, 1)

        def run(self) -> None:
            clock[0] += 10.0 if last[0] is not self else 1.0
            last[0] = self

    monkeypatch.setattr(bench, "make_runner", lambda *args: FakeRunner())
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    cases = [Case("armin", "train", 4, 2, batch=2, tbptt=3), Case("torch-lstm", "train", 4, 0, batch=2, tbptt=3)]
    settled = bench.run_cases(cases, bench.Settings(repeats=3, measure_memory=False))
    assert [result.rates for result in settled.values()] == [[1.0] * 3, [1.0] * 3]
    # without: the blocks run A B | B A | A B, and a block right after the other case is timed cold
    unsettled = bench.run_cases(cases, bench.Settings(repeats=3, measure_memory=False, settle=0))
    assert [result.rates for result in unsettled.values()] == [[0.1, 0.1, 1.0], [0.1, 1.0, 0.1]]
