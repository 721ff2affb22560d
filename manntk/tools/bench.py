"""Throughput and peak-memory benchmarks of the paper models against ``torch.nn.LSTM``.

Every entry (a :class:`Case`) measures the same work for every model, so the numbers
compare like with like:

- ``train`` (character LM): token ids ``[B, T]`` -> ``nn.Embedding(50, 128)`` -> the
  recurrent model -> ``nn.Linear(output, 50)`` -> softmax cross-entropy -> backward ->
  an Adam step. The recurrent state is carried (detached) from one chunk to the next, as
  in truncated backpropagation through time. Rate: chars/s ``= B * T / seconds``.
- ``eval`` (character LM): the same forward and loss in ``model.eval()`` under
  ``torch.no_grad()``; hard addressing (ARMIN, AwTA, TARDIS) takes manntk's discrete
  path (argmax, read and write by slot index).
- ``algo`` (the paper's algorithmic-task protocol): batch 1, copy-task sequences from
  ``manntk.tasks.algorithmic.copy.generate`` with a fixed seed, each sequence a full
  forward, BCE per output bit, backward and Adam step from a fresh state. Rate:
  iterations (sequences) per second; every model sees the same sequences.

The reference is ``torch.nn.LSTM`` (cuDNN on a GPU, ATen's LSTM on a CPU) wrapped in the
same embedding, head, loss and optimizer, measured in the same run.

Timing: each case is built and warmed up, then the repeats are *interleaved*: repeat
``r`` times one block of every case in turn (the order rotating with ``r``), so a burst
of load from other processes hits every case alike. A block is as many units of work as
fill ``min_time`` seconds (one iteration for realistic sizes), after ``settle`` untimed
ones (the first iteration after another case pays for the heap that case left). The
rate of a case is the median over repeats; the spread is reported as the interquartile
range and min..max. A ratio against the reference is the median of the per-repeat ratios
(each repeat's two blocks ran seconds apart), which holds better on a noisy machine than
a ratio of medians.

Peak memory (``peak_memory_bytes``): the peak of live tensor bytes during one iteration,
counting what the iteration starts with (the case's parameters, buffers, optimizer
state, input batch and carried recurrent state, by unique storage) plus the highest
growth of allocated bytes during the iteration (activations saved for backward,
gradients, temporaries). The growth is ``torch.cuda.max_memory_allocated`` minus the
bytes allocated before, on CUDA; on a CPU it is the running sum of the allocation and
free events that ``torch.profiler.profile(profile_memory=True)`` records from c10's CPU
allocator. It is allocator accounting, not the process RSS: it leaves out allocator
caching and fragmentation, the Python interpreter and the libraries, and is the same
measure for every model, ``torch.nn.LSTM`` included. The chunk kernels keep their large
buffers from one iteration to the next (``manntk/fast/workspace.h``): they are released
before the measured iteration, which allocates them again, so that they count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import attrs
import torch
from torch import Tensor, nn

from manntk.config import UsageError
from manntk.fast.armin_fused import products_library, release_workspace
from manntk.fast.machine import cpu_identity, cpu_info
from manntk.hookspecs import hookimpl
from manntk.models import PAPER_MODELS

VOCAB = 50
"""Character-LM shapes: vocabulary and embedding width (the issue's; PTB-sized)."""
EMBEDDING = 128

REFERENCE = "torch-lstm"
"""The key of the reference model."""

MODES: tuple[str, ...] = ("train", "eval", "algo")
UNITS = {"train": "chars/s", "eval": "chars/s", "algo": "it/s"}


@attrs.frozen
class ModelKind:
    """A benchmarked model: its table name, its (cell, addressing, write) composition,
    extra cell options, whether its layers are compiled (``torch.compile``) and whether it
    takes the default fast paths (``model.fast``; ``False``: the plain per-step path)."""

    name: str
    cell: str | None = None
    addressing: str | None = None
    write: str | None = None
    cell_options: tuple[tuple[str, Any], ...] = ()
    compiled: bool = False
    fast: bool = True

    @property
    def uses_memory(self) -> bool:
        return self.addressing not in (None, "none")


MODELS: dict[str, ModelKind] = {
    **{key: ModelKind(model.name, model.cell, model.addressing, model.write) for key, model in PAPER_MODELS.items() if key != "lstm"},
    "armin-plain": ModelKind("ARMIN plain", "armin", "auto", "overwrite", fast=False),
    "armin-fused": ModelKind("ARMIN fused step", "armin", "auto", "overwrite", (("fused", True),), fast=False),
    "armin-compiled": ModelKind("ARMIN compiled", "armin", "auto", "overwrite", compiled=True),
    "ntm-plain": ModelKind("NTM-style plain", "lstm", "ntm", "erase_add", fast=False),
    "lstm": ModelKind("LSTM (engine)", "lstm", "none", "none"),
    REFERENCE: ModelKind("torch.nn.LSTM"),
}
"""The benchmarked models by key (``--models``); ``torch-lstm`` is the outside reference."""


@attrs.frozen
class Case:
    """One measured entry.

    Attributes:
        model: a key of ``MODELS``.
        mode: ``train``, ``eval`` (character LM) or ``algo`` (copy-task protocol).
        hidden: the hidden size.
        slots: N, memory slots (ignored by models without memory).
        width: slot width (default: ``hidden`` for the LM, as in the paper).
        batch: batch size (``algo``: 1, the paper's protocol).
        tbptt: TBPTT chunk length (LM modes).
        sequences: ``algo``: copy sequences per unit of work.
        max_length: ``algo``: longest copy sequence, in vectors (lengths 1..max_length).
    """

    model: str = attrs.field(validator=attrs.validators.in_(tuple(MODELS)))
    mode: str = attrs.field(validator=attrs.validators.in_(MODES))
    hidden: int
    slots: int = 0
    width: int | None = None
    batch: int = 1
    tbptt: int = 1
    sequences: int = 8
    max_length: int = 50

    def __attrs_post_init__(self) -> None:
        if not MODELS[self.model].uses_memory:
            object.__setattr__(self, "slots", 0)
            object.__setattr__(self, "width", None)
        elif self.slots < 1:
            raise ValueError(f"{self.model} needs slots >= 1")
        if self.mode == "algo":
            object.__setattr__(self, "batch", 1)
            object.__setattr__(self, "tbptt", 0)

    @property
    def name(self) -> str:
        return MODELS[self.model].name

    @property
    def memory_width(self) -> int:
        return self.width or self.hidden

    @property
    def label(self) -> str:
        """A unique name, e.g. ``train/armin/h500/n5/b128/t50``."""
        parts = [self.mode, self.model, f"h{self.hidden}"]
        if self.slots:
            parts.append(f"n{self.slots}" + (f"x{self.width}" if self.width else ""))
        if self.mode == "algo":
            parts.append(f"copy{self.sequences}x{self.max_length}")
        else:
            parts += [f"b{self.batch}", f"t{self.tbptt}"]
        return "/".join(parts)

    def reference(self) -> Case:
        """The ``torch.nn.LSTM`` case of the same mode, hidden size and shapes."""
        return attrs.evolve(self, model=REFERENCE, slots=0, width=None)


@attrs.frozen
class Target:
    """A check that a preset reports (PASS/FAIL), never a test assertion.

    ``metric``: ``rate`` (median of the per-repeat rate ratios ``numerator /
    denominator``), ``memory`` (ratio of peak memories) or ``absolute_rate`` (the
    numerator's median rate; no denominator). ``threshold`` ``None`` only reports the
    value. ``device``: only checked on that device type (else SKIP).
    """

    description: str
    metric: Literal["rate", "memory", "absolute_rate"]
    numerator: Case
    denominator: Case | None = None
    op: Literal[">=", "<="] = ">="
    threshold: float | None = None
    device: str | None = None


@attrs.frozen
class Preset:
    """A named set of cases (and targets) with its run settings."""

    name: str
    description: str
    cases: tuple[Case, ...]
    targets: tuple[Target, ...] = ()
    repeats: int = 5
    warmup: int = 1
    min_time: float = 0.0
    threads: int | None = None


@attrs.define
class Settings:
    """How to run: device, dtype, repeats, warm-up, the minimum block time, seed, threads.

    ``flush_denormal`` flushes subnormal floats to zero on the CPU while the cases run, as
    the trainer does by default (``train.flush_denormal``), so the rates are those of
    training; afterwards IEEE subnormals are restored.

    ``settle``: untimed iterations of a case before each of its timed blocks. After
    another case ran, the C library's heap is in that case's state, and the first
    iteration pays for it: without one, ``torch.nn.LSTM`` 1000's training blocks in the
    ``cpu-targets`` preset (two threads) ran at 5,900-8,200 chars/s against ~9,000 alone,
    and ARMIN fused showed 1.41x; with one, 1.07x (training-alone runs: 1.09-1.10x).
    """

    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 5
    warmup: int = 1
    min_time: float = 0.0
    seed: int = 0
    threads: int | None = None
    measure_memory: bool = True
    flush_denormal: bool = True
    settle: int = 1


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------- models


def manntk_mapping(case: Case, input_size: int, output_size: int, embedding: int | None) -> dict[str, Any]:
    """The ``build_model`` mapping of a manntk case."""
    kind = MODELS[case.model]
    mapping: dict[str, Any] = {
        "input_size": input_size,
        "output_size": output_size,
        "cell": {"name": kind.cell, "hidden_size": case.hidden, **dict(kind.cell_options)},
        "addressing": {"name": kind.addressing},
        "write": {"name": kind.write},
        "fast": kind.fast,
    }
    if embedding:
        mapping["embedding"] = embedding
    if kind.uses_memory:
        mapping["memory"] = {"slots": case.slots, "width": case.memory_width}
    return mapping


class TorchLSTMModel(nn.Module):
    """``torch.nn.LSTM`` with the same optional embedding and Linear head as a manntk model."""

    def __init__(self, input_size: int, hidden: int, output_size: int, embedding: int | None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(input_size, embedding) if embedding else None
        self.rnn = nn.LSTM(embedding or input_size, hidden, batch_first=True)
        self.head = nn.Linear(hidden, output_size)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        if self.embedding is not None:
            x = self.embedding(x)
        y, state = self.rnn(x, state)
        return self.head(y), state


def build_case_model(case: Case, input_size: int, output_size: int, embedding: int | None) -> nn.Module:
    """The model of ``case``: ``model(x, state=None) -> (logits, state)``."""
    if case.model == REFERENCE:
        return TorchLSTMModel(input_size, case.hidden, output_size, embedding)
    from manntk.build import build_model

    model = build_model(manntk_mapping(case, input_size, output_size, embedding))
    if MODELS[case.model].compiled:
        model.compile_layers()
    return model


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _detach(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {key: _detach(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(item) for item in value)
    return value


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared storages counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())


class Runner:
    """A built case: ``run()`` does one unit of work (``work`` chars or iterations)."""

    work: float
    model: nn.Module

    def run(self) -> None:
        raise NotImplementedError

    def resident(self) -> Iterable[Tensor]:
        """The tensors an iteration starts with (see the module doc)."""
        raise NotImplementedError

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class LMRunner(Runner):
    """Character-LM training or inference on a fixed random batch of token ids."""

    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        torch.manual_seed(seed)
        self.case, self.device = case, device
        self.model = build_case_model(case, VOCAB, VOCAB, EMBEDDING).to(device=device, dtype=dtype)
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randint(VOCAB, (case.batch, case.tbptt + 1), generator=generator).to(device)
        self.inputs, self.targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        self.training = case.mode == "train"
        self.model.train(self.training)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4) if self.training else None
        self.state: Any = None
        self.work = case.batch * case.tbptt
        from manntk.engine import consuming

        self.eval_options = consuming(self.model)  # evaluation drops each chunk's old state, as manntk's evaluator does

    def run(self) -> None:
        if self.training:
            logits, state = self.model(self.inputs, _detach(self.state))
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), self.targets.reshape(-1))
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state = _detach(state)
        else:
            with torch.no_grad():
                logits, self.state = self.model(self.inputs, self.state, **self.eval_options)
                nn.functional.cross_entropy(logits.reshape(-1, VOCAB), self.targets.reshape(-1))

    def resident(self) -> Iterable[Tensor]:
        yield from self.model.parameters()
        yield from self.model.buffers()
        if self.optimizer is not None:
            yield from _tensors(list(self.optimizer.state.values()))
        yield from (self.inputs, self.targets)
        yield from _tensors(self.state)


