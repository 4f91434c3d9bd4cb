"""Coverage and forced photometry of one image: arrays and a WCS in, columns out.

Numpy and astropy (astropy-healpix) only, so it runs in the Lambda (no scipy):

- :func:`footprint_hpx12`: the NESTED order-12 HEALPix cells (~0.86 arcmin) that an image's
  valid (finite, unmasked) pixels touch, the ``images.footprint_hpx12`` column. Valid pixels
  are sampled on a grid a quarter of a cell apart plus every pixel of the image's edges; then the
  neighbours of the cells found are tested along their boundaries (a cell that valid pixels
  reach without holding a grid point must have its boundary cross valid pixels). Cost on a
  2048 x 2048 image at 0.25"/px (125 cells): 15-60 ms (tests/test_coverage.py).
- forced photometry's pieces (:func:`skysurvey.forced_psf.forced_photometry` puts them
  together with the PSF fit): the background (:func:`background_subtracted`: SEP's on binned
  pixels, the objects masked), the aperture flux (:func:`aperture_flux`, the fallback,
  flagged :data:`APERTURE_FLUX`) and the calibration (:func:`calibrate_fluxes`: the image's
  aperture correction, so forced fluxes are on ``flux_apcorr``'s scale).

An image covers a position when it maps inside the image through its WCS onto an unmasked
pixel (:data:`OFF_IMAGE` and :data:`CENTRE_MASKED` mark the others: no row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .measurement import Pixels

__all__ = [
    "APERTURE_FLUX",
    "BLENDED",
    "CENTRE_MASKED",
    "FLAG_DESCRIPTIONS",
    "HPX_ORDER",
    "MASKED",
    "MASK_RADII",
    "MAX_CELLS",
    "NEAR_EDGE",
    "OFF_IMAGE",
    "SATURATED",
    "ImagePhotometry",
    "aperture_flux",
    "background_subtracted",
    "calibrate_fluxes",
    "circle_overlap",
    "covered",
    "footprint_hpx12",
    "icrs_to_pixel",
    "image_footprint",
    "position_cell",
    "sample_valid_pixels",
]

#: HEALPix order of ``images.footprint_hpx12`` (NESTED; cells ~0.86 arcmin wide).
HPX_ORDER = 12

# Flag bits of ``forced_photometry``'s flags: the first three mean what they mean in ``sources``
# (detect.py; a test checks the values agree), the last two are forced photometry's own.
SATURATED = 256
MASKED = 512
NEAR_EDGE = 1024
OFF_IMAGE = 131072  # (65536 is BAD_WCS in sources)
CENTRE_MASKED = 262144
APERTURE_FLUX = 1048576  # (524288 is PSF_RESIDUAL in sources)
BLENDED = 2097152

FLAG_DESCRIPTIONS: dict[int, str] = {
    SATURATED: "forced: a pixel of the aperture at or above 98% of the SATURATE level",
    MASKED: "forced: the aperture holds masked (NaN/Inf/bad) pixels, left out of the sum",
    NEAR_EDGE: "forced: the aperture reaches beyond the image edge (truncated)",
    OFF_IMAGE: "forced: the position maps outside the image (not covered; no row written)",
    CENTRE_MASKED: "forced: the position's pixel is masked (not covered; no row written)",
    APERTURE_FLUX: "forced: no PSF model for this image (too few PSF stars): aperture flux "
                   "with the aperture correction instead of the PSF fit",
    BLENDED: "forced: fitted jointly with an object so close that the joint fit at least "
             "doubles its flux variance (the two fluxes are strongly anti-correlated)",
}

_LN10 = math.log(10.0)
_CHUNK = 512  # positions per vectorised batch (memory: CHUNK x stamp pixels)


# ---- positions ------------------------------------------------------------------------------


def icrs_to_pixel(wcs, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions of ICRS (ra, dec) in degrees, through the full WCS.

    The inverse of :func:`skysurvey.astrometry.pixel_to_icrs`: the header's frame (FK5,
    galactic, ecliptic...) is honoured. Positions the WCS cannot map come back as NaN.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        The image's celestial WCS (:func:`skysurvey.astrometry.celestial_wcs`).
    ra, dec : array_like
        ICRS coordinates, degrees.

    Returns
    -------
    x, y : ndarray
        Pixel coordinates (numpy convention: pixel ``(0, 0)`` centred on 0.0).
    """
    from .astrometry import pixel_to_icrs, sky_frame

    ra0, dec0 = np.asarray(ra, float), np.asarray(dec, float)
    if ra0.size == 0:
        return np.zeros(0), np.zeros(0)
    frame = sky_frame(wcs)
    lon, lat = ra0, dec0
    if frame is not None:
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        sky = SkyCoord(ra=ra0 * u.deg, dec=dec0 * u.deg, frame="icrs").transform_to(frame)
        sph = sky.represent_as("unitspherical")
        lon, lat = sph.lon.deg, sph.lat.deg
    with np.errstate(invalid="ignore"):
        try:
            x, y = wcs.all_world2pix(lon, lat, 0, quiet=True)
        except Exception:  # a distortion inverse that fails outright: the linear part
            x, y = wcs.wcs_world2pix(lon, lat, 0)
    x, y = np.asarray(x, float), np.asarray(y, float)
    # SIP/TPV inverses diverge far outside the image and may land inside it: keep only the
    # positions that map back to where they came from (within 0.1 pixel)
    back_ra, back_dec = pixel_to_icrs(wcs, x, y, frame)
    scale = _pixel_scale_arcsec(wcs) / 3600.0
    with np.errstate(invalid="ignore"):
        miss = _separation_deg(ra0, dec0, back_ra, back_dec) > 0.1 * scale
    x[miss | ~np.isfinite(back_ra)] = np.nan
    y[miss | ~np.isfinite(back_ra)] = np.nan
    return x, y


