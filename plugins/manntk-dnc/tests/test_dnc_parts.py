"""The dnc write and dnc_read addressing: by hand, gradcheck, manntk.testing, the link estimate."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

import manntk
from manntk import testing
from manntk.context import BuildContext
from manntk.parts import Address
from manntk_dnc import DncRead, DncReadConfig, DncWrite, DncWriteConfig
from manntk_dnc import functional as F

from conftest import dnc_mapping

B, N, W, H = 2, 4, 3, 5


def context(plugins, slots=N, width=W, hidden=H) -> BuildContext:
    return BuildContext(input_size=2, hidden_size=hidden, slots=slots, width=width, registry=plugins.registry)


def cosine(key, row, eps=1e-6):
    dot = sum(k * m for k, m in zip(key, row))
    key_norm = (sum(k * k for k in key) + eps * eps) ** 0.5
    row_norm = (sum(m * m for m in row) + eps * eps) ** 0.5
    return dot / (key_norm * row_norm + eps)


def softmax(values):
    top = max(values)
    exps = [torch.tensor(v - top).exp().item() for v in values]
    return [e / sum(exps) for e in exps]


def sigmoid(v):
    return 1 / (1 + torch.tensor(-v).exp().item())


def oneplus(v):
    return 1 + torch.nn.functional.softplus(torch.tensor(v)).item()


# --------------------------------------------------------------------------- by hand


def test_write_step_by_hand(dnc_plugins):
    """One write step of a 1-row, 3-slot, 2-wide memory, recomputed with Python floats."""
    write = DncWrite(DncWriteConfig(), context(dnc_plugins, slots=3, width=2, hidden=2)).double()
    memory = torch.tensor([[[0.5, -0.2], [0.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    hidden = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    read = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    state = {
        "usage": torch.tensor([[0.7, 0.2, 0.5]], dtype=torch.float64),
        "write_weights": torch.tensor([[0.1, 0.0, 0.3]], dtype=torch.float64),
        "precedence": torch.tensor([[0.2, 0.1, 0.4]], dtype=torch.float64),
        "link": torch.tensor([[[0.0, 0.1, 0.2], [0.3, 0.0, 0.1], [0.2, 0.2, 0.0]]], dtype=torch.float64),
    }
    new_memory, new_state = write.step(None, 0, memory, hidden, Address(read), state)

    xi = write.interface(hidden)[0].tolist()  # [k (2), beta, e (2), v (2), f, g^a, g^w]
    key, beta, erase, vector = xi[0:2], oneplus(xi[2]), [sigmoid(v) for v in xi[3:5]], xi[5:7]
    free, g_a, g_w = sigmoid(xi[7]), sigmoid(xi[8]), sigmoid(xi[9])
    u0, ww0, p0 = state["usage"][0].tolist(), state["write_weights"][0].tolist(), state["precedence"][0].tolist()
    L0, M0, r = state["link"][0].tolist(), memory[0].tolist(), read[0].tolist()
    usage = [(u0[i] + ww0[i] - u0[i] * ww0[i]) * (1 - free * r[i]) for i in range(3)]
    order = sorted(range(3), key=lambda i: usage[i])
    allocation, product = [0.0] * 3, 1.0
    for slot in order:
        allocation[slot] = (1 - usage[slot]) * product
        product *= usage[slot]
    content = softmax([beta * cosine(key, M0[i]) for i in range(3)])
    ww = [g_w * (g_a * allocation[i] + (1 - g_a) * content[i]) for i in range(3)]
    M1 = [[M0[i][k] * (1 - ww[i] * erase[k]) + ww[i] * vector[k] for k in range(2)] for i in range(3)]
    p1 = [(1 - sum(ww)) * p0[i] + ww[i] for i in range(3)]
    L1 = [[0.0 if i == j else (1 - ww[i] - ww[j]) * L0[i][j] + ww[i] * p0[j] for j in range(3)] for i in range(3)]

    expected = {"usage": [usage], "write_weights": [ww], "precedence": [p1], "link": [L1]}
    for name, value in expected.items():
        torch.testing.assert_close(new_state[name], torch.tensor(value, dtype=torch.float64), msg=name)
    torch.testing.assert_close(new_memory, torch.tensor([M1], dtype=torch.float64))


def test_read_step_by_hand(dnc_plugins):
    """One read step: the link estimate from the memory change, then the three read modes."""
    read = DncRead(DncReadConfig(tolerance=0.5), context(dnc_plugins, slots=3, width=2, hidden=2)).double()
    previous_memory = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    memory = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 4.0]]], dtype=torch.float64)  # slot 2 changed by 5
    hidden = torch.tensor([[0.4, 0.9]], dtype=torch.float64)
    state = {
        "weights": torch.tensor([[0.0, 0.8, 0.2]], dtype=torch.float64),
        "precedence": torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64),  # slot 1 was written last
        "link": torch.zeros(1, 3, 3, dtype=torch.float64),
        "memory": previous_memory,
        "started": torch.ones(1, dtype=torch.float64),
    }
    address, new_state = read.step(None, 0, hidden, memory, state)

    written = [0.0, 0.0, 5 / (5 + 0.5)]
    p0, w0 = [0.0, 1.0, 0.0], [0.0, 0.8, 0.2]
    L = [[0.0 if i == j else written[i] * p0[j] for j in range(3)] for i in range(3)]  # the link was empty
    p1 = [(1 - sum(written)) * p0[i] + written[i] for i in range(3)]
    forward = [sum(L[i][j] * w0[j] for j in range(3)) for i in range(3)]
    backward = [sum(L[j][i] * w0[j] for j in range(3)) for i in range(3)]
    xi = read.interface(hidden)[0].tolist()  # [k (2), beta, modes (3)]
    M = memory[0].tolist()
    content = softmax([oneplus(xi[2]) * cosine(xi[0:2], M[i]) for i in range(3)])
    pi_b, pi_c, pi_f = softmax(xi[3:6])
    missing = pi_b * (1 - sum(backward)) + pi_f * (1 - sum(forward))
    weights = [pi_b * backward[i] + pi_c * content[i] + pi_f * forward[i] + missing * content[i] for i in range(3)]

    torch.testing.assert_close(new_state["link"], torch.tensor([L], dtype=torch.float64))
    torch.testing.assert_close(new_state["precedence"], torch.tensor([p1], dtype=torch.float64))
    torch.testing.assert_close(address.weights, torch.tensor([weights], dtype=torch.float64))
    assert address.index is None and new_state["memory"] is memory
    assert forward[2] == pytest.approx(0.8 * 5 / 5.5)  # forward from slot 1 (read last) reaches slot 2 (written after it)


def test_no_link_update_at_the_start_of_a_sequence(dnc_plugins):
    read = DncRead(DncReadConfig(), context(dnc_plugins))
    state = read.init_state(B, torch.device("cpu"), torch.float32)
    _, new_state = read.step(None, 0, torch.randn(B, H), torch.randn(B, N, W), state)
    assert new_state["link"].abs().sum() == 0 and new_state["precedence"].abs().sum() == 0
    assert torch.equal(new_state["started"], torch.ones(B))


# --------------------------------------------------------------------------- gradients


def random_state(n=N, dtype=torch.float64):
    """Soft weights and a usage with distinct entries (away from the sort's ties)."""
    usage = (torch.randperm(n).to(dtype) + torch.rand(n, dtype=dtype) * 0.5) / n
    weights = torch.softmax(torch.randn(B, n, dtype=dtype), -1) * 0.5
    link = torch.rand(B, n, n, dtype=dtype) / n * (1 - torch.eye(n, dtype=dtype))
    return usage.expand(B, n).clone(), weights, torch.softmax(torch.randn(B, n, dtype=dtype), -1) * 0.7, link


def test_allocation_gradcheck_away_from_ties():
    usage = torch.tensor([[0.15, 0.62, 0.33, 0.91], [0.5, 0.05, 0.75, 0.25]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.allocation, (usage,))


def test_allocation_gradient_is_that_of_the_fixed_permutation():
    """Autograd through the sort equals differentiating the product formula with phi held fixed."""
    usage = torch.tensor([0.4, 0.1, 0.9, 0.2], dtype=torch.float64)
    phi = [1, 3, 0, 2]  # sorted by hand

    def fixed(u):
        out, before = [None] * 4, torch.ones((), dtype=u.dtype)
        for slot in phi:
            out[slot] = (1 - u[slot]) * before
            before = before * u[slot]
        return torch.stack(out)

    jac_sorted = torch.autograd.functional.jacobian(lambda u: F.allocation(u.unsqueeze(0))[0], usage)
    jac_fixed = torch.autograd.functional.jacobian(fixed, usage)
    torch.testing.assert_close(jac_sorted, jac_fixed)


def test_write_gradcheck_float64(dnc_plugins):
    """Through usage, allocation (away from ties), content, gates, erase/add, precedence and link.

    The parameters are gradcheck inputs themselves: gradcheck perturbs them in place, so
    the step (which uses the module's parameters) sees the perturbation.
    """
    write = DncWrite(DncWriteConfig(), context(dnc_plugins)).double()
    usage, previous_write, precedence, link = random_state()
    inputs = [
        torch.randn(B, N, W, dtype=torch.float64),  # memory
        torch.randn(B, H, dtype=torch.float64),  # hidden
        torch.softmax(torch.randn(B, N, dtype=torch.float64), -1),  # read weights
        usage, previous_write, precedence, link,
    ]

    def step(memory, hidden, read, usage, previous_write, precedence, link, *parameters):
        state = {"usage": usage, "write_weights": previous_write, "precedence": precedence, "link": link}
        new_memory, new = write.step(None, 0, memory, hidden, Address(read), state)
        return new_memory, new["usage"], new["write_weights"], new["precedence"], new["link"]

    assert torch.autograd.gradcheck(step, [x.requires_grad_() for x in inputs] + list(write.parameters()))


@pytest.mark.parametrize("complete", [True, False])
def test_read_gradcheck_float64(dnc_plugins, complete):
    """Through the memory-change estimate, the link and precedence updates, content and read modes."""
    read = DncRead(DncReadConfig(complete=complete), context(dnc_plugins)).double()
    _, weights, precedence, link = random_state()
    inputs = [
        torch.randn(B, H, dtype=torch.float64),  # hidden
        torch.randn(B, N, W, dtype=torch.float64),  # memory
        weights, precedence, link,
        torch.randn(B, N, W, dtype=torch.float64),  # the memory seen one step earlier
    ]

    def step(hidden, memory, weights, precedence, link, previous_memory, *parameters):
        state = {"weights": weights, "precedence": precedence, "link": link, "memory": previous_memory, "started": torch.ones(B, dtype=torch.float64)}
        address, new = read.step(None, 0, hidden, memory, state)
        return address.weights, new["precedence"], new["link"]

    assert torch.autograd.gradcheck(step, [x.requires_grad_() for x in inputs] + list(read.parameters()))


def test_estimate_gradient_is_finite_for_an_unchanged_memory():
    memory = torch.randn(1, N, W, dtype=torch.float64, requires_grad=True)
    F.estimated_write_weights(memory, memory.detach().clone(), 0.1).sum().backward()
    assert torch.isfinite(memory.grad).all()


# --------------------------------------------------------------------------- manntk.testing


@pytest.mark.parametrize("link", [True, False])
def test_the_write_keeps_the_write_contract(dnc_plugins, link):
    report = testing.check_write(DncWrite, DncWriteConfig(link=link), steps=4, plugins=dnc_plugins, grad_inputs=("memory", "hidden", "address"))
    assert {"gradients", "uses_state", "state_round_trip", "discrete_write", "replay_from_state"} <= set(report.checks)


def test_the_read_keeps_the_addressing_contract(dnc_plugins):
    report = testing.check_addressing(DncRead, DncReadConfig(), steps=4, plugins=dnc_plugins, grad_inputs=("hidden", "memory"))
    assert {"address_weights", "gradients", "uses_state", "state_round_trip", "replay_from_state"} <= set(report.checks)
    testing.check_addressing("dnc_read", {"tolerance": 1.0}, steps=4, plugins=dnc_plugins, dtype=torch.float64)


def test_the_uncompleted_read_is_what_the_contract_refuses(dnc_plugins):
    """The DNC's own read weights sum to less than one: why ``complete`` is on by default."""
    with pytest.raises(AssertionError, match="addressing 'DncRead': check 'address_weights' failed: train step 0: the weights do not sum to one"):
        testing.check_addressing(DncRead, DncReadConfig(complete=False), plugins=dnc_plugins)


@pytest.mark.parametrize("layers", [1, 2])
def test_a_dnc_model_passes_check_model(dnc_plugins, layers):
    report = testing.check_model(dnc_mapping(layers=layers), dnc_plugins, steps=8)
    assert "chunks_equal_sequence" in report.checks


def test_dnc_write_with_other_addressing(dnc_plugins):
    """The write works behind any read: hard (index-only in evaluation) and soft."""
    for addressing in ({"name": "auto"}, {"name": "ntm"}):
        testing.check_model({**dnc_mapping(), "addressing": addressing}, dnc_plugins)


# --------------------------------------------------------------------------- the link: estimated and exact


def sharp_write(plugins, slots=N, width=W) -> DncWrite:
    """A write head that writes one-hot into the least-used slot a large vector, erasing fully, freeing nothing."""
    write = DncWrite(DncWriteConfig(), context(plugins, slots=slots, width=width)).double()
    with torch.no_grad():
        write.interface.weight.zero_()
        key, strength, erase, vector, free, g_a, g_w = write.interface.bias.split(write.sizes)
        erase.fill_(30.0)
        vector.fill_(10.0)
        free.fill_(-30.0)
        g_a.fill_(30.0)
        g_w.fill_(30.0)
    return write


def run_layer(read: DncRead, write: DncWrite, steps: int, exact: bool, hidden=None):
    """The engine's order (read -> cell -> write), with the write's state handed to the read when ``exact``.

    ``exact`` is the proposed engine change: ``addressing.step(..., write_state=write_state)``.
    """
    dtype = torch.float64
    memory = torch.zeros(B, read.slots, read.width, dtype=dtype)
    read_state = read.init_state(B, torch.device("cpu"), dtype)
    write_state = write.init_state(B, torch.device("cpu"), dtype)
    hidden = torch.zeros(B, H, dtype=dtype) if hidden is None else hidden
    written = []
    for _ in range(steps):
        address, read_state = read.step(None, 0, hidden, memory, read_state, **({"write_state": write_state} if exact else {}))
        memory, write_state = write.step(None, 0, memory, hidden, address, write_state)
        written.append(write_state["write_weights"].argmax(-1))
    return torch.stack(written, 1), read_state, write_state


def test_the_estimated_link_matches_the_writes_link_for_sharp_writes(dnc_plugins):
    write = sharp_write(dnc_plugins)
    read = DncRead(DncReadConfig(tolerance=1e-3), context(dnc_plugins)).double()
    order, read_state, write_state = run_layer(read, write, steps=N, exact=False)
    # every write went to a fresh slot, and the link records which followed which
    assert all(sorted(row) == list(range(N)) for row in order.tolist())
    expected = torch.zeros(B, N, N, dtype=torch.float64)
    for b in range(B):
        for earlier, later in zip(order[b, :-1].tolist(), order[b, 1:].tolist()):
            expected[b, later, earlier] = 1.0
    torch.testing.assert_close(write_state["link"], expected, atol=1e-6, rtol=0)
    # a read sees the writes before it: after N + 1 steps, the N writes above
    _, read_state, _ = run_layer(read, write, steps=N + 1, exact=False)
    torch.testing.assert_close(read_state["link"], write_state["link"], atol=1e-3, rtol=0)
    torch.testing.assert_close(read_state["precedence"], write_state["precedence"], atol=1e-3, rtol=0)


def test_forward_reads_follow_the_write_order(dnc_plugins):
    """A read head in forward mode, started on the first slot written, walks the slots in write order."""
    write = sharp_write(dnc_plugins)
    read = DncRead(DncReadConfig(tolerance=1e-3), context(dnc_plugins)).double()
    with torch.no_grad():
        read.interface.weight.zero_()
        read.interface.bias.zero_()
        read.interface.bias[-1] = 40.0  # forward mode
    order, read_state, write_state = run_layer(read, write, steps=N + 1, exact=False)
    memory = torch.zeros(B, N, W, dtype=torch.float64)
    state = {**read_state, "weights": torch.nn.functional.one_hot(order[:, 0], N).double(), "memory": memory}
    visited = []
    for _ in range(N - 1):
        address, state = read.step(None, 0, torch.zeros(B, H, dtype=torch.float64), memory, state)
        visited.append(address.weights.argmax(-1))
        assert address.weights.max() > 0.99
    assert torch.equal(torch.stack(visited, 1), order[:, 1:N])


def test_with_the_write_state_the_read_uses_the_writes_own_link(dnc_plugins):
    """The exact DNC, once an engine hands the write's state to the addressing."""
    torch.manual_seed(1)
    write = DncWrite(DncWriteConfig(), context(dnc_plugins)).double()
    read = DncRead(DncReadConfig(), context(dnc_plugins)).double()
    hidden = torch.randn(B, H, dtype=torch.float64)
    _, read_state, _ = run_layer(read, write, steps=3, exact=True, hidden=hidden)
    # the read's link is the write's link as it was after the previous write (one step behind the final one)
    _, _, write_state_two = run_layer(read, write, steps=2, exact=True, hidden=hidden)
    torch.testing.assert_close(read_state["link"], write_state_two["link"])
    assert DncRead.reads_write_state
    with pytest.raises(ValueError, match="link: true"):
        read.step(None, 0, hidden, torch.zeros(B, N, W, dtype=torch.float64), read_state, write_state={"usage": torch.zeros(B, N)})


# --------------------------------------------------------------------------- the installed entry point


def installed() -> bool:
    try:
        importlib.metadata.distribution("manntk-dnc")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not installed(), reason="manntk-dnc is not installed (pip install -e plugins/manntk-dnc)")
def test_the_entry_point_registers_the_parts(capsys):
    plugins = manntk.load_plugins()
    assert not plugins.failures
    assert plugins.registry.get("addressing", "dnc_read").plugin == "dnc"
    assert plugins.registry.get("writes", "dnc").plugin == "dnc"
    from manntk.cli import main

    assert main(["plugins"]) == 0
    assert "dnc: addressing/dnc_read, writes/dnc" in capsys.readouterr().out


def test_tracing_records_the_dnc_internals(dnc_plugins):
    from manntk.trace import tracing

    model = manntk.build_model(dnc_mapping(slots=5), dnc_plugins)
    with tracing() as trace:
        model(torch.randn(2, 7, 4))
    for name in ("write", "usage", "allocation", "read"):  # the engine hands the write state: exact links, no estimate
        key = next(k for k in trace if k.endswith(f".{name}") or k == name)
        assert trace[key].shape == (7, 2, 5), (key, trace[key].shape)
    modes = trace[next(k for k in trace if k.endswith("read_modes"))]
    torch.testing.assert_close(modes.sum(-1), torch.ones(7, 2))
