"""Source detection and measurement with SEP: a FitsImage in, the ``sources`` table out.

Steps (each a small function): a spatially varying background (``sep.Background``, masked
pixels excluded) and its RMS map; extraction on the background-subtracted image with a
convolution filter and a threshold in units of the background RMS (SExtractor's
DETECT_THRESH meaning) and a segmentation map, so that each source is measured without its
neighbours' pixels; windowed centroids; Kron and circular-aperture photometry with errors
from the RMS map plus Poisson noise when GAIN is known; shapes; flags; RA/Dec from the full
FITS WCS (SIP included). Pure but for SEP's process-wide limits, which only
:func:`skysurvey.measurement.sep_settings` changes: the sub-object limit is raised while an
image is measured, the pixel stack is grown only for a crowded field; both are restored after.
The measurements read the image as one :class:`~skysurvey.measurement.Pixels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import sep
from astropy.wcs.utils import proj_plane_pixel_scales

from .astrometry import (
    REJECTED_WCS,
    celestial_wcs,
    healpix_29,
    pixel_to_icrs,
    sky_positions,
)
from .classify import BLEND_PSF_CHI2, deblended_extendedness, psf_fit_class_star
from .deblend import find_hidden
from .errors import ImageDataError
from .fitsread import FitsImage, observation_time
from .measurement import Pixels, is_buffer_full, sep_settings, single_thread_blas
from .psf import KRON_FALLBACK
from .psf import image_columns as psf_image_columns
from .psf import measure as measure_psf
from .psfmodel import quality as psf_quality
from .psfphot import PSF_RESIDUAL, PSF_SPLIT
from .psfphot import Options as PsfOptions
from .psfphot import Scale as PsfScale
from .psfphot import photometry as psf_photometry
from .schema import SOURCES_SCHEMA

__all__ = [
    "APER_ALLMASKED",
    "APER_HASMASKED",
    "APER_NONPOSITIVE",
    "APER_TRUNC",
    "BAD_WCS",
    "COSMIC_RAY",
    "FLAG_DESCRIPTIONS",
    "GAIN_KEYS",
    "KRON_FALLBACK",
    "MASKED",
    "NEAR_EDGE",
    "OBJ_DOVERFLOW",
    "OBJ_MERGED",
    "OBJ_SINGU",
    "OBJ_TRUNC",
    "PSF_COLUMNS",
    "SATURATED",
    "SATURATED_NEARBY",
    "SATURATE_KEYS",
    "SECOND_PASS",
    "ZERO_POINT_KEYS",
    "DetectionConfig",
    "MeasuredImage",
    "measure_image",
    "measure_image_pixels",
    "zero_point",
]

# SEP's own flag bits (object and aperture flags share one mask in the catalog)
OBJ_MERGED = sep.OBJ_MERGED
OBJ_TRUNC = sep.OBJ_TRUNC
OBJ_DOVERFLOW = sep.OBJ_DOVERFLOW
OBJ_SINGU = sep.OBJ_SINGU
APER_TRUNC = sep.APER_TRUNC
APER_HASMASKED = sep.APER_HASMASKED
APER_ALLMASKED = sep.APER_ALLMASKED
APER_NONPOSITIVE = sep.APER_NONPOSITIVE
# the pipeline's own bits
SATURATED = 256
MASKED = 512
NEAR_EDGE = 1024
COSMIC_RAY = 2048
SECOND_PASS = 8192
SATURATED_NEARBY = 16384
BAD_WCS = 65536  # (32768 is PSF_SPLIT, DESIGN.md)
#: psfphot's columns of every source (flux_psf on flux_apcorr's scale; mag_psf from calibrate)
PSF_COLUMNS = ("flux_psf", "flux_psf_err", "psf_chi2", "x_psf", "y_psf")

FLAG_DESCRIPTIONS: dict[int, str] = {
    OBJ_MERGED: "SEP: blended with another object (deblended)",
    OBJ_TRUNC: "SEP: isophote truncated by the image edge",
    OBJ_DOVERFLOW: "SEP: deblending overflow (too many sub-objects)",
    OBJ_SINGU: "SEP: singular moments (shape unreliable)",
    APER_TRUNC: "SEP: aperture truncated by the image edge",
    APER_HASMASKED: "SEP: aperture contains masked pixels",
    APER_ALLMASKED: "SEP: aperture entirely masked",
    APER_NONPOSITIVE: "SEP: non-positive flux in the aperture",
    SATURATED: "pipeline: peak at or above the header's SATURATE level",
    MASKED: "pipeline: touches a NaN/Inf or masked pixel",
    NEAR_EDGE: "pipeline: within one aperture radius of the image edge",
    COSMIC_RAY: "pipeline: much sharper than the PSF (likely a cosmic ray or hot pixel)",
    KRON_FALLBACK: "pipeline: Kron radius too small or undefined; circular flux used",
    SECOND_PASS: "pipeline: found by the second pass, hidden in a brighter object's isophote "
                 "(measured with that object modelled out; the brighter one gets OBJ_MERGED)",
    SATURATED_NEARBY: "pipeline: saturated pixels within 2 px of its isophote's bounding box "
                      "(a saturated star, a fragment of its wings or halo, or beside one)",
    BAD_WCS: "pipeline: the header has a celestial WCS that cannot be trusted (NaN or "
             "non-numeric values, a singular matrix, no round trip, odd LONPOLE/LATPOLE): ra, "
             "dec null; images.warnings says why",
    PSF_SPLIT: "pipeline: one of two stars the PSF fit split one detection into (the "
               "detection's row keeps its own measurements; the other star is a new row with "
               "PSF photometry only)",
    PSF_RESIDUAL: "pipeline: found in the image with every fitted source's PSF subtracted "
                  "(a new row with PSF photometry only)",
}

ZERO_POINT_KEYS = ("MAGZERO", "MAGZP", "PHOTZP", "ZEROPNT", "ZP")
GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN")
SATURATE_KEYS = ("SATURATE", "SATLEVEL")

_SUB_OBJECTS = 8192


@dataclass(frozen=True)
class DetectionConfig:
    thresh: float = 1.5  # detection threshold, in units of the background RMS
    minarea: int = 5
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    back_size: int | None = None  # background mesh (px); None: chosen from the image
    back_filter: int = 3
    kron_factor: float = 2.5
    kron_min_radius: float = 3.5  # px, circular fallback (SExtractor's PHOT_AUTOPARAMS 2nd)
    aperture_fwhm: float = 1.5  # aperture radius in units of the median FWHM
    aperture_radius: float | None = None  # fixed radius in px overrides the above
    cosmic_ray_sharpness: float = 0.5  # fwhm below this fraction of the median: a cosmic ray
    # second detection pass (deblend.py): inside objects whose peak reaches second_pass_peak
    # times the noise; a residual detection is kept from isophotal S/N second_pass_snr
    second_pass: bool = True
    second_pass_peak: float = 10.0
    second_pass_snr: float = 7.0
    # PSF photometry (psfphot.py): flux_psf and the PSF model's quality. Off by default for
    # now: on a crowded 2048² field it takes 4.2 s CPU on top of a 3.3 s handler (SExtractor +
    # PSFEx: 4.6 s); its columns are null when off (benchmarks/RESULTS.md, "PSF photometry").
    psf_photometry: bool = False
    # ... and also search the image with every fitted source subtracted
    # (crowded 1024² star field: stars of SNR >= 10 found 0.920 -> 0.952; but 1-1.4% of the
    # synthetic survey fields' sources become false, below the 0.99 purity of test_detection)
    psf_residual_search: bool = False


def _extract(sub, err, mask, config):
    """``sep.extract``, growing SEP's process-wide pixel stack only when a field needs it.

    A large stack costs time on every call (SEP allocates it each time), so each image starts
    from SEP's default and a crowded field retries with a bigger one (through
    :func:`~skysurvey.measurement.sep_settings`, which restores it).
    """
    pixstack = sep.get_extract_pixstack()
    while True:
        try:
            with sep_settings(pixstack=pixstack):
                return sep.extract(sub, config.thresh, err=err, mask=mask,
                                   minarea=config.minarea, filter_type="conv",
                                   deblend_nthresh=config.deblend_nthresh,
                                   deblend_cont=config.deblend_cont, segmentation_map=True)
        except Exception as exc:  # SEP raises bare Exceptions
            if not is_buffer_full(exc) or pixstack >= sub.size:
                raise
            pixstack = min(pixstack * 4, sub.size)


def _first(header, keys):
    for key in keys:
        value = header.get(key)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            return value, key
    return None, None


def zero_point(header) -> tuple[float | None, str | None]:
    """The photometric zero point and the keyword it came from (nanomaggies imply 22.5)."""
    value, key = _first(header, ZERO_POINT_KEYS)
    if value is None and "nanomagg" in str(header.get("BUNIT", "")).lower():
        return 22.5, "BUNIT"
    return value, key


def _background(data, mask, config, scale=1.0):
    ny, nx = data.shape
    size = int((config.back_size or int(np.clip(min(nx, ny) // 8, 16, 64))) * scale)
    return sep.Background(data, mask=mask, bw=size, bh=size, fw=config.back_filter,
                          fh=config.back_filter)


def _saturated(data, saturate):
    """Pixels at or above 98% of the SATURATE level (as the SATURATED flag), or None."""
    if saturate is None or not np.fmax.reduce(data, axis=None) >= 0.98 * saturate:
        return None  # (the brightest pixel, NaN left out, first: no image-sized map)
    sat = data >= 0.98 * saturate
    return sat if sat.any() else None


def _pixel_noise(data, masks, step=32):
    """Pixel-to-pixel noise from every *step*-th row (robust; blind to smooth gradients),
    leaving out the pixels of the *masks* (None or boolean maps)."""
    rows = data[::step]
    diff = np.diff(rows, axis=1)
    bad = np.zeros(diff.shape, bool)
    for m in masks:
        if m is not None:
            bad |= m[::step, 1:] | m[::step, :-1]
    if bad.any():
        diff = diff[~bad]
    diff = diff[np.isfinite(diff)]
    return 1.4826 * float(np.median(np.abs(diff))) / np.sqrt(2.0) if diff.size else 0.0


def _detection_inputs(data, mask, sat, config, notes, scratch=None):
    """Background, RMS map, background-subtracted copy, detection mask and detection noise.

    Normally the noise is SEP's global RMS, a scalar (SExtractor's DETECT_THRESH meaning, and
    ~10x faster in ``sep.extract`` than a per-pixel map). A frame where saturation covers more
    than 0.1% of the pixels, whose global RMS is 3x off the pixel-to-pixel noise (a giant
    halo's gradients inflate it ~100x, a flat saturated core deflates it), or whose RMS map
    spans more than 2x between its 5th and 95th percentiles (1.02-1.05 on the generator's
    fields, crowded ones included) is detected against the local noise instead: saturated
    pixels masked, a background on half-size meshes, then a second one on quarter-size meshes
    of the subtracted image (its level what the first left: SEP's mode is biased on a steep
    slope; its RMS the local noise, per pixel); *notes* says so. Measured on two 2048² halo
    frames (saturated at 54%; unsaturated, 5e4 ADU peak): every star of local SNR >= 10 found,
    0-1 false sources not flagged SATURATED_NEARBY (mesh pairs 1/2-1 and 1/4-1/2: 7-85).
    The subtracted copy is made in *scratch* (an array equal to *data*) when one is given.
    """
    bkg = _background(data, mask, config)
    rms = bkg.rms()
    ratio = bkg.globalrms / max(_pixel_noise(data, (mask, sat)), 1e-30)
    low, high = np.percentile(rms[::16, ::16], [5, 95])
    varies = high / max(low, 1e-30)
    saturated = 0.0 if sat is None else float(np.count_nonzero(sat)) / sat.size
    if saturated <= 1e-3 and 1 / 3 < ratio < 3 and varies <= 2:
        sub = data.copy() if scratch is None else scratch  # subtracted in place: no
        # full-size background map is kept
        bkg.subfrom(sub)
        if mask is not None:
            sub[mask] = 0.0
        return bkg, rms, sub, mask, bkg.globalrms
    if sat is not None:
        mask = sat if mask is None else mask | sat
    bkg = _background(data, mask, config, scale=0.5)
    sub = data.copy() if scratch is None else scratch
    bkg.subfrom(sub)
    if mask is not None:
        sub[mask] = 0.0
    # a second background on the subtracted image: its RMS is the local noise (gradients gone)
    # and its level what the first left on steep slopes (0.1-0.3 sigma on a halo)
    residual = _background(sub, mask, config, scale=0.25)
    residual.subfrom(sub)
    if mask is not None:
        sub[mask] = 0.0
    noise = np.ascontiguousarray(residual.rms(), dtype=np.float32)
    floor = max(float(np.median(noise[::16, ::16])) * 1e-2, 1e-12)
    np.maximum(noise, floor, out=noise)
    notes.append(f"detected against the local noise ({100 * saturated:.1f}% of pixels "
                 f"saturated, global RMS {ratio:.2g}x the pixel-to-pixel noise, RMS map "
                 f"{f'{varies:.2g}x' if varies < 1e3 else 'over 1000x'} from 5th to 95th "
                 "percentile)")
    return bkg, noise, sub, mask, noise


def measure_image(image: FitsImage, image_id: str, config: DetectionConfig | None = None, *,
                  overwrite: bool = False):
    """Detect and measure every source of one image.

    Parameters
    ----------
    image : FitsImage
        The image as :func:`skysurvey.fitsread.read_fits` read it (data, mask, header).
    image_id : str
        The image's id (DESIGN.md, "Image ids"), written in every row.
    config : DetectionConfig, optional
        Detection and measurement settings (default: ``DetectionConfig()``).
    overwrite : bool, optional
        Subtract the background in ``image.data`` itself (it is then the measured
        ``Pixels.sub``): one image-sized array less while the PSF is fitted (the pipeline,
        which has no use for the data afterwards). The catalog is the same.

    Returns
    -------
    sources : pyarrow.Table
        The ``sources`` table (``schema.SOURCES_SCHEMA``).
    row : dict
        The ``images`` row (its ``warnings`` joins what the steps noted, with ``"; "``).

    Raises
    ------
    ImageDataError
        When SEP cannot extract sources from the data. Any other error (a bug) propagates.
    """
    measured = measure_image_pixels(image, image_id, config, overwrite=overwrite)
    return measured.sources, measured.row


@dataclass(frozen=True)
class MeasuredImage:
    """:func:`measure_image_pixels`' result: the catalog rows and what they were measured on.

    Attributes
    ----------
    sources : pyarrow.Table
        The ``sources`` table.
    row : dict
        The ``images`` row.
    pixels : Pixels
        The background-subtracted pixels, noise, segmentation and mask that were measured.
    psf_grid : PsfGrid or None
        The PSF model the PSF photometry fitted (None when it did not run or had no stars).
    """

    sources: pa.Table
    row: dict
    pixels: Pixels
    psf_grid: object = None


def measure_image_pixels(image: FitsImage, image_id: str, config: DetectionConfig | None = None,
                         *, overwrite: bool = False) -> MeasuredImage:
    """:func:`measure_image`, also handing back the pixels and the PSF model it measured with
    (for figures of the model and its residuals; the catalog is the same).

    Parameters
    ----------
    image : FitsImage
        The image as :func:`skysurvey.fitsread.read_fits` read it.
    image_id : str
        The image's id, written in every row.
    config : DetectionConfig, optional
        Detection and measurement settings (default: ``DetectionConfig()``).
    overwrite : bool, optional
        Subtract the background in ``image.data`` itself (:func:`measure_image`).

    Returns
    -------
    MeasuredImage
    """
    config = config or DetectionConfig()
    # SEP's sub-object limit raised (crowded fields), one BLAS thread; both restored after
    with sep_settings(sub_object_limit=max(sep.get_sub_object_limit(), _SUB_OBJECTS)), \
            single_thread_blas():
        return _measure_image(image, image_id, config, overwrite)


def _measure_image(image: FitsImage, image_id: str, config: DetectionConfig,
                   overwrite: bool) -> MeasuredImage:
    """:func:`measure_image_pixels` within its SEP settings."""
    data, mask, header = image.data, image.mask, image.header
    # overwrite: the background is subtracted in the image's own array; the data's copy is
    # read for the sources' local background only, and freed before the PSF photometry
    data, scratch = (data.copy(), data) if overwrite else (data, None)
    ny, nx = data.shape
    saturate, _ = _first(header, SATURATE_KEYS)
    notes: list[str] = []
    try:
        sat = _saturated(data, saturate)
        bkg, rms, sub, mask, noise = _detection_inputs(data, mask, sat, config, notes, scratch)
        objects, segmap = _extract(sub, noise, mask, config)
    except Exception as exc:  # SEP raises bare Exceptions
        raise ImageDataError(image.name, f"source extraction failed: {exc}") from None

    gain, _ = _first(header, GAIN_KEYS)
    gain = gain if gain and gain > 0 else None
    pixels = Pixels(sub, rms, segmap, mask, gain, saturate)
    # the second pass (deblend.py) re-raises any error but SEP's buffer limits (in notes)
    hidden = _second_pass(pixels, objects, noise, config, sat, notes)
    zp, zp_key = zero_point(header)
    wcs, frame = celestial_wcs(header, notes)  # (None, None) without one; reason in notes
    bad_wcs = BAD_WCS if wcs is None and any(n.startswith(REJECTED_WCS) for n in notes) else 0

    background_at = partial(_background_at, bkg, data, sub, mask)
    columns, fwhm_median, radius = _measure(pixels, background_at, objects, config, hidden, sat)
    del data, scratch, background_at  # with overwrite, the data's copy (sub is image.data)
    # point-source photometry and class_star from the image's own stars (psf.py, classify.py)
    psf_model, psf_columns = measure_psf(pixels, columns, radius)
    # PSF photometry with the image's own PSF model (psfphot.py); split detections append rows
    if config.psf_photometry:
        psf_grid, phot = _psf_photometry(pixels, columns, psf_model, radius,
                                         config.psf_residual_search)
        columns, psf_columns, phot = _with_split_sources(columns, psf_columns, phot)
        psf_columns = _blends_by_psf_fit(pixels, psf_grid, columns, psf_columns, phot, radius)
    else:  # the columns exist, null (DetectionConfig.psf_photometry)
        psf_grid = None
        phot = {name: np.full(len(columns["x"]), np.nan) for name in PSF_COLUMNS}
    n = len(columns["x"])  # the first pass's objects, then the second pass's
    ra = dec = theta_world = np.full(n, np.nan)
    if wcs is not None and n:  # ICRS whatever the header's frame (astrometry.py)
        ra, dec, theta_world = sky_positions(wcs, columns["x"], columns["y"], columns["theta"])
    flux, flux_err = columns["flux"], columns["flux_err"]
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_err > 0, flux / flux_err, np.nan)
        good = flux > 0
        mag = np.where(good, (zp or 0.0) - 2.5 * np.log10(np.where(good, flux, 1.0)), np.nan)
        mag_err = np.where(good, 2.5 / np.log(10) * flux_err / np.where(good, flux, 1.0), np.nan)
    if zp is None:
        mag = mag_err = np.full(n, np.nan)

    def col(values):
        arr = np.asarray(values, dtype=float)
        return pa.array(arr, type=pa.float64(), mask=~np.isfinite(arr))

    table = _sources_table({
        "image_id": pa.array([image_id] * n, pa.string()),
        "source_id": pa.array(np.arange(n, dtype=np.int32)),
        "x": col(columns["x"]), "y": col(columns["y"]),
        "ra": col(ra), "dec": col(dec), "_healpix_29": _healpix_column(ra, dec),
        "theta_world": col(theta_world),
        "flux": col(flux), "flux_err": col(flux_err),
        "flux_aper": col(columns["flux_aper"]), "flux_aper_err": col(columns["flux_aper_err"]),
        "mag": col(mag), "mag_err": col(mag_err), "snr": col(snr),
        "peak": col(columns["peak"]), "background": col(columns["background"]),
        "a": col(columns["a"]), "b": col(columns["b"]), "theta": col(columns["theta"]),
        "fwhm": col(columns["fwhm"]), "ellipticity": col(columns["ellipticity"]),
        "npix": pa.array(np.asarray(columns["npix"], dtype=np.int32)),
        "flags": pa.array(np.asarray(columns["flags"], dtype=np.int32) | bad_wcs),
        **{name: col(values) for name, values in psf_columns.items()},
        **{name: col(phot[name]) for name in PSF_COLUMNS},
    }, n)
    row = _image_row(image, image_id, (wcs, frame), bkg, {
        "n_sources": n, "fwhm_median": fwhm_median, "zero_point": zp, "zero_point_source": zp_key,
        "gain": gain, "saturate": saturate, "aperture_radius": float(radius),
        "detect_thresh": config.thresh}, notes)
    row.update(psf_image_columns(psf_model, row))
    row.update(psf_quality(psf_grid, nx, ny))
    return MeasuredImage(table, row, pixels, psf_grid)


def _psf_photometry(pixels, columns, psf_model, radius, residual=False):
    """The PSF model and PSF photometry columns (psfphot.py) of the detected sources; NaN
    columns (and no model) without PSF stars."""
    stars = None if psf_model is None else psf_model.stars
    if stars is None or not np.any(stars):
        grid, phot, new = psf_photometry(pixels.with_(gain=None), columns,
                                         np.zeros(len(columns["x"]), bool),
                                         PsfScale(math.nan, radius))
        return grid, (phot, new)
    fwhm = psf_model.fwhm_locus if math.isfinite(psf_model.fwhm_locus) else psf_model.fwhm
    # cosmic rays' pixels are left out of the fits (a PSF fitted to a spike would subtract a
    # PSF-shaped hole from its neighbours)
    flags = np.asarray(columns["flags"])
    spikes = np.flatnonzero((flags & COSMIC_RAY) > 0)  # labels i + 1 (both passes')
    if spikes.size:  # a table of the labels (np.isin made image-sized int temporaries)
        table = np.zeros(flags.size + 1, bool)
        table[spikes + 1] = True
        hit = table[pixels.segmap]
        if pixels.mask is not None:
            hit |= pixels.mask
        pixels = pixels.with_(mask=hit)
    grid, phot, new = psf_photometry(
        pixels, columns, stars,
        PsfScale(fwhm, radius, psf_model.aperture_correction,
                 psf_model.aperture_correction_err), PsfOptions(residual=residual))
    return grid, (phot, new)


def _with_split_sources(columns, psf_columns, phot):
    """Detect's and psf.py's columns with one row appended per star that the PSF fit split
    off a detection (position: the PSF fit's; other measurements NaN; flags PSF_SPLIT, also
    set on the detection it came from; class_star 1 for both) and per star found in the
    residual image (flags PSF_RESIDUAL, class_star 1), and the PSF columns for all rows."""
    cols, new = phot
    parent = new["parent"]
    k = len(parent)
    flags = np.asarray(columns["flags"]).astype(np.int64)
    flags = np.where(cols["split"], flags | PSF_SPLIT, flags)
    columns = {**columns, "flags": flags}
    out = {name: np.concatenate([np.asarray(cols[name], float),
                                 np.asarray(new[name], float)]) for name in PSF_COLUMNS}
    if k == 0:
        return columns, psf_columns, out
    extra = {name: np.full(k, np.nan) for name in columns}
    split_row = parent >= 0  # split off a detection
    found_row = parent < 0  # found in the residual image
    extra.update(x=new["x_psf"], y=new["y_psf"], npix=np.zeros(k, np.int32),
                 flags=np.where(split_row, PSF_SPLIT, 0) | np.where(found_row, PSF_RESIDUAL, 0))
    columns = {name: np.concatenate([np.asarray(v), extra[name].astype(np.asarray(v).dtype)])
               for name, v in columns.items()}
    psf_columns = {name: np.concatenate([np.asarray(v, float), np.full(k, np.nan)])
                   for name, v in psf_columns.items()}
    # both stars of a split are point sources: two PSFs describe the pixels (reduced chi²
    # <= psfphot.SPLIT_MAX_CHI2), where the blend's shape had looked extended; so are the
    # residual finds (kept only when a PSF describes them: psf_chi2 <= RESIDUAL_MAX_CHI2)
    if "class_star" in psf_columns:
        psf_columns["class_star"][np.concatenate([cols["split"], np.ones(k, bool)])] = 1.0
    return columns, psf_columns, out


def _blends_by_psf_fit(pixels, grid, columns, psf_columns, phot, radius):
    """psf.py's columns with the class_star of the blended detections (SEP's blend bit or the
    second pass; not split by the PSF fit) that the concentration calls extended but a PSF
    describes, from their deblended extendedness (classify.psf_fit_class_star)."""
    score = psf_columns.get("class_star")
    if grid is None or score is None or not len(score):
        return psf_columns
    flags = np.asarray(columns["flags"]).astype(np.int64)
    blended = (((flags & (OBJ_MERGED | SECOND_PASS)) > 0)
               & ((flags & (PSF_SPLIT | PSF_RESIDUAL)) == 0))
    chi2 = np.asarray(phot["psf_chi2"], float)
    with np.errstate(invalid="ignore"):
        todo = np.flatnonzero(blended & (score < 0.5) & (chi2 <= BLEND_PSF_CHI2)
                              & (np.asarray(phot["flux_psf"], float) > 0)
                              & np.isfinite(np.asarray(phot["x_psf"], float))
                              & np.isfinite(np.asarray(phot["y_psf"], float)))
    if todo.size == 0:
        return psf_columns
    ratio = np.full(score.size, np.nan)
    ratio_err = ratio.copy()
    ratio[todo], ratio_err[todo] = deblended_extendedness(
        pixels, grid, tuple(phot[k] for k in ("x_psf", "y_psf", "flux_psf", "flux_psf_err")),
        radius, todo)
    return {**psf_columns, "class_star": psf_fit_class_star(score, blended, chi2, ratio,
                                                            ratio_err)}


def _healpix_column(ra, dec) -> pa.Array:
    """``_healpix_29`` (int64, NESTED, order 29), null where there is no position."""
    index = healpix_29(ra, dec)
    return pa.array(index, type=pa.int64(), mask=index < 0)


def _sources_table(columns: dict, n: int) -> pa.Table:
    """The ``sources`` table in schema order; columns not measured here are null."""
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type)
              for f in SOURCES_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SOURCES_SCHEMA)


def _second_pass(pixels, objects, noise, config, saturated=None, notes=None):
    """The sources hidden in bright objects' isophotes (deblend.py), or None; SEP's buffer
    overflows there are added to *notes*."""
    if not config.second_pass:
        return None
    return find_hidden(pixels, objects, noise, config, saturated=saturated, notes=notes)


def _measure(pixels, background_at, objects, config, hidden=None, saturated=None):
    """Per-source columns; ``background_at(xi, yi)`` is the background map at those pixels.

    The second pass's sources (*hidden*, labels ``n + 1 ...``) follow the first pass's,
    measured on the image with their parents modelled out, with the first pass's aperture
    radius and median FWHM; their parents get OBJ_MERGED (their own measurement masks the new
    sources' pixels through the segmentation map).
    """
    cols, fwhm_median, radius = _measure_objects(pixels, background_at, objects, config)
    table = None if saturated is None else _summed_area(saturated)
    cols["flags"] |= np.where(_saturated_nearby(table, objects), SATURATED_NEARBY, 0)
    if hidden is None:
        return cols, fwhm_median, radius
    cols["flags"][np.unique(hidden.parents)] |= OBJ_MERGED
    labels = np.arange(len(objects) + 1, len(objects) + len(hidden.objects) + 1, dtype=np.int32)
    with hidden.modelled(pixels.sub, pixels.segmap) as (image, seg):
        # background_at reads data - sub: add back the model taken out of sub meanwhile
        def sky_at(xi, yi):
            return background_at(xi, yi) - hidden.model_at(xi, yi)

        new, _, _ = _measure_objects(pixels.with_(sub=image, segmap=seg), sky_at, hidden.objects,
                                     config, labels=labels, reference=(fwhm_median, radius))
    new["flags"] |= SECOND_PASS
    # a source found inside a saturated object is a fragment of it until shown otherwise
    near_saturation = _saturated_nearby(table, hidden.objects)
    near_saturation |= (cols["flags"][hidden.parents] & (SATURATED | SATURATED_NEARBY)) > 0
    new["flags"] |= np.where(near_saturation, SATURATED_NEARBY, 0)
    return {k: np.concatenate([cols[k], new[k]]) for k in cols}, fwhm_median, radius


def _summed_area(mask):
    """Summed-area table of a boolean map, padded with a zero row and column."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=table[1:, 1:])
    return table


def _saturated_nearby(table, objects, grow=2):
    """Whether each object's isophotal bounding box, grown by *grow* px, holds a saturated
    pixel (*table*: summed-area table of the saturated map, None when there are none)."""
    if table is None or len(objects) == 0:
        return np.zeros(len(objects), bool)
    ny, nx = table.shape[0] - 1, table.shape[1] - 1
    y0 = np.clip(objects["ymin"] - grow, 0, ny)
    y1 = np.clip(objects["ymax"] + grow + 1, 0, ny)
    x0 = np.clip(objects["xmin"] - grow, 0, nx)
    x1 = np.clip(objects["xmax"] + grow + 1, 0, nx)
    return (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]) > 0


