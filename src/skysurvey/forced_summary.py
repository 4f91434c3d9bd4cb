"""The forced step's per-object summary: ``object_variability`` from the whole forced table.

:func:`summarize_forced` reads ``forced_photometry`` (rows of images with an ``images``
record), the associations and the objects, computes per object
:func:`skysurvey.lightcurves.summarize` (variability and the transient rule, with the objects'
close pairs for the neighbour-leak test) and writes one file per ``hpx5`` partition.
``forced_run.run_forced`` calls it at the end of every run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import __version__
from .lightcurve_fits import _index
from .storage import open_store

__all__ = [
    "FORCED_COLUMNS",
    "VARIABILITY_FILE",
    "VARIABILITY_FOLDER",
    "VariabilitySummary",
    "summarize_forced",
]

VARIABILITY_FOLDER = "object_variability/"
VARIABILITY_FILE = "variability.parquet"
FORCED_COLUMNS = ["object_id", "image_id", "band", "mjd", "flux", "flux_err", "snr", "mag",
                  "mag_limit", "flags"]


def _codes(values: pa.ChunkedArray | pa.Array, universe: pa.Array) -> np.ndarray:
    """Position of each value in *universe* (-1 when absent)."""
    import pyarrow.compute as pc

    return pc.index_in(values, value_set=universe).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)


def _column(table: pa.Table, name: str, kept, dtype=float, fill=None) -> np.ndarray:
    """One column as numpy (*fill* for nulls), rows of the mask *kept* only (None: all)."""
    values = table[name] if fill is None else table[name].fill_null(fill)
    values = values.to_numpy(zero_copy_only=False).astype(dtype)
    return values if kept is None else values[kept]


def _first_seen(codes: np.ndarray) -> np.ndarray:
    """*codes* renumbered 0, 1, ... in the order each first appears."""
    if not codes.size:
        return codes
    values, first = np.unique(codes, return_index=True)
    new = np.empty(int(values.max()) + 1, np.int64)
    new[values[np.argsort(first)]] = np.arange(values.size)
    return new[codes]


def _detected(row_obj, row_pos, row_image, ids, images, catalog_uri) -> np.ndarray:
    """Per forced row, whether the (object, image) pair has an association."""
    from .queries import dataset

    assoc = dataset(catalog_uri, "associations").to_table(columns=["image_id", "object_id"])
    a_img = _codes(assoc["image_id"], images)
    a_obj = assoc["object_id"].to_numpy().astype(np.int64)
    del assoc
    keep = a_img >= 0
    n_img = max(len(images), 1)
    if row_pos.size and row_pos.min() >= 0 and ids.size * n_img < 2**62:
        # every row's object is in ids: pairs as (position, image) codes
        _, a_pos = _index(a_obj[keep], ids)
        a_key = a_pos * n_img + a_img[keep]
        return np.isin(row_pos * n_img + row_image, a_key[a_pos >= 0])
    _, inverse = np.unique(np.concatenate([row_obj, a_obj[keep]]), return_inverse=True)
    f_key = inverse[:row_obj.size] * n_img + row_image
    a_key = inverse[row_obj.size:] * n_img + a_img[keep]
    return np.isin(f_key, a_key)


@dataclass
class VariabilitySummary:
    n_objects: int = 0
    n_rows: int = 0
    n_variable: int = 0
    n_transient: int = 0
    partitions: list[dict] = field(default_factory=list)  # {hpx5} written
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"object_variability: {self.n_objects} objects from {self.n_rows} forced rows, "
                f"{self.n_variable} variable, {self.n_transient} transient candidates "
                f"({len(self.partitions)} partitions, {self.seconds:.1f} s)")


def summarize_forced(catalog_uri: str) -> VariabilitySummary:
    """Write ``object_variability`` from the whole ``forced_photometry`` table.

    Reads the forced table once (its :data:`FORCED_COLUMNS`, rows of images with an
    ``images`` record only, as SQL sees them), the associations (which object was detected on
    which image) and the objects (``object_id``, ``hpx5``); computes per object
    :func:`skysurvey.lightcurves.summarize`; writes one file per ``hpx5`` partition of the
    objects (``object_variability/hpx5=P/variability.parquet``, each write atomic, the same
    name on a re-run so a reader never sees an object twice), then removes the files of
    partitions no longer written.

    Parameters
    ----------
    catalog_uri : str
        The catalog.

    Returns
    -------
    VariabilitySummary
    """
    import pyarrow.compute as pc

    from . import lightcurves
    from .pipeline import table_to_parquet_bytes
    from .queries import dataset

    start = time.perf_counter()
    store = open_store(catalog_uri)
    summary = VariabilitySummary()
    objects = dataset(catalog_uri, "objects").to_table(columns=["object_id", "hpx5", "ra",
                                                                "dec"])
    forced = dataset(catalog_uri, "forced_photometry").to_table(columns=FORCED_COLUMNS)
    records = dataset(catalog_uri, "images").to_table(columns=["image_id", "aperture_radius"])
    ids = objects["object_id"].to_numpy().astype(np.int64)
    hpx5 = objects["hpx5"].to_numpy(zero_copy_only=False).astype(np.int64)
    # image codes: the forced table's images (first-seen order) that have a record; rows of
    # the others are left out (as SQL sees the table), by mask, not by copying the table
    seen = forced["image_id"].unique()
    images = seen.filter(pc.is_in(seen, value_set=records["image_id"].combine_chunks().unique()))
    row_image = _codes(forced["image_id"], images)
    keep = row_image >= 0
    kept = None if keep.all() else keep

    def column(name, dtype=float, fill=None):
        return _column(forced, name, kept, dtype, fill)

    band = forced["band"].fill_null("unknown")
    row_band = _codes(band, band.unique())  # first-seen order, as the images
    del band
    if kept is not None:
        row_band = _first_seen(row_band[kept])
    row_image = row_image if kept is None else row_image[kept]
    row_obj = column("object_id", np.int64)
    n_rows = int(row_obj.size)
    _, row_pos = _index(row_obj, ids)  # the summary works on positions in ids
    detected = _detected(row_obj, row_pos, row_image, ids, images, catalog_uri)
    radius = np.full(len(images), np.nan)  # per image code: the aperture radius (detrending)
    where = _codes(records["image_id"], images)
    radius[where[where >= 0]] = records["aperture_radius"].to_numpy(
        zero_copy_only=False).astype(float)[where >= 0]
    rows = lightcurves.ForcedRows(
        row_pos, row_band, row_image, detected, column("flux"), column("flux_err"),
        column("snr"), column("mag"), column("mag_limit"), column("flags", np.int64, 0),
        column("mjd"))
    forced = None  # ~0.3 GB on the deep field (3.8 M rows), before the
    del row_obj, keep
    pa.default_memory_pool().release_unused()  # summary's own arrays
    pairs = lightcurves.close_pairs(
        objects["ra"].to_numpy(zero_copy_only=False).astype(float),
        objects["dec"].to_numpy(zero_copy_only=False).astype(float))
    cols = lightcurves.summarize(np.arange(ids.size), rows, lightcurves.SummaryOptions(
        image_x=radius, pairs=pairs))
    schema = lightcurves.OBJECT_VARIABILITY_SCHEMA
    written = set()
    for part in np.unique(hpx5):
        sel = hpx5 == part
        arrays = [pa.array(ids[sel], pa.int64())]
        for f in schema:
            if f.name in ("object_id", "pipeline_version"):
                continue
            values = np.asarray(cols[f.name])[sel]
            if pa.types.is_floating(f.type):
                arrays.append(pa.array(values, f.type, mask=~np.isfinite(values)))
            else:
                arrays.append(pa.array(values, f.type))
        arrays.append(pa.array([__version__] * int(sel.sum()), pa.string()))
        key = f"{VARIABILITY_FOLDER}hpx5={int(part)}/{VARIABILITY_FILE}"
        store.write_bytes(key, table_to_parquet_bytes(pa.Table.from_arrays(arrays,
                                                                           schema=schema)),
                          content_type="application/vnd.apache.parquet")
        written.add(key)
        summary.partitions.append({"hpx5": int(part)})
    for info in store.list(VARIABILITY_FOLDER):
        if info.key.endswith(".parquet") and info.key not in written:
            store.delete(info.key)
            summary.removed.append(info.key)
    summary.n_objects, summary.n_rows = int(ids.size), n_rows
    summary.n_variable = int(np.sum(cols["variable"]))
    summary.n_transient = int(np.sum(cols["transient_candidate"]))
    summary.seconds = time.perf_counter() - start
    return summary
