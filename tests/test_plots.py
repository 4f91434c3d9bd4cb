"""Plots: the figures carry what they claim, and the step-6 script writes them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import load_script
from matplotlib.patches import Ellipse

from skysurvey import plots
from skysurvey.schema import SOURCES_SCHEMA, catalog_keys

SOURCES = pd.DataFrame({
    "image_id": ["a"] * 4, "x": [10.0, 20.0, 30.0, 40.0], "y": [5.0, 15.0, 25.0, 35.0],
    "a": [2.0, 1.5, 1.0, 3.0], "b": [1.0, 1.5, 1.0, 1.0], "theta": [0.0, 0.5, 1.0, -1.0],
    "ra": [150.0, 150.1, 150.2, np.nan], "dec": [2.0, 2.1, 2.2, np.nan],
    "mag": [18.0, 19.0, 20.0, 21.0], "snr": [100.0, 50.0, 10.0, 3.0], "band": list("ggrr"),
    "flux": [1e4, 4e3, 1.6e3, 6e2],
})


def test_image_overlay_draws_one_ellipse_per_source():
    fig = plots.plot_image_with_sources(np.random.default_rng(0).normal(size=(50, 50)), SOURCES)
    ellipses = [p for p in fig.axes[0].patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 4
    assert ellipses[0].width == 2 * plots.ELLIPSE_SCALE * 2.0
    assert ellipses[1].angle == np.degrees(0.5)


def test_sky_map_has_ra_increasing_to_the_left_and_skips_missing_coordinates():
    fig = plots.plot_sky_map(SOURCES)
    ax = fig.axes[0]
    assert ax.xaxis_inverted()
    assert len(ax.collections[0].get_offsets()) == 3


def test_histograms_count_every_source():
    fig = plots.plot_snr_histogram(SOURCES)
    assert sum(p.get_height() for p in fig.axes[0].patches) == 4
    fig = plots.plot_magnitude_histogram(SOURCES)
    assert len(fig.axes[0].get_legend().get_texts()) == 2  # one line per band


def test_match_to_truth_pairs_nearest_within_radius():
    truth = pd.DataFrame({"x": [10.5, 30.2, 100.0], "y": [5.0, 25.9, 100.0],
                          "mag": [18.1, 20.1, 22.0], "flux": [1.0, 2.0, 3.0]})
    matched = plots.match_to_truth(SOURCES, truth, max_pix=1.5)
    assert matched["true_mag"].tolist() == [18.1, 20.1]
    assert matched["mag"].tolist() == [18.0, 20.0]
    np.testing.assert_allclose(matched["sep"], [0.5, np.hypot(0.2, 0.9)])


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
    assert script.main(["--catalog", str(tmp_path / "cat"), "--images", str(images),
                        "--truth", str(truth), "--output", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["detections_a.png", "mag_vs_truth.png", "magnitudes.png", "sky_map.png",
                     "snr.png"]
    assert all((out / n).stat().st_size > 5000 for n in names)
    assert script.main(["--catalog", str(tmp_path / "none"), "--output", str(out)]) == 1
    assert "no catalog here" in capsys.readouterr().err
