"""The documentation stays true to the code.

- Every hook of ``manntk.hookspecs`` is documented in the plugin guide with its exact
  signature, and the guide documents no hook that does not exist.
- Every code block marked ``<!-- runnable -->`` runs: Python blocks in one namespace per
  page, in order; shell blocks with bash, from the repository root, offline.
- The plugin tutorial works as written: its files (code blocks titled with a file name)
  are written out, installed the way pip would install them (a ``.dist-info`` with the
  entry point), its own tests run, and a model is built and run from its recipe.
- The generated pages (recipe and CLI references, data-file table) cover everything and
  leave no key without a meaning; every page is in the navigation.
- ``mkdocs build --strict`` passes (slow; also run by ``.ci/run``).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import manntk
import manntk.cli
import manntk.plugins
from manntk import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNNABLE_MARK = "<!-- runnable -->"


# --------------------------------------------------------------------------- helpers


def load_docs_hooks():
    """The build-time generators (docs/hooks/manntk_docs.py), imported without MkDocs."""
    name = "manntk_docs_hooks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / "manntk_docs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pages() -> list[Path]:
    """The hand-written Markdown pages."""
    return sorted(path for path in DOCS.rglob("*.md") if "hooks" not in path.relative_to(DOCS).parts)


@dataclass
class Block:
    """A fenced code block of a page."""

    page: Path
    line: int
    language: str
    options: dict[str, str]
    code: str
    runnable: bool = False

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class _Open:
    indent: str
    fence: str
    line: int
    info: str
    runnable: bool
    lines: list[str] = field(default_factory=list)


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, each marked runnable when a runnable comment precedes it."""
    blocks, current, pending = [], None, None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if current is not None:
            stripped = line[len(current.indent):] if line.startswith(current.indent) else line.lstrip()
            if stripped.rstrip() == current.fence or (stripped.startswith(current.fence[0] * len(current.fence)) and not stripped.strip(current.fence[0]).strip()):
                info = current.info.strip().lstrip("{").rstrip("}").strip()
                language = info.split()[0].lstrip(".") if info else ""
                options = dict(re.findall(r'(\w+)="([^"]*)"', info))
                blocks.append(Block(page, current.line, language, options, "\n".join(current.lines) + "\n", current.runnable))
                current = None
            else:
                current.lines.append(stripped)
            continue
        if line.strip() == RUNNABLE_MARK:
            pending = number
            continue
        match = _FENCE.match(line)
        if match:
            current = _Open(match["indent"], match["fence"], number, match["info"], pending is not None)
            pending = None
        elif line.strip() and pending is not None:
            raise AssertionError(f"{page.relative_to(ROOT)}:{pending}: {RUNNABLE_MARK} is not followed by a code block")
    assert current is None, f"{page.relative_to(ROOT)}:{current.line}: unclosed code block"
    assert pending is None, f"{page.relative_to(ROOT)}:{pending}: {RUNNABLE_MARK} is not followed by a code block"
    return blocks


