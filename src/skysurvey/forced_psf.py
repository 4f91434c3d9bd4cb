"""Forced PSF photometry of one image: every object's flux with the image's own PSF model.

Numpy only (runs in the Lambda). :func:`psf_model` builds the model from the image's PSF
stars with psfphot's builder (:func:`skysurvey.psfphot.model_from_stars`); :func:`psf_fit`
measures every object at its fixed position. Forced photometry at known positions is linear
in the amplitudes, so objects whose model stamps meet each other's fitted pixels are solved
jointly and exactly (one small dense solve per group, batched by group size) rather than
iterated: a neighbour's light goes to the neighbour at any seeing. :func:`psf_measure` wraps
the fit as :class:`ForcedOptions`' ``measure`` of :func:`forced_photometry` (one image: the
measurement, then the calibration); the amplitude is returned on the aperture's scale (times
the model's fraction within the aperture radius), so the image's aperture correction makes
it a total flux on ``sources.flux_apcorr``'s scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .forced import (
    APERTURE_FLUX,
    BLENDED,
    CENTRE_MASKED,
    OFF_IMAGE,
    ImagePhotometry,
    _disc_pixels,
    aperture_flux,
    calibrate_fluxes,
    circle_overlap,
    covered,
    icrs_to_pixel,
)
from .geometry import window_pairs
from .measurement import Pixels
from .profiles import pairs_within
from .psf import clean_flags
from .stamps import (
    model_canvas,
    own_flags,
    rowdot,
    shifted_stamps,
    stamp_geometry,
    sum64,
)

__all__ = [
    "FIT_RADIUS_FWHM",
    "MIN_PSF_STARS",
    "ForcedOptions",
    "PsfFitSettings",
    "PsfStars",
    "aperture_fractions",
    "forced_photometry",
    "psf_fit",
    "psf_measure",
    "psf_model",
    "psf_stars",
]


@dataclass(frozen=True)
class PsfStars:
    """The image's detections that may build its PSF model.

    Attributes
    ----------
    x, y, flux : ndarray
        Every detection's position (windowed centroid, pixels) and flux (a first guess).
    stars : ndarray of bool
        The PSF star candidates (bright, unflagged, point-like, isolated).
    fwhm : float
        The image's stellar FWHM, pixels.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    stars: np.ndarray
    fwhm: float


#: At least this many PSF stars build a model (fewer: the aperture is used).
MIN_PSF_STARS = 5
#: Other detections' pixels within this many FWHM are left out of a PSF star's stamp.
LABEL_RADIUS_FWHM = 1.5


def psf_model(pixels: Pixels, stars: PsfStars):
    """The image's PSF model (:class:`skysurvey.psfmodel.PsfGrid`) from its PSF stars, or
    None when fewer than :data:`MIN_PSF_STARS` are usable: psfphot's builder with the other
    detections' pixels (within :data:`LABEL_RADIUS_FWHM` FWHM) left out of each star's stamp.

    Parameters
    ----------
    pixels : Pixels
        Background-subtracted image, noise, mask, gain (``segmap`` is not needed).
    stars : PsfStars
        The detections and which of them are PSF stars.

    Returns
    -------
    PsfGrid or None
    """
    from .psfphot import MIN_MODEL_HALF, MODEL_HALF_FWHM, model_from_stars

    use = np.asarray(stars.stars, bool)
    if use.sum() < MIN_PSF_STARS or not stars.fwhm > 0:
        return None
    x, y = np.asarray(stars.x, float), np.asarray(stars.y, float)
    # only the detections whose disc reaches a star's stamp are painted (the same stamps)
    label_r = LABEL_RADIUS_FWHM * stars.fwhm
    reach = max(MIN_MODEL_HALF, math.ceil(MODEL_HALF_FWHM * stars.fwhm)) + label_r + 1
    near = ((np.abs(x[:, None] - x[use]) <= reach)
            & (np.abs(y[:, None] - y[use]) <= reach)).any(axis=1)
    flat, owner = _disc_pixels(pixels.shape, np.where(near, x, np.nan), y, label_r)
    labels = np.zeros(pixels.shape, np.int32)
    labels.ravel()[flat] = owner + 1
    flux = np.asarray(stars.flux, float)
    rms = pixels.rms if np.ndim(pixels.rms) == 2 else np.full(pixels.shape, float(pixels.rms))
    try:
        grid = model_from_stars(pixels.with_(segmap=labels, rms=rms), (x, y, flux), use,
                                stars.fwhm)
    except (ValueError, np.linalg.LinAlgError):
        return None
    if grid is None or grid.n_stars < MIN_PSF_STARS or not np.isfinite(grid.basis).all():
        return None
    return grid


