"""A synthetic multi-night survey of one field, with truth: the yardstick of the objects step.

One patch of sky (stars, a few galaxies) is observed on several nights in two bands. Every
epoch has its own pointing (a dither of a few arcseconds), seeing and date; a fraction of the
stars vary sinusoidally (semi-amplitude 0.15-0.8 mag) and a few transients shine on one night
only. Each image is drawn by :func:`skysurvey.synth.make_image` from the shared sky, so the
detection pipeline sees realistic images. Truth:

- ``truth/objects.csv``: one row per true object (``true_id``, kind, position, r magnitude,
  colour, ``amplitude`` (semi-amplitude, mag), ``period_days``, ``phase``, ``transient_night``
  (-1 for non-transients));
- ``truth/<image_id>.csv``: the sources drawn in that image, with their ``true_id``.

Same seed, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.time import Time

from skysurvey import __version__

from .synth import make_image, make_sky_sources

__all__ = ["FIRST_NIGHT", "SCORER_SQL", "epoch_sources", "evaluate_objects", "read_as_user",
           "survey_sky", "write_survey"]

FIRST_NIGHT = "2026-04-01T03:00:00"


def survey_sky(rng, *, n_stars, n_galaxies, n_transients, ra, dec, radius_deg,
               variable_fraction, variable_faint_limit, nights,
               n_bright=0, faint_limit=24.0) -> pd.DataFrame:
    """The true objects: shared sky plus variability and transients (``true_id`` = row).

    Objects fainter than *faint_limit* (r, well below the detection limit of a 60 s image)
    are dropped: drawing them costs most of the time and changes no detection.

    Parameters
    ----------
    rng : numpy.random.Generator
        The survey's random numbers.
    n_stars, n_galaxies, n_transients, n_bright : int
        Objects drawn (bright: extra stars of r 17-21).
    ra, dec, radius_deg : float
        The field's centre and radius, degrees.
    variable_fraction, variable_faint_limit : float
        Fraction of the stars brighter than the limit that vary.
    nights : int
        Nights observed (transients shine on one of them).
    faint_limit : float
        Objects fainter than this r are dropped.

    Returns
    -------
    pandas.DataFrame
        One row per true object.
    """
    sky = make_sky_sources(rng, n_stars, n_galaxies, ra, dec, radius_deg)
    sky = sky[sky["mag_r"] < faint_limit].reset_index(drop=True)
    if n_bright:  # more bright stars than the number counts give: the variability yardstick
        bright = make_sky_sources(rng, n_bright, 0, ra, dec, radius_deg)
        bright["mag_r"] = rng.uniform(17.0, 21.0, n_bright)
        sky = pd.concat([sky, bright], ignore_index=True)
    n = len(sky)
    is_star = (sky["kind"] == "star").to_numpy()
    candidates = is_star & (sky["mag_r"].to_numpy() < variable_faint_limit)
    variable = candidates & (rng.uniform(size=n) < variable_fraction)
    sky["amplitude"] = np.where(variable, rng.uniform(0.15, 0.8, n), 0.0)
    sky["period_days"] = np.where(variable, rng.uniform(0.3, 15.0, n), 0.0)
    sky["phase"] = rng.uniform(0.0, 1.0, n)
    sky["transient_night"] = -1
    if n_transients:
        cosd = np.cos(np.radians(dec))
        extra = pd.DataFrame({
            "kind": "star",
            "ra": ra + rng.uniform(-0.7, 0.7, n_transients) * radius_deg / cosd,
            "dec": dec + rng.uniform(-0.7, 0.7, n_transients) * radius_deg,
            "mag_r": rng.uniform(18.0, 20.5, n_transients),
            "colour": rng.normal(0.0, 0.3, n_transients),
            "r_eff": 0.0, "sersic_n": 0.0, "ellipticity": 0.0,
            "angle": 0.0, "amplitude": 0.0, "period_days": 0.0, "phase": 0.0,
            "transient_night": rng.integers(0, nights, n_transients),
        })
        sky = pd.concat([sky, extra], ignore_index=True)
    sky.insert(0, "true_id", np.arange(len(sky)))
    return sky


def epoch_sources(sky: pd.DataFrame, night: int, mjd: float, mjd0: float) -> pd.DataFrame:
    """The sky as seen at *mjd*: variables at their phase, only tonight's transients.

    Parameters
    ----------
    sky : pandas.DataFrame
        :func:`survey_sky`'s objects.
    night : int
        The night observed.
    mjd, mjd0 : float
        The epoch and the first night's MJD.

    Returns
    -------
    pandas.DataFrame
        The objects drawn at that epoch, magnitudes at their phase.
    """
    visible = (sky["transient_night"] < 0) | (sky["transient_night"] == night)
    epoch = sky[visible].reset_index(drop=True).copy()
    period = np.where(epoch["period_days"] > 0, epoch["period_days"], 1.0)
    delta = epoch["amplitude"] * np.sin(2 * np.pi * ((mjd - mjd0) / period + epoch["phase"]))
    epoch["mag_r"] = epoch["mag_r"] + delta
    return epoch


def _attach_true_ids(truth: pd.DataFrame, epoch: pd.DataFrame) -> pd.DataFrame:
    """The drawn sources keep no index: find each one's row of *epoch* by position."""
    from scipy.spatial import cKDTree

    cosd = np.cos(np.radians(epoch["dec"].to_numpy()))
    tree = cKDTree(np.c_[epoch["ra"].to_numpy() * cosd, epoch["dec"].to_numpy()])
    tcos = np.cos(np.radians(truth["dec"].to_numpy()))
    dist, idx = tree.query(np.c_[truth["ra"].to_numpy() * tcos, truth["dec"].to_numpy()])
    out = truth.copy()
    out.insert(0, "true_id", np.where(dist * 3600 < 0.01, epoch["true_id"].to_numpy()[idx], -1))
    return out


