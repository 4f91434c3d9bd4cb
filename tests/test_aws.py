"""The handler on S3 (moto in-process) and the whole AWS path over a real HTTP moto server."""

from __future__ import annotations

import io
import json
from urllib.parse import quote_plus

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import draw_fits, load_script

from skysurvey import aws
from skysurvey.queries import run_named
from skysurvey.schema import SOURCES_SCHEMA
from skysurvey.synth import write_sample


def _script(name):
    module = load_script(name)
    return module


@pytest.fixture
def buckets(mocked_aws, tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="catalog")
    return s3


def _put_image(s3, tmp_path, key, seed=0):
    path = tmp_path / f"img{seed}.fits"
    draw_fits(path, seed=seed)
    s3.upload_file(str(path), "raw", key)


def _s3_event(*keys):
    return {"Records": [{"s3": {"bucket": {"name": "raw"}, "object": {"key": quote_plus(k)}}}
                        for k in keys]}


def test_direct_invocation_writes_the_catalog_to_s3(buckets, tmp_path):
    handler = _script("lambda_function")
    _put_image(buckets, tmp_path, "images/field 1.fits")
    reply = handler.lambda_handler({"bucket": "raw", "key": "images/field 1.fits",
                                    "catalog_bucket": "catalog"})
    assert reply["status"] == "ok", reply
    key = "sources/band=r/night=2026-03-14/field 1.parquet"
    assert reply["catalog_key"] == f"s3://catalog/{key}"
    body = buckets.get_object(Bucket="catalog", Key=key)["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.schema.equals(SOURCES_SCHEMA) and table.num_rows == reply["n_sources"] >= 10
    head = buckets.head_object(Bucket="catalog", Key=key)
    assert head["ServerSideEncryption"] == "AES256"


def test_s3_event_with_encoded_keys_and_several_records(buckets, tmp_path, monkeypatch):
    monkeypatch.setenv("BUCKET_CATALOG", "s3://catalog")
    handler = _script("lambda_function")
    _put_image(buckets, tmp_path, "images/M31 ü+1.fits", seed=1)
    buckets.put_object(Bucket="raw", Key="images/bad.fits", Body=b"not a fits file at all")
    # an S3 notification is asynchronous: a failed image raises (Lambda retries it, then its
    # on-failure destination, the failed-events queue, gets the event), after every record ran
    from skysurvey.handler import ImagesFailed

    with pytest.raises(ImagesFailed) as failed:
        handler.lambda_handler(_s3_event("images/M31 ü+1.fits", "images/bad.fits"))
    assert str(failed.value).startswith("bad.fits: s3://raw/images/bad.fits: not a FITS file")
    assert "\n" not in str(failed.value) and "M31" not in str(failed.value)
    keys = [o["Key"] for o in buckets.list_objects_v2(Bucket="catalog")["Contents"]
            if o["Key"].endswith(".parquet")]
    assert sorted(keys) == ["images/band=r/night=2026-03-14/M31 ü+1.parquet",
                            "sources/band=r/night=2026-03-14/M31 ü+1.parquet"]


def test_bad_event_and_missing_object_are_error_replies(buckets):
    handler = _script("lambda_function")
    assert handler.lambda_handler({"nothing": 1})["error"].startswith("bad event")
    reply = handler.lambda_handler({"bucket": "raw", "key": "images/none.fits",
                                    "catalog_bucket": "catalog"})
    assert reply["status"] == "error" and "images/none.fits" in reply["error"]


def test_clients_are_created_once_per_container(buckets, tmp_path):
    handler = _script("lambda_function")
    _put_image(buckets, tmp_path, "images/a.fits")
    aws.clear_clients()
    for _ in range(2):
        handler.lambda_handler({"bucket": "raw", "key": "images/a.fits",
                                "catalog_bucket": "catalog"})
    assert aws._client.cache_info().currsize == 1


def test_large_objects_go_through_tmp_and_are_cleaned(buckets, tmp_path, monkeypatch):
    import contextlib

    from skysurvey.storage import S3Store

    handler = _script("lambda_function")
    _put_image(buckets, tmp_path, "images/big.fits")
    staging = tmp_path / "lambda-tmp"
    staging.mkdir()
    monkeypatch.setenv("TMPDIR", str(staging))
    staged, local_file = [], S3Store.local_file

    @contextlib.contextmanager
    def recording(self, key, **kw):  # the real download, its path noted
        with local_file(self, key, **kw) as path:
            staged.append((path.parent, path.is_file()))
            yield path

    monkeypatch.setattr(S3Store, "local_file", recording)
    reply = handler.lambda_handler({"bucket": "raw", "key": "images/big.fits",
                                    "catalog_bucket": "catalog"})
    assert reply["status"] == "ok"
    assert staged == [(staging, True)]  # it did go through TMPDIR...
    assert list(staging.iterdir()) == []  # ...and was removed


@pytest.mark.slow
def test_whole_aws_path_over_http(moto_server, tmp_path, monkeypatch):
    """upload_to_s3.py -> S3 event -> handler -> catalog in S3 -> DuckDB queries over s3://."""
    s3 = boto3.client("s3", region_name="us-east-1")  # AWS_ENDPOINT_URL points at moto
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="catalog")
    sample = tmp_path / "sample"
    write_sample(sample, count=2, size=512, seed=3, bands=("r", "i"))
    assert _script("upload_to_s3").main(["--input", str(sample), "--bucket", "s3://raw",
                                         "--no-progress"]) == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="raw", Prefix="images/")["Contents"]]
    assert sorted(keys) == ["images/sky_i_002.fits", "images/sky_r_001.fits"]
    monkeypatch.setenv("BUCKET_CATALOG", "s3://catalog")
    handler = _script("lambda_function")
    replies = [handler.lambda_handler(_s3_event(k)) for k in keys]
    assert all(r["status"] == "ok" for r in replies), replies
    for key in keys:
        image_id = key.removeprefix("images/").removesuffix(".fits")
        band = image_id.split("_")[1]
        obj = s3.get_object(Bucket="catalog",
                            Key=f"sources/band={band}/night=2026-03-14/{image_id}.parquet")
        found = pq.read_table(io.BytesIO(obj["Body"].read())).to_pandas()
        truth = pd.read_csv(sample / "truth" / f"{image_id}.csv")
        bright = truth[(truth["snr"] >= 30) & truth["x"].between(5, 506)
                       & truth["y"].between(5, 506)]
        d = np.hypot(found["x"].to_numpy()[None] - bright["x"].to_numpy()[:, None],
                     found["y"].to_numpy()[None] - bright["y"].to_numpy()[:, None]).min(axis=1)
        assert np.mean(d < 1.0) >= 0.9
    total = run_named("total_sources", "s3://catalog")
    assert total["total_images"].tolist() == [2]
    assert total["total_sources"].tolist() == [sum(r["n_sources"] for r in replies)]


