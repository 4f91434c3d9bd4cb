"""One bad file or one AWS hiccup never costs the rest of the batch."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from botocore.awsrequest import AWSResponse
from conftest import RawBody, draw_fits, load_script

from skysurvey import aws, runner
from skysurvey.config import REPO_ROOT
from skysurvey.errors import StorageError
from skysurvey.pipeline import PipelineConfig, catalog_image
from skysurvey.queries import run_query
from skysurvey.schema import image_id_from_name
from skysurvey.storage import LocalStore, S3Store

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


# --- Nothing a user gives the pipeline is lost, hidden or counted twice (issue 13) -----------

def _invoke(*args) -> int:
    return load_script("invoke_lambda").main([*map(str, args), "--workers", "1", "--no-progress"])


def _counts(catalog) -> dict:
    """Images and rows as every reader sees them, and the rows the image records promise."""
    row = run_query("SELECT (SELECT count(*) FROM sources) AS rows, "
                    "(SELECT count(DISTINCT image_id) FROM sources) AS source_images, "
                    "(SELECT count(*) FROM images) AS images, "
                    "(SELECT sum(n_sources) FROM images) AS promised", str(catalog))
    return {k: int(v) for k, v in row.iloc[0].items()}


def _ids(catalog) -> list[str]:
    return sorted(run_query("SELECT image_id FROM images", str(catalog))["image_id"])


def test_same_file_name_in_two_folders_keeps_both_catalogs(tmp_path, capsys):
    for seed, night in enumerate(("night1", "night2")):
        (tmp_path / "in" / night).mkdir(parents=True)
        draw_fits(tmp_path / "in" / night / "field.fits", seed=seed, n_stars=6 + 4 * seed)
    assert _invoke("--input", tmp_path / "in", "--catalog", tmp_path / "cat") == 0
    assert _ids(tmp_path / "cat") == ["night1__field", "night2__field"]
    counts = _counts(tmp_path / "cat")
    assert counts["rows"] == counts["promised"] and counts["images"] == 2
    capsys.readouterr()
    # --only-new knows the new ids: nothing left to do
    assert _invoke("--input", tmp_path / "in", "--catalog", tmp_path / "cat", "--only-new") == 0
    assert "all 2 images already catalogued" in capsys.readouterr().out


def test_inputs_sharing_an_id_fail_by_name_and_write_nothing(tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "a__b").mkdir(parents=True)
    (folder / "a").mkdir()
    draw_fits(folder / "x.fits", seed=1)
    draw_fits(folder / "ok.fits", seed=2)
    (folder / "x.fits.gz").write_bytes(gzip.compress((folder / "x.fits").read_bytes()))
    draw_fits(folder / "a__b" / "c.fits", seed=3)
    draw_fits(folder / "a" / "b__c.fits", seed=4)
    assert _invoke("--input", folder, "--catalog", tmp_path / "cat") == 1
    out = capsys.readouterr().out
    for name in ("x.fits", "x.fits.gz", "a__b/c.fits", "a/b__c.fits"):
        assert f"{folder / name}: image id" in out
    assert _ids(tmp_path / "cat") == ["ok"]


def test_handler_never_overwrites_a_catalog_from_another_source(tmp_path, mocked_aws):
    draw_fits(tmp_path / "x.fits", seed=1, n_stars=5)
    draw_fits(tmp_path / "y.fits", seed=2, n_stars=15)  # another image, gzipped as x.fits.gz
    (tmp_path / "x.fits.gz").write_bytes(gzip.compress((tmp_path / "y.fits").read_bytes()))
    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in ("raw", "cat"):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(tmp_path / "x.fits"), "raw", "images/x.fits")
    s3.upload_file(str(tmp_path / "x.fits.gz"), "raw", "images/x.fits.gz")
    handler = load_script("lambda_function")
    event = {"bucket": "raw", "key": "images/x.fits", "catalog_bucket": "cat"}
    first = handler.lambda_handler(event)
    assert first["status"] == "ok"
    key = first["catalog_key"].removeprefix("s3://cat/")
    before = s3.get_object(Bucket="cat", Key=key)["Body"].read()
    second = handler.lambda_handler({"bucket": "raw", "key": "images/x.fits.gz",
                                     "catalog_bucket": "cat"})
    assert second["status"] == "error"
    assert "s3://raw/images/x.fits.gz" in second["error"]
    assert "s3://raw/images/x.fits;" in second["error"]
    after = s3.get_object(Bucket="cat", Key=key)["Body"].read()
    assert after == before
    # the same source again is a normal re-processing
    again = handler.lambda_handler(event)
    assert again["status"] == "ok"


HIDDEN = ["_calib.fits", ".dotted.fits", "..fits", ".tmp-x.fits", "%5Fcalib.fits"]


def _hidden_folder(folder):
    folder.mkdir(parents=True)
    for seed, name in enumerate(HIDDEN):
        draw_fits(folder / name, seed=seed, n_stars=4 + seed)
    return sorted(n.removesuffix(".fits") for n in HIDDEN)


def test_names_starting_with_underscore_or_dot_are_catalogued_and_visible(tmp_path):
    ids = _hidden_folder(tmp_path / "in")
    assert _invoke("--input", tmp_path / "in", "--catalog", tmp_path / "cat") == 0
    assert _ids(tmp_path / "cat") == ids
    counts = _counts(tmp_path / "cat")
    assert counts["source_images"] == len(HIDDEN) and counts["rows"] == counts["promised"]
    names = [p.name for p in (tmp_path / "cat").rglob("*.parquet")]
    assert not [n for n in names if n.startswith(("_", "."))]


def test_s3_names_starting_with_underscore_or_dot_end_to_end(tmp_path, moto_server, capsys):
    ids = _hidden_folder(tmp_path / "in")
    (tmp_path / "in" / "night1").mkdir()
    draw_fits(tmp_path / "in" / "night1" / "field.fits", seed=9)
    s3 = boto3.client("s3")
    for bucket in ("raw", "cat"):
        s3.create_bucket(Bucket=bucket)
    upload = load_script("upload_to_s3")
    assert upload.main(["--input", str(tmp_path / "in"), "--bucket", "s3://raw",
                        "--no-progress"]) == 0
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="raw")["Contents"])
    assert keys == sorted(["images/night1/field.fits", *(f"images/{n}" for n in HIDDEN)])
    assert _invoke("--input", "s3://raw/images", "--catalog", "s3://cat") == 0
    assert _ids("s3://cat") == sorted([*ids, "night1__field"])
    counts = _counts("s3://cat")
    assert counts["source_images"] == len(HIDDEN) + 1 and counts["rows"] == counts["promised"]
    capsys.readouterr()
    assert _invoke("--input", "s3://raw/images", "--catalog", "s3://cat", "--only-new") == 0
    assert f"all {len(HIDDEN) + 1} images already catalogued" in capsys.readouterr().out


def test_skipped_inputs_are_named_with_their_cause_and_exit_1(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    draw_fits(folder / "good.fits", seed=1)
    (folder / "truth.csv").write_text("x,y\n")  # not FITS: not a failure
    (folder / "loop.fits").symlink_to(folder / "loop.fits")
    (folder / "gone.fits").symlink_to(folder / "nowhere.fits")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    draw_fits(outside / "secret.fits", seed=2)
    (folder / "out.fits").symlink_to(outside / "secret.fits")
    (folder / "alias").symlink_to(folder)  # a link to a folder inside: not followed, not failed
    os.close(os.open(os.path.join(os.fsencode(folder), b"bad\xff.fits"), os.O_CREAT | os.O_WRONLY))
    assert _invoke("--input", folder, "--catalog", tmp_path / "cat") == 1
    out = capsys.readouterr().out
    assert f"{folder / 'loop.fits'}: skipped: symlink loop" in out
    assert f"{folder / 'gone.fits'}: skipped: broken symlink" in out
    assert f"{folder / 'out.fits'}: skipped: symlink to a file outside the folder" in out
    assert f"{folder}/bad\\udcff.fits: skipped: file name is not valid UTF-8" in out
    assert "1 files not FITS (ignored)" in out
    assert "alias: symlink to a folder inside the folder" in out
    assert "succeeded             1" in out and "failed                4" in out
    assert _ids(tmp_path / "cat") == ["good"]


def test_only_non_fits_extras_are_not_failures(tmp_path):
    (tmp_path / "in").mkdir()
    draw_fits(tmp_path / "in" / "good.fits", seed=1)
    (tmp_path / "in" / "truth.csv").write_text("x,y\n")
    (tmp_path / "in" / "README").write_text("notes")
    assert _invoke("--input", tmp_path / "in", "--catalog", tmp_path / "cat") == 0


def test_terminal_escapes_in_file_names_never_reach_the_terminal_raw(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    evil = "evil\x1b[2J\nline.fits"
    (tmp_path / "in" / evil).write_bytes(b"not a FITS file at all")
    assert _invoke("--input", tmp_path / "in", "--catalog", tmp_path / "cat") == 1
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    failed = [line for line in captured.out.splitlines() if "evil" in line]
    assert len(failed) == 1 and "evil\\x1b[2J\\nline.fits: not a FITS file" in failed[0]


def _reheader(path, **cards):
    with fits.open(path, mode="update") as hdul:
        hdul[0].header.update(cards)


def test_reprocessing_after_a_header_fix_leaves_one_copy(tmp_path):
    (tmp_path / "in").mkdir()
    draw_fits(tmp_path / "in" / "a.fits", seed=1, n_stars=12)
    draw_fits(tmp_path / "in" / "b.fits", seed=2, n_stars=7)
    assert _invoke("--input", tmp_path / "in", "--catalog", tmp_path / "cat") == 0
    once = _counts(tmp_path / "cat")
    _reheader(tmp_path / "in" / "a.fits", FILTER="g")
    _reheader(tmp_path / "in" / "b.fits", **{"DATE-OBS": "2026-04-01T03:00:00"})
    assert _invoke("--input", tmp_path / "in", "--catalog", tmp_path / "cat") == 0
    assert _counts(tmp_path / "cat") == once
    parts = sorted(p.relative_to(tmp_path / "cat").as_posix()
                   for p in (tmp_path / "cat").rglob("*.parquet"))
    assert parts == ["images/band=g/night=2026-03-14/a.parquet",
                     "images/band=r/night=2026-04-01/b.parquet",
                     "sources/band=g/night=2026-03-14/a.parquet",
                     "sources/band=r/night=2026-04-01/b.parquet"]


class _KilledBeforeRecord(LocalStore):
    """A catalog folder whose process dies (BaseException, like SIGKILL) while writing the
    image record: the sources file is already there."""

    def write_bytes(self, key, data, **kw):
        if key.startswith("images/"):
            raise KeyboardInterrupt("killed")
        return super().write_bytes(key, data, **kw)


def test_killed_run_orphans_are_cleaned_by_the_next_run_and_by_repair(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    draw_fits(tmp_path / "in" / "a.fits", seed=1)
    draw_fits(tmp_path / "in" / "b.fits", seed=2)
    raw = LocalStore(tmp_path / "in")
    for key in ("a.fits", "b.fits"):
        with pytest.raises(KeyboardInterrupt):
            catalog_image(raw, key, _KilledBeforeRecord(tmp_path / "cat"))
    orphans = sorted(p.name for p in (tmp_path / "cat" / "sources").rglob("*.parquet"))
    assert orphans == ["a.parquet", "b.parquet"]
    # the header was fixed meanwhile: a's next run lands in another partition, and still
    # removes its orphan
    _reheader(tmp_path / "in" / "a.fits", FILTER="i")
    assert _invoke("--input", tmp_path / "in" / "a.fits", "--catalog", tmp_path / "cat") == 0
    assert not (tmp_path / "cat" / "sources/band=r/night=2026-03-14/a.parquet").exists()
    assert (tmp_path / "cat" / "sources/band=i/night=2026-03-14/a.parquet").exists()
    # b was not processed again: --repair removes its orphan and says so
    capsys.readouterr()
    assert _invoke("--catalog", tmp_path / "cat", "--repair") == 0
    out = capsys.readouterr().out
    assert "removed sources/band=r/night=2026-03-14/b.parquet (sources without an image record)" \
        in out
    counts = _counts(tmp_path / "cat")
    assert counts["images"] == 1 and counts["rows"] == counts["promised"]


def test_repair_keeps_the_newest_copy_of_an_image_in_two_partitions(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    draw_fits(tmp_path / "in" / "a.fits", seed=1)
    assert _invoke("--input", tmp_path / "in", "--catalog", tmp_path / "cat") == 0
    # an older catalog (before image entries): the same image left in another partition
    old = tmp_path / "cat"
    for table in ("sources", "images"):
        src = old / table / "band=r/night=2026-03-14/a.parquet"
        dest = old / table / "band=old/night=2026-03-14/a.parquet"
        dest.parent.mkdir(parents=True)
        table_data = pq.read_table(src)
        if table == "images":
            table_data = table_data.set_column(
                table_data.schema.get_field_index("processed_at"), "processed_at",
                pa.array([datetime(2020, 1, 1)], pa.timestamp("ms")))
        pq.write_table(table_data, dest)
    assert _counts(old)["images"] == 2  # counted twice before the repair
    assert _invoke("--catalog", old, "--repair") == 0
    out = capsys.readouterr().out
    assert "removed images/band=old/night=2026-03-14/a.parquet (older duplicate of " in out
    assert "removed sources/band=old/night=2026-03-14/a.parquet" in out
    counts = _counts(old)
    assert counts["images"] == 1 and counts["rows"] == counts["promised"]


def test_bad_lambda_events_are_error_replies():
    handler = load_script("lambda_function")
    for event in ({"bucket": "raw", "key": 5}, {"bucket": "raw", "key": None},
                  {"bucket": 7, "key": "images/x.fits"}, ["not", "a", "dict"],
                  {"Records": [{"s3": {"bucket": {"name": "raw"}, "object": {"key": 5}}}]}):
        reply = handler.lambda_handler(event)
        assert reply["status"] == "error" and reply["error"].startswith("bad event"), reply
        assert json.dumps(reply)


def test_transient_errors_are_classified_by_error_code():
    from botocore.exceptions import ClientError, ReadTimeoutError

    from skysurvey.errors import TransientStorageError

    def client_error(code, message):
        return ClientError({"Error": {"Code": code, "Message": message}}, "PutObject")

    assert isinstance(aws.translate(client_error("SlowDown", "x"), "k"), TransientStorageError)
    assert isinstance(aws.translate(client_error("InternalError", "x"), "k"),
                      TransientStorageError)
    assert isinstance(aws.translate(ReadTimeoutError(endpoint_url="http://x"), "k"),
                      TransientStorageError)
    denied = aws.translate(client_error("AccessDenied", "SlowDown Throttling InternalError"), "k")
    assert isinstance(denied, StorageError) and not isinstance(denied, TransientStorageError)


def test_a_bug_inside_s3_store_is_not_reported_as_a_storage_error():
    store = S3Store("bucket", client=object())  # no get_object: an AttributeError, a bug
    with pytest.raises(AttributeError):
        store.read_bytes("images/x.fits")


#: Root ignores file permissions: scripts that must meet them run without the capabilities
#: that let root through (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), via util-linux's setpriv.
UNPRIVILEGED = (["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                 "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else [])


def _invoke_unprivileged(*args) -> subprocess.CompletedProcess:
    """invoke_lambda.py in a subprocess that file permissions apply to, even under root."""
    return subprocess.run([*UNPRIVILEGED, sys.executable,
                           str(REPO_ROOT / "scripts" / "invoke_lambda.py"), *map(str, args),
                           "--workers", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=300)


def test_read_only_catalog_is_one_line_before_any_image(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(3):
        draw_fits(tmp_path / "in" / f"img_{i}.fits", seed=i)
    catalog = tmp_path / "cat"
    catalog.mkdir()
    os.chmod(catalog, 0o555)
    result = _invoke_unprivileged("--input", tmp_path / "in", "--catalog", catalog)
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {catalog}: the catalog is not writable")
    assert "img_" not in result.stderr + result.stdout  # no image was measured or named
    assert list(catalog.iterdir()) == []


def test_unreadable_subfolder_is_named_and_fails_the_run(tmp_path):
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    draw_fits(folder / "good.fits", seed=1)
    draw_fits(folder / "locked" / "hidden.fits", seed=2)
    os.chmod(folder / "locked", 0o000)
    try:
        result = _invoke_unprivileged("--input", folder, "--catalog", tmp_path / "cat")
    finally:
        os.chmod(folder / "locked", 0o755)
    assert result.returncode == 1, result
    assert f"{folder / 'locked'}: skipped: unreadable folder (Permission denied)" in result.stdout
    assert "succeeded             1" in result.stdout


def test_input_accepts_a_file_several_files_and_a_glob(tmp_path):
    for night in ("night1", "night2"):
        (tmp_path / "in" / night).mkdir(parents=True)
        draw_fits(tmp_path / "in" / night / "f.fits", seed=len(night))
    draw_fits(tmp_path / "in" / "night1" / "g.fits", seed=5)
    one = runner.find_inputs(str(tmp_path / "in" / "night1" / "f.fits"))
    assert [image_id_from_name(k) for k in one.keys] == ["f"]
    several = runner.find_inputs([str(tmp_path / "in" / n / "f.fits") for n in ("night1",
                                                                                "night2")])
    assert [image_id_from_name(k) for k in several.keys] == ["night1__f", "night2__f"]
    glob = runner.find_inputs(str(tmp_path / "in" / "*" / "*.fits"))
    folder = runner.find_inputs(str(tmp_path / "in"))
    assert glob.keys == folder.keys == ["night1/f.fits", "night1/g.fits", "night2/f.fits"]
    assert _invoke("--input", tmp_path / "in" / "*" / "f.fits", "--catalog",
                   tmp_path / "cat") == 0
    assert _ids(tmp_path / "cat") == ["night1__f", "night2__f"]
    with pytest.raises(StorageError, match="no such file or folder"):
        runner.find_inputs(str(tmp_path / "in" / "missing.fits"))


def test_s3_reprocessing_and_repair_leave_one_copy(tmp_path, mocked_aws, capsys):
    from skysurvey.catalog import repair_catalog

    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in ("raw", "cat"):
        s3.create_bucket(Bucket=bucket)
    handler = load_script("lambda_function")
    event = {"bucket": "raw", "key": "images/night1/a.fits", "catalog_bucket": "cat"}
    for band in ("r", "g"):  # the FILTER keyword fixed between two runs
        draw_fits(tmp_path / "a.fits", seed=1, band=band)
        s3.upload_file(str(tmp_path / "a.fits"), "raw", "images/night1/a.fits")
        assert handler.lambda_handler(event)["status"] == "ok"
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="cat")["Contents"]
                    if o["Key"].endswith(".parquet"))
    assert listed == ["images/band=g/night=2026-03-14/night1__a.parquet",
                      "sources/band=g/night=2026-03-14/night1__a.parquet"]
    # an orphan, as a killed run of the older code would leave it
    s3.copy_object(Bucket="cat", Key="sources/band=z/night=2026-03-14/night1__a.parquet",
                   CopySource={"Bucket": "cat", "Key": listed[1]})
    report = repair_catalog(S3Store("cat"))
    assert report.removed == ["sources/band=z/night=2026-03-14/night1__a.parquet "
                              "(sources without an image record)"]
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="cat")["Contents"]
                  if o["Key"].endswith(".parquet")) == listed


def test_s3_inputs_take_their_ids_below_images_whatever_the_form(mocked_aws):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    for key in ("images/night1/a.fits", "images/night1/b.fits", "images/night2/a.fits"):
        s3.put_object(Bucket="raw", Key=key, Body=b"x")
    for spec, ids in [("s3://raw/images", ["night1__a", "night1__b", "night2__a"]),
                      ("s3://raw/images/night1", ["night1__a", "night1__b"]),
                      ("s3://raw/images/night2/a.fits", ["night2__a"]),
                      ("s3://raw/images/*/a.fits", ["night1__a", "night2__a"])]:
        inputs = runner.find_inputs(spec)
        assert inputs.root == "s3://raw/images"  # as the handler roots S3 notifications
        assert [image_id_from_name(k) for k in inputs.keys] == ids, spec


def test_every_reply_has_the_same_shape():
    from skysurvey import lambda_backend

    handler = load_script("lambda_function")
    shapes = {
        "bad event": handler.lambda_handler({"bucket": "raw"}),
        "bad image": catalog_image(LocalStore("/nonexistent"), "x.fits", LocalStore("/tmp")),
        "collision": runner.split_collisions("/tmp", ["x.fits", "x.fits.gz"])[1][0],
        "worker died": runner._died("x.fits", "killed"),
        "lambda": lambda_backend._reply("x.fits", "error", "x.fits: timeout"),
    }
    expected = {"status", "image_id", "key", "n_sources", "catalog_key", "seconds", "error"}
    assert {name: set(reply) for name, reply in shapes.items()} == dict.fromkeys(shapes,
                                                                                 expected)


def test_catalog_from_before_entries_is_still_guarded_and_repaired(tmp_path):
    import shutil

    for folder, seed in (("in1", 1), ("in2", 2)):
        (tmp_path / folder).mkdir()
        draw_fits(tmp_path / folder / "a.fits", seed=seed, n_stars=5 + 5 * seed)
    cat = LocalStore(tmp_path / "cat")
    assert catalog_image(LocalStore(tmp_path / "in1"), "a.fits", cat)["status"] == "ok"
    shutil.rmtree(tmp_path / "cat" / "image_ids")  # as an older version left the catalog
    other = catalog_image(LocalStore(tmp_path / "in2"), "a.fits", cat)
    assert other["status"] == "error"
    assert f"image id 'a' already holds the catalog of {tmp_path / 'in1' / 'a.fits'}" in \
        other["error"]
    from skysurvey.catalog import read_entry, repair_catalog

    assert repair_catalog(cat).entries_written == 1
    assert read_entry(cat, "a")["source_key"] == str(tmp_path / "in1" / "a.fits")


def test_local_catalog_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    """A catalog folder shared with a group must be readable by it: the atomic write's
    temporary file (mkstemp, 0600) takes the mode any new file gets under the umask."""
    from skysurvey.storage import open_store

    old = os.umask(0o022)
    try:
        store = open_store(tmp_path)
        store.write_bytes("sources/x.parquet", b"data")
        assert (tmp_path / "sources" / "x.parquet").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
