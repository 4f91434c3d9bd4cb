"""Point-source photometry from the image's own stars: aperture correction, seeing, depth.

Pure functions on the image's :class:`~skysurvey.measurement.Pixels` (background-subtracted
image, RMS map, segmentation map, mask, gain) and the columns :mod:`skysurvey.detect` has
measured (numpy and SEP only: this runs in the Lambda). :func:`measure` puts them together
with the star/galaxy separation of :mod:`skysurvey.classify`.

- The PSF stars: bright, clean sources on the stellar locus (the densest narrow range of FWHM
  among bright sources), so no seeing is ever asked for (:mod:`skysurvey.classify`).
- Aperture correction: a curve of growth built step by step from those stars, each step from
  the stars with no detected neighbour within its radius (neighbours' pixels are left out as in
  every other measurement), out to six FWHM; the light beyond comes from a Moffat profile fitted
  to the measured curve (DAOGROW's idea). ``flux_apcorr = flux_aper * correction``. The
  residual level (undetected sources, neighbours' wings) in each ring comes from random points
  as isolated as the stars, calibrated on the wings their neighbours predict
  (:func:`ring_levels`), not from a sky annulus around the stars, which on crowded fields
  holds their neighbours' wings (the correction was 2% low there).
- ``class_star``: the concentration of each source against the PSF stars'
  (:mod:`skysurvey.classify`).
- The aperture correction's error holds the residual level's; with fewer than
  JACKKNIFE_BELOW stars it is at least the jackknife error over them.
- Image figures: the seeing (the stars' half-light diameter turned into a FWHM by the Moffat
  beta of the curve of growth) and the 5-sigma point-source depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import NamedTuple

import numpy as np
import sep

from .classify import (
    MIN_PSF_STARS,
    PointSources,
    class_star,
    concentration,
    psf_stars,
    stellar_locus,
    unblended_concentration,
)
from .measurement import Pixels
from .profiles import moffat_enclosed, moffat_pixels, pairs_within, robust_sigma

__all__ = [
    "CONTROLS_PER_RING",
    "CONTROL_POINTS",
    "GROWTH_N",
    "GROWTH_REACH_FWHM",
    "JACKKNIFE_BELOW",
    "MAX_GROWTH_STARS",
    "MIN_CONTROLS",
    "MISMATCH",
    "STEP_PRECISION",
    "WING_AZIMUTHS",
    "WING_REACH",
    "Correction",
    "Growth",
    "PsfModel",
    "aperture_correction",
    "apply_aperture_correction",
    "clean_flags",
    "correction_with_error",
    "curve_of_growth",
    "depth_5sigma",
    "empty_aperture_excess",
    "fwhm_arcsec",
    "growth_correction",
    "growth_radii",
    "image_columns",
    "measure",
    "moffat_fit",
    "nearest_neighbour_distance",
    "ring_levels",
    "seeing_moffat",
    "wing_light",
]

#: Number of radii of the curve of growth.
GROWTH_N = 7
#: The curve of growth reaches at least this many stellar FWHM.
GROWTH_REACH_FWHM = 6.0
#: A step of the curve of growth measured less precisely than this comes from the model.
STEP_PRECISION = 0.003
#: Flag of a Kron radius too small or undefined (a circular flux instead; detect.py sets it).
#: It says nothing of the pixels, and most stars of an undersampled image (FWHM < 2 px) have
#: it: PSF stars, calibration stars and forced photometry's PSF stars may carry it.
KRON_FALLBACK = 4096


def clean_flags(flags) -> np.ndarray:
    """Which sources carry no flag but :data:`KRON_FALLBACK`: the rule of every star
    selection (PSF stars, calibration stars, forced photometry's PSF stars)."""
    return (np.asarray(flags, np.int64) & ~KRON_FALLBACK) == 0


#: At most this many (the brightest) PSF stars build the curve of growth.
MAX_GROWTH_STARS = 100
#: Random points whose rings measure the residual level of the curve of growth
#: (:func:`ring_levels`), and at most how many of them (the first isolated enough) per ring.
CONTROL_POINTS = 1000
CONTROLS_PER_RING = 60
MIN_CONTROLS = 5
#: Detected sources up to this many FWHM beyond the curve of growth's last radius predict
#: the light of their wings in its rings (:func:`wing_light`).
WING_REACH = 3.0
WING_AZIMUTHS = 8
#: The PSF stars' places may differ from the random points' beyond what the predicted wings
#: say (clean, unblended stars sit in emptier places): the residual level's error common to a
#: step's stars is at least this many times one place's scatter about the fit (on crowded
#: 768²-2048² fields, 25 seeds: pull rms 1.08 with it, 1.7 without).
MISMATCH = 0.5
#: With fewer PSF stars than this, the correction's error is at least its jackknife error
#: over them (the formal error of a few stars' mean misses their scatter).
JACKKNIFE_BELOW = 20


@dataclass(frozen=True)
class PsfModel:
    """What the image's stars say about its PSF."""

    fwhm: float  # pixels: the stars' half-light diameter turned into a FWHM by the Moffat beta
    #              of their curve of growth (:func:`seeing_moffat`); NaN without one
    n_stars: int  # PSF stars (bright, clean, on the stellar locus)
    aperture_correction: float  # total flux / flux in the catalog's aperture, point sources
    aperture_correction_err: float
    n_growth: int  # stars that measured at least one step of the curve of growth
    concentration: float  # median flux(r_in) / flux(r_out) of the PSF stars
    concentration_scatter: float  # intrinsic scatter of that ratio among them
    fwhm_locus: float = math.nan  # pixels: the stellar locus's FWHM (half-light diameter x 2)
    #: which sources are the PSF stars (the PSF model of psfmodel.py is built from them)
    stars: np.ndarray | None = field(default=None, compare=False, repr=False)


def nearest_neighbour_distance(x, y, which):
    """Distance from each source selected by *which* to the nearest other source (numpy only:
    a few hundred selected sources against all of them, in blocks)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    idx = np.flatnonzero(which)
    out = np.full(idx.size, np.inf)
    for start in range(0, idx.size, 256):
        block = idx[start:start + 256]
        d2 = (x[block, None] - x[None, :]) ** 2 + (y[block, None] - y[None, :]) ** 2
        d2[np.arange(block.size), block] = np.inf
        out[start:start + 256] = np.sqrt(d2.min(axis=1)) if x.size > 1 else np.inf
    return out


def _weighted_clipped_mean(values, errors, n_iter=5, clip=3.0):
    """Inverse-variance mean with iterative clipping; error from the weights or, if larger,
    from the scatter. Returns ``(mean, error, n used)``."""
    values, errors = np.asarray(values, float), np.asarray(errors, float)
    good = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    if not good.any():
        return math.nan, math.nan, 0
    for _ in range(n_iter):
        w = 1.0 / errors[good] ** 2
        mean = float(np.sum(w * values[good]) / np.sum(w))
        resid = (values - mean) / errors
        scale = max(robust_sigma(resid[good]), 1.0)
        keep = good & (np.abs(resid) <= clip * scale)
        if keep.sum() < 2 or np.array_equal(keep, good):
            break
        good = keep
    w = 1.0 / errors[good] ** 2
    mean = float(np.sum(w * values[good]) / np.sum(w))
    err = 1.0 / math.sqrt(float(np.sum(w)))
    n = int(good.sum())
    if n > 2:
        chi2 = float(np.sum(w * (values[good] - mean) ** 2) / (n - 1))
        err *= math.sqrt(max(chi2, 1.0))
    return mean, err, n


def growth_radii(radius, fwhm, n=GROWTH_N):
    """Radii of the curve of growth: geometric from the catalog's aperture out to
    GROWTH_REACH_FWHM stellar FWHM (at least three aperture radii)."""
    return np.geomspace(radius, max(GROWTH_REACH_FWHM * fwhm, 3.0 * radius), n)


def moffat_fit(radii, log_steps, log_errors, fwhm, replaced=None):
    """The Moffat curve of growth that best fits the measured steps.

    *log_steps* are the measured ``log(flux(r_k) / flux(r_k-1))`` (NaN where unmeasured);
    the grid search (beta 1.5-20: wide wings to nearly Gaussian; FWHM 0.6-1.6 x *fwhm*)
    minimises chi-square. Returns ``(model log steps, fraction of the light beyond
    radii[-1], spread)``, or ``(None, 0.0, nan)`` with fewer than two measured steps.
    *spread* is the fit's own uncertainty on the log of the light it supplies (the steps
    *replaced*, a boolean row, and the tail): half the range of that over the models within
    chi-square + 1 of the best. Where no step is precise every model fits and it is large
    (the model's 30% errors alone let a curve of growth whose steps all came out ~0 claim a
    correction of 1.00001 +- 0.000002).
    """
    log_steps, log_errors = np.asarray(log_steps, float), np.asarray(log_errors, float)
    ok = np.isfinite(log_steps) & np.isfinite(log_errors) & (log_errors > 0)
    if ok.sum() < 2:
        return None, 0.0, math.nan
    model, last = _moffat_grid(tuple(np.asarray(radii, float).tolist()), float(fwhm))
    chi2 = np.sum(((model[..., ok] - log_steps[ok]) / log_errors[ok]) ** 2, axis=-1)
    i, j = np.unravel_index(int(np.argmin(chi2)), chi2.shape)
    supplied = -np.log(last)
    if replaced is not None:
        supplied = supplied + np.sum(model[..., np.asarray(replaced, bool)], axis=-1)
    within = supplied[chi2 <= chi2[i, j] + 1.0]
    spread = 0.5 * float(within.max() - within.min())
    return model[i, j].copy(), float(1.0 - last[i, j]), spread


@lru_cache(maxsize=4)
def _moffat_grid(radii, fwhm):
    """:func:`moffat_fit`'s grid of Moffat log steps at *radii* and enclosed fractions at the
    last one (read-only; cached: the jackknife fits the same grid once per star)."""
    betas = np.geomspace(1.5, 20.0, 60)[:, None, None]
    fwhms = fwhm * np.geomspace(0.6, 1.6, 50)[None, :, None]
    alphas = fwhms / (2.0 * np.sqrt(2.0 ** (1.0 / betas) - 1.0))
    enclosed = moffat_enclosed(np.asarray(radii)[None, None, :], alphas, betas)
    model = np.log(enclosed[..., 1:] / enclosed[..., :-1])
    last = enclosed[..., -1]
    model.flags.writeable = last.flags.writeable = False
    return model, last


def _pixels(sub, x, y, r, own):
    """Pixels (exact overlap) within radius *r* that a measurement with *own* uses: the
    variance of a sum with unit error per pixel, so no image of ones is needed."""
    return sep.sum_circle(sub, x, y, r, err=1.0, subpix=0, **own)[1] ** 2


def _areas(sub, x, y, radii, own):
    """Pixels used within each of *radii* (rows: sources): pi r^2 where the largest circle
    loses no pixel (the usual case for a PSF star), counted exactly elsewhere."""
    radii = np.asarray(radii, float)
    area = np.broadcast_to(np.pi * radii**2, (len(x), radii.size)).copy()
    largest = _pixels(sub, x, y, radii[-1], own)
    partial = largest < area[:, -1] - 1e-6
    if partial.any():
        sel = {**own, "seg_id": own["seg_id"][partial]} if "seg_id" in own else own
        for k, r in enumerate(radii[:-1]):
            area[partial, k] = _pixels(sub, x[partial], y[partial], r, sel)
        # the largest circle's count is the test's (SEP measures each source on its own):
        # not measured twice (it was ~30% of these sums' pixels)
        area[partial, -1] = largest[partial]
    return area


@dataclass(frozen=True)
class Growth:
    """The PSF stars' curve of growth: sums within *radii* (rows: stars), their variance and
    pixel counts, each star's nearest-neighbour distance, and the residual level of each step's
    ring (:func:`ring_levels`): per star ``fit[k, 0] + fit[k, 1] * wings[:, k]``, covariance
    ``cov[k]``, and the variance of one place's level about it beyond the pixels' noise
    ``scatter[k]``; *fwhm* the stellar FWHM (pixels) it was measured with."""

    radii: np.ndarray
    flux: np.ndarray
    var: np.ndarray
    areas: np.ndarray
    nn: np.ndarray
    wings: np.ndarray  # (stars, steps): detected neighbours' predicted light per ring pixel
    fit: np.ndarray  # (steps, 2): residual level = fit[0] + fit[1] * wings
    cov: np.ndarray  # (steps, 2, 2)
    scatter: np.ndarray  # (steps,)
    fwhm: float = math.nan

    def level(self, k):
        """Each star's residual level per pixel in the ring of step *k* (1..)."""
        return self.fit[k - 1, 0] + self.fit[k - 1, 1] * self.wings[:, k - 1]


