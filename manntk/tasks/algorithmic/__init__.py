"""The algorithmic tasks of the NTM paper as used in the ARMIN paper (section 4.1).

Copy, repeat copy, associative recall and priority sort. Each task module has an attrs
config (with ``input_size`` and ``output_size``) and a
``generate(config, batch_size, generator) -> SequenceBatch`` fully determined by the
generator. Every sequence has an input phase and then an output phase, in which the inputs
are zero and the targets are the answer; ``SequenceBatch.mask`` marks the output phase,
the only part that is scored. A task is solved when the mean validation BCE per output bit
(``bce_per_bit`` over a ``make_validation_set``) is below ``SOLVED_BCE_THRESHOLD``.

Example:
    ```python
    import torch
    from manntk.tasks.algorithmic import CopyConfig, copy

    config = CopyConfig(width=6, min_length=1, max_length=50)
    batch = copy.generate(config, batch_size=16, generator=torch.Generator().manual_seed(0))
    batch.inputs.shape  # [16, T, config.input_size]
    ```
"""

from manntk.tasks.algorithmic import associative_recall, copy, priority_sort, repeat_copy
from manntk.tasks.algorithmic.associative_recall import AssociativeRecallConfig
from manntk.tasks.algorithmic.batch import (
    SOLVED_BCE_THRESHOLD,
    Example,
    SequenceBatch,
    bce_per_bit,
    make_validation_set,
    pad_examples,
    solved,
)
from manntk.tasks.algorithmic.copy import CopyConfig
from manntk.tasks.algorithmic.priority_sort import PrioritySortConfig
from manntk.tasks.algorithmic.repeat_copy import RepeatCopyConfig

__all__ = [
    "SOLVED_BCE_THRESHOLD",
    "AssociativeRecallConfig",
    "CopyConfig",
    "Example",
    "PrioritySortConfig",
    "RepeatCopyConfig",
    "SequenceBatch",
    "associative_recall",
    "bce_per_bit",
    "copy",
    "make_validation_set",
    "pad_examples",
    "priority_sort",
    "repeat_copy",
    "solved",
]
