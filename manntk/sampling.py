"""Hard addressing: straight-through Gumbel-softmax and its temperature schedule."""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from torch import Tensor

from manntk.config import non_negative, positive
from manntk.parts import Address, Addressing


@attrs.define
class TemperatureSchedule:
    """The Gumbel-softmax temperature as a function of the training step.

    Anneals from ``start`` to ``end`` over ``steps`` training steps, then stays at
    ``end`` (Jang et al.: start high, end small but non-zero). ``exponential`` interpolates
    ``log tau``, ``linear`` interpolates ``tau`` and ``inverse`` interpolates ``1 / tau``
    (the authors' code raised the inverse temperature by 1 every 400 iterations).

    Attributes:
        start: temperature at step 0.
        end: temperature from step ``steps`` on.
        steps: length of the anneal (0: always ``end``).
        kind: ``exponential``, ``linear`` or ``inverse``.
    """

    start: float = attrs.field(default=1.0, validator=positive)
    end: float = attrs.field(default=1.0, validator=positive)
    steps: int = attrs.field(default=0, validator=non_negative)
    kind: Literal["exponential", "linear", "inverse"] = attrs.field(
        default="exponential", validator=attrs.validators.in_(("exponential", "linear", "inverse"))
    )

    def __call__(self, step: int) -> float:
        """The temperature at training step ``step``."""
        return float(self.at(torch.tensor(step)))

    def at(self, step: Tensor) -> Tensor:
        """The temperature at training step ``step`` (a 0-d tensor), as a float64 0-d tensor.

        In tensor operations, so a compiled chunk reads the temperature as data: a new
        temperature at every training step does not compile the chunk again.
        """
        step = step.to(torch.float64)
        start, end = torch.full_like(step, self.start), torch.full_like(step, self.end)
        if self.steps == 0:
            return end
        fraction = step.clamp(0, self.steps) / self.steps
        if self.kind == "linear":
            tau = start + (end - start) * fraction
        elif self.kind == "inverse":
            tau = 1.0 / (1.0 / start + (1.0 / end - 1.0 / start) * fraction)
        else:
            tau = torch.exp(math.log(self.start) + (math.log(self.end) - math.log(self.start)) * fraction)
        return torch.where(fraction >= 1, end, torch.where(fraction <= 0, start, tau))


@attrs.define
class HardAddressingConfig:
    """Options shared by the addressing mechanisms that pick one slot.

    Attributes:
        hard: one-hot reads (straight-through Gumbel-softmax in training, argmax in
            evaluation); ``false`` reads softly with ``softmax(logits / tau)`` (the
            paper's soft-read ablation, and the authors' algorithmic-task code).
        temperature: the schedule of ``tau``, driven by the training step.
        noise: the scale of the Gumbel noise added to the logits of a hard read in
            training (1: the Gumbel-softmax; 0: the argmax of the logits, with the same
            straight-through gradient). Evaluation never adds noise.
    """

    hard: bool = True
    temperature: TemperatureSchedule = attrs.field(factory=TemperatureSchedule)
    noise: float = attrs.field(default=1.0, validator=non_negative)


def gumbel_noise(shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
    """Samples of the standard Gumbel distribution, ``-log(-log(u))`` (eq. 2)."""
    uniform = torch.rand(shape, device=like.device, dtype=like.dtype)
    tiny = torch.finfo(like.dtype).tiny
    exponential = (-torch.log(uniform.clamp_min(tiny))).clamp_min(tiny)
    return -torch.log(exponential)


def straight_through(logits: Tensor, tau: float | Tensor, noise: Tensor | None) -> Address:
    """Straight-through Gumbel-softmax (eq. 1, 9).

    Forward: the one-hot of ``argmax(logits + g)`` (exactly 0 and 1). Backward: the gradient
    of ``softmax((logits + g) / tau)``, computed in one autograd node.

    Args:
        logits: ``[B, N]``.
        tau: the temperature.
        noise: Gumbel samples ``[B, N]``, or ``None`` for none.
    """
    weights, index = _StraightThrough.apply(logits if noise is None else logits + noise, tau)
    return Address(weights, index)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, perturbed: Tensor, tau: float | Tensor) -> tuple[Tensor, Tensor]:
        soft = torch.softmax(perturbed / tau, dim=-1)
        index = perturbed.argmax(dim=-1)
        hard = torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)
        ctx.save_for_backward(soft)
        ctx.tau = tau
        ctx.mark_non_differentiable(index)
        return hard, index

    @staticmethod
    def backward(ctx, grad: Tensor, _: Tensor) -> tuple[Tensor, None]:
        (soft,) = ctx.saved_tensors
        return soft * (grad - (grad * soft).sum(dim=-1, keepdim=True)) / ctx.tau, None


class HardAddressing(Addressing):
    """Base of the addressing mechanisms that pick one slot from logits.

    Holds the temperature schedule and a ``schedule_step`` buffer that the trainer
    advances (saved with the weights, so a resumed run continues the schedule).
    """

    def __init__(self, config: HardAddressingConfig) -> None:
        super().__init__()
        self.hard = config.hard
        self.temperature = config.temperature
        self.noise = config.noise
        self.register_buffer("schedule_step", torch.zeros((), dtype=torch.long))

    def set_training_step(self, step: int) -> None:
        self.schedule_step.fill_(step)

    def training_metrics(self) -> dict[str, float]:
        return {"temperature": float(self.tau())}

    def tau(self) -> float | Tensor:
        """The temperature at the current training step (under ``torch.compile`` a 0-d
        tensor, so that the compiled chunk does not depend on its value)."""
        if torch.compiler.is_compiling():
            return self.temperature.at(self.schedule_step)
        return self.temperature(int(self.schedule_step))

    def chunk_noise(self, logits_shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """Gumbel noise for a whole chunk ``[T, B, N]``, times the ``noise`` scale, when
        sampling (hard, training, a scale above 0), else ``None``."""
        if not (self.hard and self.training and self.noise):
            return None
        noise = gumbel_noise(logits_shape, like)
        return noise if self.noise == 1.0 else noise * self.noise

    def sample(self, logits: Tensor, tau: float | Tensor, noise: Tensor | None) -> Address:
        """The address for ``logits`` ``[B, N]``.

        Training and hard: straight-through sample. Evaluation and hard: argmax, as an
        index only (the discrete path). Soft: ``softmax(logits / tau)``.
        """
        if not self.hard:
            return Address(torch.softmax(logits / tau, dim=-1))
        if self.training:
            return straight_through(logits, tau, noise)
        return Address(None, logits.argmax(dim=-1))
