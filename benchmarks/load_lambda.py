"""Load test of ``invoke_lambda.py --backend lambda`` on moto, with throttling and 5xx injected.

    python benchmarks/load_lambda.py                      # 2,000 images, 10% throttled, 3% 5xx
    python benchmarks/load_lambda.py --images 500 --throttle 0.2
    python benchmarks/load_lambda.py --write     # also update its section of RESULTS.md

It runs against a moto server over HTTP (in-process moto would still run a request whose
response a hook replaced). moto never runs the function: every invocation that reaches it pops
one prepared "ok" reply, so the number of replies used is the number of times the function
would have run. Faults are injected by a botocore ``before-send`` hook on the client the
backend uses (the request never leaves the machine, as with a real throttle), and botocore's
standard retry mode (exponential backoff with jitter) has to carry every image through.
Checked at the end: every image succeeded, the function ran exactly once per image (no image
processed twice), and no more requests were in flight at once than the function's reserved
concurrency.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import threading
import time
import zipfile
from collections import Counter
from contextlib import redirect_stdout

FUNCTION = "astronomy-source-detection"


class FaultInjector:
    """A ``before-send`` hook: throttles or 5xx for a fraction of requests, counts the rest."""

    def __init__(self, throttle: float, server_error: float, seed: int = 0,
                 hold: float = 0.002):
        self.throttle, self.server_error, self.hold = throttle, server_error, hold
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.passed: Counter[str] = Counter()  # image key -> requests that reached the function
        self.injected: Counter[str] = Counter()  # kind of fault -> count
        self.faults: Counter[str] = Counter()  # image key -> faults it met (its retries)
        self.in_flight = self.max_in_flight = 0

    def __call__(self, request, **kwargs):
        from botocore.awsrequest import AWSResponse
        from urllib3.response import HTTPResponse

        key = json.loads(request.body)["key"]
        with self.lock:
            draw = self.random.random()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.hold)  # a request takes a moment: overlapping ones are counted
            if draw < self.throttle:
                kind, status, body = ("TooManyRequestsException", 429,
                                      {"Type": "User", "message": "Rate Exceeded."})
            elif draw < self.throttle + self.server_error:
                kind, status, body = ("ServiceException", 500,
                                      {"Type": "Service", "message": "Internal error"})
            else:
                with self.lock:
                    self.passed[key] += 1
                return None  # on to moto: the function "runs"
            with self.lock:
                self.injected[kind] += 1
                self.faults[key] += 1
            raw = HTTPResponse(body=io.BytesIO(json.dumps(body).encode()), status=status,
                               preload_content=False)
            return AWSResponse(request.url, status, {"x-amzn-ErrorType": kind,
                                                     "Content-Type": "application/json"}, raw)
        finally:
            with self.lock:
                self.in_flight -= 1


def _post(endpoint: str, path: str, body: dict) -> None:
    import urllib.request

    request = urllib.request.Request(f"{endpoint}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).read()


def simple_lambda(endpoint: str, on: bool = True) -> None:
    """moto's docker-less Lambda (replies from a queue) on or off, for the whole server."""
    _post(endpoint, "/moto-api/config", {"lambda": {"use_docker": not on}})


def replies_left() -> int:
    """Prepared replies not yet used (the server runs in this process)."""
    from moto.awslambda_simple.models import lambda_simple_backends

    return len(lambda_simple_backends["123456789012"]["us-east-1"].lambda_simple_results_queue)


def deploy(endpoint: str, n_images: int, concurrency: int) -> None:
    """Role, function (reserved concurrency), raw bucket with *n_images* keys, and one ok reply
    per image queued in moto."""
    import boto3

    iam = boto3.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRole",
        "Principal": {"Service": "lambda.amazonaws.com"}}]}
    role = iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps(trust))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", "def lambda_handler(e, c):\n    return e\n")
    lam = boto3.client("lambda")
    lam.create_function(FunctionName=FUNCTION, Runtime="python3.12", Role=role["Role"]["Arn"],
                        Handler="lambda_function.lambda_handler", Timeout=300,
                        Code={"ZipFile": buf.getvalue()})
    lam.put_function_concurrency(FunctionName=FUNCTION, ReservedConcurrentExecutions=concurrency)
    s3 = boto3.client("s3")
    for bucket in ("raw", "cat"):
        s3.create_bucket(Bucket=bucket)
    for i in range(n_images):
        s3.put_object(Bucket="raw", Key=f"images/night{i % 7}/img_{i:05d}.fits", Body=b"")
    ok = json.dumps({"status": "ok", "n_sources": 5, "catalog_key": None, "seconds": 0.2,
                     "error": None})
    _post(endpoint, "/moto-api/static/lambda-simple/response", {"results": [ok] * n_images})