@dataclass(frozen=True)
class PsfFitSettings:
    """What :func:`psf_fit` needs besides the pixels and positions.

    Attributes
    ----------
    grid : PsfGrid
        The image's PSF model (:func:`psf_model`).
    fwhm : float
        Stellar FWHM, pixels: pixels within ``max(1.5 FWHM, 3 px)`` of an object are fitted.
    aperture_radius : float
        The catalog's aperture radius: amplitudes are put on the aperture's scale.
    sky_level_err : float
        Uncertainty of the subtracted background level per pixel.
    stars_x, stars_y : ndarray, optional
        The PSF stars' positions: those alone with SNR >= CALIB_SNR tie PSF to aperture fluxes.
    """

    grid: object
    fwhm: float
    aperture_radius: float
    sky_level_err: float = 0.0
    stars_x: np.ndarray | None = None
    stars_y: np.ndarray | None = None


#: Flag BLENDED where the joint fit multiplies an object's variance by at least this much
#: (two PSFs less than ~1 FWHM apart: |correlation| >= 0.7).
BLEND_INFLATE = 2.0
#: PSF stars measured with SNR >= CALIB_SNR give the image's PSF-to-aperture scale: the median
#: of their aperture flux over their PSF flux (at least CALIB_MIN stars; kept within
#: CALIB_RANGE, else 1). The model's own fraction within the aperture leaves PSF fluxes
#: 0.2-0.5% low on synthetic stars (the interpolation's smoothing); this takes it out.
CALIB_SNR = 30.0
CALIB_MIN = 5
CALIB_RANGE = (0.97, 1.03)


#: Pixels within this many FWHM (at least MIN_FIT_RADIUS px) of an object are fitted.
FIT_RADIUS_FWHM = 1.5
MIN_FIT_RADIUS = 3.0
#: Model stamps reach this many FWHM (psfphot's neighbour stamps: 0.4% of the light beyond).
STAMP_HALF_FWHM = 3.0
#: The model's own noise as a relative flux error, over sqrt(stars used) (psfphot's).
MODEL_NOISE = 0.03
#: The model's error per pixel, a fraction of the model (psfphot's, DAOPHOT's profile error):
#: a bright neighbour's residual makes a faint object's flux and limit that much less certain.
PROFILE_ERROR = 0.02
#: ... for the neighbours' light on an object's pixels: their wings are modelled less well
#: (0.02 -> 0.05: false transient candidates in 17-18 mag stars' wings 2 -> 1 on seed 21 of
#: the synthetic survey, nothing else changed; 0.10 made a constant star variable).
NEIGHBOUR_PROFILE_ERROR = 0.05


def _pairs(ix, iy, reach):
    """Pairs ``i < j`` with ``|ix_i - ix_j| <= reach`` and ``|iy_i - iy_j| <= reach``."""
    i, j = window_pairs(ix, reach)
    keep = (i < j) & (np.abs(iy[i] - iy[j]) <= reach)
    return i[keep], j[keep]


