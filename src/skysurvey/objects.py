"""From detections to objects: positional association across images, light-curve statistics.

Every source with a position is linked to one object; an object never takes two sources from
one image (mutual-nearest matching within the radius, image by image in time order); a source
left unmatched starts a new object (a transient, or a star seen for the first time).

Work is split by NESTED HEALPix pixel (a *unit*, order ``unit_order`` >= 5, fixed at the first
build). A unit task reads the sources of the images overlapping its pixel plus a margin (one
to two order-15 pixels, 6-13 arcsec, at the default radius), the existing objects of its pixel
and its 8 neighbours, associates the new images, and keeps the objects whose mean position
falls inside its pixel. Since the margin is many radii wide, the two tasks on either side of a
border see all detections of a border object and reach the same result: the owner keeps it,
the other drops it, so it is neither split nor duplicated. Units run in a local process pool,
or one AWS Lambda invocation per unit (:func:`handle_unit_event`; numpy and astropy-healpix
only, no scipy). Tables are written per unit:
``<catalog>/<table>/hpx5=<order-5 pixel>/k<unit order>-<unit pixel>.parquet``.

Incremental: existing associations are kept as they are; only images that are new, or whose
catalog changed since the last build (reprocessed: another ``processed_at`` or pipeline
version), are matched, in time order, against the existing objects (whose ids never change).
When all the changes are new images, each unit merges them into the sufficient statistics it
stored beside its files (``_stats-*.parquet``, :class:`Stats`) and reads no old source; a
reprocessed or removed image makes every unit re-read its images and recompute the statistics
from all detections. Only the units new images touch are rewritten. A build writes its tables into a
staging folder; after every unit has succeeded a ``_complete`` marker is written and the folders
are swapped in (locally an atomic exchange of directories; on S3 a copy, during which a reader
may see some units old and some new: a window of seconds, documented in the README). A build
interrupted before the marker leaves the previous tables untouched and is started over; one
interrupted after it is finished by the next run. Every reader counts every file of a table's
folders, so each build over tables of this layout (even one with nothing new) starts by deleting
the files no build wrote (:func:`stray_keys`: a copy beside a unit file, a unit file in another
partition's folder); a build that rebuilds every unit swaps in only its own files.
One build runs at a time per catalog (:func:`build_lock`): a second one would take the first's
staging folder for an interrupted build and discard it.

The build record (``objects/_build.json``) lists every unit file the build committed (size,
SHA-256, rows). Every build, even one with nothing new, first compares the tables' listing with
it (:func:`check_tables`: sizes, free with the listing; SHA-256 with ``verify``): a unit whose
files are missing, of another size, or not written by the last build (and, on S3, among the
units a swap was replacing when it stopped with its staging gone, :data:`SWAP_KEY`, those whose
files' SHA-256 differ from the record) is rebuilt from the sources before anything else
(:func:`repair`: the images of the record, the kept associations around it, not the damaged
files; its object ids come back from its associations), and a note names the files. When they
cannot be rebuilt (a sources file gone too) the build stops with one line naming them, and
changes nothing.

Object ids: ``(order-13 pixel of the object's position when it was created) << 33 | sequence``,
so a unit allocates ids without asking anybody, and they stay unique across units and runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .calibrate import tangent_plane
from .errors import SkySurveyError
from .schema import (
    ASSOCIATIONS_SCHEMA,
    OBJECT_PHOTOMETRY_SCHEMA,
    OBJECTS_SCHEMA,
    catalog_keys,
)
from .storage import LocalStore, open_store

log = logging.getLogger("skysurvey.objects")

TABLES = ("objects", "object_photometry", "associations")
SCHEMAS = {"objects": OBJECTS_SCHEMA, "object_photometry": OBJECT_PHOTOMETRY_SCHEMA,
           "associations": ASSOCIATIONS_SCHEMA}
PARTITION_ORDER = 5  # hpx5=<pixel>: the partition key of the three tables
ID_ORDER = 13  # object ids carry the order-13 pixel where the object was created (finer
#: than any unit, so one unit allocates all ids of a prefix)
ID_SHIFT = 33
STATE_KEY = "objects/_build.json"  # skipped by Parquet readers (leading underscore)
#: on S3, present in the tables while a build's staged files are copied over them
SWAP_KEY = "objects/_swapping.json"
STAGING = ".objects-staging"  # <catalog>/.objects-staging/<token>/<table>/...
#: One build at a time per catalog: ``<catalog>/.objects-build.lock`` (JSON: when, where),
#: created by a conditional write; one older than this is from a killed build.
LOCK, LOCK_STALE_SECONDS = ".objects-build.lock", 6 * 3600.0
LAYOUT = 2  # 2: statistics sidecars (_stats-*.parquet) beside the unit files
ROW_GROUP_ROWS = 4096
ARCSEC = np.pi / (180 * 3600)

#: flag bits that keep a detection out of the photometric statistics (blended or found inside
#: a brighter object (8192), truncated by the edge, masked pixels, non-positive or saturated
#: flux, cosmic ray: see data/README.md); a blend's flux changes with the seeing, which would
#: make constant stars look variable
PHOT_BAD_FLAGS = 1 | 2 | 4 | 16 | 32 | 64 | 128 | 256 | 512 | 2048 | 8192
#: magnitude error added in quadrature before the chi2 test: what our own photometry
#: reproduces on constant stars (aperture corrections, flat field, seeing), see the README
SYSTEMATIC_FLOOR = 0.02
#: false-alarm probability per object and band of the chi2 variability test
VARIABLE_FALSE_ALARM = 1e-4
MIN_VARIABLE_POINTS = 3


class ObjectsError(SkySurveyError):
    """The objects step cannot run: no catalog, no images, incompatible settings."""


@dataclass(frozen=True)
class BuildConfig:
    radius_arcsec: float = 1.0
    workers: int = 1
    rebuild: bool = False
    floor: float = SYSTEMATIC_FLOOR
    false_alarm: float = VARIABLE_FALSE_ALARM
    unit_order: int | None = None  # None: chosen from the data at the first build (5..12)
    verify: bool = False  # also compare the tables' checksums with the build record's

    @property
    def margin_arcsec(self) -> float:
        return max(5.0, 5.0 * self.radius_arcsec)


# ---------------------------------------------------------------------------------------
# HEALPix helpers (astropy-healpix: fits the Lambda package)


def healpix(ra, dec, order: int) -> np.ndarray:
    """NESTED pixel at *order* of (ra, dec) in degrees."""
    from astropy import units as u
    from astropy_healpix import lonlat_to_healpix

    ra = np.asarray(ra, float)
    if ra.size == 0:
        return np.zeros(0, np.int64)
    return np.asarray(lonlat_to_healpix(ra * u.deg, np.asarray(dec, float) * u.deg,
                                        2**order, order="nested"), np.int64)


def pixel_centre(pixel: int, order: int) -> tuple[float, float]:
    from astropy_healpix import healpix_to_lonlat

    lon, lat = healpix_to_lonlat(np.array([pixel]), 2**order, order="nested")
    return float(lon.deg[0]), float(lat.deg[0])


def pixel_size_arcsec(order: int) -> float:
    return float(np.sqrt(4 * np.pi / (12 * 4**order)) / ARCSEC)


def margin_order(margin_arcsec: float) -> int:
    """The finest order whose pixels are at least *margin_arcsec* wide (<= 15)."""
    order = 15
    while order > 0 and pixel_size_arcsec(order) < margin_arcsec:
        order -= 1
    return order


def neighbours(pixels: np.ndarray, order: int) -> np.ndarray:
    """The pixels and their 8 neighbours, shape (9, n) (-1 where a pixel has 7)."""
    from astropy_healpix import neighbours as _neighbours

    pixels = np.asarray(pixels, np.int64)
    if pixels.size == 0:
        return np.zeros((9, 0), np.int64)
    with np.errstate(invalid="ignore"):  # the 8 pixels with 7 neighbours give -1 (and a warning)
        near = np.asarray(_neighbours(pixels, 2**order, order="nested"))
    return np.vstack([pixels, near])


def units_touched(fine: np.ndarray, fine_order: int, unit_order: int) -> np.ndarray:
    """For pixels at *fine_order*: the unit pixels they or their neighbours fall in, (9, n)."""
    shift = 2 * (fine_order - unit_order)
    near = neighbours(fine, fine_order)
    return np.where(near >= 0, near >> shift, -1)


def in_region(fine: np.ndarray, fine_order: int, unit: int, unit_order: int) -> np.ndarray:
    """True for points (given as fine pixels) in *unit* or within one fine pixel of it."""
    if fine.size == 0:
        return np.zeros(0, bool)
    uniq, inverse = _group(fine)
    hit = (units_touched(uniq, fine_order, unit_order) == unit).any(axis=0)
    return hit[inverse]


def partition_of(unit: int, unit_order: int) -> int:
    return int(unit) >> (2 * (unit_order - PARTITION_ORDER))


def unit_key(table: str, unit: int, unit_order: int) -> str:
    """``objects/hpx5=P/k<K>-<N>.parquet``; ``objects/_stats`` names the sidecar
    ``objects/hpx5=P/_stats-k<K>-<N>.parquet`` (skipped by Parquet readers)."""
    table, _, sidecar = table.partition("/")
    name = f"{sidecar}-k{unit_order}-{unit}" if sidecar else f"k{unit_order}-{unit}"
    return f"{table}/hpx5={partition_of(unit, unit_order)}/{name}.parquet"


# ---------------------------------------------------------------------------------------
# Geometry


def unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def vectors_to_radec(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(vec, axis=-1)
    ra = np.degrees(np.arctan2(vec[..., 1], vec[..., 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(vec[..., 2] / norm, -1, 1)))
    return ra, dec


def separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Exact angular distance (haversine), arcsec."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    h = (np.sin((dec2 - dec1) / 2) ** 2
         + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2)
    return 2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))) / ARCSEC


# ---------------------------------------------------------------------------------------
# Matching (numpy only)


class CellIndex:
    """Append-only grid of objects in the tangent plane: a linked list per cell.

    Cells are ``2 * radius`` wide and an object stays in the cell where it was created, so a
    query looking at the 3 x 3 cells around a source finds every object within the radius as
    long as an object's mean drifts less than one radius from its first position.
    """

    def __init__(self, x0: float, y0: float, width: float, height: float, radius: float):
        self.cell = max(2.0 * radius, max(width, height) / 2048.0)
        self.x0, self.y0 = x0 - self.cell, y0 - self.cell
        self.nx = int(width / self.cell) + 3
        self.ny = int(height / self.cell) + 3
        self.head = np.full(self.nx * self.ny, -1, np.int64)
        self.next = np.zeros(0, np.int64)

    def _cells(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        cx = np.clip(((x - self.x0) / self.cell).astype(np.int64), 0, self.nx - 1)
        cy = np.clip(((y - self.y0) / self.cell).astype(np.int64), 0, self.ny - 1)
        return cx, cy

    def add(self, first: int, x: np.ndarray, y: np.ndarray) -> None:
        """Objects ``first .. first + len(x) - 1`` at (x, y)."""
        n = len(x)
        self.next = np.concatenate([self.next, np.full(n, -1, np.int64)])
        if n == 0:
            return
        cx, cy = self._cells(x, y)
        cell = cy * self.nx + cx
        order = np.argsort(cell, kind="stable")
        ids = first + order
        sc = cell[order]
        start = np.r_[True, sc[1:] != sc[:-1]]
        prev = np.r_[-1, ids[:-1]]
        self.next[ids] = np.where(start, self.head[sc], prev)
        last = np.r_[sc[1:] != sc[:-1], True]
        self.head[sc[last]] = ids[last]

    def candidates(self, x, y, ox, oy, radius: float):
        """Pairs (source, object, d2) within *radius*; ox, oy: current object positions."""
        cx, cy = self._cells(x, y)
        src, obj, dist = [], [], []
        r2 = radius * radius
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                qx, qy = cx + dx, cy + dy
                ok = (qx >= 0) & (qx < self.nx) & (qy >= 0) & (qy < self.ny)
                s = np.nonzero(ok)[0]
                cur = self.head[qy[s] * self.nx + qx[s]]
                while s.size:
                    live = cur >= 0
                    s, cur = s[live], cur[live]
                    if not s.size:
                        break
                    d2 = (ox[cur] - x[s]) ** 2 + (oy[cur] - y[s]) ** 2
                    hit = d2 <= r2
                    src.append(s[hit])
                    obj.append(cur[hit])
                    dist.append(d2[hit])
                    cur = self.next[cur]
        if not src:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(src), np.concatenate(obj), np.concatenate(dist)


def mutual_nearest(src: np.ndarray, obj: np.ndarray, d2: np.ndarray) -> tuple[np.ndarray, ...]:
    """One-to-one pairs: repeatedly keep the pairs that are each other's nearest."""
    keep_s, keep_o = [], []
    while src.size:
        by_src = np.lexsort((d2, src))
        first_s = by_src[np.r_[True, src[by_src][1:] != src[by_src][:-1]]]
        by_obj = np.lexsort((d2, obj))
        first_o = by_obj[np.r_[True, obj[by_obj][1:] != obj[by_obj][:-1]]]
        mutual = np.intersect1d(first_s, first_o)
        keep_s.append(src[mutual])
        keep_o.append(obj[mutual])
        left = ~(np.isin(src, src[mutual]) | np.isin(obj, obj[mutual]))
        src, obj, d2 = src[left], obj[left], d2[left]
    if not keep_s:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(keep_s), np.concatenate(keep_o)


