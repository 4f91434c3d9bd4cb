"""Simultaneous PSF fits of many sources on one image (numpy only: runs in the Lambda).

:func:`fit_sources` fits every source's flux, and the position of those with SNR >=
POS_MIN_SNR, by weighted least squares on the pixels within FIT_RADIUS_FWHM of it, all sources
at once: each iteration fits every source on the image minus the current model of all the
others (block Jacobi, DAOPHOT/ALLSTAR's scheme), so a group of overlapping stars converges to
its joint least-squares solution without forming the groups; the positions take Gauss-Newton
steps (at most MAX_STEP px each) for the first iterations, fluxes are linear. The weights come
from the background RMS, the Poisson noise of the *model* (not the data, which would bias faint
fluxes low) and a PROFILE_ERROR of the model per pixel. :mod:`skysurvey.psfphot` runs it.
The flux errors of sources within BLEND_REACH_FWHM of another are made larger by their fluxes'
and positions' covariance with the neighbours (``PsfFit.blend``: a block-Jacobi error assumes
the neighbours known; close pairs' flux pulls 1.35 -> 1.14 on the tests' pair fields).

Cost: every stamp is rendered at its fit stamp's centre (no whole-pixel shifting), the
per-pixel work is float32 (sums and solves float64), the neighbours' model is one
``bincount`` of the stamps (:class:`~skysurvey.psfmodel.ModelImage`) for chunks of FIT_CHUNK
sources in the order of their rows (each chunk's model made from the rows it needs), a
position step under MIN_STEP is not taken and only the sources that moved are rendered again.
:mod:`skysurvey.psfphot` runs it with one BLAS thread
(:func:`~skysurvey.measurement.single_thread_blas`): OpenBLAS's threads spin between its small
products (twice the CPU).
Memory: the stamps' indices, the models and derivatives for a position step are made per
FIT_CHUNK sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import psfmodel as pm
from .geometry import window_pairs
from .measurement import Pixels

__all__ = [
    "FIT_RADIUS_FWHM",
    "PROFILE_ERROR",
    "PsfFit",
    "Start",
    "fit_sources",
]

#: Pixels within this many FWHM of a source are fitted.
FIT_RADIUS_FWHM = 1.5
#: The model's stamp is at least this many pixels a side from its centre (undersampled
#: images), and the fit radius at least this.
MIN_MODEL_HALF = 8
MIN_FIT_RADIUS = 3.0
#: Half-size of the neighbours' models subtracted while fitting, in FWHM (0.4% beyond).
NEIGHBOUR_HALF_FWHM = 3.0
#: Sources fitted at a time (bounds the per-pixel temporaries: a few MB each).
FIT_CHUNK = 1024
#: Sources within this many FWHM of each other have their fluxes' covariance in their errors.
BLEND_REACH_FWHM = 2.0
#: Block-Jacobi iterations, the first POS_ITER of which also move the positions.
N_ITER = 4
POS_ITER = 2
#: Smallest position step taken (pixels; smaller: the source stays, its stamps are kept).
MIN_STEP = 0.01
#: Largest position step per iteration and largest total move from the detection, pixels.
MAX_STEP = 0.5
MAX_MOVE = 1.5
#: Positions are fitted for sources with at least this SNR (fainter: fixed at detection).
POS_MIN_SNR = 5.0
#: The model's own error, a fraction of the model in each pixel, added to the noise (DAOPHOT's
#: profile error): bright stars' fits are limited by it, not by their photon noise.
PROFILE_ERROR = 0.02


@dataclass
class PsfFit:
    """Result of :func:`fit_sources`: amplitudes (model units), positions, errors, chi²."""

    amp: np.ndarray
    amp_err: np.ndarray
    x: np.ndarray
    y: np.ndarray
    chi2: np.ndarray  # reduced, on the fit pixels, all sources' models subtracted
    npix: np.ndarray
    rendered: object = None  # the model stamps at (x, y), for the next fit to start from
    blend: np.ndarray | None = None  # amp_err's factor for the neighbours' covariance (>= 1)


@dataclass
class Start:
    """Where :func:`fit_sources` starts: positions (0-based pixels), amplitudes (None: zero),
    and an earlier fit's model stamps (reused when the positions are the same)."""

    x: np.ndarray
    y: np.ndarray
    amp: np.ndarray | None = None
    rendered: object = None
    fixed: tuple | None = None  # (ModelImage, amplitudes) of sources held fixed: subtracted,


