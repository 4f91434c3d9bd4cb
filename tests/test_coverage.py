"""Coverage: image footprints (order-12 HEALPix cells), the coverage query, and the forced step
round trip (local process pool, and S3 through the moto server)."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from skysurvey.astrometry import pixel_to_icrs
from skysurvey.forced import _lonlat_cells, _neighbour_cells, footprint_hpx12, image_footprint
from skysurvey.synth import _wcs

RA0, DEC0 = 150.1, 2.2


def _pixel_cells(wcs, valid):
    yy, xx = np.nonzero(valid)
    ra, dec = pixel_to_icrs(wcs, xx, yy)
    return np.unique(_lonlat_cells(ra, dec, 12))


@pytest.mark.parametrize("shape,scale,rotation,sip", [
    ((512, 512), 0.25, 1.0, False), ((512, 400), 0.25, 30.0, True),
    ((400, 512), 1.0, 10.0, False), ((300, 300), 3.0, -45.0, False)])
def test_footprint_holds_every_valid_pixels_cell_and_nothing_far(shape, scale, rotation, sip):
    wcs = _wcs(shape, RA0, DEC0, scale, rotation, sip)
    valid = np.ones(shape, bool)
    valid[100:180, 50:300] = False  # a masked block
    valid[:, :7] = False  # a masked edge
    cells = footprint_hpx12(wcs, shape, valid)
    truth = _pixel_cells(wcs, valid)
    assert set(truth) <= set(cells)
    # extra cells only where valid pixels reach without a pixel centre: neighbours of true ones
    assert set(cells) <= set(truth) | set(_neighbour_cells(truth, 12))
    assert len(set(cells) - set(truth)) <= max(2, len(truth) // 10)


def test_footprint_leaves_out_a_fully_masked_half():
    shape = (512, 512)
    wcs = _wcs(shape, RA0, DEC0, 1.0, 0.0, False)  # 8.5 arcmin: many cells
    valid = np.ones(shape, bool)
    valid[:, 256:] = False
    half = footprint_hpx12(wcs, shape, valid)
    full = footprint_hpx12(wcs, shape)
    assert set(half) < set(full) and len(half) < 0.7 * len(full)
    assert footprint_hpx12(wcs, shape, np.zeros(shape, bool)).size == 0


def test_footprint_cost_on_a_2048_image_and_no_wcs():
    shape = (2048, 2048)
    wcs = _wcs(shape, RA0, DEC0, 0.25, 1.0, False)
    valid = np.ones(shape, bool)
    start = time.perf_counter()
    cells = footprint_hpx12(wcs, shape, valid)
    seconds = time.perf_counter() - start
    assert seconds < 1.0  # measured: 11-15 ms on the shared 2-core machine
    assert set(_pixel_cells(wcs, valid)) == set(cells)
    from astropy.io import fits

    assert image_footprint(fits.Header(), np.zeros((10, 10))) is None


# ---- the catalog: coverage query and the forced step -----------------------------------------


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Two nights, one band, 256 x 256, catalogued and associated (local folders)."""
    from conftest import two_night_survey

    return two_night_survey(tmp_path_factory.mktemp("survey"))


def test_coverage_query_finds_the_images_holding_a_position(survey):
    from skysurvey.queries import dataset, get_named, run_named

    _, catalog = survey
    images = dataset(str(catalog), "images").to_table().to_pandas()
    assert images["footprint_hpx12"].map(len).min() >= 1
    found = run_named("coverage", str(catalog), (RA0, DEC0))
    assert sorted(found["image_id"]) == sorted(images["image_id"])
    assert list(found.columns) == ["image_id", "band", "night", "mjd", "depth_5sigma"]
    assert run_named("coverage", str(catalog), (RA0 + 1.0, DEC0)).empty
    # one cell bound as a parameter, never pasted into the text
    assert "?" in get_named("coverage").sql and len(get_named("coverage").bind((1, 2))) == 1
    from skysurvey.errors import QueryError

    with pytest.raises(QueryError, match="not a sky position"):
        get_named("coverage").bind((10.0, 95.0))


