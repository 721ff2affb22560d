"""The layers of the package, checked on its source: no import cycles inside ``manntk``,
and the core never imports the tools (``manntk.tools``, ``manntk.study``), which reach the command line
through the ``register_commands`` hook like any plugin."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

import manntk
from manntk import cli
from manntk.hookspecs import hookimpl
from manntk.plugins import load_plugins

PACKAGE = Path(manntk.__file__).parent
#: The packages above the core: commands through register_commands, never imported by it.
TOOLS = ("manntk.tools", "manntk.study")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str) -> set[str]:
    """The ``manntk`` modules that module ``name`` imports, at any depth of its code but
    under ``if TYPE_CHECKING:`` (annotations only). ``from package import name`` counts as
    an import of the submodule when ``name`` is one; parent packages, which Python imports
    implicitly, do not count."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: set[str] = set()
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_is_read_from_the_source():
    assert "manntk.engine" in GRAPH["manntk.build"]
    assert "manntk.memory" in GRAPH["manntk.backends"]  # from manntk import memory as mem


def test_no_import_cycles_inside_manntk():
    assert cycles(GRAPH) == [], "import cycles (each line one cycle's modules):\n" + "\n".join(map(", ".join, cycles(GRAPH)))


def test_the_core_imports_no_tool():
    offenders = {
        name: sorted(module for module in imported if module.startswith(TOOLS))
        for name, imported in GRAPH.items()
        if not name.startswith(TOOLS)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_a_plugin_command_appears_in_manntk_help(capsys):
    class Hello:
        @hookimpl
        def register_commands(self, commands: argparse._SubParsersAction) -> None:
            hello = commands.add_parser("hello", help="say hello from a plugin")
            hello.add_argument("--name", default="world")
            hello.set_defaults(handler=lambda args: print(f"hello, {args.name}") or 0)

    plugins = load_plugins(entry_points_too=False, extra=(Hello(),))
    parser = cli.build_parser(plugins)
    assert "say hello from a plugin" in parser.format_help()
    args = parser.parse_args(["hello", "--name", "manntk"])
    assert args.handler(args) == 0
    assert capsys.readouterr().out == "hello, manntk\n"


def test_a_command_that_fails_to_register_breaks_no_other_command():
    class Broken:
        @hookimpl
        def register_commands(self, commands: argparse._SubParsersAction) -> None:
            raise RuntimeError("no parser today")

    plugins = load_plugins(entry_points_too=False, extra=(Broken(),))
    parser = cli.build_parser(plugins)
    assert {"train", "bench", "plot"} <= set(parser._subparsers._group_actions[0].choices)
    assert [failure.error for failure in plugins.failures] == ["register_commands: RuntimeError: no parser today"]


@pytest.mark.parametrize("tool", ["bench", "demo", "inspect", "plot", "reads", "runs", "study"])
def test_the_tools_are_commands_of_their_own_plugins(tool):
    plugins = load_plugins(entry_points_too=False)
    cli.build_parser(plugins)
    owners = [name for name, contributed in plugins.contributions.items() if ("commands", tool) in contributed]
    assert len(owners) == 1 and owners[0].startswith(TOOLS), owners
