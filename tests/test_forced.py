"""Forced photometry against injected truth, its flags, and the forced step end to end
(local folders through the process pool, and S3 through the moto server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skysurvey import detect, forced
from skysurvey.forced import (
    CENTRE_MASKED,
    MASKED,
    NEAR_EDGE,
    OFF_IMAGE,
    SATURATED,
    ImagePhotometry,
    aperture_flux,
    calibrate_fluxes,
    circle_overlap,
)
from skysurvey.forced_psf import ForcedOptions, forced_photometry
from skysurvey.measurement import Pixels
from skysurvey.synth import _wcs, make_image

RA0, DEC0, SCALE, SIZE = 150.1, 2.2, 0.25, 512


def test_circle_overlap_is_exact():
    off = np.arange(-9, 10)
    yy, xx = np.meshgrid(off, off, indexing="ij")
    for r in (0.4, 1.0, 3.3, 7.9):
        for cx, cy in ((0.0, 0.0), (0.37, -0.21), (0.5, 0.5)):
            assert circle_overlap(xx - cx, yy - cy, r).sum() == pytest.approx(np.pi * r * r,
                                                                              rel=1e-12)
    # one pixel against a 400 x 400 sampling of it
    sub = (np.arange(400) + 0.5) / 400 - 0.5
    sx, sy = np.meshgrid(sub, sub)
    for dx, dy, r in ((2.3, 1.1, 2.7), (0.2, 2.9, 3.0), (4.0, -0.4, 4.2), (0.0, 0.0, 0.3)):
        sampled = ((sx + dx) ** 2 + (sy + dy) ** 2 < r * r).mean()
        assert circle_overlap(dx, dy, r) == pytest.approx(sampled, abs=2e-3)


def test_errors_on_pure_noise_are_the_scatter():
    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 2.0, (300, 300))
    x, y = rng.uniform(10, 290, 2000), rng.uniform(10, 290, 2000)
    flux, err, sky, flags = aperture_flux(Pixels(data, 2.0), x, y, 4.0)
    pull = flux / err
    assert abs(pull.mean()) < 4 / np.sqrt(pull.size) * 2.5  # overlapping apertures: correlated
    assert 0.9 < pull.std() < 1.1
    assert np.array_equal(err, sky) and not flags.any()


def test_flags_and_coverage():
    shape = (200, 200)
    wcs = _wcs(shape, RA0, DEC0, SCALE, 0.0, False)
    data = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    mask[100:110, 100:110] = True
    saturated = np.zeros(shape, bool)
    saturated[50, 150] = True
    x = np.array([20.0, 1.0, 104.0, 112.0, 150.0, -5.0, 250.0])
    y = np.array([20.0, 100.0, 104.0, 104.0, 50.0, 50.0, 50.0])
    ra, dec = wcs.all_pix2world(x, y, 0)
    out = forced_photometry(Pixels(data, 1.0, mask=mask), wcs, ra, dec,
                            ImagePhotometry(4.0, zero_point=25.0),
                            ForcedOptions(saturated=saturated))
    assert np.allclose(out["x"], x, atol=1e-6) and np.allclose(out["y"], y, atol=1e-6)
    assert out["covered"].tolist() == [True, True, False, True, True, False, False]
    f = out["flags"]
    assert f[0] == 0
    assert f[1] == NEAR_EDGE
    assert f[2] & CENTRE_MASKED and np.isnan(out["flux"][2])
    assert f[3] == MASKED  # covered, its aperture reaches the masked square
    assert f[4] == SATURATED
    assert f[5] & OFF_IMAGE and f[6] & OFF_IMAGE
    assert np.isnan(out["mag"][0])  # zero flux: no magnitude, but a limit
    assert np.isfinite(out["mag_limit"][0])


def test_flag_bits_mean_what_they_mean_in_sources():
    assert (forced.SATURATED, forced.MASKED, forced.NEAR_EDGE) == (
        detect.SATURATED, detect.MASKED, detect.NEAR_EDGE)
    used = set(detect.FLAG_DESCRIPTIONS) | {32768}  # PSF_SPLIT (DESIGN)
    assert not {OFF_IMAGE, CENTRE_MASKED, forced.APERTURE_FLUX, forced.BLENDED} & used
    assert set(forced.FLAG_DESCRIPTIONS) == {SATURATED, MASKED, NEAR_EDGE, OFF_IMAGE,
                                             CENTRE_MASKED, forced.APERTURE_FLUX,
                                             forced.BLENDED}


def test_calibration_and_limit_agree_with_the_images_depth():
    from skysurvey.psf import depth_5sigma

    out = calibrate_fluxes([100.0, -5.0, 0.0], [10.0, 10.0, 10.0], [8.0, 8.0, 8.0], 25.0,
                           1.05, 0.01)
    assert out["flux"][0] == pytest.approx(105.0)
    assert out["flux_err"][0] == pytest.approx(np.hypot(10.5, 1.0))
    assert out["mag"][0] == pytest.approx(25.0 - 2.5 * np.log10(105.0))
    assert out["mag_err"][0] == pytest.approx(1.0857362 * out["flux_err"][0] / 105.0, rel=1e-6)
    assert np.isnan(out["mag"][1:]).all() and np.isnan(out["mag_err"][1:]).all()
    assert out["snr"][1] < 0
    # a full aperture on flat noise: the limit is the image's depth_5sigma, but for the
    # partial pixels at the rim (variance w^2 sigma^2 here, w sigma^2 in sqrt(pi) r sigma):
    # 0.035 mag deeper at r = 5 px
    data = np.zeros((100, 100))
    flux, err, sky, _ = aperture_flux(Pixels(data, 3.0), [50.3], [49.6], 5.0)
    limit = calibrate_fluxes(flux, err, sky, 27.0, 1.04)["mag_limit"][0]
    depth = depth_5sigma(27.0, 3.0, 5.0, 1.04)
    assert 0.0 < limit - depth < 0.05
    assert np.isnan(calibrate_fluxes([1.0], [1.0], [1.0], None)["mag"]).all()


# ---- against injected truth ------------------------------------------------------------------


def _star_field(seed: int, spacing: int = 40):
    """A 512 x 512 image: isolated stars on a jittered grid over x < 330 (r = 18.5..24, SNR
    ~5..600), nothing at x > 360 (blank positions there). Returns (SimImage, blank ra, dec)."""
    rng = np.random.default_rng(seed)
    wcs = _wcs((SIZE, SIZE), RA0, DEC0, SCALE, 0.0, False)
    g = np.arange(spacing // 2, SIZE - spacing // 2, spacing)
    gx, gy = np.meshgrid(g[g < 330], g)
    gx = gx.ravel() + rng.uniform(-3, 3, gx.size)
    gy = gy.ravel() + rng.uniform(-3, 3, gy.size)
    ra, dec = wcs.all_pix2world(gx, gy, 0)
    stars = pd.DataFrame({"kind": "star", "ra": ra, "dec": dec,
                          "mag_r": rng.uniform(18.5, 24.0, gx.size), "colour": 0.0,
                          "r_eff": 0.0, "sersic_n": 0.0, "ellipticity": 0.0, "angle": 0.0})
    image = make_image((SIZE, SIZE), seed=seed, band="r", ra=RA0, dec=DEC0, pixel_scale=SCALE,
                       sources=stars, fwhm_arcsec=1.0, return_model=True)
    bx, by = np.meshgrid(np.arange(376, 500, 32.0), np.arange(16, 500, 32.0))
    bra, bdec = wcs.all_pix2world(bx.ravel(), by.ravel(), 0)
    return image, bra, bdec


def _measure(tmp_path: Path, image, ids, ra, dec, correction=None, psf=True) -> pd.DataFrame:
    """Catalog the image with the handler's core (aperture radius, correction, zero point),
    then measure the positions with the forced step's own function (*correction*: replaces
    the image's aperture correction; *psf*: with the image's PSF model, as the step does,
    else the aperture)."""
    from skysurvey.astrometry import celestial_wcs
    from skysurvey.fitsread import read_fits
    from skysurvey.forced import icrs_to_pixel
    from skysurvey.forced_run import ForcedTask, measure_task, read_psf_stars
    from skysurvey.pipeline import catalog_image
    from skysurvey.queries import dataset
    from skysurvey.storage import open_store

    (tmp_path / "raw").mkdir(exist_ok=True)
    image.write(tmp_path / "raw" / "f.fits")
    reply = catalog_image(open_store(tmp_path / "raw"), "f.fits", open_store(tmp_path / "cat"))
    assert reply["status"] == "ok", reply["error"]
    row = dataset(str(tmp_path / "cat"), "images").to_table().to_pylist()[0]
    assert row["aperture_correction"] and row["footprint_hpx12"]
    if correction is not None:
        row = {**row, "aperture_correction": correction(row["aperture_radius"])}
    task = ForcedTask("", "f.fits", "", row)
    fits_image = read_fits(str(tmp_path / "raw" / "f.fits"), name="f.fits")
    stars = None
    if psf:
        wcs, _ = celestial_wcs(fits_image.header)
        ox, oy = icrs_to_pixel(wcs, ra, dec)
        stars = read_psf_stars(open_store(tmp_path / "cat"), row, ox, oy)
    return measure_task(task, fits_image, ids, ra, dec, stars).to_pandas()


def _true_correction(image):
    """The aperture correction of the drawn PSF: injected flux / aperture flux of the
    noise-free stars (the same for every star: one PSF)."""
    def correction(radius):
        truth = image.truth
        flux = aperture_flux(Pixels(image.model, 1.0), truth["x"], truth["y"],
                             radius)[0]
        return float(np.median(truth["flux"] / flux))
    return correction


@pytest.mark.parametrize("seed", [11, 12, 14])
def test_forced_fluxes_of_isolated_stars_match_the_injected_flux(tmp_path, seed):
    """With the drawn PSF's aperture correction: the forced measurement itself."""
    image, _, _ = _star_field(seed)
    truth = image.truth
    rows = _measure(tmp_path, image, np.arange(len(truth)), truth["ra"], truth["dec"],
                    _true_correction(image))
    assert len(rows) == len(truth)  # every star is on the image and covered
    true = truth["flux"].to_numpy()[rows["object_id"]]
    clean = rows["flags"].to_numpy() == 0
    snr = true / rows["flux_err"].to_numpy()
    ratio = rows["flux"].to_numpy() / true
    pull = (rows["flux"].to_numpy() - true) / rows["flux_err"].to_numpy()
    bright = clean & (snr >= 100)
    assert bright.sum() >= 7
    assert abs(np.median(ratio[bright]) - 1) < 0.005, np.median(ratio[bright])
    mid = clean & (snr >= 5) & (snr <= 100)
    assert mid.sum() >= 30
    assert 0.9 <= np.std(pull[mid]) <= 1.2, np.std(pull[mid])
    # magnitudes on the image's zero point
    mag = rows["mag"].to_numpy()
    good = bright & np.isfinite(mag)
    true_mag = truth["mag"].to_numpy()[rows["object_id"]]
    assert abs(np.median(mag[good] - true_mag[good])) < 0.006


