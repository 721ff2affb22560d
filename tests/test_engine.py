"""The engine: chunking, the discrete path, gradients, state handling, layers."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import manntk
import manntk.fast.recurrent
from manntk.state import detach_state, flatten_state, load_state, map_state, move_state, save_state, unflatten_state
from tests.conftest import COMPOSITIONS, build, model_mapping, soften

B, T = 2, 7


def assert_states_close(a, b):
    flat_a, flat_b = flatten_state(a), flatten_state(b)
    assert flat_a.keys() == flat_b.keys()
    for name in flat_a:
        torch.testing.assert_close(flat_a[name], flat_b[name], msg=name)


def test_build_model_api_from_the_issue():
    model = manntk.build_model({
        "input_size": 10, "output_size": 8, "layers": 1,
        "cell": {"name": "armin", "hidden_size": 100},
        "addressing": {"name": "auto"},
        "write": {"name": "overwrite"},
        "memory": {"slots": 50, "width": 32},
    })
    y, state = model(torch.randn(4, 20, 10))
    assert y.shape == (4, 20, 8)
    layer = model.layers[0]
    assert type(layer.cell).__name__ == "ArminCell" and type(layer.addressing).__name__ == "AutoAddressing"
    assert state["layers"][0]["memory"].shape == (4, 50, 32)
    assert layer.addressing.W_s.weight.shape == (50, 10 + 100)


def test_without_output_size_y_is_o_t(composition):
    model = build(model_mapping(composition, output_size=None))
    y, _ = model(torch.randn(B, T, 3))
    assert model.head is None and y.shape == (B, T, model.layers[0].cell.output_size)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_state_carried_across_two_chunks_equals_one_long_sequence(composition, mode):
    mapping = model_mapping(composition)
    if mode == "train":  # randomness (sampling, gate noise) differs per chunk: compare the deterministic parts
        if composition == "tardis":
            pytest.skip("the TARDIS cell's gates are noisy in training; covered in eval mode")
        mapping = soften(mapping)
    model = build(mapping)
    getattr(model, mode)()
    assert_two_chunks_are_one(model)


def assert_two_chunks_are_one(model) -> dict:
    """A sequence run as two chunks (the state carried) gives the outputs and state of one chunk; returns the state."""
    x = torch.randn(B, T, 3)
    y_full, state_full = model(x)
    y_first, state = model(x[:, :3])
    y_second, state = model(x[:, 3:], state)
    torch.testing.assert_close(torch.cat([y_first, y_second], 1), y_full)
    assert_states_close(state, state_full)
    return state


@pytest.mark.parametrize("name", ["armin", "awta", "tardis"])
def test_discrete_eval_path_equals_the_weighted_path(name):
    model = build(model_mapping(name, slots=3)).eval()  # T > slots: fill phase and overwrite phase
    x = torch.randn(B, T, 3)
    start = model.init_state(B)
    y_discrete, state_discrete = model(x, start)
    for layer in model.layers:
        layer.discrete_eval = False
    y_weighted, state_weighted = model(x, start)
    torch.testing.assert_close(y_discrete, y_weighted)
    assert_states_close(state_discrete, state_weighted)
    assert torch.equal(start["layers"][0]["memory"], model.init_state(B)["layers"][0]["memory"]), "caller's state was modified"


def test_a_consumed_state_is_written_in_place_with_the_same_numbers():
    """The discrete path (the per-step engine: fast=False; the chunk kernel never writes in place)."""
    model = build(model_mapping("armin", slots=3, fast=False)).eval()
    x = torch.randn(B, T, 3)
    start = model.init_state(B)
    start["layers"][0]["memory"].normal_()
    y_copy, state_copy = model(x, start)
    given = {"layers": [dict(layer) for layer in start["layers"]]}
    given["layers"][0]["memory"] = start["layers"][0]["memory"].clone()
    y_consumed, state_consumed = model(x, given, consume_state=True)
    torch.testing.assert_close(y_consumed, y_copy)
    assert_states_close(state_consumed, state_copy)
    # no copy: the new memory is the given one, written in place
    assert state_consumed["layers"][0]["memory"].data_ptr() == given["layers"][0]["memory"].data_ptr()
    assert state_copy["layers"][0]["memory"].data_ptr() != start["layers"][0]["memory"].data_ptr()


def test_a_fresh_state_never_shares_memory_init():
    """``state=None`` is consumed (the layer writes into it): with one row, expand +
    contiguous would have been a view of the learned initial memory."""
    mapping = model_mapping("armin", slots=3)
    mapping["memory"]["learned"] = True
    model = build(mapping).eval()
    initial = model.layers[0].memory_init.detach().clone()
    with torch.no_grad():
        model(torch.randn(1, T, 3))
    torch.testing.assert_close(model.layers[0].memory_init.detach(), initial, rtol=0, atol=0)


def test_discrete_path_reads_and_writes_by_index(monkeypatch):
    model = build(model_mapping("armin")).eval()
    calls = []
    monkeypatch.setattr(manntk.memory, "read", lambda *a: calls.append("read") or pytest.fail("weighted read"))
    monkeypatch.setattr(manntk.memory, "overwrite", lambda *a: pytest.fail("weighted write"))
    model(torch.randn(B, T, 3))
    assert calls == []


def gradcheck_model(mapping, mode):
    model = build(mapping, torch.float64)
    getattr(model, mode)()
    names = [name for name, _ in model.named_parameters()]
    x = torch.randn(B, 3, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    buffers = dict(model.named_buffers())

    def forward(x, *params):
        y, _ = functional_call(model, ({**dict(zip(names, params)), **buffers},), (x,))
        return y

    assert torch.autograd.gradcheck(forward, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("sum_in_place", [False, True], ids=["plain-products", "summed-weight-gradients"])
def test_gradcheck_every_model_in_eval(composition, sum_in_place, monkeypatch):
    """Every part in float64; hard addressing is argmax here (piecewise constant).

    Both paths of the per-step products: the plain one (these small weights) and the one
    that sums the weight gradient in place (large weights; forced here).
    """
    monkeypatch.setattr(manntk.fast.recurrent, "SUM_IN_PLACE_FROM", 0 if sum_in_place else 1 << 62)
    mapping = model_mapping(composition, slots=3, width=3)
    gradcheck_model(mapping, "eval")


@pytest.mark.parametrize("name", ["ntm", "lstm"])
def test_gradcheck_deterministic_models_in_training(name):
    gradcheck_model(model_mapping(name, slots=3, width=3), "train")


@pytest.mark.parametrize("name", ["armin", "awta"])
def test_gradcheck_soft_addressing_step(name):
    """The soft read path (hard: false) differentiates through the addressing into the read."""
    model = build(soften(model_mapping(name, slots=3, width=3)), torch.float64)
    addressing = model.layers[0].addressing
    x = torch.randn(B, 1, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, 5, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(B, 3, 3, dtype=torch.float64, requires_grad=True)
    state = addressing.init_state(B, "cpu", torch.float64)

    def read(x, h, memory):
        address, _ = addressing.step(addressing.prepare(x), 0, h, memory, state)
        return manntk.memory.read(memory, address.weights)

    assert torch.autograd.gradcheck(read, (x, h, memory))


def test_training_step_reaches_every_parameter(composition):
    model = build(model_mapping(composition)).train()
    y, _ = model(torch.randn(B, T, 3))
    y.square().sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_state_helpers_round_trip(tmp_path, composition):
    model = build(model_mapping(composition, layers=2)).eval()
    x = torch.randn(B, T, 3, requires_grad=True)
    _, state = model(x[:, :3])
    detached = detach_state(state)
    assert all(not t.requires_grad for t in flatten_state(detached).values())
    flat = flatten_state(state)
    assert any(name.startswith("layers.1.") for name in flat)
    assert_states_close(unflatten_state(flat), state)
    save_state(state, tmp_path / "state.safetensors")
    assert not (tmp_path / "state.safetensors.tmp").exists()
    loaded = load_state(tmp_path / "state.safetensors")
    y_loaded, _ = model(x[:, 3:], loaded)
    y_direct, _ = model(x[:, 3:], state)
    torch.testing.assert_close(y_loaded, y_direct)
    doubled = move_state(state, dtype=torch.float64)
    assert all(t.dtype in (torch.float64, torch.long) for t in flatten_state(doubled).values())
    with pytest.raises(TypeError, match="only tensors"):
        map_state({"h": 3}, lambda t: t)


def test_layers_each_have_their_own_memory():
    model = build(model_mapping("armin", layers=3, slots=4, width=6))
    _, state = model(torch.randn(B, T, 3))
    assert len(model.layers) == 3 and len(state["layers"]) == 3
    assert model.layers[1].cell.input_size == model.layers[0].output_size
    memories = [layer["memory"] for layer in state["layers"]]
    assert not torch.equal(memories[0], memories[1])


def test_embedding_takes_token_ids():
    model = build(model_mapping("armin", input_size=11, embedding=7))
    y, _ = model(torch.randint(0, 11, (B, T)))
    assert y.shape == (B, T, 2) and model.layers[0].cell.input_size == 7


def test_learned_memory_init_gets_gradient():
    model = build(model_mapping("armin", memory_override={"slots": 4, "width": 4, "learned": True, "value": 0.5}))
    assert torch.equal(model.layers[0].memory_init, torch.full((4, 4), 0.5))
    y, _ = model(torch.randn(B, T, 3))
    y.sum().backward()
    assert model.layers[0].memory_init.grad is not None


def test_every_paper_composition_builds():
    assert set(COMPOSITIONS) == {"armin", "awta", "tardis", "ntm", "lstm"}


def test_tracing_records_reads_writes_and_gates_per_step():
    from manntk.trace import record, tracing

    model = build(model_mapping("armin", slots=3, layers=2)).eval()
    record("outside", torch.zeros(1))  # no trace active: nothing is kept, nothing fails
    with tracing() as trace:
        model(torch.randn(B, T, 3))
    assert trace["layer0.read"].shape == (T, B, 3) and trace["layer1.read"].shape == (T, B, 3)
    assert trace["layer0.g_h"].shape == (T, B, 5) and trace["layer0.o_r"].shape == (T, B, 4)
    writes = trace["layer0.write"].argmax(-1)
    assert writes[:3].tolist() == [[0] * B, [1] * B, [2] * B]  # fill-empty-first, as recorded
    torch.testing.assert_close(trace["layer0.read"].sum(-1), torch.ones(T, B))


# -- model.read: the read before the cell (the paper) or after it (pytorch-ntm) ---------------


def spy_step(monkeypatch, part, calls: list) -> None:
    """Record the arguments and results of ``part.step`` in ``calls``, in call order."""
    step = part.step

    def recording(*args, **kwargs):
        result = step(*args, **kwargs)
        calls.append((args, result))
        return result

    monkeypatch.setattr(part, "step", recording)


@pytest.mark.parametrize("read", ["before", "after"])
def test_the_read_head_keys_from_h_t_after_the_cell_or_from_h_t_minus_1_before_it(monkeypatch, read):
    model = build(model_mapping("ntm", output_size=None, read=read, fast=False))  # the per-step path, spied on
    layer = model.layers[0]
    cell_calls, address_calls = [], []
    spy_step(monkeypatch, layer.cell, cell_calls)
    spy_step(monkeypatch, layer.addressing, address_calls)
    y, _ = model(torch.randn(B, T, 3))
    h_0 = layer.init_state(B, torch.device("cpu"), torch.float32)["cell"]["h"]
    hiddens = [h_0] + [result[1]["h"] for _, result in cell_calls]  # h_0 .. h_T
    for t, (args, _) in enumerate(address_calls):
        keyed_from = args[2]  # step(prepared, t, hidden, memory, state)
        torch.testing.assert_close(keyed_from, hiddens[t + 1] if read == "after" else hiddens[t], rtol=0, atol=0)
    if read == "after":  # the cell takes r_{t-1} (zeros first); o_t = [h_t, r_t]
        d_h = layer.cell.hidden_size
        reads = [torch.zeros(B, layer.width)] + list(y[:, :, d_h:].unbind(1))
        for t, (args, _) in enumerate(cell_calls):
            torch.testing.assert_close(args[3], reads[t], rtol=0, atol=0)  # step(prepared, t, state, read)
        torch.testing.assert_close(y[:, :, :d_h], torch.stack(hiddens[1:], 1), rtol=0, atol=0)


def test_read_after_is_pytorch_ntms_order_driven_by_hand():
    """cell(x_t, r_{t-1}) -> h_t; address from h_t; r_t from M_{t-1}; write from h_t; o_t = [h_t, r_t]."""
    from manntk import memory as mem

    mapping = model_mapping("ntm", output_size=None, read="after", memory_override={"slots": 4, "width": 4, "init": "uniform"})
    model = build(mapping)
    layer = model.layers[0]
    x = torch.randn(B, T, 3)
    state = layer.init_state(B, torch.device("cpu"), torch.float32)
    cell, address_state, write_state, memory = state["cell"], state["addressing"], state["write"], state["memory"]
    read = torch.zeros(B, layer.width)
    prepared = layer.cell.prepare(x), layer.addressing.prepare(x), layer.write.prepare(x)
    outputs = []
    for t in range(T):
        _, cell = layer.cell.step(prepared[0], t, cell, read)
        address, address_state = layer.addressing.step(prepared[1], t, cell["h"], memory, address_state)
        read = mem.read(memory, address.weights)
        memory, write_state = layer.write.step(prepared[2], t, memory, cell["h"], address, write_state)
        outputs.append(torch.cat([cell["h"], read], 1))
    y, new_state = model(x)
    torch.testing.assert_close(y, torch.stack(outputs, 1))
    torch.testing.assert_close(new_state["layers"][0]["memory"], memory)
    torch.testing.assert_close(new_state["layers"][0]["read"], read)


def test_read_before_and_after_give_different_outputs_from_the_same_weights():
    models = {}
    for read in ("before", "after"):
        torch.manual_seed(0)
        models[read] = build(model_mapping("ntm", read=read))
    before, after = models["before"], models["after"]
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(B, T, 3)
    assert not torch.allclose(before(x)[0], after(x)[0], atol=1e-3)


@pytest.mark.parametrize("name, mode", [("ntm", "train"), ("ntm", "eval"), ("armin", "eval")])
def test_read_after_carries_r_t_across_two_chunks(name, mode):
    model = build(model_mapping(name, read="after"))
    getattr(model, mode)()
    state = assert_two_chunks_are_one(model)
    assert state["layers"][0]["read"].shape == (B, model.layers[0].width)


def test_read_after_outputs_h_t_and_r_t_and_never_runs_the_chunk_kernel():
    before, after = build(model_mapping("armin", output_size=None)), build(model_mapping("armin", output_size=None, read="after"))
    assert after.layers[0].chunk_kernel is None and before.layers[0].chunk_kernel is not None
    layer = after.layers[0]
    assert layer.output_size == layer.cell.hidden_size + layer.width
    assert after(torch.randn(B, T, 3))[0].shape == (B, T, layer.output_size)
    assert "read" not in before.init_state(B)["layers"][0]


def test_a_read_after_layer_refuses_a_state_without_the_previous_read():
    before, after = build(model_mapping("ntm")), build(model_mapping("ntm", read="after"))
    with pytest.raises(ValueError, match=r"reads after the cell \(model.read: after\) and needs the previous read"):
        after(torch.randn(B, T, 3), before.init_state(B))


def test_read_after_trains():
    model = build(model_mapping("ntm", read="after"))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    x, target = torch.randn(B, T, 3), torch.randn(B, T, 2)
    losses = []
    for _ in range(20):
        loss = (model(x)[0] - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_an_unknown_read_order_is_named_with_the_allowed_ones():
    with pytest.raises(manntk.ConfigError, match=r"expected one of 'before', 'after'; got 'later' @ \$\.model\.read"):
        build(model_mapping("ntm", read="later"))


def test_every_composition_keeps_the_model_contract_with_read_after(composition):
    from manntk.testing import check_model

    check_model(model_mapping(composition, read="after"))
