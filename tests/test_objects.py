"""Objects: association across images, incremental builds, HEALPix borders, bad input.

Most tests write small source catalogs directly (no images), with known true positions; the
slow test at the end runs the whole pipeline on the synthetic multi-night survey and checks the
correctness targets against its truth.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skysurvey import objects as obj
from skysurvey import storage
from skysurvey.objects import BuildConfig, ObjectsError, build_objects
from skysurvey.objects import commit as objects_commit
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA

RA0, DEC0 = 150.1, 2.2


def write_image(root: Path, image_id: str, ra, dec, *, mjd: float, band: str = "r",
                mag=None, mag_err=None, has_wcs: bool = True, processed: str = "2026-05-01",
                version: str = "0.2.0", night: str | None = None, size_deg: float = 0.05,
                flags=None, centre: tuple[float, float] = (RA0, DEC0)) -> None:
    """One image's ``sources`` and ``images`` files, as the handler writes them."""
    n = len(ra)
    night = night or f"2026-04-{int(mjd - 61130) + 1:02d}"
    sources = {f.name: pa.nulls(n, f.type) for f in SOURCES_SCHEMA}
    sources.update(
        image_id=pa.array([image_id] * n), source_id=pa.array(np.arange(n), pa.int32()),
        ra=pa.array(np.asarray(ra, float) if has_wcs else [None] * n, pa.float64()),
        dec=pa.array(np.asarray(dec, float) if has_wcs else [None] * n, pa.float64()),
        mag=pa.array(np.full(n, 20.0) if mag is None else mag, pa.float64()),
        mag_err=pa.array(np.full(n, 0.02) if mag_err is None else mag_err, pa.float64()),
        snr=pa.array(np.full(n, 50.0)), fwhm=pa.array(np.full(n, 4.0)),
        flags=pa.array(np.zeros(n, np.int32) if flags is None else flags, pa.int32()))
    image = {f.name: None for f in IMAGES_SCHEMA}
    scale = 0.25
    image.update(image_id=image_id, has_wcs=has_wcs, n_sources=n, mjd=mjd,
                 ra_center=centre[0] if has_wcs else None,
                 dec_center=centre[1] if has_wcs else None,
                 width=int(size_deg * 3600 / scale), height=int(size_deg * 3600 / scale),
                 pixel_scale=scale if has_wcs else None, pipeline_version=version,
                 processed_at=datetime.fromisoformat(processed), filter=band)
    for table, data in (("sources", pa.table(sources, schema=SOURCES_SCHEMA)),
                        ("images", pa.Table.from_pylist([image], schema=IMAGES_SCHEMA))):
        path = root / table / f"band={band}" / f"night={night}" / f"{image_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, path)


def stars(n: int, seed: int = 1, spread_arcsec: float = 60.0, min_sep: float = 5.0):
    """*n* true positions at least *min_sep* apart around (RA0, DEC0)."""
    rng = np.random.default_rng(seed)
    ra, dec = [], []
    while len(ra) < n:
        r = RA0 + rng.uniform(-1, 1) * spread_arcsec / 3600 / np.cos(np.radians(DEC0))
        d = DEC0 + rng.uniform(-1, 1) * spread_arcsec / 3600
        if all(obj.separation_arcsec(r, d, a, b) > min_sep for a, b in zip(ra, dec, strict=True)):
            ra.append(r)
            dec.append(d)
    return np.array(ra), np.array(dec)


def jitter(ra, dec, seed: int, sigma_arcsec: float = 0.1):
    rng = np.random.default_rng(seed)
    cosd = np.cos(np.radians(dec))
    return (ra + rng.normal(0, sigma_arcsec, len(ra)) / 3600 / cosd,
            dec + rng.normal(0, sigma_arcsec, len(ra)) / 3600)


#: the rows of each table in a fixed order (DuckDB scans files in parallel)
ORDER = {"objects": "object_id", "objects_data": "object_id",
         "object_photometry": "object_id, band",
         "associations": "object_id, image_id, source_id"}


def read(root, table: str):
    """A table as a user queries it: SQL on DuckDB through skysurvey.queries' tables and views
    (``associations`` keeps only the images with a record), as query_with_athena.py runs it."""
    from skysurvey.queries import run_query

    return run_query(f"SELECT * FROM {table} ORDER BY {ORDER[table]}", str(root))


def users_see(root) -> dict[str, int]:
    """What a user counts with SQL: rows of each table, and their distinct keys."""
    from skysurvey.queries import run_query

    sql = ("SELECT (SELECT count(*) FROM objects) AS objects, "
           "(SELECT count(DISTINCT object_id) FROM objects) AS object_ids, "
           "(SELECT count(*) FROM associations) AS associations, "
           "(SELECT count(*) FROM (SELECT DISTINCT image_id, source_id FROM associations)) "
           "AS detections, "
           "(SELECT count(*) FROM object_photometry) AS photometry, "
           "(SELECT count(*) FROM (SELECT DISTINCT object_id, band FROM object_photometry)) "
           "AS object_bands")
    return {k: int(v) for k, v in run_query(sql, str(root)).iloc[0].items()}


def assert_visible_once(root, report) -> None:
    """Succeeded means: every object and link the build reports is seen by SQL, once."""
    seen = users_see(root)
    assert seen["objects"] == seen["object_ids"] == report.n_objects, seen
    assert seen["associations"] == seen["detections"] == report.n_associations, seen
    assert seen["photometry"] == seen["object_bands"], seen


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for t in obj.TABLES for p in sorted((root / t).rglob("*")) if p.is_file()}


def test_same_stars_on_three_nights_are_three_detections_of_each_object(tmp_path):
    ra, dec = stars(12)
    for k in range(3):
        write_image(tmp_path, f"img{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and report.n_objects == 12 and report.n_associations == 36
    assert_visible_once(tmp_path, report)
    objects = read(tmp_path, "objects")
    assert (objects["n_detections"] == 3).all() and (objects["n_nights"] == 3).all()
    assert not objects["transient_candidate"].any()
    assert objects["object_id"].is_unique
    assoc = read(tmp_path, "associations")
    assert assoc.groupby("object_id")["image_id"].nunique().eq(3).all()
    assert assoc["separation_arcsec"].max() < 0.6
    # mean positions land near the truth (errors ~0.1"/sqrt(3))
    sep = obj.separation_arcsec(np.sort(objects["ra"]), objects.sort_values("ra")["dec"],
                                np.sort(ra), dec[np.argsort(ra)])
    assert sep.max() < 0.3
    assert objects["ra_err"].notna().all()
    assert (objects["hpx5"] == obj.healpix(objects["ra"], objects["dec"], 5)).all()
    assert (objects["_healpix_29"] == obj.healpix(objects["ra"], objects["dec"], 29)).all()


def test_an_object_never_takes_two_sources_of_one_image(tmp_path):
    ra, dec = np.array([RA0]), np.array([DEC0])
    write_image(tmp_path, "a", ra, dec, mjd=61130.1)
    # next image: two sources 0.4" either side of the object, both within the 1" radius
    off = 0.4 / 3600
    write_image(tmp_path, "b", [RA0 - off, RA0 + off * 1.2], [DEC0, DEC0], mjd=61131.1)
    build_objects(str(tmp_path))
    assoc = read(tmp_path, "associations")
    assert len(assoc) == 3
    assert assoc.groupby("object_id")["image_id"].apply(lambda s: s.is_unique).all()
    assert assoc["object_id"].nunique() == 2
    # the build's own flag (objects_data; the objects view shows the forced verdict)
    objects = read(tmp_path, "objects_data").set_index("object_id")
    # the nearer source joined the object seen before; the other one is new, one night only
    nearer = assoc[(assoc["image_id"] == "b") & (assoc["source_id"] == 0)]["object_id"].item()
    assert objects.loc[nearer, "n_detections"] == 2
    assert objects["transient_candidate"].sum() == 1


def test_incremental_night_keeps_ids_and_rerun_changes_nothing(tmp_path):
    ra, dec = stars(15, seed=3)
    for k in range(2):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    build_objects(str(tmp_path))
    before = read(tmp_path, "objects").set_index("object_id")
    # a new night with the same stars and a transient
    tra, tdec = np.r_[ra, RA0 + 20 / 3600], np.r_[dec, DEC0 - 20 / 3600]
    write_image(tmp_path, "n2", *jitter(tra, tdec, 5), mjd=61132.1)
    report = build_objects(str(tmp_path))
    assert report.n_new_images == 1 and report.n_new_objects == 1
    assert_visible_once(tmp_path, report)
    after = read(tmp_path, "objects_data").set_index("object_id")  # the build's own flag
    assert set(before.index) <= set(after.index)
    assert (after.loc[before.index, "n_detections"] == 3).all()
    new = after.drop(before.index)
    assert len(new) == 1 and new["transient_candidate"].item()
    # the old links are kept as they were
    assoc = read(tmp_path, "associations")
    assert len(assoc) == 46 and not assoc.duplicated(["image_id", "source_id"]).any()
    # nothing new: same ids, same bytes, nothing rewritten
    files = tree_bytes(tmp_path)
    mtimes = {p: (tmp_path / p).stat().st_mtime_ns for p in files}
    again = build_objects(str(tmp_path))
    assert again.status == "unchanged"
    assert_visible_once(tmp_path, again)  # the reply counts what is there, not what changed
    assert tree_bytes(tmp_path) == files
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in files} == mtimes


def test_reprocessed_image_replaces_its_own_associations(tmp_path):
    ra, dec = stars(10, seed=4)
    for k in range(3):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    build_objects(str(tmp_path))
    ids_before = set(read(tmp_path, "objects")["object_id"])
    # n1 reprocessed by another pipeline version: one star fewer, sources renumbered
    r1, d1 = jitter(ra, dec, 11)
    write_image(tmp_path, "n1", r1[::-1][:-1], d1[::-1][:-1], mjd=61131.1, version="0.3.0",
                processed="2026-06-01")
    report = build_objects(str(tmp_path))
    assert report.n_redone_images == 1 and report.n_new_objects == 0
    assert_visible_once(tmp_path, report)
    assert any("pipeline versions" in n for n in report.notes)
    assoc = read(tmp_path, "associations")
    assert len(assoc) == 29 and not assoc.duplicated(["image_id", "source_id"]).any()
    assert set(read(tmp_path, "objects")["object_id"]) == ids_before
    # each object still holds one source per image, the reprocessed one re-linked by position
    n1 = assoc[assoc["image_id"] == "n1"]
    assert n1["separation_arcsec"].max() < 0.6 and n1["object_id"].is_unique


