"""Create the AWS side of the pipeline, or repair it (every run re-applies the settings).

    python scripts/build_lambda_package.py     # optional first: the function's zip
    python scripts/setup_aws.py --dry-run      # the plan (the same suffix), nothing made
    python scripts/setup_aws.py --package build/lambda.zip --trigger
    python scripts/setup_aws.py --template build/skysurvey.yaml --trigger   # CloudFormation

Makes, all tagged ``skysurvey:deployment=<suffix>`` and all in one region: two private,
encrypted, TLS-only buckets (raw and catalog), the encrypted failed-events queue, the
least-privilege IAM role, the log group, the Lambda function (with --package; reserved
concurrency, asynchronous retries <= 2 and the queue as its on-failure destination), the S3
trigger (with --trigger), the Glue/Athena database, workgroup and tables, CloudWatch alarms and a
dashboard. Refuses to adopt anything it did not make: every name is checked before anything is
created, and one line names every conflict. Writes the env file the other scripts read; before
its first change it records the suffix there with SKYSURVEY_SETUP=incomplete, so a setup that
fails half-way is found (and removed, by tag) by cleanup_aws.py.

On an S3-compatible test endpoint (AWS_ENDPOINT_URL: moto), --no-tls-policy leaves the TLS-only
bucket policy off: moto applies its deny without the aws:SecureTransport condition and would
refuse every object call (setup_guide.md, "Trying it on a moto server").

With --template FILE (.yaml, .yml or .json) it makes nothing and needs no credentials: it writes
the same deployment as a CloudFormation template, from the same definitions
(src/skysurvey/cfn_template.py); setup_guide.md, "Deploy with CloudFormation", deploys it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from skysurvey import cli
from skysurvey.aws_resources import DEFAULT_CONCURRENCY, SETUP_MARKER, FunctionSettings
from skysurvey.aws_setup import resolve_names, run_setup, setup_resources
from skysurvey.config import env_file_path, is_s3_uri, read_env_file, write_env_file
from skysurvey.errors import SkySurveyError

__all__ = ["build_parser", "main", "run", "write_template"]


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
    parser.add_argument("--memory", type=cli.positive_int, default=1024,
                        help="Lambda memory, MB")
    parser.add_argument("--timeout", type=cli.positive_int, default=300, help="Lambda timeout, s")
    parser.add_argument("--ephemeral", type=cli.positive_int, default=2048,
                        help="Lambda /tmp size, MB")
    parser.add_argument("--concurrency", type=cli.positive_int, default=DEFAULT_CONCURRENCY,
                        help="reserved concurrency: the most copies of the function at once")
    parser.add_argument("--reference", default=None,
                        help="reference catalog (local file/folder, uploaded under reference/, "
                             "or s3:// URI) the function calibrates against")
    parser.add_argument("--reference-bands", default=None,
                        help="band=column pairs of the reference, e.g. g=phot_g_mean_mag")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--no-tls-policy", action="store_true",
                        help="S3-compatible TEST endpoints only (AWS_ENDPOINT_URL set, e.g. "
                             "moto): leave the TLS-only bucket policy off (and take setup's "
                             "off), since moto applies its deny without the condition; refused "
                             "without AWS_ENDPOINT_URL")
    parser.add_argument("--template", default=None, metavar="FILE",
                        help="write the deployment as a CloudFormation template (.yaml, .yml "
                             "or .json) instead of making it; --suffix and the function flags "
                             "give the parameters' defaults, --trigger adds the S3 trigger")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    package = Path(args.package) if args.package else None
    if package is not None and not package.is_file():
        parser.error(f"--package {package}: no such file")
    if args.no_tls_policy and not os.environ.get("AWS_ENDPOINT_URL"):
        parser.error("--no-tls-policy is for S3-compatible test endpoints (set "
                     "AWS_ENDPOINT_URL); on AWS the buckets keep their TLS-only policy")
    env_path = env_file_path()
    saved = read_env_file(env_path)
    if args.template:
        return write_template(parser, args, saved)
    try:
        names = resolve_names(args.suffix, args.region, saved, reference=args.reference,
                              reference_bands=args.reference_bands)
        if args.no_tls_policy:
            names = replace(names, tls_only=False)
        settings = FunctionSettings(package, args.memory, args.timeout, args.ephemeral,
                                    args.concurrency)
        print(f"deployment {names.suffix} in {names.region} (account {names.account})")
        if args.no_tls_policy:
            print(f"WARNING: --no-tls-policy: the buckets get NO TLS-only policy and accept "
                  f"plain HTTP (test endpoint {os.environ['AWS_ENDPOINT_URL']}); never use "
                  "it on AWS", file=sys.stderr)

        def record_start() -> None:  # before the first change: cleanup can find a partial setup
            same = saved.get("SKYSURVEY_SUFFIX") == names.suffix and saved.get(
                "AWS_REGION", names.region) == names.region
            kept = saved if same else {}  # a repair keeps the working settings; another
            # deployment's bucket names would point the scripts at the wrong one
            write_env_file(env_path, {**kept, "SKYSURVEY_SUFFIX": names.suffix,
                                      "AWS_REGION": names.region, SETUP_MARKER: "incomplete"})

        plan = run_setup(setup_resources(names, settings, trigger=args.trigger), names,
                         dry_run=args.dry_run, before_changes=record_start)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if read_env_file(env_path).get(SETUP_MARKER) == "incomplete":
            print(f"setup did not finish: {env_path} records deployment "
                  f"{read_env_file(env_path)['SKYSURVEY_SUFFIX']} ({SETUP_MARKER}=incomplete); "
                  "fix the cause and run setup_aws.py again, or remove what it made with "
                  "scripts/cleanup_aws.py --yes", file=sys.stderr)
        return 1
    width = max(len(n) for n, _ in plan.states)
    for name, state in plan.states:
        print(f"  {name:<{width}}  {state}")
    if args.dry_run:
        print("dry run: nothing was made")
        return 0
    write_env_file(env_path, names.env())  # complete: the marker goes
    changed = [s for _, s in plan.states if s not in ("unchanged", "ensured")
               and not s.startswith("skipped")]
    print(f"{len(changed)} created or changed" if changed else "nothing to change")
    print(f"settings written to {env_path} (source it, or the scripts read it themselves)")
    return 0


def write_template(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   saved: dict[str, str]) -> int:
    """``--template FILE``: the CloudFormation template of the same deployment; no AWS call."""
    from skysurvey.cfn_template import build_template, dumps

    path = Path(args.template)
    formats = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
    if path.suffix.lower() not in formats:
        parser.error(f"--template {path}: name it .yaml, .yml or .json")
    if args.package:
        parser.error("--template: the stack takes the zip from S3 (parameters CodeBucket and "
                     "CodeKey), not --package")
    reference = args.reference or saved.get("REFERENCE_CATALOG")
    if reference and not is_s3_uri(reference):
        parser.error(f"--template: the reference must be an s3:// URI (upload {reference} "
                     "first), not a local path")
    settings = FunctionSettings(None, args.memory, args.timeout, args.ephemeral,
                                args.concurrency)
    template = build_template(settings, suffix=args.suffix or saved.get("SKYSURVEY_SUFFIX"),
                              trigger=args.trigger, reference=reference,
                              reference_bands=args.reference_bands or saved.get(
                                  "REFERENCE_BANDS"))
    try:
        text = dumps(template, formats[path.suffix.lower()])
    except ModuleNotFoundError:
        print("error: writing YAML needs PyYAML (pip install pyyaml), or name the file .json",
              file=sys.stderr)
        return 1
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"CloudFormation template written to {path} ({len(template['Resources'])} resources)")
    return 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