class AlgoRunner(Runner):
    """The algorithmic-task protocol: batch 1, one copy sequence per training iteration."""

    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        from manntk.tasks.algorithmic import CopyConfig, copy

        config = CopyConfig(width=6, min_length=1, max_length=case.max_length)
        generator = torch.Generator().manual_seed(seed)
        self.batches = []
        for _ in range(case.sequences):
            batch = copy.generate(config, 1, generator).to(device)
            self.batches.append(attrs.evolve(batch, inputs=batch.inputs.to(dtype), targets=batch.targets.to(dtype)))
        torch.manual_seed(seed)
        self.model = build_case_model(case, config.input_size, config.output_size, None).to(device=device, dtype=dtype)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.work = case.sequences
        # the peak-memory iteration uses the longest sequence
        self.longest = max(range(len(self.batches)), key=lambda i: self.batches[i].inputs.shape[1])

    def step(self, batch: Any) -> None:
        from manntk.tasks.algorithmic import bce_per_bit

        logits, _ = self.model(batch.inputs)
        bce_per_bit(logits, batch).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self) -> None:
        for batch in self.batches:
            self.step(batch)

    def run_longest(self) -> None:
        self.step(self.batches[self.longest])

    def resident(self) -> Iterable[Tensor]:
        yield from self.model.parameters()
        yield from self.model.buffers()
        yield from _tensors(list(self.optimizer.state.values()))
        for batch in self.batches:
            yield from attrs.astuple(batch, recurse=False)


