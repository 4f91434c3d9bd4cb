"""Create the AWS side of the pipeline, or repair it (every run re-applies the settings).

    python scripts/build_lambda_package.py     # optional first: the function's zip
    python scripts/setup_aws.py --dry-run      # the plan (the same suffix), nothing made
    python scripts/setup_aws.py --package build/lambda.zip --trigger

Makes, all tagged ``skysurvey:deployment=<suffix>`` and all in one region: two private,
encrypted, TLS-only buckets (raw and catalog), the encrypted failed-events queue, the
least-privilege IAM role, the log group, the Lambda function (with --package; reserved
concurrency, asynchronous retries <= 2 and the queue as its on-failure destination), the S3
trigger (with --trigger), the Glue/Athena database, workgroup and tables, CloudWatch alarms and a
dashboard. Refuses to adopt anything it did not make. Writes the env file the other scripts read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from skysurvey import cli
    from skysurvey.aws_setup import (
        DEFAULT_CONCURRENCY,
        FunctionSettings,
        resolve_names,
        run_setup,
        setup_resources,
    )
    from skysurvey.config import env_file_path, read_env_file, write_env_file
    from skysurvey.errors import SkySurveyError
except ModuleNotFoundError as exc:  # run outside the project's environment
    raise SystemExit(f"{exc}: run .venv/bin/python {' '.join(sys.argv)} (or `make install` "
                     "first)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Set up S3, SQS, IAM, CloudWatch, Lambda, Glue and Athena for the pipeline.",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/setup_aws.py --package build/lambda.zip --trigger")
    parser.add_argument("--region", default=None,
                        help="AWS region (default: the env file's, else AWS_REGION or the "
                             "profile's; none at all is an error)")
    parser.add_argument("--suffix", default=None,
                        help="bucket name suffix (default: the env file's, else derived from "
                             "the account and region)")
    parser.add_argument("--package", default=None, help="Lambda zip to deploy (or redeploy)")
    parser.add_argument("--trigger", action="store_true",
                        help="invoke the function for every new FITS file under images/")
    parser.add_argument("--memory", type=int, default=1024, help="Lambda memory, MB")
    parser.add_argument("--timeout", type=int, default=300, help="Lambda timeout, s")
    parser.add_argument("--ephemeral", type=int, default=2048, help="Lambda /tmp size, MB")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="reserved concurrency: the most copies of the function at once")
    parser.add_argument("--reference", default=None,
                        help="reference catalog (local file/folder, uploaded under reference/, "
                             "or s3:// URI) the function calibrates against")
    parser.add_argument("--reference-bands", default=None,
                        help="band=column pairs of the reference, e.g. g=phot_g_mean_mag")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    package = Path(args.package) if args.package else None
    if package is not None and not package.is_file():
        parser.error(f"--package {package}: no such file")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    env_path = env_file_path()
    saved = read_env_file(env_path)
    try:
        names = resolve_names(args.suffix, args.region, saved, reference=args.reference,
                              reference_bands=args.reference_bands)
        settings = FunctionSettings(package, args.memory, args.timeout, args.ephemeral,
                                    args.concurrency)
        print(f"deployment {names.suffix} in {names.region} (account {names.account})")
        plan = run_setup(setup_resources(names, settings, trigger=args.trigger), names,
                         dry_run=args.dry_run)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max(len(n) for n, _ in plan.states)
    for name, state in plan.states:
        print(f"  {name:<{width}}  {state}")
    if args.dry_run:
        print("dry run: nothing was made")
        return 0
    write_env_file(env_path, names.env())
    changed = [s for _, s in plan.states if s not in ("unchanged", "ensured")
               and not s.startswith("skipped")]
    print(f"{len(changed)} created or changed" if changed else "nothing to change")
    print(f"settings written to {env_path} (source it, or the scripts read it themselves)")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
