"""Which copy sequences a trained run gets wrong: its failure rate on fresh sequences, split
by how a sequence ends (its last two vectors both zero, equal but not zero, or neither),
and the first wrong output step of each failure.

    python benchmarks/copy_failures.py RUN_DIR [--checkpoint step-00018000] [--sequences 10000]
    python benchmarks/copy_failures.py RUN_DIR --zero-tail 2   # the same sequences, last two zeroed

A sequence fails when any output bit is on the wrong side of 0.5. Why this split: the
NTM-style copy runs (studies/ntm_copy_seeds.yaml) went back above the 0.01 validation BCE
after they had solved because of one or two failed sequences (half the bits of a
length-30 sequence wrong put ~90 wrong bits and ~0.005-0.01 BCE on a validation of 1,000
sequences), and the long ones end with two all-zero vectors: inputs that look like the zero inputs of the
output phase (docs/results.md, "NTM-style copy across seeds"). ``--zero-tail K`` tests
that directly: it sets the last K vectors of every sequence longer than K to zero (inputs
and targets) before scoring. The sequences come from the task's own generator with a seed
of their own (``--seed``), so they are neither the training, the validation nor the test
sequences. Scores the checkpoint's judged weights (the weight average with
``train.ema_decay``).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import attrs
import torch
from torch import Tensor

from manntk.build import build_experiment
from manntk.engine import consuming
from manntk.recipe import load_recipe
from manntk.tasks.algorithmic.batch import SequenceBatch
from manntk.tasks.algorithmic.copy import CopyConfig
from manntk.training.checkpoint import latest_checkpoint, load_judged_weights

KINDS = ("last two zero", "last two equal, not zero", "others")


def ending(targets: Tensor) -> str:
    """Which of ``KINDS`` a sequence's ``[L, W]`` target vectors end with."""
    if len(targets) < 2 or not torch.equal(targets[-1], targets[-2]):
        return "others"
    return "last two zero" if not targets[-1].any() else "last two equal, not zero"


def zero_tail(batch: SequenceBatch, count: int, config: CopyConfig) -> SequenceBatch:
    """A copy of ``batch`` with the last ``count`` vectors of every sequence longer than
    ``count`` set to zero, in the inputs (the bits sit at steps 1..L after a start marker,
    or at steps 0..L-1 with ``markers: end``) and in the targets."""
    first = 1 if config.markers == "start_end" else 0
    inputs, targets = batch.inputs.clone(), batch.targets.clone()
    for row, length in enumerate(batch.mask.sum(dim=1).tolist()):
        if length > count:
            inputs[row, first + length - count:first + length, :config.width] = 0
            outputs = batch.mask[row].nonzero().flatten()
            targets[row, outputs[-count:]] = 0
    return attrs.evolve(batch, inputs=inputs, targets=targets)


def failures(run_dir: Path, checkpoint: str | None, sequences: int, seed: int, tail: int = 0,
             batch_size: int = 100) -> dict:
    """The counts of failed and scored sequences by how they end, and each failure's
    length, ending and first wrong output step."""
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.task.name != "copy":
        raise SystemExit(f"{run_dir} trained task {recipe.task.name!r}; this script reads copy runs")
    task, model = build_experiment(recipe)
    path = run_dir / "checkpoints" / checkpoint if checkpoint else latest_checkpoint(run_dir)
    model.load_state_dict(load_judged_weights(path))
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    counts: Counter[str] = Counter()
    failed: list[dict] = []
    with torch.no_grad():
        for start in range(0, sequences, batch_size):
            batch = task.generate(task.config, min(batch_size, sequences - start), generator)
            if tail:
                batch = zero_tail(batch, tail, task.config)
            outputs, _ = model(batch.inputs, None, **consuming(model))
            for row in range(outputs.shape[0]):
                targets = batch.targets[row][batch.mask[row]]
                wrong = ((outputs[row][batch.mask[row]] > 0).float() != targets).any(dim=-1).nonzero().flatten()
                kind = ending(targets)
                counts[f"{kind} scored"] += 1
                if len(wrong):
                    counts[f"{kind} failed"] += 1
                    failed.append({"length": len(targets), "ending": kind, "first_wrong_step": int(wrong[0])})
    return {"run": str(run_dir), "checkpoint": path.name, "sequences": sequences, "seed": seed,
            "zero_tail": tail, "counts": dict(counts), "failures": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="copy run directories")
    parser.add_argument("--checkpoint", help="checkpoint folder name (default: the latest)")
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--zero-tail", type=int, default=0, metavar="K",
                        help="set the last K vectors of every sequence longer than K to zero")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for run in args.runs:
        result = failures(run, args.checkpoint, args.sequences, args.seed, args.zero_tail)
        counts = result["counts"]
        rates = [f"{kind}: {counts.get(f'{kind} failed', 0)} of {counts.get(f'{kind} scored', 0)} failed"
                 for kind in KINDS]
        print(f"{run} {result['checkpoint']}: " + "; ".join(rates))
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
