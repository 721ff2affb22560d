"""The plugin manager: the built-in parts and tools and every entry point of group ``manntk``.

Built-in parts and tools register through the same hooks as third-party plugins, so
there is one path into the registry and into the command line. The tools are named here,
not imported: the core never imports them. Each entry point is loaded and registered in isolation: a
plugin that fails to import or to register is recorded as a
[`PluginFailure`][manntk.plugins.PluginFailure] and the others load as usual (a
``strict`` switch re-raises instead).
"""

from __future__ import annotations

import importlib
from functools import partial
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points
from typing import Any

import attrs
import pluggy

from manntk import hookspecs
from manntk.registry import Entry, Registry, RegistryError, describe_failure

ENTRY_POINT_GROUP = "manntk"

BUILTIN_PLUGINS = (
    "manntk.cells.armin",
    "manntk.cells.lstm",
    "manntk.cells.tardis",
    "manntk.addressing.auto",
    "manntk.addressing.tardis",
    "manntk.addressing.ntm",
    "manntk.addressing.none",
    "manntk.writes.overwrite",
    "manntk.writes.erase_add",
    "manntk.writes.none",
    "manntk.tasks.algorithmic.plugin",
    "manntk.tasks.char_lm",
    "manntk.tasks.pmnist",
    # tools: commands only (register_commands)
    "manntk.tools.bench",
    "manntk.tools.demo",
    "manntk.tools.inspect_memory",
    "manntk.tools.plot",
    "manntk.tools.read_sources",
    "manntk.tools.runs",
    "manntk.study.commands",
)

HOOKS = {
    "cells": "register_cells",
    "addressing": "register_addressing",
    "writes": "register_writes",
    "tasks": "register_tasks",
}


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded or could not register its parts.

    Attributes:
        name: the plugin's name (its entry point's).
        error: what went wrong, in one line.
        origin: where the plugin comes from (see [`Entry`][manntk.registry.Entry]).
    """

    name: str
    error: str
    origin: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.origin}): {self.error}" if self.origin else f"{self.name}: {self.error}"


@attrs.define
class Plugins:
    """Loaded plugins: the pluggy manager, the filled registry and what went wrong.

    Attributes:
        manager: the pluggy plugin manager.
        registry: the parts every plugin registered.
        failures: plugins that failed to load or register, by name.
        contributions: for each plugin name, the ``(kind, name)`` pairs it registered.
        origins: for each plugin name, where it comes from (its distribution and version,
            else its module), for what is said about its failures.
    """

    manager: pluggy.PluginManager
    registry: Registry
    failures: list[PluginFailure] = attrs.field(factory=list)
    contributions: dict[str, list[tuple[str, str]]] = attrs.field(factory=dict)
    origins: dict[str, str] = attrs.field(factory=dict)

    def fail(self, name: str, error: str) -> None:
        """Record that plugin ``name`` failed with ``error`` (one line), with its origin."""
        failure = PluginFailure(name=name, error=error, origin=self.origins.get(name, ""))
        self.failures.append(failure)
        self.registry.failed_plugins.append(str(failure))


def load_plugins(*, entry_points_too: bool = True, strict: bool = False, extra: tuple[Any, ...] = ()) -> Plugins:
    """Load the built-ins, then every entry point of group ``manntk``, and fill a registry.

    Args:
        entry_points_too: also load installed third-party plugins.
        strict: re-raise the first plugin failure instead of recording it.
        extra: plugin objects (modules or instances with hook implementations) to
            register after the entry points, e.g. in tests.

    Returns:
        The manager, the registry and the failures.
    """
    manager = pluggy.PluginManager("manntk")
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager=manager, registry=Registry(tuple(HOOKS)))
    origins = plugins.origins
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
        origins[module_name] = module_origin(module_name)
    if entry_points_too:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            origins[entry_point.name] = entry_point_origin(entry_point)
            _guard(plugins, entry_point.name, strict, lambda ep=entry_point: manager.register(ep.load(), name=ep.name))
    for plugin in extra:
        origins[_plugin_label(plugin)] = module_origin(getattr(plugin, "__name__", None) or type(plugin).__module__)
        _guard(plugins, _plugin_label(plugin), strict, lambda p=plugin: manager.register(p, name=_plugin_label(p)))
    for name, hooks in _hook_functions(manager).items():
        _guard(plugins, name, strict, partial(_collect, plugins, name, hooks))
    return plugins


def module_origin(module_name: str) -> str:
    """Where a plugin module comes from: the installed distribution named like its top-level
    package, with its version (``manntk 0.1.0``), else ``module <name>``."""
    try:
        found = distribution(module_name.partition(".")[0])
    except PackageNotFoundError:
        return f"module {module_name}"
    return f"{found.metadata['Name']} {found.version}"


def entry_point_origin(entry_point: EntryPoint) -> str:
    """Where an entry point's plugin comes from: the distribution that declares it, with its
    version (``manntk-dnc 0.1.0``), else its module."""
    if entry_point.dist is not None:
        return f"{entry_point.dist.metadata['Name']} {entry_point.dist.version}"
    return f"module {entry_point.module}"


_default: Plugins | None = None


def default_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    global _default
    if _default is None:
        _default = load_plugins()
    return _default


def _hook_functions(manager: pluggy.PluginManager) -> dict[str, list[tuple[str, Any]]]:
    """For each registered plugin, its ``(kind, hook function)`` pairs, in hook order."""
    functions: dict[str, list[tuple[str, Any]]] = {name: [] for name, _ in manager.list_name_plugin()}
    for kind, hook_name in HOOKS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            functions[impl.plugin_name].append((kind, impl.function))
    return functions


def _collect(plugins: Plugins, plugin_name: str, hooks: list[tuple[str, Any]]) -> None:
    """Call one plugin's registration hooks; keep its entries only if all of them succeed."""
    staged: list[tuple[str, Entry]] = []
    origin = plugins.origins.get(plugin_name, "")
    for kind, function in hooks:

        def register(name: str, factory: Any, config: type | None = None, *, _kind: str = kind) -> None:
            staged.append((_kind, Entry(name=name, factory=factory, config=config, plugin=plugin_name, origin=origin)))

        function(register=register)
    added: list[tuple[str, str]] = []
    try:
        for kind, entry in staged:
            plugins.registry.add(kind, entry)
            added.append((kind, entry.name))
    except RegistryError:
        for kind, name in added:
            plugins.registry.remove(kind, name)
        raise
    plugins.contributions[plugin_name] = added


def _guard(plugins: Plugins, name: str, strict: bool, action: Any) -> None:
    try:
        action()
    except (Exception, SystemExit) as error:  # a broken plugin (one calling sys.exit() too) must not break the others
        if strict:
            raise
        plugins.fail(name, describe_failure(error))
        if plugins.manager.get_plugin(name) is not None:
            plugins.manager.unregister(name=name)


def _plugin_label(plugin: Any) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__
