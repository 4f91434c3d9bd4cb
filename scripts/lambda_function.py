"""Step 3: the handler. One FITS in, one Parquet catalog out.

On AWS Lambda this file is the entry point (``lambda_function.lambda_handler``); locally
``invoke_lambda.py --backend local`` calls the same core in a process pool. The numbered
comments are walked through in the README.

Events it accepts:
- direct: ``{"bucket": "...", "key": "images/x.fits", "catalog_bucket": "..."}``; ``bucket`` and
  ``catalog_bucket`` are bucket names or ``s3://`` URIs (or local folders when run locally);
  ``catalog_bucket`` falls back to the ``BUCKET_CATALOG`` setting;
- S3 notifications: ``{"Records": [{"s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]}``
  with URL-encoded keys, one or several records.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from urllib.parse import unquote_plus

try:
    from skysurvey.athena import after_write
    from skysurvey.config import get_setting, is_s3_uri
    from skysurvey.errors import SkySurveyError
    from skysurvey.pipeline import PipelineConfig, catalog_image, make_reply
    from skysurvey.reference import reference_spec
    from skysurvey.schema import RAW_IMAGES_PREFIX
    from skysurvey.storage import open_store
except ModuleNotFoundError as exc:
    if __name__ != "__main__":  # on Lambda: the import error as it is
        raise
    raise SystemExit(f"{exc}: run .venv/bin/python {' '.join(sys.argv)} (or `make install` "
                     "first)") from None

log = logging.getLogger("skysurvey.handler")
if not log.handlers:  # Lambda's root logger already writes to CloudWatch; locally, stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
log.setLevel(logging.INFO)


def _as_uri(bucket: str) -> str:
    """A bucket name becomes ``s3://name``; URIs and local folders pass through."""
    if is_s3_uri(bucket) or os.sep in bucket or bucket.startswith("."):
        return bucket
    return f"s3://{bucket}"


#: Images one event may name. S3 sends one record per notification (an SQS batch, ten): an
#: event naming more would run them one after the other and outlive the function's timeout,
#: so it is refused whole, with one error reply, before any image is read.
MAX_RECORDS = 10
#: Optional fields of a direct event: strings when present.
_OPTIONAL_TEXT = ("catalog_bucket", "input_prefix", "reference", "reference_bands")


def parse_event(event: dict) -> list[tuple[str, str, str | None]]:
    """``(raw store URI, key below it, catalog URI or None)`` for every image the event names.

    The raw store is rooted at the input folder (see :func:`raw_root`), so the key below it is
    what the image id is made of. A missing or non-string field, a path with a ``..`` segment
    or a control character, or more than :data:`MAX_RECORDS` records raise ValueError.
    """
    if not isinstance(event, dict):
        raise ValueError(f"the event is a {type(event).__name__}, not an object")
    for field in _OPTIONAL_TEXT:
        if event.get(field) is None:
            continue
        if field == "reference_bands":
            _text(event[field], field)
        else:
            _path(event[field], field)
    if "Records" in event:
        records = event["Records"]
        if not isinstance(records, list) or not records:
            raise ValueError("'Records' must be a non-empty list")
        if len(records) > MAX_RECORDS:
            raise ValueError(f"{len(records)} records in one event, at most {MAX_RECORDS} "
                             "(invoke once per image, as invoke_lambda.py does); none was run")
        return [
            (*raw_root(_as_uri(_path(r["s3"]["bucket"]["name"], "bucket")),
                       _path(unquote_plus(_text(r["s3"]["object"]["key"], "key")), "key")), None)
            for r in records
        ]
    if "bucket" in event and "key" in event:
        catalog = event.get("catalog_bucket")
        return [(*raw_root(_as_uri(_path(event["bucket"], "bucket")), _path(event["key"], "key"),
                           event.get("input_prefix")),
                 None if catalog is None else _path(catalog, "catalog_bucket"))]
    raise ValueError("the event has neither 'Records' nor 'bucket' and 'key'")