def test_failed_unit_leaves_previous_tables_and_next_run_completes(tmp_path):
    ra, dec = stars(8, seed=5)
    write_image(tmp_path, "n0", *jitter(ra, dec, 0), mjd=61130.1)
    build_objects(str(tmp_path))
    files = tree_bytes(tmp_path)
    write_image(tmp_path, "n1", *jitter(ra, dec, 1), mjd=61131.1)

    def crashing(tasks):
        replies = obj.run_units_local(tasks)  # the units write their staged files...
        return [*replies[:-1], {"status": "error", "unit": tasks[-1].unit,
                                "error": "unit 1: the Lambda timed out"}]  # ...one fails
    report = build_objects(str(tmp_path), runner=crashing)
    assert report.status == "error" and "timed out" in report.errors[0]
    assert tree_bytes(tmp_path) == files  # previous version, whole and alone
    assert not (tmp_path / obj.STAGING).exists()
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and report.n_new_images == 1
    assert (read(tmp_path, "objects")["n_detections"] == 2).all()
    assert_visible_once(tmp_path, report)


def test_build_interrupted_during_the_swap_is_finished_by_the_next_run(tmp_path, monkeypatch):
    ra, dec = stars(8, seed=6)
    write_image(tmp_path, "n0", *jitter(ra, dec, 0), mjd=61130.1)
    build_objects(str(tmp_path))
    write_image(tmp_path, "n1", *jitter(ra, dec, 1), mjd=61131.1)

    def killed(store, prefix, listing=None):
        raise KeyboardInterrupt  # the process dies after the _complete marker
    monkeypatch.setattr(objects_commit, "_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        build_objects(str(tmp_path))
    assert (read(tmp_path, "objects")["n_detections"] == 1).all()  # still the old version
    monkeypatch.undo()
    # an unfinished (unmarked) staging folder next to it is discarded
    (tmp_path / obj.STAGING / "stale" / "objects").mkdir(parents=True)
    report = build_objects(str(tmp_path))
    assert any("finished the swap" in n for n in report.notes)
    assert any("discarded an unfinished build" in n for n in report.notes)
    assert report.status == "unchanged"  # the finished swap already holds night n1
    assert (read(tmp_path, "objects")["n_detections"] == 2).all()
    assert not (tmp_path / obj.STAGING).exists()


def test_objects_on_healpix_unit_borders_are_neither_split_nor_duplicated(tmp_path):
    # a 6" grid over 3' x 3': order-12 units are ~52" wide, so dozens of stars sit within
    # an arcsec of a border and their detections fall on both sides of it
    step = 6.0 / 3600
    grid = np.arange(-15, 16) * step
    dec = (DEC0 + grid[:, None] + 0 * grid[None, :]).ravel()
    ra = (RA0 + grid[None, :] / np.cos(np.radians(DEC0)) + 0 * grid[:, None]).ravel()
    for k in range(4):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k, 0.12), mjd=61130.1 + k)
    sources_unit = {}
    for k in range(4):
        t = pq.read_table(next((tmp_path / "sources").rglob(f"n{k}.parquet")))
        sources_unit[k] = obj.healpix(t["ra"].to_numpy(), t["dec"].to_numpy(), 12)
    straddling = (np.vstack(list(sources_unit.values())) != sources_unit[0]).any(axis=0)
    assert straddling.sum() >= 10  # the test means something
    report = build_objects(str(tmp_path), BuildConfig(unit_order=12, workers=2))
    assert report.n_units >= 9
    assert_visible_once(tmp_path, report)
    objects, assoc = read(tmp_path, "objects"), read(tmp_path, "associations")
    assert len(objects) == len(ra) and objects["object_id"].is_unique
    assert len(assoc) == 4 * len(ra) and not assoc.duplicated(["image_id", "source_id"]).any()
    assert (objects["n_detections"] == 4).all()
    # each true star is one object: the 4 detections of source i share one object id
    assert (assoc.groupby("source_id")["object_id"].nunique() == 1).all()
    # and each object sits in the file of the unit that holds its mean position
    files = [f for f in (tmp_path / "objects").rglob("*.parquet") if not f.name.startswith("_")]
    for f in files:
        unit = int(f.stem.split("-")[1])
        t = pq.read_table(f)
        assert (obj.healpix(t["ra"].to_numpy(), t["dec"].to_numpy(), 12) == unit).all()


def test_bad_input_is_named_and_nothing_is_lost(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ObjectsError, match="catalog without images"):
        build_objects(str(tmp_path / "empty"))
    with pytest.raises(ObjectsError, match="no catalog folder"):
        build_objects(str(tmp_path / "missing"))
    ra, dec = stars(6, seed=8)
    write_image(tmp_path, "g0", *jitter(ra, dec, 0), mjd=61130.1, band="g", mag=np.full(6, 21.0))
    write_image(tmp_path, "r0", *jitter(ra, dec, 1), mjd=61130.12, band="r")
    write_image(tmp_path, "nowcs", ra, dec, mjd=61131.1, has_wcs=False)
    report = build_objects(str(tmp_path))
    assert report.n_images_without_wcs == 1
    assert any("without WCS" in n and "nowcs" in n for n in report.notes)
    assoc = read(tmp_path, "associations")
    assert "nowcs" not in set(assoc["image_id"]) and len(assoc) == 12
    phot = read(tmp_path, "object_photometry")
    assert sorted(phot["band"].unique()) == ["g", "r"] and len(phot) == 12
    assert np.allclose(phot[phot["band"] == "g"]["mean_mag"], 21.0)


def test_object_table_of_an_older_version_keeps_its_ids(tmp_path):
    ra, dec = stars(6, seed=9)
    write_image(tmp_path, "n0", *jitter(ra, dec, 0), mjd=61130.1)
    build_objects(str(tmp_path))
    old = read(tmp_path, "objects")
    assoc = read(tmp_path, "associations")
    # rewrite as an older version would have: one flat file, fewer columns, no build record
    for table in obj.TABLES:
        for p in (tmp_path / table).rglob("*"):
            if p.is_file():
                p.unlink()
    (tmp_path / "objects" / "part-0.parquet").parent.mkdir(exist_ok=True)
    pq.write_table(pa.table({"object_id": old["object_id"], "ra": old["ra"], "dec": old["dec"],
                             "n_detections": old["n_detections"]}),
                   tmp_path / "objects" / "part-0.parquet")
    pq.write_table(pa.Table.from_pandas(assoc.drop(columns="hpx5"), preserve_index=False),
                   tmp_path / "associations" / "part-0.parquet")
    write_image(tmp_path, "n1", *jitter(ra, dec, 1), mjd=61131.1)
    report = build_objects(str(tmp_path))
    assert any("older version" in n for n in report.notes)
    assert_visible_once(tmp_path, report)
    new = read(tmp_path, "objects")
    assert set(new["object_id"]) == set(old["object_id"])
    assert (new["n_detections"] == 2).all()
    assert json.loads((tmp_path / obj.STATE_KEY).read_text())["layout"] == obj.LAYOUT


def test_radius_change_needs_rebuild_and_rebuild_renumbers(tmp_path):
    ra, dec = stars(5, seed=10)
    write_image(tmp_path, "n0", ra, dec, mjd=61130.1)
    build_objects(str(tmp_path))
    write_image(tmp_path, "n1", ra, dec, mjd=61131.1)
    with pytest.raises(ObjectsError, match="--rebuild"):
        build_objects(str(tmp_path), BuildConfig(radius_arcsec=2.0))
    report = build_objects(str(tmp_path), BuildConfig(radius_arcsec=2.0, rebuild=True))
    assert report.status == "ok" and report.n_objects == 5


def test_a_rebuild_at_another_unit_order_reports_no_dropped_object(tmp_path):
    """--rebuild starts over: no object of the previous tables is 'dropped' (it counted every
    object of the old order's files as lost, with a note blaming removed images)."""
    ra, dec = stars(20, seed=29, spread_arcsec=150)
    for k in range(2):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, size_deg=0.1)
    build_objects(str(tmp_path), BuildConfig(unit_order=11))
    report = build_objects(str(tmp_path), BuildConfig(rebuild=True))
    assert report.status == "ok" and report.unit_order != 11 and report.n_objects == 20
    assert report.n_dropped_objects == 0 and not any("dropped" in n for n in report.notes)
    assert_visible_once(tmp_path, report)


def test_chi2_threshold_matches_tabulated_quantiles():
    # chi2 upper quantiles (tables): dof 9 at p=1e-3: 27.877; dof 19 at p=1e-3: 43.820
    assert obj.chi2_threshold(np.array([9]), 1e-3)[0] == pytest.approx(27.877, rel=0.02)
    assert obj.chi2_threshold(np.array([19]), 1e-3)[0] == pytest.approx(43.820, rel=0.01)


def test_variable_star_is_flagged_and_constant_star_is_not(tmp_path):
    rng = np.random.default_rng(12)
    ra, dec = stars(40, seed=12)
    for k in range(10):
        mags = 19.0 + rng.normal(0, 0.02, 40)
        mags[0] += 0.3 * np.sin(2 * np.pi * k / 7.3)  # object 0 varies (0.3 mag)
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, mag=mags)
    build_objects(str(tmp_path))
    assoc = read(tmp_path, "associations")
    objects = read(tmp_path, "objects").set_index("object_id")
    star0 = assoc[(assoc["image_id"] == "n0") & (assoc["source_id"] == 0)]["object_id"].item()
    assert objects.loc[star0, "variable"]
    assert objects["variable"].sum() == 1
    phot = read(tmp_path, "object_photometry").set_index("object_id")
    assert phot.loc[star0, "scatter"] == pytest.approx(0.3 / np.sqrt(2), rel=0.25)


def test_unit_event_reply_and_bad_event(tmp_path):
    ra, dec = stars(4, seed=13)
    write_image(tmp_path, "n0", ra, dec, mjd=61130.1)
    assert obj.handle_unit_event({"task": "objects_unit"})["status"] == "error"
    captured = []
    build_objects(str(tmp_path), runner=lambda ts: captured.extend(ts) or
                  [obj.handle_unit_event(json.loads(json.dumps(t.event()))) for t in ts])
    reply = obj.handle_unit_event(json.loads(json.dumps(captured[0].event())))
    assert reply["status"] == "ok" and reply["n_objects"] == 4 and reply["error"] is None
    assert all(k.startswith(obj.STAGING) for k in reply["keys"])


