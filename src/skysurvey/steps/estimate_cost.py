"""What the pipeline costs on AWS (list prices, us-east-1).

    python scripts/estimate_cost.py                          # the run that happened
    python scripts/estimate_cost.py --catalog s3://astronomy-catalog-SUFFIX
    python scripts/estimate_cost.py --images 100000 --seconds 0.3 --memory 1024   # what-if
    python scripts/estimate_cost.py --images 100000 --input data/sample      # their file sizes

By default it prices the run recorded in the catalog (BUCKET_CATALOG): the image count and the
sum of the handler's measured ``images.seconds``, at the memory size of the deployed function
(LAMBDA_FUNCTION; 1024 MB, said to be assumed, when none can be read; --memory to set it). With
--images it prices a hypothetical run instead, and says so.

The stored size per image (S3) comes from, first found: --mb; --input (the mean size of the
FITS files in a folder or s3:// prefix); --pixels (WIDTHxHEIGHT or SIDE, 32-bit pixels); the
measured run's recorded image sizes (images.width x height, 32-bit pixels); else 16.8 MB (a
2048 x 2048 32-bit image). The output says which.
"""

from __future__ import annotations

import argparse
import sys

from skysurvey import cli
from skysurvey.config import get_setting
from skysurvey.cost import (
    DEFAULT_MB_PER_IMAGE,
    PRICES,
    deployed_memory_mb,
    estimate,
    fits_mb,
    mean_file_mb,
    measured_run,
)
from skysurvey.errors import SkySurveyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Price an AWS run of the pipeline.",
                                     formatter_class=cli.HelpFormatter,
                                     epilog="example: python scripts/estimate_cost.py")
    parser.add_argument("--catalog", default=None,
                        help="the catalog whose images table records the run "
                             "(default: BUCKET_CATALOG)")
    parser.add_argument("--function", default=None,
                        help="the deployed function whose memory prices the run "
                             "(default: LAMBDA_FUNCTION)")
    parser.add_argument("--images", type=cli.positive_int, default=None,
                        help="price a hypothetical run of this many images instead")
    parser.add_argument("--seconds", type=cli.positive_float, default=0.3,
                        help="hypothetical run: handler seconds per image")
    parser.add_argument("--memory", type=cli.positive_int, default=None,
                        help="Lambda memory, MB (default: the deployed function's; 1024 for a "
                             "hypothetical run)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--mb", type=cli.positive_float, default=None,
                      help="FITS size per image, MB (default: from --input or --pixels, else "
                           "the measured run's image sizes, else "
                           f"{DEFAULT_MB_PER_IMAGE} MB, a 2048x2048 32-bit image)")
    size.add_argument("--input", default=None,
                      help="folder or s3:// prefix of the FITS images: their mean file size")
    size.add_argument("--pixels", type=_pixels, default=None, metavar="WxH",
                      help="image size in pixels, WIDTHxHEIGHT or SIDE (32-bit pixels)")
    parser.add_argument("--queries", type=cli.positive_int, default=10, help="Athena queries")
    cli.add_version(parser)
    return parser


def _pixels(text: str) -> int:
    """argparse type: ``256`` (a square side) or ``4096x2048``: the pixel count."""
    parts = text.lower().split("x")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT or SIDE, e.g. 256")
    sides = [cli.positive_int(p) for p in parts]
    return sides[0] * sides[-1]


def _mb_per_image(args, run) -> tuple[float, str]:
    """(MB per image, where it comes from), in the order the module docstring gives."""
    if args.mb:
        return args.mb, "--mb"
    if args.input:
        mb, n = mean_file_mb(args.input)
        return mb, f"mean of {n} FITS file{'s' * (n != 1)} in {args.input}"
    if args.pixels:
        return fits_mb(args.pixels), f"{args.pixels:,} pixels of 32 bits (--pixels)"
    if run is not None and run.mean_pixels:
        return fits_mb(run.mean_pixels), (f"the catalog's images: {run.mean_pixels:,.0f} "
                                          "pixels of 32 bits on average")
    return DEFAULT_MB_PER_IMAGE, ("default: a 2048x2048 32-bit image; --input, --pixels or "
                                  "--mb for yours")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = None
    try:
        if args.images is not None:
            images, seconds, memory = args.images, args.seconds, args.memory or 1024
            print(f"hypothetical run (not measured): {images} images, {seconds:.3f} s each "
                  f"at {memory} MB")
        else:
            catalog = get_setting("BUCKET_CATALOG", args.catalog)
            try:
                run = measured_run(catalog)
            except SkySurveyError as exc:
                print(f"error: {exc} (or price a hypothetical run with --images N)",
                      file=sys.stderr)
                return 1
            if run.images == 0:
                print(f"error: {catalog}: no images recorded: run invoke_lambda.py first, or "
                      "price a hypothetical run with --images N", file=sys.stderr)
                return 1
            if args.memory:
                memory, where = args.memory, "--memory"
            else:
                function = get_setting("LAMBDA_FUNCTION", args.function)
                try:
                    memory, where = deployed_memory_mb(function), f"deployed {function}"
                except SkySurveyError as exc:  # a local run, or no credentials here
                    memory, where = 1024, f"assumed; no deployed function read: {exc.cause}"
            images, seconds = run.images, run.handler_seconds / run.images
            print(f"measured run: {images} images in {catalog}, {run.handler_seconds:,.2f} "
                  f"handler seconds in all, at {memory} MB ({where})")
        mb, mb_from = _mb_per_image(args, run)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    e = estimate(images, mb_per_image=mb, seconds_per_image=seconds, memory_mb=memory,
                 queries=args.queries)
    print(f"Lambda: {e.lambda_gb_seconds:,.1f} GB-s and {images} requests")
    rows = [("Lambda (compute + requests)", e.lambda_usd), ("S3 (one month + requests)", e.s3_usd),
            ("Athena", e.athena_usd), ("CloudWatch Logs", e.logs_usd), ("total", e.total_usd)]
    for name, usd in rows:
        print(f"  {name:<30} ${usd:,.4f}")
    print(f"(prices: ${PRICES['lambda_gb_second']}/GB-s, ${PRICES['athena_tb']}/TB scanned; "
          f"S3 at {mb:,.3g} MB per image ({mb_from}), {args.queries} queries)")
    return 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
