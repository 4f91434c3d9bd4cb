"""The named queries on DuckDB, checked against pandas on the same Parquet files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_script

from skysurvey.errors import QueryError
from skysurvey.queries import NAMED_QUERIES, run_named, run_query
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA, catalog_keys

IMAGES = [("img_a", "g", "2026-03-14", 40), ("img_b", "r", "2026-03-14", 60),
          ("img_c", "r", "2026-03-15", 25)]


def _tables(image_id, n, seed):
    rng = np.random.default_rng(seed)
    cols = {name: rng.uniform(1, 300, n) for name in SOURCES_SCHEMA.names
            if SOURCES_SCHEMA.field(name).type == pa.float64()}
    cols["mag"] = rng.uniform(16, 24, n)
    cols["mag"][0] = np.nan  # a source without magnitude
    sources = pa.table({**cols, "image_id": [image_id] * n,
                        "source_id": np.arange(n, dtype=np.int32),
                        "npix": np.full(n, 9, np.int32), "flags": np.zeros(n, np.int32),
                        "_healpix_29": np.zeros(n, np.int64)})
    sources = sources.select(SOURCES_SCHEMA.names).cast(SOURCES_SCHEMA)
    # the pipeline writes a missing magnitude as null, not NaN (SQL's avg skips only nulls)
    sources = sources.set_column(sources.schema.get_field_index("mag"), "mag",
                                 pa.array(cols["mag"], pa.float64(), from_pandas=True))
    images = pa.Table.from_pylist([{"image_id": image_id, "n_sources": n}], schema=IMAGES_SCHEMA)
    return sources, images


def write_catalog(root):
    frames = []
    for seed, (image_id, band, night, n) in enumerate(IMAGES):
        sources, images = _tables(image_id, n, seed)
        keys = catalog_keys(image_id, band, night)
        for table, key in ((sources, keys["sources"]), (images, keys["images"])):
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / key)
        frames.append(sources.to_pandas().assign(band=band, night=night))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def catalog(tmp_path):
    return tmp_path / "catalog", write_catalog(tmp_path / "catalog")


def test_total_sources(catalog):
    root, df = catalog
    got = run_named("total_sources", str(root))
    assert got.to_dict("records") == [{"total_sources": len(df), "total_images": 3, "bands": 2}]


def test_source_statistics_match_pandas(catalog):
    root, df = catalog
    got = run_named("source_statistics", str(root), [100.0])
    sel = df[df["snr"] >= 100.0]
    expected = sel.groupby("band").agg(n_sources=("mag", "size"), mean_mag=("mag", "mean"),
                                       mean_snr=("snr", "mean")).reset_index()
    assert got["band"].tolist() == expected["band"].tolist()
    assert got["n_sources"].tolist() == expected["n_sources"].tolist()
    np.testing.assert_allclose(got["mean_mag"], expected["mean_mag"])
    np.testing.assert_allclose(got["mean_snr"], expected["mean_snr"])


def test_bright_sources_match_pandas(catalog):
    root, df = catalog
    got = run_named("bright_sources", str(root))
    expected = df[df["mag"].notna() & (df["snr"] >= 10)].nsmallest(20, "mag")
    assert got["mag"].tolist() == expected["mag"].tolist()
    assert got["image_id"].tolist() == expected["image_id"].tolist()


def test_snr_distribution_matches_pandas(catalog):
    root, df = catalog
    got = run_named("snr_distribution", str(root))
    bins = pd.cut(df["snr"], [0, 5, 10, 20, 50, 100, np.inf], right=False,
                  labels=["0-5", "5-10", "10-20", "20-50", "50-100", "100+"])
    expected = bins.value_counts()
    expected = expected[expected > 0]
    assert dict(zip(got["snr_bin"], got["n_sources"], strict=True)) == expected.to_dict()
    assert got["n_sources"].sum() == len(df)


def test_parameters_are_bound_not_pasted(catalog):
    root, _ = catalog
    got = run_query("SELECT count(*) AS n FROM sources WHERE image_id = ?", str(root),
                    ["img_a' OR '1'='1"])
    assert got["n"].tolist() == [0]
    got = run_query("SELECT count(*) AS n FROM images WHERE band = ?", str(root), ["r"])
    assert got["n"].tolist() == [2]


def test_missing_catalog_and_bad_sql_are_one_line_errors(tmp_path, catalog):
    with pytest.raises(QueryError, match="no catalog here"):
        run_named("total_sources", str(tmp_path / "nothing"))
    with pytest.raises(QueryError, match="no such query"):
        run_named("nope", str(catalog[0]))
    with pytest.raises(QueryError) as info:
        run_query("SELECT no_such_column FROM sources", str(catalog[0]))
    assert "\n" not in str(info.value)


def _script():
    module = load_script("query_with_athena")
    return module


def test_script_all_sql_list_and_outputs(catalog, tmp_path, capsys):
    root, df = catalog
    script = _script()
    assert script.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in NAMED_QUERIES)
    out = tmp_path / "out"
    assert script.main(["--catalog", str(root), "--query", "all", "--output-dir", str(out)]) == 0
    assert sorted(p.stem for p in out.glob("*.csv")) == sorted(NAMED_QUERIES)
    target = tmp_path / "r.parquet"
    assert script.main(["--catalog", str(root), "--sql",
                        "SELECT band, count(*) AS n FROM sources WHERE snr > ? GROUP BY band "
                        "ORDER BY band", "--param", "150", "--output", str(target)]) == 0
    got = pd.read_parquet(target)
    expected = df[df["snr"] > 150].groupby("band").size()
    assert got["n"].tolist() == expected.tolist()
    assert script.main(["--catalog", str(tmp_path / "none"), "--query", "total_sources"]) == 1


def test_query_all_runs_every_query_past_a_failing_one(catalog, tmp_path, monkeypatch, capsys):
    """One query failing is named; the others still run; the exit status is 1."""
    from skysurvey import queries

    root, _ = catalog
    broken = queries.NamedQuery("broken on purpose", "SELECT no_such_column FROM sources")
    patched = {"aa_broken": broken, **queries.NAMED_QUERIES}
    monkeypatch.setattr(queries, "NAMED_QUERIES", patched)
    monkeypatch.setattr(_script(), "NAMED_QUERIES", patched)  # the step's own name for it
    out = tmp_path / "out"
    assert _script().main(["--catalog", str(root), "--query", "all",
                           "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "aa_broken" in err and "no_such_column" in err
    assert sorted(p.stem for p in out.glob("*.csv")) == sorted(
        n for n in queries.NAMED_QUERIES if n != "aa_broken")


def test_s3_catalog_through_a_real_http_endpoint(catalog, moto_server):
    import boto3

    root, df = catalog
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="cat")
    for path in root.rglob("*.parquet"):
        s3.upload_file(str(path), "cat", "survey/" + path.relative_to(root).as_posix())
    got = run_named("total_sources", "s3://cat/survey")
    assert got["total_sources"].tolist() == [len(df)]
    local = run_named("source_statistics", str(root))
    remote = run_named("source_statistics", "s3://cat/survey")
    pd.testing.assert_frame_equal(local, remote)


# ---- integrity (issue 13) -------------------------------------------------------------------

def _write(root, table_name, image_id, table, band="r", night="2026-03-16"):
    key = catalog_keys(image_id, band, night)[table_name]
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / key)
    return root / key


def test_sources_without_an_image_record_are_not_counted(catalog):
    """A run killed between an image's two files leaves an orphan sources file."""
    root, df = catalog
    orphan, _ = _tables("img_killed", 30, 9)
    _write(root, "sources", "img_killed", orphan)
    got = run_named("total_sources", str(root))
    assert got.to_dict("records") == [{"total_sources": len(df), "total_images": 3, "bands": 2}]
    raw = run_query("SELECT count(*) AS n FROM sources_data", str(root))
    assert raw["n"].tolist() == [len(df) + 30]  # the files are all there, SQL hides the orphan
    stats = run_named("source_statistics", str(root), [0.0])
    assert stats["n_sources"].sum() == len(df)


