"""Read any FITS image a user has into a native float32 array, a mask and a header.

Handles primary or extension HDUs (the first with 2-D data), tile-compressed ``.fz``
(CompImageHDU), ``.gz``/``.bz2`` files (by magic bytes, not name), integer pixels with
BSCALE/BZERO and big-endian data. NaN/Inf pixels are set to 0 and masked. Every failure is a
one-line project error naming the file and the cause.

The file is read as a stream, one HDU at a time (gzip and bzip2 decompressed on the fly): each
header is parsed as it arrives, the memory budget is checked against the image HDU's header
before any of its pixels are read, and nothing after the image HDU is read at all. Every byte
read counts against the budget, so a compressed file that expands beyond it (a decompression
bomb) stops there, with one line.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import math
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta

from .errors import FITSReadError, ImageDataError, ImageTooLargeError
from .schema import partition_value

__all__ = [
    "BASE_BYTES",
    "BLOCK",
    "BYTES_PER_PIXEL",
    "HEADER_BYTES_FACTOR",
    "MIN_SIDE",
    "NIGHTS_FROM",
    "FitsImage",
    "ObservationTime",
    "default_memory_budget",
    "estimate_memory_bytes",
    "header_memory_bytes",
    "merge_headers",
    "observation_partition",
    "observation_time",
    "read_fits",
]

#: Smallest image side we measure (SEP's background mesh needs room).
MIN_SIDE = 16
#: Bytes of working memory per pixel: float32 data + mask + SEP's RMS map + the subtracted
#: image (float32 each) + the segmentation map (int32) + the detection's buffers and astropy's
#: scaled copy of integer data; rounded up so the estimate errs on the safe side (the 4096²
#: benchmark image, float32, 50,000 stars, peaks at ~535 MB with or without PSF photometry
#: against an estimate of 790 MB).
BYTES_PER_PIXEL = 40
#: Fixed overhead of the interpreter and the imported libraries (numpy, astropy, sep, pyarrow).
BASE_BYTES = 150 * 2**20
#: FITS files are made of 2880-byte blocks.
BLOCK = 2880
#: Peak memory of a header per byte of it: astropy's parse (a Card object per 80 bytes) and
#: the copies the reading makes (the raw blocks, the parsed header, astropy's own parse of
#: the HDU, the merged header). Measured 15-20x on 100,000-300,000 HISTORY cards.
HEADER_BYTES_FACTOR = 20
#: Skipped (non-image) HDUs of compressed files are decompressed and dropped in chunks this big.
_CHUNK = 2**20
#: Keywords of the primary header that never describe the image in an extension.
_STRUCTURAL = frozenset({"SIMPLE", "EXTEND", "NAXIS", "BITPIX", "COMMENT", "HISTORY", ""})
#: The primary header put in front of an extension HDU so that astropy opens it alone.
_EMPTY_PRIMARY = fits.PrimaryHDU().header.tostring().encode("ascii")


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


def default_memory_budget(workers: int = 1, share: float = 0.5) -> int:
    """A memory budget per image for local runs: *share* of this machine's RAM per worker.

    The RAM is ``psutil.virtual_memory().total`` (``os.sysconf`` where psutil is missing);
    with *workers* images measured at once, each gets an equal part. Never below
    :data:`BASE_BYTES` plus a 1024² image, so a tiny machine still measures small images.

    Parameters
    ----------
    workers : int, optional
        Images measured at once on this machine.
    share : float, optional
        The fraction of the machine's RAM the run may use.

    Returns
    -------
    int
        Bytes per image (``max_memory_bytes`` of :func:`read_fits`).
    """
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil is in requirements.txt
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    floor = BASE_BYTES + BYTES_PER_PIXEL * 1024 * 1024
    return max(floor, int(total * share) // max(1, int(workers)))


class _Stream:
    """The file's (decompressed) bytes, read forward once; every byte read is charged."""

    def __init__(self, fileobj, name: str, limit: int | None):
        self.name, self.limit, self.pos = name, limit, 0
        self.header_bytes = 0  # of the headers read so far (each is held, parsed, in memory)
        head = fileobj.read(3)
        fileobj.seek(0)
        if not head:
            raise FITSReadError(name, "empty file (0 bytes)")
        self.compression = ("gzip" if head[:2] == b"\x1f\x8b"
                            else "bzip2" if head == b"BZh" else None)
        if self.compression == "gzip":
            self.fh = gzip.GzipFile(fileobj=fileobj, mode="rb")
        elif self.compression == "bzip2":
            self.fh = bz2.BZ2File(fileobj, mode="rb")
        else:
            self.fh = fileobj
        self.size = None  # of a plain file on disk
        if self.compression is None:
            with contextlib.suppress(OSError, AttributeError, io.UnsupportedOperation):
                self.size = os.fstat(fileobj.fileno()).st_size  # BytesIO has none

    def _charge(self, n: int) -> None:
        if self.limit is not None and self.pos + n > self.limit:
            what = f"decompresses ({self.compression}) to" if self.compression else "holds"
            raise ImageTooLargeError(
                self.name, f"{what} more than the memory budget of "
                           f"{self.limit / 2**20:.0f} MB before its image is complete")

    def read(self, n: int) -> bytes:
        """*n* bytes, fewer only at the end of the file (a gzip member's end is not it)."""
        self._charge(n)
        parts, got = [], 0
        try:
            if self.size is not None:  # never ask for more than the file holds
                n = min(n, max(0, self.size - self.fh.tell()))
            # decompressed data arrive in chunks: a header's claim is never allocated at once
            while got < n and (part := self.fh.read(min(n - got, _CHUNK * 64))):
                parts.append(part)
                got += len(part)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            if self.compression is None:
                raise FITSReadError(self.name, exc.strerror or str(exc)) from None
            raise FITSReadError(self.name, f"corrupt compressed file ({exc})") from None
        self.pos += got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, n: int) -> None:
        """Move *n* bytes forward: a seek in a plain file, decompress-and-drop otherwise."""
        if self.compression is None:
            self.fh.seek(n, os.SEEK_CUR)
            return
        while n > 0:
            chunk = self.read(min(n, _CHUNK))
            if not chunk:
                return
            n -= len(chunk)