def run_load(endpoint: str, n_images: int, *, workers: int, concurrency: int, throttle: float,
             server_error: float, seed: int = 0, progress: bool = True) -> dict:
    """Deploy on the moto server at *endpoint* (AWS_ENDPOINT_URL points there, simple Lambda
    on), run ``invoke_lambda.py --backend lambda`` under faults, and count."""
    from skysurvey import lambda_backend

    deploy(endpoint, n_images, concurrency)
    limits = lambda_backend.function_limits(FUNCTION)
    client = lambda_backend.lambda_client(limits, lambda_backend.pool_size(workers, limits))
    injector = FaultInjector(throttle, server_error, seed)
    client.meta.events.register("before-send.lambda.Invoke", injector)

    from skysurvey.steps import invoke_lambda as script  # what scripts/invoke_lambda.py runs

    out = io.StringIO()
    start = time.perf_counter()
    with redirect_stdout(out):
        status = script.main(["--backend", "lambda", "--input", "s3://raw/images", "--catalog",
                              "s3://cat", "--workers", str(workers)]
                             + ([] if progress else ["--no-progress"]))
    seconds = time.perf_counter() - start
    client.meta.events.unregister("before-send.lambda.Invoke", injector)
    ran = n_images - replies_left()
    return {"images": n_images, "exit_status": status, "seconds": seconds,
            "function_runs": ran, "distinct_images": len(injector.passed),
            "max_runs_per_image": max(injector.passed.values(), default=0),
            "throttles_injected": injector.injected["TooManyRequestsException"],
            "errors_injected": injector.injected["ServiceException"],
            "retries": sum(injector.injected.values()),
            "max_retries_one_image": max(injector.faults.values(), default=0),
            "max_in_flight": injector.max_in_flight, "workers": workers,
            "concurrency": concurrency, "summary": out.getvalue()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=32, help="invoke_lambda.py --workers")
    parser.add_argument("--concurrency", type=int, default=10,
                        help="the function's reserved concurrency (caps the workers)")
    parser.add_argument("--throttle", type=float, default=0.10, help="fraction throttled")
    parser.add_argument("--errors", type=float, default=0.03, help="fraction answered 5xx")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true",
                        help=f"replace the '{SECTION}' section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    import os
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                       "SKYSURVEY_ENV_FILE": os.devnull, "AWS_ENDPOINT_URL": endpoint}.items():
        os.environ[key] = value
    os.environ.pop("AWS_PROFILE", None)
    try:
        simple_lambda(endpoint)
        result = run_load(endpoint, args.images, workers=args.workers,
                          concurrency=args.concurrency, throttle=args.throttle,
                          server_error=args.errors, seed=args.seed)
    finally:
        server.stop()
    print(result.pop("summary"))
    for key, value in result.items():
        print(f"{key:<20} {value:.1f}" if isinstance(value, float) else f"{key:<20} {value}")
    good = (result["exit_status"] == 0 and result["function_runs"] == args.images
            and result["max_runs_per_image"] == 1
            and result["max_in_flight"] <= args.concurrency)
    print("OK" if good else "FAILED", file=sys.stderr)
    if args.write and good:
        write_section(result, args)
    return 0 if good else 1


SECTION = "## Lambda burst on moto (benchmarks/load_lambda.py)"


def write_section(result: dict, args) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md."""
    from pathlib import Path

    path = Path(__file__).with_name("RESULTS.md")
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = [SECTION, "",
             f"Command: `python benchmarks/load_lambda.py --images {args.images} --workers "
             f"{args.workers} --concurrency {args.concurrency} --throttle {args.throttle} "
             f"--errors {args.errors} --write` (moto server over HTTP, same machine; moto runs "
             "no function code, so this measures the invoker: retries, backoff, concurrency).",
             "",
             "| images | wall s | images/s | throttles injected | 5xx injected | retries "
             "| most retries of one image | function runs | most runs of one image "
             "| max in flight (reserved) |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| {result['images']:,} | {result['seconds']:.1f} | "
             f"{result['images'] / result['seconds']:.0f} | {result['throttles_injected']} | "
             f"{result['errors_injected']} | {result['retries']} | "
             f"{result['max_retries_one_image']} | {result['function_runs']:,} | "
             f"{result['max_runs_per_image']} | {result['max_in_flight']} "
             f"({result['concurrency']}) |", "",
             "Every image succeeded; the retries are botocore's standard mode (8 attempts in all, "
             "exponential backoff with jitter). `--workers` was capped at the reserved "
             "concurrency.", ""]
    head, found, rest = text.partition(SECTION)
    tail = rest[rest.find("\n## ") + 1:] if found and "\n## " in rest else ""
    path.write_text(head.rstrip("\n") + "\n\n" + "\n".join(lines)
                    + ("\n" + tail if tail else ""))


if __name__ == "__main__":
    raise SystemExit(main())