def _measure_objects(pixels, background_at, objects, config, labels=None, reference=None):
    """Columns for one set of *objects* (segmentation *labels*, default 1..n); *reference*
    ``(fwhm_median, radius)`` fixes the median FWHM and aperture radius, else they are
    measured here."""
    sub, rms, mask, segmap = pixels.sub, pixels.rms, pixels.mask, pixels.segmap
    gain, saturate = pixels.gain, pixels.saturation
    ny, nx = pixels.shape
    n = len(objects)
    x, y = objects["x"].astype(float), objects["y"].astype(float)
    a, b = objects["a"].astype(float), objects["b"].astype(float)
    theta = np.clip(objects["theta"].astype(float), -np.pi / 2 + 1e-6, np.pi / 2 - 1e-6)
    flags = objects["flag"].astype(np.int64)
    if n == 0:
        empty = np.zeros(0)
        cols = {k: empty for k in ("x", "y", "flux", "flux_err", "flux_aper", "flux_aper_err",
                                   "peak", "background", "a", "b", "theta", "fwhm",
                                   "ellipticity")}
        cols.update(npix=np.zeros(0, np.int32), flags=np.zeros(0, np.int32))
        radius = config.aperture_radius or 5.0
        return cols, None, radius

    a_safe, b_safe = np.maximum(a, 0.3), np.maximum(b, 0.3)
    # Every measurement leaves out the pixels of the other detected objects (segmentation map,
    # object i is label i + 1), as SExtractor masks neighbours; without it a deblended star's
    # radius and Kron flux took in its neighbour's light (median 2.1-2.7x the true flux).
    labels = np.arange(1, n + 1, dtype=np.int32) if labels is None else labels
    own = {"segmap": segmap, "seg_id": labels, "mask": mask}
    # Kron flux centred on the isophotal barycentre, as SExtractor's FLUX_AUTO, with its
    # circular fallback for tiny or undefined Kron radii
    kronrad, kflag = sep.kron_radius(sub, x, y, a_safe, b_safe, theta, 6.0, **own)
    kronrad = np.where(np.isfinite(kronrad), kronrad, 0.0)
    r_kron = config.kron_factor * np.maximum(kronrad, 1.0)
    flux, flux_err, fflag = sep.sum_ellipse(sub, x, y, a_safe, b_safe, theta, r_kron,
                                            err=rms, gain=gain, subpix=1, **own)
    small = config.kron_factor * kronrad * np.sqrt(a_safe * b_safe) < config.kron_min_radius
    if small.any():
        cf, ce, cflag = sep.sum_circle(sub, x[small], y[small], config.kron_min_radius,
                                       err=rms, gain=gain, subpix=0, **_subset(own, small))
        flux[small], flux_err[small], fflag[small] = cf, ce, cflag

    # half-light radius -> FWHM (exact for a Gaussian) and the window for centroids
    r_half = _half_light_radius(sub, x, y, a_safe, flux, own)
    r_half = np.where(np.isfinite(r_half) & (r_half > 0), r_half, 1.1774 * np.sqrt(a_safe * b_safe))
    fwhm = 2.0 * r_half
    # subpix=1: positions within 2e-4 px (median; 0.00004") of SExtractor's 11x11 oversampling
    # of the window's edge, where the Gaussian weight is exp(-8); 4x faster than subpix=11
    xw, yw, wflag = sep.winpos(sub, x, y, fwhm / 2.3548, mask=mask, subpix=1)
    moved = ~np.isfinite(xw) | ~np.isfinite(yw) | (np.hypot(xw - x, yw - y) > 2.0) | (wflag != 0)
    xw, yw = np.where(moved, x, xw), np.where(moved, y, yw)

    isolated = flags & OBJ_MERGED == 0
    sharp = fwhm[isolated & (objects["npix"] >= 2 * config.minarea)]
    fwhm_median = float(np.median(sharp)) if sharp.size else float(np.median(fwhm))
    radius = config.aperture_radius or max(config.aperture_fwhm * fwhm_median, 2.0)
    if reference is not None:
        fwhm_median, radius = reference

    # subpix=0: exact pixel/circle overlap (SExtractor samples 5x5), and no slower
    flux_aper, flux_aper_err, aflag = sep.sum_circle(sub, xw, yw, radius, err=rms, gain=gain,
                                                     subpix=0, **own)

    xi = np.clip(np.rint(xw).astype(int), 0, nx - 1)
    yi = np.clip(np.rint(yw).astype(int), 0, ny - 1)
    local_bkg = background_at(xi, yi)
    peak = objects["peak"].astype(float)
    # SEP's "has masked" bits now also count neighbours' pixels: keep them for bad pixels only
    neighbour_bits = APER_HASMASKED | APER_ALLMASKED
    flags = flags | ((kflag | fflag | aflag) & ~neighbour_bits)
    ellipse = (a_safe, b_safe, theta)
    bad = (_touches_mask(mask, x, y, ellipse, np.where(small, 0.0, r_kron),
                         np.where(small, config.kron_min_radius, 0.0))
           | _touches_mask(mask, xw, yw, ellipse, 0.0, radius))
    flags |= np.where(bad, APER_HASMASKED | MASKED, 0)
    flags |= np.where(small, KRON_FALLBACK, 0)
    if saturate is not None:
        flags |= np.where(peak + local_bkg >= saturate * 0.98, SATURATED, 0)
    edge = (xw < radius) | (yw < radius) | (xw > nx - 1 - radius) | (yw > ny - 1 - radius)
    flags |= np.where(edge, NEAR_EDGE, 0)
    flags |= np.where(fwhm < config.cosmic_ray_sharpness * fwhm_median, COSMIC_RAY, 0)
    cols = {
        "x": xw, "y": yw, "flux": flux, "flux_err": flux_err, "flux_aper": flux_aper,
        "flux_aper_err": flux_aper_err, "peak": peak, "background": local_bkg,
        "a": a, "b": b, "theta": theta, "fwhm": fwhm,
        "ellipticity": 1.0 - b_safe / a_safe, "npix": objects["npix"], "flags": flags,
    }
    return cols, fwhm_median, radius


