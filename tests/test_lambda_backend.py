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
    limits = lambda_backend.function_limits("astronomy-source-detection")
    client = lambda_backend.lambda_client(limits, 1)  # the client run_lambda uses
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


def _ok_response(request, key="a.fits"):
    return AWSResponse(request.url, 200, {"Content-Type": "application/json"},
                       RawBody(_ok(key, 1).encode()))


def test_read_timeout_outlasts_the_function_timeout(lambda_env):
    """botocore's 60 s read timeout would expire on a 300 s function and its retry would
    run the image a second time."""
    boto3.client("lambda", region_name="us-east-1").update_function_configuration(
        FunctionName="astronomy-source-detection", Timeout=300)
    limits = lambda_backend.function_limits("astronomy-source-detection")
    client = lambda_backend.lambda_client(limits, 1)
    assert client.meta.config.read_timeout == 360
    used = []
    client.meta.events.register("before-send.lambda.Invoke",
                                lambda request, **kw: used.append(1))
    lambda_env.append(_ok("a.fits", 1))
    lambda_backend.run_lambda("s3://raw/images", ["a.fits"], "s3://cat",
                              function="astronomy-source-detection", workers=1)
    assert used == [1]  # run_lambda invoked through that client


def test_eight_attempts_in_all_as_the_docs_say(lambda_env, monkeypatch):
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0)
    limits = lambda_backend.function_limits("astronomy-source-detection")
    client = lambda_backend.lambda_client(limits, 1)
    calls = []

    def always_500(request, **kwargs):
        calls.append(1)
        return AWSResponse(request.url, 500, {"x-amzn-ErrorType": "ServiceException",
                                              "Content-Type": "application/json"},
                           RawBody(b'{"Type": "Service", "message": "boom"}'))

    client.meta.events.register("before-send.lambda.Invoke", always_500)
    (reply,) = lambda_backend.run_lambda("s3://raw/images", ["a.fits"], "s3://cat",
                                         function="astronomy-source-detection", workers=1)
    assert len(calls) == aws.MAX_ATTEMPTS == 8
    assert reply["status"] == "error" and reply["retries"] == 7


def test_thread_pool_respects_the_reserved_concurrency(lambda_env):
    import threading
    import time

    boto3.client("lambda", region_name="us-east-1").put_function_concurrency(
        FunctionName="astronomy-source-detection", ReservedConcurrentExecutions=2)
    limits = lambda_backend.function_limits("astronomy-source-detection")
    assert lambda_backend.pool_size(8, limits) == 2
    client = lambda_backend.lambda_client(limits, 2)
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow_ok(request, **kwargs):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.03)
        with lock:
            state["now"] -= 1
        return _ok_response(request)

    client.meta.events.register("before-send.lambda.Invoke", slow_ok)
    replies = lambda_backend.run_lambda("s3://raw/images", [f"{i}.fits" for i in range(12)],
                                        "s3://cat", function="astronomy-source-detection",
                                        workers=8)
    assert all(r["status"] == "ok" for r in replies)
    assert state["max"] == 2


def _load_benchmark():
    import importlib.util

    from skysurvey.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location(
        "load_lambda", REPO_ROOT / "benchmarks" / "load_lambda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def simple_lambda_server(moto_server):
    """The moto server with its docker-less Lambda (replies from a queue), restored after."""
    bench = _load_benchmark()
    bench.simple_lambda(moto_server)
    yield moto_server, bench
    bench.simple_lambda(moto_server, on=False)


@pytest.mark.slow
def test_burst_of_images_under_throttling_and_5xx(simple_lambda_server, capsys):
    """invoke_lambda.py --backend lambda over HTTP, 10% throttled and 5% 5xx on the wire: all
    succeed, each image reaches the function once, never more in flight than reserved."""
    endpoint, bench = simple_lambda_server
    result = bench.run_load(endpoint, 300, workers=16, concurrency=6, throttle=0.10,
                            server_error=0.05, seed=1)
    assert result["exit_status"] == 0
    assert result["function_runs"] == result["distinct_images"] == 300
    assert result["max_runs_per_image"] == 1  # no image processed twice
    assert 0 < result["max_in_flight"] <= 6  # bounded by the reserved concurrency
    assert result["throttles_injected"] > 10 and result["errors_injected"] > 5
    assert "succeeded           300" in result["summary"]
    assert "300/300" in capsys.readouterr().err  # progress


def _destination_record(payload, condition="RetriesExhausted", error="Task timed out"):
    """An on-failure destination record as AWS documents it (Lambda asynchronous invocation)."""
    return json.dumps({
        "version": "1.0", "timestamp": "2026-11-26T08:00:00.000Z",
        "requestContext": {"requestId": "e4b46cbf-0000-4000-8000-a18cdf61200e",
                           "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:"
                                          "astronomy-source-detection:$LATEST",
                           "condition": condition, "approximateInvokeCount": 3},
        "requestPayload": payload,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                            "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": error}})


