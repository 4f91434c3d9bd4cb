"""Realistic synthetic sky images with a known truth: the demo's data and the tests' yardstick.

A TAN WCS (optionally with SIP distortion), a Moffat or Gaussian PSF, stars and Sersic galaxies
with power-law number counts, a sky with a gentle gradient, Poisson and read noise, and a full
header (FILTER, EXPTIME, GAIN, RDNOISE, DATE-OBS, MJD-OBS, MAGZERO, TELESCOP, SATURATE, SEEING).
Every source is drawn on a postage stamp normalised to its flux, so the truth flux is the flux
actually in the image. Same seed, same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from skysurvey import __version__

__all__ = ["BANDS", "MOFFAT_BETA", "OVERSAMPLE", "SimImage", "band_magnitudes", "header_in_frame",
           "make_image", "make_sky_sources", "power_law_mags", "reference_catalog", "write_sample"]

BANDS = {  # zero point, sky (ADU), seeing (arcsec), colour offset from r (mag)
    "g": (29.6, 120.0, 1.1, 0.5),
    "r": (30.0, 200.0, 1.0, 0.0),
    "i": (29.8, 260.0, 0.9, -0.3),
}
OVERSAMPLE = 3
MOFFAT_BETA = 3.5


@dataclass
class SimImage:
    data: np.ndarray
    header: fits.Header
    truth: pd.DataFrame
    wcs: WCS
    model: np.ndarray | None = None
    artefacts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["x", "y", "kind"]))

    def to_hdulist(self, compress: bool = False) -> fits.HDUList:
        """The image as FITS; *compress* puts it in a lossless GZIP_2 CompImageHDU (ext 1)."""
        if not compress:
            return fits.HDUList([fits.PrimaryHDU(self.data, self.header)])
        image = fits.CompImageHDU(self.data, self.header, compression_type="GZIP_2",
                                  quantize_level=0.0)
        return fits.HDUList([fits.PrimaryHDU(header=self.header.copy()), image])

    def write(self, path, *, compress: str | None = None) -> Path:
        """Write to *path*: ``.fits``, ``.fits.gz`` or ``.fits.fz`` (or *compress* 'gz'/'fz').

        The bytes depend only on the content (no clock time, no checksum cards).
        """
        path = Path(path)
        if compress in ("gz", "fz") and not path.name.endswith(f".{compress}"):
            path = path.with_name(f"{path.name}.{compress}")
        elif compress not in (None, "none", "gz", "fz"):
            raise ValueError(f"{path}: compress must be none, gz or fz, not {compress!r}")
        if path.name.endswith(".gz"):
            buffer = io.BytesIO()
            self.to_hdulist().writeto(buffer)
            path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
        else:
            with _gzip_tiles_without_clock():
                self.to_hdulist(compress=path.name.endswith(".fz")).writeto(path, overwrite=True)
        return path


@contextmanager
def _gzip_tiles_without_clock():
    """While writing: astropy's GZIP_1/GZIP_2 tile codec calls ``gzip.compress`` without an
    mtime, which stamps the clock into every tile's gzip header (no FITS reader looks at it;
    fpack writes 0). Give it ``mtime=0`` so the same image gives the same bytes; with an
    astropy whose codec is elsewhere nothing changes (tests/test_synth.py checks the tiles)."""
    try:
        from astropy.io.fits.hdu.compressed import _codecs
    except ImportError:  # pragma: no cover - another astropy layout
        yield
        return
    original = getattr(_codecs, "gzip_compress", None)
    if original is not gzip.compress:
        yield
        return
    _codecs.gzip_compress = partial(gzip.compress, mtime=0)
    try:
        yield
    finally:
        _codecs.gzip_compress = original


def _wcs(shape, ra, dec, pixel_scale, rotation_deg, sip) -> WCS:
    ny, nx = shape
    angle = np.radians(rotation_deg)
    scale = pixel_scale / 3600.0
    suffix = "-SIP" if sip else ""
    header = fits.Header()
    header.update(CTYPE1=f"RA---TAN{suffix}", CTYPE2=f"DEC--TAN{suffix}", CUNIT1="deg",
                  CUNIT2="deg", CRVAL1=ra, CRVAL2=dec, CRPIX1=nx / 2 + 0.5, CRPIX2=ny / 2 + 0.5,
                  CD1_1=-scale * np.cos(angle), CD1_2=scale * np.sin(angle),
                  CD2_1=scale * np.sin(angle), CD2_2=scale * np.cos(angle), RADESYS="ICRS")
    if sip:
        k = 1.0 / max(nx, ny)
        header.update(A_ORDER=2, B_ORDER=2, A_2_0=2 * k, A_0_2=-1.5 * k, A_1_1=k,
                      B_2_0=-k, B_0_2=2.5 * k, B_1_1=0.5 * k)
    return WCS(header)


def _psf_profile(r2, fwhm, psf):
    if psf == "gaussian":
        sigma = fwhm / 2.3548
        return np.exp(-r2 / (2 * sigma**2))
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / MOFFAT_BETA) - 1))
    return (1 + r2 / alpha**2) ** (-MOFFAT_BETA)


def _grid(half: int, dx: float, dy: float, oversample: int = OVERSAMPLE):
    """Oversampled offsets (pixel units) of a (2*half+1)^2 stamp from a sub-pixel centre."""
    n = 2 * half + 1
    sub = (np.arange(n * oversample) + 0.5) / oversample - half - 0.5
    return np.meshgrid(sub - dy, sub - dx, indexing="ij")


def _bin(stamp_os, half, oversample: int = OVERSAMPLE):
    n = 2 * half + 1
    return stamp_os.reshape(n, oversample, n, oversample).sum(axis=(1, 3))


def _star_stamp(dx, dy, fwhm, psf, half):
    yy, xx = _grid(half, dx, dy)
    r2 = (xx * xx + yy * yy).astype(np.float32)  # float32 power: twice as fast, ample here
    stamp = _bin(_psf_profile(r2, fwhm, psf), half).astype(np.float64)
    return stamp / stamp.sum()


def _convolve_same(image, kernel):
    """Linear convolution by FFT, cropped to *image*'s shape (kernel centred, odd size)."""
    from scipy import fft

    size = [fft.next_fast_len(a + b - 1, real=True)
            for a, b in zip(image.shape, kernel.shape, strict=True)]
    full = fft.irfft2(fft.rfft2(image, size) * fft.rfft2(kernel, size), size)
    hy, hx = kernel.shape[0] // 2, kernel.shape[1] // 2
    return full[hy:hy + image.shape[0], hx:hx + image.shape[1]]


