"""The chunk kernels' reused buffers (``manntk/fast/workspace.h``): a buffer is handed out
again only once nothing holds it, so chunks whose backward has not run yet, outputs a
caller keeps and several layers each get their own.

The sizes make each kernel's largest buffers larger than the 1 MiB from which they are
reused (ARMIN's gate activations: 60 steps x 32 rows x 480 values x 4 bytes = 3.7 MB).
"""

from __future__ import annotations

import pytest
import torch

import manntk
from tests.conftest import fused_kernels_error
from tests.kernel_checks import assert_kernel_matches, compositions

STEPS, BATCH, INPUT, HIDDEN, SLOTS = 60, 32, 40, 96, 8


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    error = fused_kernels_error()
    if error is not None:
        pytest.skip(f"the C++ chunk kernels cannot be built here: {error}")


def model(fast: bool, layers: int, name: str = "armin") -> torch.nn.Module:
    torch.manual_seed(0)
    built = manntk.build_model({
        "input_size": INPUT, "output_size": 5, "layers": layers, "fast": fast, "memory": {"slots": SLOTS, "width": HIDDEN},
        **compositions(HIDDEN)[name],
    })
    built.train(False)  # no Gumbel noise: both paths see the same numbers
    assert (built.layers[0].chunk_kernel is not None) is fast
    return built


def two_chunks_then_backward(net: torch.nn.Module, seed: int) -> dict:
    """Two chunks (the second from the first's state) before one backward through both, as
    truncated backpropagation never does but a user may: the first chunk's buffers are still
    held for its backward while the second chunk runs."""
    x = torch.randn(BATCH, 2 * STEPS, INPUT, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    y1, state = net(x[:, :STEPS])
    y2, _ = net(x[:, STEPS:], state)
    (y1.sin().sum() + y2.cos().sum()).backward()
    values = {"y1": y1.detach(), "y2": y2.detach(), "x.grad": x.grad}
    values.update({f"{key}.grad": None if p.grad is None else p.grad.clone() for key, p in net.named_parameters()})
    net.zero_grad()
    return values


@pytest.mark.parametrize(("name", "layers"), [("armin", 1), ("armin", 2), ("awta", 1), ("tardis", 1), ("ntm", 1)])
def test_held_buffers_are_not_handed_out_again(name, layers):
    plain, kernel = model(False, layers, name), model(True, layers, name)
    for seed in (1, 2):  # the second round reuses what the first let go
        expected = two_chunks_then_backward(plain, seed)
        got = two_chunks_then_backward(kernel, seed)
        assert_kernel_matches(expected, got, torch.float32, 2 * STEPS, INPUT + 3 * HIDDEN)


def test_release_gives_back_only_the_buffers_nothing_holds():
    from manntk.fast.armin_fused import release_workspace

    net = model(True, 1)
    x = torch.randn(BATCH, STEPS, INPUT, requires_grad=True)
    release_workspace()
    y, _ = net(x)  # its buffers are held for the backward to come
    assert release_workspace() == 0
    y.sum().backward()
    del y
    assert release_workspace() > 3 * 2**20  # the gate activations at least (3.7 MB)
    assert release_workspace() == 0


def test_buffers_made_under_inference_mode_are_not_handed_to_training():
    """An inference tensor may not be saved for backward: a chunk under torch.inference_mode
    and a training chunk after it each get buffers of their own kind."""
    plain, kernel = model(False, 1), model(True, 1)
    with torch.inference_mode():
        kernel(torch.randn(BATCH, STEPS, INPUT))
    assert_kernel_matches(two_chunks_then_backward(plain, 4), two_chunks_then_backward(kernel, 4), torch.float32,
                          2 * STEPS, INPUT + 3 * HIDDEN)
    with torch.inference_mode():  # and back: training's buffers are not written under inference mode
        kernel(torch.randn(BATCH, STEPS, INPUT))
