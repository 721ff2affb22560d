"""Where a trained model's answers were read from, over a whole split: ``manntk reads RUN``.

[`manntk inspect`][manntk.tools.inspect_memory] draws one example; a claim such as "the
runs read the stored vectors in order up to the 24th and then lose it" or "the wrong
answers come from the slot written at the step before" is about every example of a
split. This tool runs the model over the split (evaluation mode, fresh state per batch)
inside [`tracing`][manntk.trace.tracing] and, for every scored step, finds the **source**
of its read: the step whose write last went to the slot read (the largest read and write
weights; a read at step ``t`` sees the memory of step ``t - 1``, so the source is before
``t``), or none when that slot was not written in the sequence.

For tasks whose targets are bit vectors that were shown in the input (copy, repeat copy,
associative recall, priority sort: the input's leading channels), an answer is read **from
the target's step** when the read at its step, or at one of the ``max_lag`` steps before
it, has a source step that showed exactly the bits this step must answer; the smallest
such distance is the answer's **lag**. A model may read a slot a step or two before it
answers from it and carry it in its state (AwTA's copy runs read the next slot while they
answer from the last), which a lag of 0 alone would count as a wrong read. Counted per
output position (the scored step's place in its sequence's output phase) and per output
length (the sequence's scored steps): the share of answers read from the target's step
(and at each lag), of reads at the answer's step from the step just before it and from
slots not yet written, and of answers right (every bit on the right side of 0.5); and of
the wrong answers, the share not read from the target's step at any lag. A model may also
write what it read into a fresh slot and read that copy later (NTM-style repeat copy reads
its second repetition from the slots it wrote during the first): ``through_writes`` counts
the answers whose read reaches the target's step directly or through slots written at
steps that showed nothing. The numbers go to ``reads.json`` and the picture of them by
output position to ``reads.png``.

A vector that occurs twice in a sequence makes a read of either occurrence count as from
the target's step (at 6 random bits, a 1-in-64 chance per pair).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from manntk.config import UsageError
from manntk.hookspecs import hookimpl
from manntk.tools.inspect_memory import DIGITS, add_run_arguments, load_trained, require_run
from manntk.trace import tracing

SHARES = ("from_target", "through_writes", "from_previous_step", "from_unwritten", "right")
"""The shares of the scored steps counted per output position and length (and
``from_target_at_lag`` per lag)."""
MAX_LAG = 2
"""How many steps before its answer a read may come by default (``--max-lag``)."""


def read_sources(read: Tensor, write: Tensor) -> Tensor:
    """For each step and sequence, the step whose write last went to the slot read.

    Args:
        read: read weights ``[T, B, N]``; the slot read is the largest weight.
        write: write weights ``[T, B, N]``; the slot written is the largest weight, and a
            step whose weights are all 0 writes nothing.

    Returns:
        int64 ``[T, B]``: the source step ``s < t`` of the read at ``t``, or -1 when its
        slot was not written before ``t``.
    """
    steps, batch, _ = read.shape
    read_slot = read.argmax(-1)
    write_slot = write.argmax(-1)
    writes = write.amax(-1) > 0
    last_written = torch.full(read.shape[1:], -1, dtype=torch.long)
    sources = torch.empty(steps, batch, dtype=torch.long)
    rows = torch.arange(batch)
    for t in range(steps):
        sources[t] = last_written[rows, read_slot[t]]
        written = rows[writes[t]]
        last_written[written, write_slot[t, written]] = t
    return sources


def count_reads(inputs: Tensor, targets: Tensor, mask: Tensor, outputs: Tensor, sources: Tensor,
                tallies: dict[str, dict[int, Counter]], max_lag: int = MAX_LAG) -> None:
    """Add one batch's scored steps to ``tallies``: per output position (``by_position``)
    and per output length (``by_length``), the scored ``steps``, those counted by each of
    ``SHARES``, those read from the target's step at each lag (``lag0``, ``lag1``, ...), and
    the wrong answers not read from the target's step (``wrong_elsewhere``).

    Args:
        inputs: ``[B, T, C]``, the bits shown in the leading channels.
        targets: ``[B, T, W]`` bits.
        mask: ``[B, T]`` bool, the scored steps.
        outputs: ``[B, T, W]`` logits.
        sources: ``[T, B]`` from [`read_sources`][manntk.tools.read_sources.read_sources].
        max_lag: the most steps before its answer a read counts for it.
    """
    shown = inputs[..., : targets.shape[-1]]
    right = ((outputs > 0) == (targets > 0.5)).all(-1)
    for b in range(mask.shape[0]):
        scored = mask[b].nonzero().flatten().tolist()
        for position, t in enumerate(scored):
            reads = range(t, max(t - max_lag, 0) - 1, -1)  # the read at the answer's step, then the ones before
            lag = next((t - u for u in reads if reaches(sources[:, b], shown[b], targets[b, t], u, hops=False)), None)
            through = lag is not None or any(reaches(sources[:, b], shown[b], targets[b, t], u, hops=True) for u in reads)
            source = int(sources[t, b])
            counts = Counter(steps=1, from_target=lag is not None, through_writes=through, from_previous_step=source == t - 1,
                             from_unwritten=source < 0, right=bool(right[b, t]),
                             wrong_elsewhere=not right[b, t] and lag is None)
            if lag is not None:
                counts[f"lag{lag}"] = 1
            tallies["by_position"][position].update(counts)
            tallies["by_length"][len(scored)].update(counts)


def reaches(sources: Tensor, shown: Tensor, target: Tensor, step: int, hops: bool) -> bool:
    """Whether the read at ``step`` came from a step that showed ``target``: its source
    directly, or with ``hops`` through sources that showed nothing (all zeros in the
    target's channels: steps of the output phase, whose written state carries what they
    read), each hop to the source of that step's own read.

    Args:
        sources: ``[T]`` one sequence's source steps (-1: unwritten).
        shown: ``[T, W]`` the bits each step showed.
        target: ``[W]`` the bits to answer.
    """
    source = int(sources[step])
    while source >= 0:
        if torch.equal(shown[source], target):
            return True
        if not hops or shown[source].any():
            return False
        source = int(sources[source])  # sources only point back in time: the walk ends
    return False


def shares(counts: Counter, max_lag: int = MAX_LAG) -> dict[str, Any]:
    """``counts`` as ``steps`` and the share of them for each of ``SHARES``, at each lag
    0..``max_lag`` (``from_target_at_lag``), and ``wrong_read_elsewhere``: of the wrong
    answers, the share not read from the target's step (``None`` when none was wrong)."""
    steps = counts["steps"]
    wrong = steps - counts["right"]
    row: dict[str, Any] = {"steps": steps}
    row.update({name: round(counts[name] / steps, DIGITS) for name in SHARES})
    row["from_target_at_lag"] = [round(counts[f"lag{lag}"] / steps, DIGITS) for lag in range(max_lag + 1)]
    row["wrong_read_elsewhere"] = round(counts["wrong_elsewhere"] / wrong, DIGITS) if wrong else None
    return row