def curve_of_growth(pixels: Pixels, sources, stars, radius, fwhm):
    """The :class:`Growth` of *stars* at :func:`growth_radii` (other sources' pixels left out,
    noise from the RMS map).

    Parameters
    ----------
    pixels : Pixels
        The image (``sub``, ``rms``, ``segmap``, ``mask``, ``gain``).
    sources : mapping
        Every source's ``x``, ``y`` (pixels) and, optionally, ``flux`` (their wings predict
        the residual level; without it they are not used).
    stars : ndarray of bool
        Which sources are the PSF stars.
    radius : float
        The catalog's aperture radius (pixels): the first radius of the curve.
    fwhm : float
        The stellar FWHM (pixels).

    Returns
    -------
    Growth
        The stars' sums within each radius and the residual level of each ring.
    """
    sub, rms, gain = pixels.sub, pixels.rms, pixels.gain
    x, y, flux = sources["x"], sources["y"], sources.get("flux")
    idx = np.flatnonzero(stars)
    radii = growth_radii(radius, fwhm)
    nn = nearest_neighbour_distance(x, y, stars)
    own = pixels.own(idx)
    xs, ys = x[idx], y[idx]
    sums = np.empty((idx.size, radii.size))
    var = np.empty_like(sums)
    for k, r in enumerate(radii):
        f, e, flag = sep.sum_circle(sub, xs, ys, r, err=rms, gain=gain, subpix=0, **own)
        sums[:, k] = np.where(flag & sep.APER_TRUNC, np.nan, f)
        var[:, k] = e**2
    flux = np.zeros(x.size) if flux is None else np.nan_to_num(np.maximum(flux, 0.0))
    wings = partial(wing_light, sources={"x": x, "y": y, "flux": flux}, radii=radii, fwhm=fwhm)
    fit, cov, scatter = ring_levels(pixels, x, y, radii, radii[1:] + fwhm, wings)
    return Growth(radii, sums, var, _areas(sub, xs, ys, radii, own), nn, wings(xs, ys, idx),
                  fit, cov, scatter, fwhm=fwhm)