def _separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    r1, d1, r2, d2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def covered(x, y, shape, valid=None) -> np.ndarray:
    """True where pixel position (x, y) lies on the image and its pixel is valid.

    Parameters
    ----------
    x, y : array_like
        0-based pixel positions.
    shape : tuple of int
        ``(ny, nx)``.
    valid : ndarray of bool, optional
        Valid-pixel map (finite and unmasked); None: every pixel is valid.

    Returns
    -------
    ndarray of bool
        One per position.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ny, nx = shape
    with np.errstate(invalid="ignore"):
        inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    if valid is None:
        return inside
    out = inside.copy()
    xi = np.rint(x[inside]).astype(np.int64)
    yi = np.rint(y[inside]).astype(np.int64)
    out[inside] = valid[np.clip(yi, 0, ny - 1), np.clip(xi, 0, nx - 1)]
    return out


# ---- footprint ------------------------------------------------------------------------------


def _cell_arcsec(order: int) -> float:
    return math.degrees(math.sqrt(4 * math.pi / (12 * 4**order))) * 3600.0


def _pixel_scale_arcsec(wcs) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def sample_valid_pixels(valid: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of valid pixels: a grid *step* apart plus every edge pixel.

    Parameters
    ----------
    valid : ndarray of bool, shape (ny, nx)
        True for finite, unmasked pixels.
    step : float
        Grid spacing in pixels. From 1 up: whole pixels, plus every pixel of the four edges.
        Below 1 (pixels larger than a quarter cell): positions inside the pixels, *step* apart,
        from a half step inside each edge, so that every part of a pixel is sampled.

    Returns
    -------
    x, y : ndarray
        The valid samples (0-based pixel coordinates), without duplicates.
    """
    ny, nx = valid.shape
    if step < 1:
        xs = np.arange(-0.5 + step / 2, nx - 0.5, step)
        ys = np.arange(-0.5 + step / 2, ny - 0.5, step)
        gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
        keep = valid[np.clip(np.rint(gy).astype(np.int64), 0, ny - 1),
                     np.clip(np.rint(gx).astype(np.int64), 0, nx - 1)]
        return gx[keep], gy[keep]
    step = int(step)
    xs = np.unique(np.r_[np.arange(0, nx, step), nx - 1])
    ys = np.unique(np.r_[np.arange(0, ny, step), ny - 1])
    gx, gy = np.meshgrid(xs, ys)
    ex = np.r_[np.arange(nx), np.arange(nx), np.zeros(ny, int), np.full(ny, nx - 1)]
    ey = np.r_[np.zeros(nx, int), np.full(nx, ny - 1), np.arange(ny), np.arange(ny)]
    x = np.r_[gx.ravel(), ex].astype(np.int64)
    y = np.r_[gy.ravel(), ey].astype(np.int64)
    keep = valid[y, x]
    flat = np.unique(y[keep] * nx + x[keep])
    return flat % nx, flat // nx


