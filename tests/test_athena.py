"""Athena: DDL and queries parse as Trino/Athena SQL; the runner against moto's Athena (HTTP)."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pandas as pd
import pytest
import sqlglot
from botocore.stub import Stubber
from conftest import load_script

from skysurvey import athena
from skysurvey.errors import QueryError, StorageError
from skysurvey.queries import NAMED_QUERIES
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA


def test_ddl_parses_and_matches_the_arrow_schemas():
    statements = athena.ddl_statements("astronomy", "s3://cat/survey")
    assert len(statements) == 11  # database, seven tables, three views
    for statement in statements:
        sqlglot.parse_one(statement, read="athena")
    tables = statements[1:8]
    for statement, spec in zip(tables, athena.TABLES.values(), strict=True):
        columns = statement.split("(\n", 1)[1].split("\n)", 1)[0]
        declared = [line.strip().rstrip(",").split() for line in columns.splitlines()]
        assert [name.strip("`") for name, _ in declared] == spec.schema.names
        assert [t for _, t in declared] == [athena._TYPES[f.type] for f in spec.schema]
        assert "projection" not in statement  # partitions are registered, never projected
        assert f"LOCATION 's3://cat/survey/{spec.folder}/'" in statement
    assert "PARTITIONED BY (`band` string, `night` string)" in tables[0]
    assert "PARTITIONED BY (`hpx5` int)" in tables[4]
    assert statements[8] == ('CREATE OR REPLACE VIEW "astronomy"."sources" AS SELECT t.* FROM '
                             '"astronomy"."sources_data" t WHERE EXISTS (SELECT 1 FROM '
                             '"astronomy"."images" i WHERE i.image_id = t.image_id AND '
                             'i.band = t.band AND i.night = t.night)')
    # objects: the objects table joined with the forced-photometry summary
    assert statements[10].startswith('CREATE OR REPLACE VIEW "astronomy"."objects" AS SELECT ')
    assert ('FROM "astronomy"."objects_data" o LEFT JOIN "astronomy"."object_variability" v '
            'ON v.object_id = o.object_id AND v.hpx5 = o.hpx5') in statements[10]


def test_glue_tables_have_the_arrow_columns_and_partition_keys():
    spec = athena.TABLES["associations"]
    table = athena.glue_table_input(spec, "s3://cat/x")
    assert table["Name"] == "associations_data"
    assert table["PartitionKeys"] == [{"Name": "hpx5", "Type": "int"}]
    assert [c["Name"] for c in table["StorageDescriptor"]["Columns"]] == spec.schema.names
    assert table["StorageDescriptor"]["Location"] == "s3://cat/x/associations/"


def test_views_keep_only_images_with_an_images_record(tmp_path):
    """The view statements, run as written on DuckDB: a sources file without its images
    record stays invisible, and the named queries run on the views unchanged."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    for image_id, night, n, with_record in (("a", "2026-11-20", 3, True),
                                            ("b", "unknown", 2, True),
                                            ("half", "2026-11-20", 4, False)):
        folder = tmp_path / "sources" / "band=r" / f"night={night}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = {name: [None] * n for name in SOURCES_SCHEMA.names}
        rows.update(image_id=[image_id] * n, source_id=list(range(n)), snr=[50.0] * n,
                    mag=[20.0] * n)
        pq.write_table(pa.table(rows, schema=SOURCES_SCHEMA), folder / f"{image_id}.parquet")
        if with_record:
            folder = tmp_path / "images" / "band=r" / f"night={night}"
            folder.mkdir(parents=True, exist_ok=True)
            record = {name: [None] for name in IMAGES_SCHEMA.names}
            record.update(image_id=[image_id], n_sources=[n])
            pq.write_table(pa.table(record, schema=IMAGES_SCHEMA), folder / f"{image_id}.parquet")
    con = duckdb.connect()
    con.execute("CREATE SCHEMA astronomy")
    for table, folder in (("sources_data", "sources"), ("images", "images")):
        con.execute(f"CREATE VIEW astronomy.{table} AS SELECT * FROM read_parquet("
                    f"'{tmp_path}/{folder}/*/*/*.parquet', hive_partitioning = true)")
    con.execute("CREATE VIEW astronomy.associations_data AS SELECT 'a' AS image_id")
    from skysurvey.queries import DATASETS

    for table in ("objects_data", "object_variability"):  # the objects view joins them
        empty = DATASETS[table].full_schema.empty_table()  # noqa: F841 (read by DuckDB)
        con.execute(f"CREATE TABLE astronomy.{table} AS SELECT * FROM empty")
    for statement in athena.view_statements("astronomy"):
        con.execute(statement)
    con.execute("USE astronomy")
    assert con.execute(NAMED_QUERIES["total_sources"].sql).fetchone() == (5, 2, 1)
    nights = con.execute("SELECT night, count(*) FROM sources GROUP BY night ORDER BY 1")
    assert nights.fetchall() == [("2026-11-20", 3), ("unknown", 2)]