def test_coverage_query_text_runs_on_trino():
    import sqlglot

    from skysurvey import athena
    from skysurvey.queries import NAMED_QUERIES

    for name in ("coverage", "light_curve"):
        sqlglot.parse_one(NAMED_QUERIES[name].sql, read="trino")
    spec = athena.TABLES["forced_photometry"]
    assert spec.partition_keys == (("band", "string"), ("night", "string"))
    columns = athena.glue_table_input(athena.TABLES["images"], "s3://c/x")["StorageDescriptor"][
        "Columns"]
    assert {"Name": "footprint_hpx12", "Type": "array<bigint>"} in columns


def _forced_rows(catalog):
    from skysurvey.queries import run_query

    return run_query("SELECT * FROM forced_photometry ORDER BY image_id, object_id", str(catalog))


def test_forced_step_round_trip_locally(survey, tmp_path):
    import shutil

    from skysurvey.forced_run import MANIFEST_KEY, run_forced
    from skysurvey.queries import run_named, run_query

    raw, original = survey
    catalog = tmp_path / "cat"
    shutil.copytree(original, catalog)
    report = run_forced(str(catalog), str(raw), workers=2)
    assert not report.failed, report.summary()
    assert len(report.replies) == 2 and report.unchanged == 0
    rows = _forced_rows(catalog)
    objects = run_query("SELECT object_id, ra, dec FROM objects", str(catalog))
    assoc = run_query("SELECT image_id, object_id FROM associations", str(catalog))
    # every detection has its forced row (detections included), no duplicates
    pairs = set(zip(rows["image_id"], rows["object_id"], strict=True))
    assert len(pairs) == len(rows)
    assert set(zip(assoc["image_id"], assoc["object_id"], strict=True)) <= pairs
    assert set(rows["object_id"]) <= set(objects["object_id"])
    assert set(rows["band"]) == {"r"} and rows["mjd"].notna().all()
    assert ((rows["mag"].isna()) == (rows["flux"] <= 0)).all()
    # on detected point sources the forced flux is the detection's flux_apcorr
    both = run_query(
        "SELECT f.flux AS forced, s.flux_apcorr AS detected FROM forced_photometry f "
        "JOIN associations a ON a.object_id = f.object_id AND a.image_id = f.image_id "
        "JOIN sources s ON s.image_id = a.image_id AND s.source_id = a.source_id "
        "WHERE s.snr > 50 AND s.flags = 0 AND f.flags = 0 AND s.class_star > 0.8", str(catalog))
    assert len(both) >= 10
    assert abs(np.median(both["forced"] / both["detected"]) - 1) < 0.02
    assert (catalog / MANIFEST_KEY).exists()
    # a second run measures nothing; --rebuild measures all and replaces (no duplicates)
    again = run_forced(str(catalog), str(raw), workers=1)
    assert again.replies == [] and again.unchanged == 2
    run_forced(str(catalog), str(raw), workers=1, rebuild=True)
    assert len(_forced_rows(catalog)) == len(rows)
    # new objects in a partition back-fill the images covering it
    build = json.loads((catalog / "objects" / "_build.json").read_text())
    key = next(k for k in build["files"] if k.startswith("objects/hpx5=") and "/k" in k)
    build["files"][key]["sha256"] = "changed"
    (catalog / "objects" / "_build.json").write_text(json.dumps(build))
    assert len(run_forced(str(catalog), str(raw)).replies) == 2
    # a copy in another partition (an image re-processed into another night) and a file of
    # an image that is gone: both removed, the rows stay unique
    first = sorted((catalog / "forced_photometry").rglob("*.parquet"))[0]
    moved = catalog / "forced_photometry" / "band=r" / "night=unknown" / first.name
    moved.parent.mkdir(parents=True)
    shutil.copy(first, moved)
    orphan = first.parent / "gone_image.parquet"
    shutil.copy(first, orphan)
    cleanup = run_forced(str(catalog), str(raw))
    assert len(cleanup.replies) == 1 and cleanup.removed == [
        str(orphan.relative_to(catalog))]
    assert not moved.exists() and not orphan.exists() and first.exists()
    assert len(_forced_rows(catalog)) == len(rows)
    # the light curve: every covering epoch, detections marked
    oid = int(assoc["object_id"].iloc[0])
    lc = run_named("light_curve", str(catalog), (oid,))
    assert len(lc) == (rows["object_id"] == oid).sum()
    assert lc["is_detection"].sum() == (assoc["object_id"] == oid).sum()
    assert {"mjd", "band", "mag", "mag_err", "flags", "forced_flux", "mag_limit",
            "is_upper_limit"} <= set(lc.columns)


