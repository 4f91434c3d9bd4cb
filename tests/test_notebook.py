"""The notebook runs top to bottom, headless, on a tiny generated sample: with local folders, and
with s3:// buckets on a real HTTP moto server (the kernel is another process: it reaches moto
through AWS_ENDPOINT_URL exactly as it would reach S3)."""

from __future__ import annotations

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from skysurvey.config import REPO_ROOT

pytestmark = pytest.mark.slow


def _run_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYSURVEY_SAMPLE_DIR", str(tmp_path / "sample"))
    monkeypatch.setenv("SKYSURVEY_SAMPLE_SIZE", "384")
    monkeypatch.setenv("SKYSURVEY_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(REPO_ROOT / "notebooks" / "sky_analysis.ipynb", as_version=4)
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code")
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    exported = pd.read_parquet(tmp_path / "out" / "sources.parquet")
    assert len(exported) > 20 and exported["image_id"].nunique() == 3
    stats = pd.read_csv(tmp_path / "out" / "source_statistics.csv")
    assert stats["n_sources"].sum() > 0
    # the statistics cell measured the catalog against the truth
    outputs = "".join(str(o) for c in nb.cells for o in c.get("outputs", []))
    assert "completeness" in outputs
    return outputs


def test_notebook_runs_and_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("BUCKET_RAW", str(tmp_path / "raw"))
    monkeypatch.setenv("BUCKET_CATALOG", str(tmp_path / "catalog"))
    outputs = _run_notebook(tmp_path, monkeypatch)
    assert "mode: local" in outputs
    assert len(list((tmp_path / "catalog" / "sources").rglob("*.parquet"))) == 3


def test_notebook_on_s3_buckets(tmp_path, monkeypatch, moto_server):
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")  # AWS_ENDPOINT_URL points at moto
    s3.create_bucket(Bucket="nb-raw")
    s3.create_bucket(Bucket="nb-catalog")
    monkeypatch.setenv("BUCKET_RAW", "s3://nb-raw")
    monkeypatch.setenv("BUCKET_CATALOG", "s3://nb-catalog")
    outputs = _run_notebook(tmp_path, monkeypatch)
    assert "mode: AWS" in outputs
    raw = s3.list_objects_v2(Bucket="nb-raw", Prefix="images/")["Contents"]
    catalog = s3.list_objects_v2(Bucket="nb-catalog", Prefix="sources/")["Contents"]
    assert len(raw) == 3 and len(catalog) == 3
    assert not (tmp_path / "raw").exists() and not (tmp_path / "catalog").exists()
