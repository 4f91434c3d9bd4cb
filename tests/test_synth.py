"""The synthetic generator: deterministic files, honest truth, realistic noise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skysurvey.synth import make_image, write_sample


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    a = make_image((128, 128), n_stars=20, n_galaxies=5, seed=3).write(tmp_path / "a.fits")
    b = make_image((128, 128), n_stars=20, n_galaxies=5, seed=3).write(tmp_path / "b.fits")
    c = make_image((128, 128), n_stars=20, n_galaxies=5, seed=4).write(tmp_path / "c.fits")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_header_and_truth_agree_with_the_wcs_sip_included():
    image = make_image((256, 256), n_stars=40, n_galaxies=10, seed=1, sip=True,
                       rotation_deg=30.0)
    header = image.header
    for key in ("FILTER", "EXPTIME", "GAIN", "RDNOISE", "DATE-OBS", "MJD-OBS", "MAGZERO",
                "TELESCOP", "SATURATE", "SEEING", "INSTRUME", "OBJECT", "BUNIT"):
        assert key in header
    for key in ("DATE", "CHECKSUM", "DATASUM"):
        assert key not in header
    wcs = WCS(header)
    assert wcs.has_celestial and wcs.sip is not None
    ra, dec = wcs.all_pix2world(image.truth["x"], image.truth["y"], 0)
    err = np.hypot((ra - image.truth["ra"]) * np.cos(np.radians(dec)), dec - image.truth["dec"])
    assert err.max() * 3.6e6 < 1.0  # mas


def test_truth_flux_is_the_flux_in_the_model():
    image = make_image((256, 256), n_stars=30, n_galaxies=10, seed=2, return_model=True)
    assert image.model.sum() == pytest.approx(image.truth["flux"].sum(), rel=1e-4)
    mags = image.header["MAGZERO"] - 2.5 * np.log10(image.truth["flux"])
    np.testing.assert_allclose(mags, image.truth["mag"], atol=1e-9)


def test_noise_matches_poisson_plus_read_noise():
    image = make_image((256, 256), n_stars=0, n_galaxies=0, seed=5, sky=400.0, gain=2.0,
                       read_noise=6.0)
    expected = np.sqrt(400.0 / 2.0 + (6.0 / 2.0) ** 2)
    residual = image.data - np.median(image.data)
    assert np.std(residual) == pytest.approx(expected, rel=0.05)


def test_artefacts_are_where_recorded():
    image = make_image((128, 128), n_stars=5, n_galaxies=0, seed=6, cosmic_rays=3,
                       nan_patch=True, saturate=1000.0)
    kinds = image.artefacts["kind"].tolist()
    assert kinds.count("cosmic_ray") == 3 and kinds.count("nan_patch") == 1
    assert np.isnan(image.data).sum() == 100
    assert np.nanmax(image.data) <= 1000.0
    for row in image.artefacts[image.artefacts["kind"] == "cosmic_ray"].itertuples():
        assert image.data[row.y, row.x] > 1000.0 or image.data[row.y, row.x] == 1000.0


def test_write_sample_writes_images_truth_and_metadata(tmp_path):
    paths = write_sample(tmp_path, count=3, size=192, seed=9)
    assert [p.name for p in paths] == ["sky_g_001.fits", "sky_r_002.fits", "sky_i_003.fits"]
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert [m["band"] for m in meta["images"]] == ["g", "r", "i"]
    for path in paths:
        truth = pd.read_csv(tmp_path / "truth" / f"{path.stem}.csv")
        assert {"x", "y", "ra", "dec", "flux", "mag", "kind", "snr"} <= set(truth.columns)
        assert len(truth) > 10
        assert fits.getheader(path)["FILTER"] == path.stem.split("_")[1]


@pytest.mark.parametrize("compress", ["gz", "fz"])
def test_compressed_files_hold_the_same_data(tmp_path, compress):
    image = make_image((128, 128), n_stars=20, n_galaxies=5, seed=7)
    path = image.write(tmp_path / "x.fits", compress=compress)
    assert path.name == f"x.fits.{compress}"
    again = image.write(tmp_path / "y.fits", compress=compress)
    assert path.read_bytes() == again.read_bytes()
    with fits.open(path) as hdul:
        hdu = hdul[1] if compress == "fz" else hdul[0]
        np.testing.assert_array_equal(hdu.data, image.data)
        assert hdul[0].header["FILTER"] == "r"


def test_fz_tiles_carry_no_clock_time(tmp_path):
    """Two writes a second apart could differ only in the gzip headers' mtime: every tile's
    must be 0 (astropy's codec would stamp the time), so the same seed gives the same bytes."""
    image = make_image((128, 128), n_stars=20, n_galaxies=5, seed=7)
    path = image.write(tmp_path / "x.fits", compress="fz")
    with fits.open(path, disable_image_compression=True) as hdul:
        assert hdul[1].header["ZCMPTYPE"] == "GZIP_2"
        tiles = list(hdul[1].data["COMPRESSED_DATA"])
    assert len(tiles) == 128
    for tile in tiles:
        assert bytes(tile[:3]) == b"\x1f\x8b\x08"  # a gzip member
        assert int.from_bytes(bytes(tile[4:8]), "little") == 0


def test_bright_isolated_star_aperture_flux_matches_truth():
    image = make_image((256, 256), n_stars=0, n_galaxies=0, seed=8, sky=100.0)
    sources = pd.DataFrame({"kind": ["star"], "ra": [image.header["CRVAL1"]],
                            "dec": [image.header["CRVAL2"]], "mag_r": [17.0], "colour": [0.0],
                            "r_eff": [0.0], "sersic_n": [0.0], "ellipticity": [0.0],
                            "angle": [0.0]})
    image = make_image((256, 256), seed=8, sky=100.0, sources=sources)
    star = image.truth.iloc[0]
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(xx - star["x"], yy - star["y"])
    sky = np.median(image.data[r > 60])
    measured = (image.data[r < 40] - sky).sum()
    assert measured == pytest.approx(star["flux"], rel=0.02)


def test_script_writes_sample_and_rejects_bad_usage(tmp_path, capsys):
    from conftest import load_script

    module = load_script("download_sample_fits")
    assert module.main(["--output", str(tmp_path), "--count", "2", "--size", "256"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.fits")) == ["sky_g_001.fits",
                                                                "sky_r_002.fits"]
    assert len(list((tmp_path / "truth").glob("*.csv"))) == 2
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["images"][0]["seed"] != meta["images"][1]["seed"]
    assert "sky_g_001.fits" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        module.main(["--count", "0"])
    assert exc.value.code == 2
