"""One image, start to finish: fetch the FITS, measure it, write its two Parquet files.

This is the single implementation behind the Lambda handler, the local process pool and the
notebook. It never raises for a bad image: the reply says ``status: "error"`` with the one-line
cause, and nothing is written for that image. Only transient AWS errors (throttling, 5xx that
outlived botocore's retries) propagate when ``raise_transient`` is set, so Lambda can retry.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .detect import DetectionConfig, measure_image
from .errors import SkySurveyError, StorageError
from .fitsread import observation_partition, read_fits
from .schema import IMAGES_SCHEMA, SOURCES_SCHEMA, catalog_keys, image_id_from_name
from .storage import LocalStore, S3Store

#: Objects up to this size are read into memory; larger ones go through a temporary file.
IN_MEMORY_LIMIT = 256 * 1024 * 1024


@dataclass(frozen=True)
class PipelineConfig:
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    max_memory_bytes: int | None = None  # refuse images that would need more (None: no limit)
    tmp_dir: str | None = None  # where large S3 objects are staged (Lambda: /tmp)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise *table* to Parquet in memory (same bytes for the same table)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue()


def _read(store, key: str, config: PipelineConfig):
    """Read the FITS behind *key*: in place locally, from memory or a temp file on S3."""
    name = store.url(key)
    limit = config.max_memory_bytes
    if isinstance(store, LocalStore):
        return read_fits(store.local_path(key), name=name, max_memory_bytes=limit)
    info = store.head(key)
    if info is None:
        raise StorageError(name, "no such object")
    if info.size <= IN_MEMORY_LIMIT:
        return read_fits(store.read_bytes(key), name=name, max_memory_bytes=limit)
    suffix = "".join(Path(key).suffixes[-2:])
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=config.tmp_dir)
    os.close(fd)
    try:
        store.download(key, tmp)
        return read_fits(tmp, name=name, max_memory_bytes=limit)
    finally:
        Path(tmp).unlink(missing_ok=True)  # warm containers reuse /tmp


def catalog_image(
    raw_store: LocalStore | S3Store,
    key: str,
    catalog_store: LocalStore | S3Store,
    config: PipelineConfig | None = None,
    *,
    raise_transient: bool = False,
) -> dict:
    """Process the FITS at *key* in *raw_store*; write its catalog to *catalog_store*.

    Returns the handler's reply: ``{"status", "image_id", "n_sources", "catalog_key",
    "seconds", "error"}``.
    """
    config = config or PipelineConfig()
    start = time.perf_counter()
    reply = {"status": "error", "image_id": None, "key": key, "n_sources": 0,
             "catalog_key": None, "seconds": 0.0, "error": None}
    written: list[str] = []
    try:
        reply["image_id"] = image_id = image_id_from_name(key)
        image = _read(raw_store, key, config)
        sources, row = measure_image(image, image_id, config.detection)
        band, night = observation_partition(image.header)
        keys = catalog_keys(image_id, band, night)
        seconds = time.perf_counter() - start
        row = {**row, "source_key": raw_store.url(key), "seconds": round(seconds, 4),
               "processed_at": datetime.now(UTC).replace(tzinfo=None),
               "pipeline_version": __version__}
        images = pa.Table.from_pylist([row], schema=IMAGES_SCHEMA)
        sources = sources.cast(SOURCES_SCHEMA)
        # sources first, the image record last: an image record means a complete catalog
        for table_name, table in (("sources", sources), ("images", images)):
            catalog_store.write_bytes(keys[table_name], table_to_parquet_bytes(table),
                                      content_type="application/vnd.apache.parquet")
            written.append(keys[table_name])
        reply.update(status="ok", n_sources=sources.num_rows,
                     catalog_key=catalog_store.url(keys["sources"]))
    except SkySurveyError as exc:
        _undo(catalog_store, written)
        if raise_transient and _is_transient(exc):
            raise
        reply["error"] = str(exc)
    except Exception as exc:  # a bug or an unforeseen input: still one line, still no crash
        _undo(catalog_store, written)
        reply["error"] = f"{raw_store.url(key)}: unexpected {type(exc).__name__}: {exc}"
    reply["seconds"] = round(time.perf_counter() - start, 4)
    return reply


def _undo(store, keys: list[str]) -> None:
    for key in keys:
        with contextlib.suppress(SkySurveyError):
            store.delete(key)


_TRANSIENT_MARKERS = ("SlowDown", "Throttl", "RequestTimeout", "InternalError",
                      "ServiceUnavailable", "cannot reach the endpoint")


def _is_transient(exc: SkySurveyError) -> bool:
    return isinstance(exc, StorageError) and any(m in exc.cause for m in _TRANSIENT_MARKERS)
