"""Build ARMIN, AwTA, TARDIS, NTM-style and LSTM from parts; run each forward and backward on CPU.

Run: ``python examples/compose_paper_models.py`` (the same as ``manntk demo``).
"""

import sys

from manntk.tools.demo import run_demo

if __name__ == "__main__":
    run_demo(out=sys.stdout)