def write_survey(out_dir, *, nights=10, bands=("g", "r"), size=512, pixel_scale=0.25,
                 seed=7, ra=150.1, dec=2.2, n_stars=3000, n_galaxies=300, n_bright=150,
                 n_transients=6,
                 variable_fraction=0.4, variable_faint_limit=21.0, dither_arcsec=8.0,
                 seeing_arcsec=(0.8, 1.5), compress: str | None = None,
                 command: str | None = None) -> list[Path]:
    """Images ``n<NN>_<band>.fits`` (one per night and band), truth tables, ``metadata.json``.

    Returns the image paths. Object counts are per 512 x 512 field (scaled with *size*).
    *variable_faint_limit*: variables are drawn among stars brighter
    than this r magnitude (a variable at the detection limit cannot be recognised).

    Parameters
    ----------
    out_dir : path
        Where the images, ``truth/`` and ``metadata.json`` go.
    nights, bands, size, pixel_scale, seed : int, tuple of str, int, float, int
        Epochs, filters, image side (pixels), arcsec per pixel, random seed.
    ra, dec : float
        Field centre, degrees.
    n_stars, n_galaxies, n_bright, n_transients : int
        Objects per 512 x 512 field.
    variable_fraction, variable_faint_limit : float
        Which stars vary.
    dither_arcsec : float
        Pointing offsets, uniform within +- this.
    seeing_arcsec : tuple of float
        FWHM range.
    compress : str, optional
        FITS compression of the written images.
    command : str, optional
        Recorded in ``metadata.json``.

    Returns
    -------
    list of pathlib.Path
        The images written.
    """
    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    half_deg = 0.5 * size * pixel_scale / 3600
    area = (size / 512) ** 2  # the counts are per 512 x 512 field: same density at any size
    sky = survey_sky(rng, n_stars=round(n_stars * area), n_galaxies=round(n_galaxies * area),
                     n_transients=n_transients, n_bright=round(n_bright * area),
                     ra=ra, dec=dec, radius_deg=half_deg + 2 * dither_arcsec / 3600,
                     variable_fraction=variable_fraction,
                     variable_faint_limit=variable_faint_limit, nights=nights)
    mjd0 = Time(FIRST_NIGHT, format="isot", scale="utc").mjd
    paths, meta = [], []
    cosd = np.cos(np.radians(dec))
    for night in range(nights):
        for k, band in enumerate(bands):
            mjd = mjd0 + night * 1.0 + rng.uniform(0.0, 0.2) + 0.02 * k
            date = Time(mjd, format="mjd", scale="utc").isot[:19]
            d_ra, d_dec = rng.uniform(-dither_arcsec, dither_arcsec, 2) / 3600
            seeing = float(rng.uniform(*seeing_arcsec))
            epoch = epoch_sources(sky, night, mjd, mjd0)
            image_seed = seed * 10_000 + night * 10 + k
            image = make_image((size, size), seed=image_seed, band=band, ra=ra + d_ra / cosd,
                               dec=dec + d_dec, pixel_scale=pixel_scale, fwhm_arcsec=seeing,
                               rotation_deg=float(rng.uniform(-2, 2)), date_obs=date,
                               sources=epoch)
            image_id = f"n{night:02d}_{band}"
            paths.append(image.write(out / f"{image_id}.fits", compress=compress))
            _attach_true_ids(image.truth, epoch).to_csv(
                out / "truth" / f"{image_id}.csv", index=False, float_format="%.8g")
            meta.append({"image_id": image_id, "band": band, "night": night, "seed": image_seed,
                         "date_obs": date, "seeing_arcsec": round(seeing, 3),
                         "ra_center": round(ra + d_ra / cosd, 7),
                         "dec_center": round(dec + d_dec, 7)})
    sky.to_csv(out / "truth" / "objects.csv", index=False, float_format="%.8g")
    (out / "metadata.json").write_text(json.dumps(
        {"generator": "skysurvey.synth_survey", "version": __version__, "command": command,
         "seed": seed, "nights": nights, "bands": list(bands), "size": size,
         "pixel_scale": pixel_scale, "images": meta}, indent=2) + "\n")
    return paths