def make_runner(case: Case, device: torch.device, dtype: torch.dtype, seed: int) -> Runner:
    return AlgoRunner(case, device, dtype, seed) if case.mode == "algo" else LMRunner(case, device, dtype, seed)


# --------------------------------------------------------------------------- measuring


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence fds 1 and 2 (the profiler's native start/stop lines and c10's warning about
    blocks allocated before profiling, whose frees it cannot count)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            except OSError:
                pass
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def cpu_peak_growth(function: Callable[[], None]) -> int:
    """The highest growth of live CPU tensor bytes while ``function`` runs.

    The running sum of c10's allocation (+) and free (-) events recorded by
    ``torch.profiler`` with ``profile_memory=True``; frees of blocks allocated before the
    profile started are not recorded, so they never lower the sum (the peak can only be
    overstated by what the iteration frees of its starting tensors, e.g. the old state).
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_output():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            function()
    events = [event for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"]
    events.sort(key=lambda event: event.start_ns())
    current = peak = 0
    for event in events:
        if event.device_type() != torch.autograd.DeviceType.CPU:
            continue
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def measure_peak_memory(runner: Runner, device: torch.device) -> int:
    """Peak live tensor bytes of one iteration of ``runner`` (see the module doc)."""
    function = runner.run_longest if isinstance(runner, AlgoRunner) else runner.run
    release_workspace()  # the chunk kernels' buffers kept from earlier iterations are allocated again, and counted
    resident = storage_bytes(runner.resident())
    if device.type == "cuda":
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        function()
        _synchronize(device)
        growth = torch.cuda.max_memory_allocated(device) - before
    else:
        growth = cpu_peak_growth(function)
    return resident + growth


def _quantiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


@attrs.define
class Result:
    """The measurements of one case."""

    case: Case
    parameters: int
    blocks: int  # units of work per timed block
    rates: list[float] = attrs.field(factory=list)  # per repeat
    peak_memory_bytes: int | None = None
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else math.nan

    def summary(self) -> dict[str, float]:
        if not self.rates:
            return {}
        q1, q3 = _quantiles(self.rates)
        median = self.median
        return {
            "median": median,
            "q1": q1,
            "q3": q3,
            "min": min(self.rates),
            "max": max(self.rates),
            "iqr_relative": (q3 - q1) / median if median else math.nan,
        }


def paired_ratio(numerator: Result, denominator: Result) -> tuple[float, float, float]:
    """Median, min and max over repeats of ``numerator.rates[r] / denominator.rates[r]``."""
    ratios = [a / b for a, b in zip(numerator.rates, denominator.rates) if b > 0]
    if not ratios:
        return math.nan, math.nan, math.nan
    return statistics.median(ratios), min(ratios), max(ratios)


def _log(progress: TextIO | None, message: str) -> None:
    if progress is not None:
        print(message, file=progress, flush=True)


def run_cases(cases: Sequence[Case], settings: Settings, progress: TextIO | None = None) -> dict[Case, Result]:
    """Build, warm up, measure memory, then time every case in interleaved repeats."""
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    runners: dict[Case, Runner] = {}
    results: dict[Case, Result] = {}
    for case in cases:
        _log(progress, f"[bench] building and warming up {case.label}")
        try:
            runner = make_runner(case, device, dtype, settings.seed)
            elapsed = math.inf
            # a compiled model compiles in its first iteration; time a second one for `blocks`
            for _ in range(max(settings.warmup, 1) + MODELS[case.model].compiled):
                _synchronize(device)
                start = time.perf_counter()
                runner.run()
                _synchronize(device)
                elapsed = time.perf_counter() - start
            blocks = max(1, math.ceil(settings.min_time / elapsed)) if elapsed > 0 else 1
            result = Result(case, runner.parameters(), blocks)
            if settings.measure_memory:
                result.peak_memory_bytes = measure_peak_memory(runner, device)
        except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as error:  # reported, not fatal
            results[case] = Result(case, 0, 0, error=f"{type(error).__name__}: {error}".splitlines()[0][:200])
            _log(progress, f"[bench] {case.label} failed: {results[case].error}")
            continue
        runners[case], results[case] = runner, result
    order = list(runners)
    for repeat in range(settings.repeats):
        _log(progress, f"[bench] repeat {repeat + 1}/{settings.repeats}")
        shift = repeat % len(order) if order else 0
        for case in order[shift:] + order[:shift]:
            runner, result = runners[case], results[case]
            for _ in range(settings.settle):  # untimed: the heap is in the previous case's state
                runner.run()
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(result.blocks):
                runner.run()
            _synchronize(device)
            result.rates.append(runner.work * result.blocks / (time.perf_counter() - start))
    return {case: results[case] for case in cases}


# --------------------------------------------------------------------------- presets


def _lm(model: str, mode: str, hidden: int, slots: int = 0, batch: int = 128, tbptt: int = 50, width: int | None = None) -> Case:
    return Case(model, mode, hidden, slots, width, batch, tbptt)


def _algo(model: str, hidden: int = 100, slots: int = 50, width: int = 32, sequences: int = 8, max_length: int = 50) -> Case:
    return Case(model, "algo", hidden, slots, width, sequences=sequences, max_length=max_length)


ALL_MODELS = ("armin", "armin-plain", "armin-fused", "awta", "tardis", "ntm", "lstm", REFERENCE)
"""Every model but ``armin-compiled``: the copy protocol's sequences have many lengths, and
each new length would compile again (minutes each)."""


def _cpu_targets() -> Preset:
    armin_train = _lm("armin", "train", 500, 5)
    fused_train = _lm("armin-fused", "train", 500, 5)
    compiled_train = _lm("armin-compiled", "train", 500, 5)
    lstm_train = _lm(REFERENCE, "train", 1000)
    armin_eval_4 = _lm("armin", "eval", 800, 4)
    armin_eval_256 = _lm("armin", "eval", 800, 256)
    lstm_eval = _lm(REFERENCE, "eval", 1000)
    algo = {model: _algo(model) for model in ALL_MODELS}
    # The thresholds are the default path's; the fused step and the compiled layers (not
    # the default: products on MKL) and the batch-1 ratio to the NTM-style model (set when
    # that model had no chunk kernel) are reported without one.
    targets = (
        Target("train chars/s: ARMIN 500 N=5 / torch.nn.LSTM 1000", "rate", armin_train, lstm_train, ">=", 1.1),
        Target("train chars/s: ARMIN fused 500 N=5 / torch.nn.LSTM 1000", "rate", fused_train, lstm_train),
        Target("train chars/s: ARMIN compiled 500 N=5 / torch.nn.LSTM 1000", "rate", compiled_train, lstm_train),
        Target("train peak memory: ARMIN 500 N=5 / torch.nn.LSTM 1000", "memory", armin_train, lstm_train, "<=", 1.2),
        Target("train peak memory: ARMIN fused 500 N=5 / torch.nn.LSTM 1000", "memory", fused_train, lstm_train, "<=", 1.2),
        Target("train peak memory: ARMIN compiled 500 N=5 / torch.nn.LSTM 1000", "memory", compiled_train, lstm_train, "<=", 1.2),
        Target("eval chars/s (hard reads by index, the chunk kernel): ARMIN 800 N=256 / N=4", "rate", armin_eval_256, armin_eval_4, ">=", 0.9),
        Target("algo it/s (copy, batch 1): ARMIN / NTM-style", "rate", algo["armin"], algo["ntm"]),
        Target("algo it/s (copy, batch 1): ARMIN fused step / NTM-style", "rate", algo["armin-fused"], algo["ntm"]),
        # batch 1 at paper sizes: the default path (the chunk kernel) against the plain per-step
        # path, and twice the ARMIN authors' code (28-30 it/s on the 2-core AMD EPYC)
        Target("algo it/s (copy, batch 1): ARMIN / ARMIN plain (fast: false)", "rate", algo["armin"], algo["armin-plain"], ">=", 2.0),
        Target("algo it/s (copy, batch 1): ARMIN", "absolute_rate", algo["armin"], None, ">=", 56.0),
    )
    return Preset(
        "cpu-targets",
        "the issue's CPU targets: char-LM shapes (vocab 50, embedding 128, batch 128, TBPTT 50), float32; "
        "algorithmic protocol (batch 1, hidden 100, memory 50x32, copy sequences) for every model",
        (armin_train, fused_train, compiled_train, lstm_train, armin_eval_4, armin_eval_256, lstm_eval, *algo.values()),
        targets,
        repeats=5,
        warmup=1,
    )


def _paper_table4() -> Preset:
    armin = _lm("armin", "train", 500, 5, batch=384, tbptt=50)
    lstm = _lm(REFERENCE, "train", 1000, batch=128, tbptt=100)
    engine_lstm = _lm("lstm", "train", 1000, batch=128, tbptt=100)
    compiled = attrs.evolve(armin, model="armin-compiled")
    fused = attrs.evolve(armin, model="armin-fused")  # CPU only: on CUDA the fused cell runs its eager path
    cases = (armin, fused, compiled, lstm, engine_lstm, attrs.evolve(armin, mode="eval"), attrs.evolve(lstm, mode="eval"), attrs.evolve(engine_lstm, mode="eval"))
    targets = (
        Target("train chars/s: ARMIN 500 N=5 B384 T50 / torch.nn.LSTM 1000 B128 T100", "rate", armin, lstm),
        Target("train chars/s: ARMIN fused 500 N=5 B384 T50 / torch.nn.LSTM 1000 B128 T100", "rate", fused, lstm),
        Target("train chars/s: ARMIN compiled 500 N=5 B384 T50 / torch.nn.LSTM 1000 B128 T100", "rate", compiled, lstm),
        Target("train peak memory: ARMIN 500 N=5 B384 T50 / torch.nn.LSTM 1000 B128 T100", "memory", armin, lstm),
        Target("GPU train chars/s: ARMIN 500 N=5 B384 T50", "absolute_rate", armin, None, ">=", 1_000_000, device="cuda"),
        Target("GPU train chars/s: ARMIN compiled 500 N=5 B384 T50", "absolute_rate", compiled, None, ">=", 1_000_000, device="cuda"),
    )
    return Preset(
        "paper-table4",
        "the paper's table 4 setups: ARMIN 500 (N=5, TBPTT 50, batch 384) vs LSTM 1000 (TBPTT 100, batch 128)",
        cases,
        targets,
        repeats=3,
        warmup=1,
    )


GROWTH_SLOTS = (4, 8, 16, 32, 64, 128, 256)
GROWTH_HIDDEN = (64, 128, 256, 512)


def _growth() -> Preset:
    batch, tbptt, hidden, slots = 16, 20, 128, 16
    cases: list[Case] = []
    for mode in ("train", "eval"):
        for model in ("armin", "awta", "ntm"):
            cases += [_lm(model, mode, hidden, n, batch, tbptt) for n in GROWTH_SLOTS]
            cases += [_lm(model, mode, h, slots, batch, tbptt) for h in GROWTH_HIDDEN if h != hidden]
        cases += [_lm(REFERENCE, mode, h, 0, batch, tbptt) for h in GROWTH_HIDDEN]
    first, last = GROWTH_SLOTS[0], GROWTH_SLOTS[-1]
    # reports only: the flat-in-N target (auto-addressing's discrete path >= 0.9) is
    # cpu-targets' ARMIN 800; at hidden 128 the N slot logits alone are a fifth of a step's
    # multiply-adds at N=256, so this ratio sits at 0.89-0.92 by arithmetic
    targets = tuple(
        Target(
            f"{mode} chars/s: {MODELS[model].name} h{hidden} N={last} / N={first}",
            "rate",
            _lm(model, mode, hidden, last, batch, tbptt),
            _lm(model, mode, hidden, first, batch, tbptt),
        )
        for mode in ("train", "eval")
        for model in ("armin", "awta", "ntm")
    )
    return Preset(
        "growth",
        f"time and memory against slots N ({first}..{last}, hidden {hidden}) and hidden size "
        f"({', '.join(map(str, GROWTH_HIDDEN))}, N={slots}) for auto (ARMIN), tardis (AwTA) and ntm (NTM-style); "
        f"batch {batch}, TBPTT {tbptt}",
        tuple(cases),
        targets,
        repeats=3,
        warmup=1,
        min_time=0.2,
    )


def _tiny() -> Preset:
    cases: list[Case] = []
    for mode in ("train", "eval"):
        cases += [_lm(model, mode, 8, 4, batch=2, tbptt=5) for model in ALL_MODELS]
    cases += [_algo(model, hidden=8, slots=4, width=4, sequences=2, max_length=3) for model in ALL_MODELS]
    targets = (Target("train chars/s: ARMIN / torch.nn.LSTM (tiny; no threshold)", "rate", cases[0], cases[5]),)
    # one thread: at toy sizes, OpenMP hand-offs on a busy machine cost more than the work
    return Preset("tiny", "every model at toy sizes but the compiled one (tests/test_compile.py), for the test suite", tuple(cases), targets, repeats=2, warmup=1, threads=1)


PRESETS: dict[str, Callable[[], Preset]] = {
    "cpu-targets": _cpu_targets,
    "paper-table4": _paper_table4,
    "growth": _growth,
    "tiny": _tiny,
}


DEFAULT_HIDDEN = 128
DEFAULT_SLOTS = 16
DEFAULT_BATCH = 32
DEFAULT_TBPTT = 50


def custom_preset(
    models: Sequence[str] = ALL_MODELS,
    modes: Sequence[str] = MODES,
    hidden: dict[str, int] | int = DEFAULT_HIDDEN,
    slots: Sequence[int] | None = None,
    width: int | None = None,
    batch: int = DEFAULT_BATCH,
    tbptt: int = DEFAULT_TBPTT,
) -> Preset:
    """Cases from sizes: every model x mode x slot count (a ``torch.nn.LSTM`` reference is added by the run).

    ``hidden`` is one size for every model, or a size per model key (``default`` for the
    others). ``slots`` default: 16 for the LM modes, the paper's 50 for ``algo``; ``width``
    default: the hidden size for the LM modes, 32 for ``algo``. ``algo`` cases follow the
    paper's protocol (batch 1, copy sequences) at the given hidden size.
    """
    sizes = hidden if isinstance(hidden, dict) else {}
    default = hidden if isinstance(hidden, int) else sizes.get("default", DEFAULT_HIDDEN)
    cases: list[Case] = []
    for mode in modes:
        for model in models:
            size = sizes.get(model, default)
            counts = (slots or ((50,) if mode == "algo" else (DEFAULT_SLOTS,))) if MODELS[model].uses_memory else (0,)
            for n in counts:
                if mode == "algo":
                    case = _algo(model, size, n, width or 32)
                else:
                    case = _lm(model, mode, size, n, batch, tbptt, width)
                if case not in cases:
                    cases.append(case)
    return Preset("custom", "sizes from the command line", tuple(cases))


def add_references(cases: Sequence[Case]) -> list[Case]:
    """``cases`` plus each one's ``torch.nn.LSTM`` reference where the run lacks one of its mode.

    A case's reference is the torch.nn.LSTM case of the same mode with the same hidden
    size and shapes, else the first torch.nn.LSTM case of the same mode.
    """
    out = list(cases)
    for case in cases:
        if case.model != REFERENCE and not any(c.model == REFERENCE and c.mode == case.mode for c in out):
            out.append(case.reference())
    return out


def reference_for(case: Case, cases: Sequence[Case]) -> Case | None:
    if case.model == REFERENCE:
        return None
    exact = case.reference()
    if exact in cases:
        return exact
    return next((c for c in cases if c.model == REFERENCE and c.mode == case.mode), None)


# --------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine: CPU model (and vendor, family, model numbers, vector instructions), cores,
    threads, torch version, device name, load, allocator."""
    cpu = cpu_info("model name") or platform.processor() or platform.machine()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_identity": cpu_identity(),  # the generation, where the model name is a VM's generic one
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector instructions torch uses
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": cpu,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    with contextlib.suppress(OSError, AttributeError):
        info["load_average"] = list(os.getloadavg())
    info["allocator"] = allocator_settings()
    return info


