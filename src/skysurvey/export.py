"""Query results and catalogs as files astronomy tools open: CSV, Parquet, FITS, VOTable, DS9.

The format follows the file name's suffix (:data:`FORMATS`). Units, descriptions and UCDs come
from :data:`skysurvey.units.COLUMN_META`:

- **FITS** (``.fits``, ``.fit``): a binary table with ``TUNITn``, plus ``TCOMMn`` (description)
  and ``TUCDn`` (UCD), which TOPCAT shows and astropy does not write by itself.
- **VOTable** (``.vot``, ``.xml``): every FIELD with ``unit``, ``ucd`` and a DESCRIPTION.
- **Parquet** (``.parquet``): astropy's ``table_meta_yaml`` schema metadata, so
  ``Table.read`` gives units; pandas, DuckDB and pyarrow read it as usual.
- **CSV** (``.csv``): plain values (no units: use one of the others for that).
- **DS9 regions** (``.reg``): ICRS ellipses at :data:`ELLIPSE_SCALE` x (a, b), about the Kron
  aperture, oriented by ``theta_world``; sources without sky coordinates (or without the
  columns a sky ellipse needs) in image coordinates, labelled with their image.

Every writer goes through a temporary file renamed into place: a failed export leaves nothing
half-written, and an existing file is replaced only when ``overwrite`` is set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SkySurveyError, printable
from .storage import LocalStore
from .units import annotate, meta_for, with_astropy_metadata

__all__ = [
    "ELLIPSE_SCALE",
    "FORMATS",
    "ExportError",
    "atomic_write",
    "check_output_file",
    "check_output_folder",
    "ds9_regions",
    "export_bytes",
    "export_format",
    "to_astropy",
    "write_table",
]

FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".fits": "fits",
                           ".fit": "fits", ".vot": "votable", ".xml": "votable", ".reg": "ds9"}
#: Ellipses (plots and DS9 regions) are drawn at this many times a, b: about the Kron aperture.
ELLIPSE_SCALE = 3.0


class ExportError(SkySurveyError):
    """The result cannot be written in the requested format (or the file already exists)."""


def export_format(path: str | os.PathLike) -> str:
    """The format name for *path*'s suffix; an unknown suffix raises :class:`ExportError`.

    Parameters
    ----------
    path : str or os.PathLike
        The output file (``.csv``, ``.parquet``, ``.fits``, ``.vot``/``.xml``, ``.reg``).

    Returns
    -------
    str
        The format's name.

    Raises
    ------
    ExportError
        For an unknown suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ExportError(str(path), f"unknown format {suffix or '(no suffix)'}: use one of "
                          + ", ".join(FORMATS))
    return FORMATS[suffix]


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Columns FITS and VOTable can hold: datetimes as ISO strings, and object columns of
    strings or booleans with missing values as pandas' nullable types (astropy makes them
    masked columns instead of variable-length object arrays)."""
    out = df.copy()
    for name in out.columns:
        column = out[name]
        if pd.api.types.is_timedelta64_dtype(column):  # SQL INTERVAL: seconds (unit set below)
            out[name] = column.dt.total_seconds()
        elif pd.api.types.is_datetime64_any_dtype(column):
            text = column.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3]
            out[name] = text.where(column.notna(), None).astype("string")
        elif column.dtype == object:
            present = column.dropna()
            if present.map(lambda v: isinstance(v, bool)).all() and len(present):
                out[name] = column.astype("boolean")
            elif present.map(lambda v: isinstance(v, str)).all():
                out[name] = column.astype("string")
    return out


def to_astropy(df: pd.DataFrame):
    """An astropy Table of *df* with units, descriptions and ``meta['ucd']`` on known columns."""
    import numpy as np
    from astropy.table import MaskedColumn, Table

    table = Table.from_pandas(_plain(df), index=False)
    for name in table.colnames:  # object columns left (all-null text): fixed-width, masked
        if table[name].dtype.kind == "O":
            column = table[name]
            missing = np.array([v is None or v is np.ma.masked or v is pd.NA for v in column])
            text = ["" if gone else str(v) for v, gone in zip(column, missing, strict=True)]
            table[name] = MaskedColumn(text, mask=missing,
                                       dtype=f"U{max([1, *(len(t) for t in text)])}")
    annotate(table)
    for name in df.columns:  # durations became seconds in _plain
        if pd.api.types.is_timedelta64_dtype(df[name]) and table[name].unit is None:
            table[name].unit = "s"
    return table


def _fits_bytes(df: pd.DataFrame) -> bytes:
    import io

    from astropy.io import fits

    table = to_astropy(df)
    hdu = fits.table_to_hdu(table)
    hdu.name = "SOURCES" if {"ra", "dec", "source_id"} <= set(df.columns) else "RESULT"
    for i, name in enumerate(table.colnames, start=1):
        info = meta_for(name)
        if info is None:
            continue
        hdu.header.set(f"TCOMM{i}", info.description[:68], after=f"TTYPE{i}")
        if info.ucd:
            hdu.header.set(f"TUCD{i}", info.ucd, after=f"TCOMM{i}")
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    return buffer.getvalue()


def _votable_bytes(df: pd.DataFrame) -> bytes:
    import io

    from astropy.io.votable import from_table

    votable = from_table(to_astropy(df))
    resource_table = votable.get_first_table()
    resource_table.name = "result"
    buffer = io.BytesIO()
    votable.to_xml(buffer)
    return buffer.getvalue()


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    import io

    table = with_astropy_metadata(pa.Table.from_pandas(df, preserve_index=False))
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    return buffer.getvalue()


def _csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def ds9_regions(df: pd.DataFrame, pixel_scales: Mapping[str, float] | float | None = None,
                *, color: str = "green") -> str:
    """DS9 region text for the rows of *df* (one region per row).

    Rows with ``ra``, ``dec``, ``a``, ``b``, ``theta_world`` and a pixel scale (a
    ``pixel_scale`` column, or *pixel_scales* by ``image_id``, or one number) become ICRS
    ellipses whose semi-axes are :data:`ELLIPSE_SCALE` x (a, b) in arcsec; DS9's angle is
    ``theta_world + 90`` (DS9 measures from the RA axis, theta_world is east of north). Rows
    with pixel shapes but no sky orientation become image-coordinate ellipses (1-based, as
    DS9 counts); rows with only ``ra``/``dec`` become 1-arcsec circles.
    """
    if "ra" not in df.columns and "x" not in df.columns:
        raise ValueError("regions need ra/dec or x/y columns (select them in the SQL)")
    body, current = [], None
    for row in df.to_dict("records"):
        label = _label(row)
        scale = _pixel_scale(row, pixel_scales)
        sky = _finite(row.get("ra"), row.get("dec"))
        shape = _finite(row.get("a"), row.get("b"))
        if sky and shape and scale and _finite(row.get("theta_world")):
            region, system = (f"ellipse({_fmt(row['ra'], 7)},{_fmt(row['dec'], 7)},"
                              f"{_fmt(ELLIPSE_SCALE * row['a'] * scale, 3)}\","
                              f"{_fmt(ELLIPSE_SCALE * row['b'] * scale, 3)}\","
                              f"{_fmt((row['theta_world'] + 90.0) % 180.0, 2)})"), "icrs"
        elif shape and _finite(row.get("x"), row.get("y"), row.get("theta")):
            region, system = (f"ellipse({_fmt(row['x'] + 1, 2)},{_fmt(row['y'] + 1, 2)},"
                              f"{_fmt(ELLIPSE_SCALE * row['a'], 2)},"
                              f"{_fmt(ELLIPSE_SCALE * row['b'], 2)},"
                              f"{_fmt(math.degrees(row['theta']) % 180.0, 2)})"), "image"
        elif sky:
            region, system = f"circle({_fmt(row['ra'], 7)},{_fmt(row['dec'], 7)},1\")", "icrs"
        else:
            continue
        if system != current:
            body.append(system)
            current = system
        body.append(f"{region} # text={{{label}}}" if label else region)
    n_regions = sum(1 for line in body if line not in ("icrs", "image"))
    if len(df) and not n_regions:
        raise ValueError(f"none of the {len(df)} rows has a finite position (ra and dec, or "
                         "x, y, a, b and theta): no region to write")
    skipped = len(df) - n_regions
    lines = ["# Region file format: DS9 version 4.1",
             f"# skysurvey export: {n_regions} regions from {len(df)} rows"
             + (f" ({skipped} without a position left out)" if skipped else "")
             + f", ellipses at {ELLIPSE_SCALE:g} x (a, b), about the Kron aperture",
             f"global color={color} width=1 font=\"helvetica 9 normal roman\"", *body]
    return "\n".join(lines) + "\n"


def _finite(*values) -> bool:
    try:
        return all(v is not None and math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _label(row: dict) -> str:
    parts = [str(row[k]) for k in ("image_id", "source_id", "object_id")
             if k in row and row[k] is not None and not (isinstance(row[k], float)
                                                         and math.isnan(row[k]))]
    # one line, no braces: a control character (a newline in an image id) would end the
    # region's line and start one of the text's choosing; escapes keep it visible instead
    return printable(":".join(parts)).replace("{", "(").replace("}", ")")


def _pixel_scale(row: dict, scales) -> float | None:
    if _finite(row.get("pixel_scale")):
        return float(row["pixel_scale"])
    if isinstance(scales, (int, float)):
        return float(scales)
    if isinstance(scales, Mapping) and _finite(scales.get(row.get("image_id"))):
        return float(scales[row.get("image_id")])
    return None


def _inside_catalog(path: Path, catalog: str | os.PathLike | None) -> bool:
    """Whether the local *path* is the local *catalog* folder or lies below it."""
    if not catalog or str(catalog).startswith("s3://"):
        return False
    root = Path(catalog).expanduser().resolve()
    target = path.expanduser().resolve()
    return target == root or root in target.parents


def check_output_file(path: str | os.PathLike, catalog: str | os.PathLike | None = None, *,
                      force: bool = False) -> Path:
    """*path* as a :class:`~pathlib.Path` when an export may write that file; else
    :class:`ExportError` naming it: a folder (never replaced by a file), a path inside the
    catalog the result was read from (a stray file there would join its tables), or an existing
    file without *force*.

    Parameters
    ----------
    path : str or os.PathLike
        The file an export would write.
    catalog : str or os.PathLike, optional
        The catalog the result was read from (a local folder); None: not checked.
    force : bool, optional
        Allow replacing an existing file.

    Returns
    -------
    Path
        *path*.

    Raises
    ------
    ExportError
        When the export may not write there.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(str(path), "is a folder: give a file name")
    if _inside_catalog(path, catalog):
        raise ExportError(str(path), f"lies inside the catalog {catalog}: an export never "
                                     "writes into the catalog it reads")
    if path.exists() and not force:
        raise ExportError(str(path), "already exists (use --force to replace it)")
    return path


