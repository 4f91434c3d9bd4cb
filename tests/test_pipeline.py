"""One image through the shared core (pipeline.catalog_image) and many through the local runner."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import draw_fits

from skysurvey import __version__, runner
from skysurvey.errors import StorageError, TransientStorageError
from skysurvey.pipeline import PipelineConfig, catalog_image
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA
from skysurvey.storage import LocalStore


@pytest.fixture
def stores(tmp_path):
    (tmp_path / "raw" / "images").mkdir(parents=True)
    return LocalStore(tmp_path / "raw" / "images"), LocalStore(tmp_path / "catalog")


def _parquet_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))


def test_one_image_gives_both_tables_at_the_layout_keys(stores):
    raw, catalog = stores
    truth = draw_fits(raw.root / "field_r_001.fits", n_stars=10, seed=1)
    reply = catalog_image(raw, "field_r_001.fits", catalog)

    assert reply["status"] == "ok", reply
    assert reply["error"] is None
    assert reply["image_id"] == "field_r_001"
    assert _parquet_files(catalog.root) == [
        "images/band=r/night=2026-03-14/field_r_001.parquet",
        "sources/band=r/night=2026-03-14/field_r_001.parquet",
    ]
    assert reply["catalog_key"].endswith("sources/band=r/night=2026-03-14/field_r_001.parquet")
    sources = pq.read_table(catalog.root / "sources/band=r/night=2026-03-14/field_r_001.parquet")
    images = pq.read_table(catalog.root / "images/band=r/night=2026-03-14/field_r_001.parquet")
    assert sources.schema.equals(SOURCES_SCHEMA)
    assert images.schema.equals(IMAGES_SCHEMA)
    assert reply["n_sources"] == sources.num_rows == images["n_sources"][0].as_py()
    # every injected star found within a pixel (bright, isolated stars on a 128 px image)
    xy = np.column_stack([sources["x"].to_numpy(), sources["y"].to_numpy()])
    for x, y, _ in truth:
        assert np.hypot(*(xy - (x, y)).T).min() < 1.0
    row = images.to_pylist()[0]
    assert row["source_key"] == str(raw.root / "field_r_001.fits")
    assert row["pipeline_version"] == __version__
    assert row["width"] == row["height"] == 128
    assert row["seconds"] > 0
    assert row["processed_at"] is not None


def test_reprocessing_replaces_the_files_with_identical_sources(stores):
    raw, catalog = stores
    draw_fits(raw.root / "a.fits", seed=2)
    assert catalog_image(raw, "a.fits", catalog)["status"] == "ok"
    path = catalog.root / "sources/band=r/night=2026-03-14/a.parquet"
    first = path.read_bytes()
    assert catalog_image(raw, "a.fits", catalog)["status"] == "ok"
    assert path.read_bytes() == first  # deterministic measurement, deterministic bytes
    assert len(_parquet_files(catalog.root)) == 2


def test_a_bad_image_is_an_error_reply_and_writes_nothing(stores):
    raw, catalog = stores
    (raw.root / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b"x" * 50)
    reply = catalog_image(raw, "broken.fits", catalog)
    assert reply["status"] == "error"
    assert reply["n_sources"] == 0 and reply["catalog_key"] is None
    assert "broken.fits" in reply["error"] and "\n" not in reply["error"]
    assert not catalog.root.exists() or _parquet_files(catalog.root) == []


def test_a_missing_object_is_an_error_reply(stores):
    raw, catalog = stores
    reply = catalog_image(raw, "nope.fits", catalog)
    assert reply["status"] == "error"
    assert reply["error"].endswith("nope.fits: no such file")


class _FailingImagesStore(LocalStore):
    """A real local store whose second write (the image record) fails, as a full disk would."""

    def write_bytes(self, key, data, **kw):
        if key.startswith("images/"):
            raise StorageError(self.url(key), "No space left on device")
        return super().write_bytes(key, data, **kw)


def test_a_failed_write_undoes_the_sources_file(stores, tmp_path):
    raw, _ = stores
    catalog = _FailingImagesStore(tmp_path / "catalog")
    draw_fits(raw.root / "b.fits", seed=3)
    reply = catalog_image(raw, "b.fits", catalog)
    assert reply["status"] == "error"
    assert "No space left on device" in reply["error"]
    assert _parquet_files(catalog.root) == []  # no sources file without its image record


class _ThrottledStore(LocalStore):
    def write_bytes(self, key, data, **kw):
        raise TransientStorageError(self.url(key), "SlowDown: Please reduce your request rate")


class _DeniedStore(LocalStore):
    def write_bytes(self, key, data, **kw):  # a message that merely mentions a transient word
        raise StorageError(self.url(key), "access denied (InternalError in the policy name)")


def test_transient_errors_raise_only_when_asked(stores, tmp_path):
    raw, _ = stores
    draw_fits(raw.root / "c.fits", seed=4)
    catalog = _ThrottledStore(tmp_path / "catalog")
    assert catalog_image(raw, "c.fits", catalog)["status"] == "error"
    with pytest.raises(TransientStorageError, match="SlowDown"):
        catalog_image(raw, "c.fits", catalog, raise_transient=True)
    # classified by type (from the botocore error code), not by words in the message
    denied = catalog_image(raw, "c.fits", _DeniedStore(tmp_path / "c2"), raise_transient=True)
    assert denied["status"] == "error" and "access denied" in denied["error"]


def test_memory_budget_refuses_before_measuring(stores):
    raw, catalog = stores
    draw_fits(raw.root / "d.fits", seed=5)
    reply = catalog_image(raw, "d.fits", catalog, PipelineConfig(max_memory_bytes=1000))
    assert reply["status"] == "error"
    assert "d.fits" in reply["error"] and "MB" in reply["error"]


def test_run_local_in_a_pool_keeps_going_past_bad_images(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    for i in range(3):
        draw_fits(raw / "images" / f"img_{i}.fits", seed=10 + i, band="gi"[i % 2])
    (raw / "images" / "zero.fits").write_bytes(b"")
    (raw / "images" / "notes.txt").write_text("not an image")
    keys = runner.list_images(str(raw / "images"))
    assert keys == [f"img_{i}.fits" for i in range(3)] + ["zero.fits"]

    seen = []
    replies = runner.run_local(str(raw / "images"), keys, str(tmp_path / "cat"), workers=2,
                               on_done=seen.append)
    assert [r["key"] for r in replies] == keys  # in the order asked, whatever the finish order
    assert [r["status"] for r in replies] == ["ok", "ok", "ok", "error"]
    assert len(seen) == 4
    assert "zero.fits" in replies[-1]["error"]
    assert runner.exit_status(replies) == 1
    assert runner.catalogued_image_ids(str(tmp_path / "cat")) == {"img_0", "img_1", "img_2"}

    table = runner.summary_table(replies, seconds=2.0)
    assert "succeeded" in table and "Failed images:" in table and "zero.fits" in table
    n_sources = sum(r["n_sources"] for r in replies)
    assert f"{n_sources:,}" in table


def test_listing_a_missing_folder_is_an_error_not_an_empty_list(tmp_path):
    with pytest.raises(StorageError, match="folder does not exist"):
        runner.list_images(str(tmp_path / "missing"))
    assert runner.catalogued_image_ids(str(tmp_path / "no-catalog-yet")) == set()


def test_exit_status_counts_queued_as_success():
    assert runner.exit_status([{"status": "ok"}, {"status": "queued"}]) == 0
    assert runner.exit_status([{"status": "ok"}, {"status": "error"}]) == 1


def test_summary_does_not_count_queued_invocations_as_succeeded():
    """An async invocation is accepted, not catalogued: no query shows it yet."""
    replies = [{"status": "ok", "n_sources": 3}, {"status": "queued", "n_sources": 0},
               {"status": "queued", "n_sources": 0}]
    rows = dict(line.rsplit(None, 1) for line in runner.summary_table(replies, 1.0).splitlines()
                if line.startswith(("succeeded", "queued")))
    assert rows == {"succeeded": "1", "queued (async)": "2"}
