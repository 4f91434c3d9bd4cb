"""The objects tables on disk: their layout (unit file keys, the build record), listing them,
and reading one Parquet file of them.

A unit's files are ``<table>/hpx5=<order-5 pixel>/k<unit order>-<unit>.parquet`` and, beside the
``objects`` and ``object_photometry`` files, statistics sidecars ``_stats-k<K>-<N>.parquet``
(skipped by Parquet readers, as is the build record ``objects/_build.json``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SkySurveyError
from ..schema import (
    ASSOCIATIONS_SCHEMA,
    OBJECT_PARTITION_ORDER,
    OBJECT_PHOTOMETRY_SCHEMA,
    OBJECT_TABLES,
    OBJECTS_SCHEMA,
    OBJECTS_STAGING,
)

__all__ = [
    "LAYOUT",
    "PARTITION_ORDER",
    "ROW_GROUP_ROWS",
    "SCHEMAS",
    "STAGING",
    "STATE_KEY",
    "SWAP_KEY",
    "TABLES",
    "UNIT_FILES",
    "file_entry",
    "floats",
    "is_unit_file",
    "list_keys",
    "load_state",
    "partition_of",
    "read_parquet",
    "read_parquet_or_none",
    "recorded_files",
    "table_listing",
    "unit_key",
    "unit_of_key",
]

TABLES = OBJECT_TABLES
SCHEMAS = {"objects": OBJECTS_SCHEMA, "object_photometry": OBJECT_PHOTOMETRY_SCHEMA,
           "associations": ASSOCIATIONS_SCHEMA}
PARTITION_ORDER = OBJECT_PARTITION_ORDER  # hpx5=<pixel>: the partition key of the three tables
STATE_KEY = "objects/_build.json"  # skipped by Parquet readers (leading underscore)
#: on S3, present in the tables while a build's staged files are copied over them
SWAP_KEY = "objects/_swapping.json"
STAGING = OBJECTS_STAGING  # <catalog>/.objects-staging/<token>/<table>/...
LAYOUT = 2  # 2: statistics sidecars (_stats-*.parquet) beside the unit files
ROW_GROUP_ROWS = 4096
#: the files a unit writes (:func:`unit_key`'s first argument)
UNIT_FILES = ("objects", "object_photometry", "associations", "objects/_stats",
              "object_photometry/_stats")


# ---------------------------------------------------------------------------------------
# Keys


def partition_of(unit: int, unit_order: int) -> int:
    """The order-5 partition (``hpx5=``) that holds *unit*."""
    return int(unit) >> (2 * (unit_order - PARTITION_ORDER))


def unit_key(table: str, unit: int, unit_order: int) -> str:
    """``objects/hpx5=P/k<K>-<N>.parquet``; ``objects/_stats`` names the sidecar
    ``objects/hpx5=P/_stats-k<K>-<N>.parquet`` (skipped by Parquet readers)."""
    table, _, sidecar = table.partition("/")
    name = f"{sidecar}-k{unit_order}-{unit}" if sidecar else f"k{unit_order}-{unit}"
    return f"{table}/hpx5={partition_of(unit, unit_order)}/{name}.parquet"


def unit_of_key(key: str) -> int | None:
    """The unit pixel of a table file (``k<K>-<N>.parquet``, ``_stats-k<K>-<N>.parquet``)."""
    name = key.rsplit("/", 1)[-1].removeprefix("_stats-")
    if not (name.startswith("k") and name.endswith(".parquet") and "-" in name):
        return None
    try:
        return int(name[:-len(".parquet")].split("-", 1)[1])
    except ValueError:
        return None


def is_unit_file(key: str, unit_order: int) -> bool:
    """True for a unit file's key at *unit_order* (tables and statistics sidecars)."""
    unit = unit_of_key(key)
    return unit is not None and any(key == unit_key(n, unit, unit_order) for n in UNIT_FILES)


# ---------------------------------------------------------------------------------------
# Listings and the build record


def list_keys(store, prefix: str) -> list[str]:
    """The keys under *prefix*; none when it cannot be listed (a catalog without tables)."""
    try:
        return [i.key for i in store.list(prefix)]
    except SkySurveyError:
        return []


def table_listing(store) -> dict[str, int]:
    """Every file in the three tables' folders and its size: one listing per table. A listing
    that fails raises (it must never look like lost files)."""
    return {i.key: i.size for t in TABLES for i in store.list(f"{t}/")}


def load_state(store) -> dict | None:
    """The last build's record (:data:`STATE_KEY`), None when there is none readable."""
    try:
        return json.loads(store.read_bytes(STATE_KEY))
    except (SkySurveyError, ValueError):  # no state yet, or not JSON
        return None


def recorded_files(state: dict, listing: dict[str, int]) -> dict[str, dict]:
    """The files the build record lists (:func:`file_entry` by key); for a record of an
    older version, which lists none, the unit files there now (sizes only)."""
    if state.get("files") is not None:
        return state["files"]
    return {k: {"size": size, "sha256": None, "rows": None} for k, size in listing.items()
            if is_unit_file(k, state["unit_order"])}


def file_entry(data: bytes, rows: int | None) -> dict:
    """What the build record keeps of a file it wrote: size, SHA-256 (what an S3 object's
    ``sha256`` metadata holds) and rows."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


# ---------------------------------------------------------------------------------------
# Reading one Parquet file


def read_parquet(store, key: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file of *store*; columns missing from an older file come back null."""
    return _parquet_table(store.read_bytes(key), columns)


def read_parquet_or_none(store, key: str,
                         columns: Sequence[str] | None = None) -> pa.Table | None:
    """:func:`read_parquet`, or None when there is no file at *key* (one GET on S3, no HEAD
    before it)."""
    data = store.read_bytes_or_none(key)
    return None if data is None else _parquet_table(data, columns)


def _parquet_table(data: bytes, columns: Sequence[str] | None) -> pa.Table:
    pf = pq.ParquetFile(pa.BufferReader(data))
    names = pf.schema_arrow.names
    present = [c for c in columns if c in names] if columns else names
    table = pf.read(columns=present)
    for c in columns or ():
        if c not in names:
            table = table.append_column(c, pa.nulls(table.num_rows, pa.float64()))
    return table


def floats(table: pa.Table, name: str) -> np.ndarray:
    """Column *name* of *table* as float64 (null -> NaN)."""
    return table[name].cast(pa.float64()).to_numpy(zero_copy_only=False).astype(float)
