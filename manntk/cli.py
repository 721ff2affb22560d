"""The ``manntk`` command."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from manntk.plugins import Plugins, load_plugins


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``manntk`` command (also the source of the CLI reference)."""
    parser = argparse.ArgumentParser(prog="manntk", description="Memory-augmented recurrent networks from interchangeable parts.")
    parser.add_argument("--version", action="store_true", help="print the manntk version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins = commands.add_parser("plugins", help="list plugins, what each registers, and failures")
    plugins.add_argument("--strict", action="store_true", help="raise the first plugin failure instead of listing it")
    plugins.set_defaults(handler=_plugins)
    demo = commands.add_parser("demo", help="build ARMIN, AwTA, TARDIS, NTM-style and LSTM models and run each forward and backward")
    demo.add_argument("--batch-size", type=int, default=4)
    demo.add_argument("--steps", type=int, default=20, help="sequence length")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``manntk`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from manntk import __version__

        print(f"manntk {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


def format_plugins(plugins: Plugins) -> str:
    """A readable listing: each plugin with the parts it registered, then failures."""
    lines = []
    for kind in plugins.registry.kinds:
        lines.append(f"{kind}:")
        for entry in plugins.registry.entries(kind):
            lines.append(f"  {entry.name:<12} from {entry.plugin}")
    lines.append("plugins:")
    for name, contributed in plugins.contributions.items():
        parts = ", ".join(f"{kind}/{part}" for kind, part in contributed) or "(registers nothing)"
        lines.append(f"  {name}: {parts}")
    if plugins.failures:
        lines.append("failed plugins:")
        for failure in plugins.failures:
            lines.append(f"  {failure.name}: {failure.error}")
    return "\n".join(lines)


def _plugins(args: argparse.Namespace) -> int:
    plugins = load_plugins(strict=args.strict)
    print(format_plugins(plugins))
    return 1 if plugins.failures else 0


def _demo(args: argparse.Namespace) -> int:
    from manntk.demo import run_demo

    run_demo(batch_size=args.batch_size, steps=args.steps, out=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
