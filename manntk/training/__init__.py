"""Training: TBPTT loop, optimizers and schedules, checkpoints, metrics, distributed runs."""

from manntk.training.checkpoint import CheckpointError
from manntk.training.evaluate import evaluate
from manntk.training.ownership import RunDirectoryError
from manntk.training.signals import TrainingInterrupted
from manntk.training.trainer import TrainingDiverged, TrainResult, train

__all__ = ["CheckpointError", "RunDirectoryError", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "evaluate", "train"]