def _has_end(block: bytes) -> bool:
    return any(block[i:i + 8] == b"END     " for i in range(0, len(block), 80))


def header_memory_bytes(n_bytes: int) -> int:
    """Memory that reading a header of *n_bytes* needs (:data:`HEADER_BYTES_FACTOR`)."""
    return BASE_BYTES + HEADER_BYTES_FACTOR * n_bytes


def _charge_header(stream: _Stream, index: int, n_bytes: int) -> None:
    """Stop reading a header, before astropy parses it, once parsing the headers read so far
    (*n_bytes* in all) would need more than the budget: millions of HISTORY cards (or blank
    cards and no END) in a small .fits.gz."""
    if stream.limit is not None and header_memory_bytes(n_bytes) > stream.limit:
        raise ImageTooLargeError(
            stream.name, f"header of HDU {index} reaches {n_bytes / 2**20:.1f} MB with the "
                         f"ones before it ({n_bytes // 80:,} cards, no END yet): parsing it "
                         f"would need more than the memory budget of "
                         f"{stream.limit / 2**20:.0f} MB")


def _read_header(stream: _Stream, index: int) -> tuple[fits.Header, bytes] | None:
    """The next HDU's header and its raw blocks; None at a clean end of file."""
    blocks = []
    while True:
        block = stream.read(BLOCK)
        if not blocks and index == 0 and not block.startswith(b"SIMPLE  ="):
            raise FITSReadError(stream.name, "not a FITS file (no SIMPLE card)")
        if not block and not blocks:
            return None
        if len(block) < BLOCK:
            raise FITSReadError(stream.name, f"truncated FITS file (header of HDU {index} "
                                             "ends before its END card)")
        blocks.append(block)
        _charge_header(stream, index, stream.header_bytes + len(blocks) * BLOCK)
        if _has_end(block):
            break
    raw = b"".join(blocks)
    stream.header_bytes += len(raw)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = fits.Header.fromstring(raw.decode("ascii"))
    except Exception as exc:
        raise FITSReadError(stream.name, f"unreadable FITS (header of HDU {index}: "
                                         f"{type(exc).__name__}: {exc})") from None
    return header, raw


