"""Which copy sequences a trained run gets wrong: its failure rate on fresh sequences, split
by whether the last two vectors of a sequence are equal, and the first wrong output step
of each failure.

    python benchmarks/copy_failures.py RUN_DIR [--checkpoint step-00018000] [--sequences 10000]

A sequence fails when any output bit is on the wrong side of 0.5. Why this split: the
NTM-style copy runs (studies/ntm_copy_seeds.yaml) went back above the 0.01 validation BCE
after they had solved because of single failed sequences (a failed length-50 sequence
alone puts ~150 wrong bits and ~0.018 BCE on a validation of 1,000 sequences), and those
sequences mostly end with two equal vectors (docs/results.md, "NTM-style copy across
seeds"). The sequences come from the task's own generator with a seed of their own
(``--seed``), so they are neither the training, the validation nor the test sequences.
Scores the checkpoint's judged weights (the weight average with ``train.ema_decay``).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from manntk.build import build_experiment
from manntk.engine import consuming
from manntk.recipe import load_recipe
from manntk.training.checkpoint import latest_checkpoint, load_judged_weights


def failures(run_dir: Path, checkpoint: str | None, sequences: int, seed: int, batch_size: int = 100) -> dict:
    """The counts of failed and scored sequences by whether their last two vectors are
    equal, and each failure's length and first wrong output step."""
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
            outputs, _ = model(batch.inputs, None, **consuming(model))
            for row in range(outputs.shape[0]):
                targets = batch.targets[row][batch.mask[row]]
                wrong = ((outputs[row][batch.mask[row]] > 0).float() != targets).any(dim=-1).nonzero().flatten()
                kind = "last two equal" if len(targets) >= 2 and torch.equal(targets[-1], targets[-2]) else "others"
                counts[f"{kind} scored"] += 1
                if len(wrong):
                    counts[f"{kind} failed"] += 1
                    failed.append({"length": len(targets), "first_wrong_step": int(wrong[0]), "last_two_equal": kind != "others"})
    return {"run": str(run_dir), "checkpoint": path.name, "sequences": sequences, "seed": seed,
            "counts": dict(counts), "failures": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="copy run directories")
    parser.add_argument("--checkpoint", help="checkpoint folder name (default: the latest)")
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for run in args.runs:
        result = failures(run, args.checkpoint, args.sequences, args.seed)
        counts = result["counts"]
        rates = [f"{kind}: {counts.get(f'{kind} failed', 0)} of {counts.get(f'{kind} scored', 0)} failed"
                 for kind in ("last two equal", "others")]
        print(f"{run} {result['checkpoint']}: " + "; ".join(rates))
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
