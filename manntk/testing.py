"""Contract checks for plugin authors: does a part keep the promises of [`manntk.parts`][manntk.parts]?

Call these from your plugin's own tests. Each function builds the part the way the
engine does (``factory(config, BuildContext(...))``), drives ``init_state`` ->
``prepare`` -> ``step`` over a few steps in training and in evaluation, and checks:

- shapes of outputs and state, and that the state is a dict (nested dicts and lists
  allowed) of tensors whose floating-point entries follow the requested dtype;
- for an addressing: weights ``[B, N]``, non-negative, summing to one; or, in
  evaluation, an index-only address with indices in range;
- in training: gradients from the outputs reach the inputs and every parameter, and
  are finite;
- that the part keeps no recurrent state on itself (running the same steps twice gives
  the same outputs, ``prepare``/``step`` set no attributes, replaying a step from the
  state recorded before it gives the same result) and that it does not ignore the
  state it is given;
- that a step does not depend on later inputs of the chunk (``prepare`` may only do
  per-step work: statistics over the chunk would make the output depend on chunking);
- that the state survives [`save_state`][manntk.state.save_state] /
  [`load_state`][manntk.state.load_state] with identical next-step outputs;
- CPU/CUDA parity when CUDA is available (otherwise the check is skipped and the
  report says so).

A failed check raises ``AssertionError`` whose message names the part, the check and
what was wrong, e.g. ``addressing 'BadSum': check 'address_weights' failed: train step 0:
the weights do not sum to one (...)``. A passing run returns a
[`CheckReport`][manntk.testing.CheckReport] listing the checks that ran.

Example:
    ```python
    # tests/test_my_plugin.py
    import manntk.testing
    from my_plugin import FirstSlot, FirstSlotConfig


    def test_first_slot_keeps_the_addressing_contract():
        report = manntk.testing.check_addressing(FirstSlot, FirstSlotConfig(slot=1))
        assert "gradients" in report.checks


    def test_a_model_with_it_runs_in_chunks():
        manntk.testing.check_model({
            "input_size": 3, "output_size": 2,
            "cell": {"name": "lstm", "hidden_size": 5},
            "addressing": {"name": "first_slot", "slot": 1},
            "write": {"name": "overwrite"},
            "memory": {"slots": 4, "width": 4},
        })
    ```

Parts may also be given by their registered name, with the options as a mapping:
``check_cell("armin", {"hidden_size": 5})``.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NoReturn, Sequence

import torch
from torch import Tensor, nn

from manntk.context import BuildContext
from manntk.parts import Address
from manntk.plugins import Plugins, default_plugins
from manntk.registry import Registry
from manntk.state import flatten_state, load_state, map_state, save_state

__all__ = ["CheckReport", "check_address", "check_addressing", "check_cell", "check_model", "check_symmetry", "check_write"]

PartFactory = Callable[[Any, BuildContext], nn.Module]
"""``factory(config, context) -> nn.Module``, as registered through the hooks."""

WEIGHT_TOLERANCE = 1e-5
"""Tolerance of "the weights sum to one" and "the weights are non-negative"."""

_PARITY_DEVICE = "cuda"
"""The device of the parity check (a constant, so the kit's own tests can aim it elsewhere)."""


@dataclass(frozen=True)
class CheckReport:
    """What a check function ran.

    Attributes:
        part: the label used in messages, e.g. ``"addressing 'ntm'"``.
        checks: names of the checks that ran (and passed), in order.
        skipped: checks that did not run, with the reason, e.g.
            ``{"cuda_parity": "CUDA is not available"}``.
    """

    part: str
    checks: tuple[str, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.checks


# --------------------------------------------------------------------------- checks


class _Failure(Exception):
    """A check found a problem; turned into an ``AssertionError`` naming part and check."""


class _Skip(Exception):
    """A check does not apply to this part; recorded in the report's ``skipped``."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _Failure(message)


class _Checks:
    """Runs named checks, turning every failure into an ``AssertionError`` with a full message."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ran: list[str] = []
        self.skipped: dict[str, str] = {}

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[None]:
        try:
            yield
        except _Skip as skip:
            self.skipped[name] = str(skip)
            return
        except _Failure as failure:
            raise AssertionError(f"{self.label}: check {name!r} failed: {failure}") from None
        except AssertionError as error:
            raise AssertionError(f"{self.label}: check {name!r} failed: {error or 'an assertion failed'}") from error
        except Exception as error:  # the part crashed: report where
            raise AssertionError(f"{self.label}: check {name!r} failed: raised {type(error).__name__}: {error}") from error
        if name not in self.ran:
            self.ran.append(name)

    def fail(self, name: str, message: str) -> NoReturn:
        raise AssertionError(f"{self.label}: check {name!r} failed: {message}")

    def skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason

    def report(self) -> CheckReport:
        return CheckReport(self.label, tuple(self.ran), dict(self.skipped))


# --------------------------------------------------------------------------- harnesses


@dataclass
class _Sizes:
    input_size: int
    hidden_size: int
    slots: int
    width: int
    batch: int
    steps: int


@dataclass
class _Run:
    outputs: list[dict[str, Tensor | None]]  # per step
    carries: list[dict[str, Any]]  # carries[t]: what step t started from; carries[steps]: the final one


class _Harness:
    """How to feed one kind of part: its context, its inputs, one step."""

    kind = ""
    registry_kind = ""
    input_names: tuple[str, ...] = ()
    default_grad_inputs: tuple[str, ...] | None = None
    output_check = ""  # the name of the check of every step's output

    def __init__(self, sizes: _Sizes) -> None:
        self.sizes = sizes

    def context(self, registry: Registry, uses_memory: bool) -> BuildContext:
        s = self.sizes
        slots, width = (s.slots, s.width) if uses_memory else (0, 0)
        return BuildContext(s.input_size, s.hidden_size, slots, width, registry, path=f"testing.{self.kind}")

    def validate(self, part: nn.Module) -> None:
        for method in ("init_state", "prepare", "step"):
            _require(callable(getattr(part, method, None)), f"the part has no {method}() method")

    def inputs(self, generator: torch.Generator) -> dict[str, Tensor]:
        raise NotImplementedError

    def initial_carry(self, part: nn.Module, inputs: dict[str, Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        return {"state": part.init_state(self.sizes.batch, device, dtype)}

    def step(self, part: nn.Module, prepared: Any, t: int, inputs: dict[str, Tensor], carry: dict[str, Any]) -> tuple[dict[str, Tensor | None], dict[str, Any]]:
        raise NotImplementedError

    def check_outputs(self, part: nn.Module, outputs: dict[str, Tensor | None], where: str, training: bool) -> None:
        raise NotImplementedError

    def grad_leaves(self, inputs: dict[str, Tensor], initial_state: dict[str, Any]) -> dict[str, list[Tensor]]:
        """The leaf tensors whose gradients tell whether an input was reached, by input name."""
        leaves = {name: [inputs[name]] for name in self.input_names if name in inputs}
        if "state" in self.input_names:
            leaves["state"] = [t for t in flatten_state(initial_state).values() if t.requires_grad]
        return leaves


class _CellHarness(_Harness):
    kind, registry_kind = "cell", "cells"
    output_check = "output_shape"
    input_names = ("x", "read", "state")
    default_grad_inputs = ("x", "read", "state")

    def context(self, registry: Registry, uses_memory: bool) -> BuildContext:
        return super().context(registry, uses_memory).with_(hidden_size=0)

    def validate(self, part: nn.Module) -> None:
        super().validate(part)
        for attribute in ("hidden_size", "output_size"):
            value = getattr(part, attribute, None)
            _require(isinstance(value, int) and value > 0, f"a cell needs a positive int attribute {attribute!r}, got {value!r}")

    def inputs(self, generator: torch.Generator) -> dict[str, Tensor]:
        s = self.sizes
        return {
            "x": torch.randn(s.batch, s.steps, s.input_size, generator=generator),
            "read": torch.randn(s.steps, s.batch, s.width, generator=generator),
        }

    def step(self, part, prepared, t, inputs, carry):
        output, state = part.step(prepared, t, carry["state"], inputs["read"][t])
        return {"output": output}, {"state": state}

    def check_outputs(self, part, outputs, where, training):
        output = outputs["output"]
        _require(isinstance(output, Tensor), f"{where}: step returned {type(output).__name__} as o_t, expected a tensor")
        expected = (self.sizes.batch, part.output_size)
        _require(tuple(output.shape) == expected, f"{where}: o_t has shape {tuple(output.shape)}, expected {expected} [B, output_size]")


class _AddressingHarness(_Harness):
    kind, registry_kind = "addressing", "addressing"
    output_check = "address_weights"
    input_names = ("x", "hidden", "memory")
    default_grad_inputs = None  # any one of them: an addressing may ignore the memory (auto) or x
    slots_width: tuple[int, int] = (0, 0)  # set once the factory's uses_memory is known

    def inputs(self, generator):
        s = self.sizes
        slots, width = self.slots_width
        return {
            "x": torch.randn(s.batch, s.steps, s.input_size, generator=generator),
            "hidden": torch.randn(s.steps, s.batch, s.hidden_size, generator=generator),
            "memory": torch.randn(s.steps, s.batch, slots, width, generator=generator),
        }

    def step(self, part, prepared, t, inputs, carry):
        address, state = part.step(prepared, t, inputs["hidden"][t], inputs["memory"][t], carry["state"])
        _require(
            isinstance(address, tuple) and hasattr(address, "weights") and hasattr(address, "index"),
            f"step {t}: step returned {type(address).__name__} as the address, expected manntk.parts.Address",
        )
        return {"weights": address.weights, "index": address.index}, {"state": state}

    def check_outputs(self, part, outputs, where, training):
        check_address(outputs["weights"], outputs["index"], self.sizes.batch, self.slots_width[0], where, training)


class _WriteHarness(_Harness):
    kind, registry_kind = "write", "writes"
    output_check = "memory_shape"
    input_names = ("x", "memory", "hidden", "address")
    default_grad_inputs = ("memory",)

    def inputs(self, generator):
        s = self.sizes
        return {
            "x": torch.randn(s.batch, s.steps, s.input_size, generator=generator),
            "memory": torch.randn(s.batch, s.slots, s.width, generator=generator),
            "hidden": torch.randn(s.steps, s.batch, s.hidden_size, generator=generator),
            "address": torch.randn(s.steps, s.batch, s.slots, generator=generator),  # logits of the read weights
        }

    def initial_carry(self, part, inputs, device, dtype):
        return {"state": part.init_state(self.sizes.batch, device, dtype), "memory": inputs["memory"]}

    def step(self, part, prepared, t, inputs, carry):
        address = Address(torch.softmax(inputs["address"][t], dim=-1))
        memory, state = part.step(prepared, t, carry["memory"], inputs["hidden"][t], address, carry["state"])
        return {"memory": memory}, {"state": state, "memory": memory}

    def check_outputs(self, part, outputs, where, training):
        memory = outputs["memory"]
        _require(isinstance(memory, Tensor), f"{where}: step returned {type(memory).__name__} as the memory, expected a tensor")
        expected = (self.sizes.batch, self.sizes.slots, self.sizes.width)
        _require(tuple(memory.shape) == expected, f"{where}: the new memory has shape {tuple(memory.shape)}, expected {expected} [B, slots, width]")


def check_address(weights: Tensor | None, index: Tensor | None, batch: int, slots: int, where: str = "", training: bool = True) -> None:
    """Check one [`Address`][manntk.parts.Address]: shapes, a distribution over slots, indices in range.

    Args:
        weights: ``[B, slots]`` or ``None`` (index-only, allowed in evaluation).
        index: ``[B]`` long or ``None``.
        batch: B.
        slots: N (0 for a part that reads no memory: the weights must be ``[B, 0]``).
        where: prefix of the message (``"eval step 2"``).
        training: whether the part is in training mode (index-only addresses are then refused).

    Raises:
        AssertionError: what is wrong.
    """
    prefix = f"{where}: " if where else ""
    try:
        _check_address(weights, index, batch, slots, prefix, training)
    except _Failure as failure:
        raise AssertionError(str(failure)) from None


def _check_address(weights, index, batch, slots, prefix, training):
    if weights is None:
        _require(not training, f"{prefix}the address has no weights in training (index-only addresses are for evaluation)")
        _require(index is not None, f"{prefix}the address has neither weights nor index")
    else:
        _require(isinstance(weights, Tensor), f"{prefix}the weights are a {type(weights).__name__}, expected a tensor")
        _require(tuple(weights.shape) == (batch, slots), f"{prefix}the weights have shape {tuple(weights.shape)}, expected {(batch, slots)} [B, slots]")
        _require(weights.is_floating_point(), f"{prefix}the weights have dtype {weights.dtype}, expected a floating-point dtype")
        values = weights.detach()
        _require(bool(torch.isfinite(values).all()), f"{prefix}the weights are not finite")
        if slots > 0:
            smallest = values.min().item()
            _require(smallest >= -WEIGHT_TOLERANCE, f"{prefix}the weights are negative (smallest {smallest:.3g})")
            sums = values.sum(-1)
            worst = (sums - 1).abs().max().item()
            shown = ", ".join(f"{s:.4g}" for s in sums.tolist()[:4])
            _require(worst <= WEIGHT_TOLERANCE * max(1, slots), f"{prefix}the weights do not sum to one over the slots (sums {shown}; tolerance {WEIGHT_TOLERANCE:g})")
    if index is not None:
        _require(isinstance(index, Tensor) and index.dtype == torch.long, f"{prefix}the index must be a long tensor, got {getattr(index, 'dtype', type(index).__name__)}")
        _require(tuple(index.shape) == (batch,), f"{prefix}the index has shape {tuple(index.shape)}, expected {(batch,)} [B]")
        if batch:
            low, high = index.min().item(), index.max().item()
            _require(0 <= low and high < slots, f"{prefix}the index is out of range: {low}..{high}, slots 0..{slots - 1}")
        if weights is not None and slots > 0:
            _require(bool((weights.detach().argmax(-1) == index).all()), f"{prefix}the index does not point at the largest weight (it must mark one-hot weights)")


# --------------------------------------------------------------------------- helpers


def _registry(plugins: Plugins | None) -> Registry:
    return (plugins or default_plugins()).registry


def _resolve(kind: str, factory: PartFactory | str, config: Any, registry: Registry) -> tuple[PartFactory, Any, str]:
    """The factory, the structured config and the label of the part."""
    if isinstance(factory, str):
        from manntk.config import make_converter

        entry = registry.get(kind, factory)
        if isinstance(config, Mapping):
            if entry.config is None:
                if config:
                    raise ValueError(f"{kind} {factory!r} takes no options, got: {', '.join(map(str, config))}")
                config = None
            else:
                config = make_converter(registry).structure(dict(config), entry.config)
        elif config is None and entry.config is not None:
            config = entry.config()
        return entry.factory, config, repr(factory)
    if isinstance(config, Mapping):
        raise TypeError("give the config as an instance of the part's config class, or the part by its registered name")
    return factory, config, repr(getattr(factory, "__name__", type(factory).__name__))


def _state_check(state: Any, where: str, dtype: torch.dtype, reference: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """The flat state; fails when it is not a dict of tensors or changes structure."""
    _require(isinstance(state, dict), f"{where}: the state is a {type(state).__name__}, expected a dict of tensors")
    try:
        flat = flatten_state(state)
    except (TypeError, ValueError, AttributeError) as error:
        raise _Failure(f"{where}: the state is not a dict (nested dicts and lists allowed) of tensors: {error}") from None
    try:
        map_state(state, lambda t: t)
    except TypeError as error:
        raise _Failure(f"{where}: {error}") from None
    for name, tensor in flat.items():
        if tensor.is_floating_point():
            _require(tensor.dtype == dtype, f"{where}: state {name!r} has dtype {tensor.dtype}, expected {dtype} (init_state's dtype)")
    if reference is not None:
        _require(flat.keys() == reference.keys(), f"{where}: the state's entries changed from {sorted(reference)} to {sorted(flat)}")
        for name, tensor in flat.items():
            old = reference[name]
            _require(
                tensor.shape == old.shape and tensor.dtype == old.dtype,
                f"{where}: state {name!r} changed from {tuple(old.shape)} {old.dtype} to {tuple(tensor.shape)} {tensor.dtype}",
            )
    return flat


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.detach(), b.detach()))


def _first_difference(a: dict[str, Tensor | None], b: dict[str, Tensor | None]) -> str | None:
    for name in a.keys() | b.keys():
        if not _same(a.get(name), b.get(name)):
            return name
    return None


def _fingerprint(value: Any, depth: int = 0) -> Any:
    """What must not change on a module between steps (tensors by identity)."""
    if isinstance(value, Tensor):
        return ("tensor", id(value), tuple(value.shape), value.dtype)
    if isinstance(value, nn.Module):
        return ("module", id(value))
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value
    if depth < 3 and isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_fingerprint(v, depth + 1) for v in value))
    if depth < 3 and isinstance(value, dict):
        return ("dict", tuple((repr(k), _fingerprint(v, depth + 1)) for k, v in value.items()))
    return ("object", id(value))


def _attributes(part: nn.Module) -> dict[str, Any]:
    snapshot = {}
    for module_name, module in part.named_modules():
        for name, value in vars(module).items():
            if name == "training":
                continue
            snapshot[f"{module_name}.{name}" if module_name else name] = _fingerprint(value)
    return snapshot


def _tensors(part: nn.Module) -> dict[str, Tensor]:
    named = dict(part.named_parameters())
    named.update({f"{name} (buffer)": buffer for name, buffer in part.named_buffers()})
    return {name: tensor.detach().clone() for name, tensor in named.items()}


# --------------------------------------------------------------------------- the part driver


class _PartChecker:
    def __init__(
        self,
        harness: _Harness,
        factory: PartFactory | str,
        config: Any,
        plugins: Plugins | None,
        device: torch.device | str,
        dtype: torch.dtype,
        seed: int,
        grad_inputs: Sequence[str] | None,
    ) -> None:
        self.harness = harness
        self.registry = _registry(plugins)
        self.factory, self.config, name = _resolve(harness.registry_kind, factory, config, self.registry)
        self.checks = _Checks(f"{harness.kind} {name}")
        self.device, self.dtype, self.seed = torch.device(device), dtype, seed
        self.grad_inputs = grad_inputs

    # -- running

    def _inputs(self, device: torch.device | None = None) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(self.seed + 1)
        return {k: v.to(device=device or self.device, dtype=self.dtype) for k, v in self.harness.inputs(generator).items()}

    def _run(self, part: nn.Module, inputs: dict[str, Tensor], carry: dict[str, Any], steps: int | None = None, check: str | None = None, training: bool = False) -> _Run:
        prepared = part.prepare(inputs["x"])
        outputs, carries = [], [carry]
        reference = flatten_state(carry["state"]) if check is not None else None  # init_state's structure
        mode = "train" if training else "eval"
        for t in range(self.harness.sizes.steps if steps is None else steps):
            out, carry = self.harness.step(part, prepared, t, inputs, carry)
            if check is not None:
                _state_check(carry["state"], f"{mode} step {t}", self.dtype, reference)
            outputs.append(out)
            carries.append(carry)
        return _Run(outputs, carries)

    def _fresh(self, part: nn.Module, inputs: dict[str, Tensor], device: torch.device | None = None) -> dict[str, Any]:
        return self.harness.initial_carry(part, inputs, device or self.device, self.dtype)

    # -- the checks

    def run(self) -> CheckReport:
        checks = self.checks
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            with checks.check("build"):
                self.uses_memory = getattr(self.factory, "uses_memory", True)
                if isinstance(self.harness, _AddressingHarness):
                    s = self.harness.sizes
                    self.harness.slots_width = (s.slots, s.width) if self.uses_memory else (0, 0)
                context = self.harness.context(self.registry, self.uses_memory)
                part = self.factory(self.config, context)
                _require(isinstance(part, nn.Module), f"the factory returned a {type(part).__name__}, expected a torch.nn.Module")
                self.harness.validate(part)
                part = part.to(device=self.device, dtype=self.dtype)
            self.part = part
            with checks.check("init_state"):
                state = part.init_state(self.harness.sizes.batch, self.device, self.dtype)
                flat = _state_check(state, "init_state", self.dtype, None)
                for name, tensor in flat.items():
                    _require(tensor.device.type == self.device.type, f"init_state: state {name!r} is on {tensor.device}, expected {self.device}")
                    _require(tensor.shape[:1] == (self.harness.sizes.batch,), f"init_state: state {name!r} has shape {tuple(tensor.shape)}; its first dimension must be the batch ({self.harness.sizes.batch})")
                if isinstance(self.harness, _CellHarness):
                    _require("h" in state, f"init_state: a cell's state needs 'h' (the state addressing and writes see), got {sorted(state)}")
                    expected = (self.harness.sizes.batch, part.hidden_size)
                    _require(tuple(state["h"].shape) == expected, f"init_state: state 'h' has shape {tuple(state['h'].shape)}, expected {expected} [B, hidden_size]")
            runs = {}
            for training in (True, False):
                name = "steps_train" if training else "steps_eval"
                with checks.check(name):
                    part.train(training)
                    inputs = self._inputs()
                    runs[training] = self._run(part, inputs, self._fresh(part, inputs), check=name, training=training)
            with checks.check(self.harness.output_check):
                for training, run in runs.items():
                    for t, out in enumerate(run.outputs):
                        self.harness.check_outputs(part, out, f"{'train' if training else 'eval'} step {t}", training)
            self._gradients()
            part.eval()
            self._stateless()
            self._replay()
            self._causal()
            self._uses_state()
            self._round_trip()
            if isinstance(self.harness, _WriteHarness):
                self._discrete_write()
            self._cuda_parity()
        return checks.report()

    def _gradients(self) -> None:
        part, harness = self.part, self.harness
        with self.checks.check("gradients"):
            part.train()
            part.zero_grad(set_to_none=True)
            inputs = {k: v.detach().requires_grad_() for k, v in self._inputs().items()}
            carry = self._fresh(part, inputs)
            carry["state"] = map_state(carry["state"], lambda t: t.detach().requires_grad_() if t.is_floating_point() else t)
            initial_state = carry["state"]
            run = self._run(part, inputs, carry, training=True)
            generator = torch.Generator().manual_seed(self.seed + 2)
            terms = []
            for out in run.outputs:
                for value in out.values():
                    if isinstance(value, Tensor) and value.is_floating_point() and value.requires_grad:
                        terms.append((value * torch.randn(value.shape, generator=generator).to(value)).sum())
            for tensor in flatten_state(run.carries[-1]["state"]).values():
                if tensor.is_floating_point() and tensor.requires_grad:
                    terms.append((tensor * torch.randn(tensor.shape, generator=generator).to(tensor)).sum())
            parameters = dict(part.named_parameters())
            if not terms:
                _require(not parameters, f"no output depends on the parameters ({', '.join(parameters)}): nothing requires grad")
                raise _Skip("the part has no parameters and no output that requires grad")
            torch.stack(terms).sum().backward()
            for name, parameter in parameters.items():
                if not parameter.requires_grad or parameter.numel() == 0:
                    continue
                _require(parameter.grad is not None, f"no gradient reaches parameter {name!r} (its .grad is None after backward)")
                _require(bool(torch.isfinite(parameter.grad).all()), f"the gradient of parameter {name!r} is not finite")
                _require(bool(parameter.grad.ne(0).any()), f"the gradient of parameter {name!r} is zero everywhere: the output does not depend on it")
            leaves = harness.grad_leaves(inputs, initial_state)
            reached = {}
            for name, tensors in leaves.items():
                grads = [t.grad for t in tensors if t.grad is not None]
                for g in grads:
                    _require(bool(torch.isfinite(g).all()), f"the gradient reaching input {name!r} is not finite")
                reached[name] = any(bool(g.ne(0).any()) for g in grads)
            required = self.grad_inputs if self.grad_inputs is not None else harness.default_grad_inputs
            if required is None:
                _require(any(reached.values()), f"no gradient reaches any input ({', '.join(leaves)})")
            else:
                for name in required:
                    _require(name in reached, f"unknown input {name!r} in grad_inputs; inputs: {', '.join(leaves)}")
                    _require(reached[name], f"no gradient reaches input {name!r} from the outputs")
            part.zero_grad(set_to_none=True)

    def _stateless(self) -> None:
        part = self.part
        with self.checks.check("no_state_on_module"):
            inputs = self._inputs()
            attributes, tensors = _attributes(part), _tensors(part)
            first = self._run(part, inputs, self._fresh(part, inputs))
            second = self._run(part, inputs, self._fresh(part, inputs))
            after = _attributes(part)
            changed = sorted(name for name in attributes.keys() | after.keys() if attributes.get(name, "<absent>") != after.get(name, "<absent>"))
            _require(not changed, f"the part keeps state on itself: prepare/step set attribute(s) {', '.join(map(repr, changed))}")
            for name, tensor in _tensors(part).items():
                _require(name in tensors and torch.equal(tensor, tensors[name]), f"the part keeps state on itself: prepare/step changed {name!r}")
            for t, (a, b) in enumerate(zip(first.outputs, second.outputs)):
                differs = _first_difference(a, b)
                _require(differs is None, f"running the same steps twice from the same state gives different {differs!r} at step {t}: the part keeps state on itself (or is random in evaluation)")
            self.eval_run = first

    def _replay(self) -> None:
        part, run = self.part, self.eval_run
        with self.checks.check("replay_from_state"):
            inputs = self._inputs()
            prepared = part.prepare(inputs["x"])
            for t in range(1, self.harness.sizes.steps):
                out, carry = self.harness.step(part, prepared, t, inputs, run.carries[t])
                differs = _first_difference(out, run.outputs[t])
                _require(differs is None, f"step {t} replayed from the state recorded before it gives a different {differs!r}: the state does not carry everything the part needs")
                new, old = flatten_state(carry["state"]), flatten_state(run.carries[t + 1]["state"])
                differs = _first_difference(new, old)
                _require(differs is None, f"step {t} replayed from the state recorded before it gives a different new state {differs!r}")

    def _causal(self) -> None:
        part, run = self.part, self.eval_run
        with self.checks.check("causal"):
            inputs = self._inputs()
            generator = torch.Generator().manual_seed(self.seed + 3)
            later = torch.randn(inputs["x"][:, 1:].shape, generator=generator).to(inputs["x"])
            changed = {**inputs, "x": torch.cat([inputs["x"][:, :1], later], dim=1)}
            out, carry = self.harness.step(part, part.prepare(changed["x"]), 0, changed, self._fresh(part, changed))
            differs = _first_difference(out, run.outputs[0])
            if differs is None:
                differs = _first_difference(flatten_state(carry["state"]), flatten_state(run.carries[1]["state"]))
            _require(differs is None, f"step 0 gives a different {differs!r} when only x at later steps changes: prepare leaks later inputs into earlier steps (e.g. statistics over the chunk)")

    def _uses_state(self) -> None:
        part, run = self.part, self.eval_run
        name = "uses_state"
        last = self.harness.sizes.steps - 1
        initial = self._fresh(part, self._inputs())
        later = run.carries[last]
        if not flatten_state(initial["state"]):
            self.checks.skip(name, "the part has no state")
            return
        if _first_difference(flatten_state(initial["state"]), flatten_state(later["state"])) is None:
            self.checks.skip(name, f"the state did not change over {last} steps")
            return
        with self.checks.check(name):
            inputs = self._inputs()
            prepared = part.prepare(inputs["x"])
            fresh = {**later, "state": initial["state"]}  # the same memory (writes), the initial state
            out_a, carry_a = self.harness.step(part, prepared, last, inputs, fresh)
            out_b, carry_b = self.harness.step(part, prepared, last, inputs, later)
            same_output = _first_difference(out_a, out_b) is None
            same_state = _first_difference(flatten_state(carry_a["state"]), flatten_state(carry_b["state"])) is None
            _require(
                not (same_output and same_state),
                f"the part ignores its state: step {last} from the initial state and from the state after {last} steps gives the same output and the same new state",
            )

    def _round_trip(self) -> None:
        part, run = self.part, self.eval_run
        with self.checks.check("state_round_trip"):
            t = self.harness.sizes.steps - 1
            carry = run.carries[t]
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "state.safetensors"
                save_state(carry["state"], path)
                loaded = load_state(path, device=self.device)
            saved, back = flatten_state(carry["state"]), flatten_state(loaded)
            _require(saved.keys() == back.keys(), f"save_state/load_state changed the state's entries from {sorted(saved)} to {sorted(back)}")
            differs = _first_difference(saved, back)
            _require(differs is None, f"save_state/load_state changed state {differs!r}")
            inputs = self._inputs()
            out, new = self.harness.step(part, part.prepare(inputs["x"]), t, inputs, {**carry, "state": loaded})
            differs = _first_difference(out, run.outputs[t])
            _require(differs is None, f"after save_state/load_state the next step gives a different {differs!r}")

    def _discrete_write(self) -> None:
        part, run = self.part, self.eval_run
        with self.checks.check("discrete_write"):
            s = self.harness.sizes
            inputs = self._inputs()
            prepared = part.prepare(inputs["x"])
            index = torch.arange(s.batch, device=self.device) % s.slots
            one_hot = nn.functional.one_hot(index, s.slots).to(self.dtype)
            t = s.steps - 1
            carry = run.carries[t]
            memory = carry["memory"].clone()
            dense, dense_state = part.step(prepared, t, memory.clone(), inputs["hidden"][t], Address(one_hot, index), carry["state"])
            discrete, discrete_state = part.step(prepared, t, memory.clone(), inputs["hidden"][t], Address(None, index), carry["state"])
            _require(isinstance(discrete, Tensor) and discrete.shape == memory.shape, "an index-only address (the discrete evaluation path) gives no memory of the right shape")
            torch.testing.assert_close(discrete, dense, msg=lambda m: f"an index-only address writes differently from the same one-hot weights: {m}")
            differs = _first_difference(flatten_state(discrete_state), flatten_state(dense_state))
            _require(differs is None, f"an index-only address gives a different new state {differs!r} from the same one-hot weights")

    def _cuda_parity(self) -> None:
        name = "cuda_parity"
        if not torch.cuda.is_available():
            self.checks.skip(name, "CUDA is not available")
            return
        if self.device.type == "cuda":
            self.checks.skip(name, "the checks already run on CUDA")
            return
        with self.checks.check(name):
            other = torch.device(_PARITY_DEVICE)
            part = copy.deepcopy(self.part).to(other).eval()
            inputs = self._inputs(other)
            run = self._run(part, inputs, self._fresh(part, inputs, other))
            runs = [(t, a, b) for t, (a, b) in enumerate(zip(self.eval_run.outputs, run.outputs))]
            runs.append((self.harness.sizes.steps, flatten_state(self.eval_run.carries[-1]["state"]), flatten_state(run.carries[-1]["state"])))
            for t, a, b in runs:
                where = f"step {t}" if t < self.harness.sizes.steps else "the final state"
                for key, value in a.items():
                    other_value = b.get(key)
                    _require((value is None) == (other_value is None), f"{where}: {key!r} is None on one device only")
                    if value is not None:
                        torch.testing.assert_close(
                            other_value.cpu(), value.cpu(), rtol=1e-4, atol=1e-5,
                            msg=lambda m, where=where, key=key: f"{where}: {key!r} differs between CPU and CUDA: {m}",
                        )


def _sizes(input_size: int, hidden_size: int, slots: int, width: int, batch: int, steps: int) -> _Sizes:
    if steps < 2:
        raise ValueError("the checks need steps >= 2 (a state must be carried)")
    return _Sizes(input_size, hidden_size, slots, width, batch, steps)


def check_cell(
    factory: PartFactory | str,
    config: Any = None,
    *,
    input_size: int = 3,
    width: int = 4,
    batch: int = 2,
    steps: int = 3,
    plugins: Plugins | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    grad_inputs: Sequence[str] | None = None,
    seed: int = 0,
) -> CheckReport:
    """Check that a cell keeps the [`Cell`][manntk.parts.Cell] contract.

    Args:
        factory: the registered factory (``factory(config, context)``, usually the
            class), or the registered name.
        config: the config instance (or, with a name, a mapping of options; ``None``:
            the config class's defaults).
        input_size: width of ``x_t``.
        width: the read size ``d_r`` (``context.width``).
        batch: B.
        steps: time steps per run (at least 2).
        plugins: where names and sub-parts are looked up (default: the installed plugins).
        device: where to run (CUDA parity is checked in addition when CUDA is available).
        dtype: the dtype of parameters, inputs and state.
        grad_inputs: inputs the gradient must reach, among ``x``, ``read`` and
            ``state`` (the initial state); default: all three.
        seed: seeds the part's initialisation and the inputs.

    Returns:
        The checks that ran, and the skipped ones with the reason.

    Raises:
        AssertionError: a check failed; the message names the cell, the check and the problem.

    Example:
        ```python
        from manntk.cells.lstm import LstmCell, LstmConfig
        report = check_cell(LstmCell, LstmConfig(hidden_size=5))
        assert "replay_from_state" in report.checks
        ```
    """
    sizes = _sizes(input_size, 0, 4, width, batch, steps)
    return _PartChecker(_CellHarness(sizes), factory, config, plugins, device, dtype, seed, grad_inputs).run()


def check_addressing(
    factory: PartFactory | str,
    config: Any = None,
    *,
    input_size: int = 3,
    hidden_size: int = 5,
    slots: int = 4,
    width: int = 4,
    batch: int = 2,
    steps: int = 3,
    plugins: Plugins | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    grad_inputs: Sequence[str] | None = None,
    seed: int = 0,
) -> CheckReport:
    """Check that an addressing keeps the [`Addressing`][manntk.parts.Addressing] contract.

    Beyond the common checks, every step's address must be weights ``[B, slots]``,
    non-negative and summing to one (with an ``index`` ``[B]`` that points at the
    largest weight when given), or in evaluation an index-only ``Address(None, index)``
    with indices in ``0..slots-1``. A factory with ``uses_memory = False`` is built
    with no memory (0 slots) and must return weights ``[B, 0]``.

    Args:
        factory: the registered factory, or the registered name.
        config: the config instance (with a name: a mapping; ``None``: defaults).
        input_size: width of ``x_t``.
        hidden_size: width of the controller state ``h``.
        slots: N.
        width: slot width D.
        batch: B.
        steps: time steps per run (at least 2).
        plugins: where names and sub-parts are looked up.
        device: where to run.
        dtype: the dtype of parameters, inputs and state.
        grad_inputs: inputs the gradient must reach, among ``x``, ``hidden`` and
            ``memory``; default: at least one of them.
        seed: seeds the part's initialisation and the inputs.

    Returns:
        The checks that ran, and the skipped ones with the reason.

    Raises:
        AssertionError: a check failed; the message names the addressing, the check and the problem.

    Example:
        ```python
        report = check_addressing("ntm", {"shift": 1}, slots=6)
        ```
    """
    sizes = _sizes(input_size, hidden_size, slots, width, batch, steps)
    return _PartChecker(_AddressingHarness(sizes), factory, config, plugins, device, dtype, seed, grad_inputs).run()


def check_write(
    factory: PartFactory | str,
    config: Any = None,
    *,
    input_size: int = 3,
    hidden_size: int = 5,
    slots: int = 4,
    width: int = 4,
    batch: int = 2,
    steps: int = 3,
    plugins: Plugins | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    grad_inputs: Sequence[str] | None = None,
    seed: int = 0,
) -> CheckReport:
    """Check that a write policy keeps the [`Write`][manntk.parts.Write] contract.

    The write is driven with soft read addresses (a softmax over random logits) and the
    memory it returns is fed back at the next step. Beyond the common checks, an
    index-only address (the discrete evaluation path) must write exactly as the same
    one-hot weights do (``discrete_write``).

    Args:
        factory: the registered factory, or the registered name.
        config: the config instance (with a name: a mapping; ``None``: defaults).
        input_size: width of ``x_t``.
        hidden_size: width of ``h_t``.
        slots: N.
        width: slot width D.
        batch: B.
        steps: time steps per run (at least 2).
        plugins: where names and sub-parts are looked up.
        device: where to run.
        dtype: the dtype of parameters, inputs and state.
        grad_inputs: inputs the gradient must reach, among ``x``, ``memory``,
            ``hidden`` and ``address``; default: ``memory``.
        seed: seeds the part's initialisation and the inputs.

    Returns:
        The checks that ran, and the skipped ones with the reason.

    Raises:
        AssertionError: a check failed; the message names the write, the check and the problem.

    Example:
        ```python
        report = check_write("erase_add", grad_inputs=("memory", "hidden"))
        ```
    """
    sizes = _sizes(input_size, hidden_size, slots, width, batch, steps)
    return _PartChecker(_WriteHarness(sizes), factory, config, plugins, device, dtype, seed, grad_inputs).run()


# --------------------------------------------------------------------------- whole models


def check_model(
    mapping: Mapping[str, Any] | Any,
    plugins: Plugins | None = None,
    *,
    batch: int = 2,
    steps: int = 6,
    seed: int = 0,
) -> CheckReport:
    """Build a whole model from a recipe-shaped mapping and check it end to end.

    Checks: training forward and backward (output shape, every parameter gets a
    finite gradient that is not zero everywhere), evaluation forward and backward
    (finite gradients), two chunks with the state carried equal one long sequence in
    evaluation (``chunks_equal_sequence``), the state saved and loaded between the
    chunks gives identical outputs, and CPU/CUDA parity when CUDA is available.

    Args:
        mapping: what [`build_model`][manntk.build.build_model] takes (a mapping or a
            [`ModelConfig`][manntk.build.ModelConfig]); it must give ``input_size``.
        plugins: where the parts are looked up (default: the installed plugins).
        batch: B.
        steps: T of the long sequence (at least 2; the chunks split it in half).
        seed: seeds the model's initialisation and the inputs.

    Returns:
        The checks that ran, and the skipped ones with the reason.

    Raises:
        AssertionError: a check failed; the message names the model, the check and the problem.

    Example:
        ```python
        check_model({
            "input_size": 3, "output_size": 2,
            "cell": {"name": "lstm", "hidden_size": 5},
            "addressing": {"name": "ntm"}, "write": {"name": "erase_add"},
            "memory": {"slots": 4, "width": 4},
        })
        ```
    """
    if steps < 2:
        raise ValueError("check_model needs steps >= 2 (two chunks)")
    checks = _Checks(f"model {_model_label(mapping)}")
    with torch.random.fork_rng(devices=[]):
        model, x, generator = _model_and_inputs(checks, mapping, plugins, batch, steps, seed)
        for training in (True, False):
            name = "train_forward_backward" if training else "eval_forward_backward"
            with checks.check(name):
                model.train(training)
                model.zero_grad(set_to_none=True)
                y, state = model(x)
                _require(y.shape[:2] == (batch, steps), f"the output has shape {tuple(y.shape)}, expected [B={batch}, T={steps}, ...]")
                _require(bool(torch.isfinite(y).all()), "the output is not finite")
                _state_check(state, "the returned state", y.dtype, None)
                (y * torch.randn(y.shape, generator=generator)).sum().backward()
                for pname, parameter in model.named_parameters():
                    if not parameter.requires_grad or parameter.numel() == 0:
                        continue
                    if parameter.grad is None:
                        _require(not training, f"no gradient reaches parameter {pname!r} in training")
                        continue
                    _require(bool(torch.isfinite(parameter.grad).all()), f"the gradient of parameter {pname!r} is not finite")
                    if training:
                        _require(bool(parameter.grad.ne(0).any()), f"the gradient of parameter {pname!r} is zero everywhere in training")
                model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            with checks.check("chunks_equal_sequence"):
                y_full, state_full = model(x)
                split = steps // 2
                y_first, state_first = model(x[:, :split])
                y_second, state_second = model(x[:, split:], state_first)
                torch.testing.assert_close(torch.cat([y_first, y_second], 1), y_full, rtol=1e-4, atol=1e-5, msg=lambda m: f"two chunks with the state carried differ from one long sequence: {m}")
                full, chunked = flatten_state(state_full), flatten_state(state_second)
                _require(full.keys() == chunked.keys(), "the final state's entries differ between one sequence and two chunks")
                for key in full:
                    torch.testing.assert_close(chunked[key], full[key], rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"final state {key!r} differs between one sequence and two chunks: {m}")
            with checks.check("state_round_trip"):
                with tempfile.TemporaryDirectory() as folder:
                    path = Path(folder) / "state.safetensors"
                    save_state(state_first, path)
                    loaded = load_state(path)
                y_loaded, _ = model(x[:, split:], loaded)
                _require(bool(torch.equal(y_loaded, y_second)), "after save_state/load_state the next chunk gives different outputs")
            if not torch.cuda.is_available():
                checks.skip("cuda_parity", "CUDA is not available")
            else:
                with checks.check("cuda_parity"):
                    cuda_model = copy.deepcopy(model).to(_PARITY_DEVICE).eval()
                    y_cuda, _ = cuda_model(x.to(_PARITY_DEVICE))
                    torch.testing.assert_close(y_cuda.cpu(), y_full, rtol=1e-4, atol=1e-5, msg=lambda m: f"outputs differ between CPU and CUDA: {m}")
    return checks.report()


SYMMETRY_TOLERANCE = 1e-3
"""Smallest spread ``max_i w_i - min_i w_i`` of the weights over the slots, relative to
the uniform weight ``1/N``, and smallest difference between slots, relative to the
memory's largest entry, that count as broken symmetry (far above float32 rounding)."""


def check_symmetry(
    mapping: Mapping[str, Any] | Any,
    plugins: Plugins | None = None,
    *,
    batch: int = 2,
    steps: int = 4,
    seed: int = 0,
) -> CheckReport:
    """Check that a model's slots become distinguishable: after a few steps from a fresh
    state on random (non-uniform) inputs, the read weights (and the write weights, where
    the write policy records them) are not uniform over the slots, and the slots of the
    memory differ.

    A model that fails cannot learn to use its memory, whatever the training: if every
    slot starts equal and the first weights are uniform, content addressing gives
    uniform weights, interpolation, shifting and sharpening keep them uniform, and a
    uniform write keeps every slot equal, forever (an NTM with a constant memory start
    and uniform initial weights). Break the symmetry in the memory's start
    (``memory.init: uniform``) or in the first weights (``ntm``'s ``start``).

    Args:
        mapping: what [`build_model`][manntk.build.build_model] takes; it must give
            ``input_size``. Layers without memory are skipped.
        plugins: where the parts are looked up (default: the installed plugins).
        batch: B.
        steps: T, the steps run from the fresh state.
        seed: seeds the model's initialisation and the inputs.

    Returns:
        The checks that ran (``read_weights``, ``write_weights``, ``slots_differ``), and
        the skipped ones with the reason.

    Raises:
        AssertionError: the symmetry was not broken; the message names the model, the
            layer, the step and the spread found.
    """
    from manntk.trace import tracing

    checks = _Checks(f"model {_model_label(mapping)}")
    with torch.random.fork_rng(devices=[]):
        model, x, generator = _model_and_inputs(checks, mapping, plugins, batch, steps, seed)
        model.train()
        with torch.no_grad(), tracing() as trace:
            _, state = model(x)
    layers = [(index, layer) for index, layer in enumerate(model.layers) if layer.slots > 1]
    if not layers:
        for name in ("read_weights", "write_weights", "slots_differ"):
            checks.skip(name, "no layer has a memory of two or more slots")
        return checks.report()
    for kind in ("read", "write"):
        name = f"{kind}_weights"
        recorded = [(index, trace.get(f"layer{index}.{kind}")) for index, _ in layers]
        if all(weights is None for _, weights in recorded):
            checks.skip(name, f"no layer records {kind} weights")
            continue
        with checks.check(name):
            for index, weights in recorded:
                if weights is None:
                    continue
                spread = weights[-1].amax(-1) - weights[-1].amin(-1)  # [B], at the last step
                slots = weights.shape[-1]
                _require(
                    bool((spread > SYMMETRY_TOLERANCE / slots).all()),
                    f"layer {index}: the {kind} weights are uniform over the {slots} slots after {steps} steps "
                    f"(largest minus smallest weight: {spread.min().item():.3g}); the slots cannot be told apart",
                )
    with checks.check("slots_differ"):
        for index, _ in layers:
            memory = state["layers"][index]["memory"]  # [B, N, D]
            difference = (memory - memory[:, :1]).abs().amax(dim=(1, 2))
            scale = memory.abs().amax(dim=(1, 2)).clamp_min(torch.finfo(memory.dtype).tiny)
            _require(
                bool((difference > SYMMETRY_TOLERANCE * scale).all()),
                f"layer {index}: every slot of the memory holds the same values after {steps} steps "
                f"(largest difference from slot 0: {difference.min().item():.3g})",
            )
    return checks.report()


def _model_and_inputs(checks: _Checks, mapping: Any, plugins: Plugins | None, batch: int, steps: int, seed: int) -> tuple[nn.Module, Tensor, torch.Generator]:
    """The model of ``mapping`` built from ``seed`` (the check ``build``), random inputs
    ``[B, T, ...]`` for it (token ids with an embedding) and the generator that drew them."""
    from manntk.build import ModelConfig, build_model
    from manntk.config import structure

    torch.manual_seed(seed)
    with checks.check("build"):
        config = mapping if isinstance(mapping, ModelConfig) else structure(dict(mapping), ModelConfig, _registry(plugins))
        _require(config.input_size is not None, "the mapping gives no input_size")
        model = build_model(config, plugins)
    generator = torch.Generator().manual_seed(seed + 1)
    if model.embedding is not None:
        x = torch.randint(0, config.input_size, (batch, steps), generator=generator)
    else:
        x = torch.randn(batch, steps, config.input_size, generator=generator)
    return model, x, generator


def _model_label(mapping: Any) -> str:
    def name(node: Any) -> str:
        if isinstance(node, Mapping):
            return str(node.get("name", "?"))
        return str(getattr(node, "name", node))

    get = mapping.get if isinstance(mapping, Mapping) else lambda key, default=None: getattr(mapping, key, default)
    return "+".join(name(get(key, "none")) for key in ("cell", "addressing", "write"))

