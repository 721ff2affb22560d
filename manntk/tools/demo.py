"""The paper's models as compositions, each run forward and backward on a copy-task-shaped batch."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

import torch

from manntk.build import build_model
from manntk.models import PAPER_MODELS as MODELS
from manntk.hookspecs import hookimpl

PAPER_MODELS: dict[str, dict[str, Any]] = {model.name: model.parts() for model in MODELS.values()}
"""The paper's models at their algorithmic-task sizes, by name."""


def run_demo(batch_size: int = 4, steps: int = 20, out: TextIO | None = None, seed: int = 0) -> dict[str, float]:
    """Build every paper model (8-bit inputs, 6-bit outputs, memory 50 x 32), run forward and backward.

    Returns:
        The BCE loss of each model on a random binary batch.
    """
    torch.manual_seed(seed)
    x = torch.randint(0, 2, (batch_size, steps, 8)).float()
    target = torch.randint(0, 2, (batch_size, steps, 6)).float()
    losses = {}
    for name, parts in PAPER_MODELS.items():
        model = build_model({"input_size": 8, "output_size": 6, "memory": {"slots": 50, "width": 32}, **parts})
        start = time.perf_counter()
        y, _ = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(y, target)
        loss.backward()
        seconds = time.perf_counter() - start
        grad_norm = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters() if p.grad is not None))
        parameters = sum(p.numel() for p in model.parameters())
        losses[name] = loss.item()
        if out is not None:
            layer = model.layers[0]
            composition = f"{parts['cell']['name']} + {parts['addressing']['name']} + {parts['write']['name']}"
            print(
                f"{name:<10} {composition:<26} params {parameters:>7,}  y {tuple(y.shape)}  "
                f"loss {loss.item():.4f}  grad norm {grad_norm:.4f}  memory {layer.slots}x{layer.width}  "
                f"forward+backward {seconds * 1000:.0f} ms",
                file=out,
            )
    return losses


@hookimpl
def register_commands(commands: argparse._SubParsersAction) -> None:
    """``manntk demo``."""
    demo = commands.add_parser("demo", help="build ARMIN, AwTA, TARDIS, NTM-style and LSTM models and run each forward and backward")
    demo.add_argument("--batch-size", type=int, default=4, help="sequences in the batch (default: 4)")
    demo.add_argument("--steps", type=int, default=20, help="sequence length (default: 20)")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    run_demo(batch_size=args.batch_size, steps=args.steps, out=sys.stdout)
    return 0
