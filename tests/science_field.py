"""A star field with an exactly known truth, for judging detection and photometry.

Stars are pixel-integrated Gaussians (error functions), so the flux of every star in the
noiseless model is exact; the model is returned so the flux inside any aperture is known too.
Artefacts are optional: cosmic rays, a dead column, a NaN patch, saturated stars.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS
from scipy.special import erf

SIGMA = 1.5  # PSF sigma, px (FWHM 3.53 px = 0.88 arcsec at 0.25 arcsec/px)
SKY, GAIN, READ_NOISE, ZP = 200.0, 2.0, 5.0, 30.0
PIXEL_VARIANCE = SKY / GAIN + (READ_NOISE / GAIN) ** 2  # ADU^2 per pixel


@dataclass
class Field:
    data: np.ndarray
    model: np.ndarray  # stars only, noiseless
    header: fits.Header
    wcs: WCS
    truth: pd.DataFrame  # x, y, flux, ra, dec, snr
    artefacts: pd.DataFrame  # x, y, kind: cosmic_ray / dead_column / nan_patch


def expected_snr(flux):
    return flux / np.sqrt(flux / GAIN + 4 * np.pi * SIGMA**2 * PIXEL_VARIANCE)


def sky_level(x, y, size):
    """The sky (ADU) at pixel (x, y): SKY with a gentle gradient."""
    return SKY * (1 + 0.02 * (x / size - 0.5) + 0.01 * (y / size - 0.5))


def _wcs(size: int, sip: bool) -> WCS:
    header = fits.Header()
    ctype = "-SIP" if sip else ""
    header.update(CTYPE1=f"RA---TAN{ctype}", CTYPE2=f"DEC--TAN{ctype}", CRVAL1=150.1,
                  CRVAL2=2.2, CRPIX1=size / 2 + 0.5, CRPIX2=size / 2 + 0.5, CUNIT1="deg",
                  CUNIT2="deg")
    angle = np.radians(20.0)
    scale = 0.25 / 3600
    header.update(CD1_1=-scale * np.cos(angle), CD1_2=scale * np.sin(angle),
                  CD2_1=scale * np.sin(angle), CD2_2=scale * np.cos(angle))
    if sip:  # a few arcsec of distortion at the corners, as on a wide-field camera
        header.update(A_ORDER=2, B_ORDER=2, A_2_0=2e-5, A_0_2=-1.5e-5, A_1_1=1e-5,
                      B_2_0=-1e-5, B_0_2=2.5e-5, B_1_1=5e-6)
    return WCS(header)


def draw_field(size=768, n_stars=400, *, seed=0, sip=False, cosmic_rays=0, dead_column=False,
               nan_patch=False, n_saturated=0, saturate=50_000.0, min_flux=300.0,
               max_flux=3e5, margin=4) -> Field:
    rng = np.random.default_rng(seed)
    # power-law counts: many faint stars, few bright ones
    u = rng.uniform(size=n_stars)
    alpha = 0.6  # dN/dlogF ~ F^-alpha
    lo, hi = min_flux ** -alpha, max_flux ** -alpha
    flux = (lo + u * (hi - lo)) ** (-1 / alpha)
    if n_saturated:
        flux[:n_saturated] = rng.uniform(2e6, 4e6, n_saturated)
    x = rng.uniform(margin, size - 1 - margin, n_stars)
    y = rng.uniform(margin, size - 1 - margin, n_stars)
    model = np.zeros((size, size))
    half = int(np.ceil(6 * SIGMA)) + 1
    edges = np.arange(-half, half + 2) - 0.5
    for xi, yi, fi in zip(x, y, flux, strict=True):
        cx, cy = round(xi), round(yi)
        gx = np.diff(0.5 * erf((cx + edges - xi) / (np.sqrt(2) * SIGMA)))
        gy = np.diff(0.5 * erf((cy + edges - yi) / (np.sqrt(2) * SIGMA)))
        stamp = fi * np.outer(gy, gx)
        x0, y0 = cx - half, cy - half
        sx = slice(max(x0, 0), min(x0 + stamp.shape[1], size))
        sy = slice(max(y0, 0), min(y0 + stamp.shape[0], size))
        model[sy, sx] += stamp[sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0]
    yy, xx = np.mgrid[:size, :size]
    sky = sky_level(xx, yy, size)
    electrons = rng.poisson((sky + model) * GAIN)
    data = electrons / GAIN + rng.normal(0, READ_NOISE / GAIN, model.shape)
    data = np.minimum(data, saturate).astype(np.float32)
    artefacts = []
    for _ in range(cosmic_rays):
        cx, cy = rng.integers(10, size - 10, 2)
        data[cy, cx] += rng.uniform(3000, 20000)
        if rng.uniform() < 0.5:
            data[cy, cx + 1] += rng.uniform(1000, 5000)
        artefacts.append((cx, cy, "cosmic_ray"))
    if dead_column:
        col = size // 3
        data[:, col] = 0.0
        artefacts += [(col, yv, "dead_column") for yv in range(0, size, 4)]
    if nan_patch:
        data[50:70, size - 90:size - 70] = np.nan
        artefacts += [(xv, yv, "nan_patch") for xv in range(size - 90, size - 70, 2)
                      for yv in range(50, 70, 2)]
    wcs = _wcs(size, sip)
    header = wcs.to_header(relax=True)
    header.update(FILTER="r", EXPTIME=60.0, GAIN=GAIN, RDNOISE=READ_NOISE, MAGZERO=ZP,
                  SATURATE=saturate, TELESCOP="TEST", **{"DATE-OBS": "2026-03-14T04:12:00"})
    ra, dec = wcs.all_pix2world(x, y, 0)
    truth = pd.DataFrame({"x": x, "y": y, "flux": flux, "ra": ra, "dec": dec,
                          "snr": expected_snr(flux)})
    return Field(data, model.astype(np.float32), header, wcs, truth,
                 pd.DataFrame(artefacts, columns=["x", "y", "kind"]))
