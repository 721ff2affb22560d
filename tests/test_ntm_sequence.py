"""The NTM-style chunk kernel (``manntk.fast.ntm_sequence``) against the plain per-step path.

Tolerances: the kernel computes the same sums as the plain path in another order (its
products run over [x, h, r] at once, the weight gradients over the whole chunk at once).
Every value is a sum of at most ``T * K`` rounded products of terms no larger than the
reference's magnitude, so the two paths may differ by ``eps * T * K * scale``, ``scale``
the largest magnitude of the compared tensor; the bound below allows 8 times that.
"""

from __future__ import annotations


import pytest
import torch

import manntk
from manntk.build import build_experiment
from manntk.engine import MemoryLayer
from manntk.fast import ntm_sequence
from manntk.fast.ntm_sequence import NtmSequence, Options, _NtmSequence
from manntk.recipe import load_recipe
from manntk.trace import tracing
from tests.conftest import fused_kernels_error
from tests.kernel_checks import assert_kernel_matches

STEPS, INPUT, HIDDEN, SLOTS, WIDTH = 9, 3, 5, 4, 3  # T > N: the heads wrap around the memory
K = INPUT + HIDDEN + WIDTH


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    error = fused_kernels_error()
    if error is not None:
        pytest.skip(f"the C++ kernels cannot be built here: {error}")


def mapping(fast: bool, read="before", interpolation=True, shift=1, sharpen=True, add="tanh", learned=False, eps=1e-6,
            write_head=None, zoneout=0.0):
    head = {"name": "ntm", "interpolation": interpolation, "shift": shift, "sharpen": sharpen, "eps": eps, "start": "learned"}
    return {
        "input_size": INPUT,
        "output_size": 2,
        "read": read,
        "cell": {"name": "lstm", "hidden_size": HIDDEN, "forget_bias": 0.4, "learned_state": learned, "zoneout": zoneout},
        "addressing": head,
        "write": {"name": "erase_add", "add": add, "addressing": {**head, **(write_head or {})}},
        "memory": {"slots": SLOTS, "width": WIDTH, "learned": True, "init": "uniform"},
        "fast": fast,
    }


def leaves(layer_state: dict, dtype: torch.dtype) -> dict:
    """The state with every tensor replaced by a random leaf that requires its gradient (valid
    weights: a softmax), so that the gradients of the initial state are compared directly."""
    generator = torch.Generator().manual_seed(7)
    result = {}
    for name, value in layer_state.items():
        if isinstance(value, dict):
            result[name] = leaves(value, dtype)
        else:
            random = torch.randn(value.shape, generator=generator, dtype=dtype)
            result[name] = (random.softmax(-1) if name == "weights" else random).requires_grad_()
    return result


def flat(prefix: str, values: dict, into: dict) -> dict:
    for name, value in values.items():
        if isinstance(value, dict):
            flat(f"{prefix}{name}.", value, into)
        else:
            into[prefix + name] = value
    return into


def run_both(options: dict, dtype: torch.dtype, batch=3, steps=STEPS):
    """Two chunks (the second from the first's state) through the plain and the kernel path,
    with equal weights and inputs: outputs, every state tensor, and every gradient (parameters,
    x and the initial state) of a loss that uses all of them. With ``learned`` the initial state
    is the model's own (learned h_0, c_0, start weights and memory), else random leaves."""
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = manntk.build_model(mapping(fast, **options)).to(dtype)
        layer = model.layers[0]
        assert isinstance(layer.chunk_kernel, NtmSequence) is fast
        if options.get("learned"):
            with torch.no_grad():
                layer.cell.h_0.normal_(generator=torch.Generator().manual_seed(2))
                layer.cell.c_0.normal_(generator=torch.Generator().manual_seed(3))
            state = None
        else:
            state = {"layers": [leaves(model.init_state(batch, dtype=dtype)["layers"][0], dtype)]}
        x = torch.randn(batch, steps, INPUT, generator=torch.Generator().manual_seed(1), dtype=dtype, requires_grad=True)
        y, middle = model(x, state)
        y2, end = model(x[:, :4], middle)
        final = flat("state.", end["layers"][0], {})
        loss = y.square().sum() + y2.sin().sum()
        for index, value in enumerate(final.values()):
            loss = loss + (value * torch.linspace(-1, 1, value.shape[-1], dtype=dtype)).cos().sum() * (index + 1)
        loss.backward()
        values = {"y": y, "y2": y2, "x.grad": x.grad, **final}
        if state is not None:
            values.update({f"{name}.grad": value.grad for name, value in flat("initial.", state["layers"][0], {}).items()})
        values.update({f"{name}.grad": p.grad for name, p in model.named_parameters()})
        results.append({name: None if value is None else value.detach() for name, value in values.items()})
    return results


def assert_same(plain: dict, kernel: dict, dtype: torch.dtype, steps=STEPS):
    assert_kernel_matches(plain, kernel, dtype, steps, K)


