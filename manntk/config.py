"""Structuring recipe mappings into attrs configs, with every problem reported at once.

A plugin node (``cell:``, ``addressing:``, ``write:``) is tagged by ``name:``; its other
keys are structured by the config class that the plugin registered under that name, so
swapping ``name`` swaps the part and its options together.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Callable, ClassVar, Iterable, Literal, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from manntk.registry import Registry, RegistryError

T = TypeVar("T")


class UsageError(ValueError):
    """A command line that cannot work as given (``manntk`` prints it and exits with status 2)."""


class ConfigError(ValueError):
    """One or more problems in a configuration mapping, each with its path.

    Attributes:
        errors: one line per problem, ``"<message> @ <path>"``.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {error}" for error in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) in the configuration:\n{lines}")


@attrs.frozen
class PartSpec:
    """A plugin node: the registered part's ``name`` and its structured ``config``.

    ``config`` is an instance of the plugin's config class, or ``None`` for that
    class's defaults (or for a part that takes no options).
    """

    name: str
    config: Any = None
    kind: ClassVar[str] = ""


@attrs.frozen
class CellSpec(PartSpec):
    """A ``cell:`` node."""

    kind: ClassVar[str] = "cells"


@attrs.frozen
class AddressingSpec(PartSpec):
    """An ``addressing:`` node."""

    kind: ClassVar[str] = "addressing"


@attrs.frozen
class WriteSpec(PartSpec):
    """A ``write:`` node."""

    kind: ClassVar[str] = "writes"


@attrs.frozen
class TaskSpec(PartSpec):
    """A ``task:`` node."""

    kind: ClassVar[str] = "tasks"


def make_converter(registry: Registry) -> cattrs.Converter:
    """A strict converter: extra keys forbidden, no silent coercion, plugin nodes by name."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook_factory(attrs.has, lambda cls: _attrs_hook(converter, cls))
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook_func(lambda type_: get_origin(type_) is Literal, _strict_literal)
    converter.register_structure_hook_func(_is_fixed_tuple, lambda value, type_: _strict_tuple(converter, value, type_))
    converter.register_structure_hook_func(lambda type_: type_ == EverySetting, lambda value, _: value)  # its validator checks it
    for spec_type in (CellSpec, AddressingSpec, WriteSpec, TaskSpec):
        converter.register_structure_hook(spec_type, _part_hook(converter, registry, spec_type))
    return converter


def structure(mapping: Any, cls: type[T], registry: Registry, path: str = "model") -> T:
    """Structure ``mapping`` into ``cls``, raising one [`ConfigError`][manntk.config.ConfigError] with every problem."""
    try:
        return make_converter(registry).structure(mapping, cls)
    except (ClassValidationError, IterableValidationError, ValueError, TypeError, RegistryError) as error:
        raise ConfigError(cattrs.transform_error(error, path=f"$.{path}" if path else "$", format_exception=_format)) from None


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``word`` (``difflib.get_close_matches``), or ``None``."""
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return close[0] if close else None