def _sersic(xx, yy, r_eff, n, ellipticity, angle):
    """Sersic profile (astropy's Sersic2D convention: *angle* of the major axis from +x)."""
    from scipy.special import gammaincinv

    b_n = gammaincinv(2.0 * n, 0.5)
    cos, sin = np.cos(angle), np.sin(angle)
    x_maj = xx * cos + yy * sin
    x_min = -xx * sin + yy * cos
    z = np.sqrt((x_maj / r_eff) ** 2 + (x_min / (r_eff * (1.0 - ellipticity))) ** 2)
    return np.exp(-b_n * (z ** (1.0 / n) - 1.0))


def _galaxy_stamp(dx, dy, fwhm, psf, half, r_eff, n, ellipticity, angle):
    yy, xx = _grid(half, dx, dy, 1)  # extended profiles: pixel centres suffice
    galaxy = _sersic(xx, yy, r_eff, n, ellipticity, angle)
    kernel = _psf_profile(xx**2 + yy**2, fwhm, psf)
    image = _convolve_same(galaxy, kernel / kernel.sum())
    stamp = np.clip(image, 0, None)
    return stamp / stamp.sum()


def power_law_mags(rng, n, m_bright=16.0, m_faint=25.0):
    """Magnitudes with counts rising x2.5 per magnitude (dN/dm ~ 10^(0.4 m))."""
    lo, hi = 10 ** (0.4 * m_bright), 10 ** (0.4 * m_faint)
    return 2.5 * np.log10(lo + rng.uniform(size=n) * (hi - lo))