def _images_catalog(root, seconds):
    import pyarrow as pa

    from skysurvey.schema import IMAGES_SCHEMA, empty_table

    for i, s in enumerate(seconds):
        folder = root / "images" / "band=r" / "night=2026-03-14"
        folder.mkdir(parents=True, exist_ok=True)
        row = {name: [None] for name in IMAGES_SCHEMA.names}
        row.update(image_id=[f"img{i}"], seconds=[s], n_sources=[0])
        pq.write_table(pa.table(row, schema=IMAGES_SCHEMA), folder / f"img{i}.parquet")
        folder = root / "sources" / "band=r" / "night=2026-03-14"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(empty_table(SOURCES_SCHEMA), folder / f"img{i}.parquet")
    return root


def test_estimate_cost_prices_the_run_that_happened_at_the_deployed_memory(
        mocked_aws, tmp_path, capsys, monkeypatch):
    catalog = _images_catalog(tmp_path / "cat", [1.5, 2.5, 4.0])
    iam = boto3.client("iam")
    role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    boto3.client("lambda").create_function(
        FunctionName="astronomy-source-detection", Runtime="python3.12", Role=role,
        Handler="h.h", Code={"ZipFile": b"PK"}, MemorySize=2048)
    monkeypatch.setenv("BUCKET_CATALOG", str(catalog))
    assert _script("estimate_cost").main([]) == 0
    out = capsys.readouterr().out
    assert "measured run: 3 images" in out and "8.00 handler seconds" in out
    assert "2048 MB (deployed astronomy-source-detection)" in out
    assert "Lambda: 16.0 GB-s and 3 requests" in out  # 8 s at 2 GB
    assert "hypothetical" not in out


