"""manntk.testing: every built-in part passes, and deliberately broken parts fail with the right message."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import manntk
from manntk import testing
from manntk.cells.common import project_inputs
from manntk.cells.lstm import LstmCell, LstmConfig
from manntk.hookspecs import hookimpl
from manntk.parts import Address, Addressing, Cell, Write
from tests.conftest import COMPOSITIONS, model_mapping

CELLS = {"armin": {"hidden_size": 5}, "lstm": {"hidden_size": 5}, "tardis": {"hidden_size": 5}}
ADDRESSING = {"auto": {}, "tardis": {"key_size": 3}, "ntm": {}, "none": {}}
WRITES = {"overwrite": {}, "erase_add": {}, "none": {}}

COMMON = ["build", "init_state", "steps_train", "steps_eval", "no_state_on_module", "replay_from_state", "state_round_trip"]


def cuda_accounted(report: testing.CheckReport) -> bool:
    return "cuda_parity" in report.checks or report.skipped.get("cuda_parity") == "CUDA is not available"


# --------------------------------------------------------------------------- built-ins pass


@pytest.mark.parametrize("name", sorted(CELLS))
def test_builtin_cells_pass(name):
    report = testing.check_cell(name, CELLS[name])
    assert report.part == f"cell {name!r}"
    assert set(COMMON + ["output_shape", "gradients", "uses_state"]) <= set(report.checks)
    assert cuda_accounted(report)


@pytest.mark.parametrize("name", sorted(ADDRESSING))
def test_builtin_addressing_passes(name):
    report = testing.check_addressing(name, ADDRESSING[name])
    assert set(COMMON + ["address_weights"]) <= set(report.checks)
    if name == "none":  # no memory, no parameters, no state
        assert "gradients" in report.skipped and "uses_state" in report.skipped
    else:
        assert "gradients" in report.checks
    assert cuda_accounted(report)


@pytest.mark.parametrize("name", sorted(WRITES))
def test_builtin_writes_pass(name):
    report = testing.check_write(name, WRITES[name])
    assert set(COMMON + ["memory_shape", "gradients", "discrete_write"]) <= set(report.checks)
    assert ("uses_state" in report.checks) == (name != "none")
    assert cuda_accounted(report)


@pytest.mark.parametrize("composition", sorted(COMPOSITIONS))
def test_builtin_compositions_pass_check_model(composition):
    report = testing.check_model(model_mapping(composition))
    assert {"train_forward_backward", "eval_forward_backward", "chunks_equal_sequence", "state_round_trip"} <= set(report.checks)


def test_factory_and_config_instance_and_options():
    report = testing.check_cell(LstmCell, LstmConfig(hidden_size=3, layer_norm=True), input_size=2, width=3, batch=3, steps=4, dtype=torch.float64)
    assert report.part == "cell 'LstmCell'" and "gradients" in report.checks
    testing.check_write("erase_add", {"addressing": {"name": "ntm", "shift": 0}}, grad_inputs=("memory", "hidden"), slots=3)
    testing.check_model({**model_mapping("lstm"), "embedding": 4, "layers": 2})


def test_the_parity_check_runs_when_cuda_is_there(monkeypatch):
    """Without a GPU here, aim the parity check at the CPU to run its code path."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(testing, "_PARITY_DEVICE", "cpu")
    assert "cuda_parity" in testing.check_addressing("ntm").checks
    assert "cuda_parity" in testing.check_write("overwrite").checks
    assert "cuda_parity" in testing.check_model(model_mapping("armin")).checks


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parity_on_cuda():
    for name, options in CELLS.items():
        assert "cuda_parity" in testing.check_cell(name, options).checks
    assert "cuda_parity" in testing.check_model(model_mapping("ntm")).checks
    assert testing.check_cell("lstm", {"hidden_size": 5}, device="cuda").skipped["cuda_parity"] == "the checks already run on CUDA"


