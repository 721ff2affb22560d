"""``python -m manntk``: the manntk command."""

from manntk.cli import main

raise SystemExit(main())
