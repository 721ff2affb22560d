"""Training steps per second of an NTM-style recipe at batch 1 on one thread: the plain
per-step path (``model.fast=false``) against the default (the NTM-style chunk kernel).

    python benchmarks/ntm_batch1.py [recipe] [steps]

Each step is forward, backward and an Adam update on one copy sequence (the same
sequences for both paths, after three warm-up steps); the last loss is printed so that
the two paths can be compared.
"""

from __future__ import annotations

import sys
import time

import torch

from manntk.build import build_experiment
from manntk.fast.ntm_sequence import NtmSequence
from manntk.recipe import load_recipe


def main() -> None:
    recipe = sys.argv[1] if len(sys.argv) > 1 else "recipes/algorithmic/copy/ntm.yaml"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    torch.set_num_threads(1)
    for fast in (False, True):
        torch.manual_seed(0)
        task, model = build_experiment(load_recipe(recipe, [] if fast else ["model.fast=false"]))
        assert isinstance(model.layers[0].chunk_kernel, NtmSequence) is fast
        optimizer = torch.optim.Adam(model.parameters(), 1e-4)
        batches = [task.train_batch(i, 1) for i in range(count + 3)]

        def step(batch) -> float:
            optimizer.zero_grad()
            loss = task.score(model(batch.inputs)[0], batch)["loss"]
            loss.backward()
            optimizer.step()
            return loss.item()

        for batch in batches[:3]:
            step(batch)
        start = time.perf_counter()
        losses = [step(batch) for batch in batches[3:]]
        elapsed = time.perf_counter() - start
        length = sum(batch.inputs.shape[1] for batch in batches[3:]) / count
        print(f"{'chunk kernel' if fast else 'plain path  '}: {count / elapsed:6.1f} steps/s ({elapsed / count * 1e3:.1f} ms/step, "
              f"mean T {length:.0f}), last loss {losses[-1]:.6f}")


if __name__ == "__main__":
    main()
