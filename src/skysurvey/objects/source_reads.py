"""One image's sources in one sky region: a pruned read, and what it cost.

The handler writes each image's ``sources`` file sorted by ``_healpix_29`` in small row groups
with min/max statistics (:func:`skysurvey.pipeline.sources_to_parquet_bytes`). A unit asks for
the rows whose order-29 pixel lies in its region (:func:`region_ranges`: its own pixel, one
contiguous range, and the margin pixels around it); :func:`read_region` opens the file once,
reads its footer, and reads only the row groups whose ``_healpix_29`` range meets the region:
by ``pread`` locally, by ranged GETs on S3 (one per run of consecutive row groups). A file of an
older version (rows unsorted: every row group spans the sky; or no statistics) is read whole,
and the caller's row filter gives the same rows either way. :class:`ReadStats` counts files,
row groups and bytes: what a build reports against the bytes of the sources.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..geometry import healpix, in_region, neighbours, pixel_size_arcsec
from ..storage import local_root
from .model import Detections, UnitTask, no_detections

__all__ = ["FOOTER_BYTES", "ReadStats", "Region", "RegionRead", "read_region",
           "read_unit_detections", "region_ranges"]

#: bytes read from a file's end at opening: the footer of a sources file is ~10-40 kB
FOOTER_BYTES = 64 * 1024
_HP = "_healpix_29"


@dataclass
class ReadStats:
    """Files, row groups and bytes a unit read, against what the files hold."""

    files: int = 0
    row_groups: int = 0  # in the files opened
    row_groups_read: int = 0
    bytes: int = 0  # size of the files opened
    bytes_read: int = 0  # footers and the row groups' column chunks read
    rows_read: int = 0
    #: the size of each file opened, by key (the driver adds up the distinct files)
    sizes: dict[str, int] = field(default_factory=dict)

    def add(self, other: ReadStats | dict) -> None:
        """Add *other*'s counts (a :class:`ReadStats` or its dict)."""
        values = other if isinstance(other, dict) else asdict(other)
        for k, v in values.items():
            if k == "sizes":
                self.sizes.update(v or {})
            elif hasattr(self, k):
                setattr(self, k, getattr(self, k) + int(v or 0))

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict[str, int]:
        """The counts, with ``source_bytes``: the size of the distinct files read (what a
        build that read each file once, whole, would have read)."""
        out = {k: v for k, v in asdict(self).items() if k != "sizes"}
        return {**out, "source_files": len(self.sizes),
                "source_bytes": int(sum(self.sizes.values()))}


@dataclass
class RegionRead:
    """:func:`read_region`'s result: the rows read (every row of the region, maybe more) and
    the file's rows with a ``_healpix_29`` (from the footer: None when the file was read
    whole, the rows then tell)."""

    table: pa.Table
    n_indexed: int | None


