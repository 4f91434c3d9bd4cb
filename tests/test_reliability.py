"""One bad file or one AWS hiccup never costs the rest of the batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from botocore.awsrequest import AWSResponse
from conftest import RawBody, draw_fits, load_script

from skysurvey import aws, runner
from skysurvey.config import REPO_ROOT
from skysurvey.pipeline import PipelineConfig, catalog_image
from skysurvey.queries import run_query
from skysurvey.storage import S3Store

GOOD = ["good_1.fits", "M31 ü field.fits"]


def _bad_folder(folder):
    """Every bad kind of input next to good images; returns {name: expected cause}."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        draw_fits(folder / name, seed=i)
    draw_fits(folder / "no_wcs.fits", seed=7)
    with fits.open(folder / "no_wcs.fits", mode="update") as hdul:
        for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2"):
            hdul[0].header.remove(key, ignore_missing=True)
    draw_fits(folder / "big.fits", size=256, seed=8)
    (folder / "notfits.fits").write_text("hello " * 500)
    (folder / "zero.fits").write_bytes(b"")
    (folder / "truncated.fits").write_bytes((folder / GOOD[0]).read_bytes()[:5000])
    fits.PrimaryHDU(np.ones((3, 32, 32), np.float32)).writeto(folder / "cube.fits")
    fits.PrimaryHDU().writeto(folder / "nodata.fits")
    fits.PrimaryHDU(np.full((32, 32), np.nan, np.float32)).writeto(folder / "nan.fits")
    fits.PrimaryHDU(np.zeros((32, 32), np.float32)).writeto(folder / "allzero.fits")
    fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(folder / "tiny.fits")
    return {"notfits": "not a FITS file", "zero": "empty file", "truncated": "truncated",
            "cube": "3-D data", "nodata": "no image data", "nan": "all NaN",
            "allzero": "constant", "tiny": "too small", "big": "budget"}


# a budget that admits 128x128 images and refuses 256x256 ones
BUDGET = PipelineConfig(max_memory_bytes=150 * 2**20 + 40 * 200 * 200)


def _check(replies, expected_bad, catalog_root=None):
    by_id = {r["image_id"]: r for r in replies}
    assert len(replies) == len(GOOD) + 1 + len(expected_bad)
    for name in [*GOOD, "no_wcs.fits"]:
        assert by_id[name.removesuffix(".fits")]["status"] == "ok", by_id[name[:-5]]
    for image_id, cause in expected_bad.items():
        reply = by_id[image_id]
        assert reply["status"] == "error" and cause in reply["error"], reply
        assert f"{image_id}.fits" in reply["error"] and "\n" not in reply["error"]
    assert runner.exit_status(replies) == 1


def test_local_batch_with_every_bad_kind(tmp_path):
    expected = _bad_folder(tmp_path / "in")
    keys = runner.list_images(str(tmp_path / "in"))
    replies = runner.run_local(str(tmp_path / "in"), keys, str(tmp_path / "cat"), workers=2,
                               config=BUDGET)
    _check(replies, expected)
    files = sorted(p.stem for p in (tmp_path / "cat").rglob("*.parquet"))
    assert files == sorted(2 * [g.removesuffix(".fits") for g in GOOD] + 2 * ["no_wcs"])
    record = pq.read_table(next((tmp_path / "cat" / "images").rglob("no_wcs.parquet")))
    assert record["warnings"].to_pylist() == ["no celestial WCS"]


def test_s3_batch_with_every_bad_kind(tmp_path, mocked_aws):
    expected = _bad_folder(tmp_path / "in")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="cat")
    for path in (tmp_path / "in").iterdir():
        s3.upload_file(str(path), "raw", f"images/{path.name}")
    raw, cat = S3Store("raw", "images"), S3Store("cat")
    replies = [catalog_image(raw, k, cat, BUDGET) for k in runner.list_images("s3://raw/images")]
    _check(replies, expected)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="cat").get("Contents", [])
            if o["Key"].endswith(".parquet")]
    assert len(keys) == 2 * (len(GOOD) + 1)


