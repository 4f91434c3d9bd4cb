"""Per-object statistics, arrays only: incremental sufficient statistics of positions, nights
and (object, band) photometry (:class:`Stats`, merged exactly when a night is added), and the
published columns derived from them, variability (a chi2 test against a constant magnitude,
with a systematic floor) included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry import group, sorted_unique, unit_vectors, vectors_to_radec
from .model import Detections

__all__ = [
    "MIN_VARIABLE_POINTS",
    "NIGHT_SPAN",
    "N_BANDS_MAX",
    "Stats",
    "chi2_threshold",
    "derive",
    "detection_stats",
    "error_scale",
    "merge_stats",
    "object_statistics",
]

MIN_VARIABLE_POINTS = 3
NIGHT_SPAN = 1 << 22  # ordinal days (0001-01-01 = 1) stay below this
N_BANDS_MAX = 1 << 12


def chi2_threshold(dof: np.ndarray, false_alarm: float) -> np.ndarray:
    """Upper chi2 quantile (Wilson-Hilferty), so no scipy is needed.

    Parameters
    ----------
    dof : numpy.ndarray
        Degrees of freedom (values below 1 count as 1).
    false_alarm : float
        The probability of exceeding the quantile.

    Returns
    -------
    numpy.ndarray
        The chi2 values exceeded with probability *false_alarm*.
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - false_alarm)
    k = np.maximum(np.asarray(dof, float), 1.0)
    return k * (1 - 2 / (9 * k) + z * np.sqrt(2 / (9 * k))) ** 3


def error_scale(phot: dict, n_bands: int, min_objects: int = 20) -> np.ndarray:
    """Per band: how much the quoted errors understate the scatter of (mostly constant) objects.

    Parameters
    ----------
    phot : dict
        :func:`derive`'s photometry columns (``n``, ``band``, ``chi2_reduced``).
    n_bands : int
        The number of band indices.
    min_objects : int
        Fewer objects with enough points than this cannot tell: 1.

    Returns
    -------
    numpy.ndarray
        Per band, the median reduced chi2 of the objects with at least
        :data:`MIN_VARIABLE_POINTS` points, never below 1 (errors are never shrunk).
    """
    scale = np.ones(max(n_bands, 1))
    enough = phot["n"] >= MIN_VARIABLE_POINTS
    for b in range(n_bands):
        values = phot["chi2_reduced"][enough & (phot["band"] == b)]
        if values.size >= min_objects:
            scale[b] = max(1.0, float(np.median(values)))
    return scale


@dataclass
class Stats:
    """Sufficient statistics of objects (index = object) and of (object, band) photometry.

    Kept beside each unit's tables (``objects/hpx5=P/_stats-k<K>-<N>.parquet``, skipped by
    Parquet readers) so that a new night merges into them without re-reading old sources.
    """

    sw: np.ndarray  # sum of position weights
    vec: np.ndarray  # (n, 3) weighted sum of unit vectors
    n_det: np.ndarray
    first: np.ndarray  # min mjd (inf: none)
    last: np.ndarray  # max mjd (-inf: none)
    night_pairs: np.ndarray  # unique obj * NIGHT_SPAN + night (ordinal day)
    p_key: np.ndarray  # obj * N_BANDS_MAX + band index, sorted
    p_n: np.ndarray
    p_sw: np.ndarray  # sum of photometric weights
    p_mean: np.ndarray  # weighted mean magnitude
    p_m2w: np.ndarray  # sum w (m - mean)^2
    p_mu: np.ndarray  # unweighted mean
    p_m2u: np.ndarray  # sum (m - mu)^2

    def __len__(self) -> int:
        return len(self.sw)


def detection_stats(det: Detections, n_obj: int, floor: float) -> Stats:
    """The sufficient statistics of a set of detections.

    Parameters
    ----------
    det : Detections
        With ``det.obj`` set and ``det.band`` a band index.
    n_obj : int
        The number of objects (indices ``0 .. n_obj - 1``).
    floor : float
        The systematic magnitude error added in quadrature to the photometric weights.

    Returns
    -------
    Stats
    """
    o = det.obj
    vec = unit_vectors(det.ra, det.dec) * det.weight[:, None]
    first = np.full(n_obj, np.inf)
    last = np.full(n_obj, -np.inf)
    good = np.isfinite(det.mjd)
    np.minimum.at(first, o[good], det.mjd[good])
    np.maximum.at(last, o[good], det.mjd[good])
    known = det.night >= 0
    use = np.isfinite(det.mag) & np.isfinite(det.mag_err) & (det.mag_err > 0)
    m, e = det.mag[use], det.mag_err[use]
    w = 1 / (e**2 + floor**2)
    uk, inv = group(o[use].astype(np.int64) * N_BANDS_MAX + det.band[use])
    n = np.bincount(inv, minlength=len(uk)).astype(float)
    sw = np.bincount(inv, w, minlength=len(uk))
    mean = np.bincount(inv, w * m, minlength=len(uk)) / np.where(sw > 0, sw, 1)
    mu = np.bincount(inv, m, minlength=len(uk)) / np.where(n > 0, n, 1)
    return Stats(
        sw=np.bincount(o, det.weight, minlength=n_obj),
        vec=np.stack([np.bincount(o, vec[:, i], minlength=n_obj) for i in range(3)], axis=1),
        n_det=np.bincount(o, minlength=n_obj), first=first, last=last,
        night_pairs=sorted_unique(o[known].astype(np.int64) * NIGHT_SPAN + det.night[known]),
        p_key=uk, p_n=n, p_sw=sw, p_mean=mean,
        p_m2w=np.bincount(inv, w * (m - mean[inv]) ** 2, minlength=len(uk)),
        p_mu=mu, p_m2u=np.bincount(inv, (m - mu[inv]) ** 2, minlength=len(uk)))


