"""The memory tape (in-place writes undone in backward) against autograd's plain memory path."""

from __future__ import annotations

import pytest
import torch

import manntk
from manntk import memory as mem
from manntk.fast import tape as tape_module
from manntk.backends import tape_capable
from manntk.fast.tape import MemoryTape
from tests.conftest import model_mapping

B, N, D = 3, 4, 5


def episode(make_tape: bool, memory, weights, values, slots, use_final: bool):
    """Reads and writes in turn (read t, write t), as the engine does; returns the loss.

    ``weights`` ``[T, B, N]`` are one-hot rows (as straight-through hard addresses are) that
    carry a gradient; the loss weighs each read and, with ``use_final``, the final memory.
    """
    tape = MemoryTape.start(memory) if make_tape else None
    loss = memory.new_zeros(())
    for t in range(len(values)):
        index = weights[t].argmax(-1)
        read = tape.read(weights[t], index) if tape is not None else mem.read(memory, weights[t])
        loss = loss + (read * torch.linspace(-1, 2, D, dtype=read.dtype) * (t + 1)).sin().sum()
        if tape is not None:
            tape.overwrite(slots[t], values[t])
        else:
            memory = mem.overwrite_index(memory, slots[t], values[t])
    final = tape.end() if tape is not None else memory
    if use_final:
        loss = loss + final.cos().sum()
    return loss, final


def one_hot_with_grad(index):
    weights = torch.nn.functional.one_hot(index, N).double()
    return weights.requires_grad_()