def _format(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return unknown_keys_message(exc.extra_fields, exc.cl)
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, RegistryError):
        return str(exc.args[0])
    if isinstance(exc, (ValueError, TypeError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def unknown_keys_message(keys: Iterable[str], cls: type | None) -> str:
    """``unknown key(s): a, b``, and the closest key of ``cls`` to each unknown one:
    ``unknown key(s): hiden_size; did you mean 'hidden_size'?``."""
    keys = sorted(keys)
    known = [field.name for field in attrs.fields(cls) if field.init] if cls is not None and attrs.has(cls) else []
    close = {key: did_you_mean(key, known) for key in keys}
    hints = [f"{match!r}" if len(keys) == 1 else f"{match!r} for {key!r}" for key, match in close.items() if match]
    message = f"unknown key(s): {', '.join(keys)}"
    return f"{message}; did you mean {', '.join(hints)}?" if hints else message


def _attrs_hook(converter: cattrs.Converter, cls: type) -> Callable[[Any, type], Any]:
    """Structure an attrs class collecting every problem of the mapping: unknown keys, each
    field that does not structure, and each field whose validator fails (cattrs alone stops
    at the first failing validator of a class, because attrs runs them in ``__init__``).
    Keys are the field names, as with cattrs' own hooks."""
    fields = [field for field in attrs.fields(attrs.resolve_types(cls)) if field.init]
    known = {field.name for field in fields}

    def hook(mapping: Any, _: type) -> Any:
        if isinstance(mapping, cls):
            return mapping
        if not isinstance(mapping, dict):
            raise TypeError(f"expected a mapping of keys, got {mapping!r}")
        errors: list[Exception] = []
        extra = set(mapping) - known
        if extra:
            errors.append(ForbiddenExtraKeysError(None, cls, {str(key) for key in extra}))
        values, failed = {}, set()
        for field in fields:
            if field.name in mapping:
                try:
                    values[field.alias] = converter.structure(mapping[field.name], field.type)
                except Exception as error:  # collected with its path, reported with the rest
                    errors.append(_at(error, field))
                    failed.add(field.name)
            elif field.default is attrs.NOTHING:
                errors.append(_at(KeyError(field.name), field))
                failed.add(field.name)
        if any(field.name in failed for field in fields if field.default is attrs.NOTHING):
            raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)
        try:
            with attrs.validators.disabled():  # they run one by one below
                instance = cls(**values)
        except (ValueError, TypeError) as error:  # a cross-field check of __attrs_post_init__
            errors.append(error)
        else:  # each validator on its own; a field that did not structure is reported already
            for field in fields:
                if field.validator is not None and field.name not in failed:
                    try:
                        field.validator(instance, field, getattr(instance, field.name))
                    except (ValueError, TypeError) as error:
                        errors.append(_at(error, field))
        if errors:
            raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)
        return instance

    return hook


def _at(error: Exception, field: attrs.Attribute) -> Exception:
    """``error`` tagged with its field, so that its path ends in the field's key."""
    error.__notes__ = [*getattr(error, "__notes__", []), AttributeValidationNote(f"@ attribute {field.name}", field.name, field.type)]
    return error


def _part_hook(converter: cattrs.Converter, registry: Registry, spec_type: type[PartSpec]) -> Any:
    def hook(node: Any, _: type) -> PartSpec:
        if isinstance(node, spec_type):
            return node
        if isinstance(node, str):
            node = {"name": node}
        if not isinstance(node, dict):
            raise TypeError(f"expected a mapping with a 'name' key, got {node!r}")
        if "name" not in node:
            raise ValueError(f"missing 'name'; registered: {', '.join(registry.names(spec_type.kind))}")
        options = {key: value for key, value in node.items() if key != "name"}
        entry = registry.get(spec_type.kind, node["name"])
        if entry.config is None:
            if options:
                raise ValueError(f"{spec_type.kind} {entry.name!r} takes no options, got: {', '.join(map(str, options))}")
            return spec_type(entry.name, None)
        return spec_type(entry.name, converter.structure(options, entry.config))

    return hook