def test_sources_left_in_an_earlier_partition_are_not_counted(catalog):
    """Re-processing after a FILTER fix moves an image to another band: until its earlier
    sources file is deleted, only the copy that matches the image record counts."""
    root, df = catalog
    image_id, _band, night, n = IMAGES[0]
    stale, _ = _tables(image_id, n, 0)
    _write(root, "sources", image_id, stale, band="z", night=night)
    got = run_named("total_sources", str(root))
    assert got.to_dict("records") == [{"total_sources": len(df), "total_images": 3, "bands": 2}]


def _older(table: pa.Table, new_columns) -> pa.Table:
    return table.drop_columns(sorted(new_columns))


def test_files_of_an_older_pipeline_version_read_new_columns_as_null(catalog, caplog):
    from skysurvey.queries import IMAGES_SINCE_FIRST, SOURCES_SINCE_FIRST

    root, df = catalog
    for i, image_id in enumerate(("old_a", "old_b")):
        sources, images = _tables(image_id, 5, 20 + i)
        _write(root, "sources", image_id, _older(sources, SOURCES_SINCE_FIRST))
        _write(root, "images", image_id, _older(images, IMAGES_SINCE_FIRST))
    with caplog.at_level("WARNING", logger="skysurvey.queries"):
        got = run_query("SELECT image_id, class_star, flux FROM sources "
                        "WHERE image_id LIKE 'old%'", str(root))
        run_named("total_sources", str(root))  # a second query: no second warning
    assert len(got) == 10 and got["class_star"].isna().all() and got["flux"].notna().all()
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2, notes  # once for sources, once for images
    sources_note = next(n for n in notes if n.startswith("2 sources files"))
    assert "(first " in sources_note and "old_" in sources_note
    assert "from an older pipeline_version: 7 newer columns read as null" in sources_note
    assert run_named("total_sources", str(root))["total_sources"].tolist() == [len(df) + 10]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.append_column("extra", pa.array([1.0] * t.num_rows)),
         "unexpected column extra (double)"),
        (lambda t: t.rename_columns(["s_n_r" if n == "snr" else n for n in t.column_names]),
         "unexpected column s_n_r (double); missing column snr"),
        (lambda t: t.set_column(t.schema.get_field_index("source_id"), "source_id",
                                t["source_id"].cast(pa.int64())),
         "column source_id is int64, expected int32"),
        (lambda t: t.drop_columns(["flux"]), "missing column flux"),
    ],
    ids=["extra", "renamed", "type", "missing-old-column"],
)
def test_any_other_schema_difference_names_the_file(catalog, change, message):
    root, _ = catalog
    sources, images = _tables("drifted", 5, 30)
    path = _write(root, "sources", "drifted", change(sources))
    _write(root, "images", "drifted", images)
    with pytest.raises(QueryError) as info:
        run_named("total_sources", str(root))
    text = str(info.value)
    assert text.startswith(f"{path}: schema differs from sources: ") and message in text
    assert "\n" not in text


