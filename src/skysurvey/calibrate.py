"""Photometric zero point and astrometric check of one image against a reference catalog.

numpy only (no scipy): this runs inside the Lambda. Steps, each a small function:

1. The reference stars around the image (:mod:`skysurvey.reference`), at the image's epoch.
2. One-to-one matching on the tangent plane at the image centre: a pair is kept when each is
   the other's nearest neighbour within the radius. The radius comes from the image's own
   astrometric precision: a first pass within ``max(2", FWHM)`` measures the median offset and
   the scatter of the bright, clean stars; the second pass, offset removed, uses
   ``clip(5 x scatter, 0.5", first radius)``.
3. Calibration stars: unflagged (so unsaturated, not blended, not near an edge or bad pixel),
   SNR >= 20, ``class_star >= 0.5`` when the image has ``class_star``, a reference star with no
   other reference star within 1.5 FWHM (no blend). When at least 10 of them have SNR >= 50,
   only those are used (fainter stars' aperture fluxes carry biases of ~0.01 mag).
4. Zero point: reference magnitude minus instrumental ``-2.5 log10(flux_apcorr)`` (the total
   flux of a point source; see :func:`calibration_flux`), iteratively 3-sigma clipped about the
   median with a robust (MAD) sigma, then the inverse-variance weighted mean of the stars kept.
   Its error is the larger of the formal error and rms / sqrt(n) (the scatter includes what the
   formal errors miss).
5. ``mag``/``mag_err`` (Kron ``flux``) and ``mag_apcorr``/``mag_apcorr_err`` (``flux_apcorr``)
   from that zero point. The magnitude errors are the photometric errors only: they do NOT
   include ``zero_point_err``, which is common to every source of the image (add it in
   quadrature when comparing images; ``images.zero_point_err``).

Fallback: fewer than ``min_matches`` calibration stars (or no reference, or no WCS) leaves the
header's zero point (MAGZERO, PHOTZP, ...) with a warning in ``images.warnings``; without one
either, magnitudes are null (and the image is still catalogued).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .geometry import tangent_plane
from .psf import clean_flags
from .reference import (
    ReferenceError,
    ReferenceSpec,
    ReferenceStars,
    julian_year,
    open_reference,
)

__all__ = [
    "HEADER_ZP_TOLERANCE",
    "LN10_FACTOR",
    "MAD_TO_SIGMA",
    "CalibrationConfig",
    "Match",
    "ZeroPoint",
    "apply_zero_point",
    "astrometric_figures",
    "calibrate",
    "calibration_flux",
    "fit_zero_point",
    "isolated",
    "magnitudes",
    "match_reference",
    "mutual_nearest",
    "nearest",
    "point_sources",
]

log = logging.getLogger("skysurvey.calibrate")

#: A reference zero point further than this (mag) from the header's is kept, with a warning.
HEADER_ZP_TOLERANCE = 1.0
MAD_TO_SIGMA = 1.4826
LN10_FACTOR = 2.5 / math.log(10.0)


@dataclass(frozen=True)
class CalibrationConfig:
    min_snr: float = 20.0
    preferred_snr: float = 50.0  # only these stars when there are min_preferred of them
    min_preferred: int = 10
    min_class_star: float = 0.5
    min_matches: int = 5
    clip_sigma: float = 3.0
    max_iterations: int = 10
    first_radius: float = 2.0  # arcsec: at least this in the first pass
    min_radius: float = 0.5  # arcsec: the second pass's radius is at least this
    isolation_fwhm: float = 1.5  # reference stars with a neighbour closer than this are dropped


@dataclass(frozen=True)
class ZeroPoint:
    value: float
    error: float
    rms: float
    n: int
    used: np.ndarray  # bool per input star: kept by the clipping


@dataclass(frozen=True)
class Match:
    source: np.ndarray  # indices into the sources
    reference: np.ndarray  # indices into the reference stars
    dx: np.ndarray  # arcsec, source minus reference, east
    dy: np.ndarray  # arcsec, north
    radius: float  # arcsec, of the final pass


def calibration_flux(sources: pa.Table) -> tuple[np.ndarray, np.ndarray, str]:
    """The flux the zero point is fitted on: ``flux_psf`` (PSF fit, total flux) when the image
    has a PSF model, else ``flux_apcorr`` (aperture flux corrected to total, for point
    sources); while an image has neither (no PSF stars), the Kron ``flux``."""
    psf = _column(sources, "flux_psf")
    if np.isfinite(psf).any():
        return psf, _column(sources, "flux_psf_err"), "flux_psf"
    apcorr = _column(sources, "flux_apcorr")
    if np.isfinite(apcorr).any():
        return apcorr, _column(sources, "flux_apcorr_err"), "flux_apcorr"
    return _column(sources, "flux"), _column(sources, "flux_err"), "flux"


def point_sources(sources: pa.Table, config: CalibrationConfig) -> np.ndarray:
    """Clean, bright point sources: unflagged, SNR >= min_snr, class_star >= min_class_star
    (when the image has class_star)."""
    flags = sources["flags"].to_numpy(zero_copy_only=False)
    snr = _column(sources, "snr")
    keep = clean_flags(flags) & (snr >= config.min_snr)
    star = _column(sources, "class_star")
    if np.isfinite(star).any():
        keep &= star >= config.min_class_star
    return keep


def _column(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=float)


def _window_pairs(xs, x, radius) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, k)`` with ``|x[i] - xs[k]| <= radius`` (*xs* sorted ascending)."""
    lo = np.searchsorted(xs, x - radius, side="left")
    hi = np.searchsorted(xs, x + radius, side="right")
    counts = hi - lo
    owner = np.repeat(np.arange(x.size), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.repeat(lo, counts) + offsets


def nearest(x1, y1, x2, y2, radius) -> tuple[np.ndarray, np.ndarray]:
    """For each point 1, the index of the nearest point 2 within *radius* (-1: none) and the
    distance (inf: none). Numpy only: points 2 sorted by x, candidates in the x-window."""
    x1, y1, x2, y2 = (np.asarray(v, float) for v in (x1, y1, x2, y2))
    best = np.full(x1.size, -1, dtype=np.int64)
    dist = np.full(x1.size, np.inf)
    if x1.size == 0 or x2.size == 0:
        return best, dist
    order = np.argsort(x2, kind="stable")
    owner, cand = _window_pairs(x2[order], x1, radius)
    if owner.size == 0:
        return best, dist
    cand = order[cand]
    d = np.hypot(x2[cand] - x1[owner], y2[cand] - y1[owner])
    ok = d <= radius
    owner, cand, d = owner[ok], cand[ok], d[ok]
    # the smallest distance per owner: sort by (owner, distance), take the first of each
    idx = np.lexsort((d, owner))
    owner, cand, d = owner[idx], cand[idx], d[idx]
    first = np.ones(owner.size, bool)
    first[1:] = owner[1:] != owner[:-1]
    best[owner[first]] = cand[first]
    dist[owner[first]] = d[first]
    return best, dist


def mutual_nearest(x1, y1, x2, y2, radius) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i1, i2) of mutual nearest neighbours within *radius*: each point in at most one
    pair. (Numpy only, for the Lambda; ``plots.match_one_to_one`` pairs closest-first instead,
    which also pairs a point whose nearest neighbour is taken: right for scoring against a
    truth catalog, too permissive for fitting a zero point.)"""
    to2, _ = nearest(x1, y1, x2, y2, radius)
    to1, _ = nearest(x2, y2, x1, y1, radius)
    i1 = np.flatnonzero(to2 >= 0)
    i2 = to2[i1]
    mutual = to1[i2] == i1
    return i1[mutual], i2[mutual]


def isolated(x, y, radius) -> np.ndarray:
    """True for points with no other point within *radius*."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2:
        return np.ones(x.size, bool)
    # every pair within the x-window, self-pairs excluded
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    owner, other = _window_pairs(xs, xs, radius)
    close = (np.hypot(xs[other] - xs[owner], ys[other] - ys[owner]) <= radius) & (other != owner)
    crowded = np.zeros(x.size, bool)
    crowded[order[np.unique(owner[close])]] = True
    return ~crowded