def check_output_folder(path: str | os.PathLike, catalog: str | os.PathLike | None = None
                        ) -> Path:
    """*path* as a Path when an export may write files into that folder: not an existing
    file, and not the catalog nor inside it (:class:`ExportError` otherwise).

    Parameters
    ----------
    path : str or os.PathLike
        The folder an export would write into.
    catalog : str or os.PathLike, optional
        The catalog the result was read from; None: not checked.

    Returns
    -------
    Path
        *path*.

    Raises
    ------
    ExportError
        When the export may not write there.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExportError(str(path), "is an existing file, not a folder")
    if _inside_catalog(path, catalog):
        raise ExportError(str(path), f"lies inside the catalog {catalog}: an export never "
                                     "writes into the catalog it reads")
    return path


def atomic_write(path: Path, data: bytes, overwrite: bool = True) -> Path:
    """Write *data* to *path* through a temporary file renamed into place (never half-written,
    see :meth:`skysurvey.storage.LocalStore.write_bytes`); an existing file is kept, with
    :class:`ExportError`, unless *overwrite*."""
    if path.is_dir():
        raise ExportError(str(path), "is a folder: give a file name")
    if path.exists() and not overwrite:
        raise ExportError(str(path), "already exists (use --force to replace it)")
    LocalStore(path.parent).write_bytes(path.name, data)
    return path


def export_bytes(df: pd.DataFrame, fmt: str, *, pixel_scales=None) -> bytes:
    """*df* serialised in format *fmt* (a value of :data:`FORMATS`)."""
    writers = {"csv": _csv_bytes, "parquet": _parquet_bytes, "fits": _fits_bytes,
               "votable": _votable_bytes}
    if fmt == "ds9":
        return ds9_regions(df, pixel_scales).encode("utf-8")
    return writers[fmt](df)


def write_table(df: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = True,
                pixel_scales: Mapping[str, float] | float | None = None) -> Path:
    """Write *df* to *path* in the format its suffix names; returns the path.

    *pixel_scales* (arcsec/pixel by image id) sizes DS9 sky ellipses when *df* has no
    ``pixel_scale`` column. Raises :class:`ExportError` (unknown suffix, existing file without
    *overwrite*, nothing a region can be drawn from); nothing is half-written.

    Parameters
    ----------
    df : pandas.DataFrame
        The result to write (catalog columns get their units and descriptions).
    path : str or os.PathLike
        The output file; its suffix names the format.
    overwrite : bool, optional
        Replace an existing file.
    pixel_scales : mapping or float, optional
        Arcsec per pixel by image id (or one for all), for DS9 regions.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ExportError
        For an unknown suffix, an existing file without *overwrite*, or a region file with
        nothing to draw.
    """
    path = Path(path)
    fmt = export_format(path)
    try:
        data = export_bytes(df, fmt, pixel_scales=pixel_scales)
    except (ValueError, TypeError, pa.ArrowException) as exc:
        raise ExportError(str(path), f"cannot write {fmt}: {exc}") from None
    except Exception as exc:  # a column type the format's writer does not know: still one line
        raise ExportError(str(path), f"cannot write {fmt}: {type(exc).__name__}: {exc}") from None
    return atomic_write(path, data, overwrite)

