"""User-facing errors: one line that names what is wrong and how to fix it.

The CLI prints ``HAMTError`` messages without a traceback (``--debug`` shows it) and exits with
status 2. Raise them for bad input, never for bugs.
"""


class HAMTError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class ConfigError(HAMTError, ValueError):
    """A parameter file, profile, override or config value is invalid."""


class DataError(HAMTError):
    """Input data is missing, empty, unreadable or inconsistent with its metadata."""


class CheckpointError(HAMTError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""
