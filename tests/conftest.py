"""Shared helpers for the tests: tiny models of every paper composition."""

from __future__ import annotations

import copy

import pytest
import torch

import manntk
from manntk.models import PAPER_MODELS

#: The paper's models (manntk.models) as (cell, addressing, write) nodes, at tiny sizes.
COMPOSITIONS = {
    key: tuple(model.parts(5, **({"key_size": 3} if model.addressing == "tardis" else {})).values())
    for key, model in PAPER_MODELS.items()
}


def model_mapping(name: str, input_size: int = 3, output_size: int | None = 2, slots: int = 4, width: int = 4, **extra):
    """A recipe-shaped mapping for the composition ``name`` with tiny sizes."""
    cell, addressing, write = copy.deepcopy(COMPOSITIONS[name])
    memory = extra.pop("memory_override", {"slots": slots, "width": width})
    mapping = {"input_size": input_size, "cell": cell, "addressing": addressing, "write": write, "memory": memory, **extra}
    if output_size is not None:
        mapping["output_size"] = output_size
    return mapping


def fused_kernels_error() -> str | None:
    """Why the fused ARMIN cell's C++ kernels cannot be built here, or ``None`` when they can."""
    from manntk.fast.armin_fused import extension

    try:
        extension()
    except RuntimeError as error:
        return str(error)
    return None


def soften(mapping: dict) -> dict:
    """The same mapping with soft reads where the addressing is hard (differentiable everywhere)."""
    mapping = copy.deepcopy(mapping)
    if mapping["addressing"]["name"] in ("auto", "tardis"):
        mapping["addressing"]["hard"] = False
    return mapping


@pytest.fixture(params=sorted(COMPOSITIONS))
def composition(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build(mapping, dtype=torch.float32):
    return manntk.build_model(mapping).to(dtype)


@pytest.fixture(autouse=True)
def _restore_subnormals():
    """The trainer flushes subnormal floats process-wide (``train.flush_denormal``); undo it
    after each test so that later tests (hypothesis's float strategies) see IEEE floats."""
    yield
    torch.set_flush_denormal(False)
