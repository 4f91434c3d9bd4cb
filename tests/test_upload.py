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


def test_upload_keeps_relative_paths_so_same_names_never_overwrite(tmp_path, mocked_aws, capsys):
    for seed, night in enumerate(("night1", "night2")):
        (tmp_path / "in" / night).mkdir(parents=True)
        draw_fits(tmp_path / "in" / night / "field.fits", size=32, n_stars=2, seed=seed)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    assert _script().main(["--input", str(tmp_path / "in"), "--bucket", "s3://raw",
                           "--no-progress"]) == 0
    assert "2 uploaded" in capsys.readouterr().out
    for night in ("night1", "night2"):
        body = s3.get_object(Bucket="raw", Key=f"images/{night}/field.fits")["Body"].read()
        assert body == (tmp_path / "in" / night / "field.fits").read_bytes()


def test_upload_refuses_symlinks_out_of_the_folder_by_name(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    draw_fits(tmp_path / "in" / "good.fits", size=32, n_stars=2)
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0")
    (tmp_path / "in" / "passwd.fits").symlink_to(secret)
    assert _script().main(["--input", str(tmp_path / "in"), "--bucket", str(tmp_path / "raw"),
                           "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED {tmp_path / 'in' / 'passwd.fits'}: skipped: symlink to a file outside" in out
    assert sorted(p.name for p in (tmp_path / "raw" / "images").iterdir()) == ["good.fits"]


def test_non_ascii_file_names_upload_with_encoded_metadata(tmp_path, mocked_aws):
    from urllib.parse import unquote

    (tmp_path / "in").mkdir()
    name = "M31 ü Ωmega.fits"
    draw_fits(tmp_path / "in" / name, size=32, n_stars=2)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    results = upload_files(find_fits(tmp_path / "in"), "s3://raw")
    assert [r.status for r in results] == ["uploaded"], results
    head = s3.head_object(Bucket="raw", Key=f"images/{name}")
    assert unquote(head["Metadata"]["source-name"]) == name
    assert head["Metadata"]["source-name"].isascii()


def test_files_sharing_an_image_id_fail_by_name(tmp_path, capsys):
    import gzip

    (tmp_path / "in").mkdir()
    draw_fits(tmp_path / "in" / "x.fits", size=32, n_stars=2)
    (tmp_path / "in" / "x.fits.gz").write_bytes(gzip.compress(
        (tmp_path / "in" / "x.fits").read_bytes()))
    draw_fits(tmp_path / "in" / "y.fits", size=32, n_stars=2)
    assert _script().main(["--input", str(tmp_path / "in"), "--bucket", str(tmp_path / "raw"),
                           "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "1 uploaded" in out and "2 failed" in out
    for name, other in (("x.fits", "x.fits.gz"), ("x.fits.gz", "x.fits")):
        assert (f"FAILED {tmp_path / 'in' / name}: image id 'x' also comes from "
                f"{tmp_path / 'in' / other}") in out
    assert sorted(p.name for p in (tmp_path / "raw" / "images").iterdir()) == ["y.fits"]
