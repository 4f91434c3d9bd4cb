"""Reference catalogs for photometric and astrometric calibration: read only the sky an image needs.

A reference is named by a URI, a local path or ``s3://bucket/key``, to

- a table file: Parquet (``.parquet``/``.pq``), CSV (``.csv``, ``.csv.gz``), FITS (``.fits``,
  ``.fit``, ``.fits.gz``) or VOTable (``.vot``, ``.votable``, ``.xml``), with ``ra``/``dec`` in
  degrees (ICRS);
- a HATS catalog (a folder or prefix holding ``partition_info.csv`` or ``properties``, data in
  ``dataset/Norder=K/Dir=D/Npix=N.parquet``, or without ``dataset/`` in older catalogs), such as
  the public Gaia DR3 HATS catalog. Only the HEALPix pixels that overlap the image are read.

Parquet files up to :data:`IN_MEMORY_BYTES` are read once, whole; larger ones are read per image
through a ``pyarrow.dataset`` filter on ra/dec, so only the row groups whose statistics overlap
the image (and only the needed columns) come off the disk or S3. Opened references are cached
per process (a warm Lambda container reads a small reference once). S3 goes through pyarrow's
S3 filesystem with boto3's settings (no s3fs). Everything here is numpy and pyarrow (and astropy
for FITS/VOTable): it runs inside the Lambda.

Columns are found case-insensitively: positions as ``ra``/``dec`` (or ``ra_icrs``/``de_icrs``,
``raj2000``/``dej2000``, ``ra_deg``/``dec_deg``, HATS's ``hats_col_ra``/``hats_col_dec``);
magnitudes by the band mapping (``--reference-bands g=gmag,r=rmag``), else a column named
``<band>mag`` or ``<band>_mag``; errors as ``<col>_err``, ``e_<col>``, ``<col>err``, ``<col>_error``
or ``<band>magerr``/``<band>_mag_err``/``<band>_err``. Proper motions (``pmra`` in mas/yr
including cos(dec), ``pmdec``, and ``ref_epoch`` in Julian years, Gaia's names) move positions to
the image's epoch. A band is never mapped onto another photometric system automatically (SDSS
g onto Gaia G needs an explicit mapping and a colour term the zero point does not include).
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import get_setting, is_s3_uri, parse_s3_uri
from .errors import ConfigError, SkySurveyError

if TYPE_CHECKING:  # pyarrow.dataset imports pandas (~48 MB in every handler): on use only
    import pyarrow.dataset as pads

__all__ = ["FORMATS", "IN_MEMORY_BYTES", "MAX_MOTION_DEG", "MIN_MAG_SPREAD", "MIN_SPREAD_STARS",
           "NO_REFERENCE", "PIXEL_CACHE", "POSITION_NAMES", "PROPER_MOTION", "ReferenceCatalog",
           "ReferenceError", "ReferenceSpec", "ReferenceStars", "angular_distance",
           "check_reference", "clear_cache", "julian_year", "open_reference", "parse_bands",
           "picked_columns", "propagate", "reference_spec", "write_hats"]

#: Parquet files up to this size are read whole once and kept in memory.
IN_MEMORY_BYTES = 64 * 2**20
#: HATS pixels kept in memory per catalog (a warm container calibrating nearby images).
PIXEL_CACHE = 32

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv",
           ".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".fts": "fits",
           ".vot": "votable", ".votable": "votable", ".xml": "votable"}
POSITION_NAMES = (("ra", "dec"), ("ra_icrs", "de_icrs"), ("raj2000", "dej2000"),
                  ("ra_deg", "dec_deg"), ("ra_j2000", "dec_j2000"), ("alpha_j2000", "delta_j2000"))
PROPER_MOTION = ("pmra", "pmdec", "ref_epoch")
#: A reference whose magnitudes over an image span less than this (mag) is not photometry
#: (every star 8.0: the zero point would follow the instrumental magnitudes, 12 mag off)...
MIN_MAG_SPREAD = 0.01
#: ...when it has at least this many stars there.
MIN_SPREAD_STARS = 3
#: Cone margin for stars that moved into it: 10 arcsec (a century at 100 mas/yr).
MAX_MOTION_DEG = 10.0 / 3600.0


class ReferenceError(SkySurveyError):
    """The reference catalog cannot be used: missing, unreadable, unknown format, no columns."""


#: ``--reference none`` (or ``"reference": "none"`` in an event): header zero points.
NO_REFERENCE = "none"


@dataclass(frozen=True)
class ReferenceSpec:
    """What to calibrate against: a catalog URI and the band -> magnitude column mapping."""

    uri: str
    bands: tuple[tuple[str, str], ...] = ()  # ((band lowercase, column), ...)

    @classmethod
    def parse(cls, uri: str | None, bands: str | None = None) -> ReferenceSpec | None:
        """``ReferenceSpec.parse("ref.parquet", "g=gmag,r=rmag")``; None without a URI;
        ``"none"``: header zero points, asked for explicitly (:attr:`is_none`)."""
        if not uri:
            return None
        if str(uri).strip().lower() == NO_REFERENCE:
            return cls(NO_REFERENCE)
        return cls(str(uri), parse_bands(bands))

    @property
    def is_none(self) -> bool:
        """``--reference none``: no reference, not even the one the catalog records."""
        return self.uri == NO_REFERENCE

    def column_for(self, band: str) -> str | None:
        return dict(self.bands).get(str(band).lower())

    @property
    def bands_text(self) -> str:
        """The mapping as ``--reference-bands`` takes it (``g=gmag,r=rmag``)."""
        return ",".join(f"{band}={column}" for band, column in self.bands)


def reference_spec(uri: str | None = None, bands: str | None = None) -> ReferenceSpec | None:
    """The reference to calibrate against: *uri*/*bands* (command-line flags or the Lambda
    event) over the ``REFERENCE_CATALOG``/``REFERENCE_BANDS`` settings; None for none.
    A malformed band mapping raises :class:`ConfigError`.

    Parameters
    ----------
    uri : str, optional
        The reference catalog (local path or ``s3://``; ``"none"``: no calibration); None:
        the ``REFERENCE_CATALOG`` setting.
    bands : str, optional
        ``band=COLUMN,...``; None: the ``REFERENCE_BANDS`` setting.

    Returns
    -------
    ReferenceSpec or None
        None when there is no reference to calibrate against.
    """
    uri = get_setting("REFERENCE_CATALOG", uri)
    bands = get_setting("REFERENCE_BANDS", bands)
    try:
        return ReferenceSpec.parse(uri, bands)
    except ValueError as exc:
        raise ConfigError("REFERENCE_BANDS", str(exc)) from None


def parse_bands(text: str | None) -> tuple[tuple[str, str], ...]:
    """``"g=gmag, R=rmag"`` -> ``(("g", "gmag"), ("r", "rmag"))`` (bands lowercased)."""
    pairs = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        band, sep_, column = item.partition("=")
        if not sep_ or not band.strip() or not column.strip():
            raise ValueError(f"reference band mapping {item.strip()!r} is not BAND=COLUMN")
        band = band.strip().lower()
        if band in dict(pairs):
            raise ValueError(f"reference band {band!r} is mapped twice ({dict(pairs)[band]} "
                             f"and {column.strip()}): map each band once")
        pairs.append((band, column.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class ReferenceStars:
    """Reference stars around an image, at the image's epoch."""

    ra: np.ndarray  # degrees, ICRS
    dec: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray  # NaN when the catalog has no error column
    column: str  # the magnitude column used
    auto_picked: bool  # True when the column was picked by name (no mapping given)
    proper_motion: bool  # True when positions were moved to the image's epoch


def _filesystem(uri: str):
    """``(pyarrow filesystem, path)`` of a local path or s3:// URI."""
    from pyarrow import fs

    if is_s3_uri(uri):
        from .aws import s3_filesystem

        loc = parse_s3_uri(uri)
        return s3_filesystem(), f"{loc.bucket}/{loc.prefix}".rstrip("/")
    return fs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def _format(uri: str) -> str | None:
    lower = uri.lower().rstrip("/")
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith(suffix):
            return FORMATS[suffix]
    return None


def _reading(uri: str, exc: BaseException) -> ReferenceError:
    if isinstance(exc, ReferenceError):
        return exc
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, FileNotFoundError) or "does not exist" in text or "NoSuchKey" in text:
        return ReferenceError(uri, "no such file or object")
    return ReferenceError(uri, f"cannot read ({type(exc).__name__}: {text})")


def _find(names, wanted) -> str | None:
    """The column of *names* equal to *wanted*, case-insensitively."""
    lower = {n.lower(): n for n in names}
    return lower.get(str(wanted).lower())


class ReferenceCatalog:
    """An opened reference: its columns, and the stars inside a cone on request."""

    def __init__(self, uri: str):
        self.uri = uri
        self.filesystem, self.path = _filesystem(uri)
        self._table: pa.Table | None = None  # whole table, kept for small catalogs
        self._dataset: pads.Dataset | None = None  # big Parquet: filtered per image
        self._hats: _Hats | None = None
        try:
            info = self.filesystem.get_file_info(self.path)
        except Exception as exc:
            raise _reading(uri, exc) from None
        from pyarrow import fs

        if info.type == fs.FileType.NotFound:
            raise ReferenceError(uri, "no such file or object")
        if info.type == fs.FileType.Directory:
            self._hats = _Hats(uri, self.filesystem, self.path)
            names = self._hats.schema.names
            ra_dec = self._hats.ra_dec
        else:
            kind = _format(uri)
            if kind is None:
                raise ReferenceError(uri, "unknown format (expected .parquet, .csv, .fits, "
                                          ".vot/.xml or a HATS catalog folder)")
            try:
                if kind == "parquet" and info.size > IN_MEMORY_BYTES:
                    import pyarrow.dataset as pads

                    self._dataset = pads.dataset(self.path, filesystem=self.filesystem,
                                                 format="parquet")
                    names = self._dataset.schema.names
                else:
                    self._table = _read_table(self.filesystem, self.path, kind)
                    names = self._table.column_names
            except Exception as exc:
                raise _reading(uri, exc) from None
            ra_dec = None
        self.columns: list[str] = list(names)
        self.ra_col, self.dec_col = ra_dec or self._positions()

    def as_table(self) -> pa.Table:
        """The whole reference as one table, its position columns renamed ``ra`` and ``dec``
        (for SQL: the ``reference`` table of ``query_with_athena.py``)."""
        if self._hats is not None:  # a survey-sized catalog never goes whole into memory
            raise ReferenceError(self.uri, "a HATS catalog is not loaded whole into SQL: "
                                           "cross-match with LSDB (scripts/export_hats.py)")
        try:
            table = self._table if self._table is not None else self._dataset.to_table()
        except Exception as exc:
            raise _reading(self.uri, exc) from None
        names = [n for n in table.column_names if n.lower() not in ("ra", "dec")
                 or n in (self.ra_col, self.dec_col)]
        table = table.select(names)
        return table.rename_columns([{self.ra_col: "ra", self.dec_col: "dec"}.get(n, n)
                                     for n in names])

    def _positions(self) -> tuple[str, str]:
        for ra, dec in POSITION_NAMES:
            found = _find(self.columns, ra), _find(self.columns, dec)
            if all(found):
                return found
        raise ReferenceError(self.uri, "no ra/dec columns (looked for ra/dec, ra_icrs/de_icrs, "
                                       "raj2000/dej2000, ra_deg/dec_deg)")

    def magnitude_column(self, band: str, spec: ReferenceSpec | None) -> tuple[str, bool]:
        """The magnitude column for *band* and whether it was picked by name."""
        band = str(band).lower()
        mapped = spec.column_for(band) if spec else None
        if mapped:
            column = _find(self.columns, mapped)
            if column is None:
                raise ReferenceError(self.uri, f"no column {mapped!r} (mapped to band {band})")
            return column, False
        for name in (f"{band}mag", f"{band}_mag"):
            column = _find(self.columns, name)
            if column is not None:
                return column, True
        mapped_bands = ", ".join(b for b, _ in spec.bands) if spec and spec.bands else "none"
        raise ReferenceError(self.uri, f"no magnitude column for band {band!r} (mapped bands: "
                                       f"{mapped_bands}; no column {band}mag or {band}_mag)")

    def _error_column(self, column: str, band: str) -> str | None:
        for name in (f"{column}_err", f"e_{column}", f"{column}err", f"{column}_error",
                     f"{band}magerr", f"{band}_mag_err", f"{band}_err", f"e_{band}mag"):
            found = _find(self.columns, name)
            if found is not None:
                return found
        return None

    def stars(self, band: str, ra: float, dec: float, radius_deg: float,
              spec: ReferenceSpec | None = None, epoch: float | None = None) -> ReferenceStars:
        """Reference stars within *radius_deg* of (ra, dec) with a finite magnitude in *band*.

        *epoch*: the image's epoch (Julian year); positions with proper motions move to it.
        """
        column, auto = self.magnitude_column(band, spec)
        error = self._error_column(column, str(band).lower())
        pm = [_find(self.columns, n) for n in PROPER_MOTION]
        use_pm = epoch is not None and all(pm)
        wanted = [self.ra_col, self.dec_col, column] + ([error] if error else []) + (
            pm if use_pm else [])
        table = self._cone(wanted, ra, dec, radius_deg + (MAX_MOTION_DEG if use_pm else 0))
        arrays = {name: _numpy(table[name]) for name in dict.fromkeys(wanted)}
        r, d = arrays[self.ra_col], arrays[self.dec_col]
        if use_pm:
            r, d = propagate(r, d, arrays[pm[0]], arrays[pm[1]], arrays[pm[2]], epoch)
        mag = arrays[column]
        mag_err = arrays[error] if error else np.full(mag.shape, np.nan)
        keep = (np.isfinite(r) & np.isfinite(d) & np.isfinite(mag)
                & (angular_distance(r, d, ra, dec) <= radius_deg))
        keep[np.flatnonzero(keep)[~_first_of_each(r[keep], d[keep])]] = False
        stars = ReferenceStars(r[keep], d[keep], mag[keep], mag_err[keep], column, auto, use_pm)
        if stars.mag.size >= MIN_SPREAD_STARS and np.ptp(stars.mag) < MIN_MAG_SPREAD:
            raise ReferenceError(self.uri, f"all {stars.mag.size} magnitudes in column {column} "
                                           f"over the image are {stars.mag[0]:g}: not "
                                           "photometry a zero point can be fitted to")
        return stars

    def _cone(self, columns, ra, dec, radius_deg) -> pa.Table:
        try:
            if self._table is not None:
                table = self._table.select(list(dict.fromkeys(columns)))
                r, d = _numpy(table[self.ra_col]), _numpy(table[self.dec_col])
                near = np.abs(d - dec) <= radius_deg
                near[near] = angular_distance(r[near], d[near], ra, dec) <= radius_deg
                return table.filter(pa.array(near))
            box = _box_filter(self.ra_col, self.dec_col, ra, dec, radius_deg)
            if self._dataset is not None:
                return self._dataset.to_table(columns=list(dict.fromkeys(columns)), filter=box)
            return self._hats.read(list(dict.fromkeys(columns)), ra, dec, radius_deg, box)
        except ReferenceError:
            raise
        except Exception as exc:
            raise _reading(self.uri, exc) from None


def _first_of_each(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """True for the first row of each position (to 1e-8 deg, 0.04 mas): a catalog whose rows
    repeat would otherwise have every star "blended" with its own copies, and none isolated
    enough to calibrate on."""
    first = np.zeros(ra.size, bool)
    if ra.size:
        _, index = np.unique(np.column_stack([np.round(ra, 8), np.round(dec, 8)]), axis=0,
                             return_index=True)
        first[index] = True
    return first


def check_reference(spec: ReferenceSpec, band: str | None = None) -> ReferenceCatalog:
    """The opened reference of *spec* when it can be used: it opens (exists, readable, a
    known format, ra/dec columns), every mapped band's column exists, and so does *band*'s
    when given. Otherwise one :class:`ReferenceError` naming the reference and the cause: a
    run asked to calibrate against it fails instead of falling back without a word.

    Parameters
    ----------
    spec : ReferenceSpec
        The reference and its band mapping (:func:`reference_spec`).
    band : str, optional
        A band the run will calibrate, whose magnitude column must exist.

    Returns
    -------
    ReferenceCatalog
        The opened reference.

    Raises
    ------
    ReferenceError
        When it cannot be used (the message names it and the cause).
    """
    ref = open_reference(spec.uri)
    for mapped, _ in spec.bands:
        ref.magnitude_column(mapped, spec)
    if band is not None:
        ref.magnitude_column(band, spec)
    return ref


def picked_columns(ref: ReferenceCatalog, spec: ReferenceSpec, bands) -> dict[str, str]:
    """``band -> column`` for the *bands* whose magnitude column *ref* picks by name (no
    ``--reference-bands`` mapping), so a run can say so once rather than once per worker.

    Parameters
    ----------
    ref : ReferenceCatalog
        The opened reference (:func:`check_reference`).
    spec : ReferenceSpec
        Its spec; bands it maps explicitly are left out.
    bands : iterable of str
        The bands of the run's images.

    Returns
    -------
    dict of str to str
        ``band -> column`` for the bands whose column was picked by name.
    """
    picked = {}
    for band in sorted(set(bands)):
        try:
            column, auto = ref.magnitude_column(band, spec)
        except ReferenceError:
            continue  # that band's images failed by name already
        if auto:
            picked[band] = column
    return picked


def _numpy(column) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _read_table(filesystem, path: str, kind: str) -> pa.Table:
    """A whole (small) reference table; NaN for masked values."""
    if kind == "parquet":
        return pq.read_table(path, filesystem=filesystem)
    with filesystem.open_input_stream(path) as stream:
        raw = stream.read()
    if kind == "csv":
        import pyarrow.csv as pacsv

        if raw[:2] == b"\x1f\x8b":
            import gzip

            raw = gzip.decompress(raw)
        return pacsv.read_csv(io.BytesIO(raw))
    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unit and VOTable-version notes
        table = Table.read(io.BytesIO(raw), format="fits" if kind == "fits" else "votable")
    columns = {}
    for name in table.colnames:
        col = table[name]
        if col.ndim != 1:
            continue
        values = np.ma.getdata(col)
        if values.dtype.kind in "fiu":
            values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
            columns[name] = pa.array(np.asarray(values, dtype=float))
        elif values.dtype.kind in "SU":
            columns[name] = pa.array(np.asarray(values).astype(str))
    return pa.table(columns)


def _box_filter(ra_col, dec_col, ra, dec, radius_deg):
    """A pyarrow filter for the box around the cone (whole RA range near the poles or 0/360)."""
    lo, hi = dec - radius_deg, dec + radius_deg
    expr = (pc.field(dec_col) >= lo) & (pc.field(dec_col) <= hi)
    if hi >= 89.0 or lo <= -89.0:
        return expr
    half = radius_deg / math.cos(math.radians(max(abs(lo), abs(hi))))
    ra_lo, ra_hi = ra - half, ra + half
    if ra_lo < 0 or ra_hi >= 360:
        ra_lo, ra_hi = ra_lo % 360, ra_hi % 360
        return expr & ((pc.field(ra_col) >= ra_lo) | (pc.field(ra_col) <= ra_hi))
    return expr & (pc.field(ra_col) >= ra_lo) & (pc.field(ra_col) <= ra_hi)


def angular_distance(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance in degrees (haversine; arrays broadcast)."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    a = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(a, 0, 1))))


def propagate(ra, dec, pmra, pmdec, ref_epoch, epoch):
    """Move positions by their proper motions (mas/yr; pmra includes cos dec) from *ref_epoch*
    to *epoch* (Julian years), linearly on the tangent plane (< 0.1 mas for decades).
    Stars without proper motions stay where they are."""
    dt = epoch - np.where(np.isfinite(ref_epoch), ref_epoch, epoch)
    pmra = np.where(np.isfinite(pmra), pmra, 0.0)
    pmdec = np.where(np.isfinite(pmdec), pmdec, 0.0)
    new_dec = dec + pmdec * dt / 3.6e6
    cosd = np.cos(np.radians(0.5 * (dec + new_dec)))
    return np.mod(ra + pmra * dt / 3.6e6 / np.maximum(cosd, 1e-9), 360.0), new_dec


def julian_year(mjd: float | None) -> float | None:
    """The Julian epoch of an MJD (None stays None)."""
    if mjd is None or not math.isfinite(mjd):
        return None
    return 2000.0 + (mjd - 51544.5) / 365.25


class _Hats:
    """A HATS catalog: partition_info.csv (or the dataset's files) and per-pixel Parquet."""

    def __init__(self, uri: str, filesystem, path: str):
        self.uri, self.fs, self.path = uri, filesystem, path
        self._cache: dict[tuple, pa.Table] = {}
        self.properties = self._properties()
        self.pixels = self._partitions()
        if not self.pixels:
            raise ReferenceError(uri, "a folder, but not a HATS catalog (no partition_info.csv "
                                      "and no Norder=*/Dir=*/Npix=* files)")
        order, pixel = self.pixels[0]
        self.schema = pq.read_schema(self._pixel_files(order, pixel)[0], filesystem=self.fs)
        names = self.schema.names
        ra = _find(names, self.properties.get("hats_col_ra", ""))
        dec = _find(names, self.properties.get("hats_col_dec", ""))
        self.ra_dec = (ra, dec) if ra and dec else None

    def _properties(self) -> dict[str, str]:
        try:
            with self.fs.open_input_stream(f"{self.path}/properties") as stream:
                text = stream.read().decode()
        except (FileNotFoundError, OSError):
            return {}
        out = {}
        for line in text.splitlines():
            key, eq, value = line.partition("=")
            if eq and not line.lstrip().startswith("#"):
                out[key.strip()] = value.strip()
        return out

    def _partitions(self) -> list[tuple[int, int]]:
        import pyarrow.csv as pacsv

        try:
            with self.fs.open_input_stream(f"{self.path}/partition_info.csv") as stream:
                table = pacsv.read_csv(io.BytesIO(stream.read()))
            return list(zip(table["Norder"].to_pylist(), table["Npix"].to_pylist(),
                            strict=True))
        except (FileNotFoundError, OSError, KeyError):
            pass
        from pyarrow import fs

        found = set()
        for base in (f"{self.path}/dataset", self.path):
            try:
                infos = self.fs.get_file_info(fs.FileSelector(base, recursive=True))
            except (FileNotFoundError, OSError):
                continue
            for info in infos:
                parts = dict(p.split("=", 1) for p in info.path.split("/") if "=" in p)
                if "Norder" in parts and "Npix" in parts:
                    found.add((int(parts["Norder"]), int(parts["Npix"].split(".")[0])))
            if found:
                break
        return sorted(found)

    @functools.cache  # noqa: B019 (one catalog per process; a handful of pixels)
    def _pixel_files(self, order: int, pixel: int) -> list[str]:
        from pyarrow import fs

        directory = pixel // 10_000 * 10_000
        for base in (f"{self.path}/dataset", self.path):
            stem = f"{base}/Norder={order}/Dir={directory}/Npix={pixel}"
            for info in self.fs.get_file_info([f"{stem}.parquet", stem]):
                if info.type == fs.FileType.File:
                    return [info.path]
                if info.type == fs.FileType.Directory:
                    files = self.fs.get_file_info(fs.FileSelector(info.path, recursive=True))
                    return sorted(f.path for f in files if f.path.endswith(".parquet"))
        raise ReferenceError(self.uri, f"partition Norder={order} Npix={pixel} has no file")

    def overlapping(self, ra, dec, radius_deg) -> list[tuple[int, int]]:
        """The catalog's partitions that overlap the cone."""
        from astropy import units as u
        from astropy_healpix import HEALPix

        listed: dict[int, set[int]] = {}
        for order, pixel in self.pixels:
            listed.setdefault(int(order), set()).add(int(pixel))
        out = []
        for order, pixels in sorted(listed.items()):
            hp = HEALPix(nside=2**order, order="nested")
            cone = hp.cone_search_lonlat(ra * u.deg, dec * u.deg, radius_deg * u.deg)
            out += [(order, int(p)) for p in cone if int(p) in pixels]
        return out

    def read(self, columns, ra, dec, radius_deg, box) -> pa.Table:
        """The rows in the cone's box from the overlapping pixels; each pixel's columns are
        read once per process and kept (the last PIXEL_CACHE of them)."""
        tables = [self._pixel(order, pixel, tuple(columns)).filter(box)
                  for order, pixel in self.overlapping(ra, dec, radius_deg)]
        if not tables:
            return pa.table({c: pa.array([], pa.float64()) for c in columns})
        return pa.concat_tables(tables, promote_options="permissive")

    def _pixel(self, order: int, pixel: int, columns: tuple[str, ...]) -> pa.Table:
        key = (order, pixel, columns)
        if key not in self._cache:
            import pyarrow.dataset as pads

            files = self._pixel_files(order, pixel)
            data = pads.dataset(files, filesystem=self.fs, format="parquet")
            self._cache[key] = data.to_table(columns=list(columns))
            while len(self._cache) > PIXEL_CACHE:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]


