"""Exports astronomers open: astropy reads every format back with units; FITS and VOTable carry
descriptions and UCDs; the catalog's own Parquet files give units; DS9 ellipses lie on the sky
the way the sources lie in the pixels; query_with_athena.py writes them and never silently
replaces earlier exports."""

from __future__ import annotations

import math

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from astropy.table import Table
from conftest import draw_fits, load_script

from skysurvey import schema
from skysurvey.export import ELLIPSE_SCALE, ExportError, ds9_regions, write_table
from skysurvey.pipeline import catalog_image
from skysurvey.queries import run_query
from skysurvey.storage import open_store
from skysurvey.units import COLUMN_META

UNITS = {"ra": u.deg, "dec": u.deg, "x": u.pix, "flux": u.adu, "flux_err": u.adu,
         "mag": u.mag, "theta_world": u.deg, "a": u.pix, "npix": u.pix ** 2}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Two small images (g and r) catalogued by the pipeline itself."""
    root = tmp_path_factory.mktemp("export")
    raw = root / "raw"
    raw.mkdir()
    draw_fits(raw / "img_g.fits", size=96, n_stars=8, seed=1, band="g")
    draw_fits(raw / "img_r.fits", size=96, n_stars=8, seed=2, band="r",
              date_obs="2026-03-15T03:00:00")
    for key in ("img_g.fits", "img_r.fits"):
        reply = catalog_image(open_store(raw), key, open_store(root / "cat"))
        assert reply["status"] == "ok", reply
    return root / "cat"


def test_every_schema_column_has_units_ucd_and_description_astropy_accepts():
    from skysurvey.lightcurves import OBJECT_VARIABILITY_SCHEMA

    schemas = [getattr(schema, n) for n in dir(schema) if n.endswith("_SCHEMA")]
    schemas.append(OBJECT_VARIABILITY_SCHEMA)  # the objects view's columns too
    assert len(schemas) >= 2
    for s in schemas:
        for name in s.names:
            assert name in COLUMN_META, (name, "add it to skysurvey.units.COLUMN_META")
    for name, meta in COLUMN_META.items():
        assert meta.description and len(meta.description) <= 68, name  # fits TCOMMn
        if meta.unit:
            unit = u.Unit(meta.unit)
            unit.to_string("fits")  # raises for units FITS cannot hold
            unit.to_string("vounit")


def test_catalog_parquet_files_give_astropy_units(catalog):
    """The pipeline's own files carry table_meta_yaml (astropy read them without units)."""
    for table, column, unit in (("sources", "ra", u.deg), ("sources", "flux", u.adu),
                                ("images", "pixel_scale", u.arcsec / u.pix),
                                ("images", "exptime", u.s)):
        path = next((catalog / table).rglob("*.parquet"))
        read = Table.read(path)
        assert read[column].unit == unit, (table, column)
        assert read["image_id"].meta["ucd"] == "meta.id;obs.image"
        assert len(read) >= 1


@pytest.mark.parametrize("suffix", [".fits", ".vot", ".xml", ".parquet"])
def test_sources_round_trip_through_astropy_with_units(catalog, tmp_path, suffix):
    df = run_query("SELECT * FROM sources ORDER BY image_id, source_id", str(catalog))
    assert {"band", "night"} <= set(df.columns) and len(df) >= 10
    path = write_table(df, tmp_path / f"sources{suffix}")
    table = Table.read(path)
    assert table.colnames == list(df.columns)
    for name, unit in UNITS.items():
        assert table[name].unit == unit, (suffix, name)
    np.testing.assert_allclose(np.asarray(table["ra"]), df["ra"].to_numpy())
    np.testing.assert_array_equal(np.asarray(table["source_id"]), df["source_id"].to_numpy())
    assert sorted(set(np.asarray(table["band"]).astype(str))) == ["g", "r"]
    assert sorted(set(np.asarray(table["night"]).astype(str))) == ["2026-03-14", "2026-03-15"]
    if suffix != ".fits":  # astropy reads descriptions from VOTable and Parquet
        assert table["mag"].description == COLUMN_META["mag"].description


def test_fits_has_tcomm_and_tucd_and_votable_has_ucds(catalog, tmp_path):
    from astropy.io import fits
    from astropy.io.votable import parse

    df = run_query("SELECT image_id, source_id, ra, dec, flux, mag, band FROM sources",
                   str(catalog))
    with fits.open(write_table(df, tmp_path / "s.fits")) as hdul:
        header = hdul[1].header
    assert header["TTYPE3"] == "ra" and header["TUNIT3"] == "deg"
    assert header["TUCD3"] == "pos.eq.ra;meta.main"
    assert header["TCOMM5"] == COLUMN_META["flux"].description and header["TUCD5"] == "phot.flux"
    fields = {f.name: f for f in parse(write_table(df, tmp_path / "s.vot")).get_first_table()
              .fields}
    assert fields["ra"].ucd == "pos.eq.ra;meta.main" and str(fields["ra"].unit) == "deg"
    assert fields["flux"].ucd == "phot.flux" and fields["mag"].ucd == "phot.mag"
    assert fields["dec"].description == "Declination (ICRS)"