def _background_at(bkg, data, sub, mask, xi, yi):
    """The background map at pixels (xi, yi): the data minus its background-subtracted copy,
    or, where *sub* was zeroed (masked pixels), from the full map, built only then."""
    local = data[yi, xi].astype(float) - sub[yi, xi]
    if mask is not None:
        hit = mask[yi, xi]
        if hit.any():
            local[hit] = bkg.back()[yi[hit], xi[hit]]
    return local


def _subset(own, sel):
    """The segmentation/mask arguments for the sources selected by *sel*."""
    return {**own, "seg_id": own["seg_id"][sel]}


def _half_light_radius(sub, x, y, a, flux, own):
    """SExtractor's FLUX_RADIUS: the radius of the circle holding half of the Kron flux.

    SExtractor builds the growth curve out to 6a; it only has to reach the half-light radius,
    so it is built to 3a first (a quarter of the pixels) and to 6a where the radius lies
    beyond. Sources without a positive Kron flux are normalised by the flux within 6a.
    subpix=3: radii within 0.4% (median) of subpix=11 at 60% of subpix=5's cost.
    """
    r_half = np.full(len(x), np.nan)
    kron = flux > 0
    if kron.any():
        rmax = np.maximum(3.0 * a[kron], 2.0)
        r_half[kron] = sep.flux_radius(sub, x[kron], y[kron], rmax, 0.5, normflux=flux[kron],
                                       subpix=3, **_subset(own, kron))[0]
        beyond = np.zeros(len(x), bool)
        beyond[kron] = ~np.isfinite(r_half[kron]) | (r_half[kron] >= 0.99 * rmax)
        if beyond.any():
            r_half[beyond] = sep.flux_radius(sub, x[beyond], y[beyond], 6.0 * a[beyond], 0.5,
                                             normflux=flux[beyond], subpix=3,
                                             **_subset(own, beyond))[0]
    rest = ~kron
    if rest.any():
        r_half[rest] = sep.flux_radius(sub, x[rest], y[rest], 6.0 * a[rest], 0.5, subpix=3,
                                       **_subset(own, rest))[0]
    return r_half


