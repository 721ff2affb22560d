"""Each cell against an independent computation of its equations."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from manntk.cells.armin import ArminCell, ArminConfig
from manntk.cells.common import zoneout
from manntk.cells.lstm import LstmCell, LstmConfig
from manntk.cells.tardis import TardisCell, TardisCellConfig
from manntk.context import BuildContext
from manntk.plugins import default_plugins

D_I, D_H, D_R, B = 3, 4, 6, 2


def context(width=D_R, input_size=D_I):
    return BuildContext(input_size=input_size, hidden_size=0, slots=5, width=width, registry=default_plugins().registry)


def run_step(cell, x, state, r):
    prepared = cell.prepare(x.unsqueeze(1))
    return cell.step(prepared, 0, state, r)


def naive_armin(cell, x, h, r, forget_bias=0.0, squash=False, read_output=True):
    """Eq. 3-8 written out with explicit weight blocks, one example at a time."""
    W_ig, b_ig = cell.W_ig.weight, cell.W_ig.bias
    W_go, b_go = cell.W_go.weight, cell.W_go.bias
    outputs, states = [], []
    for b in range(x.shape[0]):
        xb, hb, rb = x[b], h[b], r[b]
        pre = W_ig[:, :D_I] @ xb + W_ig[:, D_I:D_I + D_H] @ hb + W_ig[:, D_I + D_H:] @ rb + b_ig
        g_h, g_r = torch.sigmoid(pre[:D_H]), torch.sigmoid(pre[D_H:])
        hg, rg = g_h * hb, g_r * rb
        pre = W_go[:, :D_I] @ xb + W_go[:, D_I:D_I + D_H] @ hg + W_go[:, D_I + D_H:] @ rg + b_go
        i, f, g, o_h = (pre[k * D_H:(k + 1) * D_H] for k in range(4))
        h_new = torch.sigmoid(f + forget_bias) * hb + torch.sigmoid(i) * torch.tanh(g)
        if squash:
            h_new = torch.tanh(h_new)
        out = torch.sigmoid(o_h) * torch.tanh(h_new)
        if read_output:
            o_r = pre[4 * D_H:]
            out = torch.cat([out, torch.sigmoid(o_r) * torch.tanh(rb)])
        outputs.append(out)
        states.append(h_new)
    return torch.stack(outputs), torch.stack(states)


@pytest.mark.parametrize("options", [{}, {"forget_bias": 1.0}, {"squash_state": True}, {"read_output": False}])
def test_armin_cell_matches_equations_3_to_8(options):
    cell = ArminCell(ArminConfig(hidden_size=D_H, **options), context())
    x, h, r = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, D_R)
    out, state = run_step(cell, x, {"h": h}, r)
    expected_out, expected_h = naive_armin(
        cell, x, h, r, options.get("forget_bias", 0.0), options.get("squash_state", False), options.get("read_output", True)
    )
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(state["h"], expected_h)
    assert out.shape[1] == cell.output_size == D_H + (D_R if options.get("read_output", True) else 0)


def test_armin_weight_shapes_follow_the_paper():
    cell = ArminCell(ArminConfig(hidden_size=D_H), context())
    assert cell.W_ig.weight.shape == (D_H + D_R, D_I + D_H + D_R)
    assert cell.W_go.weight.shape == (4 * D_H + D_R, D_I + D_H + D_R)


@pytest.mark.parametrize("width", [2, D_H, 9])
def test_armin_any_read_width(width):
    cell = ArminCell(ArminConfig(hidden_size=D_H), context(width=width))
    out, state = run_step(cell, torch.randn(B, D_I), cell.init_state(B, "cpu", torch.float32), torch.randn(B, width))
    assert out.shape == (B, D_H + width) and state["h"].shape == (B, D_H)


def test_armin_layer_norm_normalises_each_gate_block():
    cell = ArminCell(ArminConfig(hidden_size=D_H, layer_norm=True), context())
    with torch.no_grad():
        for norm in list(cell.norm_ig.norms) + list(cell.norm_go.norms):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x, h, r = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, D_R)
    out, state = run_step(cell, x, {"h": h}, r)

    def block_norm(pre, norms, sizes):
        pieces = pre.split(sizes, dim=1)
        return torch.cat([F.layer_norm(p, (p.shape[1],), n.weight, n.bias) for p, n in zip(pieces, norms)], dim=1)

    pre = F.linear(torch.cat([x, h, r], 1), cell.W_ig.weight, cell.W_ig.bias)
    g_h, g_r = torch.sigmoid(block_norm(pre, cell.norm_ig.norms, [D_H, D_R])).split([D_H, D_R], 1)
    pre = F.linear(torch.cat([x, g_h * h, g_r * r], 1), cell.W_go.weight, cell.W_go.bias)
    i, f, g, o_h, o_r = block_norm(pre, cell.norm_go.norms, [D_H] * 4 + [D_R]).split([D_H] * 4 + [D_R], 1)
    h_new = torch.sigmoid(f) * h + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(state["h"], h_new)
    torch.testing.assert_close(out, torch.cat([torch.sigmoid(o_h) * torch.tanh(h_new), torch.sigmoid(o_r) * torch.tanh(r)], 1))


def test_zoneout_keeps_previous_units_in_training_and_averages_in_eval():
    previous, new = torch.zeros(1000), torch.ones(1000)
    kept = zoneout(previous, new, 0.3, training=True)
    assert set(kept.unique().tolist()) == {0.0, 1.0}
    assert 0.2 < (kept == 0).float().mean() < 0.4
    torch.testing.assert_close(zoneout(previous, new, 0.3, training=False), torch.full((1000,), 0.7))
    assert zoneout(previous, new, 0.0, training=True) is new


def test_armin_zoneout_applies_to_state_not_output():
    cell = ArminCell(ArminConfig(hidden_size=D_H, zoneout=0.5), context()).eval()
    x, h, r = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, D_R)
    out, state = run_step(cell, x, {"h": h}, r)
    expected_out, expected_h = naive_armin(cell, x, h, r)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(state["h"], 0.5 * h + 0.5 * expected_h)


@pytest.mark.parametrize("read_size", [0, D_R])
def test_lstm_cell_equals_torch_lstm_cell(read_size):
    cell = LstmCell(LstmConfig(hidden_size=D_H), context(width=read_size))
    reference = torch.nn.LSTMCell(D_I + read_size, D_H)
    with torch.no_grad():  # torch's gate order is [i, f, g, o], the same as ours
        w = cell.W.weight
        reference.weight_ih.copy_(torch.cat([w[:, :D_I], w[:, D_I + D_H:]], 1))
        reference.weight_hh.copy_(w[:, D_I:D_I + D_H])
        reference.bias_ih.copy_(cell.W.bias)
        reference.bias_hh.zero_()
    x, h, c, r = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, D_H), torch.randn(B, read_size)
    out, state = run_step(cell, x, {"h": h, "c": c}, r)
    h_ref, c_ref = reference(torch.cat([x, r], 1), (h, c))
    torch.testing.assert_close(state["h"], h_ref)
    torch.testing.assert_close(state["c"], c_ref)
    torch.testing.assert_close(out, torch.cat([h_ref, r], 1))


def test_lstm_layer_norm_and_forget_bias():
    cell = LstmCell(LstmConfig(hidden_size=D_H, layer_norm=True, forget_bias=1.0), context())
    x, h, c, r = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, D_H), torch.randn(B, D_R)
    _, state = run_step(cell, x, {"h": h, "c": c}, r)
    pre = F.linear(torch.cat([x, h, r], 1), cell.W.weight, cell.W.bias)
    i, f, g, o = (F.layer_norm(p, (D_H,)) for p in pre.chunk(4, 1))  # fresh LayerNorms: unit gain, zero bias
    c_new = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(state["c"], c_new)
    torch.testing.assert_close(state["h"], torch.sigmoid(o) * torch.tanh(F.layer_norm(c_new, (D_H,))))


def test_tardis_cell_matches_its_equations_in_eval():
    cell = TardisCell(TardisCellConfig(hidden_size=D_H, gate_temperature=0.5), context()).eval()
    x, h, c, r = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, D_H), torch.randn(B, D_R)
    out, state = run_step(cell, x, {"h": h, "c": c}, r)
    pre = F.linear(torch.cat([x, h, r], 1), cell.W_gates.weight, cell.W_gates.bias)
    i, f, o = (torch.sigmoid(p) for p in pre[:, :3 * D_H].chunk(3, 1))
    alpha, beta = torch.sigmoid(pre[:, 3 * D_H:3 * D_H + 1] / 0.5), torch.sigmoid(pre[:, 3 * D_H + 1:] / 0.5)
    candidate = torch.tanh(cell.W_x(x) + beta * (h @ cell.W_h.weight.t()) + alpha * (r @ cell.W_r.weight.t()))
    c_new = f * c + i * candidate
    h_new = o * torch.tanh(c_new)
    torch.testing.assert_close(state["c"], c_new)
    torch.testing.assert_close(out, torch.cat([h_new, r], 1))


def test_tardis_cell_gates_are_noisy_only_in_training():
    cell = TardisCell(TardisCellConfig(hidden_size=D_H), context())
    x, r = torch.randn(B, D_I), torch.randn(B, D_R)
    state = cell.init_state(B, "cpu", torch.float32)
    cell.train()
    assert not torch.equal(run_step(cell, x, state, r)[0], run_step(cell, x, state, r)[0])
    cell.eval()
    assert torch.equal(run_step(cell, x, state, r)[0], run_step(cell, x, state, r)[0])


@pytest.mark.parametrize("piece_steps", [1, 3, 7, 100])
def test_project_inputs_in_pieces_is_the_per_step_projection(monkeypatch, piece_steps):
    """Pieces of 1, 3 (3 + 3 + 1) and all 7 steps: values and gradients equal ``x_t W^T + b``."""
    from manntk.cells import common

    x = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    monkeypatch.setattr(common, "PROJECTION_PIECE_BYTES", piece_steps * 3 * 5 * 8)  # B * F * 8 bytes per step
    steps = common.project_inputs(x, weight, bias)
    assert len(steps) == 7
    upstream = torch.randn(7, 3, 5, dtype=torch.float64)
    sum((step * g).sum() for step, g in zip(steps, upstream)).backward()
    got = [tensor.grad.clone() for tensor in (x, weight, bias)]
    for tensor in (x, weight, bias):
        tensor.grad = None
    expected = [x[:, t] @ weight.t() + bias for t in range(7)]
    for step, value in zip(steps, expected):
        torch.testing.assert_close(step, value)
    sum((value * g).sum() for value, g in zip(expected, upstream)).backward()
    for grad, tensor in zip(got, (x, weight, bias)):
        torch.testing.assert_close(grad, tensor.grad)
