"""The memoryless LSTM's chunk path (``manntk.fast.lstm_sequence``, torch's own LSTM) against
the plain per-step path.

Tolerances: both compute the same gates; torch's LSTM sums the ``x`` and ``h`` products
separately and adds the weight gradients over the chunk in another order. Every value is a
sum of at most ``T * K`` rounded products (``K = d_i + d_h``) of terms no larger than the
compared tensor's magnitude, so the paths may differ by ``eps * T * K * scale``; the
bound allows 8 times that.
"""

from __future__ import annotations

import pytest
import torch

import manntk
from manntk.fast.lstm_sequence import LstmSequence
from manntk.recipe import load_recipe
from manntk.build import build_experiment
from manntk.trace import tracing
from tests.kernel_checks import assert_kernel_matches

STEPS, BATCH, INPUT, HIDDEN = 9, 3, 5, 7
K = INPUT + HIDDEN


def mapping(fast: bool, forget_bias=0.5, learned_state=False, zoneout=0.0, layer_norm=False, layers=1):
    return {
        "input_size": INPUT,
        "output_size": 4,
        "layers": layers,
        "cell": {"name": "lstm", "hidden_size": HIDDEN, "forget_bias": forget_bias, "learned_state": learned_state,
                 "zoneout": zoneout, "layer_norm": layer_norm},
        "addressing": {"name": "none"},
        "write": {"name": "none"},
        "fast": fast,
    }


def run_both(options: dict, dtype: torch.dtype, train: bool = True):
    """Two chunks (the second from the first's state) through the plain path and torch's
    LSTM, with equal weights and inputs: outputs, the final h and c, and every gradient of a
    loss that uses them all."""
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = manntk.build_model(mapping(fast, **options)).to(dtype).train(train)
        with torch.no_grad():  # learned starts away from zero, so their gradient path is exercised
            for name, parameter in model.named_parameters():
                if name.endswith(("h_0", "c_0")):
                    parameter.normal_()
        assert all(isinstance(layer.chunk_kernel, LstmSequence) == fast for layer in model.layers)
        x = torch.randn(BATCH, STEPS, INPUT, generator=torch.Generator().manual_seed(1), dtype=dtype, requires_grad=True)
        y, state = model(x)
        y2, state = model(x[:, :4], state)
        last = state["layers"][-1]["cell"]
        loss = y.square().sum() + y2.sin().sum() + last["h"].cos().sum() + last["c"].sum()
        loss.backward()
        values = {"y": y, "y2": y2, "h": last["h"], "c": last["c"], "x.grad": x.grad}
        values.update({f"{name}.grad": p.grad for name, p in model.named_parameters()})
        results.append({name: value.detach() for name, value in values.items()})
    return results


def assert_same(plain: dict, fast: dict, dtype: torch.dtype):
    assert_kernel_matches(plain, fast, dtype, STEPS, K)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", [{}, {"forget_bias": 0.0}, {"learned_state": True}, {"layers": 2}],
                         ids=["forget-bias", "no-forget-bias", "learned-state", "two-layers"])
def test_torch_lstm_matches_the_plain_path(options, dtype):
    plain, fast = run_both(options, dtype)
    assert_same(plain, fast, dtype)


def test_torch_lstm_matches_the_plain_path_in_evaluation():
    plain, fast = run_both({}, torch.float64, train=False)
    assert_same(plain, fast, torch.float64)


def test_the_forget_bias_reaches_torch_lstm():
    """Without the forget bias folded into the bias the two paths would differ."""
    torch.manual_seed(0)
    model = manntk.build_model(mapping(True, forget_bias=3.0)).double()
    x = torch.randn(2, 5, INPUT, dtype=torch.float64)
    y, _ = model(x)
    model.layers[0].chunk_kernel = None  # the plain path on the same weights
    y_plain, _ = model(x)
    torch.testing.assert_close(y, y_plain)
    model.layers[0].cell.config.forget_bias = 0.0
    y_without, _ = model(x)
    assert (y_without - y).abs().max() > 1e-3


@pytest.mark.parametrize("options", [{"zoneout": 0.1}, {"layer_norm": True}])
def test_it_steps_aside_for_what_torch_lstm_cannot_do(options):
    model = manntk.build_model(mapping(True, **options))
    layer = model.layers[0]
    x = torch.randn(2, 3, INPUT)
    assert layer.chunk_kernel is None or not layer.chunk_kernel.applies(layer, x)


def test_it_steps_aside_under_tracing_autocast_and_for_other_dtypes():
    model = manntk.build_model(mapping(True))
    layer = model.layers[0]
    assert layer.chunk_kernel.applies(layer, torch.randn(2, 3, INPUT))
    assert not layer.chunk_kernel.applies(layer, torch.randn(2, 3, INPUT, dtype=torch.bfloat16))
    with tracing():
        assert not layer.chunk_kernel.applies(layer, torch.randn(2, 3, INPUT))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the plain path's casts are the ones autocast defines
        assert not layer.chunk_kernel.applies(layer, torch.randn(2, 3, INPUT))


def test_fast_false_keeps_the_plain_path():
    assert manntk.build_model(mapping(False)).layers[0].chunk_kernel is None


def test_the_lstm_baseline_recipe_runs_through_torch_lstm():
    recipe = load_recipe("recipes/algorithmic/copy/lstm.yaml", ["train.device=cpu"])
    _, model = build_experiment(recipe)
    assert isinstance(model.layers[0].chunk_kernel, LstmSequence)
