"""Checks of a deployment on a real account: what moto cannot answer (``scripts/check_aws.py``).

Each check returns one :class:`Check`: ``ok``, ``failed`` (with the reason) or ``cannot`` (with
why it cannot be checked there). Read-only apart from what the checks need to exercise the
function: one small test image (and a broken file) uploaded under
``images/skysurvey-check/`` and removed afterwards, with the catalog files the function wrote
for the test image and the check's own message in the failed-events queue. Both are named
``.FITS`` (upper case), which the S3 trigger's case-sensitive suffixes ignore, so only the
check's own invocations process them. Athena writes its result files under
``athena-results/`` as for any query (the lifecycle rule expires them), and the function
registers the Glue partition of the test image's band and night (``r``, 2026-03-14), which
stays (empty unless images of yours share it).

Against a custom endpoint (``AWS_ENDPOINT_URL``: moto, LocalStack, MinIO), the checks that
need real AWS behaviour (running the function's code, Athena SQL, policy conditions) say
``cannot be checked on this endpoint``; they never say ``ok`` there.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import aws, aws_resources
from .config import QUEUE_NAME, get_setting, is_s3_uri, parse_s3_uri
from .errors import ConfigError, SkySurveyError

__all__ = [
    "CHECKS",
    "CHECK_PREFIX",
    "ENDPOINT",
    "HERE",
    "Check",
    "Target",
    "cannot",
    "check_alarms_and_dashboard",
    "check_athena_count",
    "check_buckets",
    "check_failed_events",
    "check_failure_destination",
    "check_function",
    "check_image_bytes",
    "check_tls_only",
    "custom_endpoint",
    "exit_status",
    "failed",
    "find_failed_event",
    "ok",
    "run_checks",
    "target_from_settings",
]

CHECK_PREFIX = "images/skysurvey-check/"
ENDPOINT = "on this endpoint"
HERE = "here"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "failed" or "cannot"
    detail: str = ""
    where: str = HERE  # for "cannot": "on this endpoint" (moto...) or "here" (this deployment)

    def line(self) -> str:
        if self.status == "ok":
            return f"{self.name}: ok" + (f" ({self.detail})" if self.detail else "")
        if self.status == "failed":
            return f"{self.name}: failed: {self.detail}"
        return f"{self.name}: cannot be checked {self.where}: {self.detail}"


def ok(name: str, detail: str = "") -> Check:
    return Check(name, "ok", detail)


def failed(name: str, detail: str) -> Check:
    return Check(name, "failed", detail)


def cannot(name: str, detail: str, where: str = HERE) -> Check:
    return Check(name, "cannot", detail, where)


@dataclass(frozen=True)
class Target:
    """The deployment the env file (or the environment) names."""

    raw: str  # bucket names
    catalog: str
    function: str
    database: str
    workgroup: str
    queue: str
    region: str
    endpoint: str | None  # AWS_ENDPOINT_URL: moto, LocalStack, MinIO...

    @property
    def real(self) -> bool:
        return self.endpoint is None

    @property
    def catalog_uri(self) -> str:
        return f"s3://{self.catalog}"

    @property
    def raw_uri(self) -> str:
        return f"s3://{self.raw}"


def _bucket(setting: str) -> str:
    value = get_setting(setting)
    if not is_s3_uri(value):
        raise ConfigError(setting, f"{value} is not an s3:// bucket: run scripts/setup_aws.py "
                                   "(or deploy the stack) and keep its env file")
    loc = parse_s3_uri(value)
    if loc.prefix:
        raise ConfigError(setting, f"{value}: the check needs the bucket itself, not a prefix")
    return loc.bucket


def target_from_settings() -> Target:
    """The deployment from the env file setup wrote (or the stack's outputs), or the
    environment; a local (folder) setting is an error naming it.

    Returns
    -------
    Target
        Bucket names, function, database, workgroup, queue, region and endpoint.

    Raises
    ------
    ConfigError
        No region configured, or a bucket setting that is not an ``s3://`` bucket.
    """
    region = aws.configured_region()
    if not region:
        raise ConfigError("region", aws.NO_REGION)
    return Target(
        raw=_bucket("BUCKET_RAW"), catalog=_bucket("BUCKET_CATALOG"),
        function=get_setting("LAMBDA_FUNCTION") or aws_resources.FUNCTION_NAME,
        database=get_setting("ATHENA_DATABASE") or aws_resources.DATABASE,
        workgroup=get_setting("ATHENA_WORKGROUP") or aws_resources.WORKGROUP,
        queue=get_setting("FAILED_EVENTS_QUEUE") or QUEUE_NAME,
        region=region, endpoint=custom_endpoint())


def custom_endpoint() -> str | None:
    """``AWS_ENDPOINT_URL`` (or a service's ``AWS_ENDPOINT_URL_<SERVICE>``): not real AWS."""
    found = sorted(k for k, v in os.environ.items() if k.startswith("AWS_ENDPOINT_URL") and v)
    return os.environ[found[0]] if found else None


def _error(exc: BaseException, source: str) -> str:
    return str(aws.translate(exc, source))


# ---- checks any endpoint can answer --------------------------------------------------------


def check_buckets(t: Target) -> Check:
    """Both buckets private (all four public access blocks), encrypted, TLS-only policy."""
    name = "buckets private, encrypted, TLS-only policy attached"
    s3 = aws.client("s3")
    problems = []
    for bucket in (t.raw, t.catalog):
        wanted = aws_resources.bucket_settings(bucket, aws_resources.GUIDE_NAMES, lifecycle=False)
        try:
            block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
            if block != wanted["PublicAccessBlockConfiguration"]:
                problems.append(f"{bucket}: public access block {block}")
            rules = s3.get_bucket_encryption(Bucket=bucket)[
                "ServerSideEncryptionConfiguration"]["Rules"]
            if not any(r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
                       for r in rules):
                problems.append(f"{bucket}: no default encryption")
            policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
            if not any(s == wanted["Policy"]["Statement"][0] for s in policy["Statement"]):
                problems.append(f"{bucket}: the bucket policy has no TLS-only deny")
        except aws.botocore_errors() as exc:
            problems.append(f"{bucket}: {aws.error_code(exc) or _error(exc, bucket)}")
    return failed(name, "; ".join(problems)) if problems else ok(name)


def check_failure_destination(t: Target) -> Check:
    """Asynchronous invocations: retries <= 2, the failed-events queue as on-failure
    destination, and a reserved concurrency."""
    name = "function's failed events go to the failed-events queue"
    lam, sqs = aws.client("lambda"), aws.client("sqs")
    try:
        queue_url = sqs.get_queue_url(QueueName=t.queue)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        config = lam.get_function_event_invoke_config(FunctionName=t.function)
        reserved = lam.get_function_concurrency(FunctionName=t.function).get(
            "ReservedConcurrentExecutions")
    except aws.botocore_errors() as exc:
        return failed(name, _error(exc, t.function))
    destination = config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
    if destination != queue_arn:
        return failed(name, f"on-failure destination is {destination}, not {queue_arn}")
    if config.get("MaximumRetryAttempts", 2) > aws_resources.MAX_RETRY_ATTEMPTS:
        return failed(name, f"{config['MaximumRetryAttempts']} retries")
    if reserved is None:
        return failed(name, "no reserved concurrency: a burst of uploads can take the account")
    return ok(name, f"retries {config.get('MaximumRetryAttempts')}, reserved concurrency "
                    f"{reserved}")


def check_alarms_and_dashboard(t: Target) -> Check:
    name = "alarms and dashboard present"
    cw = aws.client("cloudwatch")
    wanted = {d["AlarmName"]: d for d in aws_resources.alarm_definitions(aws_resources.GUIDE_NAMES)}
    try:
        found = {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNames=list(wanted))[
            "MetricAlarms"]}
        body = json.loads(cw.get_dashboard(DashboardName=aws_resources.DASHBOARD)["DashboardBody"])
    except aws.botocore_errors() as exc:
        return failed(name, _error(exc, aws_resources.DASHBOARD))
    missing = sorted(set(wanted) - set(found))
    if missing:
        return failed(name, f"missing alarm(s) {', '.join(missing)}")
    for alarm, definition in wanted.items():
        for key in ("Namespace", "MetricName", "Threshold", "ComparisonOperator"):
            if found[alarm].get(key) != definition[key]:
                return failed(name, f"{alarm}: {key} is {found[alarm].get(key)}, not "
                                    f"{definition[key]}")
    metrics = {m[1] for w in body.get("widgets", []) for m in
               w.get("properties", {}).get("metrics", [])}
    lacking = {"Invocations", "Errors", "Duration", "Throttles",
               "ApproximateNumberOfMessagesVisible"} - metrics
    if lacking:
        return failed(name, f"dashboard {aws_resources.DASHBOARD} lacks "
                            f"{', '.join(sorted(lacking))}")
    return ok(name, f"{len(found)} alarms, dashboard {aws_resources.DASHBOARD}")


# ---- checks that need real AWS ---------------------------------------------------------------


def check_image_bytes(seed: int = 7) -> bytes:
    """A small FITS image (128 x 128, 70 kB) with a dozen stars of magnitude 16.5-19.5, all
    inside it: well above the detection threshold."""
    import numpy as np

    from .synth import make_image, make_sky_sources

    rng = np.random.default_rng(seed)
    ra, dec, size, scale = 150.1, 2.2, 128, 0.25
    sources = make_sky_sources(rng, 12, 0, ra, dec, 0.4 * size * scale / 3600)
    sources["mag_r"] = rng.uniform(16.5, 19.5, len(sources))
    sim = make_image((size, size), sources=sources, seed=seed, band="r", ra=ra, dec=dec,
                     pixel_scale=scale)
    buf = io.BytesIO()
    sim.to_hdulist().writeto(buf)
    return buf.getvalue()


def _remove_catalog_files(t: Target, image_id: str) -> list[str]:
    """The files the function wrote for *image_id* (its catalog entry names them), and the
    entry: what the check adds to the catalog, it takes away."""
    from .catalog import entry_key, read_entry
    from .storage import open_store

    store = open_store(t.catalog_uri)
    entry = read_entry(store, image_id) or {}
    keys = sorted(set(entry.get("files", [])) | set(entry.get("pending", [])))
    for key in [*keys, entry_key(image_id)]:
        store.delete(key)
    return keys


def _log_line(t: Target, needle: str, since_ms: int, wait: float, *, status: str,
              sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The function's JSON log line (the handler's reply) since *since_ms* that names
    *needle* and says ``"status": "<status>"``; None when none came within *wait*."""
    logs = aws.client("logs")
    deadline = time.monotonic() + wait
    while True:
        events = logs.filter_log_events(
            logGroupName=f"/aws/lambda/{t.function}", startTime=since_ms,
            filterPattern=f'"{needle}"').get("events", [])
        for event in events:
            if f'"status": "{status}"' in event["message"]:
                return event["message"]
        if time.monotonic() > deadline:
            return None
        sleep(5)


def check_function(t: Target, *, log_wait: float = 120.0, token: str | None = None) -> Check:
    """One test image through the function (a synchronous invocation), and its JSON log line.
    *token* names the test image (default: a random one)."""
    name = "one image through the function, and its log line"
    if not t.real:
        return cannot(name, "moto runs no Lambda code", ENDPOINT)
    from .lambda_backend import function_limits, invoke_one, lambda_client
    from .schema import image_id_from_name

    token = token or f"check-{uuid.uuid4().hex[:12]}"
    key = f"{CHECK_PREFIX}{token}.FITS"  # upper case: the trigger does not fire
    relative = key.removeprefix("images/")
    image_id = image_id_from_name(relative)
    s3 = aws.client("s3")
    since = int(time.time() * 1000) - 5000
    try:
        s3.put_object(Bucket=t.raw, Key=key, Body=check_image_bytes(),
                      ServerSideEncryption="AES256")
        limits = function_limits(t.function)
        reply = invoke_one(lambda_client(limits, 1), t.function, f"{t.raw_uri}/images",
                           relative, t.catalog_uri)
        if reply["status"] != "ok":
            return failed(name, f"the function answered {reply['status']}: {reply.get('error')}")
        if reply.get("n_sources", 0) < 1:
            return failed(name, "the function found no source in the test image")
        line = _log_line(t, image_id, since, log_wait, status="ok")
        if line is None:
            return failed(name, f"no log line naming {image_id} with status ok in "
                                f"/aws/lambda/{t.function} after {log_wait:.0f} s")
        return ok(name, f"{reply['n_sources']} sources in {reply.get('seconds')} s; log line "
                        "found")
    except SkySurveyError as exc:
        return failed(name, str(exc))
    except aws.botocore_errors() as exc:
        return failed(name, _error(exc, key))
    finally:
        _quietly(lambda: s3.delete_object(Bucket=t.raw, Key=key))
        _quietly(lambda: _remove_catalog_files(t, image_id))


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except (*aws.botocore_errors(), SkySurveyError, OSError):
        pass  # cleanup of what the check made: a failure here must not hide the check's result


def check_athena_count(t: Target) -> Check:
    """Athena's ``total_sources`` equals DuckDB's over the same catalog files."""
    name = "Athena counts what the catalog holds"
    if not t.real:
        return cannot(name, "moto runs no Athena SQL", ENDPOINT)
    from .athena import run_athena
    from .queries import NAMED_QUERIES, run_named

    try:
        listed = aws.client("s3").list_objects_v2(Bucket=t.catalog, Prefix="images/", MaxKeys=1)
        if not listed.get("KeyCount"):
            return cannot(name, "the catalog holds no image yet (run invoke_lambda.py first)")
        local = run_named("total_sources", t.catalog_uri).iloc[0]
        athena = run_athena(NAMED_QUERIES["total_sources"].sql, database=t.database,
                            workgroup=t.workgroup).dataframe.iloc[0]
    except SkySurveyError as exc:
        return failed(name, str(exc))
    except aws.botocore_errors() as exc:
        return failed(name, _error(exc, t.catalog_uri))
    seen = (int(athena["total_sources"]), int(athena["total_images"]))
    want = (int(local["total_sources"]), int(local["total_images"]))
    if seen != want:
        return failed(name, f"Athena counts {seen[0]} sources in {seen[1]} images, the catalog "
                            f"{want[0]} in {want[1]} (query_with_athena.py --engine athena "
                            "registers missing partitions)")
    return ok(name, f"{want[0]} sources in {want[1]} images")


def check_tls_only(t: Target, *, client_factory: Callable[[str, bool], object] | None = None
                   ) -> Check:
    """A signed request over plain HTTP is refused (AccessDenied) where HTTPS is served."""
    name = "plain HTTP refused (TLS-only policy)"
    if not t.real:
        return cannot(name, "moto ignores policy conditions", ENDPOINT)
    factory = client_factory or _s3_client
    key = f"{CHECK_PREFIX}absent-{uuid.uuid4().hex[:8]}"
    codes = {}
    for scheme, use_ssl in (("https", True), ("http", False)):
        try:
            factory(f"{scheme}://s3.{t.region}.amazonaws.com", use_ssl).head_object(
                Bucket=t.raw, Key=key)
            codes[scheme] = "200"
        except aws.botocore_errors() as exc:
            codes[scheme] = aws.error_code(exc) or type(exc).__name__
    if codes["https"] not in ("404", "NoSuchKey", "NotFound"):
        return cannot(name, f"HTTPS itself answered {codes['https']} (these credentials cannot "
                            f"read s3://{t.raw})")
    if codes["http"] in ("403", "AccessDenied", "Forbidden"):
        return ok(name, "HTTPS 404 for an absent key, plain HTTP 403")
    return failed(name, f"plain HTTP answered {codes['http']} (served, not denied)")


def _s3_client(endpoint: str, use_ssl: bool):
    import boto3

    session = boto3.session.Session(profile_name=os.environ.get("AWS_PROFILE") or None)
    return session.client("s3", region_name=aws.configured_region(), endpoint_url=endpoint,
                          use_ssl=use_ssl)


def find_failed_event(queue_url: str, key: str, *, wait: float,
                      sleep: Callable[[float], None] = time.sleep):
    """The failed-events message naming *key*, parsed as ``invoke_lambda.py --redrive``
    parses it, and deleted (it is the check's own); None when none came within *wait*.
    Other messages are left as they were (received with no visibility timeout)."""
    from .lambda_backend import parse_failed_event

    sqs = aws.client("sqs")
    deadline = time.monotonic() + wait
    while True:
        for message in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                           VisibilityTimeout=0, WaitTimeSeconds=1).get(
                                               "Messages", []):
            event = parse_failed_event(message["Body"], message["ReceiptHandle"])
            if key in event.key.split(", "):
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                return event
        if time.monotonic() > deadline:
            return None
        sleep(10)


def check_failed_events(t: Target, *, wait: float = 600.0, token: str | None = None) -> Check:
    """A broken file, invoked asynchronously as S3 would, reaches the failed-events queue
    after Lambda's retries, and ``--redrive`` would list it. *token* names the file."""
    name = "a broken file reaches the failed-events queue (--redrive lists it)"
    if not t.real:
        return cannot(name, "moto runs no Lambda code, so nothing fails into the queue",
                      ENDPOINT)
    key = f"{CHECK_PREFIX}{token or 'broken-' + uuid.uuid4().hex[:12]}.FITS"
    s3, sqs, lam = aws.client("s3"), aws.client("sqs"), aws.client("lambda")
    try:
        url = sqs.get_queue_url(QueueName=t.queue)["QueueUrl"]
        s3.put_object(Bucket=t.raw, Key=key, Body=b"this is not a FITS file\n",
                      ServerSideEncryption="AES256")
        event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                              "awsRegion": t.region,
                              "s3": {"bucket": {"name": t.raw}, "object": {"key": key}}}]}
        lam.invoke(FunctionName=t.function, InvocationType="Event",
                   Payload=json.dumps(event).encode())
        # The handler raises for an S3 notification whose image failed (skysurvey.handler.
        # reply): Lambda retries twice (about 1 and 2 minutes later), then sends the event.
        found = find_failed_event(url, key, wait=wait)
        if found is not None:
            return ok(name, f"{found.condition or 'failed'}: {found.error or '?'}")
        return failed(name, f"nothing in {t.queue} after {wait:.0f} s (Lambda sends it after "
                            "its two retries, ~3 min; a function deployed before the handler "
                            "raised for S3 events answers with a reply instead: redeploy)")
    except aws.botocore_errors() as exc:
        return failed(name, _error(exc, key))
    finally:
        _quietly(lambda: s3.delete_object(Bucket=t.raw, Key=key))


