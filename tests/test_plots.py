"""Plots: the figures carry what they claim, and the step-6 script writes them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_script
from matplotlib.colors import to_rgb
from matplotlib.patches import Ellipse

from skysurvey import plots
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA, catalog_keys

SOURCES = pd.DataFrame({
    "image_id": ["a"] * 4, "x": [10.0, 20.0, 30.0, 40.0], "y": [5.0, 15.0, 25.0, 35.0],
    "a": [2.0, 1.5, 1.0, 3.0], "b": [1.0, 1.5, 1.0, 1.0], "theta": [0.0, 0.5, 1.0, -1.0],
    "ra": [150.0, 150.1, 150.2, np.nan], "dec": [2.0, 2.1, 2.2, np.nan],
    "mag": [18.0, 19.0, 20.0, 21.0], "snr": [100.0, 50.0, 10.0, 3.0], "band": list("ggrr"),
    "flux": [1e4, 4e3, 1.6e3, 6e2],
})


def _wcs(size=50, ra=150.0, dec=2.2, scale_arcsec=0.25):
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return wcs


def test_importing_the_plots_keeps_the_notebook_backend():
    """Jupyter's inline backend survives `import skysurvey.plots` (matplotlib.use("Agg") in the
    library switched it off: the notebook showed no figure)."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('module://matplotlib_inline.backend_inline'); "
            "import skysurvey.plots; print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "module://matplotlib_inline.backend_inline"


def test_plots_draw_into_the_axes_they_are_given():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert plots.plot_snr_histogram(SOURCES, ax=ax) is fig
    assert plots.plot_sky_map(SOURCES, ax=ax) is fig
    plt.close(fig)


def test_image_overlay_draws_one_ellipse_per_source_in_pixels_without_wcs():
    fig = plots.plot_image_with_sources(np.random.default_rng(0).normal(size=(50, 50)), SOURCES)
    ellipses = [p for p in fig.axes[0].patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 4
    assert ellipses[0].width == 2 * plots.ELLIPSE_SCALE * 2.0
    assert ellipses[1].angle == np.degrees(0.5)
    assert fig.axes[0].get_xlabel() == "x [px]"
    legend = fig.axes[0].get_legend().get_texts()[0].get_text()
    assert "3 x (a, b)" in legend and "4 sources" in legend


def test_image_overlay_with_wcs_has_sky_axes_band_and_north_east_arrows():
    fig = plots.plot_image_with_sources(np.zeros((50, 50)), SOURCES, "a", wcs=_wcs(), band="g")
    ax = fig.axes[0]
    assert hasattr(ax, "coords")  # astropy WCSAxes: RA/Dec ticks and grid
    assert ax.coords[0].get_axislabel() == "RA (ICRS)"
    assert ax.get_title() == "a - band g"
    arrows = {a.get_text(): a for a in ax.texts if a.get_text() in ("N", "E")}
    assert set(arrows) == {"N", "E"}
    # north up and east left for this WCS (CDELT1 < 0), from the arrow origin at (6, 6)
    nx, ny = arrows["N"].get_position()
    ex, ey = arrows["E"].get_position()
    assert abs(nx - 6) < 0.1 and ny > 6 + 5
    assert ex < 6 - 5 and abs(ey - 6) < 0.1


def test_sky_map_equal_angles_bands_apart_and_overlap_said():
    fig = plots.plot_sky_map(SOURCES)
    ax = fig.axes[0]
    assert ax.xaxis_inverted()
    offsets = [len(c.get_offsets()) for c in ax.collections]
    assert offsets == [2, 1]  # g, r; the source without RA/Dec is left out
    assert ax.get_aspect() == pytest.approx(1 / np.cos(np.radians(2.1)))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "g: 2 detections", "r: 1 detections"]
    assert "no overlap" in ax.get_title()
    two = pd.concat([SOURCES.assign(image_id="a"), SOURCES.assign(image_id="b", band="r")])
    assert plots.overlapping_images(two) == [("a", "b")]
    assert "2 overlapping" in plots.plot_sky_map(two).axes[0].get_title()