def match_reference(sx, sy, rx, ry, fwhm_arcsec, config: CalibrationConfig) -> Match:
    """Two-pass one-to-one match of sources (sx, sy) to reference stars (rx, ry), tangent-plane
    arcsec: the first pass within max(first_radius, FWHM) measures the median offset and the
    per-axis scatter sigma (the median 2-D distance of a 2-D Gaussian is 1.1774 sigma); the
    second, offset removed, within clip(5 sigma, min_radius, first radius)."""
    r1 = max(config.first_radius, fwhm_arcsec or 0.0)
    i1, j1 = mutual_nearest(sx, sy, rx, ry, r1)
    ox = oy = 0.0
    r2 = r1
    if i1.size >= 3:
        dx, dy = sx[i1] - rx[j1], sy[i1] - ry[j1]
        ox, oy = float(np.median(dx)), float(np.median(dy))
        sigma = float(np.median(np.hypot(dx - ox, dy - oy))) / 1.1774
        r2 = float(np.clip(5.0 * sigma, config.min_radius, r1))
    i, j = mutual_nearest(sx - ox, sy - oy, rx, ry, r2)
    return Match(i, j, sx[i] - rx[j], sy[i] - ry[j], r2)


def fit_zero_point(delta, error, config: CalibrationConfig) -> ZeroPoint:
    """Iteratively sigma-clipped zero point of *delta* (reference - instrumental, mag)."""
    delta = np.asarray(delta, float)
    error = np.asarray(error, float)
    error = np.where(np.isfinite(error) & (error > 0), error, np.nanmedian(error[error > 0])
                     if (error > 0).any() else 0.01)
    keep = np.isfinite(delta)
    for _ in range(config.max_iterations):
        if keep.sum() < 2:
            break
        centre = np.median(delta[keep])
        sigma = MAD_TO_SIGMA * np.median(np.abs(delta[keep] - centre))
        limit = config.clip_sigma * np.maximum(sigma, error)
        new = np.isfinite(delta) & (np.abs(delta - centre) <= limit)
        if (new == keep).all():
            break
        keep = new
    n = int(keep.sum())
    if n == 0:
        return ZeroPoint(math.nan, math.nan, math.nan, 0, keep)
    w = 1.0 / error[keep] ** 2
    value = float(np.sum(w * delta[keep]) / np.sum(w))
    rms = float(np.std(delta[keep], ddof=1)) if n > 1 else math.nan
    formal = float(1.0 / math.sqrt(np.sum(w)))
    err = max(formal, rms / math.sqrt(n)) if n > 1 else formal
    return ZeroPoint(value, err, rms, n, keep)