def _lonlat_cells(lon, lat, order: int) -> np.ndarray:
    from astropy import units as u
    from astropy_healpix import lonlat_to_healpix

    good = np.isfinite(lon) & np.isfinite(lat)
    if not good.any():
        return np.zeros(0, np.int64)
    return np.asarray(lonlat_to_healpix(np.asarray(lon)[good] * u.deg,
                                        np.asarray(lat)[good] * u.deg, 2**order,
                                        order="nested"), np.int64)


#: Largest footprint (cells) written: ~50 square degrees at order 12, 2 MB in a Lambda reply.
MAX_CELLS = 250_000


def footprint_hpx12(wcs, shape, valid=None, *, order: int = HPX_ORDER,
                    max_cells: int = MAX_CELLS) -> np.ndarray:
    """The sorted NESTED HEALPix cells at *order* that the image's valid pixels touch.

    Valid pixels are sampled a quarter of a cell apart, plus every pixel of the four edges, and
    their cells kept; then each neighbour of those cells is tested along its boundary (points a
    few pixels apart, mapped into the image): it is kept when a boundary point falls on a valid
    pixel. A cell that valid pixels reach without holding a grid sample has its boundary cross
    them, so only islands of valid pixels smaller than the grid and cut off from the rest can
    be missed.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        The image's celestial WCS (:func:`skysurvey.astrometry.celestial_wcs`).
    shape : tuple of int
        ``(ny, nx)``.
    valid : ndarray of bool, optional
        True for finite, unmasked pixels; None: all pixels.
    order : int
        HEALPix order (default 12, the ``footprint_hpx12`` column).
    max_cells : int
        ValueError when the valid pixels span more cells than this (estimated from the pixel
        scale before any cell is computed).

    Returns
    -------
    ndarray of int64
        Sorted unique cell indices (empty when no pixel is valid).
    """
    from astropy_healpix import boundaries_lonlat

    from .astrometry import pixel_to_icrs, sky_frame

    valid = np.ones(shape, bool) if valid is None else np.asarray(valid, bool)
    if not valid.any():
        return np.zeros(0, np.int64)
    frame = sky_frame(wcs)
    cell_px = _cell_arcsec(order) / max(_pixel_scale_arcsec(wcs), 1e-9)
    expected = float(np.count_nonzero(valid)) / cell_px**2
    if not expected <= max_cells:
        raise ValueError(f"the image spans ~{expected:.3g} order-{order} cells (more than "
                         f"{max_cells}): no footprint")
    x, y = sample_valid_pixels(valid, cell_px / 4 if cell_px < 4 else int(cell_px / 4))
    ra, dec = pixel_to_icrs(wcs, x, y, frame)
    cells = np.unique(_lonlat_cells(ra, dec, order))
    candidates = np.setdiff1d(_neighbour_cells(cells, order), cells)
    if candidates.size:
        per_edge = max(math.ceil(cell_px / 6), 4)  # boundary points ~6 px apart
        lon, lat = boundaries_lonlat(candidates, per_edge, 2**order, order="nested")
        bx, by = icrs_to_pixel(wcs, np.asarray(lon.deg).ravel(), np.asarray(lat.deg).ravel())
        hit = covered(bx, by, shape, valid).reshape(candidates.size, -1).any(axis=1)
        cells = np.union1d(cells, candidates[hit])
    return cells.astype(np.int64)


def image_footprint(header, data, mask=None, notes: list[str] | None = None, *,
                    order: int = HPX_ORDER) -> list[int] | None:
    """``images.footprint_hpx12`` of a FITS image: :func:`footprint_hpx12` over its finite,
    unmasked pixels; None (the column is then null) without a celestial WCS, or when the
    footprint cannot be made (too many cells, a WCS that fails): the reason goes to *notes*,
    and the image is still catalogued.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The image's header (its celestial WCS).
    data : ndarray
        The pixels (non-finite ones are not valid).
    mask : ndarray of bool, optional
        Pixels that are not valid.
    notes : list of str, optional
        Where the reason goes when no footprint is made.
    order : int
        HEALPix order.

    Returns
    -------
    list of int or None
    """
    from .astrometry import celestial_wcs

    wcs, _ = celestial_wcs(header)
    if wcs is None:
        return None
    valid = np.isfinite(data)
    if mask is not None:
        valid &= ~np.asarray(mask, bool)
    try:
        return footprint_hpx12(wcs, data.shape, valid, order=order).tolist()
    except Exception as exc:  # the catalog is still good: the reason is recorded, not raised
        if notes is not None:
            notes.append(f"no footprint_hpx12 ({type(exc).__name__}: {exc})")
        return None


