"""Every FITS layout a user may have reads to the same pixels; every bad input is one clear line."""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import io
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from skysurvey.errors import FITSReadError, ImageDataError, ImageTooLargeError
from skysurvey.fitsread import (
    BASE_BYTES,
    default_memory_budget,
    estimate_memory_bytes,
    observation_partition,
    observation_time,
    read_fits,
)

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


# ---- decompression bombs and the memory budget (issue 13) ----------------------------------

MB = 2**20
TAIL = 256 * MB  # zeros after the image: never decompressed whole
#: A 64x64 image needs BASE_BYTES + 160 kB; the budget leaves 64 MB of room above that.
BUDGET = BASE_BYTES + 64 * MB


def _zeros(compress, size: int) -> bytes:
    """*size* zero bytes compressed as a stream of identical 1 MB members (gzip and bzip2
    readers concatenate members), built without ever holding *size* bytes."""
    return compress(bytes(MB)) * (size // MB)


def _image_fits(data=None, compressed=False, header=None) -> bytes:
    data = RNG.normal(100.0, 5.0, (64, 64)).astype(np.float32) if data is None else data
    hdus = [fits.PrimaryHDU(data, header)] if not compressed else [
        fits.PrimaryHDU(header=header),
        fits.CompImageHDU(data, compression_type="RICE_1", quantize_level=0.0)]
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


def _peak_while(fn):
    """(result or exception, peak bytes Python and numpy allocated meanwhile)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:  # returned for the caller to check
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress], ids=["gz", "bz2"])
@pytest.mark.parametrize("compressed_image", [False, True], ids=["plain", "fz"])
def test_a_valid_image_before_a_huge_zero_tail_reads_only_the_image(compress, compressed_image):
    fits_bytes = _image_fits(compressed=compressed_image)
    bomb = compress(fits_bytes) + _zeros(compress, TAIL)
    assert len(bomb) < TAIL / 100
    image, peak = _peak_while(lambda: read_fits(bomb, name="bomb.fits.gz",
                                                max_memory_bytes=BUDGET))
    assert not isinstance(image, Exception), image
    assert image.data.shape == (64, 64) and image.hdu == (1 if compressed_image else 0)
    assert peak < 16 * MB, f"peak {peak / MB:.0f} MB for a {TAIL / MB:.0f} MB tail"


def test_trailing_garbage_after_the_image_is_never_read(tmp_path):
    path = tmp_path / "x.fits"
    path.write_bytes(_image_fits() + b"\xff" * 10_000)  # not FITS, not even a header
    image = read_fits(path, name="x.fits")
    assert image.data.shape == (64, 64)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress], ids=["gz", "bz2"])
def test_a_bomb_before_the_image_stops_at_the_budget(compress):
    """A 3-D primary HDU of 256 MB zeros (skipped: not an image) then the image: the stream
    is decompressed and dropped only up to the budget, then refused in one line."""
    cube = fits.Header({"SIMPLE": True, "BITPIX": 8, "NAXIS": 3, "NAXIS1": 1024,
                        "NAXIS2": 1024, "NAXIS3": TAIL // MB, "EXTEND": True})
    head = cube.tostring().encode()
    ext = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(RNG.normal(size=(64, 64)).astype(
        np.float32))]).writeto(ext)
    ext = ext.getvalue()[2880:]  # the image extension alone
    bomb = compress(head) + _zeros(compress, TAIL) + compress(bytes(-TAIL % 2880) + ext)
    budget = BASE_BYTES + 16 * MB  # < the 256 MB tail
    start = time.perf_counter()
    error, peak = _peak_while(lambda: read_fits(bomb, name="cube.fits.gz",
                                                max_memory_bytes=budget))
    assert isinstance(error, ImageTooLargeError), error
    assert str(error).startswith("cube.fits.gz: decompresses") and "\n" not in str(error)
    assert "budget of 166 MB" in str(error)
    assert peak < 16 * MB
    assert time.perf_counter() - start < 30
    # without a budget (or a large one) the same file reads: the cube is skipped, not held
    image, peak = _peak_while(lambda: read_fits(bomb, name="cube.fits.gz"))
    assert not isinstance(image, Exception), image
    assert image.hdu == 1 and peak < 16 * MB


def _declared_32768(kind: str, tmp_path):
    """A header declaring a 32768² float image, then a 256 MB zero tail (not the data): a
    sparse file on disk for plain and .fz, a stream of gzip/bzip2 members otherwise."""
    if kind in ("plain", "gz", "bz2"):
        head = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 32768,
                            "NAXIS2": 32768}).tostring().encode()
    else:
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(),
                      fits.CompImageHDU(np.ones((32, 32), np.float32))]).writeto(buf)
        head = buf.getvalue()
        for axis in (b"ZNAXIS1", b"ZNAXIS2"):
            head = head.replace(axis + b" =" + b"32".rjust(21), axis + b" =" + b"32768".rjust(21))
        assert head.count(b"32768") == 2
    if kind in ("gz", "bz2"):
        compress = {"gz": gzip.compress, "bz2": bz2.compress}[kind]
        return compress(head) + _zeros(compress, TAIL)
    path = tmp_path / "huge.fits"
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + TAIL)  # sparse: no disk used
    return path


@pytest.mark.parametrize("kind", ["plain", "gz", "bz2", "fz"])
def test_a_header_declaring_32768_squared_is_refused_before_pixels(kind, tmp_path):
    source = _declared_32768(kind, tmp_path)
    error, peak = _peak_while(lambda: read_fits(source, name="huge.fits",
                                                max_memory_bytes=512 * MB))
    assert isinstance(error, ImageTooLargeError), error
    assert str(error) == "huge.fits: needs ~41110 MB, budget 512 MB"
    assert peak < 4 * MB  # a few headers, no pixels and none of the tail


def test_default_budget_is_a_share_of_this_machine_per_worker():
    import psutil

    total = psutil.virtual_memory().total
    assert default_memory_budget(1) == max(total // 2, BASE_BYTES + 40 * 2**20)
    assert default_memory_budget(4) == max(total // 2 // 4, BASE_BYTES + 40 * 2**20)
    assert default_memory_budget(10**9) == BASE_BYTES + 40 * 2**20  # never below a 1024² image


# ---- a huge primary header (issue 13) -------------------------------------------------------

def _hierarch_fits(n_cards: int) -> bytes:
    cards = [fits.Card.fromstring(f"HIERARCH ESO DET CHIP{i} VALUE = {i}.5 / chip {i}")
             for i in range(n_cards)]
    primary = fits.PrimaryHDU(header=fits.Header(cards))
    primary.header["FILTER"] = "r"
    buf = io.BytesIO()
    fits.HDUList([primary, fits.ImageHDU(PIXELS)]).writeto(buf)
    return buf.getvalue()


def _best_of_interleaved(n, *fns):
    """The least CPU time (this process's: another process's load does not count) of each
    function over *n* rounds that run them in turn, so a busy spell hits them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(n):
        for k, fn in enumerate(fns):
            start = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - start)
    return best


