"""Fuzzing: mutated FITS bytes and headers give a catalog or the project's own error, quickly."""

from __future__ import annotations

import io
import signal

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skysurvey.pipeline import catalog_image
from skysurvey.schema import SOURCES_SCHEMA
from skysurvey.storage import LocalStore


def _valid() -> bytes:
    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, (48, 48)).astype(np.float32)
    data[20:23, 20:23] += 500
    header = fits.Header({"FILTER": "r", "DATE-OBS": "2026-03-14T00:00:00", "GAIN": 2.0,
                          "MAGZERO": 30.0, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                          "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 24.0, "CRPIX2": 24.0,
                          "CDELT1": -7e-5, "CDELT2": 7e-5})
    buf = io.BytesIO()
    fits.PrimaryHDU(data, header).writeto(buf)
    return buf.getvalue()


VALID = _valid()
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class Hung(BaseException):
    """Not an Exception: no ``except Exception`` in the code under test can swallow it."""


@pytest.fixture
def alarm():
    """``alarm(s)`` arms a timer that raises :class:`Hung` after *s* seconds and then every
    second (a hang inside a cleanup handler is caught too); ``alarm(0)`` disarms it."""
    def timeout(*_):
        raise Hung("the handler hung")

    old = signal.signal(signal.SIGALRM, timeout)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds, 1.0 if seconds else 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def _run(tmp_path, content: bytes, alarm) -> dict:
    raw = LocalStore(tmp_path / "raw")
    raw.write_bytes("images/x.fits", content)
    catalog = LocalStore(tmp_path / "cat")
    alarm(10)
    reply = catalog_image(raw, "images/x.fits", catalog)
    alarm(0)
    if reply["status"] == "ok":
        import pyarrow.dataset as ds

        table = ds.dataset(tmp_path / "cat" / "sources", format="parquet").to_table()
        assert table.schema.equals(SOURCES_SCHEMA)
    else:
        assert "unexpected" not in reply["error"], reply["error"]  # a raw exception leaked
        assert reply["error"].startswith(str(tmp_path / "raw" / "images" / "x.fits") + ": ")
        assert "\n" not in reply["error"]
        assert not list((tmp_path / "cat").rglob("*.parquet"))
    catalog.clear("")
    return reply


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=20))
def test_flipped_bytes(tmp_path, alarm, flips):
    data = bytearray(VALID)
    for position, value in flips:
        data[position] = value
    _run(tmp_path, bytes(data), alarm)


@SETTINGS
@given(st.integers(0, len(VALID)), st.binary(max_size=200))
def test_truncated_or_padded(tmp_path, alarm, cut, extra):
    _run(tmp_path, VALID[:cut] + extra, alarm)


KEYS = ["NAXIS", "NAXIS1", "NAXIS2", "BITPIX", "BSCALE", "BZERO", "CRVAL1", "CTYPE1", "CDELT2",
        "GAIN", "MAGZERO", "DATE-OBS", "FILTER", "SATURATE", "CRPIX1"]
VALUES = st.one_of(st.integers(-2**31, 2**31), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                           max_size=20), st.booleans())


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=4))
def test_mutated_header_values(tmp_path, alarm, changes):
    header_end = VALID.index(b"END" + b" " * 77) + 80
    header = fits.Header.fromstring(VALID[:header_end].decode())
    for key, value in changes.items():
        try:
            header[key] = value
        except (ValueError, TypeError):
            continue
    try:
        text = header.tostring().encode()
    except Exception:  # astropy refuses to write this header at all: nothing to test
        return
    header_bytes = text + b" " * (-len(text) % 2880)
    _run(tmp_path, header_bytes + VALID[len(header_bytes) if len(header_bytes) <= 2880 * 2
                                        else 2880:], alarm)


def _compress(kind: str, data: bytes) -> bytes:
    import bz2
    import gzip

    return {"gz": lambda d: gzip.compress(d, mtime=0), "bz2": bz2.compress}[kind](data)


@settings(SETTINGS, max_examples=30)
@given(st.sampled_from(["gz", "bz2"]),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 10**6))
def test_mutated_compressed_streams(tmp_path, alarm, kind, flips, cut):
    """The streaming decompressor: flipped or cut gzip/bzip2 bytes, then a catalog or one line."""
    data = bytearray(_compress(kind, VALID))
    for position, value in flips:
        data[position % len(data)] = value
    _run(tmp_path, bytes(data[: max(1, cut % (len(data) + 1))]), alarm)


@settings(SETTINGS, max_examples=12)
@given(st.sampled_from(["gz", "bz2"]), st.integers(0, 4), st.binary(max_size=3000))
def test_compressed_image_with_trailing_members(tmp_path, alarm, kind, n_zero_mb, tail):
    """Whatever follows the image in the stream (zeros, garbage) is never read: always a catalog."""
    content = _compress(kind, VALID) + _compress(kind, bytes(2**20)) * n_zero_mb + tail
    reply = _run(tmp_path, content, alarm)
    assert reply["status"] == "ok", reply["error"]