def test_blank_positions_measure_zero_within_their_errors(tmp_path):
    image, bra, bdec = _star_field(13)
    rows = _measure(tmp_path, image, np.arange(bra.size), bra, bdec)
    assert len(rows) == bra.size
    z = (rows["flux"] / rows["flux_err"]).to_numpy()
    # apertures 32 px apart: independent
    assert abs(z.mean()) < 3 / np.sqrt(z.size), z.mean()
    assert 0.85 < z.std() < 1.2, z.std()
    assert (rows["mag_limit"] > 22).all() and rows["mag"].isna().mean() > 0.2


@pytest.mark.parametrize("seed", [11, 12])
def test_with_the_images_own_aperture_correction_fluxes_are_those_of_sources(tmp_path, seed):
    """With the correction psf.py measured (what the forced step uses): within 1.5% of the
    injected flux, as ``sources.flux_apcorr`` (measured: 0.989-0.997 for SNR >= 100; the
    image's correction comes out 0.3-1% low on these fields)."""
    from skysurvey.calibrate import nearest
    from skysurvey.queries import dataset

    image, _, _ = _star_field(seed)
    truth = image.truth
    rows = _measure(tmp_path, image, np.arange(len(truth)), truth["ra"], truth["dec"])
    true = truth["flux"].to_numpy()[rows["object_id"]]
    bright = (rows["flags"].to_numpy() == 0) & (true / rows["flux_err"].to_numpy() >= 100)
    forced_ratio = np.median(rows["flux"].to_numpy()[bright] / true[bright])
    assert abs(forced_ratio - 1) < 0.015
    sources = dataset(str(tmp_path / "cat"), "sources").to_table().to_pandas()
    j, _ = nearest(sources["x"], sources["y"], truth["x"], truth["y"], 1.0)
    ok = (j >= 0) & (sources["snr"].to_numpy() >= 100)
    detected_ratio = np.median(sources["flux_apcorr"].to_numpy()[ok] / truth["flux"].to_numpy()[
        j[ok]])
    assert abs(forced_ratio - detected_ratio) < 0.01


