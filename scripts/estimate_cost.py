"""What the pipeline costs on AWS (list prices, us-east-1).

The step itself is ``skysurvey/steps/estimate_cost.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.estimate_cost import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
