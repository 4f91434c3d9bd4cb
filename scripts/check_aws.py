"""Check a deployment on the real account: what the tests on moto cannot show.

The step itself is ``skysurvey/steps/check_aws.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.check_aws import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
