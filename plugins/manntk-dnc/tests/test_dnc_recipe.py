"""The DNC copy recipe: validates with the plugin, names the missing parts without it, trains."""

from __future__ import annotations

import math

import pytest

import manntk
from manntk.config import ConfigError
from manntk.recipe import load_recipe
from manntk.training import train

from conftest import RECIPE


def test_the_recipe_has_the_paper_sizes(dnc_plugins):
    recipe = load_recipe(RECIPE, plugins=dnc_plugins)
    model = recipe.model
    assert (model.cell.name, model.cell.config.hidden_size) == ("lstm", 120)
    assert (model.addressing.name, model.write.name) == ("dnc_read", "dnc")
    assert (model.memory.slots, model.memory.width) == (128, 20)
    assert recipe.task.name == "copy"


def test_without_the_plugin_validation_names_the_missing_parts_and_the_choices():
    builtins_only = manntk.load_plugins(entry_points_too=False)
    with pytest.raises(ConfigError) as caught:
        load_recipe(RECIPE, plugins=builtins_only)
    addressing = ", ".join(builtins_only.registry.names("addressing"))
    writes = ", ".join(builtins_only.registry.names("writes"))
    errors = caught.value.errors
    assert f"{RECIPE}: unknown addressing 'dnc_read'; registered: {addressing} @ $.model.addressing" in errors, errors
    assert f"{RECIPE}: unknown write 'dnc'; registered: {writes} @ $.model.write" in errors, errors
    assert "dnc_read" not in addressing and "dnc" not in writes.split(", ")


def test_the_recipe_trains_two_steps(dnc_plugins, tmp_path):
    overrides = ["train.steps=2", "train.device=cpu", "task.max_length=5", "task.validation_batches=1", "task.validation_batch_size=2", "eval.splits=[valid]", "~train.threads"]  # keep the test process's thread count
    recipe = load_recipe(RECIPE, overrides, plugins=dnc_plugins)
    result = train(recipe, tmp_path / "run", progress=False, plugins=dnc_plugins)
    assert result.step == 2
    assert math.isfinite(result.metrics["valid"]["bce"])
    assert (tmp_path / "run" / "recipe.yaml").exists()