def _components(n, i, j):
    """Connected-component label (the smallest member) of each of *n* nodes, edges (i, j)."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, low)
        np.minimum.at(new, j, low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def _solve_groups(label, diag, pi, pj, off, rhs):
    """Solve the block-diagonal system (one block per component): amplitudes and the inverse
    blocks' entries needed for the errors, as ``(amp, inv_rows)`` where ``inv_rows`` is a
    list of ``(members, inverse block)``."""
    n = diag.size
    amp = np.full(n, np.nan)
    single = np.bincount(label, minlength=n)[label] == 1
    ok = single & (diag > 0)
    amp[ok] = rhs[ok] / diag[ok]
    blocks = []
    multi = np.flatnonzero(~single)
    if multi.size:
        order = multi[np.argsort(label[multi], kind="stable")]
        starts = np.r_[0, np.flatnonzero(np.diff(label[order])) + 1]
        sizes = np.diff(np.r_[starts, order.size])
        local, group = np.empty(n, np.int64), np.empty(n, np.int64)
        local[order] = np.arange(order.size) - np.repeat(starts, sizes)
        group[order] = np.repeat(np.arange(starts.size), sizes)
        for k in np.unique(sizes):
            gs = np.flatnonzero(sizes == k)
            members = order[starts[gs, None] + np.arange(k)]  # (G, k)
            pos = np.full(len(starts), -1)
            pos[gs] = np.arange(gs.size)
            mats = np.zeros((gs.size, k, k))
            b = rhs[members]
            d = diag[members]
            mats[:, np.arange(k), np.arange(k)] = np.where(d > 0, d, 1.0)
            sel = pos[group[pi]] >= 0
            sel &= ~single[pi]
            gi = pos[group[pi[sel]]]
            mats[gi, local[pi[sel]], local[pj[sel]]] = off[sel]
            mats[gi, local[pj[sel]], local[pi[sel]]] = off[sel]
            mats[:, np.arange(k), np.arange(k)] *= 1.0 + 1e-9  # ridge: coincident objects
            try:
                inv = np.linalg.inv(mats)
            except np.linalg.LinAlgError:
                inv = np.linalg.pinv(mats)
            a = np.einsum("gij,gj->gi", inv, b)
            amp[members] = np.where(d > 0, a, np.nan)
            blocks.append((members, inv))
    return amp, blocks


def psf_fit(pixels: Pixels, x, y, settings: PsfFitSettings, saturated=None):
    """PSF amplitudes at fixed positions, overlapping objects fitted jointly.

    Linear at known positions: every object's amplitude of the image's PSF model by weighted
    least squares (the background noise at the object's centre: unbiased at any flux) on the
    pixels within ``max(FIT_RADIUS_FWHM x FWHM, MIN_FIT_RADIUS)`` of any object; objects whose
    stamps meet each other's fitted pixels are solved jointly (one small dense solve per
    group, batched by size). Errors: the inverse normal matrix, the sources' Poisson noise
    (the fitted model), the background level's error, the model's noise (MODEL_NOISE).

    Parameters
    ----------
    pixels : Pixels
        Background-subtracted image, noise, mask, gain.
    x, y : array_like
        Positions, pixels (NaN: not measured).
    settings : PsfFitSettings
        Model, FWHM, aperture radius, background level error.
    saturated : ndarray of bool, optional
        Saturated pixels (flag only).

    Returns
    -------
    flux, flux_err, sky_err : ndarray
        Amplitude times the model's fraction within the aperture radius (the aperture's
        scale), its error, and the error from the background alone.
    flags : ndarray of int32
        :data:`MASKED`, :data:`NEAR_EDGE`, :data:`SATURATED` within the fit radius,
        :data:`BLENDED`.
    """
    grid = settings.grid
    x, y = np.asarray(x, float), np.asarray(y, float)
    n_all = x.size
    flux, err, sky = np.full(n_all, np.nan), np.full(n_all, np.nan), np.full(n_all, np.nan)
    flags = np.zeros(n_all, np.int32)
    sub = np.asarray(pixels.sub)
    shape = sub.shape
    ny, nx = shape
    fwhm = float(settings.fwhm)
    radius = max(FIT_RADIUS_FWHM * fwhm, MIN_FIT_RADIUS)
    h = min(grid.half, max(math.ceil(STAMP_HALF_FWHM * fwhm), math.ceil(radius) + 1,
                           math.ceil(settings.aperture_radius) + 1))
    with np.errstate(invalid="ignore"):  # objects whose stamp reaches the image
        idx = np.flatnonzero((x > -h - 1) & (x < nx + h) & (y > -h - 1) & (y < ny + h))
    if idx.size == 0:
        return flux, err, sky, flags
    # objects with no other object within reach are fitted on small stamps (their own fit
    # pixels), the others on stamps of STAMP_HALF_FWHM with their groups
    ix0, iy0 = np.rint(x[idx]).astype(np.int64), np.rint(y[idx]).astype(np.int64)
    pi, pj = _pairs(ix0, iy0, h + math.ceil(radius))
    crowded = np.zeros(idx.size, bool)
    crowded[pi] = crowded[pj] = True
    amp, var, var_bkg = np.full(idx.size, np.nan), np.full(idx.size, np.nan), np.full(
        idx.size, np.nan)
    f, alone = np.zeros(idx.size, np.int32), np.zeros(idx.size, bool)
    xs, ys = x[idx], y[idx]
    for sel, half, isolated in ((~crowded, min(h, math.ceil(radius) + 1), True),
                                (crowded, h, False)):
        size = max(FIT_BATCH_PIXELS // (2 * half + 1) ** 2, 16)
        for part in _batches(sel, _components(idx.size, pi, pj), iy0, size):
            amp[part], var[part], var_bkg[part], f[part], alone[part] = _fit_subset(
                pixels, (xs[part], ys[part]), half, settings, saturated, isolated)
    # the model's fraction within the aperture radius: amplitudes to the aperture's scale
    frac = aperture_fractions(grid, x[idx], y[idx], settings.aperture_radius)
    frac = frac * _aperture_scale(pixels, x[idx], y[idx],
                                  (amp * frac, np.sqrt(var) * frac, alone), settings)
    flux[idx], err[idx], sky[idx] = amp * frac, np.sqrt(var) * frac, np.sqrt(var_bkg) * frac
    flags[idx] = f
    return flux, err, sky, flags


#: Stamp pixels fitted together at most (whole groups of stamps that meet, in image order;
#: 512 objects on 31² px stamps): a batch's per-pixel arrays (2 MB each) stay in cache and
#: their memory is reused: the fit of forced_cost.py's field 80 -> 54 ms (one run, load 4).
FIT_BATCH_PIXELS = 512 * 31**2


def _batches(sel, label, iy, size):
    """The objects *sel* (a boolean mask) in batches of whole connected groups (*label*: each
    object's group, the index of its smallest member), groups in order of their first
    member's row *iy*, about *size* objects each (a larger group alone)."""
    members = np.flatnonzero(sel)
    if members.size <= size:
        return [members] if members.size else []
    group = label[members]
    members = members[np.lexsort((group, iy[group]))]
    group = label[members]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])  # each group's first
    at = np.searchsorted(starts, np.arange(size, members.size, size))
    cuts = np.unique(starts[at[at < starts.size]])  # the first group start past each size
    return np.split(members, cuts)



