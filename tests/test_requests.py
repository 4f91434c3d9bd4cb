"""S3 requests counted against moto: no HEAD before a GET, no GET + PUT for a copy.

Every S3 call of the project's client (``aws.client("s3")``, which the stores use) is counted
by operation name through a botocore hook (``before-parameter-build``: once per API call, with
the call's own parameters, so per bucket), and a test states the exact requests a step makes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.awsrequest import AWSResponse
from conftest import RawBody, draw_fits

from skysurvey import aws, storage
from skysurvey import objects as obj
from skysurvey.catalog import entry_key, read_entry, record_source_key, replace_catalog
from skysurvey.errors import ImageIdConflictError, StorageError
from skysurvey.objects import commit as objects_commit
from skysurvey.pipeline import PipelineConfig, catalog_image
from skysurvey.reference import ReferenceSpec
from skysurvey.storage import LocalStore, S3Store, new_file_mode

PARQUET = "application/vnd.apache.parquet"


class Requests:
    """S3 calls by bucket and operation name (``log["cat"]`` is a Counter)."""

    def __init__(self, client):
        self.calls: defaultdict[str, Counter] = defaultdict(Counter)
        client.meta.events.register("before-parameter-build.s3", self._count)

    def _count(self, model, params, **kwargs):
        self.calls[params.get("Bucket", "")][model.name] += 1

    def __getitem__(self, bucket: str) -> Counter:
        return self.calls[bucket]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def s3(mocked_aws):
    client = aws.client("s3")
    for bucket in ("raw", "cat"):
        client.create_bucket(Bucket=bucket)
    return client


@pytest.fixture
def requests(s3):
    return Requests(s3)


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _catalog_files(source_key: str, stem: str = "x") -> dict[str, bytes]:
    return {f"sources/band=r/night=2026-03-14/{stem}.parquet":
            _parquet(pa.table({"source_id": pa.array([0, 1], pa.int32())})),
            f"images/band=r/night=2026-03-14/{stem}.parquet":
            _parquet(pa.table({"source_key": [source_key]}))}


# --- 1. a key that may be missing: one GET, no HEAD ---------------------------------------

def test_read_entry_is_one_get_whether_or_not_the_entry_exists(s3, requests):
    store = S3Store("cat", "survey")
    assert read_entry(store, "x") is None
    assert requests["cat"] == {"GetObject": 1}
    replace_catalog(store, "x", "s3://raw/images/x.fits", _catalog_files("s3://raw/images/x.fits"))
    requests.clear()
    entry = read_entry(store, "x")
    assert entry["source_key"] == "s3://raw/images/x.fits"
    assert entry["pending"] == sorted(_catalog_files("").keys())
    assert requests["cat"] == {"GetObject": 1}


def test_record_source_key_is_one_get(s3, requests):
    store = S3Store("cat")
    key = "images/band=r/night=2026-03-14/x.parquet"
    assert record_source_key(store, key) is None
    store.write_bytes(key, _parquet(pa.table({"source_key": ["s3://raw/images/x.fits"]})))
    requests.clear()
    assert record_source_key(store, key) == "s3://raw/images/x.fits"
    assert requests["cat"] == {"GetObject": 1}


def test_replace_catalog_requests_new_reprocessed_older_and_conflicting(s3, requests):
    store = S3Store("cat")
    files = _catalog_files("s3://raw/images/x.fits")
    # new: the entry, the record at the new keys, the entry again after writing (did another
    # run claim it meanwhile?)
    replace_catalog(store, "x", "s3://raw/images/x.fits", files)
    assert requests["cat"] == {"GetObject": 3, "PutObject": 3}
    requests.clear()
    # in place: the entry before and after; every run claims the entry (a conditional PUT)
    replace_catalog(store, "x", "s3://raw/images/x.fits", files)
    assert requests["cat"] == {"GetObject": 2, "PutObject": 3}
    store.delete(entry_key("x"))  # a catalog from before entries: the record says who wrote it
    requests.clear()
    with pytest.raises(ImageIdConflictError, match=r"the catalog of s3://raw/images/x\.fits;"):
        replace_catalog(store, "x", "s3://raw/images/x.fits.gz",
                        _catalog_files("s3://raw/images/x.fits.gz"))
    assert requests["cat"] == {"GetObject": 2}  # refused without writing
    requests.clear()
    replace_catalog(store, "x", "s3://raw/images/x.fits", files)
    assert requests["cat"] == {"GetObject": 3, "PutObject": 3}
    assert read_entry(store, "x")["source_key"] == "s3://raw/images/x.fits"
    assert {store.read_bytes(k) for k in files} == set(files.values())


def test_catalog_image_on_s3_makes_no_head_on_the_catalog(tmp_path, s3, requests):
    draw_fits(tmp_path / "a.fits", n_stars=6)
    s3.upload_file(str(tmp_path / "a.fits"), "raw", "images/a.fits")
    raw, cat = S3Store("raw", "images"), S3Store("cat")
    requests.clear()
    first = catalog_image(raw, "a.fits", cat)
    assert first["status"] == "ok", first
    # + 1 GetObject without a configured reference: the catalog's recorded one (none here)
    assert requests["cat"] == {"GetObject": 4, "PutObject": 3}
    requests.clear()
    again = catalog_image(raw, "a.fits", cat)
    assert again["status"] == "ok" and again["n_sources"] == first["n_sources"] >= 5
    assert requests["cat"] == {"GetObject": 3, "PutObject": 3}
    requests.clear()
    assert catalog_image(raw, "a.fits", cat, PipelineConfig(
        reference=ReferenceSpec.parse("none")))["status"] == "ok"
    assert requests["cat"] == {"GetObject": 2, "PutObject": 3}  # told: nothing to look up
    key = first["catalog_key"].removeprefix("s3://cat/")
    assert pq.read_table(io.BytesIO(cat.read_bytes(key))).num_rows == first["n_sources"]


def test_s3_read_bytes_or_none_missing_key_bucket_and_present(s3, requests):
    store = S3Store("cat", "p")
    assert store.read_bytes_or_none("nope.json") is None
    store.write_bytes("yes.json", b"{}")
    assert store.read_bytes_or_none("yes.json") == b"{}"
    assert requests["cat"] == {"GetObject": 2, "PutObject": 1}
    with pytest.raises(StorageError, match=r"s3://gone/k: the bucket does not exist"):
        S3Store("gone").read_bytes_or_none("k")
    with pytest.raises(StorageError, match=r"s3://cat/p/nope.json: no such object"):
        store.read_bytes("nope.json")


def test_local_read_bytes_or_none_missing_is_none_other_failures_are_errors(tmp_path):
    store = LocalStore(tmp_path)
    (tmp_path / "a.json").write_bytes(b"{}")
    assert store.read_bytes_or_none("a.json") == b"{}"
    assert store.read_bytes_or_none("missing.json") is None
    assert store.read_bytes_or_none("a.json/below") is None  # a file where a folder would be
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert store.read_bytes_or_none("dangling") is None
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(StorageError, match=r"folder\.json: Is a directory"):
        store.read_bytes_or_none("folder.json")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(StorageError, match=r"loop: symlink loop"):
        store.read_bytes_or_none("loop")
    with pytest.raises(StorageError, match=r"missing\.json: no such file"):
        store.read_bytes("missing.json")
    # the catalog reads through it: no entry is None, a folder in its place is named
    assert read_entry(store, "x") is None
    (tmp_path / entry_key("x")).mkdir(parents=True)
    with pytest.raises(StorageError, match=r"image_ids/x\.json: Is a directory"):
        read_entry(store, "x")


# --- 2. copies stay inside S3 --------------------------------------------------------------

def test_s3_copy_is_one_copy_object_keeping_type_metadata_and_encryption(s3, requests):
    store = S3Store("cat", "survey")
    data = _parquet(pa.table({"v": list(range(100))}))
    store.write_bytes("staged/a.parquet", data, content_type=PARQUET)
    requests.clear()
    store.copy("staged/a.parquet", "table/a.parquet", size=len(data))
    assert requests["cat"] == {"CopyObject": 1}
    head = s3.head_object(Bucket="cat", Key="survey/table/a.parquet")
    assert head["ContentType"] == PARQUET and head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert store.read_bytes("table/a.parquet") == data == store.read_bytes("staged/a.parquet")
    requests.clear()
    store.copy("staged/a.parquet", "table/b.parquet")  # size unknown: boto3 asks first
    assert requests["cat"] == {"HeadObject": 1, "CopyObject": 1}
    with pytest.raises(StorageError, match=r"s3://cat/survey/nope \(copy to x\): no such object"):
        store.copy("nope", "x", size=1)


def test_s3_copy_above_the_copy_object_limit_goes_in_parts(s3, requests, monkeypatch):
    monkeypatch.setattr(storage, "COPY_OBJECT_MAX", 1024)  # stands for 5 GiB
    monkeypatch.setattr(storage, "MULTIPART", 5 * 1024 * 1024)  # S3's smallest part
    store = S3Store("cat")
    data = os.urandom(6 * 1024 * 1024)
    store.write_bytes("big.bin", data, metadata={"origin": "test"})
    requests.clear()
    store.copy("big.bin", "copy.bin", size=len(data))
    calls = requests["cat"]
    assert calls["UploadPartCopy"] == 2 and calls["CopyObject"] == 0
    assert not calls["GetObject"] and not calls["PutObject"] and not calls["UploadPart"]
    assert store.read_bytes("copy.bin") == data
    meta = s3.head_object(Bucket="cat", Key="copy.bin")["Metadata"]
    assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "origin": "test"}


def test_local_copy_is_atomic_and_names_a_missing_source(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.write_bytes("staged/a.parquet", b"new")
    store.write_bytes("table/a.parquet", b"old")
    seen = []
    real_replace = os.replace

    def replace(src, dst):  # the destination is only ever replaced whole
        seen.append((os.path.basename(src), (tmp_path / "table/a.parquet").read_bytes()))
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    store.copy("staged/a.parquet", "table/a.parquet", size=3)
    monkeypatch.undo()
    assert seen and seen[0][0].startswith(storage.TMP_PREFIX) and seen[0][1] == b"old"
    assert store.read_bytes("table/a.parquet") == b"new" == store.read_bytes("staged/a.parquet")
    assert (tmp_path / "table/a.parquet").stat().st_mode & 0o777 == new_file_mode()
    store.copy("staged/a.parquet", "other/b.parquet")  # a new folder
    assert [i.key for i in store.list()] == ["other/b.parquet", "staged/a.parquet",
                                             "table/a.parquet"]
    with pytest.raises(StorageError, match=r"staged/nope: no such file"):
        store.copy("staged/nope", "table/nope")
    assert not (tmp_path / "table/nope").exists()


def _stage(store, prefix: str, files: dict[str, bytes], touched=None) -> None:
    for key, data in files.items():
        store.write_bytes(f"{prefix}/{key}", data,
                          content_type=PARQUET if key.endswith(".parquet") else None)
    store.write_bytes(f"{prefix}/_complete", json.dumps({"touched": touched}).encode())


def test_objects_commit_on_s3_copies_server_side(s3, requests):
    store = S3Store("cat", "survey")
    order = 6
    new = {obj.unit_key(t, 100, order): _parquet(pa.table({"object_id": [i, i + 1]}))
           for i, t in enumerate(("objects", "objects/_stats", "associations"))}
    new[obj.STATE_KEY] = b'{"layout": 2}'
    stale = obj.unit_key("objects", 200, order)  # a unit the build no longer has
    for key in [*new, stale]:
        store.write_bytes(key, b"previous build", content_type=PARQUET)
    prefix = f"{obj.STAGING}/tok"
    _stage(store, prefix, new)
    requests.clear()
    objects_commit._commit(store, prefix)
    calls = requests["cat"]
    assert calls["CopyObject"] == len(new) + 1 == 5  # + the swap marker (obj.SWAP_KEY)
    assert calls["GetObject"] == 1  # the _complete marker; no staged file is read
    assert not calls["PutObject"] and not calls["HeadObject"]
    assert {i.key for i in store.list()} == set(new)
    for key, data in new.items():
        assert store.read_bytes(key) == data
        head = s3.head_object(Bucket="cat", Key=f"survey/{key}")
        assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert head["ServerSideEncryption"] == "AES256"
        assert (head["ContentType"] == PARQUET) == key.endswith(".parquet")


def test_objects_commit_on_s3_keeps_the_units_an_incremental_build_did_not_touch(s3):
    store = S3Store("cat")
    order = 6
    kept, rebuilt = obj.unit_key("objects", 300, order), obj.unit_key("objects", 100, order)
    store.write_bytes(kept, b"unit 300")
    store.write_bytes(rebuilt, b"unit 100 before")
    prefix = f"{obj.STAGING}/tok"
    _stage(store, prefix, {rebuilt: b"unit 100 after"}, touched=[100])
    objects_commit._commit(store, prefix)
    assert store.read_bytes(kept) == b"unit 300"
    assert store.read_bytes(rebuilt) == b"unit 100 after"
    assert [i.key for i in store.list(obj.STAGING)] == []


def test_objects_commit_on_s3_stops_when_the_staging_cannot_be_listed(s3):
    store = S3Store("cat")
    current = obj.unit_key("objects", 100, 6)
    store.write_bytes(current, b"current tables")
    prefix = f"{obj.STAGING}/tok"
    _stage(store, prefix, {current: b"new tables"})

    def deny_staging_listing(request, **kwargs):
        if "prefix=.objects-staging" in request.url:
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            return AWSResponse(request.url, 403, {}, RawBody(body))
        return None

    s3.meta.events.register("before-send.s3.ListObjectsV2", deny_staging_listing)
    with pytest.raises(StorageError, match="access denied"):
        objects_commit._commit(store, prefix)
    assert store.read_bytes(current) == b"current tables"  # not taken for an empty build
    s3.meta.events.unregister("before-send.s3.ListObjectsV2", deny_staging_listing)
    objects_commit._commit(store, prefix)  # the next run finishes it
    assert store.read_bytes(current) == b"new tables"
