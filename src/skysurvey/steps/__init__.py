"""The workflow's steps as one command, ``skysurvey <step>``.

Each step is a module here with ``build_parser()`` and ``main(argv) -> int``;
``scripts/<module>.py`` are the tutorial's entry points over the same modules, so
``skysurvey query --query all`` and ``python scripts/query_with_athena.py --query all`` are one
thing.
"""

from __future__ import annotations

import importlib
import sys

from .. import __version__

__all__ = ["STEPS", "main"]

#: ``skysurvey <name>`` -> (its module under skysurvey.steps, what it does), in workflow order
STEPS: dict[str, tuple[str, str]] = {
    "sample": ("download_sample_fits", "make synthetic FITS images with truth catalogs"),
    "upload": ("upload_to_s3", "copy FITS files into the raw bucket"),
    "run": ("invoke_lambda", "catalogue every image: local process pool or AWS Lambda"),
    "query": ("query_with_athena", "named or custom SQL: DuckDB locally, Athena on AWS"),
    "plot": ("plot_catalog", "figures and the run report"),
    "objects": ("build_objects", "link detections across nights into objects"),
    "forced": ("forced_photometry", "forced photometry of every object on every image"),
    "hats": ("export_hats", "HATS catalogs that LSDB opens"),
    "cost": ("estimate_cost", "what a survey costs on AWS"),
    "aws-setup": ("setup_aws", "create the AWS deployment (or write its template)"),
    "aws-check": ("check_aws", "check a deployment on a real account"),
    "aws-cleanup": ("cleanup_aws", "delete what setup created"),
}


def _usage() -> str:
    width = max(map(len, STEPS))
    lines = ["usage: skysurvey <step> [options]   (skysurvey <step> --help for its options)",
             "", "steps, in workflow order:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in STEPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``skysurvey <step> [options]``: run one step with its own options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"skysurvey {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in STEPS:
        print(f"skysurvey: unknown step {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    step = importlib.import_module(f"{__name__}.{STEPS[name][0]}")
    from ..cli import run

    saved, sys.argv = sys.argv, [f"skysurvey {name}", *rest]  # argparse's prog in usage
    try:                                                        # lines and --version
        return run(lambda: step.main(rest))
    finally:
        sys.argv = saved  # a caller in the same process (a test, a notebook) keeps its own
