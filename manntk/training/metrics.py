"""Metrics as JSON lines (and TensorBoard when it is installed)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    Rows carry ``step`` and ``split`` (``train``, ``valid``, ``test``) and the metrics.
    """

    def __init__(self, path: Path, tensorboard: bool = True) -> None:
        self.path = path
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row``; non-finite numbers are written as strings (JSON has no NaN)."""
        clean = {key: (str(value) if isinstance(value, float) and not math.isfinite(value) else value) for key, value in row.items()}
        try:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(clean) + "\n")
        except OSError as error:  # a full disk: `file.write` names no file
            error.filename = error.filename or str(self.path)
            raise
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step",):
                    self._writer.add_scalar(f"{row.get('split', 'train')}/{key}", value, row.get("step", 0))

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps after ``step`` (written after the checkpoint a run resumes from),
        and a last line that a kill or a full disk cut short (with a warning)."""
        if not self.path.exists():
            return
        kept = [line for line in read_metrics(self.path, torn_tail="drop") if line.get("step", 0) <= step]
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        os.replace(temporary, self.path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class MetricsError(ValueError):
    """A ``metrics.jsonl`` with a line that is not JSON (other than a torn last line)."""


def read_metrics(path: Path, torn_tail: Literal["drop", "raise"] = "drop") -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl``.

    A last line without its newline that is not valid JSON is what a kill or a full disk
    leaves behind: it is dropped with a warning (``torn_tail="raise"``: an error). Any
    other line that is not JSON is an error naming the file and the line.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            torn = number == len(lines) and not text.endswith("\n")
            if torn and torn_tail == "drop":
                warnings.warn(f"{path}: dropped line {number}, cut short ({len(line)} characters, no newline)", stacklevel=2)
                continue
            raise MetricsError(f"{path}, line {number}: not a JSON row ({error})") from None
    return rows
