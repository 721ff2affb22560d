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


def cpu_identity() -> str | None:
    """The first CPU's vendor, family and model numbers (``AuthenticAMD family 26 model 2``),
    which tell CPU generations apart where the model name does not (a VM's ``AMD EPYC``);
    ``None`` where ``/proc/cpuinfo`` lacks them."""
    vendor, family, model = cpu_info("vendor_id"), cpu_info("cpu family"), cpu_info("model")
    if vendor is None or family is None or model is None:
        return None
    return f"{vendor} family {family} model {model}"