@pytest.mark.parametrize("name", list(NAMED_QUERIES))
def test_named_queries_parse_in_trino_and_bind_with_question_marks(name):
    query = NAMED_QUERIES[name]
    sqlglot.parse_one(query.sql, read="trino")
    assert query.sql.count("?") == len(query.bind())  # after prepare (cone: pixel ranges)


def test_cost_has_a_10_mb_minimum():
    assert athena.cost_usd(0) == athena.cost_usd(10 * 2**20) == pytest.approx(4.77e-5, rel=1e-2)
    assert athena.cost_usd(2**40) == 5.0


def test_the_query_cost_athena_reports_is_cost_pys_price(monkeypatch):
    """One price table: a query's reported cost is cost.py's formula for its bytes, and
    follows cost.PRICES when a price changes."""
    from skysurvey import cost

    scanned = 3 * 2**30
    client = boto3.client("athena", region_name="us-east-1")
    monkeypatch.setitem(cost.PRICES, "athena_tb", 6.25)
    with Stubber(client) as stub:
        stub.add_response("start_query_execution", {"QueryExecutionId": "q1"})
        stub.add_response("get_query_execution", {"QueryExecution": {
            "Status": {"State": "SUCCEEDED"}, "Statistics": {"DataScannedInBytes": scanned}}})
        stub.add_response("get_query_results", {"ResultSet": {
            "Rows": [], "ResultSetMetadata": {"ColumnInfo": []}}})
        result = athena.run_athena("SELECT 1", database="d", workgroup="w", client=client)
    assert result.bytes_scanned == scanned
    assert result.cost_usd == cost.athena_query_usd(scanned) == 3 / 1024 * 6.25
    assert athena.cost_usd(1) == cost.athena_query_usd(10 * 2**20)  # the same minimum
    athena_line = {s: usd for s, _, usd in cost.breakdown(1, queries=1)}["Athena"]
    assert athena_line == athena.cost_usd(0)  # one tiny image: one minimum-billed query


def test_parameters_are_sql_literals():
    assert [athena.format_parameter(v) for v in (10, 2.5, "it's", True)] == [
        "10", "2.5", "'it''s'", "true"]


@pytest.fixture
def workgroup(moto_server):
    boto3.client("athena").create_work_group(
        Name="astronomy-workgroup",
        Configuration={"ResultConfiguration": {"OutputLocation": "s3://cat/athena-results/"}})


