"""Create the AWS side of the pipeline, idempotently (a second run changes nothing).

    python scripts/build_lambda_package.py     # optional first: the function's zip
    python scripts/setup_aws.py --dry-run      # the plan, nothing made
    python scripts/setup_aws.py --package build/lambda.zip --trigger

Makes: two private, encrypted buckets (raw and catalog), the least-privilege IAM role, the
log group, the Lambda function (with --package), the S3 trigger (with --trigger), the Athena
workgroup, database and tables. Writes the env file the other scripts read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skysurvey.aws_setup import resolve_names, run_steps, setup_steps
from skysurvey.config import env_file_path, read_env_file, write_env_file
from skysurvey.errors import SkySurveyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Set up S3, IAM, CloudWatch Logs, Lambda and Athena for the pipeline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/setup_aws.py --package build/lambda.zip --trigger")
    parser.add_argument("--region", default=None, help="AWS region (default: boto3's)")
    parser.add_argument("--suffix", default=None,
                        help="bucket name suffix (default: from the env file, else random)")
    parser.add_argument("--package", default=None, help="Lambda zip to deploy")
    parser.add_argument("--trigger", action="store_true",
                        help="invoke the function for every new object under images/")
    parser.add_argument("--memory", type=int, default=1024, help="Lambda memory, MB")
    parser.add_argument("--timeout", type=int, default=300, help="Lambda timeout, s")
    parser.add_argument("--ephemeral", type=int, default=2048, help="Lambda /tmp size, MB")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    package = Path(args.package) if args.package else None
    if package is not None and not package.is_file():
        parser.error(f"--package {package}: no such file")
    if args.trigger and package is None:
        parser.error("--trigger needs --package (the function must exist)")
    env_path = env_file_path()
    saved = read_env_file(env_path)
    try:
        names = resolve_names(args.suffix, args.region, saved)
        steps = setup_steps(names, package=package, trigger=args.trigger, memory=args.memory,
                            timeout=args.timeout, ephemeral=args.ephemeral)
        states = run_steps(steps, dry_run=args.dry_run)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max(len(n) for n, _ in states)
    for name, state in states:
        print(f"  {name:<{width}}  {state}")
    if package is None:
        print("  (no --package: the Lambda function was not created; "
              "see scripts/build_lambda_package.py)")
    if args.dry_run:
        print("dry run: nothing was made")
        return 0
    write_env_file(env_path, names.env())
    changed = [s for _, s in states if s == "created"]
    print(f"{len(changed)} created" if changed else "nothing to change: everything exists")
    print(f"settings written to {env_path} (source it, or the scripts read it themselves)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