ALLOCATOR_VARIABLES = ("LD_PRELOAD", "GLIBC_TUNABLES")
"""Environment variables that change how the C library allocates (glibc's ``MALLOC_*`` and
tunables, a preloaded allocator such as jemalloc)."""


def allocator_settings() -> dict[str, str]:
    """The allocator settings of this process's environment (empty: the C library's defaults).

    They move the reference: under glibc's defaults ``torch.nn.LSTM`` 1000 at batch 128
    takes ~90k page faults per training iteration (its per-chunk buffers are above the mmap
    threshold, fresh pages every time), 8-13% of its time on a 2-core Xeon, against 0-4% for
    ARMIN 500 fused. A report says which allocator it ran under (benchmarks/README.md).
    """
    return {name: value for name, value in sorted(os.environ.items()) if name.startswith("MALLOC_") or name in ALLOCATOR_VARIABLES}


def _evaluate_target(target: Target, results: dict[Case, Result], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": target.description,
        "metric": target.metric,
        "numerator": target.numerator.label,
        "denominator": target.denominator.label if target.denominator else None,
        "op": target.op,
        "threshold": target.threshold,
        "value": None,
        "status": "INFO",
    }
    if target.device is not None and device.type != target.device:
        out["status"] = f"SKIP (needs {target.device})"
        return out
    numerator = results.get(target.numerator)
    denominator = results.get(target.denominator) if target.denominator else None
    if numerator is None or not numerator.rates or (target.denominator and (denominator is None or not denominator.rates)):
        out["status"] = "SKIP (not measured)"
        return out
    if target.metric == "rate":
        value = paired_ratio(numerator, denominator)[0]
    elif target.metric == "memory":
        if not numerator.peak_memory_bytes or not denominator.peak_memory_bytes:
            out["status"] = "SKIP (memory not measured)"
            return out
        value = numerator.peak_memory_bytes / denominator.peak_memory_bytes
    else:
        value = numerator.median
    out["value"] = value
    if target.threshold is not None:
        ok = value >= target.threshold if target.op == ">=" else value <= target.threshold
        out["status"] = "PASS" if ok else "FAIL"
    return out


