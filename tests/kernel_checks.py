"""The comparison every chunk-kernel test makes: the kernel path against the plain path."""

from __future__ import annotations

import torch


def compositions(hidden: int) -> dict[str, dict]:
    """The model mapping's parts of each chunk kernel's composition (ARMIN; AwTA and TARDIS,
    the TARDIS-addressing kernel; NTM-style), with cells of ``hidden`` units."""
    return {
        "armin": {"cell": {"name": "armin", "hidden_size": hidden}, "addressing": {"name": "auto"}, "write": {"name": "overwrite"}},
        "awta": {"cell": {"name": "armin", "hidden_size": hidden}, "addressing": {"name": "tardis"}, "write": {"name": "overwrite"}},
        "tardis": {"cell": {"name": "tardis", "hidden_size": hidden}, "addressing": {"name": "tardis"}, "write": {"name": "overwrite"}},
        "ntm": {"cell": {"name": "lstm", "hidden_size": hidden}, "addressing": {"name": "ntm"}, "write": {"name": "erase_add"}},
    }


def assert_kernel_matches(plain: dict, kernel: dict, dtype: torch.dtype, steps: int, depth: int) -> None:
    """Each value of the kernel path (outputs, states, gradients) equal to the plain path's
    up to float rounding: ``8 eps`` per step over ``steps`` steps, for sums of ``depth``
    terms, relative to the value's magnitude (at least 1). A value that is ``None`` (no
    gradient) must be ``None`` on both paths.
    """
    eps = torch.finfo(dtype).eps
    assert plain.keys() == kernel.keys()
    for name, expected in plain.items():
        if expected is None or kernel[name] is None:
            assert expected is None and kernel[name] is None, f"{name}: a gradient on one path only"
            continue
        scale = max(expected.abs().max().item(), 1.0)
        bound = 8 * eps * steps * depth * scale
        difference = (kernel[name] - expected).abs().max().item()
        assert difference <= bound, f"{name}: kernel and plain path differ by {difference:.3g} (bound {bound:.3g})"
