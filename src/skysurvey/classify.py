"""Star/galaxy separation from the image's own stars: the stellar locus, concentration and
``class_star`` (numpy and SEP only: this runs in the Lambda).

- The stellar locus: the densest narrow range of FWHM among bright clean sources
  (:func:`stellar_locus`), so no seeing is ever asked for; the PSF stars are its members whose
  concentration is also the stars' (:func:`psf_stars`).
- ``class_star``: the concentration ``flux(r_in) / flux(r_out)`` of each source against the same
  ratio on the PSF stars, in units of its own noise plus the stars' scatter, turned into a
  probability (:func:`class_star`). A source with a detected neighbour within NEIGHBOUR_REACH
  FWHM (a much brighter one within BRIGHT_NEIGHBOUR_REACH) is measured as if alone
  (:func:`unblended_concentration`): centred on its peak, neighbours modelled out (a bright
  one by its own mirrored far side: a galaxy's wings are no PSF's), one-sided light replaced
  by its mirror image. On the messy fields of tests/class_star_fields.py (SNR >= 20,
  resolved sources, six held-out seeds) this took the stars right from 0.914-0.947 to
  0.975-0.994 (with PSF photometry 0.945-0.969 to 0.984-0.997): most of the rest had been
  beside bright galaxies (tests/test_classify.py).

- With PSF photometry (:mod:`skysurvey.psfphot`), a blended detection that a PSF describes
  (``psf_chi2`` <= BLEND_PSF_CHI2) is judged by its deblended extendedness: ``flux_psf`` over
  the aperture's light with every other fitted source's PSF subtracted
  (:func:`deblended_extendedness`, :func:`psf_fit_class_star`). Its concentration holds the
  neighbours' light; the ratio does not. Elsewhere the concentration decides: the plain
  ``flux_psf / flux_apcorr`` got 0.80 of galaxies right where it got 0.99 (compact galaxies
  sit at 0.93-1.0 as stars do; tests/test_psf.py).

:func:`skysurvey.psf.measure` puts these together with the aperture correction; detect.py
applies the PSF fit's verdict on blends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sep

from . import psfmodel as pm
from .measurement import Pixels
from .profiles import moffat_pixels, pairs_within, robust_sigma
from .psfphot import aperture_fraction, extendedness

__all__ = [
    "BLEND_PSF_CHI2",
    "BRIGHT_NEIGHBOUR",
    "BRIGHT_NEIGHBOUR_REACH",
    "CONCENTRATION_RADII",
    "EXTENDEDNESS_BOUNDARY",
    "EXTENDEDNESS_SCATTER",
    "MIN_PSF_STARS",
    "NEIGHBOUR_REACH",
    "STAR_MARGIN",
    "PointSources",
    "class_star",
    "concentration",
    "deblended_concentration",
    "deblended_extendedness",
    "psf_fit_class_star",
    "psf_stars",
    "stellar_locus",
    "unblended_concentration",
]

#: Inner and outer concentration radii, in units of the stellar FWHM (2 x half-light radius).
CONCENTRATION_RADII = (0.5, 1.0)
#: class_star = 0.5 at this fractional deficit of concentration below the stellar locus
#: (chosen on synthetic Moffat fields, 0.9-1.4" seeing, Sersic r_eff 0.4-1.5").
STAR_MARGIN = 0.08
MIN_PSF_STARS = 3
#: class_star measures a source as if alone when a detected neighbour is within this many
#: stellar FWHM (its light, or its pixels left out, bias the concentration).
NEIGHBOUR_REACH = 3.0
#: ... and when a detected neighbour more than BRIGHT_NEIGHBOUR times brighter (model flux)
#: is within this many stellar FWHM; such a neighbour's light is its own mirrored far side
#: (:func:`deblended_concentration`), not a Moffat profile.
BRIGHT_NEIGHBOUR_REACH = 5.0
BRIGHT_NEIGHBOUR = 2.0
#: A bright neighbour's centre is its brightest usable pixel within this many pixels of
#: its centroid, which a blend pulls by up to ~2.5 px.
_NEIGHBOUR_PEAK_REACH = 3.0
#: A source's centre is its brightest usable pixel within this many pixels of its centroid.
_PEAK_REACH = 1.5
#: A pixel brighter than its mirror image by more than _MIRROR_CLIP sigma of the pair plus
#: _MIRROR_TOLERANCE of its value takes the mirror's value (:func:`_symmetric`).
_MIRROR_CLIP = 3.0
_MIRROR_TOLERANCE = 0.1
#: A blended detection whose PSF fit describes its pixels (reduced chi² at most this) is judged
#: by its deblended extendedness instead of its concentration (:func:`psf_fit_class_star`).
BLEND_PSF_CHI2 = 1.25
#: Deblended extendedness (PSF flux / aperture flux with the neighbours' PSFs subtracted) at
#: which such a detection's class_star is 0.5, and the stars' scatter about 1 added to its
#: error (measured: stars 0.98-1.04 when alone).
EXTENDEDNESS_BOUNDARY = 0.95
EXTENDEDNESS_SCATTER = 0.02


@dataclass(frozen=True)
class PointSources:
    """Detected sources as Moffat point sources: positions *x*, *y* (pixels), *flux*, and
    the profile's *fwhm* (pixels) and *beta* (:func:`skysurvey.profiles.moffat_pixels`)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    fwhm: float
    beta: float


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


