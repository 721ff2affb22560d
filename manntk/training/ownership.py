"""One owner per run directory: a new run never writes into an existing run's directory,
and an advisory lock (``fcntl.flock`` on ``RUN/.lock``) held for the run's life makes a
second trainer on the same directory refuse at once.

The operating system drops the lock when its process ends, however it ends, so a lock
left behind by a crash is recognised as stale: the file stays, the lock does not.

``runs/latest`` names the newest run started under ``runs/``, so that it can be given
wherever a run directory is asked for (``manntk eval runs/latest``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

LOCK = ".lock"

LATEST = "latest"
"""The name, in a runs folder, of the link to the newest run started there."""

RUN_FILES = ("recipe.yaml", "metrics.jsonl", "checkpoints", "results.json")
"""What marks a directory as a run's: any of these inside it."""


class RunDirectoryError(RuntimeError):
    """A run directory that this run may not use."""


def check_new_run_dir(path: Path) -> None:
    """Refuse to start a new run in ``path`` when it already holds a run (other files, such
    as the ``train.log`` a launcher opens first, are left alone)."""
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path} exists and is not a directory")
    if path.is_dir() and any((path / name).exists() for name in RUN_FILES):
        raise RunDirectoryError(
            f"{path} already holds a run; a new run would overwrite its checkpoints and metrics. "
            f"Continue it with --resume {path}, or give a new --run-dir"
        )


class RunLock:
    """The advisory lock of a run directory, held from ``acquire`` until ``release``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._file: IO[str] | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise [`RunDirectoryError`][manntk.training.ownership.RunDirectoryError]
        naming the process that holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise RunDirectoryError(
                f"{self.path.parent} is in use by {holder}: two trainers on one run directory would interleave "
                f"their checkpoints and metrics. Wait for it to finish, or stop it first"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def held_by(run_dir: Path) -> str | None:
    """Who holds the lock of ``run_dir`` (``process 123 on host``) while a trainer runs in it;
    ``None`` when no process does (a finished or stopped run, or no lock file). Asked with a
    shared lock taken and dropped at once, which leaves the file and a stale holder's name
    as they are."""
    import fcntl

    try:
        file = (run_dir / LOCK).open("r", encoding="utf-8")
    except OSError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return file.read().strip() or "another process"
        fcntl.flock(file, fcntl.LOCK_UN)
    return None


def point_latest(runs_root: Path, run_dir: Path) -> None:
    """Make ``runs_root/latest`` name ``run_dir``: a relative symlink, put in place atomically
    (a temporary link renamed over the old one), or, where symlinks cannot be made, a text
    file holding the run directory's path relative to ``runs_root``. A failure is a warning:
    it never stops the run."""
    latest = runs_root / LATEST
    target = os.path.relpath(run_dir, runs_root)
    temporary = runs_root / f".{LATEST}.{os.getpid()}.tmp"
    try:
        try:
            if temporary.is_symlink() or temporary.exists():
                temporary.unlink()
            temporary.symlink_to(target, target_is_directory=True)
        except OSError:  # no symlinks here (some Windows and network file systems): a text file
            temporary.write_text(target + "\n", encoding="utf-8")
        os.replace(temporary, latest)
    except OSError as error:
        print(f"manntk: warning: could not point {latest} at {run_dir}: {error.strerror or error}", file=sys.stderr)


def resolve_run_dir(path: str | Path) -> Path:
    """The run directory that ``path`` names: ``path`` itself, or for a symlink (``runs/latest``)
    its target, or for a ``latest`` text file (where symlinks failed) the run it names."""
    path = Path(path)
    if path.is_symlink():
        return path.resolve()
    if path.name == LATEST and path.is_file():
        return path.parent / path.read_text(encoding="utf-8").strip()
    return path
