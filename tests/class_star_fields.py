"""Fields of stars and galaxies with their truth for judging ``class_star``, and a scorer.

Field kinds (the synthetic generator, Moffat beta = 3 PSF as in tests/test_psf.py; galaxies
Sersic with r_eff 0.4-1.5", magnitudes uniform in r 17.5-23 so many sources have SNR >= 20):

- ``normal``: 1024², seeing 0.9" (3.6 px), 200 stars and 200 galaxies;
- ``crowded``: 768², seeing 1.0", 1265 stars and 422 galaxies (12,000 sources per 2048²:
  60-70% of the detections blended);
- ``messy``: 1024², seeing 1.0", 500 stars and 300 galaxies, 40 cosmic rays, 2 hot columns,
  a NaN patch, saturation at 30,000 ADU;
- ``undersampled``: 1024², seeing 0.55" (2.2 px), 250 stars and 250 galaxies.

Scoring (as tests/test_psf.py does): SNR >= 20 (measured), over the true sources the
detection resolved (no other true source sharing the detection holds 10% of its flux within
1.5 FWHM), a star is right when ``class_star >= 0.5``, a galaxy when ``class_star < 0.5``.

Run ``python tests/class_star_fields.py --kinds crowded messy --seeds 1 2 --psf both`` for a
table (``--failures FILE`` writes the misclassified sources with diagnostics).
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
import pandas as pd
from astropy.io import fits
from scipy.spatial import cKDTree

from skysurvey import synth
from skysurvey.detect import DetectionConfig, measure_image
from skysurvey.fitsread import read_fits

PIXEL_SCALE = 0.25
KINDS = {
    "normal": dict(size=1024, seeing=0.9, n_stars=200, n_galaxies=200),
    "crowded": dict(size=768, seeing=1.0, n_stars=1265, n_galaxies=422),
    "messy": dict(size=1024, seeing=1.0, n_stars=500, n_galaxies=300,
                  options=dict(cosmic_rays=40, bad_columns=2, nan_patch=True,
                               saturate=30000.0)),
    "undersampled": dict(size=1024, seeing=0.55, n_stars=250, n_galaxies=250),
}


def make_field(kind, seed):
    """The image (synth.SimImage) of field *kind* drawn from *seed*."""
    spec = KINDS[kind]
    size = spec["size"]
    rng = np.random.default_rng(seed)
    sky = synth.make_sky_sources(rng, spec["n_stars"], spec["n_galaxies"], 150.1, 2.2,
                                 size * PIXEL_SCALE / 3600 / 2)
    sky["r_eff"] = np.where(sky["kind"] == "galaxy", rng.uniform(0.4, 1.5, len(sky)), 0.0)
    sky["mag_r"] = rng.uniform(17.5, 23.0, len(sky))
    beta = synth.MOFFAT_BETA
    synth.MOFFAT_BETA = 3.0
    try:
        return synth.make_image((size, size), sources=sky, seed=seed + 1,
                                fwhm_arcsec=spec["seeing"], **spec.get("options", {}))
    finally:
        synth.MOFFAT_BETA = beta


def measure(image, psf_photometry):
    """The sources table (pandas) of *image*."""
    buf = io.BytesIO()
    fits.PrimaryHDU(image.data, image.header).writeto(buf)
    table, _ = measure_image(read_fits(buf.getvalue(), name="field.fits"), "field",
                             DetectionConfig(psf_photometry=psf_photometry))
    return table.to_pandas()


def match(truth, sources, radius=1.5):
    """Index of the nearest detection within *radius* px of each true source (-1: none)."""
    dist, idx = cKDTree(sources[["x", "y"]].to_numpy()).query(truth[["x", "y"]].to_numpy())
    return np.where(dist < radius, idx, -1)


def resolved(truth, sources, radius):
    """Whether each true source is alone in its detection: the other true sources within
    *radius* px whose nearest detection is the same hold less than 10% of its flux."""
    xy = truth[["x", "y"]].to_numpy()
    _, nearest = cKDTree(sources[["x", "y"]].to_numpy()).query(xy)
    flux = truth["flux"].to_numpy()
    shared = np.zeros(len(truth))
    tree = cKDTree(xy)
    for i, others in enumerate(tree.query_ball_point(xy, radius)):
        others = [j for j in others if j != i and nearest[j] == nearest[i]]
        shared[i] = flux[others].sum()
    return shared < 0.1 * flux


def scored(image, sources, fwhm):
    """The true sources matched to a detection, resolved, with SNR >= 20: truth columns,
    the detection's columns (prefixed ``m_``) and ``right`` (class_star on the right side of
    0.5; NaN class_star is wrong); *fwhm* (px) scales the resolved test's radius."""
    truth = image.truth
    idx = match(truth, sources)
    ok = (idx >= 0) & resolved(truth, sources, 1.5 * fwhm)
    found = sources.iloc[idx[ok]].reset_index(drop=True).add_prefix("m_")
    rows = pd.concat([truth[ok].reset_index(drop=True), found], axis=1)
    rows = rows[rows["m_snr"] >= 20].reset_index(drop=True)
    star = rows["kind"] == "star"
    cs = rows["m_class_star"]
    rows["right"] = np.where(star, cs >= 0.5, cs < 0.5)
    return rows


def accuracy(rows):
    """``(stars right, n stars, galaxies right, n galaxies)``."""
    star = rows["kind"] == "star"
    return (float(rows["right"][star].mean()), int(star.sum()),
            float(rows["right"][~star].mean()), int((~star).sum()))


def diagnose(image, sources, rows):
    """*rows* with the distance to the nearest other detection and artefact (px)."""
    sxy = sources[["x", "y"]].to_numpy()
    d, _ = cKDTree(sxy).query(rows[["m_x", "m_y"]].to_numpy(), k=2)
    rows = rows.assign(neighbour=d[:, 1])
    art = image.artefacts
    crs = art[art["kind"] == "cosmic_ray"]
    if len(crs):
        rows["cosmic_ray"] = cKDTree(crs[["x", "y"]].to_numpy(float)).query(
            rows[["x", "y"]].to_numpy())[0]
    cols = art[art["kind"] == "hot_column"]["x"].to_numpy(float)
    if cols.size:
        rows["hot_column"] = np.min(np.abs(rows["x"].to_numpy()[:, None] - cols[None, :]),
                                    axis=1)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--psf", choices=["on", "off", "both"], default="both")
    parser.add_argument("--failures", help="write the misclassified sources (parquet)")
    parser.add_argument("--rows", help="write every scored source (parquet)")
    args = parser.parse_args(argv)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.psf]
    failures, everything = [], []
    for kind in args.kinds:
        for seed in args.seeds:
            t0 = time.time()
            image = make_field(kind, seed)
            fwhm = KINDS[kind]["seeing"] / PIXEL_SCALE
            for on in modes:
                t1 = time.time()
                sources = measure(image, on)
                rows = diagnose(image, sources, scored(image, sources, fwhm))
                s, ns, g, ng = accuracy(rows)
                print(f"{kind:13s} seed {seed:4d} psf {'on ' if on else 'off'}: stars {s:.3f} "
                      f"of {ns:4d} galaxies {g:.3f} of {ng:4d}  ({time.time() - t1:.0f} s, "
                      f"draw {t1 - t0:.0f} s)", flush=True)
                rows = rows.assign(field=kind, seed=seed, psf=on)
                everything.append(rows)
                failures.append(rows[~rows["right"]])
    if args.failures:
        pd.concat(failures, ignore_index=True).to_parquet(args.failures)
    if args.rows:
        pd.concat(everything, ignore_index=True).to_parquet(args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