def position_cell(ra: float, dec: float, order: int = HPX_ORDER) -> int:
    """The NESTED cell at *order* holding ICRS (*ra*, *dec*) in degrees (the ``coverage``
    query's parameter); ValueError for a position that is not on the sky.

    Parameters
    ----------
    ra, dec : float
        ICRS, degrees.
    order : int
        HEALPix order.

    Returns
    -------
    int
        The NESTED cell index.
    """
    ra, dec = float(ra), float(dec)
    if not (math.isfinite(ra) and math.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise ValueError(f"({ra}, {dec}) is not a sky position (ra, dec in degrees)")
    return int(_lonlat_cells(np.array([ra % 360.0]), np.array([dec]), order)[0])


def _neighbour_cells(cells: np.ndarray, order: int) -> np.ndarray:
    from astropy_healpix import neighbours

    if cells.size == 0:
        return cells
    with np.errstate(invalid="ignore"):
        near = np.asarray(neighbours(cells, 2**order, order="nested"), np.int64)
    return np.unique(near[near >= 0])


# ---- background --------------------------------------------------------------------------


#: Known objects are masked out to this many aperture radii while the background is measured.
MASK_RADII = 1.5


def _disc_pixels(shape, x, y, radius, owners=True):
    """``(flat, owner)``: the flat indices of the pixels within *radius* of positions (x, y)
    and the position each belongs to (NaN positions have none; None without *owners*), from
    per-axis distances."""
    (ny, nx), x, y = shape, np.asarray(x, float), np.asarray(y, float)
    keep = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    off = np.arange(-int(np.ceil(radius)), int(np.ceil(radius)) + 1)
    px = np.rint(x[keep]).astype(np.int64)[:, None] + off  # (n, 2r + 1)
    py = np.rint(y[keep]).astype(np.int64)[:, None] + off
    dx2 = np.where((px >= 0) & (px < nx), (px - x[keep, None]) ** 2, np.inf)
    dy2 = np.where((py >= 0) & (py < ny), (py - y[keep, None]) ** 2, np.inf)
    near = dy2[:, :, None] + dx2[:, None, :] <= radius**2
    flat = (py * nx)[:, :, None] + px[:, None, :]
    if not owners:
        return flat[near], None
    return flat[near], np.broadcast_to(keep[:, None, None], near.shape)[near]


#: Images narrower than this (pixels) are binned 2 x 2, not BACKGROUND_BIN x BACKGROUND_BIN.
MIN_SIDE_4X4 = 128

#: The noise's pixel/block scale from ~LEVEL_SAMPLES pixels.
LEVEL_SAMPLES = 2**16


def _binned(a, op, factor: int = 2):
    """*a*'s *factor* x *factor* blocks (2 or 4) combined with the ufunc *op* (trailing rows
    or columns that make no whole block left out): passes of whole rows, no reshape into
    blocks (~10x faster); 4 x 4 as 2 x 2 of 2 x 2."""
    if factor == 4:
        return _binned(_binned(a, op), op)
    ny, nx = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    rows = op(a[0:ny:2, :nx], a[1:ny:2, :nx])
    return op(rows[:, 0::2], rows[:, 1::2])


def _upsampled(b, shape, minus=None, factor: int = 2, out=None) -> np.ndarray:
    """Each pixel of the binned *b* on its *factor* x *factor* block, in an array of *shape*
    (trailing rows or columns repeat the last block's), float32; *minus*: ``minus - that``
    instead; *out*: the array written (may be *minus* itself: subtracted in place)."""
    f = factor
    out = np.empty(shape, np.float32) if out is None else out
    by, bx = b.shape
    cols = np.empty((by, bx, f), np.float32)  # each value f times along the row (np.repeat's
    cols[...] = b[:, :, None]  # values, ~2x faster)
    cols = cols.reshape(by, f * bx)
    if shape[1] > f * bx:
        cols = np.concatenate([cols, np.repeat(cols[:, -1:], shape[1] - f * bx, axis=1)],
                              axis=1)
    blocks = out[:f * by].reshape(by, f, shape[1])
    if minus is None:
        blocks[...] = cols[:, None, :]
    else:
        np.subtract(minus[:f * by].reshape(by, f, shape[1]), cols[:, None, :], out=blocks)
    if shape[0] > f * by:
        rest = slice(f * by, None)
        if minus is None:
            out[rest] = cols[-1]
        else:
            np.subtract(minus[rest], cols[-1], out=out[rest])
    return out


def _clipped(values, clip: float = 3.0, n_iter: int = 5) -> tuple[float, float] | None:
    """Sigma-clipped mean and standard deviation (None with too few values)."""
    if values.size < 1000:
        return None
    centre = float(np.median(values))
    width = 1.4826 * float(np.median(np.abs(values - np.float32(centre))))
    values = values.astype(float)
    last = None
    for _ in range(n_iter):
        keep = np.abs(values - centre) <= clip * max(width, 1e-30)
        if last is not None and np.array_equal(keep, last):  # converged: the same again
            break
        inside, last = values[keep], keep
        if inside.size < 100:
            return None
        centre, width = float(inside.mean()), float(inside.std())
    return centre, width


#: The background is measured on BACKGROUND_BIN x BACKGROUND_BIN binned pixels (2 or 4).
BACKGROUND_BIN = 4


def background_subtracted(image, x, y, radius, *, overwrite: bool = False):
    """Background-subtracted image, its noise map, the bad-pixel mask and saturated pixels,
    and the background level's error per pixel.

    SEP's background (a mode per mesh: 2.5 median - 1.5 mean; detection's mesh size and
    filter, detect.py) with the known objects masked out to :data:`MASK_RADII` aperture
    radii (their wings otherwise raise the sky: -0.5 sigma on blank apertures, fluxes 1-3%
    low on stars 32 px apart), measured on :data:`BACKGROUND_BIN` x BACKGROUND_BIN binned
    pixels (a block holding a masked pixel is masked) and put back on the pixels block by
    block. On blocks the sky's Poisson skew is reduced, so the mode sits at the mean where
    no object is (blank positions of 13 synthetic fields: mean z -0.01 +- 0.04 on 4 x 4
    blocks, +0.04 on 2 x 2, where full-resolution SEP less a global clipped-mean offset gave
    -0.09; 4 x 4: SEP on a sixteenth of the pixels, the step ~10 ms faster) while the mode still
    ignores the wings (a mean per mesh followed the seeing there: constant stars flagged
    variable). The noise map: SEP's map of the blocks times the pixels' clipped scatter over
    SEP's global rms of the blocks (about the bin factor for white noise). The level's error:
    1.25 x the noise over the square root of a mesh's unmasked pixels (a mode's scatter),
    common to an aperture's pixels.

    Parameters
    ----------
    image : FitsImage
        The read image (data, header, mask).
    x, y : ndarray
        The objects' positions, pixels.
    radius : float
        The aperture radius, pixels.
    overwrite : bool
        Subtract in the image's own array (``image.data`` becomes the subtracted image:
        no second 4-byte-per-pixel array) when it is native float32, C-contiguous and
        writeable; for callers that read the image for this alone.

    Returns
    -------
    tuple
        ``(sub, rms, mask, saturated, level_err)``.
    """
    import sep

    from .detect import SATURATE_KEYS, DetectionConfig, _first, _saturated

    data, mask, config = image.data, image.mask, DetectionConfig()
    # 2 x 2 blocks on images under 128 px a side: 4 x 4 there has too few blocks per mesh
    # (white noise, 20 seeds: the map 4% low and 3x the scatter at 48-96 px; 7 px: 0)
    f = BACKGROUND_BIN if min(data.shape) >= MIN_SIDE_4X4 else 2
    sat = _saturated(data, _first(image.header, SATURATE_KEYS)[0])
    mesh = config.back_size or int(np.clip(min(data.shape) // 8, 16, 64))
    x, y = np.asarray(x, float), np.asarray(y, float)
    # a block is masked when a pixel of it is within the radius (its centre within + the
    # farthest pixel centre from its block's, (f - 1) / sqrt(2) px: 0.71 at 2 x 2)
    bad = np.zeros((data.shape[0] // f, data.shape[1] // f), bool)
    c = (f - 1) / 2
    bad.ravel()[_disc_pixels(bad.shape, (x - c) / f, (y - c) / f,
                             (MASK_RADII * radius + round(c * math.sqrt(2) + 0.005, 2)) / f,
                             owners=False)[0]] = True
    if np.count_nonzero(bad) > 0.4 * bad.size:  # crowded: meshes need most pixels
        bad[:] = False
    for m in (mask, sat):
        if m is not None:
            bad |= _binned(m, np.logical_or, f)
    binned = (_binned(data, np.add, f) * np.float32(1.0 / f**2)).astype(np.float32, copy=False)
    bkg = sep.Background(binned, mask=bad, bw=max(mesh // f, 4), bh=max(mesh // f, 4),
                         fw=config.back_filter, fh=config.back_filter)
    back, global_rms = bkg.back(dtype=np.float32), float(bkg.globalrms)
    in_place = (overwrite and data.dtype == np.float32 and data.dtype.isnative
                and data.flags.c_contiguous and data.flags.writeable)
    sub = _upsampled(back, data.shape, minus=data, factor=f, out=data if in_place else None)
    # the noise's scale: the pixels' clipped scatter (at the unmasked blocks' first pixels)
    # over SEP's global rms of the blocks (the same estimator as its map: at 4 x 4, on a
    # crowded field, a clipped scatter of the blocks came out 7% below it, the map 10% high)
    t, scale = max(1, round(math.sqrt(bad.size / LEVEL_SAMPLES))), float(f)
    keep = ~bad[::t, ::t]
    pixel = _clipped(sub[::f * t, ::f * t][:keep.shape[0], :keep.shape[1]][keep])
    if pixel is not None and global_rms > 0:
        scale = pixel[1] / global_rms
    unmasked = max(1.0 - np.count_nonzero(bad) / bad.size, 1.0 / mesh**2)
    rms = _upsampled(bkg.rms(dtype=np.float32) * np.float32(scale), data.shape, factor=f)
    return sub, rms, mask, sat, 1.25 * global_rms * scale / (mesh * math.sqrt(unmasked))


# ---- photometry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePhotometry:
    """What forced photometry needs of an image's ``images`` record.

    Attributes
    ----------
    aperture_radius : float
        Radius of ``flux_aper`` in pixels (``images.aperture_radius``).
    aperture_correction, aperture_correction_err : float or None
        ``images.aperture_correction`` (flux_apcorr / flux_aper) and its error; None: 1, 0.
    zero_point : float or None
        ``images.zero_point`` (reference-calibrated when the handler had a reference).
    gain : float or None
        e-/ADU for the source's Poisson noise; None: sky noise only.
    """

    aperture_radius: float
    aperture_correction: float | None = None
    aperture_correction_err: float | None = None
    zero_point: float | None = None
    gain: float | None = None

    @classmethod
    def from_row(cls, row: dict) -> ImagePhotometry:
        """From an ``images`` row (a dict); missing or NaN values become None.

        Parameters
        ----------
        row : dict
            An ``images`` row.

        Returns
        -------
        ImagePhotometry
        """
        def value(name):
            v = row.get(name)
            return None if v is None or not math.isfinite(float(v)) else float(v)

        radius = value("aperture_radius")
        if radius is None or radius <= 0:
            raise ValueError(f"image {row.get('image_id')!r} has no aperture radius")
        return cls(radius, value("aperture_correction"), value("aperture_correction_err"),
                   value("zero_point"), value("gain"))

    @property
    def correction(self) -> tuple[float, float]:
        """``(correction, its error)``: ``(1, 0)`` when the image has none."""
        if self.aperture_correction is None or not self.aperture_correction > 0:
            return 1.0, 0.0
        return self.aperture_correction, self.aperture_correction_err or 0.0


def _quadrant_area(x0, x1, y0, y1, r):
    """Area of the disc of radius *r* centred on 0 inside the rectangles
    ``[x0, x1] x [y0, y1]`` with ``0 <= x0 <= x1`` and ``0 <= y0 <= y1`` (arrays): the chord
    ``c(x) = sqrt(r² - x²)`` is at least y1 up to ``xa`` (full height), between y0 and y1 up
    to ``xb`` (height ``c - y0``), below y0 beyond."""
    def primitive(t):  # integral of sqrt(r^2 - x^2) from 0 to t, 0 <= t <= r
        return 0.5 * (t * np.sqrt(np.maximum(r * r - t * t, 0.0)) + r * r * np.arcsin(t / r))

    xa = np.clip(np.sqrt(np.maximum(r * r - y1 * y1, 0.0)), x0, x1)
    xb = np.clip(np.sqrt(np.maximum(r * r - y0 * y0, 0.0)), x0, x1)
    return (xa - x0) * (y1 - y0) + primitive(xb) - primitive(xa) - y0 * (xb - xa)


def circle_overlap(dx, dy, r) -> np.ndarray:
    """Exact area of the unit pixels centred at (*dx*, *dy*) inside a circle of radius *r*
    centred on 0 (arrays broadcast together; *r* > 0).

    Pixels wholly inside count 1, wholly outside 0; the others are folded onto the first
    quadrant (the circle is symmetric: a pixel straddling an axis in two or four parts) and
    integrated exactly.

    Parameters
    ----------
    dx, dy : array_like
        Pixel centres relative to the circle's centre.
    r : float
        Radius, pixels.

    Returns
    -------
    ndarray
        Overlap area per pixel, 0..1.
    """
    dx, dy = np.broadcast_arrays(np.asarray(dx, float), np.asarray(dy, float))
    ax, ay = np.abs(dx), np.abs(dy)  # pixels wholly inside: 1, wholly outside: 0, else exact
    out = np.array((ax + 0.5) ** 2 + (ay + 0.5) ** 2 <= r * r, dtype=float)
    rim = (out == 0) & (np.maximum(ax - 0.5, 0) ** 2 + np.maximum(ay - 0.5, 0) ** 2 < r * r)
    ax, ay = ax[rim], ay[rim]
    # |centre| +- 0.5 folded: [max(|c| - 0.5, 0), |c| + 0.5], and [0, 0.5 - |c|] when the
    # pixel straddles the axis
    x0, x1, xs = np.maximum(ax - 0.5, 0.0), ax + 0.5, 0.5 - ax
    y0, y1, ys = np.maximum(ay - 0.5, 0.0), ay + 0.5, 0.5 - ay
    area = _quadrant_area(x0, x1, y0, y1, r)
    if (k := np.flatnonzero(xs > 0)).size:  # straddling x = 0: the part on the other side
        area[k] += _quadrant_area(0.0, xs[k], y0[k], y1[k], r)
    if (k := np.flatnonzero(ys > 0)).size:
        area[k] += _quadrant_area(x0[k], x1[k], 0.0, ys[k], r)
    if (k := np.flatnonzero((xs > 0) & (ys > 0))).size:
        area[k] += _quadrant_area(0.0, xs[k], 0.0, ys[k], r)
    out[rim] = np.clip(area, 0.0, 1.0)
    return out


def aperture_flux(pixels: Pixels, x, y, radius, *, saturated=None, sky_level_err=0.0):
    """Circular aperture sums at (x, y): exact pixel/circle overlap, bad pixels left out.

    Parameters
    ----------
    pixels : Pixels
        ``sub`` (background-subtracted image), ``rms`` (noise per pixel: a scalar or a map of
        ``sub``'s shape), ``mask`` (True: pixels to leave out, besides NaN/Inf), ``gain``
        (e-/ADU: adds the source's Poisson noise, positive flux only; None: none).
    x, y : array_like
        0-based pixel positions.
    radius : float
        Aperture radius in pixels.
    saturated : ndarray of bool, optional
        True for saturated pixels (flags only).
    sky_level_err : float
        Uncertainty of the subtracted background level per pixel (common to the aperture's
        pixels: it adds ``(sum of weights * sky_level_err)**2`` to the variance).

    Returns
    -------
    flux, flux_err, sky_err : ndarray
        Sum, its 1-sigma error, and the error from the background alone (the 5-sigma limit's).
    flags : ndarray of int32
        :data:`MASKED`, :data:`NEAR_EDGE`, :data:`SATURATED` bits.
    """
    data, rms, mask, gain = np.asarray(pixels.sub), pixels.rms, pixels.mask, pixels.gain
    ny, nx = data.shape
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    flux, var, flags = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, np.int32)
    oy, ox, whole = _aperture_template(radius)
    part = ~whole  # pixels that may be partly inside (exact overlap), the others wholly
    rms_map, ok = np.ndim(rms) == 2, np.isfinite(x) & np.isfinite(y)
    flat_images = [data.ravel(), None if mask is None else np.asarray(mask, bool).ravel(),
                   None if saturated is None else np.asarray(saturated, bool).ravel(),
                   np.asarray(rms).ravel() if rms_map else None]
    # in image order (rows, then columns): neighbouring apertures share memory pages
    order = np.flatnonzero(ok)
    order = order[np.argsort(np.rint(y[order]) * nx + np.rint(x[order]), kind="stable")]
    for start in range(0, order.size, _CHUNK):
        idx = order[start:start + _CHUNK]
        px = np.rint(x[idx]).astype(np.int64)[:, None] + ox
        py = np.rint(y[idx]).astype(np.int64)[:, None] + oy
        w = np.ones(px.shape)
        w[:, part] = circle_overlap(px[:, part] - x[idx, None], py[:, part] - y[idx, None],
                                    radius)
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        flat = np.clip(py, 0, ny - 1) * nx + np.clip(px, 0, nx - 1)
        values = flat_images[0][flat]
        good = inside & np.isfinite(values)
        if mask is not None:
            good &= ~flat_images[1][flat]
        used = w > 0
        f = np.where((used & ~inside).any(axis=1), NEAR_EDGE, 0)
        f |= np.where((used & inside & ~good).any(axis=1), MASKED, 0)
        if saturated is not None:
            f |= np.where((used & inside & flat_images[2][flat]).any(axis=1), SATURATED, 0)
        wg = np.where(good, w, 0.0)
        sigma2 = np.square(flat_images[3][flat], dtype=float) if rms_map else float(rms) ** 2
        flux[idx] = (wg * np.where(good, values, 0.0)).sum(axis=1)
        var[idx] = (wg**2 * sigma2).sum(axis=1) + (wg.sum(axis=1) * sky_level_err) ** 2
        flags[idx] = f
    sky_err = np.sqrt(var)
    total = var + (np.maximum(flux, 0.0) / gain if gain and gain > 0 else 0.0)
    return flux, np.sqrt(total), sky_err, flags


def _aperture_template(radius):
    """``(oy, ox, whole)``: the pixel offsets from a position's nearest pixel that a circle
    of *radius* may reach (at any sub-pixel offset within half a pixel) and whether each lies
    wholly inside it at every such offset."""
    off = np.arange(-math.ceil(radius + 0.5), math.ceil(radius + 0.5) + 1)
    oy, ox = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    ay, ax = np.abs(oy), np.abs(ox)
    # a pixel's farthest point is at most |offset| + 1 from the position, its nearest at
    # least |offset| - 1 (per axis)
    reach = np.maximum(ax - 1, 0) ** 2 + np.maximum(ay - 1, 0) ** 2 < radius * radius
    whole = (ax + 1) ** 2 + (ay + 1) ** 2 <= radius * radius
    return oy[reach], ox[reach], whole[reach]


def calibrate_fluxes(flux, flux_err, sky_err, zero_point, correction=1.0, correction_err=0.0):
    """Total flux, error, SNR, magnitude, magnitude error and 5-sigma limiting magnitude.

    *flux*, *flux_err*, *sky_err* are a measurement (an aperture flux, or a PSF flux on the
    aperture's scale) in image units; the *correction* (aperture to total, with its
    error) multiplies them. Magnitudes are null (NaN) when ``flux <= 0`` or without a zero
    point; the limit is that of a point source measured at this place, from the background
    error alone.

    Parameters
    ----------
    flux, flux_err, sky_err : array_like
        The measurement, its error and its background-only error (image units).
    zero_point : float or None
        The image's zero point.
    correction, correction_err : float
        Aperture-to-total factor and its error.

    Returns
    -------
    dict of ndarray
        ``flux``, ``flux_err``, ``snr``, ``mag``, ``mag_err``, ``mag_limit``.
    """
    measured = np.asarray(flux, float)
    flux = measured * correction
    err = np.hypot(np.asarray(flux_err, float) * correction, measured * correction_err)
    sky = np.asarray(sky_err, float) * correction
    nan = np.full(flux.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(err > 0, flux / err, np.nan)
        if zero_point is None or not math.isfinite(zero_point):
            mag = mag_err = limit = nan
        else:
            positive = flux > 0
            mag = np.where(positive, zero_point - 2.5 * np.log10(np.where(positive, flux, 1.0)),
                           np.nan)
            mag_err = np.where(positive, 2.5 / _LN10 * err / np.where(positive, flux, 1.0),
                               np.nan)
            limit = np.where(sky > 0, zero_point - 2.5 * np.log10(5.0 * sky), np.nan)
    return {"flux": flux, "flux_err": err, "snr": snr, "mag": mag, "mag_err": mag_err,
            "mag_limit": limit}