def test_forced_step_names_an_image_without_its_fits(survey, tmp_path):
    import shutil

    from skysurvey.forced_run import run_forced

    raw, original = survey
    catalog = tmp_path / "cat"
    shutil.copytree(original, catalog)
    partial = tmp_path / "raw"
    partial.mkdir()
    first = sorted(raw.glob("*.fits"))[0]
    shutil.copy(first, partial / first.name)
    report = run_forced(str(catalog), str(partial))
    assert len(report.failed) == 1 and "no FITS file" in report.failed[0]["error"]


@pytest.mark.slow
def test_forced_step_on_s3_through_the_moto_server(survey, moto_server, monkeypatch, capsys):
    from skysurvey import aws
    from skysurvey.forced_run import run_forced

    raw, catalog = survey
    from conftest import upload_survey

    upload_survey(raw, catalog)
    report = run_forced("s3://cat", "s3://raw/images", workers=1)
    assert not report.failed, report.summary()
    rows = _forced_rows("s3://cat")
    assert len(rows) > 0 and set(rows["image_id"]) == {p.stem for p in raw.glob("*.fits")}
    assert run_forced("s3://cat", "s3://raw/images").unchanged == 2
    # the script: measures again (--rebuild) and registers the band/night partitions in Glue
    from conftest import load_script

    from skysurvey import athena

    glue = aws.client("glue")
    glue.create_database(DatabaseInput={"Name": "astronomy"})
    glue.create_table(DatabaseName="astronomy", TableInput=athena.glue_table_input(
        athena.TABLES["forced_photometry"], "s3://cat"))
    monkeypatch.setenv("ATHENA_DATABASE", "astronomy")
    script = load_script("forced_photometry")
    assert script.main(["--catalog", "s3://cat", "--input", "s3://raw/images", "--workers", "1",
                        "--rebuild"]) == 0
    assert "2 images measured" in capsys.readouterr().out
    parts = glue.get_partitions(DatabaseName="astronomy", TableName="forced_photometry")
    assert {tuple(p["Values"]) for p in parts["Partitions"]} == {
        ("r", night) for night in set(rows["night"])}


def test_older_images_files_read_without_footprint_and_are_skipped(survey, tmp_path, caplog):
    """An images file of an earlier pipeline_version (no footprint_hpx12): read as null,
    named once; the coverage query does not list it; the forced step skips it with a note."""
    import shutil

    import pyarrow.parquet as pq

    from skysurvey.forced_run import run_forced
    from skysurvey.queries import run_named

    raw, original = survey
    catalog = tmp_path / "cat"
    shutil.copytree(original, catalog)
    first = sorted((catalog / "images").rglob("*.parquet"))[0]
    table = pq.read_table(first)
    pq.write_table(table.drop_columns(["footprint_hpx12"]), first)
    found = run_named("coverage", str(catalog), (RA0, DEC0))
    assert len(found) == 1 and first.stem not in set(found["image_id"])
    assert "footprint_hpx12" in caplog.text and "older pipeline_version" in caplog.text
    report = run_forced(str(catalog), str(raw))
    assert len(report.replies) == 1 and any("without footprint_hpx12" in n for n in report.notes)


def test_handler_runs_a_forced_event_here(survey, tmp_path):
    """The Lambda handler takes ``{"task": "forced_image"}`` events (same function as images)."""
    import shutil

    from conftest import load_script

    from skysurvey.forced_run import plan_forced

    raw, original = survey
    catalog = tmp_path / "cat"
    shutil.copytree(original, catalog)
    task = plan_forced(str(catalog), str(raw)).tasks[0]
    event = json.loads(json.dumps(task.event()))  # what Lambda would receive
    reply = load_script("lambda_function").lambda_handler(event)
    assert reply["status"] == "ok", reply
    assert reply["n_objects"] > 0 and reply["forced_key"].endswith(".parquet")
    bad = load_script("lambda_function").lambda_handler({"task": "forced_image"})
    assert bad["status"] == "error" and "bad forced event" in bad["error"]


