"""What a trained model's memory did on one example: ``manntk inspect RUN``.

Loads the run's recipe and latest checkpoint, takes one example of a split, runs the model
on it (evaluation mode, fresh state) inside [`tracing`][manntk.trace.tracing] and draws,
against time: the input, the target, the model's output, the read and write weights of
every layer's memory (time x slots; the pictures of the NTM papers) and the ARMIN cell's
gates ``g_h``, ``g_r``, ``o_r`` (mean over units, with the 10-90% range). The numbers go
to ``inspect.json`` beside ``inspect.png``.

The example is trimmed to its real length: an algorithmic sequence ends at its last scored
step (the rest is padding); a language-model chunk is cut to ``steps`` characters (100 by
default), drawn with the characters as labels; a pMNIST image is its 784 pixels.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from manntk.config import UsageError
from manntk.hookspecs import hookimpl
from manntk.trace import tracing

DEFAULT_TEXT_STEPS = 100
"""Steps shown of a language-model chunk unless told otherwise."""
GATES = ("g_h", "g_r", "o_r")
"""The ARMIN cell's recorded gates, in drawing order."""
DIGITS = 5
"""Digits kept of the numbers in the JSON."""


class InspectError(ValueError):
    """An example that cannot be taken (index past the split, an empty example)."""


@attrs.frozen
class Example:
    """One example, trimmed, as the model saw it.

    Attributes:
        inputs: ``[1, T, C]`` floats or ``[1, T]`` token ids.
        targets: ``[1, T, W]`` bits, ``[1, T]`` token ids or ``[1]`` a class.
        mask: ``[1, T]`` bool, the scored steps.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor


@attrs.frozen
class Inspection:
    """The result of [`inspect_run`][manntk.tools.inspect_memory.inspect_run].

    Attributes:
        png: the figure.
        json: the numbers.
        data: the numbers as written to ``json``.
    """

    png: Path
    json: Path
    data: dict[str, Any]


def load_trained(run_dir: str | Path, device: str = "cpu", data_root: str | None = None) -> tuple[Any, Any, Any, Path]:
    """The recipe, task and model of a run, the model holding the weights its latest
    checkpoint was judged by (the weight average where the run keeps one), in evaluation
    mode on ``device`` (``cpu``, ``cuda`` or ``auto``); and that checkpoint's path."""
    from manntk.build import build_experiment
    from manntk.recipe import load_recipe
    from manntk.training.checkpoint import latest_checkpoint, load_judged_weights
    from manntk.training.distributed import pick_device

    run_dir = Path(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    target = pick_device(device)
    task, model = build_experiment(recipe, data_root)
    checkpoint = latest_checkpoint(run_dir)
    model.load_state_dict(load_judged_weights(checkpoint, target))
    model.to(target).eval()
    return recipe, task, model, checkpoint


def take_example(task: Any, split: str, index: int, batch_size: int, steps: int | None = None) -> Example:
    """Example ``index`` of ``split``, cut to its real length (and to ``steps`` when given).

    The real length ends at the last scored step: algorithmic sequences are padded after
    their output phase; a language-model chunk is scored everywhere but its padded tail. A
    stream (batches that continue the previous one) is joined chunk after chunk until it
    has ``steps`` steps.
    """
    if index < 0:
        raise InspectError(f"--index must be >= 0, got {index}")
    seen = 0
    batches = iter(task.eval_batches(split, batch_size))
    for batch in batches:
        rows = batch.inputs.shape[0]
        if index < seen + rows:
            row = index - seen
            parts = [_row(batch, row)]
            while steps is not None and sum(part[0].shape[1] for part in parts) < steps:
                following = next(batches, None)
                if following is None or following.fresh or following.inputs.shape[0] <= row:
                    break
                parts.append(_row(following, row))
            inputs, targets, mask = (torch.cat(items, dim=1) if len(parts) > 1 else items[0] for items in zip(*parts))
            scored = mask[0].nonzero()
            length = int(scored[-1]) + 1 if len(scored) else inputs.shape[1]
            if steps is not None:
                length = min(length, steps)
            if length < 1:
                raise InspectError("the example is empty")
            if targets.dim() >= 2 and targets.shape[1] == inputs.shape[1]:
                targets = targets[:, :length]
            return Example(inputs[:, :length], targets, mask[:, :length])
        seen += rows
    raise InspectError(f"split {split!r} has {seen} examples; --index {index} is past its end")


def _row(batch: Any, row: int) -> tuple[Tensor, Tensor, Tensor]:
    return batch.inputs[row : row + 1], batch.targets[row : row + 1], batch.mask[row : row + 1]


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, DIGITS) if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return [_round(item) for item in value]
    if isinstance(value, dict):
        return {key: _round(item) for key, item in value.items()}
    return value


