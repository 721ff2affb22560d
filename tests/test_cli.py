"""The command line: the demo composes and runs every paper model."""

from __future__ import annotations

import math

from manntk.cli import main
from manntk.tools.demo import PAPER_MODELS, run_demo


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


def test_a_closed_pipe_is_not_an_error():
    """`manntk recipes list | head` must not end in a traceback when the reader goes away."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with a broken pipe
    try:
        writer = subprocess.run([sys.executable, "-m", "manntk", "plugins"], cwd=repo, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in writer.stderr
    assert writer.returncode == 0