def test_bad_arguments():
    with pytest.raises(TypeError, match="registered name"):
        testing.check_cell(LstmCell, {"hidden_size": 3})
    with pytest.raises(ValueError, match="steps >= 2"):
        testing.check_addressing("ntm", steps=1)
    with pytest.raises(LookupError, match="unknown addressing 'nmt'.*did you mean 'ntm'"):
        testing.check_addressing("nmt")


def test_check_address_helper():
    weights = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    testing.check_address(weights, None, batch=2, slots=2)
    with pytest.raises(AssertionError, match="index does not point at the largest weight"):
        testing.check_address(weights, torch.tensor([1, 1]), batch=2, slots=2)
    with pytest.raises(AssertionError, match="no weights in training"):
        testing.check_address(None, torch.tensor([0, 1]), batch=2, slots=2, training=True)


# --------------------------------------------------------------------------- broken parts fail


class SigmoidAddressing(Addressing):
    """Broken: independent sigmoids, so the weights do not sum to one."""

    def __init__(self, config, context):
        super().__init__()
        self.W = nn.Linear(context.hidden_size, context.slots)

    def step(self, prepared, t, hidden, memory, state):
        return Address(torch.sigmoid(self.W(hidden))), state


class OutOfRangeAddressing(Addressing):
    """Broken: in evaluation its index-only address points past the last slot."""

    def __init__(self, config, context):
        super().__init__()
        self.slots = context.slots
        self.W = nn.Linear(context.hidden_size, context.slots)

    def step(self, prepared, t, hidden, memory, state):
        weights = torch.softmax(self.W(hidden), -1)
        if self.training:
            return Address(weights), state
        return Address(None, weights.argmax(-1) + self.slots), state


class CountingAddressing(Addressing):
    """Broken: counts its steps on itself instead of in its state."""

    def __init__(self, config, context):
        super().__init__()
        self.W = nn.Linear(context.hidden_size, context.slots)
        self.calls = 0

    def step(self, prepared, t, hidden, memory, state):
        self.calls += 1
        return Address(torch.softmax(self.W(hidden) * self.calls, -1)), state


class SelfStateCell(Cell):
    """Broken: keeps h on itself between steps (its state dict is only for show)."""

    def __init__(self, config, context):
        super().__init__()
        self.hidden_size = self.output_size = 4
        self.W = nn.Linear(context.input_size + context.width + 4, 4)
        self.h = None

    def init_state(self, batch_size, device, dtype):
        return {"h": torch.zeros(batch_size, 4, device=device, dtype=dtype)}

    def prepare(self, x):
        self.h = None
        return x.transpose(0, 1)

    def step(self, prepared, t, state, read):
        previous = self.h if self.h is not None else state["h"]
        self.h = torch.tanh(self.W(torch.cat([prepared[t], read, previous], 1)))
        return self.h, {"h": self.h}


class StatelessCell(Cell):
    """Broken: threads a state through but never uses it."""

    def __init__(self, config, context):
        super().__init__()
        self.hidden_size = self.output_size = 4
        self.W = nn.Linear(context.input_size + context.width, 4)

    def init_state(self, batch_size, device, dtype):
        return {"h": torch.zeros(batch_size, 4, device=device, dtype=dtype)}

    def step(self, prepared, t, state, read):
        h = torch.tanh(self.W(torch.cat([prepared[t], read], 1)))
        return h, {"h": h}


class WrongShapeCell(StatelessCell):
    """Broken: announces output_size 4 but returns 3 columns."""

    def step(self, prepared, t, state, read):
        h = torch.tanh(self.W(torch.cat([prepared[t], read], 1)) + state["h"])
        return h[:, :3], {"h": h}


class Float32Cell(StatelessCell):
    """Broken: its state is always float32, whatever dtype it is asked for."""

    def init_state(self, batch_size, device, dtype):
        return {"h": torch.zeros(batch_size, 4, device=device)}

    def step(self, prepared, t, state, read):
        h = torch.tanh(self.W(torch.cat([prepared[t], read], 1)) + state["h"])
        return h, {"h": h}