def _interleave(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """NESTED sub-index of face-grid coordinates (x on the even bits, y on the odd)."""
    out = np.zeros(len(x), np.int64)
    for b in range(bits):
        out |= ((x >> b) & 1) << (2 * b)
        out |= ((y >> b) & 1) << (2 * b + 1)
    return out


def _margin_pixels(unit: int, unit_order: int, margin_order: int) -> np.ndarray:
    """The pixels of order *margin_order* outside *unit* next to one inside (sorted)."""
    d = margin_order - unit_order
    side = 1 << d
    edge = np.arange(side, dtype=np.int64)
    zero, last = np.zeros(side, np.int64), np.full(side, side - 1, np.int64)
    x = np.concatenate([edge, edge, zero, last])
    y = np.concatenate([zero, last, edge, edge])
    border = (np.int64(unit) << (2 * d)) | _interleave(x, y, d)
    near = neighbours(np.unique(border), margin_order)[1:].ravel()
    return np.unique(near[(near >= 0) & ((near >> (2 * d)) != unit)])


#: a region's pixels are tested at most this many orders below the unit's (<= 256 pieces)
_CORE_SPLIT = 4


@dataclass
class Region:
    """A unit's region as pieces (NESTED pixels: the unit's own split into <= 256 smaller
    ones, and the margin pixels around it), each an inclusive ``_healpix_29`` range with its
    centre and reach, sorted and disjoint. A row group is read when a piece's range meets the
    row group's ``_healpix_29`` range and the piece comes near the row group's ra/dec box
    (statistics too): NESTED order runs back and forth across a pixel, so one row group's
    range spans many pieces (the margin pixels all along a neighbour's border, a whole unit
    between two pixels the rows are in) though its rows lie near few of them."""

    lo: np.ndarray  # per piece, sorted
    hi: np.ndarray
    ra: np.ndarray  # centres, degrees (empty: ranges only, no position test)
    dec: np.ndarray
    pad: np.ndarray  # degrees: every point of a piece lies this close to its centre

    @classmethod
    def of_unit(cls, unit: int, unit_order: int, margin_order: int) -> Region:
        """The region :func:`skysurvey.geometry.in_region` keeps for *unit*."""
        from astropy_healpix import healpix_to_lonlat

        split = min(unit_order + _CORE_SPLIT, margin_order)
        core = (np.int64(unit) << 2 * (split - unit_order)) + np.arange(
            4 ** (split - unit_order), dtype=np.int64)
        margin = _margin_pixels(unit, unit_order, margin_order)
        lo, hi, ra, dec, pad = [], [], [], [], []
        for pixels, order in ((core, split), (margin, margin_order)):
            shift = 2 * (29 - order)
            lon, lat = healpix_to_lonlat(pixels, 2**order, order="nested")
            lo.append(pixels << shift)
            hi.append(((pixels + 1) << shift) - 1)
            ra.append(np.asarray(lon.deg, float))
            dec.append(np.asarray(lat.deg, float))
            pad.append(np.full(len(pixels), 2.0 * pixel_size_arcsec(order) / 3600))
        lo, hi, ra, dec, pad = (np.concatenate(x) for x in (lo, hi, ra, dec, pad))
        order = np.argsort(lo)
        return cls(lo[order], hi[order], ra[order], dec[order], pad[order])

    @classmethod
    def of_ranges(cls, ranges: np.ndarray) -> Region:
        """Any sorted, disjoint inclusive ranges; no position test."""
        ranges = np.asarray(ranges, np.int64).reshape(-1, 2)
        return cls(ranges[:, 0], ranges[:, 1], np.zeros(0), np.zeros(0), np.zeros(0))

    def ranges(self) -> np.ndarray:
        """All its ranges, merged: (k, 2) inclusive, sorted, disjoint."""
        first = np.nonzero(np.r_[True, self.lo[1:] > self.hi[:-1] + 1])[0]
        return np.stack([self.lo[first], np.maximum.reduceat(self.hi, first)], axis=1)

    def meets(self, lo: int, hi: int, box: tuple[float, float, float, float] | None) -> bool:
        """May a row group with ``_healpix_29`` in [lo, hi] and rows in *box* (ra min, ra
        max, dec min, dec max; None: unknown) hold a row of the region?"""
        a = int(np.searchsorted(self.hi, lo))  # the pieces whose ranges meet [lo, hi]
        b = int(np.searchsorted(self.lo, hi, side="right"))
        if b <= a:
            return False
        if box is None or not len(self.ra):
            return True
        ra_min, ra_max, dec_min, dec_max = box
        dec, pad = self.dec[a:b], self.pad[a:b]
        near = (dec >= dec_min - pad) & (dec <= dec_max + pad)
        cos = np.cos(np.radians(np.clip(np.abs(dec) + pad, 0, 90)))
        pad_ra = np.where(cos > 1e-6, pad / np.maximum(cos, 1e-6), 360.0)
        # circular: a box may cross ra = 0 (its statistics then span 0..360: no pruning)
        near &= (self.ra[a:b] - ra_min + pad_ra) % 360 <= (ra_max - ra_min) + 2 * pad_ra
        return bool(near.any())


def region_ranges(unit: int, unit_order: int, margin_order: int) -> np.ndarray:
    """Inclusive ``_healpix_29`` ranges of a unit's region: its pixel and every pixel of order
    *margin_order* next to it (what :func:`skysurvey.geometry.in_region` keeps).

    Parameters
    ----------
    unit : int
        The unit's NESTED pixel at *unit_order*.
    unit_order : int
        Its order.
    margin_order : int
        The margin's order (>= *unit_order*).

    Returns
    -------
    numpy.ndarray
        Shape (k, 2), int64, sorted, disjoint: rows ``[lo, hi]``.
    """
    return Region.of_unit(unit, unit_order, margin_order).ranges()


class _RangeFile(io.RawIOBase):
    """A read-only file over ``fetch(start, stop) -> bytes``, keeping what it fetched (the
    footer, prefetched runs) and counting the bytes fetched."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, tail: bytes = b""):
        super().__init__()
        self._fetch, self._size, self._pos = fetch, size, 0
        self._blocks: list[tuple[int, bytes]] = []
        self.fetched = 0
        if tail:
            self._blocks.append((size - len(tail), tail))
            self.fetched += len(tail)
        elif size:
            self.prefetch(max(0, size - FOOTER_BYTES), size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def prefetch(self, start: int, stop: int) -> None:
        """Fetch ``[start, stop)`` now (one request) and keep it."""
        if stop > start and self._cached(start, stop) is None:
            data = self._fetch(start, stop)
            self.fetched += len(data)
            self._blocks.append((start, data))

    def _cached(self, start: int, stop: int) -> bytes | None:
        for at, data in self._blocks:
            if at <= start and stop <= at + len(data):
                return data[start - at:stop - at]
        return None

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        data = self._cached(self._pos, self._pos + n)
        if data is None:
            data = self._fetch(self._pos, self._pos + n)
            self.fetched += len(data)
        buffer[:n] = data
        self._pos += n
        return n


def _open(store, key: str) -> tuple[_RangeFile, bool, Callable[[], None]]:
    """A :class:`_RangeFile` over *key*, whether to coalesce reads (S3: few requests), and
    how to close it."""
    root = local_root(store)
    if root is not None:
        fd = os.open(root / key, os.O_RDONLY)
        size = os.fstat(fd).st_size
        return _RangeFile(lambda a, b: os.pread(fd, b - a, a), size), False, lambda: os.close(fd)
    if hasattr(store, "bucket") and hasattr(store, "client"):
        return (*_open_s3(store, key), lambda: None)
    data = store.read_bytes(key)  # any other store: the whole object, counted once
    file = _RangeFile(lambda a, b: data[a:b], len(data), data)
    return file, False, lambda: None


def _open_s3(store, key: str) -> tuple[_RangeFile, bool]:
    from .. import aws

    name = f"{store.prefix}{key}"

    def get(spec: str):
        try:
            return store.client.get_object(Bucket=store.bucket, Key=name, Range=spec)
        except aws.botocore_errors() as exc:
            raise aws.translate(exc, store.url(key)) from None

    first = get(f"bytes=-{FOOTER_BYTES}")
    tail = first["Body"].read()
    size = int(str(first.get("ContentRange", "")).rsplit("/", 1)[-1] or len(tail))
    file = _RangeFile(lambda a, b: get(f"bytes={a}-{b - 1}")["Body"].read(), size, tail)
    return file, True


def _byte_span(group) -> tuple[int, int]:
    """The bytes ``[start, stop)`` of one row group's column chunks."""
    start, stop = None, 0
    for c in range(group.num_columns):
        col = group.column(c)
        first = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset:
            first = min(first, col.dictionary_page_offset)
        start = first if start is None else min(start, first)
        stop = max(stop, first + col.total_compressed_size)
    return start or 0, stop


def _min_max(stats) -> tuple[float, float] | None:
    if stats is None or not stats.has_min_max:
        return None
    return stats.min, stats.max


def _selected(meta, region: Region) -> tuple[list[int], int | None]:
    """Row groups that may hold a row of *region* (and those with rows without a
    ``_healpix_29``), and the file's rows with one (None when not known)."""
    names = meta.schema.names
    if _HP not in names:
        return list(range(meta.num_row_groups)), None
    j = names.index(_HP)
    ra_dec = [names.index(c) if c in names else None for c in ("ra", "dec")]
    chosen, indexed = [], meta.num_rows
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(j).statistics
        nulls = None if stats is None else stats.null_count
        indexed = None if indexed is None or nulls is None else indexed - nulls
        if stats is None or not stats.has_min_max or nulls is None or nulls:
            chosen.append(g)
            continue
        spans = [None if c is None else _min_max(group.column(c).statistics) for c in ra_dec]
        box = None if None in spans else (*spans[0], *spans[1])
        if region.meets(int(stats.min), int(stats.max), box):
            chosen.append(g)
    return chosen, indexed


def read_region(store, key: str, columns: Sequence[str], region: Region | np.ndarray,
                stats: ReadStats | None = None) -> RegionRead:
    """The rows of one sources file that may lie in *ranges* (whole row groups).

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.
    key : str
        The sources file.
    columns : sequence of str
        Columns to read; those missing from an older file come back null (float64).
    region : Region or numpy.ndarray
        The region (:meth:`Region.of_unit`), or (k, 2) inclusive ``_healpix_29`` ranges.
    stats : ReadStats, optional
        Receives the counts.

    Returns
    -------
    RegionRead
        Every row of the region is in ``table``; the caller filters the rows (a row group
        also holds rows outside, an older file all of its rows).
    """
    file, coalesce, close = _open(store, key)
    try:
        pf = pq.ParquetFile(file)
        meta = pf.metadata
        if not isinstance(region, Region):
            region = Region.of_ranges(region)
        chosen, indexed = _selected(meta, region)
        if coalesce:  # one request per run of consecutive row groups
            runs = np.split(np.asarray(chosen, int),
                            np.nonzero(np.diff(np.asarray(chosen, int)) > 1)[0] + 1)
            for run in runs if chosen else []:
                file.prefetch(_byte_span(meta.row_group(int(run[0])))[0],
                              _byte_span(meta.row_group(int(run[-1])))[1])
        names = pf.schema_arrow.names
        present = [c for c in columns if c in names]
        table = (pf.read_row_groups(chosen, columns=present, use_threads=False) if chosen
                 else pf.schema_arrow.empty_table().select(present))
        if stats is not None:
            stats.add({"files": 1, "row_groups": meta.num_row_groups,
                       "row_groups_read": len(chosen), "bytes": file._size,
                       "bytes_read": file.fetched, "rows_read": table.num_rows,
                       "sizes": {key: file._size}})
    finally:
        close()
    for c in columns:
        if c not in names:
            table = table.append_column(c, pa.nulls(table.num_rows, pa.float64()))
    whole = len(chosen) == meta.num_row_groups
    return RegionRead(table, None if whole else indexed)


def _in_ranges(column, ranges: np.ndarray) -> np.ndarray:
    """True where a ``_healpix_29`` value lies in one of *ranges* (sorted, disjoint), or is
    null."""
    hp = column.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    k = np.minimum(np.searchsorted(ranges[:, 1], hp), len(ranges) - 1)
    return (hp < 0) | ((ranges[k, 0] <= hp) & (hp <= ranges[k, 1]))


def _located(table: pa.Table) -> np.ndarray:
    """True for rows with a finite ra and dec."""
    ra, dec = (table[c].cast(pa.float64()).to_numpy(zero_copy_only=False) for c in ("ra", "dec"))
    return np.isfinite(ra) & np.isfinite(dec)


def _has_hp(table: pa.Table) -> np.ndarray:
    return table[_HP].is_valid().to_numpy(zero_copy_only=False)


def read_unit_detections(store, task: UnitTask, columns: Sequence[str],
                         arrays: Callable,
                         reads: ReadStats | None = None) -> tuple[Detections, dict]:
    """Sources of the task's images that lie in the unit or its margin, and per image
    ``[sources with a position, those inside the unit itself]`` (the driver checks that every
    source was inside some unit). Each file is opened once and only its row groups that meet
    the unit's region are read (:func:`read_region`; *reads* counts them).

    *columns* are read and ``arrays(table, pixel_scale)`` turns them into the detections'
    columns (:func:`skysurvey.objects.unit.source_arrays`, with ``hp29``)."""
    region = Region.of_unit(task.unit, task.unit_order, task.margin_order)
    ranges = region.ranges()
    tables, counts, positions = [], [], []
    for img in task.images:  # each file opened once; rows of all files converted together
        found = read_region(store, img["key"], columns, region, reads)
        # only the region's rows are kept (and those without a _healpix_29, placed below):
        # a row group also holds rows outside it
        inside = _in_ranges(found.table[_HP], ranges)
        # rows with a position: those with a _healpix_29 (the footer counts them, read or
        # not) and those without one but with ra/dec (in the row groups always read)
        located = _located(found.table)
        positions.append(int(located.sum()) if found.n_indexed is None else
                         found.n_indexed + int((located & ~_has_hp(found.table)).sum()))
        table = found.table.filter(inside)
        tables.append(table)
        counts.append(table.num_rows)
    if not tables:
        return no_detections(), {}
    n_img = len(task.images)
    image = np.repeat(np.arange(n_img), counts)
    scale = np.array([np.nan if img.get("pixel_scale") is None else img["pixel_scale"]
                      for img in task.images], float)
    cols = arrays(pa.concat_tables(tables, promote_options="permissive"), scale[image])
    good = np.isfinite(cols["ra"]) & np.isfinite(cols["dec"])
    n_pos = np.array(positions, np.int64)
    image = image[good]
    cols = {k: v[good] for k, v in cols.items()}
    shift = 2 * (29 - task.margin_order)
    fine = np.where(cols["hp29"] >= 0, cols["hp29"] >> shift, -1)
    missing = fine < 0
    if missing.any():
        fine[missing] = healpix(cols["ra"][missing], cols["dec"][missing], task.margin_order)
    keep = in_region(fine, task.margin_order, task.unit, task.unit_order)
    core = np.bincount(image[(fine >> 2 * (task.margin_order - task.unit_order)) == task.unit],
                       minlength=n_img)
    coverage = {img["image_id"]: [int(n_pos[i]), int(core[i])]
                for i, img in enumerate(task.images)}
    image = image[keep]
    mjd = np.array([np.nan if img["mjd"] is None else img["mjd"] for img in task.images], float)
    night = np.array([img["night"] for img in task.images], np.int64)
    band = np.array([img["band"] for img in task.images], np.int64)
    return Detections(image=image, mjd=mjd[image], night=night[image], band=band[image],
                      obj=np.full(len(image), -1, np.int64),
                      **{k: v[keep] for k, v in cols.items() if k != "hp29"}), coverage
