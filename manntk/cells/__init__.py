"""Built-in cells: ``armin`` (the ARMIN cell), ``lstm`` (an LSTM controller), ``tardis``."""