@pytest.mark.slow
def test_coverage_on_athena_sends_the_same_text_and_binds_the_cell(moto_server, capsys):
    """Through query_with_athena.py over the moto server (moto runs no SQL: the replies are
    queued, the three views' first): the Glue tables include forced_photometry and
    images.footprint_hpx12 as array<bigint>; the coverage text is DuckDB's, the cell a bound
    parameter."""
    import urllib.request

    import boto3
    from conftest import load_script

    from skysurvey.forced import position_cell
    from skysurvey.queries import NAMED_QUERIES

    boto3.client("athena").create_work_group(
        Name="astronomy-workgroup",
        Configuration={"ResultConfiguration": {"OutputLocation": "s3://cat/athena-results/"}})
    boto3.client("s3").create_bucket(Bucket="cat")
    columns = [{"CatalogName": "hive", "SchemaName": "", "TableName": "", "Name": n, "Label": n,
                "Type": t, "Precision": 0, "Scale": 0, "Nullable": "UNKNOWN",
                "CaseSensitive": False}
               for n, t in (("image_id", "varchar"), ("band", "varchar"), ("night", "varchar"),
                            ("mjd", "double"), ("depth_5sigma", "double"))]
    for rows, info in (([], []), ([], []), ([], []), ([["image_id", "band", "night", "mjd",
                                              "depth_5sigma"],
                                             ["n00_r", "r", "2026-04-01", "61131.1", "23.1"]],
                                            columns)):
        body = {"results": [{"rows": [{"Data": [{"VarCharValue": v} for v in r]} for r in rows],
                             "column_info": info}]}
        urllib.request.urlopen(urllib.request.Request(
            f"{moto_server}/moto-api/static/athena/query-results", data=json.dumps(body).encode(),
            method="POST", headers={"Content-Type": "application/json"}))
    script = load_script("query_with_athena")
    assert script.main(["--engine", "athena", "--catalog", "s3://cat", "--query", "coverage",
                        "--param", "150.1", "--param", "2.2"]) == 0
    assert "n00_r" in capsys.readouterr().out
    client = boto3.client("athena")
    sent = [client.get_query_execution(QueryExecutionId=q)["QueryExecution"]
            for q in client.list_query_executions()["QueryExecutionIds"]]
    query = [q for q in sent if "footprint_hpx12" in q["Query"]]
    assert len(query) == 1 and query[0]["Query"] == NAMED_QUERIES["coverage"].sql
    assert query[0]["ExecutionParameters"] == [str(position_cell(150.1, 2.2))]
    glue = boto3.client("glue")
    tables = {t["Name"]: t for t in glue.get_tables(DatabaseName="astronomy")["TableList"]}
    assert tables["forced_photometry"]["PartitionKeys"] == [
        {"Name": "band", "Type": "string"}, {"Name": "night", "Type": "string"}]
    images = {c["Name"]: c["Type"] for c in tables["images"]["StorageDescriptor"]["Columns"]}
    assert images["footprint_hpx12"] == "array<bigint>"


def test_forced_step_through_the_lambda_backend_gives_the_local_rows(survey, tmp_path):
    """--backend lambda: each task travels as a JSON event to the handler (here a client that
    runs lambda_function.lambda_handler in this process: moto never runs Lambda code); the
    rows are those of the local run."""
    import io
    import shutil
    from functools import partial

    from conftest import load_script

    from skysurvey.forced_run import run_forced, run_lambda

    handler = load_script("lambda_function").lambda_handler
    calls = []

    class Client:
        def invoke(self, FunctionName, InvocationType, Payload):  # boto3's names
            calls.append(FunctionName)
            reply = handler(json.loads(Payload))
            return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(reply).encode()),
                    "ResponseMetadata": {"RetryAttempts": 0}}

    raw, original = survey
    catalogs = []
    for name, runner in (("local", None),
                         ("lambda", partial(run_lambda, function="fn", client=Client()))):
        catalog = tmp_path / name
        shutil.copytree(original, catalog)
        report = run_forced(str(catalog), str(raw), runner=runner)
        assert not report.failed and len(report.replies) == 2, report.summary()
        catalogs.append(_forced_rows(catalog).drop(columns=["pipeline_version"]))
    assert calls == ["fn", "fn"]
    pd.testing.assert_frame_equal(catalogs[0], catalogs[1])


