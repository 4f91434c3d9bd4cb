"""Object-level summaries of forced light curves: arrays in, arrays out (numpy only).

Inputs are the ``forced_photometry`` rows (one per object and covering image) as flat arrays
with an ``object_id`` per row, plus whether the object was detected on that image. Outputs are
one value per object of ``ids`` (the sorted unique object ids unless given). These are the
``objects`` columns ``n_covering``, ``n_forced_nondetections`` and the reasons for ``variable``
(chi-square of the forced fluxes against a constant) and ``transient_candidate``; objects.py
wires them in.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEEP_MARGIN_MAG",
    "QUIET_SNR",
    "chi2_constant",
    "n_covering",
    "n_forced_nondetections",
    "transient_candidate",
]

#: A covering image is deep enough to rule out a detection when its limit is this much
#: fainter than the object's detected magnitude.
DEEP_MARGIN_MAG = 0.5
#: Forced SNR below which a deep image "shows no flux" at the position.
QUIET_SNR = 3.0
#: Detections this significant make an object a transient candidate (with quiet deep images).
DETECTED_SNR = 5.0


def _index(object_id, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, row -> position in ids)``; rows whose object is not in *ids* get -1."""
    object_id = np.asarray(object_id, np.int64)
    ids = np.unique(object_id) if ids is None else np.asarray(ids, np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], object_id)
    pos = np.clip(pos, 0, max(ids.size - 1, 0))
    found = ids.size > 0
    hit = (ids[order][pos] == object_id) if found else np.zeros(object_id.size, bool)
    return ids, np.where(hit, order[pos] if found else -1, -1)


def n_covering(object_id, ids=None) -> np.ndarray:
    """Number of covering images (forced rows) per object.

    Parameters
    ----------
    object_id : array_like of int
        ``forced_photometry.object_id``, one per row.
    ids : array_like of int, optional
        The objects to report (default: the sorted unique ``object_id``).
    """
    ids, idx = _index(object_id, ids)
    return np.bincount(idx[idx >= 0], minlength=ids.size).astype(np.int32)


def n_forced_nondetections(object_id, detected, ids=None) -> np.ndarray:
    """Covering images on which the object was not detected (no associated source)."""
    ids, idx = _index(object_id, ids)
    miss = (idx >= 0) & ~np.asarray(detected, bool)
    return np.bincount(idx[miss], minlength=ids.size).astype(np.int32)


def chi2_constant(object_id, flux, flux_err, ids=None, *, floor: float = 0.0):
    """Chi-square of each object's forced fluxes against their weighted mean (a constant).

    Rows with a non-finite flux or a non-positive error are left out. *floor* adds a
    fractional systematic error (``floor * |mean flux|``) in quadrature.

    Returns
    -------
    chi2 : ndarray
        Sum of squared residuals over errors (NaN with fewer than 2 points).
    dof : ndarray of int
        Points minus one (0 when fewer than 2).
    mean : ndarray
        Inverse-variance weighted mean flux (NaN without points).
    """
    ids, idx = _index(object_id, ids)
    flux, err = np.asarray(flux, float), np.asarray(flux_err, float)
    ok = (idx >= 0) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    i, f, e = idx[ok], flux[ok], err[ok]
    n = np.bincount(i, minlength=ids.size)
    w = 1.0 / e**2
    sw = np.bincount(i, w, minlength=ids.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(i, w * f, minlength=ids.size) / sw
        var = e**2 + (floor * np.abs(mean[i])) ** 2
        chi2 = np.bincount(i, (f - mean[i]) ** 2 / var, minlength=ids.size)
    dof = np.maximum(n - 1, 0)
    return np.where(n >= 2, chi2, np.nan), dof.astype(np.int32), mean


def transient_candidate(object_id, detected, snr, mag, mag_limit, ids=None, *,
                        detected_snr: float = DETECTED_SNR, margin: float = DEEP_MARGIN_MAG,
                        quiet_snr: float = QUIET_SNR) -> tuple[np.ndarray, np.ndarray]:
    """The transient rule on forced rows.

    An object is a candidate when it is significantly detected on some epochs (detected with
    forced SNR >= *detected_snr*) and at least one image that covered it deeply enough
    (``mag_limit`` >= its brightest detected magnitude + *margin*) shows no flux there
    (not detected and forced SNR < *quiet_snr*).

    Parameters
    ----------
    object_id, detected, snr, mag, mag_limit : array_like
        Per forced row: object, whether a source was associated on that image, forced SNR,
        forced magnitude, forced 5-sigma limit.

    Returns
    -------
    candidate : ndarray of bool
    n_deep_quiet : ndarray of int
        The deep images with no flux (the reason, with the detections).
    """
    ids, idx = _index(object_id, ids)
    detected = np.asarray(detected, bool)
    snr, mag, limit = (np.asarray(v, float) for v in (snr, mag, mag_limit))
    with np.errstate(invalid="ignore"):
        strong = (idx >= 0) & detected & (snr >= detected_snr) & np.isfinite(mag)
    brightest = np.full(ids.size, np.inf)
    np.minimum.at(brightest, idx[strong], mag[strong])
    with np.errstate(invalid="ignore"):
        quiet = (idx >= 0) & ~detected & ~(snr >= quiet_snr) & np.isfinite(limit)
        deep = quiet & (limit >= brightest[np.maximum(idx, 0)] + margin)
    n_deep_quiet = np.bincount(idx[deep], minlength=ids.size).astype(np.int32)
    has_detection = np.isfinite(brightest)
    return has_detection & (n_deep_quiet > 0), n_deep_quiet
