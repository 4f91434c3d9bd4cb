"""Delete what scripts/setup_aws.py made (resources tagged with its deployment), then verify.

    python scripts/cleanup_aws.py --dry-run
    python scripts/cleanup_aws.py --yes

Deletes only resources tagged ``skysurvey:deployment=<suffix>`` (the suffix and region from the
env file, or --suffix/--region): the dashboard and alarms, the Glue database with its tables,
the workgroup, the function (and its trigger), the log group, the role (detaching any managed
policy), the failed-events queue, both buckets (policy first, then all versions). Anything of
the same name without that tag is listed and left. Safe to run twice; removes the env file when
everything of the deployment is gone, so the scripts work on the local default again (a second
run then says there is nothing left to clean up, status 0). A setup that failed half-way left
the env file with its suffix (``SKYSURVEY_SETUP=incomplete``): cleanup removes what it made.
Exit status 0 when the checklist is all green, 1 otherwise, 2 when not confirmed.
"""

from __future__ import annotations

import argparse
import sys

from skysurvey import cli
from skysurvey.aws_cleanup import checklist, cleanup_resources, require_names, run_cleanup
from skysurvey.aws_resources import SETUP_MARKER
from skysurvey.config import env_file_path, read_env_file
from skysurvey.errors import SkySurveyError

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Delete the AWS resources setup_aws.py created (and only those).",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/cleanup_aws.py --yes")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--dry-run", action="store_true", help="print what would be deleted")
    parser.add_argument("--suffix", default=None,
                        help="the deployment to delete (default: the env file's)")
    parser.add_argument("--region", default=None,
                        help="its region (default: the env file's, else AWS_REGION)")
    cli.add_version(parser)
    return parser


def _confirmed(names) -> bool | None:
    """True/False from the user; None when there is no terminal to ask."""
    if not sys.stdin.isatty():
        return None
    answer = input(f"Delete deployment {names.suffix} in {names.region} (everything tagged "
                   f"skysurvey:deployment={names.suffix})? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env_path = env_file_path()
    saved = read_env_file(env_path)
    if not args.suffix and not saved.get("SKYSURVEY_SUFFIX"):
        print(f"nothing left to clean up: {env_path} records no deployment (already cleaned "
              "up, or nothing was set up from here); to delete a deployment by name pass "
              "--suffix SUFFIX (and --region REGION)")
        return 0
    if saved.get(SETUP_MARKER) == "incomplete" and args.suffix in (None, saved.get(
            "SKYSURVEY_SUFFIX")):
        print(f"{env_path}: the setup of deployment {saved['SKYSURVEY_SUFFIX']} did not finish; "
              "removing whatever of it exists")
    try:
        names = require_names(saved, args.suffix, args.region)
        resources = cleanup_resources(names)
        if not args.dry_run and not args.yes:
            confirmed = _confirmed(names)
            if confirmed is None:
                print("error: no terminal to confirm deletion: pass --yes (or --dry-run)",
                      file=sys.stderr)
                return 2
            if not confirmed:
                print("nothing deleted")
                return 1
        states = run_cleanup(resources, names, dry_run=args.dry_run)
        for name, state in states:
            print(f"  {name}: {state}")
        if all(state == "already gone" for _, state in states):
            print(f"nothing left to clean up: nothing of deployment {names.suffix} exists in "
                  f"{names.region}")
        if args.dry_run:
            return 0
        results = checklist(resources, names)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\nVerification checklist:")
    marks = {"gone": "[x] {} deleted", "left": "[-] {} not this deployment's: left",
             "STILL THERE": "[ ] {} STILL THERE"}
    for name, state in results:
        print("  " + marks[state].format(name))
    if any(state == "STILL THERE" for _, state in results):
        return 1
    if saved.get("SKYSURVEY_SUFFIX") == names.suffix and env_path.exists():
        env_path.unlink()
        print(f"removed {env_path}: the scripts use the local folders under data/ again")
    return 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
