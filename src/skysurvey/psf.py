"""Point-source photometry and star/galaxy separation from the image's own stars.

Pure functions on the background-subtracted image, its RMS map, the segmentation map and the
columns :mod:`skysurvey.detect` has measured (numpy and SEP only: this runs in the Lambda).

- The PSF stars: bright, clean sources on the stellar locus (the densest narrow range of FWHM
  among bright sources), so no seeing is ever asked for.
- Aperture correction: a curve of growth built step by step from those stars, each step from
  the stars with no detected neighbour within its radius (neighbours' pixels are left out as in
  every other measurement), out to six FWHM; the light beyond comes from a Moffat profile fitted
  to the measured curve (DAOGROW's idea). ``flux_apcorr = flux_aper * correction``. The
  residual level (undetected sources, neighbours' wings) in each ring comes from random points
  as isolated as the stars, calibrated on the wings their neighbours predict
  (:func:`ring_levels`), not from a sky annulus around the stars, which on crowded fields
  holds their neighbours' wings (the correction was 2% low there).
- ``class_star``: the concentration ``flux(r_in) / flux(r_out)`` of each source against the same
  ratio on the PSF stars, in units of its own noise plus the stars' scatter, turned into a
  probability. A source with a detected neighbour within NEIGHBOUR_REACH FWHM is measured as
  if alone: centred on its peak, neighbours modelled out, one-sided light replaced by its
  mirror image, the neighbours' pixels filled from its own profile.
- The aperture correction's error holds the residual level's; with fewer than
  JACKKNIFE_BELOW stars it is at least the jackknife error over them.
- Image figures: the seeing (the stars' half-light diameter turned into a FWHM by the Moffat
  beta of the curve of growth) and the 5-sigma point-source depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np
import sep

__all__ = [
    "CONCENTRATION_RADII",
    "CONTROLS_PER_RING",
    "CONTROL_POINTS",
    "GROWTH_N",
    "GROWTH_REACH_FWHM",
    "JACKKNIFE_BELOW",
    "MAX_GROWTH_STARS",
    "MIN_CONTROLS",
    "MIN_PSF_STARS",
    "MISMATCH",
    "NEIGHBOUR_REACH",
    "STAR_MARGIN",
    "STEP_PRECISION",
    "WING_AZIMUTHS",
    "WING_REACH",
    "Growth",
    "PsfModel",
    "aperture_correction",
    "apply_aperture_correction",
    "class_star",
    "close_pairs",
    "concentration",
    "correction_with_error",
    "curve_of_growth",
    "deblended_concentration",
    "depth_5sigma",
    "empty_aperture_excess",
    "fwhm_arcsec",
    "growth_correction",
    "growth_radii",
    "image_columns",
    "measure",
    "moffat_enclosed",
    "moffat_fit",
    "moffat_pixels",
    "nearest_neighbour_distance",
    "pairs_within",
    "ring_levels",
    "robust_sigma",
    "seeing_moffat",
    "stellar_locus",
    "wing_light",
]

#: Number of radii of the curve of growth.
GROWTH_N = 7
#: The curve of growth reaches at least this many stellar FWHM.
GROWTH_REACH_FWHM = 6.0
#: Inner and outer concentration radii, in units of the stellar FWHM (2 x half-light radius).
CONCENTRATION_RADII = (0.5, 1.0)
#: class_star = 0.5 at this fractional deficit of concentration below the stellar locus
#: (chosen on synthetic Moffat fields, 0.9-1.4" seeing, Sersic r_eff 0.4-1.5").
STAR_MARGIN = 0.08
MIN_PSF_STARS = 3
#: A step of the curve of growth measured less precisely than this comes from the model.
STEP_PRECISION = 0.003
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
#: class_star measures a source as if alone when a detected neighbour is within this many
#: stellar FWHM (its light, or its pixels left out, bias the concentration).
NEIGHBOUR_REACH = 3.0


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


def _median(values) -> float:
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
    return float(1.4826 * _median(np.abs(values - _median(values))))


def stellar_locus(fwhm, candidates, width_dex=0.05):
    """The stellar FWHM: the densest window of log FWHM among *candidates*, refined.

    Stars share one FWHM (the PSF's), galaxies and blends are spread above it; the smallest
    window of +-*width_dex* holding at least half as many candidates as the densest one is
    the locus, then refined by three clipped medians. Returns ``(fwhm, robust scatter in
    dex, members)``, or ``(nan, nan, all-False)`` when fewer than MIN_PSF_STARS candidates.
    """
    fwhm = np.asarray(fwhm, dtype=float)
    ok = np.asarray(candidates, bool) & np.isfinite(fwhm) & (fwhm > 0)
    members = np.zeros(fwhm.size, bool)
    if ok.sum() < MIN_PSF_STARS:
        return math.nan, math.nan, members
    logf = np.log10(fwhm)
    values = np.sort(logf[ok])
    counts = (np.searchsorted(values, values + width_dex, side="right")
              - np.searchsorted(values, values - width_dex, side="left"))
    # the narrowest-FWHM window at least half as populated as the densest one: galaxies can
    # outnumber stars in some wider range, never at the small end
    centre = values[int(np.argmax(counts >= 0.5 * counts.max()))]
    window = width_dex
    for _ in range(3):
        near = ok & (np.abs(logf - centre) <= window)
        centre = float(np.median(logf[near]))
        scatter = robust_sigma(logf[near])
        window = max(3.0 * scatter, 0.02)
    members = ok & (np.abs(logf - centre) <= window)
    return float(10**centre), float(robust_sigma(logf[members])), members


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


def moffat_enclosed(r, alpha, beta):
    """Fraction of a Moffat profile's flux within radius *r*."""
    return 1.0 - (1.0 + (np.asarray(r, float) / alpha) ** 2) ** (1.0 - beta)


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


def _own(segmap, mask, index):
    """SEP arguments leaving out other sources' pixels (segmentation label = index + 1)."""
    if segmap is None:
        return {"mask": mask}
    return {"segmap": segmap, "seg_id": (np.asarray(index) + 1).astype(np.int32), "mask": mask}


def _pixels(sub, x, y, r, own):
    """Pixels (exact overlap) within radius *r* that a measurement with *own* uses: the
    variance of a sum with unit error per pixel, so no image of ones is needed."""
    return sep.sum_circle(sub, x, y, r, err=1.0, subpix=0, **own)[1] ** 2


def _areas(sub, x, y, radii, own):
    """Pixels used within each of *radii* (rows: sources): pi r^2 where the largest circle
    loses no pixel (the usual case for a PSF star), counted exactly elsewhere."""
    radii = np.asarray(radii, float)
    area = np.broadcast_to(np.pi * radii**2, (len(x), radii.size)).copy()
    partial = _pixels(sub, x, y, radii[-1], own) < area[:, -1] - 1e-6
    if partial.any():
        sel = {**own, "seg_id": own["seg_id"][partial]} if "seg_id" in own else own
        for k, r in enumerate(radii):
            area[partial, k] = _pixels(sub, x[partial], y[partial], r, sel)
    return area


@dataclass(frozen=True)
class Growth:
    """The PSF stars' curve of growth: sums within *radii* (rows: stars), their variance and
    pixel counts, each star's nearest-neighbour distance, and the residual level of each step's
    ring (:func:`ring_levels`): per star ``fit[k, 0] + fit[k, 1] * wings[:, k]``, covariance
    ``cov[k]``, and the variance of one place's level about it beyond the pixels' noise
    ``scatter[k]``."""

    radii: np.ndarray
    flux: np.ndarray
    var: np.ndarray
    areas: np.ndarray
    nn: np.ndarray
    wings: np.ndarray  # (stars, steps): detected neighbours' predicted light per ring pixel
    fit: np.ndarray  # (steps, 2): residual level = fit[0] + fit[1] * wings
    cov: np.ndarray  # (steps, 2, 2)
    scatter: np.ndarray  # (steps,)

    def level(self, k):
        """Each star's residual level per pixel in the ring of step *k* (1..)."""
        return self.fit[k - 1, 0] + self.fit[k - 1, 1] * self.wings[:, k - 1]


def curve_of_growth(sub, rms, segmap, mask, x, y, stars, radius, fwhm, gain=None, flux=None):
    """The :class:`Growth` of *stars* at :func:`growth_radii` (other sources' pixels left out,
    noise from the RMS map); *flux* every source's flux (their wings predict the residual
    level; None: not used)."""
    idx = np.flatnonzero(stars)
    radii = growth_radii(radius, fwhm)
    nn = nearest_neighbour_distance(x, y, stars)
    own = _own(segmap, mask, idx)
    xs, ys = x[idx], y[idx]
    sums = np.empty((idx.size, radii.size))
    var = np.empty_like(sums)
    for k, r in enumerate(radii):
        f, e, flag = sep.sum_circle(sub, xs, ys, r, err=rms, gain=gain, subpix=0, **own)
        sums[:, k] = np.where(flag & sep.APER_TRUNC, np.nan, f)
        var[:, k] = e**2
    flux = np.zeros(x.size) if flux is None else np.nan_to_num(np.maximum(flux, 0.0))
    wings = partial(wing_light, x=x, y=y, flux=flux, radii=radii, fwhm=fwhm)
    fit, cov, scatter = ring_levels(sub, rms, segmap, mask, x, y, radii, radii[1:] + fwhm,
                                    wings)
    return Growth(radii, sums, var, _areas(sub, xs, ys, radii, own), nn, wings(xs, ys, idx),
                  fit, cov, scatter)


def aperture_correction(sub, rms, segmap, mask, x, y, stars, radius, fwhm, gain=None,
                        flux=None):
    """Total flux / flux within *radius* for point sources, from the curve of growth of *stars*
    (:func:`curve_of_growth`, :func:`growth_correction`). Returns ``(correction, error, stars
    used)``; ``(nan, nan, 0)`` when no step can be measured."""
    if not np.any(stars) or not np.isfinite(fwhm):
        return math.nan, math.nan, 0
    growth = curve_of_growth(sub, rms, segmap, mask, x, y, stars, radius, fwhm, gain,
                             flux=flux)
    return correction_with_error(growth, fwhm)[:3]


def correction_with_error(growth, fwhm):
    """``(correction, error, stars used, log steps)`` of :func:`growth_correction`; with fewer
    than JACKKNIFE_BELOW stars the error is at least the jackknife error over them: on
    256²-384² fields with 4-14 PSF stars the formal error alone was 2x too small."""
    terms = _step_terms(growth, fwhm)
    corr, corr_err, used, steps = growth_correction(growth, fwhm, terms)
    if not math.isfinite(corr):
        return corr, corr_err, 0, steps
    if used.sum() < JACKKNIFE_BELOW:
        jackknife = _jackknife_error(growth, fwhm, terms, used)  # NaN: too few samples
        if math.isfinite(jackknife):
            corr_err = max(corr_err, jackknife)
    return corr, corr_err, int(used.sum()), steps


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


def wing_light(px, py, index=None, *, x, y, flux, radii, fwhm):
    """The light per pixel the detected sources (*x*, *y*, *flux*; *index*: the source each
    point is, left out) predict in each ring ``radii[k-1]..radii[k]`` around the points
    (*px*, *py*): Moffat (beta 3) point sources whose half-light diameter is *fwhm*, averaged
    over WING_AZIMUTHS points of the ring's middle circle, from the sources within WING_REACH x
    *fwhm* beyond the last ring. Shape (points, steps). Only a predictor: :func:`ring_levels`
    calibrates it on random points."""
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


def ring_levels(sub, rms, segmap, mask, x, y, radii, isolation, wings, n=CONTROL_POINTS,
                per_ring=CONTROLS_PER_RING, seed=0):
    """The residual level per pixel in each ring ``radii[k-1] < r <= radii[k]`` (k >= 1)
    around the PSF stars used for that step of the curve of growth, as a line in the light
    their detected neighbours' wings predict there (*wings*: :func:`wing_light` of points).

    The background (a clipped mode) leaves out the light of sources too faint to detect and
    the wings of detected ones beyond their segments; both grow with crowding, and a star's
    apertures take them in. A sky annulus around the stars holds their neighbours' wings,
    which their isolated apertures do not (on a crowded 2048² field the correction came out
    2% low); random points as isolated (no detected source within ``isolation[k-1]``) hold
    more than the PSF stars, which are clean and unblended (2x on that field). So the same
    ring is measured around random points (*n*, at pixel centres, a fixed *seed*; the first
    *per_ring* isolated ones in random order; other sources' pixels left out) and its level
    fitted, clipped at 3 sigma, with a line in their *wings*: the intercept is the sky the
    background missed, the slope calibrates the prediction. The points' scatter about the
    line beyond their pixels' noise (*rms*: scalar or map) is that of one star's level: on
    crowded fields it, not the pixels, limits the brightest stars. Returns ``(fit, cov,
    scatter)``: shapes (steps, 2), (steps, 2, 2) and (steps,); a ring with fewer than
    MIN_CONTROLS points takes the previous ring's, zeros with none.
    """
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


def seeing_moffat(sub, rms, segmap, mask, x, y, stars, fwhm, growth, steps, correction):
    """The PSF's true FWHM (pixels) and Moffat beta from the stars' curve of growth.

    *fwhm* (twice the half-light radius, detect's ``fwhm``) overestimates the FWHM of a
    winged profile (by 26% for a Moffat with beta = 3). The enclosed fraction of the light:
    within the catalog's aperture ``1 / correction``, beyond it the curve of growth's
    *steps* (:func:`growth_correction`, neighbours' light out with the residual level),
    inside it the stacked sums of the stars isolated there; a Moffat profile (beta 1.5-20:
    wide wings to nearly Gaussian) is fitted to it, and its beta gives the ratio of FWHM to
    half-light diameter for that profile (``(nan, nan)`` without stars or steps). Measured
    with a sky annulus around the stars, beta came out 4.1-4.3 instead of 3 on crowded
    fields (their neighbours' wings in it) and the seeing 5% wide.
    """
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
    xs, ys, own = x[idx], y[idx], _own(segmap, mask, idx)
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


def empty_aperture_excess(sub, rms, segmap, mask, radius, n=500, seed=0):
    """Variance of the flux in an aperture of *radius* on empty sky beyond what the RMS map
    predicts: the light of sources too faint to detect (confusion), which the background RMS
    leaves out. Apertures at *n* fixed pseudo-random places clear of detected sources (at
    least 90% of their pixels free); 0 when fewer than 30 are clear or no excess is seen."""
    ny, nx = sub.shape
    if nx <= 2 * radius + 2 or ny <= 2 * radius + 2:
        return 0.0
    rng = np.random.default_rng(seed)
    x = rng.uniform(radius + 1, nx - radius - 2, n)
    y = rng.uniform(radius + 1, ny - radius - 2, n)
    own = {"mask": mask} if segmap is None else {
        "segmap": segmap, "seg_id": np.zeros(n, np.int32), "mask": mask}
    total, err, _ = sep.sum_circle(sub, x, y, radius, err=rms, subpix=0, **own)
    free = _pixels(sub, x, y, radius, own)
    clear = free >= 0.9 * math.pi * radius**2
    if clear.sum() < 30:
        return 0.0
    excess = robust_sigma(total[clear]) ** 2 - float(np.median(err[clear] ** 2))
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


def concentration(sub, rms, segmap, mask, x, y, fwhm, gain=None, index=None):
    """``flux(r_in) / flux(r_out)`` of every source (radii CONCENTRATION_RADII x *fwhm*) and
    its 1-sigma error (the outer annulus' noise is independent of the inner disc's); *index*
    (default all) gives the sources' numbers when *x*, *y* are those of a subset."""
    n = len(x)
    if n == 0 or not np.isfinite(fwhm):
        return np.full(n, np.nan), np.full(n, np.nan)
    own = _own(segmap, mask, np.arange(n) if index is None else index)
    r_in, r_out = (c * fwhm for c in CONCENTRATION_RADII)
    f_in, e_in, _ = sep.sum_circle(sub, x, y, r_in, err=rms, gain=gain, subpix=0, **own)
    f_out, e_out, _ = sep.sum_circle(sub, x, y, r_out, err=rms, gain=gain, subpix=0, **own)
    annulus = f_out - f_in
    var_annulus = np.maximum(e_out**2 - e_in**2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(f_out > 0, f_in / f_out, np.nan)
        err = np.sqrt(annulus**2 * e_in**2 + f_in**2 * var_annulus) / f_out**2
    return ratio, np.where(f_out > 0, err, np.nan)


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


def _stamps(sub, segmap, mask, x, y, index, half):
    """Square cutouts (side 2 *half* + 1) around the sources *index*: pixel coordinates
    ``px`` (n, 1, side) and ``py`` (n, side, 1), values, the pixels each source's own
    measurement may use (not another source's, not masked) and those inside the image."""
    side = 2 * half + 1
    step = np.arange(side)
    px = (np.round(x[index]).astype(int) - half)[:, None, None] + step[None, None, :]
    py = (np.round(y[index]).astype(int) - half)[:, None, None] + step[None, :, None]
    ny, nx = sub.shape
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    flat = np.clip(py, 0, ny - 1) * nx + np.clip(px, 0, nx - 1)  # flat takes: 2x faster
    values = np.take(sub, flat).astype(float)
    usable = inside.copy()
    if segmap is not None:
        label = np.take(segmap, flat)
        usable &= (label == 0) | (label == (np.asarray(index) + 1)[:, None, None])
    if mask is not None:
        usable &= ~np.take(mask, flat)
    return px, py, values, usable, inside


def _peak_centre(values, usable, px, py, x, y, reach=1.5):
    """The centre of the brightest usable pixel within *reach* of (*x*, *y*), refined by
    parabolas through its 3x3 block's row and column sums: a neighbour's light, which pulls
    a windowed centroid by up to a pixel in a blend, hardly tilts a star's core. Where the
    peak is no maximum the old centre stays."""
    n, side, _ = values.shape
    px, py = np.broadcast_to(px, values.shape), np.broadcast_to(py, values.shape)
    near = usable & ((px - x[:, None, None]) ** 2 + (py - y[:, None, None]) ** 2 <= reach**2)
    peak = np.argmax(np.where(near, values, -np.inf).reshape(n, -1), axis=1)
    ky = np.clip(peak // side, 1, side - 2)
    kx = np.clip(peak % side, 1, side - 2)
    rows = np.arange(n)[:, None, None]
    dy_, dx_ = np.arange(-1, 2)[None, :, None], np.arange(-1, 2)[None, None, :]
    block = np.where(usable, values, np.nan)[rows, ky[:, None, None] + dy_,
                                             kx[:, None, None] + dx_]

    def vertex(f):
        curve = f[:, 0] - 2.0 * f[:, 1] + f[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            offset = 0.5 * (f[:, 0] - f[:, 2]) / curve
        return np.where((curve < 0) & (np.abs(offset) <= 1.0), offset, np.nan)

    cx = px[np.arange(n), ky, kx] + vertex(block.sum(axis=1))
    cy = py[np.arange(n), ky, kx] + vertex(block.sum(axis=2))
    good = np.isfinite(cx) & np.isfinite(cy)
    return np.where(good, cx, x), np.where(good, cy, y)


def _disc_weights(radius, r):
    """Approximate fraction of each pixel (centre at *radius*) within a circle of radius *r*:
    a linear ramp over the pixel's width (the factor of :func:`deblended_concentration` is
    a ratio of sums with the same weights, so their errors cancel)."""
    return np.clip(r + 0.5 - radius, 0.0, 1.0)


def _profile_filled(values, usable, radius, step=0.5):
    """*values* with each unusable pixel (another source's, masked) replaced by the mean of
    the usable ones at its radius (rings *step* px wide) in the same cutout, 0 where a ring
    has none: a symmetric source's light where its neighbour's pixels were left out."""
    n = values.shape[0]
    ring = (radius / step).astype(int)
    rings = int(ring.max()) + 1
    key = np.arange(n)[:, None, None] * rings + ring
    total = np.bincount(key[usable], weights=values[usable], minlength=n * rings)
    count = np.bincount(key[usable], minlength=n * rings)
    mean = total / np.maximum(count, 1)
    return np.where(usable, values, mean[key])


def _noise(rms, shape, px, py):
    """The RMS (a scalar or a map of *shape*) at the cutouts' pixels."""
    if np.ndim(rms) == 0:
        return float(rms)
    ny, nx = shape
    return np.take(rms, np.clip(py, 0, ny - 1) * nx + np.clip(px, 0, nx - 1))


def _symmetric(values, usable, px, py, xc, yc, noise, clip=3.0, tolerance=0.1):
    """*values* with every usable pixel brighter than its mirror image through the centre
    (*xc*, *yc*; bilinear between usable pixels) by more than *clip* sigma of the pair plus
    *tolerance* of its value replaced by that mirror value: a star or galaxy is point-symmetric,
    the light of a neighbour (detected or not) on one side is not (SDSS's deblender's idea).
    The tolerance covers the interpolation's error in a star's core."""
    n, side, _ = values.shape
    mx, my = np.broadcast_arrays(2.0 * xc[:, None, None] - px - px[:, :1, :1],
                                 2.0 * yc[:, None, None] - py - py[:, :1, :1])
    ix, iy = np.floor(mx).astype(int), np.floor(my).astype(int)
    fx, fy = mx - ix, my - iy
    within = (ix >= 0) & (iy >= 0) & (ix < side - 1) & (iy < side - 1)
    flat = (np.arange(n)[:, None, None] * side + np.clip(iy, 0, side - 2)) * side \
        + np.clip(ix, 0, side - 2)
    known = np.where(usable, values, np.nan)
    mirror = ((1 - fx) * (1 - fy) * np.take(known, flat) + fx * (1 - fy) * np.take(known, flat + 1)
              + (1 - fx) * fy * np.take(known, flat + side)
              + fx * fy * np.take(known, flat + side + 1))
    with np.errstate(invalid="ignore"):
        excess = (within & usable & np.isfinite(mirror)
                  & (values - mirror > clip * math.sqrt(2.0) * noise + tolerance * np.abs(values)))
    return np.where(excess, mirror, values)


def deblended_concentration(sub, rms, segmap, mask, x, y, index, neighbours, model_flux,
                            fwhm, psf_fwhm, beta):
    """``(x, y, factor)`` for the sources *index*: a centre from their peak and the factor
    turning the concentration measured there (SEP, neighbours' pixels left out) into that of
    the source alone.

    In a crowded field a source's own pixels hold its neighbours' light and its annulus
    loses the pixels of the neighbours' segments: a star looks extended (and, its centroid
    pulled, off-centre), a galaxy beside a star concentrated. In a cutout around each, the
    detected *neighbours* (pairs ``(k, j)``, k indexing *index*) are modelled out as
    Moffat point sources (*psf_fwhm*, *beta*) of flux *model_flux*, what light is left on
    one side only (a galaxy's wings, an undetected neighbour) is replaced by its mirror image
    through the centre (:func:`_symmetric`), the pixels of the neighbours' segments are filled
    from the source's own mean profile at the same radius, and the concentration of the
    cleaned cutout is divided by that of the raw one (same pixel weights, whose errors
    cancel). *rms* is the noise (scalar or map).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    r_in, r_out = (c * fwhm for c in CONCENTRATION_RADII)
    half = math.ceil(r_out) + 1
    px, py, values, usable, inside = _stamps(sub, segmap, mask, x, y, index, half)
    k, j = neighbours
    model = np.zeros(values.shape)
    if k.size:
        light = moffat_pixels(px[k] - x[j][:, None, None], py[k] - y[j][:, None, None],
                              psf_fwhm, beta) * model_flux[j][:, None, None]
        np.add.at(model, k, light)
    clean = values - model
    xc, yc = _peak_centre(clean, usable, px, py, x[index], y[index])
    clean = _symmetric(clean, usable, px, py, xc, yc, _noise(rms, sub.shape, px, py))
    radius = np.hypot(px - xc[:, None, None], py - yc[:, None, None])
    w_in, w_out = _disc_weights(radius, r_in), _disc_weights(radius, r_out)
    filled = _profile_filled(clean, usable, radius) * inside
    raw = np.where(usable, values, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = ((np.sum(w_in * filled, axis=(1, 2)) / np.sum(w_out * filled, axis=(1, 2)))
                  / (np.sum(w_in * raw, axis=(1, 2)) / np.sum(w_out * raw, axis=(1, 2))))
    return xc, yc, factor


def class_star(ratio, ratio_err, locus, scatter, margin=STAR_MARGIN):
    """Probability-like 0..1 score that each source is a point source.

    A source is as concentrated as the PSF stars (*locus*, intrinsic *scatter*) or less
    (extended); the boundary is ``locus * (1 - margin)``. The score is
    ``Phi((ratio - boundary) / sqrt(ratio_err**2 + scatter**2))``: near 1 for a bright
    source on the locus, near 0 for a clearly extended one, towards 0.5 as the measurement
    error grows. NaN where the ratio is undefined.
    """
    ratio, ratio_err = np.asarray(ratio, float), np.asarray(ratio_err, float)
    boundary = locus * (1.0 - margin)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (ratio - boundary) / np.sqrt(ratio_err**2 + max(scatter, 1e-3) ** 2)
    return _normal_cdf(z)


def _normal_cdf(z):
    z = np.asarray(z, float)
    out = np.full(z.shape, np.nan)
    ok = np.isfinite(z)
    out[ok] = 0.5 * np.frompyfunc(math.erfc, 1, 1)(-z[ok] / math.sqrt(2.0)).astype(float)
    return out


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


def measure(sub, rms, segmap, mask, columns, radius, gain=None, min_snr=50.0):
    """The PSF-based columns of one image.

    *columns* are detect's measured columns (``x``, ``y``, ``flux``, ``flux_err``,
    ``flux_aper``, ``flux_aper_err``, ``fwhm``, ``flags``). Returns ``(model, per-source
    columns)``: a :class:`PsfModel` (None when the image has fewer than MIN_PSF_STARS clean
    bright point sources) and ``flux_apcorr``, ``flux_apcorr_err``, ``class_star`` (NaN
    without a model).
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
    clean = np.asarray(columns["flags"]) == 0
    fwhm = np.asarray(columns["fwhm"], float)
    candidates = clean & (snr >= min_snr)
    if candidates.sum() < 10:  # few bright stars: fainter ones define the locus
        candidates = clean & (snr >= min_snr / 2.5)
    fwhm_psf, _, members = stellar_locus(fwhm, candidates)
    if members.sum() < MIN_PSF_STARS:
        return None, empty
    ratio, ratio_err = concentration(sub, rms, segmap, mask, x, y, fwhm_psf, gain)
    stars, locus, scatter = _psf_stars(ratio, ratio_err, members)
    # the brightest PSF stars carry the curve of growth (more add time, not precision)
    growth = stars & (snr >= np.sort(snr[stars])[::-1][:MAX_GROWTH_STARS][-1])
    curve = curve_of_growth(sub, rms, segmap, mask, x, y, growth, radius, fwhm_psf, gain,
                            flux=flux)
    corr, corr_err, n_growth, steps = correction_with_error(curve, fwhm_psf)
    seeing, beta = seeing_moffat(sub, rms, segmap, mask, x, y, growth, fwhm_psf, curve, steps,
                                 corr)
    model = PsfModel(fwhm=seeing, n_stars=int(stars.sum()), aperture_correction=corr,
                     aperture_correction_err=corr_err, n_growth=n_growth,
                     concentration=locus,
                     concentration_scatter=scatter, fwhm_locus=fwhm_psf, stars=stars)
    flux_apcorr, flux_apcorr_err = apply_aperture_correction(
        columns["flux_aper"], columns["flux_aper_err"], corr, corr_err,
        empty_aperture_excess(sub, rms, segmap, mask, radius))
    if math.isfinite(locus) and math.isfinite(seeing):
        flux_model = np.asarray(columns["flux_aper"], float) * (corr if math.isfinite(corr)
                                                                else 1.0)
        ratio = _unblended(sub, rms, segmap, mask, x, y, ratio, fwhm_psf, seeing, beta,
                           np.where(np.isfinite(flux_model), np.maximum(flux_model, 0.0), 0.0),
                           gain)
    score = class_star(ratio, ratio_err, locus, scatter)
    return model, {"flux_apcorr": flux_apcorr, "flux_apcorr_err": flux_apcorr_err,
                   "class_star": score}


def _unblended(sub, rms, segmap, mask, x, y, ratio, fwhm, psf_fwhm, beta, model_flux, gain):
    """*ratio* with the concentration of every source that has a detected neighbour within
    NEIGHBOUR_REACH x *fwhm* measured as if alone (:func:`deblended_concentration`)."""
    i, j = close_pairs(x, y, NEIGHBOUR_REACH * fwhm)
    if i.size == 0:
        return ratio
    index = np.unique(i)
    xc, yc, factor = deblended_concentration(sub, rms, segmap, mask, x, y, index,
                                             (np.searchsorted(index, i), j), model_flux,
                                             fwhm, psf_fwhm, beta)
    at_peak, _ = concentration(sub, rms, segmap, mask, xc, yc, fwhm, gain, index)
    alone = at_peak * factor
    ok = np.isfinite(alone) & (alone > 0)
    ratio = ratio.copy()
    ratio[index[ok]] = alone[ok]
    return ratio


def _psf_stars(ratio, ratio_err, members, clip=3.0):
    """The FWHM-locus *members* whose concentration is also the stars' (within *clip* sigma
    of its median): a compact galaxy of the same half-light size is less concentrated, and
    a bright one would lead the inverse-variance curve of growth. Returns ``(stars,
    concentration locus, its intrinsic scatter)``."""
    stars = members & np.isfinite(ratio) & np.isfinite(ratio_err)
    if stars.sum() < MIN_PSF_STARS:  # no concentration to judge by (class_star is null)
        return members, math.nan, math.nan
    members = stars
    for _ in range(2):
        locus = float(np.median(ratio[stars]))
        noise = float(np.median(ratio_err[stars]))
        scatter = math.sqrt(max(robust_sigma(ratio[stars]) ** 2 - noise**2, 0.0))
        with np.errstate(invalid="ignore"):
            # stars differ by ~0.5% among themselves (pixel phase, centring) even when the
            # few at hand look identical
            z = (ratio - locus) / np.sqrt(ratio_err**2 + max(scatter, 0.005 * locus) ** 2)
        keep = members & (np.abs(z) < clip)
        if keep.sum() < MIN_PSF_STARS:
            break
        stars = keep
    return stars, locus, scatter


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
