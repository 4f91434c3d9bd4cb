"""The notebook runs top to bottom, headless, on a tiny generated sample: with local folders, and
with s3:// buckets on a real HTTP moto server (the kernel is another process: it reaches moto
through AWS_ENDPOINT_URL exactly as it would reach S3). The kernel keeps its default (inline)
matplotlib backend, as in Jupyter: every cell tagged ``figure`` must show an image.
The committed .ipynb is exactly what tools/make_notebook.py generates."""

from __future__ import annotations

import json
import re

import nbformat
import pandas as pd
import pytest
from astropy.table import Table
from conftest import load_script
from nbclient import NotebookClient

from skysurvey.config import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "sky_analysis.ipynb"


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebook",
                                                  REPO_ROOT / "tools" / "make_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebook_is_the_generators_output_with_stable_ids():
    generator = _generator()
    assert NOTEBOOK.read_text(encoding="utf-8") == generator.render()
    assert generator.render() == generator.render()  # same ids every time
    nb = nbformat.reads(generator.render(), as_version=4)
    nbformat.validate(nb)
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == len(ids) and ids[:3] == ["intro-0", "config-0", "config-1"]
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")
    # counts are computed, never written into the prose: a static "three images" or "one night"
    # was wrong as soon as the buckets held the demo's six images on two nights
    count_words = r"\b(?:one|two|three|four|five|six|twelve|\d+) (?:images?|nights?|pointings?|" \
                  r"bands?|sample images)\b"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            assert not re.search(count_words, cell.source), (cell.id, re.findall(
                count_words, cell.source))
    headings = [c.source.splitlines()[0] for c in nb.cells
                if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert len(headings) >= 7
    # every section opens with prose that says what to look at
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            assert "**Look at:**" in cell.source, cell.source.splitlines()[0]


def _figure_cells(nb):
    return [c for c in nb.cells if "figure" in c.metadata.get("tags", [])]


def _markdown_outputs(nb) -> str:
    """The Markdown the code cells displayed (prose rendered from computed values)."""
    return "\n".join(o["data"]["text/markdown"] for c in nb.cells for o in c.get("outputs", [])
                     if "text/markdown" in o.get("data", {}))


def _expected_counts(sample: dict):
    """``(images, nights, pointings)`` from the generator's metadata.json, and what the
    generator was asked for: 3 images on one night at one pointing (the notebook's own
    sample), or the demo's 6 on two nights at two pointings."""
    images = sample["images"]
    nights = sorted({m["date_obs"][:10] for m in images})
    pointings = len({(m["ra_center"], m["dec_center"]) for m in images})
    expected = {3: (3, ["2026-03-14"], 1), 6: (6, ["2026-03-14", "2026-03-15"], 2)}
    return len(images), nights, pointings, expected[len(images)]


def _run_notebook(tmp_path, monkeypatch, n_images=3):
    """Run the notebook; with ``n_images=6`` the sample folder holds the demo's six images
    (two nights, two pointings) first, as after `make demo`."""
    from skysurvey.synth import write_sample
    from skysurvey.upload import find_fits

    if n_images != 3:
        write_sample(tmp_path / "sample", count=n_images, size=768)

    monkeypatch.setenv("SKYSURVEY_SAMPLE_DIR", str(tmp_path / "sample"))
    monkeypatch.setenv("SKYSURVEY_SAMPLE_SIZE", "384")
    monkeypatch.setenv("SKYSURVEY_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's default, as in Jupyter
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code")
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    figures = _figure_cells(nb)
    assert len(figures) >= 5
    for cell in figures:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1, (cell.id, cell.source, [o.get("output_type") for o in
                                                         cell.outputs])
    exported = Table.read(tmp_path / "out" / "sources.fits")
    assert len(exported) > 20 and len(set(exported["image_id"])) == n_images
    assert exported["ra"].unit == "deg" and exported["flux"].unit == "adu"
    assert Table.read(tmp_path / "out" / "sources.vot")["mag"].unit == "mag"
    on_first = int((exported["image_id"] == "sky_g_001").sum())
    assert (tmp_path / "out" / "sky_g_001.reg").read_text().count("ellipse(") == on_first > 3
    stats = pd.read_csv(tmp_path / "out" / "source_statistics.csv")
    assert stats["n_sources"].sum() > 0
    # the statistics cell measured the catalog against the truth
    outputs = "".join(str(o) for c in nb.cells for o in c.get("outputs", []))
    assert "completeness" in outputs
    # the calibration, objects and LSDB sections ran on what the others built
    assert "calibrated - true [mmag]" in outputs and "variable objects" in outputs
    assert "objects matched a reference star" in outputs and "HATS export" in outputs
    # no output line a reader must learn to ignore: dask's chatter, hats' root-logger note
    streams = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                      if o.get("output_type") == "stream" and o.get("name") == "stderr")
    assert "Looking for catalog" not in streams and "distributed." not in streams, streams
    # the light-curve survey sits beside the sample, not in it: `upload_to_s3.py --input
    # data/sample` (make demo) still finds exactly the sample's images
    sample = json.loads((tmp_path / "sample" / "metadata.json").read_text())
    demo_raw = tmp_path / "demo-raw"
    assert load_script("upload_to_s3").main(["--input", str(tmp_path / "sample"), "--bucket",
                                             str(demo_raw), "--no-progress"]) == 0
    assert sorted(p.relative_to(demo_raw / "images").as_posix()
                  for p in (demo_raw / "images").rglob("*") if p.is_file()) == sorted(
        m["file"] for m in sample["images"])
    assert len(find_fits(tmp_path / "survey")) == 12  # 6 nights x 2 bands
    # the prose's numbers are the data's: the generator drew 3 images, g, r, i, one night,
    # one pointing; the survey 6 nights in g and r
    said = _markdown_outputs(nb)
    n, nights, pointings, expected = _expected_counts(sample)
    assert (n, nights, pointings) == expected
    assert (f"**This catalog:** {n} images in 3 bands (g, i, r), taken on {len(nights)} "
            f"night{'s' * (len(nights) > 1)} ({', '.join(nights)}) at {pointings} "
            f"pointing{'s' * (pointings > 1)};") in said, said
    assert (f"The {n} images were taken at {pointings} pointing{'s' * (pointings > 1)} on "
            f"{len(nights)} night{'s' * (len(nights) > 1)} in 3 bands; {n} of them overlap") \
        in said
    assert "the survey: 12 images, 6 nights x 2 bands (g, r)" in said
    assert re.search(r"Median measured - true magnitude: \+0\.0[1-7]\d mag", said), said
    return outputs


@pytest.mark.slow
def test_notebook_runs_and_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("BUCKET_RAW", str(tmp_path / "raw"))
    monkeypatch.setenv("BUCKET_CATALOG", str(tmp_path / "catalog"))
    outputs = _run_notebook(tmp_path, monkeypatch)
    assert "mode: local" in outputs
    assert len(list((tmp_path / "catalog" / "sources").rglob("*.parquet"))) == 3


@pytest.mark.slow
def test_notebook_on_s3_buckets(tmp_path, monkeypatch, moto_server):
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")  # AWS_ENDPOINT_URL points at moto
    s3.create_bucket(Bucket="nb-raw")
    s3.create_bucket(Bucket="nb-catalog")
    monkeypatch.setenv("BUCKET_RAW", "s3://nb-raw")
    monkeypatch.setenv("BUCKET_CATALOG", "s3://nb-catalog")
    outputs = _run_notebook(tmp_path, monkeypatch, n_images=6)  # as after `make demo`
    assert "mode: AWS" in outputs
    raw = s3.list_objects_v2(Bucket="nb-raw", Prefix="images/")["Contents"]
    catalog = s3.list_objects_v2(Bucket="nb-catalog", Prefix="sources/")["Contents"]
    assert len(raw) == 6 and len(catalog) == 6
    assert not (tmp_path / "raw").exists() and not (tmp_path / "catalog").exists()