@dataclass
class Detections:
    """The detections a unit works on (arrays of equal length)."""

    image: np.ndarray  # index into the unit's image list
    source_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    weight: np.ndarray  # 1 / sigma_position^2, arcsec^-2
    mjd: np.ndarray
    night: np.ndarray  # night index, -1 unknown
    band: np.ndarray  # band index
    mag: np.ndarray  # calibrated (mag_apcorr when measured, else mag); NaN when unusable
    mag_err: np.ndarray
    obj: np.ndarray  # object index (existing associations), -1: to be matched

    def __len__(self) -> int:
        return len(self.ra)

    def take(self, index) -> Detections:
        return Detections(**{k: v[index] for k, v in asdict(self).items()})


def associate(det: Detections, obj_ra: np.ndarray, obj_dec: np.ndarray, centre, radius: float,
              order: np.ndarray, obj_weight: np.ndarray | None = None) -> np.ndarray:
    """Link every detection with ``obj == -1`` to an object, image by image.

    *obj_ra/obj_dec*: the existing objects (seed positions), *obj_weight* their stored position
    weights (else those of their kept detections); *order*: detection indices to match,
    sorted by time then image. Returns ``obj`` for every detection; indices beyond the existing
    objects are new objects.
    """
    ra0, dec0 = centre
    x, y = tangent_plane(det.ra, det.dec, ra0, dec0)
    ox, oy = tangent_plane(obj_ra, obj_dec, ra0, dec0)
    n_old = len(obj_ra)
    result = det.obj.copy()
    # running weighted means, seeded with the kept detections of the existing objects
    kept = result >= 0
    capacity = n_old + len(order) + 1
    sw = np.zeros(capacity)
    sx, sy = np.zeros(capacity), np.zeros(capacity)
    w_kept = np.bincount(result[kept], det.weight[kept], minlength=capacity).astype(float)
    if obj_weight is not None:  # the stored statistics of the existing objects
        w_kept[:n_old] += obj_weight
    sw += w_kept
    sx[:n_old] = ox * w_kept[:n_old]
    sy[:n_old] = oy * w_kept[:n_old]
    seed = w_kept[:n_old] == 0  # existing object whose detections are all being redone
    sw[:n_old][seed], sx[:n_old][seed], sy[:n_old][seed] = 1e-9, ox[seed] * 1e-9, oy[seed] * 1e-9
    allx = np.concatenate([x, ox]) if len(x) or len(ox) else np.zeros(1)
    ally = np.concatenate([y, oy]) if len(y) or len(oy) else np.zeros(1)
    pad = 4 * radius
    index = CellIndex(allx.min() - pad, ally.min() - pad, np.ptp(allx) + 2 * pad,
                      np.ptp(ally) + 2 * pad, radius)
    index.add(0, ox, oy)
    n_obj = n_old
    images = det.image[order]
    # an object that keeps a detection of an image takes no other source of it: (image,
    # object) pairs of the images that also have detections to match (a repair, a margin
    # source no association read names), usually none
    taken = np.zeros(0, np.int64)
    if kept.any():
        mixed = kept & np.isin(det.image, sorted_unique(images))
        taken = sorted_unique(det.image[mixed] * (1 << 32) + result[mixed])
    bounds = np.r_[0, np.nonzero(images[1:] != images[:-1])[0] + 1, len(order)]
    for lo, hi in itertools.pairwise(bounds):
        members = order[lo:hi]
        mx, my, mw = x[members], y[members], det.weight[members]
        px, py = sx[:n_obj] / sw[:n_obj], sy[:n_obj] / sw[:n_obj]
        s, o, d2 = index.candidates(mx, my, px, py, radius)
        if taken.size and s.size:
            pair = images[lo] * (1 << 32) + o
            free = taken[np.minimum(np.searchsorted(taken, pair), taken.size - 1)] != pair
            s, o, d2 = s[free], o[free], d2[free]
        s, o = mutual_nearest(s, o, d2)
        result[members[s]] = o
        sw[o] += mw[s]
        sx[o] += mw[s] * mx[s]
        sy[o] += mw[s] * my[s]
        new = np.ones(len(members), bool)
        new[s] = False
        n_new = int(new.sum())
        ids = np.arange(n_obj, n_obj + n_new)
        result[members[new]] = ids
        sw[ids], sx[ids], sy[ids] = mw[new], mw[new] * mx[new], mw[new] * my[new]
        index.add(n_obj, mx[new], my[new])
        n_obj += n_new
    return result


# ---------------------------------------------------------------------------------------
# Statistics


def chi2_threshold(dof: np.ndarray, false_alarm: float) -> np.ndarray:
    """Upper chi2 quantile (Wilson-Hilferty), so no scipy is needed; dof >= 1."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - false_alarm)
    k = np.maximum(np.asarray(dof, float), 1.0)
    return k * (1 - 2 / (9 * k) + z * np.sqrt(2 / (9 * k))) ** 3


def error_scale(phot: dict, n_bands: int, min_objects: int = 20) -> np.ndarray:
    """Per band: how much the quoted errors understate the scatter of (mostly constant) objects.

    The median reduced chi2 of the objects with enough points (at least 1: errors are never
    shrunk); 1 when fewer than *min_objects* objects can tell.
    """
    scale = np.ones(max(n_bands, 1))
    enough = phot["n"] >= MIN_VARIABLE_POINTS
    for b in range(n_bands):
        values = phot["chi2_reduced"][enough & (phot["band"] == b)]
        if values.size >= min_objects:
            scale[b] = max(1.0, float(np.median(values)))
    return scale


@dataclass
class Stats:
    """Sufficient statistics of objects (index = object) and of (object, band) photometry.

    Kept beside each unit's tables (``objects/hpx5=P/_stats-k<K>-<N>.parquet``, skipped by
    Parquet readers) so that a new night merges into them without re-reading old sources.
    """

    sw: np.ndarray  # sum of position weights
    vec: np.ndarray  # (n, 3) weighted sum of unit vectors
    n_det: np.ndarray
    first: np.ndarray  # min mjd (inf: none)
    last: np.ndarray  # max mjd (-inf: none)
    night_pairs: np.ndarray  # unique obj * NIGHT_SPAN + night (ordinal day)
    p_key: np.ndarray  # obj * N_BANDS_MAX + band index, sorted
    p_n: np.ndarray
    p_sw: np.ndarray  # sum of photometric weights
    p_mean: np.ndarray  # weighted mean magnitude
    p_m2w: np.ndarray  # sum w (m - mean)^2
    p_mu: np.ndarray  # unweighted mean
    p_m2u: np.ndarray  # sum (m - mu)^2

    def __len__(self) -> int:
        return len(self.sw)


NIGHT_SPAN = 1 << 22  # ordinal days (0001-01-01 = 1) stay below this
N_BANDS_MAX = 1 << 12


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy 2.3's hash-based unique took ~40 ms per call on
    arrays of a few 100,000 int64 here; sorting takes ~2 ms)."""
    s = np.sort(np.asarray(values))
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


def _group(key: np.ndarray):
    """``(unique keys, inverse)`` by sorting."""
    order = np.argsort(key, kind="stable")
    sk = key[order]
    start = np.r_[True, sk[1:] != sk[:-1]] if sk.size else np.zeros(0, bool)
    inv = np.empty(len(key), np.int64)
    inv[order] = np.cumsum(start) - 1
    return sk[start], inv


def detection_stats(det: Detections, n_obj: int, floor: float) -> Stats:
    """The statistics of *det* (``det.obj`` set; ``det.band`` a band index)."""
    o = det.obj
    vec = unit_vectors(det.ra, det.dec) * det.weight[:, None]
    first = np.full(n_obj, np.inf)
    last = np.full(n_obj, -np.inf)
    good = np.isfinite(det.mjd)
    np.minimum.at(first, o[good], det.mjd[good])
    np.maximum.at(last, o[good], det.mjd[good])
    known = det.night >= 0
    use = np.isfinite(det.mag) & np.isfinite(det.mag_err) & (det.mag_err > 0)
    m, e = det.mag[use], det.mag_err[use]
    w = 1 / (e**2 + floor**2)
    uk, inv = _group(o[use].astype(np.int64) * N_BANDS_MAX + det.band[use])
    n = np.bincount(inv, minlength=len(uk)).astype(float)
    sw = np.bincount(inv, w, minlength=len(uk))
    mean = np.bincount(inv, w * m, minlength=len(uk)) / np.where(sw > 0, sw, 1)
    mu = np.bincount(inv, m, minlength=len(uk)) / np.where(n > 0, n, 1)
    return Stats(
        sw=np.bincount(o, det.weight, minlength=n_obj),
        vec=np.stack([np.bincount(o, vec[:, i], minlength=n_obj) for i in range(3)], axis=1),
        n_det=np.bincount(o, minlength=n_obj), first=first, last=last,
        night_pairs=sorted_unique(o[known].astype(np.int64) * NIGHT_SPAN + det.night[known]),
        p_key=uk, p_n=n, p_sw=sw, p_mean=mean,
        p_m2w=np.bincount(inv, w * (m - mean[inv]) ** 2, minlength=len(uk)),
        p_mu=mu, p_m2u=np.bincount(inv, (m - mu[inv]) ** 2, minlength=len(uk)))


def merge_stats(a: Stats, b: Stats) -> Stats:
    """Statistics of the union of two sets of detections (same object indexing; *b* may
    hold more objects). Means and squared deviations merge exactly (Chan et al.)."""
    n_obj = max(len(a), len(b))

    def pad(x, fill):
        out = np.full((n_obj, *x.shape[1:]), fill, dtype=x.dtype if x.dtype != int else float)
        out[:len(x)] = x
        return out

    keys = sorted_unique(np.concatenate([a.p_key, b.p_key]))
    ia, ib = np.searchsorted(keys, a.p_key), np.searchsorted(keys, b.p_key)

    def spread(idx, values):
        out = np.zeros(len(keys))
        out[idx] = values
        return out

    na, nb = spread(ia, a.p_n), spread(ib, b.p_n)
    wa, wb = spread(ia, a.p_sw), spread(ib, b.p_sw)
    ma, mb = spread(ia, a.p_mean), spread(ib, b.p_mean)
    ua, ub = spread(ia, a.p_mu), spread(ib, b.p_mu)
    n, sw = na + nb, wa + wb
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sw > 0, (wa * ma + wb * mb) / sw, 0.0)
        mu = np.where(n > 0, (na * ua + nb * ub) / n, 0.0)
        m2w = (spread(ia, a.p_m2w) + spread(ib, b.p_m2w)
               + np.where(sw > 0, wa * wb / sw, 0.0) * (ma - mb) ** 2)
        m2u = (spread(ia, a.p_m2u) + spread(ib, b.p_m2u)
               + np.where(n > 0, na * nb / n, 0.0) * (ua - ub) ** 2)
    return Stats(
        sw=pad(a.sw, 0.0) + pad(b.sw, 0.0), vec=pad(a.vec, 0.0) + pad(b.vec, 0.0),
        n_det=pad(a.n_det, 0) + pad(b.n_det, 0),
        first=np.minimum(pad(a.first, np.inf), pad(b.first, np.inf)),
        last=np.maximum(pad(a.last, -np.inf), pad(b.last, -np.inf)),
        night_pairs=sorted_unique(np.concatenate([a.night_pairs, b.night_pairs])),
        p_key=keys, p_n=n, p_sw=sw, p_mean=mean, p_m2w=m2w, p_mu=mu, p_m2u=m2u)


