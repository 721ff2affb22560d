"""RecurrentWeight: per-step products whose weight gradient is summed once per chunk.

Compared with the plain path it replaces (``torch.addmm(base, torch.cat(inputs, 1),
W[:, cols].t())`` at every step, autograd summing the per-step weight gradients) in value
and gradient, and checked with gradcheck in float64.
"""

from __future__ import annotations

import pytest
import torch

from manntk.fast.recurrent import _MKL_PACKING, PACK_FROM_BATCH, TRANSPOSE_ROWS, RecurrentWeight, transposed

D = torch.float64
EPS = torch.finfo(torch.float32).eps


def recurrence(weight, bias, h0, reads, fast: bool, start: int = 2, sum_in_place: bool = True):
    """A small tanh recurrence over ``reads`` ``[T, B, d_r]`` using columns ``start..`` of ``weight``."""
    d_h = h0.shape[1]
    sizes = [d_h, reads.shape[2]]
    product = RecurrentWeight(weight, start, sizes, sum_in_place) if fast else None
    h, outputs = h0, []
    for t, read in enumerate(reads):
        base = bias + 0.1 * t
        if fast:
            out = product(base, h, read)
        else:
            out = torch.addmm(base, torch.cat([h, read], 1), weight[:, start : start + sum(sizes)].t())
        h = torch.tanh(out[:, :d_h])
        outputs.append(out)
    return torch.stack(outputs)


def tensors(seed: int = 0, out: int = 6, d_h: int = 4, d_r: int = 3, batch: int = 3, steps: int = 5):
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=generator, dtype=D).requires_grad_()  # noqa: E731
    return make(out, 2 + d_h + d_r), make(out), make(batch, d_h), make(steps, batch, d_r)


def gradients(fast: bool, sum_in_place: bool = True, **shapes):
    weight, bias, h0, reads = tensors(**shapes)
    y = recurrence(weight, bias, h0, reads, fast, sum_in_place=sum_in_place)
    y.sin().sum().backward()
    return y.detach(), [t.grad for t in (weight, bias, h0, reads)]


@pytest.mark.parametrize("sum_in_place", [True, False])
@pytest.mark.parametrize("shapes", [{}, {"batch": 1}, {"steps": 1}, {"d_r": 0}])
def test_same_outputs_and_gradients_as_the_plain_path(shapes, sum_in_place):
    y_fast, g_fast = gradients(True, sum_in_place, **shapes)
    y_plain, g_plain = gradients(False, **shapes)
    torch.testing.assert_close(y_fast, y_plain)
    for fast, plain in zip(g_fast, g_plain, strict=True):
        torch.testing.assert_close(fast, plain)
    # the columns before `start` get no gradient from the steps
    assert torch.all(g_fast[0][:, :2] == 0)


@pytest.mark.parametrize("sum_in_place", [True, False])
def test_gradcheck(sum_in_place):
    weight, bias, h0, reads = tensors(batch=2, steps=3)
    check = lambda *a: recurrence(*a, fast=True, sum_in_place=sum_in_place)  # noqa: E731
    assert torch.autograd.gradcheck(check, (weight, bias, h0, reads))


def test_large_columns_sum_in_place_and_small_ones_do_not():
    assert RecurrentWeight(torch.zeros(512, 256), 0, [256]).sum_in_place
    assert not RecurrentWeight(torch.zeros(128, 128), 0, [128]).sum_in_place


def test_whole_linear_with_a_broadcast_bias_and_no_base():
    linear = torch.nn.Linear(4, 5).double()
    u = torch.randn(3, 4, dtype=D, requires_grad=True)
    product = RecurrentWeight(linear.weight, 0, [4], sum_in_place=True)
    y = product(linear.bias, u) + 2 * product(None, u)
    y.square().sum().backward()
    fast = [linear.weight.grad.clone(), linear.bias.grad.clone(), u.grad.clone()]
    linear.zero_grad()
    u.grad = None
    (linear(u) + 2 * (u @ linear.weight.t())).square().sum().backward()
    for a, b in zip(fast, [linear.weight.grad, linear.bias.grad, u.grad], strict=True):
        torch.testing.assert_close(a, b)