def _sweeps(results: dict[Case, Result]) -> list[dict[str, Any]]:
    """For each model and mode measured at several slot counts (or hidden sizes) with all else
    equal: rate and memory at each point, relative to the smallest."""
    sweeps = []
    for axis in ("slots", "hidden"):
        groups: dict[tuple, list[Result]] = {}
        for case, result in results.items():
            if not result.rates or (axis == "slots" and not case.slots):
                continue
            key = attrs.astuple(attrs.evolve(case, **{axis: 1 if axis == "slots" else 0}))
            groups.setdefault(key, []).append(result)
        for members in groups.values():
            if len(members) < 2:
                continue
            members.sort(key=lambda r: getattr(r.case, axis))
            base = members[0]
            points = []
            for member in members:
                point = {
                    axis: getattr(member.case, axis),
                    "label": member.case.label,
                    "rate": member.median,
                    "rate_relative": paired_ratio(member, base)[0],
                    "time_relative": 1 / paired_ratio(member, base)[0],
                    "peak_memory_bytes": member.peak_memory_bytes,
                }
                if member.peak_memory_bytes and base.peak_memory_bytes:
                    point["memory_relative"] = member.peak_memory_bytes / base.peak_memory_bytes
                points.append(point)
            case = base.case
            sweeps.append({"axis": axis, "model": case.model, "name": case.name, "mode": case.mode,
                           "hidden": case.hidden if axis == "slots" else None,
                           "slots": case.slots if axis == "hidden" else None, "points": points})
    return sweeps


