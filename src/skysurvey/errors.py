"""The project's exceptions.

Every error the core raises on purpose is a :class:`SkySurveyError`. Its ``str()`` is one line
that names the file (or bucket, or query) and the cause, ready to print in a summary table;
the command-line fronts turn it into a message and an exit status, the core never prints.
"""

from __future__ import annotations

import unicodedata

__all__ = ["ConfigError", "FITSReadError", "ImageDataError", "ImageIdConflictError",
           "ImageTooLargeError", "QueryError", "SkySurveyError", "StorageError",
           "TransientStorageError", "one_line", "printable"]

#: Format characters that reorder or hide text on a terminal (bidirectional overrides).
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """*text* safe for one terminal line: control characters, line separators, lone surrogates
    (file names that are not UTF-8) and bidirectional overrides become Python escapes
    (``\\n``, ``\\x1b``, ``\\udcff``, ``\\u202e``); everything else, accents included, stays.

    Parameters
    ----------
    text : str
        Any text (non-strings are converted with ``str``).

    Returns
    -------
    str
        The text with those characters escaped.
    """
    return "".join(
        ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI else ch
        for ch in str(text)
    )


def one_line(text: str) -> str:
    """*text* on one printable line: runs of whitespace become one space, then :func:`printable`.

    Parameters
    ----------
    text : str
        Any text, on any number of lines.

    Returns
    -------
    str
        One line, safe for a terminal.
    """
    return printable(" ".join(str(text).split()))


class SkySurveyError(Exception):
    """Base class: ``SkySurveyError(source, cause)`` reads ``"<source>: <cause>"``.

    The source (a file name, often the user's) is escaped with :func:`printable`, the cause
    made one line with :func:`one_line`: the message never spans lines or reaches a terminal
    with raw escape codes.
    """

    def __init__(self, source: str, cause: str):
        self.source = printable(source)
        self.cause = one_line(cause)
        super().__init__(f"{self.source}: {self.cause}")


class FITSReadError(SkySurveyError):
    """Not FITS, truncated, empty, or no 2-D image HDU in the file."""


class ImageDataError(SkySurveyError):
    """The pixels cannot be measured: all NaN, constant, too small."""


class ImageTooLargeError(SkySurveyError):
    """The image would need more memory than the configured budget."""


class StorageError(SkySurveyError):
    """A bucket or folder is missing, access is denied, or an object cannot be read or written."""


class TransientStorageError(StorageError):
    """A storage call failed in a way worth retrying later (throttling, 5xx, timeouts, a lost
    connection), after botocore's own retries. Lambda re-runs the image on it."""


class ImageIdConflictError(SkySurveyError):
    """Two inputs map to one image id, or the catalog's record of that id came from another
    source file: nothing is written or overwritten."""


class ConfigError(SkySurveyError):
    """A setting is missing or malformed (bucket URI, credentials, function name...)."""


class QueryError(SkySurveyError):
    """A SQL query failed, timed out, or names an unknown query."""