def test_build_objects_script(tmp_path, capsys):
    from conftest import load_script

    script = load_script("build_objects")
    ra, dec = stars(4, seed=14)
    write_image(tmp_path, "n0", ra, dec, mjd=61130.1)
    assert script.main(["--catalog", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "objects" in out and "4" in out
    assert script.main(["--catalog", str(tmp_path / "nope")]) == 1
    assert "no catalog folder" in capsys.readouterr().err


@pytest.mark.slow
def test_survey_targets(tmp_path):
    """The correctness targets on the synthetic multi-night survey, through the pipeline."""
    from skysurvey.runner import list_images, run_local
    from skysurvey.synth_survey import evaluate_objects, write_survey

    survey, catalog = tmp_path / "survey", tmp_path / "catalog"
    write_survey(survey)
    keys = list_images(str(survey))
    replies = run_local(str(survey), keys, str(catalog), workers=2)
    assert all(r["status"] == "ok" for r in replies)
    build_objects(str(catalog), BuildConfig(workers=1))
    score = evaluate_objects(str(catalog), survey)
    assert score["duplicate_objects"] == score["duplicate_associations"] == 0
    assert score["unassociated_detections"] == 0
    assert score["isolated_seen_twice"] >= 150 and score["variables"] >= 20
    assert score["one_object_fraction"] >= 0.99
    assert score["mixed_fraction"] <= 0.01
    assert score["variable_recovery"] >= 0.90
    assert score["bright_constant"] >= 40 and score["constant_false_positive"] <= 0.02
    # before forced photometry the objects view claims no transient (n_nights = 1 was 93%
    # false); the forced rule's figures: tests/test_variability.py
    assert score["transient_recovery"] == 0.0


def _truth_files(survey: Path, ra, dec, image_ids) -> Path:
    """The truth evaluate_objects reads (as synth_survey writes it), for write_image catalogs:
    every star constant, isolated, drawn in every image at its true position."""
    import pandas as pd

    (survey / "truth").mkdir(parents=True)
    true_id = np.arange(len(ra))
    pd.DataFrame({"true_id": true_id, "kind": "star", "ra": ra, "dec": dec, "mag_r": 19.0,
                  "amplitude": 0.0, "transient_night": -1}).to_csv(
        survey / "truth" / "objects.csv", index=False)
    for image_id in image_ids:
        pd.DataFrame({"true_id": true_id, "ra": ra, "dec": dec, "flux": 1000.0}).to_csv(
            survey / "truth" / f"{image_id}.csv", index=False)
    return survey


def test_the_survey_score_counts_what_users_see(tmp_path):
    """The scorer reads the tables through the users' SQL views: a stray copy of a table file
    shows in the score as in every query, and so does an image record gone missing."""
    import shutil

    from skysurvey.synth_survey import evaluate_objects

    catalog = tmp_path / "catalog"
    ra, dec = stars(12, seed=28)
    for k in range(2):
        write_image(catalog, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    survey = _truth_files(tmp_path / "survey", ra, dec, ["n0", "n1"])
    build_objects(str(catalog))
    score = evaluate_objects(str(catalog), survey)
    assert score["objects"] == score["isolated_seen_twice"] == 12
    assert score["one_object_fraction"] == 1.0 and score["mixed_fraction"] == 0.0
    assert score["duplicate_objects"] == score["duplicate_associations"] == 0
    assert score["unassociated_detections"] == 0
    for table in ("objects", "associations"):  # one unit: one file per table, copied
        (unit_file,) = (catalog / table).rglob("k*.parquet")
        shutil.copy(unit_file, unit_file.with_name(f"{unit_file.stem} (1).parquet"))
    score = evaluate_objects(str(catalog), survey)
    assert score["objects"] == 24 and score["duplicate_objects"] == 12
    assert score["duplicate_associations"] == 24
    build_objects(str(catalog))  # removes the copies
    score = evaluate_objects(str(catalog), survey)
    assert score["objects"] == 12 and score["duplicate_objects"] == 0
    assert score["duplicate_associations"] == 0
    # n1's record deleted (a re-run killed between its two files): users see n0 only
    next((catalog / "images").rglob("n1.parquet")).unlink()
    score = evaluate_objects(str(catalog), survey)
    assert score["isolated_seen_twice"] == 0 and score["unassociated_detections"] == 0


def test_named_queries_on_objects(tmp_path):
    from skysurvey.queries import get_named, run_named

    ra, dec = stars(30, seed=15, spread_arcsec=120)
    for k in range(3):
        mags = np.full(30, 20.0) + (0.5 * (k - 1) if k else 0) * (np.arange(30) == 0)
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, mag=mags)
    build_objects(str(tmp_path))
    objects = read(tmp_path, "objects")
    # cone: exactly the objects within the radius (brute force), nearest first
    c_ra, c_dec, radius = RA0 + 0.005, DEC0 - 0.004, 45.0
    cone = run_named("cone", str(tmp_path), (c_ra, c_dec, radius))
    dist = obj.separation_arcsec(c_ra, c_dec, objects["ra"], objects["dec"])
    assert set(cone["object_id"]) == set(objects["object_id"][dist <= radius])
    assert len(cone) >= 3 and cone["distance_arcsec"].is_monotonic_increasing
    assert np.allclose(np.sort(cone["distance_arcsec"]), np.sort(dist[dist <= radius]))
    # the pruning ranges cover the cone and are bound as parameters, not pasted into the SQL
    bound = get_named("cone").bind((c_ra, c_dec, radius))
    assert len(bound) == 3 + 4 + 2 * obj.CONE_RANGES and "?" in get_named("cone").sql
    lows, highs = np.array(bound[7::2]), np.array(bound[8::2])
    inside = objects["_healpix_29"].to_numpy()[dist <= radius]
    assert all(((lows <= h) & (h <= highs)).any() for h in inside)
    # light curve: one row per detection, in time order, with the calibrated magnitude
    oid = int(cone["object_id"].iloc[0])
    lc = run_named("light_curve", str(tmp_path), (oid,))
    assert len(lc) == 3 and lc["mjd"].is_monotonic_increasing
    assert set(lc.columns) >= {"mjd", "band", "mag", "mag_err", "flags"}
    variables = run_named("variables", str(tmp_path))
    assoc = read(tmp_path, "associations")
    star0 = assoc[(assoc["image_id"] == "n0") & (assoc["source_id"] == 0)]["object_id"].item()
    assert list(variables["object_id"].unique()) == [star0]
    default_lc = run_named("light_curve", str(tmp_path))  # -1: the top variable object
    assert (default_lc["object_id"] == star0).all() and len(default_lc) == 3
    assert run_named("transients", str(tmp_path), (1,)).empty


def test_crossmatch_reference_query(tmp_path, monkeypatch):
    from skysurvey.queries import run_named

    ra, dec = stars(10, seed=16)
    write_image(tmp_path, "n0", ra, dec, mjd=61130.1)
    build_objects(str(tmp_path))
    ref = tmp_path / "reference.parquet"
    cosd = np.cos(np.radians(dec[:5]))
    pq.write_table(pa.table({"ra": ra[:5] + 0.3 / 3600 / cosd, "dec": dec[:5],
                             "gmag": np.arange(5.0)}), ref)
    monkeypatch.setenv("REFERENCE_CATALOG", str(ref))
    out = run_named("crossmatch_reference", str(tmp_path), (1.0,))
    assert len(out) == 5 and np.allclose(out["distance_arcsec"], 0.3, atol=0.01)
    assert run_named("crossmatch_reference", str(tmp_path), (0.2,)).empty
    # any format the calibration reads, position columns renamed to ra/dec
    csv = tmp_path / "reference.csv"
    csv.write_text("RA_ICRS,DE_ICRS,gmag\n" + "".join(
        f"{r + 0.3 / 3600 / c:.10f},{d:.10f},{m}\n" for r, d, c, m in zip(
            ra[:5], dec[:5], cosd, range(5), strict=True)))
    monkeypatch.setenv("REFERENCE_CATALOG", str(csv))
    assert len(run_named("crossmatch_reference", str(tmp_path), (1.0,))) == 5


def test_an_unreadable_reference_is_named_in_a_warning(tmp_path, monkeypatch, caplog):
    from skysurvey.queries import run_named

    ra, dec = stars(3, seed=17)
    write_image(tmp_path, "n0", ra, dec, mjd=61130.1)
    build_objects(str(tmp_path))
    monkeypatch.setenv("REFERENCE_CATALOG", str(tmp_path / "missing.parquet"))
    assert run_named("crossmatch_reference", str(tmp_path), (1.0,)).empty
    assert "missing.parquet" in caplog.text and "reference" in caplog.text


def test_survey_plots(tmp_path):
    import matplotlib.pyplot as plt

    from skysurvey import plots
    from skysurvey.queries import run_query

    rng = np.random.default_rng(17)
    ra, dec = stars(20, seed=17)
    for k in range(6):
        mags = 19.0 + rng.normal(0, 0.02, 20)
        mags[:2] += 0.4 * np.sin(k)  # two variables
        for band in ("g", "r"):
            write_image(tmp_path, f"n{k}{band}", *jitter(ra, dec, 2 * k + (band == "r")),
                        mjd=61130.1 + k + 0.01 * (band == "r"), mag=mags, band=band)
    build_objects(str(tmp_path))
    lc = obj.most_variable_light_curves(str(tmp_path), n=3)
    assert lc["object_id"].nunique() == 2 and len(lc) == 24
    fig = plots.plot_light_curves(lc)
    assert len(fig.axes) == 2  # one panel per object, each 2 bands with error bars
    assert [len(a.containers) for a in fig.axes] == [2, 2]
    phot = run_query("SELECT p.*, o.variable FROM object_photometry p JOIN objects o "
                     "ON o.object_id = p.object_id", str(tmp_path))
    fig2 = plots.plot_variability(phot)
    assert "flagged variable (2 objects)" in [t.get_text() for t in
                                               fig2.axes[0].get_legend().get_texts()]
    fig3 = plots.plot_object_map(read(tmp_path, "objects"))
    assert fig3.axes[0].collections[0].get_array().max() == 12
    with pytest.raises(plots.NothingToPlot, match="build_objects"):
        plots.plot_object_map(read(tmp_path, "objects")[:0])
    plt.close("all")


class _LambdaInProcess:
    """The Lambda service's wire format (JSON in, JSON out) around the real handler."""

    def __init__(self):
        from conftest import load_script

        self.handler = load_script("lambda_function").lambda_handler
        self.calls = 0

    def invoke(self, FunctionName, InvocationType, Payload):  # boto3's argument names
        import io

        self.calls += 1
        reply = self.handler(json.loads(Payload))
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(reply).encode())}


def test_units_through_the_lambda_handler(tmp_path):
    ra, dec = stars(30, seed=18, spread_arcsec=150)
    for k in range(2):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, size_deg=0.1)
    client = _LambdaInProcess()
    report = build_objects(str(tmp_path), BuildConfig(unit_order=11),
                           runner=lambda ts: obj.run_units_lambda(ts, "fn", client=client))
    assert report.status == "ok" and client.calls == report.n_units > 1
    assert report.n_objects == 30 and len(read(tmp_path, "associations")) == 60

    class Failing(_LambdaInProcess):
        def invoke(self, FunctionName, InvocationType, Payload):
            import io
            return {"StatusCode": 200, "FunctionError": "Unhandled",
                    "Payload": io.BytesIO(b'{"errorMessage": "Task timed out after 900 s"}')}
    write_image(tmp_path, "n2", *jitter(ra, dec, 2), mjd=61132.1, size_deg=0.1)
    failed = build_objects(str(tmp_path), runner=lambda ts: obj.run_units_lambda(
        ts, "fn", client=Failing()))
    assert failed.status == "error" and "Task timed out" in failed.errors[0]
    assert (read(tmp_path, "objects")["n_detections"] == 2).all()  # previous tables intact


