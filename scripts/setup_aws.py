"""Create the AWS side of the pipeline, or repair it (every run re-applies the settings).

The step itself is ``skysurvey/steps/setup_aws.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.setup_aws import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