def _strict_literal(value: Any, type_: Any) -> Any:
    choices = get_args(type_)
    if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
        raise ValueError(f"expected one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _is_fixed_tuple(type_: Any) -> bool:
    """``tuple[float, float]`` and the like: a fixed number of values (not ``tuple[int, ...]``)."""
    return get_origin(type_) is tuple and Ellipsis not in get_args(type_)


def _strict_tuple(converter: cattrs.Converter, value: Any, type_: Any) -> tuple:
    """A list of exactly as many values as the tuple type has, each structured by its type
    (a wrong one reported at its index, as cattrs reports the items of a list)."""
    types = get_args(type_)
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != len(types):
        raise TypeError(f"expected a list of {len(types)} values, got {value!r}")
    values, errors = [], []
    for index, (item, item_type) in enumerate(zip(value, types)):
        try:
            values.append(converter.structure(item, item_type))
        except Exception as error:
            error.__notes__ = [*getattr(error, "__notes__", []), IterableValidationNote(f"at index {index}", index, item_type)]
            errors.append(error)
    if errors:
        raise IterableValidationError(f"While structuring {type_!r}", errors, type_)
    return tuple(values)


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        number = _finite_number_in(value)
        if number is not None:
            raise TypeError(
                f"expected a number, got the text {value!r}: YAML reads an exponent as a number only "
                f"with a decimal point and a sign (3.0e-4, 1.0e+5); write {number!r}"
            )
        raise TypeError(f"expected a number, got {value!r}")
    if not math.isfinite(value):  # YAML's .nan and .inf: no setting means anything with them
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _finite_number_in(value: Any) -> float | None:
    """The finite number a text spells (``'3e-4'``, which YAML leaves as text), else ``None``."""
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: an integer > 0 (``None`` passes, for optional fields)."""
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a number >= 0."""
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def probability(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a number in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


EverySetting = int | str | list[int | str]
"""A recipe setting for how often something happens in a run: a step count (``50``), a
duration of wall clock (``"10min"``), or both (``[50, "10min"]``: whichever comes
first). The recipe keeps the value as written; [`parse_every`][manntk.config.parse_every]
reads it."""

DURATION_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
"""The units a duration may end in, and their seconds."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*$")


@attrs.frozen
class Every:
    """How often something happens in a run, read from an
    [`EverySetting`][manntk.config.EverySetting]: at every multiple of ``steps`` optimizer
    steps (0: never), and once ``seconds`` of wall clock have passed since it last happened
    (``None``: never), whichever comes first.

    Attributes:
        steps: the step count (0: not by steps).
        seconds: the duration (``None``: not by time).
    """

    steps: int = 0
    seconds: float | None = None

    def due(self, step: int, since: float) -> bool:
        """Whether it happens after ``step``, ``since`` seconds after it last happened."""
        return bool(self.steps and step % self.steps == 0) or (self.seconds is not None and since >= self.seconds)


def parse_duration(text: str) -> float | None:
    """Seconds of a duration such as ``90s``, ``10min``, ``1.5h`` (units:
    [`DURATION_UNITS`][manntk.config.DURATION_UNITS]); ``None`` when ``text`` is not one."""
    match = _DURATION.match(text)
    if match is None or match.group(2) not in DURATION_UNITS:
        return None
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_every(value: Any, name: str = "every", minimum_steps: int = 0) -> Every:
    """The [`Every`][manntk.config.Every] of a recipe setting: an integer step count (at
    least ``minimum_steps``), a positive duration string, or a list of one of each.

    Raises:
        ValueError: naming the setting ``name`` and the value.
    """
    items = value if isinstance(value, list) and len(value) == 2 else [value]
    steps: list[int] = [item for item in items if isinstance(item, int) and not isinstance(item, bool)]
    texts: list[str] = [item for item in items if isinstance(item, str)]
    seconds = [parse_duration(text) for text in texts]
    if len(steps) + len(texts) != len(items) or len(steps) > 1 or len(texts) > 1 or None in seconds:
        raise ValueError(
            f"{name}: {value!r} is neither a step count nor a duration like 10min "
            f"(units: {', '.join(DURATION_UNITS)}; or both, whichever comes first: [50, 10min])"
        )
    if steps and steps[0] < minimum_steps:
        raise ValueError(f"{name} must be {'positive' if minimum_steps == 1 else f'>= {minimum_steps}'}, got {steps[0]!r}")
    if seconds and not seconds[0]:
        raise ValueError(f"{name}: a duration must be longer than 0, got {texts[0]!r}")
    return Every(steps=steps[0] if steps else 0, seconds=seconds[0] if seconds else None)


def every_setting(minimum_steps: int) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator of an [`EverySetting`][manntk.config.EverySetting] field whose step
    count is at least ``minimum_steps``."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        parse_every(value, attribute.name, minimum_steps)

    return check
