"""The Lambda handler's plumbing: events in, per-image work out, replies back.

``scripts/lambda_function.py`` is the function's entry point and a few numbered lines over
these functions (the README walks through them); the local runner and the tests call the same
ones. Events (DESIGN "Handler event and reply"):

- direct: ``{"bucket": "...", "key": "images/x.fits", "catalog_bucket": "..."}``; ``bucket``
  and ``catalog_bucket`` are bucket names or ``s3://`` URIs (or local folders when run
  locally); ``catalog_bucket`` falls back to the ``BUCKET_CATALOG`` setting;
- S3 notifications: ``{"Records": [{"s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]}``
  with URL-encoded keys, one or several records;
- other tasks of the same function: ``{"task": "objects_unit", ...}`` (build_objects.py
  --backend lambda) and ``{"task": "forced_image", ...}`` (forced_photometry.py --backend
  lambda).
"""

from __future__ import annotations

import os
from urllib.parse import unquote_plus

from .config import is_s3_uri
from .detect import DetectionConfig
from .errors import SkySurveyError
from .pipeline import PipelineConfig, make_reply
from .reference import reference_spec
from .schema import RAW_IMAGES_PREFIX

__all__ = ["MAX_RECORDS", "ImagesFailed", "bad_event_reply", "other_task", "parse_event",
           "pipeline_config", "raw_root", "reply", "store_uri"]


class ImagesFailed(SkySurveyError):
    """An S3-triggered invocation whose images failed: raised so that Lambda's asynchronous
    retries and its on-failure destination (the failed-events queue) see the failure."""


def other_task(event) -> dict | None:
    """The reply of a non-image task (``objects_unit``, ``forced_image``), or None when the
    event names images."""
    task = event.get("task") if isinstance(event, dict) else None
    if task == "objects_unit":
        from .objects import handle_unit_event

        return handle_unit_event(event)
    if task == "forced_image":
        from .forced_run import handle_forced_event

        return handle_forced_event(event)
    return None


def bad_event_reply(exc: Exception) -> dict:
    """The error reply to an event that :func:`parse_event` refused."""
    return make_reply(None, "error", error=f"bad event: {exc}")


def reply(event, replies: list[dict]) -> dict:
    """One reply for one image, ``{"status", "results"}`` for several.

    An S3 notification is invoked asynchronously: nobody reads its reply, so an image that
    failed raises :class:`ImagesFailed` (one line naming the images and causes) and Lambda
    retries it, then sends the event to the failed-events queue (``--redrive`` lists it).
    A direct invocation's caller reads the reply: errors stay replies.
    """
    failed = [r for r in replies if r["status"] != "ok"]
    if failed and isinstance(event, dict) and "Records" in event:
        raise ImagesFailed(", ".join(str(r.get("key")) for r in failed),
                           "; ".join(str(r.get("error")) for r in failed))
    if len(replies) == 1:
        return replies[0]
    return {"status": "error" if failed else "ok", "results": replies}


def store_uri(bucket: str) -> str:
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
            (*raw_root(store_uri(_path(r["s3"]["bucket"]["name"], "bucket")),
                       _path(unquote_plus(_text(r["s3"]["object"]["key"], "key")), "key")), None)
            for r in records
        ]
    if "bucket" in event and "key" in event:
        catalog = event.get("catalog_bucket")
        return [(*raw_root(store_uri(_path(event["bucket"], "bucket")), _path(event["key"], "key"),
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
    detection = DetectionConfig(psf_photometry=event.get("psf_photometry") is True)
    return PipelineConfig(detection=detection, max_memory_bytes=budget,
                          tmp_dir=os.environ.get("TMPDIR"),
                          reference=reference_spec(event.get("reference"),
                                                   event.get("reference_bands")))