def read_summary(run_dir: str | Path, *, split: str = "test", layer: int = 0, max_lag: int = MAX_LAG,
                 device: str = "cpu", data_root: str | None = None) -> dict[str, Any]:
    """Run the trained model of ``run_dir`` over ``split`` and count where its answers'
    reads came from (the module's docstring says what is counted).

    Returns:
        Where it came from (run, recipe, task, checkpoint, split, layer) and ``totals``,
        ``by_position`` and ``by_length`` as [`shares`][manntk.tools.read_sources.shares].

    Raises:
        UsageError: the task's answers are not bit vectors, or the layer has no memory.
    """
    recipe, task, model, checkpoint = load_trained(run_dir, device, data_root)
    device_of_model = next(model.parameters()).device
    tallies: dict[str, dict[int, Counter]] = {"by_position": defaultdict(Counter), "by_length": defaultdict(Counter)}
    for batch in task.eval_batches(split, recipe.eval.batch_size):
        if not batch.targets.is_floating_point() or batch.targets.shape[:2] != batch.inputs.shape[:2]:
            raise UsageError(f"manntk reads counts answers that are bit vectors; task {recipe.task.name!r} has other targets")
        with torch.no_grad(), tracing() as trace:
            outputs, _ = model(batch.inputs.to(device_of_model))
        read, write = trace.get(f"layer{layer}.read"), trace.get(f"layer{layer}.write")
        if read is None or write is None or read.shape[-1] == 0:
            with_memory = sorted(key.split(".")[0] for key, value in trace.items() if key.endswith(".read") and value.shape[-1])
            raise UsageError(f"layer {layer} of the model of {run_dir} has no memory to read from "
                             f"(layers with one: {', '.join(with_memory) or 'none'})")
        sources = read_sources(read.float().cpu(), write.float().cpu())
        count_reads(batch.inputs, batch.targets, batch.mask, outputs.float().cpu(), sources, tallies, max_lag)
    return {
        "run": str(run_dir),
        "recipe": recipe.name,
        "task": recipe.task.name,
        "checkpoint": checkpoint.name,
        "split": split,
        "layer": layer,
        "max_lag": max_lag,
        "totals": shares(sum(tallies["by_position"].values(), Counter()), max_lag),
        "by_position": {key: shares(row, max_lag) for key, row in sorted(tallies["by_position"].items())},
        "by_length": {key: shares(row, max_lag) for key, row in sorted(tallies["by_length"].items())},
    }


