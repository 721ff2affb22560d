"""manntk: memory-augmented recurrent networks from interchangeable parts."""

__version__ = "0.1.0"