def _rms_map(pixels):
    """The noise as a map of the image's shape (a scalar noise broadcast; a map as it is,
    no copy)."""
    rms = np.asarray(pixels.rms)
    return rms if rms.shape == pixels.shape else np.broadcast_to(rms.astype(float),
                                                                pixels.shape)


def _neighbour_half(grid, fwhm):
    """Half-size of the neighbours' model stamps (NEIGHBOUR_HALF_FWHM, within the model)."""
    return int(min(grid.half, max(MIN_MODEL_HALF - 2, math.ceil(NEIGHBOUR_HALF_FWHM * fwhm))))


def fit_sources(pixels: Pixels, grid, start: Start, *, fwhm, iters=(N_ITER, POS_ITER),
                chi2=True) -> PsfFit:
    """Fit every source's amplitude (and position, when bright enough) at once.

    Parameters
    ----------
    pixels : Pixels
        The image: sub, rms (map or scalar), mask (or None), gain (None: background noise
        only).
    grid : PsfGrid
        The image's PSF model.
    start : Start
        Starting positions and amplitudes, an earlier fit's model stamps.
    fwhm : float
        Stellar FWHM, pixels (sets the fit radius).
    iters : (int, int)
        Block-Jacobi iterations, and the first how many of them move the positions.
    chi2 : bool
        Whether to measure the final chi² (one more pass; False: NaN).

    Returns
    -------
    PsfFit
    """
    sub, mask, gain = pixels.sub, pixels.mask, pixels.gain
    rms = _rms_map(pixels)
    x, y, amp0, rendered = start.x, start.y, start.amp, start.rendered
    n_iter, pos_iter = iters
    x0, y0 = np.asarray(x, float), np.asarray(y, float)
    x, y = x0.copy(), y0.copy()
    n = x.size
    shape = sub.shape
    radius = max(FIT_RADIUS_FWHM * fwhm, MIN_FIT_RADIUS)
    hf = min(math.ceil(radius), _neighbour_half(grid, fwhm))
    amp = np.zeros(n) if amp0 is None else np.where(np.isfinite(amp0), amp0, 0.0)
    free = np.ones(n, bool)
    err = np.full(n, np.inf)
    # the fit stamps stay centred on the starting pixels (a source moves <= MAX_MOVE px)
    ix, iy = np.rint(x0).astype(np.int64), np.rint(y0).astype(np.int64)
    # float32 for the per-pixel work (half the memory traffic); sums and solves in float64
    # the stamps in the order of their rows: a chunk's neighbour model comes from few rows
    order = np.argsort(iy, kind="stable")
    data, sig2, inside, fixed = _gather_stamps((sub, rms, mask), (ix[order], iy[order]), hf,
                                               start.fixed)
    off = np.arange(-hf, hf + 1)
    ox, oy = np.tile(off, hf * 2 + 1)[None, :], np.repeat(off, hf * 2 + 1)[None, :]
    nh = _neighbour_half(grid, fwhm)
    edge = _edge_value(grid, hf)
    level = _typical(rms)
    grid32 = pm.as_float32(grid)

    def render_all(earlier=None, stamps=None):
        # beyond the fit stamp a source's light matters to its neighbours only if it
        # exceeds a fifth of the background noise there
        big = np.abs(amp) * edge > 0.2 * level
        return pm.ModelImage(shape, grid32, (x, y), (ix, iy), (nh, hf, big), (stamps, earlier))

    # re-rendered once the positions settle
    full = rendered if rendered is not None and not rendered.moved(x, y) \
        and rendered.fits(ix, iy, hf) else None
    near = None
    for it in range(n_iter + 1):
        move = it < pos_iter
        # no model yet (every amplitude 0): nothing to subtract, and the model image is made
        # after this pass from the stamps it renders
        blank = full is None and move and not amp.any()
        small = np.empty(data.shape, np.float32) if blank else None
        if full is None and not blank:
            full = render_all()
        elif it >= pos_iter and full.moved(x, y):  # only the sources that moved
            full = render_all(earlier=full)
        if near is None or move or it == pos_iter:
            r2 = (ox.astype(np.float32) + (ix - x)[order].astype(np.float32)[:, None]) ** 2 \
                + (oy.astype(np.float32) + (iy - y)[order].astype(np.float32)[:, None]) ** 2
            near = inside & (r2 <= radius**2)
            del r2
        final = it == n_iter
        if final and not chi2:
            return PsfFit(amp, err, x, y, np.full(n, np.nan), np.zeros(n, np.int64), full)
        if final:  # the weights of the sources with a close neighbour, for their errors
            pair_i, pair_j = _close_pairs(x, y, BLEND_REACH_FWHM * fwhm)
            slot = np.full(n, -1)
            close = np.unique(pair_i)
            slot[close] = np.arange(close.size)
            wclose = np.empty((close.size, data.shape[1]), np.float32)
        new_amp, err2, step = np.full(n, np.nan), np.full(n, np.inf), np.zeros((n, 2))
        sq, npix = np.zeros(n), np.zeros(n, np.int64)
        amp32 = amp.astype(np.float32)[:, None]
        # the fit stamps' pixels in the padded model image (those beyond the image are
        # there too, and unused)
        if not blank:
            local = (oy * full.width + ox).astype(np.int32)
            base = ((iy + full.pad) * full.width + ix + full.pad).astype(np.int32)[:, None]
        for s in (slice(i, i + FIT_CHUNK) for i in range(0, n, FIT_CHUNK)):
            # a chunk of sources at a time (their neighbours' model from the rows they need,
            # the model and its derivatives at the current positions, the noise: per chunk);
            # c: the sources, s: their stamps' rows
            c = order[s]
            model = np.zeros_like(data[s]) if blank else full.take(amp, base[c] + local)
            light = model if fixed is None else model + fixed[s]
            var = sig2[s] + np.square(np.float32(PROFILE_ERROR) * light)
            if gain:
                var += np.maximum(light, 0.0) * np.float32(1.0 / gain)
            use = near[s] & (var > 0)
            w = np.divide(np.float32(1.0), var, out=np.zeros_like(var), where=use)
            if final:  # chi² against all models
                resid = data[s] - model
                npix[c] = use.sum(axis=1)
                sq[c] = np.einsum("ij,ij->i", w * resid, resid)
                here = slot[c] >= 0
                wclose[slot[c][here]] = w[here]
                continue
            # this source alone: the model image minus this source's part of it
            target = data[s] - model
            if not blank:  # this source's part of the model image, on its fit stamp
                p = full.own(c)
                target += amp32[c] * p
            if move:
                p, dpx, dpy = (v.reshape(v.shape[0], -1)
                               for v in _at(grid32, hf, x[c], y[c], ix[c], iy[c]))
                if blank:
                    small[c] = p
            wp = w * p
            den = np.einsum("ij,ij->i", wp, p).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                new_amp[c] = np.where(den > 0, np.einsum("ij,ij->i", wp, target) / den, np.nan)
                err2[c] = np.where(den > 0, 1.0 / np.sqrt(den), np.inf)
            if move:
                step[c] = _position_step(target, w, p, dpx, dpy, new_amp[c])
        if blank:
            full = render_all(stamps=small)
            del small
        if final:
            movable = free & (amp / err >= POS_MIN_SNR)
            blend = np.ones(n)
            if close.size:
                blend[close] = _blend_factor(
                    _at(grid32, hf, x[close], y[close], ix[close], iy[close]), wclose,
                    (amp[close], movable[close], ix[close], iy[close]),
                    (slot[pair_i], slot[pair_j]))
            return PsfFit(amp, err, x, y, sq / np.maximum(npix - np.where(free, 3, 1), 1),
                          npix, full, blend)
        err = err2
        snr = np.where(np.isfinite(new_amp), new_amp / err, 0.0)
        if move:
            go = free & (snr >= POS_MIN_SNR) & np.isfinite(step).all(axis=1) \
                & (np.hypot(step[:, 0], step[:, 1]) >= MIN_STEP)
            step = np.clip(np.where(go[:, None], step, 0.0), -MAX_STEP, MAX_STEP)
            x, y = x + step[:, 0], y + step[:, 1]
            far = np.hypot(x - x0, y - y0) > MAX_MOVE
            x[far], y[far] = x0[far], y0[far]  # wandered off: back to the detection, fixed
            free &= ~far
        amp = np.where(np.isfinite(new_amp), new_amp, 0.0)
    raise AssertionError("unreachable")  # pragma: no cover


