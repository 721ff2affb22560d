"""Built-in addressing: ``auto`` (ARMIN), ``tardis``, ``ntm`` (content-based), ``none``."""
