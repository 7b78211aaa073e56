"""Training: configuration, optimiser and schedule, checkpoints, metrics, distributed, the loop."""

from sympformer.train.config import ConfigError, DataConfig, RunConfig, TrainConfig, build, load
from sympformer.train.loop import NonCausalArchitecture, RunFolderError, TrainingDiverged, train

__all__ = [
    "ConfigError",
    "DataConfig",
    "NonCausalArchitecture",
    "RunConfig",
    "RunFolderError",
    "TrainConfig",
    "TrainingDiverged",
    "build",
    "load",
    "train",
]
