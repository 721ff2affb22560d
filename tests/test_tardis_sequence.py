"""The TARDIS-addressing chunk kernel (``manntk.fast.tardis_sequence``) against the plain per-step path.

Tolerances: the kernel computes the same sums as the plain path in another order (its
products run over [x, h, r] at once, the query over [x, h], the weight gradients over the
whole chunk at once). Every value is a sum of at most ``T * K`` rounded products (``K`` the
widest product: the cell's ``[x, h, r]`` or the scores' N slots times their width), of terms
no larger than the compared tensor's magnitude, so the two paths may differ by
``eps * T * K * scale``; the bound below allows 8 times that.
"""

from __future__ import annotations


import pytest
import torch

import manntk
from manntk.build import build_experiment
from manntk.engine import MemoryLayer
from manntk.fast import tardis_sequence
from manntk.fast.tardis_sequence import Options, _TardisSequence
from manntk.recipe import load_recipe
from manntk.trace import tracing
from tests.conftest import fused_kernels_error
from tests.kernel_checks import assert_kernel_matches

STEPS, BATCH, INPUT, HIDDEN, SLOTS, WIDTH, KEY, ATTENTION = 9, 3, 5, 7, 4, 3, 2, 6
K = max(INPUT + HIDDEN + WIDTH, SLOTS * ATTENTION)


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    error = fused_kernels_error()
    if error is not None:
        pytest.skip(f"the C++ kernels cannot be built here: {error}")


def mapping(fast: bool, hard=True, usage=True, penalty=0.0, argmax=False, fill=True, value="hidden", squash=False,
            read_output=True, tau=0.7, cell="armin", noise=1.0, usage_feature="share", usage_scope="slot", content=True):
    """The armin cell (AwTA), or with ``cell="tardis"`` the tardis cell (TARDIS; ``squash`` and
    ``read_output`` are armin options and are then left out)."""
    cell_options = ({"name": "armin", "hidden_size": HIDDEN, "squash_state": squash, "forget_bias": 0.5, "read_output": read_output}
                    if cell == "armin" else {"name": "tardis", "hidden_size": HIDDEN, "forget_bias": 0.5, "gate_temperature": 0.3})
    return {
        "input_size": INPUT,
        "output_size": 4,
        "cell": cell_options,
        "addressing": {"name": "tardis", "hard": hard, "key_size": KEY, "attention_size": ATTENTION, "usage": usage,
                       "usage_feature": usage_feature, "usage_scope": usage_scope, "content": content, "reread_penalty": penalty, "temperature": {"start": tau, "end": tau}, "noise": noise},
        "write": {"name": "overwrite", "argmax": argmax, "fill_empty_first": fill, "value": value, "projection": True},
        "memory": {"slots": SLOTS, "width": WIDTH, "learned": True, "init": "uniform"},
        "fast": fast,
    }


def build(fast: bool, dtype: torch.dtype, **options) -> torch.nn.Module:
    """A model with weights of order one (the default init leaves the scores' tanh nearly
    linear and w_u at zero, so usage would not be exercised)."""
    torch.manual_seed(0)
    model = manntk.build_model(mapping(fast, **options)).to(dtype)
    assert (model.layers[0].chunk_kernel is not None) is fast
    with torch.no_grad():
        generator = torch.Generator().manual_seed(2)
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return model


def run_both(options: dict, dtype: torch.dtype, steps=STEPS, second=4, batch=BATCH, evaluate=False):
    """Two chunks (the second from the first's state) through the plain and the kernel path,
    with equal weights, inputs and Gumbel noise: outputs, final memory, h and the
    addressing's bookkeeping, and every gradient of a loss that uses all of them."""
    results = []
    for fast in (False, True):
        model = build(fast, dtype, **options)
        model.train(not evaluate)
        x = torch.randn(batch, steps, INPUT, generator=torch.Generator().manual_seed(1), dtype=dtype, requires_grad=True)
        torch.manual_seed(5)  # the same noise on both paths
        y, state = model(x)
        y2, state = model(x[:, :second], state)
        layer = state["layers"][0]
        loss = y.square().sum() + y2.sin().sum() + layer["memory"].cos().sum() + layer["cell"]["h"].sum()
        if "c" in layer["cell"]:  # the tardis cell
            loss = loss + layer["cell"]["c"].tanh().sum()
        loss.backward()
        values = {"y": y, "y2": y2, "memory": layer["memory"], "x.grad": x.grad,
                  "usage": layer["addressing"]["usage"], "previous": layer["addressing"]["previous"],
                  **{f"cell.{name}": value for name, value in layer["cell"].items()}}
        values.update({f"{name}.grad": p.grad for name, p in model.named_parameters()})
        results.append({name: None if value is None else value.detach() for name, value in values.items()})
    return results


