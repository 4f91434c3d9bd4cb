"""The catalog contract (schemas, ids, layout) and the settings precedence."""

from __future__ import annotations

import pyarrow as pa
import pytest

from skysurvey import config, schema
from skysurvey.errors import ConfigError, SkySurveyError

DESIGN_SOURCE_COLUMNS = [
    "image_id", "source_id", "x", "y", "ra", "dec", "flux", "flux_err", "flux_aper",
    "flux_aper_err", "mag", "mag_err", "flux_apcorr", "flux_apcorr_err", "mag_apcorr",
    "mag_apcorr_err", "class_star", "_healpix_29", "snr", "peak", "background", "a", "b",
    "theta", "theta_world", "fwhm", "ellipticity", "npix", "flags",
    # PSF photometry (DESIGN "PSF photometry", issue 25)
    "flux_psf", "flux_psf_err", "mag_psf", "mag_psf_err", "psf_chi2", "x_psf", "y_psf",
]


def test_sources_schema_is_the_design_contract():
    assert schema.SOURCES_SCHEMA.names == DESIGN_SOURCE_COLUMNS
    types = dict(zip(schema.SOURCES_SCHEMA.names, schema.SOURCES_SCHEMA.types, strict=True))
    assert types["image_id"] == pa.string()
    assert types["source_id"] == types["npix"] == types["flags"] == pa.int32()
    assert types["_healpix_29"] == pa.int64()
    doubles = set(DESIGN_SOURCE_COLUMNS) - {"image_id", "source_id", "npix", "flags",
                                            "_healpix_29"}
    assert all(types[c] == pa.float64() for c in doubles)


def test_images_schema_has_the_design_minimum_and_millisecond_timestamps():
    names = set(schema.IMAGES_SCHEMA.names)
    assert {"image_id", "source_key", "width", "height", "n_sources", "bkg_median", "bkg_rms",
            "fwhm_median", "zero_point", "has_wcs", "ra_center", "dec_center", "exptime", "mjd",
            "aperture_radius", "seconds", "pipeline_version"} <= names
    # band/night are Hive partition keys, never file columns (a duplicate would break Athena)
    assert not {"band", "night"} & names
    assert schema.IMAGES_SCHEMA.field("processed_at").type == pa.timestamp("ms")
    assert all(t != pa.null() for t in schema.IMAGES_SCHEMA.types)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sky_r_001.fits", "sky_r_001"),
        ("night1/sky_r_001.fits.fz", "night1__sky_r_001"),
        ("a/b/c.fits", "a__b__c"),
        ("a.b.FIT.gz", "a.b"),
        ("x.fts.bz2", "x"),
        ("m31 ü.fits", "m31 ü"),
        ("c.fz", "c"),
        ("_calib.fits", "_calib"),
        ("..fits", "."),
    ],
)
def test_image_id_is_the_relative_path_without_fits_extensions(name, expected):
    assert schema.is_fits_name(name)
    assert schema.image_id_from_name(name) == expected


@pytest.mark.parametrize(
    ("image_id", "stem"),
    [
        ("field", "field"),
        ("_calib", "%5Fcalib"),
        (".dotted", "%2Edotted"),
        (".", "%2E"),
        (".tmp-x", "%2Etmp-x"),
        ("%5Fcalib", "%255Fcalib"),  # a literal '%' is encoded too, so no two ids share a name
        ("50%_done", "50%25_done"),
        ("a_b.c", "a_b.c"),
        ("line\nbreak\x1b[31m", "line%0Abreak%1B[31m"),
        ("m31 ü", "m31 ü"),
    ],
)
def test_catalog_file_names_never_start_with_underscore_or_dot_and_decode_back(image_id, stem):
    assert schema.catalog_file_stem(image_id) == stem
    assert schema.image_id_from_file_stem(stem) == image_id
    keys = schema.catalog_keys(image_id, "r", "2026-03-14")
    assert keys["sources"] == f"sources/band=r/night=2026-03-14/{stem}.parquet"


@pytest.mark.parametrize("name", ["notes.txt", "image.fits.zip", ".fits", "catalog.parquet"])
def test_non_fits_names_are_rejected(name):
    assert not schema.is_fits_name(name)


def test_catalog_keys_follow_the_hive_layout_with_unknown_and_safe_values():
    assert schema.catalog_keys("img", "r", "2026-03-14") == {
        "sources": "sources/band=r/night=2026-03-14/img.parquet",
        "images": "images/band=r/night=2026-03-14/img.parquet",
    }
    keys = schema.catalog_keys("img", None, "  ")
    assert keys["sources"] == "sources/band=unknown/night=unknown/img.parquet"
    unsafe = schema.catalog_keys("i", "r/../x y", "n")["images"]
    assert unsafe == "images/band=r_.._x_y/night=n/i.parquet"


def test_empty_tables_keep_their_schema():
    table = schema.empty_table(schema.SOURCES_SCHEMA)
    assert table.num_rows == 0
    assert table.schema.equals(schema.SOURCES_SCHEMA)


def test_settings_precedence_flag_env_file_default(tmp_path, monkeypatch):
    env_file = tmp_path / "setup.env"
    config.write_env_file(env_file, {"BUCKET_RAW": "s3://from-file", "LAMBDA_FUNCTION": "fn"})
    monkeypatch.setenv("SKYSURVEY_ENV_FILE", str(env_file))
    assert config.get_setting("BUCKET_RAW") == "s3://from-file"
    monkeypatch.setenv("BUCKET_RAW", "s3://from-env")
    assert config.get_setting("BUCKET_RAW") == "s3://from-env"
    assert config.get_setting("BUCKET_RAW", "/from/flag") == "/from/flag"
    assert config.get_setting("LAMBDA_FUNCTION") == "fn"
    assert config.get_setting("BUCKET_CATALOG") == str(config.DATA_DIR / "catalog")
    assert config.read_env_file(env_file)["BUCKET_RAW"] == "s3://from-file"


def test_env_file_accepts_shell_syntax(tmp_path):
    path = tmp_path / "x.env"
    path.write_text("# comment\nexport A='1'\nB=\"two\"\n\nnot a line\nC = 3\n")
    assert config.read_env_file(path) == {"A": "1", "B": "two", "C": "3"}
    assert config.read_env_file(tmp_path / "missing.env") == {}


def test_s3_uris_parse_and_bad_ones_raise_one_line():
    loc = config.parse_s3_uri("s3://bucket/some/prefix/")
    assert (loc.bucket, loc.prefix, str(loc)) == ("bucket", "some/prefix/", "s3://bucket/some/prefix/")
    assert config.parse_s3_uri("s3://bucket").prefix == ""
    with pytest.raises(ConfigError, match=r"^s3://: the s3:// URI names no bucket$"):
        config.parse_s3_uri("s3://")
    with pytest.raises(SkySurveyError, match="not an s3:// URI"):
        config.parse_s3_uri("/local/folder")
