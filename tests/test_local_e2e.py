"""The whole local pipeline, script by script, as `make demo` runs it (small images).

Each step is the script's own ``main(argv)``; the catalog it ends with is checked against the
generator's truth catalogs, and the query answers against pandas on the same Parquet files.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from conftest import load_script

pytestmark = pytest.mark.slow


def _script(name: str):
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    module = load_script(name)
    return module


def _match(sources: pd.DataFrame, truth: pd.DataFrame, radius: float = 1.5):
    """Index of the nearest detection for every truth row and its distance in pixels."""
    xy = sources[["x", "y"]].to_numpy()
    d = np.hypot(xy[:, 0][None, :] - truth["x"].to_numpy()[:, None],
                 xy[:, 1][None, :] - truth["y"].to_numpy()[:, None])
    nearest = d.argmin(axis=1)
    return nearest, d[np.arange(len(truth)), nearest]


def test_demo_pipeline_end_to_end(tmp_path, capsys):
    sample, raw, catalog, out = (tmp_path / n for n in ("sample", "raw", "catalog", "out"))

    # 1. generate
    assert _script("download_sample_fits").main(
        ["--output-dir", str(sample), "--count", "3", "--size", "768", "--seed", "7"]) == 0
    fits_files = sorted(p.name for p in sample.glob("*.fits"))
    assert len(fits_files) == 3

    # 2. upload into the local raw bucket
    assert _script("upload_to_s3").main(
        ["--input", str(sample), "--bucket", str(raw), "--no-progress"]) == 0
    assert sorted(p.name for p in (raw / "images").iterdir()) == fits_files

    # 3+4. the handler over every image in a process pool
    assert _script("invoke_lambda").main(
        ["--backend", "local", "--input", str(raw / "images"), "--catalog", str(catalog),
         "--workers", "2", "--no-progress", "--reference", str(sample / "reference.parquet")]) == 0
    printed = capsys.readouterr().out
    assert "Summary" in printed and "failed" in printed

    images = ds.dataset(catalog / "images", format="parquet", partitioning="hive").to_table()
    assert set(images["zero_point_source"].to_pylist()) == {"reference"}  # the sample's stars
    sources = ds.dataset(catalog / "sources", format="parquet", partitioning="hive").to_table()
    sources = sources.to_pandas()
    assert set(sources["image_id"]) == {n.removesuffix(".fits") for n in fits_files}

    # the catalog against the truth, image by image
    for image_id, found in sources.groupby("image_id"):
        truth = pd.read_csv(sample / "truth" / f"{image_id}.csv")
        bright = truth[(truth["snr"] >= 20) & truth["x"].between(5, 762)
                       & truth["y"].between(5, 762)]
        assert len(bright) >= 10
        nearest, dist = _match(found, bright)
        completeness = float(np.mean(dist < 1.5))
        assert completeness >= 0.9, (image_id, completeness)
        stars = bright[(bright["kind"] == "star").to_numpy() & (dist < 1.5)]
        matched = found.iloc[nearest[(bright["kind"] == "star").to_numpy() & (dist < 1.5)]]
        ratio = np.median(matched["flux"].to_numpy() / stars["flux"].to_numpy())
        assert 0.85 < ratio < 1.05, (image_id, ratio)
        assert matched["ra"].notna().all() and matched["mag"].notna().all()

    # 5. the named queries on DuckDB, checked against pandas
    export = out / "total.csv"
    assert _script("query_with_athena").main(
        ["--engine", "duckdb", "--catalog", str(catalog), "--query", "total_sources",
         "--output", str(export)]) == 0
    total = pd.read_csv(export)
    assert int(total.iloc[0]["total_sources"]) == len(sources)

    # 6. plots against the truth
    plots = out / "plots"
    assert _script("plot_catalog").main(
        ["--catalog", str(catalog), "--input", str(raw / "images"),
         "--truth", str(sample / "truth"), "--output-dir", str(plots)]) == 0
    pngs = list(plots.glob("*.png"))
    assert len(pngs) >= 5 and all(p.stat().st_size > 5000 for p in pngs)
