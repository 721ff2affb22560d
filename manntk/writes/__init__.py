"""Built-in write policies: ``overwrite`` (ARMIN, TARDIS), ``erase_add`` (NTM), ``none``."""