def test_histograms_count_every_source():
    fig = plots.plot_snr_histogram(SOURCES)
    assert sum(p.get_height() for p in fig.axes[0].patches) == 4
    fig = plots.plot_magnitude_histogram(SOURCES)
    assert len(fig.axes[0].get_legend().get_texts()) == 2  # one line per band


def test_empty_plots_are_refused_with_a_reason():
    no_mag = SOURCES.assign(mag=np.nan)
    with pytest.raises(plots.NothingToPlot, match="no magnitudes"):
        plots.plot_magnitude_histogram(no_mag)
    with pytest.raises(plots.NothingToPlot, match="no celestial WCS"):
        plots.plot_sky_map(SOURCES.assign(ra=np.nan, dec=np.nan))
    with pytest.raises(plots.NothingToPlot):
        plots.plot_mag_vs_truth(plots.match_to_truth(no_mag, SOURCES))


def test_match_to_truth_is_one_to_one():
    truth = pd.DataFrame({"x": [10.5, 30.2, 100.0, 10.0], "y": [5.0, 25.9, 100.0, 6.0],
                          "mag": [18.1, 20.1, 22.0, 23.0], "flux": [1.0, 2.0, 3.0, 4.0]})
    matched = plots.match_to_truth(SOURCES, truth, max_pix=1.5)
    # (10, 5) is 0.5 px from truth 0 and 1.0 px from truth 3: one pair only, the closer one
    assert matched["true_mag"].tolist() == [18.1, 20.1]
    assert matched["mag"].tolist() == [18.0, 20.0]
    assert matched["band"].tolist() == ["g", "r"]
    np.testing.assert_allclose(matched["sep"], [0.5, np.hypot(0.2, 0.9)])
    # a truth pair around one detection: nearest-neighbour would use the detection twice
    i, j, _ = plots.match_one_to_one(np.array([[0.0, 0.0], [5.0, 0.0]]),
                                     np.array([[0.2, 0.0], [0.4, 0.0], [4.0, 0.0]]), 1.5)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 0), (1, 2)]


def test_mag_vs_truth_has_residual_panel_and_band_colours():
    matched = pd.DataFrame({"band": list("gggrrr"), "true_mag": [18, 19, 20, 18, 19, 20.0],
                            "mag": [18.1, 19.0, 19.9, 18.0, 19.2, 20.0]})
    fig = plots.plot_mag_vs_truth(matched)
    top, bottom = fig.axes
    assert [c.get_facecolor()[0][:3].round(3).tolist() for c in top.collections] == [
        list(np.round(to_rgb(plots.band_color(b)), 3)) for b in "gr"]
    np.testing.assert_allclose(bottom.collections[0].get_offsets()[:, 1], [0.1, 0.0, -0.1],
                               atol=1e-9)
    assert bottom.get_ylabel() == "measured - true"


