"""MkDocs hook: pages generated from the code at build time, so they cannot drift.

- ``reference/recipe.md``: every recipe key with its type, default and meaning, walked
  from the attrs schema ([`Recipe`][manntk.recipe.Recipe], [`ModelConfig`][manntk.build.ModelConfig],
  ...) and from the config class of every part in the plugin registry. The meaning of a
  key is the entry of the same name in its class's docstring (the ``Attributes:``
  section, or any section of ``name: text`` entries), looked up along the class's MRO.
- ``reference/cli.md``: every command, argument, default and choice of the ``manntk``
  command, walked from [`build_parser`][manntk.cli.build_parser].
- Fragments inside hand-written pages: a line ``<!-- manntk:data-files -->`` becomes the
  table of known data files with their sizes and SHA-256 (from ``KNOWN_FILES``), and
  ``<!-- manntk:paper-models -->`` the table of the paper's models (``manntk.models``).
- Equations: the TeX that ``pymdownx.arithmatex`` leaves in its ``arithmatex`` spans and
  blocks becomes MathML at build time (latex2mathml), which browsers render natively: the site
  needs no script from a CDN and reads the same offline.

MkDocs loads this file through ``hooks:`` in ``mkdocs.yml``; ``tests/test_docs.py``
imports it too (the generators need no MkDocs, only manntk).
"""

from __future__ import annotations

import argparse
import html
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, NamedTuple

import attrs
import yaml

DOCS_DIR = Path(__file__).resolve().parent.parent

#: Generated pages: path inside docs/ -> function returning the Markdown.
GENERATED = {
    "reference/recipe.md": "recipe_reference",
    "reference/cli.md": "cli_reference",
}

#: Plugin node types and the kind of part they name.
KIND_TITLES = {
    "tasks": "Tasks (`task:`)",
    "cells": "Cells (`model.cell:`)",
    "addressing": "Addressing (`model.addressing:`)",
    "writes": "Write policies (`model.write:`)",
}

UNDOCUMENTED = "*(undocumented)*"


# --------------------------------------------------------------------------- docstrings


def field_docs(cls: type) -> dict[str, str]:
    """``{name: meaning}`` from the ``name: text`` entries of the docstrings along ``cls``'s MRO.

    An entry is a line ``name: text`` right under a section header (a line ending in
    ``:``, e.g. ``Attributes:``), with continuation lines indented deeper. The nearest
    class in the MRO wins.
    """
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        found.update(_docstring_entries(klass.__dict__.get("__doc__") or ""))
    return found


def _docstring_entries(doc: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    in_section, entry_indent, current = False, None, None
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            current = None
            continue
        if stripped.endswith(":") and stripped[0].isupper():  # a section header: "Attributes:"
            in_section, entry_indent, current = True, None, None
            continue
        if not in_section:
            continue
        match = re.fullmatch(r"(\w+)(?: \([^)]*\))?:\s*(.*)", stripped)
        if match and (entry_indent is None or indent == entry_indent):
            entry_indent, current = indent, match.group(1)
            entries[current] = match.group(2)
        elif current is not None and entry_indent is not None and indent > entry_indent:
            entries[current] += " " + stripped
        elif entry_indent is not None and indent < entry_indent:
            in_section, current = False, None
    return entries


_CROSSREF = re.compile(r"\[(`[^`]+`)\]\[[\w.]+\]")


def plain(text: str) -> str:
    """Docstring text for a table cell: cross-references as code, no pipes or newlines."""
    return _CROSSREF.sub(r"\1", text).replace("|", "\\|").replace("\n", " ").strip()


# --------------------------------------------------------------------------- types and defaults


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=False)
    except Exception:  # a forward reference that does not resolve: keep the strings
        return {field.name: field.type for field in attrs.fields(cls)}


def _is_part_spec(tp: Any) -> bool:
    from manntk.config import PartSpec

    return isinstance(tp, type) and issubclass(tp, PartSpec)


