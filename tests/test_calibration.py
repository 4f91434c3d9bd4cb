"""Calibration against a reference catalog: formats, HATS, S3, matching, zero point, bad input."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from skysurvey import reference as reference_module
from skysurvey.calibrate import (
    CalibrationConfig,
    apply_zero_point,
    calibrate,
    fit_zero_point,
    isolated,
    mutual_nearest,
    point_sources,
    tangent_plane,
)
from skysurvey.detect import measure_image
from skysurvey.errors import ConfigError
from skysurvey.fitsread import FitsImage
from skysurvey.reference import (
    ReferenceCatalog,
    ReferenceSpec,
    angular_distance,
    clear_cache,
    open_reference,
    parse_bands,
    propagate,
    reference_spec,
    write_hats,
)
from skysurvey.synth import make_image, make_sky_sources, reference_catalog

TRANSPARENCY = 0.23  # the image's true zero point is 30.0 - 0.23; its MAGZERO says 30.0


@pytest.fixture(autouse=True)
def _fresh_references():
    clear_cache()
    yield
    clear_cache()


def _sky(seed=5, n_stars=500):
    rng = np.random.default_rng(seed)
    sky = make_sky_sources(rng, n_stars, 40, 150.1, 2.2, 0.5 * 512 * 0.25 / 3600 * 1.45)
    stars = (sky["kind"] == "star").to_numpy()
    sky.loc[stars, "mag_r"] = rng.uniform(16.5, 22.0, stars.sum())  # many calibration stars
    return sky


@pytest.fixture(scope="module")
def field():
    """A 512² r-band image whose MAGZERO is 0.23 mag off, its measured catalog and sky."""
    sky = _sky()
    image = make_image((512, 512), seed=5, sources=sky, transparency=TRANSPARENCY,
                       rotation_deg=10.0)
    sources, row = measure_image(FitsImage(image.data, None, image.header, 0, "x"), "x")
    return sources, row, sky, image


@pytest.fixture(scope="module")
def ref_frame(field):
    return reference_catalog(field[2], seed=1)


def _write(frame: pd.DataFrame, path, kind):
    if kind == "parquet":
        frame.to_parquet(path, index=False)
    elif kind == "csv":
        frame.to_csv(path, index=False)
    else:
        Table.from_pandas(frame).write(path, format="fits" if kind == "fits" else "votable")
    return str(path)


def _true_mag_offset(sources, row, image, min_snr=50):
    """Median of mag_apcorr - true magnitude over bright stars (nearest truth within 1 px)."""
    truth = image.truth[image.truth["kind"] == "star"]
    s = sources.to_pandas()
    d = np.hypot(s["x"].to_numpy()[:, None] - truth["x"].to_numpy()[None],
                 s["y"].to_numpy()[:, None] - truth["y"].to_numpy()[None])
    nearest = d.argmin(axis=1)
    ok = (d.min(axis=1) < 1) & (s["snr"] >= min_snr).to_numpy() & (s["flags"] == 0).to_numpy()
    resid = s["mag_apcorr"].to_numpy()[ok] - truth["mag"].to_numpy()[nearest[ok]]
    return float(np.median(resid)), int(ok.sum())


# ---------------------------------------------------------------- numpy building blocks

def test_one_to_one_match_by_hand():
    # source 0 and 1 both nearest to reference 0; only the closer pair survives
    sx, sy = np.array([0.0, 0.3, 5.0, 20.0]), np.array([0.0, 0.0, 5.0, 20.0])
    rx, ry = np.array([0.2, 5.1, 40.0]), np.array([0.0, 5.0, 40.0])
    i, j = mutual_nearest(sx, sy, rx, ry, 1.0)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(1, 0), (2, 1)]
    assert mutual_nearest(sx, sy, rx[:0], ry[:0], 1.0)[0].size == 0


def test_one_to_one_match_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    rx, ry = rng.uniform(0, 100, (2, 400))
    sx, sy = rx + rng.normal(0, 0.3, 400), ry + rng.normal(0, 0.3, 400)
    i, j = mutual_nearest(sx, sy, rx, ry, 1.0)
    d = np.hypot(sx[:, None] - rx[None], sy[:, None] - ry[None])
    d[d > 1.0] = np.inf
    to_r, to_s = d.argmin(axis=1), d.argmin(axis=0)
    expected = {(a, int(to_r[a])) for a in range(400)
                if np.isfinite(d[a, to_r[a]]) and to_s[to_r[a]] == a}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected
    assert len(set(j.tolist())) == len(j)


def test_calibration_stars_may_carry_the_kron_fallback_flag():
    """Bit 4096 (a circular flux for Kron's) says nothing of the aperture flux the zero point
    uses; on undersampled images most stars carry it. Any other flag still excludes."""
    import pyarrow as pa

    sources = pa.table({"flags": [0, 4096, 4096 | 1, 256, 0],
                        "snr": [100.0, 100.0, 100.0, 100.0, 5.0],
                        "class_star": [1.0, 1.0, 1.0, 1.0, 1.0]})
    assert point_sources(sources, CalibrationConfig()).tolist() == [True, True, False, False,
                                                                     False]


def test_isolated_by_hand():
    assert isolated([0, 0.5, 10, 30], [0, 0, 0, 0], 1.0).tolist() == [False, False, True, True]


def test_tangent_plane_and_distance_by_hand():
    x, y = tangent_plane([150.1 + 1 / 3600 / math.cos(math.radians(2.2))], [2.2 + 2 / 3600],
                         150.1, 2.2)
    assert x[0] == pytest.approx(1.0, abs=1e-3) and y[0] == pytest.approx(2.0, abs=1e-3)
    assert angular_distance(10.0, 0.0, 10.0, 1.0) == pytest.approx(1.0)


def test_zero_point_fit_clips_outliers_and_reports_its_error():
    rng = np.random.default_rng(1)
    delta = 27.3 + rng.normal(0, 0.02, 200)
    delta[:15] += rng.uniform(0.3, 2.0, 15)  # blends and variables
    fit = fit_zero_point(delta, np.full(200, 0.02), CalibrationConfig())
    assert fit.value == pytest.approx(27.3, abs=3 * 0.02 / math.sqrt(185))
    assert fit.n >= 180 and not fit.used[:15].any()
    assert fit.rms == pytest.approx(0.02, rel=0.2)
    assert fit.error == pytest.approx(0.02 / math.sqrt(fit.n), rel=0.25)


def test_proper_motion_propagation_by_hand():
    ra, dec = propagate(np.array([10.0]), np.array([60.0]), np.array([100.0]),
                        np.array([-50.0]), np.array([2016.0]), 2026.0)
    assert (dec[0] - 60.0) * 3.6e6 == pytest.approx(-500.0, abs=1e-3)
    assert (ra[0] - 10.0) * 3.6e6 * math.cos(math.radians(60.0)) == pytest.approx(1000.0,
                                                                                    rel=1e-4)


def test_magnitudes_from_the_zero_point_exclude_its_error(field):
    sources = apply_zero_point(field[0], 27.5)
    flux = sources["flux"].to_numpy()
    ok = flux > 0
    assert np.allclose(sources["mag"].to_numpy()[ok], 27.5 - 2.5 * np.log10(flux[ok]))
    err = 2.5 / math.log(10) * sources["flux_err"].to_numpy()[ok] / flux[ok]
    assert np.allclose(sources["mag_err"].to_numpy()[ok], err)
    apc = sources["flux_apcorr"].to_numpy()
    good = np.isfinite(apc) & (apc > 0)
    assert good.any()
    assert np.allclose(sources["mag_apcorr"].to_numpy()[good], 27.5 - 2.5 * np.log10(apc[good]))


# ---------------------------------------------------------------- settings and band mapping

def test_band_mapping_is_case_insensitive_and_checked(monkeypatch):
    assert parse_bands(" G=gMag, r=RMAG ") == (("g", "gMag"), ("r", "RMAG"))
    with pytest.raises(ValueError, match="'g' is not BAND=COLUMN"):
        parse_bands("g")
    with pytest.raises(ConfigError, match="REFERENCE_BANDS"):
        reference_spec("ref.parquet", "g:gmag")
    assert reference_spec() is None
    monkeypatch.setenv("REFERENCE_CATALOG", "s3://bucket/ref.parquet")
    monkeypatch.setenv("REFERENCE_BANDS", "R=rmag")
    spec = reference_spec()
    assert spec.uri == "s3://bucket/ref.parquet" and spec.column_for("r") == "rmag"
    assert reference_spec("other.csv").uri == "other.csv"  # the flag wins


# ---------------------------------------------------------------- calibration on an image

def _check_calibrated(sources, row, image):
    assert row["zero_point_source"] == "reference"
    assert row["zero_point"] == pytest.approx(30.0 - TRANSPARENCY, abs=0.03)
    assert 0 < row["zero_point_err"] < 0.01 and row["n_calib"] >= 10
    assert 0 < row["zero_point_rms"] < 0.05
    assert abs(row["astrom_offset_ra"]) < 0.02 and abs(row["astrom_offset_dec"]) < 0.02
    assert 0 < row["astrom_rms"] < 0.1
    offset, n = _true_mag_offset(sources, row, image)
    assert n >= 10 and abs(offset) < 0.015, (offset, n)


@pytest.mark.parametrize("kind", ["parquet", "csv", "fits", "votable"])
def test_calibrates_against_every_file_format(field, ref_frame, tmp_path, kind):
    sources, row, _, image = field
    header_offset, _ = _true_mag_offset(apply_zero_point(sources, row["zero_point"]), row,
                                        image)
    assert header_offset == pytest.approx(TRANSPARENCY, abs=0.02)  # MAGZERO is 0.23 off
    uri = _write(ref_frame, tmp_path / f"ref.{'vot' if kind == 'votable' else kind}", kind)
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse(uri))
    _check_calibrated(out, new_row, image)
    assert new_row["warnings"] is None
    # the depth moves with the zero point
    assert new_row["depth_5sigma"] == pytest.approx(row["depth_5sigma"] - 0.23, abs=0.03)


def test_explicit_mapping_other_position_names_and_case(field, ref_frame, tmp_path):
    sources, row, _, image = field
    frame = ref_frame.rename(columns={"ra": "RA_ICRS", "dec": "DE_ICRS", "rmag": "Rpmag",
                                      "rmag_err": "e_Rpmag"})
    uri = _write(frame, tmp_path / "ref.parquet", "parquet")
    out, new_row = calibrate(sources, row, "R", ReferenceSpec.parse(uri, "r=rpmag"))
    _check_calibrated(out, new_row, image)


def test_big_parquet_reads_only_the_row_groups_and_columns_it_needs(field, ref_frame,
                                                                   tmp_path, monkeypatch):
    sources, row, _, image = field
    rng = np.random.default_rng(2)
    n = 200_000  # the field's stars plus a band of sky far away, sorted by dec
    far = pd.DataFrame({"ra": rng.uniform(0, 360, n), "dec": rng.uniform(-60, 60, n)})
    far = far[np.abs(far["dec"] - 2.2) > 0.5]
    for col in ref_frame.columns[2:]:
        far[col] = 20.0
    big = pd.concat([ref_frame, far]).sort_values("dec")
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pandas(big, preserve_index=False), path,
                   row_group_size=5_000)
    monkeypatch.setattr(reference_module, "IN_MEMORY_BYTES", 0)  # treat it as big
    catalog = ReferenceCatalog(str(path))
    assert catalog._dataset is not None and catalog._table is None
    box = reference_module._box_filter("ra", "dec", row["ra_center"], row["dec_center"], 0.05)
    read = sum(len(f.split_by_row_group(box)) for f in catalog._dataset.get_fragments(box))
    total = pq.ParquetFile(path).metadata.num_row_groups
    assert read <= 2 and total >= 35  # row-group statistics prune the rest
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse(str(path)))
    _check_calibrated(out, new_row, image)


def test_hats_catalog_reads_only_the_pixels_over_the_image(field, ref_frame, tmp_path):
    import hats

    sources, row, _, image = field
    rng = np.random.default_rng(3)
    n = 3_000  # a wide patch of sky around, so most pixels are elsewhere
    extra = pd.DataFrame({"ra": rng.uniform(120, 180, n), "dec": rng.uniform(-20, 25, n)})
    for col in ref_frame.columns[2:]:
        extra[col] = 20.0
    root = write_hats(pd.concat([ref_frame, extra]), tmp_path / "ref_hats", order=4)
    assert len(hats.read_hats(root).get_healpix_pixels()) > 100  # a valid HATS catalog
    catalog = open_reference(str(root))
    overlapping = catalog._hats.overlapping(row["ra_center"], row["dec_center"], 0.03)
    assert 1 <= len(overlapping) <= 4
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse(str(root)))
    _check_calibrated(out, new_row, image)


def test_proper_motions_are_propagated_to_the_image_epoch(field, ref_frame, tmp_path):
    """Stars move 1.5 arcsec between the reference epoch (2000) and the image (2026): with
    pmra/pmdec/ref_epoch the astrometric offset is nil; without, it is that motion."""
    sources, row, _, image = field
    pm = pd.DataFrame({"pmra": np.full(len(ref_frame), 40.0),
                       "pmdec": np.full(len(ref_frame), -40.0)})
    dt = 2000.0 - (2000.0 + (row["mjd"] - 51544.5) / 365.25)
    moved = ref_frame.assign(
        ra=ref_frame["ra"] + pm["pmra"].to_numpy() * dt / 3.6e6 / np.cos(np.radians(2.2)),
        dec=ref_frame["dec"] + pm["pmdec"].to_numpy() * dt / 3.6e6,
        pmra=pm["pmra"].to_numpy(), pmdec=pm["pmdec"].to_numpy(), ref_epoch=2000.0)
    uri = _write(moved, tmp_path / "pm.parquet", "parquet")
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse(uri))
    _check_calibrated(out, new_row, image)
    still = _write(moved.drop(columns=["pmra", "pmdec", "ref_epoch"]),
                   tmp_path / "nopm.parquet", "parquet")
    _, stale = calibrate(sources, row, "r", ReferenceSpec.parse(still))
    years = -dt
    assert stale["astrom_offset_ra"] == pytest.approx(0.040 * years, abs=0.03)
    assert stale["astrom_offset_dec"] == pytest.approx(-0.040 * years, abs=0.03)


def test_s3_reference_through_the_moto_server(field, ref_frame, tmp_path, moto_server):
    from skysurvey import aws

    sources, row, _, image = field
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="refs")
    _write(ref_frame, tmp_path / "r.parquet", "parquet")
    s3.put_object(Bucket="refs", Key="cats/ref.parquet",
                  Body=(tmp_path / "r.parquet").read_bytes())
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse("s3://refs/cats/ref.parquet"))
    _check_calibrated(out, new_row, image)
    for uri in ("s3://refs/cats/missing.parquet", "s3://no-such-bucket/ref.parquet"):
        _, bad = calibrate(sources, row, "r", ReferenceSpec.parse(uri))
        assert bad["zero_point_source"] == "MAGZERO" and bad["zero_point"] == 30.0
        assert bad["warnings"].startswith(f"reference {uri}: ")
        assert bad["warnings"].endswith(": header zero point used")


# ---------------------------------------------------------------- bad input: one-line warnings

def _bad_cases(tmp_path, ref_frame):
    far = ref_frame.assign(ra=ref_frame["ra"] + 40.0)
    (tmp_path / "ref.txt").write_text("ra dec rmag\n1 2 3\n")
    return {
        "missing": (str(tmp_path / "nope.parquet"), None, "no such file or object"),
        "no ra/dec": (_write(ref_frame.rename(columns={"ra": "x", "dec": "y"}),
                             tmp_path / "xy.parquet", "parquet"), None, "no ra/dec columns"),
        "no band column": (_write(ref_frame, tmp_path / "ok.parquet", "parquet"), "r=kmag",
                           "no column 'kmag' (mapped to band r)"),
        "no column by name": (_write(ref_frame.drop(columns=["rmag"]),
                                     tmp_path / "norr.parquet", "parquet"), None,
                              "no magnitude column for band 'r'"),
        "other sky": (_write(far, tmp_path / "far.parquet", "parquet"), None,
                      "no reference star matched"),
        "unknown format": (str(tmp_path / "ref.txt"), None, "unknown format"),
        "not a table": (_write(ref_frame, tmp_path / "broken.fits", "csv"), None,
                        "cannot read"),
    }


@pytest.mark.parametrize("case", ["missing", "no ra/dec", "no band column", "no column by name",
                                  "other sky", "unknown format", "not a table"])
def test_bad_references_fall_back_to_the_header_with_one_line(field, ref_frame, tmp_path,
                                                                case):
    sources, row, _, _ = field
    uri, bands, expected = _bad_cases(tmp_path, ref_frame)[case]
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse(uri, bands))
    assert new_row["zero_point_source"] == "MAGZERO" and new_row["zero_point"] == 30.0
    assert expected in new_row["warnings"] and "\n" not in new_row["warnings"]
    assert new_row["warnings"].endswith("header zero point used")
    assert out["mag"].null_count < out.num_rows  # header magnitudes


def test_without_any_zero_point_magnitudes_are_null_and_said(field, tmp_path):
    sources, row, _, _ = field
    row = {**row, "zero_point": None, "zero_point_source": None}
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse(str(tmp_path / "x.csv")))
    assert new_row["zero_point"] is None
    for column in ("mag", "mag_err", "mag_apcorr", "mag_apcorr_err"):
        assert out[column].null_count == out.num_rows
    assert "no header zero point either" in new_row["warnings"]
    assert "magnitudes are null" in new_row["warnings"]


def test_few_matches_keep_the_header_zero_point(field, ref_frame, tmp_path):
    sources, row, _, image = field
    bright = image.truth[(image.truth["kind"] == "star") & (image.truth["snr"] > 100)]
    near = angular_distance(ref_frame["ra"].to_numpy()[:, None],
                            ref_frame["dec"].to_numpy()[:, None],
                            bright["ra"].to_numpy()[None], bright["dec"].to_numpy()[None])
    few = ref_frame[(near.min(axis=1) < 0.5 / 3600)].iloc[:3]
    uri = _write(few, tmp_path / "few.parquet", "parquet")
    _, new_row = calibrate(sources, row, "r", ReferenceSpec.parse(uri))
    assert new_row["zero_point_source"] == "MAGZERO"
    assert re.search(r"only [1-3] reference calibration stars \(< 5\): header zero point used",
                     new_row["warnings"]), new_row["warnings"]


# ---------------------------------------------------------------- the pipeline, scripts, demo

def test_pipeline_scripts_and_lambda_event_calibrate(field, ref_frame, tmp_path, capsys):
    from conftest import load_script

    from skysurvey.lambda_backend import event_for

    image = field[3]
    (tmp_path / "in").mkdir()
    image.write(tmp_path / "in" / "field.fits")
    ref = _write(ref_frame, tmp_path / "ref.parquet", "parquet")
    invoke = load_script("invoke_lambda")
    assert invoke.main(["--input", str(tmp_path / "in"), "--catalog", str(tmp_path / "cat"),
                        "--workers", "1", "--no-progress", "--reference", ref,
                        "--reference-bands", "R=rmag"]) == 0
    images = pads.dataset(tmp_path / "cat" / "images", format="parquet").to_table()
    assert images["zero_point_source"].to_pylist() == ["reference"]
    assert images["zero_point"][0].as_py() == pytest.approx(30.0 - TRANSPARENCY, abs=0.03)
    assert invoke.main(["--input", str(tmp_path / "in"), "--catalog", str(tmp_path / "c2"),
                        "--reference", ref, "--reference-bands", "r"]) == 2
    capsys.readouterr()
    assert invoke.main(["--backend", "lambda", "--input", "s3://raw/images", "--catalog",
                        "s3://cat", "--reference", ref]) == 2  # the Lambda cannot read it
    assert "--backend lambda reads the reference from S3" in capsys.readouterr().err
    # the Lambda handler: the reference comes with the event
    handler = load_script("lambda_function")
    reply = handler.lambda_handler({"bucket": str(tmp_path / "in"), "key": "field.fits",
                                    "catalog_bucket": str(tmp_path / "c3"), "reference": ref})
    assert reply["status"] == "ok", reply
    images = pads.dataset(tmp_path / "c3" / "images", format="parquet").to_table()
    assert images["zero_point_source"].to_pylist() == ["reference"]
    event = event_for("s3://raw/images", "x.fits", "s3://cat",
                      ReferenceSpec.parse("s3://r/ref.parquet", "g=gmag"))
    assert event["reference"] == "s3://r/ref.parquet" and event["reference_bands"] == "g=gmag"


def test_later_commands_keep_the_catalogs_reference_unless_told_none(field, ref_frame,
                                                                     tmp_path, caplog):
    from conftest import load_script

    field[3].write((tmp_path / "in").mkdir() or tmp_path / "in" / "field.fits")
    ref = _write(ref_frame, tmp_path / "ref.parquet", "parquet")
    cat = tmp_path / "cat"
    invoke, handler = load_script("invoke_lambda"), load_script("lambda_function")
    base = ["--input", str(tmp_path / "in"), "--catalog", str(cat), "--no-progress"]

    def zero_point():
        images = pads.dataset(cat / "images", format="parquet").to_table().to_pylist()
        return images[0]["zero_point_source"], round(images[0]["zero_point"], 6)

    assert invoke.main([*base, "--reference", ref, "--reference-bands", "r=rmag"]) == 0
    calibrated = zero_point()
    assert calibrated[0] == "reference"
    # the handler on one image, no reference in the event (lambda_function.py --help's example)
    reply = handler.lambda_handler({"bucket": str(tmp_path / "in"), "key": "field.fits",
                                    "catalog_bucket": str(cat)})
    assert reply["status"] == "ok" and zero_point() == calibrated
    caplog.set_level("INFO")
    assert invoke.main(base) == 0 and zero_point() == calibrated
    assert "the reference this catalog was calibrated against" in caplog.text
    caplog.clear()
    assert invoke.main([*base, "--reference", "none"]) == 0  # asked for: said, then done
    assert zero_point() == ("MAGZERO", 30.0)
    assert "lose their calibration against" in caplog.text and ref in caplog.text


def test_a_column_picked_by_name_is_said_once_per_band_not_per_worker(field, ref_frame,
                                                                       tmp_path):
    import subprocess
    import sys

    from skysurvey.config import REPO_ROOT

    image = field[3]
    (tmp_path / "in").mkdir()
    for k in range(4):  # four r-band images over two worker processes
        image.write(tmp_path / "in" / f"field{k}.fits")
    ref = _write(ref_frame, tmp_path / "ref.parquet", "parquet")
    run = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "invoke_lambda.py"),
                          "--input", str(tmp_path / "in"), "--catalog", str(tmp_path / "cat"),
                          "--workers", "2", "--no-progress", "--reference", ref],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert err.count("picked by name") == 1, err
    assert "band r uses column rmag (picked by name; map it with --reference-bands r=COLUMN)" \
        in err


def test_the_demo_writes_a_reference_and_the_true_zero_points(tmp_path):
    from skysurvey.synth import write_sample

    write_sample(tmp_path, count=4, size=256, seed=4)
    meta = json.loads((tmp_path / "metadata.json").read_text())["images"]
    assert [m["header_zero_point"] is None for m in meta] == [False, True, False, False]
    for m in meta:
        assert 0 <= m["transparency"] <= 0.35
        nominal = {"g": 29.6, "r": 30.0, "i": 29.8}[m["band"]]
        assert m["zero_point"] == pytest.approx(nominal - m["transparency"], abs=1e-6)
    ref = pd.read_parquet(tmp_path / "reference.parquet")
    assert {"ra", "dec", "gmag", "rmag", "imag", "gmag_err"} <= set(ref.columns)
    assert ref["rmag"].max() < 21.6 and len(ref) >= 5


@pytest.mark.slow
def test_demo_field_magnitudes_match_the_truth_after_calibration(tmp_path):
    """The issue's accuracy target on the demo field (6 images of 2048², 3 bands, 2 nights;
    MAGZERO 0-0.35 mag off or missing): per image, the median of mag_apcorr - true magnitude
    over bright (SNR >= 50), isolated (no source within 10 px brighter than mag + 4), constant
    stars (>= 10 of them) is within 0.015 mag, and the median over images within 0.005."""
    from scipy.spatial import cKDTree

    from skysurvey.fitsread import observation_partition, read_fits
    from skysurvey.synth import write_sample

    write_sample(tmp_path, count=6, size=2048, seed=42)
    meta = json.loads((tmp_path / "metadata.json").read_text())["images"]
    spec = ReferenceSpec.parse(str(tmp_path / "reference.parquet"))
    offsets = []
    for m in meta:
        image = read_fits(tmp_path / m["file"], name=m["file"])
        sources, row = measure_image(image, m["image_id"])
        sources, row = calibrate(sources, row, observation_partition(image.header)[0], spec)
        assert row["zero_point_source"] == "reference" and row["n_calib"] >= 10
        truth = pd.read_csv(tmp_path / "truth" / f"{m['image_id']}.csv")
        tree = cKDTree(truth[["x", "y"]].to_numpy())
        s = sources.to_pandas()
        dist, idx = tree.query(s[["x", "y"]].to_numpy())
        t = truth.iloc[idx].reset_index(drop=True)
        mags = truth["mag"].to_numpy()
        isolated_ = np.array([all(mags[j] > t["mag"].iloc[k] + 4 for j in near if j != idx[k])
                              for k, near in enumerate(tree.query_ball_point(
                                  t[["x", "y"]].to_numpy(), 10.0))])
        ok = ((dist < 1) & (t["kind"] == "star").to_numpy() & (s["snr"] >= 50).to_numpy()
              & isolated_)
        assert ok.sum() >= 10, (m["image_id"], ok.sum())
        offset = float(np.median(s["mag_apcorr"].to_numpy()[ok] - t["mag"].to_numpy()[ok]))
        assert abs(offset) <= 0.015, (m["image_id"], offset)
        assert row["zero_point"] == pytest.approx(m["zero_point"], abs=0.05)  # vs the truth
        offsets.append(offset)
    assert abs(float(np.median(offsets))) <= 0.005, offsets


def test_hats_catalog_under_an_s3_prefix(field, ref_frame, tmp_path, moto_server):
    """As the public Gaia DR3 HATS catalog is read: a prefix holding the HATS layout."""
    from skysurvey import aws

    sources, row, _, image = field
    root = write_hats(ref_frame, tmp_path / "hats", order=5)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="refs")
    for path in root.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket="refs", Key=f"gaia/{path.relative_to(root).as_posix()}",
                          Body=path.read_bytes())
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse("s3://refs/gaia"))
    _check_calibrated(out, new_row, image)


def test_references_are_opened_once_per_process_and_reread_when_changed(ref_frame, tmp_path):
    path = tmp_path / "ref.parquet"
    _write(ref_frame, path, "parquet")
    first = open_reference(str(path))
    assert open_reference(str(path)) is first  # a warm container keeps it
    _write(ref_frame.iloc[:10], path, "parquet")
    os.utime(path, ns=(1, 1))  # a changed file (mtime and size) is read again
    again = open_reference(str(path))
    assert again is not first and again._table.num_rows == 10


@pytest.mark.parametrize("layout", ["no dataset folder", "no partition_info.csv",
                                    "pixel folders"])
def test_older_and_other_hats_layouts(field, ref_frame, tmp_path, layout):
    """Older catalogs keep Norder=K/ at the top; partition_info.csv may be missing (the files
    are listed instead); a large pixel may be a folder Npix=N/ of Parquet files."""
    import shutil

    sources, row, _, image = field
    root = write_hats(ref_frame, tmp_path / "hats", order=5)
    if layout == "no dataset folder":
        for item in (root / "dataset").iterdir():
            shutil.move(str(item), root / item.name)
        (root / "dataset").rmdir()
    elif layout == "no partition_info.csv":
        (root / "partition_info.csv").unlink()
    else:
        for path in list((root / "dataset").rglob("Npix=*.parquet")):
            folder = path.with_suffix("")
            folder.mkdir()
            path.rename(folder / "part0.parquet")
    out, new_row = calibrate(sources, row, "r", ReferenceSpec.parse(str(root)))
    _check_calibrated(out, new_row, image)
