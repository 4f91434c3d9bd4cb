"""Delete everything scripts/setup_aws.py made (the names in its env file), then verify.

    python scripts/cleanup_aws.py --dry-run
    python scripts/cleanup_aws.py --yes

Empties and deletes both buckets (all versions), deletes the function and its trigger, the
role and its inline policy, the log group, the Athena tables, database and workgroup. Safe to
run twice. Exit status 0 when the checklist is all green, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from skysurvey.aws_setup import checklist, cleanup_steps, require_names, run_cleanup
from skysurvey.config import env_file_path, read_env_file
from skysurvey.errors import SkySurveyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Delete the AWS resources setup_aws.py created.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/cleanup_aws.py --yes")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--dry-run", action="store_true", help="print what would be deleted")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    saved = read_env_file(env_file_path())
    try:
        names = require_names(saved)
        steps = cleanup_steps(names)
        if not args.dry_run and not args.yes:
            answer = input(f"Delete everything named *{names.suffix} and the pipeline's "
                           "function, role, log group and workgroup? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        for name, state in run_cleanup(steps, dry_run=args.dry_run):
            print(f"  {name}: {state}")
        if args.dry_run:
            return 0
        results = checklist(names)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\nVerification checklist:")
    for name, gone in results:
        print(f"  [{'x' if gone else ' '}] {name} {'deleted' if gone else 'STILL THERE'}")
    return 0 if all(gone for _, gone in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