def derive(stats: Stats, n_bands: int, false_alarm: float) -> tuple[dict, dict]:
    """The published columns of ``objects`` and ``object_photometry`` from the statistics."""
    n_obj = len(stats)
    with np.errstate(invalid="ignore", divide="ignore"):  # objects left without detections
        ra, dec = vectors_to_radec(stats.vec)
        pos_err = np.where(stats.sw > 0, 1 / np.sqrt(stats.sw), np.nan)
    n_nights = np.bincount(stats.night_pairs // NIGHT_SPAN, minlength=n_obj)[:n_obj]
    objects = {"ra": ra, "dec": dec, "ra_err": pos_err, "dec_err": pos_err,
               "n_detections": stats.n_det, "n_nights": n_nights,
               "first_mjd": np.where(np.isfinite(stats.first), stats.first, np.nan),
               "last_mjd": np.where(np.isfinite(stats.last), stats.last, np.nan)}
    n = stats.p_n
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2_red = np.where(n > 1, stats.p_m2w / (n - 1), np.nan)
        scatter = np.where(n > 1, np.sqrt(stats.p_m2u / (n - 1)), np.nan)
        err = 1 / np.sqrt(stats.p_sw)
    phot = {"obj": stats.p_key // N_BANDS_MAX, "band": stats.p_key % N_BANDS_MAX,
            "n": n.astype(np.int64), "mean_mag": stats.p_mean, "mean_mag_err": err,
            "scatter": scatter, "chi2_reduced": chi2_red}
    scale = error_scale(phot, n_bands)
    flagged = ((n >= MIN_VARIABLE_POINTS)
               & (stats.p_m2w / scale[phot["band"]] > chi2_threshold(n - 1, false_alarm)))
    variable = np.zeros(n_obj, bool)
    variable[phot["obj"][flagged]] = True
    objects["variable"] = variable
    objects["transient_candidate"] = n_nights == 1
    return objects, phot


def object_statistics(det: Detections, n_obj: int, bands: Sequence[str], floor: float,
                      false_alarm: float) -> tuple[dict, dict]:
    """Per-object columns and the per-(object, band) photometry of all detections."""
    return derive(detection_stats(det, n_obj, floor), len(bands), false_alarm)


# ---------------------------------------------------------------------------------------
# Reading the catalog


SOURCE_COLUMNS = ("source_id", "ra", "dec", "mag", "mag_err", "mag_apcorr", "mag_apcorr_err",
                  "flags", "snr", "fwhm", "_healpix_29")


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


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table[name].cast(pa.float64()).to_numpy(zero_copy_only=False).astype(float)


def source_arrays(table: pa.Table, pixel_scale: float | None) -> dict[str, np.ndarray]:
    """Positions, position weights and calibrated magnitudes of one image's sources."""
    ra, dec = _floats(table, "ra"), _floats(table, "dec")
    mag_ap, err_ap = _floats(table, "mag_apcorr"), _floats(table, "mag_apcorr_err")
    mag, err = _floats(table, "mag"), _floats(table, "mag_err")
    has_ap = np.isfinite(mag_ap) & np.isfinite(err_ap)
    m = np.where(has_ap, mag_ap, mag)
    e = np.where(has_ap, err_ap, err)
    flags = table["flags"].cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    m = np.where((flags & PHOT_BAD_FLAGS) == 0, m, np.nan)
    snr = np.clip(np.nan_to_num(_floats(table, "snr"), nan=1.0), 1.0, None)
    fwhm = _floats(table, "fwhm") * (pixel_scale or np.nan)
    sigma = np.where(np.isfinite(fwhm), fwhm / (2.3548 * snr), 0.3)
    sigma = np.sqrt(sigma**2 + 0.01**2)  # 10 mas floor: no detection is perfect
    hp = table["_healpix_29"].cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    sid = table["source_id"].cast(pa.int32()).to_numpy(zero_copy_only=False)
    return {"source_id": sid, "ra": ra, "dec": dec, "weight": 1 / sigma**2, "mag": m,
            "mag_err": e, "hp29": hp}


# ---------------------------------------------------------------------------------------
# One unit: read, associate, write


@dataclass
class UnitTask:
    """What one unit (a NESTED HEALPix pixel) does; also the Lambda event, as a dict."""

    catalog: str
    staging: str  # key prefix under the catalog where this build's tables go
    unit: int
    unit_order: int
    radius_arcsec: float
    margin_order: int
    floor: float
    false_alarm: float
    images: list[dict]  # image_id, key, mjd, night, band, pixel_scale, redo, new (bools)
    nights: list[str]
    bands: list[str]
    existing_layout: bool  # existing tables are in this layout (else: scan them whole)
    rebuild: bool = False
    fast: bool = False  # only new images: merge into the stored statistics (no old sources)
    #: a repair (:func:`plan_repair`): the units restored together, and the table files
    #: (keys under the catalog) not to read, lost or changed since the build that wrote them
    repair: list[int] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)

    def event(self) -> dict:
        """The Lambda event; ``repair`` and ``skip`` only in a repair (a function of the
        previous version runs the other units as before)."""
        fields = {k: v for k, v in asdict(self).items() if v or k not in ("repair", "skip")}
        return {"task": "objects_unit", **fields}


#: what a unit reads of the existing objects and associations around it
EXISTING_OBJECTS = pa.schema([("object_id", pa.int64()), ("ra", pa.float64()),
                              ("dec", pa.float64())])
EXISTING_ASSOCIATIONS = pa.schema([("image_id", pa.string()), ("source_id", pa.int32()),
                                   ("object_id", pa.int64())])


def _empty_existing():
    return (np.zeros(0, np.int64), np.zeros(0), np.zeros(0), EXISTING_ASSOCIATIONS.empty_table())


def _read_existing(store, task: UnitTask):
    """Existing objects (id, ra, dec) and associations around the unit."""
    if task.rebuild:
        return _empty_existing()
    objs, assocs = [], []
    if task.existing_layout:
        near = neighbours(np.array([task.unit]), task.unit_order)[:, 0]
        skip = set(task.skip)
        for u in near[near >= 0]:
            okey, akey = (unit_key(t, int(u), task.unit_order) for t in ("objects", "associations"))
            found = (None if okey in skip
                     else read_parquet_or_none(store, okey, ["object_id", "ra", "dec"]))
            if found is not None:
                objs.append(found)
            if (found is not None or okey in skip) and akey not in skip:
                # (a lost objects file: its associations still give the ids, see _lost_objects)
                found = read_parquet_or_none(store, akey, ["image_id", "source_id", "object_id"])
                if found is not None:
                    assocs.append(found)
    else:
        for info in _list(store, "objects/"):
            if info.endswith(".parquet"):
                objs.append(read_parquet(store, info, ["object_id", "ra", "dec"]))
        for info in _list(store, "associations/"):
            if info.endswith(".parquet"):
                assocs.append(read_parquet(store, info, ["image_id", "source_id", "object_id"]))
    if not objs and not assocs:
        return _empty_existing()
    o = pa.concat_tables([EXISTING_OBJECTS.empty_table(),
                          *(t.cast(EXISTING_OBJECTS) for t in objs)])
    ids = o["object_id"].to_numpy()
    ra, dec = _floats(o, "ra"), _floats(o, "dec")
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not task.existing_layout:  # whole table read: keep what lies around the unit
        fine = healpix(ra[ok], dec[ok], task.margin_order)
        ok[ok] = in_region(fine, task.margin_order, task.unit, task.unit_order)
    a = pa.concat_tables([EXISTING_ASSOCIATIONS.empty_table(),
                          *(t.cast(EXISTING_ASSOCIATIONS) for t in assocs)])
    return ids[ok], ra[ok], dec[ok], a


def _list(store, prefix: str) -> list[str]:
    try:
        return [i.key for i in store.list(prefix)]
    except SkySurveyError:
        return []


def _read_unit_detections(store, task: UnitTask) -> tuple[Detections, dict]:
    """Sources of the task's images that lie in the unit or its margin, and per image
    ``[sources with a position, those inside the unit itself]`` (the driver checks that every
    source was inside some unit)."""
    parts, coverage = [], {}
    for i, img in enumerate(task.images):
        table = read_parquet(store, img["key"], SOURCE_COLUMNS)
        cols = source_arrays(table, img.get("pixel_scale"))
        good = np.isfinite(cols["ra"]) & np.isfinite(cols["dec"])
        cols = {k: v[good] for k, v in cols.items()}
        shift = 2 * (29 - task.margin_order)
        fine = np.where(cols["hp29"] >= 0, cols["hp29"] >> shift, -1)
        missing = fine < 0
        if missing.any():
            fine[missing] = healpix(cols["ra"][missing], cols["dec"][missing],
                                    task.margin_order)
        keep = in_region(fine, task.margin_order, task.unit, task.unit_order)
        core = (fine >> 2 * (task.margin_order - task.unit_order)) == task.unit
        coverage[img["image_id"]] = [int(good.sum()), int(core.sum())]
        n = int(keep.sum())
        parts.append({"image": np.full(n, i, np.int64),
                      "mjd": np.full(n, np.nan if img["mjd"] is None else img["mjd"]),
                      "night": np.full(n, img["night"], np.int64),
                      "band": np.full(n, img["band"], np.int64),
                      **{k: v[keep] for k, v in cols.items() if k != "hp29"}})
    if not parts:
        return _no_detections(), coverage
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    merged["obj"] = np.full(len(merged["ra"]), -1, np.int64)
    return Detections(**merged), coverage


