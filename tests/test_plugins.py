"""The plugin system: third-party entry points, isolation of broken plugins, the registry."""

from __future__ import annotations

import textwrap

import pytest
import torch

import manntk
from manntk.cli import main
from manntk.config import ConfigError
from manntk.plugins import load_plugins
from manntk.registry import Entry, Registry, RegistryError

GOOD_PLUGIN = '''
import attrs
import torch
from manntk.hookspecs import hookimpl
from manntk.parts import Address, Addressing


@attrs.define
class FirstSlotConfig:
    slot: int = 0


class FirstSlot(Addressing):
    """Always reads one fixed slot."""

    def __init__(self, config, context):
        super().__init__()
        self.slot, self.slots = config.slot, context.slots

    def step(self, prepared, t, hidden, memory, state):
        index = torch.full((memory.shape[0],), self.slot, dtype=torch.long, device=memory.device)
        return Address(torch.nn.functional.one_hot(index, self.slots).to(memory.dtype), index), state


@hookimpl
def register_addressing(register):
    register("first_slot", FirstSlot, FirstSlotConfig)
'''

BROKEN_PLUGIN = "raise ImportError('this plugin needs a package that is not installed')\n"

DUPLICATE_PLUGIN = '''
from manntk.hookspecs import hookimpl
from manntk.cells.armin import ArminCell, ArminConfig


@hookimpl
def register_cells(register):
    register("armin", ArminCell, ArminConfig)
'''


def install_fake_distribution(root, name, modules: dict[str, str], entry_points: dict[str, str]):
    """Write modules and a ``.dist-info`` with ``manntk`` entry points under ``root``, as pip would."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[manntk]\n{lines}\n")


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path, "manntk_first_slot", {"first_slot_plugin": GOOD_PLUGIN}, {"first-slot": "first_slot_plugin"}
    )
    install_fake_distribution(tmp_path, "manntk_broken", {"broken_plugin": BROKEN_PLUGIN}, {"broken": "broken_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_third_party_addressing_builds_from_a_mapping(third_party):
    plugins = load_plugins()
    assert plugins.registry.get("addressing", "first_slot").plugin == "first-slot"
    model = manntk.build_model(
        {"input_size": 2, "cell": {"name": "armin", "hidden_size": 3},
         "addressing": {"name": "first_slot", "slot": 1}, "write": {"name": "overwrite", "fill_empty_first": False},
         "memory": {"slots": 3}},
        plugins=plugins,
    )
    _, state = model(torch.randn(2, 4, 2))
    memory = state["layers"][0]["memory"]
    assert memory[:, 1].abs().sum() > 0 and memory[:, [0, 2]].abs().sum() == 0  # it only ever touched slot 1


def test_broken_plugin_is_reported_and_does_not_break_the_rest(third_party):
    plugins = load_plugins()
    assert [f.name for f in plugins.failures] == ["broken"]
    assert "ImportError" in plugins.failures[0].error and "not installed" in plugins.failures[0].error
    assert {"auto", "tardis", "ntm", "none", "first_slot"} <= set(plugins.registry.names("addressing"))
    with pytest.raises(ImportError):
        load_plugins(strict=True)


def test_a_part_of_a_plugin_that_failed_is_named_with_the_failure(third_party):
    """A recipe naming a part the broken plugin would have provided: the error names the
    plugin that failed to load and its error, not only "unknown"."""
    plugins = load_plugins()
    mapping = {"input_size": 2, "cell": {"name": "armin", "hidden_size": 3}, "addressing": {"name": "broken_addressing"},
               "write": {"name": "overwrite"}, "memory": {"slots": 3}}
    with pytest.raises(manntk.ConfigError, match=r"unknown addressing 'broken_addressing'.*failed to load.*broken \(manntk_broken 0\.1\): ImportError"):
        manntk.build_model(mapping, plugins=plugins)
    clean = load_plugins(entry_points_too=False)
    with pytest.raises(manntk.ConfigError) as caught:
        manntk.build_model(mapping, plugins=clean)
    assert "failed to load" not in str(caught.value)  # nothing failed: nothing to name


def test_manntk_plugins_lists_builtins_and_failures(third_party, capsys):
    status = main(["plugins"])
    out = capsys.readouterr().out
    assert status == 1  # a failure is listed, and the exit status says so
    for name in ("armin", "lstm", "tardis", "auto", "ntm", "overwrite", "erase_add", "first_slot"):
        assert name in out
    assert "failed plugins:" in out
    assert "  broken (manntk_broken 0.1): ImportError: this plugin needs a package that is not installed\n" in out  # its distribution


def test_manntk_plugins_clean(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "cells:" in out and "manntk.cells.armin: cells/armin" in out and "failed" not in out


def test_a_name_registered_twice_names_both_plugins(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "manntk_dup", {"dup_plugin": DUPLICATE_PLUGIN}, {"dup": "dup_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = load_plugins()
    (failure,) = plugins.failures
    assert failure.name == "dup"
    assert "'armin' is registered twice" in failure.error and "manntk.cells.armin" in failure.error and "'dup'" in failure.error
    assert plugins.registry.get("cells", "armin").plugin == "manntk.cells.armin"


def test_registry_unknown_name_gives_choices_and_close_match():
    registry = Registry()
    registry.add("addressing", Entry("tardis", object, None, "p"))
    registry.add("addressing", Entry("auto", object, None, "p"))
    with pytest.raises(RegistryError, match=r"unknown addressing 'tardiss'; registered: auto, tardis; did you mean 'tardis'\?"):
        registry.get("addressing", "tardiss")
    with pytest.raises(RegistryError, match="registered twice: by plugin 'p' and by plugin 'q'"):
        registry.add("addressing", Entry("auto", object, None, "q"))


def test_config_errors_name_the_key_the_value_and_the_choices():
    with pytest.raises(ConfigError) as caught:
        manntk.build_model({
            "input_size": 4,
            "cell": {"name": "armin", "hidden_size": "big", "colour": 1},
            "addressing": {"name": "tardiss"},
            "memory": {"slots": -3},
        })
    errors = caught.value.errors
    assert "expected an integer, got 'big' @ $.model.cell.hidden_size" in errors
    assert "unknown key(s): colour @ $.model.cell" in errors
    assert any("did you mean 'tardis'" in e and e.endswith("@ $.model.addressing") for e in errors)
    assert "slots must be positive, got -3 @ $.model.memory.slots" in errors


def test_plugin_options_cannot_be_given_to_a_part_without_options():
    with pytest.raises(ConfigError, match="takes no options"):
        manntk.build_model({"input_size": 2, "cell": {"name": "lstm", "hidden_size": 2}, "write": {"name": "none", "x": 1}})


def test_every_context_attribute_the_hookspecs_mention_exists():
    """A plugin author follows the hook docstrings: each ``context.<name>`` they mention is a
    field or method of [`BuildContext`][manntk.context.BuildContext]."""
    import inspect
    import re

    import attrs

    from manntk import hookspecs
    from manntk.context import BuildContext

    mentioned = {name for _, function in inspect.getmembers(hookspecs, inspect.isfunction)
                 for name in re.findall(r"\bcontext\.(\w+)", inspect.getdoc(function) or "")}
    assert {"input_size", "width", "build"} <= mentioned  # the pattern finds the mentions
    existing = {field.name for field in attrs.fields(BuildContext)} | {name for name in dir(BuildContext) if not name.startswith("_")}
    assert mentioned <= existing, f"hookspecs mention context attributes that BuildContext lacks: {sorted(mentioned - existing)}"


BOOM_PLUGIN = """
import attrs
from manntk.hookspecs import hookimpl


