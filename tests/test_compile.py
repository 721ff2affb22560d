"""``train.compile`` / ``MemoryRNN.compile_layers``: compiled chunks give the eager numbers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._inductor.config as inductor_config

from manntk.build import build_model
from manntk.config import ConfigError
from manntk.recipe import recipe_from_mapping
from manntk.state import detach_state
from manntk.training import train
from tests.test_training import tiny_lm, train_rows

MEMORY = {"slots": 4, "width": 6, "learned": True}

#: One composition per addressing and write policy, each with its usual cell. Each takes
#: 7-50 s to compile with Inductor on 2 cores (36 s for soft ARMIN with a cold cache), so
#: the Inductor tests are ``slow``; the default suite traces every composition with
#: ``aot_eager`` (Dynamo's graphs and AOT autograd without code generation, seconds).
COMPOSITIONS = {
    "armin-soft": {"cell": {"name": "armin", "hidden_size": 7}, "addressing": {"name": "auto"}, "write": {"name": "overwrite"}},
    "armin-hard-squashed-ln": {
        "cell": {"name": "armin", "hidden_size": 7, "squash_state": True, "layer_norm": True},
        "addressing": {"name": "auto", "hard": True},
        "write": {"name": "overwrite", "fill_empty_first": True},
    },
    "awta": {"cell": {"name": "armin", "hidden_size": 7}, "addressing": {"name": "tardis"}, "write": {"name": "overwrite"}},
    "tardis": {"cell": {"name": "tardis", "hidden_size": 7}, "addressing": {"name": "tardis"}, "write": {"name": "overwrite"}},
    "ntm": {"cell": {"name": "lstm", "hidden_size": 7}, "addressing": {"name": "ntm"}, "write": {"name": "erase_add"}},
    "lstm": {"cell": {"name": "lstm", "hidden_size": 7}},
}


def outputs_and_gradients(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same Gumbel noise for the hard reads
    y, state = model(x)
    memory = state["layers"][0]["memory"]
    (y.pow(2).sum() + memory.sin().sum()).backward()
    return y.detach(), memory.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPOSITIONS)
def test_compiled_layers_give_the_eager_outputs_and_gradients(name):
    """Float64, soft and hard reads, every part: outputs, the final memory and every
    parameter gradient agree to rounding. A random learned initial memory keeps the
    content addressing's gradients away from zero (a zero memory makes them vanish)."""
    check_compiled_against_eager(name, torch.device("cpu"))


@pytest.mark.parametrize("name", COMPOSITIONS)
def test_every_composition_traces_into_graphs_that_give_the_eager_numbers(name):
    """The engine's step, its memory backends and every part under Dynamo and AOT autograd
    (``aot_eager``: the graphs Inductor would compile, run without code generation)."""
    check_compiled_against_eager(name, torch.device("cpu"), backend="aot_eager")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name", ["armin-soft", "armin-hard-squashed-ln", "ntm"])
def test_compiled_layers_give_the_eager_outputs_and_gradients_on_cuda(name):
    check_compiled_against_eager(name, torch.device("cuda"))


def check_compiled_against_eager(name: str, device: torch.device, backend: str = "inductor") -> None:
    torch.manual_seed(0)
    model = build_model({"input_size": 5, "output_size": 3, "memory": MEMORY, **COMPOSITIONS[name]}).double().to(device)
    with torch.no_grad():
        model.layers[0].memory_init.normal_()
    compiled = copy.deepcopy(model)
    compiled.compile_layers(backend)
    x = torch.randn(3, 2, 5, dtype=torch.float64, device=device)  # two steps: the recurrence, at half the compile time
    with inductor_config.patch(fallback_random=True):
        y, memory, grads = outputs_and_gradients(model, x)
        y_c, memory_c, grads_c = outputs_and_gradients(compiled, x)
    torch.testing.assert_close(y_c, y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(memory_c, memory, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_c.keys()
    for key, grad in grads.items():
        assert grad is not None and (grad.numel() == 0 or grad.abs().max() > 1e-8), key  # every parameter takes part
        torch.testing.assert_close(grads_c[key], grad, rtol=1e-8, atol=1e-10, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.slow
def test_train_compile_follows_the_eager_run(tmp_path):
    """Hard reads: with Inductor's own random numbers the Gumbel noise would differ, so
    the test asks for torch's."""
    eager = train(recipe_from_mapping(tiny_lm(tmp_path, steps=4)), tmp_path / "eager", progress=False)
    with inductor_config.patch(fallback_random=True):
        compiled = train(recipe_from_mapping(tiny_lm(tmp_path, steps=4, compile=True)), tmp_path / "compiled", progress=False)
    losses = [row["loss"] for row in train_rows(eager.run_dir)]
    assert len(losses) == 4
    assert [row["loss"] for row in train_rows(compiled.run_dir)] == pytest.approx(losses, rel=1e-5)
    assert compiled.metrics["valid"]["bpc"] == pytest.approx(eager.metrics["valid"]["bpc"], rel=1e-5)


def test_train_compile_refuses_the_fused_cell(tmp_path):
    mapping = tiny_lm(tmp_path, steps=4, compile=True)
    mapping["model"]["cell"]["fused"] = True
    with pytest.raises(ConfigError, match=r"cannot trace ArminCell .*\$\.train\.compile"):
        train(recipe_from_mapping(mapping), tmp_path / "run", progress=False)


@pytest.mark.slow
def test_a_new_temperature_does_not_compile_again():
    """The annealed Gumbel temperature changes at every training step; the compiled chunk
    takes it as data (one graph for all steps) and follows the schedule."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = build_model({"input_size": 5, "output_size": 3, "memory": MEMORY, **COMPOSITIONS["armin-soft"],
                         "addressing": {"name": "auto", "hard": False, "temperature": {"start": 4.0, "end": 0.5, "steps": 100}}})
    compiled = copy.deepcopy(model)
    compiled.compile_layers()
    x = torch.randn(2, 3, 5)
    for step in (0, 30, 60, 200):
        model.set_schedule_step(step)
        compiled.set_schedule_step(step)
        torch.testing.assert_close(compiled(x)[0], model(x)[0])
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_a_carried_state_does_not_compile_again():
    """Chunk 1 starts from a fresh state, chunks 2 and 3 from the carried one: one graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = build_model({"input_size": 5, "output_size": 3, "memory": {"slots": 4}, **COMPOSITIONS["armin-hard-squashed-ln"]})
    model.compile_layers()
    x, state = torch.randn(2, 3, 5), None
    for _ in range(3):
        y, state = model(x, state)
        y.sum().backward()
        state = detach_state(state)
    assert counters["stats"]["unique_graphs"] == 1
