"""Step 2: copy FITS files into the raw bucket under ``images/`` (a local folder by default).

    python scripts/upload_to_s3.py --input data/sample
    python scripts/upload_to_s3.py --input ~/fits --bucket s3://my-raw-bucket

Objects already there with the same SHA-256 are skipped (re-running resumes); each upload is
verified. Exit status 0 when every file is there, 1 when any failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from skysurvey import cli
from skysurvey.config import get_setting, is_s3_uri
from skysurvey.errors import SkySurveyError, one_line, printable
from skysurvey.runner import find_inputs
from skysurvey.upload import upload_files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Upload FITS images into the raw bucket (local folder or s3://).",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/upload_to_s3.py --input data/sample",
    )
    parser.add_argument("--input", required=True, nargs="+",
                        help="folder holding FITS files (searched recursively; paths below it "
                             "are kept: night1/x.fits -> images/night1/x.fits), or FITS files, "
                             "or globs such as 'data/*/*.fits'")
    parser.add_argument("--bucket", default=None,
                        help="raw bucket: folder or s3://bucket (default: BUCKET_RAW)")
    parser.add_argument("--prefix", default="images/", help="key prefix in the bucket")
    parser.add_argument("--no-verify", action="store_true", help="skip the checksum check")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    bucket = get_setting("BUCKET_RAW", args.bucket)
    try:
        inputs = find_inputs(args.input)
        if is_s3_uri(inputs.root):
            raise SkySurveyError(inputs.root, "--input must be local files or folders")
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    unreadable = [r["error"] for r in inputs.failures()]  # links out of the folder, loops...
    if not inputs.keys and not unreadable:
        print(f"error: {printable(' '.join(args.input))}: no FITS files found", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        results = upload_files([Path(inputs.root) / k for k in inputs.keys], bucket,
                               root=inputs.root, prefix=args.prefix, verify=not args.no_verify,
                               progress=not args.no_progress and sys.stderr.isatty())
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    counts = {s: sum(r.status == s for r in results) for s in ("uploaded", "skipped", "failed")}
    counts["failed"] += len(unreadable)
    megabytes = sum(r.bytes for r in results if r.status == "uploaded") / 1e6
    print(f"Upload to {bucket.rstrip('/')}/{args.prefix}: {counts['uploaded']} uploaded "
          f"({megabytes:.1f} MB), {counts['skipped']} already there, {counts['failed']} failed "
          f"in {seconds:.1f} s")
    for error in [r.error for r in results if r.status == "failed"] + unreadable:
        print(f"  FAILED {one_line(error)}")
    for note in inputs.notes():
        print(f"  not uploaded (not a failure): {note}")
    return 1 if counts["failed"] else 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
