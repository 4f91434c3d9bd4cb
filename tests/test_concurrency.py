"""Two runs of one image id at the same time: never both catalogs, never a lost one.

An object overwritten while it is processed gives two S3 notifications, so two Lambda runs of
the same image id can overlap; when the versions differ in band or night their files land in
different partitions. The entry (``image_ids/<id>.json``) is claimed by compare-and-swap (S3's
conditional writes, a lock file locally) and re-read after writing, so the run that lost the
race removes its files and retries. The interleavings are made deterministic by a store that
runs the other writer at a chosen moment. The count checked is the one a user sees.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skysurvey import aws, storage
from skysurvey.catalog import entry_key, read_entry, replace_catalog
from skysurvey.errors import TransientStorageError
from skysurvey.queries import run_query
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA
from skysurvey.storage import TMP_PREFIX, LocalStore, S3Store

SOURCE = "s3://raw/images/x.fits"


def _files(night: str, n_sources: int) -> dict[str, bytes]:
    """The catalog of image ``x`` observed on *night*: *n_sources* rows and its record."""
    def parquet(schema, n, values):
        arrays = [pa.array(values[f.name] * n if f.name in values else [None] * n, f.type)
                  for f in schema]
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), sink)
        return sink.getvalue()

    common = {"image_id": ["x"], "band": ["r"], "night": [night]}
    sources = parquet(SOURCES_SCHEMA, n_sources, {**common, "source_id": [0]})
    record = parquet(IMAGES_SCHEMA, 1, {**common, "source_key": [SOURCE],
                                        "n_sources": [n_sources]})
    return {f"sources/band=r/night={night}/x.parquet": sources,
            f"images/band=r/night={night}/x.parquet": record}


class Interleaved:
    """A store that runs *meanwhile* once, just before the first Parquet file is written."""

    def __init__(self, store, meanwhile):
        self.store, self.meanwhile = store, meanwhile

    def __getattr__(self, name):
        return getattr(self.store, name)

    def write_bytes(self, key, data, **kw):
        if key.endswith(".parquet") and self.meanwhile:
            other, self.meanwhile = self.meanwhile, None
            other()
        return self.store.write_bytes(key, data, **kw)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield LocalStore(tmp_path / "cat")
        return
    from moto import mock_aws

    with mock_aws():
        aws.clear_clients()
        aws.client("s3").create_bucket(Bucket="cat")
        yield S3Store("cat")
    aws.clear_clients()


def _parquet_keys(store) -> list[str]:
    if not store.root_exists():
        return []
    return sorted(o.key for o in store.list("") if o.key.endswith(".parquet"))


def test_a_run_overtaken_while_writing_removes_its_files_and_asks_for_a_retry(store, tmp_path):
    """A claims the entry; before A writes, B (the other version: another night) does a whole
    replacement, deleting what A's claim named; A's files land after that deletion. A sees
    B's claim when it re-reads the entry, removes its files and raises a transient error."""
    first, second = _files("2026-03-14", 5), _files("2026-03-20", 7)
    b_ran = []

    def run_b():
        replace_catalog(store, "x", SOURCE, second)
        b_ran.append(True)

    with pytest.raises(TransientStorageError, match="re-processed by another run"):
        replace_catalog(Interleaved(store, run_b), "x", SOURCE, first)
    assert b_ran
    assert _parquet_keys(store) == sorted(second)
    assert read_entry(store, "x")["pending"] == sorted(second)
    if isinstance(store, LocalStore):  # what a user's SQL sees: one image, its 7 rows
        row = run_query("SELECT (SELECT count(*) FROM images) AS images, "
                        "(SELECT count(*) FROM sources) AS rows", str(store.root)).iloc[0]
        assert (row["images"], row["rows"]) == (1, 7)
    # the retry (Lambda's, or the user's rerun) makes A's version the catalog, once
    replace_catalog(store, "x", SOURCE, first)
    assert _parquet_keys(store) == sorted(first)


