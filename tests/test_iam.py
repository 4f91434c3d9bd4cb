"""The Lambda role's policy allows every request the function's code makes.

moto does not enforce IAM, so a missing permission passes every other test and fails only on a
real account. Here the moto server records every HTTP request (boto3's and pyarrow's alike)
while the function's code runs (the image handler, including a re-processing, a moved image, a
corrupt file and a reference catalog on S3; and an objects unit of ``build_objects.py
--backend lambda``); each request is turned into its IAM action and resource and checked
against ``aws_resources.lambda_policy`` with IAM's matching rules (wildcards, ``s3:prefix``
conditions). Only the function's own requests are recorded: the driver's (the user's
credentials) are not.
"""

from __future__ import annotations

import base64
import json
import math
import re
import urllib.request
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree

import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import draw_fits, load_script

from skysurvey import athena, aws, aws_resources
from skysurvey.objects import BuildConfig, build_objects, handle_unit_event

ACCOUNT = "123456789012"  # moto's
REGION = "us-east-1"


class Recording:
    """moto's request recorder (in-process server): ``with recording: ...`` records."""

    def __init__(self, endpoint: str, path):
        from moto.moto_api import recorder

        self.endpoint, self.path, self.recorder = endpoint, path, recorder
        self.requests: list[dict] = []

    def _post(self, action: str) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"{self.endpoint}/moto-api/recorder/{action}", method="POST")).read()

    def __enter__(self):
        self._post("reset-recording")
        self._post("start-recording")
        return self

    def __exit__(self, *exc):
        self._post("stop-recording")
        with open(self.path) as lines:
            self.requests += [json.loads(line) for line in lines if line.strip()]


def _service(request: dict) -> str:
    auth = {k.lower(): v for k, v in request["headers"].items()}.get("authorization", "")
    match = re.search(r"Credential=[^/]+/\d+/[^/]+/([^/]+)/aws4_request", auth)
    return match.group(1) if match else "?"


def _body(request: dict) -> bytes:
    body = request.get("body") or ""
    return base64.b64decode(body) if request.get("body_encoded") else body.encode()


def _s3_permissions(request: dict) -> list[tuple[str, str, dict]]:
    """(action, resource ARN, condition context) an S3 request needs (path-style URLs)."""
    url = urlsplit(request["url"])
    query = parse_qs(url.query, keep_blank_values=True)
    bucket, _, key = url.path.lstrip("/").partition("/")
    bucket, key = unquote(bucket), unquote(key)
    method = request["method"]
    headers = {k.lower(): v for k, v in request["headers"].items()}
    obj = f"arn:aws:s3:::{bucket}/{key}"
    if not key:
        if method == "POST" and "delete" in query:  # DeleteObjects: each key
            keys = [e.text for e in ElementTree.fromstring(_body(request)).iter()
                    if e.tag.endswith("Key")]
            return [("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{k}", {}) for k in keys]
        if method in ("GET", "HEAD") and not set(query) - {"list-type", "prefix", "delimiter",
                                                           "continuation-token", "max-keys",
                                                           "encoding-type", "start-after",
                                                           "fetch-owner"}:
            prefix = query.get("prefix", [""])[0]
            return [("s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": prefix})]
        return [(f"s3:?{method}?{sorted(query)}", f"arn:aws:s3:::{bucket}", {})]
    if method in ("GET", "HEAD") and not set(query) - {"partNumber", "versionId"}:
        return [("s3:GetObject", obj, {})]
    if method == "PUT" and "x-amz-copy-source" in headers:
        source = unquote(headers["x-amz-copy-source"]).lstrip("/").split("?")[0]
        return [("s3:PutObject", obj, {}), ("s3:GetObject", f"arn:aws:s3:::{source}", {})]
    if method == "PUT" or (method == "POST" and ({"uploads", "uploadId"} & set(query))):
        return [("s3:PutObject", obj, {})]
    if method == "DELETE" and "uploadId" in query:
        return [("s3:AbortMultipartUpload", obj, {})]
    if method == "DELETE":
        return [("s3:DeleteObject", obj, {})]
    return [(f"s3:?{method}?{sorted(query)}", obj, {})]


def _glue_permissions(request: dict) -> list[tuple[str, str, dict]]:
    target = {k.lower(): v for k, v in request["headers"].items()}.get("x-amz-target", "")
    action = "glue:" + target.rpartition(".")[2]
    body = json.loads(_body(request) or b"{}")
    arn = f"arn:aws:glue:{REGION}:{ACCOUNT}"
    resources = [f"{arn}:catalog"]
    if "DatabaseName" in body:
        resources.append(f"{arn}:database/{body['DatabaseName']}")
    if "TableName" in body:
        resources.append(f"{arn}:table/{body['DatabaseName']}/{body['TableName']}")
    return [(action, r, {}) for r in resources]


