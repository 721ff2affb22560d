"""``model.compile: true`` gives the same outputs and gradients as the eager model.

Compilation takes minutes on a CPU, so this runs with ``-m slow``.
"""

from __future__ import annotations

import pytest
import torch

import manntk
from tests.conftest import model_mapping, soften

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_compiled_layers_match_eager(mode):
    mapping = soften(model_mapping("armin"))  # no sampling noise: compiled code draws its own random numbers
    eager = manntk.build_model(mapping)
    compiled = manntk.build_model({**mapping, "compile": True})
    compiled.load_state_dict(eager.state_dict())
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints stay interchangeable
    getattr(eager, mode)()
    getattr(compiled, mode)()
    x = torch.randn(2, 5, 3)
    y_eager, _ = eager(x)
    y_compiled, _ = compiled(x)
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-4, atol=1e-5)
    if mode == "train":
        y_eager.square().sum().backward()
        y_compiled.square().sum().backward()
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
