"""Step 6: forced photometry. Measures every object (``objects``, from build_objects.py) on
every image that covers it, detected there or not, and writes ``forced_photometry`` beside
``sources`` (Parquet, partitioned by band and night like sources).

    python scripts/forced_photometry.py --catalog data/catalog --input data/raw
    python scripts/forced_photometry.py --catalog s3://my-catalog --input s3://my-raw/images \\
        --backend lambda --workers 16

Incremental: images whose objects and record did not change since the last run are skipped;
images whose sky gained objects are measured again (back-fill); ``--rebuild`` measures all.
Then every object's light curve is summarised into ``object_variability`` (n_covering,
forced chi-square, ``variable``, ``transient_candidate`` and their reasons), which the SQL
view ``objects`` joins.
Exit status 0, 1 when any image failed (the others are written), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial

from skysurvey import cli
from skysurvey.config import get_setting, is_s3_uri
from skysurvey.errors import SkySurveyError
from skysurvey.forced_run import run_forced, run_lambda
from skysurvey.runner import default_workers

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Forced photometry of the catalog's objects on every covering image.",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/forced_photometry.py --catalog data/catalog "
               "--input data/raw --workers 2",
    )
    parser.add_argument("--catalog", default=None,
                        help="catalog folder or s3:// URI (default: BUCKET_CATALOG, else "
                             "data/catalog)")
    parser.add_argument("--input", default=None,
                        help="the FITS images the catalog was made from, folder or s3:// "
                             "prefix (default: BUCKET_RAW's images/, where upload_to_s3.py "
                             "puts them, as invoke_lambda.py)")
    parser.add_argument("--workers", type=cli.positive_int, default=default_workers(),
                        help="processes (local) or concurrent invocations (lambda)")
    parser.add_argument("--backend", choices=("local", "lambda"), default="local",
                        help="measure in a local process pool, or one AWS Lambda invocation "
                             "per image (s3:// catalog and input)")
    parser.add_argument("--function", default=None,
                        help="Lambda function (default: LAMBDA_FUNCTION)")
    parser.add_argument("--rebuild", action="store_true",
                        help="measure every image again, changed or not")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    catalog = get_setting("BUCKET_CATALOG", args.catalog)
    raw = args.input or get_setting("BUCKET_RAW").rstrip("/") + "/images"
    runner = None
    if args.backend == "lambda":
        if not (is_s3_uri(catalog) and is_s3_uri(raw)):
            parser.error("--backend lambda needs s3:// --catalog and --input (the function "
                         "reads them)")
        runner = partial(run_lambda, function=get_setting("LAMBDA_FUNCTION", args.function),
                         workers=args.workers)
    try:
        report = run_forced(catalog, raw, workers=args.workers, rebuild=args.rebuild,
                            runner=runner)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 1 if report.failed else 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