# ---- object-level summaries (lightcurves.py) -------------------------------------------------


def test_lightcurve_summaries_on_arrays():
    from skysurvey import lightcurves as lc

    oid = np.array([7, 7, 7, 7, 3, 3, 9])
    detected = np.array([True, True, False, False, True, False, True])
    assert lc.n_covering(oid).tolist() == [2, 4, 1]  # ids 3, 7, 9
    assert lc.n_covering(oid, ids=[9, 5]).tolist() == [1, 0]
    assert lc.n_forced_nondetections(oid, detected).tolist() == [1, 2, 0]
    # constant fluxes with unit errors: chi2 follows chi2(dof); a variable one is far above
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(2000), 10)
    flux = 100 + rng.normal(0, 1, ids.size)
    chi2, dof, mean = lc.chi2_constant(ids, flux, np.ones(ids.size))
    assert (dof == 9).all() and abs(np.mean(chi2) - 9) < 0.3 and np.allclose(mean, 100, atol=2)
    var = lc.chi2_constant([1] * 6, [100, 130, 70, 100, 140, 60], [2] * 6)[0]
    assert var[0] > 100
    assert np.isnan(lc.chi2_constant([1], [1.0], [1.0])[0][0])


def test_transient_rule_needs_a_deep_quiet_epoch():
    from skysurvey.lightcurves import EpochRows, transient_candidate

    # object 1: detected at 20.0 (SNR 30), two later images reach 21.0 and show nothing
    # object 2: detected at 20.0, the non-detection image only reaches 20.3 (not deep enough)
    # object 3: detected at 20.0, the other image shows flux (SNR 8) without a detection
    # object 4: a constant star, detected everywhere
    oid = [1, 1, 1, 2, 2, 3, 3, 4, 4]
    det = [True, False, False, True, False, True, False, True, True]
    snr = [30, 0.5, -1.0, 30, 0.2, 30, 8.0, 30, 30]
    mag = [20.0, np.nan, np.nan, 20.0, np.nan, 20.0, 22.0, 20.0, 20.0]
    limit = [22.0, 21.0, 21.0, 22.0, 20.3, 22.0, 22.0, 22.0, 22.0]
    candidate, n_quiet = transient_candidate(EpochRows(oid, det, snr, mag, limit))
    assert candidate.tolist() == [True, False, False, False]
    assert n_quiet.tolist() == [2, 0, 0, 0]


