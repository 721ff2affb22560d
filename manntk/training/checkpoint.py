"""Checkpoints: weights in safetensors, the rest beside them, written atomically.

A checkpoint is a folder ``checkpoints/step-00001234/`` holding ``weights.safetensors``
(the model; with ``train.ema_decay`` also ``averaged.safetensors``, the weight average),
``state-rank<r>.safetensors`` (each process's recurrent state) and
``trainer.pt`` (optimizer, schedules, RNG states, step, elapsed time). It is written under
a temporary name and renamed when complete; ``checkpoints/latest`` names the newest (a
pointer file replaced in one ``os.replace``, never removed first).

``manifest.json`` lists every file of the checkpoint with its SHA-256; loading checks it,
so a truncated, flipped or deleted file is an error naming the file, not a silent reset.
The pickled files are read with ``weights_only=True``: a checkpoint someone shared can hold
tensors, numbers and containers, never code that runs on loading.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from manntk.state import State, flatten_state, unflatten_state

WEIGHTS = "weights.safetensors"
AVERAGED = "averaged.safetensors"
"""The weight average of a run with ``train.ema_decay``, beside the trained weights."""
TRAINER = "trainer.pt"
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unreadable."""


def state_file(rank: int) -> str:
    """The recurrent-state file of process ``rank``."""
    return f"state-rank{rank}.safetensors"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimizer steps."""
    return f"step-{step:08d}"


def checkpoint_step(path: Path) -> int:
    """The step of checkpoint folder ``path`` (``step-00001234``: 1234), read from its name."""
    return int(path.name.removeprefix("step-"))


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Make a failed write (a full disk, a read-only directory) an ``OSError`` naming ``path``:
    ``file.write`` names no file, and ``torch.save`` and safetensors report a failed write
    as a ``RuntimeError`` or a ``SafetensorError``; ``manntk`` prints an ``OSError`` as one line."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise
    except (RuntimeError, SafetensorError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(errno.EIO, f"writing failed: {reason}", str(path)) from error


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with writing(path):
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)


def staging_dir(root: Path, step: int) -> Path:
    """The temporary folder a checkpoint is written into before it is renamed."""
    return root / f".{checkpoint_name(step)}.tmp"


def save_weights(directory: Path, model: torch.nn.Module, file: str = WEIGHTS) -> None:
    """The model's state dict as safetensors, in ``directory / file``."""
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    with writing(directory / file):
        save_file(tensors, str(directory / file))


def save_recurrent_state(directory: Path, rank: int, state: State | None) -> None:
    """One process's recurrent state (nothing when there is none)."""
    if state is not None:
        tensors = {name: t.detach().contiguous().cpu() for name, t in flatten_state(state).items()}
        with writing(directory / state_file(rank)):
            save_file(tensors, str(directory / state_file(rank)))


def save_rng(directory: Path, rank: int, device: torch.device) -> None:
    """Process ``rank``'s random number generator states."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    with writing(directory / f"rng-rank{rank}.pt"):
        torch.save({"torch": torch.get_rng_state(), "cuda": cuda}, directory / f"rng-rank{rank}.pt")


def load_rng(path: Path, rank: int, device: torch.device) -> None:
    """Restore process ``rank``'s random number generator states from checkpoint ``path``."""
    rng = _read(path / f"rng-rank{rank}.pt", lambda file: torch.load(file, weights_only=True))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


FAULT_AT = "MANNTK_FAULT_AT"
"""``"<phase>@<step>"``: the process dies at that phase of that step's checkpoint (the fault
tests' kill, at a known point; unset in normal use). Phases, in order: ``weights``,
``state`` (the trainer's), then ``trainer``, ``manifest``, ``rename``, ``latest``, ``prune``
(``finish``'s)."""


class Killed(BaseException):
    """Raised at a fault point by the fault tests in place of a real kill."""


def fault_point(phase: str, step: int) -> None:
    """Die here when ``$MANNTK_FAULT_AT`` names this phase and step."""
    if os.environ.get(FAULT_AT) == f"{phase}@{step}":
        raise Killed(f"{phase}@{step}")


