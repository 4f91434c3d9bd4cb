"""Aperture-corrected fluxes, class_star, seeing and depth (psf.py) against known answers.

Science fields come from the synthetic generator with a Moffat beta = 3 PSF (the issue's
target; the demo uses 3.5) and are matched to its truth. Measured values are printed
(``pytest -s``) so they can be quoted.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import sep
from astropy.io import fits

from skysurvey import classify, profiles, psf, synth
from skysurvey.detect import DetectionConfig, measure_image
from skysurvey.fitsread import read_fits
from skysurvey.measurement import Pixels
from skysurvey.psfphot import PSF_RESIDUAL, PSF_SPLIT, aperture_fraction


def _measure(image, header=None, config=None):
    buf = io.BytesIO()
    fits.PrimaryHDU(image.data, header if header is not None else image.header).writeto(buf)
    table, row = measure_image(read_fits(buf.getvalue(), name="field.fits"), "field", config)
    return table.to_pandas(), row


def _match(truth, sources, radius=1.5):
    """Truth rows with a detection within *radius* px, and those detections (nearest)."""
    sx, sy = sources["x"].to_numpy(), sources["y"].to_numpy()
    idx = np.full(len(truth), -1)
    for i, (x, y) in enumerate(zip(truth["x"], truth["y"], strict=True)):
        d2 = (sx - x) ** 2 + (sy - y) ** 2
        j = int(np.argmin(d2))
        if d2[j] < radius**2:
            idx[i] = j
    found = idx >= 0
    return truth[found].reset_index(drop=True), sources.iloc[idx[found]].reset_index(drop=True)


def _field(seeing, seed, size, n_stars, n_galaxies, bright=None, full=False,
           psf_photometry=False, **kw):
    """A Moffat beta = 3 field; galaxies with r_eff 0.4-1.5"; *bright* (lo, hi) draws every
    magnitude uniformly in that range (many SNR >= 20 sources for classification). *full*
    also returns every true source and every detection."""
    rng = np.random.default_rng(seed)
    sky = synth.make_sky_sources(rng, n_stars, n_galaxies, 150.1, 2.2, size * 0.25 / 3600 / 2)
    sky["r_eff"] = np.where(sky["kind"] == "galaxy", rng.uniform(0.4, 1.5, len(sky)), 0.0)
    if bright is not None:
        sky["mag_r"] = rng.uniform(*bright, len(sky))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "MOFFAT_BETA", 3.0)
        image = synth.make_image((size, size), sources=sky, seed=seed + 1, fwhm_arcsec=seeing,
                                 **kw)
    sources, row = _measure(image, config=DetectionConfig(psf_photometry=psf_photometry))
    truth, found = _match(image.truth, sources)
    if full:
        return truth, found, row, image.truth, sources
    return truth, found, row


# ---------------------------------------------------------------- hand-computed values


def test_depth_is_the_5_sigma_sky_limit_of_the_corrected_aperture():
    # 5 sigma in an aperture of radius 4 px on sky rms 10: 5 * 10 * sqrt(pi) * 4 = 354.49 ADU
    # in the aperture, 1.05 x that in total
    expected = 30.0 - 2.5 * math.log10(5 * 10 * math.sqrt(math.pi) * 4 * 1.05)
    assert psf.depth_5sigma(30.0, 10.0, 4.0, 1.05) == pytest.approx(expected, abs=1e-12)
    assert psf.depth_5sigma(30.0, 10.0, 4.0, None) == pytest.approx(expected + 2.5
                                                                    * math.log10(1.05))
    assert psf.depth_5sigma(None, 10.0, 4.0, 1.05) is None
    # a zero point 0.3 mag brighter gives a depth 0.3 mag deeper (the calibration's re-call)
    assert psf.depth_5sigma(30.3, 10.0, 4.0, 1.05) == pytest.approx(expected + 0.3)


def test_seeing_is_fwhm_times_pixel_scale_and_null_without_wcs():
    assert psf.fwhm_arcsec(4.0, 0.25) == pytest.approx(1.0)
    assert psf.fwhm_arcsec(4.0, None) is None
    assert psf.fwhm_arcsec(math.nan, 0.25) is None


def test_corrected_error_includes_the_correction_uncertainty():
    flux, err = psf.apply_aperture_correction([1000.0, 1e6], [30.0, 1000.0], 1.05, 0.01)
    assert flux == pytest.approx([1050.0, 1.05e6])
    # faint: the aperture noise dominates; bright: the correction's 1% does
    assert err == pytest.approx([math.hypot(31.5, 10.0), math.hypot(1050.0, 1e4)])


def test_stellar_locus_is_the_densest_fwhm_and_ignores_galaxies():
    rng = np.random.default_rng(0)
    stars = 3.0 * (1 + rng.normal(0, 0.02, 60))
    galaxies = rng.uniform(3.5, 12.0, 200)  # more galaxies than stars, spread above
    fwhm = np.concatenate([stars, galaxies])
    value, scatter, members = classify.stellar_locus(fwhm, np.ones(fwhm.size, bool))
    assert value == pytest.approx(3.0, rel=0.01)
    assert members[:60].mean() > 0.95 and members[60:].mean() < 0.05
    assert scatter == pytest.approx(0.02 / math.log(10), rel=0.35)


def test_moffat_tail_is_the_light_beyond_the_last_radius():
    radii = np.geomspace(5.0, 24.0, 7)
    alpha = 4.0 / (2 * math.sqrt(2 ** (1 / 3.0) - 1))
    enclosed = profiles.moffat_enclosed(radii, alpha, 3.0)
    steps = np.log(enclosed[1:] / enclosed[:-1])
    _, tail, _ = psf.moffat_fit(radii, steps, np.full(steps.size, 1e-4), 4.0)
    assert tail == pytest.approx(1 - enclosed[-1], rel=0.1)


def test_fast_median_is_numpys_bit_for_bit():
    """psf's median (thousands of small ones per image) equals np.median exactly, odd and
    even sizes, NaN included."""
    rng = np.random.default_rng(0)
    for n in range(1, 41):
        values = rng.normal(size=n) * 10.0 ** rng.integers(-3, 4)
        assert profiles.fast_median(values) == np.median(values)
        values[rng.integers(n)] = np.nan
        assert math.isnan(profiles.fast_median(values))
    assert math.isnan(profiles.fast_median(np.array([])))


def test_noiseless_moffat_stars_get_the_exact_correction():
    """Isolated beta = 3 stars without noise: the correction is the ratio of the profile's
    light within its rendered stamp to the light within the aperture (exact overlap). The
    random points measuring the residual level see the stars' wings, which their fluxes
    predict (without them the level came out high and the correction 0.5% low)."""
    fwhm, size = 4.0, 200
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "MOFFAT_BETA", 3.0)
        stamp = synth._star_stamp(0.0, 0.0, fwhm, "moffat", math.ceil(5 * fwhm))
    image = np.zeros((size, size))
    centres = [(50, 50), (150, 50), (50, 150), (150, 150)]
    half = stamp.shape[0] // 2
    for x, y in centres:
        image[y - half:y + half + 1, x - half:x + half + 1] += 1e5 * stamp
    x, y = (np.array(c, float) for c in zip(*centres, strict=True))
    radius = 6.0
    in_aperture = sep.sum_circle(image, x, y, radius, subpix=0)[0]
    pixels = Pixels(image, np.full(image.shape, 1.0), np.zeros(image.shape, np.int32))
    corr, err, used = psf.aperture_correction(pixels, {"x": x, "y": y, "flux": np.full(4, 1e5)},
                                              np.ones(4, bool), radius, 1.26 * fwhm)
    assert used == 4
    assert corr == pytest.approx(1e5 / np.mean(in_aperture), rel=1e-3)
    assert 0 < err < 2e-3


# ---------------------------------------------------------------- the handler's columns


@pytest.fixture(scope="module")
def small_field():
    return _field(1.0, seed=7, size=512, n_stars=150, n_galaxies=60, bright=(17.5, 23.0),
                  psf_photometry=True)


def test_handler_fills_the_psf_columns(small_field):
    _, found, row = small_field
    # a star the PSF fit split off a detection or found in the residual image has PSF
    # photometry only (test_psfphot.py)
    split_off = found["flux_aper"].isna()
    assert ((found["flags"][split_off] & (PSF_SPLIT | PSF_RESIDUAL)) > 0).all()
    assert found["flux_psf"][split_off].notna().all()
    assert split_off.mean() < 0.1
    found = found[~split_off]
    assert found["flux_apcorr"].notna().all() and found["class_star"].between(0, 1).all()
    assert (found["flux_apcorr_err"] > found["flux_aper_err"]).all()
    assert row["aperture_correction"] == pytest.approx(
        np.median(found["flux_apcorr"] / found["flux_aper"]))
    assert 1.0 < row["aperture_correction"] < 1.2 and 0 < row["aperture_correction_err"] < 0.02
    assert row["fwhm_arcsec"] == pytest.approx(1.0, rel=0.1)  # the seeing, never asked for
    assert row["depth_5sigma"] == pytest.approx(psf.depth_5sigma(
        row["zero_point"], row["bkg_rms"], row["aperture_radius"], row["aperture_correction"]))


def test_seeing_and_depth_are_null_without_wcs_or_zero_point():
    sky = synth.make_sky_sources(np.random.default_rng(3), 40, 0, 150.1, 2.2, 256 * 0.25 / 7200)
    sky["mag_r"] = np.linspace(17.5, 21.0, 40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "MOFFAT_BETA", 3.0)
        image = synth.make_image((256, 256), sources=sky, seed=3)
    _, row = _measure(image, fits.Header({"FILTER": "r", "GAIN": 2.0}))
    assert row["fwhm_arcsec"] is None and row["depth_5sigma"] is None
    assert row["aperture_correction"] > 1.0


# ---------------------------------------------------------------- science targets


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clean", "crowded", "messy"])
def test_aperture_corrected_flux_of_stars_is_total(kind):
    """Median flux_apcorr / true flux within 0.99-1.01 (stars, SNR >= 20, unflagged), and
    honest errors: robust pull spread 0.85-1.2 for 10 <= SNR < 50 (0.90-0.99; 0.91-0.99 while
    the correction was 0.2-0.5% high, which widens the pulls in proportion to the SNR)."""
    options = {"clean": {}, "crowded": {"n_stars": 9000, "n_galaxies": 3000},
               "messy": {"cosmic_rays": 60, "bad_columns": 2, "nan_patch": True,
                         "saturate": 30000.0}}[kind]
    counts = {"n_stars": 4000, "n_galaxies": 1300}
    counts.update({k: options.pop(k) for k in list(options) if k.startswith("n_")})
    truth, found, row = _field(1.0, seed=11, size=2048, **counts, **options)
    star = (truth["kind"] == "star").to_numpy() & (found["flags"] == 0).to_numpy()
    snr = found["snr"].to_numpy()
    ratio = (found["flux_apcorr"] / truth["flux"]).to_numpy()
    faint = star & (snr >= 10) & (snr < 50)
    pull = ((found["flux_apcorr"] - truth["flux"]) / found["flux_apcorr_err"]).to_numpy()[faint]
    spread = profiles.robust_sigma(pull)
    median = float(np.median(ratio[star & (snr >= 20)]))
    print(f"\n{kind}: aperture correction {row['aperture_correction']:.4f} "
          f"+- {row['aperture_correction_err']:.4f}; median flux_apcorr/true {median:.4f} "
          f"({(star & (snr >= 20)).sum()} stars SNR>=20), SNR>=50 "
          f"{np.median(ratio[star & (snr >= 50)]):.4f}; pull spread {spread:.3f} "
          f"({faint.sum()} faint stars)")
    assert 0.99 <= median <= 1.01
    assert 0.85 <= spread <= 1.2


@pytest.mark.slow
@pytest.mark.parametrize("seeing", [0.9, 1.4])
def test_class_star_separates_stars_and_galaxies(seeing):
    """SNR >= 20, class_star >= 0.5 = star: >= 97% of stars and of galaxies (Sersic r_eff
    0.4-1.5") right, without being told the seeing."""
    truth, found, row = _field(seeing, seed=int(seeing * 10), size=1536, n_stars=250,
                               n_galaxies=250, bright=(17.5, 23.0))
    sel = (found["snr"] >= 20).to_numpy()
    star = (truth["kind"] == "star").to_numpy()
    cs = found["class_star"].to_numpy()
    stars_ok, galaxies_ok = np.mean(cs[sel & star] >= 0.5), np.mean(cs[sel & ~star] < 0.5)
    print(f"\nseeing {seeing}\" (measured {row['fwhm_arcsec']:.3f}): stars {stars_ok:.3f} of "
          f"{(sel & star).sum()}, galaxies {galaxies_ok:.3f} of {(sel & ~star).sum()}")
    assert stars_ok >= 0.97 and galaxies_ok >= 0.97
    assert row["fwhm_arcsec"] == pytest.approx(seeing, rel=0.05)


def test_an_image_without_stars_gets_null_psf_columns():
    """Pure noise: no PSF star, so no correction, no class and no seeing, but still a depth
    (that of the uncorrected aperture) and no warning or error."""
    rng = np.random.default_rng(5)
    header = fits.Header({"FILTER": "r", "GAIN": 2.0, "MAGZERO": 30.0})
    image = synth.SimImage(rng.normal(200, 7, (256, 256)).astype(np.float32), header,
                           None, None)
    sources, row = _measure(image)
    assert sources["flux_apcorr"].isna().all() and sources["class_star"].isna().all()
    assert row["aperture_correction"] is None and row["fwhm_arcsec"] is None
    assert row["depth_5sigma"] == pytest.approx(psf.depth_5sigma(
        30.0, row["bkg_rms"], row["aperture_radius"]))


def test_a_tiny_image_without_a_curve_of_growth_keeps_its_seeing():
    """64²: PSF stars (class_star measured) but no room for the curve of growth's rings, so
    no correction and no seeing from it; the seeing is then the median FWHM (it was null)."""
    rng = np.random.default_rng(3)
    sky = synth.make_sky_sources(rng, 5, 0, 150.1, 2.2, 64 * 0.25 / 7200)
    sky["mag_r"] = rng.uniform(17.5, 21, len(sky))
    image = synth.make_image((64, 64), sources=sky, seed=3, fwhm_arcsec=1.0)
    sources, row = _measure(image)
    assert sources["class_star"].notna().any()
    assert row["aperture_correction"] is None
    assert row["fwhm_arcsec"] == pytest.approx(1.0, rel=0.25)


def _resolved(truth, everything, sources, radius):
    """Whether each matched true source is alone in its detection: the other true sources
    (*everything*, detected or not) within *radius* px whose nearest detection is the same
    hold less than 10% of its flux (an unresolved pair of stars is not a point source)."""
    sx, sy = sources["x"].to_numpy(), sources["y"].to_numpy()
    ax, ay, af = (everything[c].to_numpy() for c in ("x", "y", "flux"))
    nearest = np.array([np.argmin((sx - x) ** 2 + (sy - y) ** 2)
                        for x, y in zip(ax, ay, strict=True)])
    tx, ty = truth["x"].to_numpy(), truth["y"].to_numpy()
    mine = np.array([np.argmin((sx - x) ** 2 + (sy - y) ** 2)
                     for x, y in zip(tx, ty, strict=True)])
    d2 = (tx[:, None] - ax[None, :]) ** 2 + (ty[:, None] - ay[None, :]) ** 2
    shared = (mine[:, None] == nearest[None, :]) & (d2 < radius**2) & (d2 > 0)
    return (shared * af[None, :]).sum(axis=1) < 0.1 * truth["flux"].to_numpy()


@pytest.fixture(scope="module")
def crowded_field():
    """The density of 12,000 sources (r 17.5-23) on 2048², on 768²: 60-70% blended."""
    return _field(1.0, seed=21, size=768, n_stars=1265, n_galaxies=422, bright=(17.5, 23.0),
                  full=True)


def test_class_star_measures_blended_sources_as_if_alone(crowded_field):
    """A crowded field: a star's neighbours' light made it look extended and a galaxy whose
    annulus lost a neighbour's segment looked concentrated. SNR >= 20, over the sources the
    detection resolved (:func:`_resolved`): stars 0.967 -> 0.973 (0.981 with the seeing and
    beta of the crowded-field curve of growth), galaxies 0.951 -> 0.986; all stars
    (unresolved pairs included) 0.898 -> 0.927 (0.934). With the PSF fit's splits (issue 25;
    class_star 1 for both stars of a split): stars 0.982, galaxies 0.979, all stars 0.948.
    A neighbour twice as bright modelled by its own far side instead of a Moffat profile
    (classify.BRIGHT_NEIGHBOUR): stars 0.981, galaxies 0.986 -> 0.993, all stars 0.934 ->
    0.942."""
    truth, found, _, everything, sources = crowded_field
    bright = (found["snr"] >= 20).to_numpy()
    sel = bright & _resolved(truth, everything, sources, 1.5 * 4.0)
    star = (truth["kind"] == "star").to_numpy()
    blended = (sources["flags"].to_numpy() & (1 | 8192)) > 0
    cs = found["class_star"].to_numpy()
    stars_ok, galaxies_ok = np.mean(cs[sel & star] >= 0.5), np.mean(cs[sel & ~star] < 0.5)
    every_star = np.mean(cs[bright & star] >= 0.5)
    print(f"\ncrowded: {blended.mean():.2f} blended; resolved, SNR >= 20: stars {stars_ok:.3f} "
          f"of {(sel & star).sum()}, galaxies {galaxies_ok:.3f} of {(sel & ~star).sum()}; "
          f"all stars {every_star:.3f} of {(bright & star).sum()}")
    assert blended.mean() > 0.5
    assert stars_ok >= 0.975 and galaxies_ok >= 0.985 and every_star >= 0.935




@pytest.mark.parametrize("kind", ["crowded", "messy"])
def test_psf_fit_judges_blended_stars(kind):
    """Issue 25 item 3, with PSF photometry, SNR >= 20, over the sources the detection
    resolved: a blended detection that a PSF describes (psf_chi2 <= 1.25) is judged by its
    deblended extendedness (flux_psf over the aperture's light with every other fitted PSF
    subtracted) instead of its concentration, which holds the neighbours' light. Crowded
    768² (seeing 1.0"): stars 0.982 -> 0.985, galaxies 0.979 -> 0.979; messy 1024² (cosmic
    rays, bad columns, a NaN patch, saturation at 30,000): stars 0.944 -> 0.975, galaxies
    0.993 -> 0.993 (seeing 0.8": 0.965 -> 0.977 and 0.993; crowded at 1.3": 0.972 -> 0.978,
    galaxies 0.944 -> 0.936). flux_psf / flux_apcorr alone got galaxies 0.80 right: compact
    galaxies sit at 0.93-1.0 as stars do, so the concentration still decides elsewhere. The
    messy field's other stars were beside bright galaxies (psf_chi2 1.3-100), whose wings a
    Moffat model of the neighbour missed; modelled by the galaxy's own far side
    (classify.BRIGHT_NEIGHBOUR): crowded stars 0.985 -> 0.986, galaxies 0.979 -> 0.986;
    messy stars 0.972 -> 0.984, galaxies 0.993 -> 0.986 (held-out fields:
    tests/test_classify.py)."""
    if kind == "crowded":
        field = _field(1.0, seed=21, size=768, n_stars=1265, n_galaxies=422,
                       bright=(17.5, 23.0), full=True, psf_photometry=True)
        floor = (0.98, 0.98)
    else:
        field = _field(1.0, seed=31, size=1024, n_stars=500, n_galaxies=300,
                       bright=(17.5, 23.0), full=True, psf_photometry=True, cosmic_rays=40,
                       bad_columns=2, nan_patch=True, saturate=30000.0)
        floor = (0.98, 0.98)
    truth, found, _, everything, sources = field
    sel = (found["snr"] >= 20).to_numpy() & _resolved(truth, everything, sources, 6.0)
    star = (truth["kind"] == "star").to_numpy()
    cs = found["class_star"].to_numpy()
    stars_ok, galaxies_ok = np.mean(cs[sel & star] >= 0.5), np.mean(cs[sel & ~star] < 0.5)
    print(f"\n{kind}, PSF photometry: stars {stars_ok:.3f} of {(sel & star).sum()}, "
          f"galaxies {galaxies_ok:.3f} of {(sel & ~star).sum()}")
    assert stars_ok >= floor[0] and galaxies_ok >= floor[1]


def test_psf_fit_class_star_only_lifts_blends_a_psf_describes():
    """The rule itself: only blended detections with psf_chi2 <= BLEND_PSF_CHI2 and a finite
    ratio change; their score is the larger of the two (a low ratio keeps the concentration's)."""
    score = np.array([0.1, 0.1, 0.1, 0.1, 0.9, 0.1])
    blended = np.array([True, False, True, True, True, True])
    chi2 = np.array([1.0, 1.0, 3.0, 1.0, 1.0, 1.0])
    ratio = np.array([1.0, 1.0, 1.0, 0.8, 0.8, np.nan])
    err = np.full(6, 0.02)
    out = classify.psf_fit_class_star(score, blended, chi2, ratio, err)
    assert out[0] > 0.95 and out[4] == 0.9
    assert list(out[[1, 2, 3, 5]]) == [0.1, 0.1, 0.1, 0.1]
    assert list(score) == [0.1, 0.1, 0.1, 0.1, 0.9, 0.1]  # not changed in place


def test_deblended_extendedness_is_one_for_a_blended_star():
    """Two noiseless PSF-model stars 1.2 FWHM apart: each one's aperture holds the other's
    light (flux_psf / flux_apcorr would say extended), the deblended ratio is 1."""
    from skysurvey import psfmodel as pm

    fwhm, half = 3.0, 12
    rng = np.random.default_rng(1)
    x0, y0 = rng.uniform(-0.5, 0.5, 2)
    r2 = np.arange(-half, half + 1)[:, None] ** 2 + np.arange(-half, half + 1)[None, :] ** 2
    stamp = np.exp(-0.5 * r2 / (fwhm / 2.3548) ** 2)
    grid = pm.PsfGrid(basis=(stamp / stamp.sum())[None].astype(float), oversample=1, half=half,
                      order=0, centre=(32.0, 32.0), scale=(32.0, 32.0))
    x = np.array([30.0 + x0, 30.0 + x0 + 1.2 * fwhm])
    y = np.array([32.0 + y0, 32.0 + y0])
    flux = np.array([5000.0, 3000.0])
    image = pm.ModelImage((64, 64), grid, (x, y), (np.rint(x).astype(int),
                                                   np.rint(y).astype(int)),
                          (half - pm.LANCZOS,) * 2 + (None,)).image(flux)
    pixels = Pixels(np.ascontiguousarray(image, float), 1.0)
    ratio, err = classify.deblended_extendedness(pixels, grid, (x, y, flux, flux * 0.01),
                                                 1.5 * fwhm, np.arange(2))
    assert np.allclose(ratio, 1.0, atol=1e-3) and np.all(err > 0)
    plain, _, _ = sep.sum_circle(pixels.sub, x, y, 1.5 * fwhm, subpix=0)
    own = flux * aperture_fraction(grid, x, y, 1.5 * fwhm)
    assert np.all(own / plain < 0.95)  # the raw aperture holds the neighbour's light


def _true_correction(fwhm_px, radius, kind="moffat"):
    """Total / aperture flux of the generator's beta = 3 star (its stamp normalised to 1; or
    Gaussian *kind*), averaged over pixel phases: the exact aperture correction of a field."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "MOFFAT_BETA", 3.0)
        half = math.ceil(5 * fwhm_px)
        values = []
        for dx, dy in ((0.0, 0.0), (0.25, 0.3), (0.5, 0.1), (0.1, 0.5)):
            image = np.zeros((2 * half + 21, 2 * half + 21))
            image[10:-10, 10:-10] = synth._star_stamp(dx, dy, fwhm_px, kind, half)
            values.append(1.0 / sep.sum_circle(image, [10 + half + dx], [10 + half + dy],
                                               radius, subpix=0)[0][0])
    return float(np.mean(values))


@pytest.mark.slow
def test_aperture_correction_error_is_honest_with_few_stars():
    """Small fields (256-384², 0.8-1.4" seeing, 4-14 PSF stars): the correction's error was
    2x too small (pull robust spread 1.9); with the jackknife over the stars and the residual
    sky's uncertainty it is 1.0 (1.2 on another 120 fields), and the median correction stays
    within 1% of the truth (0.998). With the residual level from random points as isolated as
    the stars (its error in every step's): 0.82, median 0.997."""
    rng = np.random.default_rng(1)
    pulls, ratios = [], []
    for k in range(80):
        size, seeing = int(rng.choice([256, 320, 384])), float(rng.uniform(0.8, 1.4))
        sky_rng = np.random.default_rng(1000 + k)
        n_stars = int(rng.integers(10, 30))
        sky = synth.make_sky_sources(sky_rng, n_stars, 6, 150.1, 2.2, size * 0.25 / 7200)
        sky["r_eff"] = np.where(sky["kind"] == "galaxy", sky_rng.uniform(0.4, 1.5, len(sky)), 0)
        sky["mag_r"] = np.where(sky["kind"] == "star", sky_rng.uniform(17.5, 22.5, len(sky)),
                                sky["mag_r"])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(synth, "MOFFAT_BETA", 3.0)
            image = synth.make_image((size, size), sources=sky, seed=1001 + k,
                                     fwhm_arcsec=seeing)
        _, row = _measure(image)
        if row["aperture_correction"] is None:
            continue
        truth = _true_correction(seeing / 0.25, row["aperture_radius"])
        ratios.append(row["aperture_correction"] / truth)
        pulls.append((row["aperture_correction"] - truth) / row["aperture_correction_err"])
    pulls, ratios = np.array(pulls), np.array(ratios)
    spread = profiles.robust_sigma(pulls)
    print(f"\n{pulls.size} small fields: median correction / truth {np.median(ratios):.4f}, "
          f"pull median {np.median(pulls):+.2f}, robust spread {spread:.2f}")
    assert pulls.size >= 70
    assert 0.7 <= spread <= 1.4
    assert abs(np.median(ratios) - 1) < 0.01


def test_a_giant_halo_gets_an_honest_aperture_correction_error():
    """A 512² field under a bright star's halo (Moffat beta 1.5, 30 px core, 5e4 peak): the
    random points measuring the residual level sit on its wings beyond the background's
    reach, every step of the curve of growth came out ~1 with errors of 0.3-1.6 except one,
    and the Moffat fitted to them claimed 1.00001 +- 0.000002 (pull -20,000). The fit's own
    uncertainty (models within chi-square + 1) is now in the error: pull within 3."""
    rng = np.random.default_rng(9)
    sky = synth.make_sky_sources(rng, 40, 3, 150.1, 2.2, 512 * 0.25 / 7200)
    sky["mag_r"] = np.where(sky["kind"] == "star", rng.uniform(17.5, 21, len(sky)), sky["mag_r"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "MOFFAT_BETA", 3.0)
        image = synth.make_image((512, 512), sources=sky, seed=9, fwhm_arcsec=1.0)
    yy, xx = np.mgrid[:512, :512]
    image.data[:] += 5e4 / (1 + ((xx - 256) ** 2 + (yy - 256) ** 2) / 30.0**2) ** 1.5
    _, row = _measure(image)
    truth = _true_correction(4.0, row["aperture_radius"])
    pull = (row["aperture_correction"] - truth) / row["aperture_correction_err"]
    print(f"\nhalo: correction {row['aperture_correction']:.5f} +- "
          f"{row['aperture_correction_err']:.5f}, true {truth:.4f}, pull {pull:+.1f}")
    assert abs(pull) < 3


def test_aperture_correction_and_seeing_are_unbiased_on_a_crowded_field(crowded_field):
    """The residual level of the curve of growth came from a sky annulus around the PSF
    stars, which holds their neighbours' wings where the stars' isolated apertures do not:
    the correction came out 2.4% low (1.0273 against 1.0526), the fitted beta 5.6 instead of
    3 and the seeing 10% wide. Measured around random points as isolated as the stars (the
    neighbours' predicted wings calibrated on them): 1.0462 +- 0.0037 (-0.6%), beta 3.3,
    seeing 0.5% narrow."""
    _, _, row, _, _ = crowded_field
    truth = _true_correction(4.0, row["aperture_radius"])
    ratio = row["aperture_correction"] / truth
    print(f"\ncrowded 768²: aperture correction {row['aperture_correction']:.4f} +- "
          f"{row['aperture_correction_err']:.4f}, true {truth:.4f} (ratio {ratio:.4f}); "
          f"seeing {row['fwhm_arcsec']:.3f}\"")
    assert ratio == pytest.approx(1.0, abs=0.01)
    assert row["fwhm_arcsec"] == pytest.approx(1.0, rel=0.03)


@pytest.mark.slow
def test_aperture_correction_is_unbiased_and_honest_on_crowded_fields():
    """Eight crowded 1024² fields (the density of 12,000 sources, r 17.5-23, on 2048²): the
    correction was 2.3% low on every one (pulls -7 to -17), the fitted beta 5.3-6.6 and the
    seeing 9-12% wide; now within 0.8% (median 0.1%), pull rms 1.15, seeing within 4%."""
    ratios, pulls, seeing = [], [], []
    for seed in range(1, 9):
        _, _, row = _field(1.0, seed=seed, size=1024, n_stars=2250, n_galaxies=750,
                           bright=(17.5, 23.0))
        truth = _true_correction(4.0, row["aperture_radius"])
        ratios.append(row["aperture_correction"] / truth)
        pulls.append((row["aperture_correction"] - truth) / row["aperture_correction_err"])
        seeing.append(row["fwhm_arcsec"])
    ratios, pulls = np.array(ratios), np.array(pulls)
    rms = float(np.sqrt(np.mean(pulls**2)))
    print(f"\n8 crowded 1024² fields: correction / truth {np.round(ratios, 4)}, pulls "
          f"{np.round(pulls, 1)} (rms {rms:.2f}), seeing {np.round(seeing, 3)}")
    assert np.all(np.abs(ratios - 1) < 0.01) and abs(np.median(ratios) - 1) < 0.005
    assert 0.7 <= rms <= 1.4
    assert np.all(np.abs(np.array(seeing) - 1.0) < 0.04)


@pytest.mark.slow
@pytest.mark.parametrize(("seeing", "kind"), [(0.8, "moffat"), (1.4, "moffat"),
                                              (1.0, "gaussian")])
def test_crowded_field_correction_holds_off_the_tuning_fields(seeing, kind):
    """The residual level and its MISMATCH floor were tuned on crowded 1.0" Moffat fields;
    on other seeds, 0.8" and 1.4" seeing and a Gaussian PSF (crowded 1024², seeds 101-103,
    30% of the density too: 12 fields) the correction is within 0.8% of the truth with pulls
    of rms 0.69 (1.14 with MISMATCH = 0: the floor is conservative there); the old sky
    annulus gave pulls of -12 and -13 at 0.8" and 1.4". The seeing is 4-6% narrow at 1.4"."""
    _, _, row = _field(seeing, seed=101, size=1024, n_stars=2250, n_galaxies=750,
                       bright=(17.5, 23.0), psf=kind)
    truth = _true_correction(seeing / 0.25, row["aperture_radius"], kind)
    ratio = row["aperture_correction"] / truth
    pull = (row["aperture_correction"] - truth) / row["aperture_correction_err"]
    print(f"\n{kind} {seeing}\": correction / truth {ratio:.4f}, pull {pull:+.1f}, seeing "
          f"{row['fwhm_arcsec'] / seeing:.3f} x the true one")
    assert abs(ratio - 1) < 0.01 and abs(pull) < 3
    assert row["fwhm_arcsec"] == pytest.approx(seeing, rel=0.07)
