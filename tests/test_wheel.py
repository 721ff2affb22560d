"""The wheel carries the recipes: built from a copy of the source, installed apart from the
checkout, it lists them and dry-runs one by name (as after ``pip install manntk``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "manntk", "recipes")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the source (no build files land in the checkout)."""
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                           "-w", str(root / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (built,) = (root / "dist").glob("manntk-*.whl")
    return built


def test_the_wheel_holds_every_recipe_and_the_kernel_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    from manntk.fast.armin_fused import _SOURCES

    kernels = {f"manntk/fast/{path.name}" for path in _SOURCES}  # built on first use: the default ARMIN path
    assert kernels <= names, sorted(kernels - names)
    shipped = {f"manntk/recipes/{path.relative_to(REPO / 'recipes').as_posix()}" for path in (REPO / "recipes").rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)[:5]


def test_the_installed_wheel_lists_and_dry_runs_recipes_by_name(wheel, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"  # no recipes/ here, and not the checkout
    elsewhere.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(site), "MANNTK_OFFLINE": "1"}

    def manntk(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "manntk", *args], cwd=elsewhere, env=environment,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listing = manntk("recipes", "list")
    assert listing.startswith(f"# {site / 'manntk' / 'recipes'}")  # the installed copy, not the checkout's
    assert {"armin_copy", "algorithmic/copy/ntm"} <= {line.split()[0] for line in listing.splitlines()[1:]}
    assert "armin_copy: valid; task copy; model 89,004 parameters" in manntk("train", "armin_copy", "--dry-run")
    assert "copy/ntm: valid" in manntk("train", "copy/ntm", "--dry-run")  # extends: a base recipe, shipped too
    # the ARMIN chunk kernel builds from the installed sources (else: a warning and the plain path)
    done = subprocess.run([sys.executable, "-m", "manntk", "train", "armin_copy", "train.steps=2", "--runs-root", str(elsewhere / "runs")],
                          cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "plain (slower) path" not in done.stderr, done.stderr