def test_a_psf_flux_can_replace_the_aperture():
    """``ForcedOptions.measure``: a PSF photometry function's flux (on the aperture's scale)
    goes through the same calibration (the aperture correction), flags and coverage."""
    shape = (100, 100)
    wcs = _wcs(shape, RA0, DEC0, SCALE, 0.0, False)
    ra, dec = wcs.all_pix2world([50.0, 500.0], [50.0, 50.0], 0)
    seen = {}

    def psf_flux(pixels, x, y, saturated):
        seen["x"] = x
        n = len(x)
        return np.full(n, 1000.0), np.full(n, 10.0), np.full(n, 8.0), np.zeros(n, np.int32)

    out = forced_photometry(Pixels(np.zeros(shape), 1.0), wcs, ra, dec,
                            ImagePhotometry(4.0, aperture_correction=1.5, zero_point=25.0),
                            ForcedOptions(measure=psf_flux))
    assert out["flux"][0] == 1500.0 and out["snr"][0] == 100.0
    assert out["mag"][0] == pytest.approx(25.0 - 2.5 * np.log10(1500.0))
    assert seen["x"][1] == pytest.approx(500.0) and out["flags"][1] & OFF_IMAGE  # modelled
    assert np.isnan(out["flux"][1]) and np.isnan(out["mag_limit"][1])


# ---- forced PSF photometry (forced_psf.py) ---------------------------------------------------


def _field_with_pairs(seed: int, fwhm: float):
    """The isolated stars of :func:`_star_field` (PSF stars) plus, in the blank half, six
    pairs: a constant r = 19.5 star with an r = 17.5 neighbour 1.5-2.5" away, drawn in seeing
    *fwhm* arcsec. Returns (SimImage, index of the faint pair members in the truth)."""
    rng = np.random.default_rng(seed)
    wcs = _wcs((SIZE, SIZE), RA0, DEC0, SCALE, 0.0, False)
    g = np.arange(20, SIZE - 20, 40)
    gx, gy = np.meshgrid(g[g < 330], g)
    gx = gx.ravel() + rng.uniform(-3, 3, gx.size)
    gy = gy.ravel() + rng.uniform(-3, 3, gy.size)
    mags = rng.uniform(18.5, 22.0, gx.size)
    py = np.arange(60.0, 480.0, 70.0)
    sep = np.linspace(6.0, 10.0, py.size)  # pixels: 1.5-2.5"
    px = np.r_[gx, np.full(py.size, 430.0), 430.0 + sep]
    pyy = np.r_[gy, py, py]
    mags = np.r_[mags, np.full(py.size, 19.5), np.full(py.size, 17.5)]
    ra, dec = wcs.all_pix2world(px, pyy, 0)
    stars = pd.DataFrame({"kind": "star", "ra": ra, "dec": dec, "mag_r": mags, "colour": 0.0,
                          "r_eff": 0.0, "sersic_n": 0.0, "ellipticity": 0.0, "angle": 0.0})
    image = make_image((SIZE, SIZE), seed=seed, band="r", ra=RA0, dec=DEC0, pixel_scale=SCALE,
                       sources=stars, fwhm_arcsec=fwhm)
    return image, np.arange(gx.size, gx.size + py.size)