def make_sky_sources(rng, n_stars, n_galaxies, ra, dec, radius_deg):
    """Stars and galaxies of one patch of sky (r-band magnitudes, colours per band)."""
    n = n_stars + n_galaxies
    cosd = np.cos(np.radians(dec))
    kind = np.array(["star"] * n_stars + ["galaxy"] * n_galaxies)
    table = pd.DataFrame({
        "kind": kind,
        "ra": ra + rng.uniform(-radius_deg, radius_deg, n) / cosd,
        "dec": dec + rng.uniform(-radius_deg, radius_deg, n),
        "mag_r": np.where(kind == "star", power_law_mags(rng, n), power_law_mags(rng, n, 18.0)),
        "colour": rng.normal(0.0, 0.3, n),
        "r_eff": np.where(kind == "galaxy", rng.uniform(0.5, 2.0, n), 0.0),  # arcsec
        "sersic_n": np.where(kind == "galaxy", rng.choice([1.0, 4.0], n), 0.0),
        "ellipticity": np.where(kind == "galaxy", rng.uniform(0.0, 0.6, n), 0.0),
        "angle": rng.uniform(0, np.pi, n),
    })
    return table


def make_image(shape=(512, 512), *, n_stars=300, n_galaxies=80, seed=0, band="r",
               fwhm_arcsec=None, pixel_scale=0.25, ra=150.1, dec=2.2, rotation_deg=0.0,
               sky=None, gain=2.0, read_noise=5.0, zero_point=None, exptime=60.0,
               date_obs="2026-03-14T04:12:00", cosmic_rays=0, bad_columns=0, nan_patch=False,
               saturate=None, sip=False, psf="moffat", return_model=False,
               sources: pd.DataFrame | None = None, transparency: float = 0.0,
               write_magzero: bool = True) -> SimImage:
    """Draw one image; *sources* (from :func:`make_sky_sources`) shares a sky between images.

    *zero_point* is the nominal one the header's MAGZERO states (omitted when *write_magzero*
    is false); the night's *transparency* (mag of extra extinction) dims every source, so the
    image's true zero point is ``zero_point - transparency`` (truth magnitudes use it).

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)`` in pixels.
    n_stars, n_galaxies : int, optional
        Sources drawn at random when *sources* is not given.
    seed : int, optional
        Seed of ``np.random.default_rng`` (sources, noise, defects).
    band : str, optional
        The filter (FILTER keyword; zero point, sky and seeing per band).
    fwhm_arcsec : float, optional
        The seeing; None: the band's.
    pixel_scale : float, optional
        Arcsec per pixel.
    ra, dec : float, optional
        The image centre (degrees, ICRS).
    rotation_deg : float, optional
        Rotation of the WCS.
    sky : float, optional
        Sky level (ADU); None: the band's.
    gain, read_noise : float, optional
        Electrons per ADU and read noise (electrons).
    zero_point : float, optional
        The nominal zero point; None: the band's.
    exptime : float, optional
        Exposure time (s).
    date_obs : str, optional
        DATE-OBS (ISOT).
    cosmic_rays, bad_columns : int, optional
        Defects to add.
    nan_patch : bool, optional
        Add a patch of NaN pixels.
    saturate : float, optional
        Clip at this level and write SATURATE; None: no clipping.
    sip : bool, optional
        Add SIP distortion to the WCS.
    psf : {"moffat", "gaussian"}, optional
        The PSF's profile.
    return_model : bool, optional
        Keep the noiseless model in ``SimImage.model``.
    sources : pandas.DataFrame, optional
        The sky to draw (:func:`make_sky_sources`); None: drawn from *seed*.
    transparency : float, optional
        Extra extinction (mag) the header does not know about.
    write_magzero : bool, optional
        Write MAGZERO in the header.

    Returns
    -------
    SimImage
        The data, header, WCS and truth table (and the model when asked).
    """
    rng = np.random.default_rng(seed)
    zp_band, sky_band, seeing_band, _ = BANDS.get(band, BANDS["r"])
    zero_point = zp_band if zero_point is None else zero_point
    sky = sky_band if sky is None else sky
    fwhm_arcsec = seeing_band if fwhm_arcsec is None else fwhm_arcsec
    ny, nx = shape
    wcs = _wcs(shape, ra, dec, pixel_scale, rotation_deg, sip)
    if sources is None:
        radius = 0.5 * max(nx, ny) * pixel_scale / 3600 * 1.45
        sources = make_sky_sources(rng, n_stars, n_galaxies, ra, dec, radius)
    # near the footprint by the linear transform first: the SIP inverse diverges far outside
    lx, ly = wcs.wcs_world2pix(sources["ra"].to_numpy(), sources["dec"].to_numpy(), 0)
    near = (lx > -0.2 * nx) & (lx < 1.2 * nx) & (ly > -0.2 * ny) & (ly < 1.2 * ny)
    sources = sources[near].reset_index(drop=True)
    x, y = wcs.all_world2pix(sources["ra"].to_numpy(), sources["dec"].to_numpy(), 0, quiet=True)
    inside = (x > -3) & (x < nx + 2) & (y > -3) & (y < ny + 2)
    sources, x, y = sources[inside].reset_index(drop=True), x[inside], y[inside]
    mags = band_magnitudes(sources, band)
    true_zp = zero_point - transparency
    flux_nominal = 10 ** (-0.4 * (mags - true_zp))
    fwhm = fwhm_arcsec / pixel_scale
    model = np.zeros(shape)
    rendered = np.zeros(len(sources))
    for i, src in enumerate(sources.itertuples()):
        cx, cy = round(x[i]), round(y[i])
        if src.kind == "star":
            half = int(np.ceil(5 * fwhm))
            stamp = _star_stamp(x[i] - cx, y[i] - cy, fwhm, psf, half)
        else:
            r_eff = src.r_eff / pixel_scale
            half = int(np.ceil(max(4 * fwhm, 5 * r_eff)))
            stamp = _galaxy_stamp(x[i] - cx, y[i] - cy, fwhm, psf, half, r_eff, src.sersic_n,
                                  src.ellipticity, src.angle)
        stamp = flux_nominal[i] * stamp
        x0, y0 = cx - half, cy - half
        sx = slice(max(x0, 0), min(x0 + stamp.shape[1], nx))
        sy = slice(max(y0, 0), min(y0 + stamp.shape[0], ny))
        if sx.stop <= sx.start or sy.stop <= sy.start:
            continue
        part = stamp[sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0]
        model[sy, sx] += part
        rendered[i] = part.sum()
    yy, xx = np.mgrid[:ny, :nx]
    background = sky * (1 + 0.02 * (xx / nx - 0.5) - 0.015 * (yy / ny - 0.5))
    data = rng.poisson((background + model) * gain) / gain
    data = (data + rng.normal(0.0, read_noise / gain, shape)).astype(np.float32)
    artefacts = []
    for _ in range(cosmic_rays):
        cx, cy = (int(v) for v in rng.integers(2, (nx - 3, ny - 3)))
        data[cy, cx] += rng.uniform(2000, 20000)
        if rng.uniform() < 0.5:
            data[cy, cx + 1] += rng.uniform(1000, 5000)
        artefacts.append((cx, cy, "cosmic_ray"))
    for _ in range(bad_columns):
        col = int(rng.integers(0, nx))
        data[:, col] += 3000.0
        artefacts.append((col, -1, "hot_column"))
    if nan_patch:
        px, py = int(rng.integers(0, nx - 10)), int(rng.integers(0, ny - 10))
        data[py:py + 10, px:px + 10] = np.nan
        artefacts.append((px, py, "nan_patch"))
    if saturate is not None:
        data = np.minimum(data, np.float32(saturate))
    header = wcs.to_header(relax=True)
    mjd = Time(date_obs, format="isot", scale="utc").mjd
    header.update(FILTER=band, EXPTIME=exptime, GAIN=gain, RDNOISE=read_noise,
                  TELESCOP="SYNTH", INSTRUME="skysurvey.synth",
                  SATURATE=float(saturate if saturate is not None else 65535.0),
                  SEEING=fwhm_arcsec, OBJECT="synthetic field", BUNIT="ADU",
                  **{"DATE-OBS": date_obs, "MJD-OBS": round(mjd, 6)})
    if write_magzero:
        header.insert("TELESCOP", ("MAGZERO", zero_point))
    sigma2 = (fwhm / 2.3548) ** 2
    pixel_var = sky / gain + (read_noise / gain) ** 2
    ra_t, dec_t = wcs.all_pix2world(x, y, 0)
    with np.errstate(divide="ignore"):
        truth = pd.DataFrame({
            "source_id": np.arange(len(sources)), "kind": sources["kind"].to_numpy(),
            "x": x, "y": y, "ra": ra_t, "dec": dec_t, "flux": rendered,
            "mag": np.where(rendered > 0, true_zp - 2.5 * np.log10(np.maximum(rendered,
                                                                                   1e-30)),
                            np.nan),
            "snr": rendered / np.sqrt(rendered / gain + 4 * np.pi * sigma2 * pixel_var
                                      * (1 + (sources["r_eff"].to_numpy() / pixel_scale) ** 2
                                         / sigma2)),
            "r_eff": sources["r_eff"].to_numpy(), "sersic_n": sources["sersic_n"].to_numpy(),
            "ellipticity": sources["ellipticity"].to_numpy(),
        })
    truth = truth[truth["flux"] > 0].reset_index(drop=True)
    return SimImage(data, header, truth, wcs, model.astype(np.float32) if return_model else None,
                    pd.DataFrame(artefacts, columns=["x", "y", "kind"]))


