"""PSF photometry of every source with the image's own PSF model (numpy only: runs in the Lambda).

The steps of :func:`photometry`, each measured on synthetic fields (tests/test_psfphot.py):

1. Model (:mod:`skysurvey.psfmodel`) from the PSF stars that :mod:`skysurvey.psf` chose
   (bright, clean, on the stellar locus), their neighbours' segmentation pixels left out.
2. Fit (:func:`skysurvey.psffit.fit_sources`): every source's flux, and the position of the
   brighter ones, on the pixels within FIT_RADIUS_FWHM of it, all sources at once (block
   Jacobi: each on the image minus the current model of all the others), weighted by the
   background RMS, the Poisson noise of the *model* and a PROFILE_ERROR of the model per
   pixel. Cosmic rays' pixels are left out (detect.py).
3. Second pass: the background again from the image minus every fitted source (the stars'
   wings raise a crowded field's background: faint stars' flux_psf/true 0.97 -> 1.00), the
   model again with the neighbours subtracted, the fit again.
4. Residual search (:func:`_residual_sources`, DAOPHOT's second FIND; *residual*, off by
   default: it costs purity): stars the detection missed, found in the image minus every
   fitted source (flag PSF_RESIDUAL).
5. Splits (:func:`split_pairs`): a source whose one-star fit is poor is refitted as two
   PSFs (6 parameters, Gauss-Newton, started at the residual's peak). It becomes two sources,
   flag PSF_SPLIT, when the two-star fit is better by SPLIT_DCHI2 in units of its own reduced
   chi² (model errors of bright single stars inflate both alike), describes the pixels
   (SPLIT_MAX_CHI2, SPLIT_MAX_RATIO: a galaxy's two-PSF fit stays poor), the stars are
   SPLIT_MIN_SEP FWHM apart and both have SNR >= SPLIT_MIN_SNR, and one extended source
   (the PSF convolved with an elliptical exponential, :func:`extended_chi2`) does not
   describe the pixels nearly as well (SPLIT_EXT_DCHI2): a small galaxy's two-PSF fit can be
   good, its one-galaxy fit is as good or better; a pair's is much worse.
6. One joint fit of the finds, the split stars and the sources whose fit stamps their models
   reach (the others keep their second-pass fit).
7. Scale: the model sums to 1 over its stamp (MODEL_HALF_FWHM); ``flux_psf`` is the fitted
   amplitude times the image's aperture correction times the model's fraction within the
   catalog's aperture (so on ``flux_apcorr``'s total-flux scale), unless that product is
   implausible (SCALE_RANGE: the aperture correction failed), then the amplitude itself.
   ``flux_psf_err`` is the fit's error (with a close neighbour's covariance: ``PsfFit.blend``)
   with the correction's error and the model's noise (MODEL_NOISE) added.

``flux_psf / flux_apcorr`` is an extendedness measure (Rubin's psf/model flux ratio): ~1 for
stars, below for galaxies (:func:`extendedness`).

Cost and memory: see :mod:`skysurvey.psffit` for the fits; the second pass's image reuses
the residual's buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sep

from . import psfmodel as pm
from .measurement import Pixels, single_thread_blas
from .psffit import (
    FIT_RADIUS_FWHM,
    MAX_MOVE,
    MAX_STEP,
    MIN_FIT_RADIUS,
    MIN_MODEL_HALF,
    PROFILE_ERROR,
    PsfFit,
    Start,
    _at,
    _neighbour_half,
    _rms_map,
    fit_sources,
)

__all__ = [
    "FIT_RADIUS_FWHM",
    "MODEL_HALF_FWHM",
    "PSF_RESIDUAL",
    "PSF_SPLIT",
    "Options",
    "PsfFit",
    "Scale",
    "Start",
    "aperture_fraction",
    "extended_chi2",
    "extendedness",
    "fit_sources",
    "model_from_stars",
    "photometry",
    "residual_background",
    "split_pairs",
]

#: Flag bit: this source and another one were one detection that the PSF fit split in two.
PSF_SPLIT = 32768
#: Flag bit: found in the image with every fitted source's PSF subtracted (PSF photometry only).
PSF_RESIDUAL = 524288  # (65536 is BAD_WCS; 131072, 262144 forced photometry flags)
#: Residual search: SEP threshold (background RMS units, 3x3 'conv' filter: detection's own),
#: minimum area; a find is kept when >= RESIDUAL_MIN_SEP FWHM from every source and
#: >= RESIDUAL_AVOID FWHM from grossly misfitted ones (psf_chi2 > RESIDUAL_BAD_CHI2: galaxies,
#: saturated stars, whose residuals are structure), and its PSF fit has SNR >= RESIDUAL_MIN_SNR
RESIDUAL_THRESH = 1.5
RESIDUAL_MINAREA = 5
RESIDUAL_MIN_SEP = 1.0
RESIDUAL_AVOID = 2.0
RESIDUAL_BAD_CHI2 = 10.0
RESIDUAL_MIN_SNR = 5.0
#: ... and its PSF fit describes its pixels (a galaxy's leftover structure does not).
RESIDUAL_MAX_CHI2 = 1.5
#: Half-size of the model's stamp, in FWHM (Moffat beta 3.5: 0.1% of the light beyond).
MODEL_HALF_FWHM = 4.0
#: The model's own noise (built from a finite number of stars) as a relative flux error:
#: MODEL_NOISE / sqrt(stars used), added in quadrature (synthetic 512²-1024² fields: bright
#: stars' pulls had a robust sigma of 1.4-2.2 with 40-70 model stars without it).
MODEL_NOISE = 0.03
#: Plausible totals per unit model amplitude (aperture correction x the model's aperture
#: fraction); outside, the model's own normalisation (its stamp) is the total.
SCALE_RANGE = (0.99, 1.03)
#: At most this many PSF stars (the brightest) build the model.
MAX_MODEL_STARS = 200
#: Splitting: candidates have reduced chi² above SPLIT_CHI2 and SNR above SPLIT_MIN_SNR_PARENT;
#: accepted when Δχ² / (two-star reduced chi²) > SPLIT_DCHI2 and each star's SNR >= SPLIT_MIN_SNR.
SPLIT_CHI2 = 1.5
SPLIT_MIN_SNR_PARENT = 20.0
SPLIT_DCHI2 = 40.0
#: ... and the two stars describe the pixels (reduced chi² at most SPLIT_MAX_CHI2, at most
#: SPLIT_MAX_RATIO of the one star's chi²): a galaxy's two-PSF fit stays poor.
SPLIT_MAX_CHI2 = 1.5
SPLIT_MAX_RATIO = 0.6
#: ... and the two stars at least this many FWHM apart (a galaxy's two-PSF fit puts them
#: closer; the issue's pairs are 1-1.5 FWHM apart).
SPLIT_MIN_SEP = 0.8
SPLIT_MIN_SNR = 5.0
SPLIT_ITER = 4
#: ... and two stars describe the pixels better than one extended source does: the two-star
#: chi² lower than the best PSF-convolved elliptical exponential's (:func:`extended_chi2`,
#: centred between the stars, major axis along them) by SPLIT_EXT_DCHI2 in units of the
#: two-star reduced chi² (crowded 768² training fields of tests/class_star_fields.py, seeds
#: 1-8: 30 of 41 galaxies' splits refused, 1 of 162 true pairs', 0.85 FWHM apart).
SPLIT_EXT_DCHI2 = 30.0
#: The extended models: exponential scale lengths in FWHM, axis ratios (a finer grid of 8 x 5,
#: or Gaussians too, refused 1-3 more galaxies' splits at 2-4x the cost).
EXT_SIZES = (0.15, 0.3, 0.55, 1.0, 1.8)
EXT_AXIS_RATIOS = (0.2, 0.45, 1.0)
#: Iterations of the joint fit of the split stars, the finds and the sources near them (the
#: others keep the second fit's values).
JOINT_ITER = 3
#: The second fit's iterations and position steps (3, 1: one more than the joint fit of
#: everyone had needed; with (2, 1) the messy field's bright pulls reached 1.34).
FIT2 = (3, 1)


    # and in the noise


@dataclass(frozen=True)
class Scale:
    """The image's scales for :func:`photometry`: stellar FWHM and the catalog's aperture
    radius (pixels), the aperture correction and its error (NaN: the model's own
    normalisation is the total)."""

    fwhm: float
    radius: float
    aperture_correction: float = math.nan
    aperture_correction_err: float = math.nan


@dataclass(frozen=True)
class Options:
    """What :func:`photometry` does beyond fitting: split detections that are two stars,
    add the stars found in the residual image."""

    split: bool = True
    residual: bool = False


def model_from_stars(pixels: Pixels, sources, stars, fwhm, refine=None,
                     max_stars=MAX_MODEL_STARS):
    """The image's :class:`~skysurvey.psfmodel.PsfGrid` from its PSF stars, or None.

    Parameters
    ----------
    pixels : Pixels
        The image (sub, rms, segmap, mask, gain).
    sources : tuple of (N,) arrays
        ``(x, y, flux)`` of every source (segmentation label i + 1 for source i).
    stars : (N,) bool array
        The PSF stars; the brightest *max_stars* of them, away from the edge, build the
        model, with every other source's segmentation pixels (and masked pixels) left out.
    fwhm : float
        Stellar FWHM, pixels.
    refine : tuple or None
        ``(rendered, amp, grid)``: every source's fitted model stamps (a
        :class:`~skysurvey.psfmodel.ModelImage`), the fitted amplitudes and the model they
        came from; the neighbours are then subtracted instead of left out, and the model
        starts from *grid*.
    max_stars : int
        At most this many stars.

    Returns
    -------
    PsfGrid or None
    """
    x, y, flux = (np.asarray(v, float) for v in sources)
    sub, mask, gain = pixels.sub, pixels.mask, pixels.gain
    rms = _rms_map(pixels)
    start = None if refine is None else refine[2]
    ny, nx = sub.shape
    half = max(MIN_MODEL_HALF, math.ceil(MODEL_HALF_FWHM * fwhm))
    idx = np.flatnonzero(stars & np.isfinite(flux) & (flux > 0)
                         & (x >= half) & (x <= nx - 1 - half) & (y >= half)
                         & (y <= ny - 1 - half))
    if idx.size == 0:
        return None
    idx = idx[np.argsort(-flux[idx])][:max_stars]
    order = pm.choose_order(idx.size)
    if idx.size < pm.STARS_PER_TERM // 2 + 1:
        return None
    ix, iy = np.rint(x[idx]).astype(int), np.rint(y[idx]).astype(int)
    images = [(sub, 0.0), (rms, np.inf)] + ([(mask, True)] if mask is not None else []) \
        + ([(pixels.segmap, 0)] if refine is None else [])
    cut, inside, flat = _cutouts(images, (ix, iy), half)
    stamps, noise = cut[:2]
    ok = inside & np.isfinite(stamps)
    if mask is not None:
        ok &= ~cut[2]
    if refine is None:
        ok &= (cut[-1] == 0) | (cut[-1] == (idx + 1)[:, None, None])
    else:
        rendered, amp, _ = refine
        around = rendered.take(amp, rendered.index(flat)).reshape(stamps.shape)
        _, _, own = pm.render(start, x[idx], y[idx], min(half, _neighbour_half(start, fwhm)))
        pad = half - own.shape[1] // 2
        stamps = stamps - around + np.pad(own, ((0, 0), (pad, pad), (pad, pad))) \
            * amp[idx, None, None]
    del flat, cut
    var = noise.astype(float) ** 2
    if gain:
        var = var + np.maximum(stamps, 0.0) / gain
    weights = np.where(ok & (var > 0), 1.0 / np.where(var > 0, var, 1.0), 0.0)
    stamps = np.where(ok, stamps, 0.0)
    warm = start is not None and start.order == order and start.half == half
    layout = pm.GridLayout(half, 1, order, ((nx - 1) / 2, (ny - 1) / 2),
                           (max(nx / 2, 1.0), max(ny / 2, 1.0)))
    return pm.build(pm.StarStamps(stamps, weights, x[idx], y[idx], flux[idx]), layout,
                    n_iter=2 if warm else 5, start=start if warm else None)


def _cutouts(images, centre, half):
    """Stamps (N, S, S) of each of *images* ((image, fill outside) pairs of one shape, a
    broadcast noise map too) centred on pixels *centre*, from one index: the stamps, whether
    each pixel is inside the image, the flat indices."""
    flat, inside = pm.stamp_index(images[0][0].shape, *centre, half)
    cut = [np.where(inside, pm.noise_at(np.asarray(im), flat), fill) for im, fill in images]
    return cut, inside, flat


def aperture_fraction(grid, x, y, radius) -> np.ndarray:
    """The model's flux within a circle of *radius* pixels (exact overlap, as the catalog's
    ``flux_aper``) at image positions (x, y)."""
    h = grid.half
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    ix, iy, psf = pm.render(grid, x, y, h)
    out = np.empty(x.size)
    for i in range(x.size):
        stamp = np.ascontiguousarray(psf[i])
        flux, _, _ = sep.sum_circle(stamp, [h + (x[i] - ix[i])], [h + (y[i] - iy[i])], radius,
                                    subpix=0)
        out[i] = flux[0]
    return out


def _residual_sources(pixels, grid, fit, fwhm):
    """Stars the detection missed (DAOPHOT's second FIND): found in the image minus every
    fitted source, each fitted there alone (the others are already subtracted). Returns the
    kept finds' x, y and amplitudes."""
    none = (np.zeros(0),) * 3
    sub, mask = pixels.sub, pixels.mask
    rms = _rms_map(pixels)
    resid = sub - fit.rendered.image(fit.amp)
    finite = np.isfinite(rms)
    noise = float(np.median(rms[finite])) if finite.any() else 0.0
    if not noise > 0:
        return none
    try:
        objects = sep.extract(np.ascontiguousarray(resid, dtype=np.float32), RESIDUAL_THRESH,
                              err=noise, mask=mask, minarea=RESIDUAL_MINAREA,
                              filter_type="conv")
    except Exception:  # SEP's buffers overflow on pathological residuals: no finds
        return none
    ny, nx = sub.shape
    cx, cy = objects["x"].astype(float), objects["y"].astype(float)
    keep = (cx >= 2) & (cx <= nx - 3) & (cy >= 2) & (cy <= ny - 3)
    keep &= pm.nearest_distance(cx, cy, fit.x, fit.y, RESIDUAL_MIN_SEP * fwhm) \
        >= RESIDUAL_MIN_SEP * fwhm
    bad = fit.chi2 > RESIDUAL_BAD_CHI2
    if bad.any():
        reach = RESIDUAL_AVOID * fwhm
        keep &= pm.nearest_distance(cx, cy, fit.x[bad], fit.y[bad], reach) >= reach
    if not keep.any():
        return none
    alone = fit_sources(pixels.with_(sub=resid), grid, Start(cx[keep], cy[keep]), fwhm=fwhm,
                        iters=(3, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = alone.amp / alone.amp_err
    # a find's light was partly in its neighbours' amplitudes: judged again after the joint fit
    good = (np.isfinite(snr) & (snr >= RESIDUAL_MIN_SNR / 2)
            & (alone.chi2 <= 2 * RESIDUAL_MAX_CHI2))
    return alone.x[good], alone.y[good], alone.amp[good]


def residual_background(residual, mask, fwhm, mesh_fwhm=16.0, overwrite=False):
    """The background left in *residual* (the image minus every fitted source): SEP's mesh
    background of it (meshes of *mesh_fwhm* FWHM, at least 32 px, 3 x 3 median filter).
    With *overwrite*, a C-contiguous float32 *residual* is used (its NaNs zeroed) instead of
    copied."""
    return _residual_mesh(residual, mask, fwhm, mesh_fwhm, overwrite).back()


def _residual_mesh(residual, mask, fwhm, mesh_fwhm=16.0, overwrite=False):
    """:func:`residual_background`'s ``sep.Background`` (its map not made)."""
    size = int(max(32, round(mesh_fwhm * fwhm)))
    data = (np.asarray if overwrite else np.array)(residual, dtype=np.float32, order="C")
    for r0 in range(0, data.shape[0], 256):  # in bands of rows: small boolean temporaries
        np.nan_to_num(data[r0:r0 + 256], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return sep.Background(data, mask=mask, bw=size, bh=size, fw=3, fh=3)


def split_pairs(pixels: Pixels, grid, fit: PsfFit, *, fwhm, candidates=None):
    """Two-star fits of poorly fitted sources.

    Parameters
    ----------
    pixels : Pixels
        The image (sub, rms, mask, gain).
    grid : PsfGrid
        The image's PSF model.
    fit : PsfFit
        Every source's one-star fit (with its model stamps).
    fwhm : float
        Stellar FWHM, pixels.
    candidates : (N,) bool array or None
        Limits the search.

    Returns
    -------
    tuple of arrays
        ``(index, x1, y1, a1, x2, y2, a2)`` for the sources that are better described by two
        PSFs (see the module's docstring for the criterion).
    """
    sub, mask, gain = pixels.sub, pixels.mask, pixels.gain
    rms = _rms_map(pixels)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = fit.amp / fit.amp_err
    cand = (fit.chi2 > SPLIT_CHI2) & (snr >= SPLIT_MIN_SNR_PARENT)
    if candidates is not None:
        cand &= candidates
    idx = np.flatnonzero(cand)
    empty = (np.zeros(0, int),) + (np.zeros(0),) * 6
    if idx.size == 0:
        return empty
    radius = max((FIT_RADIUS_FWHM + 0.5) * fwhm, 2.5)
    hf = min(math.ceil(radius), grid.half)
    grid32 = pm.as_float32(grid)
    xc, yc = fit.x[idx], fit.y[idx]
    ix, iy = np.rint(xc).astype(int), np.rint(yc).astype(int)
    # stamps by gathers (no whole-image temporaries), float32 per pixel
    cut, inside, flat = _cutouts([(sub, 0.0), (rms, np.inf)]
                                 + ([(mask, True)] if mask is not None else []), (ix, iy), hf)
    data, sig = cut[:2]
    inside &= np.isfinite(data) & np.isfinite(sig)
    if mask is not None:
        inside &= ~cut[2]
    data = np.where(inside, data, 0.0).astype(np.float32)
    others = fit.rendered.take(fit.amp, fit.rendered.index(flat)).reshape(data.shape)
    _, _, own = pm.render(grid32, xc, yc, hf)
    own = own * fit.amp[idx, None, None].astype(np.float32)
    target = data - others + own
    off = np.arange(-hf, hf + 1)
    py, px = np.meshgrid(off, off, indexing="ij")
    px, py = px[None] + ix[:, None, None], py[None] + iy[:, None, None]
    r2 = (px - xc[:, None, None]) ** 2 + (py - yc[:, None, None]) ** 2
    light = others + own
    var = np.where(inside, sig, 0.0).astype(np.float32) ** 2 \
        + np.square(np.float32(PROFILE_ERROR) * light)
    if gain:
        var += np.maximum(light, 0.0) * np.float32(1.0 / gain)
    use = inside & (r2 <= radius**2) & (var > 0)
    w = np.divide(np.float32(1.0), var, out=np.zeros_like(var), where=use)
    one = target - own
    chi2_1 = np.einsum("nij,nij->n", w * one, one).astype(float)
    # start: the second star at the residual's peak, the first moved the other way
    resid = np.where(use & (r2 <= (fwhm * 1.5) ** 2), target - own, -np.inf)
    peak = np.argmax(resid.reshape(len(idx), -1), axis=1)
    x2, y2 = px.reshape(len(idx), -1)[np.arange(len(idx)), peak].astype(float), \
        py.reshape(len(idx), -1)[np.arange(len(idx)), peak].astype(float)
    x1, y1 = xc - 0.3 * (x2 - xc), yc - 0.3 * (y2 - yc)
    a1, a2 = 0.7 * fit.amp[idx], 0.3 * fit.amp[idx]
    for _ in range(SPLIT_ITER):
        p1, d1x, d1y = _at(grid32, hf, x1, y1, ix, iy)
        p2, d2x, d2y = _at(grid32, hf, x2, y2, ix, iy)
        b1, b2 = a1.astype(np.float32)[:, None, None], a2.astype(np.float32)[:, None, None]
        res = target - b1 * p1 - b2 * p2
        normal, rhs = pm.normal_equations([p1, b1 * d1x, b1 * d1y, p2, b2 * d2x, b2 * d2y], w,
                                          res)
        normal = normal + 1e-9 * np.eye(6) * (normal[:, :1, :1] + normal[:, 3:4, 3:4])
        ok = np.isfinite(normal).all(axis=(1, 2)) & (np.abs(np.linalg.det(normal)) > 1e-300)
        step = np.zeros((len(idx), 6))
        if ok.any():
            step[ok] = np.linalg.solve(normal[ok], rhs[ok][..., None])[..., 0]
        a1, a2 = a1 + step[:, 0], a2 + step[:, 3]
        x1 = x1 + np.clip(step[:, 1], -MAX_STEP, MAX_STEP)
        y1 = y1 + np.clip(step[:, 2], -MAX_STEP, MAX_STEP)
        x2 = x2 + np.clip(step[:, 4], -MAX_STEP, MAX_STEP)
        y2 = y2 + np.clip(step[:, 5], -MAX_STEP, MAX_STEP)
    _, _, p1 = pm.render(grid32, x1, y1, hf, centre=(ix, iy))
    _, _, p2 = pm.render(grid32, x2, y2, hf, centre=(ix, iy))
    # final fluxes: linear 2x2 solve at the final positions
    w1, w2 = w * p1, w * p2
    m11, m12, b1 = (np.einsum("nij,nij->n", w1, v).astype(float) for v in (p1, p2, target))
    m22, b2 = (np.einsum("nij,nij->n", w2, v).astype(float) for v in (p2, target))
    det = m11 * m22 - m12**2
    with np.errstate(divide="ignore", invalid="ignore"):
        a1 = (m22 * b1 - m12 * b2) / det
        a2 = (m11 * b2 - m12 * b1) / det
        e1, e2 = np.sqrt(m22 / det), np.sqrt(m11 / det)
        res = target - a1.astype(np.float32)[:, None, None] * p1 \
            - a2.astype(np.float32)[:, None, None] * p2
        chi2_2 = np.einsum("nij,nij->n", w * res, res).astype(float)
        dof = np.maximum(use.sum(axis=(1, 2)) - 6, 1)
        score = (chi2_1 - chi2_2) / np.maximum(chi2_2 / dof, 1.0)
    sep_px = np.hypot(x2 - x1, y2 - y1)
    inside2 = (np.hypot(x1 - xc, y1 - yc) < radius) & (np.hypot(x2 - xc, y2 - yc) < radius)
    accept = (np.isfinite(score) & (score > SPLIT_DCHI2) & (chi2_2 / dof <= SPLIT_MAX_CHI2)
              & (chi2_2 <= SPLIT_MAX_RATIO * chi2_1) & (a1 / e1 >= SPLIT_MIN_SNR)
              & (a2 / e2 >= SPLIT_MIN_SNR) & (sep_px >= SPLIT_MIN_SEP * fwhm) & inside2)
    k = np.flatnonzero(accept)
    if k.size:  # one extended source (a galaxy) is not split
        tot = a1[k] + a2[k]
        cx, cy = (a1[k] * x1[k] + a2[k] * x2[k]) / tot, (a1[k] * y1[k] + a2[k] * y2[k]) / tot
        ext = extended_chi2(grid32, (target[k], w[k], (ix[k], iy[k])), (cx, cy),
                            np.arctan2(y2[k] - y1[k], x2[k] - x1[k]), fwhm)
        keep = (ext - chi2_2[k]) / np.maximum(chi2_2[k] / dof[k], 1.0) >= SPLIT_EXT_DCHI2
        k = k[keep]
    return idx[k], x1[k], y1[k], a1[k], x2[k], y2[k], a2[k]


def _exponential_ft(n_fft, scale, q, phi):
    """The Fourier transforms (rfft2 layout, (N, n_fft, n_fft // 2 + 1)) of unit-sum elliptical
    exponential profiles (scale length *scale*, axis ratio *q*, major axis at angle *phi*
    (N,)) centred on pixel (0, 0) of a periodic n_fft² stamp."""
    ky = np.fft.fftfreq(n_fft)[None, :, None]
    kx = np.fft.rfftfreq(n_fft)[None, None, :]
    c, s = np.cos(phi)[:, None, None], np.sin(phi)[:, None, None]
    ku, kv = kx * c + ky * s, (ky * c - kx * s) * q
    return (1.0 + (2 * np.pi * scale) ** 2 * (ku * ku + kv * kv)) ** -1.5


def extended_chi2(grid, stamps, xy, phi, fwhm):
    """The lowest chi² of one extended source on each stamp: the PSF at *xy* convolved with
    an elliptical exponential (scale lengths EXT_SIZES FWHM, axis ratios EXT_AXIS_RATIOS,
    major axis at angle *phi*; a periodic convolution on the stamp padded by its half-size),
    its amplitude fitted.

    Parameters
    ----------
    grid : PsfGrid
        The PSF model.
    stamps : tuple
        ``(target, w, (ix, iy))``: the pixels (every other source subtracted) and their
        weights (0: not used), (N, S, S) arrays, S = 2 half + 1, centred on pixels (ix, iy).
    xy : tuple of (N,) arrays
        The source's position.
    phi : (N,) array
        The major axis' angle, radians counter-clockwise from +x.
    fwhm : float
        Stellar FWHM, pixels.

    Returns
    -------
    (N,) array
    """
    target, w, centre = stamps
    half = np.shape(target)[1] // 2
    reach = half  # the PSF's pixels the models on the stamp are made from
    _, _, psf = pm.render(grid, xy[0], xy[1], half + reach, centre=centre)
    n_fft = psf.shape[1] + 1
    psf_ft = np.fft.rfft2(psf.astype(float), s=(n_fft, n_fft))
    crop = slice(reach, reach + 2 * half + 1)
    target, w = np.asarray(target, float), np.asarray(w, float)
    wt = w * target
    best = np.full(len(phi), np.inf)
    for scale in EXT_SIZES:
        for q in EXT_AXIS_RATIOS:
            model = np.fft.irfft2(psf_ft * _exponential_ft(n_fft, scale * fwhm, q, phi),
                                  s=(n_fft, n_fft))[:, crop, crop]
            mm = np.einsum("nij,nij->n", w * model, model)
            mt = np.einsum("nij,nij->n", wt, model)
            with np.errstate(divide="ignore", invalid="ignore"):
                amp = np.where(mm > 0, mt / mm, 0.0)
            res = target - amp[:, None, None] * model
            best = np.minimum(best, np.einsum("nij,nij->n", w * res, res))
    return best


def extendedness(flux_psf, flux_psf_err, flux_model, flux_model_err):
    """``flux_psf / flux_model`` and its error (the errors added in quadrature, relative)."""
    flux_psf, flux_model = np.asarray(flux_psf, float), np.asarray(flux_model, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = flux_psf / flux_model
        err = np.abs(ratio) * np.hypot(np.asarray(flux_psf_err, float) / flux_psf,
                                       np.asarray(flux_model_err, float) / flux_model)
    ok = np.isfinite(ratio) & (flux_model > 0)
    return np.where(ok, ratio, np.nan), np.where(ok, err, np.nan)


def photometry(pixels: Pixels, columns, stars, scale: Scale, options: Options = Options()):
    """PSF photometry of one image's sources.

    Parameters
    ----------
    pixels : Pixels
        Background-subtracted image, RMS map, SEP's segmentation, bad-pixel mask (or None),
        gain (None: background noise only).
    columns : dict
        Detect's columns: ``x``, ``y``, ``flux_aper`` (at least).
    stars : (N,) bool array
        The PSF stars (:func:`skysurvey.psf.measure`).
    scale : Scale
        Stellar FWHM, the catalog's aperture radius, the image's aperture correction.
    options : Options
        Split detections that are two stars; add the stars found in the residual image.

    Returns
    -------
    (grid, cols, new)
        The PSF model (None: no columns), ``cols`` (flux_psf, flux_psf_err, psf_chi2, x_psf,
        y_psf, split: bool) for the N sources, and ``new``: the sources added after them,
        first those found in the residual image (``parent`` -1), then those split off a
        detection (``parent``: its row), with x_psf, y_psf, flux_psf, flux_psf_err, psf_chi2.
    """
    with single_thread_blas():  # small products: OpenBLAS's threads spin (2x the CPU)
        return _photometry(pixels, columns, stars, scale, options)


def _photometry(pixels, columns, stars, scale, options):
    """:func:`photometry` (one BLAS thread)."""
    x, y = np.asarray(columns["x"], float), np.asarray(columns["y"], float)
    n = x.size
    fwhm = scale.fwhm
    nan = np.full(n, np.nan)
    cols = {"flux_psf": nan, "flux_psf_err": nan, "psf_chi2": nan, "x_psf": nan,
            "y_psf": nan, "split": np.zeros(n, bool)}
    new = {k: np.zeros(0) for k in ("x_psf", "y_psf", "flux_psf", "flux_psf_err", "psf_chi2")}
    new["parent"] = np.zeros(0, int)
    if n == 0 or not math.isfinite(fwhm) or fwhm <= 0:
        return None, cols, new
    stars = np.asarray(stars, bool)
    grid = model_from_stars(pixels, (x, y, columns["flux_aper"]), stars, fwhm)
    if grid is None:
        return None, cols, new
    fit = fit_sources(pixels, grid, Start(x, y), fwhm=fwhm, chi2=False)
    # second pass: the background again without the stars' light (their wings raise a
    # crowded field's background), the model again with the neighbours subtracted
    # (the residual made in place in bands of rows, the new float32 image in its buffer: no
    # background map)
    resid = fit.rendered.subtract_from(np.array(pixels.sub, np.float32), fit.amp)
    bkg = _residual_mesh(resid, pixels.mask, fwhm, overwrite=True)
    if pixels.sub.dtype == np.float32:
        np.copyto(resid, pixels.sub)
        bkg.subfrom(resid)
        pixels = pixels.with_(sub=resid)
    else:
        pixels = pixels.with_(sub=pixels.sub - bkg.back())
    del bkg, resid
    grid2 = model_from_stars(pixels, (fit.x, fit.y, fit.amp), stars, fwhm,
                             refine=(fit.rendered, fit.amp, grid))
    start = Start(fit.x, fit.y, fit.amp, fit.rendered if grid2 is None else None)
    grid = grid2 if grid2 is not None else grid
    del fit  # its model stamps (unless reused) are freed before the next fit's
    fit = fit_sources(pixels, grid, start, fwhm=fwhm, iters=FIT2)
    fit, found, parent = _add_sources(pixels, grid, fit, fwhm, options)
    norm, norm_rel = _normalisation(grid, scale.radius, scale.aperture_correction,
                                    scale.aperture_correction_err)
    flux = fit.amp * norm
    rel = np.hypot(norm_rel, MODEL_NOISE / math.sqrt(max(grid.n_stars, 1)))
    flux_err = np.hypot(fit.amp_err * fit.blend * norm, np.abs(flux) * rel)
    split_mask = np.zeros(n, bool)
    split_mask[parent[parent < n]] = True
    cols = {"flux_psf": flux[:n], "flux_psf_err": flux_err[:n], "psf_chi2": fit.chi2[:n],
            "x_psf": fit.x[:n], "y_psf": fit.y[:n], "split": split_mask}
    # rows after the detections: residual finds (parent -1), then the stars split off a
    # detection (parent: its row)
    parents = np.concatenate([np.full(found, -1), parent])
    new = {"parent": parents, "x_psf": fit.x[n:], "y_psf": fit.y[n:], "flux_psf": flux[n:],
           "flux_psf_err": flux_err[n:], "psf_chi2": fit.chi2[n:]}
    return grid, cols, new


def _add_sources(pixels, grid, fit, fwhm, options):
    """The stars the detection missed (fitted alone on the residual image) and the detections
    that are two stars, then one joint fit of them and of the sources near them (every other
    source's model subtracted, and counted in the noise). Returns the fit of the N
    detections followed by the kept finds and the split-off stars, the number of kept finds
    and the split detections' rows."""
    n = fit.x.size
    fx, fy, famp = (np.zeros(0),) * 3
    if options.residual:
        fx, fy, famp = _residual_sources(pixels, grid, fit, fwhm)
    parent = np.zeros(0, int)
    xs, ys, amp = fit.x.copy(), fit.y.copy(), fit.amp.copy()
    if options.split:
        parent, x1, y1, a1, x2, y2, a2 = split_pairs(pixels, grid, fit, fwhm=fwhm)
        xs[parent], ys[parent], amp[parent] = x1, y1, a1
    else:
        x2 = y2 = a2 = np.zeros(0)
    if not (fx.size or parent.size):
        return fit, 0, parent
    # only the sources whose fit stamps a changed model reaches are fitted again: the fit
    # stamp's and the neighbour model's half-sizes and a move apart
    reach = math.ceil(max(FIT_RADIUS_FWHM * fwhm, MIN_FIT_RADIUS)) \
        + _neighbour_half(grid, fwhm) + MAX_MOVE + 2
    active = pm.nearest_distance(fit.x, fit.y, np.concatenate([fit.x[parent], fx]),
                               np.concatenate([fit.y[parent], fy]), reach) <= reach
    active[parent] = True
    fixed = (fit.rendered, np.where(active, 0.0, fit.amp))  # gathered, no model image
    fit.rendered = None
    idx = np.flatnonzero(active)
    joint = fit_sources(pixels, grid,
                        Start(np.concatenate([xs[idx], fx, x2]), np.concatenate([ys[idx], fy, y2]),
                              np.concatenate([amp[idx], famp, a2]), fixed=fixed),
                        fwhm=fwhm, iters=(JOINT_ITER, 1))
    del fixed
    m = idx.size
    values = {}
    for name in ("amp", "amp_err", "x", "y", "chi2", "npix", "blend"):
        both = np.concatenate([getattr(fit, name), getattr(joint, name)[m:]])
        both[idx] = getattr(joint, name)[:m]
        values[name] = both
    out = PsfFit(**values)
    part = slice(n, n + fx.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        weak = ~((out.amp[part] / out.amp_err[part] >= RESIDUAL_MIN_SNR)
                 & (out.chi2[part] <= RESIDUAL_MAX_CHI2))
    if weak.any():  # finds that the joint fit does not confirm are dropped
        keep = np.concatenate([np.ones(n, bool), ~weak, np.ones(parent.size, bool)])
        out = PsfFit(**{name: v[keep] for name, v in values.items()})
    return out, int((~weak).sum()), parent


def _normalisation(grid, radius, corr, corr_err):
    """Total flux per unit amplitude and its relative error: the aperture correction times the
    model's fraction within the aperture, the median over the model's stars (the correction is
    theirs), when the image has one and the product is within SCALE_RANGE; else 1 (the
    model's stamp holds the total)."""
    if not (math.isfinite(corr) and corr > 0 and radius and radius > 0):
        return 1.0, 0.0
    used = grid.extra.get("used")
    if used is None or not np.any(used):
        return 1.0, 0.0
    frac = float(np.median(aperture_fraction(grid, grid.extra["x"][used],
                                             grid.extra["y"][used], radius)))
    # the model's stamp holds all but the far wings: a scale outside SCALE_RANGE means the
    # aperture correction failed (undersampled stars: 1.13 for a true 1.03), not the model
    if not (SCALE_RANGE[0] <= corr * frac <= SCALE_RANGE[1]):
        return 1.0, 0.0
    if not (math.isfinite(frac) and frac > 0):
        return 1.0, 0.0
    rel = corr_err / corr if math.isfinite(corr_err) else 0.0
    return corr * frac, rel
