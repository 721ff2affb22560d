"""The ARMIN chunk kernel (``manntk.fast.armin_sequence``) against the plain per-step path.

Tolerances: the kernel computes the same sums as the plain path in another order (its
products run over [x, h, r] at once, the weight gradients over the whole chunk at once).
Every value is a sum of at most ``T * K`` rounded products of terms no larger than the
reference's magnitude, so the two paths may differ by ``eps * T * K * scale``, ``scale``
the largest magnitude of the compared tensor; the bound below allows 8 times that.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import manntk
from manntk.build import build_experiment
from manntk.engine import MemoryLayer
from manntk.fast import armin_sequence
from manntk.fast.armin_sequence import Options, _ArminSequence
from manntk.recipe import load_recipe
from manntk.trace import tracing
from tests.conftest import fused_kernels_error
from tests.kernel_checks import assert_kernel_matches

STEPS, BATCH, INPUT, HIDDEN, SLOTS, WIDTH = 9, 3, 5, 7, 4, 3
K = INPUT + HIDDEN + WIDTH


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    error = fused_kernels_error()
    if error is not None:
        pytest.skip(f"the ARMIN C++ kernels cannot be built here: {error}")


def mapping(fast: bool, hard=False, argmax=False, fill=True, value="hidden", squash=False, read_output=True, tau=0.7):
    return {
        "input_size": INPUT,
        "output_size": 4,
        "cell": {"name": "armin", "hidden_size": HIDDEN, "squash_state": squash, "forget_bias": 0.5, "read_output": read_output},
        "addressing": {"name": "auto", "hard": hard, "temperature": {"start": tau, "end": tau}},
        "write": {"name": "overwrite", "argmax": argmax, "fill_empty_first": fill, "value": value, "projection": True},
        "memory": {"slots": SLOTS, "width": WIDTH, "learned": True, "init": "uniform"},
        "fast": fast,
    }


def run_both(options: dict, dtype: torch.dtype, steps=STEPS, second=4):
    """Two chunks (the second from the first's state) through the plain and the kernel path,
    with equal weights, inputs and Gumbel noise: outputs, final memory and h, and every
    gradient of a loss that uses all of them."""
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = manntk.build_model(mapping(fast, **options)).to(dtype)
        assert (model.layers[0].chunk_kernel is not None) is fast
        x = torch.randn(BATCH, steps, INPUT, generator=torch.Generator().manual_seed(1), dtype=dtype, requires_grad=True)
        torch.manual_seed(5)  # the same noise on both paths
        y, state = model(x)
        y2, state = model(x[:, :second], state)
        layer = state["layers"][0]
        loss = y.square().sum() + y2.sin().sum() + layer["memory"].cos().sum() + layer["cell"]["h"].sum()
        loss.backward()
        values = {"y": y, "y2": y2, "memory": layer["memory"], "h": layer["cell"]["h"], "x.grad": x.grad}
        values.update({f"{name}.grad": p.grad for name, p in model.named_parameters()})
        results.append({name: value.detach() for name, value in values.items()})
    return results


def assert_same(plain: dict, kernel: dict, dtype: torch.dtype, steps=STEPS):
    assert_kernel_matches(plain, kernel, dtype, steps, K)


#: Every option at both values, each pair of options in every combination of values (an
#: orthogonal array of the 2^6 settings; all 64 agreed when the kernel was written).
CASES = [
    dict(zip(("hard", "argmax", "fill", "value", "squash", "read_output"), case))
    for case in [
        (False, False, True, "hidden", False, True),
        (False, False, False, "input_and_hidden", True, False),
        (False, True, True, "input_and_hidden", False, False),
        (False, True, False, "hidden", True, True),
        (True, False, True, "hidden", True, False),
        (True, False, False, "input_and_hidden", False, True),
        (True, True, True, "input_and_hidden", True, True),
        (True, True, False, "hidden", False, False),
    ]
]


@pytest.mark.parametrize("options", CASES, ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()))
def test_the_kernel_gives_the_plain_paths_outputs_states_and_gradients_in_float64(options):
    plain, kernel = run_both(options, torch.float64)
    assert_same(plain, kernel, torch.float64)


@pytest.mark.parametrize("options", [{}, {"hard": True}, {"argmax": True, "squash": True}])
def test_the_kernel_matches_the_plain_path_in_float32(options):
    plain, kernel = run_both(options, torch.float32)
    assert_same(plain, kernel, torch.float32)


def test_a_sequence_longer_than_the_memory_exercises_every_write_mode():
    """T > N: past the filling steps the writes replace by argmax or blend."""
    for options in ({}, {"argmax": True}, {"hard": True, "fill": False}):
        plain, kernel = run_both(options, torch.float64, steps=3 * SLOTS + 1)
        assert_same(plain, kernel, torch.float64, steps=3 * SLOTS + 1)


@pytest.mark.parametrize("fill, value_from_input", [(True, False), (False, True)])
def test_the_operator_passes_gradcheck(fill, value_from_input):
    """The autograd node itself, in float64, against finite differences, with soft reads
    and argmax writes: the composition whose gradient is the true derivative. (Hard reads
    are straight-through and the blend's write weights are detached, by design: those
    gradients are checked against the plain path above.)"""
    generator = torch.Generator().manual_seed(3)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    T, B, N, D, d_i, d_h = 5, 2, 3, 2, 2, 3
    weights = (
        tensor(N, d_i + d_h), tensor(N), tensor(d_h + D, d_i + d_h + D), tensor(d_h + D),
        tensor(4 * d_h + D, d_i + d_h + D), tensor(4 * d_h + D), tensor(D, d_i * value_from_input + d_h), tensor(D),
    )
    filled = torch.tensor([0, 2])
    options = Options(0.8, 0.3, squash=True, read_output=True, hard=False, argmax_write=True, fill=fill, address_gradient=True)

    def function(x, h0, m0, *weights):
        return _ArminSequence.apply(options, True, False, x, h0, m0, filled, None, *weights)[:3]

    assert torch.autograd.gradcheck(function, (tensor(B, T, d_i), tensor(B, d_h), tensor(B, N, D), *weights))


def test_a_default_armin_recipe_builds_the_kernel_and_trains_through_it(monkeypatch):
    """The fast path is the default: the quickstart recipe's layer holds the kernel and a
    training step runs it; ``model.fast: false`` builds the plain path."""
    task, model = build_experiment(load_recipe("recipes/armin_copy.yaml"))
    assert isinstance(model.layers[0].chunk_kernel, armin_sequence.ArminSequence)
    calls = []
    apply = _ArminSequence.apply
    monkeypatch.setattr(_ArminSequence, "apply", lambda *args: calls.append(1) or apply(*args))
    batch = task.train_batch(0, 1)
    task.score(model(batch.inputs)[0], batch)["loss"].backward()
    assert calls == [1]
    _, plain = build_experiment(load_recipe("recipes/armin_copy.yaml", ["model.fast=false"]))
    assert plain.layers[0].chunk_kernel is None


def test_the_plain_path_runs_where_the_kernel_does_not_apply():
    """Tracing (``manntk inspect`` records gates and addresses per step), other dtypes and
    zoneout (in evaluation too: the cell then keeps the expected state) step aside to the
    plain path."""
    model = manntk.build_model(mapping(True, hard=True))
    layer: MemoryLayer = model.layers[0]
    x = torch.randn(2, 5, INPUT)
    assert layer.chunk_kernel.applies(layer, x)
    assert not layer.chunk_kernel.applies(layer, x.to(torch.bfloat16))
    with tracing() as trace:
        assert not layer.chunk_kernel.applies(layer, x)
        model(x)
    assert "layer0.read" in trace and trace["layer0.read"].shape[0] == 5
    zoned = manntk.build_model({**mapping(True), "cell": {**mapping(True)["cell"], "zoneout": 0.1}})
    assert not zoned.layers[0].chunk_kernel.applies(zoned.layers[0], x)
    zoned.eval()
    assert not zoned.layers[0].chunk_kernel.applies(zoned.layers[0], x)


def test_without_a_backward_to_come_the_kernel_keeps_one_step_of_what_backward_reads(monkeypatch):
    """Evaluation under no_grad holds one step of the gates and addresses, not T (ARMIN 500
    at batch 128 and T 50: 64 MB of gate activations alone)."""
    from manntk.fast.armin_fused import extension

    forward, kept = extension().sequence_forward, []

    def recording(*args):
        outputs = forward(*args)
        kept.append((args[-2], outputs[7].shape[0]))  # keep, and the activations' step count
        return outputs

    monkeypatch.setattr(armin_sequence, "extension", lambda: type("Ops", (), {"sequence_forward": staticmethod(recording)})())
    model = manntk.build_model(mapping(True, hard=True))
    x = torch.randn(2, STEPS, INPUT)
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)  # evaluation with gradients on: they may still be asked for
    assert kept == [(False, 1), (True, STEPS)]


def test_a_consumed_state_is_written_in_place_and_a_kept_one_is_left_alone():
    """As the discrete path (MemoryRNN's consume_state): an evaluation loop that gives its state
    up saves the copy of the memory (105 MB for ARMIN 800, N=256, batch 128)."""
    model = manntk.build_model(mapping(True, hard=True)).eval()
    x = torch.randn(2, STEPS, INPUT)
    with torch.no_grad():
        _, state = model(x)
        before = state["layers"][0]["memory"].clone()
        y_kept, kept = model(x, state)
        torch.testing.assert_close(state["layers"][0]["memory"], before, rtol=0, atol=0)  # not consumed: intact
        y_consumed, consumed = model(x, state, consume_state=True)
    assert consumed["layers"][0]["memory"].data_ptr() == state["layers"][0]["memory"].data_ptr()
    torch.testing.assert_close(y_consumed, y_kept, rtol=0, atol=0)
    torch.testing.assert_close(consumed["layers"][0]["memory"], kept["layers"][0]["memory"], rtol=0, atol=0)


def test_a_state_that_does_not_fit_the_input_is_an_error_not_a_read_past_its_end():
    model = manntk.build_model(mapping(True))
    state = model.init_state(1)
    with pytest.raises(RuntimeError, match=r"armin sequence: h must be \[4, 7\]"):
        model(torch.randn(4, 3, INPUT), state)


def test_the_returned_state_may_change_before_backward_and_the_output_is_contiguous():
    """As on the plain path: a caller that resets a row of the returned memory in place
    (a finished sequence) still gets its gradients; the output is a contiguous [B, T, d_o]."""
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        options = mapping(fast, hard=True)
        del options["output_size"]
        model = manntk.build_model(options).double()
        x = torch.randn(BATCH, STEPS, INPUT, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)
        y, state = model(x)
        assert y.is_contiguous() and y.shape == (BATCH, STEPS, model.layers[0].output_size)
        state["layers"][0]["memory"][0].zero_()
        y.square().sum().backward()
        results.append({"y": y.detach(), **{name: p.grad for name, p in model.named_parameters()}})
    assert_same(*results, torch.float64)


def test_an_argmax_read_in_evaluation_gives_the_address_no_gradient():
    """As the discrete path: no gradient reaches W_s (None, not zeros an optimizer would step on)."""
    for fast in (False, True):
        model = manntk.build_model(mapping(fast, hard=True)).eval()
        model(torch.randn(2, 5, INPUT))[0].sum().backward()
        addressing = model.layers[0].addressing
        assert addressing.W_s.weight.grad is None and addressing.W_s.bias.grad is None, fast
        assert model.layers[0].cell.W_go.weight.grad is not None


@pytest.mark.parametrize("options", [{"hard": True}, {"hard": True, "fill": False, "value": "input_and_hidden"}, {"argmax": True}])
def test_in_evaluation_the_kernel_gives_the_discrete_paths_outputs(options):
    """Evaluation with hard reads: the kernel reads the argmax row and replaces by index, as
    the engine's discrete path (``discrete_eval``) does, up to float rounding."""
    outputs = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = manntk.build_model(mapping(fast, **options)).double().eval()
        x = torch.randn(BATCH, 3 * SLOTS, INPUT, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        with torch.no_grad():
            y, state = model(x)
            y2, state = model(x[:, :4], state, consume_state=True)
        outputs.append({"y": y, "y2": y2, "memory": state["layers"][0]["memory"]})
    assert_same(*outputs, torch.float64, steps=3 * SLOTS)


def test_without_a_projection_the_slot_gets_h_t():
    """``projection: false`` (slot width = hidden size, the paper's LM models): ``v = h_t``."""
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        options = mapping(fast, hard=True)
        options["cell"]["hidden_size"] = WIDTH
        options["write"]["projection"] = False
        model = manntk.build_model(options).double()
        assert (model.layers[0].chunk_kernel is not None) is fast
        x = torch.randn(BATCH, STEPS, INPUT, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        torch.manual_seed(5)
        y, state = model(x)
        (y.square().sum() + state["layers"][0]["memory"].sum()).backward()
        results.append({"y": y.detach(), **{name: p.grad for name, p in model.named_parameters()}})
    assert_same(*results, torch.float64)


def test_other_compositions_get_no_kernel():
    for write in ({"name": "erase_add"},):
        model = manntk.build_model({**mapping(True), "cell": {"name": "armin", "hidden_size": WIDTH}, "write": write})
        assert model.layers[0].chunk_kernel is None
    layer_norm = mapping(True)
    layer_norm["cell"]["layer_norm"] = True
    assert manntk.build_model(layer_norm).layers[0].chunk_kernel is None
    swapped = manntk.build_model(mapping(True))  # parts swapped after the build: the kernel steps aside
    swapped.layers[0].write = manntk.build_model({**mapping(True), "cell": {"name": "armin", "hidden_size": WIDTH},
                                                  "write": {"name": "erase_add"}}).layers[0].write
    assert not swapped.layers[0].chunk_kernel.applies(swapped.layers[0], torch.randn(2, 3, INPUT))
