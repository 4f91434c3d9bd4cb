"""The project's exceptions.

Every error the core raises on purpose is a :class:`SkySurveyError`. Its ``str()`` is one line
that names the file (or bucket, or query) and the cause, ready to print in a summary table;
the command-line fronts turn it into a message and an exit status, the core never prints.
"""

from __future__ import annotations


class SkySurveyError(Exception):
    """Base class: ``SkySurveyError(source, cause)`` reads ``"<source>: <cause>"``."""

    def __init__(self, source: str, cause: str):
        self.source = str(source)
        self.cause = " ".join(str(cause).split())  # always one line
        super().__init__(f"{self.source}: {self.cause}")


class FITSReadError(SkySurveyError):
    """Not FITS, truncated, empty, or no 2-D image HDU in the file."""


class ImageDataError(SkySurveyError):
    """The pixels cannot be measured: all NaN, constant, too small."""


class ImageTooLargeError(SkySurveyError):
    """The image would need more memory than the configured budget."""


class StorageError(SkySurveyError):
    """A bucket or folder is missing, access is denied, or an object cannot be read or written."""


class ConfigError(SkySurveyError):
    """A setting is missing or malformed (bucket URI, credentials, function name...)."""


class QueryError(SkySurveyError):
    """A SQL query failed, timed out, or names an unknown query."""