def test_plot_script_writes_pngs_and_fails_cleanly_without_catalog(tmp_path, capsys):
    from conftest import draw_fits

    images = tmp_path / "raw" / "images"
    images.mkdir(parents=True)
    draw_fits(images / "a.fits", size=64, n_stars=3)
    table = pa.Table.from_pandas(SOURCES.drop(columns=["band"]).assign(
        source_id=np.arange(4, dtype=np.int32)), preserve_index=False)
    for name in SOURCES_SCHEMA.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(4, SOURCES_SCHEMA.field(name).type))
    key = catalog_keys("a", "r", "2026-03-14")["sources"]
    (tmp_path / "cat" / key).parent.mkdir(parents=True)
    pq.write_table(table.select(SOURCES_SCHEMA.names).cast(SOURCES_SCHEMA), tmp_path / "cat" / key)
    truth = tmp_path / "truth"
    truth.mkdir()
    pd.DataFrame({"x": [10.0], "y": [5.0], "mag": [18.2], "flux": [1.0]}).to_csv(
        truth / "a.csv", index=False)

    script = load_script("plot_catalog")
    out = tmp_path / "plots"
    report = tmp_path / "report.html"
    images_table = pa.Table.from_pylist([{"image_id": "a", "n_sources": 4, "bkg_median": 100.0,
                                          "bkg_rms": 5.0, "fwhm_median": 4.0, "pixel_scale": 0.25,
                                          "zero_point": 30.0, "seconds": 0.5,
                                          "warnings": "no <celestial> WCS"}],
                                        schema=IMAGES_SCHEMA)
    images_key = tmp_path / "cat" / catalog_keys("a", "r", "2026-03-14")["images"]
    images_key.parent.mkdir(parents=True)
    pq.write_table(images_table, images_key)
    assert script.main(["--catalog", str(tmp_path / "cat"), "--input", str(images),
                        "--truth", str(truth), "--output-dir", str(out),
                        "--report", str(report)]) == 0
    captured = capsys.readouterr()
    assert f"report: {report}" in captured.out
    assert "skipped objects_sky_map.png: no objects: run scripts/build_objects.py" in captured.err
    page = report.read_text()
    assert page.count('src="data:image/png;base64,') == 6  # every figure, embedded
    assert "http://" not in page and "https://" not in page  # opens offline
    assert "<td>a</td>" in page and "seeing [arcsec]" in page and "<td>1</td>" in page
    assert "no &lt;celestial&gt; WCS" in page  # warnings shown, escaped
    for name in ("total_sources", "source_statistics", "bright_sources", "snr_distribution"):
        assert f"<h3>{name}</h3>" in page
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["detections_a.png", "image_quality.png", "mag_vs_truth.png",
                     "magnitudes.png", "sky_map.png", "snr.png"]
    assert all((out / n).stat().st_size > 5000 for n in names)
    capsys.readouterr()

    # no magnitudes and no WCS: those plots are skipped with one line each, not drawn empty
    pq.write_table(table.select(SOURCES_SCHEMA.names).cast(SOURCES_SCHEMA).set_column(
        SOURCES_SCHEMA.get_field_index("mag"), "mag", pa.nulls(4, pa.float64())).set_column(
        SOURCES_SCHEMA.get_field_index("ra"), "ra", pa.nulls(4, pa.float64())),
        tmp_path / "cat" / key)
    out2 = tmp_path / "plots2"
    assert script.main(["--catalog", str(tmp_path / "cat"), "--input", str(images),
                        "--output-dir", str(out2), "--report", str(report)]) == 0
    assert sorted(p.name for p in out2.glob("*.png")) == ["detections_a.png", "image_quality.png",
                                                          "snr.png"]
    err = capsys.readouterr().err
    assert "skipped magnitudes.png: no magnitudes" in err
    assert "skipped sky_map.png: no source has RA/Dec" in err
    page = report.read_text()
    assert page.count("data:image/png") == 3 and "skipped sky_map.png: no source" in page
    assert script.main(["--catalog", str(tmp_path / "none"), "--output-dir", str(out)]) == 1
    assert "no catalog here" in capsys.readouterr().err


def _catalogued(tmp_path, band="r"):
    """A small image catalogued by the pipeline, with a reference made from its truth."""
    from conftest import draw_fits

    from skysurvey.pipeline import catalog_image
    from skysurvey.storage import open_store

    raw = tmp_path / "raw"
    raw.mkdir()
    truth = draw_fits(raw / "a.fits", size=96, n_stars=10, seed=3, band=band)
    assert catalog_image(open_store(raw), "a.fits",
                         open_store(tmp_path / "cat"))["status"] == "ok"
    return plots.read_catalog(tmp_path / "cat"), plots.read_catalog(tmp_path / "cat", "images"), \
        truth


