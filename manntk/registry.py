"""Named factories for each kind of part, filled by plugins through the hooks."""

from __future__ import annotations

import difflib
from typing import Any, Callable

import attrs

KINDS = ("cells", "addressing", "writes", "tasks")


class RegistryError(LookupError):
    """A name registered twice, or a name that nobody registered."""


def describe_failure(error: BaseException) -> str:
    """What went wrong in a plugin, in one line: the error's type and the last line of its
    message (a long message ends with what matters; ``manntk --debug`` shows all of it), and
    ``sys.exit()`` named as such."""
    if isinstance(error, SystemExit):
        return f"SystemExit: the plugin called sys.exit({error.code!r})"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__


@attrs.frozen
class Entry:
    """One registered part: how to configure it and how to build it.

    Attributes:
        name: the name recipes use (``name: armin``).
        factory: ``factory(config, context) -> nn.Module``.
        config: attrs class that structures the recipe node, or ``None`` for no options.
        plugin: name of the plugin that registered it.
        origin: where that plugin comes from: its installed distribution and version
            (``manntk-dnc 0.1.0``), else its module (``module my_parts``).
    """

    name: str
    factory: Callable[..., Any]
    config: type | None
    plugin: str
    origin: str = ""


class PartError(ValueError):
    """A registered part's factory failed while a model or task was built. The message is
    one line: where in the recipe, the part, the plugin that registered it and where that
    plugin comes from, and the error (its last line); the error itself is the cause, whose
    traceback ``manntk --debug`` shows.

    Attributes:
        entry: the part's registry entry.
    """

    def __init__(self, where: str, kind: str, entry: Entry, error: BaseException) -> None:
        self.entry = entry
        origin = f", {entry.origin}" if entry.origin else ""
        super().__init__(f"{where} ({singular(kind)} {entry.name!r} of plugin {entry.plugin!r}{origin}): {describe_failure(error)}")


class Registry:
    """Parts by kind and name.

    A name may be registered once per kind: a second registration raises
    [`RegistryError`][manntk.registry.RegistryError] naming both plugins, so two plugins
    never silently shadow each other.
    """

    def __init__(self, kinds: tuple[str, ...] = KINDS) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in kinds}
        #: Plugins that failed to load, ``"name: error"`` each: an unknown name is named
        #: beside them, since the part may be one of theirs.
        self.failed_plugins: list[str] = []

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of part this registry holds."""
        return tuple(self._entries)

    def add(self, kind: str, entry: Entry) -> None:
        """Add ``entry`` under ``kind``; refuse a name that is already taken."""
        table = self._table(kind)
        if not isinstance(entry.name, str) or not entry.name:
            raise RegistryError(f"plugin {entry.plugin!r} registered a {kind} part with an invalid name {entry.name!r}")
        if entry.name in table:
            first = table[entry.name].plugin
            raise RegistryError(
                f"{kind} part {entry.name!r} is registered twice: by plugin {first!r} and by plugin {entry.plugin!r}"
            )
        table[entry.name] = entry

    def remove(self, kind: str, name: str) -> None:
        """Forget ``name`` of ``kind`` (used to roll back a plugin that failed half-way)."""
        self._table(kind).pop(name, None)

    def get(self, kind: str, name: str) -> Entry:
        """The entry ``name`` of ``kind``; an unknown name lists the choices and a close match."""
        table = self._table(kind)
        try:
            return table[name]
        except (KeyError, TypeError):
            message = unknown_name_message(kind, name, table)
            if self.failed_plugins:
                message += f"; plugin(s) that failed to load, one of which may provide it: {'; '.join(self.failed_plugins)} (manntk plugins tells more)"
            raise RegistryError(message) from None

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, sorted."""
        return sorted(self._table(kind))

    def entries(self, kind: str) -> list[Entry]:
        """Registered entries of ``kind``, sorted by name."""
        table = self._table(kind)
        return [table[name] for name in sorted(table)]

    def _table(self, kind: str) -> dict[str, Entry]:
        try:
            return self._entries[kind]
        except KeyError:
            raise RegistryError(f"unknown kind of part {kind!r}; kinds: {', '.join(self._entries)}") from None


def unknown_name_message(kind: str, name: object, choices: dict[str, Any] | list[str]) -> str:
    """The error text for an unknown ``name``: the registered choices and a close match."""
    names = sorted(choices)
    message = f"unknown {singular(kind)} {name!r}; registered: {', '.join(names) or '(none)'}"
    close = difflib.get_close_matches(str(name), names, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message


def singular(kind: str) -> str:
    """One part of ``kind``: ``cell`` of ``cells``, ``addressing`` of ``addressing``."""
    return kind[:-1] if kind.endswith("s") else kind