def _int_card(header: fits.Header, key: str, index: int, name: str, default=None) -> int:
    value = header.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FITSReadError(name, f"unreadable FITS ({key} = {value!r} in HDU {index})")
    if value < 0:
        raise FITSReadError(name, f"unreadable FITS ({key} = {value} is negative in HDU {index})")
    return value


def _data_bytes(header: fits.Header, index: int, name: str) -> int:
    """Size of the HDU's data (without the padding to a whole block), from its header."""
    bitpix = header.get("BITPIX")
    if bitpix not in (8, 16, 32, 64, -32, -64) or isinstance(bitpix, bool):
        raise FITSReadError(name, f"unreadable FITS (BITPIX = {bitpix!r} in HDU {index})")
    naxis = _int_card(header, "NAXIS", index, name)
    axes = [_int_card(header, f"NAXIS{i}", index, name) for i in range(1, naxis + 1)]
    if not axes:
        return 0
    if index == 0 and header.get("GROUPS") is True and axes[0] == 0:
        axes = axes[1:]  # random groups
    pcount = _int_card(header, "PCOUNT", index, name, 0)
    gcount = _int_card(header, "GCOUNT", index, name, 1)
    return abs(bitpix) // 8 * gcount * (pcount + math.prod(axes))


def _image_shape(header: fits.Header, index: int) -> tuple[int, ...] | None:
    """The image's axes (NAXIS1 first) when this HDU holds an image, else None."""
    try:
        if header.get("XTENSION") == "BINTABLE" and header.get("ZIMAGE") is True:
            return tuple(int(header[f"ZNAXIS{i}"]) for i in range(1, int(header["ZNAXIS"]) + 1))
        if (index == 0 and header.get("GROUPS") is not True) or header.get("XTENSION") == "IMAGE":
            return tuple(int(header[f"NAXIS{i}"]) for i in range(1, int(header["NAXIS"]) + 1))
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _find_image(stream: _Stream) -> tuple[int, fits.Header, bytes, int, fits.Header | None]:
    """Read HDUs until the first 2-D image: its index, header, raw header, data size (bytes,
    unpadded) and the primary header."""
    found, primary, index = [], None, 0
    while (hdu := _read_header(stream, index)) is not None:
        header, raw = hdu
        size = _data_bytes(header, index, stream.name)
        shape = _image_shape(header, index)
        if shape is not None and len(shape) == 2 and min(shape) > 0:
            return index, header, raw, size, primary
        if shape:
            found.append(f"{len(shape)}-D data in HDU {index}")
        if index == 0:
            primary = header
        stream.skip(size + (-size % BLOCK))
        index += 1
    detail = f" (found {', '.join(found)})" if found else " (no image data)"
    raise FITSReadError(stream.name, f"no 2-D image HDU{detail}")


def _image_hdu_bytes(stream: _Stream) -> tuple[int, bytes, fits.Header | None]:
    """The image HDU's index, its header and data as a FITS file's bytes, and the primary
    header; the budget is checked before any pixel is read."""
    index, header, raw_header, size, primary = _find_image(stream)
    needed = estimate_memory_bytes(header) + HEADER_BYTES_FACTOR * stream.header_bytes
    if header.get("ZIMAGE") is True:
        needed += size  # the compressed tiles are held while astropy decompresses them
    limit = stream.limit
    if limit is not None and needed > limit:
        raise ImageTooLargeError(
            stream.name, f"needs ~{needed / 2**20:.0f} MB, budget {limit / 2**20:.0f} MB")
    if index == 0 and stream.compression is None:
        return index, _primary_hdu_bytes(stream, len(raw_header), size), primary
    data = stream.read(size)
    if len(data) < size:
        raise FITSReadError(stream.name, "truncated FITS file")
    prefix = raw_header if index == 0 else _EMPTY_PRIMARY + raw_header
    return index, b"".join((prefix, data, b"\0" * (-size % BLOCK))), primary