def test_a_huge_primary_header_costs_linear_time():
    small, big = _hierarch_fits(2_000), _hierarch_fits(8_000)
    image = read_fits(big, name="hierarch.fits")
    assert image.hdu == 1 and image.header["FILTER"] == "r"
    assert image.header["ESO DET CHIP7999 VALUE"] == 7999.5
    t_small, t_big = _best_of_interleaved(5, lambda: read_fits(small, name="s.fits"),
                                          lambda: read_fits(big, name="b.fits"))
    # quadratic was 12.7x here (0.28 s -> 3.6 s); linear is ~4.5x with the fixed costs
    assert t_big < 6 * t_small, f"{t_small:.3f} s -> {t_big:.3f} s for 4x the cards"


def test_extension_keywords_win_over_the_primary_header(tmp_path):
    primary = fits.PrimaryHDU(header=fits.Header({"FILTER": "g", "OBJECT": "M31",
                                                  "COMMENT": "primary"}))
    ext = fits.ImageHDU(PIXELS, fits.Header({"FILTER": "r"}))
    image = read_fits(_bytes(fits.HDUList([primary, ext]), tmp_path), name="x.fits")
    assert image.header["FILTER"] == "r" and image.header["OBJECT"] == "M31"
    assert "primary" not in str(image.header.get("COMMENT", ""))


# ---- nights (issue 13) ---------------------------------------------------------------------

TODAY = dt.date(2026, 11, 26)


def _utc(text):
    """What astropy makes of a date: ISO with an offset goes through an aware datetime."""
    return dt.datetime.fromisoformat(text) if text[-6] in "+-" else text


