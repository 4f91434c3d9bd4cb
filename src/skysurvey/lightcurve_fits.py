"""The chi-squares behind ``variable`` (numpy only): a line in the seeing
(:func:`chi2_detrended`), Gaussian sigma of a chi-square (:func:`chi2_sigma`), close pairs of
objects and the neighbour-leak test (:func:`neighbour_leak`), and the one-epoch test
(:func:`chi2_without_worst`). :mod:`skysurvey.lightcurves` uses them (and hands the names on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import window_pairs

__all__ = ["PAIR_ARCSEC", "LineFit", "brightest_excess", "chi2_detrended", "chi2_sigma",
           "chi2_without_worst", "close_pairs", "leak_plan", "neighbour_leak"]


def _index(object_id, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, row -> position in ids)``; rows whose object is not in *ids* get -1.

    Strictly increasing *ids* over a span not much larger than the rows (the summary's
    (object, band) keys, object positions) are looked up in a table (one pass, no sort);
    others by binary search (the first of equal ids)."""
    object_id = np.asarray(object_id, np.int64)
    ids = np.unique(object_id) if ids is None else np.asarray(ids, np.int64)
    if ids.size and object_id.size:
        lo, hi = int(ids[0]), int(ids[-1])
        span = hi - lo + 1
        if (0 < span <= 4 * (object_id.size + ids.size) + 65536
                and (ids.size == 1 or bool(np.all(ids[1:] > ids[:-1])))):
            table = np.full(span + 1, -1, np.int64)  # the last entry: outside the span
            table[ids - lo] = np.arange(ids.size)
            inside = (object_id >= lo) & (object_id <= hi)
            return ids, table[np.where(inside, object_id - lo, span)]
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], object_id)
    pos = np.clip(pos, 0, max(ids.size - 1, 0))
    found = ids.size > 0
    hit = (ids[order][pos] == object_id) if found else np.zeros(object_id.size, bool)
    return ids, np.where(hit, order[pos] if found else -1, -1)


def _first_max(group, value, rows, m) -> np.ndarray:
    """Per group ``0..m-1``, the first of *rows* (ascending row numbers) whose *value* is
    the group's largest (NaN never is); -1 for a group without one. As the first row of each
    group after ``np.lexsort((-value, group))``, without the sort."""
    g, v = group[rows], value[rows]
    best = np.full(m, -np.inf)
    np.fmax.at(best, g, v)
    at = v == best[g]
    first = np.full(m, np.iinfo(np.int64).max)
    np.minimum.at(first, g[at], rows[at])
    return np.where(first < np.iinfo(np.int64).max, first, -1)