@pytest.mark.parametrize("use_final", [False, True])
def test_tape_gives_the_plain_paths_values_and_gradients(use_final):
    T = 9  # more writes than slots: slots are overwritten and read again
    generator = torch.Generator().manual_seed(3)
    index = torch.randint(N, (T, B), generator=generator)
    slots = torch.randint(N, (T, B), generator=generator)
    results = []
    for make_tape in (True, False):
        memory = torch.randn(B, N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
        values = torch.randn(T, B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
        weights = one_hot_with_grad(index)
        loss, final = episode(make_tape, memory, weights, values, slots, use_final)
        loss.backward()
        results.append((loss.detach(), final.detach(), memory.grad, values.grad, weights.grad))
    for tape_value, plain_value in zip(*results, strict=True):
        torch.testing.assert_close(tape_value, plain_value, rtol=0, atol=1e-12)
    assert results[1][3][-1].abs().sum() == 0 or use_final  # the last write reaches the loss only through the final memory


def test_a_second_backward_pass_over_the_tape_doubles_the_gradients():
    T = 7
    index = torch.randint(N, (T, B))
    slots = torch.randint(N, (T, B))
    memory = torch.randn(B, N, D, dtype=torch.float64, requires_grad=True)
    values = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    weights = one_hot_with_grad(index)
    loss, _ = episode(True, memory, weights, values, slots, use_final=True)
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in (memory, values, weights)]
    loss.backward()
    for tensor, grad in zip((memory, values, weights), first, strict=True):
        torch.testing.assert_close(tensor.grad, 2 * grad)


def test_tape_leaves_the_callers_memory_alone():
    memory = torch.randn(B, N, D)
    before = memory.clone()
    tape = MemoryTape.start(memory)
    tape.overwrite(torch.zeros(B, dtype=torch.long), torch.ones(B, D))
    final = tape.end()
    torch.testing.assert_close(memory, before)
    assert (final[:, 0] == 1).all()


def test_tape_frees_its_graph_without_the_garbage_collector():
    """The nodes hold the tape; the tape must not hold a node (a reference cycle keeps the
    chunk's whole graph alive until Python's collector runs: 40% slower training)."""
    import gc
    import weakref

    gc.disable()
    try:
        memory = torch.randn(B, N, D)
        weights = one_hot_with_grad(torch.randint(N, (B,)))
        tape = MemoryTape.start(memory)
        read = tape.read(weights, weights.argmax(-1))
        tape.overwrite(torch.zeros(B, dtype=torch.long), read * 2)
        final = tape.end()
        alive = weakref.ref(tape.memory)  # held by the tape alone
        del tape, read, final
        assert alive() is None
    finally:
        gc.enable()


def run(model, x, tape: bool, monkeypatch, seed=1):
    monkeypatch.setattr(tape_module, "TAPE_FROM", 0)  # tiny memories take the tape too
    for layer in model.layers:  # the plain path: the layer as if its parts could not use the tape
        monkeypatch.setattr(layer, "tape_capable", tape and tape_capable(layer.addressing, layer.write))
    torch.manual_seed(seed)
    model.zero_grad()
    y, state = model(x)
    memory = state["layers"][0]["memory"]
    (y.square().sum() + memory.sin().sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return y.detach(), memory.detach(), grads, memory.grad_fn


def assert_same_gradients(got: dict, expected: dict, x, model) -> None:
    """float32 gradients summed in another order (the tape's backward): a step's products
    sum ``terms`` terms and a weight gradient sums B * T steps' contributions; allow that
    many roundings (eps) of the gradient's largest magnitude (a bug is off by O(1))."""
    B, T = x.shape[:2]
    terms = max(w.shape[1] for w in model.parameters() if w.dim() == 2)
    for name in expected:
        bound = B * T * terms * torch.finfo(torch.float32).eps * expected[name].abs().max().item()
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=bound, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    "write, learned",
    [
        ({"name": "overwrite"}, False),
        ({"name": "overwrite", "fill_empty_first": False, "projection": True}, True),
    ],
)
def test_armin_trains_on_the_tape_with_the_plain_numbers(write, learned, monkeypatch):
    mapping = model_mapping("armin", width=4, write=write, fast=False)  # the per-step path, where the tape lives
    mapping["write"] = write
    mapping["memory"]["learned"] = learned
    model = manntk.build_model(mapping)
    x = torch.randn(3, 11, 3)  # 11 steps, 4 slots
    y_tape, memory_tape, g_tape, node = run(model, x, True, monkeypatch)
    assert type(node).__name__ == "_EndBackward"  # the chunk went through the tape
    y_plain, memory_plain, g_plain, plain_node = run(model, x, False, monkeypatch)
    assert type(plain_node).__name__ != "_EndBackward"
    torch.testing.assert_close(y_tape, y_plain, rtol=0, atol=0)
    torch.testing.assert_close(memory_tape, memory_plain, rtol=0, atol=0)
    assert g_tape.keys() == g_plain.keys()
    assert ("layers.0.memory_init" in g_plain) == learned
    assert_same_gradients(g_tape, g_plain, x, model)


def test_soft_reads_and_content_addressing_take_the_plain_path(monkeypatch):
    soft = model_mapping("armin", fast=False)
    soft["addressing"]["hard"] = False
    for mapping in (soft, model_mapping("tardis")):
        model = manntk.build_model(mapping)
        _, _, _, node = run(model, torch.randn(2, 5, 3), True, monkeypatch)
        assert type(node).__name__ != "_EndBackward"


def test_small_memories_take_the_plain_path():
    model = manntk.build_model(model_mapping("armin", fast=False))  # 2 x 4 x 4 elements
    _, state = model(torch.randn(2, 5, 3))
    assert type(state["layers"][0]["memory"].grad_fn).__name__ != "_EndBackward"
    assert MemoryTape.pays(torch.empty(128, 5, 500)) and not MemoryTape.pays(torch.empty(1, 50, 32))


def test_a_write_the_tape_cannot_hold_ends_it_and_the_chunk_goes_on_plainly(monkeypatch):
    from manntk.writes.overwrite import Overwrite

    replacement = Overwrite.replacement
    calls = []

    def until_step_4(self, prepared, t, hidden, address, state):
        calls.append(t)
        return replacement(self, prepared, t, hidden, address, state) if t < 4 else None

    model = manntk.build_model(model_mapping("armin", width=4, fast=False))
    x = torch.randn(3, 9, 3)
    y_plain, memory_plain, g_plain, _ = run(model, x, False, monkeypatch)
    monkeypatch.setattr(Overwrite, "replacement", until_step_4)
    y_mixed, memory_mixed, g_mixed, node = run(model, x, True, monkeypatch)
    # the engine asked at steps 0-4, until it said no; Overwrite.step (plain writes) asks at 4-8
    assert calls == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8]
    assert type(node).__name__ != "_EndBackward"
    torch.testing.assert_close(y_mixed, y_plain, rtol=0, atol=0)
    torch.testing.assert_close(memory_mixed, memory_plain, rtol=0, atol=0)
    assert_same_gradients(g_mixed, g_plain, x, model)