def assert_same(plain: dict, kernel: dict, dtype: torch.dtype, steps=STEPS):
    assert_kernel_matches(plain, kernel, dtype, steps, K)


#: Every option at both values, each pair of options in every combination of values (an
#: orthogonal array of strength 2 over the 8 two-valued options, 12 runs).
NAMES = ("hard", "usage", "penalty", "argmax", "fill", "value", "squash", "read_output")
LEVELS = ((False, True), (False, True), (0.0, 100.0), (False, True), (False, True), ("hidden", "input_and_hidden"),
          (False, True), (False, True))
ARRAY = [  # Plackett-Burman, 12 runs (the first 8 columns of 11)
    (1, 1, 0, 1, 1, 1, 0, 0), (0, 1, 1, 0, 1, 1, 1, 0), (1, 0, 1, 1, 0, 1, 1, 1), (0, 1, 0, 1, 1, 0, 1, 1),
    (0, 0, 1, 0, 1, 1, 0, 1), (0, 0, 0, 1, 0, 1, 1, 0), (1, 0, 0, 0, 1, 0, 1, 1), (1, 1, 0, 0, 0, 1, 0, 1),
    (1, 1, 1, 0, 0, 0, 1, 0), (0, 1, 1, 1, 0, 0, 0, 1), (1, 0, 1, 1, 1, 0, 0, 0), (0, 0, 0, 0, 0, 0, 0, 0),
]
CASES = [{name: LEVELS[column][level] for column, (name, level) in enumerate(zip(NAMES, row))} for row in ARRAY]


def test_the_cases_cover_every_pair_of_option_values():
    for first in range(len(NAMES)):
        for second in range(first + 1, len(NAMES)):
            assert {(row[first], row[second]) for row in ARRAY} == {(0, 0), (0, 1), (1, 0), (1, 1)}, (NAMES[first], NAMES[second])


def case_id(options: dict) -> str:
    return "-".join(f"{key}={value}" for key, value in options.items())


@pytest.mark.parametrize("options", CASES, ids=case_id)
def test_the_kernel_gives_the_plain_paths_outputs_states_and_gradients_in_float64(options):
    """T > N: past the filling steps the writes replace by argmax or blend, and a re-read slot is penalised."""
    steps = 3 * SLOTS + 1
    plain, kernel = run_both(options, torch.float64, steps=steps)
    assert_same(plain, kernel, torch.float64, steps=steps)


#: The tardis cell: the options of the addressing and the write (the first six columns of the array).
TARDIS_CASES = [{**{name: value for name, value in case.items() if name not in ("squash", "read_output")}, "cell": "tardis"}
                for case in CASES]


@pytest.mark.parametrize("options", TARDIS_CASES, ids=case_id)
def test_the_tardis_cell_kernel_gives_the_plain_paths_outputs_states_and_gradients_in_float64(options):
    """As above with the tardis cell (TARDIS): the gates alpha, beta draw their logistic noise
    before the addressing's Gumbel noise, on both paths."""
    steps = 3 * SLOTS + 1
    plain, kernel = run_both(options, torch.float64, steps=steps)
    assert "cell.c" in plain and "layers.0.cell.W_r.weight.grad" in plain
    assert_same(plain, kernel, torch.float64, steps=steps)


@pytest.mark.parametrize("options", TARDIS_CASES[::4], ids=case_id)
def test_in_evaluation_the_tardis_cell_kernel_gives_the_plain_paths_outputs_and_gradients(options):
    steps = 3 * SLOTS + 1
    plain, kernel = run_both(options, torch.float64, steps=steps, evaluate=True)
    assert_same(plain, kernel, torch.float64, steps=steps)


@pytest.mark.parametrize("options", CASES[::3], ids=case_id)
def test_in_evaluation_the_kernel_gives_the_plain_paths_outputs_and_gradients(options):
    """Evaluation: hard reads are the argmax slot (no noise) and the scores' weights get no
    gradient, as on the engine's discrete path; soft reads as in training."""
    steps = 3 * SLOTS + 1
    plain, kernel = run_both(options, torch.float64, steps=steps, evaluate=True)
    assert_same(plain, kernel, torch.float64, steps=steps)
    assert (plain["layers.0.addressing.A.grad"] is None) is options["hard"]


@pytest.mark.parametrize("options", [{}, {"hard": False, "penalty": 100.0}, {"cell": "tardis", "penalty": 100.0}], ids=case_id)
def test_the_kernel_matches_the_plain_path_at_batch_1(options):
    plain, kernel = run_both(options, torch.float64, steps=2 * SLOTS + 3, batch=1)
    assert_same(plain, kernel, torch.float64, steps=2 * SLOTS + 3)


