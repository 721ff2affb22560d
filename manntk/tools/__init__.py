"""manntk's own tools: ``bench``, ``demo``, ``inspect``, ``plot``, ``runs``.

Each module is a plugin like a third party's: it adds its command to ``manntk`` through
the ``register_commands`` hook. The core (parts, engine, build, recipe, training) never
imports them; a test of the import graph keeps it so.
"""
