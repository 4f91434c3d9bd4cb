"""Step 2: copy FITS files into the raw bucket under ``images/`` (a local folder by default).

The step itself is ``skysurvey/steps/upload_to_s3.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.upload_to_s3 import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