def _close_pairs(x, y, reach):
    """Every ordered pair (i, j), i != j, of sources within *reach* pixels."""
    i, j = window_pairs(x, reach)
    keep = (i != j) & (np.hypot(x[i] - x[j], y[i] - y[j]) <= reach)
    return i[keep], j[keep]


def _blend_factor(stamps, weights, sources, pairs):
    """Flux error factors (>= 1) of sources with close neighbours: the block-Jacobi error is
    the flux's error with everything else known; with the neighbours' fluxes and positions
    fitted too (a close pair's are correlated) it is sqrt((S^-1)_00 F_00), S the Schur
    complement F_ii - sum_j F_ij F_jj^-1 F_ji of the Fisher matrices of (flux, x, y) on the
    fit stamps (exact for two sources; F_ij: i's weights, i's columns and j's on i's stamp),
    at most 3 (1 where the complement is not positive: a duplicate detection, a galaxy's parts).
    *stamps*: (model, d/dx, d/dy) on the fit stamps (K, S, S); *weights* (K, S²); *sources*:
    (amplitudes, whether the positions were fitted, stamp centres); *pairs*: rows (i, j)."""
    amp, movable, ix, iy = sources
    i, j = pairs
    k, size = amp.size, stamps[0].shape[1]
    s2 = size * size
    cols = np.zeros((k, 3, s2 + 1), np.float32)  # (K, 3, S² + a zero)
    for c, v in enumerate(stamps):
        cols[:, c, :s2] = v.reshape(k, -1)
    cols[:, 1:] *= np.where(movable, amp, 0.0).astype(np.float32)[:, None, None]
    wc = cols[:, :, :s2] * weights[:, None, :]
    fii = (wc @ cols[:, :, :s2].transpose(0, 2, 1)).astype(float)
    fii[~movable, 1, 1] = fii[~movable, 2, 2] = 1.0  # fixed positions: decoupled
    # j's columns on i's stamp: one index map per distinct offset of the stamps
    span = 2 * size - 1
    shift, which = np.unique((iy[j] - iy[i] + size - 1) * span + ix[j] - ix[i] + size - 1,
                             return_inverse=True)
    vy = np.arange(s2) // size - (shift // span - size + 1)[:, None]
    vx = np.arange(s2) % size - (shift % span - size + 1)[:, None]
    maps = np.where((vy >= 0) & (vy < size) & (vx >= 0) & (vx < size), vy * size + vx, s2)
    other = np.take_along_axis(cols[j], maps[which][:, None, :], axis=2)
    fij = (wc[i] @ other.transpose(0, 2, 1)).astype(float)
    key = i * k + j
    order = np.argsort(key)
    back = order[np.searchsorted(key[order], j * k + i)]  # the pair (j, i)
    fij = (fij + fij[back].transpose(0, 2, 1)) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            inv = np.linalg.inv(fii + 1e-9 * np.eye(3) * fii[:, :1, :1])
        except np.linalg.LinAlgError:  # a stamp without weights
            inv = np.linalg.pinv(fii)
        term = fij @ inv[j] @ fij[back]
        schur = fii.copy()
        for a in range(3):
            for b in range(3):
                schur[:, a, b] -= np.bincount(i, term[:, a, b], k)
        factor = np.sqrt(np.linalg.pinv(schur)[:, 0, 0] * fii[:, 0, 0])
    return np.clip(np.nan_to_num(factor, nan=1.0), 1.0, 3.0)