def _attribute(near, blend, flux, ids) -> int:
    """The true id of one detection: -1 none, -2 ambiguous (comparable neighbour)."""
    if not near:
        return -1
    best = max(near, key=lambda k: flux[k])
    if any(k != best and flux[k] >= 0.25 * flux[best] for k in blend):
        return -2
    return int(ids[best])


#: What the scorer reads, as a user reads it: SQL on the catalog's DuckDB tables and views
#: (``sources`` and ``associations`` keep only the images with a record). A duplicated or
#: orphaned table file counts in the scores as it counts in every user's query.
SCORER_SQL = {
    "sources": "SELECT image_id, source_id, ra, dec FROM sources ORDER BY image_id, source_id",
    "associations": "SELECT image_id, source_id, object_id FROM associations",
    "objects": "SELECT object_id, variable, transient_candidate FROM objects",
    "photometry": "SELECT object_id, n FROM object_photometry",
}


def read_as_user(catalog: str) -> dict[str, pd.DataFrame]:
    """The :data:`SCORER_SQL` tables, through one :func:`skysurvey.queries.connect`.

    Parameters
    ----------
    catalog : str
        Local folder or ``s3://`` URI.

    Returns
    -------
    dict of pandas.DataFrame
        By :data:`SCORER_SQL` name.
    """
    from .queries import connect, run_query

    con = connect(catalog)
    try:
        return {name: run_query(sql, catalog, con=con) for name, sql in SCORER_SQL.items()}
    finally:
        con.close()