def run_unit(task: UnitTask, store=None) -> dict:
    """Associate one unit and write its three tables under ``task.staging``; the reply."""
    start = time.perf_counter()
    store = store or open_store(task.catalog)
    if task.fast:
        return _run_unit_fast(task, store, start)
    det, coverage = _read_unit_detections(store, task)
    old_ids, old_ra, old_dec, old_assoc = _read_existing(store, task)
    if task.repair:  # objects of a lost objects file keep their ids
        old_ids, old_ra, old_dec = _lost_objects(det, task.images, old_ids, old_ra, old_dec,
                                                 old_assoc)
    # existing associations of images that are not redone: fixed links
    redo = {img["image_id"] for img in task.images if img["redo"]}
    image_index = {img["image_id"]: i for i, img in enumerate(task.images)}
    if old_assoc.num_rows and len(det):
        import pyarrow.compute as pc

        kept_ids = [i for i in image_index if i not in redo]
        a_img_kept = pc.index_in(old_assoc["image_id"], value_set=pa.array(kept_ids, pa.string()))
        a_img_kept = a_img_kept.fill_null(-1).to_numpy(zero_copy_only=False)
        lookup = np.array([image_index[i] for i in kept_ids] + [-1], np.int64)
        a_img = lookup[a_img_kept]  # -1 -> the sentinel at the end
        a_src = old_assoc["source_id"].to_numpy(zero_copy_only=False).astype(np.int64)
        a_obj = old_assoc["object_id"].to_numpy(zero_copy_only=False)
        a_idx = link(old_ids, np.arange(len(old_ids)), a_obj)
        ok = (a_img >= 0) & (a_idx >= 0)
        det.obj = link(a_img[ok] * (1 << 32) + a_src[ok], a_idx[ok],
                       det.image * (1 << 32) + det.source_id.astype(np.int64))
    todo = np.nonzero(det.obj < 0)[0]
    order = todo[np.lexsort((det.source_id[todo], det.image[todo],
                             np.nan_to_num(det.mjd[todo], nan=np.inf)))]
    centre = pixel_centre(task.unit, task.unit_order)
    det.obj = associate(det, old_ra, old_dec, centre, task.radius_arcsec, order)
    # only objects that have detections survive (an object whose detections all vanished
    # on reprocessing is dropped, and counted)
    n_obj = max(int(det.obj.max(initial=-1)) + 1, len(old_ids))
    stats = detection_stats(det, n_obj, task.floor)
    objects, phot = derive(stats, len(task.bands), task.false_alarm)
    alive = objects["n_detections"] > 0
    own = np.zeros(n_obj, bool)
    own[alive] = healpix(objects["ra"][alive], objects["dec"][alive],
                         task.unit_order) == task.unit
    n_old = len(old_ids)
    ids = np.full(n_obj, -1, np.int64)
    ids[:n_old] = old_ids
    new_owned = np.nonzero(own[n_old:])[0] + n_old
    ids[new_owned] = _new_ids(objects, new_owned, old_ids)
    dropped = int((~alive[:n_old]).sum()) if n_old else 0
    dropped_own = 0
    if dropped:
        old_pix = healpix(old_ra, old_dec, task.unit_order)
        dropped_own = int(((~alive[:n_old]) & (old_pix == task.unit)).sum())
    repair = {}
    if task.repair:  # (a redone image's detections: the next phase redoes every unit)
        redone = np.array([img["redo"] for img in task.images], bool)[det.image]
        _check_relinked(task, det.obj[todo[~redone[todo]]], own, objects)
        # new objects with a detection of an image not redone: an object whose id was lost
        linked = np.bincount(det.obj[~redone], minlength=n_obj) > 0
        repair = {"n_renumbered": int(linked[new_owned].sum())}
    files = _write_unit(store, task, objects, phot, det, ids, own, stats)
    return {"status": "ok", "unit": task.unit, "unit_order": task.unit_order,
            "n_objects": int(own.sum()), "n_new_objects": len(new_owned), **repair,
            "n_associations": int(own[det.obj].sum()) if len(det) else 0,
            "n_dropped_objects": dropped_own, "files": files,
            "keys": [f"{task.staging}/{k}" for k in files], "coverage": coverage,
            "seconds": round(time.perf_counter() - start, 3), "error": None}


def _lost_objects(det: Detections, images: list[dict], ids: np.ndarray, ra: np.ndarray,
                  dec: np.ndarray, assoc: pa.Table):
    """The objects that associations name but no objects file holds (their file was lost):
    appended to (ids, ra, dec), each at the weighted mean of its linked detections (of images
    not redone: a reprocessed image's source ids name other sources), so the links are kept
    and the ids too."""
    import pyarrow.compute as pc

    a_obj = assoc["object_id"].to_numpy(zero_copy_only=False)
    lost = ~np.isin(a_obj, ids)
    if not lost.any() or not len(det):
        return ids, ra, dec
    names = pa.array([None if img["redo"] else img["image_id"] for img in images], pa.string())
    a_img = pc.index_in(assoc["image_id"], value_set=names).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)[lost]
    a_src = assoc["source_id"].to_numpy(zero_copy_only=False).astype(np.int64)[lost]
    row = link(det.image * (1 << 32) + det.source_id.astype(np.int64), np.arange(len(det)),
               a_img * (1 << 32) + a_src)
    ok = (a_img >= 0) & (row >= 0)
    found, inv = _group(a_obj[lost][ok])
    rows = row[ok]
    vec = unit_vectors(det.ra[rows], det.dec[rows]) * det.weight[rows, None]
    sums = np.stack([np.bincount(inv, vec[:, i], minlength=len(found)) for i in range(3)], 1)
    lra, ldec = vectors_to_radec(sums)
    return np.r_[ids, found], np.r_[ra, lra], np.r_[dec, ldec]


def _check_relinked(task: UnitTask, relinked: np.ndarray, own: np.ndarray,
                    objects: dict) -> None:
    """A repair re-links the detections of the lost files; one that now joins an object of a
    unit not being restored would be written by nobody: ObjectsError (never lost silently)."""
    other = relinked[~own[relinked]]
    if not other.size:
        return
    home = healpix(objects["ra"][other], objects["dec"][other], task.unit_order)
    away = sorted(set(home.tolist()) - set(task.repair))
    if away:
        n = int(np.isin(home, away).sum())
        raise ObjectsError(f"unit {task.unit}", f"{n} detection(s) of its lost files now "
                           f"match objects of unit(s) {away[:5]}, which are not being restored: "
                           "run with --rebuild")


def link(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == query] for each query (-1 where absent)."""
    out = np.full(len(query), -1, np.int64)
    if not len(keys):
        return out
    sorter = np.argsort(keys)
    where = np.clip(np.searchsorted(keys, query, sorter=sorter), 0, len(keys) - 1)
    hit = keys[sorter[where]] == query
    out[hit] = values[sorter[where[hit]]]
    return out


def _new_ids(objects: dict, new: np.ndarray, old_ids: np.ndarray) -> np.ndarray:
    """Ids for new objects: order-13 pixel << 33 | next free sequence in that pixel."""
    if not len(new):
        return np.zeros(0, np.int64)
    prefix = healpix(objects["ra"][new], objects["dec"][new], ID_ORDER)
    order = np.lexsort((objects["dec"][new], objects["ra"][new],
                        np.nan_to_num(objects["first_mjd"][new], nan=np.inf), prefix))
    out = np.zeros(len(new), np.int64)
    old_prefix = old_ids >> ID_SHIFT
    old_seq = old_ids & ((1 << ID_SHIFT) - 1)
    sp = prefix[order]
    starts = np.r_[True, sp[1:] != sp[:-1]]
    run_start = np.maximum.accumulate(np.where(starts, np.arange(len(sp)), 0))
    rank = np.arange(len(sp)) - run_start
    base = np.zeros(len(sp), np.int64)
    for p in np.unique(sp):
        mine = old_seq[old_prefix == p]
        base[sp == p] = int(mine.max()) + 1 if mine.size else 0
    out[order] = (sp << ID_SHIFT) | (base + rank)
    return out


def _write_unit(store, task: UnitTask, objects, phot, det: Detections, ids, own,
                stats: Stats, kept_assoc: pa.Table | None = None) -> dict[str, dict]:
    """The unit's three tables (objects it owns) and its statistics sidecars, written under
    ``task.staging``; returns what the build record lists of each (:func:`file_entry`), by
    table key."""
    files = {}
    idx = np.nonzero(own)[0]
    idx = idx[np.argsort(ids[idx])]
    hp29 = healpix(objects["ra"][idx], objects["dec"][idx], 29)
    otab = pa.table({
        "object_id": pa.array(ids[idx], pa.int64()),
        "ra": objects["ra"][idx], "dec": objects["dec"][idx],
        "ra_err": objects["ra_err"][idx], "dec_err": objects["dec_err"][idx],
        "_healpix_29": pa.array(hp29, pa.int64()),
        "n_detections": pa.array(objects["n_detections"][idx], pa.int32()),
        "n_nights": pa.array(objects["n_nights"][idx], pa.int32()),
        "first_mjd": pa.array(objects["first_mjd"][idx], pa.float64(), from_pandas=True),
        "last_mjd": pa.array(objects["last_mjd"][idx], pa.float64(), from_pandas=True),
        "variable": objects["variable"][idx],
        "transient_candidate": objects["transient_candidate"][idx],
        "pipeline_version": pa.array([__version__] * len(idx), pa.string()),
    }, schema=OBJECTS_SCHEMA)
    sel = own[phot["obj"]]
    pid = ids[phot["obj"][sel]]
    porder = np.lexsort((phot["band"][sel], pid))
    bands = np.array(task.bands or ["unknown"], dtype=object)
    ptab = pa.table({
        "object_id": pa.array(pid[porder], pa.int64()),
        "band": pa.array(bands[phot["band"][sel][porder]].tolist(), pa.string()),
        "n": pa.array(phot["n"][sel][porder], pa.int32()),
        **{c: pa.array(phot[c][sel][porder], pa.float64(), from_pandas=True)
           for c in ("mean_mag", "mean_mag_err", "scatter", "chi2_reduced")},
    }, schema=OBJECT_PHOTOMETRY_SCHEMA)
    dsel = np.nonzero(own[det.obj])[0] if len(det) else np.zeros(0, np.int64)
    o = det.obj[dsel]
    sep = separation_arcsec(det.ra[dsel], det.dec[dsel], objects["ra"][o], objects["dec"][o])
    image_ids = np.array([img["image_id"] for img in task.images] or [""], dtype=object)
    aorder = np.lexsort((det.source_id[dsel], det.image[dsel], ids[o]))  # light curves: by id
    atab = pa.table({
        "image_id": pa.array(image_ids[det.image[dsel][aorder]].tolist(), pa.string()),
        "source_id": pa.array(det.source_id[dsel][aorder], pa.int32()),
        "object_id": pa.array(ids[o][aorder], pa.int64()),
        "separation_arcsec": sep[aorder],
    }, schema=ASSOCIATIONS_SCHEMA)
    if kept_assoc is not None and kept_assoc.num_rows:
        atab = pa.concat_tables([kept_assoc.cast(ASSOCIATIONS_SCHEMA), atab]).sort_by(
            [("object_id", "ascending"), ("image_id", "ascending"),
             ("source_id", "ascending")])
    sides = _stats_tables(stats, idx, ids, task.bands)
    for name, table in (("objects", otab), ("object_photometry", ptab),
                        ("associations", atab), ("objects/_stats", sides[0]),
                        ("object_photometry/_stats", sides[1])):
        if table.num_rows == 0:
            continue
        key = unit_key(name, task.unit, task.unit_order)
        sink = io.BytesIO()
        # rows sorted by object id (~ by position: ids start with the order-13 pixel), in
        # small row groups, so that _healpix_29 and object_id statistics prune a cone search
        # or a light curve to a few row groups
        strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
        pq.write_table(table, sink, compression="zstd", use_dictionary=strings,
                       row_group_size=ROW_GROUP_ROWS * (4 if name == "associations" else 1))
        data = sink.getvalue()
        store.write_bytes(f"{task.staging}/{key}", data,
                          content_type="application/vnd.apache.parquet")
        files[key] = file_entry(data, table.num_rows)
    return files


def file_entry(data: bytes, rows: int | None) -> dict:
    """What the build record keeps of a file it wrote: size, SHA-256 (what an S3 object's
    ``sha256`` metadata holds) and rows."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


# ---------------------------------------------------------------------------------------
# Incremental fast path: new images merge into the stored statistics


