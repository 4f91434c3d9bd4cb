"""Step 2: upload into a local folder bucket and into S3 (moto), resume and verify."""

from __future__ import annotations

import boto3
from conftest import draw_fits, load_script

from skysurvey.storage import sha256_file
from skysurvey.upload import find_fits, upload_files


def _script():
    module = load_script("upload_to_s3")
    return module


def _sample(tmp_path, n=2):
    folder = tmp_path / "sample"
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        draw_fits(folder / f"img_{i}.fits", size=32, n_stars=2, seed=i)
    (folder / "notes.txt").write_text("skip me")
    return folder


def test_local_bucket_upload_resume_and_change(tmp_path):
    folder = _sample(tmp_path)
    paths = find_fits(folder)
    assert [p.name for p in paths] == ["img_0.fits", "img_1.fits"]
    bucket = tmp_path / "raw"
    first = upload_files(paths, str(bucket))
    assert [r.status for r in first] == ["uploaded", "uploaded"]
    assert (bucket / "images" / "img_0.fits").read_bytes() == paths[0].read_bytes()
    assert [r.status for r in upload_files(paths, str(bucket))] == ["skipped", "skipped"]
    draw_fits(paths[1], size=32, n_stars=2, seed=99)
    again = upload_files(paths, str(bucket))
    assert [r.status for r in again] == ["skipped", "uploaded"]
    assert sha256_file(bucket / "images" / "img_1.fits") == sha256_file(paths[1])


def test_s3_upload_sets_checksum_and_encryption_then_skips(tmp_path, mocked_aws):
    folder = _sample(tmp_path)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    results = upload_files(find_fits(folder), "s3://raw")
    assert [r.status for r in results] == ["uploaded", "uploaded"]
    head = s3.head_object(Bucket="raw", Key="images/img_0.fits")
    assert head["Metadata"]["sha256"] == sha256_file(folder / "img_0.fits")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/fits"
    body = s3.get_object(Bucket="raw", Key="images/img_1.fits")["Body"].read()
    assert body == (folder / "img_1.fits").read_bytes()
    assert [r.status for r in upload_files(find_fits(folder), "s3://raw")] == ["skipped"] * 2


def test_missing_s3_bucket_fails_each_file_with_one_line(tmp_path, mocked_aws, capsys):
    folder = _sample(tmp_path)
    results = upload_files(find_fits(folder), "s3://no-such-bucket")
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("no-such-bucket" in r.error and "\n" not in r.error for r in results)
    assert _script().main(["--input", str(folder), "--bucket", "s3://no-such-bucket",
                           "--no-progress"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_script_end_to_end_and_usage(tmp_path, capsys):
    folder = _sample(tmp_path)
    script = _script()
    assert script.main(["--input", str(folder), "--bucket", str(tmp_path / "b")]) == 0
    assert "2 uploaded" in capsys.readouterr().out
    assert script.main(["--input", str(folder), "--bucket", str(tmp_path / "b")]) == 0
    assert "2 already there" in capsys.readouterr().out
    assert script.main(["--input", str(tmp_path / "missing")]) == 1