def _primary_hdu_bytes(stream: _Stream, start: int, size: int) -> bytes:
    """An uncompressed file's primary HDU (header of *start* bytes, *size* bytes of data) as a
    FITS file's bytes: the file's own first bytes, read once (not read, then joined to the
    header: two copies of the image, ~8 ms at 2048²); a bytes source holding just this HDU is
    not copied at all. Charged to the budget as :meth:`_Stream.read` charges the data."""
    stream._charge(size)
    end = start + size + (-size % BLOCK)
    fh = stream.fh
    if isinstance(fh, io.BytesIO):
        whole = fh.getvalue()  # a bytes source's own object (no copy while it is not written)
    else:
        try:
            fh.seek(0)
            whole = fh.read(end)
        except (OSError, ValueError) as exc:
            raise FITSReadError(stream.name, getattr(exc, "strerror", None) or str(exc)) \
                from None
    got = max(0, min(len(whole) - start, size))
    stream.pos += got
    if got < size:
        raise FITSReadError(stream.name, "truncated FITS file")
    if len(whole) == end:
        return whole
    if len(whole) > end:
        return whole[:end]
    return b"".join((whole, b"\0" * (end - len(whole))))  # the padding missing at the end


def _open(source, name: str):
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    try:
        return open(os.fspath(source), "rb")
    except OSError as exc:
        raise FITSReadError(name, exc.strerror or str(exc)) from None