def _fit_subset(pixels, xy, h, settings, saturated, isolated=False):
    """:func:`psf_fit` of objects *xy* = (x, y) on stamps of half-size *h*: amplitudes, variance,
    its background share, flags, and whether each was fitted alone (*isolated*: no other
    object's fitted pixels reach a stamp, so each stamp's are its own disc's: no map drawn).

    Per-pixel work in float32 on (n, S²) stamps (row sums pairwise or by einsum); the
    couplings and the neighbours' light from the pairs whose stamps meet (each one's stamp
    moved onto the other's grid): no array of the image's size; the fitted pixels' map spans
    the batch's stamps (none when *isolated*)."""
    from .psfmodel import as_float32, render

    x, y = xy
    grid = settings.grid
    sub = np.asarray(pixels.sub)
    ny, nx = sub.shape
    radius = max(FIT_RADIUS_FWHM * float(settings.fwhm), MIN_FIT_RADIUS)
    n = x.size
    ix, iy, psf = render(as_float32(grid), x, y, h)
    psf = psf.reshape(n, -1)  # (n, S²) float32
    stamps = stamp_geometry(sub.shape, x, y, h)
    # the fitted pixels: within the fit radius of any object, valid, with a finite noise
    # (on the box the stamps span: a batch's objects lie in a band of the image)
    x0, y0 = max(int(ix.min()) - h, 0), max(int(iy.min()) - h, 0)
    box = (min(int(iy.max()) + h + 1, ny) - y0, min(int(ix.max()) + h + 1, nx) - x0)
    # own discs only: isolated objects, or no box (every stamp off the image: no pixel)
    own_discs = isolated or min(box) <= 0
    if not own_discs:
        fitted = np.zeros(box[0] * box[1], bool)
        fitted[_disc_pixels(box, x - x0, y - y0, radius, owners=False)[0]] = True
    values = stamps.gather(sub)
    finite = np.isfinite(values)
    bad = None if finite.all() else ~finite  # (None: no bad pixel)
    if pixels.mask is not None:
        masked = stamps.gather(np.asarray(pixels.mask, bool))
        bad = masked if bad is None else bad | masked
    # one noise per stamp, the map's at its centre (the map varies over background meshes,
    # 64 px: < 1% across a stamp): weights are the model on the used pixels / noise^2
    rms = pixels.rms
    noise = (np.asarray(rms)[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)]
             if np.ndim(rms) == 2 else np.full(n, float(rms))).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_var = np.where(np.isfinite(noise) & (noise > 0), 1 / (noise * noise), 0)
    if own_discs:  # (the same test as _disc_pixels'; off the image: cleared below)
        dy2, dx2 = ((c[:, None] + np.arange(-h, h + 1) - v[:, None]) ** 2
                    for c, v in ((iy, y), (ix, x)))
        use = (dy2[:, :, None] + dx2[:, None, :] <= radius**2).reshape(n, -1)
    else:
        # (the stamps' own integer centres: rint(x - x0) is not rint(x) - x0 at .5 for odd x0)
        use = stamp_geometry(box, stamps.ix - x0, stamps.iy - y0, h).gather(fitted.reshape(box))
    if stamps.edge.any():  # (only stamps reaching beyond the image have pixels off it)
        use[stamps.edge] &= stamps.inside[stamps.edge]
    if bad is not None:
        use &= ~bad
    # (the model is 0 off the used pixels: only non-finite values there need zeroing)
    data = values if finite.all() else np.where(use, values, np.float32(0.0))
    mp = np.where(use, psf, np.float32(0.0))  # the model on the used pixels
    diag = rowdot(mp, mp) * inv_var
    rhs = rowdot(mp, data) * inv_var
    wsum = sum64(mp) * inv_var  # response to a constant background offset
    # pairs whose stamps overlap: the off-diagonal terms
    # (a stamp meets the other's fitted pixels within h + fit radius; two wings meeting on a
    # third object's pixels, up to 2h apart, couple them by less than 1e-3: left out)
    pi, pj = _pairs(ix, iy, h + math.ceil(radius))
    wp = mp * inv_var.astype(np.float32)[:, None] if pi.size else None  # (pairs only)
    neighbours = _Neighbours(psf, (ix, iy, h), pi, pj)
    coupling = neighbours.coupling(wp)
    keep = coupling != 0
    pi, pj, coupling = pi[keep], pj[keep], coupling[keep]
    neighbours = neighbours.subset(keep)
    label = _components(n, pi, pj)
    amp, blocks = _solve_groups(label, diag, pi, pj, coupling, rhs)
    # errors: background (inverse normal matrix), level offset; the light of the neighbours
    # (their photon noise and PROFILE_ERROR of their model) goes to the background's share
    # (the limit at this place), the object's own to its flux error only
    gain = pixels.gain
    inv_gain = 1.0 / gain if gain and gain > 0 else 0.0
    a_pos = np.where(np.isfinite(amp), np.maximum(amp, 0.0), 0.0)
    mp2_pos = np.maximum(mp, np.float32(0.0))
    mp2_pos *= mp
    mp2_pos *= mp
    # own light a * psf: sum(wp^2 (a psf / gain + (e a psf)^2)) from two sums
    extra_own = (a_pos * inv_gain * sum64(mp2_pos)
                 + (PROFILE_ERROR * a_pos) ** 2 * rowdot(mp2_pos, mp)) * inv_var**2
    extra_others = (neighbours.others_light(wp, np.where(np.isfinite(amp), amp, 0.0), inv_gain)
                    if wp is not None else np.zeros(n))
    with np.errstate(divide="ignore", invalid="ignore"):
        var_bkg = np.where(diag > 0, 1.0 / diag, np.nan)
        level = wsum / diag
        for members, inv in blocks:
            var_bkg[members] = np.einsum("gii->gi", inv)  # <= 0: numerically singular
            level[members] = np.einsum("gij,gj->gi", inv, wsum[members])
        var_bkg[~(var_bkg > 0) & (diag > 0)] = np.inf  # (coincident objects): no error
        inflate = np.maximum(var_bkg * diag, 1.0)  # a joint fit's larger variance
        var_sky = (var_bkg + (settings.sky_level_err * level) ** 2
                   + inflate * extra_others / diag**2)
        var_own = inflate * extra_own / diag**2
    model_noise = MODEL_NOISE / math.sqrt(max(grid.n_stars, 1))
    var = var_sky + var_own + (model_noise * np.maximum(amp, 0.0)) ** 2
    sat = None if saturated is None else stamps.gather(np.asarray(saturated, bool))
    f = own_flags(stamps, x, y, radius, (bad, sat))
    f |= np.where(inflate >= BLEND_INFLATE, BLENDED, 0)
    alone = np.bincount(label, minlength=label.size)[label] == 1
    return amp, var, var_sky, f, alone