def _annotation(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def hook_signature(function) -> str:
    """``def name(param: Annotation, ...) -> Return:`` as written in the source."""
    signature = inspect.signature(function)
    parameters = []
    for parameter in signature.parameters.values():
        text = parameter.name
        if parameter.annotation is not inspect.Parameter.empty:
            text += f": {_annotation(parameter.annotation)}"
            if parameter.default is not inspect.Parameter.empty:
                text += f" = {parameter.default!r}"
        elif parameter.default is not inspect.Parameter.empty:
            text += f"={parameter.default!r}"
        parameters.append(text)
    result = ""
    if signature.return_annotation is not inspect.Signature.empty:
        result = f" -> {_annotation(signature.return_annotation)}"
    return f"def {function.__name__}({', '.join(parameters)}){result}:"


def hooks() -> dict[str, object]:
    """The hook specifications of manntk, by name."""
    return {
        name: function
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and getattr(function, "manntk_spec", None) is not None
    }


# --------------------------------------------------------------------------- hooks


def test_every_hook_is_documented_with_its_exact_signature():
    assert hooks(), "no hook specifications found"
    guide = DOCS / "plugins" / "index.md"
    documented = "\n".join(block.code for block in code_blocks(guide) if block.language == "python")
    for name, function in hooks().items():
        expected = f"@hookspec\n{hook_signature(function)}"
        assert expected in documented, f"{guide.relative_to(ROOT)} does not document hook {name} as\n{expected}"


def test_the_docs_document_no_hook_that_does_not_exist():
    specs = hooks()
    for page in pages():
        for block in code_blocks(page):
            for match in re.finditer(r"@hookspec\n(def (\w+)\(.*)", block.code):
                line, name = match.group(1).strip(), match.group(2)
                assert name in specs, f"{block.where}: documents hook {name}, which manntk.hookspecs does not define"
                assert line == hook_signature(specs[name]), f"{block.where}: {line!r} differs from {hook_signature(specs[name])!r}"


# --------------------------------------------------------------------------- runnable blocks


def runnable_pages() -> list[Path]:
    return [page for page in pages() if any(block.runnable for block in code_blocks(page))]


def test_there_are_runnable_blocks():
    blocks = [block for page in pages() for block in code_blocks(page) if block.runnable]
    assert len(blocks) >= 10
    assert {block.language for block in blocks} <= {"python", "bash"}, "runnable blocks are python or bash"


@pytest.mark.parametrize("page", runnable_pages(), ids=lambda page: str(page.relative_to(DOCS)))
def test_runnable_blocks_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MANNTK_OFFLINE", "1")
    monkeypatch.setenv("MANNTK_CACHE", str(tmp_path / "cache"))
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for block in code_blocks(page):
        if not block.runnable:
            continue
        if block.language == "python":
            try:
                exec(compile(block.code, block.where, "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{block.where}: the runnable block failed: {type(error).__name__}: {error}") from error
        elif block.language == "bash":
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=ROOT, env=environment,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{block.where}: exit status {done.returncode}\n{done.stdout}\n{done.stderr}"
        else:
            raise AssertionError(f"{block.where}: cannot run a {block.language!r} block")


# --------------------------------------------------------------------------- the tutorial

TUTORIAL = DOCS / "plugins" / "tutorial.md"


def tutorial_files() -> dict[str, str]:
    """The files of the tutorial: blocks titled with a path, blocks of one file concatenated in order."""
    files: dict[str, list[str]] = {}
    for block in code_blocks(TUTORIAL):
        title = block.options.get("title")
        if title:
            files.setdefault(title, []).append(block.code.strip("\n"))
    return {path: "\n\n\n".join(parts) + "\n" for path, parts in files.items()}


def entry_points_of(pyproject: str) -> dict[str, str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(pyproject)["project"]["entry-points"]["manntk"]


def install_like_pip(project: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    """A ``.dist-info`` beside the package, as ``pip install`` writes into site-packages."""
    info = project / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[manntk]\n{lines}")


@pytest.fixture
def tutorial_plugin(tmp_path, monkeypatch):
    """The tutorial's package written out and installed; yields its folder."""
    project = tmp_path / "manntk-roundrobin"
    for path, text in tutorial_files().items():
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli")
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    install_like_pip(project, metadata["name"], metadata["version"], entry_points_of((project / "pyproject.toml").read_text()))
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setattr(manntk.plugins, "_default", None)  # the process-wide plugins load again, with it
    monkeypatch.setenv("MANNTK_OFFLINE", "1")
    yield project
    for module in [name for name in sys.modules if name == "manntk_roundrobin" or name.startswith("manntk_roundrobin.")]:
        del sys.modules[module]


def test_the_tutorial_has_every_file():
    assert set(tutorial_files()) == {
        "pyproject.toml",
        "manntk_roundrobin/__init__.py",
        "manntk_roundrobin/plugin.py",
        "tests/test_round_robin.py",
        "recipes/copy_round_robin.yaml",
    }


def test_the_tutorial_plugin_installs_and_registers(tutorial_plugin, capsys):
    plugins = manntk.load_plugins()
    assert "roundrobin" not in [failure.name for failure in plugins.failures], plugins.failures
    assert plugins.registry.get("addressing", "round_robin").plugin == "roundrobin"
    assert manntk.cli.main(["plugins"]) in (0, 1)
    assert re.search(r"round_robin\s+from roundrobin", capsys.readouterr().out)


def test_the_tutorial_tests_pass(tutorial_plugin):
    path = tutorial_plugin / "tests" / "test_round_robin.py"
    spec = importlib.util.spec_from_file_location("tutorial_test_round_robin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [function for name, function in vars(module).items() if name.startswith("test_") and callable(function)]
    assert len(tests) >= 4
    for test in tests:
        test()


def test_the_tutorial_recipe_builds_trains_and_validates(tutorial_plugin):
    import torch

    from manntk.build import build_experiment
    from manntk.config import ConfigError
    from manntk.recipe import load_recipe

    recipe_path = tutorial_plugin / "recipes" / "copy_round_robin.yaml"
    recipe = load_recipe(recipe_path)
    assert recipe.model.addressing.name == "round_robin"
    task, model = build_experiment(recipe)
    batch = task.train_batch(0, 2)
    outputs, _ = model(batch.inputs)
    loss = task.score(outputs, batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert manntk.cli.main(["train", str(recipe_path), "--dry-run"]) == 0
    # The messages the tutorial quotes:
    with pytest.raises(ConfigError, match=re.escape("stride must be positive, got 0 @ $.model.addressing")):
        load_recipe(recipe_path, ["model.addressing.stride=0"])
    with pytest.raises(ValueError, match=re.escape(
        "model.addressing (addressing 'round_robin' of plugin 'roundrobin', manntk-roundrobin 0.1.0): "
        "ValueError: stride 9 is a multiple of memory.slots (9): every step would read the same slot"
    )):
        build_experiment(load_recipe(recipe_path, ["model.addressing.stride=9"]))


# --------------------------------------------------------------------------- other claims


def titled_yaml_blocks(prefix: str) -> list[Block]:
    """YAML blocks titled with a repository path under ``prefix`` (outside the tutorial)."""
    return [
        block
        for page in pages()
        if page != TUTORIAL
        for block in code_blocks(page)
        if block.language == "yaml" and block.options.get("title", "").startswith(prefix)
    ]


def test_recipes_shown_in_the_docs_are_valid():
    from manntk.recipe import load_mapping, merge, recipe_from_mapping

    blocks = titled_yaml_blocks("recipes/")
    assert blocks
    for block in blocks:
        mapping = yaml.safe_load(block.code)
        parent = mapping.pop("extends", None)
        if parent is not None:  # resolved as if the file were at its title's path
            mapping = merge(load_mapping(ROOT / Path(block.options["title"]).parent / parent), mapping)
        recipe_from_mapping(mapping, source=block.where)


def test_study_files_shown_in_the_docs_are_valid(tmp_path):
    from manntk.recipe import load_recipe
    from manntk.study import load_study

    blocks = titled_yaml_blocks("studies/")
    assert blocks
    (tmp_path / "recipes").symlink_to(ROOT / "recipes", target_is_directory=True)
    for block in blocks:
        included = re.fullmatch(r'--8<-- "(.+)"', block.code.strip())
        if included:  # the shipped file itself, included at build time
            path = ROOT / included.group(1)
        else:
            path = tmp_path / block.options["title"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code, encoding="utf-8")
        study = load_study(path)
        for arm in study.arms:
            load_recipe(arm.recipe, [*arm.overrides, *study.budget])


def test_every_contract_check_is_described():
    import manntk.testing as testing

    page = (DOCS / "plugins" / "testing.md").read_text(encoding="utf-8")
    reports = [
        testing.check_cell("armin", {"hidden_size": 5}),
        testing.check_addressing("auto"),
        testing.check_write("overwrite"),
        testing.check_model({
            "input_size": 3, "output_size": 2, "cell": {"name": "lstm", "hidden_size": 4},
            "addressing": {"name": "ntm"}, "write": {"name": "erase_add"}, "memory": {"slots": 3, "width": 4},
        }),
    ]
    names = {name for report in reports for name in (*report.checks, *report.skipped)}
    missing = sorted(name for name in names if f"| `{name}` |" not in page and f"`{name}`, `" not in page and f", `{name}` |" not in page)
    assert not missing, f"checks of manntk.testing not described in docs/plugins/testing.md: {missing}"


# --------------------------------------------------------------------------- generated pages


def test_the_recipe_reference_gives_every_key_a_meaning():
    docs = load_docs_hooks()
    page = docs.recipe_reference()
    missing = [line for line in page.splitlines() if docs.UNDOCUMENTED in line]
    assert not missing, "keys without a description in their class docstring:\n" + "\n".join(missing)
    registry = manntk.load_plugins().registry
    for kind in docs.KIND_TITLES:
        for name in registry.names(kind):
            assert f"#### `{name}`" in page, f"{kind} part {name} is missing from the recipe reference"
    for key in ("`model.memory.slots`", "`train.optimizer.lr`", "`train.schedule.milestones`", "`eval.splits`", "`temperature.steps`"):
        assert key in page


def test_the_recipe_reference_reads_docstring_sections():
    docs = load_docs_hooks()
    from manntk.recipe import TrainConfig
    from manntk.tasks.algorithmic.plugin import CopyTaskConfig

    assert docs.field_docs(TrainConfig)["threads"].startswith("CPU threads for PyTorch's intra-op parallelism")
    assert docs.field_docs(CopyTaskConfig)["validation_seed"] == "seed of the validation set."


def test_the_cli_reference_lists_every_command_and_option():
    docs = load_docs_hooks()
    from manntk.cli import build_parser

    page = docs.cli_reference()
    commands = docs.cli_commands()
    assert {"manntk train", "manntk eval", "manntk plugins", "manntk recipes validate"} <= set(commands)
    for command in commands:
        assert f"`{command}` {{#" in page, f"{command} is missing from the CLI reference"

    def options(parser):
        for action in parser._actions:
            if action.option_strings != ["-h", "--help"]:
                yield from action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                for subparser in action.choices.values():
                    yield from options(subparser)

    for option in options(build_parser()):
        assert f"`{option}" in page, f"option {option} is missing from the CLI reference"


def test_the_data_file_table_lists_every_known_file():
    docs = load_docs_hooks()
    from manntk.data.files import KNOWN_FILES

    page = docs.expand_fragments((DOCS / "tasks.md").read_text(encoding="utf-8"))
    assert "<!-- manntk:" not in page
    for file in KNOWN_FILES.values():
        assert f"`{file.name}`" in page
        if file.sha256:
            assert file.sha256 in page


class _IgnoreTags(yaml.SafeLoader):
    pass


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)
_IgnoreTags.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _nav_paths(node) -> list[str]:
    if isinstance(node, str):
        return [node] if node.endswith(".md") else []
    if isinstance(node, list):
        return [path for item in node for path in _nav_paths(item)]
    if isinstance(node, dict):
        return [path for value in node.values() for path in _nav_paths(value)]
    return []


def test_every_page_is_in_the_navigation():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_IgnoreTags)
    nav = set(_nav_paths(config["nav"]))
    written = {str(page.relative_to(DOCS)) for page in pages()}
    generated = set(load_docs_hooks().GENERATED)
    assert written | generated == nav, f"not in nav: {sorted((written | generated) - nav)}; missing files: {sorted(nav - written - generated)}"


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    assert (site / "reference" / "recipe" / "index.html").exists()
    built = {path: path.read_text(encoding="utf-8") for path in site.rglob("*.html")}
    external = {str(path.relative_to(site)): found for path, text in built.items() if (found := EXTERNAL_SCRIPT.findall(text))}
    assert external == {}, "pages load scripts from elsewhere: the site must read the same offline"
    assert sum(text.count("<math") for text in built.values()) > 50  # the equations are there, as MathML
    assert not [path for path, text in built.items() if 'class="arithmatex"' in text], "TeX left unconverted"


#: A ``<script src=...>`` that points off the site.
EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\ssrc=[\"']?(?:https?:)?//[^\s\"'>]+")


def test_the_site_config_loads_no_script_from_elsewhere():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_IgnoreTags)
    scripts = [str(script) for script in config.get("extra_javascript", [])]
    assert not [script for script in scripts if "//" in script], scripts


def test_the_external_script_pattern_finds_cdn_scripts():
    assert EXTERNAL_SCRIPT.search('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    assert EXTERNAL_SCRIPT.search("<script defer src=//example.org/a.js></script>")
    assert not EXTERNAL_SCRIPT.search('<script src="../assets/javascripts/bundle.js"></script>')


def test_equations_become_mathml_at_build_time():
    pytest.importorskip("latex2mathml", reason="the docs extra is not installed (pip install -e '.[docs]')")
    hooks = load_docs_hooks()
    page = '<p><span class="arithmatex">\\(a &lt; \\frac{1}{N}\\)</span></p><div class="arithmatex">\\[\\arg\\max_i w_i\\]</div>'
    converted = hooks.equations_to_mathml(page)
    assert "arithmatex" not in converted
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">' in converted and "<mfrac>" in converted
    assert 'display="block"' in converted and "<mo>arg</mo>" in converted and "&#x0003C;" in converted  # &lt; unescaped, then re-encoded
    with pytest.raises(ValueError, match=r"does not know \\notacommand"):
        hooks.tex_to_mathml("x = \\notacommand y")


def test_every_equation_in_the_docs_converts():
    pytest.importorskip("latex2mathml", reason="the docs extra is not installed (pip install -e '.[docs]')")
    hooks = load_docs_hooks()
    equations = [
        (page, match.group(1) or match.group(2))
        for page in pages()
        for match in re.finditer(r"\$\$(.*?)\$\$|(?<![\\$])\$([^$\n]+?)\$", page.read_text(encoding="utf-8"), re.DOTALL)
    ]
    assert len(equations) > 50
    for page, tex in equations:
        try:
            hooks.tex_to_mathml(tex, display=True)
        except Exception as error:
            pytest.fail(f"{page.relative_to(ROOT)}: {type(error).__name__}: {error}: {tex.strip()[:120]}")


def test_the_readme_table_of_the_paper_models_is_the_one_definition():
    """README.md cannot be generated at build time: it must hold the table that
    ``manntk.models`` makes (the docs' index page includes it as a fragment)."""
    from manntk.models import composition_table

    assert composition_table() in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- manntk:paper-models -->" in (DOCS / "index.md").read_text(encoding="utf-8")
    assert "`recipes/algorithmic/copy/ntm.yaml`" in load_docs_hooks().expand_fragments("<!-- manntk:paper-models -->")