def test_a_neighbours_light_does_not_follow_the_seeing_with_psf_fluxes(tmp_path):
    """A 19.5 star 1.5-2.5" from a 17.5 one: its aperture flux is 1.07-3.5 times the truth in
    0.8" seeing and 4-6.5 times in 1.5"; the joint PSF fit gives the star's flux in both
    (within 7%, median pull < 2.5), and the isolated stars' PSF fluxes agree with their
    aperture-corrected ones."""
    ratios, scale = {}, {}
    for fwhm in (0.8, 1.5):
        image, faint = _field_with_pairs(5, fwhm)
        truth = image.truth
        ids = np.arange(len(truth))
        for psf in (True, False):
            (tmp_path / f"{fwhm}{psf}").mkdir()
            rows = _measure(tmp_path / f"{fwhm}{psf}", image, ids, truth["ra"], truth["dec"],
                            psf=psf).set_index("object_id")
            assert ((rows["flags"] & forced.APERTURE_FLUX) > 0).all() != psf
            true = truth["flux"].to_numpy()
            flux, err = rows["flux"].reindex(ids).to_numpy(), rows["flux_err"].reindex(
                ids).to_numpy()
            ratios[fwhm, psf] = flux[faint] / true[faint]
            if psf:  # measured: 1.005-1.029 in 0.8", 1.012-1.053 in 1.5" (1 FWHM apart)
                assert (np.abs(flux[faint] / true[faint] - 1) < 0.07).all(), ratios[fwhm, psf]
                assert np.median(np.abs(flux[faint] - true[faint]) / err[faint]) < 2.5
            bright = (true / err > 50) & (np.arange(len(truth)) < faint[0])
            assert bright.sum() >= 2
            scale[fwhm, psf] = np.median(flux[bright] / true[bright])
        # both on the image's aperture-corrected scale (measured 0.994/0.994 in 0.8",
        # 0.984/0.980 in 1.5": the image's own correction)
        assert abs(scale[fwhm, True] - scale[fwhm, False]) < 0.01
    seeing_effect = np.median(ratios[1.5, False] - ratios[0.8, False])
    assert seeing_effect > 0.5  # the aperture follows the seeing (measured: 1.07-3.5 -> 4-6.5)
    assert abs(np.median(ratios[1.5, True] - ratios[0.8, True])) < 0.03


def test_joint_fit_is_exact_for_overlapping_psfs():
    """Noise-free overlapping copies of one model at known positions: the joint solve gives
    their amplitudes back (no iteration), groups of 1 to 3."""
    from skysurvey.forced_psf import PsfFitSettings, psf_fit
    from skysurvey.psfmodel import PsfGrid, render

    half = 12
    off = np.arange(-half, half + 1)
    r2 = off[None, :] ** 2 + off[:, None] ** 2
    basis = (1 + r2 / (2 * 2.0**2)) ** -3.5
    grid = PsfGrid((basis / basis.sum())[None], 1, half, 0, (50.0, 50.0), (50.0, 50.0))
    x = np.array([20.0, 24.3, 60.2, 63.1, 66.4, 40.0])
    y = np.array([20.0, 21.1, 60.7, 58.9, 61.8, 85.0])
    amp = np.array([1000.0, 300.0, 50.0, 800.0, 120.0, 10.0])
    image = np.zeros((100, 100))
    ix, iy, psf = render(grid, x, y, half)
    for k in range(x.size):
        image[iy[k] - half:iy[k] + half + 1, ix[k] - half:ix[k] + half + 1] += amp[k] * psf[k]
    settings = PsfFitSettings(grid, 4.0, 1e3)  # aperture holds everything: flux = amplitude
    flux, err, sky, flags = psf_fit(Pixels(image, 1.0), x, y, settings)
    assert np.allclose(flux, amp * np.sum(basis / basis.sum()), rtol=1e-6)
    assert (err > 0).all() and (sky <= err).all() and (flags == 0).all()


