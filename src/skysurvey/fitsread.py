"""Read any FITS image a user has into a native float32 array, a mask and a header.

Handles primary or extension HDUs (the first with 2-D data), tile-compressed ``.fz``
(CompImageHDU), ``.gz``/``.bz2`` files (by magic bytes, not name), integer pixels with
BSCALE/BZERO and big-endian data. NaN/Inf pixels are set to 0 and masked. Every failure is a
one-line project error naming the file and the cause.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import os
import warnings
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from astropy.io import fits
from astropy.time import Time

from .errors import FITSReadError, ImageDataError, ImageTooLargeError
from .schema import partition_value

#: Smallest image side we measure (SEP's background mesh needs room).
MIN_SIDE = 16
#: Bytes of working memory per pixel: float32 data + mask + SEP's RMS map + the subtracted
#: image (float32 each) + the segmentation map (int32) + the detection's buffers and astropy's
#: scaled copy of integer data; rounded up so the estimate errs on the safe side (the 4096²
#: benchmark image, float32, peaks at 447 MB against an estimate of 790 MB).
BYTES_PER_PIXEL = 40
#: Fixed overhead of the interpreter and the imported libraries (numpy, astropy, sep, pyarrow).
BASE_BYTES = 150 * 2**20


@dataclass(frozen=True)
class FitsImage:
    data: np.ndarray  # 2-D float32, native byte order, C-contiguous, bad pixels set to 0
    mask: np.ndarray | None  # True where the pixel was NaN/Inf; None when there are none
    header: fits.Header
    hdu: int
    name: str


def estimate_memory_bytes(header: fits.Header) -> int:
    """Memory the pipeline needs for the image this header describes (before reading it)."""
    nx, ny = int(header.get("ZNAXIS1", header.get("NAXIS1", 0))), int(
        header.get("ZNAXIS2", header.get("NAXIS2", 0)))
    return BASE_BYTES + BYTES_PER_PIXEL * nx * ny


def _decompress(raw: bytes, name: str) -> bytes:
    try:
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        if raw[:3] == b"BZh":
            return bz2.decompress(raw)
    except (OSError, EOFError, ValueError) as exc:
        raise FITSReadError(name, f"corrupt compressed file ({exc})") from None
    return raw


def _load_bytes(source) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    with open(os.fspath(source), "rb") as fh:
        return fh.read()


def _image_hdu(hdul: fits.HDUList, name: str) -> int:
    found = []
    for i, hdu in enumerate(hdul):
        if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
            continue
        shape = hdu.shape if hasattr(hdu, "shape") else ()
        naxis = len(shape)
        if naxis == 2 and min(shape) > 0:
            return i
        if naxis:
            found.append(f"{naxis}-D data in HDU {i}")
    detail = f" (found {', '.join(found)})" if found else " (no image data)"
    raise FITSReadError(name, f"no 2-D image HDU{detail}")


def read_fits(source, *, name: str, max_memory_bytes: int | None = None) -> FitsImage:
    """Read *source* (a path or the file's bytes); *name* is used in error messages."""
    try:
        raw = _load_bytes(source)
    except OSError as exc:
        raise FITSReadError(name, exc.strerror or str(exc)) from None
    if not raw:
        raise FITSReadError(name, "empty file (0 bytes)")
    raw = _decompress(raw, name)
    if not raw.startswith(b"SIMPLE  ="):
        raise FITSReadError(name, "not a FITS file (no SIMPLE card)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
    except Exception as exc:
        raise FITSReadError(name, f"unreadable FITS ({type(exc).__name__}: {exc})") from None
    with hdul:
        try:
            return _from_hdul(hdul, raw, name, max_memory_bytes)
        except (FITSReadError, ImageDataError, ImageTooLargeError):
            raise
        except Exception as exc:  # astropy's lazy parsing of a malformed header or data
            raise FITSReadError(name, f"malformed FITS ({type(exc).__name__}: {exc})") from None


def _float_view(hdu, raw: bytes) -> np.ndarray | None:
    """Unscaled float pixels as a read-only view into *raw* (astropy copies them twice).

    Only for plain float images without BSCALE/BZERO, the common case; anything else (integers,
    scaling, compression, short data) returns None and goes through ``hdu.data``.
    """
    bitpix = hdu.header.get("BITPIX")
    if (isinstance(hdu, fits.CompImageHDU) or bitpix not in (-32, -64)
            or hdu.header.get("BSCALE", 1) != 1 or hdu.header.get("BZERO", 0) != 0):
        return None
    offset = hdu.fileinfo()["datLoc"]
    dtype = np.dtype(">f4" if bitpix == -32 else ">f8")
    if offset + int(np.prod(hdu.shape)) * dtype.itemsize > len(raw):
        return None
    return np.ndarray(hdu.shape, dtype=dtype, buffer=raw, offset=offset)


def _from_hdul(hdul: fits.HDUList, raw: bytes, name: str,
               max_memory_bytes: int | None) -> FitsImage:
    index = _image_hdu(hdul, name)
    hdu = hdul[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu.verify("silentfix+ignore")
    header = hdu.header.copy()
    for card in header.cards:  # parse every card now: a bad one fails here, not later
        _ = card.value
    if index > 0:  # keywords such as FILTER often live in the primary header only
        for card in hdul[0].header.cards:
            if card.keyword and card.keyword not in header and card.keyword not in (
                    "SIMPLE", "EXTEND", "NAXIS", "BITPIX", "COMMENT", "HISTORY", ""):
                header[card.keyword] = (card.value, card.comment)
    if isinstance(hdu, fits.CompImageHDU):
        header["NAXIS1"], header["NAXIS2"] = hdu.shape[1], hdu.shape[0]
    needed = estimate_memory_bytes(header)
    if max_memory_bytes is not None and needed > max_memory_bytes:
        raise ImageTooLargeError(
            name, f"needs ~{needed / 2**20:.0f} MB, budget {max_memory_bytes / 2**20:.0f} MB")
    expected = hdu.shape[0] * hdu.shape[1] * abs(int(hdu.header.get("BITPIX", -32))) // 8
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = _float_view(hdu, raw)
            if data is None:
                data = hdu.data
    except Exception as exc:
        raise FITSReadError(name, f"truncated or corrupt data ({exc})") from None
    if data is None or (not isinstance(hdu, fits.CompImageHDU) and data.nbytes < expected):
        raise FITSReadError(name, "truncated FITS file")
    return _clean(np.asarray(data), header, index, name)


def _clean(data: np.ndarray, header: fits.Header, index: int, name: str) -> FitsImage:
    ny, nx = data.shape
    if min(nx, ny) < MIN_SIDE:
        raise ImageDataError(name, f"image too small ({nx}x{ny} px, need at least "
                                   f"{MIN_SIDE}x{MIN_SIDE})")
    out = np.ascontiguousarray(data, dtype=np.float32)  # native byte order
    if not out.flags.writeable or not out.flags.owndata:  # a view into the file's bytes
        out = out.copy()
    lo, hi = float(out.min()), float(out.max())  # NaN propagates; +-Inf shows at an end
    mask = None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = ~np.isfinite(out)
        if bad.all():
            raise ImageDataError(name, "image is all NaN/Inf")
        out[bad] = 0.0
        mask = bad
        good = out[~bad]
        lo, hi = float(good.min()), float(good.max())
    if lo == hi:
        raise ImageDataError(name, f"image is constant (value {lo:g})")
    return FitsImage(out, mask, header, index, name)


def observation_partition(header: fits.Header) -> tuple[str, str]:
    """``(band, night)`` Hive partition values from FILTER and DATE-OBS (or MJD-OBS)."""
    band = header.get("FILTER")
    band = partition_value(str(band).strip().lower()) if band is not None else "unknown"
    night = "unknown"
    date_obs = header.get("DATE-OBS")
    try:
        if date_obs:
            when = datetime.fromisoformat(str(date_obs).strip().replace("Z", ""))
            night = when.date().isoformat()
        elif header.get("MJD-OBS") is not None:
            night = Time(float(header["MJD-OBS"]), format="mjd").to_datetime().date().isoformat()
    except (TypeError, ValueError):
        night = "unknown"
    return band, night