#: Every option at each of its values: both read orders, interpolation on and off, shifts
#: 0, 1 and 2 (2k+1 > N: the shift wraps around more than once), sharpening on and off, both
#: add activations, learned or given initial states, batch 1 and 3, a write head whose
#: options differ from the read head's, and a larger eps.
CASES = [
    dict(read="before", interpolation=True, shift=1, sharpen=True, add="tanh", learned=False, batch=3),
    dict(read="before", interpolation=False, shift=0, sharpen=False, add="linear", learned=True, batch=1),
    dict(read="before", interpolation=True, shift=2, sharpen=False, add="tanh", learned=True, batch=3,
         write_head={"shift": 0, "sharpen": True, "interpolation": False}),
    dict(read="after", interpolation=True, shift=1, sharpen=True, add="linear", learned=True, batch=1),
    dict(read="after", interpolation=False, shift=2, sharpen=True, add="tanh", learned=False, batch=3, eps=1e-3),
    dict(read="after", interpolation=True, shift=0, sharpen=False, add="tanh", learned=False, batch=3,
         write_head={"shift": 2, "interpolation": False}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items() if k != "write_head"))
def test_the_kernel_gives_the_plain_paths_outputs_states_and_gradients_in_float64(case):
    options = dict(case)
    batch = options.pop("batch")
    plain, kernel = run_both(options, torch.float64, batch=batch)
    assert_same(plain, kernel, torch.float64)


@pytest.mark.parametrize("read", ["before", "after"])
def test_the_kernel_matches_the_plain_path_in_float32(read):
    plain, kernel = run_both({"read": read, "shift": 1, "learned": read == "after"}, torch.float32)
    assert_same(plain, kernel, torch.float32)


