"""Check a deployment on the real account: what the tests on moto cannot show.

    python scripts/check_aws.py                  # every check, one line each
    python scripts/check_aws.py --only alarms tls

Runs, against the deployment the env file names (setup_aws.py's, or the stack's outputs): one
test image through the function and its log line; Athena's count against the catalog's; plain
HTTP refused by the TLS-only policy; a broken file reaching the failed-events queue (as
invoke_lambda.py --redrive lists it); alarms and dashboard present; bucket and destination
settings. Read-only apart from the test image and broken file it uploads under
images/skysurvey-check/ and removes (with the catalog files and the queue message they make).
Prints `ok`, `failed: reason` or `cannot be checked here: why` per check; against a custom
AWS_ENDPOINT_URL (moto) the checks that need real AWS say `cannot be checked on this endpoint`.
Exit status 0 when every check that ran passed, 1 when one failed, 2 when there is nothing to
check (no deployment in the env file).
"""

from __future__ import annotations

import argparse
import sys

from skysurvey import cli
from skysurvey.aws_check import CHECKS, exit_status, run_checks, target_from_settings
from skysurvey.errors import SkySurveyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Check the deployed pipeline on the real account (one line per check).",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/check_aws.py --only function alarms")
    parser.add_argument("--only", nargs="+", choices=[name for name, _ in CHECKS],
                        default=None, help="run only these checks (default: all)")
    parser.add_argument("--wait", type=float, default=600.0,
                        help="seconds to wait for the broken file in the failed-events queue "
                             "(Lambda retries twice, minutes apart)")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target = target_from_settings()
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = f" at {target.endpoint}" if target.endpoint else ""
    print(f"checking function {target.function}, buckets {target.raw} and {target.catalog} in "
          f"{target.region}{where}")
    results = run_checks(target, only=set(args.only or ()), failed_wait=args.wait,
                         on_result=lambda result: print(result.line(), flush=True))
    return exit_status(results)


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