def band_magnitudes(sources: pd.DataFrame, band: str) -> np.ndarray:
    """True magnitudes of *sources* in *band* (its colour offset from r, scaled per source)."""
    colour = BANDS.get(band, BANDS["r"])[3]
    return sources["mag_r"].to_numpy() + colour * (1 + sources["colour"].to_numpy())


def reference_catalog(sources: pd.DataFrame, seed: int, *, faint: float = 21.5,
                      mag_error: float = 0.01, position_error_mas: float = 5.0) -> pd.DataFrame:
    """A reference catalog of the sky's stars down to r = *faint*: ``ra``, ``dec`` (ICRS,
    degrees, with *position_error_mas* Gaussian errors) and ``<band>mag``/``<band>mag_err`` for
    every band of :data:`BANDS` (true magnitudes plus *mag_error* Gaussian errors)."""
    rng = np.random.default_rng([seed, 14])
    stars = sources[(sources["kind"] == "star") & (sources["mag_r"] <= faint)]
    n = len(stars)
    sigma = position_error_mas / 3.6e6
    cosd = np.cos(np.radians(stars["dec"].to_numpy()))
    table = {"ra": stars["ra"].to_numpy() + rng.normal(0, sigma, n) / cosd,
             "dec": stars["dec"].to_numpy() + rng.normal(0, sigma, n)}
    for band in BANDS:
        table[f"{band}mag"] = band_magnitudes(stars, band) + rng.normal(0, mag_error, n)
        table[f"{band}mag_err"] = np.full(n, mag_error)
    return pd.DataFrame(table)