def aperture_correction(pixels: Pixels, sources, stars, radius, fwhm):
    """Total flux / flux within *radius* for point sources, from the curve of growth of *stars*
    (:func:`curve_of_growth`, :func:`growth_correction`).

    Parameters
    ----------
    pixels : Pixels
        The image.
    sources : mapping
        Every source's ``x``, ``y`` and, optionally, ``flux`` (:func:`curve_of_growth`).
    stars : ndarray of bool
        Which sources are the PSF stars.
    radius : float
        The aperture radius (pixels) to correct.
    fwhm : float
        The stellar FWHM (pixels).

    Returns
    -------
    correction, error : float
        The correction and its 1-sigma error; NaN when no step can be measured.
    n_stars : int
        Stars that measured at least one step (0 when none could).
    """
    if not np.any(stars) or not np.isfinite(fwhm):
        return math.nan, math.nan, 0
    growth = curve_of_growth(pixels, sources, stars, radius, fwhm)
    return correction_with_error(growth, fwhm)[:3]


class Correction(NamedTuple):
    """:func:`correction_with_error`'s answer: the aperture correction, its error, the stars
    that measured a step and the curve of growth's log steps (None without any)."""

    value: float
    error: float
    n_stars: int
    steps: np.ndarray | None


def correction_with_error(growth, fwhm) -> Correction:
    """``(correction, error, stars used, log steps)`` of :func:`growth_correction`; with fewer
    than JACKKNIFE_BELOW stars the error is at least the jackknife error over them: on
    256²-384² fields with 4-14 PSF stars the formal error alone was 2x too small."""
    terms = _step_terms(growth, fwhm)
    corr, corr_err, used, steps = growth_correction(growth, fwhm, terms)
    if not math.isfinite(corr):
        return Correction(corr, corr_err, 0, steps)
    if used.sum() < JACKKNIFE_BELOW:
        jackknife = _jackknife_error(growth, fwhm, terms, used)  # NaN: too few samples
        if math.isfinite(jackknife):
            corr_err = max(corr_err, jackknife)
    return Correction(corr, corr_err, int(used.sum()), steps)