def _touches_mask(mask, x, y, ellipse, r_kron, radius):
    """Whether each Kron ellipse (shape ``(a, b, theta)``, scale *r_kron*, 0 for none) or
    circle of *radius* (0 for none) holds a masked pixel (NaN, Inf or flagged in the file)."""
    a, b, theta = ellipse
    n = len(x)
    if mask is None:
        return np.zeros(n, bool)
    bad = mask.astype(np.float32)
    out = np.zeros(n, bool)
    r_kron, radius = np.broadcast_to(r_kron, n), np.broadcast_to(radius, n)
    s = r_kron > 0
    if s.any():
        out[s] |= sep.sum_ellipse(bad, x[s], y[s], a[s], b[s], theta[s], r_kron[s],
                                  subpix=1)[0] > 0
    s = radius > 0
    if s.any():
        out[s] |= sep.sum_circle(bad, x[s], y[s], radius[s], subpix=1)[0] > 0
    return out


def _float(header, key):
    try:
        value = float(header[key])
        return value if math.isfinite(value) else None
    except (KeyError, TypeError, ValueError):
        return None


def _image_row(image, image_id, wcs_frame, bkg, measured, notes):
    """The ``images`` row: *measured* holds what the measurement found (``n_sources``,
    ``fwhm_median``, ``zero_point``, ``zero_point_source``, ``gain``, ``saturate``,
    ``aperture_radius``, ``detect_thresh``), *wcs_frame* the celestial WCS and its frame
    (``(None, None)`` without one); the header gives the rest, *notes* the warnings."""
    header, (wcs, frame) = image.header, wcs_frame
    ny, nx = image.data.shape
    ra_c = dec_c = scale = None
    if wcs is not None:
        ra_c, dec_c = (float(v[0]) for v in pixel_to_icrs(wcs, [(nx - 1) / 2], [(ny - 1) / 2]))
        scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)
    when = observation_time(header)  # the nights' rule: no MJD from an unbelievable date
    mjd = when.mjd
    notes.extend(when.warnings)
    date_obs = header.get("DATE-OBS")
    masked = 0.0 if image.mask is None else float(image.mask.mean())
    return {
        "image_id": image_id, "hdu": image.hdu, "width": nx, "height": ny,
        "n_sources": measured["n_sources"],
        "bkg_median": float(bkg.globalback), "bkg_rms": float(bkg.globalrms),
        "fwhm_median": measured["fwhm_median"], "zero_point": measured["zero_point"],
        "zero_point_source": measured["zero_point_source"],
        "gain": measured["gain"], "saturate": measured["saturate"], "has_wcs": wcs is not None,
        "wcs_frame": frame,
        "ra_center": ra_c, "dec_center": dec_c, "pixel_scale": scale,
        "exptime": _float(header, "EXPTIME"), "mjd": mjd,
        "date_obs": str(date_obs) if date_obs else None,
        "filter": str(header["FILTER"]) if "FILTER" in header else None,
        "telescope": str(header["TELESCOP"]) if "TELESCOP" in header else None,
        "aperture_radius": measured["aperture_radius"],
        "detect_thresh": measured["detect_thresh"],
        "masked_fraction": masked, "warnings": "; ".join(notes) or None,
    }