def test_a_run_that_claims_second_deletes_the_first_run_s_files(store):
    """B claims after A has claimed and written: B's claim counts A's files as earlier files,
    and B deletes them after writing its own; A had finished cleanly before."""
    first, second = _files("2026-03-14", 5), _files("2026-03-20", 7)
    replace_catalog(store, "x", SOURCE, first)
    replace_catalog(store, "x", SOURCE, second)
    assert _parquet_keys(store) == sorted(second)


def test_the_claim_is_a_compare_and_swap(store):
    key = "image_ids/x.json"
    v1 = store.write_bytes_if(key, b"one", version=None)
    assert v1 and store.read_versioned(key) == (b"one", v1)
    assert store.write_bytes_if(key, b"two", version=None) is None  # exists: refused
    v2 = store.write_bytes_if(key, b"two", version=v1)
    assert v2 and v2 != v1
    assert store.write_bytes_if(key, b"three", version=v1) is None  # stale version: refused
    assert store.read_versioned(key) == (b"two", v2)
    assert store.read_versioned("image_ids/none.json") == (None, None)
    store.delete(key)
    assert store.write_bytes_if(key, b"four", version=v2) is None  # gone meanwhile
    assert [o.key for o in store.list("image_ids/")] == []


def test_a_claim_lost_five_times_in_a_row_is_a_transient_error(store, monkeypatch):
    monkeypatch.setattr(type(store), "write_bytes_if", lambda self, *a, **kw: None)
    with pytest.raises(TransientStorageError, match="changed by other runs 5 times"):
        replace_catalog(store, "x", SOURCE, _files("2026-03-14", 5))
    assert _parquet_keys(store) == []


def _hold_lock(lock):
    """A process holding storage._exclusive(*lock*) until killed (started once it holds it)."""
    code = ("import sys, time; from pathlib import Path; from skysurvey import storage; "
            "cm = storage._exclusive(Path(sys.argv[1])); cm.__enter__(); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_local_lock_held_by_a_killed_process_does_not_block_the_next_writer(tmp_path):
    """A run SIGKILLed while it holds an image's lock (a user's kill -9, the OOM killer): the
    next run writes at once (it waited 10 s and failed that image when the lock was a file
    trusted for 60 s); while the holder lives, a writer waits and then gives up."""
    store = LocalStore(tmp_path)
    (tmp_path / "image_ids").mkdir()
    lock = tmp_path / "image_ids" / f"{TMP_PREFIX}x.json.lock.partial"
    holder = _hold_lock(lock)
    try:
        with (pytest.raises(TransientStorageError, match="locked by another process"),
              storage._exclusive(lock, wait=0.2)):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert lock.exists()  # left behind, as a kill leaves it
    start = time.monotonic()
    assert store.write_bytes_if(entry_key("x"), b"{}", version=None)
    assert time.monotonic() - start < 1.0
    assert not lock.exists()
    assert [o.key for o in store.list("image_ids/")] == ["image_ids/x.json"]


def test_without_flock_a_stale_lock_file_is_taken_over(tmp_path, monkeypatch):
    """Where there is no flock (not POSIX): an O_EXCL file, taken over once older than
    LOCK_STALE_SECONDS; a fresh one makes the writer wait, then give up."""
    monkeypatch.setattr(storage, "fcntl", None)
    store = LocalStore(tmp_path)
    (tmp_path / "image_ids").mkdir()
    lock = tmp_path / "image_ids" / f"{TMP_PREFIX}x.json.lock.partial"
    lock.write_bytes(b"")
    old = time.time() - 120
    os.utime(lock, (old, old))
    assert store.write_bytes_if(entry_key("x"), b"{}", version=None)
    assert not lock.exists()
    lock.write_bytes(b"")  # a live lock: the writer waits, then gives up with a transient error
    with (pytest.raises(TransientStorageError, match="locked by another process"),
          storage._exclusive(lock, wait=0.05)):
        pass
    assert [o.key for o in store.list("image_ids/")] == ["image_ids/x.json"]