def type_name(tp: Any) -> str:
    """A type as a reader of YAML sees it."""
    from manntk.config import PartSpec

    if isinstance(tp, str):
        return tp.replace("|", "or")
    if tp is type(None):
        return "null"
    if _is_part_spec(tp):
        return "plugin node"
    if attrs.has(tp):
        return "mapping"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return " or ".join(f"`{yaml_value(arg)}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(arg) for arg in args if arg is not type(None)]
        text = " or ".join(names)
        return text + " or null" if type(None) in args else text
    if origin in (list, typing.List):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (tuple, typing.Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(arg) for arg in args) + "]"
    if origin in (dict, typing.Dict):
        return "mapping"
    if tp is PartSpec:
        return "plugin node"
    return getattr(tp, "__name__", str(tp))


def yaml_value(value: Any) -> str:
    """A value as it is written in a recipe."""
    from manntk.config import PartSpec

    if isinstance(value, PartSpec):
        return "{name: " + value.name + "}"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def default_text(field: attrs.Attribute) -> tuple[str, Any]:
    """The default as shown, and the default value (``attrs.NOTHING`` when required)."""
    default = field.default
    if default is attrs.NOTHING:
        return "**required**", attrs.NOTHING
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        value = default.factory() if not default.takes_self else attrs.NOTHING
        if value is attrs.NOTHING:
            return "(computed)", value
    else:
        value = default
    if attrs.has(type(value)) and not _is_part_spec(type(value)):
        return "(see its keys)", value
    return f"`{yaml_value(value)}`", value


# --------------------------------------------------------------------------- the schema walk


class Row(NamedTuple):
    """One key of the recipe reference."""

    path: str
    type: str
    default: str
    meaning: str
    kind: str | None  # the kind of part, for plugin nodes


def schema_rows(cls: type, prefix: str = "") -> Iterator[Row]:
    """Every key of the attrs class ``cls``, nested attrs classes flattened into dotted paths."""
    docs = field_docs(cls)
    hints = _hints(cls)
    for field in attrs.fields(cls):
        path = f"{prefix}{field.name}"
        tp = hints.get(field.name, field.type)
        default, _ = default_text(field)
        meaning = plain(docs.get(field.name, UNDOCUMENTED))
        kind = getattr(tp, "kind", None) if _is_part_spec(tp) else None
        yield Row(path, type_name(tp), default, meaning, kind)
        nested = _attrs_class(tp)
        if nested is not None:
            yield from schema_rows(nested, prefix=f"{path}.")


def _attrs_class(tp: Any) -> type | None:
    """The attrs class inside ``tp`` (``X`` or ``X | None``), unless it is a plugin node."""
    candidates = [tp] + list(typing.get_args(tp))
    for candidate in candidates:
        if isinstance(candidate, type) and attrs.has(candidate) and not _is_part_spec(candidate):
            return candidate
    return None


def _table(rows: list[Row]) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        kind_link = f" ([choices](#{_kind_anchor(row.kind)}))" if row.kind else ""
        lines.append(f"| `{row.path}` | {row.type}{kind_link} | {row.default} | {row.meaning} |")
    return "\n".join(lines)


def _kind_anchor(kind: str) -> str:
    return f"parts-{kind}"


def _part_anchor(kind: str, name: str) -> str:
    return f"{kind}-{name}".replace("_", "-")


def documented_modules() -> set[str]:
    """Modules that the API pages render (``::: module`` lines under docs/api/)."""
    modules = set()
    for page in (DOCS_DIR / "api").glob("*.md"):
        modules.update(re.findall(r"^::: *([\w.]+)", page.read_text(encoding="utf-8"), flags=re.M))
    return modules


def _class_link(cls: type, modules: set[str]) -> str:
    """``[`Name`][module.Name]`` when the API reference renders the class, else ``module.Name`` as code."""
    module = sys.modules.get(cls.__module__)
    path = f"{cls.__module__}.{cls.__qualname__}"
    defined_by_class_statement = False
    try:
        defined_by_class_statement = module is not None and re.search(
            rf"^class {re.escape(cls.__name__)}\b", inspect.getsource(module), flags=re.M
        ) is not None
    except (OSError, TypeError):
        pass
    if cls.__module__ in modules and defined_by_class_statement and "." not in cls.__qualname__:
        return f"[`{cls.__name__}`][{path}]"
    return f"`{path}`"


def part_rows() -> dict[str, list[tuple[Any, list[Row]]]]:
    """For each kind, ``(entry, rows)`` for every registered part, by name."""
    from manntk.plugins import load_plugins

    registry = load_plugins().registry
    result = {}
    for kind in KIND_TITLES:
        result[kind] = []
        for entry in registry.entries(kind):
            rows = list(schema_rows(entry.config)) if entry.config is not None else []
            result[kind].append((entry, rows))
    return result


def recipe_reference() -> str:
    """The recipe reference page."""
    from manntk.build import ModelConfig
    from manntk.plugins import BUILTIN_PLUGINS
    from manntk.recipe import EvalConfig, Recipe, TrainConfig

    modules = documented_modules()
    out = [
        "# Recipe reference",
        "",
        "<!-- Generated by docs/hooks/manntk_docs.py from the attrs schema at build time: do not edit. -->",
        "",
        "Every key a recipe can hold, with its type, its default and its meaning. This page is",
        "generated when the site is built, from the attrs classes that structure a recipe",
        f"({_class_link(Recipe, modules)}, {_class_link(ModelConfig, modules)}, ...) and from the",
        "config class of every part in the plugin registry, so it lists exactly what",
        "`manntk.recipe.load_recipe` accepts. How recipes are written, merged and overridden is",
        "in [Recipes](../recipes.md).",
        "",
        "- **type**: `int` keys refuse `2.0` and `true`; `float` keys take integers; `or null`",
        "  means the key may be `null` (YAML for None); a *plugin node* is a mapping with `name:`",
        "  and the options of the part of that name (below).",
        "- **default**: the value when the key is left out; **required** keys have none.",
        "- Unknown keys are errors: every problem of a recipe is reported at once, with its path.",
        "",
        "## Top level",
        "",
        _table([row for row in schema_rows(Recipe) if "." not in row.path]),
        "",
        "## `model`",
        "",
        _table(list(schema_rows(ModelConfig, prefix="model."))),
        "",
        "## `train`",
        "",
        _table(list(schema_rows(TrainConfig, prefix="train."))),
        "",
        "## `eval`",
        "",
        _table(list(schema_rows(EvalConfig, prefix="eval."))),
        "",
        "## Parts",
        "",
        "A plugin node names a registered part; its other keys are that part's options, listed",
        "here per part. Giving the node another `name` (in a child recipe or with an override",
        "such as `model.addressing.name=tardis`) swaps the part *and* its options: the old",
        "part's options are dropped, the new part's defaults apply.",
        "",
    ]
    for kind, parts in part_rows().items():
        out += [f"### {KIND_TITLES[kind]} {{#{_kind_anchor(kind)}}}", ""]
        for entry, rows in parts:
            origin = "built in" if entry.plugin in BUILTIN_PLUGINS else "third-party plugin, installed when this site was built"
            summary = _summary(entry)
            out += [f"#### `{entry.name}` {{#{_part_anchor(kind, entry.name)}}}", ""]
            if summary:
                out += [plain(summary), ""]
            line = f"Registered by `{entry.plugin}` ({origin})"
            if entry.config is not None:
                line += f"; options: {_class_link(entry.config, modules)}."
            else:
                line += "; it takes no options."
            out += [line, ""]
            name_row = Row("name", "str", "**required**", f"`{entry.name}`", None)
            out += [_table([name_row, *rows]), ""]
    return "\n".join(out) + "\n"


def _summary(entry: Any) -> str:
    """The first paragraph of the part's class docstring (or of its config class)."""
    for source in (entry.factory, entry.config):
        doc = inspect.getdoc(source) if source is not None else None
        if doc and isinstance(source, type) and source.__doc__:
            return doc.split("\n\n")[0].replace("\n", " ")
    return ""


# --------------------------------------------------------------------------- CLI


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    result = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                result.append((name, helps.get(name, ""), sub))
    return result


def _argument_name(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The argument as ``--help`` shows it (``--resume RUN``, ``--device {auto,cpu,cuda}``)."""
    invocation = argparse.HelpFormatter(parser.prog)._format_action_invocation(action)
    if not action.option_strings:
        suffix = {"?": " (optional)", "*": " (any number)", "+": " (one or more)"}.get(action.nargs, "")
        return f"`{invocation}`{suffix}"
    return f"`{invocation}`"


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        details = []
        if action.choices is not None and "{" not in _argument_name(parser, action):
            details.append("choices: " + ", ".join(f"`{choice}`" for choice in action.choices))
        help_text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0 and "default" not in help_text:
            details.append(f"default: `{action.default}`")
        if action.type is not None and action.type not in (str,):
            details.append(f"type: {getattr(action.type, '__name__', str(action.type))}")
        meaning = plain(action.help or "")
        if details:
            meaning = f"{meaning} ({'; '.join(details)})" if meaning else "; ".join(details)
        rows.append(f"| {_argument_name(parser, action)} | {meaning} |")
    return rows


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=88)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _command_section(parser: argparse.ArgumentParser, name: str, help_text: str, level: int) -> list[str]:
    out = [f"{'#' * level} `{name}`", ""]
    description = parser.description or help_text
    if description:
        out += [plain(description[0].upper() + description[1:]) + ("" if description.endswith(".") else "."), ""]
    out += ["```text", _usage(parser), "```", ""]
    rows = _argument_rows(parser)
    if rows:
        out += ["| argument | meaning |", "|---|---|", *rows, ""]
    subcommands = _subcommands(parser)
    if subcommands:
        out += ["| command | what it does |", "|---|---|"]
        out += [f"| [`{name} {sub}`](#{_cli_anchor(f'{name} {sub}')}) | {plain(text)} |" for sub, text, _ in subcommands]
        out.append("")
        for sub, text, subparser in subcommands:
            out += _command_section(subparser, f"{name} {sub}", text, min(level + 1, 4))
    return out


def _cli_anchor(command: str) -> str:
    return command.replace(" ", "-")


def cli_commands() -> list[str]:
    """Every command of the parser, as ``"manntk train"``, ``"manntk recipes list"``, ..."""
    from manntk.cli import build_parser

    def walk(parser: argparse.ArgumentParser, name: str) -> Iterator[str]:
        yield name
        for sub, _, subparser in _subcommands(parser):
            yield from walk(subparser, f"{name} {sub}")

    return list(walk(build_parser(), "manntk"))


def cli_reference() -> str:
    """The CLI reference page."""
    from manntk.cli import build_parser

    parser = build_parser()
    out = [
        "# Command line",
        "",
        "<!-- Generated by docs/hooks/manntk_docs.py from manntk.cli.build_parser() at build time: do not edit. -->",
        "",
        "The `manntk` command (also `python -m manntk`). This page is generated from the",
        "argument parser when the site is built, so it lists exactly the commands and options",
        "of this version. Exit status: 0 on success, 2 for a bad command line or recipe (every",
        "problem is printed), 1 when a run, a data file or a checkpoint fails (and for",
        "`manntk plugins` when a plugin failed to load).",
        "",
    ]
    sections = _command_section(parser, "manntk", parser.description or "", 2)
    # give every command heading a stable id
    for index, line in enumerate(sections):
        match = re.fullmatch(r"(#+) `(manntk[\w -]*)`", line)
        if match:
            sections[index] = f"{line} {{#{_cli_anchor(match.group(2))}}}"
    return "\n".join(out + sections) + "\n"


# --------------------------------------------------------------------------- fragments


def data_files_table() -> str:
    """The data files manntk knows: folder, size, SHA-256 and where they come from."""
    from manntk.data.files import KNOWN_FILES

    lines = [
        "| file | folder | size (bytes) | SHA-256 | obtained from |",
        "|---|---|---:|---|---|",
    ]
    for file in KNOWN_FILES.values():
        size = f"{file.size:,}" if file.size is not None else "(not checked)"
        digest = f"`{file.sha256}`" if file.sha256 else "(not checked)"
        if file.archive is not None:
            source = f"extracted from `{file.archive.name}` (`{file.member}`)"
        elif file.urls:
            source = "<br>".join(f"<{url}>" for url in file.urls)
        else:
            source = "by hand: " + plain(file.note)
        name = f"`{file.name}`"
        if file.gzipped:
            name += f" or `{file.names[1]}`"
            size += " (decompressed)"
        lines.append(f"| {name} | `{file.dataset}/` | {size} | {digest} | {source} |")
    return "\n".join(lines)


#: ``<!-- manntk:NAME -->`` in a page is replaced by the output of FRAGMENTS[NAME]().
FRAGMENTS = {
    "data-files": "data_files_table",
    "paper-models": "paper_models_table",
}


def paper_models_table() -> str:
    """The paper's models as compositions, with their copy-task recipes (``manntk.models``)."""
    from manntk.models import composition_table

    return composition_table(recipes=True)

_FRAGMENT = re.compile(r"^<!-- manntk:([\w-]+) -->$", flags=re.M)


def expand_fragments(markdown: str) -> str:
    """Replace every ``<!-- manntk:NAME -->`` line by its generated Markdown."""
    module = sys.modules[__name__]

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in FRAGMENTS:
            raise KeyError(f"unknown generated fragment {name!r}; known: {', '.join(FRAGMENTS)}")
        return getattr(module, FRAGMENTS[name])()

    return _FRAGMENT.sub(replace, markdown)


# --------------------------------------------------------------------------- MkDocs


def generated_pages() -> dict[str, str]:
    """Every generated page: path inside docs/ -> Markdown."""
    module = sys.modules[__name__]
    return {path: getattr(module, function)() for path, function in GENERATED.items()}


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site (MkDocs event)."""
    from mkdocs.structure.files import File

    for path, content in generated_pages().items():
        if hasattr(File, "generated"):  # MkDocs >= 1.6
            files.append(File.generated(config, path, content=content))
        else:  # MkDocs 1.5: write the page to a private folder
            folder = Path(config["site_dir"]).parent / ".generated-docs"
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
            files.append(File(path, str(folder), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand the generated fragments of a page (MkDocs event)."""
    return expand_fragments(markdown)


# --------------------------------------------------------------------------- equations

#: What ``pymdownx.arithmatex`` (generic mode) writes for inline and display equations.
ARITHMATEX = re.compile(
    r'<span class="arithmatex">\\\((?P<inline>.*?)\\\)</span>|<div class="arithmatex">\\\[(?P<display>.*?)\\\]</div>',
    re.DOTALL,
)


#: TeX commands latex2mathml does not know, and what to write instead.
TEX_SUBSTITUTES = {r"\arg": r"\operatorname{arg}"}


def tex_to_mathml(tex: str, display: bool = False) -> str:
    """One equation's TeX (HTML-escaped, as arithmatex leaves it) as a MathML element.

    Raises:
        ValueError: the TeX uses a command the converter left as text (the strict build fails).
    """
    from latex2mathml.converter import convert

    source = html.unescape(tex).strip()
    for command, substitute in TEX_SUBSTITUTES.items():
        source = re.sub(re.escape(command) + r"(?![A-Za-z])", lambda _: substitute, source)
    mathml = convert(source, display="block" if display else "inline")
    unknown = re.findall(r">(\\[A-Za-z]+)<", mathml)
    if unknown:
        raise ValueError(f"latex2mathml does not know {', '.join(sorted(set(unknown)))} in: {source}")
    return mathml


def equations_to_mathml(page_html: str) -> str:
    """Every arithmatex equation of a page replaced by MathML."""

    def replace(match: re.Match[str]) -> str:
        display = match.group("display") is not None
        return tex_to_mathml(match.group("display") if display else match.group("inline"), display)

    return ARITHMATEX.sub(replace, page_html)


def on_page_content(html_text: str, page: Any, config: Any, files: Any) -> str:
    return equations_to_mathml(html_text)