def draw_reads(summary: dict[str, Any], path: Path) -> Path:
    """The shares by output position, one line each, and the scored steps at each position."""
    from manntk.tools.plot import _pyplot, save_figure

    plt = _pyplot()
    positions = list(summary["by_position"])
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    labels = {"from_target": f"read from the target's step (lag 0-{summary['max_lag']})",
              "through_writes": "... or through slots written in the output phase",
              "from_previous_step": "read from the step before", "from_unwritten": "read from an unwritten slot",
              "right": "answer right"}
    for name, label in labels.items():
        top.plot([p + 1 for p in positions], [summary["by_position"][p][name] for p in positions], label=label)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("share of the answers")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar([p + 1 for p in positions], [summary["by_position"][p]["steps"] for p in positions], color="grey")
    bottom.set_ylabel("answers")
    bottom.set_xlabel("output position (1 = the first scored step of a sequence)")
    totals = summary["totals"]
    figure.suptitle(f"{summary['recipe']}: {summary['task']} {summary['split']}, layer {summary['layer']} "
                    f"({summary['checkpoint']}); from the target's step {totals['from_target']:.3f}, "
                    f"right {totals['right']:.3f}", fontsize=10)
    return save_figure(figure, path)


@hookimpl
def register_commands(commands: argparse._SubParsersAction) -> None:
    """``manntk reads``."""
    reads = commands.add_parser("reads", help="count where a trained model's answers were read from, over a split (PNG + JSON)")
    add_run_arguments(reads, "reads.png and reads.json")
    reads.add_argument("--split", default="test", help="split to count over (default: test)")
    reads.add_argument("--layer", type=int, default=0, help="which layer's memory (default: 0)")
    reads.add_argument("--max-lag", type=int, default=MAX_LAG,
                       help=f"the most steps before its answer a read may come (default: {MAX_LAG})")
    reads.set_defaults(handler=_reads)


def _reads(args: argparse.Namespace) -> int:
    from manntk.training.checkpoint import write_text_atomic

    require_run(args.run)
    if args.max_lag < 0:
        raise UsageError(f"--max-lag must be >= 0, got {args.max_lag}")
    summary = read_summary(args.run, split=args.split, layer=args.layer, max_lag=args.max_lag, device=args.device,
                           data_root=args.data)
    folder = Path(args.out) if args.out is not None else Path(args.run)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "reads.json"
    write_text_atomic(json_path, json.dumps(summary) + "\n")
    png = draw_reads(summary, folder / "reads.png")
    totals = summary["totals"]
    lags = ", ".join(f"{share:.3f} at lag {lag}" for lag, share in enumerate(totals["from_target_at_lag"]))
    print(f"{totals['steps']} answers: {totals['from_target']:.3f} read from the target's step ({lags}), "
          f"{totals['through_writes']:.3f} directly or through slots written in the output phase; reads at the answer's step: "
          f"{totals['from_previous_step']:.3f} from the step before, {totals['from_unwritten']:.3f} from unwritten slots; "
          f"{totals['right']:.3f} right, and of the wrong ones {_share(totals['wrong_read_elsewhere'])} read elsewhere")
    print(f"wrote {png} and {json_path}")
    return 0


def _share(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"
