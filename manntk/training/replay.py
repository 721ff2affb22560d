"""Training again on the batches a solved run still gets wrong (``train.replay_above``).

An NTM-style model that has solved copy still gets about one training sequence in a
hundred to two hundred wrong (a zero vector before the end marker, a run of them at the
end: rare inputs the fresh data seldom repeat), and at the rate a solved run trains at
(``schedule.solved_gamma``) one step on such a sequence moves it little; the same kind of
sequence then fails validation, and the run relapses (docs/results.md, "NTM-style copy
across seeds"). Replay is hard-example mining at the level of batches: once the run has
solved, a fresh batch whose loss is above ``above`` is queued ``times`` times, and every
second step trains on the queue's head instead of its own fresh batch, until the queue is
empty. Batches are re-created from their index (the task's ``train_batch(index, size)``),
so the queue is a list of integers, checkpointed with the run.

Only fresh batches are queued (a replayed batch that is still wrong is not queued again,
so one sequence the model cannot fit does not take every second step for the rest of the
run), and the queue holds at most ``capacity`` entries, dropping the oldest: a run that
collapses gets every batch wrong, and should not spend its steps on a backlog. Only for
tasks whose batches are independent (no recurrent state carried from one batch to the
next): the algorithmic tasks.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class Replay:
    """The queue of training batches to train on again.

    Args:
        above: a fresh batch whose loss (the task's, per unit) exceeds this is queued.
        times: how many more times a queued batch is trained on (>= 1).
        capacity: the most entries the queue holds; the oldest go first.
    """

    def __init__(self, above: float, times: int, capacity: int = 100) -> None:
        if times < 1:
            raise ValueError(f"a replayed batch is trained on again at least once: times must be >= 1, not {times}")
        self.above, self.times = above, times
        self.queue: deque[int] = deque(maxlen=capacity)
        self.replayed = 0  # steps that trained on a replayed batch

    def batch_index(self, step: int) -> tuple[int, bool]:
        """The index of the batch step ``step`` (counted from 0) trains on, and whether it
        is a replay: the queue's head on every second step while the queue holds one,
        ``step`` itself otherwise."""
        if self.queue and step % 2 == 1:
            self.replayed += 1
            return self.queue.popleft(), True
        return step, False

    def offer(self, index: int, loss: float) -> None:
        """Queue fresh batch ``index`` ``times`` times if its loss is above the level."""
        if loss > self.above:
            self.queue.extend([index] * self.times)

    def state_dict(self) -> dict[str, Any]:
        return {"queue": list(self.queue), "replayed": self.replayed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue.clear()
        self.queue.extend(state["queue"])
        self.replayed = state["replayed"]
