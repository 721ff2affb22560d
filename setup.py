"""Build hook: the wheel carries the repository's ``recipes/`` as ``manntk/recipes/``, so that
``manntk recipes list`` and ``manntk train NAME`` work after a plain ``pip install``. The
recipes stay in one tree, ``recipes/``; they are copied only into the build. An editable
install reads them from the checkout instead (``manntk.recipe.recipe_folders``). Everything
else about the package is in ``pyproject.toml``."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RECIPES = Path(__file__).resolve().parent / "recipes"


class BuildWithRecipes(build_py):
    """``build_py`` that also copies ``recipes/**/*.yaml`` to ``manntk/recipes/`` in the build."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for source, target in self._recipe_files():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [str(target) for _, target in self._recipe_files()]

    def _recipe_files(self) -> list[tuple[Path, Path]]:
        return [(path, Path(self.build_lib) / "manntk" / "recipes" / path.relative_to(RECIPES)) for path in sorted(RECIPES.rglob("*.yaml"))]


setup(cmdclass={"build_py": BuildWithRecipes})
