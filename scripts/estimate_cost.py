"""Estimate what running the pipeline on AWS costs (list prices, us-east-1).

    python scripts/estimate_cost.py --images 1500 --seconds 0.3
    python scripts/estimate_cost.py --catalog data/catalog     # measured seconds and count

With --catalog, the image count and the median handler seconds come from the catalog's
``images`` table (as measured by a real run).
"""

from __future__ import annotations

import argparse
import sys

try:
    from skysurvey import cli
    from skysurvey.cost import PRICES, estimate
    from skysurvey.errors import SkySurveyError
except ModuleNotFoundError as exc:  # run outside the project's environment
    raise SystemExit(f"{exc}: run .venv/bin/python {' '.join(sys.argv)} (or `make install` "
                     "first)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Estimate an AWS run's cost.",
                                     formatter_class=cli.HelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="number of images")
    parser.add_argument("--seconds", type=float, default=0.3, help="handler seconds per image")
    parser.add_argument("--mb", type=float, default=16.8, help="FITS size per image, MB")
    parser.add_argument("--memory", type=int, default=1024, help="Lambda memory, MB")
    parser.add_argument("--queries", type=int, default=10, help="Athena queries")
    parser.add_argument("--catalog", default=None,
                        help="take image count and median seconds from this catalog")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    images, seconds = args.images, args.seconds
    if args.catalog:
        from skysurvey.queries import run_query

        try:
            df = run_query("SELECT count(*) AS n, approx_quantile(seconds, 0.5) AS s "
                           "FROM images", args.catalog)
        except SkySurveyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        images, seconds = int(df["n"][0]), float(df["s"][0])
    e = estimate(images, mb_per_image=args.mb, seconds_per_image=seconds,
                 memory_mb=args.memory, queries=args.queries)
    print(f"{images} images, {seconds:.3f} s each at {args.memory} MB "
          f"= {e.lambda_gb_seconds:,.1f} GB-s")
    rows = [("Lambda (compute + requests)", e.lambda_usd), ("S3 (one month + requests)", e.s3_usd),
            ("Athena", e.athena_usd), ("CloudWatch Logs", e.logs_usd), ("total", e.total_usd)]
    for name, usd in rows:
        print(f"  {name:<30} ${usd:,.4f}")
    print(f"(prices: ${PRICES['lambda_gb_second']}/GB-s, ${PRICES['athena_tb']}/TB scanned)")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
