"""The objects a forced-photometry task measures: those in an image's footprint.

Reads only the objects table's unit files (``objects/hpx5=P/k<order>-<pixel>.parquet``, see
:mod:`skysurvey.objects`) whose HEALPix unit holds cells of the footprint, four columns each,
and keeps, per process, the decoded files keyed by their content (SHA-256), so a worker that
measures many images of one field decodes each file once.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import OrderedDict
from pathlib import PurePosixPath

import numpy as np
import pyarrow.parquet as pq

from .forced import HPX_ORDER

__all__ = [
    "OBJECTS_CACHE_FILES",
    "PARTITION_ORDER",
    "file_touches",
    "objects_in_footprint",
    "unit_touches",
]

PARTITION_ORDER = 5  # objects/hpx5=<pixel>


def _partitions(cells: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(cells, np.int64) >> (2 * (HPX_ORDER - PARTITION_ORDER)))


_UNIT_FILE = re.compile(r"^k(\d+)-(\d+)\.parquet$")


def file_touches(key: str, cells: np.ndarray) -> bool:
    """Whether the objects file *key* can hold objects in the order-12 *cells* (sorted).

    Unit files (``k<order>-<pixel>.parquet``, objects.py) hold the objects of one HEALPix
    pixel: kept when a cell lies in it. Files of another name: kept (read to be sure).

    Parameters
    ----------
    key : str
        An objects file's key.
    cells : ndarray of int
        Sorted order-12 cells.

    Returns
    -------
    bool
    """
    match = _UNIT_FILE.match(PurePosixPath(key).name)
    if match is None:
        return True
    return unit_touches(int(match[1]), int(match[2]), np.asarray(cells, np.int64))


def unit_touches(order: int, pixel: int, cells: np.ndarray) -> bool:
    """Whether the HEALPix unit (*order*, *pixel*) holds one of the order-12 *cells* (int64)."""
    if order <= HPX_ORDER:
        return bool(np.any((cells >> (2 * (HPX_ORDER - order))) == pixel))
    return bool(np.any(cells == (pixel >> (2 * (order - HPX_ORDER)))))


def _object_files(store, partition: int, cells: np.ndarray) -> list[str]:
    """The objects table's files of one ``hpx5`` partition (sidecars ``_*`` left out) whose
    unit holds some of *cells*."""
    return sorted(i.key for i in store.list(f"objects/hpx5={int(partition)}/")
                  if i.key.endswith(".parquet")
                  and not PurePosixPath(i.key).name.startswith(("_", "."))
                  and file_touches(i.key, cells))


#: Per process: the decoded objects files, ``url -> (sha256, cell, id, ra, dec)`` (rows with
#: a finite position; cell = order-12 cell, -1 without _healpix_29). A worker measuring many
#: images of one field reads each objects file once instead of once per image; an entry is
#: used without reading only for the content (SHA-256) the task expects.
_OBJECTS_CACHE: OrderedDict[str, tuple] = OrderedDict()
OBJECTS_CACHE_FILES = 256


def _decoded_objects(data: bytes) -> tuple[np.ndarray, ...]:
    table = pq.read_table(io.BytesIO(data), columns=["object_id", "ra", "dec", "_healpix_29"])
    hpx = table["_healpix_29"].fill_null(-1).to_numpy().astype(np.int64)  # exact
    ra = table["ra"].to_numpy(zero_copy_only=False).astype(float)
    dec = table["dec"].to_numpy(zero_copy_only=False).astype(float)
    cell = np.where(hpx >= 0, hpx >> (2 * (29 - HPX_ORDER)), -1)
    ok = np.isfinite(ra) & np.isfinite(dec)
    ids = table["object_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    return cell[ok], ids[ok], ra[ok], dec[ok]


def _objects_file(store, key: str, expected: str | None) -> tuple[np.ndarray, ...]:
    """One objects file, decoded: from this process's cache when it holds the *expected*
    content, else read (and cached under the SHA-256 of the bytes read)."""
    where = store.url(key)
    hit = _OBJECTS_CACHE.get(where)
    if hit is not None and expected is not None and hit[0] == expected:
        _OBJECTS_CACHE.move_to_end(where)
        return hit[1:]
    data = store.read_bytes(key)
    digest = hashlib.sha256(data).hexdigest()
    if hit is not None and hit[0] == digest:
        _OBJECTS_CACHE.move_to_end(where)
        return hit[1:]
    decoded = _decoded_objects(data)
    _OBJECTS_CACHE[where] = (digest, *decoded)
    _OBJECTS_CACHE.move_to_end(where)
    while len(_OBJECTS_CACHE) > OBJECTS_CACHE_FILES:
        _OBJECTS_CACHE.popitem(last=False)
    return decoded


def objects_in_footprint(store, cells, expected=()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(object_id, ra, dec)`` of the catalog's objects whose order-12 cell is in *cells*.

    Reads only the unit files (:func:`file_touches`) of the ``objects/hpx5=P/`` partitions
    the cells fall in (an order-12 cell lies in one order-5 pixel and in one unit), columns
    ``object_id``, ``ra``, ``dec``, ``_healpix_29``. The files are those listed now; a file
    this process decoded before is not read again when *expected* names its content (the
    plan's SHA-256 from the objects build record, :attr:`ForcedTask.objects`).

    Parameters
    ----------
    store : Store
        The catalog's store.
    cells : array_like of int
        Order-12 cells (an image's footprint).
    expected : iterable of (str, str), optional
        ``(key, sha256)`` of objects files as planned.

    Returns
    -------
    object_id, ra, dec : ndarray
    """
    cells = np.unique(np.asarray(cells, np.int64))
    sha = dict(expected or ())
    ids, ras, decs = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0)]
    for partition in _partitions(cells):
        for key in _object_files(store, partition, cells):
            cell, oid, ra, dec = _objects_file(store, key, sha.get(key))
            keep = np.isin(cell, cells)
            ids.append(oid[keep])
            ras.append(ra[keep])
            decs.append(dec[keep])
    return np.concatenate(ids), np.concatenate(ras), np.concatenate(decs)