def finish(root: Path, step: int, trainer_state: dict[str, Any], keep: int, best: int | None = None) -> Path:
    """Write ``trainer.pt``, rename the staging folder into place, point ``latest`` at it
    (and ``best`` at the checkpoint of step ``best``), and remove all but the newest
    ``keep`` checkpoints and the best one."""
    staging = staging_dir(root, step)
    with writing(staging / TRAINER):
        torch.save(trainer_state, staging / TRAINER)
    fault_point("trainer", step)
    manifest = {file.name: sha256(file) for file in sorted(staging.iterdir()) if file.is_file()}
    write_text_atomic(staging / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    fault_point("manifest", step)
    final = root / checkpoint_name(step)
    if final.exists():  # left by a run killed before it pointed latest here (latest never names it)
        shutil.rmtree(final)
    os.replace(staging, final)
    fault_point("rename", step)
    write_text_atomic(root / "latest", final.name + "\n")
    fault_point("latest", step)
    if best is not None and (root / checkpoint_name(best)).is_dir():
        write_text_atomic(root / "best", checkpoint_name(best) + "\n")
    kept = (root / "best").read_text(encoding="utf-8").strip() if (root / "best").exists() else None
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        if old.name != kept:
            shutil.rmtree(old)
    fault_point("prune", step)
    return final


def sha256(file: Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, ranks: int = 1) -> None:
    """Check checkpoint ``path`` against its manifest: every listed file present with its
    SHA-256, and every file a resume of ``ranks`` processes needs listed.

    Raises:
        CheckpointError: naming the first file that is missing or does not match.
    """
    listing = path / MANIFEST
    if not listing.exists():
        raise CheckpointError(f"{listing} is missing: the checkpoint cannot be checked (written by an older manntk, or incomplete)")
    manifest = _read(listing, lambda file: json.loads(file.read_text(encoding="utf-8")))
    needed = [WEIGHTS, TRAINER, *(f"rng-rank{rank}.pt" for rank in range(ranks))]
    needed += [name for name in manifest if name.startswith("state-rank")]
    for name in needed:
        if name not in manifest:
            raise CheckpointError(f"{path / name} is not in {listing}: the checkpoint is incomplete")
    for name, expected in manifest.items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint file {file} is missing (listed in {listing})")
        if sha256(file) != expected:
            raise CheckpointError(
                f"checkpoint file {file} does not match its SHA-256 in {listing}: it was changed or corrupted "
                f"after it was written. Resume from an earlier checkpoint by pointing {path.parent / 'latest'} at it."
            )


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if not pointer.exists():
        raise CheckpointError(f"run {run_dir} has no checkpoint (looked for {pointer})")
    path = root / pointer.read_text(encoding="utf-8").strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def load_weights(path: Path, device: torch.device | str = "cpu", file: str = WEIGHTS) -> dict[str, torch.Tensor]:
    """The weights in ``file`` of checkpoint ``path`` (the trained ones by default),
    checked against its manifest when it has one."""
    listing = path / MANIFEST
    if listing.exists() and (path / file).exists():
        expected = _read(listing, lambda manifest: json.loads(manifest.read_text(encoding="utf-8"))).get(file)
        if expected is not None and sha256(path / file) != expected:
            raise CheckpointError(f"checkpoint file {path / file} does not match its SHA-256 in {listing}: it was changed or corrupted after it was written")
    return _read(path / file, lambda weights: load_file(str(weights), device=str(device)))


def load_judged_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The weights a run is judged by (evaluated, inspected): the weight average when
    checkpoint ``path`` holds one (``train.ema_decay``), the trained weights otherwise."""
    return load_weights(path, device, AVERAGED if (path / AVERAGED).exists() else WEIGHTS)


def load_recurrent_state(path: Path, rank: int, device: torch.device | str = "cpu") -> State | None:
    """Process ``rank``'s recurrent state of checkpoint ``path`` (``None`` when it had none)."""
    file = path / state_file(rank)
    if not file.exists():
        return None
    return unflatten_state(_read(file, lambda f: load_file(str(f), device=str(device))))


def load_trainer_state(path: Path) -> dict[str, Any]:
    """Optimizer, schedule and RNG states of checkpoint ``path``."""
    return _read(path / TRAINER, lambda file: torch.load(file, map_location="cpu", weights_only=True))


def _read(file: Path, reader: Any) -> Any:
    if not file.exists():
        raise CheckpointError(f"checkpoint file {file} is missing: the checkpoint is incomplete")
    try:
        return reader(file)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint file {file} is unreadable ({type(error).__name__}: {error}); it may be truncated or "
            f"corrupt. Resume from an earlier checkpoint by pointing {file.parent.parent / 'latest'} at it."
        ) from error