def magnitudes(flux, flux_err, zero_point) -> tuple[np.ndarray, np.ndarray]:
    """``zp - 2.5 log10(flux)`` and its photometric error (NaN for non-positive flux or no zp;
    the zero point's own error is not included)."""
    flux, flux_err = np.asarray(flux, float), np.asarray(flux_err, float)
    if zero_point is None or not math.isfinite(zero_point):
        nan = np.full(flux.shape, np.nan)
        return nan, nan
    good = np.isfinite(flux) & (flux > 0)
    safe = np.where(good, flux, 1.0)
    mag = np.where(good, zero_point - 2.5 * np.log10(safe), np.nan)
    err = np.where(good, LN10_FACTOR * flux_err / safe, np.nan)
    return mag, err


def _set(table: pa.Table, name: str, values) -> pa.Table:
    arr = np.asarray(values, dtype=float)
    column = pa.array(arr, type=pa.float64(), mask=~np.isfinite(arr))
    return table.set_column(table.schema.get_field_index(name), name, column)


def apply_zero_point(sources: pa.Table, zero_point: float | None) -> pa.Table:
    """Fill ``mag``/``mag_err`` (Kron flux), ``mag_apcorr``/``mag_apcorr_err`` and
    ``mag_psf``/``mag_psf_err``."""
    for prefix, flux in (("mag", "flux"), ("mag_apcorr", "flux_apcorr"),
                         ("mag_psf", "flux_psf")):
        mag, err = magnitudes(_column(sources, flux), _column(sources, f"{flux}_err"),
                              zero_point)
        sources = _set(_set(sources, prefix, mag), f"{prefix}_err", err)
    return sources


def _add_warning(row: dict, text: str) -> None:
    row["warnings"] = "; ".join(w for w in (row.get("warnings"), text) if w)


def _reference_stars(spec: ReferenceSpec, band: str, row: dict) -> ReferenceStars:
    """The reference stars over the image (a cone around its centre, half-diagonal + 5")."""
    ref = open_reference(spec.uri)
    scale = row.get("pixel_scale") or 1.0
    radius = 0.5 * math.hypot(row["width"], row["height"]) * scale / 3600.0 + 5.0 / 3600.0
    stars = ref.stars(band, row["ra_center"], row["dec_center"], radius, spec,
                      julian_year(row.get("mjd")))
    if stars.auto_picked:  # the run's summary names it once (picked_columns); here: debug
        log.debug("reference %s: band %s uses column %s (picked by name)", spec.uri, band,
                  stars.column)
    return stars