def test_invoke_script_reports_every_failure_and_exits_1(tmp_path, capsys):
    expected = _bad_folder(tmp_path / "in")
    script = load_script("invoke_lambda")
    assert script.main(["--input", str(tmp_path / "in"), "--catalog", str(tmp_path / "cat"),
                        "--workers", "2", "--no-progress", "--max-memory-mb", "151"]) == 1
    out = capsys.readouterr().out
    assert all(f"{name}.fits" in out for name in expected)
    assert "succeeded             3" in out


def test_reprocessing_is_idempotent_and_never_duplicates(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        draw_fits(folder / f"img_{i}.fits", seed=i)
    keys = runner.list_images(str(folder))
    runner.run_local(str(folder), keys, str(tmp_path / "cat"), workers=1)
    first = {p: p.read_bytes() for p in (tmp_path / "cat" / "sources").rglob("*.parquet")}
    runner.run_local(str(folder), keys, str(tmp_path / "cat"), workers=2)
    second = {p: p.read_bytes() for p in (tmp_path / "cat" / "sources").rglob("*.parquet")}
    assert first == second
    dup = run_query("SELECT image_id, source_id, count(*) AS n FROM sources "
                    "GROUP BY 1, 2 HAVING count(*) > 1", str(tmp_path / "cat"))
    assert dup.empty
    assert not list((tmp_path / "cat").rglob(".tmp-*"))


@pytest.mark.slow
def test_killed_run_restarts_without_duplicates(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(12):
        draw_fits(folder / f"img_{i:02d}.fits", size=256, n_stars=30, seed=i)
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "invoke_lambda.py"), "--input",
           str(folder), "--catalog", str(tmp_path / "cat"), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until some but not all images are done
        done = list((tmp_path / "cat").rglob("images/**/*.parquet"))
        if len(done) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(list((tmp_path / "cat").rglob("images/**/*.parquet")))
    assert 0 < partial < 12
    assert subprocess.run([*cmd, "--only-new"], capture_output=True).returncode == 0
    total = run_query("SELECT count(DISTINCT image_id) AS images, count(*) AS rows, "
                      "count(DISTINCT image_id || '/' || CAST(source_id AS VARCHAR)) AS uniq "
                      "FROM sources", str(tmp_path / "cat"))
    assert total["images"].tolist() == [12]
    assert total["rows"].tolist() == total["uniq"].tolist()



def test_s3_slowdown_and_500s_are_retried_then_succeed(tmp_path, mocked_aws):
    draw_fits(tmp_path / "a.fits")
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="cat")
    s3.upload_file(str(tmp_path / "a.fits"), "raw", "images/a.fits")
    failures = {"n": 0}

    def flaky(request, **kwargs):
        if request.method == "PUT" and failures["n"] < 2:
            failures["n"] += 1
            status, code = (503, "SlowDown") if failures["n"] == 1 else (500, "InternalError")
            body = (f"<Error><Code>{code}</Code><Message>try again</Message></Error>").encode()
            return AWSResponse(request.url, status, {}, RawBody(body))
        return None

    s3.meta.events.register("before-send.s3.PutObject", flaky)
    reply = catalog_image(S3Store("raw", "images"), "a.fits", S3Store("cat"))
    assert failures["n"] == 2
    assert reply["status"] == "ok", reply


def test_permanent_access_denied_fails_only_that_image(tmp_path, mocked_aws):
    for name in ("a.fits", "b.fits"):
        draw_fits(tmp_path / name)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="cat")
    for name in ("a.fits", "b.fits"):
        s3.upload_file(str(tmp_path / name), "raw", f"images/{name}")

    def deny_b(request, **kwargs):
        if request.url.endswith("/images/b.fits"):
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            return AWSResponse(request.url, 403, {}, RawBody(body))
        return None

    s3.meta.events.register("before-send.s3.GetObject", deny_b)
    s3.meta.events.register("before-send.s3.HeadObject", deny_b)
    replies = [catalog_image(S3Store("raw", "images"), k, S3Store("cat")) for k in
               ("a.fits", "b.fits")]
    assert replies[0]["status"] == "ok"
    assert replies[1]["status"] == "error" and "b.fits" in replies[1]["error"]
    assert "denied" in replies[1]["error"].lower() or "403" in replies[1]["error"]
    assert json.dumps(replies)  # replies stay JSON for Lambda
