"""Exceptions with messages a user can act on.

Every error raised for bad user input (config, data, checkpoint, tensors) derives from
``UserInputError`` so that entry points can print its one-line message and exit non-zero
instead of dumping a traceback.
"""


class UserInputError(ValueError):
    """Bad input from the user: the message names the file/key/tensor and what was expected."""


class ConfigError(UserInputError):
    """A config key, value or component name is invalid."""


class DataError(UserInputError):
    """A dataset or episode request cannot be satisfied."""


class CheckpointError(UserInputError):
    """A checkpoint is missing, unreadable or belongs to another run."""
