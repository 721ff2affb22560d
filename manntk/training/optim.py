"""Optimizers and learning-rate schedules from their recipe sections."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from manntk.recipe import OptimizerConfig, ScheduleConfig


def make_optimizer(config: OptimizerConfig, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer that ``config`` names."""
    parameters = list(parameters)
    if config.name == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay, amsgrad=config.amsgrad)
    if config.name == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay, amsgrad=config.amsgrad)
    if config.name == "rmsprop" and config.update_clip is not None:
        return ClippedRMSprop(parameters, lr=config.lr, alpha=config.alpha, momentum=config.momentum, eps=config.eps,
                              weight_decay=config.weight_decay, update_clip=config.update_clip)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=config.lr, alpha=config.alpha, momentum=config.momentum, eps=config.eps, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


class ClippedRMSprop(torch.optim.Optimizer):
    """RMSprop whose normalised step is clipped per tensor: Adafactor's update clipping.

    Per parameter tensor, with gradient ``g`` (plus ``weight_decay * p``)::

        v = alpha * v + (1 - alpha) * g**2
        u = g / (sqrt(v) + eps)
        u = u / max(1, rms(u) / update_clip)
        buffer = momentum * buffer + u          (u itself without momentum)
        p = p - lr * buffer

    Without the clipping line this is torch's ``RMSprop`` (not centred), with the same
    state names. The clip keeps a gradient far above the recent ones, which meets an
    out-of-date small ``v``, from moving every coordinate by several times the rate
    (see ``OptimizerConfig.update_clip``).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, alpha: float, eps: float, momentum: float,
                 weight_decay: float, update_clip: float) -> None:
        defaults = dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay, update_clip=update_clip)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["square_avg"] = torch.zeros_like(param)
                    if group["momentum"] > 0:
                        state["momentum_buffer"] = torch.zeros_like(param)
                state["step"] += 1
                square_avg = state["square_avg"]
                square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                update = grad / square_avg.sqrt().add_(group["eps"])
                rms = update.pow(2).mean().sqrt()
                update.div_(torch.clamp(rms / group["update_clip"], min=1.0))
                if group["momentum"] > 0:
                    update = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(update, alpha=-group["lr"])
        return loss


def lr_factor(config: ScheduleConfig, base_lr: float, progress: Callable[[int], float]) -> Callable[[int], float]:
    """The multiplier of the base learning rate at each step (for ``LambdaLR``).

    ``progress(step)`` is how far the run is through its budget (0 at the start, 1 at the
    end): the share of its steps or of its wall clock (``schedule.over``). Only ``cosine``
    and ``cooldown`` read it; the warm-up and ``step``'s milestones count steps.
    """
    floor = config.min_lr / base_lr

    def factor(step: int) -> float:
        warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.name == "step":
            return warmup * config.gamma ** sum(step >= milestone for milestone in config.milestones)
        if config.name == "constant":
            return warmup
        done = min(max(progress(step), 0.0), 1.0)
        if config.name == "cosine":
            return warmup * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done)))
        left = min(1.0, (1 - done) / config.cooldown)  # cooldown
        return warmup * (floor + (1 - floor) * left)

    return factor


def make_scheduler(config: ScheduleConfig, optimizer: torch.optim.Optimizer,
                   progress: Callable[[int], float]) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``config``, ``progress(step)`` the share of the budget spent."""
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, base_lr, progress))


def scale_learning_rate(scheduler: torch.optim.lr_scheduler.LambdaLR, factor: float) -> None:
    """Multiply the rate of every parameter group by ``factor`` from now on, schedule and
    all: the scheduler's base rates change (they are in its ``state_dict``, so a resumed
    run keeps the change) and so do the optimizer's current ones."""
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group in scheduler.optimizer.param_groups:
        group["lr"] *= factor


def reset_learning_rate(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Undo every ``scale_learning_rate``: the base rates back at the optimizer's initial
    ones, and the current rates the schedule's at the scheduler's step."""
    scheduler.base_lrs = [group["initial_lr"] for group in scheduler.optimizer.param_groups]
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    """Set the momentum of every parameter group from now on: ``momentum`` where the
    optimizer has one (RMSprop, SGD), the first beta where it has betas (Adam). In the
    optimizer's ``state_dict``, so a resumed run keeps it."""
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (momentum, group["betas"][1])
        else:
            group["momentum"] = momentum


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """The global (L2) norm of the gradients of ``parameters`` (0 when none has one)."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(gradients)) if gradients else 0.0


def gradients_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every gradient of ``parameters`` is finite (no inf, no NaN). Read from each
    gradient's largest magnitude, which is inf or NaN exactly when the gradient holds one
    (``amax`` propagates NaN): one reduction per tensor and one host read, less work than
    ``isfinite(g).all()`` per tensor, on a check made at every step."""
    largest = [p.grad.abs().amax() for p in parameters if p.grad is not None and p.grad.numel()]
    return not largest or math.isfinite(float(torch.stack(largest).amax()))


def clip_gradients(parameters: Iterable[torch.nn.Parameter], norm: float | None, value: float | None) -> float | None:
    """Clip by value and/or global norm; returns the norm before clipping when clipping by norm."""
    parameters = [p for p in parameters if p.grad is not None]
    if not parameters:  # a skipped step (train.skip_spikes) has no gradient to clip
        return None
    if value is not None:
        torch.nn.utils.clip_grad_value_(parameters, value)
    if norm is not None:
        return float(torch.nn.utils.clip_grad_norm_(parameters, norm))
    return None
