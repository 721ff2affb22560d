"""manntk-dnc: the Differentiable Neural Computer (Graves et al., 2016) as manntk parts.

- ``dnc_read`` (addressing): content lookup plus forward/backward reads along the
  temporal link matrix, mixed by read modes from the controller.
- ``dnc`` (write policy): usage-based allocation, content-based write key, write and
  allocation gates, erase/add, precedence and link updates.

A DNC is ``cell: lstm`` + ``addressing: dnc_read`` + ``write: dnc``; see the README for
how the read and the write share the link state.
"""

from manntk_dnc.read import DncRead, DncReadConfig
from manntk_dnc.write import DncWrite, DncWriteConfig

__version__ = "0.1.0"

__all__ = ["DncRead", "DncReadConfig", "DncWrite", "DncWriteConfig", "__version__"]