def _stats_tables(stats: Stats, idx: np.ndarray, ids: np.ndarray,
                  bands: Sequence[str]) -> tuple[pa.Table, pa.Table]:
    """Sidecar tables of the objects *idx* (rows in that order)."""
    pos = np.full(len(stats), -1, np.int64)
    pos[idx] = np.arange(len(idx))
    pairs = stats.night_pairs[np.isin(stats.night_pairs // NIGHT_SPAN, idx)]
    owner = pos[pairs // NIGHT_SPAN]
    order = np.argsort(owner, kind="stable")
    offsets = np.searchsorted(owner[order], np.arange(len(idx) + 1))
    nights = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                      pa.array((pairs % NIGHT_SPAN)[order], pa.int32()))
    otab = pa.table({"object_id": pa.array(ids[idx], pa.int64()), "sw": stats.sw[idx],
                     "vx": stats.vec[idx, 0], "vy": stats.vec[idx, 1], "vz": stats.vec[idx, 2],
                     "n_det": pa.array(stats.n_det[idx], pa.int64()),
                     "first": stats.first[idx], "last": stats.last[idx], "nights": nights})
    obj = stats.p_key // N_BANDS_MAX
    sel = np.nonzero(pos[obj] >= 0)[0] if len(obj) else np.zeros(0, np.int64)
    names = np.array([*bands, "unknown"], dtype=object)
    ptab = pa.table({"object_id": pa.array(ids[obj[sel]], pa.int64()),
                     "band": pa.array(names[stats.p_key[sel] % N_BANDS_MAX].tolist(),
                                      pa.string()),
                     "n": stats.p_n[sel], "sw": stats.p_sw[sel], "mean": stats.p_mean[sel],
                     "m2w": stats.p_m2w[sel], "mu": stats.p_mu[sel], "m2u": stats.p_m2u[sel]})
    return otab, ptab


_POSITION_COLUMNS = ["object_id", "sw", "vx", "vy", "vz", "n_det", "first", "last"]


def _read_stats(store, task: UnitTask, bands: list[str], full_units: set[int]):
    """Stored statistics of the unit and its neighbours: (ids, home unit, Stats).

    Only the units in *full_units* are read whole; for the others, the positions (enough to
    match against; their objects are written by their own unit) without nights or photometry.
    """
    import pyarrow.compute as pc

    otabs, ptabs, homes = [], [], []
    near = neighbours(np.array([task.unit]), task.unit_order)[:, 0]
    for u in near[near >= 0]:
        full = int(u) in full_units
        t = read_parquet_or_none(store, unit_key("objects/_stats", int(u), task.unit_order),
                                 None if full else _POSITION_COLUMNS)
        if t is not None:
            if not full:
                t = t.append_column("nights", pa.array([[]] * t.num_rows,
                                                       pa.list_(pa.int32())))
            otabs.append(t.select([*_POSITION_COLUMNS, "nights"]))
            homes.append(np.full(t.num_rows, int(u), np.int64))
            if full:
                p = read_parquet_or_none(
                    store, unit_key("object_photometry/_stats", int(u), task.unit_order))
                if p is not None:
                    ptabs.append(p)
    if not otabs:
        empty = detection_stats(_no_detections(), 0, task.floor)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), empty
    o = pa.concat_tables(otabs)
    ids = o["object_id"].to_numpy()
    n = len(ids)
    lists = o["nights"].combine_chunks()
    parents = np.asarray(pc.list_parent_indices(lists), np.int64)
    values = np.asarray(lists.flatten(), np.int64)
    stats = Stats(sw=o["sw"].to_numpy(), vec=np.stack([o["vx"].to_numpy(), o["vy"].to_numpy(),
                                                       o["vz"].to_numpy()], axis=1),
                  n_det=o["n_det"].to_numpy(), first=o["first"].to_numpy(),
                  last=o["last"].to_numpy(),
                  night_pairs=sorted_unique(parents * NIGHT_SPAN + values),
                  p_key=np.zeros(0, np.int64), p_n=np.zeros(0), p_sw=np.zeros(0),
                  p_mean=np.zeros(0), p_m2w=np.zeros(0), p_mu=np.zeros(0), p_m2u=np.zeros(0))
    if ptabs:
        p = pa.concat_tables(ptabs)
        index = {b: i for i, b in enumerate(bands)}
        for b in p["band"].unique().to_pylist():
            if b not in index:
                index[b] = len(bands)
                bands.append(b)
        band = np.array([index[b] for b in p["band"].to_pylist()], np.int64)
        obj = link(ids, np.arange(n), p["object_id"].to_numpy())
        ok = obj >= 0
        key = obj[ok] * N_BANDS_MAX + band[ok]
        order = np.argsort(key)
        stats.p_key = key[order]
        for name, col in (("p_n", "n"), ("p_sw", "sw"), ("p_mean", "mean"), ("p_m2w", "m2w"),
                          ("p_mu", "mu"), ("p_m2u", "m2u")):
            setattr(stats, name, p[col].to_numpy()[ok][order])
    return ids, np.concatenate(homes), stats


def _no_detections() -> Detections:
    cols = {k: np.zeros(0) for k in ("ra", "dec", "weight", "mjd", "mag", "mag_err")}
    ints = {k: np.zeros(0, np.int64) for k in ("image", "night", "band", "source_id", "obj")}
    return Detections(**cols, **ints)


def _kept_associations(store, task: UnitTask, ids: np.ndarray, homes: np.ndarray,
                       owned_old: np.ndarray) -> pa.Table:
    """Existing association rows of the old objects this unit owns now (from its own file,
    and from a neighbour's for an object whose mean moved across the border)."""
    import pyarrow.compute as pc

    tables = []
    for home in np.unique(homes[owned_old]):
        t = read_parquet_or_none(store, unit_key("associations", int(home), task.unit_order))
        if t is not None:
            mine = pa.array(ids[owned_old & (homes == home)], pa.int64())
            tables.append(t.filter(pc.is_in(t["object_id"], value_set=mine)))
    return pa.concat_tables(tables) if tables else None


def _run_unit_fast(task: UnitTask, store, start: float) -> dict:
    """Only new images: match them against the stored objects and merge the statistics."""
    from dataclasses import replace

    bands = list(task.bands)
    old_ids, homes, old = _read_stats(store, task, bands, {task.unit})
    task = replace(task, images=[img for img in task.images if img.get("new")])
    det, coverage = _read_unit_detections(store, task)
    with np.errstate(invalid="ignore", divide="ignore"):
        old_ra, old_dec = vectors_to_radec(old.vec)
    todo = np.arange(len(det))
    order = todo[np.lexsort((det.source_id, det.image, np.nan_to_num(det.mjd, nan=np.inf)))]
    det.obj = associate(det, old_ra, old_dec, pixel_centre(task.unit, task.unit_order),
                        task.radius_arcsec, order, obj_weight=old.sw)
    n_old = len(old_ids)
    n_obj = max(int(det.obj.max(initial=-1)) + 1, n_old)
    new_stats = detection_stats(det, n_obj, task.floor)
    stats = merge_stats(old, new_stats)
    with np.errstate(invalid="ignore", divide="ignore"):
        ra, dec = vectors_to_radec(stats.vec)
    alive = stats.n_det > 0
    own = np.zeros(n_obj, bool)
    own[alive] = healpix(ra[alive], dec[alive], task.unit_order) == task.unit
    migrated = set(homes[own[:n_old] & (homes != task.unit)].tolist())
    if migrated:  # objects whose mean crossed into this unit: their whole statistics
        again = _read_stats(store, task, bands, {task.unit} | migrated)
        stats = merge_stats(again[2], new_stats)
    task = replace(task, bands=bands)
    objects, phot = derive(stats, len(bands), task.false_alarm)
    ids = np.full(n_obj, -1, np.int64)
    ids[:n_old] = old_ids
    new_owned = np.nonzero(own[n_old:])[0] + n_old
    ids[new_owned] = _new_ids(objects, new_owned, old_ids)
    kept = _kept_associations(store, task, old_ids, homes, own[:n_old])
    files = _write_unit(store, task, objects, phot, det, ids, own, stats, kept)
    n_kept = kept.num_rows if kept is not None else 0
    return {"status": "ok", "unit": task.unit, "unit_order": task.unit_order,
            "n_objects": int(own.sum()), "n_new_objects": len(new_owned),
            "n_associations": n_kept + (int(own[det.obj].sum()) if len(det) else 0),
            "n_new_associations": int(own[det.obj].sum()) if len(det) else 0,
            "n_dropped_objects": 0, "files": files,
            "keys": [f"{task.staging}/{k}" for k in files], "coverage": coverage,
            "seconds": round(time.perf_counter() - start, 3), "error": None}


def handle_unit_event(event: dict) -> dict:
    """The Lambda entry for one unit: ``{"task": "objects_unit", ...}`` (see README)."""
    fields = {k: v for k, v in event.items() if k != "task"}
    try:
        task = UnitTask(**fields)
    except TypeError as exc:
        return {"status": "error", "unit": event.get("unit"), "error": f"bad event: {exc}"}
    try:
        return run_unit(task)
    except SkySurveyError as exc:
        return {"status": "error", "unit": task.unit, "error": str(exc)}
    except Exception as exc:  # one line, never a crash of the whole build
        return {"status": "error", "unit": task.unit,
                "error": f"unit {task.unit}: unexpected {type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------------------
# The driver: plan, run the units, commit


@dataclass
class BuildReport:
    status: str = "ok"  # ok | unchanged | error
    n_images: int = 0
    n_new_images: int = 0
    n_redone_images: int = 0
    n_removed_images: int = 0
    n_images_without_wcs: int = 0
    n_objects: int = 0
    n_new_objects: int = 0
    n_associations: int = 0
    n_dropped_objects: int = 0
    n_units: int = 0
    unit_order: int = 0
    partitions: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        rows = [("status", self.status), ("images", self.n_images),
                ("new images", self.n_new_images), ("reprocessed images", self.n_redone_images),
                ("removed images", self.n_removed_images),
                ("images without WCS", self.n_images_without_wcs),
                ("objects", f"{self.n_objects:,}"), ("new objects", f"{self.n_new_objects:,}"),
                ("associations", f"{self.n_associations:,}"),
                ("dropped objects", self.n_dropped_objects),
                ("units (order)", f"{self.n_units} ({self.unit_order})"),
                ("seconds", f"{self.seconds:.1f}")]
        lines = ["Objects", "-" * 36] + [f"{k:<20}{v!s:>16}" for k, v in rows]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)


def night_ordinal(night: str | None) -> int:
    """A night ``YYYY-MM-DD`` as its proleptic ordinal day (-1 for unknown)."""
    from datetime import date

    try:
        return date.fromisoformat(str(night)).toordinal()
    except ValueError:
        return -1


def _fingerprint(row: dict) -> str:
    return f"{row.get('processed_at')}|{row.get('pipeline_version')}|{row.get('n_sources')}"


def read_images(catalog: str) -> list[dict]:
    """Rows of the ``images`` table with ``band``, ``night`` and the sources file key."""
    from .errors import QueryError
    from .queries import dataset

    try:
        data = dataset(catalog, "images", check=False)  # every file is read just below
    except QueryError:
        raise ObjectsError(catalog, "catalog without images (no images/ table): run "
                                    "scripts/invoke_lambda.py first") from None
    cols = ["image_id", "has_wcs", "ra_center", "dec_center", "width", "height", "pixel_scale",
            "mjd", "n_sources", "processed_at", "pipeline_version", "band", "night"]
    rows = data.to_table(columns=cols).to_pylist()
    for row in rows:  # the handler's own layout rule gives each image's sources file
        row["key"] = catalog_keys(row["image_id"], row["band"], row["night"])["sources"]
    return rows


def _load_state(store) -> dict | None:
    try:
        return json.loads(store.read_bytes(STATE_KEY))
    except (SkySurveyError, ValueError):  # no state yet, or not JSON
        return None


def _choose_unit_order(images: list[dict], workers: int) -> int:
    """Coarsest order (5..12) whose busiest pixel holds <= 1/(2 workers) of the sources
    (fewer, larger units: each unit re-reads its neighbours' files and its border images)."""
    total = sum(int(r["n_sources"] or 0) for r in images) or 1
    ra = np.array([r["ra_center"] for r in images], float)
    dec = np.array([r["dec_center"] for r in images], float)
    n = np.array([int(r["n_sources"] or 0) for r in images], float)
    target = max(total / (2 * max(workers, 1)), 20_000)
    for order in range(PARTITION_ORDER, 13):
        pix = healpix(ra, dec, order)
        _, inv = _group(pix)
        if np.bincount(inv, n).max() <= target:
            return order
    return 12


def _image_units(images: list[dict], order: int, margin_arcsec: float) -> list[np.ndarray]:
    """Unit pixels each image may touch: a disc around its centre (half diagonal + margin)."""
    from astropy import units as u
    from astropy_healpix import HEALPix

    grid = HEALPix(nside=2**order, order="nested")
    out = []
    for r in images:
        scale = r["pixel_scale"] or 1.0
        half = 0.5 * np.hypot(r["width"] or 0, r["height"] or 0) * scale
        radius = (half * 1.2 + margin_arcsec) / 3600  # 1.2: distortion, rounding
        out.append(np.asarray(grid.cone_search_lonlat(r["ra_center"] * u.deg,
                                                      r["dec_center"] * u.deg,
                                                      radius * u.deg), np.int64))
    return out


def recover(store) -> list[str]:
    """Finish a build interrupted after its ``_complete`` marker; drop unfinished ones."""
    notes = []
    for token in _staging_tokens(store):
        prefix = f"{STAGING}/{token}"
        if store.exists(f"{prefix}/_complete"):
            _commit(store, prefix)
            notes.append(f"finished the swap of an interrupted build ({token})")
        else:
            _discard(store, prefix)
            notes.append(f"discarded an unfinished build ({token}); previous tables kept")
    return notes


def _discard(store, prefix: str) -> None:
    store.clear(f"{prefix}/")
    if isinstance(store, LocalStore):
        with contextlib.suppress(OSError):
            (store.root / STAGING).rmdir()  # only when no other build is staged


def _staging_tokens(store) -> list[str]:
    if isinstance(store, LocalStore):
        base = store.root / STAGING
        return sorted(p.name for p in base.iterdir()) if base.is_dir() else []
    return sorted({k.split("/")[1] for k in _list(store, f"{STAGING}/")})


def _exchange(a: Path, b: Path) -> bool:
    """Exchange two directories atomically (Linux renameat2 RENAME_EXCHANGE); False if not."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def replace_dir(new: Path, target: Path, old: Path) -> None:
    """Put the directory *new* in place of *target* and delete the previous version: an atomic
    exchange where Linux has one, else two renames through *old* (a path beside *target*)."""
    if not target.exists():
        new.rename(target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now the previous version
        return
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _commit(store, prefix: str, listing: dict[str, int] | None = None) -> None:
    """Swap the staged tables in, table by table; idempotent (safe to redo after a crash).
    On S3, *listing* (:func:`table_listing`, taken under the build lock) gives the current
    files, else the tables are listed."""
    if isinstance(store, LocalStore):
        staged = store.root / prefix
        # the staged folders' inodes (``_complete``): after an exchange killed before the
        # previous version moved out of the way, the folder there is that previous version
        complete = store.read_bytes_or_none(f"{prefix}/_complete")
        inodes = json.loads(complete or b"{}").get("inodes", {})
        for table in TABLES:
            src = staged / table
            # else swapped already (an interrupted commit being finished)
            if src.exists() and inodes.get(table, src.stat().st_ino) == src.stat().st_ino:
                replace_dir(src, store.root / table, staged / f"old-{table}")
        shutil.rmtree(staged, ignore_errors=True)
        with contextlib.suppress(OSError):
            staged.parent.rmdir()  # only when no other build is staged
        return
    complete = store.read_bytes(f"{prefix}/_complete")
    touched = json.loads(complete or b"{}").get("touched")  # None: every unit was rebuilt
    # listed with store.list, not _list: a failed listing must stop here, not look empty and
    # let the loop below delete the current tables
    staged = [i for i in store.list(f"{prefix}/") if not i.key.endswith("/_complete")]
    new_keys = {i.key[len(prefix) + 1:] for i in staged}
    # while the copies run, the tables hold the marker (a copy of _complete: the units being
    # replaced); one still there once the staging is gone marks a swap that did not finish
    store.copy(f"{prefix}/_complete", SWAP_KEY, size=len(complete))
    for info in staged:  # the window: readers may see some units old, some new
        # server-side copy (one CopyObject each; content type and sha256 metadata come along)
        store.copy(info.key, info.key[len(prefix) + 1:], size=info.size)
    current = list(listing) if listing is not None else [
        k for t in TABLES for k in _list(store, f"{t}/")]
    for key in current:
        unit = unit_of_key(key)
        if key != SWAP_KEY and key not in new_keys and (
                touched is None or unit is None or unit in touched):
            store.delete(key)
    store.delete(SWAP_KEY)
    store.clear(f"{prefix}/")


def unit_of_key(key: str) -> int | None:
    """The unit pixel of a table file (``k<K>-<N>.parquet``, ``_stats-k<K>-<N>.parquet``)."""
    name = key.rsplit("/", 1)[-1].removeprefix("_stats-")
    if not (name.startswith("k") and name.endswith(".parquet") and "-" in name):
        return None
    try:
        return int(name[:-len(".parquet")].split("-", 1)[1])
    except ValueError:
        return None


def _orphan_objects(store, units: set[int], state: dict | None,
                   listing: dict[str, int]) -> int:
    """Objects in the current tables' unit files (*listing*) outside *units* (the build drops
    them): the rows *state* records, else read from the file's footer."""
    recorded = (state or {}).get("files") or {}
    n = 0
    for key in listing:
        unit = unit_of_key(key)
        if (key.startswith("objects/") and unit is not None and unit not in units
                and not key.rsplit("/", 1)[-1].startswith("_")):
            rows = recorded.get(key, {}).get("rows")
            n += rows if rows is not None else pq.ParquetFile(
                pa.BufferReader(store.read_bytes(key))).metadata.num_rows
    return n