def test_build_on_s3_catalog(tmp_path, moto_server):
    ra, dec = stars(8, seed=19)
    local = tmp_path / "cat"
    for k in range(2):
        write_image(local, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    store = _s3_survey(moto_server)
    _upload(local, store)
    report = build_objects("s3://cat/survey")
    assert report.status == "ok" and report.n_objects == 8
    keys = [i.key for i in store.list("")]
    assert obj.STATE_KEY in keys and not [k for k in keys if k.startswith(obj.STAGING)]
    assert sum(k.startswith("associations/hpx5=") for k in keys) == 1
    write_image(local, "n2", *jitter(ra, dec, 2), mjd=61132.1)
    _upload(local, store, lambda name: name == "n2.parquet")
    again = build_objects("s3://cat/survey")
    assert again.n_new_images == 1 and again.n_new_objects == 0
    assert_visible_once("s3://cat/survey", again)  # the users' SQL over S3 (pyarrow + DuckDB)
    assert build_objects("s3://cat/survey").status == "unchanged"
    (unit_file,) = [k for k in keys if k.startswith("objects/hpx5=") and "/k" in k]
    store.copy(unit_file, unit_file.replace(".parquet", ".parquet.bak"))  # a backup, read too
    assert users_see("s3://cat/survey")["objects"] == 16
    repaired = build_objects("s3://cat/survey")
    assert repaired.status == "ok" and any(".parquet.bak" in n for n in repaired.notes)
    assert_visible_once("s3://cat/survey", repaired)


@pytest.mark.parametrize("caller", ["library", "script"])
def test_a_build_registers_its_partitions_in_glue(tmp_path, moto_server, caller):
    """DESIGN: partitions are registered as they are written (Athena sees the new objects
    without a repair step): build_objects() does it, so the notebook's call does too."""
    import boto3
    from conftest import load_script

    from skysurvey import athena

    ra, dec = stars(8, seed=21)
    local = tmp_path / "cat"
    for k in range(2):
        write_image(local, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    store = _s3_survey(moto_server)
    _upload(local, store)
    glue = boto3.client("glue", endpoint_url=moto_server)
    glue.create_database(DatabaseInput={"Name": "astronomy"})
    for folder in ("objects", "object_photometry", "associations"):
        glue.create_table(DatabaseName="astronomy", TableInput=athena.glue_table_input(
            athena.TABLES[folder], "s3://cat/survey"))
    if caller == "library":
        assert build_objects("s3://cat/survey").status == "ok"
    else:
        assert load_script("build_objects").main(["--catalog", "s3://cat/survey"]) == 0
    written = {k.split("/")[1] for k in (i.key for i in store.list("objects/"))
               if k.split("/")[1].startswith("hpx5=")}
    assert written
    for folder in ("objects", "object_photometry", "associations"):
        name = athena.TABLES[folder].name
        parts = glue.get_partitions(DatabaseName="astronomy", TableName=name)["Partitions"]
        assert {f"hpx5={p['Values'][0]}" for p in parts} == written, folder


def test_sources_outside_the_image_footprint_fail_the_build_by_name(tmp_path):
    ra, dec = stars(30, seed=20, spread_arcsec=150)
    write_image(tmp_path, "n0", ra, dec, mjd=61130.1, size_deg=0.1)
    build_objects(str(tmp_path), BuildConfig(unit_order=11))
    # an images record claiming a 36" field while its sources spread over 5'
    write_image(tmp_path, "small", ra, dec, mjd=61131.1, size_deg=0.01)
    report = build_objects(str(tmp_path))
    assert report.status == "error"
    assert any(e.startswith("small: ") and "outside the footprint" in e
               for e in report.errors), report.errors
    assert (read(tmp_path, "objects")["n_detections"] == 1).all()  # nothing half-written


def test_incremental_statistics_equal_a_full_rebuild(tmp_path):
    import shutil

    rng = np.random.default_rng(23)
    ra, dec = stars(25, seed=23)
    inc = tmp_path / "inc"
    for k in range(4):
        mags = 19.0 + rng.normal(0, 0.03, 25) + 0.3 * np.sin(k) * (np.arange(25) < 3)
        write_image(inc, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, mag=mags,
                    band="gr"[k % 2])
        report = build_objects(str(inc))  # one night at a time: the merge path from night 2
    assert report.status == "ok" and report.n_new_images == 1
    full = tmp_path / "full"
    shutil.copytree(inc / "sources", full / "sources")
    shutil.copytree(inc / "images", full / "images")
    build_objects(str(full))
    a, b = read(inc, "objects"), read(full, "objects")
    assert len(a) == len(b) == 25
    cols = ["ra", "dec", "ra_err", "n_detections", "n_nights", "first_mjd", "last_mjd"]
    assert np.allclose(a.sort_values("ra")[cols], b.sort_values("ra")[cols], rtol=0, atol=1e-9)
    assert list(a.sort_values("ra")["variable"]) == list(b.sort_values("ra")["variable"])
    pa_, pb = read(inc, "object_photometry"), read(full, "object_photometry")
    num = ["n", "mean_mag", "mean_mag_err", "scatter", "chi2_reduced"]
    key = ["band", "mean_mag"]
    assert np.allclose(pa_.sort_values(key)[num], pb.sort_values(key)[num], atol=1e-9)
    assert len(read(inc, "associations")) == len(read(full, "associations")) == 100


def test_incremental_night_on_part_of_the_sky_keeps_the_other_units(tmp_path):
    ra, dec = stars(40, seed=24, spread_arcsec=150)
    for k in range(2):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, size_deg=0.1)
    first = build_objects(str(tmp_path), BuildConfig(unit_order=11))
    assert first.n_units > 4
    before = read(tmp_path, "objects").set_index("object_id")
    # the new night covers only the stars east of the centre
    east = ra > RA0
    write_image(tmp_path, "n2", *jitter(ra[east], dec[east], 2), mjd=61132.1, size_deg=0.045,
                centre=(RA0 + 0.021, DEC0))
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and report.n_units < first.n_units  # only touched units ran
    assert report.n_objects == 40 and report.n_associations == 80 + east.sum()
    assert_visible_once(tmp_path, report)
    after = read(tmp_path, "objects").set_index("object_id")
    assert set(after.index) == set(before.index)
    assert sorted(after["n_detections"]) == sorted([2] * (~east).sum() + [3] * east.sum())
    assert len(read(tmp_path, "associations")) == 80 + east.sum()


def test_removed_images_drop_their_objects_by_count(tmp_path):
    ra, dec = stars(10, seed=25, spread_arcsec=150)
    east = ra > RA0
    write_image(tmp_path, "west", ra[~east], dec[~east], mjd=61130.1, size_deg=0.045,
                centre=(RA0 - 0.021, DEC0))
    write_image(tmp_path, "east", ra[east], dec[east], mjd=61130.2, size_deg=0.045,
                centre=(RA0 + 0.021, DEC0))
    build_objects(str(tmp_path), BuildConfig(unit_order=11))
    for path in tmp_path.rglob("east.parquet"):
        path.unlink()
    report = build_objects(str(tmp_path))
    assert report.n_removed_images == 1
    assert report.n_dropped_objects == east.sum() and report.n_objects == (~east).sum()
    assert_visible_once(tmp_path, report)
    assert any("were dropped" in n for n in report.notes)
    assert len(read(tmp_path, "objects")) == (~east).sum()


def _largest_unit_file(folder: Path) -> Path:
    return max(folder.rglob("k*.parquet"), key=lambda f: pq.read_metadata(f).num_rows)


def test_a_stray_copy_of_a_table_file_is_counted_by_users_until_a_build_removes_it(tmp_path):
    """Every Parquet reader (pyarrow, DuckDB, Athena) reads every file of a table's folders:
    a copy left beside a unit file (a file manager's "(1)", an `aws s3 cp` backup) makes users
    count its rows twice. A build, even one with nothing new to associate, leaves exactly the
    files it wrote (it used to answer 'unchanged' and keep the copy)."""
    import shutil

    ra, dec = stars(30, seed=26, spread_arcsec=150)
    for k in range(2):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, size_deg=0.1)
    first = build_objects(str(tmp_path), BuildConfig(unit_order=11))
    assert_visible_once(tmp_path, first)
    unit_file = _largest_unit_file(tmp_path / "objects")
    copy = unit_file.with_name(f"{unit_file.stem} (1).parquet")
    shutil.copy(unit_file, copy)
    n_copied = pq.read_metadata(unit_file).num_rows
    seen = users_see(tmp_path)  # what a user sees now: some objects twice
    assert seen["objects"] == 30 + n_copied and seen["object_ids"] == 30
    again = build_objects(str(tmp_path))
    assert again.status == "ok" and again.n_units == 0  # no unit ran, the copy went
    assert any("removed 1 file" in n and copy.name in n for n in again.notes), again.notes
    assert_visible_once(tmp_path, again)
    assert not copy.exists() and unit_file.exists()
    assert build_objects(str(tmp_path)).status == "unchanged"


def test_an_incremental_build_does_not_carry_a_misplaced_copy_over(tmp_path):
    """A unit file copied into another partition's folder has a unit file's name: the
    incremental build linked it into the new tables with the untouched units' files."""
    import shutil

    ra, dec = stars(40, seed=27, spread_arcsec=150)
    for k in range(2):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, size_deg=0.1)
    build_objects(str(tmp_path), BuildConfig(unit_order=11))
    west = min((tmp_path / "associations").rglob("k*.parquet"),  # the westmost unit's file
               key=lambda f: obj.pixel_centre(obj.unit_of_key(f.name), 11)[0])
    before = read(tmp_path, "objects")
    misplaced = tmp_path / "associations" / "hpx5=0" / west.name
    misplaced.parent.mkdir()
    shutil.copy(west, misplaced)
    east = ra > RA0  # the new night covers the east only: the west units are carried over
    write_image(tmp_path, "n2", *jitter(ra[east], dec[east], 2), mjd=61132.1, size_deg=0.045,
                centre=(RA0 + 0.021, DEC0))
    report = build_objects(str(tmp_path))
    assert report.n_new_images == 1 and report.n_units > 0
    assert_visible_once(tmp_path, report)
    assert not misplaced.exists() and len(read(tmp_path, "objects")) == len(before)


def test_neighbours_of_a_pixel_with_seven_neighbours():
    # a corner of base pixel 0 at order 12 has 7 neighbours: astropy-healpix returns -1 for
    # the missing one and warns (an error under pytest; was a crash of the unit near it)
    corner = int("01" * 12, 2)
    near = obj.neighbours(np.array([corner]), 12)
    assert near.shape == (9, 1) and (near == -1).sum() == 1
    assert obj.in_region(np.array([corner << 6]), 15, corner, 12).all()


