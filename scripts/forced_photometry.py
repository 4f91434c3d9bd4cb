"""Step 6: forced photometry. Measures every object (``objects``, from build_objects.py) on
every image that covers it, detected there or not, and writes ``forced_photometry`` beside
``sources`` (Parquet, partitioned by band and night like sources).

The step itself is ``skysurvey/steps/forced_photometry.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.forced_photometry import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