def concentration(pixels: Pixels, x, y, fwhm, index=None):
    """``flux(r_in) / flux(r_out)`` of every source (radii CONCENTRATION_RADII x *fwhm*) and
    its 1-sigma error (the outer annulus' noise is independent of the inner disc's).

    Parameters
    ----------
    pixels : Pixels
        The image (``sub``, ``rms``, ``segmap``, ``mask``, ``gain``); other sources' pixels
        are left out.
    x, y : ndarray
        The sources' centres (pixels).
    fwhm : float
        The stellar FWHM (pixels) the radii scale with.
    index : ndarray of int, optional
        The sources' numbers when *x*, *y* are those of a subset (default: all, in order).

    Returns
    -------
    ratio, ratio_err : ndarray
        The concentration and its error; NaN where the outer flux is not positive (all NaN
        without a finite *fwhm*).
    """
    n = len(x)
    if n == 0 or not np.isfinite(fwhm):
        return np.full(n, np.nan), np.full(n, np.nan)
    sub, rms, gain = pixels.sub, pixels.rms, pixels.gain
    own = pixels.own(np.arange(n) if index is None else index)
    r_in, r_out = (c * fwhm for c in CONCENTRATION_RADII)
    f_in, e_in, _ = sep.sum_circle(sub, x, y, r_in, err=rms, gain=gain, subpix=0, **own)
    f_out, e_out, _ = sep.sum_circle(sub, x, y, r_out, err=rms, gain=gain, subpix=0, **own)
    annulus = f_out - f_in
    var_annulus = np.maximum(e_out**2 - e_in**2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(f_out > 0, f_in / f_out, np.nan)
        err = np.sqrt(annulus**2 * e_in**2 + f_in**2 * var_annulus) / f_out**2
    return ratio, np.where(f_out > 0, err, np.nan)


def _blocks(image, corner, side):
    """The *side* x *side* blocks of *image* whose first pixels are *corner* (``(x0, y0)``,
    one per block), a pixel outside the image the nearest edge pixel's: views of a sliding
    window (one copy of each block, ~10x faster than a gather by flat indices, which only
    the blocks crossing an edge take)."""
    x0, y0 = corner
    ny, nx = image.shape
    inner = (x0 >= 0) & (y0 >= 0) & (x0 <= nx - side) & (y0 <= ny - side)
    if inner.any():
        windows = np.lib.stride_tricks.sliding_window_view(image, (side, side))
        if inner.all():
            return windows[y0, x0]
    out = np.empty((len(x0), side, side), image.dtype)
    if inner.any():
        out[inner] = windows[y0[inner], x0[inner]]
    step = np.arange(side)
    rows = np.clip(y0[~inner][:, None] + step, 0, ny - 1)
    cols = np.clip(x0[~inner][:, None] + step, 0, nx - 1)
    out[~inner] = np.take(image, rows[:, :, None] * nx + cols[:, None, :])
    return out


def _stamps(pixels: Pixels, x, y, index, half):
    """Square cutouts (side 2 *half* + 1) around the sources *index*: pixel coordinates
    ``px`` (n, 1, side) and ``py`` (n, side, 1), values, the pixels each source's own
    measurement may use (not another source's, not masked) and those inside the image."""
    side = 2 * half + 1
    step = np.arange(side)
    corner = np.round(x[index]).astype(int) - half, np.round(y[index]).astype(int) - half
    px = corner[0][:, None, None] + step[None, None, :]
    py = corner[1][:, None, None] + step[None, :, None]
    sub, segmap, mask = pixels.sub, pixels.segmap, pixels.mask
    ny, nx = sub.shape
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    values = _blocks(sub, corner, side).astype(float)
    usable = inside.copy()
    if segmap is not None:
        label = _blocks(segmap, corner, side)
        usable &= (label == 0) | (label == (np.asarray(index) + 1)[:, None, None])
    if mask is not None:
        usable &= ~_blocks(mask, corner, side)
    return px, py, values, usable, inside


def _peak_centre(values, usable, grid, centre, reach=_PEAK_REACH):
    """The centre of the brightest usable pixel within *reach* px of *centre* (``(x, y)``),
    refined by parabolas through its 3x3 block's row and column sums: a neighbour's light,
    which pulls a windowed centroid by up to a pixel in a blend, hardly tilts a star's core.
    Where the peak is no maximum the old centre stays. *grid* is the cutouts' ``(px, py)``
    (:func:`_stamps`)."""
    (px, py), (x, y) = grid, centre
    n, side, _ = values.shape
    near = usable & ((px - x[:, None, None]) ** 2 + (py - y[:, None, None]) ** 2 <= reach**2)
    peak = np.argmax(np.where(near, values, -np.inf).reshape(n, -1), axis=1)
    ky = np.clip(peak // side, 1, side - 2)
    kx = np.clip(peak % side, 1, side - 2)
    rows = np.arange(n)[:, None, None]
    dy_, dx_ = np.arange(-1, 2)[None, :, None], np.arange(-1, 2)[None, None, :]
    at = rows, ky[:, None, None] + dy_, kx[:, None, None] + dx_
    block = np.where(usable[at], values[at], np.nan)
    px, py = np.broadcast_to(px, values.shape), np.broadcast_to(py, values.shape)

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
    key_usable = key[usable]
    total = np.bincount(key_usable, weights=values[usable], minlength=n * rings)
    count = np.bincount(key_usable, minlength=n * rings)
    mean = total / np.maximum(count, 1)
    return np.where(usable, values, mean[key])


def _noise(rms, grid):
    """The RMS (a scalar or a map) at the cutouts' pixels *grid* (``(px, py)``)."""
    if np.ndim(rms) == 0:
        return float(rms)
    px, py = grid
    return _blocks(rms, (px[:, 0, 0], py[:, 0, 0]), px.shape[-1])


def _mirror_steps(mirrored):
    """The lower pixels (int) and the fractions of the mirror coordinates *mirrored* (per
    cutout and step along one axis, (n, side): a cutout's mirror image varies along one axis
    only, so no full-size coordinate arrays)."""
    lower = np.floor(mirrored)
    return lower.astype(int), mirrored - lower


#: The bilinear corners (dx, dy) of :func:`_symmetric` and :func:`_mirror_light`, in order.
_CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))


