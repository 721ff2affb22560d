"""The command line: the demo composes and runs every paper model."""

from __future__ import annotations

import math

from manntk.cli import main
from manntk.demo import PAPER_MODELS, run_demo


def test_demo_runs_every_paper_model_forward_and_backward(capsys):
    assert main(["demo", "--batch-size", "2", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    for name in PAPER_MODELS:
        assert name in out
    losses = run_demo(batch_size=2, steps=5)
    assert set(losses) == set(PAPER_MODELS)
    assert all(math.isfinite(loss) and 0.5 < loss < 1.0 for loss in losses.values())  # BCE near log 2 at init


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("manntk ")
    assert main([]) == 2
