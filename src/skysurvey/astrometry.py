"""Sky coordinates from any FITS celestial WCS, always returned in ICRS.

A header may describe its sky in ICRS, FK5 or FK4 (``RADESYS``, with ``EQUINOX`` or the old
``EPOCH``), in galactic (``GLON``/``GLAT``), supergalactic (``SLON``/``SLAT``) or ecliptic
(``ELON``/``ELAT``) coordinates, with any projection and SIP or TPV distortion. astropy's WCS
applies the projection and the distortion (``all_pix2world``); this module then converts the
header's frame to ICRS, all positions at once (one vectorised ``SkyCoord`` transform). ICRS
headers skip ``SkyCoord`` altogether.

Frame rules (FITS WCS Paper II, as wcslib applies them): ``RADESYS`` missing means ICRS without
``EQUINOX``, FK4 for an equinox before 1984, FK5 from 1984; FK4 equinoxes are Besselian, FK5
Julian; an FK4 position's epoch of observation is ``DATE-OBS``/``MJD-OBS`` when the header has
one (astropy's ``wcs_to_celestial_frame`` always uses the equinox instead). astropy 8 reads an
``ELON``/``ELAT`` header as ICRS: here it is the barycentric mean ecliptic of the header's
equinox (J2000 when none is given).
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
from astropy.wcs import WCS

__all__ = ["HEALPIX_ORDER", "POLE_TOLERANCE_ARCSEC", "REJECTED_WCS", "ROUND_TRIP_PIXELS",
           "celestial_wcs", "frame_name", "healpix_29", "pixel_to_icrs", "position_angle",
           "sky_frame", "sky_positions", "wcs_problem"]

#: Order-29 HEALPix (the HATS ``_healpix_29`` column): nside = 2**29.
HEALPIX_ORDER = 29

# the header's frame name (images.wcs_frame) by longitude axis type, for non-equatorial axes
_AXIS_FRAMES = {"GLON": "galactic", "ELON": "ecliptic", "SLON": "supergalactic"}


#: Every note of a celestial WCS that was there but not used starts with one of these
#: (detect.py then sets the BAD_WCS flag on the image's sources: their ra/dec are null).
REJECTED_WCS = ("broken WCS", "unusable WCS", "unsupported celestial frame")
#: A WCS that does not map its own sky positions back within this many pixels is not used.
ROUND_TRIP_PIXELS = 0.01
#: LONPOLE/LATPOLE may move positions by at most this much from wcslib's defaults (arcsec).
POLE_TOLERANCE_ARCSEC = 0.01
_WCS_NUMBERS = re.compile(r"^(CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|PC\d+_\d|CD\d+_\d|LONPOLE|LATPOLE)")


def celestial_wcs(header, notes: list[str] | None = None) -> tuple[WCS | None, str | None]:
    """The image's 2-D celestial WCS and the name of its sky frame.

    Returns ``(None, None)`` when the header has no usable celestial WCS; the reason (no
    celestial axes, a broken WCS, a frame we cannot convert, a WCS that cannot be trusted:
    see :func:`wcs_problem`) is appended to *notes*. Positions are never computed from a WCS
    that was rejected. Frame names: ``icrs``, ``fk5``, ``fk4``, ``fk4-no-e``, ``galactic``,
    ``ecliptic``, ``supergalactic``.
    """
    notes = [] if notes is None else notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2)
            if not wcs.has_celestial:
                notes.append("no celestial WCS")
                return None, None
            wcs.all_pix2world([[0.0, 0.0]], 0)  # a broken WCS fails here
            problem = wcs_problem(header, wcs)
    except Exception as exc:
        notes.append(f"broken WCS ({type(exc).__name__}): ra/dec null")
        return None, None
    if problem:
        notes.append(f"unusable WCS ({problem}): ra/dec null")
        return None, None
    name = frame_name(wcs)
    if name is None:
        notes.append(f"unsupported celestial frame ({wcs.wcs.ctype[wcs.wcs.lng][:4].strip('-')})")
        return None, None
    return wcs, name


def _image_points(header) -> np.ndarray:
    """0-based pixel positions spanning the image: corners, edge middles and the centre."""
    nx = header.get("ZNAXIS1", header.get("NAXIS1"))
    ny = header.get("ZNAXIS2", header.get("NAXIS2"))
    nx = float(nx) if isinstance(nx, int) and nx > 1 else 2.0
    ny = float(ny) if isinstance(ny, int) and ny > 1 else 2.0
    xs, ys = np.meshgrid([0.0, (nx - 1) / 2, nx - 1], [0.0, (ny - 1) / 2, ny - 1])
    return np.column_stack([xs.ravel(), ys.ravel()])


def _separation_arcsec(a: np.ndarray, b: np.ndarray) -> float:
    """Largest angular distance between the (lon, lat) rows of *a* and *b*, arcsec."""
    la, ba, lb, bb = (np.radians(v) for v in (a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
    h = (np.sin((bb - ba) / 2) ** 2
         + np.cos(ba) * np.cos(bb) * np.sin((lb - la) / 2) ** 2)
    return float(np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))).max() * 3600)


def wcs_problem(header, wcs: WCS) -> str | None:
    """Why *wcs* (read from *header*) must not give positions, or None when it may.

    - a WCS keyword whose value is not a finite number (``CRVAL1 = NaN`` reads as 0: RA 0);
    - a singular linear transformation (PC/CD rows proportional: every source on a line);
    - sky positions over the image that are not finite, or that do not map back to their
      pixels within :data:`ROUND_TRIP_PIXELS`;
    - LONPOLE/LATPOLE that move positions away from wcslib's defaults for this projection
      (more than :data:`POLE_TOLERANCE_ARCSEC`): almost always a wrong value, which shifts
      and rotates the whole field silently.
    """
    for card in header.cards:
        key = str(card.keyword)
        if _WCS_NUMBERS.match(key):
            value = card.value
            if isinstance(value, bool) or not isinstance(value, int | float) or not \
                    math.isfinite(value):
                return f"{key} = {str(value).strip() or 'blank'} is not a finite number"
    matrix = wcs.celestial.pixel_scale_matrix
    scale = float(np.abs(matrix).max())
    if not np.isfinite(matrix).all() or scale == 0 or \
            abs(float(np.linalg.det(matrix))) <= 1e-9 * scale**2:
        return "its PC/CD matrix is singular"
    pixels = _image_points(header)
    world = wcs.all_pix2world(pixels, 0)
    if not np.isfinite(world).all():
        return "no finite sky position for part of the image"
    try:  # quiet: the best solution where the iteration did not converge, judged below
        back = wcs.all_world2pix(world, 0, tolerance=1e-6, maxiter=100, quiet=True)
    except Exception as exc:  # wcslib's errors
        return f"sky positions do not map back to pixels ({type(exc).__name__})"
    error = float(np.abs(back - pixels).max()) if np.isfinite(back).all() else math.inf
    if not error <= ROUND_TRIP_PIXELS:
        return f"pixel -> sky -> pixel is off by {error:.3g} px"
    poles = [k for k in ("LONPOLE", "LATPOLE") if k in header]
    if poles:
        default = _default_poles(wcs, poles).all_pix2world(pixels, 0)
        shift = _separation_arcsec(world, default)
        if shift > POLE_TOLERANCE_ARCSEC:
            guilty = [k for k in poles if _separation_arcsec(world, _default_poles(
                wcs, (k,)).all_pix2world(pixels, 0)) > POLE_TOLERANCE_ARCSEC]
            values = ", ".join(f"{k} = {header[k]}" for k in guilty or poles)
            return (f"{values} moves positions by up to {shift:.3g} arcsec from the "
                    "projection's defaults")
    return None


def _default_poles(wcs: WCS, keys) -> WCS:
    """A copy of *wcs* with the poles named in *keys* (``LONPOLE``, ``LATPOLE``) left to
    wcslib: the WCS of the header without those cards (wcslib starts from LONPOLE undefined
    and LATPOLE +90, then works out the defaults), without parsing the header again (that
    was half of :func:`celestial_wcs`'s time on a header with LONPOLE)."""
    out = wcs.deepcopy()
    if "LONPOLE" in keys:
        del out.wcs.lonpole
    if "LATPOLE" in keys:
        del out.wcs.latpole
    out.wcs.set()
    return out


def frame_name(wcs: WCS) -> str | None:
    """The sky frame the WCS's world coordinates are in (None when not convertible)."""
    axis = wcs.wcs.ctype[wcs.wcs.lng][:4]
    if axis == "RA--":
        return _radesys(wcs).lower()
    return _AXIS_FRAMES.get(axis)


def _radesys(wcs: WCS) -> str:
    radesys = wcs.wcs.radesys.strip().upper()
    if radesys:
        return radesys
    equinox = wcs.wcs.equinox
    if np.isnan(equinox):
        return "ICRS"
    return "FK4" if equinox < 1984.0 else "FK5"


def _obstime(wcs: WCS):
    from astropy.time import Time

    if wcs.wcs.dateobs:
        try:
            return Time(wcs.wcs.dateobs, scale="utc")
        except ValueError:
            pass
    if np.isfinite(wcs.wcs.mjdobs) and wcs.wcs.mjdobs > 0:
        return Time(wcs.wcs.mjdobs, format="mjd", scale="utc")
    return None


def sky_frame(wcs: WCS):
    """The astropy frame of the WCS's world coordinates; None for ICRS (no conversion)."""
    from astropy.coordinates import (
        FK4,
        FK5,
        BarycentricMeanEcliptic,
        FK4NoETerms,
        Galactic,
        Supergalactic,
    )
    from astropy.time import Time

    name = frame_name(wcs)
    equinox = wcs.wcs.equinox
    if name == "icrs":
        return None
    if name in ("fk4", "fk4-no-e"):
        kwargs = {"equinox": Time(1950.0 if np.isnan(equinox) else equinox, format="byear")}
        obstime = _obstime(wcs)
        if obstime is not None:
            kwargs["obstime"] = obstime
        return (FK4 if name == "fk4" else FK4NoETerms)(**kwargs)
    if name == "fk5":
        return FK5(equinox=Time(2000.0 if np.isnan(equinox) else equinox, format="jyear"))
    if name == "galactic":
        return Galactic()
    if name == "supergalactic":
        return Supergalactic()
    if name == "ecliptic":
        if np.isnan(equinox):
            return BarycentricMeanEcliptic(equinox=Time("J2000"))
        fmt = "byear" if equinox < 1984.0 else "jyear"
        return BarycentricMeanEcliptic(equinox=Time(equinox, format=fmt))
    raise ValueError(f"unsupported celestial frame {wcs.wcs.ctype[wcs.wcs.lng]!r}")


def pixel_to_icrs(wcs: WCS, x, y, frame=False) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (ra, dec) in degrees of 0-based pixel positions, through the full WCS.

    *frame* is :func:`sky_frame`'s result when the caller has it (False: work it out).
    Positions the WCS cannot map come back as NaN.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    world = wcs.all_pix2world(x, y, 0)
    lon, lat = np.asarray(world[wcs.wcs.lng], float), np.asarray(world[wcs.wcs.lat], float)
    if frame is False:
        frame = sky_frame(wcs)
    if frame is None or lon.size == 0:
        return np.mod(lon, 360.0), lat
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    icrs = SkyCoord(lon * u.deg, lat * u.deg, frame=frame).icrs
    return icrs.ra.deg, icrs.dec.deg


def position_angle(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Position angle (degrees east of north, in [0, 360)) of point 2 seen from point 1."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    dra = r2 - r1
    pa = np.arctan2(np.sin(dra) * np.cos(d2),
                    np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(dra))
    return np.mod(np.degrees(pa), 360.0)


def sky_positions(wcs: WCS, x, y, theta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ICRS ra, dec and the sky position angle of each source's major axis.

    *theta* is the pixel-frame angle of the major axis (radians, counter-clockwise from +x).
    The angle on the sky, ``theta_world``, is in degrees east of ICRS north, in [0, 180) (an
    axis, not a direction): the ICRS direction of a one-pixel step along the major axis, so the
    local WCS (rotation, flip, SIP/TPV distortion, the frame change) is fully accounted for.
    One conversion for positions and steps together.
    """
    x, y, theta = (np.asarray(v, float) for v in (x, y, theta))
    n = x.size
    frame = sky_frame(wcs)
    ra, dec = pixel_to_icrs(wcs, np.concatenate([x, x + np.cos(theta)]),
                            np.concatenate([y, y + np.sin(theta)]), frame)
    pa = np.mod(position_angle(ra[:n], dec[:n], ra[n:], dec[n:]), 180.0)
    return ra[:n], dec[:n], pa


def healpix_29(ra, dec) -> np.ndarray:
    """NESTED HEALPix index at order 29 of ICRS (ra, dec) in degrees (int64; -1 where NaN)."""
    from astropy import units as u
    from astropy_healpix import core

    ra = np.asarray(ra, float)
    dec = np.asarray(dec, float)
    out = np.full(ra.shape, -1, dtype=np.int64)
    good = np.isfinite(ra) & np.isfinite(dec)
    if good.any():
        out[good] = core.lonlat_to_healpix(ra[good] * u.deg, dec[good] * u.deg,
                                           2**HEALPIX_ORDER, order="nested")
    return out
