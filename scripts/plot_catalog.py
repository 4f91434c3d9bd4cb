"""Step 6: figures of the catalog as PNG files, and the run report (one offline HTML page).

The step itself is ``skysurvey/steps/plot_catalog.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.plot_catalog import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
