"""Training: TBPTT loop, optimizers and schedules, checkpoints, metrics, distributed runs."""

from manntk.training.checkpoint import CheckpointError
from manntk.training.evaluate import evaluate
from manntk.training.trainer import TrainingDiverged, TrainResult, train

__all__ = ["CheckpointError", "TrainResult", "TrainingDiverged", "evaluate", "train"]
