"""The study file: a base recipe, named arms, seeds, a budget, a baseline and a metric.

```yaml
name: armin-copy-ablations
description: what the study compares
base: ../recipes/armin_copy.yaml          # relative to the study file
seeds: 10                                 # 0..9, or a list: [3, 7, 11]
budget: {steps: 20000}                    # per run: steps and/or minutes
baseline: armin                           # the arm every other arm is compared with
metric: bce                               # default: the task's headline metric
overrides: [train.eval_every=500]         # applied to every arm
arms:
  armin: {}                               # the base recipe as it is
  hard-reads: {overrides: [model.addressing.hard=true]}
  lstm: {recipe: ../recipes/algorithmic/copy/lstm.yaml}
  lr:                                     # a grid: one arm per combination
    grid: {train.optimizer.lr: [1.0e-3, 3.0e-4]}
```

``grid`` expands to every combination of its values (arms ``lr[train.optimizer.lr=0.001]``,
...); ``zip`` pairs its lists element by element. Every (arm, seed) is an ordinary run
directory, ``OUT/<arm>/seed-<S>``, trained with ``train.seed=S`` (which also seeds the
data of generated tasks).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Sequence

import attrs
import yaml

from manntk.config import ConfigError, did_you_mean


@attrs.frozen
class Arm:
    """One arm: a recipe and the overrides that make it.

    Attributes:
        name: the arm's name (its folder under the study directory).
        recipe: the recipe file.
        overrides: ``key=value`` overrides, the study's first, then the arm's.
    """

    name: str
    recipe: Path
    overrides: tuple[str, ...] = ()


@attrs.frozen
class Study:
    """A loaded study file.

    Attributes:
        name: the study's name.
        path: the study file.
        arms: the arms, grids expanded, in file order.
        seeds: the seeds every arm runs.
        baseline: the arm the others are compared with.
        budget: ``train.steps`` / ``train.max_minutes`` overrides of every run.
        metric: the metric reported (``None``: the task's headline metric).
        higher_is_better: the metric's direction (``None``: the task's).
        description: what the study compares.
    """

    name: str
    path: Path
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    baseline: str
    budget: tuple[str, ...] = ()
    metric: str | None = None
    higher_is_better: bool | None = None
    description: str = ""

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def with_seeds(self, seeds: int | Sequence[int]) -> "Study":
        """The same study with other seeds (a count ``n`` means ``0..n-1``)."""
        return attrs.evolve(self, seeds=_seeds(seeds, "--seeds", []))


KEYS = {"name", "description", "base", "seeds", "budget", "baseline", "metric", "higher_is_better", "overrides", "arms"}
ARM_KEYS = {"recipe", "overrides", "grid", "zip"}


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every problem is reported at once, with its path.

    Raises:
        manntk.config.ConfigError: the problems, e.g. ``unknown key(s): seed @ $.arms.lstm``.
    """
    from manntk.recipe import read_yaml

    path = Path(path)
    data = read_yaml(path)
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"a study file holds a mapping, got {type(data).__name__} @ $ ({path})"])
    unknown = set(data) - KEYS
    if unknown:
        problems.append(f"unknown key(s): {', '.join(sorted(unknown))}; a study has: {', '.join(sorted(KEYS))} @ $")
    folder = path.parent
    base = data.get("base")
    base_path = _recipe_path(folder, base, "$.base", problems) if base is not None else None
    common = _overrides(data.get("overrides", []), "$.overrides", problems)
    arms: list[Arm] = []
    raw_arms = data.get("arms")
    if not isinstance(raw_arms, dict) or not raw_arms:
        problems.append("arms: a mapping of arm names to {recipe, overrides, grid, zip}, at least one @ $.arms")
        raw_arms = {}
    for name, node in raw_arms.items():
        where = f"$.arms.{name}"
        node = {} if node is None else node
        if not isinstance(node, dict):
            problems.append(f"an arm is a mapping of {', '.join(sorted(ARM_KEYS))}, got {node!r} @ {where}")
            continue
        if set(node) - ARM_KEYS:
            problems.append(f"unknown key(s): {', '.join(sorted(set(node) - ARM_KEYS))}; an arm has: {', '.join(sorted(ARM_KEYS))} @ {where}")
        recipe = _recipe_path(folder, node["recipe"], f"{where}.recipe", problems) if "recipe" in node else base_path
        if recipe is None:
            problems.append(f"no recipe: give the study a base or the arm a recipe @ {where}")
            continue
        overrides = common + _overrides(node.get("overrides", []), f"{where}.overrides", problems)
        for suffix, extra in _expand(node, where, problems):
            arms.append(Arm(f"{name}{suffix}", recipe, tuple(overrides + extra)))
    names = [arm.name for arm in arms]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"arm {name!r} is defined twice @ $.arms")
    for name in names:
        if not re.fullmatch(r"[\w.\-\[\]=,+]+", name):
            problems.append(f"arm name {name!r}: letters, digits and _ . - [ ] = , + only (it names a folder) @ $.arms")
    baseline = data.get("baseline", names[0] if names else "")
    if names and baseline not in names:
        problems.append(f"baseline {baseline!r} is not an arm; arms: {', '.join(names)} @ $.baseline")
    seeds = _seeds(data.get("seeds", 5), "$.seeds", problems)
    budget = _budget(data.get("budget"), problems)
    metric = data.get("metric")
    if metric is not None and not isinstance(metric, str):
        problems.append(f"metric: a metric name such as bce, bpc or accuracy, got {metric!r} @ $.metric")
    direction = data.get("higher_is_better")
    if direction is not None and not isinstance(direction, bool):
        problems.append(f"higher_is_better: true or false, got {direction!r} @ $.higher_is_better")
    if problems:
        raise ConfigError([f"{problem} ({path})" for problem in problems])
    return Study(
        name=str(data.get("name") or path.stem), path=path, arms=tuple(arms), seeds=seeds, baseline=baseline,
        budget=budget, metric=metric, higher_is_better=direction, description=str(data.get("description", "")),
    )


