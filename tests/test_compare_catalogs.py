"""tools/compare_catalogs.py: two catalog folders in, every difference out (issue 26's
bit-identical check of a refactor)."""

from __future__ import annotations

import importlib.util
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skysurvey.config import REPO_ROOT


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "compare_catalogs", REPO_ROOT / "tools" / "compare_catalogs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _catalog(root, flux, when, n_files=1):
    for i in range(n_files):
        path = root / "sources" / "band=r" / "night=2026-03-14" / f"img{i}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"source_id": pa.array([0, 1, 2], pa.int32()),
                                 "flux": pa.array(flux, pa.float64()),
                                 "processed_at": pa.array([when] * 3, pa.timestamp("ms"))}),
                       path)
    return root


def test_same_values_and_other_clocks_are_no_difference(tool, tmp_path, capsys):
    nan = float("nan")
    a = _catalog(tmp_path / "a", [1.0, nan, None], datetime(2026, 1, 1), n_files=2)
    b = _catalog(tmp_path / "b", [1.0, nan, None], datetime(2026, 6, 1), n_files=2)
    assert tool.main([str(a), str(b)]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("flux", [[1.0 + 1e-15, float("nan"), None], [1.0, 2.0, None],
                                  [1.0, float("nan"), 3.0]],
                         ids=["last bit", "nan", "null"])
def test_any_value_that_differs_is_named(tool, tmp_path, capsys, flux):
    a = _catalog(tmp_path / "a", [1.0, float("nan"), None], datetime(2026, 1, 1))
    b = _catalog(tmp_path / "b", flux, datetime(2026, 1, 1))
    assert tool.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "img0.parquet: flux: 1 rows differ" in out


def test_a_missing_file_and_a_bad_folder(tool, tmp_path, capsys):
    a = _catalog(tmp_path / "a", [1.0, 2.0, 3.0], datetime(2026, 1, 1), n_files=2)
    b = _catalog(tmp_path / "b", [1.0, 2.0, 3.0], datetime(2026, 1, 1), n_files=1)
    assert tool.main([str(a), str(b)]) == 1
    assert "img1.parquet: only in" in capsys.readouterr().out
    assert tool.main([str(a), str(tmp_path / "nowhere")]) == 2
    assert tool.main([str(a), str(b), "--ignore", "flux"]) == 1  # the missing file stays


def _sources(path, order, flux):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_id": pa.array(["img"] * 3),
                             "source_id": pa.array(order, pa.int32()),
                             "flux": pa.array(flux, pa.float64())}), path)


def test_sources_rows_compare_in_key_order_not_file_order(tool, tmp_path, capsys):
    # the same rows stored in another order (sources files are sorted by _healpix_29)
    _sources(tmp_path / "a" / "sources" / "img.parquet", [0, 1, 2], [1.0, 2.0, 3.0])
    _sources(tmp_path / "b" / "sources" / "img.parquet", [2, 0, 1], [3.0, 1.0, 2.0])
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    # a value moved to another source is still a difference
    _sources(tmp_path / "c" / "sources" / "img.parquet", [2, 0, 1], [1.0, 3.0, 2.0])
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "flux: 2 rows differ" in capsys.readouterr().out