def permissions(requests: list[dict]) -> list[tuple[str, str, dict]]:
    """Every (action, resource, context) the recorded *requests* need."""
    needed = []
    for request in requests:
        service = _service(request)
        if service == "s3":
            needed += _s3_permissions(request)
        elif service == "glue":
            needed += _glue_permissions(request)
        else:
            needed.append((f"{service}:?", request["url"], {}))
    return needed


def _like(pattern: str, value: str) -> bool:
    """IAM's wildcard match: ``*`` any run of characters, ``?`` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def allowed(policy: dict, action: str, resource: str, context: dict) -> bool:
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        if not any(_like(a, action) for a in actions):
            continue
        if not any(_like(r, resource) for r in resources):
            continue
        conditions = statement.get("Condition", {})
        unknown = set(conditions) - {"StringLike"}
        assert not unknown, f"this checker does not know {unknown}"
        if all(any(_like(p, context.get(k, "\0")) for p in patterns)
               for k, patterns in conditions.get("StringLike", {}).items()):
            return True
    return False


def denied(policy: dict, requests: list[dict]) -> list[tuple[str, str]]:
    return sorted({(a, r) for a, r, c in permissions(requests) if not allowed(policy, a, r, c)})


# --- the checker itself, on known answers ---------------------------------------------------

def test_checker_applies_wildcards_and_prefix_conditions():
    policy = {"Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b/images/*"]},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ["arn:aws:s3:::b"],
         "Condition": {"StringLike": {"s3:prefix": ["ref/", "ref/*"]}}}]}
    assert allowed(policy, "s3:GetObject", "arn:aws:s3:::b/images/x.fits", {})
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::b/image_ids/x.json", {})
    assert not allowed(policy, "s3:PutObject", "arn:aws:s3:::b/images/x.fits", {})
    assert allowed(policy, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "ref/part"})
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "other/"})
    assert not allowed(policy, "s3:ListBucket", "arn:aws:s3:::b", {})


def test_requests_become_the_actions_iam_checks():
    def request(method, url, body=b"", **headers):
        return {"method": method, "url": url, "body": base64.b64encode(body).decode(),
                "body_encoded": True, "headers": {
                    "Authorization": "AWS4-HMAC-SHA256 Credential=k/20261126/us-east-1/s3/"
                                     "aws4_request, SignedHeaders=host", **headers}}

    delete = (b'<Delete><Object><Key>sources/a.parquet</Key></Object>'
              b'<Object><Key>images/a.parquet</Key></Object></Delete>')
    assert permissions([
        request("HEAD", "http://h/cat/image_ids/a%20b.json"),
        request("GET", "http://h/cat?list-type=2&prefix=sources%2F"),
        request("PUT", "http://h/cat/objects/x", **{"x-amz-copy-source": "cat/.staging/x"}),
        request("POST", "http://h/cat?delete", delete),
    ]) == [("s3:GetObject", "arn:aws:s3:::cat/image_ids/a b.json", {}),
           ("s3:ListBucket", "arn:aws:s3:::cat", {"s3:prefix": "sources/"}),
           ("s3:PutObject", "arn:aws:s3:::cat/objects/x", {}),
           ("s3:GetObject", "arn:aws:s3:::cat/.staging/x", {}),
           ("s3:DeleteObject", "arn:aws:s3:::cat/sources/a.parquet", {}),
           ("s3:DeleteObject", "arn:aws:s3:::cat/images/a.parquet", {})]


# --- the function's requests against the deployed policy ------------------------------------

@pytest.fixture
def deployment(moto_server, monkeypatch, tmp_path):
    """Buckets, Glue tables and the function's environment as setup_aws.py makes them, with a
    reference catalog on S3; and the recorder writing to tmp_path."""
    from moto.moto_api import recorder

    monkeypatch.setattr(recorder, "_location", str(tmp_path / "recording.jsonl"))
    reference = f"s3://{aws_resources.CATALOG_PREFIX}t3st/reference/ref.parquet"
    names = aws_resources.Names("t3st", REGION, ACCOUNT, reference=reference)
    s3, glue = aws.client("s3"), aws.client("glue")
    for bucket in (names.raw, names.catalog):
        s3.create_bucket(Bucket=bucket)
    glue.create_database(DatabaseInput={"Name": aws_resources.DATABASE})
    for spec in athena.TABLES.values():
        glue.create_table(DatabaseName=aws_resources.DATABASE,
                          TableInput=athena.glue_table_input(spec, f"s3://{names.catalog}"))
    truth = draw_fits(tmp_path / "ref.fits", seed=5, n_stars=12)  # the stars of a.fits
    wcs = WCS(fits.getheader(tmp_path / "ref.fits"))
    ra, dec = wcs.all_pix2world([t[0] for t in truth], [t[1] for t in truth], 0)
    mags = [30.0 - 2.5 * math.log10(t[2]) for t in truth]
    buf = tmp_path / "ref.parquet"
    pd.DataFrame({"ra": ra, "dec": dec, "rmag": mags, "rmag_err": 0.01}).to_parquet(buf)
    s3.upload_file(str(buf), names.catalog, "reference/ref.parquet")
    for key, value in names.env().items():
        monkeypatch.setenv(key, value)
    aws.clear_clients()
    return names, Recording(moto_server, tmp_path / "recording.jsonl")


def _upload(names, path, key):
    aws.client("s3").upload_file(str(path), names.raw, key)


def test_the_lambda_policy_allows_every_request_the_function_makes(deployment, tmp_path):
    names, recording = deployment
    handler = load_script("lambda_function")
    draw_fits(tmp_path / "a.fits", seed=5, n_stars=12)
    draw_fits(tmp_path / "a2.fits", seed=5, n_stars=12, date_obs="2026-03-20T04:12:00")
    draw_fits(tmp_path / "b.fits", seed=6, n_stars=8, date_obs="2026-03-21T04:12:00")
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    replies = []
    for local, key in (("a.fits", "images/a.fits"), ("b.fits", "images/b.fits"),
                       ("bad.fits", "images/bad.fits")):
        _upload(names, tmp_path / local, key)
        with recording:
            replies.append(handler.lambda_handler({"bucket": names.raw, "key": key}))
    with recording:  # the same image again: re-processed in place
        replies.append(handler.lambda_handler({"bucket": names.raw, "key": "images/a.fits"}))
    _upload(names, tmp_path / "a2.fits", "images/a.fits")  # replaced: another night
    with recording:
        replies.append(handler.lambda_handler({"bucket": names.raw, "key": "images/a.fits"}))
    assert [r["status"] for r in replies] == ["ok", "ok", "error", "ok", "ok"], replies

    # build_objects.py --backend lambda: the driver runs with the user's credentials, each
    # unit in the function (recorded)
    def lambda_units(tasks):
        with recording:
            return [handle_unit_event(json.loads(json.dumps(t.event()))) for t in tasks]

    report = build_objects(f"s3://{names.catalog}", BuildConfig(), runner=lambda_units)
    assert report.status == "ok", report
    # a new night, then the incremental build: units read the objects they extend
    draw_fits(tmp_path / "c.fits", seed=6, n_stars=8, date_obs="2026-03-25T04:12:00")
    _upload(names, tmp_path / "c.fits", "images/c.fits")
    with recording:
        assert handler.lambda_handler({"bucket": names.raw, "key": "images/c.fits"})[
            "status"] == "ok"
    report = build_objects(f"s3://{names.catalog}", BuildConfig(), runner=lambda_units)
    assert report.status == "ok", report
    read = {r for a, r, _ in permissions(recording.requests) if a == "s3:GetObject"}
    assert any("/objects/hpx5=" in r for r in read), "the incremental units read no objects"
    # forced_photometry.py --backend lambda: each image's task in the function (recorded)
    from skysurvey.forced_run import run_forced

    def lambda_forced(tasks):
        with recording:
            return [handler.lambda_handler(json.loads(json.dumps(t.event()))) for t in tasks]

    forced = run_forced(f"s3://{names.catalog}", f"s3://{names.raw}/images",
                        runner=lambda_forced)
    assert forced.replies and not forced.failed, forced.summary()
    written = {r for a, r, _ in permissions(recording.requests) if a == "s3:PutObject"}
    assert any("/forced_photometry/" in r for r in written)

    services = {_service(r) for r in recording.requests}
    assert services == {"s3", "glue"}, services
    assert {a for a, _, _ in permissions(recording.requests)} >= {
        "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "glue:BatchCreatePartition"}
    refused = denied(aws_resources.lambda_policy(names), recording.requests)
    assert not refused, "the Lambda role lacks:\n" + "\n".join(map(str, refused))