def test_match_to_reference_pairs_each_image_with_its_band_column(tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS

    sources, images, truth = _catalogued(tmp_path)
    wcs = WCS(fits.getheader(tmp_path / "raw" / "a.fits"))
    xs, ys, fluxes = (np.array(v) for v in zip(*truth, strict=True))
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    reference = pd.DataFrame({"ra": ra, "dec": dec, "gmag": 0.0,
                              "rmag": 30.0 - 2.5 * np.log10(fluxes) + 0.5})  # 0.5 mag fainter
    path = tmp_path / "ref.parquet"
    reference.to_parquet(path)
    pairs = plots.match_to_reference(sources, images, str(path))
    assert 8 <= len(pairs) <= 10 and set(pairs["band"]) == {"r"}
    assert pairs["sep_arcsec"].max() < 0.1
    bright = pairs[pairs["ref_mag"] < 20]
    assert abs(bright["residual"].median() + 0.5) < 0.05  # the header's MAGZERO against rmag
    fig = plots.plot_calibration_residuals(pairs)
    assert len(fig.axes[0].collections[0].get_offsets()) == len(pairs)
    with pytest.raises(plots.NothingToPlot):
        plots.plot_calibration_residuals(pairs[:0])


def test_image_quality_shows_seeing_depth_and_zero_point_per_image():
    from skysurvey.report import quality_table

    images = pd.DataFrame({"image_id": ["a", "b", "c"], "band": ["g", "r", "g"],
                           "night": ["n"] * 3, "fwhm_arcsec": [1.0, 0.9, np.nan],
                           "fwhm_median": [4.0, 3.6, 4.4], "pixel_scale": [0.25] * 3,
                           "depth_5sigma": [22.5, 22.8, 22.1], "zero_point": [29.6, 30.0, 29.5],
                           "zero_point_err": [0.01, 0.02, 0.01]})
    quality = quality_table(images)
    assert quality["seeing_arcsec"].tolist() == [1.0, 1.1, 0.9]  # a, c (from fwhm_median), b
    fig = plots.plot_image_quality(quality)
    seeing, depth, zp = fig.axes
    assert depth.get_ylabel() == "5-sigma depth [mag]"
    assert zp.get_ylabel() == "zero point [mag]"
    assert [t.get_text() for t in seeing.get_xticklabels()] == ["a", "c", "b"]
    with pytest.raises(plots.NothingToPlot):
        plots.plot_image_quality(quality.assign(seeing_arcsec=np.nan, depth_5sigma=np.nan,
                                                zero_point=np.nan))


def test_report_tables_keep_coordinate_digits():
    from skysurvey.report import render_html

    page = render_html({"images": 1}, pd.DataFrame(), {},
                       {"bright": pd.DataFrame({"ra": [150.2012345678], "mjd": [61114.158333],
                                                "dist": [0.0035]})})
    assert "<td>150.201235</td>" in page and "<td>61114.158333</td>" in page
    assert "<td>0.0035</td>" in page


def test_read_catalog_sees_what_sql_sees(tmp_path):
    """A killed run's orphan sources file (no images record) is not plotted, as SQL skips it."""
    sources, _, _ = _catalogued(tmp_path)
    done = next((tmp_path / "cat" / "sources").rglob("*.parquet"))
    table = pq.read_table(done)
    table = table.set_column(0, "image_id", pa.array(["killed"] * table.num_rows))
    pq.write_table(table, done.with_name("killed.parquet"))  # sources, no image record
    again = plots.read_catalog(tmp_path / "cat")
    assert len(again) == len(sources) > 0
    assert set(again["image_id"]) == {"a"} and set(again["band"]) == {"r"}


def _field(ra, dec, n=200, side=0.1, seed=0):
    """Detections spread over a square field of *side* degrees centred on (ra, dec)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"ra": (ra + (rng.uniform(-side, side, n) / 2)
                                / np.cos(np.radians(dec))) % 360,
                         "dec": dec + rng.uniform(-side, side, n) / 2, "band": "r",
                         "flux": 100.0, "snr": 10.0})


def test_sky_map_overlap_comes_from_the_fields_not_their_ra_dec_boxes():
    """Six disjoint fields, one across RA 0 (its RA/Dec box spans 0-360 and "overlapped" all
    the others); then two dithered pointings half a field apart, which do overlap."""
    disjoint = pd.concat([_field(ra, 2.0, seed=k).assign(image_id=f"f{k}")
                          for k, ra in enumerate([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])])
    assert disjoint["ra"].max() > 359.9 and disjoint["ra"].min() < 0.1
    assert plots.overlapping_images(disjoint) == []
    title = plots.plot_sky_map(disjoint).axes[0].get_title()
    assert "6 image(s), no overlap" in title
    # side by side, touching, but not overlapping: still none
    touching = pd.concat([_field(150.0, 2.0, seed=1).assign(image_id="a"),
                          _field(150.0 + 0.1 / np.cos(np.radians(2.0)), 2.0, seed=2)
                          .assign(image_id="b")])
    assert plots.overlapping_images(touching) == []
    dithered = pd.concat([_field(150.0, 2.0, seed=1).assign(image_id="a"),
                          _field(150.05, 2.01, seed=2).assign(image_id="b"),
                          _field(151.0, 2.0, seed=3).assign(image_id="c")])
    assert plots.overlapping_images(dithered) == [("a", "b")]
    assert "3 images, 2 overlapping" in plots.plot_sky_map(dithered).axes[0].get_title()


def test_negative_fluxes_are_left_out_of_the_figures_and_said_so():
    with_negative = pd.concat([SOURCES, SOURCES.iloc[:2].assign(flux=[-50.0, 0.0],
                                                                 snr=[-2.0, 0.0])])
    fig = plots.plot_snr_histogram(with_negative)
    assert sum(p.get_height() for p in fig.axes[0].patches) == 4
    assert "(2 with flux <= 0 left out)" in fig.axes[0].get_title()
    sky = plots.plot_sky_map(with_negative).axes[0]
    assert sum(len(c.get_offsets()) for c in sky.collections) == 3  # one has no RA/Dec
    assert "(2 with flux <= 0 left out)" in sky.get_title()
    assert "(2 with flux <= 0 left out)" in plots.plot_magnitude_histogram(
        with_negative).axes[0].get_title()
    overlay = plots.plot_image_with_sources(np.zeros((50, 50)), with_negative)
    assert len([p for p in overlay.axes[0].patches if isinstance(p, Ellipse)]) == 4
    assert "2 with flux <= 0 left out" in overlay.axes[0].get_legend().get_texts()[0].get_text()
    # without any, the captions say nothing
    assert "left out" not in plots.plot_snr_histogram(SOURCES).axes[0].get_title()


def test_snr_distribution_leaves_out_negative_fluxes(tmp_path):
    from skysurvey.queries import NAMED_QUERIES, run_named

    sources, _, _ = _catalogued(tmp_path)
    path = next((tmp_path / "cat" / "sources").rglob("*.parquet"))
    table = pq.read_table(path)
    flux = table["flux"].to_numpy().copy()
    snr = table["snr"].to_numpy().copy()
    flux[:2], snr[:2] = [-30.0, 0.0], [-1.5, 0.0]
    table = table.set_column(table.schema.get_field_index("flux"), "flux", pa.array(flux))
    table = table.set_column(table.schema.get_field_index("snr"), "snr", pa.array(snr))
    pq.write_table(table, path)
    got = run_named("snr_distribution", str(tmp_path / "cat"))
    assert got["n_sources"].sum() == len(sources) - 2 and got["min_snr"].min() > 0
    assert "flux > 0" in NAMED_QUERIES["snr_distribution"].description


def test_image_quality_keeps_its_scale_with_an_outlier():
    """One image with a 9,800-arcsec seeing (a broken PSF fit) no longer squashes the others."""
    from skysurvey.report import quality_table

    images = pd.DataFrame({"image_id": list("abcde"), "band": list("gggrr"), "night": ["n"] * 5,
                           "fwhm_arcsec": [1.0, 1.1, 0.9, 9800.0, 1.05],
                           "depth_5sigma": [22.5, 22.6, 22.4, 22.5, 22.7],
                           "zero_point": [29.6, 29.7, 29.65, 29.6, 30.0]})
    fig = plots.plot_image_quality(quality_table(images))
    seeing, depth, zp = fig.axes
    low, high = seeing.get_ylim()
    assert 0.8 < low < 0.9 and 1.1 < high < 1.5
    assert any(t.get_text() == "9800" for t in seeing.texts)
    assert seeing.get_title() == "1 outlier(s) off scale (triangles)"
    assert depth.get_title() == "" and zp.get_title() == ""  # nothing hidden there
    assert depth.get_ylim()[0] < 22.4 and depth.get_ylim()[1] > 22.7
    limits, outliers = plots.robust_limits(pd.Series([1.0, 1.1, np.nan, 9800.0]), 0.5)
    assert outliers.tolist() == [9800.0] and limits[1] < 2


def test_report_shows_bound_values_and_sensible_decimals(tmp_path):
    from skysurvey.queries import NAMED_QUERIES
    from skysurvey.report import QUALITY_DECIMALS, quality_table, query_caption, write_report

    assert query_caption("sources with SNR >= ?", (5.0,)) == "sources with SNR >= 5"
    assert query_caption("within ? arcsec of ?", (1.5,)) == "within 1.5 arcsec of ?"
    assert query_caption("a cone", (150.1, 2.2)) == "a cone (bound values: 150.1, 2.2)"
    _catalogued(tmp_path)
    page = write_report(tmp_path / "report.html", str(tmp_path / "cat")).read_text()
    captions = re.findall(r"</h3><p>(.*?)</p>", page)
    assert len(captions) == len(NAMED_QUERIES)
    assert not any("?" in c for c in captions), captions
    assert "(sources with SNR &gt;= 5)" in page and "with SNR &gt;= 10" in page
    # no objects step yet: the empty survey queries say so
    assert "<h3>variables</h3>" in page
    assert page.split("<h3>variables</h3>", 1)[1].split("<h3>", 1)[0].count(
        "(no rows): the catalog has no objects table yet: run the objects step") == 1
    images = plots.read_catalog(tmp_path / "cat", "images")
    quality = quality_table(images)
    for column, decimals in QUALITY_DECIMALS.items():
        values = quality[column].dropna()
        assert (values.round(decimals) == values).all(), column
    table = page.split("<h2>Image quality</h2>", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<td>([-\d.]+)</td>", table)
    assert cells and max(len(c.split(".")[1]) for c in cells if "." in c) <= 3, cells
    seeing = f"{quality['seeing_arcsec'].iloc[0]:.2f}"
    assert f"<td>{seeing}</td>" in table


def test_plot_script_puts_the_report_in_the_folder_it_was_given(tmp_path, capsys):
    _catalogued(tmp_path)
    script = load_script("plot_catalog")
    out = tmp_path / "x" / "plots"
    assert script.main(["--catalog", str(tmp_path / "cat"), "--input", str(tmp_path / "raw"),
                        "--output-dir", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["plots"]
    assert script._default_report(str(script.OUTPUT_DIR / "plots")) == (
        script.OUTPUT_DIR / "report.html")  # the demo's data/output/report.html


def test_light_curves_one_panel_per_object_limits_as_downward_triangles():
    """The `light_curve` rows of two objects: detections, a forced point where nothing was
    detected, and non-detections drawn at their 5-sigma limit as downward triangles."""
    rows = pd.DataFrame({
        "object_id": [7, 7, 7, 7, 9, 9],
        "mjd": [61130.1, 61131.1, 61132.1, 61132.2, 61130.1, 61131.1],
        "band": ["g", "g", "r", "g", "r", "r"],
        "mag": [20.1, None, None, None, 18.0, 18.1], "mag_err": [0.05, None, None, None, .02, .02],
        "forced_mag": [20.1, 21.0, None, None, 18.0, 18.1],
        "forced_mag_err": [0.05, 0.3, None, None, 0.02, 0.02],
        "forced_snr": [20, 3.5, 1.0, None, 50, 50],
        "mag_limit": [22.0, 22.1, 21.5, 21.9, 22.0, 22.0],
        "is_detection": [True, False, False, False, True, True],
        "is_upper_limit": [False, False, True, True, False, False]})
    fig = plots.plot_light_curves(rows)
    first, second = fig.axes
    assert first.get_title() == "object 7" and second.get_title() == "object 9"
    triangles = [c for c in first.collections if c.get_offsets().shape[0]
                 and c.get_paths()[0].vertices[:, 1].min() < 0]  # "v" points down
    limits = sorted(y for c in triangles for _, y in c.get_offsets())
    assert limits == [21.5, 21.9]  # the r and g epochs without flux, at their limits
    labels = sorted(t.get_text() for t in first.get_legend().get_texts())
    assert labels == ["g detected", "g forced", "g limit (5σ, no flux)", "r limit (5σ, no flux)"]
    assert first.yaxis_inverted()
    colours = {c.get_label(): tuple(c.get_facecolor()[0]) for c in triangles}
    assert colours["g limit (5σ, no flux)"] != colours["r limit (5σ, no flux)"]
    import matplotlib.pyplot as plt

    plt.close(fig)