def merge_stats(a: Stats, b: Stats) -> Stats:
    """Statistics of the union of two sets of detections.

    Means and squared deviations merge exactly (Chan et al.'s pairwise update).

    Parameters
    ----------
    a, b : Stats
        The same object indexing; *b* may hold more objects.

    Returns
    -------
    Stats
    """
    n_obj = max(len(a), len(b))

    def pad(x, fill):
        out = np.full((n_obj, *x.shape[1:]), fill, dtype=x.dtype if x.dtype != int else float)
        out[:len(x)] = x
        return out

    keys = sorted_unique(np.concatenate([a.p_key, b.p_key]))
    ia, ib = np.searchsorted(keys, a.p_key), np.searchsorted(keys, b.p_key)

    def spread(idx, values):
        out = np.zeros(len(keys))
        out[idx] = values
        return out

    na, nb = spread(ia, a.p_n), spread(ib, b.p_n)
    wa, wb = spread(ia, a.p_sw), spread(ib, b.p_sw)
    ma, mb = spread(ia, a.p_mean), spread(ib, b.p_mean)
    ua, ub = spread(ia, a.p_mu), spread(ib, b.p_mu)
    n, sw = na + nb, wa + wb
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sw > 0, (wa * ma + wb * mb) / sw, 0.0)
        mu = np.where(n > 0, (na * ua + nb * ub) / n, 0.0)
        m2w = (spread(ia, a.p_m2w) + spread(ib, b.p_m2w)
               + np.where(sw > 0, wa * wb / sw, 0.0) * (ma - mb) ** 2)
        m2u = (spread(ia, a.p_m2u) + spread(ib, b.p_m2u)
               + np.where(n > 0, na * nb / n, 0.0) * (ua - ub) ** 2)
    return Stats(
        sw=pad(a.sw, 0.0) + pad(b.sw, 0.0), vec=pad(a.vec, 0.0) + pad(b.vec, 0.0),
        n_det=pad(a.n_det, 0) + pad(b.n_det, 0),
        first=np.minimum(pad(a.first, np.inf), pad(b.first, np.inf)),
        last=np.maximum(pad(a.last, -np.inf), pad(b.last, -np.inf)),
        night_pairs=sorted_unique(np.concatenate([a.night_pairs, b.night_pairs])),
        p_key=keys, p_n=n, p_sw=sw, p_mean=mean, p_m2w=m2w, p_mu=mu, p_m2u=m2u)


def derive(stats: Stats, n_bands: int, false_alarm: float) -> tuple[dict, dict]:
    """The published columns of ``objects`` and ``object_photometry`` from the statistics.

    Parameters
    ----------
    stats : Stats
        Per object and (object, band).
    n_bands : int
        The number of band indices.
    false_alarm : float
        The false-alarm probability of the chi2 variability test.

    Returns
    -------
    objects : dict
        Per object: ``ra``, ``dec``, errors, ``n_detections``, ``n_nights``, first/last mjd,
        ``variable``, ``transient_candidate``.
    phot : dict
        Per (object, band): ``obj``, ``band``, ``n``, ``mean_mag``, ``mean_mag_err``,
        ``scatter``, ``chi2_reduced``.
    """
    n_obj = len(stats)
    with np.errstate(invalid="ignore", divide="ignore"):  # objects left without detections
        ra, dec = vectors_to_radec(stats.vec)
        pos_err = np.where(stats.sw > 0, 1 / np.sqrt(stats.sw), np.nan)
    n_nights = np.bincount(stats.night_pairs // NIGHT_SPAN, minlength=n_obj)[:n_obj]
    objects = {"ra": ra, "dec": dec, "ra_err": pos_err, "dec_err": pos_err,
               "n_detections": stats.n_det, "n_nights": n_nights,
               "first_mjd": np.where(np.isfinite(stats.first), stats.first, np.nan),
               "last_mjd": np.where(np.isfinite(stats.last), stats.last, np.nan)}
    n = stats.p_n
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2_red = np.where(n > 1, stats.p_m2w / (n - 1), np.nan)
        scatter = np.where(n > 1, np.sqrt(stats.p_m2u / (n - 1)), np.nan)
        err = 1 / np.sqrt(stats.p_sw)
    phot = {"obj": stats.p_key // N_BANDS_MAX, "band": stats.p_key % N_BANDS_MAX,
            "n": n.astype(np.int64), "mean_mag": stats.p_mean, "mean_mag_err": err,
            "scatter": scatter, "chi2_reduced": chi2_red}
    scale = error_scale(phot, n_bands)
    flagged = ((n >= MIN_VARIABLE_POINTS)
               & (stats.p_m2w / scale[phot["band"]] > chi2_threshold(n - 1, false_alarm)))
    variable = np.zeros(n_obj, bool)
    variable[phot["obj"][flagged]] = True
    objects["variable"] = variable
    objects["transient_candidate"] = n_nights == 1
    return objects, phot


def object_statistics(det: Detections, n_obj: int, bands: Sequence[str], floor: float,
                      false_alarm: float) -> tuple[dict, dict]:
    """Per-object columns and the per-(object, band) photometry of all detections.

    Parameters
    ----------
    det : Detections
        With ``det.obj`` set.
    n_obj : int
        The number of objects.
    bands : sequence of str
        The band names (``det.band`` indexes them).
    floor, false_alarm : float
        As in :class:`BuildConfig`.

    Returns
    -------
    objects, phot : dict
        :func:`derive`'s columns.
    """
    return derive(detection_stats(det, n_obj, floor), len(bands), false_alarm)