@pytest.mark.parametrize("options", [{"noise": 0.0}, {"noise": 0.3, "penalty": 100.0}, {"noise": 0.0, "cell": "tardis"}], ids=case_id)
def test_the_kernel_matches_the_plain_path_with_scaled_or_no_noise(options):
    """A hard read in training with the Gumbel noise scaled (``addressing.noise``), or none:
    the argmax of the logits, the straight-through gradient."""
    plain, kernel = run_both(options, torch.float64, steps=3 * SLOTS + 1)
    assert_same(plain, kernel, torch.float64, steps=3 * SLOTS + 1)


@pytest.mark.parametrize("options", [{"usage_feature": "count"}, {"usage_feature": "seen", "penalty": 100.0},
                                     {"usage_feature": "count", "hard": False}, {"usage_feature": "seen", "cell": "tardis"},
                                     {"usage_feature": "l2"}, {"usage_feature": "l2", "cell": "tardis", "hard": False},
                                     {"usage_scope": "all", "usage_feature": "l2", "penalty": 100.0},
                                     {"usage_scope": "all", "hard": False},
                                     {"usage_scope": "all", "usage_feature": "seen", "cell": "tardis", "penalty": 100.0},
                                     {"usage_scope": "all", "usage_feature": "l2", "cell": "tardis", "hard": False}],
                         ids=case_id)
def test_the_kernel_matches_the_plain_path_with_every_usage_feature(options):
    """The usage as read counts, as whether a slot was read or L2-normalised, instead of the
    share of the reads (the array above runs the share), and seen whole by every slot's score
    (``usage_scope: all``)."""
    plain, kernel = run_both(options, torch.float64, steps=3 * SLOTS + 1)
    assert_same(plain, kernel, torch.float64, steps=3 * SLOTS + 1)


def test_the_usage_feature_changes_the_kernels_outputs():
    """The cases above would pass if both paths ignored ``usage_feature``: here the kernel's
    outputs differ between the share, the counts and their L2 normalisation."""
    share, count, l2 = (run_both({"usage_feature": feature}, torch.float64, steps=3 * SLOTS + 1)[1]["y"]
                        for feature in ("share", "count", "l2"))
    assert not torch.allclose(share, count) and not torch.allclose(share, l2) and not torch.allclose(count, l2)


@pytest.mark.parametrize("options", [{"content": False}, {"content": False, "hard": False, "penalty": 100.0},
                                     {"content": False, "cell": "tardis"}], ids=case_id)
def test_the_kernel_matches_the_plain_path_without_content_in_the_scores(options):
    """``content: false``: the kernel scores with zero content columns, the plain path without
    them; outputs, states and every gradient agree."""
    plain, kernel = run_both(options, torch.float64, steps=3 * SLOTS + 1)
    assert_same(plain, kernel, torch.float64, steps=3 * SLOTS + 1)


@pytest.mark.parametrize("options", [{"hard": False}, {"hard": False, "argmax": True, "usage": False, "penalty": 100.0},
                                     {"hard": False, "cell": "tardis"}], ids=case_id)
def test_the_kernel_matches_the_plain_path_in_float32(options):
    """Soft reads: a hard read's argmax may flip between two near-equal scores under float32
    rounding, which would be a different (equally valid) sample, not an error."""
    plain, kernel = run_both(options, torch.float32)
    assert_same(plain, kernel, torch.float32)


@pytest.mark.parametrize("steps, usage, penalty, fill, usage_all", [(5, 0, 0.0, True, False), (5, 0, 0.0, False, False), (1, 1, 1.5, False, False),
                                                                (1, 2, 1.5, False, False), (1, 4, 1.5, False, False), (1, 4, 1.5, False, True),
                                                                (1, 1, 0.0, True, True)])
def test_the_operator_passes_gradcheck(steps, usage, penalty, fill, usage_all):
    """The autograd node itself, in float64, against finite differences (``usage``: the
    kernels' code, 0 none, 1 the share, 2 the counts, 4 L2-normalised; ``usage_all``: ``w_u``
    ``[S, N]``, every slot's score seeing the whole usage), with soft reads
    and argmax writes: the composition whose gradient is the true derivative. (Hard reads
    are straight-through and the blend's write weights are detached, by design; so are the
    usage and the previous read weights carried to the next step, as on the plain path,
    ``TardisAddressing.step``: usage and the re-read penalty are checked over one step, from
    a given usage and previous read, where nothing depends on what they carry. Those
    gradients are checked against the plain path above.)"""
    generator = torch.Generator().manual_seed(3)

    def tensor(*shape, grad=True):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(grad)

    B, N, D, d_i, d_h, S = 2, 3, 2, 2, 3, 4
    weights = (
        tensor(S, d_i + d_h), tensor(S), tensor(N, S), tensor(S, D),
        tensor(S, N, grad=usage != 0) if usage_all else tensor(S, grad=usage != 0), tensor(S),
        tensor(d_h + D, d_i + d_h + D), tensor(d_h + D), tensor(4 * d_h + D, d_i + d_h + D), tensor(4 * d_h + D),
        tensor(D, d_i + d_h), tensor(D),
    )
    filled = torch.tensor([0, 2])
    usage0, previous0 = 3 * tensor(B, N, grad=False).abs(), tensor(B, N, grad=False).softmax(-1)
    options = Options(0.8, 0.3, squash=True, read_output=True, hard=False, argmax_write=True, fill=fill, usage=usage,
                      penalty=penalty, address_gradient=True)

    def function(x, h0, m0, *weights):
        return _TardisSequence.apply(options, True, False, x, h0, m0, filled, usage0, previous0, None, *weights)[:3]

    assert torch.autograd.gradcheck(function, (tensor(steps, B, d_i), tensor(B, d_h), tensor(B, N, D), *weights))