def test_columns_also_used_outside_a_step_product_add_their_gradient():
    weight, bias, h0, reads = tensors()
    product = RecurrentWeight(weight, 2, [4, 3], sum_in_place=True)
    (product(bias, h0, reads[0]).sum() + product.columns.square().sum()).backward()
    inputs = torch.cat([h0, reads[0]], 1).detach()
    expected = torch.ones(3, 6, dtype=D).t() @ inputs + 2 * weight[:, 2:].detach()
    torch.testing.assert_close(weight.grad[:, 2:], expected)


def test_a_second_backward_pass_sums_again_instead_of_twice():
    weight, bias, h0, reads = tensors()
    y = recurrence(weight, bias, h0, reads, fast=True)
    y.sum().backward(retain_graph=True)
    first = weight.grad.clone()
    y.sum().backward()
    torch.testing.assert_close(weight.grad, 2 * first)


def test_frozen_weight_gets_no_gradient_and_inputs_still_do():
    weight, bias, h0, reads = tensors()
    weight.requires_grad_(False)
    recurrence(weight, bias, h0, reads, fast=True).sum().backward()
    assert weight.grad is None and h0.grad is not None and reads.grad is not None


def test_wrong_input_count_and_blocks_past_the_weight_are_errors():
    weight = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="pass the weight's 5 columns"):
        RecurrentWeight(weight, 2, [2, 2])
    with pytest.raises(ValueError, match="expected 2 inputs"):
        RecurrentWeight(weight, 1, [2, 2])(None, torch.zeros(1, 2))