def _carry_over(store, staging: str, touched: set[int]) -> None:
    """Locally: hard links, in the staged tables, to the files of the units not rebuilt."""
    if not isinstance(store, LocalStore):
        return  # on S3, _commit keeps them (the marker lists the rebuilt units)
    for table in TABLES:
        base = store.root / table
        for path in sorted(base.rglob("*.parquet")) if base.is_dir() else []:
            unit = unit_of_key(path.name)
            if unit is not None and unit not in touched:
                dest = store.root / staging / path.relative_to(store.root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, dest)
                except OSError:
                    shutil.copy2(path, dest)


def stray_keys(store, unit_order: int, listing: dict[str, int] | None = None) -> list[str]:
    """Files of the three tables that Parquet readers count but no build wrote: anything but
    ``<table>/hpx5=<partition of N>/k<unit order>-<N>.parquet`` (a copy beside a unit file, a
    unit file in another partition's folder or of another order). Names starting with ``_``
    or ``.`` (the build record, the statistics sidecars) are skipped by readers, and here."""
    keys = listing if listing is not None else [k for t in TABLES for k in _list(store, f"{t}/")]
    strays = []
    for key in keys:
        table = key.split("/", 1)[0]
        if any(part.startswith(("_", ".")) for part in key.split("/")[1:]):
            continue
        unit = unit_of_key(key)
        if unit is None or key != unit_key(table, unit, unit_order):
            strays.append(key)
    return strays


def remove_strays(store, unit_order: int, listing: dict[str, int] | None = None) -> list[str]:
    """Delete the :func:`stray_keys` (their rows were counted twice, or belong to no build):
    a finished build leaves exactly its own files. Returns a note, or nothing. *listing*
    (:func:`table_listing`; else the tables are listed) loses the keys deleted."""
    strays = stray_keys(store, unit_order, listing)
    for key in strays:
        store.delete(key)
        if listing is not None:
            del listing[key]
    if not strays:
        return []
    return [f"removed {len(strays)} file(s) no build wrote from the tables (readers counted "
            "their rows too): " + ", ".join(strays[:5]) + (" ..." if len(strays) > 5 else "")]


#: the files a unit writes (:func:`unit_key`'s first argument)
UNIT_FILES = ("objects", "object_photometry", "associations", "objects/_stats",
              "object_photometry/_stats")


def is_unit_file(key: str, unit_order: int) -> bool:
    """True for a unit file's key at *unit_order* (tables and statistics sidecars)."""
    unit = unit_of_key(key)
    return unit is not None and any(key == unit_key(n, unit, unit_order) for n in UNIT_FILES)


def table_listing(store) -> dict[str, int]:
    """Every file in the three tables' folders and its size: one listing per table. A listing
    that fails raises (it must never look like lost files)."""
    return {i.key: i.size for t in TABLES for i in store.list(f"{t}/")}


def recorded_files(state: dict, listing: dict[str, int]) -> dict[str, dict]:
    """The files the build record lists (:func:`file_entry` by key); for a record of an
    older version, which lists none, the unit files there now (sizes only)."""
    if state.get("files") is not None:
        return state["files"]
    return {k: {"size": size, "sha256": None, "rows": None} for k, size in listing.items()
            if is_unit_file(k, state["unit_order"])}