@pytest.mark.parametrize("frame", ["galactic", "fk4"])
def test_footprint_and_positions_in_a_header_of_another_frame(frame):
    """A galactic or FK4 header: the footprint cells are ICRS cells, and ICRS positions map
    to the pixels they came from (forced.icrs_to_pixel honours the header's frame)."""
    from skysurvey.astrometry import celestial_wcs
    from skysurvey.forced import icrs_to_pixel
    from skysurvey.synth import header_in_frame

    shape = (300, 300)
    icrs = _wcs(shape, RA0, DEC0, 1.0, 15.0, False)
    header = header_in_frame(icrs.to_header(), shape, frame)
    wcs, name = celestial_wcs(header)
    assert name.startswith(frame)
    valid = np.ones(shape, bool)
    assert set(footprint_hpx12(wcs, shape, valid)) >= set(_pixel_cells(wcs, valid))
    assert set(footprint_hpx12(wcs, shape, valid)) == set(footprint_hpx12(icrs, shape, valid))
    x = np.array([0.0, 150.3, 299.0])
    y = np.array([10.0, 120.7, 299.0])
    ra, dec = pixel_to_icrs(icrs, x, y)
    px, py = icrs_to_pixel(wcs, ra, dec)
    assert np.allclose(px, x, atol=1e-3) and np.allclose(py, y, atol=1e-3)


def test_the_forced_event_runs_without_scipy(survey, tmp_path):
    """The Lambda package has no scipy (112 MB): the footprint and the forced task never
    import it (a fresh interpreter where importing scipy fails)."""
    import shutil
    import subprocess
    import sys

    from skysurvey.config import REPO_ROOT
    from skysurvey.forced_run import plan_forced

    raw, original = survey
    catalog = tmp_path / "cat"
    shutil.copytree(original, catalog)
    event = plan_forced(str(catalog), str(raw)).tasks[0].event()
    code = ("import json, sys; sys.modules['scipy'] = None; sys.path.insert(0, sys.argv[2]); "
            "import lambda_function; "
            "from skysurvey.forced import image_footprint; "
            "r = lambda_function.lambda_handler(json.loads(sys.argv[1])); "
            "print(json.dumps(r)); assert 'scipy' not in [m.split('.')[0] for m in sys.modules "
            "if sys.modules[m] is not None]")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(event),
                          str(REPO_ROOT / "scripts")], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["status"] == "ok"