@attrs.define
class BoomConfig:
    hidden_size: int = 8


class Boom:
    def __init__(self, config, context):
        raise ValueError("a first line that is not the point\\nhidden_size 8 is cursed")


@hookimpl
def register_cells(register):
    register("boom", Boom, BoomConfig)


class BoomTask:
    def __init__(self, config, context):
        raise RuntimeError("the task's data went missing")


@hookimpl
def register_tasks(register):
    register("boom_task", BoomTask, BoomConfig)
"""


@pytest.fixture
def boom(tmp_path, monkeypatch):
    """An installed distribution ``manntk_boom`` 0.1 whose cell ``boom`` raises when built,
    the process-wide plugins reloaded with it, and a recipe file that uses it."""
    import yaml

    import manntk.plugins
    from tests.test_training import tiny_copy

    install_fake_distribution(tmp_path, "manntk_boom", {"boom_plugin": BOOM_PLUGIN}, {"boom": "boom_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(manntk.plugins, "_default", None)
    monkeypatch.delenv("MANNTK_DEBUG", raising=False)
    mapping = tiny_copy()
    mapping["model"]["cell"] = {"name": "boom"}
    recipe = tmp_path / "boom.yaml"
    recipe.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return recipe


def test_a_part_whose_constructor_raises_is_one_line_naming_the_plugin(boom, tmp_path, capsys):
    status = main(["train", str(boom), "--runs-root", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1
    assert err == ("manntk train: error: model.cell (cell 'boom' of plugin 'boom', manntk_boom 0.1): "
                   "ValueError: hidden_size 8 is cursed (the traceback: manntk --debug train ..., or MANNTK_DEBUG=1)\n")
    assert main(["train", str(boom), "--dry-run"]) == 1  # the same for a dry run
    assert capsys.readouterr().err.count("\n") == 1


def test_a_task_whose_constructor_raises_is_one_line_naming_the_plugin(boom, capsys):
    import yaml

    mapping = yaml.safe_load(boom.read_text())
    mapping["task"] = {"name": "boom_task"}
    boom.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    assert main(["train", str(boom), "--dry-run"]) == 1
    assert capsys.readouterr().err == (
        "manntk train: error: task (task 'boom_task' of plugin 'boom', manntk_boom 0.1): "
        "RuntimeError: the task's data went missing (the traceback: manntk --debug train ..., or MANNTK_DEBUG=1)\n")


@pytest.mark.parametrize("how", ["--debug", "MANNTK_DEBUG=1"])
def test_debug_shows_the_full_traceback(boom, tmp_path, capsys, monkeypatch, how):
    if how == "--debug":
        argv = ["--debug", "train", str(boom), "--dry-run"]
    else:
        monkeypatch.setenv("MANNTK_DEBUG", "1")
        argv = ["train", str(boom), "--dry-run"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    first, rest = err.split("\n", 1)
    assert first == "manntk train: error: model.cell (cell 'boom' of plugin 'boom', manntk_boom 0.1): ValueError: hidden_size 8 is cursed"
    assert "Traceback (most recent call last)" in rest and "boom_plugin.py" in rest  # the plugin's own frame
    assert "a first line that is not the point" in rest and "PartError" in rest


def test_a_plugin_registered_in_a_program_is_named_by_its_module():
    from manntk.hookspecs import hookimpl

    class Broken:
        @hookimpl
        def register_cells(self, register):
            raise RuntimeError("no cells today\nreally none")

    plugins = load_plugins(entry_points_too=False, extra=(Broken(),))
    assert [str(failure) for failure in plugins.failures] == [
        "Broken (module tests.test_plugins): RuntimeError: really none"]  # the last line of the message
    assert plugins.origins["manntk.cells.armin"] == f"manntk {manntk.__version__}"