class NotTensorStateCell(StatelessCell):
    """Broken: puts a Python int in its state."""

    def step(self, prepared, t, state, read):
        h = torch.tanh(self.W(torch.cat([prepared[t], read], 1)) + state["h"])
        return h, {"h": h, "t": t}


class GrowingStateCell(StatelessCell):
    """Broken: its steps return a state with an entry that init_state does not have."""

    def step(self, prepared, t, state, read):
        h = torch.tanh(self.W(torch.cat([prepared[t], read], 1)) + state["h"])
        return h, {"h": h, "c": h}


class DetachedScaleWrite(Write):
    """Broken: its ``scale`` parameter is used through ``detach``, so no gradient reaches it."""

    def __init__(self, config, context):
        super().__init__()
        self.W = nn.Linear(context.hidden_size, context.width)
        self.scale = nn.Parameter(torch.ones(()))

    def prepare(self, x):
        return None

    def step(self, prepared, t, memory, hidden, address, state):
        weights = address.dense(memory.shape[1], memory.dtype).unsqueeze(-1)
        value = self.W(hidden) * self.scale.detach()
        return memory * (1 - weights) + weights * value.unsqueeze(1), state


class NanGradientWrite(DetachedScaleWrite):
    """Broken: a square root at zero makes the backward pass NaN."""

    def step(self, prepared, t, memory, hidden, address, state):
        weights = address.dense(memory.shape[1], memory.dtype).unsqueeze(-1)
        value = self.W(hidden) * self.scale + (self.W(hidden) * 0).sqrt()
        return memory * (1 - weights) + weights * value.unsqueeze(1), state


class WeightsOnlyWrite(DetachedScaleWrite):
    """Broken: assumes weights are always given, so the discrete evaluation path crashes."""

    def step(self, prepared, t, memory, hidden, address, state):
        weights = address.weights.unsqueeze(-1)
        value = self.W(hidden) * self.scale
        return memory * (1 - weights) + weights * value.unsqueeze(1), state


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as caught:
        check(*args, **kwargs)
    return str(caught.value)


@pytest.mark.parametrize(
    ("check", "part", "kwargs", "expected"),
    [
        (testing.check_addressing, SigmoidAddressing, {}, r"^addressing 'SigmoidAddressing': check 'address_weights' failed: train step 0: the weights do not sum to one"),
        (testing.check_addressing, OutOfRangeAddressing, {}, r"^addressing 'OutOfRangeAddressing': check 'address_weights' failed: eval step 0: the index is out of range"),
        (testing.check_addressing, CountingAddressing, {}, r"^addressing 'CountingAddressing': check 'no_state_on_module' failed: the part keeps state on itself: prepare/step set attribute\(s\) 'calls'"),
        (testing.check_cell, SelfStateCell, {}, r"^cell 'SelfStateCell': check 'no_state_on_module' failed: the part keeps state on itself: prepare/step set attribute\(s\) 'h'"),
        (testing.check_cell, StatelessCell, {}, r"^cell 'StatelessCell': check 'gradients' failed: no gradient reaches input 'state' from the outputs"),
        (testing.check_cell, StatelessCell, {"grad_inputs": ("x", "read")}, r"^cell 'StatelessCell': check 'uses_state' failed: the part ignores its state"),
        (testing.check_cell, WrongShapeCell, {}, r"^cell 'WrongShapeCell': check 'output_shape' failed: train step 0: o_t has shape \(2, 3\), expected \(2, 4\)"),
        (testing.check_cell, Float32Cell, {"dtype": torch.float64}, r"^cell 'Float32Cell': check 'init_state' failed: init_state: state 'h' has dtype torch.float32, expected torch.float64"),
        (testing.check_cell, NotTensorStateCell, {}, r"^cell 'NotTensorStateCell': check 'steps_train' failed: train step 0: the state is not a dict .* of tensors"),
        (testing.check_cell, GrowingStateCell, {}, r"^cell 'GrowingStateCell': check 'steps_train' failed: train step 0: the state's entries changed from \['h'\] to \['c', 'h'\]"),
        (testing.check_write, DetachedScaleWrite, {}, r"^write 'DetachedScaleWrite': check 'gradients' failed: no gradient reaches parameter 'scale'"),
        (testing.check_write, NanGradientWrite, {}, r"^write 'NanGradientWrite': check 'gradients' failed: the gradient of parameter 'W.weight' is not finite"),
        (testing.check_write, WeightsOnlyWrite, {}, r"^write 'WeightsOnlyWrite': check 'discrete_write' failed: raised AttributeError"),
    ],
    ids=lambda value: getattr(value, "__name__", "") if isinstance(value, type) else "",
)
def test_broken_parts_fail_with_a_message_naming_part_check_and_problem(check, part, kwargs, expected):
    message = failure(check, part, None, **kwargs)
    assert re.search(expected, message), message


