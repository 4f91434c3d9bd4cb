"""Numeric helpers the PSF measurements share (numpy only: this runs in the Lambda).

Robust statistics (a fast median, the MAD-based sigma), Moffat profiles (the light per pixel
and the enclosed fraction) and pairs of sources closer than a distance. :mod:`skysurvey.psf`
(aperture correction, seeing) and :mod:`skysurvey.classify` (star/galaxy) both use them.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "close_pairs",
    "fast_median",
    "moffat_enclosed",
    "moffat_pixels",
    "pairs_within",
    "robust_sigma",
]


def fast_median(values) -> float:
    """``np.median`` of a 1-d array (NaN if it holds one), without its overhead: the curve of
    growth's clipped means and fits take thousands of medians of a few dozen values."""
    ordered = np.sort(values)
    n = ordered.size
    if n == 0 or np.isnan(ordered[-1]):
        return math.nan
    mid = n // 2
    return float(ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0)


def robust_sigma(values) -> float:
    """1.4826 x the median absolute deviation (the standard deviation for Gaussian data)."""
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0:
        return math.nan
    return float(1.4826 * fast_median(np.abs(values - fast_median(values))))


def moffat_enclosed(r, alpha, beta):
    """Fraction of a Moffat profile's flux within radius *r*."""
    return 1.0 - (1.0 + (np.asarray(r, float) / alpha) ** 2) ** (1.0 - beta)


def pairs_within(x, y, px, py, reach):
    """Every pair ``(i, j)`` of point *i* (*px*, *py*) and source *j* (*x*, *y*) closer than
    *reach*, and their squared distance (numpy only: the sources sorted by x, each point
    against those within *reach* in x)."""
    order = np.argsort(x)
    lo = np.searchsorted(x[order], px - reach)
    count = np.searchsorted(x[order], px + reach) - lo
    j = order[np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())]
    i = np.repeat(np.arange(px.size), count)
    d2 = (px[i] - x[j]) ** 2 + (py[i] - y[j]) ** 2
    near = d2 < reach**2
    return i[near], j[near], d2[near]


def close_pairs(x, y, distance):
    """Every ordered pair ``(i, j)``, ``i != j``, of sources closer than *distance*
    (:func:`pairs_within` of the sources with themselves)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j, _ = pairs_within(x, y, x, y, distance)
    keep = i != j
    return i[keep], j[keep]


def moffat_pixels(dx, dy, fwhm, beta):
    """A unit-flux Moffat profile (FWHM *fwhm*) sampled at offsets *dx*, *dy* (pixels)."""
    alpha2 = fwhm**2 / (4.0 * (2.0 ** (1.0 / beta) - 1.0))
    return (beta - 1.0) / (math.pi * alpha2) * (1.0 + (dx * dx + dy * dy) / alpha2) ** -beta


