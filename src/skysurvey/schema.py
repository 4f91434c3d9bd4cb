"""The catalog contract: Arrow schemas, image ids and the Hive-style layout.

Every Parquet file the pipeline writes has exactly one of the two schemas below, whatever the
data (an empty catalog keeps the schema; no column's type is inferred). ``band`` and ``night``
are not columns of the files: they are the Hive partition keys of the layout
``<catalog>/sources/band=<band>/night=<YYYY-MM-DD>/<file stem>.parquet`` and appear as columns
when the dataset is read as a partitioned table (DuckDB ``hive_partitioning``, Athena). The file
stem is the image id, percent-encoded where a Parquet reader would otherwise skip the file
(:func:`catalog_file_stem`).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import unquote

import pyarrow as pa

__all__ = ["ASSOCIATIONS_SCHEMA", "FITS_SUFFIXES", "FORCED_PHOTOMETRY_SCHEMA", "ID_SEPARATOR",
           "IMAGES_SCHEMA", "OBJECTS_SCHEMA", "OBJECTS_STAGING", "OBJECT_PARTITION_ORDER",
           "OBJECT_PHOTOMETRY_SCHEMA", "OBJECT_TABLES", "RAW_IMAGES_PREFIX", "SOURCES_SCHEMA",
           "band_of_key", "catalog_file_stem", "catalog_keys", "empty_table", "forced_key",
           "image_id_from_file_stem", "image_id_from_name", "is_fits_name", "partition_value",
           "split_fits_name"]

#: Suffixes recognised as FITS files, longest first so ``.fits.fz`` wins over ``.fz``.
FITS_SUFFIXES: tuple[str, ...] = tuple(
    sorted(
        {
            base + comp
            for base in (".fits", ".fit", ".fts")
            for comp in ("", ".gz", ".bz2", ".fz")
        }
        | {".fz"},
        key=len,
        reverse=True,
    )
)

SOURCES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_id", pa.int32(), nullable=False),
        pa.field("x", pa.float64()),
        pa.field("y", pa.float64()),
        pa.field("ra", pa.float64()),
        pa.field("dec", pa.float64()),
        pa.field("flux", pa.float64()),
        pa.field("flux_err", pa.float64()),
        pa.field("flux_aper", pa.float64()),
        pa.field("flux_aper_err", pa.float64()),
        pa.field("mag", pa.float64()),
        pa.field("mag_err", pa.float64()),
        pa.field("flux_apcorr", pa.float64()),  # aperture flux corrected to total (stars)
        pa.field("flux_apcorr_err", pa.float64()),  # includes the correction's uncertainty
        pa.field("mag_apcorr", pa.float64()),  # from flux_apcorr: the magnitude for stars
        pa.field("mag_apcorr_err", pa.float64()),
        pa.field("class_star", pa.float64()),  # 0..1, 1 = point source
        pa.field("_healpix_29", pa.int64()),  # NESTED HEALPix index at order 29 (HATS)
        pa.field("snr", pa.float64()),
        pa.field("peak", pa.float64()),
        pa.field("background", pa.float64()),
        pa.field("a", pa.float64()),
        pa.field("b", pa.float64()),
        pa.field("theta", pa.float64()),
        pa.field("theta_world", pa.float64()),  # degrees east of north (null without WCS)
        pa.field("fwhm", pa.float64()),
        pa.field("ellipticity", pa.float64()),
        pa.field("npix", pa.int32()),
        pa.field("flags", pa.int32()),
        # PSF photometry (psfphot.py): total flux on flux_apcorr's scale, reduced chi² of the
        # fit, fitted position (0-based pixels)
        pa.field("flux_psf", pa.float64()),
        pa.field("flux_psf_err", pa.float64()),
        pa.field("mag_psf", pa.float64()),
        pa.field("mag_psf_err", pa.float64()),
        pa.field("psf_chi2", pa.float64()),
        pa.field("x_psf", pa.float64()),
        pa.field("y_psf", pa.float64()),
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_key", pa.string()),  # where the FITS came from (URI or path)
        pa.field("hdu", pa.int32()),  # index of the HDU measured
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("n_sources", pa.int32()),
        pa.field("bkg_median", pa.float64()),
        pa.field("bkg_rms", pa.float64()),
        pa.field("fwhm_median", pa.float64()),  # pixels
        pa.field("zero_point", pa.float64()),
        pa.field("zero_point_source", pa.string()),  # 'reference', the header keyword, or null
        pa.field("zero_point_err", pa.float64()),  # mag
        pa.field("zero_point_rms", pa.float64()),  # mag, scatter of the calibration stars
        pa.field("n_calib", pa.int32()),  # reference stars used for the zero point
        pa.field("astrom_offset_ra", pa.float64()),  # arcsec, median (ours - reference)*cos(dec)
        pa.field("astrom_offset_dec", pa.float64()),  # arcsec
        pa.field("astrom_rms", pa.float64()),  # arcsec
        pa.field("aperture_correction", pa.float64()),  # flux_apcorr / flux_aper (stars)
        pa.field("aperture_correction_err", pa.float64()),
        pa.field("fwhm_arcsec", pa.float64()),  # seeing
        pa.field("depth_5sigma", pa.float64()),  # 5-sigma point-source limiting magnitude
        pa.field("wcs_frame", pa.string()),  # the header's frame: icrs, fk5, fk4, galactic...
        pa.field("gain", pa.float64()),  # e-/ADU, null when unknown
        pa.field("saturate", pa.float64()),  # ADU, null when unknown
        pa.field("has_wcs", pa.bool_()),
        pa.field("ra_center", pa.float64()),
        pa.field("dec_center", pa.float64()),
        pa.field("pixel_scale", pa.float64()),  # arcsec / pixel, null without WCS
        pa.field("exptime", pa.float64()),
        pa.field("mjd", pa.float64()),
        pa.field("date_obs", pa.string()),  # as in the header (ISO 8601)
        pa.field("filter", pa.string()),  # the header's FILTER value
        pa.field("telescope", pa.string()),
        pa.field("aperture_radius", pa.float64()),  # pixels, for flux_aper
        pa.field("detect_thresh", pa.float64()),  # in units of the background RMS
        pa.field("masked_fraction", pa.float64()),  # NaN/Inf/bad pixels / all pixels
        pa.field("warnings", pa.string()),  # "; "-joined, null when none
        pa.field("seconds", pa.float64()),  # handler wall time for this image
        pa.field("processed_at", pa.timestamp("ms")),  # UTC
        pa.field("pipeline_version", pa.string()),
        # NESTED order-12 HEALPix cells touched by the valid pixels (forced.footprint_hpx12)
        pa.field("footprint_hpx12", pa.list_(pa.int64())),
        # the PSF model (psfmodel.py): stars used, RMS residual (fraction of the peak), FWHM
        # (pixels) at the centre and worst corner, worst ellipticity (1 - b/a)
        pa.field("psf_nstars", pa.int32()),
        pa.field("psf_resid_rms", pa.float64()),
        pa.field("psf_fwhm_center", pa.float64()),
        pa.field("psf_fwhm_corner_max", pa.float64()),
        pa.field("psf_ellipticity_max", pa.float64()),
    ]
)

# Survey tables written by scripts/build_objects.py (partitioned by a coarse HEALPix pixel,
# ``<catalog>/<table>/hpx5=<order-5 pixel>/k<order>-<pixel>.parquet``; see objects/).
OBJECTS_SCHEMA = pa.schema(
    [
        pa.field("object_id", pa.int64(), nullable=False),
        pa.field("ra", pa.float64()),  # ICRS, error-weighted mean
        pa.field("dec", pa.float64()),
        pa.field("ra_err", pa.float64()),  # arcsec (times cos dec)
        pa.field("dec_err", pa.float64()),  # arcsec
        pa.field("_healpix_29", pa.int64()),
        pa.field("n_detections", pa.int32()),
        pa.field("n_nights", pa.int32()),
        pa.field("first_mjd", pa.float64()),
        pa.field("last_mjd", pa.float64()),
        pa.field("variable", pa.bool_()),
        pa.field("transient_candidate", pa.bool_()),
        pa.field("pipeline_version", pa.string()),
    ]
)

OBJECT_PHOTOMETRY_SCHEMA = pa.schema(
    [
        pa.field("object_id", pa.int64(), nullable=False),
        pa.field("band", pa.string()),
        pa.field("n", pa.int32()),
        pa.field("mean_mag", pa.float64()),
        pa.field("mean_mag_err", pa.float64()),
        pa.field("scatter", pa.float64()),
        pa.field("chi2_reduced", pa.float64()),
    ]
)

ASSOCIATIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_id", pa.int32(), nullable=False),
        pa.field("object_id", pa.int64(), nullable=False),
        pa.field("separation_arcsec", pa.float64()),
    ]
)

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def split_fits_name(name: str) -> tuple[str, str] | None:
    """Return ``(stem, suffix)`` when *name* ends in a FITS suffix (case-insensitive), else None."""
    base = PurePosixPath(name).name
    lower = base.lower()
    for suffix in FITS_SUFFIXES:
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)], base[-len(suffix) :]
    return None


def is_fits_name(name: str) -> bool:
    """True when *name* looks like a FITS file we can read."""
    return split_fits_name(name) is not None


def image_id_from_name(key: str) -> str:
    """The image id of an input: its path below the input folder, FITS extensions removed.

    *key* is relative to the input folder (or to ``images/`` in the raw bucket); folders are
    joined with ``__``, so every image of a tree gets its own id. Two inputs can still map to
    one id (``x.fits`` beside ``x.fits.gz``, ``a__b/c.fits`` beside ``a/b__c.fits``): the
    runner refuses such pairs by name.

    Parameters
    ----------
    key : str
        The input's path relative to the input folder (``/`` separators).

    Returns
    -------
    str
        The image id.

    Examples
    --------
    >>> image_id_from_name("night1/sky_r_001.fits.fz")
    'night1__sky_r_001'
    """
    parts = [p for p in PurePosixPath(key).parts if p not in ("", ".", "/")]
    if not parts:
        return ""
    fits_parts = split_fits_name(parts[-1])
    parts[-1] = fits_parts[0] if fits_parts else parts[-1]
    return ID_SEPARATOR.join(parts)


#: Joins the folders of an input's relative path in its image id.
ID_SEPARATOR = "__"
#: Where the raw bucket keeps its images: ids of its objects are the path below it.
RAW_IMAGES_PREFIX = "images/"

# Characters percent-encoded in catalog file names: '%' itself (so the encoding can be undone),
# control characters anywhere, and a leading '_' or '.' (Parquet readers skip such files).
_ENCODE_ANYWHERE = re.compile(r"[%\x00-\x1f\x7f]")


def catalog_file_stem(image_id: str) -> str:
    """The file name (without ``.parquet``) of an image's catalog files.

    The id itself, except that ``%``, control characters and a leading ``_`` or ``.`` are
    percent-encoded (``_calib`` -> ``%5Fcalib``, ``.x`` -> ``%2Ex``, ``50%`` -> ``50%25``), so
    no catalog file is hidden from Parquet readers and :func:`image_id_from_file_stem` gives
    the id back (the encoding is injective). The table keeps the id unencoded.
    """
    stem = _ENCODE_ANYWHERE.sub(lambda m: f"%{ord(m.group()):02X}", image_id)
    if stem[:1] in ("_", "."):
        stem = f"%{ord(stem[0]):02X}{stem[1:]}"
    return stem


def image_id_from_file_stem(stem: str) -> str:
    """Undo :func:`catalog_file_stem`."""
    return unquote(stem)


def partition_value(value: str | None) -> str:
    """A Hive partition value: ``unknown`` when missing, unsafe characters replaced by ``_``."""
    if value is None or not str(value).strip():
        return "unknown"
    return _UNSAFE.sub("_", str(value).strip())


def catalog_keys(image_id: str, band: str | None, night: str | None) -> dict[str, str]:
    """Relative keys of the two Parquet files of one image, by table name."""
    b, n = partition_value(band), partition_value(night)
    return {
        table: f"{table}/band={b}/night={n}/{catalog_file_stem(image_id)}.parquet"
        for table in ("sources", "images")
    }


def band_of_key(key: str) -> str | None:
    """The ``band=`` partition value of a catalog key or URL (:func:`catalog_keys`), or None.

    Parameters
    ----------
    key : str
        A catalog file's key or URL (``.../band=r/night=.../x.parquet``).

    Returns
    -------
    str or None
        The band, or None when the key has no ``band=`` part.
    """
    for part in str(key).split("/"):
        if part.startswith("band="):
            return part.removeprefix("band=")
    return None


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table with no rows and exactly *schema*."""
    return schema.empty_table()


