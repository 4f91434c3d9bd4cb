"""One image, start to finish: fetch the FITS, measure it, write its two Parquet files.

This is the single implementation behind the Lambda handler, the local process pool and the
notebook. It never raises for a bad image: the reply says ``status: "error"`` with the one-line
cause, and nothing is written for that image. Only transient AWS errors (throttling, 5xx that
outlived botocore's retries: :class:`TransientStorageError`) propagate when ``raise_transient``
is set, so Lambda can retry. Every reply, here and in the runners, comes from :func:`make_reply`.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .calibrate import calibrate
from .catalog import recorded_reference, replace_catalog
from .detect import DetectionConfig, measure_image
from .errors import SkySurveyError, TransientStorageError, one_line, printable
from .fitsread import observation_partition, read_fits
from .forced import image_footprint
from .reference import ReferenceError, ReferenceSpec, check_reference
from .schema import IMAGES_SCHEMA, SOURCES_SCHEMA, catalog_keys, image_id_from_name
from .units import with_astropy_metadata

__all__ = ["SOURCES_ROW_GROUP_ROWS", "PipelineConfig", "catalog_image", "make_reply",
           "run_reference", "sources_to_parquet_bytes", "table_to_parquet_bytes"]

#: rows per row group of an image's ``sources`` file (sorted by ``_healpix_29``): small
#: enough that a reader of one sky region (an objects unit) skips most of a file by the
#: row groups' min/max statistics, large enough that the footer stays small (measured in
#: benchmarks/RESULTS.md, "Deep field")
SOURCES_ROW_GROUP_ROWS = 1024


@dataclass(frozen=True)
class PipelineConfig:
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    max_memory_bytes: int | None = None  # refuse images that would need more (None: no limit)
    tmp_dir: str | None = None  # where S3 objects are staged (Lambda: /tmp)
    # calibrate against this catalog (calibrate.py); None: the one the catalog records
    # (catalog.recorded_reference), if any; ReferenceSpec "none": header zero points
    reference: ReferenceSpec | None = None


def run_reference(reference: ReferenceSpec | None, catalog_store) -> ReferenceSpec | None:
    """The reference an image is calibrated against: *reference* (None for ``none``), else
    the one the catalog was made with, so a later command keeps its calibration."""
    if reference is not None:
        return None if reference.is_none else reference
    recorded = recorded_reference(catalog_store)
    return ReferenceSpec.parse(*recorded) if recorded else None


def make_reply(key, status: str = "error", *, image_id: str | None = None, n_sources: int = 0,
               catalog_key: str | None = None, seconds: float = 0.0, error: str | None = None,
               **extra) -> dict:
    """The handler's reply for one image (DESIGN "Handler event and reply"), JSON-ready.

    ``{"status", "image_id", "key", "n_sources", "catalog_key", "seconds", "error"}`` plus
    *extra*. The image id defaults to the one *key* gives; *error* is made one printable line.
    """
    if image_id is None and isinstance(key, str):
        image_id = image_id_from_name(key) or None
    return {"status": status, "image_id": image_id, "key": key, "n_sources": int(n_sources),
            "catalog_key": catalog_key, "seconds": round(float(seconds), 4),
            "error": None if error is None else one_line(error), **extra}


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise *table* to Parquet in memory (same bytes for the same table)."""
    sink = io.BytesIO()
    pq.write_table(with_astropy_metadata(table), sink, compression="snappy")  # units for astropy
    return sink.getvalue()


def sources_to_parquet_bytes(sources: pa.Table,
                             row_group_rows: int = SOURCES_ROW_GROUP_ROWS) -> bytes:
    """An image's ``sources`` as Parquet: rows sorted by ``_healpix_29`` (NESTED, so a sky
    region is a few contiguous runs of rows; rows without a position last, then by
    ``source_id``), in row groups of *row_group_rows* with min/max statistics, so a reader of
    one region reads only the row groups whose ``_healpix_29`` range meets it. Every column and
    each row's ``source_id`` are kept: only the order of the rows changes."""
    if sources.num_rows and "_healpix_29" in sources.column_names:
        order = pc.sort_indices(sources, sort_keys=[("_healpix_29", "ascending"),
                                                    ("source_id", "ascending")])  # nulls last
        sources = sources.take(order)
    sink = io.BytesIO()
    pq.write_table(with_astropy_metadata(sources), sink, compression="snappy",
                   row_group_size=max(int(row_group_rows), 1), write_statistics=True)
    return sink.getvalue()


def catalog_image(raw_store, key: str, catalog_store, config: PipelineConfig | None = None, *,
                  raise_transient: bool = False) -> dict:
    """Process the FITS at *key* in *raw_store*; write its catalog to *catalog_store*.

    *key* is relative to the input folder (the raw store's root), so it gives the image id.
    The earlier catalog of the same id is replaced wherever it is (another band or night);
    a catalog that came from another source file is never overwritten (error reply).
    Returns :func:`make_reply`'s dict.
    """
    config = config or PipelineConfig()
    start = time.perf_counter()
    try:
        image_id = image_id_from_name(key)
        source_key = raw_store.url(key)
        with raw_store.local_file(key, tmp_dir=config.tmp_dir) as path:
            image = read_fits(path, name=source_key, max_memory_bytes=config.max_memory_bytes)
        band, night = observation_partition(image.header)
        reference = run_reference(config.reference, catalog_store)
        if reference is not None:  # a reference that cannot be used fails the image
            try:
                check_reference(reference, band)
            except ReferenceError as exc:
                raise ReferenceError(source_key, f"cannot calibrate: reference {exc}") from None
        notes: list[str] = []
        footprint = image_footprint(image.header, image.data, image.mask, notes)
        # the background is subtracted in image.data itself: one image-sized array less
        # while the PSF is fitted (the data are not read after this)
        sources, row = measure_image(image, image_id, config.detection, overwrite=True)
        sources, row = calibrate(sources, row, band, reference)
        row["footprint_hpx12"] = footprint
        if notes:
            row["warnings"] = "; ".join(filter(None, [row.get("warnings"), *notes]))
        keys = catalog_keys(image_id, band, night)
        row = {**row, "source_key": source_key,
               "seconds": round(time.perf_counter() - start, 4),
               "processed_at": datetime.now(UTC).replace(tzinfo=None),
               "pipeline_version": __version__}
        images = pa.Table.from_pylist([row], schema=IMAGES_SCHEMA)
        sources = sources.cast(SOURCES_SCHEMA)
        # sources first, the image record last: an image record means a complete catalog
        replace_catalog(catalog_store, image_id, source_key, {
            keys["sources"]: sources_to_parquet_bytes(sources),
            keys["images"]: table_to_parquet_bytes(images)})
        return make_reply(key, "ok", image_id=image_id, n_sources=sources.num_rows,
                          catalog_key=catalog_store.url(keys["sources"]),
                          seconds=time.perf_counter() - start)
    except SkySurveyError as exc:
        if raise_transient and isinstance(exc, TransientStorageError):
            raise
        error = str(exc)
    except Exception as exc:  # a bug or an unforeseen input: still one line, still no crash
        where = raw_store.url(key) if isinstance(key, str) else repr(key)
        error = f"{printable(where)}: unexpected {type(exc).__name__}: {exc}"
    return make_reply(key, "error", seconds=time.perf_counter() - start, error=error)
