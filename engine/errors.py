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


class OutputError(UserInputError):
    """A file of the run cannot be written (a full disk, a name too long): the message names it."""


class ProcessGroupError(RuntimeError):
    """Another process of a multi-process run was lost or stopped answering: the message names the
    iteration, the collective that waited and, where known, the process; exit status 4."""

    exit_code = 4


def exit_with(main) -> None:
    """``sys.exit(main())`` for a command-line tool whose output may be cut short by its reader
    (``tool --dry-run | head``): a closed pipe ends the output quietly, as it does for Unix tools,
    instead of with a BrokenPipeError traceback."""
    import os  # noqa: PLC0415  (this module stays import-free for everything else)
    import sys  # noqa: PLC0415

    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        code = 1
    sys.exit(code)
