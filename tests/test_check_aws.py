"""scripts/check_aws.py against the moto server: what moto can answer passes, the rest says
"cannot be checked on this endpoint" (never ok); broken settings fail by name."""

from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import load_script

from skysurvey import aws, aws_check, aws_resources, aws_setup

SUFFIX = "t3st"
RAW = f"astronomy-raw-{SUFFIX}"
NEEDS_REAL_AWS = ("one image through the function", "Athena counts",
                  "plain HTTP refused", "a broken file reaches")
MOTO_CAN = ("alarms and dashboard present", "buckets private, encrypted",
            "function's failed events go to")


@pytest.fixture(autouse=True)
def _no_region_left_behind():
    yield
    aws.use_region(None)


def _package(tmp_path):
    package = tmp_path / "lambda.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", "def lambda_handler(event, context):\n    return {}\n")
    package.write_bytes(buf.getvalue())
    return package


@pytest.fixture
def deployed(moto_server, tmp_path):
    """setup_aws.py's whole deployment on the moto server (over HTTP)."""
    assert load_script("setup_aws").main(["--suffix", SUFFIX, "--package",
                                          str(_package(tmp_path)), "--trigger"]) == 0
    aws.clear_clients()
    return moto_server


def _check(*args):
    return load_script("check_aws").main(list(args))


def _lines(out: str) -> dict[str, str]:
    """check name -> the rest of its line (the first line names the target)."""
    lines = out.strip().splitlines()[1:]
    return dict(line.split(": ", 1) for line in lines)


@pytest.mark.slow
def test_on_moto_what_moto_can_answer_passes_and_the_rest_cannot_be_checked(
        deployed, capsys):
    status = _check("--wait", "0")
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"at {deployed}" in out.splitlines()[0]
    lines = _lines(out)
    assert len(lines) == len(aws_check.CHECKS)
    for name, rest in lines.items():
        if name.startswith(NEEDS_REAL_AWS):
            assert rest.startswith("cannot be checked on this endpoint: "), (name, rest)
            assert "ok" not in rest.split(": ")[0]
        else:
            assert name.startswith(MOTO_CAN), name
            assert rest.startswith("ok"), (name, rest)
    assert sum(rest.startswith("ok") for rest in lines.values()) == len(MOTO_CAN)
    # nothing was uploaded: the raw bucket is as setup left it
    assert boto3.client("s3").list_objects_v2(Bucket=RAW).get("KeyCount", 0) == 0


@pytest.mark.slow
def test_broken_settings_fail_by_name_and_the_exit_status_says_so(deployed, capsys):
    cw, s3, lam = boto3.client("cloudwatch"), boto3.client("s3"), boto3.client("lambda")
    cw.delete_alarms(AlarmNames=[aws_resources.ALARM_ERRORS])
    s3.delete_bucket_policy(Bucket=RAW)
    s3.delete_public_access_block(Bucket=f"astronomy-catalog-{SUFFIX}")
    lam.delete_function_event_invoke_config(FunctionName=aws_resources.FUNCTION_NAME)
    status = _check("--only", "alarms", "buckets", "destination", "tls")
    lines = _lines(capsys.readouterr().out)
    assert status == 1
    assert lines["alarms and dashboard present"] == \
        f"failed: missing alarm(s) {aws_resources.ALARM_ERRORS}"
    buckets = lines["buckets private, encrypted, TLS-only policy attached"]
    assert buckets.startswith("failed: ") and f"{RAW}: NoSuchBucketPolicy" in buckets
    assert f"astronomy-catalog-{SUFFIX}: NoSuchPublicAccessBlockConfiguration" in buckets
    assert lines["function's failed events go to the failed-events queue"].startswith("failed: ")
    assert lines["plain HTTP refused (TLS-only policy)"].startswith("cannot be checked on this")
    assert len(lines) == 4  # --only


def test_without_a_deployment_it_says_what_is_missing(moto_server, capsys):
    assert _check() == 2
    err = capsys.readouterr().err
    assert "BUCKET_RAW" in err and "not an s3:// bucket" in err


