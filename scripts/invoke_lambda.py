"""Step 4: run the handler over every image, locally in a process pool or on AWS Lambda.

The step itself is ``skysurvey/steps/invoke_lambda.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.invoke_lambda import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