#: Stamps moved onto neighbours' grids are kept up to this many pixels (float32: 32 MB).
MOVED_CACHE = 2**23


class _Neighbours:
    """Pairs ``(pi, pj)`` whose stamps meet: each one's stamp on the other's grid (both ways,
    :func:`shifted_stamps`), for the couplings and the neighbours' light on each stamp."""

    def __init__(self, psf, stamps, pi, pj):
        self.psf, self.stamps, self.pi, self.pj = psf, stamps, pi, pj
        self.dst, self.src = np.r_[pi, pj], np.r_[pj, pi]  # src's light on dst's stamp
        self.canvas = model_canvas(psf, stamps[2]) if pi.size else None
        self.moved, self.cached = None, None  # the moved stamps, and which rows of them
        if 0 < self.dst.size * psf.shape[1] <= MOVED_CACHE:
            self.moved = self._move(np.arange(self.dst.size))

    def _move(self, rows):
        ix, iy, h = self.stamps
        d, s = self.dst[rows], self.src[rows]
        return shifted_stamps(self.canvas, s, (ix[s] - ix[d], iy[s] - iy[d]), h)

    def _chunks(self, rows, step=4096):
        """``(rows, moved stamps)`` in chunks (views of the cache where its rows run on)."""
        for start in range(0, rows.size, step):
            part = rows[start:start + step]
            if self.moved is None:
                yield part, self._move(part)
                continue
            at = part if self.cached is None else self.cached[part]
            run = at.size and at[-1] - at[0] == at.size - 1 and (np.diff(at) == 1).all()
            yield part, (self.moved[at[0]:at[-1] + 1] if run else self.moved[at])

    def coupling(self, wp) -> np.ndarray:
        """``sum(wp_i * P_j)`` of every pair (i, j) = (pi, pj) on i's stamp."""
        out = np.zeros(self.pi.size)
        for rows, moved in self._chunks(np.arange(self.pi.size)):
            out[rows] = np.einsum("ij,ij->i", wp[self.dst[rows]], moved)
        return out

    def subset(self, keep) -> _Neighbours:
        """The pairs *keep* (a boolean per pair) only (the cache is shared, not copied)."""
        both = np.r_[keep, keep]
        sub = _Neighbours.__new__(_Neighbours)
        sub.psf, sub.stamps, sub.pi, sub.pj = self.psf, self.stamps, self.pi[keep], self.pj[keep]
        sub.dst, sub.src, sub.canvas, sub.moved = self.dst[both], self.src[both], self.canvas, \
            self.moved
        whole = np.arange(both.size) if self.cached is None else self.cached
        sub.cached = whole[both]
        return sub

    def others_light(self, wp, amp, inv_gain) -> np.ndarray:
        """Per object, ``sum(wp^2 (L / gain + (NEIGHBOUR_PROFILE_ERROR L)^2))`` over its
        stamp, L the light of its neighbours' models (amplitude *amp* x model) there."""
        out = np.zeros(wp.shape[0])
        if not self.dst.size:
            return out
        order = np.argsort(self.dst, kind="stable")
        targets, first = np.unique(self.dst[order], return_index=True)
        rank = np.empty(order.size, np.int64)
        rank[order] = np.arange(order.size) - np.repeat(first, np.diff(np.r_[first,
                                                                               order.size]))
        row = np.searchsorted(targets, self.dst)
        light = np.empty((targets.size, wp.shape[1]), np.float32)
        for k in range(int(rank.max()) + 1):  # targets are unique within one rank
            for rows, moved in self._chunks(np.flatnonzero(rank == k)):
                moved = moved * amp[self.src[rows], None].astype(np.float32)  # (a copy)
                if k == 0:  # every target once
                    light[row[rows]] = moved
                else:
                    light[row[rows]] += moved
        np.maximum(light, np.float32(0.0), out=light)
        # sum(wp^2 (L / gain + (e L)^2)) from two row dot products
        wt = wp[targets]
        wt *= wt
        out[targets] = inv_gain * rowdot(wt, light)
        wt *= light
        out[targets] += NEIGHBOUR_PROFILE_ERROR**2 * rowdot(wt, light)
        return out


