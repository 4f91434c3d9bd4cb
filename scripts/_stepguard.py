"""Imported first by every step script: outside the project's virtual environment, one line
that says what to run instead of a traceback. (Python puts this folder on sys.path when it runs
a script from it, so no path is edited.)"""

import sys

try:
    import skysurvey  # noqa: F401
except ModuleNotFoundError as exc:
    raise SystemExit(f"{exc}: run .venv/bin/python {' '.join(sys.argv)} (or `make install` "
                     "first)") from None
