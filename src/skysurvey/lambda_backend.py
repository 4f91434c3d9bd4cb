"""Run the handler on AWS Lambda: one invocation per image from a thread pool.

Invocations are I/O bound, so threads suffice here (the handler's CPU work runs in Lambda).
Throttling (``TooManyRequestsException``) and 5xx are retried by botocore's standard retry
mode (exponential backoff with jitter, see ``skysurvey.aws``); what is still failing after that
becomes an error reply for that image, like a ``FunctionError`` or a timeout. Replies have
the same shape as the local runner's, so the summary and exit status are shared.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from . import aws
from .config import is_s3_uri, parse_s3_uri
from .errors import ConfigError, SkySurveyError
from .pipeline import make_reply
from .schema import RAW_IMAGES_PREFIX


def _reply(key: str, status: str, error: str | None = None, **extra) -> dict:
    return make_reply(key, status, error=error, **extra)


def event_for(raw_uri: str, key: str, catalog_uri: str, reference=None) -> dict:
    """The direct-invocation event of DESIGN.md for one image; *reference* (a
    ReferenceSpec) adds ``reference`` and ``reference_bands``."""
    loc = parse_s3_uri(raw_uri)
    event = {"bucket": loc.bucket, "key": loc.prefix + key, "catalog_bucket": catalog_uri}
    if loc.prefix and not loc.prefix.startswith(RAW_IMAGES_PREFIX):
        event["input_prefix"] = loc.prefix  # ids are the path below it, as in local runs
    if reference is not None:
        event["reference"] = reference.uri
        event["reference_bands"] = ",".join(f"{b}={c}" for b, c in reference.bands)
    return event


def parse_response(key: str, response: dict, asynchronous: bool = False) -> dict:
    """Turn a boto3 ``invoke`` response into a reply (FunctionError and timeouts included)."""
    if asynchronous:
        ok = response.get("StatusCode") == 202
        return _reply(key, "queued" if ok else "error",
                      None if ok else f"{key}: async invoke returned {response.get('StatusCode')}")
    raw = response["Payload"].read()
    try:
        payload = json.loads(raw or b"null")
    except ValueError:
        payload = raw.decode(errors="replace")
    if response.get("FunctionError"):
        message = payload.get("errorMessage", "") if isinstance(payload, dict) else str(payload)
        kind = payload.get("errorType", "") if isinstance(payload, dict) else ""
        if "Task timed out" in message:
            return _reply(key, "error", f"{key}: Lambda timeout ({message.strip()})")
        return _reply(key, "error", f"{key}: function error {kind}: {message}".strip())
    if not isinstance(payload, dict) or "status" not in payload:
        return _reply(key, "error", f"{key}: unexpected reply from the function: {payload!r}")
    return {**_reply(key, payload["status"]), **payload, "key": key}


def invoke_one(client, function: str, raw_uri: str, key: str, catalog_uri: str,
               asynchronous: bool = False, reference=None) -> dict:
    try:
        response = client.invoke(
            FunctionName=function,
            InvocationType="Event" if asynchronous else "RequestResponse",
            Payload=json.dumps(event_for(raw_uri, key, catalog_uri, reference)).encode())
    except Exception as exc:
        if aws.error_code(exc) == "ResourceNotFoundException":
            raise ConfigError(function, "Lambda function not found: run "
                                        "scripts/setup_aws.py or set LAMBDA_FUNCTION") from None
        error = aws.translate(exc, f"{key}")
        return _reply(key, "error", str(error))
    return parse_response(key, response, asynchronous)


def run_lambda(raw_uri: str, keys: Sequence[str], catalog_uri: str, *, function: str,
               workers: int = 4, asynchronous: bool = False,
               on_done: Callable[[dict], None] | None = None, reference=None) -> list[dict]:
    """Invoke *function* once per key; replies in the order of *keys*."""
    if not is_s3_uri(raw_uri) or not is_s3_uri(catalog_uri):
        raise ConfigError(raw_uri, "the Lambda backend needs s3:// input and catalog buckets")
    client = aws.client("lambda")
    replies: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(invoke_one, client, function, raw_uri, k, catalog_uri,
                               asynchronous, reference): k for k in keys}
        for future in as_completed(futures):
            key = futures[future]
            try:
                reply = future.result()
            except ConfigError:
                for f in futures:
                    f.cancel()
                raise
            except SkySurveyError as exc:
                reply = _reply(key, "error", str(exc))
            replies[key] = reply
            if on_done:
                on_done(reply)
    return [replies[k] for k in keys]