def test_autocast_takes_the_plain_path_and_keeps_float32_weight_gradients():
    weight = torch.randn(8, 6, requires_grad=True)
    h = torch.randn(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        product = RecurrentWeight(weight, 0, [3, 3], sum_in_place=True)
        assert not product.sum_in_place
        y = product(None, h[:, :3], h[:, 3:])
        y = product(torch.zeros(8), torch.tanh(y[:, :3]), h[:, 3:])
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("shape", [(3, 5), (TRANSPOSE_ROWS, 2), (2 * TRANSPOSE_ROWS + 7, 9)])
def test_transposed_copies_in_blocks_to_the_plain_transpose(shape):
    matrix = torch.randn(shape[0], shape[1] + 4)[:, 2:-2]  # a strided column slice, as the chunk's columns
    out = transposed(matrix)
    assert out.is_contiguous()
    assert torch.equal(out, matrix.t())
    into = torch.zeros(shape[1], shape[0] + 3)
    assert transposed(matrix, out=into[:, 1:-2]).data_ptr() == into[:, 1:-2].data_ptr()
    assert torch.equal(into[:, 1:-2], matrix.t()) and not into[:, 0].any() and not into[:, -2:].any()


@pytest.mark.skipif(not _MKL_PACKING, reason="this PyTorch has no MKL packed sgemm (torch.ops.mkl._mkl_linear)")
@pytest.mark.parametrize("threads", [1, 2])  # the backward packs the columns only with more than one thread
def test_float32_steps_use_the_packed_columns_and_the_plain_numbers(threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    shapes = {"out": 512, "d_h": 128, "d_r": 128, "batch": PACK_FROM_BATCH, "steps": 3}  # columns of 131,072 elements: packed
    scales = (256**-0.5, 1.0, 1.0, 1.0)  # outputs of order 1
    weight, bias, h0, reads = ((t.detach() * c).float().requires_grad_() for t, c in zip(tensors(**shapes), scales))
    y_fast = recurrence(weight, bias, h0, reads, fast=True)
    y_fast.sin().sum().backward()
    fast = [t.grad.clone() for t in (weight, bias, h0, reads)]
    for t in (weight, bias, h0, reads):
        t.grad = None
    y_plain = recurrence(weight, bias, h0, reads, fast=False)
    y_plain.sin().sum().backward()
    # MKL's packed and plain sgemm sum in orders of their own, chosen per CPU: an output sums
    # 256 products, a gradient entry at most 512 (the backward's rows; the weight's 32 x 3
    # steps): allow that many roundings (eps) of the largest magnitude (a bug is off by O(1))
    close = lambda a, b, terms: torch.testing.assert_close(a, b, rtol=0, atol=terms * EPS * b.abs().max().item())  # noqa: E731
    close(y_fast, y_plain, 256)
    for a, b in zip(fast, [t.grad for t in (weight, bias, h0, reads)], strict=True):
        close(a, b, 512)
    product = RecurrentWeight(weight, 2, [128, 128])
    product(bias, h0, reads[0])
    assert product._packed is not None  # the first step packed the columns for MKL
    grad, base = torch.randn(PACK_FROM_BATCH, 512), torch.randn(PACK_FROM_BATCH, 256)
    close(product.gradient_product(grad), grad @ product.rows, 512)
    assert (product._packed_columns is not None) == (threads > 1)
    into = base.clone()
    assert product.gradient_product(grad, into=into) is into  # added in place
    close(into, base + grad @ product.rows, 512)
    smaller = RecurrentWeight(weight, 2, [128, 128])
    smaller(bias, h0[1:], reads[0][1:])  # one row fewer than PACK_FROM_BATCH: the plain product
    smaller.gradient_product(grad[1:])
    assert smaller._packed is None and smaller._packed_columns is None
    small = RecurrentWeight(torch.randn(6, 9), 2, [4, 3], sum_in_place=True)
    small(None, torch.randn(4, 4), torch.randn(4, 3))
    assert small._packed is None  # small columns: packing would cost more than it saves


@pytest.mark.parametrize(
    "order",
    [
        [4, 3, 2, 1, 0],  # a recurrence's backward: every group complete, one product each
        [4, 2, 1, 0],  # step 3 has no gradient: group {2, 3} is added with what it has
        [0, 1, 2, 3, 4],  # each group interrupted by the next
        [3, 1, 4, 2, 0],
    ],
)
def test_grouped_step_gradients_sum_to_the_steps_products(monkeypatch, order):
    import manntk.fast.recurrent

    steps, batch, out, width = 5, 3, 4, 6
    monkeypatch.setattr(manntk.fast.recurrent, "GROUP_BYTES", 2 * batch * out * 8)  # groups of 2 steps
    weight = torch.randn(out, width, dtype=D, requires_grad=True)
    product = RecurrentWeight(weight, 0, [width], sum_in_place=True, steps=steps)
    inputs = torch.randn(steps, batch, width, dtype=D)
    grads = torch.randn(steps, batch, out, dtype=D)
    for t in range(steps):
        product.step_inputs(t, inputs[t]).copy_(inputs[t])
    for t in order:
        product.add_step_gradient(grads[t], product.step_inputs(t, inputs[t]), t)
    product.columns.backward(torch.zeros(width, out, dtype=D))
    expected = sum(grads[t].t() @ inputs[t] for t in order)
    torch.testing.assert_close(weight.grad, expected)


def test_grouped_inputs_only_in_a_pass_that_records_gradients():
    weight = torch.randn(4, 6, requires_grad=True)
    with torch.no_grad():
        assert RecurrentWeight(weight, 0, [6], sum_in_place=True, steps=3).step_inputs(0, torch.zeros(2, 6)) is None
    assert RecurrentWeight(weight, 0, [6], sum_in_place=False, steps=3).step_inputs(0, torch.zeros(2, 6)) is None
    assert RecurrentWeight(weight, 0, [6], sum_in_place=True, steps=3).step_inputs(0, torch.zeros(2, 6)).shape == (2, 6)