def _corners(image, lower):
    """*image* at the bilinear corners ``(ix + dx, iy + dy)`` (_CORNERS, clipped to the
    image) of the pixels *lower* (``(ix, iy)``, (m, side) each): four (m, side, side)
    arrays. When every cutout's steps are consecutive (mirror images always are, bar a
    rounding at an integer) these are slices of one reversed (side + 1)² block per cutout
    (:func:`_blocks`), else gathers."""
    ix, iy = lower
    ny, nx = image.shape
    side = ix.shape[1]
    if np.all(np.diff(ix, axis=1) == -1) and np.all(np.diff(iy, axis=1) == -1):
        block = _blocks(image, (ix[:, -1], iy[:, -1]), side + 1)[:, ::-1, ::-1]
        return [block[:, 1 - dy:side + 1 - dy, 1 - dx:side + 1 - dx] for dx, dy in _CORNERS]
    return [image[np.clip(iy + dy, 0, ny - 1)[:, :, None], np.clip(ix + dx, 0, nx - 1)[:, None, :]]
            for dx, dy in _CORNERS]


def _symmetric(values, usable, grid, centre, noise):
    """*values* with every usable pixel brighter than its mirror image through the *centre*
    (``(xc, yc)``; bilinear between usable pixels) by more than _MIRROR_CLIP sigma of the pair
    plus _MIRROR_TOLERANCE of its value replaced by that mirror value: a star or galaxy is
    point-symmetric, the light of a neighbour (detected or not) on one side is not (SDSS's
    deblender's idea). The tolerance covers the interpolation's error in a star's core.
    *grid* is the cutouts' ``(px, py)`` (:func:`_stamps`)."""
    (px, py), (xc, yc) = grid, centre
    clip, tolerance = _MIRROR_CLIP, _MIRROR_TOLERANCE
    n, side, _ = values.shape
    # per axis: a cutout's mirror coordinates vary along one axis only
    ix, fx = _mirror_steps(2.0 * xc[:, None] - px[:, 0, :] - px[:, 0, :1])
    iy, fy = _mirror_steps(2.0 * yc[:, None] - py[:, :, 0] - py[:, :1, 0])
    within = (((iy >= 0) & (iy < side - 1))[:, :, None]
              & ((ix >= 0) & (ix < side - 1))[:, None, :])
    flat = ((np.arange(n)[:, None] * side + np.clip(iy, 0, side - 2)) * side)[:, :, None] \
        + np.clip(ix, 0, side - 2)[:, None, :]
    known = np.where(usable, values, np.nan)
    fx, fy = fx[:, None, :], fy[:, :, None]
    mirror = ((1 - fx) * (1 - fy) * np.take(known, flat) + fx * (1 - fy) * np.take(known, flat + 1)
              + (1 - fx) * fy * np.take(known, flat + side)
              + fx * fy * np.take(known, flat + side + 1))
    with np.errstate(invalid="ignore"):
        excess = (within & usable & np.isfinite(mirror)
                  & (values - mirror > clip * math.sqrt(2.0) * noise + tolerance * np.abs(values)))
    return np.where(excess, mirror, values)