def _step_terms(growth, fwhm):
    """Each step's terms for :func:`growth_correction` (None where fewer than MIN_PSF_STARS
    stars measure it): the stars (row numbers), their ``flux(r_k) / flux(r_k-1)`` less the
    residual level, its error, their ring's pixels and inner flux, and the wings predicted
    in the ring. Computed once for the jackknife's samples."""
    radii, flux, var, areas, nn = growth.radii, growth.flux, growth.var, growth.areas, growth.nn
    terms = []
    for k in range(1, radii.size):
        level = growth.level(k)
        inner = flux[:, k - 1] - level * areas[:, k - 1]
        ring_area = areas[:, k] - areas[:, k - 1]
        ring = flux[:, k] - flux[:, k - 1] - level * ring_area
        ok = (nn > radii[k] + fwhm) & (inner > 0) & np.isfinite(ring)
        if ok.sum() < MIN_PSF_STARS:
            terms.append(None)
            continue
        # each star's own place adds its scatter about the level to its ring's pixel noise
        ring_var = np.maximum(var[ok, k] - var[ok, k - 1], 0.0) + (growth.scatter[k - 1]
                                                                   * ring_area[ok] ** 2)
        err = np.maximum(np.sqrt(ring_var) / inner[ok], 1e-4)
        terms.append((np.flatnonzero(ok), 1.0 + ring[ok] / inner[ok], err, ring_area[ok],
                      inner[ok], growth.wings[ok, k - 1]))
    return terms


def growth_correction(growth, fwhm, terms=None, drop=None):
    """The aperture correction from the curve of growth of the stars (a :class:`Growth`).

    Step ``r_k-1 -> r_k`` is the clipped inverse-variance mean of ``flux(r_k) / flux(r_k-1)``
    over the stars with no detected source within ``r_k + fwhm``, each sum less each star's
    residual level of that step's ring times its pixels; the level's error, common to all the
    stars, is added to the step's. *terms*: :func:`_step_terms` (computed if None); *drop*: a
    star (row number) left out. Returns ``(correction, error, stars used (a boolean row
    mask), log steps)``; ``(nan, nan, none, None)`` when no step can be measured.
    """
    radii = growth.radii
    terms = _step_terms(growth, fwhm) if terms is None else terms
    log_steps = np.full(radii.size - 1, np.nan)
    log_errors = np.full(radii.size - 1, np.nan)
    used = np.zeros(growth.flux.shape[0], bool)
    for k, term in enumerate(terms, start=1):
        if term is None:
            continue
        if drop is not None:
            keep = term[0] != drop
            if keep.sum() < MIN_PSF_STARS:
                continue
            term = tuple(a[keep] for a in term)
        rows, values, err, ring_area, inner, wings = term
        mean, mean_err, n = _weighted_clipped_mean(values, err)
        if n >= MIN_PSF_STARS and mean > 0:
            # the level's error moves every star's step by its ring's pixels / inner flux
            w = err**-2 * ring_area / inner
            g = np.array([np.sum(w), np.sum(w * wings)]) / np.sum(err**-2)
            # and the stars' places may differ from the random points' (MISMATCH)
            common = (float(g @ growth.cov[k - 1] @ g)
                      + (MISMATCH * g[0]) ** 2 * growth.scatter[k - 1])
            mean_err = math.hypot(mean_err, math.sqrt(max(common, 0.0)))
            # enclosed light cannot decrease outwards: a step below 1 is noise in the
            # residual level or a neighbour's masked pixels: the curve has converged
            log_steps[k - 1] = math.log(max(mean, 1.0))
            log_errors[k - 1] = mean_err / mean
            used[rows] = True
    # DAOGROW's blend of data and model: a step measured to better than STEP_PRECISION is
    # kept; the others (the outer steps of a field with few bright stars, or none at all
    # where crowding leaves no isolated star) come from the Moffat fitted to all the
    # measured steps, which the precise inner ones dominate, with 30% of their size as error
    # plus the fit's own uncertainty on them (large when no step is precise)
    if not np.isfinite(log_steps).any():
        return math.nan, math.nan, used & False, None
    noisy = ~np.isfinite(log_steps) | (log_errors > STEP_PRECISION)
    model, tail, spread = moffat_fit(radii, log_steps, log_errors, fwhm, noisy)
    if model is not None:
        log_steps = np.where(noisy, model, log_steps)
        log_errors = np.where(noisy, 0.3 * np.abs(model), log_errors)
    elif not np.isfinite(log_steps).all():  # a single step: no model to go beyond it
        return math.nan, math.nan, used & False, None
    log_corr = float(np.sum(log_steps)) - math.log1p(-tail)
    var_corr = (float(np.sum(log_errors**2)) + (0.3 * tail) ** 2
                + (spread**2 if math.isfinite(spread) else 0.0))
    corr = math.exp(log_corr)
    return corr, corr * math.sqrt(var_corr), used, log_steps


