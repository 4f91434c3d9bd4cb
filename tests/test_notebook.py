"""The notebook runs top to bottom, headless, in local mode, on a tiny generated sample."""

from __future__ import annotations

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from skysurvey.config import REPO_ROOT

pytestmark = pytest.mark.slow


def test_notebook_runs_and_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("BUCKET_RAW", str(tmp_path / "raw"))
    monkeypatch.setenv("BUCKET_CATALOG", str(tmp_path / "catalog"))
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
