"""Skipping the optimizer steps whose gradient is far above the recent ones
(``train.skip_spikes``).

A model that has solved an algorithmic task trains at a loss of ~1e-8 per bit, and its
gradients, and with them RMSprop's and Adam's squared-gradient averages, shrink to match.
One sequence it gets wrong then brings a gradient millions of times larger, which the
out-of-date average does not damp: the step knocks the weights out of the solution, and the
next sequences fail and push them further (docs/results.md, "NTM-style copy across seeds",
traces a collapse that started with one such step after 1,000 error-free ones). Clipping
cannot stop it, since RMSprop divides the clipped gradient by its own root mean square;
leaving the step out can.

The reference is a geometric moving average of the gradient norms: an exponential moving
average of their logarithms (decay 0.99, about the last hundred steps), since over a run
the norms span eight orders of magnitude. A step is skipped when its norm exceeds
``factor`` times that average; the average then takes in the norm capped at that bound.
So each spike lifts the average by at most ``factor ** (1 - decay)`` (4.7% for 100):
a run of rare failures stays skipped, while a lasting rise (a new phase of learning) is
followed within a few hundred steps and the steps resume. (With an arithmetic average,
each capped spike doubled it, and a burst of seven failures got through.) The first
``warmup`` steps are never skipped. The gradient norm is taken before clipping; a norm
that is not finite is left to the rest of the step (the fp16 loss scaler skips it, a
finite-loss check stops the run).

What it did on NTM-style copy (docs/results.md, "NTM-style copy across seeds"): with a
factor of 100, 3 of 6 seeds were solved at the end (the same arm without skipping: 9 of
10), and 2 broke down: once a model is confidently wrong, the gradients that would correct
it are the spikes, and they were skipped for hundreds of steps. Skipping protects a solution only when the failures are
rare; it is an option to experiment with, off by default.
"""

from __future__ import annotations

import math
from typing import Any


SMALLEST_NORM = 1e-30
"""Norms below this count as this (a zero gradient has no logarithm)."""


class SpikeSkipper:
    """Decides, step by step, whether a gradient norm is a spike to skip.

    Args:
        factor: a norm above ``factor`` times the recent average is a spike (> 1).
        decay: the weight of the previous average at each step, in ``(0, 1)``.
        warmup: steps at the start that are never skipped; the average follows their
            norms uncapped.
    """

    def __init__(self, factor: float, decay: float = 0.99, warmup: int = 100) -> None:
        if factor <= 1.0:
            raise ValueError(f"a spike must be more than the average: factor must exceed 1, not {factor}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the decay of the average gradient norm must lie in (0, 1), not {decay}")
        self.factor, self.decay, self.warmup = factor, decay, warmup
        self.log_average: float | None = None  # the moving average of the (capped) log norms
        self.steps = 0  # finite norms seen
        self.skipped = 0

    @property
    def average(self) -> float | None:
        """The geometric moving average of the recent norms."""
        return None if self.log_average is None else math.exp(self.log_average)

    def start_over(self) -> None:
        """Forget the recent norms and warm up again (a run started again from fresh
        weights, whose gradients are not the old ones'); the count of skipped steps stays."""
        self.log_average, self.steps = None, 0

    def skip(self, norm: float) -> bool:
        """Whether the step with gradient norm ``norm`` is a spike; updates the average."""
        if not math.isfinite(norm):
            return False
        self.steps += 1
        log_norm = math.log(max(norm, SMALLEST_NORM))
        if self.log_average is None:
            self.log_average = log_norm
            return False
        log_bound = self.log_average + math.log(self.factor)
        spike = self.steps > self.warmup and log_norm > log_bound
        taken = min(log_norm, log_bound) if self.steps > self.warmup else log_norm
        self.log_average = self.decay * self.log_average + (1.0 - self.decay) * taken
        self.skipped += spike
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"log_average": self.log_average, "steps": self.steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_average, self.steps, self.skipped = state["log_average"], state["steps"], state["skipped"]