def _bright_peaks(pixels: Pixels, centre, which):
    """*centre* (``(x, y)`` of every source) with the sources *which* moved to their peak
    (:func:`_peak_centre` within _NEIGHBOUR_PEAK_REACH px): copies when any moves."""
    x, y = centre
    if len(which) == 0:
        return x, y
    reach = _NEIGHBOUR_PEAK_REACH
    px, py, values, usable, _ = _stamps(pixels, x, y, which, math.ceil(reach) + 2)
    x, y = x.copy(), y.copy()
    x[which], y[which] = _peak_centre(values, usable, (px, py), (x[which], y[which]), reach)
    return x, y


def _mirror_light(pixels: Pixels, grid, centre, label):
    """Each neighbour's light at the cutouts' pixels *grid* (``(px, py)``, one cutout per
    pair) from its own pixels on the far side: a star or galaxy is point-symmetric about
    its *centre* (``(x, y)`` per pair), so its light at ``p`` is the image at ``2 c - p``
    (bilinear). Returns it and where it holds: where those pixels are the neighbour's own
    (segment *label* + 1) or sky, unmasked and inside the image."""
    (px, py), (cx, cy) = grid, centre
    sub, segmap, mask = pixels.sub, pixels.segmap, pixels.mask
    ny, nx = sub.shape
    ix, fx = _mirror_steps(2.0 * cx[:, None] - px[:, 0, :])
    iy, fy = _mirror_steps(2.0 * cy[:, None] - py[:, :, 0])
    ok = (((iy >= 0) & (iy < ny - 1))[:, :, None] & ((ix >= 0) & (ix < nx - 1))[:, None, :])
    own = [True] * 4
    if segmap is not None:
        lab = (np.asarray(label) + 1)[:, None, None]
        own = [(seg == 0) | (seg == lab) for seg in _corners(segmap, (ix, iy))]
    if mask is not None:
        own = [o & ~masked for o, masked in zip(own, _corners(mask, (ix, iy)), strict=True)]
    fx, fy = fx[:, None, :], fy[:, :, None]
    total = np.zeros(ok.shape)
    for w, value, usable in zip(((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy),
                                _corners(sub, (ix, iy)), own, strict=True):
        total += w * value
        ok &= usable
    return total, ok


def _neighbour_light(pixels: Pixels, sources: PointSources, grid, pairs, bright):
    """The light of each neighbour *j* in its source *k*'s cutout (*pairs* ``(k, j)``, *grid*
    the cutouts' ``(px, py)``): Moffat point sources (*sources*), or for the *bright* pairs
    the neighbour's mirrored far side (:func:`_mirror_light`) where that holds, the Moffat
    model only where not (a few per cent of their pixels)."""
    (px, py), (k, j) = grid, pairs
    x, y, flux = sources.x, sources.y, np.asarray(sources.flux, float)
    dx, dy = px[k] - x[j][:, None, None], py[k] - y[j][:, None, None]
    light = np.empty((k.size, px.shape[-1], px.shape[-1]))
    dim = ~bright
    light[dim] = (moffat_pixels(dx[dim], dy[dim], sources.fwhm, sources.beta)
                  * flux[j[dim]][:, None, None])
    kb, jb = k[bright], j[bright]
    mirrored, ok = _mirror_light(pixels, (px[kb], py[kb]), (x[jb], y[jb]), jb)
    miss, shape = ~ok, mirrored.shape
    mirrored[miss] = (moffat_pixels(np.broadcast_to(dx[bright], shape)[miss],
                                    np.broadcast_to(dy[bright], shape)[miss],
                                    sources.fwhm, sources.beta)
                      * np.broadcast_to(flux[jb][:, None, None], shape)[miss])
    light[bright] = mirrored
    return light


def _sum_by_source(parts, k, n):
    """``np.add.at(zeros, k, parts)`` for *n* sources, in the same order: the first part of
    each source copied, then one fancy-indexed add per further rank (a few), not one slow
    unbuffered add per element."""
    order = np.argsort(k, kind="stable")
    ks = k[order]
    start = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    rank = np.arange(ks.size) - np.repeat(start, np.diff(np.r_[start, ks.size]))
    first = order[rank == 0]
    if first.size == n:  # every source has a part (k[first] is 0 .. n - 1)
        total = parts[first]
    else:
        total = np.zeros((n, *parts.shape[1:]))
        total[k[first]] = parts[first]
    for r in range(1, int(rank.max()) + 1):
        at = order[rank == r]
        total[k[at]] += parts[at]
    return total


def deblended_concentration(pixels: Pixels, sources: PointSources, index, neighbours, fwhm):
    """``(x, y, factor)`` for the sources *index*: a centre from their peak and the factor
    turning the concentration measured there (SEP, every valid pixel) into that of the
    source alone.

    In a crowded field a source's own pixels hold its neighbours' light and its annulus
    loses the pixels of the neighbours' segments: a star looks extended (and, its centroid
    pulled, off-centre), a galaxy beside a star concentrated. In a cutout around each, the
    detected *neighbours* (pairs ``(k, j)``, k indexing *index*) are modelled out: as
    Moffat point sources (*sources*: every detected source's position, flux and the
    profile), or, for a neighbour more than BRIGHT_NEIGHBOUR times brighter than the
    source, as its own light on its far side mirrored through its peak
    (:func:`_mirror_light`; a bright galaxy's wings, which a Moffat profile misses, made the
    stars beside it look extended); no pixel loses more than its light. What light is left
    on one side only (an undetected neighbour) is replaced by its mirror image through the
    centre (:func:`_symmetric`), masked pixels are filled from the source's own mean
    profile at the same radius, and the concentration of the cleaned cutout (every valid
    pixel, the neighbours' segments included) is divided by that of the raw one (same
    pixels and weights, whose errors cancel): the factor for a concentration measured
    without the segmentation map. *fwhm* is the stellar FWHM the concentration radii scale
    with.

    Parameters
    ----------
    pixels : Pixels
        The image; its ``rms`` (scalar or map) is the noise.
    sources : PointSources
        Every detected source, as the model of the neighbours.
    index : ndarray of int
        The sources to measure (sorted, unique).
    neighbours : tuple of ndarray
        ``(k, j)``: source ``index[k]`` has the detected neighbour ``j``.
    fwhm : float
        The stellar FWHM (pixels).

    Returns
    -------
    x, y, factor : ndarray
        The peak centres and the factors, one per source of *index*.
    """
    x, y = np.asarray(sources.x, float), np.asarray(sources.y, float)
    psf_fwhm, beta, model_flux = sources.fwhm, sources.beta, np.asarray(sources.flux, float)
    r_in, r_out = (c * fwhm for c in CONCENTRATION_RADII)
    half = math.ceil(r_out) + 1
    px, py, values, usable, inside = _stamps(pixels, x, y, index, half)
    k, j = neighbours
    # a bright neighbour's light is its own far side (its profile, a galaxy's wings too),
    # mirrored through its peak (its centroid is pulled towards the source)
    bright = model_flux[j] > BRIGHT_NEIGHBOUR * model_flux[np.asarray(index)[k]]
    x, y = _bright_peaks(pixels, (x, y), np.unique(j[bright]))
    model = np.zeros(values.shape)
    if k.size:
        light = _neighbour_light(pixels, PointSources(x, y, model_flux, psf_fwhm, beta),
                                 (px, py), (k, j), bright)
        # no neighbour holds more than a pixel's light
        model = np.minimum(_sum_by_source(light, k, len(index)), np.maximum(values, 0.0))
    clean = values - model
    xc, yc = _peak_centre(clean, usable, (px, py), (x[index], y[index]))
    # the neighbours' light modelled out, their segments' pixels are the source's again
    valid = inside.copy()
    if pixels.mask is not None:
        valid &= ~_blocks(pixels.mask, (px[:, 0, 0], py[:, 0, 0]), px.shape[-1])
    clean = _symmetric(clean, valid, (px, py), (xc, yc), _noise(pixels.rms, (px, py)))
    radius = np.hypot(px - xc[:, None, None], py - yc[:, None, None])
    w_in, w_out = _disc_weights(radius, r_in), _disc_weights(radius, r_out)
    filled = _profile_filled(clean, valid, radius) * inside
    raw = np.where(valid, values, 0.0)
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


def _neighbour_pairs(sources: PointSources, fwhm):
    """The pairs ``(i, j)`` of :func:`unblended_concentration`: source *j* within
    NEIGHBOUR_REACH x *fwhm* of source *i*, or more than BRIGHT_NEIGHBOUR times brighter
    within BRIGHT_NEIGHBOUR_REACH x *fwhm* (a galaxy's wings above all reach further).
    Sorted by *i*, then by *j* (by *j*'s x without a bright pair, as
    :func:`skysurvey.profiles.close_pairs` orders them). One search in rows of the outer
    reach (three rows, an x range in each), not a strip of the whole image height."""
    x, y = np.asarray(sources.x, float), np.asarray(sources.y, float)
    flux = np.asarray(sources.flux, float)
    reach = BRIGHT_NEIGHBOUR_REACH * fwhm
    with np.errstate(invalid="ignore"):
        row = np.nan_to_num(np.floor(y / reach), nan=-2.0)
    # sorted by row, then x; a key for both (a row is wider than the x range plus margins)
    width = 2.0 * np.nanmax(np.abs(x), initial=0.0) + 4.0 * reach + 4.0
    key = row * width + np.nan_to_num(x)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    shift = (np.arange(-1, 2) * width)[:, None]
    lo = np.searchsorted(sorted_key, (key - reach - 1.0) + shift).ravel()
    count = np.searchsorted(sorted_key, (key + reach + 1.0) + shift).ravel() - lo
    i = np.tile(np.arange(x.size), 3).repeat(count)
    j = order[np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())]
    d2 = (x[i] - x[j]) ** 2 + (y[i] - y[j]) ** 2
    near = (d2 < (NEIGHBOUR_REACH * fwhm) ** 2) & (i != j)
    far = (d2 < reach**2) & (i != j) & (flux[j] > BRIGHT_NEIGHBOUR * flux[i])
    i, j = i[near | far], j[near | far]
    rank = np.empty(x.size, int)
    rank[np.argsort(x)] = np.arange(x.size)
    first = np.lexsort((j if far.any() else rank[j], i))
    return i[first], j[first]


