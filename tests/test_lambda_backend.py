"""invoke_lambda.py --backend lambda against moto's Lambda (results injected), with retries."""

from __future__ import annotations

import io
import json
import zipfile

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from conftest import RawBody, load_script
from moto import mock_aws

from skysurvey import aws, lambda_backend
from skysurvey.errors import ConfigError


@pytest.fixture
def lambda_env():
    with mock_aws(config={"lambda": {"use_docker": False}}):
        aws.clear_clients()
        iam = boto3.client("iam", region_name="us-east-1")
        role = iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service":
                                                                  "lambda.amazonaws.com"}}]}))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("lambda_function.py", "def lambda_handler(e, c):\n    return e\n")
        boto3.client("lambda", region_name="us-east-1").create_function(
            FunctionName="astronomy-source-detection", Runtime="python3.12",
            Role=role["Role"]["Arn"], Handler="lambda_function.lambda_handler",
            Code={"ZipFile": buf.getvalue()})
        from moto.awslambda_simple.models import lambda_simple_backends

        queue = lambda_simple_backends["123456789012"]["us-east-1"].lambda_simple_results_queue
        yield queue
    aws.clear_clients()


def _ok(key, n):
    return json.dumps({"status": "ok", "image_id": key.split("/")[-1][:-5], "n_sources": n,
                       "catalog_key": f"s3://cat/sources/x/{key}", "seconds": 1.5,
                       "error": None})


def test_replies_come_back_in_order_with_the_handler_payloads(lambda_env):
    keys = ["a.fits", "b.fits", "c.fits"]
    # one worker so the injected results meet the invocations in order
    lambda_env.extend([_ok(k, i + 10) for i, k in enumerate(keys)])
    replies = lambda_backend.run_lambda("s3://raw/images", keys, "s3://cat",
                                        function="astronomy-source-detection", workers=1)
    assert [r["status"] for r in replies] == ["ok"] * 3
    assert [r["n_sources"] for r in replies] == [10, 11, 12]
    assert replies[0]["key"] == "a.fits"


def test_event_names_buckets_and_prefix():
    assert lambda_backend.event_for("s3://raw/images", "x y.fits", "s3://cat") == {
        "bucket": "raw", "key": "images/x y.fits", "catalog_bucket": "s3://cat"}


def test_throttled_first_attempt_is_retried_by_botocore(lambda_env):
    """The wire answers 429 then 200: botocore's own retry (backoff, jitter) bridges the gap."""
    client = aws.client("lambda")
    calls = []

    def throttle_once(request, **kwargs):
        calls.append(request.url)
        if len(calls) == 1:
            body = json.dumps({"Type": "User", "message": "Rate Exceeded."}).encode()
            return AWSResponse(request.url, 429, {"x-amzn-ErrorType": "TooManyRequestsException",
                                                  "Content-Type": "application/json"},
                               RawBody(body))
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"},
                           RawBody(_ok("a.fits", 7).encode()))

    client.meta.events.register("before-send.lambda.Invoke", throttle_once)
    replies = lambda_backend.run_lambda("s3://raw/images", ["a.fits"], "s3://cat",
                                        function="astronomy-source-detection", workers=1)
    assert len(calls) == 2  # one throttled, then the retry
    assert replies[0]["status"] == "ok" and replies[0]["n_sources"] == 7



def test_function_errors_and_timeouts_show_in_the_summary():
    from skysurvey.runner import summary_table

    error = {"StatusCode": 200, "FunctionError": "Unhandled",
             "Payload": io.BytesIO(json.dumps({"errorType": "MemoryError",
                                                "errorMessage": "out of memory"}).encode())}
    timeout = {"StatusCode": 200, "FunctionError": "Unhandled",
               "Payload": io.BytesIO(json.dumps({"errorMessage": "2026-11-24 Task timed out "
                                                                 "after 300.00 seconds"}).encode())}
    replies = [lambda_backend.parse_response("a.fits", error),
               lambda_backend.parse_response("b.fits", timeout)]
    assert replies[0]["error"] == "a.fits: function error MemoryError: out of memory"
    assert replies[1]["error"].startswith("b.fits: Lambda timeout")
    table = summary_table(replies, 1.0, "lambda")
    assert "out of memory" in table and "Lambda timeout" in table


def test_function_error_from_the_real_client_response(lambda_env):
    client = boto3.client("lambda", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled",
                                     "Payload": io.BytesIO(b'{"errorMessage": "boom"}')})
        reply = lambda_backend.invoke_one(client, "f", "s3://raw/images", "a.fits", "s3://cat")
    assert reply["status"] == "error" and "boom" in reply["error"]


def test_async_invocations_are_queued(lambda_env):
    replies = lambda_backend.run_lambda("s3://raw/images", ["a.fits", "b.fits"], "s3://cat",
                                        function="astronomy-source-detection",
                                        asynchronous=True)
    assert [r["status"] for r in replies] == ["queued", "queued"]


def test_missing_function_is_a_clear_config_error(lambda_env):
    # moto's docker-less Lambda answers for any name, so the real error is stubbed here
    client = boto3.client("lambda", region_name="us-east-1")
    with Stubber(client) as stub, pytest.raises(ConfigError,
                                                match="nope: Lambda function not found"):
        stub.add_client_error("invoke", "ResourceNotFoundException", http_status_code=404)
        lambda_backend.invoke_one(client, "nope", "s3://raw/images", "a.fits", "s3://cat")


def test_invoke_script_lambda_backend_end_to_end(lambda_env, capsys):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    for name in ("a.fits", "b.fits"):
        s3.put_object(Bucket="raw", Key=f"images/{name}", Body=b"x")
    lambda_env.extend([_ok("a.fits", 3), json.dumps({"status": "error", "image_id": "b",
                                                     "n_sources": 0, "catalog_key": None,
                                                     "seconds": 0.1,
                                                     "error": "b.fits: not a FITS file"})])
    script = load_script("invoke_lambda")
    status = script.main(["--backend", "lambda", "--input", "s3://raw/images", "--catalog",
                          "s3://cat", "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 1
    assert "not a FITS file" in out and "lambda" in out
