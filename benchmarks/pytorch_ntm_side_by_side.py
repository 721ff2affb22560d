"""manntk's NTM-style model against loudinthecloud/pytorch-ntm on its copy task, per sequence seen.

Two steps:

1. ``reference``: train pytorch-ntm (a checkout of github.com/loudinthecloud/pytorch-ntm, run
   with its own ``train.py`` in a Python that has its requirements: torch, numpy,
   ``attrs<19.2`` for its ``attrib(convert=...)``, argcomplete) for each seed, one thread each,
   and keep what it logs every 200 sequences (mean training BCE, bits wrong per sequence,
   ms per sequence) as ``seed-S.json`` in ``--out``.
2. ``compare``: read those files and a manntk study directory of
   ``recipes/algorithmic/copy/ntm_pytorch_ntm.yaml`` (``studies/ntm_pytorch_ntm_seeds.yaml``:
   the same settings, logging the training BCE every 200 steps of batch 1, i.e. every 200
   sequences), and print per seed the sequences by which the 200-sequence mean training BCE
   first fell below a threshold, their medians, and the median curves; ``--plot`` draws the
   median and IQR of both against sequences seen.

```bash
python benchmarks/pytorch_ntm_side_by_side.py reference --checkout ../pytorch-ntm --python ../ntm-venv/bin/python \\
    --seeds 1 2 3 4 5 --sequences 12000 --out benchmarks/results/pytorch-ntm
manntk study run studies/ntm_pytorch_ntm_seeds.yaml --jobs 2
python benchmarks/pytorch_ntm_side_by_side.py compare --reference benchmarks/results/pytorch-ntm \\
    --study runs/studies/ntm-pytorch-ntm-seeds --plot docs/img/results/ntm-vs-pytorch-ntm.png
```

Nothing of pytorch-ntm is copied into manntk: it runs as its authors wrote it, from its own
checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPORT = re.compile(r"Batch (\d+) Loss: ([0-9.eE+-]+) Cost: ([0-9.eE+-]+) Time: (\d+) ms/sequence")
"""The line pytorch-ntm's train.py logs every report interval."""

WINDOW = 200
"""pytorch-ntm's report interval (sequences); manntk's study logs every 200 steps of batch 1 too."""


def run_reference(args: argparse.Namespace) -> None:
    """Train pytorch-ntm once per seed and keep its reports as JSON (written through a rename)."""
    checkout, out = Path(args.checkout).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    revision = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    for seed in args.seeds:
        target = out / f"seed-{seed}.json"
        if target.exists():
            print(f"seed {seed}: {target} exists, skipped", file=sys.stderr)
            continue
        command = [args.python, "train.py", "--task", "copy", "--seed", str(seed), "--checkpoint-interval", "0",
                   "--report-interval", str(WINDOW), f"-pnum_batches={args.sequences}"]
        print(f"seed {seed}: {' '.join(command)}", file=sys.stderr, flush=True)
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=checkout, env=environment, capture_output=True, text=True)
        rows = [{"sequences": int(m[1]), "bce": float(m[2]), "bit_errors_per_sequence": float(m[3]), "ms_per_sequence": int(m[4])}
                for m in REPORT.finditer(done.stdout + done.stderr)]
        if done.returncode != 0 or not rows:
            raise SystemExit(f"seed {seed}: pytorch-ntm exited with {done.returncode} after {len(rows)} reports:\n{done.stderr[-2000:]}")
        record = {"seed": seed, "command": command, "threads": 1, "pytorch_ntm_commit": revision, "rows": rows}
        with tempfile.NamedTemporaryFile("w", dir=out, suffix=".tmp", delete=False) as partial:
            json.dump(record, partial, indent=1)
        Path(partial.name).replace(target)
        print(f"seed {seed}: {len(rows)} reports, last BCE {rows[-1]['bce']:.4g}", file=sys.stderr, flush=True)