def unblended_concentration(pixels: Pixels, sources: PointSources, ratio, fwhm):
    """*ratio* with the concentration of every source that has a detected neighbour within
    NEIGHBOUR_REACH x *fwhm* (or one BRIGHT_NEIGHBOUR times brighter within
    BRIGHT_NEIGHBOUR_REACH x *fwhm*) measured as if alone (:func:`deblended_concentration`).

    Parameters
    ----------
    pixels : Pixels
        The image.
    sources : PointSources
        Every detected source (positions, model fluxes, the PSF's Moffat profile).
    ratio : ndarray
        The concentration of every source (:func:`concentration`).
    fwhm : float
        The stellar FWHM (pixels).

    Returns
    -------
    ndarray
        A copy of *ratio* with the blended sources' values replaced (*ratio* itself when no
        source has a close neighbour).
    """
    i, j = _neighbour_pairs(sources, fwhm)
    if i.size == 0:
        return ratio
    index = np.unique(i)
    xc, yc, factor = deblended_concentration(pixels, sources, index,
                                             (np.searchsorted(index, i), j), fwhm)
    # the segments left out of neither: the factor's raw cutout uses every valid pixel; only
    # the ratio is used, so SEP sums without the noise map (the sums do not depend on it; the
    # per-pixel error read was half of these calls' time)
    at_peak, _ = concentration(pixels.with_(segmap=None, rms=None, gain=None), xc, yc, fwhm,
                               index)
    alone = at_peak * factor
    ok = np.isfinite(alone) & (alone > 0)
    ratio = ratio.copy()
    ratio[index[ok]] = alone[ok]
    return ratio