def chi2_sigma(chi2, dof) -> np.ndarray:
    """How many Gaussian sigma *chi2* lies above a chi-square of *dof* degrees of freedom
    (Wilson-Hilferty cube-root approximation; NaN where dof < 1).

    Parameters
    ----------
    chi2, dof : array_like
        Chi-squares and their degrees of freedom.

    Returns
    -------
    ndarray
        Gaussian sigma.
    """
    chi2, dof = np.asarray(chi2, float), np.asarray(dof, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(dof >= 1, dof, np.nan)
        v = 2.0 / (9.0 * k)
        return (np.cbrt(chi2 / k) - (1.0 - v)) / np.sqrt(v)


@dataclass(frozen=True)
class LineFit:
    """How :func:`chi2_detrended` fits: the fractional systematic error added in quadrature,
    the fewest finite points for a line (fewer: a constant)."""

    floor: float = 0.0
    min_points: int = 4


def chi2_detrended(key, flux, flux_err, x, keys, fit: LineFit | None = None):
    """Chi-square of each key's fluxes against a straight line in *x* (per row), where the key
    has at least *min_points* finite points; against a constant otherwise.

    Forced apertures grow with the seeing (the image's aperture radius is a multiple of its
    FWHM), and so does the light of neighbours and of faint unresolved stars they hold: a
    constant star with a neighbour 2" away measured 20-300% brighter in the 1.5" images than
    in the 0.9" ones. Fitting that trend per object and band (x = the image's aperture radius)
    takes it out; a variable's flux follows its phase, not the seeing, and stays.

    Returns ``(chi2, dof, mean)`` like :func:`chi2_constant` (dof = points - 2 where a line
    was fitted).

    Parameters
    ----------
    key : array_like of int
        Per row, the (object, band) key.
    flux, flux_err : array_like
        Per row, flux and error.
    x : array_like
        Per row, the quantity the flux may follow (the image's aperture radius).
    keys : array_like of int
        The keys to report.
    fit : LineFit, optional
        Systematic floor and fewest points for a line (default: ``LineFit()``).

    Returns
    -------
    chi2, dof, mean : ndarray
        Per key of *keys*.
    """
    floor, min_points = (fit or LineFit()).floor, (fit or LineFit()).min_points
    ids, idx = _index(key, keys)
    flux, err, x = (np.asarray(v, float) for v in (flux, flux_err, x))
    ok = (idx >= 0) & np.isfinite(flux) & np.isfinite(err) & (err > 0) & np.isfinite(x)
    i, f, e, xx = idx[ok], flux[ok], err[ok], x[ok]
    m = ids.size
    n = np.bincount(i, minlength=m)
    mean = _weighted_mean(i, f, e, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = e**2 + (floor * np.abs(mean[i])) ** 2
        w = 1.0 / var
        sw = np.bincount(i, w, minlength=m)
        wx = w * xx
        sx = np.bincount(i, wx, minlength=m)
        sy = np.bincount(i, w * f, minlength=m)
        sxx = np.bincount(i, wx * xx, minlength=m)  # = w * xx * xx, evaluated the same way
        sxy = np.bincount(i, wx * f, minlength=m)
        det = sw * sxx - sx**2
        line = (n >= min_points) & (det > 1e-12 * np.maximum(sw * sxx, 1e-300))
        slope = np.where(line, (sw * sxy - sx * sy) / np.where(line, det, 1.0), 0.0)
        icpt = (sy - slope * sx) / sw
        chi2 = np.bincount(i, w * (f - icpt[i] - slope[i] * xx) ** 2, minlength=m)
    dof = np.maximum(n - np.where(line, 2, 1), 0)
    return np.where(n >= 2, chi2, np.nan), dof.astype(np.int32), mean


def _weighted_mean(i, f, e, m) -> np.ndarray:
    """Per group ``0..m-1`` (*i* per row), the inverse-variance weighted mean of *f*."""
    w0 = 1.0 / e**2
    sw = np.bincount(i, w0, minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(i, w0 * f, minlength=m) / sw


#: Objects closer than this (arcsec) are pairs for :func:`neighbour_leak`.
PAIR_ARCSEC = 2.0


def close_pairs(ra, dec, radius_arcsec: float = PAIR_ARCSEC) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i != j`` both ways, of positions closer than *radius_arcsec*
    (numpy: sorted by dec, each against those within the radius in dec).

    Parameters
    ----------
    ra, dec : array_like
        Positions, degrees (non-finite ones are left out).
    radius_arcsec : float
        Pair separation limit.

    Returns
    -------
    i, j : ndarray of int
        The pairs, each one listed both ways.
    """
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    ok = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    r = radius_arcsec / 3600.0
    a, b = window_pairs(dec[ok], r)
    i, j = ok[a], ok[b]
    cosd = np.cos(np.radians(dec[i]))
    dra = (ra[i] - ra[j] + 180.0) % 360.0 - 180.0
    near = (i != j) & ((dra * cosd) ** 2 + (dec[i] - dec[j]) ** 2 < r * r)
    return i[near], j[near]


def neighbour_leak(key, flux, err, image, chi2, plan) -> tuple[np.ndarray, np.ndarray]:
    """Chi-square of each follower after its neighbour's flux is regressed out.

    In a blend closer than the seeing, a variable's changing light leaks into the forced flux
    of its neighbour at a fixed fraction (positions and model slightly off), so a constant
    star 0.4-1.4" from a variable looks variable too (measured on the synthetic survey: 2-3
    of 100 bright constant stars). *plan* is ``(keys, follower, leader, x_row, dof)``: for
    each (follower key, leader key) of one band, the follower's fluxes are fitted by
    ``a + b x + c leader_flux`` on the images both have (``x``: :class:`SummaryOptions`'
    image_x per row, or None) instead of ``a + b x``.

    Parameters
    ----------
    key : ndarray of int
        Per row, the (object, band) key.
    flux, err : ndarray
        Per row, calibrated flux (NaN: left out) and its error.
    image : ndarray of int
        Per row, the image code.
    chi2 : ndarray
        Per key of ``plan[0]``, the chi-square so far.
    plan : tuple
        ``(keys, follower, leader, x_row, dof)`` (:func:`leak_plan`).

    Returns
    -------
    chi2, dof : ndarray
        Per key, unchanged where the fit does not lower the excess (:func:`chi2_sigma`).
    """
    keys, follower, leader, x_row, dof = plan
    chi2, dof = chi2.copy(), dof.copy()
    order = np.argsort(key, kind="stable")
    sk = key[order]
    for fk, lk in zip(follower, leader, strict=True):
        rf = order[np.searchsorted(sk, keys[fk]):np.searchsorted(sk, keys[fk], "right")]
        rl = order[np.searchsorted(sk, keys[lk]):np.searchsorted(sk, keys[lk], "right")]
        rf, rl = rf[np.isfinite(flux[rf])], rl[np.isfinite(flux[rl])]
        _, a, b = np.intersect1d(image[rf], image[rl], return_indices=True)
        if a.size < 5:
            continue
        rf, rl = rf[a], rl[b]
        cols = [np.ones(a.size), flux[rl]]
        if x_row is not None:
            cols.append(x_row[rf])
        design = np.stack(cols, axis=1) / err[rf][:, None]
        target = flux[rf] / err[rf]
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        new = float(np.sum((target - design @ coef) ** 2))
        new_dof = max(a.size - design.shape[1], 0)
        if new_dof >= 1 and chi2_sigma(new, new_dof) < chi2_sigma(chi2[fk], dof[fk]):
            chi2[fk], dof[fk] = new, new_dof  # less significant: fewer points may not be
    return chi2, dof


def leak_plan(keys, chi2, dof, pairs, n_bands):
    """Follower/leader key pairs for :func:`neighbour_leak`: both keys exist (same band) and
    the follower's chi-square excess (sigma) is the smaller.

    Parameters
    ----------
    keys : ndarray of int
        The (object, band) keys, ``object position * n_bands + band``.
    chi2, dof : ndarray
        Per key.
    pairs : (ndarray, ndarray)
        Object positions of close pairs (:func:`close_pairs`).
    n_bands : int
        Number of band codes.

    Returns
    -------
    follower, leader : ndarray of int
        Positions in *keys*.
    """
    pi, pj = pairs
    sigma = chi2_sigma(chi2, dof)
    pos = {int(k): n for n, k in enumerate(keys)}
    follower, leader = [], []
    for i, j in zip(np.asarray(pi), np.asarray(pj), strict=True):
        for b in range(n_bands):
            fi, lj = pos.get(int(i) * n_bands + b), pos.get(int(j) * n_bands + b)
            if fi is None or lj is None or not sigma[fi] < sigma[lj]:
                continue
            follower.append(fi)
            leader.append(lj)
    return np.asarray(follower, np.int64), np.asarray(leader, np.int64)


def chi2_without_worst(key, flux, flux_err, x, keys, fit: LineFit | None = None):
    """:func:`chi2_detrended` again with each key's most deviant point left out.

    A variable star changes from night to night; a constant star with one bad epoch (a
    one-night transient on or beside it, a cosmic ray, a satellite trail) has all its
    excess in that epoch. Leaving out each key's point of largest ``|residual| / error``
    from the first fit tells the two apart: the variable stays significant.

    Parameters
    ----------
    key : array_like of int
        Per row, the (object, band) key.
    flux, flux_err : array_like
        Per row, flux (NaN: left out) and error.
    x : array_like or None
        Per row, the detrending quantity (None: against a constant).
    keys : array_like of int
        The keys to report.
    fit : LineFit, optional
        Systematic floor and fewest points for a line (default: ``LineFit()``).

    Returns
    -------
    chi2, dof : ndarray
        Per key of *keys*, without its worst point.
    """
    fit = fit or LineFit()
    key = np.asarray(key, np.int64)
    flux, err = np.asarray(flux, float), np.asarray(flux_err, float)
    xx = np.zeros(flux.size) if x is None else np.asarray(x, float)
    ids, idx = _index(key, keys)
    ok = (idx >= 0) & np.isfinite(flux) & np.isfinite(err) & (err > 0) & np.isfinite(xx)
    mean = _weighted_mean(idx[ok], flux[ok], err[ok], ids.size)  # chi2_detrended's mean
    # the first fit's residuals (a weighted line per key, as chi2_detrended)
    var = err**2 + (fit.floor * np.abs(mean[np.maximum(idx, 0)])) ** 2
    w = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)
    i = np.maximum(idx, 0)
    m = ids.size
    sw, sx, sy = (np.bincount(i, w * v, minlength=m) for v in (np.ones(flux.size), xx,
                                                                np.where(ok, flux, 0.0)))
    sxx = np.bincount(i, w * xx * xx, minlength=m)
    sxy = np.bincount(i, w * xx * np.where(ok, flux, 0.0), minlength=m)
    n = np.bincount(i, ok, minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        det = sw * sxx - sx**2
        line = (n >= fit.min_points) & (det > 1e-12 * np.maximum(sw * sxx, 1e-300))
        slope = np.where(line, (sw * sxy - sx * sy) / np.where(line, det, 1.0), 0.0)
        icpt = (sy - slope * sx) / sw
        pull = np.where(ok, np.abs(flux - icpt[i] - slope[i] * xx) * np.sqrt(w), -1.0)
    worst = _first_max(i, pull, np.flatnonzero(ok), m)  # ok rows: pull >= 0
    drop = np.zeros(flux.size, bool)
    drop[worst[worst >= 0]] = True
    return chi2_detrended(key, np.where(drop, np.nan, flux), err, xx, ids, fit)[:2]


def brightest_excess(key, flux, err, keys, usable):
    """Each key's brightest point against the weighted mean of its other points.

    A one-night transient on a star or galaxy that is detected on every night (its host,
    closer than the seeing, so one object holds both) never leaves a covering image "without
    flux": what it leaves is one epoch whose flux stands far above the host's, while the
    other epochs agree with each other.

    Parameters
    ----------
    key : array_like of int
        Per row, the (object, band) key.
    flux, err : array_like
        Per row, calibrated flux and its error (systematic floor included).
    keys : array_like of int
        The keys to report.
    usable : array_like of bool
        Per row, may be the brightest point or one of the others (trusted flux).

    Returns
    -------
    top : ndarray of int
        Per key, the row of its brightest usable point (-1 without two usable points).
    excess_snr : ndarray
        Per key, (brightest - mean of the others) over its error (NaN without two points).
    rest_pull : ndarray of float
        Per row, ``|flux - mean of its key's others| / err`` for the others (NaN for the
        brightest and unusable rows).
    """
    ids, idx = _index(key, keys)
    flux, err = np.asarray(flux, float), np.asarray(err, float)
    ok = ((idx >= 0) & np.asarray(usable, bool) & np.isfinite(flux) & np.isfinite(err)
          & (err > 0))
    m = ids.size
    top = _first_max(idx, flux, np.flatnonzero(ok), m)  # ok rows: finite flux
    rest = ok.copy()
    rest[top[top >= 0]] = False
    i = np.maximum(idx, 0)
    w = np.where(rest, 1.0 / np.where(rest, err, 1.0) ** 2, 0.0)
    sw = np.bincount(i, w, minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        base = np.bincount(i, w * np.where(rest, flux, 0.0), minlength=m) / sw
        t = np.maximum(top, 0)
        excess_snr = np.where((top >= 0) & (sw > 0),
                              (flux[t] - base) / np.sqrt(err[t] ** 2 + 1.0 / sw), np.nan)
        rest_pull = np.where(rest, np.abs(flux - base[i]) / err, np.nan)
    top[~np.isfinite(excess_snr)] = -1
    return top, excess_snr, rest_pull
