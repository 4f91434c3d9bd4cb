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
from skysurvey.errors import QueryError
from skysurvey.queries import NAMED_QUERIES
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA


def test_ddl_parses_and_matches_the_arrow_schemas():
    statements = athena.ddl_statements("astronomy", "s3://cat/survey")
    assert len(statements) == 7  # database, dated and undated table of each, two views
    for statement in statements:
        sqlglot.parse_one(statement, read="athena")
    tables = statements[1:5]
    for statement, schema in zip(tables, [SOURCES_SCHEMA] * 2 + [IMAGES_SCHEMA] * 2,
                                 strict=True):
        columns = statement.split("(\n", 1)[1].split("\n)", 1)[0]
        declared = [line.strip().rstrip(",").split() for line in columns.splitlines()]
        assert [name.strip("`") for name, _ in declared] == schema.names
        assert [t for _, t in declared] == [athena._TYPES[f.type] for f in schema]
        assert "MSCK" not in statement and "'projection.enabled'='true'" in statement
    sources_dated, sources_undated, _, images_undated = tables
    assert "`astronomy`.`sources_dated`" in sources_dated
    assert "'projection.night.type'='date'" in sources_dated
    assert "'projection.night.type'='enum'" in sources_undated
    assert "'projection.night.values'='unknown'" in sources_undated
    for statement in tables[:2]:
        assert "LOCATION 's3://cat/survey/sources/'" in statement
    assert "'storage.location.template'='s3://cat/survey/images/band=${band}/night=${night}/'" \
        in images_undated
    assert statements[5] == ('CREATE OR REPLACE VIEW "astronomy"."sources" AS SELECT * FROM '
                             '"astronomy"."sources_dated" UNION ALL SELECT * FROM '
                             '"astronomy"."sources_undated"')


def test_views_union_dated_and_undated_images_for_the_named_queries(tmp_path):
    """The view statements, run as written on DuckDB over dated and undated partitions, give
    every row once, and the named queries run on them unchanged."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    for night, n in (("2026-11-20", 3), ("unknown", 2)):
        folder = tmp_path / "sources" / "band=r" / f"night={night}"
        folder.mkdir(parents=True)
        rows = {name: [None] * n for name in SOURCES_SCHEMA.names}
        rows.update(image_id=[f"img-{night}"] * n, source_id=list(range(n)), snr=[50.0] * n,
                    mag=[20.0] * n)
        pq.write_table(pa.table(rows, schema=SOURCES_SCHEMA), folder / "x.parquet")
    con = duckdb.connect()
    con.execute("CREATE SCHEMA astronomy")
    glob = f"{tmp_path}/sources/*/*/*.parquet"
    for kind, where in (("dated", "<>"), ("undated", "=")):
        con.execute(f"CREATE VIEW astronomy.sources_{kind} AS SELECT * FROM read_parquet("
                    f"'{glob}', hive_partitioning = true) WHERE night {where} 'unknown'")
    con.execute(athena.ddl_statements("astronomy", "s3://cat")[5])
    con.execute("USE astronomy")
    total = con.execute(NAMED_QUERIES["total_sources"].sql).fetchone()
    assert total == (5, 2, 1)
    nights = con.execute("SELECT night, count(*) FROM sources GROUP BY night ORDER BY 1")
    assert nights.fetchall() == [("2026-11-20", 3), ("unknown", 2)]


@pytest.mark.parametrize("name", list(NAMED_QUERIES))
def test_named_queries_parse_in_trino_and_bind_with_question_marks(name):
    query = NAMED_QUERIES[name]
    sqlglot.parse_one(query.sql, read="trino")
    assert query.sql.count("?") == len(query.params)


def test_cost_has_a_10_mb_minimum():
    assert athena.cost_usd(0) == athena.cost_usd(10 * 2**20) == pytest.approx(4.77e-5, rel=1e-2)
    assert athena.cost_usd(2**40) == 5.0


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


def test_script_on_athena_reports_scan_and_cost(moto_server, workgroup, capsys):
    for _ in range(8):  # the check for existing tables and the 7 DDL statements come first
        _inject(moto_server, [], [])
    _inject(moto_server, [["total_sources", "total_images", "bands"], ["100", "2", "1"]],
            [_col("total_sources", "bigint"), _col("total_images", "bigint"),
             _col("bands", "bigint")])
    script = load_script("query_with_athena")
    assert script.main(["--engine", "athena", "--catalog", "s3://cat", "--query",
                        "total_sources"]) == 0
    out = capsys.readouterr().out
    assert "100" in out and "scanned" in out and "$" in out
    queries = boto3.client("athena").list_query_executions()["QueryExecutionIds"]
    assert len(queries) == 9  # table check, database, four tables, two views, the query


def _sent_queries():
    client = boto3.client("athena")
    return [client.get_query_execution(QueryExecutionId=q)["QueryExecution"]
            for q in client.list_query_executions()["QueryExecutionIds"]]


def _table_rows(found):
    return ([["table_name", "table_type"], *found],
            [_col("table_name", "varchar"), _col("table_type", "varchar")])


def test_ensure_tables_replaces_an_older_plain_table_by_the_view(moto_server, workgroup):
    _inject(moto_server, *_table_rows([["sources", "BASE TABLE"], ["images", "BASE TABLE"]]))
    athena.ensure_tables("astronomy", "astronomy-workgroup", "s3://cat", poll=0.01)
    sent = _sent_queries()
    assert sent[0]["Query"] == athena.TABLES_SQL
    assert sent[0]["ExecutionParameters"] == ["'astronomy'"]
    assert [e["Query"] for e in sent[1:3]] == ["DROP TABLE IF EXISTS `astronomy`.`sources`",
                                              "DROP TABLE IF EXISTS `astronomy`.`images`"]
    assert [e["Query"] for e in sent[3:]] == athena.ddl_statements("astronomy", "s3://cat")


def test_ensure_tables_sends_one_query_when_everything_exists(moto_server, workgroup):
    _inject(moto_server, *_table_rows([[k, v] for k, v in athena.EXPECTED_TABLES.items()]))
    athena.ensure_tables("astronomy", "astronomy-workgroup", "s3://cat", poll=0.01)
    assert [e["Query"] for e in _sent_queries()] == [athena.TABLES_SQL]