def psf_stars(ratio, ratio_err, members, clip=3.0):
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


def deblended_extendedness(pixels: Pixels, grid, psf, radius, index):
    """``flux_psf / flux_model`` of the sources *index*, the model flux being the light in a
    circle of *radius* once every other fitted source's PSF is subtracted (Rubin's
    extendedness with a neighbour-free aperture flux in place of a galaxy model's).

    Parameters
    ----------
    pixels : Pixels
        The image (``sub``, ``rms``, ``mask``, ``gain``); segments are not used.
    grid : psfmodel.PsfGrid
        The image's PSF model.
    psf : tuple of ndarray
        ``(x_psf, y_psf, flux_psf, flux_psf_err)`` of every source (NaN: no fit).
    radius : float
        The aperture's radius (pixels).
    index : ndarray of int
        The sources to measure (each with a PSF fit).

    Returns
    -------
    ratio, ratio_err : ndarray
        Per source of *index*: the PSF's light in the aperture over the aperture's light with
        the other sources subtracted, and its error (:func:`skysurvey.psfphot.extendedness`).
        ~1 for a star whatever its neighbours, below 1 for a galaxy.
    """
    x, y, flux, flux_err = (np.asarray(v, float) for v in psf)
    index = np.asarray(index, int)
    if index.size == 0:
        return np.zeros(0), np.zeros(0)
    half = grid.half - pm.LANCZOS
    fitted = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & np.isfinite(flux))
    # the sources whose model reaches an aperture (no need to render the rest of the image)
    _, near, _ = pairs_within(x[fitted], y[fitted], x[index], y[index],
                              half * math.sqrt(2.0) + radius + 1.0)
    used = fitted[np.unique(near)]
    model = pm.ModelImage(pixels.shape, grid, (x[used], y[used]),
                          (np.rint(x[used]).astype(np.int64), np.rint(y[used]).astype(np.int64)),
                          (half, half, None))
    # float32, subtracted in place in bands of rows: no whole model image, no float64 copies
    # (the handler's peak at 4096² with PSF photometry)
    rest = model.subtract_from(np.array(pixels.sub, dtype=np.float32), flux[used])
    rms = pixels.rms if np.ndim(pixels.rms) == 0 else np.ascontiguousarray(pixels.rms,
                                                                            np.float32)
    left, left_err, _ = sep.sum_circle(rest, x[index], y[index], radius, err=rms,
                                       mask=pixels.mask, subpix=0)
    own = flux[index] * aperture_fraction(grid, x[index], y[index], radius)
    own_err = np.abs(own) * flux_err[index] / np.abs(flux[index])
    # the subtracted image holds no Poisson noise of the source: add its own
    poisson = np.maximum(own, 0.0) / pixels.gain if pixels.gain else 0.0
    return extendedness(own, own_err, left + own, np.sqrt(left_err**2 + poisson))