@pytest.mark.parametrize(
    ("cards", "night", "warning"),
    [
        ({"DATE-OBS": "2026-03-14T23:30:00-05:00"}, "2026-03-15", None),  # 04:30 UTC next day
        ({"DATE-OBS": "2026-03-15T01:30:00+02:00"}, "2026-03-14", None),
        ({"DATE-OBS": "2026-03-14T23:30:00Z"}, "2026-03-14", None),
        ({"DATE-OBS": "2016-12-31T23:59:60"}, "2016-12-31", None),  # a leap second
        ({"DATE-OBS": "2016-12-31T23:59:60.5"}, "2016-12-31", None),
        ({"DATE-OBS": "1850-01-01"}, "1850-01-01", None),
        ({"DATE-OBS": "2026-11-27T23:59:59"}, "2026-11-27", None),  # today + 1 day
        ({"DATE-OBS": "2026-11-28T00:00:00"}, "unknown", "DATE-OBS 2026-11-28T00:00:00 outside"),
        ({"DATE-OBS": "1849-12-31T23:59:59"}, "unknown", "outside 1850-01-01 to today + 1 day"),
        ({"DATE-OBS": "0001-01-01T00:00:00"}, "unknown", "DATE-OBS 0001-01-01T00:00:00 outside"),
        ({"DATE-OBS": "2099-01-01"}, "unknown", "DATE-OBS 2099-01-01 outside"),
        ({"MJD-OBS": 1e9}, "unknown", "MJD-OBS 1000000000.0 outside"),
        ({"MJD-OBS": -1e300}, "unknown", "outside"),
        ({"DATE-OBS": "garbage", "MJD-OBS": 61113.5}, "2026-03-14", "unparseable DATE-OBS"),
        ({"DATE-OBS": "garbage"}, "unknown", "unparseable DATE-OBS 'garbage'"),
        ({"DATE-OBS": "14/03/2026"}, "unknown", "unparseable DATE-OBS '14/03/2026'"),
        ({"DATE-OBS": "31/02/51"}, "unknown", "unparseable DATE-OBS '31/02/51'"),
        ({"DATE-OBS": "2099-01-01", "MJD-OBS": 61113.5}, "2026-03-14", "2099-01-01 outside"),
    ],
)
def test_nights_follow_astropy_within_the_valid_range(cards, night, warning):
    from astropy.time import Time

    when = observation_time(fits.Header(cards), today=TODAY)
    assert when.night == night
    if warning is None:
        assert when.warnings == ()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ERFA's "dubious year" for 1850
            expected = Time(_utc(cards["DATE-OBS"].replace("Z", "")), scale="utc")
            assert expected.utc.isot[:10] == night
            assert when.mjd == pytest.approx(expected.utc.mjd, abs=1e-9)
    else:
        assert any(warning in w for w in when.warnings), when.warnings
        assert (when.mjd is None) == (night == "unknown")


@pytest.mark.parametrize(("text", "night"), [("29/11/51", "1951-11-29"),
                                            ("01/02/99", "1999-02-01"),
                                            ("14/03/26", "1926-03-14")])
def test_the_old_dd_mm_yy_form_means_the_twentieth_century(text, night):
    # FITS before 1997: DATE-OBS = 'DD/MM/YY', years 1900-1999 (a 1951 plate)
    when = observation_time(fits.Header({"DATE-OBS": text}), today=TODAY)
    assert (when.night, when.warnings) == (night, ())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ERFA's "dubious year": UTC before 1960
        assert when.mjd == pytest.approx(Time(night, scale="utc").mjd)


def test_partitions_use_the_same_nights():
    cases = {"2026-03-14T23:30:00-05:00": "2026-03-15", "2016-12-31T23:59:60": "2016-12-31",
             "2099-01-01T00:00:00": "unknown", "0001-01-01T00:00:00": "unknown"}
    for date_obs, night in cases.items():
        assert observation_partition(fits.Header({"DATE-OBS": date_obs})) == ("unknown", night)
    assert observation_partition(fits.Header({"MJD-OBS": 1e9})) == ("unknown", "unknown")


def test_date_warnings_land_in_the_images_row(tmp_path):
    import pyarrow.parquet as pq

    from skysurvey.pipeline import catalog_image
    from skysurvey.storage import LocalStore

    data = RNG.normal(100.0, 5.0, (64, 64)).astype(np.float32)
    data[30:33, 30:33] += 400
    raw = LocalStore(tmp_path / "raw")
    raw.write_bytes("x.fits", _image_fits(data, header=fits.Header(
        {"FILTER": "r", "DATE-OBS": "2099-01-01T00:00:00"})))
    reply = catalog_image(raw, "x.fits", LocalStore(tmp_path / "cat"))
    assert reply["status"] == "ok", reply["error"]
    [path] = (tmp_path / "cat" / "images").rglob("*.parquet")
    assert path.parent.name == "night=unknown"
    row = pq.read_table(path).to_pylist()[0]
    assert "DATE-OBS 2099-01-01T00:00:00 outside 1850-01-01" in row["warnings"]
    assert row["mjd"] is None


def test_local_runs_get_the_default_budget(tmp_path, capsys):
    """No --max-memory-mb: a header declaring 100000² is refused by the default budget (the
    file holds no pixels, so without a budget it would fail as truncated instead)."""
    from conftest import load_script

    (tmp_path / "in").mkdir()
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 100_000,
                          "NAXIS2": 100_000})
    (tmp_path / "in" / "huge.fits").write_bytes(header.tostring().encode())
    status = load_script("invoke_lambda").main(
        ["--backend", "local", "--input", str(tmp_path / "in"), "--catalog",
         str(tmp_path / "cat"), "--workers", "1", "--no-progress"])
    assert status == 1
    budget = default_memory_budget(1) / MB
    assert f"needs ~381620 MB, budget {budget:.0f} MB" in capsys.readouterr().err