def calibrate(sources: pa.Table, row: dict, band: str | None,
              spec: ReferenceSpec | None = None,
              config: CalibrationConfig | None = None) -> tuple[pa.Table, dict]:
    """The image's zero point (reference, else header) applied to its sources.

    Returns new ``(sources, row)``; never raises for a bad reference: its one-line reason goes
    to ``row["warnings"]`` and the header's zero point is used.
    """
    config = config or CalibrationConfig()
    row = dict(row)
    zp_before = row.get("zero_point")
    if spec is not None:
        _calibrate_against(sources, row, band, spec, config)
    zp = row.get("zero_point")
    if zp is None:
        row["zero_point_source"] = None
        _add_warning(row, "no zero point (no reference calibration, no header keyword): "
                          "magnitudes are null")
    if zp != zp_before and row.get("depth_5sigma") is not None and zp_before is not None:
        row["depth_5sigma"] = row["depth_5sigma"] + (zp - zp_before)
    elif zp != zp_before:
        row["depth_5sigma"] = _depth(row)
    return apply_zero_point(sources, zp), row


def _depth(row: dict) -> float | None:
    """5-sigma point-source depth from the row (psf.depth_5sigma: the sky noise in the
    aperture, corrected to total flux)."""
    from .psf import depth_5sigma

    return depth_5sigma(row.get("zero_point"), row.get("bkg_rms"), row.get("aperture_radius"),
                        row.get("aperture_correction") or 1.0)


def astrometric_figures(match: Match) -> dict:
    """``astrom_offset_ra``/``_dec`` (median of ours - reference, arcsec, RA times cos dec) and
    ``astrom_rms`` (RMS 2-D separation about that offset); empty with fewer than 3 matches."""
    if match.source.size < 3:
        return {}
    ox, oy = float(np.median(match.dx)), float(np.median(match.dy))
    rms = float(np.sqrt(np.mean((match.dx - ox) ** 2 + (match.dy - oy) ** 2)))
    return {"astrom_offset_ra": ox, "astrom_offset_dec": oy, "astrom_rms": rms}


def _calibrate_against(sources, row, band, spec, config) -> None:
    """Fit the zero point and astrometric figures into *row* (warnings on failure)."""
    header_zp = row.get("zero_point")
    fallback = ("header zero point used" if header_zp is not None
                else "no header zero point either")
    if not row.get("has_wcs") or row.get("ra_center") is None:
        _add_warning(row, f"reference calibration needs a celestial WCS: {fallback}")
        return
    try:
        stars = _reference_stars(spec, band or "unknown", row)
    except ReferenceError as exc:
        _add_warning(row, f"reference {exc}: {fallback}")
        return
    ra0, dec0 = row["ra_center"], row["dec_center"]
    ra, dec = _column(sources, "ra"), _column(sources, "dec")
    has_pos = np.isfinite(ra) & np.isfinite(dec)
    flux, flux_err, _ = calibration_flux(sources)
    usable = has_pos & point_sources(sources, config) & np.isfinite(flux) & (flux > 0)
    fwhm = row.get("fwhm_arcsec") or (row.get("fwhm_median") or 0) * (row.get("pixel_scale")
                                                                       or 0)
    rx, ry = tangent_plane(stars.ra, stars.dec, ra0, dec0)
    lonely = isolated(rx, ry, config.isolation_fwhm * max(fwhm, 1.0))
    idx = np.flatnonzero(usable)
    sx, sy = tangent_plane(ra[idx], dec[idx], ra0, dec0)
    ref_idx = np.flatnonzero(lonely)
    match = match_reference(sx, sy, rx[ref_idx], ry[ref_idx], fwhm, config)
    n = match.source.size
    if n == 0:
        _add_warning(row, f"no reference star matched (the reference covers another part of "
                          f"the sky?): {fallback}")
        return
    src, ref = idx[match.source], ref_idx[match.reference]
    strong = _column(sources, "snr")[src] >= config.preferred_snr
    if strong.sum() >= config.min_preferred:  # fainter stars' fluxes carry small biases
        src, ref = src[strong], ref[strong]
    row.update(astrometric_figures(match))
    instrumental = -2.5 * np.log10(flux[src])
    inst_err = LN10_FACTOR * flux_err[src] / flux[src]
    ref_err = np.where(np.isfinite(stars.mag_err[ref]), stars.mag_err[ref], 0.0)
    fit = fit_zero_point(stars.mag[ref] - instrumental, np.hypot(inst_err, ref_err), config)
    if fit.n < config.min_matches:
        _add_warning(row, f"only {fit.n} reference calibration stars (< {config.min_matches})"
                          f": {fallback}")
        return
    if header_zp is not None and abs(fit.value - header_zp) > HEADER_ZP_TOLERANCE:
        _add_warning(row, f"reference zero point {fit.value:.2f} is {fit.value - header_zp:+.2f} "
                          f"mag from the header's {header_zp:.2f} "
                          f"({row.get('zero_point_source')}): check the reference's band, "
                          "system and units")
    row.update(zero_point=fit.value, zero_point_source="reference", zero_point_err=fit.error,
               zero_point_rms=fit.rms, n_calib=fit.n)
