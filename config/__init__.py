"""The one typed config of every command, and the command-line skeleton they share.

``load_config(path, overrides)`` reads defaults < a TOML file < ``SSPR__SECTION__KEY`` env vars
< ``--set section.key=value`` flags into a frozen ``PipelineConfig`` (``config.sections``);
``config.command`` gives every command the same ``--config`` / ``--set``, logging and exit codes.
Imports no torch, pyspark or faiss.
"""

from config.errors import ConfigError, DedupError
from config.loader import ENV_PREFIX, load_config
from config.sections import (
    PathsConfig,
    PipelineConfig,
    ReviewConfig,
    SamplingConfig,
    SparkConfig,
    TrainConfig,
    ValidationConfig,
    WarehouseConfig,
)

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "DedupError",
    "PathsConfig",
    "PipelineConfig",
    "ReviewConfig",
    "SamplingConfig",
    "SparkConfig",
    "TrainConfig",
    "ValidationConfig",
    "WarehouseConfig",
    "load_config",
]