def _jackknife_error(growth, fwhm, terms, used):
    """Jackknife standard error of :func:`growth_correction` (its *terms*) over the *used*
    stars."""
    values = []
    for i in np.flatnonzero(used):
        value = growth_correction(growth, fwhm, terms, drop=i)[0]
        if math.isfinite(value):
            values.append(value)
    n = len(values)
    if n < MIN_PSF_STARS:
        return math.nan
    values = np.asarray(values)
    return float(math.sqrt((n - 1) / n * np.sum((values - values.mean()) ** 2)))


def wing_light(px, py, index=None, *, sources, radii, fwhm):
    """The light per pixel the detected sources (*sources*: a mapping of their ``x``, ``y``,
    ``flux``; *index*: the source each point is, left out) predict in each ring
    ``radii[k-1]..radii[k]`` around the points (*px*, *py*): Moffat (beta 3) point sources
    whose half-light diameter is *fwhm*, averaged over WING_AZIMUTHS points of the ring's
    middle circle, from the sources within WING_REACH x *fwhm* beyond the last ring. Shape
    (points, steps). Only a predictor: :func:`ring_levels` calibrates it on random points."""
    x, y, flux = sources["x"], sources["y"], sources["flux"]
    px, py = np.asarray(px, float), np.asarray(py, float)
    out = np.zeros((px.size, radii.size - 1))
    i, j, d2 = pairs_within(x, y, px, py, radii[-1] + WING_REACH * fwhm)
    if index is not None:
        keep = j != np.asarray(index)[i]
        i, j, d2 = i[keep], j[keep], d2[keep]
    if i.size == 0:
        return out
    # averaged over WING_AZIMUTHS points on the ring's middle circle
    mid = 0.5 * (radii[1:] + radii[:-1])
    cos = np.cos((np.arange(WING_AZIMUTHS) + 0.5) * 2.0 * math.pi / WING_AZIMUTHS)
    d = np.sqrt(d2)
    dist2 = (d2[:, None, None] + mid[None, :, None] ** 2
             - 2.0 * d[:, None, None] * mid[None, :, None] * cos[None, None, :])
    light = moffat_pixels(np.sqrt(dist2), 0.0, fwhm / 1.26, 3.0).mean(axis=2)
    for k in range(radii.size - 1):
        out[:, k] = np.bincount(i, weights=light[:, k] * flux[j], minlength=px.size)
    return out


