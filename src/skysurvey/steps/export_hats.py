"""Step 6: export the survey as HATS catalogs that LSDB opens and cross-matches.

    python scripts/export_hats.py --catalog data/catalog --output data/hats
    python scripts/export_hats.py --catalog s3://my-catalog --output s3://my-catalog/hats

Writes ``<output>/objects`` and ``<output>/sources`` (HATS collections, each with a 10" margin
cache as its default margin) with hats-import; then ``lsdb.open_catalog("<output>/objects")``.
Runs outside the Lambda. The export writes only what it owns: an existing file, a folder that is,
holds or lies inside the catalog, and a non-empty folder an earlier export did not make are
refused (``--force`` takes such a folder, and still replaces only its objects/ and sources/).
Exit status 0, 1 on failure (an existing output is then left as it was), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys

from skysurvey import cli
from skysurvey.config import get_setting
from skysurvey.errors import SkySurveyError
from skysurvey.hats_export import export_hats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export objects and sources as HATS catalogs (with margin caches).",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/export_hats.py --catalog data/catalog --output data/hats",
    )
    parser.add_argument("--catalog", default=None,
                        help="catalog folder or s3:// URI (default: BUCKET_CATALOG)")
    parser.add_argument("--output", required=True, help="folder or s3:// URI to write")
    parser.add_argument("--workers", type=cli.positive_int, default=1,
                        help="dask workers for hats-import")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty folder an earlier export did not make "
                             "(only its objects/ and sources/ are replaced; never a file or "
                             "the catalog)")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    catalog = get_setting("BUCKET_CATALOG", args.catalog)
    try:
        report = export_hats(catalog, args.output, workers=args.workers,
                             force=args.force)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"open with: lsdb.open_catalog({args.output.rstrip('/')!r} + '/objects')")
    return 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
