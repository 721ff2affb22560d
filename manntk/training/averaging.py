"""An exponential moving average of a model's weights (``train.ema_decay``): the weights a
run is judged by when the recipe asks for it.

Near a solution, RMSprop and Adam still take steps of about the learning rate on every
coordinate, whatever the size of the gradient, so the trained weights wander around the
solution; on the copy task, the NTM-style model then gets one validation sequence in a
thousand wrong by one position now and then, at a BCE of ~9 nats per bit, which is enough
to put a solved run back above the 0.01 threshold (docs/results.md, "NTM-style copy across
seeds"). The average of the recent weights sits where the wandering is centred. Training
itself is unchanged: the optimizer steps the trained weights, the average follows them.

The average is bias-corrected, as Adam's moments: after ``n`` updates it is
``sum_i decay^(n-i) (1 - decay) w_i / (1 - decay^n)``, the weights after each of the ``n``
steps weighted by ``decay`` per step of age, so it never mixes in the initial weights and
needs no warm-up. Integer buffers (counters) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """The exponential moving average of ``model``'s floating-point parameters and buffers,
    kept in a copy of the model (``averaged``) that can be evaluated and saved like it.

    Args:
        model: the trained model, copied once here; ``update`` reads its tensors in place,
            so it must stay where it is (device, dtype) and be changed only in place, as
            optimizers and ``load_state_dict`` do.
        decay: the weight of the previous average at each update, in ``(0, 1)``: ``0.999``
            averages over roughly the last thousand steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the decay of a weight average must lie in (0, 1), not {decay}")
        self.decay = decay
        self.updates = 0
        self.averaged = copy.deepcopy(model)
        self.averaged.requires_grad_(False)
        # (average, trained) tensor pairs, found once: a state dict per step costs more than the update
        pairs = list(zip(self.averaged.state_dict().values(), model.state_dict().values()))
        self._averaged_pairs = [(average, trained) for average, trained in pairs if average.is_floating_point()]
        self._copied_pairs = [(average, trained) for average, trained in pairs if not average.is_floating_point()]

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again from the trained model's current weights (a restart)."""
        for average, trained in self._averaged_pairs + self._copied_pairs:
            average.copy_(trained)
        self.updates = 0  # the next update is the first again: a copy

    @torch.no_grad()
    def update(self) -> None:
        """Fold the trained model's current weights into the average (after an optimizer step)."""
        self.updates += 1
        weight = (1.0 - self.decay) / (1.0 - self.decay**self.updates)  # 1 at the first update: a copy
        for average, trained in self._averaged_pairs:
            average.lerp_(trained, weight)
        for average, trained in self._copied_pairs:
            average.copy_(trained)
