"""Star fields for PSF photometry tests: a PSF that varies across the image, close pairs,
crowding, artefacts, undersampling, each with its exact truth.

Stars are elliptical Moffat profiles (beta 3.5) integrated over pixels (5 x 5 sub-samples per
pixel), drawn on stamps of +-6 FWHM normalised to the star's flux, so the truth flux is what
is in the image. The FWHM and ellipticity change across the field:
``fwhm(x, y) = fwhm * (1 + fwhm_slope * (r / r_corner)²)`` (focal-plane curvature),
ellipticity ``ell * x / width`` with the major axis along the x axis, so the model's corners
differ from its centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.io import fits

SKY, GAIN, READ_NOISE, ZP = 200.0, 2.0, 5.0, 30.0
BETA = 3.5
SUB = 5


@dataclass
class StarField:
    data: np.ndarray
    header: fits.Header
    truth: pd.DataFrame  # x, y, flux, snr, fwhm, pair (index of the other star or -1)


def psf_at(x, y, shape, fwhm, fwhm_slope, ell):
    """FWHM (px) and ellipticity of the field's PSF at (x, y)."""
    ny, nx = shape
    r = np.hypot(x - (nx - 1) / 2, y - (ny - 1) / 2) / np.hypot((nx - 1) / 2, (ny - 1) / 2)
    return fwhm * (1 + fwhm_slope * r**2), ell * np.clip(x / nx, 0, 1)


def moffat_stamp(dx, dy, fwhm, ell, half):
    """Pixel-integrated elliptical Moffat on a (2 half + 1)² stamp, centre offset (dx, dy)
    from the central pixel, normalised to unit sum; major axis along x."""
    n = 2 * half + 1
    sub = (np.arange(n * SUB) + 0.5) / SUB - half - 0.5
    yy, xx = np.meshgrid(sub - dy, sub - dx, indexing="ij")
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / BETA) - 1))
    q = 1.0 - ell  # b / a; FWHM is the geometric mean of the axes
    ax, ay = alpha / np.sqrt(q), alpha * np.sqrt(q)
    prof = (1 + (xx / ax) ** 2 + (yy / ay) ** 2) ** (-BETA)
    stamp = prof.reshape(n, SUB, n, SUB).sum(axis=(1, 3))
    return stamp / stamp.sum()


def expected_snr(flux, fwhm):
    sigma = fwhm / 2.3548
    var = SKY / GAIN + (READ_NOISE / GAIN) ** 2
    return flux / np.sqrt(flux / GAIN + 4 * np.pi * sigma**2 * var)


def draw(shape, x, y, flux, *, fwhm=4.0, fwhm_slope=0.0, ell=0.0, seed=0, cosmic_rays=0,
         bad_column=False, pair=None) -> StarField:
    """An image of stars at (x, y) with *flux*; Poisson + read noise over a sky gradient."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    model = np.zeros(shape)
    x, y, flux = (np.asarray(v, float) for v in (x, y, flux))
    f_at, e_at = psf_at(x, y, shape, fwhm, fwhm_slope, ell)
    drawn = np.zeros(x.size)
    for i in range(x.size):
        half = int(np.ceil(6 * f_at[i]))
        cx, cy = round(x[i]), round(y[i])
        stamp = flux[i] * moffat_stamp(x[i] - cx, y[i] - cy, f_at[i], e_at[i], half)
        y0, x0 = cy - half, cx - half
        sy = slice(max(y0, 0), min(y0 + stamp.shape[0], ny))
        sx = slice(max(x0, 0), min(x0 + stamp.shape[1], nx))
        part = stamp[sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0]
        model[sy, sx] += part
        drawn[i] = part.sum()
    yy, xx = np.mgrid[:ny, :nx]
    sky = SKY * (1 + 0.03 * (xx / nx - 0.5) - 0.02 * (yy / ny - 0.5))
    data = rng.poisson((sky + model) * GAIN) / GAIN + rng.normal(0, READ_NOISE / GAIN, shape)
    data = data.astype(np.float32)
    for _ in range(cosmic_rays):
        cx, cy = rng.integers(2, nx - 3), rng.integers(2, ny - 3)
        data[cy, cx] += rng.uniform(2000, 20000)
    if bad_column:
        data[:, nx // 3] += 3000.0
    header = fits.Header({"GAIN": GAIN, "RDNOISE": READ_NOISE, "MAGZERO": ZP,
                          "SATURATE": 65535.0, "FILTER": "r", "EXPTIME": 60.0})
    truth = pd.DataFrame({"x": x, "y": y, "flux": drawn, "fwhm": f_at,
                          "snr": expected_snr(drawn, f_at),
                          "pair": np.full(x.size, -1) if pair is None else pair})
    return StarField(data, header, truth)


def uniform_stars(rng, n, shape, margin=8, mag=(17.0, 23.0)):
    """*n* stars at random positions, magnitudes uniform in *mag* (ZP 30)."""
    ny, nx = shape
    x = rng.uniform(margin, nx - 1 - margin, n)
    y = rng.uniform(margin, ny - 1 - margin, n)
    flux = 10 ** (-0.4 * (rng.uniform(*mag, n) - ZP))
    return x, y, flux


def pairs(rng, n_pairs, shape, fwhm, sep_fwhm=(1.0, 1.5), snr=(20.0, 200.0), grid=40):
    """Pairs of stars *sep_fwhm* FWHM apart (random angle), both of SNR in *snr*, on a grid
    of cells *grid* px apart (isolated from each other). Returns x, y, flux, pair index."""
    ny, nx = shape
    cells = [(cx, cy) for cy in range(grid, ny - grid + 1, grid)
             for cx in range(grid, nx - grid + 1, grid)][:n_pairs]
    x, y, flux, pair = [], [], [], []
    lo = _flux_for_snr(snr[0], fwhm)
    hi = _flux_for_snr(snr[1], fwhm)
    for k, (cx, cy) in enumerate(cells):
        sep = rng.uniform(*sep_fwhm) * fwhm
        angle = rng.uniform(0, np.pi)
        ox, oy = rng.uniform(-0.5, 0.5, 2)
        for sign in (-1, 1):
            x.append(cx + ox + sign * 0.5 * sep * np.cos(angle))
            y.append(cy + oy + sign * 0.5 * sep * np.sin(angle))
            flux.append(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        pair += [2 * k + 1, 2 * k]
    return np.array(x), np.array(y), np.array(flux), np.array(pair)


def _flux_for_snr(snr, fwhm):
    sigma = fwhm / 2.3548
    var = SKY / GAIN + (READ_NOISE / GAIN) ** 2
    b = 4 * np.pi * sigma**2 * var
    # flux² = snr² (flux / GAIN + b)
    return 0.5 * (snr**2 / GAIN + np.sqrt(snr**4 / GAIN**2 + 4 * snr**2 * b))
