"""The named SQL queries, written once, run on DuckDB here (and on Athena through athena.py).

The SQL is plain ANSI that both DuckDB and Trino (Athena) accept; user values are bound as
``?`` parameters, never pasted into the text. In DuckDB every table of :data:`DATASETS` is an
Arrow dataset over the Hive-partitioned Parquet catalog with an explicit schema (so an empty
catalog keeps its column types, and ``band``/``night`` appear as columns); the names in
:data:`VIEWS` are views that keep only the rows of images with an ``images`` record, as on
Athena (a run killed between an image's two files leaves its sources invisible, not counted).

Every file's schema is checked when a table is opened: files of an older ``pipeline_version`` (the
columns of 0.1.0 present, newer ones missing) read their missing columns as null and are named once
in a warning; any other difference (an extra, renamed or missing older column, a changed type) is a
:class:`QueryError` naming the file and the difference. Custom SQL is one statement
(:func:`single_statement`). DuckDB's SQL can read any local file (``read_csv('/etc/passwd')``);
``safe=True`` turns that off after the catalog is registered, for catalogs and SQL shared with
others.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as pads

from .aws import s3_filesystem
from .config import is_s3_uri, parse_s3_uri
from .errors import QueryError, SkySurveyError
from .geometry import cone_ranges
from .lightcurves import MIN_VARIABLE_DOF, OBJECT_VARIABILITY_SCHEMA
from .schema import (
    ASSOCIATIONS_SCHEMA,
    FORCED_PHOTOMETRY_SCHEMA,
    IMAGES_SCHEMA,
    OBJECT_PHOTOMETRY_SCHEMA,
    OBJECTS_SCHEMA,
    SOURCES_SCHEMA,
)

__all__ = [
    "CONE_RANGES", "DATASETS", "EXAMPLE_WITH_LIMIT_SQL", "HPX_PARTITIONS", "IMAGES_SINCE_FIRST",
    "MAX_CONE_ARCSEC", "NAMED_QUERIES", "OBJECTS_VIEW_EXTRA", "OBJECT_TABLES", "PARTITIONS",
    "SOURCES_SINCE_FIRST", "VIEWS", "VIEW_KEYS", "Dataset", "NamedQuery", "check_cone",
    "check_schemas", "cone_parameters", "connect", "dataset", "get_named",
    "most_variable_light_curves", "objects_view_sql", "register_reference", "run_named",
    "run_query", "schema_difference", "single_statement", "view_sql", "why_empty",
]

log = logging.getLogger(__name__)

PARTITIONS = pa.schema([pa.field("band", pa.string()), pa.field("night", pa.string())])


@dataclass(frozen=True)
class Dataset:
    """One table's files: ``<catalog>/<folder>/``, their *schema* and Hive *partitioning*.

    *since_first* names the columns written since the first release (0.1.0): a file missing
    only some of them comes from an older ``pipeline_version`` and reads them as null. With
    ``required=False`` a missing folder is an empty table instead of an error.
    """

    folder: str
    schema: pa.Schema
    partitioning: pa.Schema = PARTITIONS
    since_first: frozenset[str] = field(default_factory=frozenset)
    required: bool = True

    @property
    def full_schema(self) -> pa.Schema:
        return pa.schema(list(self.schema) + list(self.partitioning))


#: Columns added after pipeline 0.1.0 (schema 0.2.0); later additions go here too.
SOURCES_SINCE_FIRST = frozenset({"flux_apcorr", "flux_apcorr_err", "mag_apcorr", "mag_apcorr_err",
                                 "class_star", "_healpix_29", "theta_world"})
IMAGES_SINCE_FIRST = frozenset({"zero_point_err", "zero_point_rms", "n_calib", "astrom_offset_ra",
                                "astrom_offset_dec", "astrom_rms", "aperture_correction",
                                "aperture_correction_err", "fwhm_arcsec", "depth_5sigma",
                                "wcs_frame", "footprint_hpx12"})

#: The tables DuckDB registers, by SQL name. Append new ones here (``objects``...); a table
#: that must hide rows of images without a record is registered as ``<name>_data`` and named
#: in :data:`VIEWS`, as on Athena (athena.TABLES / athena.VIEWS).
#: objects, object_photometry, associations (scripts/build_objects.py): partitioned by hpx5
HPX_PARTITIONS = pa.schema([pa.field("hpx5", pa.int32())])
DATASETS: dict[str, Dataset] = {
    "sources_data": Dataset("sources", SOURCES_SCHEMA, since_first=SOURCES_SINCE_FIRST),
    "images": Dataset("images", IMAGES_SCHEMA, since_first=IMAGES_SINCE_FIRST),
    "objects_data": Dataset("objects", OBJECTS_SCHEMA, HPX_PARTITIONS, required=False),
    "object_photometry": Dataset("object_photometry", OBJECT_PHOTOMETRY_SCHEMA, HPX_PARTITIONS,
                                 required=False),
    "associations_data": Dataset("associations", ASSOCIATIONS_SCHEMA, HPX_PARTITIONS,
                                 required=False),
    # scripts/forced_photometry.py: partitioned by band and night like sources
    "forced_photometry": Dataset("forced_photometry", FORCED_PHOTOMETRY_SCHEMA, required=False),
    # forced_run.summarize_forced: per object, from the whole forced table; partitioned by hpx5
    "object_variability": Dataset("object_variability", OBJECT_VARIABILITY_SCHEMA,
                                  HPX_PARTITIONS, required=False),
}
#: SQL views over a registered table: ``sources`` and ``associations`` keep only rows whose
#: ``image_id`` has an ``images`` record; ``objects`` joins ``object_variability``
#: (:func:`objects_view_sql`).
VIEWS: dict[str, str] = {"sources": "sources_data", "associations": "associations_data",
                         "objects": "objects_data"}


@dataclass(frozen=True)
class NamedQuery:
    description: str
    sql: str
    params: tuple = ()
    prepare: Callable[[tuple], tuple] | None = None  # user values -> bound values

    def bind(self, params=None) -> list:
        """The values bound to the ``?`` of :attr:`sql` (the defaults when *params* is None)."""
        values = tuple(self.params if params is None else params)
        return list(self.prepare(values) if self.prepare else values)


NAMED_QUERIES: dict[str, NamedQuery] = {
    "total_sources": NamedQuery(
        "How many sources, images and bands the catalog holds (images counted from their "
        "records, so an image without any source counts too)",
        "SELECT (SELECT count(*) FROM sources) AS total_sources, count(*) AS total_images, "
        "count(DISTINCT band) AS bands FROM images",
    ),
    "source_statistics": NamedQuery(
        "Per band: sources, magnitudes, SNR and FWHM (sources with SNR >= ?)",
        "SELECT band, count(*) AS n_sources, avg(mag) AS mean_mag, min(mag) AS brightest_mag, "
        "max(mag) AS faintest_mag, avg(snr) AS mean_snr, avg(fwhm) AS mean_fwhm_px "
        "FROM sources WHERE snr >= ? GROUP BY band ORDER BY band",
        (5.0,),
    ),
    "bright_sources": NamedQuery(
        "The 20 brightest sources with SNR >= ?",
        "SELECT image_id, band, source_id, ra, dec, mag, mag_err, snr FROM sources "
        "WHERE mag IS NOT NULL AND snr >= ? ORDER BY mag ASC, image_id, source_id LIMIT 20",
        (10.0,),
    ),
    "snr_distribution": NamedQuery(
        "Number of sources per SNR bin (sources with flux > 0: a negative flux, flagged, "
        "has no meaningful SNR)",
        "SELECT CASE WHEN snr < 5 THEN '0-5' WHEN snr < 10 THEN '5-10' "
        "WHEN snr < 20 THEN '10-20' WHEN snr < 50 THEN '20-50' WHEN snr < 100 THEN '50-100' "
        "ELSE '100+' END AS snr_bin, count(*) AS n_sources, min(snr) AS min_snr "
        "FROM sources WHERE snr IS NOT NULL AND flux > 0 GROUP BY 1 ORDER BY min(snr)",
    ),
}

# Survey tables (scripts/build_objects.py): objects, object_photometry, associations.
_ARCSEC_PER_RADIAN = "206264.80624709636"


def _distance_sql(ra1: str, dec1: str, ra2: str, dec2: str) -> str:
    """Exact angular distance in arcsec (haversine), in SQL both DuckDB and Trino accept."""
    return (f"2 * {_ARCSEC_PER_RADIAN} * asin(sqrt(power(sin(radians({dec2} - {dec1}) / 2), 2)"
            f" + cos(radians({dec1})) * cos(radians({dec2}))"
            f" * power(sin(radians({ra2} - {ra1}) / 2), 2)))")


def _coverage_parameters(params: tuple) -> tuple:
    """``(ra, dec)`` -> the order-12 cell bound to the ``coverage`` query."""
    from .forced import position_cell

    if len(params) != 2:
        raise QueryError("coverage", f"expected 2 parameters (ra, dec), got {len(params)}")
    try:
        return (position_cell(*params),)
    except (TypeError, ValueError) as exc:
        raise QueryError("coverage", str(exc)) from None


#: The largest cone radius (arcsec) the named query accepts: 1 degree. Larger cones span more
#: order-5 partitions than the query binds; a catalog-wide search is plain SQL (--sql).
MAX_CONE_ARCSEC = 3600.0
#: bits between an order-29 HEALPix index and its order-5 partition (hpx5)
_HPX5_SHIFT = 2 * (29 - 5)


def check_cone(params) -> tuple[float, float, float]:
    """``(ra, dec, radius_arcsec)`` as floats, or a one-line :class:`QueryError`: three
    numbers, RA finite, Dec within [-90, 90], radius in (0, :data:`MAX_CONE_ARCSEC`]."""
    values = tuple(params)
    if len(values) != 3:
        raise QueryError("cone", f"expects 3 parameters (ra, dec, radius_arcsec), got "
                                 f"{len(values)}")
    try:
        ra, dec, radius = (float(v) for v in values)
    except (TypeError, ValueError):
        raise QueryError("cone", f"parameters must be numbers (ra, dec, radius_arcsec), got "
                                 f"{', '.join(repr(v) for v in values)}") from None
    if not math.isfinite(ra):
        raise QueryError("cone", f"ra {ra} is not a finite number of degrees")
    if not -90.0 <= dec <= 90.0:  # NaN fails too
        raise QueryError("cone", f"dec {dec} is outside [-90, 90] degrees")
    if not 0.0 < radius <= MAX_CONE_ARCSEC:
        raise QueryError("cone", f"radius {radius} arcsec must be > 0 and at most "
                                 f"{MAX_CONE_ARCSEC:g} (a wider search: --sql over objects)")
    return ra % 360.0, dec, radius


def _match_radius(params) -> float:
    """The one parameter of ``crossmatch_reference``: a radius in (0, 3600] arcsec."""
    values = tuple(params)
    if len(values) != 1:
        raise QueryError("crossmatch_reference", f"expects 1 parameter (radius_arcsec), got "
                                                 f"{len(values)}")
    try:
        radius = float(values[0])
    except (TypeError, ValueError):
        raise QueryError("crossmatch_reference",
                         f"radius_arcsec must be a number, got {values[0]!r}") from None
    if not 0.0 < radius <= MAX_CONE_ARCSEC:
        raise QueryError("crossmatch_reference", f"radius {radius} arcsec must be > 0 and at "
                                                 f"most {MAX_CONE_ARCSEC:g}")
    return radius


def _check_cone_cover(bound: tuple) -> tuple:
    """*bound* (the cone's bound values) when its 4 partitions hold every ``_healpix_29``
    range it searches; a range spanning a partition the query does not read would lose rows
    silently, so that is a :class:`QueryError` instead."""
    parts, ranges = set(bound[3:7]), bound[7:]
    for lo, hi in zip(ranges[::2], ranges[1::2], strict=True):
        if (hi >> _HPX5_SHIFT) - (lo >> _HPX5_SHIFT) >= 4 or not set(
                range(lo >> _HPX5_SHIFT, (hi >> _HPX5_SHIFT) + 1)) <= parts:
            raise QueryError("cone", f"radius {bound[2]} arcsec spans more order-5 partitions "
                                     "than the cone query reads: use a smaller radius")
    return bound


def _cone_parameters(params: tuple) -> tuple:
    return _check_cone_cover(cone_parameters(check_cone(params)))


NAMED_QUERIES.update({
    "cone": NamedQuery(
        "Objects within radius_arcsec of (ra, dec): parameters ra, dec, radius_arcsec; pruned "
        "by order-5 partition and _healpix_29 ranges (computed in Python), then exact distance",
        "WITH cone AS (SELECT CAST(? AS DOUBLE) AS ra0, CAST(? AS DOUBLE) AS dec0, "
        "CAST(? AS DOUBLE) AS radius), "
        "near AS (SELECT o.object_id, o.ra, o.dec, o.n_detections, o.n_nights, o.variable, "
        "o.transient_candidate, c.radius, " + _distance_sql("c.ra0", "c.dec0", "o.ra", "o.dec")
        + " AS distance_arcsec FROM objects o CROSS JOIN cone c "
        "WHERE o.hpx5 IN (?, ?, ?, ?) AND ("
        + " OR ".join(["o._healpix_29 BETWEEN ? AND ?"] * 8) + ")) "
        "SELECT object_id, ra, dec, distance_arcsec, n_detections, n_nights, variable, "
        "transient_candidate FROM near WHERE distance_arcsec <= radius "
        "ORDER BY distance_arcsec, object_id",
        (150.1, 2.2, 60.0), _cone_parameters,
    ),
    "light_curve": NamedQuery(
        "Light curve of object_id ? (-1: the variable object with most detections): one row "
        "per covering image (forced photometry, scripts/forced_photometry.py) and per "
        "detection without one; mag is the detection's calibrated magnitude (mag_apcorr when "
        "measured, else mag; null when not detected), forced_* the forced measurement, "
        "is_detection and is_upper_limit (not detected and forced SNR < 3: mag_limit bounds it)",
        "WITH target AS (SELECT COALESCE(NULLIF(CAST(? AS BIGINT), -1), (SELECT object_id FROM "
        "objects ORDER BY variable DESC, n_detections DESC, object_id LIMIT 1)) AS object_id), "
        "det AS (SELECT a.object_id, a.image_id, a.source_id, a.separation_arcsec, s.band, "
        "COALESCE(s.mag_apcorr, s.mag) AS mag, "
        "CASE WHEN s.mag_apcorr IS NOT NULL THEN s.mag_apcorr_err ELSE s.mag_err END AS mag_err, "
        "s.flags FROM associations a JOIN target t ON a.object_id = t.object_id "
        "JOIN sources s ON s.image_id = a.image_id AND s.source_id = a.source_id), "
        "fp AS (SELECT f.* FROM forced_photometry f JOIN target t ON f.object_id = t.object_id "
        "WHERE EXISTS (SELECT 1 FROM images i WHERE i.image_id = f.image_id)) "
        "SELECT fp.object_id, fp.mjd, fp.band, fp.image_id, d.source_id, d.mag, d.mag_err, "
        "d.flags, d.separation_arcsec, fp.flux AS forced_flux, fp.flux_err AS forced_flux_err, "
        "fp.snr AS forced_snr, fp.mag AS forced_mag, fp.mag_err AS forced_mag_err, "
        "fp.mag_limit, fp.flags AS forced_flags, d.source_id IS NOT NULL AS is_detection, "
        "(d.source_id IS NULL AND (fp.snr IS NULL OR fp.snr < 3)) AS is_upper_limit "
        "FROM fp LEFT JOIN det d ON d.image_id = fp.image_id "
        "UNION ALL "
        "SELECT d.object_id, i.mjd, d.band, d.image_id, d.source_id, d.mag, d.mag_err, d.flags, "
        "d.separation_arcsec, CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), "
        "CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS INTEGER), "
        "true, false FROM det d JOIN images i ON i.image_id = d.image_id "
        "WHERE NOT EXISTS (SELECT 1 FROM fp WHERE fp.image_id = d.image_id) "
        "ORDER BY mjd, band, image_id",
        (-1,),
    ),
    "coverage": NamedQuery(
        "Images whose footprint (images.footprint_hpx12, order-12 HEALPix cells of their valid "
        "pixels) holds the position: parameters ra, dec (degrees)",
        # CROSS JOIN UNNEST: Trino's form, and DuckDB's from 1.0 (whose contains() takes no
        # list); footprint cells are unique, so an image comes out once
        "SELECT i.image_id, i.band, i.night, i.mjd, i.depth_5sigma FROM images i "
        "CROSS JOIN UNNEST(i.footprint_hpx12) AS t(cell) WHERE t.cell = CAST(? AS BIGINT) "
        "ORDER BY i.mjd, i.band, i.image_id",
        (150.1, 2.2), lambda params: _coverage_parameters(params),
    ),
    "variables": NamedQuery(
        "Objects flagged variable, most significant first: with forced photometry "
        "(scripts/forced_photometry.py) the chi-square of the forced fluxes against a constant "
        "(variability_sigma, forced_chi2_reduced over forced_dof, per-image calibration and a 1% "
        "floor taken out; blended objects included), else the detections' chi2 test; one row "
        "per band of the detections' photometry; transient candidates (variable too) last",
        "SELECT o.object_id, o.ra, o.dec, o.n_detections, o.n_nights, o.n_covering, "
        "o.forced_dof, o.forced_chi2_reduced, o.variability_sigma, o.transient_candidate, "
        "p.band, p.n, p.mean_mag, p.scatter, p.chi2_reduced FROM objects o "
        "LEFT JOIN object_photometry p ON p.object_id = o.object_id WHERE o.variable = true "
        "ORDER BY o.transient_candidate, o.variability_sigma DESC NULLS LAST, "
        "p.chi2_reduced DESC NULLS LAST, o.object_id, p.band LIMIT 100",
    ),
    "transients": NamedQuery(
        "Transient candidates detected at least ? times: detected with forced SNR >= 5 "
        "(max_detected_snr, at detected_mag) while n_deep_quiet covering images reaching 0.5 "
        "mag fainter show no flux (forced SNR < 3). Needs forced photometry "
        "(scripts/forced_photometry.py): without it no object is a candidate",
        "SELECT object_id, ra, dec, n_detections, n_nights, first_mjd, last_mjd, n_covering, "
        "n_forced_nondetections, n_deep_quiet, max_detected_snr, detected_mag FROM objects "
        "WHERE transient_candidate = true AND n_detections >= ? ORDER BY first_mjd, object_id",
        (2,),
    ),
    "crossmatch_reference": NamedQuery(
        "Objects matched to the `reference` table within ? arcsec, nearest first (DuckDB: the "
        "REFERENCE_CATALOG Parquet; Athena: a `reference` table, see the README)",
        "WITH r AS (SELECT CAST(? AS DOUBLE) AS radius), pairs AS (SELECT o.object_id, o.ra, "
        "o.dec, f.ra AS ref_ra, f.dec AS ref_dec, r.radius, "
        + _distance_sql("o.ra", "o.dec", "f.ra", "f.dec") + " AS distance_arcsec "
        "FROM objects o CROSS JOIN r JOIN reference f "
        "ON f.dec BETWEEN o.dec - r.radius / 3600 AND o.dec + r.radius / 3600) "
        "SELECT object_id, ra, dec, ref_ra, ref_dec, distance_arcsec FROM pairs "
        "WHERE distance_arcsec <= radius ORDER BY object_id, distance_arcsec LIMIT 1000",
        (1.0,), lambda params: (_match_radius(params),),
    ),
})


def _spec(table: str) -> Dataset:
    """The dataset behind an SQL name or folder (``sources`` is the folder of ``sources_data``)."""
    if table in DATASETS:
        return DATASETS[table]
    if table in VIEWS:
        return DATASETS[VIEWS[table]]
    raise QueryError(table, f"no such table (known: {', '.join([*DATASETS, *VIEWS])})")


def dataset(catalog_uri: str, table: str, *, check: bool = True) -> pads.Dataset:
    """The Arrow dataset of one table (``sources``, ``images``...) of a catalog; with *check*,
    every file's schema is compared with the table's (:func:`check_schemas`).

    Parameters
    ----------
    catalog_uri, table : str
    check : bool, optional

    Returns
    -------
    pyarrow.dataset.Dataset
    """
    spec = _spec(table)
    partitioning = pads.partitioning(spec.partitioning, flavor="hive")
    try:
        if is_s3_uri(catalog_uri):
            loc = parse_s3_uri(catalog_uri)
            path = f"{loc.bucket}/{loc.prefix}{spec.folder}"
            data = pads.dataset(path, filesystem=s3_filesystem(), format="parquet",
                                partitioning=partitioning, schema=spec.full_schema)
        else:
            data = pads.dataset(os.path.join(os.path.expanduser(catalog_uri), spec.folder),
                                format="parquet", partitioning=partitioning,
                                schema=spec.full_schema)
    except (FileNotFoundError, OSError) as exc:
        if _network_error(exc):  # not "no catalog": S3 was never reached
            raise QueryError(str(catalog_uri), f"cannot reach S3, network or TLS error ({exc}): "
                             "check the connection, AWS_ENDPOINT_URL and any proxy or "
                             "certificate settings") from None
        if not spec.required:
            return pads.dataset(spec.full_schema.empty_table())
        raise QueryError(str(catalog_uri),
                         f"no catalog here ({exc}): run scripts/invoke_lambda.py first") from None
    if not data.files:
        if not spec.required:
            return pads.dataset(spec.full_schema.empty_table())
        raise QueryError(str(catalog_uri), "no catalog here: run scripts/invoke_lambda.py first")
    if check:
        for note in check_schemas(data, spec):
            _warn_once(note)
    return data


#: What pyarrow's S3 filesystem (curl) says when the request never got an answer.
_NETWORK_MARKERS = ("NETWORK_CONNECTION", "curlCode", "SSL", "TLS", "timed out",
                    "Could not resolve", "Connection refused")


def _network_error(exc: OSError) -> bool:
    """True for a connection, DNS or TLS failure (as opposed to a missing bucket or prefix)."""
    return not isinstance(exc, FileNotFoundError) and any(m in str(exc)
                                                           for m in _NETWORK_MARKERS)


def schema_difference(found: pa.Schema, spec: Dataset) -> tuple[list[str], list[str]]:
    """``(problems, missing new columns)`` of one file's schema against the table's."""
    problems, missing_new = [], []
    if found.equals(spec.schema):  # the common case, fast
        return problems, missing_new
    expected = {f.name: f.type for f in spec.schema}
    for f in found:
        if f.name not in expected:
            problems.append(f"unexpected column {f.name} ({f.type})")
        elif not f.type.equals(expected[f.name]):
            problems.append(f"column {f.name} is {f.type}, expected {expected[f.name]}")
    present = set(found.names)
    for name in expected:
        if name not in present:
            if name in spec.since_first:
                missing_new.append(name)
            else:
                problems.append(f"missing column {name}")
    return problems, missing_new


def check_schemas(data: pads.Dataset, spec: Dataset) -> list[str]:
    """Warnings for files of an older ``pipeline_version``; QueryError for any other drift.
    Reads every file's footer, in threads (on S3 each is a request), once per process: a file
    found good is remembered by path (and, locally, modification time and size)."""
    from pyarrow import fs

    local = isinstance(data.filesystem, fs.LocalFileSystem)
    fragments = list(data.get_fragments())
    keys = [_file_key(frag.path, local) for frag in fragments]
    todo = [(frag, key) for frag, key in zip(fragments, keys, strict=True)
            if (spec.folder, key) not in _CHECKED]
    with ThreadPoolExecutor(max_workers=16) as pool:
        schemas = list(pool.map(lambda item: _physical_schema(item[0]), todo))
    for (fragment, key), found in zip(todo, schemas, strict=True):
        problems, missing_new = schema_difference(found, spec)
        if problems:
            raise QueryError(fragment.path, f"schema differs from {spec.folder}: "
                                            + "; ".join(problems))
        _CHECKED[(spec.folder, key)] = tuple(missing_new)
    older: dict[tuple[str, ...], list[str]] = {}
    for fragment, key in zip(fragments, keys, strict=True):
        if missing := _CHECKED[(spec.folder, key)]:
            older.setdefault(missing, []).append(fragment.path)
    notes = []
    for missing, paths in older.items():
        files = (f"{len(paths)} {spec.folder} files (first {paths[0]})" if len(paths) > 1
                 else f"{spec.folder} file {paths[0]}")
        notes.append(f"{files} from an older pipeline_version: {len(missing)} newer columns "
                     f"read as null ({', '.join(missing)})")
    return notes


def _physical_schema(fragment) -> pa.Schema:
    """The schema in one file's footer; an empty, truncated or non-Parquet file is one line
    naming it (not pyarrow's traceback)."""
    try:
        return fragment.physical_schema
    except (pa.ArrowException, OSError) as exc:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QueryError(fragment.path, f"unreadable Parquet file ({cause}): re-process its "
                                        "image or delete it (scripts/invoke_lambda.py --repair "
                                        "lists every such file)") from None


#: (table folder, file key) -> the newer columns that file lacks (empty: the current schema)
_CHECKED: dict[tuple, tuple[str, ...]] = {}


def _file_key(path: str, local: bool) -> tuple:
    if local:
        try:
            info = os.stat(path)
            return path, info.st_mtime_ns, info.st_size
        except OSError:
            pass
    return (path,)


_WARNED: set[str] = set()


def _warn_once(note: str) -> None:
    """Log *note* once per process (a script running four queries names old files once)."""
    if note not in _WARNED:
        _WARNED.add(note)
        log.warning("%s", note)


#: The columns that tie a view's rows to their image record. ``sources`` matches band and
#: night too: while a re-processed image moves to another partition, its earlier sources stop
#: counting as soon as the earlier image record is deleted (one DELETE), not at the last one.
VIEW_KEYS: dict[str, tuple[str, ...]] = {"sources": ("image_id", "band", "night"),
                                         "associations": ("image_id",)}


#: The ``object_variability`` columns the ``objects`` view adds (after the objects' own).
OBJECTS_VIEW_EXTRA = ("n_covering", "n_forced_nondetections", "forced_chi2", "forced_dof",
                      "forced_chi2_reduced", "variability_sigma", "max_detected_snr",
                      "detected_mag", "n_deep_quiet")


def objects_view_sql(table: str, variability: str) -> str:
    """The SELECT behind the ``objects`` view (DuckDB and Athena alike): the objects table
    with the forced-photometry summary joined (scripts/forced_photometry.py).

    ``variable`` is the forced chi-square's verdict when the object's summary has at least
    2 degrees of freedom (3 trusted forced points in a band), else the detections'
    (build_objects.py): an object no image covered keeps the build's flag.
    ``transient_candidate`` is the forced rule's verdict, and false without a summary row:
    seen on one night only is not evidence (93% of such objects were not transients), only
    a deep covering image that shows no flux is.
    """
    own = [f.name for f in OBJECTS_SCHEMA]
    cols = []
    for name in own:
        if name == "variable":
            cols.append(f"CASE WHEN v.forced_dof >= {int(MIN_VARIABLE_DOF)} THEN v.variable "
                        "ELSE o.variable END AS variable")
        elif name == "transient_candidate":
            cols.append("COALESCE(v.transient_candidate, false) AS transient_candidate")
        else:
            cols.append(f"o.{name}")
    cols.append("o.hpx5")
    cols += [f"v.{name}" for name in OBJECTS_VIEW_EXTRA]
    return (f"SELECT {', '.join(cols)} FROM {table} o LEFT JOIN {variability} v "
            "ON v.object_id = o.object_id AND v.hpx5 = o.hpx5")


def view_sql(view: str, table: str, images: str, variability: str = "object_variability"
             ) -> str:
    """The SELECT behind *view* (DuckDB and Athena alike): the rows of *table* whose image has
    a record in *images* (``objects``: :func:`objects_view_sql` with *variability*)."""
    if view == "objects":
        return objects_view_sql(table, variability)
    match = " AND ".join(f"i.{k} = t.{k}" for k in VIEW_KEYS[view])
    return f"SELECT t.* FROM {table} t WHERE EXISTS (SELECT 1 FROM {images} i WHERE {match})"


def connect(catalog_uri: str, *, safe: bool = False):
    """A DuckDB connection with every table of :data:`DATASETS` and the :data:`VIEWS`; with
    *safe*, DuckDB's access to files and the network is switched off once the catalog is
    registered, and the setting is locked: SQL can then read only these tables."""
    import duckdb

    con = duckdb.connect()
    for name in DATASETS:
        con.register(name, dataset(catalog_uri, name))
    for view, table in VIEWS.items():
        con.execute(f"CREATE VIEW {view} AS {view_sql(view, table, 'images')}")
    register_reference(con)  # the REFERENCE_CATALOG Parquet as `reference` (else empty)
    if safe:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def single_statement(sql: str, engine: str = "duckdb") -> str:
    """*sql* when it is one statement, else a QueryError (a second one after ``;`` never runs).

    Parameters
    ----------
    sql : str
    engine : {"duckdb", "athena"}, optional
        Whose parser decides (Athena: sqlglot's Trino dialect; what it cannot parse, Athena).

    Returns
    -------
    str
    """
    if engine == "athena":
        import sqlglot

        try:
            count = sum(e is not None for e in sqlglot.parse(sql, read="trino"))
        except sqlglot.errors.SqlglotError:
            return sql
    else:
        import duckdb

        try:
            count = len(duckdb.extract_statements(sql))
        except duckdb.Error as exc:
            raise QueryError("sql", str(exc).splitlines()[0]) from None
    if count != 1:
        raise QueryError("sql", f"expected exactly one SQL statement, got {count}"
                                + (" (separated by ';')" if count > 1 else ""))
    return sql


def run_query(sql: str, catalog_uri: str, params=None, *, safe: bool = False, con=None):
    """Run one SQL statement with bound *params* on DuckDB over the catalog.

    Parameters
    ----------
    sql, catalog_uri : str
    params : sequence, optional
    safe : bool, optional
    con : duckdb.DuckDBPyConnection, optional
        A connection from :func:`connect` to reuse (the caller closes it); None: a new one.

    Returns
    -------
    pandas.DataFrame
    """
    import duckdb

    single_statement(sql)
    own = con is None
    if own:
        con = connect(catalog_uri, safe=safe)
    try:
        return con.execute(sql, list(params or [])).fetch_df()
    except duckdb.Error as exc:
        raise QueryError("sql", str(exc).splitlines()[0]) from None
    finally:
        if own:
            con.close()


def get_named(name: str) -> NamedQuery:
    """The named query *name* (a QueryError listing the known ones for another name).

    Parameters
    ----------
    name : str

    Returns
    -------
    NamedQuery
    """
    if name not in NAMED_QUERIES:
        raise QueryError(name, f"no such query (known: {', '.join(NAMED_QUERIES)})")
    return NAMED_QUERIES[name]


def run_named(name: str, catalog_uri: str, params=None, *, con=None):
    """:func:`run_query` of the named query *name* (its defaults when *params* is None).

    Parameters
    ----------
    name, catalog_uri : str
    params : sequence, optional
    con : duckdb.DuckDBPyConnection, optional

    Returns
    -------
    pandas.DataFrame
    """
    query = get_named(name)
    return run_query(query.sql, catalog_uri, query.bind(params), con=con)


# ---------------------------------------------------------------------------------------
# The survey tables' helpers: the `reference` table, the cone's bound values, light curves

#: the cone query binds this many _healpix_29 ranges (unused ones repeat the last)
CONE_RANGES = 8


def register_reference(con) -> bool:
    """Register the table ``reference`` in a DuckDB connection.

    The REFERENCE_CATALOG setting read by :mod:`skysurvey.reference` (local or ``s3://`` Parquet,
    CSV, FITS, VOTable or HATS; its position columns as ``ra``/``dec``), else an empty (ra, dec)
    table. A setting that cannot be read is a warning naming it, never a silent empty table.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection

    Returns
    -------
    bool
        True when the table holds the reference catalog.
    """
    from .config import get_setting
    from .reference import open_reference

    uri = get_setting("REFERENCE_CATALOG")
    table = pa.table({"ra": pa.array([], pa.float64()), "dec": pa.array([], pa.float64())})
    found = False
    if uri:
        try:
            ref = open_reference(uri)
            table, found = ref.as_table(), True
        except SkySurveyError as exc:
            log.warning("table `reference` is empty: %s", exc)
    con.register("reference", table)
    return found


def cone_parameters(params) -> tuple:
    """The cone query's bound values (a QueryError when it spans over 4 order-5 pixels).

    Parameters
    ----------
    params : sequence
        ``(ra, dec, radius_arcsec)``, degrees and arcsec.

    Returns
    -------
    tuple
        The three, the order-5 partitions (4, the last repeated), then :data:`CONE_RANGES` pairs
        of ``_healpix_29`` bounds (:func:`skysurvey.geometry.cone_ranges`, the last repeated).
    """
    ra, dec, radius = (float(v) for v in params)
    ranges = cone_ranges(ra, dec, radius, CONE_RANGES)
    parts = sorted({lo >> 48 for lo, _ in ranges} | {hi >> 48 for _, hi in ranges})
    if len(parts) > 4:
        raise QueryError("cone", f"radius {radius} arcsec spans more than 4 order-5 pixels")
    parts += [parts[-1]] * (4 - len(parts))
    ranges += [ranges[-1]] * (CONE_RANGES - len(ranges))
    return (ra, dec, radius, *parts, *(v for r in ranges for v in r))


#: Without variables, the example light curve: the object with most detections among those
#: with an upper limit (an epoch not detected, forced SNR < 3), so it shows both kinds.
EXAMPLE_WITH_LIMIT_SQL = (
    "SELECT o.object_id FROM objects o WHERE o.n_detections >= 2 AND o.object_id IN ("
    "SELECT f.object_id FROM forced_photometry f LEFT JOIN associations a ON a.object_id = "
    "f.object_id AND a.image_id = f.image_id WHERE f.snr < 3 AND a.object_id IS NULL) "
    "ORDER BY o.n_detections DESC, o.object_id LIMIT 1")


def most_variable_light_curves(catalog: str, n: int = 4):
    """The ``light_curve`` rows of the *n* most significant variables (``variables`` order);
    without variables, of one object with detections and an upper limit
    (:data:`EXAMPLE_WITH_LIMIT_SQL`, one scan of the forced table, here only), else of the
    object with the most detections.

    Parameters
    ----------
    catalog : str
        The catalog: a local folder or an ``s3://`` URI.
    n : int, optional
        How many variables.

    Returns
    -------
    pandas.DataFrame
        Their light curves, one row per covering epoch (empty, with the columns, when none).
    """
    import pandas as pd

    variables = run_named("variables", catalog)
    ids = list(dict.fromkeys(variables["object_id"]))[:n]
    if not ids:
        ids = list(run_query(EXAMPLE_WITH_LIMIT_SQL, catalog)["object_id"]) or [-1]  # -1:
        # light_curve's own choice (most detections), so a figure has a curve when objects do
    return pd.concat([run_named("light_curve", catalog, (int(i),)) for i in ids],
                     ignore_index=True)


#: Tables that a later workflow step writes: empty means "not run yet", not "no match".
OBJECT_TABLES = ("objects", "object_photometry", "associations")


def why_empty(sql: str, catalog_uri: str) -> str:
    """One line saying why *sql* returned no rows on DuckDB: a step not run yet (the objects
    tables of ``build_objects.py``), no reference catalog for ``reference``, or no match.

    Parameters
    ----------
    sql, catalog_uri : str

    Returns
    -------
    str
    """
    import duckdb

    from .config import get_setting

    try:
        # the parser refuses prepared parameters; only the table names matter here
        names = {n.lower() for n in duckdb.get_table_names(sql.replace("?", "NULL"))}
    except duckdb.Error:
        names = set()
    try:
        unbuilt = [t for t in OBJECT_TABLES if t in names
                   and dataset(catalog_uri, t, check=False).count_rows() == 0]
    except QueryError:
        unbuilt = []
    if unbuilt:
        return (f"the catalog has no {unbuilt[0]} table yet: run the objects step, "
                "scripts/build_objects.py (after scripts/invoke_lambda.py)")
    if "reference" in names and not get_setting("REFERENCE_CATALOG"):
        return ("no reference catalog: the `reference` table is empty. Pass one with "
                "REFERENCE_CATALOG=<Parquet, CSV, FITS, VOTable or HATS, local or s3://> "
                "(the sample's is data/sample/reference.parquet)")
    return "nothing in the catalog matches this query"