def ring_levels(pixels: Pixels, x, y, radii, isolation, wings):
    """The residual level per pixel in each ring ``radii[k-1] < r <= radii[k]`` (k >= 1)
    around the PSF stars used for that step of the curve of growth, as a line in the light
    their detected neighbours' wings predict there (*wings*: :func:`wing_light` of points).

    The background (a clipped mode) leaves out the light of sources too faint to detect and
    the wings of detected ones beyond their segments; both grow with crowding, and a star's
    apertures take them in. A sky annulus around the stars holds their neighbours' wings,
    which their isolated apertures do not (on a crowded 2048² field the correction came out
    2% low); random points as isolated (no detected source within ``isolation[k-1]``) hold
    more than the PSF stars, which are clean and unblended (2x on that field). So the same
    ring is measured around random points (CONTROL_POINTS, at pixel centres, a fixed seed; the
    first CONTROLS_PER_RING isolated ones in random order; other sources' pixels left out) and
    its level fitted, clipped at 3 sigma, with a line in their *wings*: the intercept is the sky the
    background missed, the slope calibrates the prediction. The points' scatter about the
    line beyond their pixels' noise (*rms*: scalar or map) is that of one star's level: on
    crowded fields it, not the pixels, limits the brightest stars. Returns ``(fit, cov,
    scatter)``: shapes (steps, 2), (steps, 2, 2) and (steps,); a ring with fewer than
    MIN_CONTROLS points takes the previous ring's, zeros with none.
    """
    sub, rms, segmap, mask = pixels.sub, pixels.rms, pixels.segmap, pixels.mask
    n, per_ring, seed = CONTROL_POINTS, CONTROLS_PER_RING, 0
    ny, nx = sub.shape
    steps = radii.size - 1
    fit, cov, scatter = np.zeros((steps, 2)), np.zeros((steps, 2, 2)), np.zeros(steps)
    reach = math.ceil(radii[-1])
    if nx <= 2 * reach + 1 or ny <= 2 * reach + 1:
        return fit, cov, scatter
    rng = np.random.default_rng(seed)
    cx = rng.integers(reach, nx - reach, n)
    cy = rng.integers(reach, ny - reach, n)
    i, _, d2 = pairs_within(x, y, cx.astype(float), cy.astype(float), float(np.max(isolation)))
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, i, d2)
    oy, ox = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    r = np.hypot(ox, oy)
    first = [np.flatnonzero(nearest > d**2)[:per_ring] for d in isolation]
    points = np.unique(np.concatenate(first))
    predicted = wings(cx[points].astype(float), cy[points].astype(float))
    for k in range(1, radii.size):
        chosen = np.searchsorted(points, first[k - 1])
        ring = (r > radii[k - 1]) & (r <= radii[k])
        c = points[chosen]
        flat = (cy[c, None] + oy[ring]) * nx + cx[c, None] + ox[ring]
        free = np.ones(flat.shape, bool) if segmap is None else np.take(segmap, flat) == 0
        if mask is not None:
            free &= ~np.take(mask, flat)
        count = free.sum(axis=1)
        good = count > 0  # a point amid a mask or a large segment has no pixel in the ring
        if good.sum() < MIN_CONTROLS:  # too few isolated points: the previous ring's level
            if k > 1:
                fit[k - 1], cov[k - 1], scatter[k - 1] = fit[k - 2], cov[k - 2], scatter[k - 2]
            continue
        level = np.sum(np.where(free, np.take(sub, flat), 0.0), axis=1)[good] / count[good]
        fit[k - 1], cov[k - 1], resid2 = _clipped_line(predicted[chosen[good], k - 1], level)
        at = cy[c[good]] * nx + cx[c[good]]
        noise2 = (np.take(rms, at) ** 2 if np.ndim(rms) else rms**2) / count[good]
        scatter[k - 1] = max(resid2 - float(np.median(noise2)), 0.0)
    return fit, cov, scatter


def _clipped_line(u, v, clip=3.0, n_iter=5):
    """Least-squares line ``v = a + b u`` clipped at *clip* robust sigma: ``([a, b], cov,
    residual variance)``; a constant (b = 0) when *u* has no spread."""
    keep = np.isfinite(u) & np.isfinite(v)
    if keep.sum() < 2:
        return np.zeros(2), np.zeros((2, 2)), 0.0
    spread = np.ptp(u[keep]) > 0 and keep.sum() >= MIN_CONTROLS
    for _ in range(n_iter):
        design = np.stack([np.ones(keep.sum()), u[keep] if spread else np.zeros(keep.sum())], 1)
        normal = design.T @ design
        if not spread:
            normal[1, 1] = 1.0
        inverse = np.linalg.pinv(normal)
        coef = inverse @ design.T @ v[keep]
        resid = v - coef[0] - coef[1] * u
        scale = robust_sigma(resid[keep])
        new = keep & (np.abs(resid) <= clip * scale) if scale > 0 else keep
        if new.sum() < MIN_CONTROLS or np.array_equal(new, keep):
            break
        keep = new
    dof = max(int(keep.sum()) - (2 if spread else 1), 1)
    sigma2 = float(np.sum(resid[keep] ** 2)) / dof
    cov = sigma2 * inverse
    if not spread:
        cov[1, 1] = 0.0
    return coef, cov, sigma2