def _destination_record(key, condition="RetriesExhausted"):
    return json.dumps({
        "version": "1.0", "requestContext": {"condition": condition,
                                             "approximateInvokeCount": 3},
        "requestPayload": {"Records": [{"s3": {"bucket": {"name": RAW},
                                               "object": {"key": key}}}]},
        "responseContext": {"functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "not a FITS file"}})


def test_the_failed_event_is_found_as_redrive_parses_it_and_only_it_is_removed(moto_server):
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="astronomy-failed-events")["QueueUrl"]
    key = "images/skysurvey-check/broken-abc.FITS"
    sqs.send_message(QueueUrl=url, MessageBody=_destination_record("images/real/a.fits"))
    sqs.send_message(QueueUrl=url, MessageBody=_destination_record(key, "EventAgeExceeded"))
    found = aws_check.find_failed_event(url, key, wait=0)
    assert (found.key, found.condition, found.error) == (key, "EventAgeExceeded",
                                                         "not a FITS file")
    left = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [json.loads(m["Body"])["requestPayload"]["Records"][0]["s3"]["object"]["key"]
            for m in left] == ["images/real/a.fits"]  # a real failure stays for --redrive
    assert aws_check.find_failed_event(url, "images/none.FITS", wait=0,
                                       sleep=lambda s: None) is None


def _target(endpoint=None):
    return aws_check.Target(RAW, f"astronomy-catalog-{SUFFIX}", aws_resources.FUNCTION_NAME,
                            aws_resources.DATABASE, aws_resources.WORKGROUP, aws_setup.QUEUE_NAME,
                            "eu-west-1", endpoint)


class _Answers:
    """An S3 client whose head_object answers with a status per scheme."""

    def __init__(self, codes: dict[str, str]):
        self.codes, self.endpoints = codes, []

    def __call__(self, endpoint, use_ssl):
        self.endpoints.append((endpoint, use_ssl))
        code = self.codes[endpoint.split(":")[0]]

        class Client:
            def head_object(self, **kwargs):
                raise ClientError({"Error": {"Code": code}}, "HeadObject")

        return Client()


@pytest.mark.parametrize("https,http,status,words", [
    ("404", "403", "ok", "plain HTTP 403"),
    ("404", "404", "failed", "served, not denied"),
    ("403", "403", "cannot", "these credentials cannot read"),
])
def test_tls_check_reads_the_two_answers(https, http, status, words):
    answers = _Answers({"https": https, "http": http})
    result = aws_check.check_tls_only(_target(), client_factory=answers)
    assert result.status == status and words in result.line()
    assert answers.endpoints == [("https://s3.eu-west-1.amazonaws.com", True),
                                 ("http://s3.eu-west-1.amazonaws.com", False)]
    on_moto = aws_check.check_tls_only(_target("http://127.0.0.1:5000"),
                                       client_factory=answers)
    assert on_moto.line() == ("plain HTTP refused (TLS-only policy): cannot be checked on "
                              "this endpoint: moto ignores policy conditions")
    assert len(answers.endpoints) == 2  # no request at all on a custom endpoint


def test_exit_status_counts_only_checks_that_ran():
    assert aws_check.exit_status([aws_check.ok("a"), aws_check.cannot("b", "why")]) == 0
    assert aws_check.exit_status([aws_check.ok("a"), aws_check.failed("c", "why")]) == 1
    assert aws_check.cannot("b", "why", aws_check.ENDPOINT).line() == \
        "b: cannot be checked on this endpoint: why"
    assert aws_check.failed("c", "why").line() == "c: failed: why"


# ---- the real-account checks' own logic, on the moto server posing as AWS --------------------


def _post(endpoint, path, body):
    import urllib.request

    request = urllib.request.Request(f"{endpoint}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).read()


@pytest.fixture
def posing_as_aws(moto_server, tmp_path, monkeypatch):
    """The deployment on the moto server with its docker-less Lambda (replies from a queue),
    and a Target that believes it is real AWS (no endpoint): the checks' logic runs whole.
    No TLS-only policy: moto would refuse the test image's upload (it ignores conditions)."""
    monkeypatch.setattr(aws_setup, "TLS_ONLY", False)
    _post(moto_server, "/moto-api/config", {"lambda": {"use_docker": False}})  # before setup
    try:
        assert load_script("setup_aws").main(["--suffix", SUFFIX, "--package",
                                              str(_package(tmp_path))]) == 0
        aws.clear_clients()
        logs = boto3.client("logs")
        logs.create_log_stream(logGroupName=aws_resources.LOG_GROUP, logStreamName="2026/12/07/x")
        yield moto_server, dataclasses.replace(_target(), region="us-east-1")
    finally:
        _post(moto_server, "/moto-api/config", {"lambda": {"use_docker": True}})


def _log(message):
    boto3.client("logs").put_log_events(
        logGroupName=aws_resources.LOG_GROUP, logStreamName="2026/12/07/x",
        logEvents=[{"timestamp": int(time.time() * 1000), "message": message}])


def test_function_check_invokes_finds_its_log_line_and_removes_what_it_made(posing_as_aws):
    from skysurvey.catalog import entry_key, write_entry
    from skysurvey.storage import open_store

    endpoint, target = posing_as_aws
    image_id = "skysurvey-check__check-t1"
    s3 = boto3.client("s3")
    # what the function writes for the image (moto runs no code): its two files and entry
    written = [f"{table}/band=r/night=2026-03-14/{image_id}.parquet"
               for table in ("sources", "images")]
    catalog = open_store(target.catalog_uri)
    for key in written:
        catalog.write_bytes(key, b"PAR1")
    write_entry(catalog, image_id, "skysurvey-check/check-t1.FITS", written)
    catalog.write_bytes("sources/band=r/night=2026-03-14/real.parquet", b"PAR1")  # not ours
    reply = {"status": "ok", "image_id": image_id, "key": "skysurvey-check/check-t1.FITS",
             "n_sources": 12, "catalog_key": written[0], "seconds": 0.31, "error": None}
    _post(endpoint, "/moto-api/static/lambda-simple/response",
          {"results": [json.dumps(reply)], "region": "us-east-1"})
    _log(f"[INFO]\t2026-12-07T10:00:00Z\treq-1\t{json.dumps(reply)}")

    result = aws_check.check_function(target, log_wait=0, token="check-t1")
    assert result.line() == ("one image through the function, and its log line: ok "
                             "(12 sources in 0.31 s; log line found)")
    assert s3.list_objects_v2(Bucket=RAW).get("KeyCount", 0) == 0  # the test image is gone
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=target.catalog)["Contents"]]
    assert left == ["sources/band=r/night=2026-03-14/real.parquet"]
    assert entry_key(image_id) not in left

    # no log line: failed, and the image is removed all the same
    _post(endpoint, "/moto-api/static/lambda-simple/response",
          {"results": [json.dumps({**reply, "image_id": "skysurvey-check__check-t2"})],
           "region": "us-east-1"})
    result = aws_check.check_function(target, log_wait=0, token="check-t2")
    assert result.status == "failed" and "no log line naming skysurvey-check__check-t2" in \
        result.detail
    assert s3.list_objects_v2(Bucket=RAW).get("KeyCount", 0) == 0


def test_failed_events_check_finds_the_record_or_says_why_none_came(posing_as_aws):
    _, target = posing_as_aws
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=aws_setup.QUEUE_NAME)["QueueUrl"]
    key = "images/skysurvey-check/broken-t1.FITS"
    # what Lambda sends after the retries (moto never runs the function)
    sqs.send_message(QueueUrl=url, MessageBody=_destination_record(key, "RetriesExhausted"))
    result = aws_check.check_failed_events(target, wait=0, token="broken-t1")
    assert result.line() == ("a broken file reaches the failed-events queue (--redrive lists "
                             "it): ok (RetriesExhausted: not a FITS file)")
    assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []  # its own, removed
    assert boto3.client("s3").list_objects_v2(Bucket=RAW).get("KeyCount", 0) == 0

    # the handler logs its error line, then raises (S3 event): the check waits for the queue
    _log(json.dumps({"status": "error", "image_id": "skysurvey-check__broken-t2",
                     "error": "not a FITS file"}))
    started = time.monotonic()
    result = aws_check.check_failed_events(target, wait=2, token="broken-t2")
    assert result.status == "failed" and time.monotonic() - started >= 2
    assert result.detail.startswith("nothing in astronomy-failed-events after 2 s (Lambda sends")


