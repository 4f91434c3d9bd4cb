"""What the pipeline costs on AWS (list prices, us-east-1).

    python scripts/estimate_cost.py                          # the run that happened
    python scripts/estimate_cost.py --catalog s3://astronomy-catalog-SUFFIX
    python scripts/estimate_cost.py --images 100000 --seconds 0.3 --memory 1024   # what-if

By default it prices the run recorded in the catalog (BUCKET_CATALOG): the image count and the
sum of the handler's measured ``images.seconds``, at the memory size of the deployed function
(LAMBDA_FUNCTION; 1024 MB, said to be assumed, when none can be read; --memory to set it). With
--images it prices a hypothetical run instead, and says so.
"""

from __future__ import annotations

import argparse
import sys

try:
    from skysurvey import cli
    from skysurvey.config import get_setting
    from skysurvey.cost import PRICES, deployed_memory_mb, estimate, measured_run
    from skysurvey.errors import SkySurveyError
except ModuleNotFoundError as exc:  # run outside the project's environment
    raise SystemExit(f"{exc}: run .venv/bin/python {' '.join(sys.argv)} (or `make install` "
                     "first)") from None


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
    parser.add_argument("--images", type=int, default=None,
                        help="price a hypothetical run of this many images instead")
    parser.add_argument("--seconds", type=float, default=0.3,
                        help="hypothetical run: handler seconds per image")
    parser.add_argument("--memory", type=int, default=None,
                        help="Lambda memory, MB (default: the deployed function's; 1024 for a "
                             "hypothetical run)")
    parser.add_argument("--mb", type=float, default=16.8, help="FITS size per image, MB")
    parser.add_argument("--queries", type=int, default=10, help="Athena queries")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    e = estimate(images, mb_per_image=args.mb, seconds_per_image=seconds, memory_mb=memory,
                 queries=args.queries)
    print(f"Lambda: {e.lambda_gb_seconds:,.1f} GB-s and {images} requests")
    rows = [("Lambda (compute + requests)", e.lambda_usd), ("S3 (one month + requests)", e.s3_usd),
            ("Athena", e.athena_usd), ("CloudWatch Logs", e.logs_usd), ("total", e.total_usd)]
    for name, usd in rows:
        print(f"  {name:<30} ${usd:,.4f}")
    print(f"(prices: ${PRICES['lambda_gb_second']}/GB-s, ${PRICES['athena_tb']}/TB scanned; "
          f"S3 at {args.mb} MB per image, {args.queries} queries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
