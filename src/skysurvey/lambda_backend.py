"""Run the handler on AWS Lambda: one invocation per image from a thread pool.

Invocations are I/O bound, so threads suffice here (the handler's CPU work runs in Lambda).
Throttling (``TooManyRequestsException``) and 5xx are retried by botocore's standard retry
mode (exponential backoff with jitter, 8 attempts in all, see ``skysurvey.aws``); what is still
failing after that becomes an error reply for that image, like a ``FunctionError`` or a
timeout. The client's read timeout outlasts the function's timeout (botocore's 60 s default
would expire on a slow image and its retry would run the image twice), and the thread pool is
no larger than the function's reserved concurrency. Replies have the same shape as the local
runner's (plus ``retries``), so the summary and exit status are shared.

Failed asynchronous (S3-triggered) events land in the failed-events queue (the function's
on-failure destination); :func:`run_redrive` reads them, invokes the function again with the
original event and deletes the ones that now succeed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from urllib.parse import unquote_plus

from . import aws
from .config import QUEUE_NAME as DEFAULT_QUEUE
from .config import is_s3_uri, parse_s3_uri
from .errors import ConfigError, SkySurveyError
from .pipeline import make_reply
from .schema import RAW_IMAGES_PREFIX

__all__ = [
    "MAX_FUNCTION_TIMEOUT",
    "READ_TIMEOUT_MARGIN",
    "FailedEvent",
    "FunctionLimits",
    "event_for",
    "failed_events",
    "function_limits",
    "invoke_one",
    "invoke_payload",
    "lambda_client",
    "parse_failed_event",
    "parse_response",
    "pool_size",
    "redrive_report",
    "run_lambda",
    "run_redrive",
]

log = logging.getLogger(__name__)
READ_TIMEOUT_MARGIN = 60  # seconds beyond the function's timeout before the client gives up
MAX_FUNCTION_TIMEOUT = 900  # Lambda's limit: the read timeout when the function's is unknown


def _reply(key: str, status: str, error: str | None = None, **extra) -> dict:
    return make_reply(key, status, error=error, **extra)


def event_for(raw_uri: str, key: str, catalog_uri: str, reference=None,
              psf_photometry: bool = False) -> dict:
    """The direct-invocation event of DESIGN.md for one image; *reference* (a
    ReferenceSpec) adds ``reference`` and ``reference_bands``, *psf_photometry*
    ``"psf_photometry": true`` (detect.DetectionConfig.psf_photometry)."""
    loc = parse_s3_uri(raw_uri)
    event = {"bucket": loc.bucket, "key": loc.prefix + key, "catalog_bucket": catalog_uri}
    if loc.prefix and not loc.prefix.startswith(RAW_IMAGES_PREFIX):
        event["input_prefix"] = loc.prefix  # ids are the path below it, as in local runs
    if reference is not None:
        event["reference"] = reference.uri
        event["reference_bands"] = ",".join(f"{b}={c}" for b, c in reference.bands)
    if psf_photometry:
        event["psf_photometry"] = True
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


def _retries(obj) -> int:
    """botocore's retry count of a response or a ClientError (0 when it says nothing)."""
    response = obj if isinstance(obj, dict) else (getattr(obj, "response", None) or {})
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


def invoke_payload(client, function: str, key: str, payload: dict,
                   asynchronous: bool = False) -> dict:
    """Invoke *function* with *payload*; the reply for *key* with botocore's ``retries``."""
    try:
        response = client.invoke(
            FunctionName=function,
            InvocationType="Event" if asynchronous else "RequestResponse",
            Payload=json.dumps(payload).encode())
    except aws.botocore_errors() as exc:
        if aws.error_code(exc) == "ResourceNotFoundException":
            raise ConfigError(function, "Lambda function not found: run "
                                        "scripts/setup_aws.py or set LAMBDA_FUNCTION") from None
        error = aws.translate(exc, f"{key}")
        return _reply(key, "error", str(error), retries=_retries(exc))
    return {**parse_response(key, response, asynchronous), "retries": _retries(response)}


def invoke_one(client, function: str, raw_uri: str, key: str, catalog_uri: str,
               asynchronous: bool = False, reference=None, psf_photometry: bool = False) -> dict:
    return invoke_payload(client, function, key,
                          event_for(raw_uri, key, catalog_uri, reference, psf_photometry),
                          asynchronous)