def test_a_large_sharpening_exponent_gives_finite_equal_weights_on_both_paths():
    """Both heads' gamma ~ 1e4 (every power under float32's smallest number): the kernel and
    the plain path give the same finite outputs and states, as the softmax form of the
    sharpening does (tests/test_addressing.py has the worked example). Float64: gamma
    multiplies the logs' rounding by 1e4, which float32's would bring near its tolerance,
    and every power underflows float64 as well."""
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = manntk.build_model(mapping(fast)).double()
        layer = model.layers[0]
        with torch.no_grad():
            for head in (layer.addressing, layer.write.head):
                head.W_head.weight[-1].zero_()
                head.W_head.bias[-1] = 1e4
        x = torch.randn(2, STEPS, INPUT, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        y, state = model(x)
        values = {"y": y, **flat("state.", state["layers"][0], {})}
        assert all(torch.isfinite(value).all() for value in values.values()), fast
        results.append(values)
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("after, interpolation, shift, sharpen, linear_add",
                         [(False, True, 1, True, False), (True, False, 2, True, True), (True, True, 0, False, False)])
def test_the_operator_passes_gradcheck(after, interpolation, shift, sharpen, linear_add):
    """The autograd node itself, in float64, against finite differences."""
    generator = torch.Generator().manual_seed(3)

    def tensor(*shape, weights=False):
        value = torch.randn(*shape, generator=generator, dtype=torch.float64)
        return (value.softmax(-1) if weights else value).requires_grad_()

    T, B, N, D, d_i, d_h = 3, 2, 3, 2, 2, 2
    head = D + 1 + interpolation + (2 * shift + 1 if shift else 0) + sharpen
    options = Options(0.3, after, interpolation, shift, sharpen, 1e-6, not interpolation, 1, True, 1e-6, linear_add)
    write_head = D + 1 + (not interpolation) + 3 + 1
    weights = (tensor(4 * d_h, d_i + d_h + D), tensor(4 * d_h), tensor(head, d_i + d_h), tensor(head),
               tensor(write_head, d_i + d_h), tensor(write_head), tensor(2 * D, d_h), tensor(2 * D))

    def function(x, h0, c0, wr0, ww0, m0, read0, *weights):
        return _NtmSequence.apply(options, True, False, x, h0, c0, wr0, ww0, m0, read0 if after else None, *weights)

    inputs = (tensor(T, B, d_i), tensor(B, d_h), tensor(B, d_h), tensor(B, N, weights=True), tensor(B, N, weights=True),
              tensor(B, N, D), tensor(B, D), *weights)
    assert torch.autograd.gradcheck(function, inputs)


def train_step(recipe: str, overrides: list[str]) -> tuple[float, float, MemoryLayer]:
    """The loss of one batch before and after one optimizer step on it."""
    torch.manual_seed(0)
    task, model = build_experiment(load_recipe(recipe, overrides))
    batch = task.train_batch(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = task.score(model(batch.inputs)[0], batch)["loss"]
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = task.score(model(batch.inputs)[0], batch)["loss"]
    return loss.item(), after.item(), model.layers[0]


@pytest.mark.parametrize("recipe", ["recipes/algorithmic/copy/ntm.yaml", "recipes/algorithmic/copy/ntm_pytorch_ntm.yaml"])
def test_the_ntm_recipes_build_the_kernel_and_a_training_step_through_it_changes_the_loss_as_the_plain_path(recipe, monkeypatch):
    calls = []
    apply = _NtmSequence.apply
    monkeypatch.setattr(_NtmSequence, "apply", lambda *args: calls.append(1) or apply(*args))
    before, after, layer = train_step(recipe, [])
    assert isinstance(layer.chunk_kernel, NtmSequence)
    assert calls == [1, 1]
    plain_before, plain_after, plain_layer = train_step(recipe, ["model.fast=false"])
    assert plain_layer.chunk_kernel is None and calls == [1, 1]
    assert after != before
    # float32 sums over the batch's T ~ 10-40 steps and K ~ 150 inputs per product
    assert before == pytest.approx(plain_before, rel=1e-4) and after == pytest.approx(plain_after, rel=1e-4)


def test_the_plain_path_runs_where_the_kernel_does_not_apply():
    """Tracing (``manntk inspect`` records addresses per step), other dtypes and zoneout (in
    evaluation too: the cell then keeps the expected state) step aside to the plain path."""
    model = manntk.build_model(mapping(True))
    layer: MemoryLayer = model.layers[0]
    x = torch.randn(2, 5, INPUT)
    assert layer.chunk_kernel.applies(layer, x)
    assert not layer.chunk_kernel.applies(layer, x.to(torch.bfloat16))
    with tracing() as trace:
        assert not layer.chunk_kernel.applies(layer, x)
        model(x)
    assert "layer0.read" in trace and trace["layer0.read"].shape[0] == 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layer.chunk_kernel.applies(layer, x)
    zoned = manntk.build_model(mapping(True, zoneout=0.1))
    assert not zoned.layers[0].chunk_kernel.applies(zoned.layers[0], x)
    zoned.eval()
    assert not zoned.layers[0].chunk_kernel.applies(zoned.layers[0], x)


def test_other_compositions_and_fast_false_get_no_kernel():
    assert manntk.build_model(mapping(False)).layers[0].chunk_kernel is None
    assert manntk.build_model(mapping(False, read="after")).layers[0].chunk_kernel is None
    layer_norm = mapping(True)
    layer_norm["cell"]["layer_norm"] = True
    assert manntk.build_model(layer_norm).layers[0].chunk_kernel is None
    content_write = mapping(True)
    content_write["write"]["addressing"] = {"name": "auto"}
    assert manntk.build_model(content_write).layers[0].chunk_kernel is None
    swapped = manntk.build_model(mapping(True))  # parts swapped after the build: the kernel steps aside
    swapped.layers[0].write = manntk.build_model(content_write).layers[0].write
    assert not swapped.layers[0].chunk_kernel.applies(swapped.layers[0], torch.randn(2, 3, INPUT))


def test_without_a_backward_to_come_the_kernel_keeps_one_step_and_a_consumed_state_is_written_in_place():
    model = manntk.build_model(mapping(True)).eval()
    x = torch.randn(2, STEPS, INPUT)
    forward, kept = ntm_sequence.extension().ntm_forward, []

    def recording(*args):
        outputs = forward(*args)
        kept.append(outputs[-1].shape[0])  # the memory history's step count
        return outputs

    ops = type("Ops", (), {"ntm_forward": staticmethod(recording)})()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ntm_sequence, "extension", lambda: ops)
        with torch.no_grad():
            _, state = model(x)
            before = state["layers"][0]["memory"].clone()
            y_kept, kept_state = model(x, state)
            torch.testing.assert_close(state["layers"][0]["memory"], before, rtol=0, atol=0)  # not consumed: intact
            y_consumed, consumed = model(x, state, consume_state=True)
        model(x)  # gradients on: a backward may come
    assert kept == [1, 1, 1, STEPS]
    assert consumed["layers"][0]["memory"].data_ptr() == state["layers"][0]["memory"].data_ptr()
    torch.testing.assert_close(y_consumed, y_kept, rtol=0, atol=0)
    torch.testing.assert_close(consumed["layers"][0]["memory"], kept_state["layers"][0]["memory"], rtol=0, atol=0)


def test_a_state_that_does_not_fit_the_input_is_an_error_not_a_read_past_its_end():
    model = manntk.build_model(mapping(True))
    state = model.init_state(1)
    with pytest.raises(RuntimeError, match=r"ntm sequence: h and c must be \[4, 5\]"):
        model(torch.randn(4, 3, INPUT), state)
    after = manntk.build_model(mapping(True, read="after"))
    state = after.init_state(2)
    del state["layers"][0]["read"]
    with pytest.raises(ValueError, match="needs the previous read"):
        after(torch.randn(2, 3, INPUT), state)
