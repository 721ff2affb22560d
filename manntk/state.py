"""Recurrent state helpers: the state is a nested dict/list of tensors (a pytree).

One helper detaches it between TBPTT chunks, one moves it between devices and dtypes,
and a flat ``"layers.0.cell.h"`` naming lets it be saved with safetensors and loaded back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

State = dict[str, Any]


def map_state(state: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``function`` to every tensor of a nested dict/list, keeping the structure."""
    if isinstance(state, Tensor):
        return function(state)
    if isinstance(state, dict):
        return {key: map_state(value, function) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(value, function) for value in state)
    raise TypeError(f"recurrent state holds a {type(state).__name__}; only tensors, dicts and lists are allowed")


def detach_state(state: State) -> State:
    """The state cut from the autograd graph (truncated backpropagation through time)."""
    return map_state(state, Tensor.detach)


def move_state(state: State, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> State:
    """The state on ``device``; floating-point tensors also cast to ``dtype`` when given."""

    def move(tensor: Tensor) -> Tensor:
        if dtype is not None and tensor.is_floating_point():
            return tensor.to(device=device, dtype=dtype)
        return tensor.to(device=device)

    return map_state(state, move)


def flatten_state(state: State, prefix: str = "") -> dict[str, Tensor]:
    """``{"layers": [{"cell": {"h": t}}]}`` -> ``{"layers.0.cell.h": t}``."""
    flat: dict[str, Tensor] = {}
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for key, value in items:
        name = f"{prefix}{key}"
        if "." in str(key):
            raise ValueError(f"state key {name!r} contains a '.', which flat names use as separator")
        if isinstance(value, Tensor):
            flat[name] = value
        else:
            flat.update(flatten_state(value, prefix=f"{name}."))
    return flat


def unflatten_state(flat: dict[str, Tensor]) -> State:
    """Inverse of [`flatten_state`][manntk.state.flatten_state]; all-digit keys become list positions."""
    root: dict[str, Any] = {}
    for name, tensor in flat.items():
        node = root
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tensor
    return _lists_from_digit_keys(root)


def _lists_from_digit_keys(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _lists_from_digit_keys(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[str(i)] for i in range(len(converted))]
    return converted


def save_state(state: State, path: str | os.PathLike[str]) -> None:
    """Save the state to a safetensors file, through a temporary name and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in flatten_state(state).items()}
    save_file(tensors, str(temporary))
    os.replace(temporary, path)


def load_state(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> State:
    """Load a state saved by [`save_state`][manntk.state.save_state]."""
    from safetensors.torch import load_file

    return unflatten_state(load_file(str(path), device=str(device)))
