"""Write policies and memory primitives against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from manntk import memory as mem
from manntk.context import BuildContext
from manntk.parts import Address
from manntk.plugins import default_plugins
from manntk.writes.erase_add import EraseAdd, EraseAddConfig
from manntk.writes.overwrite import Overwrite, OverwriteConfig

B, N, W = 2, 3, 4


def context(hidden_size=W):
    return BuildContext(input_size=2, hidden_size=hidden_size, slots=N, width=W, registry=default_plugins().registry)


def test_memory_primitives_by_hand():
    memory = torch.arange(B * N * W, dtype=torch.float32).view(B, N, W)
    weights = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    torch.testing.assert_close(mem.read(memory, weights), torch.stack([memory[0, 1], 0.5 * memory[1, 0] + 0.5 * memory[1, 2]]))
    index = torch.tensor([2, 0])
    torch.testing.assert_close(mem.read_index(memory, index), torch.stack([memory[0, 2], memory[1, 0]]))
    value = torch.full((B, W), -1.0)
    written = mem.overwrite(memory, weights, value)
    torch.testing.assert_close(written[0, 1], value[0])
    torch.testing.assert_close(written[0, 0], memory[0, 0])
    torch.testing.assert_close(written[1, 0], 0.5 * memory[1, 0] - 0.5)
    erase, add = torch.full((B, W), 0.25), torch.full((B, W), 2.0)
    expected = memory.clone()
    for b in range(B):
        for i in range(N):
            expected[b, i] = memory[b, i] * (1 - weights[b, i] * erase[b]) + weights[b, i] * add[b]
    torch.testing.assert_close(mem.erase_add(memory, weights, erase, add), expected)
    in_place = memory.clone()
    assert mem.overwrite_index_(in_place, index, value) is in_place
    assert torch.equal(in_place[0, 2], value[0]) and torch.equal(in_place[1, 0], value[1])


def test_fill_target_and_weights():
    filled, index = torch.tensor([0, 2, 3]), torch.tensor([2, 0, 1])
    assert mem.fill_target(filled, index, 3).tolist() == [0, 2, 1]
    weights = F.one_hot(index, 3).float()
    assert mem.fill_weights(filled, weights).argmax(1).tolist() == [0, 2, 1]


@pytest.mark.parametrize("discrete", [False, True])
def test_overwrite_fills_empty_slots_first_then_overwrites_the_read_slot(discrete):
    write = Overwrite(OverwriteConfig(), context())
    state = write.init_state(B, "cpu", torch.float32)
    memory = torch.zeros(B, N, W)
    read_slot = torch.tensor([1, 2])  # the addressing always reads slot 1 (row 0) and 2 (row 1)
    address = Address(None, read_slot) if discrete else Address(F.one_hot(read_slot, N).float(), read_slot)
    for t in range(N + 2):
        hidden = torch.full((B, W), float(t + 1))
        memory, state = write.step(None, t, memory, hidden, address, state)
        if t < N:  # slot t receives h_t; later slots are still empty
            assert torch.equal(memory[:, t], hidden) and memory[:, t + 1:].abs().sum() == 0
    # after the fill phase the last write went to the slot just read
    assert torch.equal(memory[0, 1], torch.full((W,), float(N + 2)))
    assert torch.equal(memory[1, 2], torch.full((W,), float(N + 2)))
    assert torch.equal(memory[0, 0], torch.full((W,), 1.0))
    assert state["filled"].tolist() == [N, N]


def test_overwrite_without_fill_writes_where_it_read_and_detaches_the_weights():
    write = Overwrite(OverwriteConfig(fill_empty_first=False), context())
    logits = torch.randn(B, N, requires_grad=True)
    weights = torch.softmax(logits, 1)
    memory, _ = write.step(None, 0, torch.zeros(B, N, W), torch.ones(B, W), Address(weights), {})
    torch.testing.assert_close(memory, weights.detach().unsqueeze(-1).expand(B, N, W))
    assert not memory.requires_grad


@pytest.mark.parametrize("fill_empty_first", [False, True])
def test_overwrite_argmax_replaces_only_the_most_read_slot(fill_empty_first):
    write = Overwrite(OverwriteConfig(fill_empty_first=fill_empty_first, argmax=True), context())
    state = write.init_state(B, "cpu", torch.float32)
    if fill_empty_first:
        state = {"filled": torch.tensor([N, 1])}  # row 0 full, row 1 still filling slot 1
    weights = torch.tensor([[0.2, 0.1, 0.7], [0.6, 0.3, 0.1]])
    memory = torch.randn(B, N, W)
    hidden = torch.randn(B, W, requires_grad=True)
    written, _ = write.step(None, 0, memory, hidden, Address(weights), state)
    expected = memory.clone()
    expected[0, 2] = hidden[0].detach()
    expected[1, 1 if fill_empty_first else 0] = hidden[1].detach()
    assert torch.equal(written.detach(), expected)
    written.sum().backward()  # the value is written differentiably: one slot per row
    assert torch.equal(hidden.grad, torch.ones(B, W))


def test_overwrite_projects_when_widths_differ():
    write = Overwrite(OverwriteConfig(fill_empty_first=False), context(hidden_size=7))
    hidden = torch.randn(B, 7)
    prepared = write.prepare(torch.zeros(B, 1, 2))
    memory, _ = write.step(prepared, 0, torch.zeros(B, N, W), hidden, Address(None, torch.tensor([0, 1])), {})
    torch.testing.assert_close(memory[0, 0], write.W_v(hidden)[0])
    with pytest.raises(ValueError, match="projection: false"):
        Overwrite(OverwriteConfig(projection=False), context(hidden_size=7))
    assert isinstance(Overwrite(OverwriteConfig(projection=True), context()).W_v, torch.nn.Linear)


def test_erase_add_uses_its_own_head():
    write = EraseAdd(EraseAddConfig(), context())
    x, hidden, memory = torch.randn(B, 1, 2), torch.randn(B, W), torch.randn(B, N, W)
    state = write.init_state(B, "cpu", torch.float32)
    new_memory, new_state = write.step(write.prepare(x), 0, memory, hidden, Address(None, torch.tensor([0, 0])), state)
    head_address, _ = write.head.step(write.head.prepare(x), 0, hidden, memory, state["head"])
    erase, add = write.W_ea(hidden).chunk(2, 1)
    expected = mem.erase_add(memory, head_address.weights, torch.sigmoid(erase), torch.tanh(add))
    torch.testing.assert_close(new_memory, expected)
    torch.testing.assert_close(new_state["head"]["weights"], head_address.weights)


def test_index_write_equals_the_weighted_write_in_value_and_gradient():
    """The one-hot fast path (index_put) against the blend it replaces."""
    write = Overwrite(OverwriteConfig(), context())
    state = {"filled": torch.tensor([1, N])}  # row 0 still filling, row 1 full
    index = torch.tensor([2, 0])
    memory = torch.randn(B, N, W, requires_grad=True)
    hidden = torch.randn(B, W, requires_grad=True)
    fast, _ = write.step(None, 0, memory, hidden, Address(F.one_hot(index, N).float(), index), state)
    weights = mem.fill_weights(state["filled"], F.one_hot(index, N).float())
    slow = mem.overwrite(memory, weights, hidden)
    torch.testing.assert_close(fast, slow)
    upstream = torch.randn(B, N, W)
    grads_fast = torch.autograd.grad((fast * upstream).sum(), (memory, hidden))
    grads_slow = torch.autograd.grad((slow * upstream).sum(), (memory, hidden))
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b)