@pytest.mark.slow
def test_transients_found_from_forced_light_curves_against_truth(tmp_path):
    """End to end on a two-night survey with 12 injected transients: forced photometry, then
    lightcurves.transient_candidate on its rows. The isolated transients (one night only) that
    were detected are candidates; isolated constant stars detected on both nights are not."""
    from skysurvey.calibrate import nearest
    from skysurvey.forced_run import run_forced
    from skysurvey.lightcurves import EpochRows, n_covering, transient_candidate
    from skysurvey.objects import build_objects
    from skysurvey.queries import run_query
    from skysurvey.runner import run_local
    from skysurvey.synth_survey import write_survey

    raw, catalog = tmp_path / "raw", tmp_path / "cat"
    paths = write_survey(raw, nights=2, bands=("r",), size=256, n_transients=12, seed=9)
    assert all(r["status"] == "ok" for r in run_local(str(raw), [p.name for p in paths],
                                                       str(catalog), workers=1))
    build_objects(str(catalog))
    assert not run_forced(str(catalog), str(raw)).failed
    rows = run_query(
        "SELECT f.object_id, f.snr, f.mag, f.mag_limit, a.source_id IS NOT NULL AS detected "
        "FROM forced_photometry f LEFT JOIN associations a ON a.object_id = f.object_id AND "
        "a.image_id = f.image_id", str(catalog))
    objects = run_query("SELECT object_id, ra, dec, n_detections FROM objects ORDER BY "
                        "object_id", str(catalog))
    ids = objects["object_id"].to_numpy()
    candidate, _ = transient_candidate(EpochRows(rows["object_id"], rows["detected"],
                                                 rows["snr"], rows["mag"], rows["mag_limit"]),
                                       ids)
    covering = n_covering(rows["object_id"], ids)
    truth = pd.read_csv(raw / "truth" / "objects.csv")
    cosd = np.cos(np.radians(DEC0))
    j, _ = nearest(objects["ra"] * cosd * 3600, objects["dec"] * 3600,
                   truth["ra"] * cosd * 3600, truth["dec"] * 3600, 1.0)
    matched = j >= 0
    kind = np.where(matched, truth["transient_night"].to_numpy()[np.maximum(j, 0)], -9)
    # isolated: no other true object within 3" brighter than 24 (a transient on top of a
    # star shows that star's flux on the other night: not quiet, by design)
    tx, ty = truth["ra"].to_numpy() * cosd * 3600, truth["dec"].to_numpy() * 3600
    crowded = np.array([((np.hypot(tx - tx[k], ty - ty[k]) < 3.0)
                         & (truth["mag_r"].to_numpy() < 24)).sum() > 1 for k in range(len(truth))])
    alone = ~crowded[np.maximum(j, 0)]
    transient = matched & (kind >= 0) & (covering == 2) & alone
    assert transient.sum() >= 1, "no isolated injected transient was detected and covered twice"
    assert candidate[transient].all(), rows[rows["object_id"].isin(ids[transient])].to_string()
    constant = (matched & alone & (kind == -1) & (objects["n_detections"].to_numpy() == 2)
                & (truth["amplitude"].to_numpy()[np.maximum(j, 0)] == 0))
    assert constant.sum() >= 5
    assert not candidate[constant].any()
    # and among all objects, candidates are the injected transients (matched or not) only
    others = candidate & ~(matched & (kind >= 0))
    assert others.sum() <= 1, objects[others].to_string()


def test_without_objects_nothing_is_read_or_written(tmp_path, fits_factory):
    from skysurvey.forced_run import FOLDER, run_forced
    from skysurvey.pipeline import catalog_image
    from skysurvey.storage import open_store

    raw = tmp_path / "raw"
    raw.mkdir()
    fits_factory(raw / "x.fits")
    assert catalog_image(open_store(raw), "x.fits", open_store(tmp_path / "cat"))["status"] == "ok"
    report = run_forced(str(tmp_path / "cat"), str(raw))
    assert report.replies == [] and "no objects yet" in report.summary()
    assert not (tmp_path / "cat" / FOLDER).exists()


def test_footprint_of_pixels_larger_than_cells_and_of_a_too_large_image():
    """Pixels of 20" and 60" (cells are ~52"): sampled inside the pixels, so the footprint
    holds every cell that any part of a valid pixel reaches (checked against 8 x 8 samples
    per pixel); an image spanning more than MAX_CELLS cells gets none, with a note."""
    from astropy.io import fits

    from skysurvey.forced import MAX_CELLS

    for shape, scale in (((120, 100), 20.0), ((60, 50), 60.0)):
        wcs = _wcs(shape, RA0, DEC0, scale, 10.0, False)
        valid = np.ones(shape, bool)
        valid[20:30, 10:40] = False
        cells = footprint_hpx12(wcs, shape, valid)
        yy, xx = np.nonzero(valid)
        sub = (np.arange(8) + 0.5) / 8 - 0.5
        ox, oy = (a.ravel() for a in np.meshgrid(sub, sub))
        ra, dec = pixel_to_icrs(wcs, (xx[:, None] + ox).ravel(), (yy[:, None] + oy).ravel())
        truth = np.unique(_lonlat_cells(ra, dec, 12))
        assert set(truth) <= set(cells)
        assert len(set(cells) - set(truth)) <= 0.02 * len(truth)
    huge = _wcs((180, 360), RA0, DEC0, 3600.0, 0.0, False)  # 1 degree pixels
    header = huge.to_header()
    notes = []
    assert image_footprint(header, np.zeros((180, 360)), None, notes) is None
    assert "more than" in notes[0] and str(MAX_CELLS) in notes[0]
    with pytest.raises(ValueError, match="no footprint"):
        footprint_hpx12(huge, (180, 360))
    assert image_footprint(fits.Header(), np.zeros((4, 4))) is None  # no WCS: no note needed