def test_a_second_build_while_one_runs_is_refused_and_touches_nothing(tmp_path):
    """Two builds at once: the second would discard the first's staging area (an unfinished
    build, as it sees it) and the first would swap in incomplete tables. The build lock makes
    the second fail by name while the first runs; the first ends with its tables visible once."""
    ra, dec = stars(6, seed=21)
    for k in range(3):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    second = []

    def runner(tasks):  # the units have staged their files when the second build starts
        replies = obj.run_units_local(tasks)
        staged = sorted((tmp_path / obj.STAGING).rglob("*"))
        with pytest.raises(ObjectsError, match="another build is running") as refused:
            build_objects(str(tmp_path))
        second.append(str(refused.value))
        assert staged and sorted((tmp_path / obj.STAGING).rglob("*")) == staged  # untouched
        return replies

    report = build_objects(str(tmp_path), runner=runner)
    assert report.status == "ok" and report.n_objects == 6
    assert str(tmp_path / obj.LOCK) in second[0]
    assert_visible_once(tmp_path, report)
    assert not (tmp_path / obj.LOCK).exists()  # released
    assert build_objects(str(tmp_path)).status == "unchanged"  # and free again


def test_the_lock_of_a_killed_build_is_taken_over(tmp_path):
    ra, dec = stars(4, seed=22)
    write_image(tmp_path, "n0", ra, dec, mjd=61130.1)
    stale = {"since": datetime(2026, 1, 1).timestamp(), "started": "2026-01-01T00:00:00Z",
             "host": "gone", "pid": 1}
    (tmp_path / obj.LOCK).write_text(json.dumps(stale))
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and report.n_objects == 4
    assert any("took over the lock" in n for n in report.notes)
    assert not (tmp_path / obj.LOCK).exists()


_HOLD_LOCK = """
import sys, time
from skysurvey.objects.commit import build_lock
from skysurvey.objects.plan import open_catalog
with build_lock(open_catalog(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def _killed_while_holding_the_lock(root: Path, alive=lambda pid: None) -> int:
    """Start a process that takes *root*'s build lock, call *alive* with its pid while it
    holds it, then kill it (SIGKILL: nothing cleans up); returns its pid."""
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(root)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert (root / obj.LOCK).exists()  # left behind
    return child.pid


def test_the_lock_of_a_build_killed_on_this_host_is_taken_over_at_once(tmp_path):
    """Issue 23, item 10: a killed build's lock made every run refuse for 6 hours ("if it was
    killed, delete this lock") without looking whether its process was alive. The lock
    records host, pid and process start time: a live holder is refused by name, a dead one
    (a real process, killed) is taken over with one note."""
    import socket

    ra, dec = stars(4, seed=22)
    write_image(tmp_path, "n0", ra, dec, mjd=61130.1)
    refusals = []

    def refused_while_alive(pid: int) -> None:
        with pytest.raises(ObjectsError, match="another build is running") as refused:
            build_objects(str(tmp_path))
        refusals.append(str(refused.value))

    pid = _killed_while_holding_the_lock(tmp_path, refused_while_alive)
    held = json.loads((tmp_path / obj.LOCK).read_text())
    report = build_objects(str(tmp_path))  # at once (was: refused for 6 hours)
    assert report.status == "ok" and report.n_objects == 4
    took = [n for n in report.notes if "lock" in n]
    assert len(took) == 1 and f"pid {pid}" in took[0] and "no longer running" in took[0], took
    assert not (tmp_path / obj.LOCK).exists()
    assert held["host"] == socket.gethostname() and held["pid"] == pid
    assert held["pid_started"] > 0
    assert f"host {socket.gethostname()} pid {pid} since {held['started']}" in refusals[0]
    assert "alive" in refusals[0] and "\n" not in refusals[0]
    # a pid reused by another process (here: this one, started at another time) is gone too
    (tmp_path / obj.LOCK).write_text(json.dumps({**held, "pid": os.getpid(),
                                                 "pid_started": held["pid_started"] - 1e5}))
    report = build_objects(str(tmp_path))
    assert any("no longer running" in n for n in report.notes), report.notes
    # the same host name in another pid namespace (a container): its pids are not ours
    (tmp_path / obj.LOCK).write_text(json.dumps({**held, "pid_namespace": "container"}))
    with pytest.raises(ObjectsError, match="another machine or container"):
        build_objects(str(tmp_path))
    # another host's lock: liveness unknown, the 6-hour rule, the holder named
    (tmp_path / obj.LOCK).write_text(json.dumps({**held, "host": "elsewhere"}))
    with pytest.raises(ObjectsError, match=r"host elsewhere pid .* since .*another "
                                           r"host.*delete this lock.*taken over in 6.0 h"):
        build_objects(str(tmp_path))


def test_a_killed_builds_lock_on_s3_keeps_the_time_rule_and_names_its_holder(tmp_path,
                                                                              moto_server):
    """On S3 the holder's liveness cannot be checked (any machine may run the build): even
    a lock of this host whose process is dead is refused until it is 6 hours old, by name."""
    local = tmp_path / "cat"
    write_image(local, "n0", *stars(4, seed=23), mjd=61130.1)
    pid = _killed_while_holding_the_lock(local)
    store = _s3_survey(moto_server)
    _upload(local, store)
    store.write_bytes(obj.LOCK, (local / obj.LOCK).read_bytes())
    with pytest.raises(ObjectsError, match=rf"pid {pid} since .*an S3 catalog.*delete this lock"):
        build_objects("s3://cat/survey")
    assert store.exists(obj.LOCK)


# ---------------------------------------------------------------------------------------
# The build record lists the files it committed; a lost or changed unit file is rebuilt


def _units_catalog(root: Path, n_nights: int = 2, n: int = 30, seed: int = 30):
    """*n* stars over 5' seen on *n_nights* nights, built at unit order 11 (several units)."""
    ra, dec = stars(n, seed=seed, spread_arcsec=150)
    for k in range(n_nights):
        write_image(root, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, size_deg=0.1)
    report = build_objects(str(root), BuildConfig(unit_order=11))
    assert report.status == "ok" and report.n_units > 3
    return ra, dec, report


def _tables(root) -> dict:
    return {t: read(root, t).reset_index(drop=True) for t in obj.TABLES}


def _same_tables(a: dict, b: dict, tables=obj.TABLES) -> None:
    import pandas as pd

    for table in tables:
        pd.testing.assert_frame_equal(a[table], b[table], check_exact=False, rtol=1e-12)


def test_a_lost_associations_file_is_restored_from_the_sources(tmp_path):
    """An associations file deleted by hand: its objects had no light curve, and every later
    build said ok. The build record lists the files; the next build rebuilds that unit alone
    from the sources, and users see every association again, once."""
    _units_catalog(tmp_path)
    before, files = _tables(tmp_path), tree_bytes(tmp_path)
    lost = _largest_unit_file(tmp_path / "associations")
    key = lost.relative_to(tmp_path).as_posix()
    lost.unlink()
    assert users_see(tmp_path)["associations"] < 60  # what users saw until now
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and report.n_units == 1  # that unit only
    assert any(n.startswith("restored 1 unit") and f"{key} missing" in n
               for n in report.notes), report.notes
    assert_visible_once(tmp_path, report)
    assert report.n_associations == 60
    _same_tables(_tables(tmp_path), before)  # the same links, objects and statistics
    after = tree_bytes(tmp_path)
    assert after.keys() == files.keys()
    changed = {k for k in files if after[k] != files[k]} - {obj.STATE_KEY}
    assert {obj.unit_of_key(k) for k in changed} <= {obj.unit_of_key(key)}  # others untouched
    assert build_objects(str(tmp_path)).status == "unchanged"


@pytest.mark.parametrize("n, nights, min_sep, sigma", [(800, 6, 0.5, 0.5), (1200, 8, 0.3, 0.6)],
                         ids=["crowded", "very crowded"])
def test_a_lost_associations_file_in_a_crowded_field_gets_back_the_same_links(
        tmp_path, n, nights, min_sep, sigma):
    """Issue 23, item 9: a lost associations file was rebuilt by matching its detections from
    scratch (running means seeded at the objects' final positions): in a crowded field 9
    detections moved to other existing objects, 2 objects were added, and the note blamed
    "new ids (the files that named theirs were lost)". The objects file and the statistics
    sidecar still record every object (position sums, detections, nights): the detections
    go back to the objects whose statistics they make, and the note says so. (Very crowded:
    nearest matching alone still moved 3; detections are then swapped between candidates.)"""
    ra, dec = stars(n, seed=5, spread_arcsec=150, min_sep=min_sep)
    for k in range(nights):
        r, d = jitter(ra, dec, k, sigma)
        seen = np.random.default_rng(100 + k).random(len(ra)) < 0.85
        write_image(tmp_path, f"n{k}", r[seen], d[seen], mjd=61130.1 + k, size_deg=0.1)
        if k == 2:  # two builds: the sidecar's sums were merged once
            build_objects(str(tmp_path), BuildConfig(unit_order=11))
    assert build_objects(str(tmp_path), BuildConfig(unit_order=11)).status == "ok"
    before = _tables(tmp_path)
    lost = _largest_unit_file(tmp_path / "associations")
    n_lost = pq.read_metadata(lost).num_rows
    lost.unlink()
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and report.n_units == 1
    after = _tables(tmp_path)
    links = ["image_id", "source_id", "object_id"]
    moved = before["associations"][links].merge(after["associations"][links], how="outer",
                                                on=["image_id", "source_id"], indicator=True)
    assert (moved["_merge"] == "both").all()
    assert (moved["object_id_x"] == moved["object_id_y"]).sum() == len(moved)  # none moved
    assert list(after["objects"]["object_id"]) == list(before["objects"]["object_id"])
    # objects and photometry as before (separation_arcsec is not compared: an incremental
    # build keeps each link's separation from the night it was made, a repair measures them
    # from the object's position now)
    _same_tables({**after, "associations": None}, {**before, "associations": None},
                 ("objects", "object_photometry"))
    assert f"re-linked {n_lost} detection(s) of the lost or changed files to the objects " \
           "they belonged to (every object's recorded statistics reproduced; no id changed)" \
           in report.notes
    assert not any("new ids" in n for n in report.notes), report.notes


