"""The chunk kernels' reused buffers (``manntk/fast/workspace.h``): a buffer is handed out
again only once nothing holds it, so chunks whose backward has not run yet, outputs a
caller keeps and several layers each get their own.

The sizes make the ARMIN kernel's buffers larger than the 1 MiB from which they are reused
(the gate activations: 60 steps x 32 rows x 480 values x 4 bytes = 3.7 MB).
"""

from __future__ import annotations

import pytest
import torch

import manntk
from tests.conftest import fused_kernels_error
from tests.kernel_checks import assert_kernel_matches

STEPS, BATCH, INPUT, HIDDEN, SLOTS = 60, 32, 40, 96, 8


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    error = fused_kernels_error()
    if error is not None:
        pytest.skip(f"the C++ chunk kernels cannot be built here: {error}")


def model(fast: bool, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    built = manntk.build_model({
        "input_size": INPUT, "output_size": 5, "layers": layers, "fast": fast,
        "cell": {"name": "armin", "hidden_size": HIDDEN}, "addressing": {"name": "auto"}, "write": {"name": "overwrite"},
        "memory": {"slots": SLOTS, "width": HIDDEN},
    })
    built.train(False)  # no Gumbel noise: both paths see the same numbers
    assert (built.layers[0].chunk_kernel is not None) is fast
    return built


def two_chunks_then_backward(net: torch.nn.Module, seed: int) -> tuple[dict, torch.Tensor]:
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
    return values, y1


@pytest.mark.parametrize("layers", [1, 2])
def test_held_buffers_are_not_handed_out_again(layers):
    plain, kernel = model(False, layers), model(True, layers)
    for seed in (1, 2):  # the second round reuses what the first let go
        expected, _ = two_chunks_then_backward(plain, seed)
        got, y1 = two_chunks_then_backward(kernel, seed)
        assert_kernel_matches(expected, got, torch.float32, 2 * STEPS, INPUT + 2 * HIDDEN + HIDDEN)
    kept = y1.detach().clone()
    two_chunks_then_backward(kernel, 3)  # an output the caller still holds is not written over
    assert torch.equal(y1.detach(), kept)


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