@dataclass(frozen=True)
class FunctionLimits:
    timeout: int  # seconds
    reserved: int | None  # reserved concurrency, None when unreserved


def function_limits(function: str) -> FunctionLimits:
    """The function's timeout and reserved concurrency (Lambda's maxima when unreadable)."""
    client = aws.client("lambda")
    try:
        timeout = int(client.get_function_configuration(FunctionName=function)["Timeout"])
        reserved = client.get_function_concurrency(FunctionName=function).get(
            "ReservedConcurrentExecutions")
    except aws.botocore_errors() as exc:
        if aws.error_code(exc) == "ResourceNotFoundException":
            raise ConfigError(function, "Lambda function not found: run "
                                        "scripts/setup_aws.py or set LAMBDA_FUNCTION") from None
        log.warning("%s: cannot read the function's limits (%s): assuming %d s, unreserved",
                    function, aws.error_code(exc) or type(exc).__name__, MAX_FUNCTION_TIMEOUT)
        return FunctionLimits(MAX_FUNCTION_TIMEOUT, None)
    return FunctionLimits(timeout, None if reserved is None else int(reserved))


def pool_size(workers: int, limits: FunctionLimits) -> int:
    """No more threads than the function may run at once (its reserved concurrency)."""
    if limits.reserved == 0:
        raise ConfigError("reserved concurrency", "0: the function is switched off (raise it "
                                                  "with setup_aws.py --concurrency N)")
    if limits.reserved is not None and workers > limits.reserved:
        log.info("%d workers capped at the function's reserved concurrency %d", workers,
                 limits.reserved)
        return limits.reserved
    return workers


def lambda_client(limits: FunctionLimits, workers: int):
    """A Lambda client that waits for the slowest image and holds a connection per thread."""
    return aws.client("lambda", read_timeout=limits.timeout + READ_TIMEOUT_MARGIN,
                      connect_timeout=10, max_pool_connections=max(10, workers))


def run_lambda(raw_uri: str, keys: Sequence[str], catalog_uri: str, *, function: str,
               workers: int = 4, asynchronous: bool = False,
               on_done: Callable[[dict], None] | None = None, reference=None,
               psf_photometry: bool = False) -> list[dict]:
    """Invoke *function* once per key; replies in the order of *keys*.

    Parameters
    ----------
    raw_uri : str
        ``s3://bucket[/prefix]`` of the raw images.
    keys : sequence of str
        The images' keys below *raw_uri*.
    catalog_uri : str
        ``s3://`` URI of the catalog the function writes.
    function : str
        The Lambda function's name.
    workers : int
        Concurrent invocations (capped by the function's reserved concurrency).
    asynchronous : bool
        Queue the events (``Event`` invocations) instead of waiting for each reply.
    on_done : callable, optional
        Called with each reply as soon as it is known.
    reference : ReferenceSpec, optional
        The reference catalog the function calibrates against.
    psf_photometry : bool
        Ask for PSF photometry (``detect.DetectionConfig.psf_photometry``).

    Returns
    -------
    list of dict
        One reply per key (``key``, ``status``, ``error``...); an image's failure is a reply.

    Raises
    ------
    ConfigError
        *raw_uri* or *catalog_uri* is not ``s3://``, or an invocation cannot be made at all
        (credentials, no such function): the remaining invocations are cancelled.
    """
    if not is_s3_uri(raw_uri) or not is_s3_uri(catalog_uri):
        raise ConfigError(raw_uri, "the Lambda backend needs s3:// input and catalog buckets")
    limits = function_limits(function)
    workers = pool_size(workers, limits)
    client = lambda_client(limits, workers)
    replies: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(invoke_one, client, function, raw_uri, k, catalog_uri,
                               asynchronous, reference, psf_photometry): k for k in keys}
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


# ---- redrive: failed asynchronous events, invoked again --------------------------------------


@dataclass(frozen=True)
class FailedEvent:
    """One on-failure destination record (AWS's format: ``requestContext``, ``requestPayload``,
    ``responseContext``, ``responsePayload``)."""

    receipt: str
    payload: dict | None  # the original event; None when the message is not such a record
    key: str  # the image key(s) the event names, for the summary
    condition: str  # RetriesExhausted, EventAgeExceeded...
    error: str  # what the function answered the last time