def test_a_truncated_or_replaced_objects_file_is_detected_and_rebuilt(tmp_path, capsys):
    """A truncated objects file (a failed copy) breaks every query; one replaced by another
    unit's file shows objects twice. Both differ in size from the record: the unit is rebuilt,
    its ids kept (its associations name them). A same-size change needs --verify (checksums)."""
    import shutil

    from conftest import load_script

    _units_catalog(tmp_path)
    before = _tables(tmp_path)
    files = sorted((tmp_path / "objects").rglob("k*.parquet"), key=lambda f: f.stat().st_size)
    target = files[-1]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    report = build_objects(str(tmp_path))
    name = target.relative_to(tmp_path).as_posix()
    assert report.status == "ok" and report.n_units == 1
    assert any(f"{name} changed since the build wrote it" in n for n in report.notes)
    assert_visible_once(tmp_path, report)
    _same_tables(_tables(tmp_path), before)
    shutil.copy(files[0], target)  # another unit's objects, under this unit's name
    assert users_see(tmp_path)["objects"] != 30
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and any(name in n for n in report.notes)
    assert_visible_once(tmp_path, report)
    _same_tables(_tables(tmp_path), before)
    # same size, other content (one position moved by a few ulp): sizes cannot tell
    table = pq.read_table(target)
    ra = table["ra"].to_numpy().copy()
    ra[len(ra) // 2] = np.nextafter(ra[len(ra) // 2], 400.0)
    size = target.stat().st_size
    pq.write_table(table.set_column(1, "ra", pa.array(ra)), target, compression="zstd",
                   use_dictionary=["pipeline_version"], row_group_size=obj.ROW_GROUP_ROWS)
    assert target.stat().st_size == size and pq.read_table(target) != table
    assert build_objects(str(tmp_path)).status == "unchanged"
    script = load_script("build_objects")
    assert script.main(["--catalog", str(tmp_path), "--workers", "1", "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"note: restored 1 unit(s) from the sources: {name} changed" in out
    assert pq.read_table(target) == table
    _same_tables(_tables(tmp_path), before)


def test_a_lost_statistics_sidecar_is_rebuilt_before_a_new_night_merges_into_it(tmp_path):
    """A new night merges into the statistics stored beside the unit files: with the sidecar
    lost, the unit silently restarted its objects from that night (2 of 3 detections gone)."""
    ra, dec = stars(20, seed=31)
    for k in range(2):
        write_image(tmp_path, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    build_objects(str(tmp_path))
    ids = set(read(tmp_path, "objects")["object_id"])
    (sidecar,) = (tmp_path / "objects").rglob("_stats-*.parquet")
    sidecar.unlink()
    write_image(tmp_path, "n2", *jitter(ra, dec, 2), mjd=61132.1)
    report = build_objects(str(tmp_path))
    objects = read(tmp_path, "objects")
    assert set(objects["object_id"]) == ids and (objects["n_detections"] == 3).all()
    assert (objects["n_nights"] == 3).all() and sidecar.exists()
    assert report.status == "ok" and report.n_new_images == 1
    assert any(sidecar.name in n and "missing" in n for n in report.notes), report.notes
    assert_visible_once(tmp_path, report)


def test_a_unit_file_no_build_wrote_is_removed_with_its_unit_rebuilt(tmp_path):
    """A unit file with a valid name that the last build did not write (a unit with no
    objects, a file copied in under its name): readers count its rows."""
    import shutil

    _units_catalog(tmp_path)
    source = _largest_unit_file(tmp_path / "objects")
    unit = obj.unit_of_key(source.name)
    empty = next(int(u) for u in obj.neighbours(np.array([unit]), 11)[1:, 0]
                 if not any((tmp_path / "objects").rglob(f"k11-{u}.parquet")))
    orphan = tmp_path / obj.unit_key("objects", empty, 11)
    orphan.parent.mkdir(exist_ok=True)
    shutil.copy(source, orphan)
    assert users_see(tmp_path)["objects"] > 30
    report = build_objects(str(tmp_path))
    assert report.status == "ok"
    assert any(f"{orphan.relative_to(tmp_path).as_posix()} not written by the last build" in n
               for n in report.notes), report.notes
    assert not orphan.exists() and source.exists()
    assert_visible_once(tmp_path, report)
    assert report.n_objects == 30


def test_damage_that_cannot_be_rebuilt_stops_with_one_line_naming_the_files(tmp_path):
    _units_catalog(tmp_path)
    lost = _largest_unit_file(tmp_path / "associations")
    lost.unlink()
    files = tree_bytes(tmp_path)
    gone = next((tmp_path / "sources").rglob("n1.parquet"))
    gone.unlink()  # the sources it would be rebuilt from
    report = build_objects(str(tmp_path))
    assert report.status == "error" and len(report.errors) == 1
    line = report.errors[0]
    assert "\n" not in line and lost.relative_to(tmp_path).as_posix() in line
    assert "n1.parquet" in line and "--rebuild" in line
    assert tree_bytes(tmp_path) == files and not (tmp_path / obj.STAGING).exists()


def _s3_nights(tmp_path: Path, endpoint: str, n_nights: int, seed: int):
    """16 stars over 100" seen on *n_nights* nights, in ``s3://cat/survey`` (moto) but for the
    last night: ``(store, uri, a function that uploads the last night)``."""
    ra, dec = stars(16, seed=seed, spread_arcsec=100)
    local = tmp_path / "cat"
    for k in range(n_nights):
        write_image(local, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, size_deg=0.07)
    store, uri = _s3_survey(endpoint), "s3://cat/survey"
    last = f"n{n_nights - 1}.parquet"
    _upload(local, store, lambda name: name != last)
    return store, uri, lambda: _upload(local, store, lambda name: name == last)


def _s3_survey(endpoint: str):
    """The store of ``s3://cat/survey`` on the moto server, its bucket created."""
    import boto3

    from skysurvey.storage import open_store

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="cat")
    return open_store("s3://cat/survey")


def _upload(local: Path, store, keep=lambda name: True) -> None:
    """The local catalog's Parquet files whose name *keep* accepts, at the same keys."""
    for p in sorted(local.rglob("*.parquet")):
        if keep(p.name):
            store.write_bytes(p.relative_to(local).as_posix(), p.read_bytes())


def test_a_partially_committed_s3_build_is_detected_and_repaired(tmp_path, moto_server,
                                                                monkeypatch):
    """The S3 swap copies the staged files one by one: killed midway and its staging gone (a
    lifecycle rule, a cleanup), the tables mix two builds while the record names one. The next
    build rebuilds the units that differ; then an unchanged build writes nothing but its lock."""
    from collections import Counter

    from skysurvey import aws
    from skysurvey.storage import S3Store

    store, uri, last_night = _s3_nights(tmp_path, moto_server, 3, seed=32)
    first = build_objects(uri, BuildConfig(unit_order=11))
    assert first.n_units > 2
    ids = set(read(uri, "objects")["object_id"])
    last_night()
    copied, real_copy = [], S3Store.copy

    def killed_midway(self, src, dst, **kwargs):  # the driver dies 2 copies after the record
        if obj.STATE_KEY in copied and len(copied) - copied.index(obj.STATE_KEY) > 2:
            raise KeyboardInterrupt
        real_copy(self, src, dst, **kwargs)
        copied.append(dst)

    monkeypatch.setattr(S3Store, "copy", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        build_objects(uri)
    monkeypatch.setattr(S3Store, "copy", real_copy)
    store.clear(f"{obj.STAGING}/")  # its staging expired
    seen = users_see(uri)  # new record and associations, old objects files
    assert seen["associations"] == seen["detections"] == 48 and seen["objects"] == 16
    assert (read(uri, "objects")["n_detections"] == 2).any()
    report = build_objects(uri)
    assert report.status == "ok" and any(n.startswith("restored") and "did not finish" in n
                                         for n in report.notes), report.notes
    assert not any("new ids" in n for n in report.notes), report.notes
    assert_visible_once(uri, report)
    objects = read(uri, "objects")
    assert len(objects) == 16 and (objects["n_detections"] == 3).all()
    assert set(objects["object_id"]) == ids  # kept (the new associations name them)
    # a marker whose swap had copied everything: each file's sha256 (HEAD) is as recorded
    store.write_bytes(obj.SWAP_KEY, b'{"touched": null}')
    marker = build_objects(uri)
    assert marker.status == "ok" and marker.n_units == 0
    assert any("removed its marker" in n for n in marker.notes), marker.notes
    calls = Counter()
    aws.client("s3").meta.events.register(
        "before-parameter-build.s3", lambda model, params, **kw: calls.update([model.name]))
    assert build_objects(uri).status == "unchanged"
    assert calls == {"GetObject": 3, "PutObject": 1, "DeleteObject": 1, "ListObjectsV2": 4}


def test_a_record_of_an_older_version_gets_its_file_list_and_then_guards_the_tables(tmp_path):
    _units_catalog(tmp_path)
    state = json.loads((tmp_path / obj.STATE_KEY).read_text())
    listed = state.pop("files")
    (tmp_path / obj.STATE_KEY).write_text(json.dumps(state))  # as the previous version wrote
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and any("listed no files" in n for n in report.notes)
    recorded = json.loads((tmp_path / obj.STATE_KEY).read_text())["files"]
    assert recorded.keys() == listed.keys()
    assert all(recorded[k]["size"] == v["size"] for k, v in listed.items())
    assert build_objects(str(tmp_path)).status == "unchanged"
    _largest_unit_file(tmp_path / "associations").unlink()
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and any(n.startswith("restored 1 unit") for n in report.notes)
    assert_visible_once(tmp_path, report)
    assert report.n_objects == 30 and report.n_associations == 60


def test_a_source_does_not_join_an_object_that_keeps_a_detection_of_its_image():
    """Re-linking part of an image (a repair) against objects that keep links of the same
    image: an object never takes two sources of one image."""
    det = obj.Detections(
        image=np.array([0, 0]), source_id=np.array([0, 1]), ra=np.array([RA0, RA0 + 0.3 / 3600]),
        dec=np.array([DEC0, DEC0]), weight=np.ones(2), mjd=np.full(2, 61130.1),
        night=np.zeros(2, np.int64), band=np.zeros(2, np.int64), mag=np.full(2, 20.0),
        mag_err=np.full(2, 0.02), obj=np.array([0, -1]))  # source 0 kept on object 0
    linked = obj.associate(det, np.array([RA0]), np.array([DEC0]), (RA0, DEC0), 1.0,
                           order=np.array([1]))
    assert list(linked) == [0, 1]  # source 1 (0.3" away) starts a new object


def test_a_repair_that_would_move_a_detection_to_a_kept_unit_stops_by_name(tmp_path):
    """Stars X and Y 0.8" apart on either side of a unit border, Y missing from the first
    image. With X's unit's objects and associations files both lost, X's first detection now
    joins Y, whose unit is not rebuilt: nobody would write that link, so the repair stops."""
    cosd = np.cos(np.radians(DEC0))
    step = 0.2 / 3600 / cosd
    unit0 = obj.healpix([RA0], [DEC0], 11)[0]
    k = next(k for k in range(1, 5000) if obj.healpix([RA0 + k * step], [DEC0], 11)[0] != unit0)
    border = RA0 + (k - 0.5) * step
    x, y = border - 0.4 / 3600 / cosd, border + 0.4 / 3600 / cosd
    ra, dec = stars(10, seed=33, spread_arcsec=150, min_sep=10)
    far = obj.separation_arcsec(ra, dec, border, DEC0) > 10
    ra, dec = np.r_[ra[far], x, y], np.r_[dec[far], DEC0, DEC0]
    for k in range(3):
        keep = slice(None, -1) if k == 0 else slice(None)  # Y not seen in image 0
        write_image(tmp_path, f"n{k}", ra[keep], dec[keep], mjd=61130.1 + k, size_deg=0.1)
    built = build_objects(str(tmp_path), BuildConfig(unit_order=11))
    assert built.n_objects == len(ra)
    unit_x = obj.healpix([x], [DEC0], 11)[0]
    assert obj.healpix([y], [DEC0], 11)[0] != unit_x
    lost = [obj.unit_key(t, int(unit_x), 11) for t in ("objects", "associations")]
    for key in lost:
        (tmp_path / key).unlink()
    files = tree_bytes(tmp_path)
    report = build_objects(str(tmp_path))
    assert report.status == "error" and len(report.errors) == 1
    assert all(key in report.errors[0] for key in lost) and "--rebuild" in report.errors[0]
    assert "now match objects of unit(s)" in report.errors[0], report.errors
    assert tree_bytes(tmp_path) == files
    rebuilt = build_objects(str(tmp_path), BuildConfig(unit_order=11, rebuild=True))
    assert rebuilt.status == "ok" and rebuilt.n_objects == len(ra)
    assert_visible_once(tmp_path, rebuilt)


def _built_then_a_night(root: Path, seed: int) -> set[int]:
    """12 stars built from 2 nights, a third night waiting: the object ids."""
    ra, dec = stars(12, seed=seed)
    for k in range(2):
        write_image(root, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k)
    build_objects(str(root))
    write_image(root, "n2", *jitter(ra, dec, 2), mjd=61132.1)
    return set(read(root, "objects")["object_id"])


def test_a_local_swap_killed_while_deleting_the_previous_tables_is_finished_not_undone(
        tmp_path, monkeypatch):
    """The local swap exchanges the staged folder with the table's, then deletes the previous
    version, which sat at the staged folder's path: killed during that deletion, the next
    run's recover swapped the half-deleted previous version back in (here: an objects folder
    emptied, build record included, so the next run built everything again as a first build:
    with other data, other ids)."""
    ids = _built_then_a_night(tmp_path, seed=34)
    real_rmtree = storage.shutil.rmtree
    staging = tmp_path / obj.STAGING

    def killed_while_deleting(path, *args, **kwargs):
        path = Path(path)
        if path.is_dir() and staging in path.parents:  # the previous tables, being deleted
            for f in path.rglob("*"):
                if f.is_file():
                    f.unlink()
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(storage.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        build_objects(str(tmp_path))
    monkeypatch.setattr(storage.shutil, "rmtree", real_rmtree)
    report = build_objects(str(tmp_path))
    assert any("finished the swap" in n for n in report.notes), report.notes
    assert not any("restored" in n or "record" in n for n in report.notes), report.notes
    assert report.status == "unchanged"  # the finished swap holds n2 (was: built again)
    objects = read(tmp_path, "objects")
    assert set(objects["object_id"]) == ids and (objects["n_detections"] == 3).all()
    assert_visible_once(tmp_path, report)
    assert build_objects(str(tmp_path)).status == "unchanged"


def test_s3_requests_of_a_first_build_and_a_new_night(tmp_path, moto_server):
    """The tables are listed once per build (3 LIST) and that listing serves the check
    against the record, the stray files, the swap's deletions and the dropped-objects count;
    they were listed again by the swap and by a stray removal after it (12 LIST, was 10
    before the build record's check)."""
    from collections import Counter

    from skysurvey import aws

    _, uri, last_night = _s3_nights(tmp_path, moto_server, 2, seed=35)
    calls = Counter()
    aws.client("s3").meta.events.register(
        "before-parameter-build.s3", lambda model, params, **kw: calls.update([model.name]))
    first = build_objects(uri, BuildConfig(unit_order=11))
    assert first.status == "ok" and first.n_units > 2
    # LIST: the staging (recover), images, the 3 tables, the staging again (the swap)
    assert calls["ListObjectsV2"] == 6
    assert calls["DeleteObject"] == 2  # the lock, the swap marker
    last_night()
    calls.clear()
    night = build_objects(uri)
    assert night.status == "ok" and night.n_new_images == 1
    assert calls["ListObjectsV2"] == 6 and calls["DeleteObject"] == 2
    assert_visible_once(uri, night)


@pytest.mark.parametrize("found_more", [False, True])
def test_a_repair_while_an_image_was_reprocessed_keeps_the_ids_of_its_objects(tmp_path,
                                                                              found_more):
    """A unit's associations file lost while image n1 was reprocessed (same sources, another
    processed_at). The repair read only the images unchanged since the last build: a transient
    seen in n1 alone found no detection and was dropped, then the next phase created it again
    under another id (the sequence of its order-13 pixel had moved on: a later object there).
    *found_more*: the reprocessing found one more source, a new object, not a lost id."""
    ra, dec = stars(30, seed=30, spread_arcsec=150)
    t_ra, t_dec = RA0 + 0.001, DEC0 + 0.001  # the transient (n1), a later object 5" away (n2)
    late_ra, late_dec = t_ra + 5 / 3600, t_dec
    assert obj.healpix([late_ra], [late_dec], obj.ID_ORDER) == obj.healpix(
        [t_ra], [t_dec], obj.ID_ORDER)

    def night(k: int, processed: str = "2026-05-01") -> None:
        r, d = jitter(ra, dec, k)
        if k == 1:
            r, d = np.r_[r, t_ra], np.r_[d, t_dec]
            if processed != "2026-05-01" and found_more:  # 10" south of the transient
                r, d = np.r_[r, t_ra], np.r_[d, t_dec - 10 / 3600]
        if k == 2:
            r, d = np.r_[r, late_ra], np.r_[d, late_dec]
        write_image(tmp_path, f"n{k}", r, d, mjd=61130.1 + k, size_deg=0.1, processed=processed)

    for k in range(3):
        night(k)
    built = build_objects(str(tmp_path), BuildConfig(unit_order=11))
    assert built.n_objects == 32
    before = read(tmp_path, "objects")
    night(1, processed="2026-06-01")  # reprocessed
    unit = obj.healpix([t_ra], [t_dec], 11)[0]
    (tmp_path / obj.unit_key("associations", int(unit), 11)).unlink()
    report = build_objects(str(tmp_path))
    assert report.status == "ok" and report.n_redone_images == 1
    assert any(n.startswith("restored 1 unit") for n in report.notes), report.notes
    assert not any("new ids" in n for n in report.notes), report.notes
    assert report.n_dropped_objects == 0, report.notes
    after = read(tmp_path, "objects")
    assert set(after["object_id"]) >= set(before["object_id"])
    assert_visible_once(tmp_path, report)
    assert report.n_objects == 32 + found_more and report.n_associations == 92 + found_more
    if not found_more:
        assert report.n_new_objects == 0


def test_matching_new_images_costs_no_more_with_many_kept_links_of_other_images():
    """The one-source-per-image rule looked each image's candidates up among every kept link
    (np.isin sorts them all, per image): a unit re-matching 100 images over 2,025 objects with
    101,250 kept links of other images took 12x as long as without them (2M links, 100
    images: 106 s instead of 2 s). Only images with both kept and unmatched detections count."""
    import time

    rng = np.random.default_rng(36)
    n_kept_img, n_new_img = 50, 100
    gx, gy = np.meshgrid(np.arange(45) * 6.0, np.arange(45) * 6.0)  # a 6" grid of stars
    ora = RA0 + gx.ravel() / 3600 / np.cos(np.radians(DEC0))
    odec = DEC0 + gy.ravel() / 3600
    n_obj = ora.size
    n_img = n_kept_img + n_new_img
    img = np.repeat(np.arange(n_img), n_obj)
    src = np.tile(np.arange(n_obj), n_img)
    ra = np.tile(ora, n_img) + rng.normal(0, 0.1 / 3600, img.size)
    dec = np.tile(odec, n_img) + rng.normal(0, 0.1 / 3600, img.size)

    def det(kept: bool) -> obj.Detections:
        linked = np.where(img < n_kept_img, src, -1) if kept else np.full(img.size, -1)
        return obj.Detections(image=img, source_id=src, ra=ra, dec=dec, weight=np.ones(img.size),
                              mjd=61000.0 + img, night=img, band=np.zeros(img.size, np.int64),
                              mag=np.full(img.size, 20.0), mag_err=np.full(img.size, 0.02),
                              obj=linked)

    order = np.nonzero(img >= n_kept_img)[0]
    seconds = {}
    for kept in (False, True, False, True):
        start = time.perf_counter()
        linked = obj.associate(det(kept), ora, odec, (RA0, DEC0), 1.0, order)
        seconds.setdefault(kept, []).append(time.perf_counter() - start)
        assert (linked[order] == src[order]).all()  # every source joins its own star
    assert min(seconds[True]) < 2 * min(seconds[False]) + 0.05, seconds


def test_a_local_swap_killed_just_after_an_exchange_is_finished_not_undone(tmp_path,
                                                                           monkeypatch):
    """Killed between the exchange of the objects folder and anything after it, the staged
    path holds the previous objects table: the next run's recover took it for the staged one
    and swapped it back in (old objects and record beside the new associations), then saw
    damage everywhere and rebuilt every unit. The staged folders' inodes tell them apart."""
    ids = _built_then_a_night(tmp_path, seed=37)
    real_exchange = storage._exchange

    def killed_after(a, b):
        assert real_exchange(a, b)
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "_exchange", killed_after)
    with pytest.raises(KeyboardInterrupt):
        build_objects(str(tmp_path))
    monkeypatch.setattr(storage, "_exchange", real_exchange)
    report = build_objects(str(tmp_path))
    assert any("finished the swap" in n for n in report.notes), report.notes
    assert report.status == "unchanged", report.notes  # the finished swap holds n2
    objects = read(tmp_path, "objects")
    assert set(objects["object_id"]) == ids and (objects["n_detections"] == 3).all()
    assert_visible_once(tmp_path, report)


# ---- deep fields: sorted sources files, pruned reads (issue 24 item 5) -------------------------


def _rewrite_sources(catalog: Path, row_group_rows: int | None) -> None:
    """Every sources file of *catalog* written again: sorted, in row groups of
    *row_group_rows*; None: as older versions did (rows in ``source_id`` order, one group)."""
    from skysurvey.pipeline import sources_to_parquet_bytes, table_to_parquet_bytes

    for path in (catalog / "sources").rglob("*.parquet"):
        table = pq.read_table(path).sort_by("source_id").cast(SOURCES_SCHEMA)
        path.write_bytes(table_to_parquet_bytes(table) if row_group_rows is None
                         else sources_to_parquet_bytes(table, row_group_rows))


def _tables(catalog: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name, key in (("objects", ["object_id"]), ("associations", ["image_id", "source_id"]),
                      ("object_photometry", ["object_id", "band"])):
        frame = pq.read_table(catalog / name).to_pandas()
        out[name] = frame.drop(columns=[c for c in ("hpx5",) if c in frame]).sort_values(
            key).reset_index(drop=True)
    return out


def test_pruned_reads_give_the_same_objects_as_whole_files_of_older_versions(tmp_path):
    """The handler writes each sources file sorted by _healpix_29 in row groups; a build over
    such files (here in row groups of 16 rows, as the survey's images hold ~60 sources; each
    unit reads only its row groups) and a build over the same rows written as older versions
    did (unsorted, one row group: read whole, rows filtered) give identical objects,
    associations and photometry, and the pruned build reads fewer bytes."""
    import shutil

    from conftest import two_night_survey

    _, catalog = two_night_survey(tmp_path)
    sources = sorted((catalog / "sources").rglob("*.parquet"))
    assert len(sources) == 2
    for path in sources:  # the handler's files: sorted, every source_id kept
        table = pq.read_table(path)
        hp = table["_healpix_29"].to_numpy(zero_copy_only=False)
        assert (np.diff(hp) >= 0).all() and table["source_id"].to_pylist() != sorted(
            table["source_id"].to_pylist())
        assert sorted(table["source_id"].to_pylist()) == list(range(table.num_rows))
    copies = {}
    for kind in ("sorted", "old"):
        copies[kind] = tmp_path / kind
        for table in ("sources", "images"):
            shutil.copytree(catalog / table, copies[kind] / table)
    _rewrite_sources(copies["sorted"], 16)
    _rewrite_sources(copies["old"], None)
    reports = {k: build_objects(str(c), BuildConfig(unit_order=12)) for k, c in copies.items()}
    assert all(r.status == "ok" for r in reports.values())
    assert reports["sorted"].n_units > 1
    new, old = _tables(copies["sorted"]), _tables(copies["old"])
    for name in new:
        pd.testing.assert_frame_equal(new[name], old[name])
    pruned, whole = reports["sorted"].reads, reports["old"].reads
    assert whole["row_groups"] == whole["files"]  # older files: one row group, read whole
    # (or not at all: a unit whose region the file's ra/dec box does not come near)
    assert pruned["row_groups_read"] < pruned["row_groups"]
    assert pruned["rows_read"] < whole["rows_read"]  # (bytes: 60-row files are mostly footer)
    assert pruned["source_bytes"] > 0 and pruned["source_files"] == 2
    record = json.loads((copies["sorted"] / "objects" / "_build.json").read_text())
    assert record["reads"] == pruned
    assert "sources read" in reports["sorted"].summary()


def _line_of_sources(n: int = 4000) -> pa.Table:
    """*n* sources along a 40" line in dec, in source_id order (not sorted by position), with
    values in every double column (a file of realistic size per row)."""
    rng = np.random.default_rng(3)
    dec = DEC0 + rng.uniform(0, 40, n) / 3600
    ra = np.full(n, RA0) + rng.normal(0, 1, n) / 3600
    cols = {f.name: (pa.array(rng.normal(size=n)) if f.type == pa.float64()
                     else pa.nulls(n, f.type)) for f in SOURCES_SCHEMA}
    cols.update(image_id=pa.array(["line"] * n), source_id=pa.array(np.arange(n), pa.int32()),
                ra=pa.array(ra), dec=pa.array(dec), _healpix_29=pa.array(obj.healpix(ra, dec, 29)))
    return pa.table(cols, schema=SOURCES_SCHEMA)


@pytest.mark.parametrize("layout", ["sorted", "old"])
def test_a_region_read_prunes_row_groups_of_a_sorted_file_only(tmp_path, layout):
    """A known layout: 4,000 sources along a line over several order-15 pixels, in row groups
    of 100. The rows of one order-15 unit and its margin come back either way; a sorted
    file's other row groups (and their bytes) are not read, an older file is read whole."""
    from skysurvey.geometry import in_region
    from skysurvey.objects.source_reads import ReadStats, Region, read_region
    from skysurvey.pipeline import sources_to_parquet_bytes, table_to_parquet_bytes

    table = _line_of_sources()
    data = (sources_to_parquet_bytes(table, 100) if layout == "sorted"
            else table_to_parquet_bytes(table))
    (tmp_path / "s.parquet").write_bytes(data)
    unit_order, margin = 15, 17
    hp = table["_healpix_29"].to_numpy()
    unit = int(np.sort(hp)[len(hp) // 2]) >> 2 * (29 - unit_order)
    want = in_region(hp >> 2 * (29 - margin), margin, unit, unit_order)
    assert 0 < want.sum() < len(hp) / 2
    stats = ReadStats()
    found = read_region(storage.open_store(tmp_path), "s.parquet", ["source_id", "_healpix_29"],
                        Region.of_unit(unit, unit_order, margin), stats)
    got = set(found.table["source_id"].to_pylist())
    assert set(np.nonzero(want)[0].tolist()) <= got
    if layout == "sorted":
        assert stats.row_groups == 40 and stats.row_groups_read <= 12
        assert stats.bytes_read < 0.5 * stats.bytes
        assert found.n_indexed == 4000 and len(got) <= 1200
    else:
        assert stats.row_groups_read == stats.row_groups == 1 and len(got) == 4000
        assert found.n_indexed is None


def test_region_ranges_hold_exactly_the_pixels_in_region_keeps():
    from skysurvey.geometry import in_region
    from skysurvey.objects.source_reads import region_ranges

    unit_order, margin = 8, 12
    unit = int(obj.healpix(RA0, DEC0, unit_order))
    near = obj.neighbours(np.array([unit]), unit_order)[:, 0]
    d = margin - unit_order
    fine = np.concatenate([np.arange(u << 2 * d, (u + 1) << 2 * d) for u in near if u >= 0])
    keep = in_region(fine, margin, unit, unit_order)
    ranges = region_ranges(unit, unit_order, margin)
    hp = fine << 2 * (29 - margin)
    k = np.minimum(np.searchsorted(ranges[:, 1], hp), len(ranges) - 1)
    covered = (ranges[k, 0] <= hp) & (hp <= ranges[k, 1])
    assert (covered == keep).all()


def test_a_region_read_over_s3_reads_the_footer_and_the_row_groups_only(mocked_aws):
    from skysurvey import aws
    from skysurvey.objects.source_reads import ReadStats, read_region, region_ranges
    from skysurvey.pipeline import sources_to_parquet_bytes

    aws.client("s3").create_bucket(Bucket="cat")
    store = storage.open_store("s3://cat/pre")
    table = _line_of_sources()
    store.write_bytes("s.parquet", sources_to_parquet_bytes(table, 100))
    hp = table["_healpix_29"].to_numpy()
    unit = int(np.sort(hp)[len(hp) // 2]) >> 2 * (29 - 15)
    stats = ReadStats()
    found = read_region(store, "s.parquet", ["source_id", "ra"], region_ranges(unit, 15, 17),
                        stats)
    assert 0 < found.table.num_rows < 2000 and stats.bytes_read < 0.75 * stats.bytes
    whole = read_region(store, "s.parquet", ["source_id", "ra"],
                        np.array([[0, 2**62]], np.int64))
    assert whole.table.num_rows == 4000 and whole.n_indexed is None


def test_a_deep_stack_on_one_centre_is_split_by_where_its_sources_are():
    """1,000 images of one 8.9' field (2,500 sources each, dithered by arcseconds): the units
    follow the sources over the field (a few order-9 pixels), not the one pixel their centres
    share (which chose order 12: ~100 units, each opening all 1,000 files)."""
    from skysurvey.objects.plan import _choose_unit_order

    rng = np.random.default_rng(4)
    images = [{"ra_center": 210 + rng.normal(0, 5e-3), "dec_center": 12 + rng.normal(0, 5e-3),
               "width": 2048, "height": 2048, "pixel_scale": 0.26, "n_sources": 2500}
              for _ in range(1000)]
    order = _choose_unit_order(images, 2)
    assert 8 <= order <= 10
    pix = obj.healpix(np.array([r["ra_center"] for r in images]),
                      np.array([r["dec_center"] for r in images]), order)
    assert len(np.unique(pix)) <= 4  # (the centres alone: one pixel at any order up to 12)


def test_window_pairs_are_every_pair_within_reach_both_ways():
    from skysurvey.geometry import window_pairs

    rng = np.random.default_rng(3)
    key = np.round(rng.uniform(0, 50, 300), 1)  # ties included
    i, j = window_pairs(key, 1.5)
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    near = np.abs(key[:, None] - key[None, :]) <= 1.5
    assert got == set(zip(*np.nonzero(near), strict=True))
    assert len(got) == i.size  # no pair twice


def test_a_local_region_read_keeps_the_generic_reads_rows_and_sees_a_replaced_file(tmp_path):
    """A local region read (pread of the footer and the chosen row groups) gives, for several
    units, the region's rows the generic path (any other store: the whole object) gives,
    from no more row groups; a file replaced under the same key is read anew."""
    from skysurvey.geometry import in_region
    from skysurvey.objects.source_reads import ReadStats, Region, read_region
    from skysurvey.pipeline import sources_to_parquet_bytes

    table = _line_of_sources()
    local = storage.open_store(tmp_path)
    local.write_bytes("s.parquet", sources_to_parquet_bytes(table, 100))

    class Other:  # not a LocalStore: read_region's path for any other store
        def read_bytes(self, key):
            return local.read_bytes(key)

    hp = np.sort(table["_healpix_29"].to_numpy())
    cols = ["source_id", "_healpix_29", "ra"]

    def region_rows(found, unit):
        h = found.table["_healpix_29"].to_numpy()
        keep = in_region(h >> 2 * (29 - 17), 17, unit, 15)
        return sorted(found.table["source_id"].to_numpy()[keep].tolist())

    for q in (0.1, 0.5, 0.9):
        unit = int(hp[int(q * len(hp))]) >> 2 * (29 - 15)
        region = Region.of_unit(unit, 15, 17)
        fast, slow = ReadStats(), ReadStats()
        a = read_region(local, "s.parquet", cols, region, fast)
        b = read_region(Other(), "s.parquet", cols, region, slow)
        assert region_rows(a, unit) == region_rows(b, unit) != []
        assert fast.row_groups_read <= slow.row_groups_read < slow.row_groups
        assert a.n_indexed == b.n_indexed == 4000
    local.write_bytes("s.parquet", sources_to_parquet_bytes(table.slice(0, 1000), 100))
    again = read_region(local, "s.parquet", cols, np.array([[0, 2**62]], np.int64))
    assert sorted(again.table["source_id"].to_pylist()) == list(range(1000))


def test_the_plan_puts_the_busiest_unit_first():
    """A deep stack whose sources all fall on one side: every unit opens every image, so the
    images each opens do not tell the units apart; the estimated detections do."""
    from skysurvey.objects.plan import _unit_costs

    rng = np.random.default_rng(5)
    images = [{"ra_center": 210 + rng.normal(0, 5e-3), "dec_center": 12 + rng.normal(0, 5e-3),
               "width": 2048, "height": 2048, "pixel_scale": 0.26, "n_sources": 2500}
              for _ in range(200)]
    ra, dec = (np.array([r[c] for r in images]) for c in ("ra_center", "dec_center"))
    units = np.unique(obj.healpix(ra, dec, 9))
    cost = _unit_costs(images, 9, {int(u): len(images) for u in units})
    centre = int(np.bincount(np.searchsorted(units, obj.healpix(ra, dec, 9))).argmax())
    assert max(cost, key=cost.get) == int(units[centre])
    assert min(cost.values()) >= len(images) * 3e-3  # every unit pays its opens