def _aperture_scale(pixels, x, y, fit, settings) -> float:
    """Median aperture / PSF flux of the PSF stars measured alone (:data:`CALIB_SNR`);
    *fit* is ``(flux, flux_err, alone)`` per object."""
    flux, err, alone = fit

    if settings.stars_x is None or not np.size(settings.stars_x):
        return 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        good = alone & np.isfinite(flux) & (flux / err >= CALIB_SNR)
    cand = np.flatnonzero(good)
    if cand.size < CALIB_MIN:
        return 1.0
    sx, sy = np.asarray(settings.stars_x, float), np.asarray(settings.stars_y, float)
    d2 = (x[cand, None] - sx[None, :]) ** 2 + (y[cand, None] - sy[None, :]) ** 2
    cand = cand[d2.min(axis=1) < 1.0]
    if cand.size < CALIB_MIN:
        return 1.0
    aper, _, _, f = aperture_flux(pixels.with_(gain=None), x[cand], y[cand],
                                  settings.aperture_radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = aper / flux[cand]
    ratio = ratio[(f == 0) & np.isfinite(ratio)]
    if ratio.size < CALIB_MIN:
        return 1.0
    scale = float(np.median(ratio))
    return scale if CALIB_RANGE[0] <= scale <= CALIB_RANGE[1] else 1.0


def aperture_fractions(grid, x, y, radius: float) -> np.ndarray:
    """The model's flux within a circle of *radius* pixels centred on each object (exact
    pixel overlap, as ``flux_aper``): linear in the model's polynomial terms, so one sum per
    basis image (a sub-pixel shift moves the circle with the star: the same fraction).

    Parameters
    ----------
    grid : PsfGrid
        The image's PSF model (native sampling).
    x, y : array_like
        Image positions, pixels (they set the polynomial terms).
    radius : float
        Aperture radius, pixels.

    Returns
    -------
    ndarray
        Per position, the fraction of the model's (unit) sum within the aperture.
    """
    from .psfmodel import poly_terms

    h = grid.half
    off = np.arange(-h, h + 1, dtype=float)
    weights = circle_overlap(off[None, :], off[:, None], radius)
    per_term = np.sum(grid.basis * weights, axis=(1, 2))
    return poly_terms(np.asarray(x, float), np.asarray(y, float), grid.order, grid.centre,
                      grid.scale) @ per_term


def psf_measure(settings: PsfFitSettings) -> Callable:
    """A ``ForcedOptions.measure`` that fits the PSF model (:func:`psf_fit`).

    Parameters
    ----------
    settings : PsfFitSettings
        The model and the fit's settings.

    Returns
    -------
    callable
        ``measure(pixels, x, y, saturated=None) -> (flux, flux_err, sky_err, flags)``.
    """
    def measure(pixels, x, y, saturated=None):
        return psf_fit(pixels, x, y, settings, saturated)
    return measure


#: PSF stars: detections with at least this SNR, class_star, no flags, and no other detection
#: or object within ISOLATION_FWHM FWHM; the brightest MAX_PSF_STARS of them.
PSF_STAR_SNR = 20.0
PSF_STAR_CLASS = 0.8
ISOLATION_FWHM = 3.0
MAX_PSF_STARS = 50


def psf_stars(sources: dict, fwhm: float | None, obj_x=None, obj_y=None) -> PsfStars | None:
    """The image's PSF star candidates among its detections (``sources`` columns ``x, y,
    flux, flux_apcorr, snr, class_star, flags, fwhm`` as arrays): point-like (class_star >=
    PSF_STAR_CLASS), unflagged, SNR >= PSF_STAR_SNR, no other detection or object (*obj_x*,
    *obj_y*, pixels) within ISOLATION_FWHM FWHM; the brightest MAX_PSF_STARS. *fwhm*: the
    image's ``fwhm_median`` (None: the candidates' median FWHM). None without detections.

    Parameters
    ----------
    sources : dict of ndarray
        The image's ``sources`` columns.
    fwhm : float or None
        Stellar FWHM, pixels.
    obj_x, obj_y : ndarray, optional
        The objects' positions on the image.

    Returns
    -------
    PsfStars or None
    """
    x = np.asarray(sources["x"], float)
    if x.size == 0:
        return None
    y = np.asarray(sources["y"], float)
    flux = np.asarray(sources["flux_apcorr"], float)
    flux = np.where(np.isfinite(flux) & (flux > 0), flux, np.asarray(sources["flux"], float))
    with np.errstate(invalid="ignore"):
        cand = (np.isfinite(x) & np.isfinite(y) & (flux > 0)
                & (np.asarray(sources["snr"], float) >= PSF_STAR_SNR)
                & (np.asarray(sources["class_star"], float) >= PSF_STAR_CLASS)
                & clean_flags(sources["flags"]))
    if fwhm is None or not fwhm > 0:
        widths = np.asarray(sources["fwhm"], float)[cand]
        widths = widths[np.isfinite(widths) & (widths > 0)]
        if not widths.size:
            return None
        fwhm = float(np.median(widths))
    reach = ISOLATION_FWHM * fwhm
    finite = np.isfinite(x) & np.isfinite(y)
    xs, ys = np.where(finite, x, -1e9), np.where(finite, y, -1e9)
    near = np.zeros(x.size, bool)
    if cand.any():
        c = np.flatnonzero(cand)  # another detection within reach (sorted in x: not n^2)
        near[c] = np.bincount(pairs_within(xs, ys, xs[c], ys[c], reach)[0], minlength=c.size) > 1
    if obj_x is not None and cand.any():
        ok = np.isfinite(obj_x) & np.isfinite(obj_y)
        c = np.flatnonzero(cand)
        i, _, _ = pairs_within(np.asarray(obj_x)[ok], np.asarray(obj_y)[ok], x[c], y[c], reach)
        near[c] |= np.bincount(i, minlength=c.size) > 1  # itself, and another object
    cand &= ~near
    idx = np.flatnonzero(cand)
    cand[idx[np.argsort(-flux[idx])][MAX_PSF_STARS:]] = False
    return PsfStars(xs, ys, np.where(np.isfinite(flux), flux, 0.0), cand, float(fwhm))


# ---- one image: the measurement and the calibration ---------------------------------------


@dataclass(frozen=True)
class ForcedOptions:
    """How :func:`forced_photometry` measures.

    Attributes
    ----------
    measure : callable, optional
        ``measure(pixels, x, y, saturated) -> (flux, flux_err, sky_err, flags)`` on the
        aperture's scale, given every position, covered or not (uncovered ones are modelled,
        not reported): :func:`psf_measure`'s. None: the aperture (flagged APERTURE_FLUX
        when *flag_aperture*: a PSF model was wanted).
    sky_level_err : float
        Uncertainty of the subtracted background level per pixel (the aperture's).
    saturated : ndarray of bool, optional
        Saturated pixels (flags only).
    flag_aperture : bool
    xy : tuple of ndarray, optional
        The positions' pixel coordinates when already computed.
    """

    measure: Callable | None = None
    sky_level_err: float = 0.0
    saturated: np.ndarray | None = None
    flag_aperture: bool = False
    xy: tuple | None = None


def forced_photometry(pixels: Pixels, wcs, ra, dec, phot: ImagePhotometry,
                      options: ForcedOptions | None = None) -> dict[str, np.ndarray]:
    """Forced photometry of one image at ICRS positions.

    Parameters
    ----------
    pixels : Pixels
        ``sub`` (background-subtracted image; masked pixels may hold anything), ``rms``
        (scalar or map), ``mask`` (pixels to leave out), ``gain``.
    wcs : astropy.wcs.WCS
        The image's celestial WCS.
    ra, dec : array_like
        ICRS positions, degrees.
    phot : ImagePhotometry
        Aperture radius, aperture correction, zero point, gain (the image's record).
    options : ForcedOptions, optional
        The measurement (default: the aperture), background level error, saturated pixels.

    Returns
    -------
    dict of ndarray
        ``x``, ``y``, ``covered`` (bool: on the image, pixel valid), ``flux``, ``flux_err``,
        ``snr``, ``mag``, ``mag_err``, ``mag_limit``, ``flags`` (int32). Positions not covered
        have NaN photometry and :data:`OFF_IMAGE` or :data:`CENTRE_MASKED` set. Fluxes are
        the measurement times the image's aperture correction (total flux).
    """
    options = options or ForcedOptions()
    data = np.asarray(pixels.sub)
    x, y = icrs_to_pixel(wcs, ra, dec) if options.xy is None else options.xy
    shape = data.shape
    on_image = covered(x, y, shape)
    mask = pixels.mask
    valid = None if mask is None else ~np.asarray(mask, bool)
    cover = covered(x, y, shape, valid) & on_image
    xc, yc = np.where(cover, x, np.nan), np.where(cover, y, np.nan)
    if options.measure is None:
        flux, err, sky, flags = aperture_flux(pixels.with_(sub=data, gain=phot.gain), xc, yc,
                                              phot.aperture_radius, saturated=options.saturated,
                                              sky_level_err=options.sky_level_err)
        if options.flag_aperture:
            flags = flags | APERTURE_FLUX
    else:  # every position, covered or not: an object just off the edge or on a masked
        # pixel still sends light into the image, which a joint fit must model
        flux, err, sky, flags = options.measure(pixels, x, y, options.saturated)
    correction, correction_err = phot.correction
    out = calibrate_fluxes(flux, err, sky, phot.zero_point, correction, correction_err)
    out = {k: np.where(cover, v, np.nan) for k, v in out.items()}  # not covered: no photometry
    flags = flags | np.where(~on_image, OFF_IMAGE, 0) | np.where(on_image & ~cover,
                                                                  CENTRE_MASKED, 0)
    return {"x": x, "y": y, "covered": cover, **out, "flags": flags.astype(np.int32)}
