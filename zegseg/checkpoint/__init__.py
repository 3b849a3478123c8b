"""Reading and writing weights: safe loading of untrusted files, completeness checks, atomic checkpoints."""
from .checkpointer import ZegsegCheckpointer, read_weights_file
from .errors import (
    CheckpointError,
    IncompatibleCheckpointError,
    MissingWeightsError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)
from .safe_pickle import UnsafePickleError, safe_pickle_load, safe_pickle_loads

__all__ = [
    "CheckpointError",
    "IncompatibleCheckpointError",
    "MissingWeightsError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "UnsafePickleError",
    "ZegsegCheckpointer",
    "read_weights_file",
    "safe_pickle_load",
    "safe_pickle_loads",
]