def test_a_cell_that_keeps_state_on_itself_without_attributes_fails_replay():
    """State hidden in a closure, not an attribute: running twice gives different outputs."""
    memory: list[torch.Tensor] = []

    class ClosureCell(StatelessCell):
        def step(self, prepared, t, state, read):
            previous = memory[-1] if memory else state["h"]
            h = torch.tanh(self.W(torch.cat([prepared[t], read], 1)) + previous)
            memory.append(h.detach())
            return h, {"h": h}

    message = failure(testing.check_cell, ClosureCell, None, grad_inputs=("x", "read"))
    assert "check 'no_state_on_module' failed: running the same steps twice from the same state gives different 'output'" in message


def test_a_part_whose_state_misses_something_fails_replay():
    """The step index comes from a counter reset in prepare: one-step replays go wrong."""

    class ChunkCounterAddressing(Addressing):
        def __init__(self, config, context):
            super().__init__()
            self.W = nn.Linear(context.hidden_size, context.slots)

        def init_state(self, batch_size, device, dtype):
            return {"weights": torch.zeros(batch_size, 4, device=device, dtype=dtype)}

        def prepare(self, x):
            return {"seen": torch.zeros(())}  # counts steps within the chunk: not carried in the state

        def step(self, prepared, t, hidden, memory, state):
            prepared["seen"] = prepared["seen"] + 1
            weights = torch.softmax(self.W(hidden) * prepared["seen"] + state["weights"], -1)
            return Address(weights), {"weights": weights}

    message = failure(testing.check_addressing, ChunkCounterAddressing, None)
    assert "check 'replay_from_state' failed: step 1 replayed from the state recorded before it gives a different 'weights'" in message


class ChunkNormalisedAddressing(Addressing):
    """Broken across chunks: normalises its input over the time steps of the chunk."""

    def __init__(self, config, context):
        super().__init__()
        self.W = nn.Linear(context.input_size, context.slots)

    def prepare(self, x):
        return project_inputs(x - x.mean(1, keepdim=True), self.W.weight, self.W.bias)

    def step(self, prepared, t, hidden, memory, state):
        return Address(torch.softmax(prepared[t], -1)), state


class ChunkNormalisedPlugin:
    @hookimpl
    def register_addressing(self, register):
        register("chunk_normalised", ChunkNormalisedAddressing)


def test_a_part_that_depends_on_the_chunking_fails_the_part_and_the_model_checks():
    message = failure(testing.check_addressing, ChunkNormalisedAddressing, None)
    assert message.startswith("addressing 'ChunkNormalisedAddressing': check 'causal' failed: step 0 gives a different 'weights' when only x at later steps changes"), message
    plugins = manntk.load_plugins(entry_points_too=False, extra=(ChunkNormalisedPlugin(),))
    mapping = {**model_mapping("armin"), "addressing": {"name": "chunk_normalised"}}
    message = failure(testing.check_model, mapping, plugins)
    assert message.startswith("model armin+chunk_normalised+overwrite: check 'chunks_equal_sequence' failed: two chunks with the state carried differ from one long sequence"), message


def test_check_model_reports_a_bad_mapping():
    message = failure(testing.check_model, {"cell": {"name": "lstm", "hidden_size": 3}})
    assert message == "model lstm+none+none: check 'build' failed: the mapping gives no input_size"
