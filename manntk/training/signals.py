"""Stopping a run cleanly on SIGTERM (what schedulers send before preemption) and SIGINT
(Ctrl-C): the current step finishes, a checkpoint is written, and the run ends with
[`TrainingInterrupted`][manntk.training.signals.TrainingInterrupted], which tells how to
resume; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(RuntimeError):
    """A run stopped by a signal after writing its checkpoint.

    Attributes:
        status: the exit status the command should end with (128 + the signal's number).
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class StopOnSignals:
    """While active, the first SIGTERM or SIGINT is recorded (``received``) instead of
    killing the process; a second SIGINT raises ``KeyboardInterrupt`` at once. Outside the
    main thread (where Python allows no handlers) it records nothing."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(number)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