def test_objects_files_are_read_only_for_the_units_under_a_footprint():
    from skysurvey.forced_run import file_touches

    cells = np.array([(7 << 14) + 5, (7 << 14) + 6])  # two order-12 cells of order-5 pixel 7
    assert file_touches("objects/hpx5=7/k5-7.parquet", cells)
    assert not file_touches("objects/hpx5=8/k5-8.parquet", cells)
    assert file_touches(f"objects/hpx5=7/k12-{(7 << 14) + 6}.parquet", cells)
    assert not file_touches(f"objects/hpx5=7/k12-{(7 << 14) + 7}.parquet", cells)
    assert file_touches(f"objects/hpx5=7/k10-{((7 << 14) + 5) >> 4}.parquet", cells)
    assert file_touches(f"objects/hpx5=7/k13-{(((7 << 14) + 5) << 2) + 3}.parquet", cells)
    assert file_touches("objects/hpx5=7/other.parquet", cells)  # unknown names are read


@pytest.mark.slow
def test_a_new_night_back_fills_its_new_objects_on_the_earlier_image(tmp_path):
    """Night 0 catalogued, associated, forced; then night 1 arrives (incremental build): the
    forced run measures night 1 and measures night 0 again, which now holds rows for the
    objects first seen on night 1 that it covers (its transients among them), as
    non-detections."""
    from skysurvey.forced_run import run_forced
    from skysurvey.objects import build_objects
    from skysurvey.queries import run_query
    from skysurvey.runner import run_local
    from skysurvey.synth_survey import write_survey

    raw, catalog = tmp_path / "raw", tmp_path / "cat"
    paths = write_survey(raw, nights=2, bands=("r",), size=256, n_transients=12, seed=9)
    night0, night1 = (p.name for p in sorted(paths))
    assert run_local(str(raw), [night0], str(catalog), workers=1)[0]["status"] == "ok"
    build_objects(str(catalog))
    first = run_forced(str(catalog), str(raw))
    assert len(first.replies) == 1
    before = set(_forced_rows(catalog)["object_id"])
    assert run_local(str(raw), [night1], str(catalog), workers=1)[0]["status"] == "ok"
    build_objects(str(catalog))
    second = run_forced(str(catalog), str(raw))
    assert sorted(r["image_id"] for r in second.replies) == ["n00_r", "n01_r"]
    rows = _forced_rows(catalog)
    new = run_query("SELECT object_id, ra, dec FROM objects WHERE first_mjd > (SELECT "
                    "min(mjd) + 0.5 FROM images)", str(catalog))
    assert not set(new["object_id"]) & before
    # the new objects that night 0's image covers (its WCS, 2 px inside the edges)
    from astropy.io import fits

    from skysurvey.astrometry import celestial_wcs
    from skysurvey.forced import icrs_to_pixel

    wcs, _ = celestial_wcs(fits.getheader(raw / night0))
    x, y = icrs_to_pixel(wcs, new["ra"], new["dec"])
    inside = (x > 2) & (x < 253) & (y > 2) & (y < 253)
    assert inside.sum() >= 3
    on_night0 = set(rows[rows["image_id"] == "n00_r"]["object_id"])
    assert set(new["object_id"][inside]) <= on_night0  # back-filled
    new = new["object_id"][inside]
    assoc = run_query("SELECT image_id, object_id FROM associations", str(catalog))
    assert not set(zip(assoc["image_id"], assoc["object_id"], strict=True)) & {
        ("n00_r", o) for o in new}