def test_psf_fit_in_batches_of_whole_groups_is_the_fit_in_one(monkeypatch):
    """The fit runs over batches of whole groups of objects whose stamps meet (in image order,
    FIT_BATCH_PIXELS stamp pixels each, for memory): small batches give the same fluxes,
    errors and flags as one batch, bit for bit, on a noisy crowded field with masked and NaN
    pixels, and no group is split."""
    import skysurvey.forced_psf as fp
    from skysurvey.psfmodel import PsfGrid, render

    half = 12
    off = np.arange(-half, half + 1)
    basis = (1 + (off[None, :] ** 2 + off[:, None] ** 2) / (2 * 2.0**2)) ** -3.5
    grid = PsfGrid((basis / basis.sum())[None], 1, half, 0, (100.0, 100.0), (100.0, 100.0))
    rng = np.random.default_rng(5)
    n = 100
    x, y = rng.uniform(-3, 203, n), rng.uniform(-3, 203, n)  # some just off the edges
    amp = rng.uniform(0, 2000, n)
    pad = half + 4
    image = np.zeros((200 + 2 * pad, 200 + 2 * pad))
    ix, iy, psf = render(grid, x + pad, y + pad, half)
    for k in range(n):
        image[iy[k] - half:iy[k] + half + 1, ix[k] - half:ix[k] + half + 1] += amp[k] * psf[k]
    image = image[pad:-pad, pad:-pad] + rng.normal(0, 3.0, (200, 200))
    mask = np.zeros(image.shape, bool)
    mask[50:56] = True
    image[150:152, 20:120] = np.nan  # non-finite pixels too
    pixels = Pixels(image, np.full(image.shape, 3.0), mask=mask, gain=2.0)
    settings = fp.PsfFitSettings(grid, 4.0, 6.0, 0.1)
    monkeypatch.setattr(fp, "FIT_BATCH_PIXELS", 10**12)
    whole = fp.psf_fit(pixels, x, y, settings)
    monkeypatch.setattr(fp, "FIT_BATCH_PIXELS", 7 * 25**2)  # 7 objects on 25² stamps
    batched = fp.psf_fit(pixels, x, y, settings)
    for a, b in zip(whole, batched, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (whole[3] & forced.BLENDED).any() and (whole[3] & forced.MASKED).any()
    # the batches: whole groups, every object once, groups of more than 7 kept whole
    ix0, iy0 = np.rint(x).astype(int), np.rint(y).astype(int)
    pi, pj = fp._pairs(ix0, iy0, 12 + 6)  # psf_fit's reach: stamp half + fit radius
    label = fp._components(n, pi, pj)
    parts = fp._batches(np.ones(n, bool), label, iy0, 7)
    assert len(parts) > 3 and np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert np.bincount(label).max() > 7
    for part in parts:
        assert np.isin(np.flatnonzero(np.isin(label, label[part])), part).all()


def test_psf_fit_of_objects_near_the_edges_only():
    """Batches whose stamps all reach beyond the image (objects within a stamp's half-size
    of an edge, the fitted-pixel box narrower than a stamp): fitted like the others, flagged
    NEAR_EDGE, the flux of a star whose stamp is cut still its amplitude."""
    from skysurvey.forced_psf import PsfFitSettings, psf_fit
    from skysurvey.psfmodel import PsfGrid, render

    half = 12
    off = np.arange(-half, half + 1)
    basis = (1 + (off[None, :] ** 2 + off[:, None] ** 2) / (2 * 2.0**2)) ** -3.5
    grid = PsfGrid((basis / basis.sum())[None], 1, half, 0, (50.0, 50.0), (50.0, 50.0))
    x, y = np.array([3.2, 96.1, 50.3, 1.0]), np.array([40.0, 60.4, 97.8, 2.0])
    amp = np.array([500.0, 800.0, 300.0, 200.0])
    pad = half + 2
    image = np.zeros((100 + 2 * pad, 100 + 2 * pad))
    ix, iy, psf = render(grid, x + pad, y + pad, half)
    for k in range(x.size):
        image[iy[k] - half:iy[k] + half + 1, ix[k] - half:ix[k] + half + 1] += amp[k] * psf[k]
    settings = PsfFitSettings(grid, 4.0, 1e3)  # aperture holds everything: flux = amplitude
    pixels = Pixels(image[pad:-pad, pad:-pad], 1.0)
    flux, err, _, flags = psf_fit(pixels, x, y, settings)
    assert np.allclose(flux, amp, rtol=1e-6), flux / amp
    assert ((flags & forced.NEAR_EDGE) > 0).all() and (err > 0).all()
    for k in range(x.size):  # alone: a batch whose box is narrower than a stamp
        one = psf_fit(pixels, x[k:k + 1], y[k:k + 1], settings)
        assert one[0][0] == pytest.approx(flux[k], rel=1e-9)
        assert one[3][0] == flags[k]


def test_psf_stars_may_carry_the_kron_fallback_flag():
    """Bit 4096 (a circular flux instead of Kron's) leaves a star's pixels fine: on an
    undersampled image most stars carry it and still make the PSF model. Other flags do not."""
    from skysurvey.forced_psf import psf_stars

    n = 12
    flags = np.full(n, 4096)
    flags[:2] = [1, 256]  # blended, saturated: never PSF stars
    sources = {"x": 50.0 + 80.0 * np.arange(n), "y": np.full(n, 100.0),
               "flux": np.full(n, 1e5), "flux_apcorr": np.full(n, 1e5),
               "snr": np.full(n, 200.0), "class_star": np.ones(n), "flags": flags,
               "fwhm": np.full(n, 1.6)}
    stars = psf_stars(sources, 1.6)
    assert stars is not None
    assert stars.stars.tolist() == [False, False] + [True] * (n - 2)


@pytest.mark.parametrize("factor", [2, 4])
def test_background_blocks_binned_and_put_back(factor):
    """The background's binning and its way back to the pixels, with trailing rows and
    columns that make no whole block (they repeat the last block's value)."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 100, (23, 30)).astype(np.float32)  # integers: sums exact
    by, bx = 23 // factor, 30 // factor
    blocks = (by, factor, bx, factor)
    np.testing.assert_array_equal(forced._binned(a, np.add, factor),
                                  a[:by * factor, :bx * factor].reshape(blocks).sum(axis=(1, 3)))
    m = rng.random(a.shape) < 0.05
    np.testing.assert_array_equal(forced._binned(m, np.logical_or, factor),
                                  m[:by * factor, :bx * factor].reshape(blocks).any(axis=(1, 3)))
    b = rng.normal(size=(by, bx)).astype(np.float32)
    up = np.pad(np.repeat(np.repeat(b, factor, 0), factor, 1),
                ((0, 23 - by * factor), (0, 30 - bx * factor)), mode="edge")
    np.testing.assert_array_equal(forced._upsampled(b, a.shape, factor=factor), up)
    np.testing.assert_array_equal(forced._upsampled(b, a.shape, minus=a, factor=factor), a - up)
    c = a.copy()
    assert forced._upsampled(b, a.shape, minus=c, factor=factor, out=c) is c
    np.testing.assert_array_equal(c, a - up)


def test_background_subtracted_in_place_is_the_same_and_calibrated():
    """``overwrite=True`` subtracts in the image's own pixels (native float32 only) with the
    same results bit for bit; on white noise the noise map is the pixels' noise."""
    from types import SimpleNamespace

    from astropy.io import fits

    rng = np.random.default_rng(8)
    data = (200 + rng.normal(0, 10, (259, 262))).astype(np.float32)
    x, y = rng.uniform(0, 262, 60), rng.uniform(0, 259, 60)
    image = SimpleNamespace(data=data.copy(), mask=None, header=fits.Header())
    kept = forced.background_subtracted(image, x, y, 4.0)
    np.testing.assert_array_equal(image.data, data)  # untouched by default
    assert abs(np.median(kept[1]) / 10 - 1) < 0.03, np.median(kept[1])
    assert abs(np.median(kept[0][np.isfinite(kept[0])])) < 0.5 and 0 < kept[4] < 0.5
    in_place = forced.background_subtracted(image, x, y, 4.0, overwrite=True)
    assert in_place[0] is image.data
    for a, b in zip(kept, in_place, strict=True):
        np.testing.assert_array_equal(a, b)
    big = SimpleNamespace(data=data.astype(">f4"), mask=None, header=fits.Header())
    other = forced.background_subtracted(big, x, y, 4.0, overwrite=True)  # not native: a copy
    assert other[0] is not big.data
    np.testing.assert_array_equal(big.data, data)
    np.testing.assert_array_equal(other[0], kept[0])


def test_isolated_stamps_use_their_own_disc_as_the_fitted_map():
    """Objects with no other object within reach are fitted on their own discs without the
    fitted-pixel map: the same numbers bit for bit, near the edges and over masked and NaN
    pixels too."""
    import skysurvey.forced_psf as fp
    from skysurvey.psfmodel import PsfGrid

    half = 12
    off = np.arange(-half, half + 1)
    basis = (1 + (off[None, :] ** 2 + off[:, None] ** 2) / (2 * 2.0**2)) ** -3.5
    grid = PsfGrid((basis / basis.sum())[None], 1, half, 0, (100.0, 100.0), (100.0, 100.0))
    rng = np.random.default_rng(9)
    g = np.arange(2.0, 200, 40)
    x, y = (a.ravel() + rng.uniform(-2, 2, a.size) for a in np.meshgrid(g, g))
    image = rng.normal(0, 3.0, (200, 200)) + 50.0
    mask = np.zeros(image.shape, bool)
    mask[40:44] = True
    image[120:122, 30:150] = np.nan
    pixels = Pixels(image, np.full(image.shape, 3.0), mask=mask, gain=2.0)
    settings = fp.PsfFitSettings(grid, 4.0, 6.0, 0.1)
    fast = fp._fit_subset(pixels, (x, y), 7, settings, None, isolated=True)
    drawn = fp._fit_subset(pixels, (x, y), 7, settings, None)
    for a, b in zip(fast, drawn, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (fast[3] & forced.NEAR_EDGE).any() and (fast[3] & forced.MASKED).any()


def _moffat_grid(half=12, centre=(50.0, 50.0)):
    from skysurvey.psfmodel import PsfGrid

    off = np.arange(-half, half + 1)
    basis = (1 + (off[None, :] ** 2 + off[:, None] ** 2) / (2 * 2.0**2)) ** -3.5
    return PsfGrid((basis / basis.sum())[None], 1, half, 0, centre, centre)


def test_joint_fit_is_least_squares_on_the_fitted_pixels_at_half_pixel_positions():
    """Two overlapping objects, one at x = 40.5 (a stamp centre rounded half to even) in a
    batch whose box starts at an odd column: the amplitudes are the least-squares solution
    on exactly the pixels within the fit radius of either object, computed here in float64
    from the same model stamps (a fitted-pixel map 1 px off moves them by ~4 sigma, with a
    bright pixel just inside the second object's radius)."""
    import skysurvey.forced_psf as fp
    from skysurvey.psfmodel import render

    grid, h = _moffat_grid(), 12
    x, y = np.array([31.0, 40.5]), np.array([50.0, 53.0])
    ix, iy, psf = render(grid, x, y, h)
    assert (ix.min() - h) % 2 == 1  # the box's first column is odd
    model = np.zeros((2, 100, 100))
    for k in range(2):
        model[k, iy[k] - h:iy[k] + h + 1, ix[k] - h:ix[k] + h + 1] = psf[k]
    rng = np.random.default_rng(5)
    image = rng.normal(0, 1.0, (100, 100)) + 1000 * model[0] + 800 * model[1]
    image[53, 46] += 300.0  # 5.5 px from the second object: fitted (radius 6)
    settings = fp.PsfFitSettings(grid, 4.0, 6.0)
    radius = max(fp.FIT_RADIUS_FWHM * 4.0, fp.MIN_FIT_RADIUS)
    yy, xx = np.mgrid[:100, :100]
    fitted = ((xx - x[:, None, None]) ** 2 + (yy - y[:, None, None]) ** 2 <= radius**2).any(0)
    design = model[:, fitted].T
    expected = np.linalg.lstsq(design, image[fitted], rcond=None)[0]
    amp = fp._fit_subset(Pixels(image.astype(np.float32), 1.0), (x, y), h, settings, None)[0]
    np.testing.assert_allclose(amp, expected, rtol=2e-5)


def test_objects_whose_stamps_lie_just_off_the_image_get_no_flux_and_no_error():
    """Objects half a pixel beyond a stamp's reach of the image (in psf_fit's band, but their
    rounded stamps hold no pixel of it): NaN fluxes flagged NEAR_EDGE, never an exception
    (that failed the whole image's forced file)."""
    import skysurvey.forced_psf as fp

    settings = fp.PsfFitSettings(_moffat_grid(), 4.0, 6.0)
    image = np.random.default_rng(0).normal(0, 1, (100, 100))
    for x, y in [((40.0, 45.0), (-12.7, -12.7)), ((40.0, 45.0), (111.6, 111.6)),
                 ((-12.7, -12.7), (40.0, 45.0))]:
        flux, err, _, flags = fp.psf_fit(Pixels(image, 1.0), np.array(x), np.array(y),
                                         settings)
        assert np.isnan(flux).all() and np.isnan(err).all()
        assert (flags & forced.NEAR_EDGE).all()


def test_background_of_small_images_uses_two_by_two_blocks():
    """Images under MIN_SIDE_4X4 px a side are binned 2 x 2 (4 x 4 left SEP too few blocks:
    an exception at 2-3 px, a zero noise map at 7 px): white noise of sigma 5 gives a noise
    map within 15% of 5 and a level near 100 at every size."""
    from types import SimpleNamespace

    from astropy.io import fits

    rng = np.random.default_rng(1)
    for shape in [(2, 50), (3, 50), (7, 7), (30, 31), (64, 64), (127, 200)]:
        data = (100 + rng.normal(0, 5, shape)).astype(np.float32)
        image = SimpleNamespace(data=data, mask=None, header=fits.Header())
        sub, rms, *_ = forced.background_subtracted(image, np.array([1.0]), np.array([1.0]),
                                                    2.0)
        assert 0.7 * 5 < np.median(rms) < 1.5 * 5, (shape, np.median(rms))
        assert abs(np.median(data - sub) - 100) < 5, shape