def header_in_frame(header: fits.Header, shape, frame: str = "galactic") -> fits.Header:
    """A copy of *header* whose TAN WCS is written in another sky *frame* (an astropy frame
    name: ``galactic``, ``fk5``...), describing the same sky: a frame change rotates the
    tangent plane at the tangent point, so a linear TAN fit to a 9 x 9 grid of converted
    positions is exact (to micro-arcseconds). No SIP: the test headers of ``astrometry.py``."""
    import warnings

    from astropy.wcs.utils import fit_wcs_from_points

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(header)
    if wcs.sip is not None:
        raise ValueError("header_in_frame handles TAN without SIP only")
    ny, nx = shape
    x, y = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
    world = wcs.pixel_to_world(x.ravel(), y.ravel()).transform_to(frame)
    fitted = fit_wcs_from_points((x.ravel(), y.ravel()), world, projection="TAN")
    out = header.copy()
    for key in list(out):
        if key[:5] in ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT", "RADES") or key[:2] in (
                "CD", "PC") or key in ("LONPOLE", "LATPOLE", "EQUINOX", "MJDREF", "WCSAXES"):
            del out[key]
    out.update(fitted.to_header())
    return out


def write_sample(out_dir, *, count=6, size=2048, bands=("g", "r", "i"), seed=42,
                 ra=150.1, dec=2.2, pixel_scale=0.25, compress: str | None = None,
                 command: str | None = None, progress=None) -> list[Path]:
    """Images ``sky_<band>_<NNN>.fits``, ``truth/<image_id>.csv``, ``metadata.json`` and the
    field's ``reference.parquet`` (:func:`reference_catalog`). *progress*, when given, is
    called as ``progress(done, count, path)`` after each image.

    Every image has a transparency loss of 0-0.35 mag that its MAGZERO does not know about;
    every fourth image (the 2nd, 6th, ...) has no MAGZERO at all. ``metadata.json`` records the
    true zero point of each image (``zero_point``), the header's (``header_zero_point``, null
    when absent) and the ``transparency``; truth magnitudes are true magnitudes.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder to write into (created).
    count : int, optional
        Number of images.
    size : int, optional
        Image side (pixels).
    bands : sequence of str, optional
        Filters, taken in turn.
    seed : int, optional
        Random seed of the field and images.
    ra, dec : float, optional
        The field's centre (degrees).
    pixel_scale : float, optional
        Arcsec per pixel.
    compress : {None, "gz", "fz"}, optional
        File compression.
    command : str, optional
        The command line recorded in ``metadata.json``.
    progress : callable, optional
        Called as ``progress(done, count, path)`` after each image.

    Returns
    -------
    list of Path
        The images written.
    """
    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_pointings = max(1, -(-count // len(bands)))
    width_deg = size * pixel_scale / 3600
    n_stars = int(size * size / 500 * (1 + 0.5 * (n_pointings - 1)))
    sky = make_sky_sources(rng, n_stars, n_stars // 3, ra + 0.25 * width_deg * (n_pointings - 1),
                           dec, 0.75 * width_deg * (1 + 0.5 * (n_pointings - 1)))
    paths, meta = [], []
    nights = ["2026-03-14T04:12:00", "2026-03-15T03:48:00"]
    # calibration: own generator, so the images' other draws stay what they were
    calibration = np.random.default_rng([seed, 15])
    reference_catalog(sky, seed).to_parquet(out / "reference.parquet", index=False)
    for k in range(count):
        band = bands[k % len(bands)]
        pointing = k // len(bands)
        centre = (ra + 0.5 * width_deg * pointing / np.cos(np.radians(dec)),
                  dec + 0.1 * width_deg * pointing)
        date = nights[pointing % len(nights)]
        transparency = round(float(calibration.uniform(0, 0.35)), 4)
        image = make_image((size, size), seed=seed * 1000 + k, band=band, ra=centre[0],
                           dec=centre[1], rotation_deg=float(rng.uniform(0, 5)),
                           pixel_scale=pixel_scale, date_obs=date, sources=sky,
                           transparency=transparency, write_magzero=k % 4 != 1)
        image_id = f"sky_{band}_{k + 1:03d}"
        path = image.write(out / f"{image_id}.fits", compress=compress)
        paths.append(path)
        if progress is not None:
            progress(k + 1, count, path)
        image.truth.to_csv(out / "truth" / f"{image_id}.csv", index=False, float_format="%.8g")
        meta.append({"file": path.name, "seed": seed * 1000 + k, "image_id": image_id, "band": band,
                     "ra_center": round(centre[0], 6), "dec_center": round(centre[1], 6),
                     "size": size, "pixel_scale": pixel_scale,
                     "seeing_arcsec": BANDS[band][2] if band in BANDS else None,
                     "zero_point": round(BANDS.get(band, BANDS["r"])[0] - transparency, 6),
                     "header_zero_point": image.header.get("MAGZERO"),
                     "transparency": transparency, "date_obs": date,
                     "n_stars": int((image.truth["kind"] == "star").sum()),
                     "n_galaxies": int((image.truth["kind"] == "galaxy").sum())})
    (out / "metadata.json").write_text(json.dumps(
        {"generator": "skysurvey.synth", "version": __version__,
         "command": command,
         "seed": seed, "count": count, "size": size,
         "bands": list(bands), "images": meta}, indent=2) + "\n")
    return paths