def seeing_moffat(pixels: Pixels, x, y, stars, growth, correction):
    """The PSF's true FWHM (pixels) and Moffat beta from the stars' curve of growth.

    The stellar FWHM the *growth* (:func:`curve_of_growth` of the *stars*) was measured with
    (twice the half-light radius, detect's ``fwhm``) overestimates the FWHM of a
    winged profile (by 26% for a Moffat with beta = 3). The enclosed fraction of the light:
    within the catalog's aperture ``1 / correction`` (*correction*: :func:`correction_with_error`),
    beyond it the curve of growth's steps (neighbours' light out with the residual level),
    inside it the stacked sums of the stars isolated there; a Moffat profile (beta 1.5-20:
    wide wings to nearly Gaussian) is fitted to it, and its beta gives the ratio of FWHM to
    half-light diameter for that profile (``(nan, nan)`` without stars or steps). Measured
    with a sky annulus around the stars, beta came out 4.1-4.3 instead of 3 on crowded
    fields (their neighbours' wings in it) and the seeing 5% wide.
    """
    sub, fwhm = pixels.sub, growth.fwhm
    steps, correction = correction.steps, correction.value
    idx = np.flatnonzero(stars)
    if idx.size == 0 or not np.isfinite(fwhm) or steps is None or not np.isfinite(correction):
        return math.nan, math.nan
    radii = growth.radii
    level = growth.level(1)
    near = growth.nn > radii[0] + fwhm
    if near.sum() < MIN_PSF_STARS:
        near = np.ones(idx.size, bool)
    idx, level = idx[near], level[near]
    base = growth.flux[near, 0] - level * growth.areas[near, 0]
    xs, ys, own = x[idx], y[idx], pixels.own(idx)
    inside = fwhm * np.array([0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 1.3])
    inside = inside[inside < radii[0]]
    enclosed = np.stack([sep.sum_circle(sub, xs, ys, r, subpix=0, **own)[0] - level * math.pi
                         * r**2 for r in inside], axis=1)
    good = np.isfinite(base) & (base > 0)
    if not good.any():
        return math.nan, math.nan
    # the stack (sums over the stars) is led by the brightest, least noisy ones; beyond the
    # aperture the enclosed fraction is 1 / correction times the steps
    curve = np.concatenate([np.sum(enclosed[good], axis=0) / np.sum(base[good]),
                            np.exp(np.concatenate([[0.0], np.cumsum(steps)]))])
    every = np.concatenate([inside, radii])
    curve = curve / curve[-1]
    betas = np.geomspace(1.5, 20.0, 50)[:, None, None]
    fwhms = fwhm * np.geomspace(0.5, 1.2, 120)[None, :, None]
    alphas = fwhms / (2.0 * np.sqrt(2.0 ** (1.0 / betas) - 1.0))
    model = moffat_enclosed(every, alphas, betas) / moffat_enclosed(radii[-1], alphas, betas)
    cost = np.sum((model - curve) ** 2, axis=-1)
    i, _ = np.unravel_index(int(np.argmin(cost)), cost.shape)
    # the fit's beta (from the wings, well measured) converts the measured half-light
    # diameter into the FWHM; the fit's own FWHM rests on a few undersampled core pixels
    beta = float(betas[i, 0, 0])
    return float(fwhm * math.sqrt(2.0 ** (1.0 / beta) - 1.0)
                 / math.sqrt(2.0 ** (1.0 / (beta - 1.0)) - 1.0)), beta


def empty_aperture_excess(pixels: Pixels, radius, n=500, seed=0):
    """Variance of the flux in an aperture of *radius* on empty sky beyond what the RMS map
    predicts: the light of sources too faint to detect (confusion), which the background RMS
    leaves out. Apertures at *n* fixed pseudo-random places clear of detected sources (at
    least 90% of their pixels free); 0 when fewer than 30 are clear or no excess is seen."""
    sub, rms, segmap, mask = pixels.sub, pixels.rms, pixels.segmap, pixels.mask
    ny, nx = sub.shape
    if nx <= 2 * radius + 2 or ny <= 2 * radius + 2:
        return 0.0
    rng = np.random.default_rng(seed)
    x = rng.uniform(radius + 1, nx - radius - 2, n)
    y = rng.uniform(radius + 1, ny - radius - 2, n)
    own = {"mask": mask} if segmap is None else {
        "segmap": segmap, "seg_id": np.zeros(n, np.int32), "mask": mask}
    free = _pixels(sub, x, y, radius, own)
    clear = free >= 0.9 * math.pi * radius**2
    if clear.sum() < 30:
        return 0.0
    # the sums with the noise map (twice the cost of a scalar error) at the clear places only
    own = own if segmap is None else {**own, "seg_id": own["seg_id"][clear]}
    total, err, _ = sep.sum_circle(sub, x[clear], y[clear], radius, err=rms, subpix=0, **own)
    excess = robust_sigma(total) ** 2 - float(np.median(err**2))
    return max(excess, 0.0)


def apply_aperture_correction(flux_aper, flux_aper_err, correction, correction_err,
                              excess_variance=0.0):
    """``flux_apcorr`` and its error, the correction's own uncertainty and the empty-aperture
    *excess_variance* (undetected sources) included."""
    flux_aper = np.asarray(flux_aper, float)
    flux = flux_aper * correction
    aper_err = np.sqrt(np.asarray(flux_aper_err, float) ** 2 + excess_variance)
    err = np.hypot(aper_err * correction, flux_aper * correction_err)
    return flux, err


def fwhm_arcsec(fwhm_pixels, pixel_scale):
    """Seeing in arcsec: the stellar FWHM times the pixel scale; None without either."""
    if fwhm_pixels is None or pixel_scale is None:
        return None
    value = float(fwhm_pixels) * float(pixel_scale)
    return value if math.isfinite(value) and value > 0 else None


def depth_5sigma(zero_point, bkg_rms, aperture_radius, aperture_correction=1.0):
    """5-sigma point-source limiting magnitude (sky-limited) in the catalog's aperture.

    A point source at the limit has ``flux_aper = 5 * bkg_rms * sqrt(pi) * aperture_radius``
    (the sky noise in the aperture), i.e. ``flux_apcorr`` = that times the aperture
    correction. None without a zero point; call again when the zero point changes (the
    reference calibration does: the other arguments are in the ``images`` row).
    """
    if zero_point is None or bkg_rms is None or aperture_radius is None:
        return None
    corr = 1.0 if aperture_correction is None or not math.isfinite(aperture_correction) \
        else aperture_correction
    flux = 5.0 * float(bkg_rms) * math.sqrt(math.pi) * float(aperture_radius) * corr
    if not (math.isfinite(flux) and flux > 0 and math.isfinite(zero_point)):
        return None
    return float(zero_point) - 2.5 * math.log10(flux)


