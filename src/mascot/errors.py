"""User-facing errors.

A `MascotError` carries a one-paragraph message that says what is wrong (naming the file, key or
video) and what to do about it. The CLI prints it without a traceback and exits non-zero; any other
exception is a bug and keeps its traceback.
"""


class MascotError(Exception):
    """An error caused by input or configuration that the user can fix."""


class ConfigError(MascotError):
    """`params.yaml` does not match the schema."""
