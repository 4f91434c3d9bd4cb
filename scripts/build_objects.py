"""Step 5: from detections to objects. Links every catalogued source with a position to one
object across images and nights, and writes ``objects``, ``object_photometry`` and
``associations`` beside ``sources`` (Parquet, partitioned by ``hpx5``, the order-5 HEALPix pixel).

The step itself is ``skysurvey/steps/build_objects.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.build_objects import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
