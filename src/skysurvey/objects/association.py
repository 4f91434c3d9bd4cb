"""Positional association, arrays only (numpy; no scipy, so it runs in the Lambda).

Detections are matched image by image, in time order, to the objects' running weighted mean
positions in the tangent plane about the unit's centre: candidate pairs from a grid of cells
(:class:`CellIndex`), then one-to-one pairs that are each other's nearest
(:func:`mutual_nearest`); a detection left over starts a new object.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..geometry import sorted_unique, tangent_plane
from .model import Detections

__all__ = ["CellIndex", "associate", "link", "mutual_nearest"]


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
    """One-to-one pairs: repeatedly keep the pairs that are each other's nearest.

    Parameters
    ----------
    src, obj : numpy.ndarray
        Candidate pairs (source index, object index).
    d2 : numpy.ndarray
        Their squared distances.

    Returns
    -------
    src, obj : numpy.ndarray
        The pairs kept; no source and no object twice.
    """
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


def associate(det: Detections, obj_ra: np.ndarray, obj_dec: np.ndarray, centre, radius: float,
              order: np.ndarray, obj_weight: np.ndarray | None = None) -> np.ndarray:
    """Link every detection with ``obj == -1`` to an object, image by image.

    Parameters
    ----------
    det : Detections
        The unit's detections; ``det.obj`` holds the kept links (-1: to be matched).
    obj_ra, obj_dec : numpy.ndarray
        The existing objects (seed positions), degrees.
    centre : tuple of float
        The tangent point (the unit's centre), degrees.
    radius : float
        The match radius, arcsec.
    order : numpy.ndarray
        Detection indices to match, sorted by time then image.
    obj_weight : numpy.ndarray, optional
        The existing objects' stored position weights (else those of their kept detections).

    Returns
    -------
    numpy.ndarray
        ``obj`` for every detection; indices beyond the existing objects are new objects.
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


def link(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values[keys == query]`` for each query (-1 where absent).

    Parameters
    ----------
    keys, values : numpy.ndarray
        A lookup table (unique keys).
    query : numpy.ndarray
        The keys to look up.

    Returns
    -------
    numpy.ndarray
        int64, one value per query.
    """
    out = np.full(len(query), -1, np.int64)
    if not len(keys):
        return out
    sorter = np.argsort(keys)
    where = np.clip(np.searchsorted(keys, query, sorter=sorter), 0, len(keys) - 1)
    hit = keys[sorter[where]] == query
    out[hit] = values[sorter[where[hit]]]
    return out
