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

from skysurvey.config import get_setting
from skysurvey.errors import SkySurveyError
from skysurvey.upload import find_fits, upload_files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Upload FITS images into the raw bucket (local folder or s3://).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/upload_to_s3.py --input data/sample",
    )
    parser.add_argument("--input", required=True, help="folder holding FITS files")
    parser.add_argument("--bucket", default=None,
                        help="raw bucket: folder or s3://bucket (default: BUCKET_RAW)")
    parser.add_argument("--prefix", default="images/", help="key prefix in the bucket")
    parser.add_argument("--no-verify", action="store_true", help="skip the checksum check")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    bucket = get_setting("BUCKET_RAW", args.bucket)
    try:
        paths = find_fits(args.input)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not paths:
        print(f"error: {args.input}: no FITS files found", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        results = upload_files(paths, bucket, prefix=args.prefix, verify=not args.no_verify,
                               progress=not args.no_progress and sys.stderr.isatty())
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    counts = {s: sum(r.status == s for r in results) for s in ("uploaded", "skipped", "failed")}
    megabytes = sum(r.bytes for r in results if r.status == "uploaded") / 1e6
    print(f"Upload to {bucket.rstrip('/')}/{args.prefix}: {counts['uploaded']} uploaded "
          f"({megabytes:.1f} MB), {counts['skipped']} already there, {counts['failed']} failed "
          f"in {seconds:.1f} s")
    for r in results:
        if r.status == "failed":
            print(f"  FAILED {r.error}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