def _athena_answer(endpoint, sources, images):
    column = {"CatalogName": "hive", "SchemaName": "", "TableName": "", "Precision": 0,
              "Scale": 0, "Nullable": "UNKNOWN", "CaseSensitive": False, "Type": "bigint"}
    header = ["total_sources", "total_images", "bands"]
    rows = [header, [str(sources), str(images), "1"]]
    _post(endpoint, "/moto-api/static/athena/query-results", {"results": [{
        "rows": [{"Data": [{"VarCharValue": v} for v in r]} for r in rows],
        "column_info": [{**column, "Name": n, "Label": n} for n in header]}]})


@pytest.mark.slow
def test_athena_check_compares_athena_with_the_catalog_files(posing_as_aws, tmp_path,
                                                             fits_factory, capsys):
    from skysurvey.queries import run_named

    endpoint, target = posing_as_aws
    empty = aws_check.check_athena_count(target)
    assert (empty.status, empty.detail) == (
        "cannot", "the catalog holds no image yet (run invoke_lambda.py first)")
    images = tmp_path / "in"
    images.mkdir()
    fits_factory(images / "a.fits", n_stars=8)
    assert load_script("invoke_lambda").main([
        "--input", str(images), "--catalog", target.catalog_uri, "--workers", "1",
        "--no-progress"]) == 0
    capsys.readouterr()
    counted = run_named("total_sources", target.catalog_uri).iloc[0]
    n = int(counted["total_sources"])
    assert n >= 5 and int(counted["total_images"]) == 1

    _athena_answer(endpoint, n, 1)
    assert aws_check.check_athena_count(target).line() == \
        f"Athena counts what the catalog holds: ok ({n} sources in 1 images)"
    _athena_answer(endpoint, n - 2, 1)  # a partition Athena does not know
    result = aws_check.check_athena_count(target)
    assert result.line().startswith(
        f"Athena counts what the catalog holds: failed: Athena counts {n - 2} sources in 1 "
        f"images, the catalog {n} in 1")


def test_the_check_image_is_one_the_pipeline_finds_sources_in(tmp_path):
    """What check_function uploads, run through the handler here (local folders): named
    .FITS as the check names it, it gives an ok reply with sources."""
    raw = tmp_path / "raw" / "skysurvey-check"
    raw.mkdir(parents=True)
    (raw / "check-local.FITS").write_bytes(aws_check.check_image_bytes())
    handler = load_script("lambda_function")
    reply = handler.lambda_handler({"bucket": str(tmp_path / "raw"),
                                    "key": "skysurvey-check/check-local.FITS",
                                    "catalog_bucket": str(tmp_path / "catalog")})
    assert reply["status"] == "ok", reply
    assert reply["n_sources"] >= 5 and reply["image_id"] == "skysurvey-check__check-local"
    assert reply["catalog_key"].endswith(  # the partition the docs say stays in Glue
        "sources/band=r/night=2026-03-14/skysurvey-check__check-local.parquet")


def test_any_custom_endpoint_variable_means_not_real_aws(monkeypatch):
    import os

    for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")]:
        monkeypatch.delenv(key)
    assert aws_check.custom_endpoint() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    assert aws_check.custom_endpoint() == "http://127.0.0.1:9000"
