"""What manntk reads about the machine it runs on."""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
"""Linux's description of the CPUs; absent on other systems."""


def cpu_info(field: str) -> str | None:
    """The value of ``field`` (``model name``, ``flags``, ...) for the first CPU in
    ``/proc/cpuinfo``, or ``None`` where the file or the field is missing."""
    try:
        with CPUINFO.open(encoding="utf-8") as file:
            for line in file:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        return None
    return None