@dataclass
class Damage:
    """Unit files that differ from the build record: lost, changed, or not written by it."""

    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # of a swap that did not finish
    swap: bool = False  # a swap marker was found (its staging gone)

    @property
    def keys(self) -> list[str]:
        return sorted({*self.missing, *self.changed, *self.unknown, *self.unfinished})

    @property
    def units(self) -> set[int]:
        return {unit_of_key(k) for k in self.keys}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def describe(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        parts = ((self.missing, "missing"), (self.changed, "changed since the build wrote it"),
                 (self.unknown, "not written by the last build"), (self.unfinished, "old or new"))
        found = "; ".join(f"{names(keys)} {what}" for keys, what in parts if keys)
        return ("a swap of staged files did not finish and its staging is gone: "
                if self.swap else "") + found


def check_tables(store, state: dict, listing: dict[str, int], *, verify: bool = False) -> Damage:
    """The tables' unit files (*listing*: :func:`table_listing`) against those the last build
    recorded: missing, of another size, or (*verify*) another SHA-256 (reads every file
    locally, one HEAD each on S3; a file without the ``sha256`` metadata differs), and unit
    files the record does not list. Nothing to compare for a record that lists no files.

    A swap marker (:data:`SWAP_KEY`; :func:`recover` has finished every swap whose staging is
    still there) names units whose files may be old or new: their SHA-256 are compared (one
    HEAD each on S3), or, for a record without files, they are all taken as damaged."""
    files, order = state.get("files"), state["unit_order"]
    damage, touched = Damage(swap=SWAP_KEY in listing), None
    if damage.swap:
        touched = json.loads(store.read_bytes(SWAP_KEY) or b"{}").get("touched")

    def swapped(key: str) -> bool:
        return damage.swap and (touched is None or unit_of_key(key) in touched)

    if files is None:
        damage.unfinished = sorted(k for k in listing if is_unit_file(k, order) and swapped(k))
        return damage
    for key, entry in sorted(files.items()):
        if key not in listing:
            damage.missing.append(key)
        elif listing[key] != entry["size"] or (
                (verify or swapped(key)) and not _same_sha256(store, key, entry)):
            damage.changed.append(key)
    damage.unknown = sorted(k for k in listing if k not in files and is_unit_file(k, order))
    return damage


def _same_sha256(store, key: str, entry: dict) -> bool:
    if not entry.get("sha256"):
        return True  # not recorded (a record made from a listing)
    info = store.head(key)
    return info is not None and info.sha256 == entry["sha256"]


def repair(catalog: str, store, usable: list[dict], changes: Changes, listing: dict[str, int],
           damage: Damage, config: BuildConfig, run, report: BuildReport) -> bool:
    """Rebuild the damaged units from the sources (:func:`plan_repair`) and swap them in with
    a new build record, as a build of its own; a note names the files. False (the report
    holds a one-line error naming them; nothing changed) when they cannot be rebuilt."""
    plan = plan_repair(catalog, usable, changes, damage, config)
    replies = run(plan.tasks)
    errors = [r.get("error") or f"unit {r.get('unit')} failed" for r in replies
              if r.get("status") != "ok"]
    if errors:
        _discard(store, plan.staging)
        report.status = "error"
        report.errors = [f"objects tables damaged ({damage.describe()}) and not rebuilt from "
                         f"the sources ({'; '.join(errors[:3])}); nothing was changed: fix the "
                         "cause or run with --rebuild"]
        return False
    touched = damage.units
    renumbered = sum(r.get("n_renumbered", r.get("n_new_objects", 0)) for r in replies)
    if renumbered:  # no file named their ids any more (not: new in a reprocessed image)
        report.notes.append(f"{renumbered} object(s) of the restored units have new ids (the "
                            "files that named theirs were lost)")
    dropped = sum(r.get("n_dropped_objects", 0) for r in replies)
    if dropped:
        report.n_dropped_objects += dropped
        report.notes.append(f"{dropped} object(s) of the restored units found no detection "
                            "again and were dropped")
    files = _files_after(store, plan.staging, changes.state, listing, touched, replies)
    state = {**changes.state, "files": files, **_totals(store, files)}
    stage_and_commit(store, plan.staging, state, touched, listing)
    report.n_units += len(plan.tasks)
    report.unit_order = plan.unit_order
    report.partitions = sorted({partition_of(u, plan.unit_order) for u in touched})
    report.notes.append(f"restored {len(touched)} unit(s) from the sources: {damage.describe()}")
    return True


def _totals(store, files: dict[str, dict]) -> dict[str, int]:
    """``n_objects`` and ``n_associations``: the rows of the listed table files (a Parquet
    footer is read where the record does not know them)."""
    totals = {"n_objects": 0, "n_associations": 0}
    for key, entry in files.items():
        table, name = key.split("/", 1)[0], key.rsplit("/", 1)[-1]
        if table in ("objects", "associations") and not name.startswith("_"):
            rows = entry.get("rows")
            if rows is None:
                rows = pq.ParquetFile(pa.BufferReader(store.read_bytes(key))).metadata.num_rows
            totals[f"n_{table}"] += rows
    return totals


def list_files_in_record(store, state: dict, listing: dict[str, int]) -> str:
    """Write the build record of an older version again, with the files there now (from here
    on a lost file is detected); returns a note."""
    files = recorded_files(state, listing)
    store.write_bytes(STATE_KEY, json.dumps({**state, "files": files}, indent=1).encode())
    return (f"the build record listed no files (older version): it now lists the {len(files)} "
            "unit files found; a file lost before this build cannot be detected")


@dataclass
class Changes:
    """The catalog against the last build's record: what a build has to (re)do.

    *state* is that record (None on the first build, with ``--rebuild``, or beside tables of an
    older version, *has_tables* then True); *current* maps every image to its fingerprint.
    """

    state: dict | None
    has_tables: bool
    current: dict[str, str]
    new: list[str]
    redone: list[str]
    removed: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def layout_ok(self) -> bool:
        """The existing tables are in this version's layout (False on ``--rebuild``)."""
        return bool(self.state and self.state.get("layout") == LAYOUT)

    @property
    def unchanged(self) -> bool:
        return self.layout_ok and not self.new and not self.redone and not self.removed

    @property
    def fast(self) -> bool:
        """Only new images: merge them into the stored statistics, re-read no old source."""
        return self.layout_ok and self.has_tables and not self.redone and not self.removed


@dataclass
class BuildPlan:
    """The unit tasks of one build and the staging prefix they write under."""

    unit_order: int
    staging: str
    tasks: list[UnitTask]


def _open_catalog(catalog: str):
    store = open_store(catalog)
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise ObjectsError(catalog, "no catalog folder here: run scripts/invoke_lambda.py first")
    return store


def classify_changes(catalog: str, store, images: list[dict], config: BuildConfig,
                     listing: dict[str, int]) -> Changes:
    """New, reprocessed and removed images since the last build (ObjectsError: radius differs).
    *listing*: the tables' files (:func:`table_listing`)."""
    state = None if config.rebuild else _load_state(store)
    has_tables = any(k.startswith("objects/") for k in listing) and not config.rebuild
    notes = []
    if has_tables and state is None:
        notes.append("objects table without a build record (an older version): its "
                     "ids are kept, its statistics recomputed")
    elif state and state.get("layout") != LAYOUT:
        notes.append(f"objects table of layout {state.get('layout')} (older version): "
                     "ids kept, tables rewritten")
    if state and abs(state.get("radius_arcsec", config.radius_arcsec)
                     - config.radius_arcsec) > 1e-9:
        raise ObjectsError(catalog, f"objects were built with --radius "
                                    f"{state['radius_arcsec']}; rerun with that radius or "
                                    "--rebuild")
    seen = (state or {}).get("images", {})
    current = {r["image_id"]: _fingerprint(r) for r in images}
    new = [i for i in current if i not in seen]
    redone = [i for i in current if i in seen and seen[i] != current[i]]
    removed = [i for i in seen if i not in current]
    if has_tables and state is None:  # old tables: images they hold are taken as done
        new, redone, removed = [], [], []
    return Changes(state, has_tables, current, new, redone, removed, notes)


def _usable_images(images: list[dict]) -> list[dict]:
    """The images whose sources can be associated (a celestial WCS and a centre)."""
    return [r for r in images if r["has_wcs"] and r["ra_center"] is not None]


def _input_notes(images: list[dict], usable: list[dict]) -> list[str]:
    """Notes on images left out (no WCS) and on a catalog of several pipeline versions."""
    notes = []
    if len(images) - len(usable):
        names = sorted(r["image_id"] for r in images if r not in usable)
        notes.append(f"{len(names)} image(s) without WCS, sources left unassociated: "
                     + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
    mixed = sorted({r["pipeline_version"] for r in images if r["pipeline_version"]})
    if len(mixed) > 1:
        notes.append("images from several pipeline versions: " + ", ".join(mixed))
    return notes


def _unit_order(catalog: str, images: list[dict], usable: list[dict], changes: Changes,
                config: BuildConfig) -> int:
    """The unit order: the setting, else the last build's, else chosen from the data; never
    finer than the margin's order (ObjectsError when it differs from the last build's)."""
    state = changes.state
    unit_order = (config.unit_order or (state or {}).get("unit_order")
                  or _choose_unit_order(usable or images, config.workers))
    unit_order = min(unit_order, margin_order(config.margin_arcsec))
    if state and state.get("unit_order") not in (None, unit_order):
        raise ObjectsError(catalog, "unit order differs from the last build: use --rebuild")
    return unit_order


def _unit_images(scan: list[dict], unit_order: int, mo: int, bands: list[str],
                 new_set: set[str], redo_set: set[str]) -> dict[int, list[dict]]:
    """Per unit, the entries of the images of *scan* it reads."""
    band_index = {b: i for i, b in enumerate(bands)}
    per_unit: dict[int, list[dict]] = {}
    reach = 2.2 * pixel_size_arcsec(mo)  # what in_region() may add around a unit
    for r, units in zip(scan, _image_units(scan, unit_order, reach), strict=True):
        entry = {"image_id": r["image_id"], "key": r["key"], "mjd": r["mjd"],
                 "night": night_ordinal(r["night"]),
                 "band": band_index[r["band"] or "unknown"],
                 "pixel_scale": r["pixel_scale"],
                 "redo": r["image_id"] in redo_set, "new": r["image_id"] in new_set}
        for u in units:
            per_unit.setdefault(int(u), []).append(entry)
    return per_unit


def plan_units(catalog: str, images: list[dict], usable: list[dict], changes: Changes,
               config: BuildConfig) -> BuildPlan:
    """The unit tasks of this build, writing under a new staging prefix."""
    unit_order = _unit_order(catalog, images, usable, changes, config)
    new_set = set(changes.new)
    # only the new images on the fast path
    scan = [r for r in usable if r["image_id"] in new_set] if changes.fast else usable
    return _plan(catalog, config, unit_order, images, scan, new_set,
                 new_set | set(changes.redone), existing_layout=changes.layout_ok,
                 rebuild=config.rebuild or not changes.has_tables, fast=changes.fast)


def plan_repair(catalog: str, usable: list[dict], changes: Changes, damage: Damage,
                config: BuildConfig) -> BuildPlan:
    """Unit tasks that rebuild the damaged units (:func:`check_tables`) from the sources of
    the images the last build associated, reading the kept associations around them but not
    the damaged files. An image reprocessed since is matched again (``redo``: its objects keep
    their ids) and the next phase of the build redoes it everywhere; new images are left to
    that phase."""
    state = changes.state
    seen = state.get("images", {})
    known = [r for r in usable if r["image_id"] in seen]
    redone = {r["image_id"] for r in known
              if seen[r["image_id"]] != changes.current[r["image_id"]]}
    return _plan(catalog, config, state["unit_order"], known, known, set(), redone,
                 units=damage.units, existing_layout=True, repair=sorted(damage.units),
                 skip=damage.keys)


def _plan(catalog: str, config: BuildConfig, unit_order: int, images: list[dict],
          scan: list[dict], new_set: set[str], redo_set: set[str],
          units: set[int] | None = None, **flags) -> BuildPlan:
    """One task per unit the images of *scan* touch (only *units*, when given), its bands
    and nights those of *images*; *flags*: the remaining :class:`UnitTask` fields."""
    mo = margin_order(config.margin_arcsec)
    bands = sorted({r["band"] or "unknown" for r in images})
    nights = sorted({r["night"] for r in images if r["night"] and r["night"] != "unknown"})
    per_unit = _unit_images(scan, unit_order, mo, bands, new_set, redo_set)
    staging = f"{STAGING}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    tasks = [UnitTask(catalog=catalog, staging=staging, unit=u, unit_order=unit_order,
                      radius_arcsec=config.radius_arcsec, margin_order=mo, floor=config.floor,
                      false_alarm=config.false_alarm, images=imgs, nights=nights, bands=bands,
                      **flags)
             for u, imgs in sorted(per_unit.items()) if units is None or u in units]
    return BuildPlan(unit_order, staging, tasks)


def _failures(replies: list[dict]) -> list[str]:
    """One message per failed unit, and per image with sources outside every unit."""
    failed = [r for r in replies if r.get("status") != "ok"]
    failed += _uncovered(replies)
    return [r.get("error") or f"unit {r.get('unit')} failed" for r in failed]


def _tally(report: BuildReport, replies: list[dict], changes: Changes) -> None:
    """The report's object and association counts from the units' replies."""
    for r in replies:
        report.n_objects += r["n_objects"]
        report.n_new_objects += r["n_new_objects"]
        report.n_associations += r["n_associations"]
        report.n_dropped_objects += r["n_dropped_objects"]
    if changes.fast:  # the untouched units keep their objects: totals = before + this night's
        report.n_objects = changes.state.get("n_objects", 0) + report.n_new_objects
        report.n_associations = changes.state.get("n_associations", 0) + sum(
            r.get("n_new_associations", 0) for r in replies)


def commit_build(store, plan: BuildPlan, changes: Changes, config: BuildConfig,
                 report: BuildReport, replies: list[dict], listing: dict[str, int]) -> int:
    """Stage the build record (with the files of the new tables), complete the staged tables
    (the units not rebuilt, locally), mark them complete and swap them in. Returns the objects
    dropped with units no image covers any more (a full build over kept tables)."""
    touched = {t.unit for t in plan.tasks} if changes.fast else None
    files = _files_after(store, plan.staging, changes.state, listing, touched, replies)
    new_state = {"layout": LAYOUT, "version": __version__, "radius_arcsec": config.radius_arcsec,
                 "unit_order": plan.unit_order, "floor": config.floor,
                 "n_objects": report.n_objects, "n_associations": report.n_associations,
                 "images": changes.current, "files": files}
    dropped = 0
    if not changes.fast and changes.has_tables:  # units no image covers any more (all
        # removed): their objects go, counted (not on --rebuild: it starts over)
        dropped = _orphan_objects(store, {t.unit for t in plan.tasks}, changes.state, listing)
    stage_and_commit(store, plan.staging, new_state, touched, listing)
    return dropped


def stage_and_commit(store, staging: str, state: dict, touched: set[int] | None,
                     listing: dict[str, int]) -> None:
    """Write the build record into *staging*, complete the staged tables with the files of the
    units not in *touched* (None: every unit was rebuilt; locally hard links, on S3 they stay
    where they are), mark them complete and swap them in (*listing*: the current files,
    :func:`table_listing`)."""
    store.write_bytes(f"{staging}/{STATE_KEY}", json.dumps(state, indent=1).encode())
    if touched is not None:
        _carry_over(store, staging, touched)
    marker = {"touched": None if touched is None else sorted(touched)}
    if isinstance(store, LocalStore):  # a table folder left with no file is swapped in empty
        marker["inodes"] = {}
        for table in TABLES:
            (store.root / staging / table).mkdir(parents=True, exist_ok=True)
            marker["inodes"][table] = (store.root / staging / table).stat().st_ino
    store.write_bytes(f"{staging}/_complete", json.dumps(marker).encode())
    _commit(store, staging, listing)


def _files_after(store, staging: str, state: dict | None, listing: dict[str, int],
                 touched: set[int] | None, replies: list[dict]) -> dict[str, dict]:
    """The new build record's file list: the files *state* recorded of the units not in
    *touched* (None: no unit is kept), and those the units wrote."""
    kept = {} if touched is None else {k: v for k, v in recorded_files(state, listing).items()
                                       if unit_of_key(k) not in touched}
    return {**kept, **_written_files(store, staging, replies)}