def test_estimate_cost_says_when_a_run_is_hypothetical(capsys):
    assert _script("estimate_cost").main(["--images", "1500", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hypothetical run (not measured): 1500 images")
    assert "1,500.0 GB-s" in out


def test_estimate_cost_without_a_recorded_run_says_what_to_do(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status = _script("estimate_cost").main(["--catalog", str(tmp_path / "empty")])
    assert status == 1
    assert "--images N" in capsys.readouterr().err


def _glue_tables(catalog_uri):
    from skysurvey import athena

    glue = boto3.client("glue", region_name="us-east-1")
    glue.create_database(DatabaseInput={"Name": "astronomy"})
    for spec in athena.TABLES.values():
        glue.create_table(DatabaseName="astronomy",
                          TableInput=athena.glue_table_input(spec, catalog_uri))
    return glue


def _partitions(glue, table):
    return sorted(tuple(p["Values"]) for p in
                  glue.get_partitions(DatabaseName="astronomy", TableName=table)["Partitions"])


def test_handler_registers_the_partitions_it_writes(buckets, tmp_path, monkeypatch):
    """Direct and S3-triggered invocations: the band and night written become Glue partitions
    (any band, any valid night), so Athena sees them without a projection list."""
    glue = _glue_tables("s3://catalog")
    monkeypatch.setenv("ATHENA_DATABASE", "astronomy")  # setup_aws.py sets it on the function
    monkeypatch.setenv("BUCKET_CATALOG", "s3://catalog")
    handler = _script("lambda_function")
    draw_fits(tmp_path / "a.fits", band="F606W", date_obs="1851-06-01T03:00:00")
    buckets.upload_file(str(tmp_path / "a.fits"), "raw", "images/a.fits")
    draw_fits(tmp_path / "b.fits", band="Ks", seed=2)
    buckets.upload_file(str(tmp_path / "b.fits"), "raw", "images/deep/b.fits")
    direct = handler.lambda_handler({"bucket": "raw", "key": "images/a.fits",
                                     "catalog_bucket": "catalog"})
    triggered = handler.lambda_handler(_s3_event("images/deep/b.fits"))
    assert direct["status"] == triggered["status"] == "ok", (direct, triggered)
    expected = [("f606w", "1851-06-01"), ("ks", "2026-03-14")]
    assert _partitions(glue, "sources_data") == _partitions(glue, "images") == expected
    location = glue.get_partition(DatabaseName="astronomy", TableName="images",
                                  PartitionValues=["ks", "2026-03-14"])["Partition"]
    assert location["StorageDescriptor"]["Location"] == \
        "s3://catalog/images/band=ks/night=2026-03-14/"


def test_a_warm_handler_calls_glue_once_per_new_partition(buckets, tmp_path, monkeypatch):
    """Images of one band and night in one container: one BatchCreatePartition per table
    (it was one per table per image), a new night one more; Glue holds them all."""
    glue = _glue_tables("s3://catalog")
    monkeypatch.setenv("ATHENA_DATABASE", "astronomy")
    handler = _script("lambda_function")
    calls = []
    aws.client("glue").meta.events.register(  # the client the handler uses (cached)
        "before-call.glue.BatchCreatePartition",
        lambda params, **_: calls.append(json.loads(params["body"])["TableName"]))
    for seed in range(3):
        _put_image(buckets, tmp_path, f"images/same{seed}.fits", seed=seed)
    draw_fits(tmp_path / "next.fits", date_obs="2026-03-15T04:00:00")
    buckets.upload_file(str(tmp_path / "next.fits"), "raw", "images/next.fits")
    for seed in range(3):
        reply = handler.lambda_handler({"bucket": "raw", "key": f"images/same{seed}.fits",
                                        "catalog_bucket": "catalog"})
        assert reply["status"] == "ok", reply
    assert calls == ["sources_data", "images"]
    assert handler.lambda_handler({"bucket": "raw", "key": "images/next.fits",
                                   "catalog_bucket": "catalog"})["status"] == "ok"
    assert calls == ["sources_data", "images"] * 2
    expected = [("r", "2026-03-14"), ("r", "2026-03-15")]
    assert _partitions(glue, "sources_data") == _partitions(glue, "images") == expected


def test_handler_without_a_database_setting_registers_nothing(buckets, tmp_path, monkeypatch):
    glue = _glue_tables("s3://catalog")
    handler = _script("lambda_function")
    _put_image(buckets, tmp_path, "images/a.fits")
    reply = handler.lambda_handler({"bucket": "raw", "key": "images/a.fits",
                                    "catalog_bucket": "catalog"})
    assert reply["status"] == "ok" and _partitions(glue, "sources_data") == []


def test_a_failed_registration_is_an_error_reply_naming_it(buckets, tmp_path, monkeypatch):
    monkeypatch.setenv("ATHENA_DATABASE", "no_such_database")
    handler = _script("lambda_function")
    _put_image(buckets, tmp_path, "images/a.fits")
    reply = handler.lambda_handler({"bucket": "raw", "key": "images/a.fits",
                                    "catalog_bucket": "catalog"})
    assert reply["status"] == "error"
    assert reply["error"].startswith("written, but not registered for Athena: "
                                     "glue:no_such_database.sources_data")


def test_estimate_cost_without_a_deployed_function_says_the_memory_is_assumed(
        mocked_aws, tmp_path, capsys):
    catalog = _images_catalog(tmp_path / "cat", [2.0])
    assert _script("estimate_cost").main(["--catalog", str(catalog)]) == 0
    out = capsys.readouterr().out
    assert "at 1024 MB (assumed; no deployed function read: " in out
    assert "Lambda: 2.0 GB-s and 1 requests" in out


def test_s3_filesystem_takes_the_clients_region(tmp_path, monkeypatch):
    """pyarrow's S3 filesystem (s3:// catalogs in DuckDB, reference catalogs) is built with
    the region the boto3 clients use: --region first, then the env file, then AWS_REGION."""
    env_file = tmp_path / "setup.env"
    env_file.write_text("export AWS_REGION=eu-west-3\n")
    monkeypatch.setenv("SKYSURVEY_ENV_FILE", str(env_file))
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    assert aws.s3_filesystem().region == "eu-west-3"
    try:
        aws.use_region("ap-south-1")
        assert aws.s3_filesystem().region == "ap-south-1"
    finally:
        aws.use_region(None)
    env_file.write_text("")
    assert aws.s3_filesystem().region == "us-east-1"
