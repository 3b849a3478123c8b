"""Why a weights file cannot be used; every message is one line that names the file."""

__all__ = [
    "CheckpointError",
    "IncompatibleCheckpointError",
    "MissingWeightsError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
]


class CheckpointError(Exception):
    """A weights file (MODEL.WEIGHTS, a training checkpoint) that cannot be used."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks the unpickler for code (functions or classes beyond tensors and plain data); nothing ran."""


class UnreadableCheckpointError(CheckpointError):
    """The file is truncated, corrupt, or not a weights file."""


class IncompatibleCheckpointError(CheckpointError):
    """The weights do not fit the model: missing or unexpected parameters, or parameters of another shape."""


class MissingWeightsError(CheckpointError):
    """Inference or evaluation was asked for without any weights."""
