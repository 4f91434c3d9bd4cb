"""Step 6: export the survey as HATS catalogs that LSDB opens and cross-matches.

The step itself is ``skysurvey/steps/export_hats.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.export_hats import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
