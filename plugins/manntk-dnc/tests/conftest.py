"""Shared pieces of the manntk-dnc tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
try:  # the tests also run from a checkout where the plugin is not installed
    import manntk_dnc  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT))

import manntk
import manntk_dnc.plugin

RECIPE = ROOT / "recipes" / "dnc_copy.yaml"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def dnc_plugins() -> manntk.plugins.Plugins:
    """The built-ins plus this plugin, whether or not its entry point is installed."""
    plugins = manntk.load_plugins(entry_points_too=False, extra=(manntk_dnc.plugin,))
    assert not plugins.failures, plugins.failures
    return plugins


def dnc_mapping(slots: int = 5, width: int = 3, hidden: int = 6, **extra) -> dict:
    """A tiny DNC: lstm controller + dnc_read + dnc."""
    return {
        "input_size": 4, "output_size": 2,
        "cell": {"name": "lstm", "hidden_size": hidden},
        "addressing": {"name": "dnc_read"}, "write": {"name": "dnc"},
        "memory": {"slots": slots, "width": width}, **extra,
    }
