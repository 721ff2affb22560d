"""Training steps per second of the TARDIS-addressing recipes at batch 1: the plain path against the chunk kernel.

    python benchmarks/tardis_kernel.py [--steps 60] [--threads 1] [recipe ...]

For each recipe (default: the copy recipes of AwTA and TARDIS), trains the recipe's model
on the same copy sequences with ``model.fast: false`` (the plain per-step path) and as
built by default (``manntk.fast.tardis_sequence``), each step a forward, the loss, a
backward, the gradient-norm clip and an Adam step, and prints the steps per second of
each and their ratio (after 5 warm-up steps; the two paths alternate in rounds of 10 steps
so that a neighbour's load falls on both).
"""

from __future__ import annotations

import argparse
import time

import torch

from manntk.build import build_experiment
from manntk.fast.machine import cpu_info
from manntk.recipe import load_recipe

RECIPES = ("recipes/algorithmic/copy/awta.yaml", "recipes/algorithmic/copy/tardis.yaml")


class Trainer:
    def __init__(self, recipe: str, fast: bool, steps: int) -> None:
        torch.manual_seed(0)
        self.task, self.model = build_experiment(load_recipe(recipe, [f"model.fast={str(fast).lower()}"]))
        self.kernel = type(self.model.layers[0].chunk_kernel).__name__
        self.optimizer = torch.optim.Adam(self.model.parameters(), 1e-3)
        self.batches = [self.task.train_batch(step, 1) for step in range(steps + 5)]
        self.seconds, self.done = 0.0, 0

    def step(self) -> None:
        batch = self.batches[self.done % len(self.batches)]
        start = time.perf_counter()
        self.optimizer.zero_grad()
        loss = self.task.score(self.model(batch.inputs)[0], batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        if self.done >= 5:  # warm-up steps are not counted
            self.seconds += time.perf_counter() - start
        self.done += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=RECIPES)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    print(f"{cpu_info('model name') or 'CPU'}, {arguments.threads} thread(s), torch {torch.__version__}")
    for recipe in arguments.recipes:
        plain, fast = Trainer(recipe, False, arguments.steps), Trainer(recipe, True, arguments.steps)
        while plain.done < arguments.steps + 5:
            for trainer in (plain, fast):
                for _ in range(10):
                    trainer.step()
        rates = [(trainer.done - 5) / trainer.seconds for trainer in (plain, fast)]
        print(f"{recipe}: plain {rates[0]:.1f} steps/s, kernel ({fast.kernel}) {rates[1]:.1f} steps/s: {rates[1] / rates[0]:.1f}x")


if __name__ == "__main__":
    main()