def measure(pixels: Pixels, columns, radius, min_snr=50.0):
    """The PSF-based columns of one image.

    Parameters
    ----------
    pixels : Pixels
        The image as detect measured it (``sub``, ``rms``, ``segmap``, ``mask``, ``gain``).
    columns : mapping
        Detect's measured columns (``x``, ``y``, ``flux``, ``flux_err``, ``flux_aper``,
        ``flux_aper_err``, ``fwhm``, ``flags``).
    radius : float
        The catalog's aperture radius (pixels).
    min_snr : float, optional
        The S/N from which a clean source may be a PSF star (a 2.5x lower one when fewer than
        ten reach it).

    Returns
    -------
    model : PsfModel or None
        None when the image has fewer than MIN_PSF_STARS clean bright point sources.
    columns : dict
        ``flux_apcorr``, ``flux_apcorr_err``, ``class_star`` per source (NaN without a
        model).
    """
    x, y = np.asarray(columns["x"], float), np.asarray(columns["y"], float)
    n = x.size
    nan = np.full(n, np.nan)
    empty = {"flux_apcorr": nan, "flux_apcorr_err": nan, "class_star": nan}
    if n == 0:
        return None, empty
    flux, flux_err = np.asarray(columns["flux"], float), np.asarray(columns["flux_err"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_err > 0, flux / flux_err, 0.0)
    clean = clean_flags(columns["flags"])
    fwhm = np.asarray(columns["fwhm"], float)
    candidates = clean & (snr >= min_snr)
    if candidates.sum() < 10:  # few bright stars: fainter ones define the locus
        candidates = clean & (snr >= min_snr / 2.5)
    fwhm_psf, _, members = stellar_locus(fwhm, candidates)
    if members.sum() < MIN_PSF_STARS:
        return None, empty
    ratio, ratio_err = concentration(pixels, x, y, fwhm_psf)
    stars, locus, scatter = psf_stars(ratio, ratio_err, members)
    # the brightest PSF stars carry the curve of growth (more add time, not precision)
    growth = stars & (snr >= np.sort(snr[stars])[::-1][:MAX_GROWTH_STARS][-1])
    curve = curve_of_growth(pixels, {"x": x, "y": y, "flux": flux}, growth, radius, fwhm_psf)
    correction = correction_with_error(curve, fwhm_psf)
    corr, corr_err, n_growth, _ = correction
    seeing, beta = seeing_moffat(pixels, x, y, growth, curve, correction)
    model = PsfModel(fwhm=seeing, n_stars=int(stars.sum()), aperture_correction=corr,
                     aperture_correction_err=corr_err, n_growth=n_growth,
                     concentration=locus,
                     concentration_scatter=scatter, fwhm_locus=fwhm_psf, stars=stars)
    flux_apcorr, flux_apcorr_err = apply_aperture_correction(
        columns["flux_aper"], columns["flux_aper_err"], corr, corr_err,
        empty_aperture_excess(pixels, radius))
    if math.isfinite(locus) and math.isfinite(seeing):
        flux_model = np.asarray(columns["flux_aper"], float) * (corr if math.isfinite(corr)
                                                                else 1.0)
        model_flux = np.where(np.isfinite(flux_model), np.maximum(flux_model, 0.0), 0.0)
        ratio = unblended_concentration(pixels, PointSources(x, y, model_flux, seeing, beta),
                                        ratio, fwhm_psf)
    score = class_star(ratio, ratio_err, locus, scatter)
    return model, {"flux_apcorr": flux_apcorr, "flux_apcorr_err": flux_apcorr_err,
                   "class_star": score}


def image_columns(model: PsfModel | None, row: dict) -> dict:
    """``aperture_correction(_err)``, ``fwhm_arcsec`` and ``depth_5sigma`` for the ``images``
    row *row* (which holds ``pixel_scale``, ``zero_point``, ``bkg_rms``, ``aperture_radius``).
    Without PSF stars the aperture correction is null and the depth is that of the aperture
    flux; without a seeing from them (no curve of growth: too few stars, or an image too small
    for its rings) the seeing is the sources' median FWHM (``fwhm_median``)."""
    corr = err = fwhm = None
    if model is not None:
        if math.isfinite(model.fwhm):
            fwhm = model.fwhm
        if math.isfinite(model.aperture_correction):
            corr, err = model.aperture_correction, model.aperture_correction_err
    fwhm = fwhm if fwhm is not None else row.get("fwhm_median")
    return {
        "aperture_correction": corr, "aperture_correction_err": err,
        "fwhm_arcsec": fwhm_arcsec(fwhm, row.get("pixel_scale")),
        "depth_5sigma": depth_5sigma(row.get("zero_point"), row.get("bkg_rms"),
                                     row.get("aperture_radius"), corr),
    }
