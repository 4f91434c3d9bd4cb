"""Step 5: from detections to objects. Links every catalogued source with a position to one
object across images and nights, and writes ``objects``, ``object_photometry`` and
``associations`` beside ``sources`` (Parquet, partitioned by ``hpx5``, the order-5 HEALPix pixel).

    python scripts/build_objects.py --catalog data/catalog
    python scripts/build_objects.py --catalog s3://my-catalog --workers 4 --radius 1.5

Incremental: a second run associates only new or reprocessed images; object ids never change
(``--rebuild`` renumbers). Every run first checks the tables against the files the last build
recorded (``objects/_build.json``): a unit whose files were lost or changed is rebuilt from
the sources and named in a ``note:`` line (``--verify`` compares checksums too). Exit status 0,
1 when the build failed (the previous tables are then intact), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial

from skysurvey import cli
from skysurvey.config import get_setting, is_s3_uri
from skysurvey.errors import QueryError, SkySurveyError, printable
from skysurvey.objects import BuildConfig, build_objects, run_units_lambda
from skysurvey.queries import dataset
from skysurvey.runner import default_workers

#: The widest association radius accepted: seeing-limited positions agree within a few arcsec;
#: 3600" made every unit compare every pair of its sources (minutes, no output).
MAX_RADIUS_ARCSEC = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Associate the catalog's sources into objects with light-curve statistics.",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/build_objects.py --catalog data/catalog --workers 2",
    )
    parser.add_argument("--catalog", default=None,
                        help="catalog folder or s3:// URI (default: BUCKET_CATALOG, else "
                             "data/catalog)")
    parser.add_argument("--radius", type=cli.bounded_float(MAX_RADIUS_ARCSEC, " arcsec"),
                        default=1.0,
                        help=f"association radius, arcsec (0 < radius <= {MAX_RADIUS_ARCSEC:g}: "
                             "wider radii merge unrelated stars and take minutes per unit)")
    parser.add_argument("--workers", type=cli.positive_int, default=default_workers(),
                        help="processes (one HEALPix unit each at a time)")
    parser.add_argument("--rebuild", action="store_true",
                        help="start from scratch: every object is renumbered")
    parser.add_argument("--verify", action="store_true",
                        help="also compare every table file's SHA-256 with the build record "
                             "(reads them all locally, one HEAD each on S3); sizes are always "
                             "compared, and a lost or changed unit is rebuilt from the sources")
    parser.add_argument("--backend", choices=("local", "lambda"), default="local",
                        help="run the HEALPix units in a local process pool, or one AWS Lambda "
                             "invocation per unit (s3:// catalog; --workers concurrent calls)")
    parser.add_argument("--function", default=None,
                        help="Lambda function (default: LAMBDA_FUNCTION)")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    catalog = get_setting("BUCKET_CATALOG", args.catalog)
    config = BuildConfig(radius_arcsec=args.radius, workers=args.workers, rebuild=args.rebuild,
                         verify=args.verify)
    runner = None
    if args.backend == "lambda":
        if not is_s3_uri(catalog):
            parser.error("--backend lambda needs an s3:// catalog (the function reads it)")
        function = get_setting("LAMBDA_FUNCTION", args.function)
        runner = partial(run_units_lambda, function=function, workers=args.workers)
    try:
        check_files(catalog)
        report = build_objects(catalog, config, runner=runner)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report.status == "ok" and report.partitions and is_s3_uri(catalog):
        register_partitions_in_glue(catalog, report.partitions)
    print(report.summary())
    return 0 if report.status in ("ok", "unchanged") else 1


def check_files(catalog: str) -> None:
    """Read the footer of every ``images`` and ``sources`` file (a build that has nothing new
    reads none of them): an empty or truncated file is a QueryError naming it. A catalog that
    is missing as a whole is left to build_objects, which names it its own way."""
    for table in ("images", "sources"):
        try:
            dataset(catalog, table)
        except QueryError as exc:
            if exc.source != printable(str(catalog)):  # a file of the catalog, not the catalog
                raise


def register_partitions_in_glue(catalog: str, partitions: list[int]) -> None:
    """Register the ``hpx5`` partitions just written with the Athena database (DESIGN: partitions
    are registered as they are written). Without Glue (another S3-compatible store) this is a
    warning: the tables are written, and the next ``query_with_athena.py --engine athena``
    registers whatever it finds."""
    from skysurvey.athena import register_partitions

    values = [{"hpx5": int(p)} for p in partitions]
    try:
        for folder in ("objects", "object_photometry", "associations"):
            register_partitions(catalog, folder, values)
    except SkySurveyError as exc:
        logging.getLogger("build_objects").warning("partitions not registered in Glue: %s", exc)


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