def read_fits(source, *, name: str, max_memory_bytes: int | None = None) -> FitsImage:
    """Read *source* (a path or the file's bytes); *name* is used in error messages.

    With *max_memory_bytes*, the image is refused (:class:`ImageTooLargeError`) when its header
    says it needs more (:func:`estimate_memory_bytes`), and the reading stops as soon as the
    bytes read (decompressed) exceed the budget; both before any pixel is held in memory.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        A FITS file's path (``.gz``, ``.bz2``, ``.fz`` too) or its bytes.
    name : str
        What error messages call the file (its key or URL).
    max_memory_bytes : int, optional
        Refuse the image when it needs more memory than this (None: no limit).

    Returns
    -------
    FitsImage
        The image HDU's data (float32, native byte order, bad pixels 0), the mask of its
        NaN/Inf pixels, the header and the HDU's number.

    Raises
    ------
    FITSReadError
        When the file is empty, not FITS, truncated, corrupt or holds no usable image.
    ImageTooLargeError
        When the image needs more than *max_memory_bytes*.
    """
    with _open(source, name) as fileobj:
        try:
            index, raw, primary = _image_hdu_bytes(_Stream(fileobj, name, max_memory_bytes))
        except (FITSReadError, ImageTooLargeError):
            raise
        except Exception as exc:  # astropy's parsing of a header card on first use
            raise FITSReadError(name, f"malformed FITS header ({type(exc).__name__}: "
                                      f"{exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
    except Exception as exc:
        raise FITSReadError(name, f"unreadable FITS ({type(exc).__name__}: {exc})") from None
    with hdul:
        try:
            return _from_hdu(hdul[-1], index, primary, raw, name)
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


def merge_headers(header: fits.Header, primary: fits.Header | None) -> fits.Header:
    """*header* plus the primary header's keywords it lacks (FILTER often lives there only).

    Built once from card lists, so the time is linear in the number of cards (adding them one
    at a time was quadratic: 90 s for 40,000 HIERARCH cards).
    """
    if primary is None:
        return header
    have = set(header.keys())
    cards = list(header.cards)
    for card in primary.cards:
        if card.keyword not in have and card.keyword not in _STRUCTURAL:
            have.add(card.keyword)
            cards.append(card)
    return fits.Header(cards)


def _from_hdu(hdu, index: int, primary: fits.Header | None, raw: bytes,
              name: str) -> FitsImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu.verify("silentfix+ignore")
        header = merge_headers(hdu.header.copy(), primary)
    for card in header.cards:  # parse every card now: a bad one fails here, not later
        _ = card.value
    if isinstance(hdu, fits.CompImageHDU):
        header["NAXIS1"], header["NAXIS2"] = hdu.shape[1], hdu.shape[0]
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


#: Dates outside [NIGHTS_FROM, today + 1 day] are not believed (MJD 1e9, the year 0001, 2099).
NIGHTS_FROM = "1850-01-01"
_OFFSET = re.compile(r"(?:Z|([+-])(\d\d):?(\d\d))$")


@dataclass(frozen=True)
class ObservationTime:
    """When an image was taken, as far as its header says.

    ``night`` is the UTC date (``YYYY-MM-DD``) or ``unknown``; ``mjd`` the MJD (UTC) or None;
    ``warnings`` name every date keyword that was present but unusable.
    """

    night: str
    mjd: float | None
    warnings: tuple[str, ...] = ()


#: DATE-OBS in the form FITS used before 1997 (Hanisch et al. 2001, sec. 4.4.2): DD/MM/YY
_OLD_DATE = re.compile(r"(\d{2})/(\d{2})/(\d{2})")


def _parse_date_obs(text: str) -> Time:
    """DATE-OBS as astropy reads it; a trailing ``Z`` or ``+hh:mm`` offset is applied first
    (astropy's ISO formats take neither), so ``23:30-05:00`` is 04:30 UTC the next day, and a
    leap second (``23:59:60``) stays on its own day."""
    text = text.strip()
    old_style = _OLD_DATE.fullmatch(text)
    if old_style:  # the FITS standard's original 'DD/MM/YY' form, legal for 1900-1999
        day, month, year = (int(g) for g in old_style.groups())
        text = f"{1900 + year:04d}-{month:02d}-{day:02d}"
    match = _OFFSET.search(text)
    offset = 0
    if match and re.search(r"\d[T ]\d", text[:match.start()]):
        if match.group(1):
            offset = (int(match.group(2)) * 60 + int(match.group(3))) * 60
            offset = -offset if match.group(1) == "+" else offset
        text = text[:match.start()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ERFA's "dubious year" on the dates we refuse below
        when = Time(text, scale="utc")
        if offset:
            when = when + TimeDelta(offset, format="sec")
    return when


def _night_of(when: Time, today=None) -> str | None:
    """The UTC date of *when*, or None outside the believed range."""
    last = (today or datetime.now(UTC).date()) + timedelta(days=2)  # the day after tomorrow
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = Time(NIGHTS_FROM, scale="utc").mjd, Time(last.isoformat(), scale="utc").mjd
        mjd = float(when.utc.mjd)
        if not lo <= mjd < hi:  # also refuses NaN
            return None
        return when.utc.isot[:10]


def observation_time(header: fits.Header, today=None) -> ObservationTime:
    """The night (from DATE-OBS, else MJD-OBS) and MJD (from MJD-OBS, else DATE-OBS).

    A value that is present but unparseable or outside 1850-01-01 .. *today* + 1 day (UTC) is
    not used and gives a warning; the other keyword then decides.
    """
    notes, parsed = [], {}
    date_obs, mjd_obs = header.get("DATE-OBS"), header.get("MJD-OBS")
    if date_obs is not None and str(date_obs).strip():
        try:
            parsed["DATE-OBS"] = _parse_date_obs(str(date_obs))
        except Exception:  # any failure to read user text means unparseable
            notes.append(f"unparseable DATE-OBS {str(date_obs).strip()!r}")
    elif date_obs is not None:  # the keyword is there, its value blank: say so
        notes.append("empty DATE-OBS" + ("" if mjd_obs is not None and str(mjd_obs).strip()
                                          else ": night unknown"))
    if mjd_obs is not None and str(mjd_obs).strip():
        try:
            value = float(mjd_obs)
            if not math.isfinite(value) or isinstance(mjd_obs, bool):
                raise ValueError(value)
            parsed["MJD-OBS"] = Time(value, format="mjd", scale="utc")
        except (TypeError, ValueError, OverflowError):
            notes.append(f"unparseable MJD-OBS {str(mjd_obs).strip()!r}")
    nights = {}
    for key, when in parsed.items():
        nights[key] = _night_of(when, today)
        if nights[key] is None:
            notes.append(f"{key} {str(header[key]).strip()} outside {NIGHTS_FROM} to today + 1 "
                         "day: night unknown")
    good = [key for key in ("DATE-OBS", "MJD-OBS") if nights.get(key)]
    night = nights[good[0]] if good else "unknown"
    mjd_key = "MJD-OBS" if "MJD-OBS" in good else (good[0] if good else None)
    mjd = float(parsed[mjd_key].utc.mjd) if mjd_key else None
    return ObservationTime(night, mjd, tuple(notes))


def observation_partition(header: fits.Header) -> tuple[str, str]:
    """``(band, night)`` Hive partition values from FILTER and DATE-OBS (or MJD-OBS)."""
    band = header.get("FILTER")
    band = partition_value(str(band).strip().lower()) if band is not None else "unknown"
    return band, observation_time(header).night