def _gather_stamps(image, centre, half, held=None):
    """Fit stamps (N, S²) of *image* (sub, rms, mask) on pixels *centre*, FIT_CHUNK at a time:
    data minus the *held* (ModelImage, amplitudes) model and noise variance (0 where unusable),
    usable (inside, finite, unmasked), the held model (or None)."""
    (sub, rms, mask), (ix, iy) = image, centre
    n, s2 = ix.size, (2 * half + 1) ** 2
    data, sig2 = np.empty((n, s2), np.float32), np.empty((n, s2), np.float32)
    inside = np.empty((n, s2), bool)
    fixed = None if held is None else np.empty((n, s2), np.float32)
    sub, mask = sub.reshape(-1), None if mask is None else mask.reshape(-1)
    for c in (slice(i, i + FIT_CHUNK) for i in range(0, n, FIT_CHUNK)):
        flat, ok = (v.reshape(-1, s2) for v in pm.stamp_index(rms.shape, ix[c], iy[c], half))
        values, var = data[c], sig2[c]  # written in place
        values[...] = np.take(sub, flat)
        var[...] = pm.noise_at(rms, flat)
        np.square(var, out=var)
        ok &= np.isfinite(values) & np.isfinite(var)
        if mask is not None:
            ok &= ~np.take(mask, flat)
        if held is not None:
            fixed[c] = held[0].take(held[1], held[0].index(flat))
            values -= fixed[c]
        values[~ok] = 0.0
        var[~ok] = 0.0
        inside[c] = ok
    return data, sig2, inside, fixed


