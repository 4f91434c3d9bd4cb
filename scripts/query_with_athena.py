"""Step 5: the named SQL queries (and your own) over the catalog: DuckDB locally.

The step itself is ``skysurvey/steps/query_with_athena.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.query_with_athena import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