def _written_files(store, staging: str, replies: list[dict]) -> dict[str, dict]:
    """The record's entries of the files the units wrote (from their replies; from a listing
    of the staged files, sizes only, if a unit of an older version did not say)."""
    if all("files" in r for r in replies):
        return {k: v for r in replies for k, v in r["files"].items()}
    prefix = f"{staging}/"
    return {i.key[len(prefix):]: {"size": i.size, "sha256": None, "rows": None}
            for i in store.list(prefix) if i.key.endswith(".parquet")}


def build_objects(catalog: str, config: BuildConfig | None = None, *,
                  runner: Callable[[list[UnitTask]], list[dict]] | None = None) -> BuildReport:
    """Associate the catalog's sources into objects; incremental unless ``config.rebuild``.

    *runner* runs the unit tasks (default: :func:`run_units_local` with ``config.workers``).
    Steps: finish or drop an interrupted build (:func:`recover`), compare the catalog with the
    last build (:func:`classify_changes`) and the tables with its record (:func:`check_tables`;
    damaged units are rebuilt first: :func:`repair`), plan the units (:func:`plan_units`), run
    them, then swap their tables in (:func:`commit_build`); a failed unit changes nothing.
    """
    config = config or BuildConfig()
    store = _open_catalog(catalog)
    with build_lock(store) as notes:
        report = _build(catalog, store, config, runner)
        report.notes[:0] = notes
        return report


@contextlib.contextmanager
def build_lock(store):
    """Hold the catalog's build lock (:data:`LOCK`) for the block; yields notes. Another build
    running (a lock younger than :data:`LOCK_STALE_SECONDS`) is an ObjectsError naming it:
    its staging area must not be recovered or discarded under it. An older lock (a killed
    build) is taken over; both claims are conditional writes, so two builds starting at once
    cannot both win."""
    key, notes = LOCK, []
    data, version = store.read_versioned(key)
    if data is not None:
        try:
            held = json.loads(data)
            age = time.time() - float(held["since"])
        except (ValueError, KeyError, TypeError):
            held, age = {}, float("inf")  # unreadable: treat as left over
        if age < LOCK_STALE_SECONDS:
            raise ObjectsError(store.url(key), f"another build is running (since "
                               f"{held.get('started')}, {held.get('host')} pid "
                               f"{held.get('pid')}); if it was killed, delete this lock")
        notes.append(f"took over the lock of a build that did not finish ({held.get('started')})")
    body = json.dumps({"since": time.time(), "started": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(), "pid": os.getpid()})
    mine = store.write_bytes_if(key, body.encode(), version=version,
                                content_type="application/json")
    if mine is None:
        raise ObjectsError(store.url(key), "another build took the lock at the same moment")
    try:
        yield notes
    finally:
        if store.read_versioned(key)[1] == mine:
            store.delete(key)


def _build(catalog: str, store, config: BuildConfig, runner) -> BuildReport:
    """:func:`build_objects` under the build lock."""
    start = time.perf_counter()
    report = BuildReport()
    report.notes += recover(store)
    images = read_images(catalog)
    if not images:
        raise ObjectsError(catalog, "catalog without images: nothing to associate")
    report.n_images = len(images)
    run = runner or (lambda ts: run_units_local(ts, config.workers))
    listing = table_listing(store)
    changes = classify_changes(catalog, store, images, config, listing)
    report.notes += changes.notes
    usable = _usable_images(images)
    report.n_images_without_wcs = len(images) - len(usable)
    report.notes += _input_notes(images, usable)
    n_notes, restored = len(report.notes), False
    if changes.layout_ok and changes.has_tables:  # the tables against the last build's record
        checked = _check_and_repair(catalog, store, images, usable, changes, listing, config,
                                    run, report)
        if checked is None:
            report.seconds = time.perf_counter() - start
            return report
        restored = checked[0] is not changes  # (classified again after a repair)
        changes, listing = checked
    report.n_new_images, report.n_redone_images = len(changes.new), len(changes.redone)
    report.n_removed_images = len(changes.removed)
    if changes.unchanged:
        report.status = "ok" if len(report.notes) > n_notes else "unchanged"
        report.unit_order = changes.state["unit_order"]
        report.n_objects = changes.state.get("n_objects", 0)
        report.n_associations = changes.state.get("n_associations", 0)
        report.seconds = time.perf_counter() - start
        return report
    plan = plan_units(catalog, images, usable, changes, config)
    report.n_units, report.unit_order = len(plan.tasks), plan.unit_order
    replies = run(plan.tasks)
    errors = _failures(replies)
    if errors:
        _discard(store, plan.staging)
        report.status = "error"
        report.errors = [*errors, "nothing was changed: the previous tables are intact" + (
            " (but for the units restored first)" if restored else "")]
        report.seconds = time.perf_counter() - start
        return report
    restored_dropped = report.n_dropped_objects  # noted by repair()
    _tally(report, replies, changes)
    report.partitions = sorted({*report.partitions,
                                *(partition_of(t.unit, plan.unit_order) for t in plan.tasks)})
    report.n_dropped_objects += commit_build(store, plan, changes, config, report, replies,
                                             listing)
    if report.n_dropped_objects > restored_dropped:
        report.notes.append(f"{report.n_dropped_objects - restored_dropped} object(s) lost all "
                            "their detections (reprocessed or removed images) and were dropped")
    report.seconds = time.perf_counter() - start
    return report


def _check_and_repair(catalog: str, store, images: list[dict], usable: list[dict],
                      changes: Changes, listing: dict[str, int], config: BuildConfig, run,
                      report: BuildReport) -> tuple[Changes, dict[str, int]] | None:
    """Remove the stray files, check the tables against the build record and rebuild the
    damaged units (:func:`repair`); notes go to *report*. The changes and the listing to build
    on from here, or None when the damage could not be repaired (*report* says why)."""
    report.notes += remove_strays(store, changes.state["unit_order"], listing)
    damage = check_tables(store, changes.state, listing, verify=config.verify)
    if damage:
        if not repair(catalog, store, usable, changes, listing, damage, config, run, report):
            return None
        listing = table_listing(store)
        return classify_changes(catalog, store, images, config, listing), listing
    if damage.swap:  # its files are all as recorded: only the marker is left
        store.delete(SWAP_KEY)
        report.notes.append("a swap of staged files did not finish, but every file is as the "
                            "build record lists: removed its marker")
    elif "files" not in changes.state and changes.unchanged:
        report.notes.append(list_files_in_record(store, changes.state, listing))
    return changes, listing


def _uncovered(replies: list[dict]) -> list[dict]:
    """Error replies for images with sources outside every unit that read them (a footprint
    in ``images`` smaller than the sources' spread): never lose a source silently."""
    found: dict[str, list[int]] = {}
    for reply in replies:
        for image_id, (n_pos, n_core) in (reply.get("coverage") or {}).items():
            entry = found.setdefault(image_id, [n_pos, 0])
            entry[1] += n_core
    return [{"status": "error", "error": f"{image_id}: {n_pos - n_core} of its {n_pos} sources "
                                         "lie outside the footprint its images record gives "
                                         "(centre, size, pixel scale)"}
            for image_id, (n_pos, n_core) in sorted(found.items()) if n_core < n_pos]


def _run_task(task: UnitTask) -> dict:
    return handle_unit_event(task.event())


def run_units_local(tasks: list[UnitTask], workers: int = 1) -> list[dict]:
    """Run unit tasks in this process (workers=1) or a process pool."""
    if workers <= 1 or len(tasks) <= 1:
        return [_run_task(t) for t in tasks]
    from concurrent.futures import ProcessPoolExecutor

    # biggest units first, so the pool ends together
    ordered = sorted(tasks, key=lambda t: -len(t.images))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_run_task, ordered, chunksize=1))


# ---------------------------------------------------------------------------------------
# SQL side: the tables for DuckDB, the cone's HEALPix ranges

#: the cone query binds this many _healpix_29 ranges (unused ones repeat the last)
CONE_RANGES = 8


def register_reference(con) -> bool:
    """Register ``reference`` in a DuckDB connection: the REFERENCE_CATALOG setting read by
    :mod:`skysurvey.reference` (local or ``s3://`` Parquet, CSV, FITS, VOTable or HATS; its
    position columns as ``ra``/``dec``), else an empty (ra, dec) table. A setting that cannot be
    read is a warning naming it, never a silent empty table. True when it holds the reference."""
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


def cone_ranges(ra: float, dec: float, radius_arcsec: float,
                max_ranges: int = CONE_RANGES) -> list[tuple[int, int]]:
    """Inclusive ``_healpix_29`` ranges covering a cone (at most *max_ranges*, merged)."""
    from astropy import units as u
    from astropy_healpix import HEALPix

    order = 29
    while order > 0 and pixel_size_arcsec(order) < radius_arcsec:
        order -= 1
    grid = HEALPix(nside=2**order, order="nested")
    pixels = np.sort(np.asarray(grid.cone_search_lonlat(ra * u.deg, dec * u.deg,
                                                        radius_arcsec * u.arcsec), np.int64))
    shift = 2 * (29 - order)
    ranges = [[int(p) << shift, ((int(p) + 1) << shift) - 1] for p in pixels]
    merged = [ranges[0]]
    for lo, hi in ranges[1:]:
        if lo == merged[-1][1] + 1:
            merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    while len(merged) > max_ranges:  # close the smallest gap
        gaps = [merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)]
        i = int(np.argmin(gaps))
        merged[i:i + 2] = [[merged[i][0], merged[i + 1][1]]]
    return [(lo, hi) for lo, hi in merged]


def cone_parameters(params) -> tuple:
    """``(ra, dec, radius_arcsec)`` -> the cone query's bound values: the three, the order-5
    partitions (4), then CONE_RANGES pairs of ``_healpix_29`` bounds."""
    ra, dec, radius = (float(v) for v in params)
    ranges = cone_ranges(ra, dec, radius)
    parts = sorted({lo >> 48 for lo, _ in ranges} | {hi >> 48 for _, hi in ranges})
    if len(parts) > 4:
        raise ObjectsError("cone", f"radius {radius} arcsec spans more than 4 order-5 pixels")
    parts += [parts[-1]] * (4 - len(parts))
    ranges += [ranges[-1]] * (CONE_RANGES - len(ranges))
    return (ra, dec, radius, *parts, *(v for r in ranges for v in r))


def most_variable_light_curves(catalog: str, n: int = 4):
    """The ``light_curve`` rows of the *n* most significant variables (``variables`` order)."""
    import pandas as pd

    from .queries import run_named

    variables = run_named("variables", catalog)
    ids = list(dict.fromkeys(variables["object_id"]))[:n]
    frames = [run_named("light_curve", catalog, (int(i),)) for i in ids]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["object_id", "mjd", "band", "mag", "mag_err"])


def run_units_lambda(tasks: list[UnitTask], function: str, workers: int = 8,
                     client=None) -> list[dict]:
    """One synchronous invocation of *function* per unit (threads: the work runs in Lambda).

    A function error, a timeout or an unreadable reply becomes an error reply for that unit,
    so the build fails as a whole and the previous tables stay (see :func:`build_objects`).
    """
    from concurrent.futures import ThreadPoolExecutor

    from . import aws

    client = client or aws.client("lambda")

    def invoke(task: UnitTask) -> dict:
        try:
            response = client.invoke(FunctionName=function, InvocationType="RequestResponse",
                                     Payload=json.dumps(task.event()).encode())
            payload = json.loads(response["Payload"].read() or b"null")
        except Exception as exc:  # transport or service error: this unit failed
            return {"status": "error", "unit": task.unit,
                    "error": f"unit {task.unit}: {type(exc).__name__}: {exc}"}
        if response.get("FunctionError") or not isinstance(payload, dict):
            message = payload.get("errorMessage") if isinstance(payload, dict) else payload
            return {"status": "error", "unit": task.unit,
                    "error": f"unit {task.unit}: function error: {message}"}
        return payload

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(invoke, tasks))