def _inject(server, rows, columns):
    body = {"results": [{"rows": [{"Data": [{"VarCharValue": v} for v in r]} for r in rows],
                         "column_info": columns}]}
    request = urllib.request.Request(f"{server}/moto-api/static/athena/query-results",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(request).status == 201


def _col(name, type_):
    return {"CatalogName": "hive", "SchemaName": "", "TableName": "", "Name": name,
            "Label": name, "Type": type_, "Precision": 0, "Scale": 0, "Nullable": "UNKNOWN",
            "CaseSensitive": False}


def test_runner_returns_a_typed_dataframe_from_moto_over_http(moto_server, workgroup):
    _inject(moto_server, [["band", "n_sources", "mean_mag", "ok"], ["g", "12", "21.5", "true"],
                          ["r", "30", None, "false"]],
            [_col("band", "varchar"), _col("n_sources", "bigint"), _col("mean_mag", "double"),
             _col("ok", "boolean")])
    result = athena.run_athena(NAMED_QUERIES["source_statistics"].sql, database="astronomy",
                               workgroup="astronomy-workgroup", params=[5.0], poll=0.01)
    df = result.dataframe
    assert df["band"].tolist() == ["g", "r"]
    assert str(df["n_sources"].dtype) == "Int64" and df["n_sources"].tolist() == [12, 30]
    assert df["mean_mag"].dtype == float and pd.isna(df["mean_mag"][1])
    assert df["ok"].tolist() == [True, False]
    assert result.cost_usd == athena.cost_usd(result.bytes_scanned)
    execution = boto3.client("athena").get_query_execution(
        QueryExecutionId=result.query_execution_id)["QueryExecution"]
    assert execution["Query"] == NAMED_QUERIES["source_statistics"].sql  # the same text


def test_failed_query_and_timeout_are_query_errors():
    client = boto3.client("athena", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("start_query_execution", {"QueryExecutionId": "q1"})
        stub.add_response("get_query_execution", {"QueryExecution": {"Status": {
            "State": "FAILED", "StateChangeReason": "HIVE_BAD_DATA: wrong type"}}})
        with pytest.raises(QueryError, match="athena:q1: query failed: HIVE_BAD_DATA"):
            athena.run_athena("SELECT 1", database="d", workgroup="w", client=client)
    with Stubber(client) as stub:
        stub.add_response("start_query_execution", {"QueryExecutionId": "q2"})
        stub.add_response("get_query_execution",
                          {"QueryExecution": {"Status": {"State": "RUNNING"}}})
        stub.add_response("stop_query_execution", {}, {"QueryExecutionId": "q2"})
        with pytest.raises(QueryError, match="timed out after 0 s"):
            athena.run_athena("SELECT 1", database="d", workgroup="w", client=client,
                              timeout=0.0, sleep=lambda s: None)


def test_an_aws_error_while_polling_or_paging_names_the_query():
    """Not a raw botocore traceback: the one-line error the start of a query gives too."""
    from skysurvey.errors import StorageError, TransientStorageError

    client = boto3.client("athena", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("start_query_execution", {"QueryExecutionId": "q3"})
        stub.add_client_error("get_query_execution", "InvalidRequestException",
                              "QueryExecution q3 was not found")
        with pytest.raises(StorageError, match=r"athena:q3: .*was not found"):
            athena.run_athena("SELECT 1", database="d", workgroup="w", client=client)
    with Stubber(client) as stub:
        stub.add_response("start_query_execution", {"QueryExecutionId": "q4"})
        stub.add_response("get_query_execution",
                          {"QueryExecution": {"Status": {"State": "SUCCEEDED"}}})
        stub.add_client_error("get_query_results", "ThrottlingException", "Rate exceeded",
                              http_status_code=400)
        with pytest.raises(TransientStorageError, match="athena:q4"):
            athena.run_athena("SELECT 1", database="d", workgroup="w", client=client)


def test_script_on_athena_reports_scan_and_cost(moto_server, workgroup, capsys):
    for _ in range(3):  # the three views come first (the tables are made through Glue)
        _inject(moto_server, [], [])
    _inject(moto_server, [["total_sources", "total_images", "bands"], ["100", "2", "1"]],
            [_col("total_sources", "bigint"), _col("total_images", "bigint"),
             _col("bands", "bigint")])
    boto3.client("s3").create_bucket(Bucket="cat")
    script = load_script("query_with_athena")
    assert script.main(["--engine", "athena", "--catalog", "s3://cat", "--query",
                        "total_sources"]) == 0
    out = capsys.readouterr().out
    assert "100" in out and "scanned" in out and "$" in out
    queries = boto3.client("athena").list_query_executions()["QueryExecutionIds"]
    assert len(queries) == 4  # three views, the query


def _sent_queries():
    client = boto3.client("athena")
    return [client.get_query_execution(QueryExecutionId=q)["QueryExecution"]
            for q in client.list_query_executions()["QueryExecutionIds"]]


def _glue_tables():
    return {t["Name"]: t.get("TableType")
            for t in boto3.client("glue").get_tables(DatabaseName="astronomy")["TableList"]}


def test_ensure_tables_replaces_an_older_setup_and_is_quiet_the_second_time(
        moto_server, workgroup):
    glue = boto3.client("glue")
    boto3.client("s3").create_bucket(Bucket="cat")
    glue.create_database(DatabaseInput={"Name": "astronomy"})
    for name in athena.LEGACY_TABLES:  # the projected tables and the views of before
        glue.create_table(DatabaseName="astronomy", TableInput={"Name": name,
                                                                "TableType": "EXTERNAL_TABLE"})
    for name in ("sources", "images"):
        glue.create_table(DatabaseName="astronomy", TableInput={"Name": name,
                                                                "TableType": "VIRTUAL_VIEW"})
    athena.ensure_tables("astronomy", "astronomy-workgroup", "s3://cat", poll=0.01)
    tables = _glue_tables()
    assert not set(athena.LEGACY_TABLES) & set(tables)
    assert tables["images"] == "EXTERNAL_TABLE"
    assert "sources" not in tables  # the stale view is dropped; Athena SQL makes the new one
    assert {"sources_data", "objects_data", "object_photometry", "associations_data",
            "object_variability"} <= set(tables)
    # the old sources view read the dropped tables: both views are (re)made
    assert [e["Query"] for e in _sent_queries()] == athena.view_statements("astronomy")
    glue.create_table(DatabaseName="astronomy", TableInput={"Name": "sources",
                                                            "TableType": "VIRTUAL_VIEW"})
    glue.create_table(DatabaseName="astronomy", TableInput={"Name": "associations",
                                                            "TableType": "VIRTUAL_VIEW"})
    glue.create_table(DatabaseName="astronomy", TableInput={"Name": "objects",
                                                            "TableType": "VIRTUAL_VIEW"})
    athena.ensure_tables("astronomy", "astronomy-workgroup", "s3://cat", poll=0.01)
    assert len(_sent_queries()) == 3  # nothing more to create


def _put(s3, key):
    s3.put_object(Bucket="cat", Key=key, Body=b"PAR1")


def _partitions(table):
    pages = boto3.client("glue").get_paginator("get_partitions").paginate(
        DatabaseName="astronomy", TableName=table)
    return sorted(tuple(p["Values"]) for page in pages for p in page["Partitions"])


def test_any_band_and_any_valid_night_is_registered(moto_server, workgroup):
    from datetime import date, timedelta

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="cat")
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    written = [("f606w", "1850-01-01"), ("ks", tomorrow), ("irac1", "unknown"),
               ("r", "2026-03-14")]
    for band, night in written:
        for table in ("sources", "images"):
            _put(s3, f"{table}/band={band}/night={night}/x.parquet")
    _put(s3, "objects/hpx5=4321/part-0.parquet")
    athena.ensure_tables("astronomy", "astronomy-workgroup", "s3://cat", poll=0.01)
    assert _partitions("sources_data") == _partitions("images") == sorted(written)
    assert _partitions("objects_data") == [("4321",)]
    location = boto3.client("glue").get_partition(
        DatabaseName="astronomy", TableName="sources_data",
        PartitionValues=["ks", tomorrow])["Partition"]["StorageDescriptor"]["Location"]
    assert location == f"s3://cat/sources/band=ks/night={tomorrow}/"
    # registered as written: a new band appears without any listing
    athena.register_written("s3://cat/sources/band=y/night=2026-01-02/new.parquet",
                            database="astronomy")
    assert ("y", "2026-01-02") in _partitions("images")
    # existing partitions are kept, not an error
    assert athena.register_partitions("s3://cat", "sources", [{"band": "y",
                                                               "night": "2026-01-02"}],
                                      database="astronomy") == 0


def _count_glue_calls():
    """Table names of the BatchCreatePartition calls the cached Glue client sends."""
    import json as _json

    from skysurvey import aws

    calls = []
    aws.client("glue").meta.events.register(
        "before-call.glue.BatchCreatePartition",
        lambda params, **_: calls.append(_json.loads(params["body"])["TableName"]))
    return calls


def test_partitions_seen_to_exist_are_not_sent_again_and_failures_are_not_cached(mocked_aws):
    glue = boto3.client("glue")
    glue.create_database(DatabaseInput={"Name": "astronomy"})
    calls = _count_glue_calls()
    night = {"band": "r", "night": "2026-03-14"}
    with pytest.raises(StorageError, match=r"glue:astronomy\.images: EntityNotFoundException"):
        athena.register_partitions("s3://cat", "images", [night], database="astronomy")
    spec = athena.TABLES["images"]
    glue.create_table(DatabaseName="astronomy",
                      TableInput=athena.glue_table_input(spec, "s3://cat"))
    glue.create_partition(DatabaseName="astronomy", TableName="images", PartitionInput={
        "Values": ["r", "2026-03-14"], "StorageDescriptor": athena.storage_descriptor(
            spec, athena.partition_location("s3://cat", "images", night))})  # someone else
    new = {"band": "g", "night": "2026-03-14"}
    assert athena.register_partitions("s3://cat", "images", [night, new],
                                      database="astronomy") == 1  # the failure was not cached
    assert athena.register_partitions("s3://cat", "images", [night, new, night],
                                      database="astronomy") == 0
    assert calls == ["images"] * 2  # the third: both known (one created, one AlreadyExists)
    assert _partitions("images") == [("g", "2026-03-14"), ("r", "2026-03-14")]


def test_a_partition_deleted_by_someone_else_is_registered_by_a_new_process_or_setup(
        moto_server, workgroup):
    import subprocess
    import sys

    s3, glue = boto3.client("s3"), boto3.client("glue")
    s3.create_bucket(Bucket="cat")
    athena.ensure_tables("astronomy", "astronomy-workgroup", "s3://cat", poll=0.01)
    key = "s3://cat/sources/band=y/night=2026-01-02/new.parquet"
    for folder in ("sources", "images"):
        _put(s3, f"{folder}/band=y/night=2026-01-02/new.parquet")
    athena.register_written(key, database="astronomy")
    assert _partitions("images") == [("y", "2026-01-02")]

    def delete():
        glue.delete_partition(DatabaseName="astronomy", TableName="images",
                              PartitionValues=["y", "2026-01-02"])

    delete()
    calls = _count_glue_calls()
    athena.register_written(key, database="astronomy")
    assert calls == [] and _partitions("images") == []  # a warm process trusts its cache
    code = f"from skysurvey import athena; athena.register_written({key!r}, database='astronomy')"
    subprocess.run([sys.executable, "-c", code], check=True)  # a cold start: asks Glue again
    assert _partitions("images") == [("y", "2026-01-02")]
    delete()
    athena.ensure_tables("astronomy", "astronomy-workgroup", "s3://cat", poll=0.01)
    assert _partitions("images") == [("y", "2026-01-02")]  # setup / query runs always ask