def _typical(rms):
    """The median of the finite values of the noise map (of every 4th row and column of a
    large one: it sets a threshold only)."""
    if rms.size > 250_000:
        rms = rms[::4, ::4]
    finite = np.isfinite(rms)
    return float(np.median(rms[finite])) if finite.any() else 0.0


def _edge_value(grid, half):
    """The model's value (unit flux, image centre) one pixel beyond a stamp of *half*."""
    h = min(half + 1, grid.half)
    cx, cy = grid.centre
    _, _, psf = pm.render(grid, np.array([float(round(cx))]), np.array([float(round(cy))]), h)
    c = psf.shape[1] // 2
    return float(max(psf[0, c, -1], psf[0, -1, c], psf[0, c, 0], psf[0, 0, c], 0.0))


def _position_step(target, w, psf, dpx, dpy, amp):
    """One Gauss-Newton step (dx, dy) of every source's position, flux refitted alongside."""
    a = amp.astype(np.float32)[:, None]
    normal, rhs = pm.normal_equations([psf, a * dpx, a * dpy], w, target - a * psf)
    normal = normal + 1e-9 * np.eye(3) * normal[:, :1, :1]
    step = np.full((amp.size, 3), np.nan)
    ok = np.isfinite(normal).all(axis=(1, 2)) & (np.abs(np.linalg.det(normal)) > 1e-300)
    if ok.any():
        step[ok] = np.linalg.solve(normal[ok], rhs[ok][..., None])[..., 0]
    return step[:, 1:]


def _at(grid, half, x, y, ix, iy):
    """Model and derivatives of sources at (x, y) on stamps centred on pixels (ix, iy)
    (which need not be the sources' nearest pixels)."""
    _, _, p, dx, dy = pm.render(grid, x, y, half, derivatives=True, centre=(ix, iy))
    return p, dx, dy