def build_report(preset: Preset, settings: Settings, results: dict[Case, Result], machine: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready report of a run."""
    from manntk import __version__

    cases = list(results)
    device = torch.device(settings.device)
    memory_method = (
        "resident tensors + (torch.cuda.max_memory_allocated - memory_allocated before), one iteration"
        if device.type == "cuda"
        else "resident tensors + peak growth of live CPU tensor bytes (torch.profiler profile_memory events), one iteration"
    )
    entries = []
    for case, result in results.items():
        reference = reference_for(case, cases)
        ref_result = results.get(reference) if reference else None
        entry: dict[str, Any] = {
            "label": case.label,
            "model": case.model,
            "name": case.name,
            "mode": case.mode,
            "unit": UNITS[case.mode],
            "hidden": case.hidden,
            "slots": case.slots,
            "width": case.memory_width if case.slots else None,
            "batch": case.batch,
            "tbptt": case.tbptt if case.mode != "algo" else None,
            "work_per_iteration": case.batch * case.tbptt if case.mode != "algo" else 1,
            "parameters": result.parameters,
            "units_per_block": result.blocks,
            "rates": result.rates,
            **result.summary(),
            "peak_memory_bytes": result.peak_memory_bytes,
            "reference": reference.label if reference else None,
            "ratio": None,
            "ratio_min": None,
            "ratio_max": None,
            "memory_ratio": None,
            "error": result.error,
        }
        if ref_result is not None and ref_result.rates and result.rates:
            entry["ratio"], entry["ratio_min"], entry["ratio_max"] = paired_ratio(result, ref_result)
            if result.peak_memory_bytes and ref_result.peak_memory_bytes:
                entry["memory_ratio"] = result.peak_memory_bytes / ref_result.peak_memory_bytes
        entries.append(entry)
    return {
        "manntk_version": __version__,
        "preset": preset.name,
        "description": preset.description,
        "settings": attrs.asdict(settings),
        "memory_method": memory_method,
        "machine": machine,
        "results": entries,
        "targets": [_evaluate_target(target, results, device) for target in preset.targets],
        "sweeps": _sweeps(results),
    }


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits == 0:
        return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
    return f"{value:.{digits}f}"


def _mib(value: int | None) -> str:
    return "-" if not value else f"{value / 2**20:,.1f}"


def _allocator_text(settings: dict[str, str] | None) -> str:
    if settings is None:  # a report saved before the allocator was recorded
        return "not recorded"
    if not settings:
        return "the C library's defaults"
    return " ".join(f"{name}={value}" for name, value in settings.items())


def _identity_text(machine: dict[str, Any]) -> str:
    """`` (AuthenticAMD family 26 model 2, AVX512)`` from a report's machine, or nothing (older reports)."""
    parts = [machine[key] for key in ("cpu_identity", "cpu_capability") if machine.get(key)]
    return f" ({', '.join(parts)})" if parts else ""


def format_table(report: dict[str, Any]) -> str:
    """The plain-text report: the results table, the sweeps and the target checks."""
    machine, settings = report["machine"], report["settings"]
    lines = [
        f"manntk bench: preset {report['preset']} ({report['description']})",
        f"machine: {machine['cpu']}{_identity_text(machine)}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), device {machine['device']} ({machine['device_name']}), "
        f"{settings['dtype']}; load average {', '.join(f'{x:.2f}' for x in machine.get('load_average', []))}",
        f"allocator: {_allocator_text(machine.get('allocator'))}"
        + (f"; chunk kernels' products: {machine['products']}" if machine.get("products") else ""),
        f"repeats {settings['repeats']} (interleaved), warm-up {settings['warmup']}, "
        f"settle {settings.get('settle', 0)} (untimed iterations before each timed block); "
        "rate: median over repeats, ±IQR/2 relative to it; x LSTM: median of per-repeat ratios to torch.nn.LSTM "
        "(min..max); peak: live tensor bytes of one iteration",
    ]
    load = machine.get("load_average")
    if load and machine.get("cores") and load[0] > machine["cores"]:
        lines.append(
            f"warning: load average {load[0]:.1f} on {machine['cores']} cores: other processes compete for the CPU; "
            "absolute rates are unreliable, and with several torch threads each parallel op can stall on a "
            "descheduled thread (compare --threads 1; see benchmarks/README.md)"
        )
    lines.append("")
    header = ["mode", "model", "hidden", "N", "batch", "tbptt", "params", "median", "unit", "±IQR/2",
              "min..max", "x LSTM", "(min..max)", "peak MiB", "mem x LSTM"]
    rows = []
    for entry in report["results"]:
        if entry["error"]:
            rows.append([entry["mode"], entry["name"], str(entry["hidden"]), str(entry["slots"] or "-"),
                         str(entry["batch"]), str(entry["tbptt"] or "-"), "", "failed: " + entry["error"],
                         "", "", "", "", "", "", ""])
            continue
        ratio = entry["ratio"]
        rows.append([
            entry["mode"],
            entry["name"],
            str(entry["hidden"]),
            str(entry["slots"]) if entry["slots"] else "-",
            str(entry["batch"]),
            str(entry["tbptt"]) if entry["tbptt"] else "-",
            f"{entry['parameters']:,}",
            _number(entry.get("median")),
            entry["unit"],
            f"±{100 * entry['iqr_relative'] / 2:.1f}%" if entry.get("iqr_relative") is not None else "-",
            f"{_number(entry.get('min'))}..{_number(entry.get('max'))}",
            "ref" if entry["model"] == REFERENCE else _number(ratio, 2),
            "" if ratio is None else f"({entry['ratio_min']:.2f}..{entry['ratio_max']:.2f})",
            _mib(entry["peak_memory_bytes"]),
            "ref" if entry["model"] == REFERENCE else _number(entry["memory_ratio"], 2),
        ])
    numeric = {2, 3, 4, 5, 6, 7, 9, 10, 11, 13, 14}
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip()

    lines.append(line(header))
    lines.append(line(["-" * w for w in widths]))
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            lines.append("")
        lines.append(line(row))
        previous = row[0]
    if report["sweeps"]:
        lines += ["", "growth (relative to the smallest point; time = 1 / rate):"]
        for sweep in report["sweeps"]:
            if sweep["axis"] == "slots":
                fixed = f"hidden {sweep['hidden']}"
            else:
                fixed = f"N={sweep['slots']}" if sweep["slots"] else "no memory"
            key = "N" if sweep["axis"] == "slots" else "h"
            points = "  ".join(
                f"{key}={p[sweep['axis']]}: t x{p['time_relative']:.2f} m x{p.get('memory_relative', math.nan):.2f}"
                for p in sweep["points"]
            )
            lines.append(f"  {sweep['mode']:<5} {sweep['name']:<14} ({fixed}) {points}")
    if report["targets"]:
        identity = f" ({machine['cpu_identity']})" if machine.get("cpu_identity") else ""
        where = f"{machine['cpu']}{identity}, {machine['torch_threads']} thread{'s' if machine['torch_threads'] != 1 else ''}"
        lines += ["", "targets (reports, not test assertions):"]
        for target in report["targets"]:
            value = "-" if target["value"] is None else f"{target['value']:,.3f}"
            goal = f" (target {target['op']} {target['threshold']:g})" if target["threshold"] is not None else ""
            lines.append(f"  {target['status']:<5} {target['description']} = {value}{goal}  [{where}]")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def run_benchmark(preset: Preset, settings: Settings, models: Sequence[str] | None = None, progress: TextIO | None = None) -> dict[str, Any]:
    """Run ``preset`` (its cases restricted to ``models`` and with their references) and return the report."""
    from manntk.training.evaluate import flush_subnormals

    threads = torch.get_num_threads()
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        flush_subnormals(torch.device(settings.device), settings.flush_denormal)
        return _run_benchmark(preset, settings, models, progress)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def _run_benchmark(preset: Preset, settings: Settings, models: Sequence[str] | None, progress: TextIO | None) -> dict[str, Any]:
    device = torch.device(settings.device)
    cases = list(preset.cases)
    if models is not None:
        kept = [case for case in cases if case.model in models and case.model != REFERENCE]
        # torch.nn.LSTM cases stay when asked for or when a kept case compares against them
        cases = [
            case for case in cases
            if case in kept or (case.model == REFERENCE and (REFERENCE in models or any(reference_for(k, cases) == case for k in kept)))
        ]
    cases = add_references(cases)
    machine = machine_info(device)
    results = run_cases(cases, settings, progress)
    # the library of the chunk kernels' large float32 products, when the cases loaded them
    machine["products"] = products_library()
    with contextlib.suppress(OSError, AttributeError):
        machine["load_average_end"] = list(os.getloadavg())
    return build_report(preset, settings, results, machine)


def write_json(report: dict[str, Any], path: str, out: TextIO) -> None:
    """Write ``report`` as JSON to ``path`` (through a temporary name and a rename; its folder
    is created), or to ``out`` when ``path`` is ``-``."""
    from manntk.training.checkpoint import write_text_atomic

    text = json.dumps(report, indent=2, default=str)
    if path == "-":
        print(text, file=out)
    else:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, text + "\n")