@functools.lru_cache(maxsize=8)
def _open_cached(uri: str, stamp) -> ReferenceCatalog:
    return ReferenceCatalog(uri)


def open_reference(uri: str) -> ReferenceCatalog:
    """The opened reference, cached per process (a local file is re-read when it changes)."""
    stamp = None
    if not is_s3_uri(uri):
        try:
            st = os.stat(Path(uri).expanduser())
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
    return _open_cached(uri, stamp)


def clear_cache() -> None:
    """Forget opened references (tests; a warm container keeps them)."""
    _open_cached.cache_clear()


def write_hats(frame, root, *, order: int = 5, ra: str = "ra", dec: str = "dec"):
    """Write a small table (pandas) as a HATS catalog at *root* (a local folder), with the
    layout the format specifies: ``properties``, ``partition_info.csv`` and
    ``dataset/Norder=K/Dir=D/Npix=N.parquet`` at one *order*, rows sorted by ``_healpix_29``.
    For tests, benchmarks and small references; large catalogs: ``hats-import``."""
    import pandas as pd

    from .astrometry import healpix_29

    root = Path(root)
    frame = frame.assign(_healpix_29=healpix_29(frame[ra].to_numpy(), frame[dec].to_numpy()))
    frame = frame.sort_values("_healpix_29")
    pixels = frame["_healpix_29"].to_numpy() >> (2 * (29 - order))
    rows = []
    for pixel in np.unique(pixels):
        folder = root / "dataset" / f"Norder={order}" / f"Dir={pixel // 10000 * 10000}"
        folder.mkdir(parents=True, exist_ok=True)
        frame[pixels == pixel].to_parquet(folder / f"Npix={pixel}.parquet", index=False)
        rows.append((order, int(pixel)))
    pd.DataFrame(rows, columns=["Norder", "Npix"]).to_csv(root / "partition_info.csv",
                                                          index=False)
    (root / "properties").write_text(
        f"obs_collection={root.name}\ndataproduct_type=object\nhats_nrows={len(frame)}\n"
        f"hats_col_ra={ra}\nhats_col_dec={dec}\nhats_order={order}\n"
        "hats_npix_suffix=.parquet\n")
    pq.write_metadata(pa.Schema.from_pandas(frame, preserve_index=False),
                      root / "dataset" / "_common_metadata")
    return root
