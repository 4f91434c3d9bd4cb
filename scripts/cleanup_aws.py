"""Delete what scripts/setup_aws.py made (resources tagged with its deployment), then verify.

The step itself is ``skysurvey/steps/cleanup_aws.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.cleanup_aws import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
