"""Object-level summaries of forced light curves: arrays in, arrays out (numpy only).

Inputs are the ``forced_photometry`` rows (one per object and covering image) as flat arrays
with an ``object_id`` per row, plus whether the object was detected on that image. Outputs are
one value per object of ``ids`` (the sorted unique object ids unless given). These are the
``objects`` columns ``n_covering``, ``n_forced_nondetections`` and the reasons for ``variable``
(chi-square of the forced fluxes against a constant) and ``transient_candidate``; objects.py
wires them in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .forced import APERTURE_FLUX, BLENDED, MASKED, NEAR_EDGE, SATURATED
from .lightcurve_fits import (
    PAIR_ARCSEC,
    LineFit,
    _index,
    _weighted_mean,
    brightest_excess,
    chi2_detrended,
    chi2_sigma,
    chi2_without_worst,
    close_pairs,
    leak_plan,
    neighbour_leak,
)

__all__ = [
    "DEEP_MARGIN_MAG",
    "OBJECT_VARIABILITY_SCHEMA",
    "PAIR_ARCSEC",
    "QUIET_SNR",
    "TRANSIENT_SNR",
    "CalibrationFit",
    "EpochRows",
    "ForcedRows",
    "LineFit",
    "SummaryOptions",
    "TransientRule",
    "brightest_excess",
    "chi2_constant",
    "chi2_detrended",
    "chi2_sigma",
    "chi2_without_worst",
    "close_pairs",
    "image_calibration",
    "n_covering",
    "n_forced_nondetections",
    "neighbour_leak",
    "summarize",
    "transient_candidate",
]

#: A covering image is deep enough to rule out a detection when its limit is this much
#: fainter than the object's detected magnitude.
DEEP_MARGIN_MAG = 0.5
#: Forced SNR below which a deep image "shows no flux" at the position.
QUIET_SNR = 3.0
#: Detections this significant make an object a transient candidate (with quiet deep images).
DETECTED_SNR = 5.0
#: ... in :func:`summarize` (forced PSF fluxes): a detection with forced SNR >= 10, the
#: issue's yardstick. At 5-10 the forced PSF fit finds single detections in the wings of
#: bright stars (17-18 mag, 1.5-2" away) that no other image confirms: 7-16 false candidates
#: per 600 objects on the synthetic survey, against none of the true transients lost.
TRANSIENT_SNR = 10.0


#: Table ``object_variability`` (forced_run.summarize_forced): one row per object, partitioned
#: like ``objects`` (``<catalog>/object_variability/hpx5=<P>/variability.parquet``). The SQL
#: view ``objects`` joins it (queries.objects_view_sql).
OBJECT_VARIABILITY_SCHEMA = pa.schema(
    [
        pa.field("object_id", pa.int64(), nullable=False),
        pa.field("n_covering", pa.int32()),  # forced rows: images that covered it
        pa.field("n_forced_nondetections", pa.int32()),  # covering images without a detection
        pa.field("forced_chi2", pa.float64()),  # vs a constant, summed over bands
        pa.field("forced_dof", pa.int32()),
        pa.field("forced_chi2_reduced", pa.float64()),
        pa.field("variability_sigma", pa.float64()),  # chi2 excess in Gaussian sigma
        pa.field("max_detected_snr", pa.float64()),  # forced SNR on images that detected it
        pa.field("detected_mag", pa.float64()),  # brightest forced mag where detected, SNR>=10
        pa.field("n_deep_quiet", pa.int32()),  # deep covering images with no flux (SNR < 3)
        pa.field("variable", pa.bool_()),
        pa.field("transient_candidate", pa.bool_()),
        pa.field("pipeline_version", pa.string()),
    ]
)


def n_covering(object_id, ids=None) -> np.ndarray:
    """Number of covering images (forced rows) per object.

    Parameters
    ----------
    object_id : array_like of int
        ``forced_photometry.object_id``, one per row.
    ids : array_like of int, optional
        The objects to report (default: the sorted unique ``object_id``).

    Returns
    -------
    ndarray of int32
        One per object of *ids*.
    """
    ids, idx = _index(object_id, ids)
    return np.bincount(idx[idx >= 0], minlength=ids.size).astype(np.int32)


def n_forced_nondetections(object_id, detected, ids=None) -> np.ndarray:
    """Covering images on which the object was not detected (no associated source).

    Parameters
    ----------
    object_id : array_like of int
        ``forced_photometry.object_id``, one per row.
    detected : array_like of bool
        Per row, a source of that image is associated with the object.
    ids : array_like of int, optional
        The objects to report (default: the sorted unique ``object_id``).

    Returns
    -------
    ndarray of int32
        One per object of *ids*.
    """
    ids, idx = _index(object_id, ids)
    miss = (idx >= 0) & ~np.asarray(detected, bool)
    return np.bincount(idx[miss], minlength=ids.size).astype(np.int32)


def chi2_constant(object_id, flux, flux_err, ids=None, *, floor: float = 0.0):
    """Chi-square of each object's forced fluxes against their weighted mean (a constant).

    Rows with a non-finite flux or a non-positive error are left out. *floor* adds a
    fractional systematic error (``floor * |mean flux|``) in quadrature.

    Parameters
    ----------
    object_id : array_like of int
        Per row, the object (or any key).
    flux, flux_err : array_like
        Per row, flux and error.
    ids : array_like of int, optional
        The keys to report (default: the sorted unique *object_id*).
    floor : float
        Fractional systematic error.

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
    mean = _weighted_mean(i, f, e, ids.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = e**2 + (floor * np.abs(mean[i])) ** 2
        chi2 = np.bincount(i, (f - mean[i]) ** 2 / var, minlength=ids.size)
    dof = np.maximum(n - 1, 0)
    return np.where(n >= 2, chi2, np.nan), dof.astype(np.int32), mean


@dataclass(frozen=True)
class EpochRows:
    """The forced rows :func:`transient_candidate` reads (array_like, one element per row):
    object, source associated on that image (bool), forced SNR, magnitude, 5-sigma limit,
    and optionally the image's seeing (e.g. its aperture radius)."""

    object_id: np.ndarray
    detected: np.ndarray
    snr: np.ndarray
    mag: np.ndarray
    mag_limit: np.ndarray
    seeing: np.ndarray | None = None


@dataclass(frozen=True)
class TransientRule:
    """The thresholds of :func:`transient_candidate` (its docstring says what each does);
    ``faded_mag=None``: no "faded" verdict."""

    detected_snr: float = DETECTED_SNR
    margin: float = DEEP_MARGIN_MAG
    quiet_snr: float = QUIET_SNR
    faded_mag: float | None = None
    quiet_fraction: float = 0.0


def transient_candidate(rows: EpochRows, ids=None, rule: TransientRule | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The transient rule on forced rows.

    An object is a candidate when it is significantly detected on some epochs (detected with
    forced SNR >= *detected_snr*) and at least one image that covered it deeply enough
    (``mag_limit`` >= its brightest detected magnitude + *margin*) shows no flux there
    (not detected and forced SNR < *quiet_snr*).

    With *faded_mag*, a deep image also "shows no flux" when it holds no detection and its
    forced magnitude is at least *faded_mag* fainter than the brightest detection, in
    seeing at least as bad (*seeing* per row, e.g. the aperture radius, >= the brightest
    detection's): a transient 1-2" from a star whose light fills the aperture on every
    night (measured: 6 of 28 synthetic transients) is otherwise never quiet, while a piece of
    a bright star's wing detected in poor seeing does not fade in poorer seeing.

    With *quiet_fraction*, at least that fraction of the deep images without a detection
    must show no flux: a piece of a star detected once, whose position shows flux on 8 of
    9 other deep images, is not a transient.

    Parameters
    ----------
    rows : EpochRows
        Per forced row: object, whether a source was associated on that image, forced SNR,
        forced magnitude, forced 5-sigma limit, and optionally the seeing.
    ids : array_like of int, optional
        The objects to report (default: the sorted unique ``rows.object_id``).
    rule : TransientRule, optional
        The thresholds (default: ``TransientRule()``, without *faded_mag*).

    Returns
    -------
    candidate : ndarray of bool
    n_deep_quiet : ndarray of int
        The deep images with no flux (the reason, with the detections).
    """
    r = rule or TransientRule()
    detected_snr, margin, quiet_snr = r.detected_snr, r.margin, r.quiet_snr
    faded_mag, quiet_fraction, seeing = r.faded_mag, r.quiet_fraction, rows.seeing
    ids, idx = _index(rows.object_id, ids)
    detected = np.asarray(rows.detected, bool)
    snr, mag, limit = (np.asarray(v, float) for v in (rows.snr, rows.mag, rows.mag_limit))
    with np.errstate(invalid="ignore"):
        strong = (idx >= 0) & detected & (snr >= detected_snr) & np.isfinite(mag)
    brightest = np.full(ids.size, np.inf)
    np.minimum.at(brightest, idx[strong], mag[strong])
    with np.errstate(invalid="ignore"):
        faint = ~(snr >= quiet_snr)
        if faded_mag is not None:
            faded = mag >= brightest[np.maximum(idx, 0)] + faded_mag
            if seeing is not None:
                seeing = np.asarray(seeing, float)
                at = strong & (mag == brightest[np.maximum(idx, 0)])
                det_seeing = np.full(ids.size, np.inf)
                np.minimum.at(det_seeing, idx[at], seeing[at])
                faded &= seeing >= det_seeing[np.maximum(idx, 0)]
            faint |= faded
        deep_miss = ((idx >= 0) & ~detected & np.isfinite(limit) & ~np.isinf(snr)
                     & (limit >= brightest[np.maximum(idx, 0)] + margin))
        deep = deep_miss & faint
    n_deep_quiet = np.bincount(idx[deep], minlength=ids.size).astype(np.int32)
    n_deep_miss = np.bincount(idx[deep_miss], minlength=ids.size)
    has_detection = np.isfinite(brightest)
    return (has_detection & (n_deep_quiet > 0) & (n_deep_quiet >= quiet_fraction * n_deep_miss),
            n_deep_quiet)


# ---- the per-object summary of a whole forced table (forced_run.summarize_forced) ----------

#: Forced rows whose flux is not trusted for the constant-flux test or a "no flux" verdict:
#: saturated pixels, masked pixels in the aperture, aperture truncated by the edge
UNTRUSTED_FLAGS = SATURATED | MASKED | NEAR_EDGE
#: Rows that never show "no flux" for the transient rule: fitted jointly with an object so
#: close that the two fluxes trade: a star split into two objects 0.4" apart measures near
#: zero on one of them in some images.
NOT_QUIET_FLAGS = BLENDED
#: Aperture fallback rows (no PSF model on that image). They take no part
#: in the chi-square of an (object, band) that has MIN_PSF_ROWS PSF rows: a faint star 2" from
#: an 18 mag star measures its neighbour's light in the aperture, as the seeing allows
#: (constant 256² fields, 4 nights: 3-6 false variables from two aperture epochs).
APERTURE_ROWS = APERTURE_FLUX
MIN_PSF_ROWS = 2
#: A fractional systematic error added in quadrature to every forced flux (flat-field, PSF
#: and aperture-correction errors the per-point errors do not hold).
SYSTEMATIC_FLOOR = 0.01
#: Fewer calibration objects than this on an image: its scale is left at 1.
MIN_CALIBRATION_OBJECTS = 10
#: ``variable`` when the chi-square against a constant is this many Gaussian sigma above its
#: expectation (Wilson-Hilferty), with at least :data:`MIN_VARIABLE_DOF` degrees of freedom.
VARIABLE_SIGMA = 5.0
MIN_VARIABLE_DOF = 2
#: ... and still this many sigma with each (object, band)'s most deviant point left out
#: (:func:`chi2_without_worst`), where that leaves :data:`ONE_EPOCH_MIN_DOF` degrees of
#: freedom or more: a one-night transient on or beside a constant star (its excess is one
#: epoch's) is not a variable. 3, not 5: variables with 2-3 points per band lose most of
#: their excess with one point; 5 cost 1 of 39 variables on seed 5 and 1 of 35 on seed 31.
ONE_EPOCH_SIGMA = 3.0
ONE_EPOCH_MIN_DOF = 6
#: Fewer degrees of freedom than this (all bands): ``variable`` needs
#: :data:`FEW_POINTS_SIGMA`. With 2-3 trusted points per band (the rest saturated, masked
#: or at the edge) a bright star whose flux trades with a neighbour's 1-1.5" away reached
#: 5-7 sigma (seeds 31 and 45); the variables with so few points measured 15-30 sigma.
FEW_POINTS_DOF = 5
FEW_POINTS_SIGMA = 8.0
#: A variable of a close pair (:data:`PAIR_ARCSEC`) whose excess is below this fraction of
#: its neighbour's (both variable) is not ``variable``: the neighbour's changing light is in
#: its forced flux (unresolved in the seeing; the leak test regresses out one neighbour, and
#: a second variable or one with no object of its own is left: seed 5, 8 vs 71 sigma).
BLEND_RATIO = 0.3
#: A deep image without a detection whose forced magnitude is this much fainter than the
#: brightest detection counts as "no flux" (a transient on a faint host, or beside a star),
#: see :func:`transient_candidate`. With aperture fluxes it was 1.0; with PSF fluxes 1.0
#: let a constant star measured 1 mag faint once (a blend) be a candidate.
FADED_MAG = 1.5
#: Of the deep images without a detection, at least this fraction must show no flux (PSF
#: fluxes: a quiet majority; 0.2 let pieces of bright stars' wings, quiet on 2 of 10 deep
#: images, be candidates).
QUIET_FRACTION = 0.6

_SUMMARY_COLUMNS = ("n_covering", "n_forced_nondetections", "forced_chi2", "forced_dof",
                    "forced_chi2_reduced", "variability_sigma", "max_detected_snr",
                    "detected_mag", "n_deep_quiet", "variable", "transient_candidate")


def _key_means(inv, n_keys, flux, err, ok):
    w = np.where(ok, 1.0 / np.where(ok, err, 1.0) ** 2, 0.0)
    sw = np.bincount(inv, w, minlength=n_keys)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(inv, w * np.where(ok, flux, 0.0), minlength=n_keys) / sw


@dataclass(frozen=True)
class CalibrationFit:
    """How :func:`image_calibration` fits: image codes reported (None: the largest + 1),
    fewest good rows per image, clipping iterations and threshold (sigma)."""

    n_images: int | None = None
    min_objects: int = MIN_CALIBRATION_OBJECTS
    n_iter: int = 3
    clip: float = 4.0


def image_calibration(row_image, row_key, flux, flux_err, good,
                      fit: CalibrationFit | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per image, ``(scale, offset)`` with ``flux ~ scale * mean + offset`` over its objects.

    *mean* is each (object, band)'s weighted mean forced flux over all images. A calibration
    offset (zero point off by ~1%) multiplies every flux of an image (*scale*); light the
    background left in (unresolved faint stars, a sky level a little off) adds the same flux
    to every aperture of the image (*offset*, larger with the seeing's larger apertures:
    measured +20-50% on 20th-magnitude stars of a crowded synthetic field). Both are fitted
    by weighted least squares with a 2% spread and *clip*-sigma clipping (variables drop
    out), twice with means of corrected fluxes. Images with fewer than *min_objects* good
    rows get ``(1, 0)``. Corrected flux: ``(flux - offset) / scale``.

    Parameters
    ----------
    row_image, row_key : array_like of int
        Per row, the image code and the (object, band) key.
    flux, flux_err : array_like
        Per row, forced flux and error.
    good : array_like of bool
        Per row, usable for the calibration.
    fit : CalibrationFit, optional
        Number of image codes, fewest good rows per image, clipping (default:
        ``CalibrationFit()``).

    Returns
    -------
    scale, offset : ndarray
        Per image code.
    """
    keys, inv = np.unique(row_key, return_inverse=True)
    flux, err = np.asarray(flux, float), np.asarray(flux_err, float)
    row_image = np.asarray(row_image, np.int64)
    fit = fit or CalibrationFit()
    min_objects, n_iter, clip = fit.min_objects, fit.n_iter, fit.clip
    n_images = fit.n_images if fit.n_images is not None else (
        int(row_image.max()) + 1 if row_image.size else 0)
    ok = good & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    scale, offset = np.ones(n_images), np.zeros(n_images)
    order = np.argsort(row_image, kind="stable")
    bounds = np.searchsorted(row_image[order], np.arange(n_images + 1))
    for _ in range(2):
        corrected = (flux - offset[row_image]) / scale[row_image]
        mean = _key_means(inv, keys.size, corrected, err / scale[row_image], ok)
        for i in range(n_images):
            rows = order[bounds[i]:bounds[i + 1]]
            rows = rows[ok[rows] & np.isfinite(mean[inv[rows]])]
            if rows.size < min_objects:
                continue
            x, y, e = mean[inv[rows]], flux[rows], err[rows]
            keep = np.ones(rows.size, bool)
            for _ in range(n_iter):
                w = 1.0 / (e**2 + (0.02 * x) ** 2)
                a = np.c_[x, np.ones(x.size)][keep] * np.sqrt(w[keep])[:, None]
                coef = np.linalg.lstsq(a, y[keep] * np.sqrt(w[keep]), rcond=None)[0]
                resid = (y - coef[0] * x - coef[1]) * np.sqrt(w)
                keep = np.abs(resid) < clip
                if keep.sum() < min_objects:
                    break
            if coef[0] > 0:
                scale[i], offset[i] = coef
    return scale, offset


@dataclass(frozen=True)
class ForcedRows:
    """The forced rows :func:`summarize` reads, one array element per row.

    Attributes
    ----------
    object_id, band, image : ndarray of int
        Object; band and image as small integer codes.
    detected : ndarray of bool
        A source of that image is associated with the object.
    flux, flux_err, snr, mag, mag_limit : ndarray of float
        ``forced_photometry``'s columns.
    flags : ndarray of int
        ``forced_photometry.flags``.
    mjd : ndarray of float, optional
        ``forced_photometry.mjd`` (the night of an image; without it no transient on a
        host is found).
    """

    object_id: np.ndarray
    band: np.ndarray
    image: np.ndarray
    detected: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    snr: np.ndarray
    mag: np.ndarray
    mag_limit: np.ndarray
    flags: np.ndarray
    mjd: np.ndarray | None = None


@dataclass(frozen=True)
class SummaryOptions:
    """How :func:`summarize` decides.

    Attributes
    ----------
    image_x : ndarray, optional
        Per image code, a quantity the forced flux of a constant object may follow (the
        image's aperture radius): the chi-square is then taken against a line in it
        (:func:`chi2_detrended`) instead of a constant.
    pairs : (ndarray, ndarray), optional
        Positions in *ids* of objects close to each other (:func:`close_pairs`): a variable
        object's chi-square is taken again with its neighbour's flux as a regressor
        (:func:`neighbour_leak`).
    floor, variable_sigma : float
        Systematic fractional error; the ``variable`` threshold in Gaussian sigma.
    detected_snr, margin, quiet_snr, faded_mag, quiet_fraction
        The transient rule's (:func:`transient_candidate`).
    """

    image_x: np.ndarray | None = None
    pairs: tuple | None = None
    floor: float = SYSTEMATIC_FLOOR
    variable_sigma: float = VARIABLE_SIGMA
    detected_snr: float = TRANSIENT_SNR
    margin: float = DEEP_MARGIN_MAG
    quiet_snr: float = QUIET_SNR
    faded_mag: float | None = FADED_MAG
    quiet_fraction: float = QUIET_FRACTION


#: A deep image without a detection whose forced magnitude is at least this much fainter than
#: the brightest detection shows "no flux" in any seeing (the faded rule's seeing condition
#: guards against a bright star's wing, which never fades by 10x): a transient on a faint host
#: measured in better seeing than its detection.
FADED_ANY_SEEING_MAG = 2.5


def _seeing_rows(image_x, image, key, keys, det, detected_snr):
    """Per row, the seeing :func:`transient_candidate` compares (image_x of the row's
    image); +inf where the row is :data:`FADED_ANY_SEEING_MAG` fainter than its key's
    brightest detection. None without image_x."""
    if image_x is None or not image.size:
        return None
    detected, snr, mag = det
    seeing = np.asarray(image_x, float)[image]
    _, pos = _index(key, keys)
    with np.errstate(invalid="ignore"):
        strong = (pos >= 0) & detected & (snr >= detected_snr) & np.isfinite(mag)
    brightest = np.full(keys.size, np.inf)
    np.minimum.at(brightest, pos[strong], mag[strong])
    with np.errstate(invalid="ignore"):
        far = (pos >= 0) & ~detected & (mag >= brightest[np.maximum(pos, 0)]
                                        + FADED_ANY_SEEING_MAG)
    return np.where(far, np.inf, seeing)


#: Of all the deep images of a candidate (detected there or not), at least this fraction must
#: show no flux or a detection FADED_MAG fainter than the brightest (a host): a star detected
#: on 6 of 7 deep images and measured at SNR 2 on the seventh (a bright neighbour's wing in
#: poor seeing) is not a transient; a one-night transient is quiet on all nights but its own.
QUIET_FRACTION_ALL = 0.5


def _deep_images(key, keys, det, limit, rule):
    """Per key, the covering images whose limit reaches its brightest detection + margin,
    and those of them with a detection at least *faded_mag* fainter than the brightest (a
    transient's host); *det*: ``(detected, snr, mag)`` per row, *rule*: ``(detected_snr,
    margin, faded_mag)``."""
    detected, snr, mag = det
    detected_snr, margin, faded_mag = rule
    _, pos = _index(key, keys)
    limit = np.asarray(limit, float)
    with np.errstate(invalid="ignore"):
        strong = (pos >= 0) & detected & (snr >= detected_snr) & np.isfinite(mag)
    brightest = np.full(keys.size, np.inf)
    np.minimum.at(brightest, pos[strong], mag[strong])
    top = brightest[np.maximum(pos, 0)]
    with np.errstate(invalid="ignore"):
        deep = (pos >= 0) & np.isfinite(limit) & (limit >= top + margin)
        faded = deep & detected & (mag >= top + (faded_mag if faded_mag is not None
                                                 else np.inf))
    return (np.bincount(pos[deep], minlength=keys.size),
            np.bincount(pos[faded], minlength=keys.size))


#: A transient on its host (:func:`_on_host`): the other points must agree with their mean
#: within this many sigma, and there must be at least :data:`HOST_MIN_REST` of them (a
#: variable with 3-4 trusted points per band can look constant but for one).
HOST_REST_PULL = 3.0
HOST_MIN_REST = 5
#: ... and the other band(s) of the same night must show an excess of at least this SNR:
#: a forced flux 2-3 times too high on one image only (a measurement fault, seen on two
#: constant stars of one image of seed 41) is not a transient.
HOST_CONFIRM_SNR = 5.0


def _on_host(key, keys, cal, usable, limit):
    """Per key, a one-night transient on a host detected every night: the brightest usable
    point is a detection whose excess over the mean of the others has SNR >= TRANSIENT_SNR,
    the others agree with their mean within :data:`HOST_REST_PULL` sigma (the host is
    constant), the host is detected on at least half of them, and at least half of them (and
    :data:`HOST_MIN_REST`) reach the excess's magnitude + DEEP_MARGIN_MAG (they would have
    shown it). *cal*: ``(detected, flux, err, zp)`` per row, calibrated, *err* with the
    systematic floor; *usable*: trusted rows not flagged BLENDED. Returns ``(passed,
    excess_snr, top row)`` per key."""
    detected, f, e, zp = cal
    top, excess_snr, pull = brightest_excess(key, f, e, keys, usable)
    _, pos = _index(key, keys)
    t = np.maximum(top, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rest = np.isfinite(pull)
        n_rest = np.bincount(pos[rest], minlength=keys.size)
        n_host = np.bincount(pos[rest & detected], minlength=keys.size)
        worst = np.zeros(keys.size)
        np.maximum.at(worst, pos[rest], pull[rest])
        sw = np.bincount(pos[rest], 1.0 / e[rest] ** 2, minlength=keys.size)
        base = np.bincount(pos[rest], f[rest] / e[rest] ** 2, minlength=keys.size) / sw
        excess_mag = zp[t] - 2.5 * np.log10(np.where(f[t] - base > 0, f[t] - base, np.nan))
        deep = rest & (np.asarray(limit, float) >= excess_mag[np.maximum(pos, 0)]
                       + DEEP_MARGIN_MAG)
        n_deep = np.bincount(pos[deep], minlength=keys.size)
        passed = ((top >= 0) & detected[t] & (excess_snr >= TRANSIENT_SNR)
                  & (n_rest >= HOST_MIN_REST) & (worst <= HOST_REST_PULL)
                  & (2 * n_host >= n_rest) & (n_deep >= HOST_MIN_REST)
                  & (2 * n_deep >= n_rest))
    return passed, excess_snr, top


def _host_transients(keys, n_bands, n_objects, host, mjd):
    """Per object, a transient on its host (:func:`_on_host`'s *host* ``(passed,
    excess_snr, top)``) confirmed by another band's excess of at least
    :data:`HOST_CONFIRM_SNR` on the same night (*mjd* per row, None: no verdict), and
    per object the largest excess SNR of any band."""
    passed, excess_snr, top = host
    obj, band = keys // n_bands, keys % n_bands
    best = np.full(n_objects, -np.inf)
    np.maximum.at(best, obj, np.where(np.isfinite(excess_snr), excess_snr, -np.inf))
    if mjd is None:
        return np.zeros(n_objects, bool), best
    night = np.full((n_objects, n_bands), np.nan)
    exc = np.full((n_objects, n_bands), -np.inf)
    have = top >= 0
    night[obj[have], band[have]] = np.asarray(mjd, float)[top[have]]
    exc[obj[have], band[have]] = excess_snr[have]
    found = np.zeros(n_objects, bool)
    for b in range(n_bands):
        ok = np.zeros(n_objects, bool)
        for c in range(n_bands):
            if c != b:
                with np.errstate(invalid="ignore"):
                    ok |= (exc[:, c] >= HOST_CONFIRM_SNR) & (np.abs(night[:, c]
                                                                    - night[:, b]) < 0.5)
        hit = passed & (band == b)
        found[obj[hit][ok[obj[hit]]]] = True
    return found, best


def summarize(ids, rows: ForcedRows, options: SummaryOptions | None = None
              ) -> dict[str, np.ndarray]:
    """The ``object_variability`` columns of objects *ids* from their forced rows.

    Parameters
    ----------
    ids : array_like of int
        The objects to report (one output row each, covered or not).
    rows : ForcedRows
        The forced rows of these objects.
    options : SummaryOptions, optional
        Detrending quantity, close pairs, thresholds (defaults: the module's constants).

    Returns
    -------
    dict of ndarray
        The :data:`OBJECT_VARIABILITY_SCHEMA` columns but ``object_id`` and
        ``pipeline_version``, one value per object of *ids*.

    Notes
    -----
    Fluxes are corrected by their image's :func:`image_calibration`; the chi-square against a
    constant is taken per (object, band) with *floor* added in quadrature, then errors of
    each band are scaled by the square root of the band's median reduced chi-square (never
    shrunk, as ``objects.statistics.error_scale``) and the bands' chi-squares are summed.
    Rows with :data:`UNTRUSTED_FLAGS` take no part in the chi-square nor in "no flux" verdicts;
    aperture rows (:data:`APERTURE_ROWS`) none in the chi-square of a key with
    :data:`MIN_PSF_ROWS` PSF rows.
    ``variable`` also needs :data:`ONE_EPOCH_SIGMA` with each key's most deviant point left
    out (:func:`chi2_without_worst`), where that leaves :data:`ONE_EPOCH_MIN_DOF` or more;
    :data:`FEW_POINTS_SIGMA` below :data:`FEW_POINTS_DOF`; and not to be a close pair's
    member below :data:`BLEND_RATIO` of its variable neighbour's excess.
    The transient rule (:func:`transient_candidate`, with *faded_mag*) is applied per band
    on calibrated fluxes; an object is a candidate when it is one in some band, or when it
    holds a transient on a host detected every night (:func:`_on_host`, confirmed by another
    band of the same night, needs ``rows.mjd``) unless a neighbour closer than
    :data:`PAIR_ARCSEC` is a candidate of the first kind with a larger excess (that
    neighbour's transient leaking in).
    """
    o = options or SummaryOptions()
    image_x, floor, variable_sigma = o.image_x, o.floor, o.variable_sigma
    detected_snr, margin, quiet_snr = o.detected_snr, o.margin, o.quiet_snr
    faded_mag, quiet_fraction = o.faded_mag, o.quiet_fraction
    object_id, band, image, detected = rows.object_id, rows.band, rows.image, rows.detected
    flux, flux_err, snr, mag, mag_limit, flags = (rows.flux, rows.flux_err, rows.snr, rows.mag,
                                                  rows.mag_limit, rows.flags)
    ids = np.asarray(ids, np.int64)
    object_id = np.asarray(object_id, np.int64)
    band = np.asarray(band, np.int64)
    image = np.asarray(image, np.int64)
    detected = np.asarray(detected, bool)
    flux, err, snr = (np.asarray(v, float) for v in (flux, flux_err, snr))
    good = (np.asarray(flags, np.int64) & UNTRUSTED_FLAGS) == 0
    _, idx = _index(object_id, ids)
    n_bands = int(band.max()) + 1 if band.size else 1
    key = np.where(idx >= 0, idx, -1) * n_bands + band
    scale, offset = image_calibration(image, key, flux, err, good & (idx >= 0))
    f = (flux - offset[image]) / scale[image] if image.size else flux
    e = err / scale[image] if image.size else err
    aperture = (np.asarray(flags, np.int64) & APERTURE_ROWS) != 0
    k0 = key - key.min(initial=0)
    n_psf = np.bincount(k0[good & ~aperture & (idx >= 0)], minlength=k0.max(initial=-1) + 1)
    mixed = aperture & (n_psf[k0] >= MIN_PSF_ROWS)
    f_ok = np.where(good & ~mixed, f, np.nan)  # one method per light curve: the PSF's
    keys = np.unique(key[idx >= 0])
    x_row = None if image_x is None or not image.size else np.asarray(image_x, float)[image]
    if x_row is None:
        chi2, dof, _ = chi2_constant(key, f_ok, e, keys, floor=floor)
    else:
        chi2, dof, _ = chi2_detrended(key, f_ok, e, x_row, keys, LineFit(floor=floor))
    key_band = keys % n_bands
    key_obj = keys // n_bands
    red = np.where(dof > 0, chi2 / np.maximum(dof, 1), np.nan)
    band_scale = np.ones(n_bands)  # before the leak test, which lowers some chi-squares
    for b in range(n_bands):
        values = red[(key_band == b) & (dof >= MIN_VARIABLE_DOF) & np.isfinite(red)]
        if values.size >= 20:
            band_scale[b] = max(1.0, float(np.median(values)))
    # the one-epoch test (a transient on a constant star): each key's worst point left out
    lo_chi2, lo_dof = chi2_without_worst(key, f_ok, e, x_row, keys, LineFit(floor=floor))
    lo_chi2 = np.where(np.isfinite(lo_chi2), lo_chi2, 0.0) / band_scale[key_band]
    lo_dof = np.bincount(key_obj, lo_dof, minlength=ids.size)
    sigma_lo = np.where(lo_dof >= ONE_EPOCH_MIN_DOF, chi2_sigma(
        np.bincount(key_obj, lo_chi2, minlength=ids.size), lo_dof), np.inf)
    if o.pairs is not None and len(o.pairs[0]) and keys.size:
        follower, leader = leak_plan(keys, chi2, dof, o.pairs, n_bands)
        e_floor = np.sqrt(e**2 + (floor * np.abs(f)) ** 2)
        chi2, dof = neighbour_leak(key, f_ok, e_floor, image, chi2,
                                   (keys, follower, leader, x_row, dof))
    chi2 = np.where(np.isfinite(chi2), chi2, 0.0) / band_scale[key_band]
    tot_chi2 = np.bincount(key_obj, chi2, minlength=ids.size)
    tot_dof = np.bincount(key_obj, dof, minlength=ids.size).astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        reduced = np.where(tot_dof > 0, tot_chi2 / np.maximum(tot_dof, 1), np.nan)
    sigma = chi2_sigma(tot_chi2, tot_dof)
    variable = ((tot_dof >= MIN_VARIABLE_DOF) & (sigma >= variable_sigma)
                & (sigma_lo >= ONE_EPOCH_SIGMA)  # not one epoch's excess alone
                & ((tot_dof >= FEW_POINTS_DOF) | (sigma >= FEW_POINTS_SIGMA)))
    if o.pairs is not None and len(o.pairs[0]):  # blended with a far stronger variable
        pi, pj = (np.asarray(v, np.int64) for v in o.pairs)
        hit = variable[pi] & variable[pj] & (sigma[pi] < BLEND_RATIO * sigma[pj])
        variable[pi[hit]] = False
    # the verdicts use calibrated fluxes: an image whose background was over-subtracted by
    # a few hundred ADU (crowded, poor seeing) shows faint stars at SNR < 3 otherwise
    mag = np.asarray(mag, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        cal_snr = np.where(np.isfinite(f / e), f / e, snr)
        zp_row = mag + 2.5 * np.log10(np.where(flux > 0, flux, np.nan))  # the image's zero point
        zp = np.full(int(image.max()) + 1 if image.size else 0, np.nan)
        have = np.isfinite(zp_row)
        if have.any():
            order = np.argsort(image[have], kind="stable")
            im, z = image[have][order], zp_row[have][order]
            first = np.r_[0, np.flatnonzero(np.diff(im)) + 1]
            zp[im[first]] = z[first]  # one value per image (mag = zp - 2.5 log10 flux)
        cal_mag = zp[image] - 2.5 * np.log10(np.where(f > 0, f, np.nan)) if image.size else mag
    # untrusted rows, and rows whose flux trades with a neighbour's closer than ~1 FWHM
    # (forced.BLENDED), are never "no flux"
    quiet_ok = good & ((np.asarray(flags, np.int64) & NOT_QUIET_FLAGS) == 0)
    quiet_snr_used = np.where(quiet_ok | detected, cal_snr, np.inf)
    # per band: a red object detected in r is not "quiet" in a g image as deep as its r mag
    seeing = _seeing_rows(image_x, image, key, keys, (detected, cal_snr, cal_mag), detected_snr)
    key_cand, key_quiet = transient_candidate(
        EpochRows(key, detected, quiet_snr_used, cal_mag, mag_limit, seeing), keys,
        TransientRule(detected_snr, margin, quiet_snr, faded_mag, quiet_fraction))
    # rows that can never show "no flux" (untrusted, BLENDED, no detection) say nothing
    # either way: counted among the deep images they made a transient split into two objects
    # 0.5" apart (seed 48, each BLENDED on most images) fail the quiet half
    n_deep, n_faded = _deep_images(key, keys, (detected, cal_snr, cal_mag),
                                   np.where(quiet_ok | detected, mag_limit, np.nan),
                                   (detected_snr, margin, faded_mag))
    key_cand &= key_quiet + n_faded >= QUIET_FRACTION_ALL * n_deep
    e_host = np.sqrt(e**2 + (floor * np.abs(f)) ** 2) * np.sqrt(band_scale[band])
    host = _on_host(key, keys, (detected, f, e_host, zp[image] if image.size else mag),
                    quiet_ok & (idx >= 0), mag_limit)
    on_host, excess = _host_transients(keys, n_bands, ids.size, host, rows.mjd)
    candidate = np.bincount(key_obj, key_cand, minlength=ids.size) > 0
    if o.pairs is not None and len(o.pairs[0]):  # a neighbour's transient leaking in
        pi, pj = (np.asarray(v, np.int64) for v in o.pairs)
        hit = on_host[pi] & candidate[pj] & (excess[pi] < excess[pj])
        on_host[pi[hit]] = False
    candidate |= on_host
    n_deep_quiet = np.bincount(key_obj, key_quiet, minlength=ids.size).astype(np.int32)
    strong = (idx >= 0) & detected
    max_snr = np.full(ids.size, -np.inf)
    np.maximum.at(max_snr, idx[strong], np.where(np.isfinite(snr[strong]), snr[strong], -np.inf))
    brightest = np.full(ids.size, np.inf)
    use = strong & (snr >= detected_snr) & np.isfinite(cal_mag)
    np.minimum.at(brightest, idx[use], cal_mag[use])
    return {
        "n_covering": n_covering(object_id, ids),
        "n_forced_nondetections": n_forced_nondetections(object_id, detected, ids),
        "forced_chi2": np.where(tot_dof > 0, tot_chi2, np.nan),
        "forced_dof": tot_dof,
        "forced_chi2_reduced": reduced,
        "variability_sigma": sigma,
        "max_detected_snr": np.where(np.isfinite(max_snr), max_snr, np.nan),
        "detected_mag": np.where(np.isfinite(brightest), brightest, np.nan),
        "n_deep_quiet": n_deep_quiet,
        "variable": variable,
        "transient_candidate": candidate,
    }
