"""Sky geometry shared by calibration, association and the SQL side: unit vectors, angular
separations, the gnomonic (tangent-plane) projection, NESTED HEALPix cells and cone ranges.

Arrays in, arrays out; angles in degrees unless a name says arcsec. numpy and
astropy-healpix only (both fit the Lambda package; astropy-healpix is imported where used).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "ARCSEC",
    "cone_ranges",
    "group",
    "healpix",
    "in_region",
    "margin_order",
    "neighbours",
    "pixel_centre",
    "pixel_size_arcsec",
    "separation_arcsec",
    "sorted_unique",
    "tangent_plane",
    "unit_vectors",
    "units_touched",
    "vectors_to_radec",
    "window_pairs",
]

#: one arcsecond in radians
ARCSEC = np.pi / (180 * 3600)


# ---------------------------------------------------------------------------------------
# Vectors, separations, projections


def unit_vectors(ra, dec) -> np.ndarray:
    """Unit vectors of positions.

    Parameters
    ----------
    ra, dec : array_like
        Positions in degrees.

    Returns
    -------
    numpy.ndarray
        Shape ``(..., 3)``: x towards (0, 0), z towards the north pole.
    """
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def vectors_to_radec(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of (not necessarily unit) vectors.

    Parameters
    ----------
    vec : numpy.ndarray
        Shape ``(..., 3)``.

    Returns
    -------
    ra, dec : numpy.ndarray
        Degrees, ra in [0, 360).
    """
    norm = np.linalg.norm(vec, axis=-1)
    ra = np.degrees(np.arctan2(vec[..., 1], vec[..., 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(vec[..., 2] / norm, -1, 1)))
    return ra, dec


def separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Exact angular distance (haversine), arcsec.

    Parameters
    ----------
    ra1, dec1, ra2, dec2 : array_like
        Two sets of positions in degrees (broadcast together).

    Returns
    -------
    numpy.ndarray
        The distances in arcsec.
    """
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    h = (np.sin((dec2 - dec1) / 2) ** 2
         + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2)
    return 2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))) / ARCSEC


def tangent_plane(ra, dec, ra0, dec0) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0): (east, north) in arcsec.

    Parameters
    ----------
    ra, dec : array_like
        Positions in degrees.
    ra0, dec0 : float
        The tangent point in degrees.

    Returns
    -------
    x, y : numpy.ndarray
        Standard coordinates (xi, eta) in arcsec.
    """
    r, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    r0, d0 = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(r - r0)
    xi = np.cos(d) * np.sin(r - r0) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(r - r0)) / cosc
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


# ---------------------------------------------------------------------------------------
# Sorting helpers (faster than np.unique's hashing on large int64 arrays)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy 2.3's hash-based unique took ~40 ms per call on
    arrays of a few 100,000 int64 here; sorting takes ~2 ms)."""
    s = np.sort(np.asarray(values))
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


def group(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique keys, inverse)`` by sorting.

    Parameters
    ----------
    key : numpy.ndarray
        One-dimensional keys.

    Returns
    -------
    unique, inverse : numpy.ndarray
        The sorted distinct keys, and for each key its index in *unique*.
    """
    order = np.argsort(key, kind="stable")
    sk = key[order]
    start = np.r_[True, sk[1:] != sk[:-1]] if sk.size else np.zeros(0, bool)
    inv = np.empty(len(key), np.int64)
    inv[order] = np.cumsum(start) - 1
    return sk[start], inv


def window_pairs(key, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair ``(i, j)`` with ``|key_i - key_j| <= reach`` (``i == j`` included),
    by sorting *key* once: the candidates a close-pair search then cuts on its other
    coordinate (no Python loop, no N x N matrix).

    Parameters
    ----------
    key : array_like
        One-dimensional sort key (a pixel column, a declination), finite.
    reach : float
        The largest key difference of a pair.

    Returns
    -------
    i, j : numpy.ndarray of int
        Indices into *key*, one element per pair, each pair listed both ways.
    """
    key = np.asarray(key)
    order = np.argsort(key, kind="stable")
    sk = key[order]
    lo = np.searchsorted(sk, sk - reach, "left")
    hi = np.searchsorted(sk, sk + reach, "right")
    count = hi - lo
    a = np.repeat(np.arange(sk.size), count)
    b = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())
    return order[a], order[b]


# ---------------------------------------------------------------------------------------
# NESTED HEALPix cells (astropy-healpix: fits the Lambda package)


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
    """The centre (ra, dec) in degrees of NESTED *pixel* at *order*."""
    from astropy_healpix import healpix_to_lonlat

    lon, lat = healpix_to_lonlat(np.array([pixel]), 2**order, order="nested")
    return float(lon.deg[0]), float(lat.deg[0])


def pixel_size_arcsec(order: int) -> float:
    """The square root of a pixel's area at *order*, arcsec."""
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
    uniq, inverse = group(fine)
    hit = (units_touched(uniq, fine_order, unit_order) == unit).any(axis=0)
    return hit[inverse]


def cone_ranges(ra: float, dec: float, radius_arcsec: float,
                max_ranges: int = 8) -> list[tuple[int, int]]:
    """Inclusive ``_healpix_29`` ranges covering a cone.

    Parameters
    ----------
    ra, dec : float
        The cone's centre in degrees.
    radius_arcsec : float
        Its radius.
    max_ranges : int
        At most this many ranges: the closest ones are merged (covering a little more).

    Returns
    -------
    list of (int, int)
        Sorted, disjoint, inclusive ranges of order-29 NESTED pixels.
    """
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