def _as_list(tensor: Tensor) -> Any:
    return _round(tensor.detach().cpu().tolist())


def probabilities(task: Any, outputs: Tensor, example: Example) -> tuple[str, Tensor]:
    """The model's output as probabilities: ``sigmoid`` for bit targets, ``softmax`` for classes."""
    if example.targets.is_floating_point() and example.targets.shape == outputs.shape:
        return "sigmoid", torch.sigmoid(outputs)
    if not example.targets.is_floating_point():
        return "softmax", torch.softmax(outputs, dim=-1)
    return "identity", outputs


def layer_numbers(trace: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """Per layer: read and write slots and weights per step, and the gates' statistics."""
    layers: dict[str, dict[str, Any]] = {}
    for key, value in sorted(trace.items()):
        layer, _, name = key.partition(".")
        entry = layers.setdefault(layer, {})
        value = value[:, 0]  # [T, ...] of the one example
        if name in ("read", "write"):
            if value.shape[-1] == 0:  # a layer without memory
                continue
            entry[f"{name}_slot"] = value.argmax(-1).tolist()
            entry[f"{name}_weight"] = _as_list(value.max(-1).values)
            entry[f"{name}_weights"] = _as_list(value)
        elif name in GATES:
            gates = entry.setdefault("gates", {})
            gates[name] = {
                "mean": _as_list(value.mean(-1)),
                "p10": _as_list(value.quantile(0.1, dim=-1)),
                "p90": _as_list(value.quantile(0.9, dim=-1)),
                "units": value.shape[-1],
            }
    return {name: entry for name, entry in layers.items() if entry}


def symbol_text(symbol: Any) -> str:
    """A vocabulary entry as a readable one-character label."""
    if isinstance(symbol, int):
        symbol = chr(symbol) if 32 <= symbol < 127 else f"\\x{symbol:02x}"
    return {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5"}.get(symbol, symbol)


def inspect_run(
    run_dir: str | Path,
    *,
    split: str = "valid",
    index: int = 0,
    out: str | Path | None = None,
    steps: int | None = None,
    device: str = "cpu",
    data_root: str | None = None,
) -> Inspection:
    """Run a trained model on one example and draw what its memory did.

    Args:
        run_dir: the run directory (``recipe.yaml`` and ``checkpoints/``).
        split: the split to take the example from.
        index: which example of the split.
        out: the folder for ``inspect.png`` and ``inspect.json`` (default: the run directory).
        steps: show at most this many steps (language models: 100 by default).
        device: ``cpu`` (default), ``cuda`` or ``auto``.
        data_root: a data folder to look in first.

    Returns:
        The paths written and the numbers.
    """
    from manntk.training.checkpoint import write_text_atomic

    run_dir = Path(run_dir)
    recipe, task, model, checkpoint = load_trained(run_dir, device, data_root)
    target = next(model.parameters()).device
    if steps is None and task.tokens:
        steps = DEFAULT_TEXT_STEPS
    example = take_example(task, split, index, recipe.eval.batch_size, steps)
    with torch.no_grad(), tracing() as trace:
        outputs, _ = model(example.inputs.to(target))
    outputs = outputs.float().cpu()
    kind, probs = probabilities(task, outputs, example)
    scores = {key: float(value) for key, value in task.score(outputs, example).items()}
    data: dict[str, Any] = {
        "run": str(run_dir),
        "recipe": recipe.name,
        "task": recipe.task.name,
        "checkpoint": checkpoint.name,
        "split": split,
        "index": index,
        "steps": example.inputs.shape[1],
        "scored_steps": example.mask[0].nonzero().flatten().tolist(),
        "metrics": _round(task.summarize(scores)),
        "output_kind": kind,
        "output": _as_list(probs[0]),
        "layers": layer_numbers(trace),
    }
    if task.tokens:
        vocab = list(getattr(getattr(task, "corpus", None), "vocab", range(task.input_size)))
        data["input_ids"] = example.inputs[0].tolist()
        data["target_ids"] = example.targets[0].tolist()
        data["vocab"] = [symbol_text(s) for s in vocab]
        data["text"] = "".join(data["vocab"][i] for i in data["input_ids"])
    else:
        data["input"] = _as_list(example.inputs[0])
        data["target"] = _as_list(example.targets[0])
    folder = Path(out) if out is not None else run_dir
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "inspect.json"
    write_text_atomic(json_path, json.dumps(data) + "\n")
    png = draw(data, example, probs[0], folder / "inspect.png")
    return Inspection(png, json_path, data)


# -- the figure ---------------------------------------------------------------------------


def _panel_height(rows: int) -> float:
    return min(3.0, max(0.75, 0.3 + 0.085 * rows))


def draw(data: dict[str, Any], example: Example, probs: Tensor, path: Path) -> Path:
    """The figure of an inspection: one row per panel, time on a shared x axis."""
    from manntk.tools.plot import _pyplot, save_figure

    plt = _pyplot()
    from matplotlib.colors import PowerNorm
    steps = data["steps"]
    tokens = "input_ids" in data
    panels: list[tuple[float, Any]] = []  # (height, drawing function(axis, colorbar axis))
    scored = data["scored_steps"]
    first_scored = scored[0] if scored and scored[0] > 0 else None

    def heatmap(matrix: Tensor, title: str, ylabel: str, cmap: str, vmin: float | None = 0.0, vmax: float | None = 1.0,
                yticklabels: list[str] | None = None, dots: list[tuple[int, int]] | None = None, sqrt: bool = False):
        matrix = matrix.detach().float().cpu()

        def paint(axis, bar_axis):
            scale = {"norm": PowerNorm(0.5, vmin=vmin, vmax=vmax)} if sqrt else {"vmin": vmin, "vmax": vmax}
            image = axis.imshow(matrix.t().numpy(), aspect="auto", interpolation="nearest", cmap=cmap, **scale,
                                extent=(-0.5, steps - 0.5, matrix.shape[1] - 0.5, -0.5))
            axis.set_ylabel(ylabel, fontsize=8)
            axis.set_title(title, fontsize=9, loc="left")
            axis.tick_params(axis="y", labelsize=7)
            if yticklabels is not None:
                axis.set_yticks(range(len(yticklabels)))
                axis.set_yticklabels(yticklabels, fontsize=6 if len(yticklabels) > 20 else 7)
            elif matrix.shape[1] <= 12:
                axis.set_yticks(range(matrix.shape[1]))
                axis.tick_params(axis="y", labelsize=7)
            if dots:
                axis.plot([t for t, _ in dots], [r for _, r in dots], linestyle="none", marker="o", markersize=2.5,
                          markerfacecolor="none", markeredgecolor="red", markeredgewidth=0.7)
            plt.colorbar(image, cax=bar_axis)
            bar_axis.tick_params(labelsize=7)

        height = _panel_height(matrix.shape[1])
        if yticklabels is not None:  # one readable label per row
            height = max(height, 0.1 * len(yticklabels))
        panels.append((height, paint))

    def lines(series: dict[str, dict[str, list[float]]], title: str, ylabel: str, ylim: tuple[float, float] | None = None):
        def paint(axis, bar_axis):
            bar_axis.set_visible(False)
            x = list(range(steps))
            for number, (name, values) in enumerate(series.items()):
                color = f"C{number}"
                axis.plot(x, values["mean"], color=color, linewidth=1.2, label=name)
                if "p10" in values:
                    axis.fill_between(x, values["p10"], values["p90"], color=color, alpha=0.15, linewidth=0)
            axis.set_title(title, fontsize=9, loc="left")
            axis.set_ylabel(ylabel, fontsize=8)
            if ylim:
                axis.set_ylim(*ylim)
            axis.tick_params(axis="y", labelsize=7)
            axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
            axis.grid(True, alpha=0.3)

        panels.append((1.5, paint))

    # input, target, output
    if tokens:
        vocab = data["vocab"]
        text = [vocab[i] for i in data["input_ids"]]

        def characters(axis, bar_axis):
            bar_axis.set_visible(False)
            axis.set_ylim(0, 1)
            axis.set_yticks([])
            for t, char in enumerate(text):
                axis.text(t, 0.5, char, ha="center", va="center", fontsize=9 if steps <= 120 else 6, family="DejaVu Sans Mono")
            axis.set_title("input characters", fontsize=9, loc="left")

        panels.append((0.55, characters))
        targets = data["target_ids"]
        heatmap(probs, f"output: softmax over {len(vocab)} symbols, square-root colour scale (red circles: the next character)",
                "symbol", "Greys", sqrt=True,
                yticklabels=vocab, dots=list(enumerate(targets)))
        bits = [-math.log2(max(float(probs[t, c]), 1e-12)) for t, c in enumerate(targets)]
        lines({"bits": {"mean": bits}}, f"bits on the next character (mean {sum(bits) / len(bits):.2f})", "bits")
    else:
        inputs = example.inputs[0].float()
        heatmap(inputs, f"input ({inputs.shape[1]} channel{'s' if inputs.shape[1] > 1 else ''})", "channel", "viridis",
                vmin=float(min(0.0, inputs.min())), vmax=float(max(1.0, inputs.max())))
        target = example.targets[0]
        if data["output_kind"] == "sigmoid":
            heatmap(target, "target (scored steps)", "bit", "viridis")
            heatmap(probs, "output: sigmoid(y)", "bit", "viridis")
        elif data["output_kind"] == "softmax":  # one class per example, read at the last scored step
            label = int(target.reshape(-1)[-1])
            last = scored[-1] if scored else steps - 1
            predicted = int(probs[last].argmax())
            heatmap(probs, f"output: softmax over {probs.shape[1]} classes (label {label}, predicted {predicted} "
                    f"with p = {float(probs[last, predicted]):.2f} at step {last}; square-root colour scale)", "class", "Greys", sqrt=True,
                    dots=[(last, label)])
        else:
            heatmap(probs, "output", "unit", "coolwarm", vmin=None, vmax=None)

    # memory and gates, per layer
    for layer, entry in data["layers"].items():
        number = layer.removeprefix("layer")
        for name, verb in (("read", "read"), ("write", "written")):
            if f"{name}_weights" in entry:
                weights = torch.tensor(entry[f"{name}_weights"])
                hard = bool(((weights == 0) | (weights == 1)).all())
                top = max(float(weights.max()), 1e-6)  # soft weights spread thin: the colours span 0 .. their largest
                heatmap(weights, f"{name} weights, layer {number}: slot {verb} at each step"
                        + ("" if hard else f" (soft weights; colour scale 0 to {top:.3g})"),
                        "slot", "Blues" if name == "read" else "Reds", vmax=1.0 if hard else top)
        if "gates" in entry:
            lines(entry["gates"], f"ARMIN gates, layer {number}: mean over units (band: 10-90% of units)", "gate", (0.0, 1.0))

    heights = [height for height, _ in panels]
    width = 12.0 if steps <= 200 else 15.0
    total = sum(heights) + 0.45 * len(panels) + 1.0
    figure = plt.figure(figsize=(width, total))
    grid = figure.add_gridspec(len(panels), 2, height_ratios=heights, width_ratios=[1.0, 0.012], hspace=0.45 * len(panels) / sum(heights),
                               wspace=0.02, top=1.0 - 0.8 / total, bottom=0.5 / total)
    axes = []
    for row, (_, paint) in enumerate(panels):
        axis = figure.add_subplot(grid[row, 0], sharex=axes[0] if axes else None)
        paint(axis, figure.add_subplot(grid[row, 1]))
        if first_scored is not None:
            axis.axvline(first_scored - 0.5, color="orange", linestyle="--", linewidth=0.9)
        axis.tick_params(axis="x", labelbottom=row == len(panels) - 1, labelsize=8)
        axes.append(axis)
    axes[0].set_xlim(-0.5, steps - 0.5)
    axes[-1].set_xlabel("time step" + (" (orange line: first scored step)" if first_scored is not None else ""), fontsize=9)
    metrics = ", ".join(f"{key} {value:.4g}" for key, value in data["metrics"].items() if isinstance(value, (int, float)))
    figure.suptitle(f"{data['recipe'] or Path(data['run']).name}: {data['task']} {data['split']} example {data['index']}, "
                    f"{steps} steps ({data['checkpoint']}); {metrics}", fontsize=10, y=1.0 - 0.2 / total)
    return save_figure(figure, path)


@hookimpl
def register_commands(commands: argparse._SubParsersAction) -> None:
    """``manntk inspect``."""
    inspect = commands.add_parser("inspect", help="draw what a trained model's memory did on one example (PNG + JSON)")
    add_run_arguments(inspect, "inspect.png and inspect.json")
    inspect.add_argument("--split", default="valid", help="split to take the example from (default: valid)")
    inspect.add_argument("--index", type=int, default=0, help="which example of the split (default: 0)")
    inspect.add_argument("--steps", type=int, help="show at most this many steps (language models: 100 by default)")
    inspect.set_defaults(handler=_inspect)


def add_run_arguments(parser: argparse.ArgumentParser, written: str) -> None:
    """The arguments of a command that loads a trained run: the run directory, ``--out``
    (the folder for what it writes, ``written``), ``--data`` and ``--device``."""
    parser.add_argument("run", help="run directory")
    parser.add_argument("--out", help=f"folder for {written} (default: the run directory)")
    parser.add_argument("--data", help="data folder to look in first (also: $MANNTK_DATA)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])


def require_run(run: str) -> None:
    """Raise ``UsageError`` unless ``run`` is a run directory (holds ``recipe.yaml``)."""
    if not (Path(run) / "recipe.yaml").exists():
        raise UsageError(f"{run} is not a run directory (no recipe.yaml)")


def _inspect(args: argparse.Namespace) -> int:
    require_run(args.run)
    try:
        result = inspect_run(args.run, split=args.split, index=args.index, out=args.out, steps=args.steps,
                             device=args.device, data_root=args.data)
    except InspectError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {result.png} and {result.json}")
    return 0