# --------------------------------------------------------------------------- command line


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown {what} {', '.join(unknown) or repr(text)}; choose from {', '.join(allowed)}")
    return names


def _hidden(text: str) -> dict[str, int] | int:
    """``256`` (every model) or ``armin=500,torch-lstm=1000[,default=256]``."""
    if "=" not in text:
        return _int_list(text)[0]
    sizes = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key != "default" and key not in MODELS:
            raise ValueError(f"--hidden: unknown model {key!r}; choose from {', '.join(MODELS)} (or default)")
        sizes[key] = _int_list(value)[0]
    return sizes


@hookimpl
def register_commands(commands: argparse._SubParsersAction) -> None:
    """``manntk bench``."""
    bench = commands.add_parser(
        "bench",
        help="measure training/inference throughput and peak memory of every model against torch.nn.LSTM",
        description="Measure throughput (chars/s, or it/s for the algorithmic protocol) and peak memory of "
        "ARMIN, AwTA, TARDIS, NTM-style, the engine's LSTM and torch.nn.LSTM in one run; ratios are against "
        "torch.nn.LSTM measured in the same run. See benchmarks/README.md.",
    )
    bench.add_argument("--preset", choices=sorted(PRESETS), help="a predefined set of cases (and targets)")
    bench.add_argument("--models", help=f"comma-separated models (default: all): {', '.join(MODELS)}")
    bench.add_argument("--modes", help="comma-separated: train, eval, algo (default: all three; not with --preset)")
    bench.add_argument("--hidden", help=f"hidden size: {DEFAULT_HIDDEN}, or per model: armin=500,torch-lstm=1000 (default {DEFAULT_HIDDEN})")
    bench.add_argument("--slots", help=f"memory slots N, comma-separated for a sweep (default {DEFAULT_SLOTS}; algo: 50)")
    bench.add_argument("--width", type=int, help="slot width (default: hidden size; algo: 32)")
    bench.add_argument("--batch", type=int, help=f"batch size of the LM modes (default {DEFAULT_BATCH})")
    bench.add_argument("--tbptt", type=int, help=f"TBPTT chunk length of the LM modes (default {DEFAULT_TBPTT})")
    bench.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    bench.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    bench.add_argument("--repeats", type=int, help="timed repeats per case (default: the preset's, else 5)")
    bench.add_argument("--warmup", type=int, help="warm-up iterations per case (default: the preset's, else 1)")
    bench.add_argument(
        "--settle", type=int, default=1,
        help="untimed iterations of a case before each timed block, after the other cases ran (default 1)",
    )
    bench.add_argument("--min-time", type=float, help="seconds a timed block lasts at least (default: the preset's, else 0)")
    bench.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory iteration")
    bench.add_argument("--no-flush-denormal", action="store_true", help="keep subnormal floats on the CPU (the trainer flushes them by default)")
    bench.add_argument("--json", metavar="PATH", help="also write the JSON report to PATH ('-': JSON on stdout, table on stderr)")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    bench.add_argument("--show", metavar="JSON", help="print the table of a saved JSON report and exit (runs nothing)")
    bench.add_argument(
        "--plot", metavar="PNG",
        help="also draw the growth sweeps (time and memory against N and the hidden size; --preset growth) "
        "into PNG (another suffix, such as .svg or .pdf, picks another format); with --show, from the saved report",
    )
    bench.set_defaults(handler=bench_command)


