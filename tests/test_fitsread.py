"""Every FITS layout a user may have reads to the same pixels; every bad input is one clear line."""

from __future__ import annotations

import bz2
import gzip

import numpy as np
import pytest
from astropy.io import fits

from skysurvey.errors import FITSReadError, ImageDataError, ImageTooLargeError
from skysurvey.fitsread import estimate_memory_bytes, observation_partition, read_fits

RNG = np.random.default_rng(0)
PIXELS = (RNG.normal(100.0, 5.0, (40, 50))).astype(np.float32)
HEADER = fits.Header({"FILTER": "R ", "DATE-OBS": "2026-03-14T23:59:00"})


def _bytes(hdul: fits.HDUList, tmp_path) -> bytes:
    path = tmp_path / "x.fits"
    hdul.writeto(path, overwrite=True)
    return path.read_bytes()


def _check(image, expected=PIXELS):
    assert image.data.dtype == np.float32 and image.data.dtype.isnative
    assert image.data.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(image.data, expected, rtol=0, atol=1e-3)


def test_primary_hdu_from_a_path_and_from_bytes(tmp_path):
    raw = _bytes(fits.HDUList([fits.PrimaryHDU(PIXELS, HEADER)]), tmp_path)
    image = read_fits(tmp_path / "x.fits", name="x.fits")
    _check(image)
    assert image.hdu == 0 and image.mask is None
    _check(read_fits(raw, name="x.fits"))


def test_first_2d_extension_and_primary_keywords_are_kept(tmp_path):
    hdul = fits.HDUList([fits.PrimaryHDU(header=HEADER), fits.BinTableHDU.from_columns(
        [fits.Column("a", "E", array=np.ones(3))]), fits.ImageHDU(PIXELS)])
    image = read_fits(_bytes(hdul, tmp_path), name="ext.fits")
    _check(image)
    assert image.hdu == 2
    assert observation_partition(image.header) == ("r", "2026-03-14")


def test_tile_compressed_fz(tmp_path):
    hdul = fits.HDUList([fits.PrimaryHDU(header=HEADER),
                         fits.CompImageHDU(PIXELS, compression_type="GZIP_2", quantize_level=0.0)])
    image = read_fits(_bytes(hdul, tmp_path), name="x.fits.fz")
    _check(image)
    assert image.hdu == 1 and image.header["FILTER"].strip() == "R"


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_gzip_and_bzip2_files(tmp_path, compress):
    raw = _bytes(fits.HDUList([fits.PrimaryHDU(PIXELS)]), tmp_path)
    _check(read_fits(compress(raw), name="x.fits.gz"))


def test_int16_with_bzero_and_bscale(tmp_path):
    counts = RNG.integers(0, 60000, (32, 32)).astype(np.float64)
    hdu = fits.PrimaryHDU(counts.astype(np.uint16))  # stored as int16 + BZERO 32768
    assert hdu.header["BITPIX"] == 16
    scaled = fits.PrimaryHDU((counts - 32768).astype(np.int16))
    scaled.header["BSCALE"], scaled.header["BZERO"] = 2.0, 10.0
    _check(read_fits(_bytes(fits.HDUList([hdu]), tmp_path), name="u16.fits"), counts)
    expected = (counts - 32768) * 2.0 + 10.0
    _check(read_fits(_bytes(fits.HDUList([scaled]), tmp_path), name="s16.fits"), expected)


def test_big_endian_float64(tmp_path):
    data = PIXELS.astype(">f8")
    _check(read_fits(_bytes(fits.HDUList([fits.PrimaryHDU(data)]), tmp_path), name="be.fits"))


