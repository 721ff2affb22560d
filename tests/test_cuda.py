"""CPU/CUDA parity: runs where a CUDA device exists, skips with the reason elsewhere."""

from __future__ import annotations

import pytest
import torch

from manntk.state import flatten_state, move_state
from tests.conftest import build, model_mapping

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_cuda_matches_cpu(composition, mode):
    model = build(model_mapping(composition)).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    if mode == "train" and composition in ("armin", "awta", "tardis"):
        pytest.skip("sampling noise differs between devices")
    getattr(model, mode)()
    y_cpu, state_cpu = model(x)
    model.cuda()
    y_cuda, state_cuda = model(x.cuda())
    torch.testing.assert_close(y_cuda.cpu(), y_cpu)
    for name, tensor in flatten_state(move_state(state_cuda, "cpu")).items():
        torch.testing.assert_close(tensor, flatten_state(state_cpu)[name], msg=name)