def bench_command(args: Any) -> int:
    """The ``manntk bench`` handler."""
    if args.plot:
        from manntk.tools.plot import PlotError, image_format

        try:
            image_format(args.plot)  # matplotlib and the format, before a run of minutes rather than after it
        except PlotError as error:
            raise UsageError(f"--plot: {error}") from None
    if args.show:
        try:
            with open(args.show, encoding="utf-8") as file:
                report = json.load(file)
            print(format_table(report))
        except (OSError, ValueError, KeyError) as error:
            raise UsageError(f"--show {args.show}: not a readable manntk bench report ({error})") from None
        _plot_report(report, args.plot)
        return 0
    try:
        models = _names(args.models, list(MODELS), "model") if args.models else None
        if args.preset:
            sizes = {name: getattr(args, name) for name in ("modes", "hidden", "slots", "width", "batch", "tbptt")}
            given = [f"--{name}" for name, value in sizes.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} set the sizes of a run without --preset; a preset fixes its own")
            preset = PRESETS[args.preset]()
        else:
            for name in ("width", "batch", "tbptt"):
                value = getattr(args, name)
                if value is not None and value < 1:
                    raise ValueError(f"--{name} must be >= 1")
            preset = custom_preset(
                models=[*models, REFERENCE] if models and REFERENCE not in models else models or ALL_MODELS,
                modes=_names(args.modes, MODES, "mode") if args.modes else MODES,
                hidden=_hidden(args.hidden) if args.hidden else DEFAULT_HIDDEN,
                slots=_int_list(args.slots) if args.slots else None,
                width=args.width,
                batch=args.batch or DEFAULT_BATCH,
                tbptt=args.tbptt or DEFAULT_TBPTT,
            )
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        settings = Settings(
            device=device,
            dtype=args.dtype,
            repeats=args.repeats if args.repeats is not None else preset.repeats,
            warmup=args.warmup if args.warmup is not None else preset.warmup,
            min_time=args.min_time if args.min_time is not None else preset.min_time,
            seed=args.seed,
            threads=args.threads if args.threads is not None else preset.threads,
            measure_memory=not args.no_memory,
            flush_denormal=not args.no_flush_denormal,
            settle=args.settle,
        )
        if settings.repeats < 1 or settings.warmup < 0 or settings.min_time < 0 or settings.settle < 0:
            raise ValueError("--repeats must be >= 1, --warmup, --settle and --min-time >= 0")
    except ValueError as error:
        raise UsageError(str(error)) from None
    report = run_benchmark(preset, settings, models, progress=None if args.quiet else sys.stderr)
    table = format_table(report)
    if args.json == "-":
        print(table, file=sys.stderr)
        write_json(report, "-", sys.stdout)
    else:
        print(table)
        if args.json:
            write_json(report, args.json, sys.stdout)
    _plot_report(report, args.plot)
    return 1 if any(entry["error"] for entry in report["results"]) else 0


def _plot_report(report: dict[str, Any], path: str | None) -> None:
    """``--plot``: draw the report's growth sweeps into ``path`` (nothing without one)."""
    if not path:
        return
    from manntk.tools.plot import PlotError, plot_growth

    try:
        written = plot_growth(report, path)
    except PlotError as error:
        raise UsageError(f"--plot: {error}") from None
    print(f"wrote {written}", file=sys.stderr)
