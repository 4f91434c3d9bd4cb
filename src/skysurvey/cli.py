"""What every script's command line shares: help format, ``--version``, quiet broken pipes.

    parser = argparse.ArgumentParser(..., formatter_class=cli.HelpFormatter)
    cli.add_version(parser)
    ...
    if __name__ == "__main__":
        raise SystemExit(cli.run(main))
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from . import __version__

__all__ = ["HelpFormatter", "add_version", "bounded_float", "nonnegative_int", "positive_float",
           "positive_int", "run"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` once: not when the help already says it, nor for None/False.

    (argparse's own formatter appends ``(default: None)`` after a help text that already
    named the setting the default comes from, e.g. ``(default: BUCKET_RAW) (default: None)``.)
    The description and epilog keep their line breaks (examples stay readable).
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if ("(default" in text or "%(default)" in text or action.default is None
                or action.default is False or action.default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _int_at_least(text: str, minimum: int, meaning: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {meaning}, not {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1.

    Parameters
    ----------
    text : str
        The command-line value.

    Returns
    -------
    int

    Raises
    ------
    argparse.ArgumentTypeError
        Not an integer, or below 1.
    """
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a seed, an offset).

    Parameters
    ----------
    text : str
        The command-line value.

    Returns
    -------
    int

    Raises
    ------
    argparse.ArgumentTypeError
        Not an integer, or negative.
    """
    return _int_at_least(text, 0, "0 or more")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``inf`` and ``nan`` are refused).

    Parameters
    ----------
    text : str
        The command-line value.

    Returns
    -------
    float

    Raises
    ------
    argparse.ArgumentTypeError
        Not positive and finite (a non-number raises ValueError, which argparse reports).
    """
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive finite number")
    return value


def bounded_float(high: float, unit: str = "") -> Callable[[str], float]:
    """argparse type: a number in (0, *high*]; the message names the bound (and *unit*).

    Parameters
    ----------
    high : float
        The largest value allowed.
    unit : str
        Appended to the bound in the message (e.g. ``" s"``).

    Returns
    -------
    callable
        ``parse(text) -> float``, raising ``argparse.ArgumentTypeError`` outside the range.
    """
    def parse(text: str) -> float:
        value = positive_float(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}{unit}")
        return value

    parse.__name__ = "number"  # argparse's "invalid number value: 'x'"
    return parse


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: the script's name and the skysurvey version it runs.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The script's parser (the option is added to it).

    Returns
    -------
    None
    """
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s (skysurvey {__version__})")


def run(main: Callable[[], int]) -> int:
    """Call *main*; a reader that stops early (``| head``) ends the run quietly, status 0.

    Parameters
    ----------
    main : callable
        The script's ``main()``, returning its exit status.

    Returns
    -------
    int
        *main*'s status; 0 when its output pipe was closed.
    """
    try:
        status = main()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # Python's recipe: point stdout at devnull so the interpreter's final flush is silent
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
