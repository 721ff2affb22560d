"""Where the time of a batch-1 training step goes: ARMIN on copy, plain path against the default.

    python benchmarks/profile_batch1.py [--steps 50] [--threads 1]

Trains the model of recipes/armin_copy.yaml (paper sizes) on the same copy sequences twice,
with ``model.fast: false`` (the plain per-step path) and as built by default (the chunk
kernel), under ``torch.profiler``, and prints for each the milliseconds per training step
in forward, backward and the optimizer, and the operators that took the most self time.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from manntk.build import build_experiment
from manntk.fast.machine import cpu_info
from manntk.recipe import load_recipe


def measure(fast: bool, steps: int) -> None:
    torch.manual_seed(0)
    task, model = build_experiment(load_recipe("recipes/armin_copy.yaml", [f"model.fast={str(fast).lower()}"]))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    batches = [task.train_batch(step, 1) for step in range(steps + 5)]
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def train(batch, timed: bool) -> None:
        start = time.perf_counter()
        loss = task.score(model(batch.inputs)[0], batch)["loss"]
        middle = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if timed:
            phases["forward"] += middle - start
            phases["backward"] += end - middle
            phases["optimizer"] += time.perf_counter() - end

    for batch in batches[:5]:
        train(batch, False)
    for batch in batches[5:]:
        train(batch, True)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for batch in batches[5:15]:
            train(batch, False)
    total = sum(phases.values())
    print(f"\n== {'default path (chunk kernel)' if fast else 'plain path (model.fast: false)'}: "
          f"{steps / total:.1f} training steps/s; ms per step: "
          + ", ".join(f"{name} {1e3 * value / steps:.2f}" for name, value in phases.items()))
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_info('model name')}, {args.threads} thread(s), torch {torch.__version__}")
    for fast in (False, True):
        measure(fast, args.steps)


if __name__ == "__main__":
    main()