def _text(value, field: str) -> str:
    """*value* when it is a non-empty string; a ValueError naming *field* otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field!r} must be a non-empty string, not {value!r}")
    return value


def _path(value, field: str) -> str:
    """*value* when it is a non-empty string naming a bucket, prefix, folder or key without a
    ``..`` segment (``s3://bucket/../victim`` would write keys under ``../victim/``) and
    without control characters; a ValueError naming *field* otherwise."""
    value = _text(value, field)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"{field!r} holds a control character: {value!r}")
    rest = value[len("s3://"):] if value.startswith("s3://") else value
    if ".." in rest.split("/"):
        raise ValueError(f"{field!r} has a '..' segment: {value!r}")
    return value


def raw_root(raw_uri: str, key: str, prefix: str | None = None) -> tuple[str, str]:
    """Root the raw store at the input folder: ``(store URI, key below it)``.

    Image ids are the path below the input folder (DESIGN "Image ids"): *prefix* when the event
    names one (the Lambda backend sends the prefix it listed), else ``images/`` for keys under
    it, else the bucket itself.
    """
    for root in (prefix, RAW_IMAGES_PREFIX):
        root = (root or "").strip("/")
        if root and key.startswith(root + "/"):
            return f"{raw_uri.rstrip('/')}/{root}", key[len(root) + 1:]
    return raw_uri, key


def pipeline_config(event: dict | None = None) -> PipelineConfig:
    """Memory budget from the function's size (80% of it); /tmp for large objects; the
    reference catalog from the event (``reference``, ``reference_bands``) or the function's
    ``REFERENCE_CATALOG``/``REFERENCE_BANDS`` settings (opened once per warm container)."""
    memory_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    budget = int(int(memory_mb) * 0.8 * 2**20) if memory_mb else None
    event = event if isinstance(event, dict) else {}
    return PipelineConfig(max_memory_bytes=budget, tmp_dir=os.environ.get("TMPDIR"),
                          reference=reference_spec(event.get("reference"),
                                                   event.get("reference_bands")))


def lambda_handler(event: dict, context=None) -> dict:
    if isinstance(event, dict) and event.get("task") == "objects_unit":
        # build_objects.py --backend lambda: one HEALPix unit of the association (README)
        from skysurvey.objects import handle_unit_event

        return handle_unit_event(event)
    # 1. Parse the event: a direct invocation or an S3 notification (URL-encoded keys).
    try:
        targets = parse_event(event)
    except (KeyError, TypeError, ValueError) as exc:
        reply = make_reply(None, "error", error=f"bad event: {exc}")
        log.info(json.dumps(reply))
        return reply
    replies = []
    for raw_uri, key, catalog_uri in targets:
        # 2. Open the buckets (clients are created once per container and cached).
        catalog = catalog_uri or get_setting("BUCKET_CATALOG")
        try:
            raw_store, catalog_store = open_store(raw_uri), open_store(_as_uri(catalog))
            config = pipeline_config(event)
        except SkySurveyError as exc:
            reply = make_reply(key, "error", error=str(exc))
        else:
            # 3. Read, detect, measure, write: the shared core; transient AWS errors raise
            #    so that Lambda's own retry takes over.
            reply = catalog_image(raw_store, key, catalog_store, config,
                                  raise_transient=True)
            # 3b. On AWS, register the new band/night with Athena (Glue partitions) when the
            #     function has an ATHENA_DATABASE (setup_aws.py sets it).
            reply = after_write(reply)
        # 4. One JSON line per image for CloudWatch Logs Insights.
        log.info(json.dumps(reply))
        replies.append(reply)
    # 5. Reply: one dict for one image, a list under "results" for several.
    if len(replies) == 1:
        return replies[0]
    return {"status": "ok" if all(r["status"] == "ok" for r in replies) else "error",
            "results": replies}


def build_parser():
    """``python scripts/lambda_function.py --help``: what this file is and how it is called."""
    import argparse

    from skysurvey import cli

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=cli.HelpFormatter,
        epilog="examples:\n  python scripts/lambda_function.py --event "
               "'{\"bucket\": \"data/raw/images\", \"key\": \"sky_g_001.fits\"}'\n"
               "  python scripts/invoke_lambda.py   # every image, the usual way")
    cli.add_version(parser)
    parser.add_argument("--event", default=None,
                        help="run the handler once, here, on this JSON event and print its reply")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Without --event, print the help: on AWS, Lambda calls :func:`lambda_handler` itself."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.event is None:
        parser.print_help()
        return 0
    try:
        event = json.loads(args.event)
    except json.JSONDecodeError as exc:
        parser.error(f"--event is not JSON: {exc}")
    reply = lambda_handler(event)
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("status") == "ok" else 1


if __name__ == "__main__":
    from skysurvey import cli

    raise SystemExit(cli.run(main))