def psf_fit_class_star(score, blended, psf_chi2, ratio, ratio_err):
    """class_star (*score*, from the concentration) with the PSF fit's verdict on blends.

    A blended detection's concentration holds its neighbours' light (or misses their pixels):
    a star looks extended. Where the PSF fit describes the detection's pixels (*psf_chi2* <=
    BLEND_PSF_CHI2) its deblended extendedness *ratio* (:func:`deblended_extendedness`) is the
    better measure, so the score is the larger of the two: ``Phi((ratio - EXTENDEDNESS_BOUNDARY)
    / sqrt(ratio_err**2 + EXTENDEDNESS_SCATTER**2))``. A galaxy stays extended (a PSF fits it
    poorly, or its ratio is low); the concentration is kept everywhere else.

    Parameters
    ----------
    score : ndarray
        class_star from the concentration (:func:`class_star`).
    blended : ndarray of bool
        Detections sharing light with a neighbour (not split by the PSF fit).
    psf_chi2, ratio, ratio_err : ndarray
        The PSF fit's reduced chi² and the deblended extendedness with its error (NaN where
        not measured).

    Returns
    -------
    ndarray
        The scores (a copy).
    """
    score = np.array(score, dtype=float)
    ratio, ratio_err = np.asarray(ratio, float), np.asarray(ratio_err, float)
    with np.errstate(invalid="ignore"):
        judged = (np.asarray(blended, bool) & (np.asarray(psf_chi2, float) <= BLEND_PSF_CHI2)
                  & np.isfinite(ratio) & np.isfinite(ratio_err))
        z = (ratio[judged] - EXTENDEDNESS_BOUNDARY) / np.sqrt(ratio_err[judged] ** 2
                                                              + EXTENDEDNESS_SCATTER**2)
    score[judged] = np.fmax(score[judged], _normal_cdf(z))
    return score