# ---- all of them -----------------------------------------------------------------------------

CHECKS: list[tuple[str, Callable[..., Check]]] = [
    ("function", check_function),
    ("athena", check_athena_count),
    ("tls", check_tls_only),
    ("failed-events", check_failed_events),
    ("alarms", check_alarms_and_dashboard),
    ("buckets", check_buckets),
    ("destination", check_failure_destination),
]


def run_checks(t: Target, *, only: set[str] | None = None, failed_wait: float = 600.0,
               on_result: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check (or those named in *only*), in order; each result passed to *on_result*
    as soon as it is known.

    Parameters
    ----------
    t : Target
        The deployment checked.
    only : set of str, optional
        Keys of :data:`CHECKS` to run (default: all).
    failed_wait : float
        Seconds the ``failed-events`` check waits for the queue.
    on_result : callable, optional
        Called with each :class:`Check` as soon as it is known.

    Returns
    -------
    list of Check
        One per check run, in order: ``ok``, ``failed`` or ``cannot``.
    """
    results = []
    for key, check in CHECKS:
        if only and key not in only:
            continue
        result = check(t, wait=failed_wait) if key == "failed-events" else check(t)
        results.append(result)
        if on_result:
            on_result(result)
    return results


def exit_status(results: list[Check]) -> int:
    """0 when every check that ran passed (``cannot`` is not a failure), else 1.

    Parameters
    ----------
    results : list of Check
        :func:`run_checks`' results.

    Returns
    -------
    int
        The script's exit status.
    """
    return 1 if any(r.status == "failed" for r in results) else 0