def reference_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """pytorch-ntm's curves, by seed: (sequences seen, mean training BCE of the last 200)."""
    curves = {}
    for path in sorted(folder.glob("seed-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        curves[f"seed-{record['seed']}"] = [(row["sequences"], row["bce"]) for row in record["rows"]]
    return curves


def manntk_curves(study: Path) -> dict[str, list[tuple[int, float]]]:
    """manntk's curves, by run: (steps = sequences at batch 1, mean training BCE of the window)."""
    curves = {}
    for metrics in sorted(study.glob("*/seed-*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        recipe = (metrics.parent / "recipe.yaml").read_text(encoding="utf-8")
        if not re.search(r"batch_size: 1\b", recipe):
            raise SystemExit(f"{metrics.parent}: not batch 1, so steps are not sequences")
        curves[metrics.parent.name] = [(row["step"], row["bce"]) for row in rows if row.get("split") == "train" and "bce" in row]
    return curves


def first_below(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The sequences seen when the windowed BCE first fell below ``threshold`` (``None``: never)."""
    return next((sequences for sequences, bce in curve if bce < threshold), None)


def compare(args: argparse.Namespace) -> None:
    """Sequences to reach the threshold per seed and their medians; median curves; a plot."""
    sides = {"pytorch-ntm": reference_curves(Path(args.reference)), "manntk": manntk_curves(Path(args.study))}
    for name, curves in sides.items():
        if not curves:
            raise SystemExit(f"no {name} runs found")
    print(f"sequences seen until the {WINDOW}-sequence mean training BCE < {args.threshold} (batch 1):")
    for name, curves in sides.items():
        reached = {run: first_below(curve, args.threshold) for run, curve in curves.items()}
        budget = max(curve[-1][0] for curve in curves.values())
        ordered = sorted(value if value is not None else float("inf") for value in reached.values())
        median = statistics.median(ordered)
        shown = ", ".join(f"{run} {value if value is not None else f'>{budget}'}" for run, value in reached.items())
        print(f"  {name}: median {median if median != float('inf') else f'>{budget}'} over {len(ordered)} seeds ({shown})")
    if args.plot:
        plot(sides, Path(args.plot), args.threshold)
        print(f"wrote {args.plot}")


def plot(sides: dict[str, dict[str, list[tuple[int, float]]]], out: Path, threshold: float) -> None:
    """Median and IQR over seeds of each side's windowed training BCE against sequences seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, (name, curves) in enumerate(sides.items()):
        grid = np.arange(WINDOW, max(curve[-1][0] for curve in curves.values()) + 1, WINDOW)
        values = np.array([np.interp(grid, [s for s, _ in curve], [b for _, b in curve], right=np.nan) for curve in curves.values()])
        q1, median, q3 = np.nanpercentile(values, [25, 50, 75], axis=0)
        axes.plot(grid, median, color=f"C{index}", label=f"{name} (median of {len(curves)} seeds)")
        axes.fill_between(grid, q1, q3, color=f"C{index}", alpha=0.2, linewidth=0)
    axes.axhline(threshold, color="grey", linestyle=":", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("sequences seen (batch 1)")
    axes.set_ylabel(f"training BCE per bit (mean of {WINDOW} sequences)")
    axes.set_title("copy, pytorch-ntm's settings: manntk against pytorch-ntm (IQR bands)")
    axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(partial, dpi=110)
    partial.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    reference = commands.add_parser("reference", help="train pytorch-ntm for each seed and keep its reports")
    reference.add_argument("--checkout", required=True, help="a checkout of loudinthecloud/pytorch-ntm")
    reference.add_argument("--python", default=sys.executable, help="the Python that has pytorch-ntm's requirements")
    reference.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    reference.add_argument("--sequences", type=int, default=12000, help="sequences (batches of 1) per seed")
    reference.add_argument("--out", default="benchmarks/results/pytorch-ntm")
    versus = commands.add_parser("compare", help="sequences to the threshold, medians, curves")
    versus.add_argument("--reference", default="benchmarks/results/pytorch-ntm")
    versus.add_argument("--study", default="runs/studies/ntm-pytorch-ntm-seeds")
    versus.add_argument("--threshold", type=float, default=0.01)
    versus.add_argument("--plot", help="PNG of the median curves")
    args = parser.parse_args()
    run_reference(args) if args.command == "reference" else compare(args)


if __name__ == "__main__":
    main()