def evaluate_objects(catalog: str, survey_dir, *, isolation_arcsec: float = 3.0,
                     bright_mag: float = 21.0, match_arcsec: float = 1.0,
                     blend_arcsec: float = 2.0) -> dict:
    """Score a built objects table against the survey's truth (the catalog as users query it,
    local folder or ``s3://``, see :func:`read_as_user`).

    Each detection is given the brightest true object drawn within *match_arcsec* of it in its
    image; it is ambiguous (left out of the mixing figure) when another true object within
    *blend_arcsec* has at least a quarter of that flux: an unresolved blend holds both.
    "Seen 6 times" for variables and constant stars counts the measurements the
    variability test can use (``object_photometry.n`` summed over bands: blended or truncated
    detections are left out of it). Returns the figures of the targets and their denominators,
    and what should be zero: object rows sharing an id, detections linked twice, detections
    with a position linked to no object.

    Parameters
    ----------
    catalog : str
        The built catalog (local folder or ``s3://``).
    survey_dir : path
        The survey's folder (its ``truth/``).
    isolation_arcsec, bright_mag, match_arcsec, blend_arcsec : float
        Isolation radius, constant stars' magnitude limit, match and blend radii.

    Returns
    -------
    dict
        The scores and their denominators.
    """
    from scipy.spatial import cKDTree

    survey = Path(survey_dir)
    truth = pd.read_csv(survey / "truth" / "objects.csv")
    tables = read_as_user(str(catalog))
    sources, assoc, objects = tables["sources"], tables["associations"], tables["objects"]
    rows = []
    for image_id, group in sources.groupby("image_id"):
        drawn = pd.read_csv(survey / "truth" / f"{image_id}.csv")
        cosd = np.cos(np.radians(drawn["dec"].to_numpy()))
        tree = cKDTree(np.c_[drawn["ra"].to_numpy() * cosd, drawn["dec"].to_numpy()])
        gcos = np.cos(np.radians(group["dec"].to_numpy()))
        xy = np.c_[group["ra"].to_numpy() * gcos, group["dec"].to_numpy()]
        near = tree.query_ball_point(xy, match_arcsec / 3600)
        blend = tree.query_ball_point(xy, blend_arcsec / 3600)
        flux = drawn["flux"].to_numpy()
        ids = drawn["true_id"].to_numpy()
        true_id = [_attribute(n, b, flux, ids) for n, b in zip(near, blend, strict=True)]
        rows.append(pd.DataFrame({"image_id": image_id, "source_id": group["source_id"],
                                  "true_id": true_id}))
    det = pd.concat(rows).merge(assoc, on=["image_id", "source_id"], how="left")
    ambiguous = det[det["true_id"] == -2]
    det = det[det["true_id"] >= 0]
    # isolated: no other true object within isolation_arcsec brighter than 2.5 mag fainter
    cosd = np.cos(np.radians(truth["dec"].to_numpy()))
    tree = cKDTree(np.c_[truth["ra"].to_numpy() * cosd, truth["dec"].to_numpy()])
    pairs = tree.query_pairs(isolation_arcsec / 3600, output_type="ndarray")
    mag = truth["mag_r"].to_numpy()
    crowded = np.zeros(len(truth), bool)
    crowded[pairs[:, 0][mag[pairs[:, 1]] < mag[pairs[:, 0]] + 2.5]] = True
    crowded[pairs[:, 1][mag[pairs[:, 0]] < mag[pairs[:, 1]] + 2.5]] = True
    per_true = det.groupby("true_id").agg(n=("source_id", "size"),
                                          n_obj=("object_id", "nunique"),
                                          unassociated=("object_id", lambda s: s.isna().sum()),
                                          object_id=("object_id", lambda s: s.mode().iloc[0]
                                                     if s.notna().any() else -1))
    per_true = per_true.join(truth.set_index("true_id"))
    per_true["isolated"] = ~crowded[per_true.index.to_numpy()]
    seen2 = per_true[(per_true["n"] >= 2) & per_true["isolated"]]
    one = (seen2["n_obj"] == 1) & (seen2["unassociated"] == 0)
    per_obj = det.dropna(subset=["object_id"]).groupby("object_id")["true_id"].nunique()
    flags = objects.set_index("object_id")
    per_true = per_true.join(flags[["variable", "transient_candidate"]], on="object_id")
    phot = tables["photometry"]
    per_true = per_true.join(phot.groupby("object_id")["n"].sum().rename("n_phot"),
                             on="object_id")
    variables = per_true[(per_true["amplitude"] >= 0.3) & (per_true["n_phot"] >= 6)]
    constant = per_true[(per_true["kind"] == "star") & (per_true["amplitude"] == 0)
                        & (per_true["transient_night"] < 0) & (per_true["mag_r"] < bright_mag)
                        & (per_true["n_phot"] >= 6)]
    transients = per_true[per_true["transient_night"] >= 0]
    positioned = sources[sources["ra"].notna()][["image_id", "source_id"]]
    linked = positioned.merge(assoc[["image_id", "source_id"]].drop_duplicates(), how="left",
                              on=["image_id", "source_id"], indicator=True)
    return {
        "duplicate_objects": int(objects["object_id"].duplicated().sum()),
        "duplicate_associations": int(assoc.duplicated(["image_id", "source_id"]).sum()),
        "unassociated_detections": int((linked["_merge"] == "left_only").sum()),
        "ambiguous_detections": len(ambiguous),
        "isolated_seen_twice": len(seen2),
        "one_object_fraction": float(one.mean()) if len(seen2) else float("nan"),
        "objects": len(objects),
        "mixed_fraction": float((per_obj > 1).sum() / max(len(objects), 1)),
        "variables": len(variables),
        "variable_recovery": float(variables["variable"].fillna(False).astype(bool).mean()),
        "bright_constant": len(constant),
        "constant_false_positive": float(constant["variable"].fillna(False).astype(bool).mean()),
        "transients": len(transients),
        "transient_recovery": float(
            transients["transient_candidate"].fillna(False).astype(bool).mean()),
    }
