"""Recipe loading: extends, overrides, and a specific error for every malformed input."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manntk.config import ConfigError
from manntk.recipe import apply_overrides, load_mapping, load_recipe, merge, recipe_from_mapping, recipe_to_mapping

BASE = """
name: base
task: {name: copy, max_length: 5}
model:
  cell: {name: armin, hidden_size: 8}
  addressing: {name: auto, temperature: {start: 2.0, end: 0.5, steps: 100}}
  write: {name: overwrite}
  memory: {slots: 4, width: 6}
train: {batch_size: 2, steps: 10, optimizer: {name: adam, lr: 0.01}}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_recipe_loads_into_attrs_classes(tmp_path):
    recipe = load_recipe(write(tmp_path, "base.yaml", BASE))
    assert recipe.task.name == "copy" and recipe.task.config.max_length == 5
    assert recipe.model.cell.config.hidden_size == 8
    assert recipe.model.addressing.config.temperature.start == 2.0
    assert recipe.train.optimizer.lr == 0.01 and recipe.train.clip_norm is None


def test_extends_merges_and_a_renamed_part_drops_its_old_options(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", """
        extends: base.yaml
        name: child
        model:
          cell: {hidden_size: 16}
          addressing: {name: tardis, key_size: 3}
        train: {steps: 20}
    """)
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert recipe.model.cell.config.hidden_size == 16 and recipe.model.cell.name == "armin"
    assert recipe.model.addressing.name == "tardis" and recipe.model.addressing.config.key_size == 3
    assert recipe.model.addressing.config.temperature.start == 1.0  # auto's options did not leak into tardis
    assert recipe.train.steps == 20 and recipe.train.batch_size == 2


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_mapping(tmp_path / "a.yaml")


def test_overrides_set_parse_yaml_delete_and_swap_parts(tmp_path):
    path = write(tmp_path, "base.yaml", BASE)
    recipe = load_recipe(path, ["model.cell.hidden_size=32", "train.optimizer={name: sgd, lr: 0.1}",
                                "~model.addressing.temperature", "model.write.name=none"])
    assert recipe.model.cell.config.hidden_size == 32
    assert recipe.train.optimizer.name == "sgd"
    assert recipe.model.addressing.config.temperature.start == 1.0
    assert recipe.model.write.name == "none"
    swapped = load_recipe(path, ["model.addressing.name=tardis"])
    assert swapped.model.addressing.name == "tardis"


@pytest.mark.parametrize("override, message", [
    ("model.cell.hidden_size", "expected key.path=value"),
    ("~model.nothing", "no key 'model.nothing' to delete"),
    ("model..x=1", "not a dotted key path"),
    ("name.x=1", "'name' is not a mapping"),
    ("model.cell.hidden_size=[1", "not valid YAML"),
])
def test_bad_overrides(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(write(tmp_path, "base.yaml", BASE), [override])


@pytest.mark.parametrize("change, message", [
    ("model.colour=red", "unknown key(s): colour @ $.model"),
    ("model.cell.hidden_size=big", "expected an integer, got 'big' @ $.model.cell.hidden_size"),
    ("model.cell.hidden_size=2.5", "expected an integer, got 2.5 @ $.model.cell.hidden_size"),
    ("model.addressing.name=tardiss", "did you mean 'tardis'?"),
    ("model.memory.slots=-4", "slots must be positive, got -4 @ $.model.memory"),
    ("train.optimizer.name=adagrad", "expected one of 'adam', 'adamw', 'rmsprop', 'sgd'; got 'adagrad' @ $.train.optimizer.name"),
    ("task.name=cpy", "unknown task 'cpy'"),
    ("train.steps=true", "expected an integer, got True @ $.train.steps"),
    ("train.optimizer.lr=3e-4", "got the text '3e-4': YAML reads an exponent as a number only with a decimal point and a sign"),
    ("train.optimizer.lr=1.0e5", "got the text '1.0e5': YAML reads an exponent"),
    ("train.optimizer.lr=1e5", "write 100000.0 @ $.train.optimizer.lr"),
    ("train.optimizer.lr=inf", "expected a number, got 'inf' @ $.train.optimizer.lr"),
    ("train.optimizer.lr=fast", "expected a number, got 'fast' @ $.train.optimizer.lr"),
    ("train.optimizer.betas=0.9", "expected a list of 2 values, got 0.9 @ $.train.optimizer.betas"),
    ("train.optimizer.betas=[0.9]", "expected a list of 2 values, got [0.9] @ $.train.optimizer.betas"),
    ("train.optimizer.betas=[0.9, x]", "expected a number, got 'x' @ $.train.optimizer.betas[1]"),
    ("task.train_density=[0.6, 0.4]", "train_density must be two probabilities [low, high] with 0 <= low <= high <= 1"),
    ("task.train_density_share=0.5", "train_density_share is 0.5 but neither train_density nor train_blanks is set"),
    ("task.train_blanks=1.0", "train_blanks must be a probability in [0, 1), got 1.0"),
    ("task.blanks=-0.1", "blanks must be a probability in [0, 1), got -0.1"),
    ("train.schedule.regress_ratio=2.0", "regress_ratio rolls back with relapse_gamma's rate factor: set relapse_gamma too"),
    ("train.schedule.regress_ratio=0.5", "regress_ratio must be more than 1"),
    ("train.schedule.rollback_floor=0.1", "rollback_floor bounds the rate of the rollbacks (relapse_gamma): set relapse_gamma too"),
    ("train.schedule.restart_margin=0.2", "restart_margin says what counts as progress for restart_after: set restart_after too"),
    ("train.schedule.restart_after=0", "restart_after must be positive, got 0"),
    ("train.schedule.restart_margin=1.0", "restart_margin must be in [0, 1), got 1.0"),
    ("train.schedule.approach_gamma=0.5", "approach_gamma multiplies the rate when a validation first gets past approach_at: set approach_at too"),
    ("train.flood_mode=skip", "flood_mode 'skip' says what a step under the flood level does: set flood too"),
    ("train.flood_mode=stop", "expected one of 'ascend', 'skip'"),
    ("train.nonfinite_gradients=ignore", "expected one of 'stop', 'skip'"),
    ("train.replay_times=3", "replay_times says how often a batch above replay_above is trained on again: set replay_above too"),
    ("task.train_density_share=1.5", "train_density_share must be a share in (0, 1], got 1.5"),
])
def test_malformed_recipes_give_the_specific_error(tmp_path, change, message):
    with pytest.raises(ConfigError) as caught:
        load_recipe(write(tmp_path, "base.yaml", BASE), [change])
    assert any(message in error for error in caught.value.errors), caught.value.errors
    assert all(error.startswith(str(tmp_path / "base.yaml")) for error in caught.value.errors)


def test_several_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_recipe(write(tmp_path, "base.yaml", BASE), ["model.colour=red", "train.bogus=1", "model.cell.hidden_size=x"])
    assert len(caught.value.errors) == 3


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "task: {name: copy\nmodel: [\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad.yaml \(line \d+, column \d+\)"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, "base.yaml", BASE))
    assert recipe_from_mapping(recipe_to_mapping(recipe)) == recipe


def test_merge_replaces_lists_and_scalars():
    assert merge({"a": [1, 2], "b": {"c": 1, "d": 2}}, {"a": [3], "b": {"c": 5}}) == {"a": [3], "b": {"c": 5, "d": 2}}
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["task", "model", "train", "eval", "name", "cell", "addressing", "memory", "hidden_size",
                        "slots", "steps", "optimizer", "lr", "extra"])
recipe_like = st.dictionaries(keys, json_values | st.dictionaries(keys, json_values, max_size=4), max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mapping=recipe_like | json_values)
def test_random_mappings_give_only_clean_errors(mapping):
    try:
        recipe_from_mapping(mapping)
    except ConfigError as error:
        assert error.errors and all(isinstance(e, str) and e for e in error.errors)


def test_an_unknown_key_names_the_closest_known_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_recipe(write(tmp_path, "base.yaml", BASE), ["model.cell.hiden_size=8", "train.batchsize=2", "train.stesp=3",
                                                         "model.colour=red"])
    assert sorted(caught.value.errors) == sorted(f"{tmp_path / 'base.yaml'}: {line}" for line in [
        "unknown key(s): hiden_size; did you mean 'hidden_size'? @ $.model.cell",
        "unknown key(s): batchsize, stesp; did you mean 'batch_size' for 'batchsize', 'steps' for 'stesp'? @ $.train",
        "unknown key(s): colour @ $.model",  # nothing close: no guess
    ])


def test_setting_differences_by_dotted_path_with_absent_sides():
    from manntk.recipe import ABSENT, setting_differences

    first = {"model": {"cell": {"hidden_size": 8, "zoneout": 0.0}}, "train": {"milestones": [3000]}}
    second = {"model": {"cell": {"hidden_size": 9, "zoneout": 0.0}}, "train": {"milestones": [3000]}, "eval": {"batch_size": 4}}
    assert setting_differences(first, second) == {"eval.batch_size": (ABSENT, 4), "model.cell.hidden_size": (8, 9)}
    assert setting_differences(first, first) == {}
    assert setting_differences({"train": {"milestones": [3000]}}, {"train": {"milestones": []}}) == {"train.milestones": ([3000], [])}