# Layout of the survey tables (scripts/build_objects.py; the objects package writes them, the
# deployment's policy names their folders).
#: The three tables, each ``<catalog>/<table>/hpx5=<pixel>/k<unit order>-<unit>.parquet``.
OBJECT_TABLES = ("objects", "object_photometry", "associations")
#: The order of the NESTED HEALPix pixel in their partition key ``hpx5=``.
OBJECT_PARTITION_ORDER = 5
#: A build stages its tables under ``<catalog>/<OBJECTS_STAGING>/<token>/<table>/...``.
OBJECTS_STAGING = ".objects-staging"


# Forced photometry (scripts/forced_photometry.py, forced_run.py): one row per object and image
# that covers it, Hive-partitioned like sources:
# ``<catalog>/forced_photometry/band=<band>/night=<night>/<file stem>.parquet``.
FORCED_PHOTOMETRY_SCHEMA = pa.schema(
    [
        pa.field("object_id", pa.int64(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("mjd", pa.float64()),
        pa.field("x", pa.float64()),  # pixel position measured (0-based)
        pa.field("y", pa.float64()),
        pa.field("flux", pa.float64()),  # aperture flux x aperture correction (total, stars)
        pa.field("flux_err", pa.float64()),
        pa.field("snr", pa.float64()),
        pa.field("mag", pa.float64()),  # null when flux <= 0 or without a zero point
        pa.field("mag_err", pa.float64()),
        pa.field("mag_limit", pa.float64()),  # 5-sigma point-source limit at this place
        pa.field("flags", pa.int32()),  # forced.FLAG_DESCRIPTIONS
        pa.field("pipeline_version", pa.string()),
    ]
)


def forced_key(image_id: str, band: str | None, night: str | None) -> str:
    """Relative key of an image's forced photometry file (same partitions as its sources)."""
    return (f"forced_photometry/band={partition_value(band)}/night={partition_value(night)}/"
            f"{catalog_file_stem(image_id)}.parquet")