def _recipe_path(folder: Path, value: Any, where: str, problems: list[str]) -> Path | None:
    if not isinstance(value, str):
        problems.append(f"a recipe file, got {value!r} @ {where}")
        return None
    path = (folder / value).resolve()
    if not path.is_file():
        problems.append(f"recipe file {path} does not exist @ {where}")
        return None
    return path


def _overrides(value: Any, where: str, problems: list[str]) -> list[str]:
    if isinstance(value, dict):  # {key: value} reads better for many overrides
        return [f"{key}={_yaml(item)}" for key, item in value.items()]
    if not isinstance(value, list) or not all(isinstance(item, str) and ("=" in item or item.startswith("~")) for item in value):
        problems.append(f"overrides: a list of key=value (or ~key, to remove a key) strings or a mapping, got {value!r} @ {where}")
        return []
    return list(value)


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _expand(node: dict[str, Any], where: str, problems: list[str]) -> list[tuple[str, list[str]]]:
    """``("[key=value,...]", overrides)`` per arm that ``grid`` or ``zip`` makes; ``("", [])`` without."""
    grid, zipped = node.get("grid"), node.get("zip")
    if grid is None and zipped is None:
        return [("", [])]
    if grid is not None and zipped is not None:
        problems.append(f"an arm takes grid or zip, not both @ {where}")
        return []
    table = grid if grid is not None else zipped
    kind = "grid" if grid is not None else "zip"
    if not isinstance(table, dict) or not table or not all(isinstance(v, list) and v for v in table.values()):
        problems.append(f"{kind}: a mapping of keys to non-empty lists of values @ {where}.{kind}")
        return []
    keys = list(table)
    if kind == "zip":
        lengths = {len(values) for values in table.values()}
        if len(lengths) > 1:
            problems.append(f"zip: every list must have the same length, got {sorted(lengths)} @ {where}.zip")
            return []
        rows = list(zip(*table.values()))
    else:
        rows = list(itertools.product(*table.values()))
    expanded = []
    for row in rows:
        pairs = [f"{key}={_yaml(value)}" for key, value in zip(keys, row)]
        expanded.append((f"[{','.join(pairs)}]", pairs))
    return expanded


def _seeds(value: Any, where: str, problems: list[str]) -> tuple[int, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        problems.append(f"seeds: a count or a list of integers, got {value!r} @ {where}")
        return ()
    if isinstance(value, int):
        if value < 1:
            problems.append(f"seeds: at least 1, got {value} @ {where}")
            return ()
        return tuple(range(value))
    if not value or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in value) or len(set(value)) != len(value):
        problems.append(f"seeds: a non-empty list of distinct integers, got {value!r} @ {where}")
        return ()
    return tuple(value)


def _budget(value: Any, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or set(value) - {"steps", "minutes"}:
        problems.append(f"budget: {{steps: N}} and/or {{minutes: M}}, got {value!r} @ $.budget")
        return ()
    budget = []
    if "steps" in value:
        budget.append(f"train.steps={int(value['steps'])}")
    if "minutes" in value:
        budget.append(f"train.max_minutes={float(value['minutes'])}")
    return tuple(budget)


def check_arms(study: str, names: Sequence[str], arms: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first of ``arms`` that is not among study ``study``'s
    arm ``names`` (with the nearest name, and every name)."""
    unknown = [name for name in arms if name not in names]
    if unknown:
        nearest = did_you_mean(unknown[0], names)
        hint = f" (did you mean {nearest!r}?)" if nearest else ""
        raise ValueError(f"study {study!r} has no arm {', '.join(map(repr, unknown))}{hint}; its arms: {', '.join(names)}")