def test_sql_is_exactly_one_statement(catalog, tmp_path):
    from skysurvey.queries import single_statement

    root, _ = catalog
    target = tmp_path / "written.csv"
    with pytest.raises(QueryError, match="expected exactly one SQL statement, got 2"):
        run_query(f"SELECT 1; COPY (SELECT 42) TO '{target}'", str(root))
    assert not target.exists()  # the second statement never ran
    assert run_query("SELECT 1 AS one;", str(root))["one"].tolist() == [1]
    assert run_query("SELECT ';' AS semi", str(root))["semi"].tolist() == [";"]
    with pytest.raises(QueryError, match="got 0"):
        single_statement("-- nothing")
    with pytest.raises(QueryError, match="got 2"):
        single_statement("SELECT 1; SELECT 2", "athena")
    assert single_statement("SELECT transform(ARRAY[1], x -> x + 1)", "athena")


def test_safe_mode_reads_only_the_catalog(catalog, tmp_path):
    root, df = catalog
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    sql = f"SELECT * FROM read_csv('{secret}')"
    assert run_query(sql, str(root))["password"].tolist() == ["hunter2"]  # documented
    for text in (sql, "SELECT * FROM read_csv('/etc/passwd')",
                 f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'",
                 "SET enable_external_access = true"):
        with pytest.raises(QueryError) as info:
            run_query(text, str(root), safe=True)
        assert "disabled by configuration" in str(info.value) or "locked" in str(info.value)
    assert not (tmp_path / "out.csv").exists()
    got = run_named("total_sources", str(root))
    assert got["total_sources"].tolist() == [len(df)]
    assert run_query("SELECT count(*) AS n FROM sources", str(root), safe=True)["n"].tolist() \
        == [len(df)]


def test_script_refuses_two_statements_and_has_a_safe_mode(catalog, tmp_path, capsys):
    root, df = catalog
    script = _script()
    target = tmp_path / "x.csv"
    with pytest.raises(SystemExit) as info:
        script.main(["--catalog", str(root), "--sql",
                     f"SELECT 1; COPY (SELECT 2) TO '{target}'"])
    assert info.value.code == 2 and not target.exists()
    assert "--sql: expected exactly one SQL statement, got 2" in capsys.readouterr().err
    assert script.main(["--catalog", str(root), "--safe", "--sql",
                        "SELECT * FROM read_csv('/etc/passwd')"]) == 1
    assert "disabled by configuration" in capsys.readouterr().err
    assert script.main(["--catalog", str(root), "--safe", "--sql",
                        "SELECT count(*) AS n FROM sources"]) == 0
    assert str(len(df)) in capsys.readouterr().out
    help_text = script.build_parser().format_help()
    assert "--safe" in help_text and "local file" in help_text


def test_a_file_rewritten_with_another_schema_is_checked_again(catalog):
    root, _ = catalog
    sources, images = _tables("later", 5, 40)
    path = _write(root, "sources", "later", sources)
    _write(root, "images", "later", images)
    run_named("total_sources", str(root))  # checked and remembered as good
    pq.write_table(sources.append_column("extra", pa.array([1] * 5)), path)
    with pytest.raises(QueryError, match="unexpected column extra"):
        run_named("total_sources", str(root))
