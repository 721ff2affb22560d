"""One owner per run directory: a new run never writes into an existing run's directory,
and an advisory lock (``fcntl.flock`` on ``RUN/.lock``) held for the run's life makes a
second trainer on the same directory refuse at once.

The operating system drops the lock when its process ends, however it ends, so a lock
left behind by a crash is recognised as stale: the file stays, the lock does not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

LOCK = ".lock"

#: What marks a directory as a run's: any of these inside it.
RUN_FILES = ("recipe.yaml", "metrics.jsonl", "checkpoints", "results.json")


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
