"""Slots that can be told apart: the symmetry check of ``manntk.testing``, the memory
starts and the NTM-style options that pytorch-ntm's setup needs, each checked so that
ignoring the option fails."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import manntk
from manntk import memory as mem
from manntk.context import BuildContext
from manntk.parts import Address
from manntk.plugins import default_plugins
from manntk.recipe import OptimizerConfig
from manntk.tasks.algorithmic import copy
from manntk.tasks.algorithmic.copy import CopyConfig
from manntk.testing import check_symmetry
from manntk.training.optim import make_optimizer
from manntk.writes.erase_add import EraseAdd, EraseAddConfig
from tests.conftest import COMPOSITIONS, model_mapping

MEMORY_MODELS = [name for name in COMPOSITIONS if COMPOSITIONS[name][1]["name"] != "none"]


def ntm(slots: int = 8, start: str = "first_slot", **memory) -> dict:
    """The NTM-style composition with both heads starting from ``start``."""
    mapping = model_mapping("ntm", slots=slots, width=4)
    mapping["addressing"]["start"] = start
    mapping["write"]["addressing"] = {"name": "ntm", "start": start}
    mapping["memory"].update(memory)
    return mapping


@pytest.mark.parametrize("name", MEMORY_MODELS)
def test_every_builtin_composition_breaks_the_symmetry_between_slots(name):
    report = check_symmetry(model_mapping(name, slots=8, width=4))
    assert {"read_weights", "write_weights", "slots_differ"} <= set(report.checks)


def test_the_symmetry_check_skips_a_model_without_memory():
    assert "read_weights" in check_symmetry(model_mapping("lstm")).skipped


def test_equal_slots_and_uniform_first_weights_fail_the_symmetry_check():
    """The NTM-style start that could not learn: every slot 1e-6, every weight 1/N."""
    with pytest.raises(AssertionError, match=r"read_weights.*uniform over the 8 slots"):
        check_symmetry(ntm(start="uniform", init="constant", value=1e-6))


@pytest.mark.parametrize("start, memory", [("first_slot", {"value": 1e-6}), ("learned", {"value": 1e-6}), ("uniform", {"init": "uniform"})])
def test_either_the_memory_or_the_first_weights_break_the_symmetry(start, memory):
    check_symmetry(ntm(start=start, **memory))


def test_the_uniform_start_is_drawn_once_within_the_bound_and_saved_with_the_weights():
    model = manntk.build_model(ntm(slots=8, init="uniform"))
    start = model.layers[0].memory_init
    bound = 1 / math.sqrt(8 + 4)
    assert start.abs().max() <= bound and start.std() > bound / 4  # spread over the range, not a constant
    assert "layers.0.memory_init" in model.state_dict()
    first, second = model.init_state(2), model.init_state(2)
    assert torch.equal(first["layers"][0]["memory"], second["layers"][0]["memory"])
    assert torch.equal(first["layers"][0]["memory"][1], start)


def test_a_start_per_sequence_is_drawn_afresh_for_every_state():
    model = manntk.build_model(ntm(slots=8, init="uniform", per_sequence=True))
    first, second = (model.init_state(2)["layers"][0]["memory"] for _ in range(2))
    assert not torch.equal(first, second) and not torch.equal(first[0], first[1])
    assert first.abs().max() <= 1 / math.sqrt(8 + 4)


def test_a_start_per_sequence_needs_the_uniform_init():
    with pytest.raises(manntk.ConfigError, match=r"per_sequence.*init: uniform and learned: false @ \$\.model\.memory"):
        manntk.build_model(ntm(per_sequence=True))


@pytest.mark.parametrize("start", ["uniform", "first_slot", "learned"])
def test_the_first_weights_of_an_ntm_head(start):
    model = manntk.build_model(ntm(slots=5, start=start))
    weights = model.init_state(3)["layers"][0]["addressing"]["weights"]
    assert weights.shape == (3, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    if start == "uniform":
        assert torch.equal(weights, torch.full((3, 5), 0.2))
    elif start == "first_slot":
        assert torch.equal(weights, torch.eye(5)[[0, 0, 0]])
    else:
        head = model.layers[0].addressing
        torch.testing.assert_close(weights[0], torch.softmax(head.start_logits, 0))
        y, _ = model(torch.randn(1, 3, 3))
        y.square().sum().backward()
        assert head.start_logits.grad is not None and head.start_logits.grad.abs().max() > 0


@pytest.mark.parametrize("add", ["tanh", "linear"])
def test_the_add_vector_is_tanh_or_linear(add):
    plugins = default_plugins()
    context = BuildContext(2, 3, 4, 5, plugins.registry, path="model.write")
    write = EraseAdd(EraseAddConfig(add=add), context)
    with torch.no_grad():
        write.W_ea.weight.mul_(20)  # pre-activations where tanh is far from linear
    x, hidden, memory = torch.randn(2, 1, 2), torch.randn(2, 3), torch.randn(2, 4, 5)
    state = write.init_state(2, "cpu", torch.float32)
    new_memory, _ = write.step(write.prepare(x), 0, memory, hidden, Address(None, torch.tensor([0, 0])), state)
    head_address, _ = write.head.step(write.head.prepare(x), 0, hidden, memory, state["head"])
    erase, pre_add = write.W_ea(hidden).chunk(2, 1)
    expected_add = torch.tanh(pre_add) if add == "tanh" else pre_add
    torch.testing.assert_close(new_memory, mem.erase_add(memory, head_address.weights, torch.sigmoid(erase), expected_add))


def test_rmsprop_takes_alpha():
    optimizer = make_optimizer(OptimizerConfig(name="rmsprop", lr=1e-4, momentum=0.9, alpha=0.95), [torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.param_groups[0]["alpha"] == 0.95


def test_a_learned_controller_state_starts_the_sequence_and_is_trained():
    mapping = ntm()
    mapping["cell"]["learned_state"] = True
    model = manntk.build_model(mapping)
    cell = model.layers[0].cell
    with torch.no_grad():
        cell.h_0.fill_(0.25)
        cell.c_0.fill_(-0.5)
    state = model.init_state(2)["layers"][0]["cell"]
    assert torch.equal(state["h"], torch.full((2, 5), 0.25)) and torch.equal(state["c"], torch.full((2, 5), -0.5))
    y, _ = model(torch.randn(2, 3, 3))
    y.square().sum().backward()
    assert cell.h_0.grad.abs().max() > 0 and cell.c_0.grad.abs().max() > 0


def test_copy_with_one_delimiter_after_the_bits():
    config = CopyConfig(width=8, min_length=1, max_length=20, markers="end")
    assert config.input_size == 9
    batch = copy.generate(config, 16, torch.Generator().manual_seed(0))
    for b in range(16):
        length = int(batch.mask[b].sum())
        assert int(batch.lengths[b]) == 2 * length + 1
        x, y = batch.inputs[b], batch.targets[b]
        assert not bool(x[:length, 8].any())  # the bits come first, no marker beside them
        assert torch.equal(x[length], torch.eye(9)[8])  # the delimiter alone
        assert torch.equal(y[length + 1 : 2 * length + 1], x[:length, :8])
        assert torch.equal(batch.mask[b, length + 1 : 2 * length + 1], torch.ones(length, dtype=torch.bool))


# -- the ARMIN authors' choices ---------------------------------------------------------------


def armin(cell: dict | None = None, write: dict | None = None) -> dict:
    mapping = model_mapping("armin", slots=4, width=6)
    mapping["cell"].update(cell or {})
    mapping["write"].update(write or {})
    return mapping


def test_orthogonal_recurrent_weights_of_the_armin_cell():
    cell = manntk.build_model(armin({"recurrent_init": "orthogonal"})).layers[0].cell
    d_i, d_h = cell.input_size, cell.hidden_size
    for linear in (cell.W_ig, cell.W_go):
        block = linear.weight[:, d_i : d_i + d_h].detach()  # [out, d_h], out >= d_h: orthonormal columns
        torch.testing.assert_close(block.T @ block, torch.eye(d_h), atol=1e-5, rtol=0)
    plain = manntk.build_model(armin()).layers[0].cell.W_go.weight[:, d_i : d_i + d_h].detach()
    assert (plain.T @ plain - torch.eye(d_h)).abs().max() > 0.1  # torch's default is not orthogonal


def test_a_learned_initial_hidden_state_of_the_armin_cell():
    model = manntk.build_model(armin({"learned_state": True}))
    cell = model.layers[0].cell
    with torch.no_grad():
        cell.h_0.fill_(0.3)
    assert torch.equal(model.init_state(2)["layers"][0]["cell"]["h"], torch.full((2, 5), 0.3))
    y, _ = model(torch.randn(2, 3, 3))
    y.square().sum().backward()
    assert cell.h_0.grad.abs().max() > 0


def test_the_written_value_from_input_and_hidden():
    model = manntk.build_model(armin(write={"value": "input_and_hidden"}))
    write = model.layers[0].write
    assert write.W_v.in_features == 3 + 5  # [x_t, h_t]
    x = torch.randn(2, 1, 3)
    hidden = torch.randn(2, 5)
    state = write.init_state(2, "cpu", torch.float32)
    memory = torch.zeros(2, 4, 6)
    written, _ = write.step(write.prepare(x), 0, memory, hidden, Address(None, torch.tensor([1, 2])), state)
    expected = write.W_v(torch.cat([x[:, 0], hidden], dim=1))
    torch.testing.assert_close(written[:, 0], expected)  # fill-empty-first: slot 0 of each row
    with pytest.raises(ValueError, match=r"model.write .*input_and_hidden writes a projection"):
        manntk.build_model(armin(write={"value": "input_and_hidden", "projection": False}))


def test_the_authors_recipe_says_what_it_sets():
    from manntk.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/algorithmic/copy/armin_authors.yaml")
    cell, write = recipe.model.cell.config, recipe.model.write.config
    assert (cell.squash_state, cell.forget_bias, cell.recurrent_init, cell.learned_state) == (True, 1.0, "orthogonal", True)
    assert write.value == "input_and_hidden" and recipe.model.memory.learned
    optimizer = recipe.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.momentum, optimizer.alpha) == ("rmsprop", 1e-4, 0.9, 0.95)
    assert recipe.train.clip_value == 10.0 and recipe.train.clip_norm is None
    assert recipe.model.addressing.config.hard is False and recipe.model.addressing.config.temperature.steps == 0
    task = recipe.task.config  # their copy.json: seq_width 8; torch.randint(1, 50) draws 1..49; start and end markers
    assert (task.width, task.min_length, task.max_length, task.markers, task.input_size) == (8, 1, 49, "start_end", 10)


# -- pytorch-ntm's initialisation --------------------------------------------------------------


def pytorch_ntm_init(cell: str = "default", head: str = "default", write: str = "default") -> torch.nn.Module:
    """An NTM-style model wide enough for weight statistics (W_head 110 -> 206, W_ea 100 -> 400, W 310 -> 400)."""
    mapping = model_mapping("ntm", input_size=10, slots=8, width=200)
    mapping["cell"].update(hidden_size=100, init=cell)
    mapping["addressing"]["init"] = head
    mapping["write"].update(init=write, addressing={"name": "ntm", "init": head})
    return manntk.build_model(mapping)


def is_pytorch_ntm_head(linear: torch.nn.Linear) -> bool:
    """Xavier-uniform weights with gain 1.4 (filling their range) and N(0, 0.01^2) biases."""
    bound = 1.4 * math.sqrt(6 / (linear.in_features + linear.out_features))
    weight, bias = linear.weight.detach(), linear.bias.detach()
    return bool(0.95 * bound < weight.abs().max() <= bound and 0.008 < bias.std() < 0.012 and bias.mean().abs() < 0.003)


@pytest.mark.parametrize("init", ["default", "xavier"])
def test_ntm_heads_and_the_erase_add_projection_can_start_as_pytorch_ntms_heads(init):
    layer = pytorch_ntm_init(head=init, write=init).layers[0]
    heads = {"read head": layer.addressing.W_head, "write head": layer.write.head.W_head, "W_ea": layer.write.W_ea}
    for name, linear in heads.items():
        assert is_pytorch_ntm_head(linear) == (init == "xavier"), name
        if init == "default":  # torch's Linear: U(+-1/sqrt(fan_in)) for weights and biases
            assert linear.weight.abs().max() <= 1 / math.sqrt(linear.in_features)


def test_the_write_heads_projection_and_its_addressing_take_their_own_init():
    layer = pytorch_ntm_init(write="xavier").layers[0]
    assert is_pytorch_ntm_head(layer.write.W_ea) and not is_pytorch_ntm_head(layer.write.head.W_head)


@pytest.mark.parametrize("init", ["default", "pytorch_ntm"])
def test_the_lstm_controller_can_start_as_pytorch_ntms(init):
    W = pytorch_ntm_init(cell=init).layers[0].cell.W  # over [x, h, r]: 10 + 100 + 200 inputs
    if init == "pytorch_ntm":
        bound = 5 / math.sqrt(10 + 200 + 100)
        assert 0.95 * bound < W.weight.abs().max() <= bound and torch.equal(W.bias, torch.zeros(400))
    else:
        assert W.weight.abs().max() <= 1 / math.sqrt(310) and W.bias.abs().min() > 0


def test_an_unknown_init_is_named_with_the_allowed_ones():
    with pytest.raises(manntk.ConfigError, match=r"expected one of 'default', 'xavier'; got 'glorot' @ \$\.model\.addressing\.init"):
        pytorch_ntm_init(head="glorot")
    with pytest.raises(manntk.ConfigError, match=r"expected one of 'default', 'pytorch_ntm'; got 'xavier' @ \$\.model\.cell\.init"):
        pytorch_ntm_init(cell="xavier")


def test_the_pytorch_ntm_recipe_sets_its_step_order_and_initialisation():
    from manntk.recipe import load_recipe

    model = load_recipe(Path(__file__).resolve().parents[1] / "recipes/algorithmic/copy/ntm_pytorch_ntm.yaml").model
    assert model.read == "after" and model.cell.config.init == "pytorch_ntm" and model.cell.config.learned_state
    write = model.write.config
    assert (model.addressing.config.init, write.init, write.addressing.config.init, write.add) == ("xavier", "xavier", "xavier", "linear")
