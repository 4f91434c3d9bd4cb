"""HATS export: hats-import writes objects and sources with margins; lsdb opens and
cross-matches them; a second export replaces the first's objects/ and sources/ (and nothing
else); s3:// outputs go through the S3 store. Refused outputs: tests/test_attacks.py."""

from __future__ import annotations

import contextlib
import socket

import numpy as np
import pytest
from test_objects import jitter, read, stars, write_image

from skysurvey.objects import build_objects

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def survey_catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    ra, dec = stars(25, seed=21, spread_arcsec=90)
    for k in range(3):
        write_image(root, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    build_objects(str(root))
    return root


@pytest.fixture(scope="module")
def exported(survey_catalog, tmp_path_factory):
    from skysurvey.hats_export import export_hats

    out = tmp_path_factory.mktemp("export") / "hats"
    with _dask_default_port_taken():
        return out, export_hats(str(survey_catalog), str(out))


@contextlib.contextmanager
def _dask_default_port_taken():
    """Hold dask's default HTTP port 8787, as a second export or test run would."""
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", 8787))
            held.listen()
        except OSError:
            pass  # another process holds it already: the same situation
        yield


def test_export_opens_in_lsdb_and_crossmatches(survey_catalog, exported):
    import lsdb

    out, report = exported
    assert report.rows == {"objects": 25, "sources": 75}
    objects = lsdb.open_catalog(out / "objects")
    sources = lsdb.open_catalog(out / "sources")
    assert objects.margin is not None and sources.margin is not None  # default margins
    assert objects.hc_structure.catalog_info.catalog_type == "object"
    matched = objects.crossmatch(sources, radius_arcsec=0.6, n_neighbors=5,
                                 suffixes=("_obj", "_src"),
                                 suffix_method="all_columns").compute()
    assoc = read(survey_catalog, "associations")
    found = set(zip(matched["object_id_obj"], matched["image_id_src"],
                    matched["source_id_src"], strict=True))
    expected = set(zip(assoc["object_id"], assoc["image_id"], assoc["source_id"], strict=True))
    assert found == expected
    assert np.allclose(matched["mjd_src"].min(), 61130.1)


def test_second_export_replaces_the_first(survey_catalog, exported):
    from skysurvey.hats_export import export_hats

    out, _ = exported
    stale = out / "objects" / "stale.txt"
    stale.write_text("from an older export")
    mine = out / "README.txt"  # a file of the user's beside the export: never touched
    mine.write_text("keep me")
    export_hats(str(survey_catalog), str(out))  # an earlier export's folder: no --force needed
    assert not stale.exists() and mine.read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == [".skysurvey-hats-export", "README.txt",
                                                     "objects", "sources"]


def test_export_to_s3_uploads_through_the_store(survey_catalog, mocked_aws):
    import boto3

    from skysurvey.hats_export import export_hats

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="exports")
    s3.put_object(Bucket="exports", Key="hats/objects/old-file.parquet", Body=b"x")
    export_hats(str(survey_catalog), "s3://exports/hats")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="exports")["Contents"]}
    assert "hats/objects/collection.properties" in keys
    assert "hats/sources/sources/properties" in keys
    assert any(k.startswith("hats/objects/objects_margin/") for k in keys)
    assert "hats/objects/old-file.parquet" not in keys


def test_export_without_objects_is_named(tmp_path):
    from skysurvey.hats_export import ExportError, export_hats

    write_image(tmp_path, "n0", *stars(3, seed=22), mjd=61130.1)
    with pytest.raises(ExportError, match=r"build_objects\.py"):
        export_hats(str(tmp_path), str(tmp_path.parent / f"{tmp_path.name}-hats"))


def test_the_export_leaves_dask_chatter_and_hats_collection_note_out(caplog):
    import logging

    from skysurvey.hats_export import quiet_hats_logs

    def say():
        logging.getLogger("distributed.scheduler").info("State start")
        logging.getLogger("distributed.worker").warning("Worker is at 85% memory")
        logging.warning("Looking for catalog - found collection.")
        logging.warning("something else")

    caplog.set_level(logging.INFO)
    with quiet_hats_logs():
        say()
    quiet = [r.getMessage() for r in caplog.records]
    caplog.clear()
    say()  # and everything comes back afterwards
    assert quiet == ["Worker is at 85% memory", "something else"]
    assert len(caplog.records) == 4
