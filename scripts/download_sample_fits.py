"""Step 1: make the sample images. Nothing is downloaded: the images are synthetic, drawn with
a known truth (realistic WCS, Moffat PSF, stars and Sersic galaxies, sky gradient, noise).

The step itself is ``skysurvey/steps/download_sample_fits.py``; ``--help`` for its options."""

import _stepguard  # noqa: F401 (outside the project's venv: a hint, not a traceback)

from skysurvey.steps.download_sample_fits import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run())
