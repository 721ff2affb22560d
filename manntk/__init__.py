"""manntk: memory-augmented recurrent networks from interchangeable parts.

A model is layers of a cell, an addressing and a write policy over a slot memory,
each part a plugin. ARMIN is ``armin`` + ``auto`` + ``overwrite``; AwTA is ``armin`` +
``tardis`` + ``overwrite``; TARDIS is ``tardis`` + ``tardis`` + ``overwrite``; an
NTM-style model is ``lstm`` + ``ntm`` + ``erase_add``; the LSTM baseline is ``lstm`` +
``none``.
"""

from manntk.build import MemoryConfig, ModelConfig, build_model
from manntk.config import ConfigError
from manntk.engine import MemoryLayer, MemoryRNN
from manntk.parts import Address, Addressing, Cell, Write
from manntk.plugins import default_plugins, load_plugins
from manntk.state import detach_state, load_state, move_state, save_state

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Addressing",
    "Cell",
    "ConfigError",
    "MemoryConfig",
    "MemoryLayer",
    "MemoryRNN",
    "ModelConfig",
    "Write",
    "build_model",
    "default_plugins",
    "detach_state",
    "load_plugins",
    "load_state",
    "move_state",
    "save_state",
    "__version__",
]