def parse_failed_event(body: str, receipt: str = "") -> FailedEvent:
    try:
        record = json.loads(body)
        payload = record["requestPayload"]
        context = record.get("requestContext", {})
    except (ValueError, KeyError, TypeError):
        return FailedEvent(receipt, None, "(unreadable message)", "",
                           f"not a Lambda destination record: {body[:80]!r}")
    if isinstance(payload, dict) and "Records" in payload:
        keys = [unquote_plus(r.get("s3", {}).get("object", {}).get("key", "?"))
                for r in payload["Records"]]
        key = ", ".join(keys)
    else:
        key = payload.get("key", "?") if isinstance(payload, dict) else "?"
    answer = record.get("responsePayload") or {}
    error = answer.get("errorMessage", "") if isinstance(answer, dict) else str(answer)
    error = error or record.get("responseContext", {}).get("functionError", "")
    return FailedEvent(receipt, payload if isinstance(payload, dict) else None, key,
                       context.get("condition", ""), error)


def failed_events(queue_url: str, *, visibility: int, limit: int | None = None
                  ) -> list[FailedEvent]:
    """Receive every waiting message (hidden for *visibility* seconds while redriven)."""
    sqs, events = aws.client("sqs"), []
    while limit is None or len(events) < limit:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                    VisibilityTimeout=visibility,
                                    WaitTimeSeconds=1).get("Messages", [])
        if not batch:
            break
        events += [parse_failed_event(m["Body"], m["ReceiptHandle"]) for m in batch]
    return events


def run_redrive(queue: str | None = None, *, function: str, workers: int = 4,
                on_done: Callable[[dict], None] | None = None,
                limit: int | None = None) -> list[dict]:
    """Invoke *function* again, synchronously, with each failed event's original payload.

    Events that now succeed are deleted from the queue; the others stay (visible again) for a
    later redrive. Replies carry ``failed_before`` (the condition and the earlier error).
    """
    sqs = aws.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=queue or DEFAULT_QUEUE)["QueueUrl"]
    except aws.botocore_errors() as exc:
        raise aws.translate(exc, f"queue {queue or DEFAULT_QUEUE}") from None
    limits = function_limits(function)
    workers = pool_size(workers, limits)
    events = failed_events(url, visibility=limits.timeout + READ_TIMEOUT_MARGIN, limit=limit)
    client = lambda_client(limits, workers)

    def redrive_one(event: FailedEvent) -> dict:
        before = f"{event.condition}: {event.error}".strip(": ")
        if event.payload is None:
            return _reply(event.key, "error", event.error, failed_before=before)
        reply = invoke_payload(client, function, event.key, event.payload)
        return {**reply, "failed_before": before}

    replies = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(redrive_one, e): e for e in events}
        for future in as_completed(futures):
            event, reply = futures[future], future.result()
            if reply["status"] == "ok":
                sqs.delete_message(QueueUrl=url, ReceiptHandle=event.receipt)
            else:
                sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=event.receipt,
                                              VisibilityTimeout=0)
            replies.append(reply)
            if on_done:
                on_done(reply)
    return replies


def redrive_report(queue: str | None, function: str, *, workers: int = 4) -> tuple[str, int]:
    """``invoke_lambda.py --redrive``: (the text to print, the exit status): 0 when every failed
    event now succeeded (or none waited), 1 when some failed again, 2 when the queue or the
    function cannot be reached.

    Parameters
    ----------
    queue : str, optional
        The on-failure queue (default: the deployment's).
    function : str
        The Lambda function's name.
    workers : int
        Concurrent invocations.

    Returns
    -------
    text : str
        The summary to print.
    status : int
        The exit status (0, 1 or 2, as above).
    """
    from .runner import Timer, exit_status, summary_table

    try:
        with Timer() as timer:
            replies = run_redrive(queue, function=function, workers=workers)
    except SkySurveyError as exc:
        return f"error: {exc}", 2
    if not replies:
        return f"No failed events waiting in {queue or DEFAULT_QUEUE}", 0
    lines = [summary_table(replies, timer.seconds, "lambda (redrive)"), "",
             "Failed before (condition: last error):"]
    lines += [f"  {r['key']}: {r.get('failed_before') or '?'} -> {r['status']}" for r in replies]
    return "\n".join(lines), exit_status(replies)