def test_the_default_awta_copy_recipe_builds_the_kernel_and_trains_through_it(monkeypatch):
    """The fast path is the default: the AwTA copy recipe's layer holds the kernel and a
    training step runs it; ``model.fast: false`` builds the plain path."""
    recipe = "recipes/algorithmic/copy/awta.yaml"
    task, model = build_experiment(load_recipe(recipe))
    assert isinstance(model.layers[0].chunk_kernel, tardis_sequence.TardisSequence)
    calls = []
    apply = _TardisSequence.apply
    monkeypatch.setattr(_TardisSequence, "apply", lambda *args: calls.append(1) or apply(*args))
    batch = task.train_batch(0, 1)
    task.score(model(batch.inputs)[0], batch)["loss"].backward()
    assert calls == [1]
    assert all(p.grad is not None for p in model.layers[0].addressing.parameters())
    _, plain = build_experiment(load_recipe(recipe, ["model.fast=false"]))
    assert plain.layers[0].chunk_kernel is None


def test_the_default_tardis_copy_recipe_builds_the_kernel():
    task, model = build_experiment(load_recipe("recipes/algorithmic/copy/tardis.yaml"))
    assert isinstance(model.layers[0].chunk_kernel, tardis_sequence.TardisSequence)
    _, plain = build_experiment(load_recipe("recipes/algorithmic/copy/tardis.yaml", ["model.fast=false"]))
    assert plain.layers[0].chunk_kernel is None


def test_the_plain_path_runs_where_the_kernel_does_not_apply():
    """Tracing, other dtypes and zoneout step aside to the plain path."""
    model = manntk.build_model(mapping(True))
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


def test_other_compositions_get_no_kernel():
    layer_norm = mapping(True)
    layer_norm["cell"]["layer_norm"] = True
    assert manntk.build_model(layer_norm).layers[0].chunk_kernel is None
    after = {**mapping(True), "read": "after"}
    assert manntk.build_model(after).layers[0].chunk_kernel is None
    erase_add = {**mapping(True), "cell": {"name": "armin", "hidden_size": WIDTH}, "write": {"name": "erase_add"}}
    assert manntk.build_model(erase_add).layers[0].chunk_kernel is None
    swapped = manntk.build_model(mapping(True))  # parts swapped after the build: the kernel steps aside
    swapped.layers[0].write = manntk.build_model(erase_add).layers[0].write
    assert not swapped.layers[0].chunk_kernel.applies(swapped.layers[0], torch.randn(2, 3, INPUT))


def test_without_a_backward_to_come_the_kernel_keeps_one_step_and_a_consumed_state_is_written_in_place():
    model = build(True, torch.float32).eval()
    x = torch.randn(2, STEPS, INPUT)
    with torch.no_grad():
        _, state = model(x)
        before = state["layers"][0]["memory"].clone()
        y_kept, kept = model(x, state)
        torch.testing.assert_close(state["layers"][0]["memory"], before, rtol=0, atol=0)  # not consumed: intact
        y_consumed, consumed = model(x, state, consume_state=True)
    assert consumed["layers"][0]["memory"].data_ptr() == state["layers"][0]["memory"].data_ptr()
    torch.testing.assert_close(y_consumed, y_kept, rtol=0, atol=0)
    torch.testing.assert_close(consumed["layers"][0]["addressing"]["usage"], kept["layers"][0]["addressing"]["usage"], rtol=0, atol=0)


def test_a_state_that_does_not_fit_the_input_is_an_error_not_a_read_past_its_end():
    model = manntk.build_model(mapping(True))
    state = model.init_state(1)
    with pytest.raises(RuntimeError, match=r"tardis sequence: h must be \[4, 7\]"):
        model(torch.randn(4, 3, INPUT), state)