def test_redrive_reinvokes_failed_events_and_keeps_the_ones_still_failing(
        simple_lambda_server, capsys, monkeypatch):
    endpoint, bench = simple_lambda_server
    _function()
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="astronomy-failed-events")["QueueUrl"]
    s3_event = {"Records": [{"eventSource": "aws:s3", "s3": {
        "bucket": {"name": "astronomy-raw-x"},
        "object": {"key": "images/night1/M31+f%C3%BC.fits", "size": 100}}}]}
    direct = {"bucket": "astronomy-raw-x", "key": "images/b.fits", "catalog_bucket": "c"}
    for body in (_destination_record(s3_event), _destination_record(direct, "EventAgeExceeded",
                                                                     "throttled"), "garbage"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    bench._post(endpoint, "/moto-api/static/lambda-simple/response", {"results": [
        _ok("M31 fü.fits", 4),
        json.dumps({"status": "error", "n_sources": 0, "catalog_key": None, "seconds": 0.1,
                    "error": "images/b.fits: not a FITS file"})]})
    sent = []
    limits = lambda_backend.function_limits("astronomy-source-detection")
    lambda_backend.lambda_client(limits, 1).meta.events.register(
        "before-send.lambda.Invoke", lambda request, **kw: sent.append(json.loads(request.body)))

    status = load_script("invoke_lambda").main(["--redrive", "--workers", "1"])
    out = capsys.readouterr().out
    assert status == 1
    assert sent == [s3_event, direct]  # the original events, as they were
    assert "images/night1/M31 fü.fits: RetriesExhausted: Task timed out -> ok" in out
    assert "images/b.fits: EventAgeExceeded: throttled -> error" in out
    assert "not a Lambda destination record" in out
    left = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"][:10] for m in left) == sorted(
        ["garbage", _destination_record(direct)[:10]])  # the success is deleted


def _function():
    role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": []}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", "def lambda_handler(e, c):\n    return e\n")
    boto3.client("lambda").create_function(
        FunctionName="astronomy-source-detection", Runtime="python3.12",
        Role=role["Role"]["Arn"], Handler="lambda_function.lambda_handler",
        Code={"ZipFile": buf.getvalue()})


def test_redrive_with_an_empty_queue_says_so(simple_lambda_server, capsys):
    _function()
    boto3.client("sqs").create_queue(QueueName="astronomy-failed-events")
    assert load_script("invoke_lambda").main(["--redrive"]) == 0
    assert "No failed events waiting in astronomy-failed-events" in capsys.readouterr().out


def test_an_aws_error_is_an_error_reply_and_a_bug_is_raised(lambda_env):
    """invoke_payload turns what botocore raises into the image's error reply (the batch goes
    on); a programming error (a payload JSON cannot encode) is raised, not a 'failed' line."""
    client = boto3.client("lambda", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("invoke", "InvalidRequestContentException", "bad body",
                              http_status_code=400)
        reply = lambda_backend.invoke_payload(client, "f", "a.fits", {"key": "a.fits"})
    assert reply["status"] == "error"
    assert reply["error"] == "a.fits: InvalidRequestContentException: bad body"
    with pytest.raises(TypeError, match="not JSON serializable"):
        lambda_backend.invoke_payload(client, "f", "a.fits", {"key": object()})