def test_float_image_with_bscale_and_bzero_is_scaled(tmp_path):
    hdu = fits.PrimaryHDU(PIXELS.copy())
    raw = bytearray(_bytes(fits.HDUList([hdu]), tmp_path))  # cards written over blank ones
    end = raw.index(b"END" + b" " * 77)
    raw[end:end + 240] = (f"{'BSCALE':8}= {2.0:>20}".ljust(80) + f"{'BZERO':8}= {5.0:>20}".ljust(80)
                          + "END".ljust(80)).encode()
    image = read_fits(bytes(raw), name="scaled.fits")
    _check(image, PIXELS * 2.0 + 5.0)
    assert image.data.flags.writeable  # a private copy, never a view into the file's bytes


def test_nan_and_inf_pixels_are_masked_and_zeroed(tmp_path):
    data = PIXELS.copy()
    data[5:8, 5:9] = np.nan
    data[0, 0] = np.inf
    image = read_fits(_bytes(fits.HDUList([fits.PrimaryHDU(data)]), tmp_path), name="n.fits")
    assert image.mask.sum() == 13
    assert np.all(image.data[image.mask] == 0) and np.isfinite(image.data).all()


def _bad(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _good_bytes(tmp_path, data=PIXELS):
    return _bytes(fits.HDUList([fits.PrimaryHDU(data)]), tmp_path)


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (lambda t: b"", FITSReadError, "empty file (0 bytes)"),
        (lambda t: b"hello, this is not an image\n" * 200, FITSReadError, "not a FITS file"),
        (lambda t: _good_bytes(t)[:4000], FITSReadError, "truncated"),
        (lambda t: gzip.compress(_good_bytes(t))[:300], FITSReadError, "corrupt compressed"),
        (lambda t: _bytes(fits.HDUList([fits.PrimaryHDU(np.zeros((3, 20, 20), np.float32))]),
                          t), FITSReadError, "no 2-D image HDU (found 3-D data in HDU 0)"),
        (lambda t: _bytes(fits.HDUList([fits.PrimaryHDU()]), t), FITSReadError,
         "no 2-D image HDU (no image data)"),
        (lambda t: _good_bytes(t, np.full((30, 30), np.nan, np.float32)), ImageDataError,
         "image is all NaN/Inf"),
        (lambda t: _good_bytes(t, np.zeros((30, 30), np.float32)), ImageDataError,
         "image is constant (value 0)"),
        (lambda t: _good_bytes(t, PIXELS[:8, :8]), ImageDataError,
         "image too small (8x8 px, need at least 16x16)"),
        # a negative axis makes the data size negative: astropy's in-memory parser then
        # re-reads the same HDU forever; this must stay a prompt one-line error
        (lambda t: _good_bytes(t).replace(b"NAXIS1  =                   50",
                                          b"NAXIS1  =           -190444741"),
         FITSReadError, "unreadable FITS"),
    ],
    ids=["empty", "not-fits", "truncated", "bad-gzip", "cube", "no-data", "all-nan",
         "all-zero", "tiny", "negative-axis"],
)
def test_bad_inputs_raise_one_line_naming_file_and_cause(tmp_path, content, error, message):
    path = _bad(tmp_path, "bad image.fits", content(tmp_path))
    with pytest.raises(error) as info:
        read_fits(path, name=str(path))
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_memory_guard_refuses_from_the_header_before_reading_pixels(tmp_path):
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 40000,
                          "NAXIS2": 40000})
    # only the header: the data are missing, so reading pixels would fail differently
    raw = header.tostring().encode()
    with pytest.raises(ImageTooLargeError, match=r"huge.fits: needs ~\d+ MB, budget 800 MB"):
        read_fits(raw, name="huge.fits", max_memory_bytes=800 * 2**20)
    assert estimate_memory_bytes(header) > 40000 * 40000 * 4


def test_partition_values_fall_back_to_unknown():
    assert observation_partition(fits.Header()) == ("unknown", "unknown")
    assert observation_partition(fits.Header({"MJD-OBS": 61113.5})) == ("unknown", "2026-03-14")
    assert observation_partition(fits.Header({"DATE-OBS": "garbage", "FILTER": "g'"})) == (
        "g_", "unknown")