def test_csv_round_trip_and_refusals(catalog, tmp_path):
    df = run_query("SELECT band, count(*) AS n FROM sources GROUP BY band ORDER BY band",
                   str(catalog))
    path = write_table(df, tmp_path / "n.csv")
    assert Table.read(path, format="ascii.csv")["band"].tolist() == ["g", "r"]
    with pytest.raises(ExportError, match="already exists"):
        write_table(df, path, overwrite=False)
    with pytest.raises(ExportError, match=r"unknown format \.txt"):
        write_table(df, tmp_path / "n.txt")
    with pytest.raises(ExportError, match="regions need ra/dec"):
        write_table(df, tmp_path / "n.reg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.csv"]  # nothing half-written


def _parse_regions(text):
    system, rows = None, []
    for line in text.splitlines():
        if line in ("icrs", "image"):
            system = line
        elif line.startswith(("ellipse(", "circle(")):
            args = line[line.index("(") + 1:line.index(")")].replace('"', "").split(",")
            rows.append((system, line.split("(")[0], [float(v) for v in args],
                         line.split("text={")[1].rstrip("}") if "text={" in line else None))
    return rows


def test_ds9_sky_ellipses_follow_the_sources_on_a_rotated_image(tmp_path):
    """Each ICRS ellipse, mapped back through the WCS, has the source's pixel orientation."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import skycoord_to_pixel

    from skysurvey.detect import measure_image
    from skysurvey.fitsread import read_fits

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:160, :160]
    data = rng.normal(100.0, 3.0, (160, 160))
    for i, angle in enumerate(np.radians([0, 30, 60, 100, 135, 160])):  # elongated, 3:1
        x0, y0 = 30 + 50 * (i % 3), 45 + 70 * (i // 3)
        u_ = (xx - x0) * np.cos(angle) + (yy - y0) * np.sin(angle)
        v_ = -(xx - x0) * np.sin(angle) + (yy - y0) * np.cos(angle)
        data += 400.0 * np.exp(-0.5 * ((u_ / 4.5) ** 2 + (v_ / 1.5) ** 2))
    rot, pix = np.radians(35.0), 0.25 / 3600
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=40.0,
                  CRPIX1=80.5, CRPIX2=80.5, CD1_1=-pix * np.cos(rot), CD1_2=pix * np.sin(rot),
                  CD2_1=pix * np.sin(rot), CD2_2=pix * np.cos(rot), FILTER="r", MAGZERO=30.0)
    wcs = WCS(header)
    path = tmp_path / "rot.fits"
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(path)
    found = measure_image(read_fits(path, name="rot"), "rot")[0].to_pandas()
    found = found[(found["ellipticity"] > 0.4) & (found["npix"] > 50)].reset_index(drop=True)
    assert len(found) == 6
    scale = 0.25
    rows = _parse_regions(ds9_regions(found, scale))
    assert len(rows) == len(found)
    for (system, kind, (ra, dec, r1, r2, angle), label), src in zip(
            rows, found.itertuples(), strict=True):
        assert system == "icrs" and kind == "ellipse" and label == f"rot:{src.source_id}"
        assert r1 == pytest.approx(ELLIPSE_SCALE * src.a * scale, abs=1e-3)
        assert r2 == pytest.approx(ELLIPSE_SCALE * src.b * scale, abs=1e-3)
        # DS9 angle: counter-clockwise from the RA axis (west on a north-up image);
        # the major axis points at position angle (angle - 90) east of north
        centre = SkyCoord(ra * u.deg, dec * u.deg)
        tip = centre.directional_offset_by((angle - 90.0) * u.deg, 1 * u.arcsec)
        x0, y0 = skycoord_to_pixel(centre, wcs, origin=0)
        x1, y1 = skycoord_to_pixel(tip, wcs, origin=0)
        pixel_angle = math.degrees(math.atan2(float(y1 - y0), float(x1 - x0)))
        diff = (pixel_angle - math.degrees(src.theta)) % 180.0
        assert min(diff, 180.0 - diff) < 0.5, (src.source_id, pixel_angle, src.theta)


def test_ds9_falls_back_to_image_coordinates_without_sky_orientation():
    df = pd.DataFrame({"image_id": ["a", "a"], "source_id": [0, 1], "x": [9.0, 19.0],
                       "y": [4.0, 4.0], "a": [2.0, 1.0], "b": [1.0, 1.0],
                       "theta": [math.pi / 2, 0.0], "ra": [np.nan, 150.0],
                       "dec": [np.nan, 2.0], "theta_world": [np.nan, np.nan]})
    rows = _parse_regions(ds9_regions(df))
    assert rows[0] == ("image", "ellipse", [10.0, 5.0, 6.0, 3.0, 90.0], "a:0")  # 1-based
    assert rows[1][0] == "image"
    only_sky = _parse_regions(ds9_regions(pd.DataFrame({"ra": [150.0], "dec": [2.0]})))
    assert only_sky == [("icrs", "circle", [150.0, 2.0, 1.0], None)]


def test_script_exports_formats_and_keeps_earlier_runs(catalog, tmp_path, capsys, monkeypatch):
    script = load_script("query_with_athena")
    base = ["--catalog", str(catalog)]
    fits_path = tmp_path / "bright.fits"
    assert script.main([*base, "--sql", "SELECT * FROM sources WHERE snr > ?", "--param", "20",
                        "--output", str(fits_path)]) == 0
    assert Table.read(fits_path)["flux"].unit == u.adu
    assert f"saved {fits_path}" in capsys.readouterr().out
    reg = tmp_path / "all.reg"
    assert script.main([*base, "--sql", "SELECT * FROM sources", "--output", str(reg)]) == 0
    out = capsys.readouterr().out.splitlines()  # a preview, not the whole result
    rows = out[out.index("== custom ==") + 2:]
    more = next(line for line in rows if line.startswith("... "))
    assert rows.index(more) == script.PREVIEW_ROWS and more.endswith(f"in all) in {reg}")
    text = reg.read_text()
    assert text.count("ellipse(") >= 10 and "\nicrs\n" in text and "image" not in text.split(
        "\n", 3)[3]
    # an existing file is not replaced without --force
    with pytest.raises(SystemExit) as info:
        script.main([*base, "--sql", "SELECT 1 AS one", "--output", str(reg)])
    assert info.value.code == 2 and "already exists" in capsys.readouterr().err
    assert script.main([*base, "--sql", "SELECT 1 AS one", "--output", str(reg.with_suffix(
        ".csv")), "--force"]) == 0
    # --query all: a new run folder each time, every path printed
    monkeypatch.setattr(script, "OUTPUT_DIR", tmp_path / "output")
    capsys.readouterr()
    assert script.main([*base, "--query", "all"]) == 0
    assert script.main([*base, "--query", "all"]) == 0
    runs = sorted((tmp_path / "output" / "queries").iterdir())
    assert len(runs) == 2
    printed = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines()
               if line.startswith("saved ")]
    assert sorted(printed) == sorted(str(p) for r in runs for p in r.glob("*.csv"))
    out = tmp_path / "fixed"
    assert script.main([*base, "--query", "all", "--output-dir", str(out)]) == 0
    with pytest.raises(SystemExit):
        script.main([*base, "--query", "all", "--output-dir", str(out)])
    assert "add --force" in capsys.readouterr().err
    assert script.main([*base, "--query", "all", "--output-dir", str(out), "--force"]) == 0


def test_script_says_why_a_result_is_empty_and_lists_default_thresholds(catalog, capsys):
    script = load_script("query_with_athena")
    assert script.main(["--catalog", str(catalog), "--sql",
                        "SELECT * FROM sources WHERE snr > 1e12"]) == 0
    out = capsys.readouterr().out
    assert "(no rows)" in out and "Empty DataFrame" not in out
    assert "Athena runs no SQL" in script._why_empty("athena")
    assert script.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "source_statistics" in listed and "(default: ? = 5.0)" in listed


@pytest.mark.parametrize("suffix", [".fits", ".vot"])
def test_images_table_with_null_text_timestamps_and_booleans_exports(catalog, tmp_path, suffix):
    """`warnings` (all null), `processed_at` (timestamp) and `has_wcs` (bool) in FITS/VOTable."""
    df = run_query("SELECT * FROM images ORDER BY image_id", str(catalog))
    assert df["warnings"].isna().all()
    table = Table.read(write_table(df, tmp_path / f"images{suffix}"))
    assert len(table) == 2 and table["exptime"].unit == u.s
    assert str(table["processed_at"][0]).startswith(str(df["processed_at"][0].year))
    assert list(table["has_wcs"]) == [True, True]
    assert list(np.asarray(table["image_id"]).astype(str)) == ["img_g", "img_r"]


def test_athena_empty_result_says_so_and_why(moto_server, capsys):
    """On Athena (moto over HTTP, which runs no SQL), an empty result is explained, not printed
    as a bare `Empty DataFrame`."""
    import json
    import urllib.request

    import boto3

    boto3.client("athena").create_work_group(
        Name="astronomy-workgroup",
        Configuration={"ResultConfiguration": {"OutputLocation": "s3://cat/athena-results/"}})
    boto3.client("s3").create_bucket(Bucket="cat")
    for _ in range(6):  # whatever DDL comes first, then the query: all empty
        body = json.dumps({"results": [{"rows": [], "column_info": []}]}).encode()
        request = urllib.request.Request(f"{moto_server}/moto-api/static/athena/query-results",
                                         data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(request).status == 201
    script = load_script("query_with_athena")
    assert script.main(["--engine", "athena", "--catalog", "s3://cat", "--query",
                        "total_sources"]) == 0
    out = capsys.readouterr().out
    assert "Empty DataFrame" not in out
    assert "(no rows) Athena returned an empty result" in out and "moto" in out
