"""The catalog on Amazon Athena: explicit DDL with partition projection, and a query runner.

``sources`` and ``images`` are views over the same Parquet layout DuckDB reads, with the same
columns as the Arrow schemas (``band`` and ``night`` are partitions). Partitions are found by
projection (no crawler, no MSCK REPAIR), and one projection cannot hold both dates and the
``unknown`` night of undated images, so each view is the UNION ALL of two external tables over
the same location: ``<t>_dated`` (``night`` a date from 1990-01-01 to tomorrow) and
``<t>_undated`` (``night`` the enum ``unknown``); ``band`` is an enum of the filters listed
below. A filter on ``night`` or ``band`` still prunes partitions through the view.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from . import aws
from .config import parse_s3_uri
from .errors import QueryError
from .schema import IMAGES_SCHEMA, SOURCES_SCHEMA, partition_value

DEFAULT_BANDS = ("u", "g", "r", "i", "z", "y", "unknown")
PRICE_PER_TB = 5.0  # USD per TB scanned (us-east-1, checked 2026-11)
MIN_BYTES = 10 * 2**20  # every query is billed at least 10 MB
_TYPES = {pa.string(): "string", pa.int32(): "int", pa.int64(): "bigint", pa.float64(): "double",
          pa.bool_(): "boolean", pa.timestamp("ms"): "timestamp"}


def column_ddl(schema: pa.Schema) -> str:
    return ",\n  ".join(f"`{f.name}` {_TYPES[f.type]}" for f in schema)


_NIGHT_PROJECTIONS = {
    "dated": ("  'projection.night.type'='date',\n"
              "  'projection.night.format'='yyyy-MM-dd',\n"
              "  'projection.night.range'='1990-01-01,NOW+1DAYS',\n"
              "  'projection.night.interval'='1',\n"
              "  'projection.night.interval.unit'='DAYS',\n"),
    "undated": ("  'projection.night.type'='enum',\n"
                f"  'projection.night.values'='{partition_value(None)}',\n"),
}


def ddl_statements(database: str, catalog_uri: str,
                   bands: tuple[str, ...] = DEFAULT_BANDS) -> list[str]:
    """CREATE DATABASE, the four external tables and the two views over them (idempotent)."""
    loc = parse_s3_uri(catalog_uri)
    base = f"s3://{loc.bucket}/{loc.prefix}"
    statements = [f"CREATE DATABASE IF NOT EXISTS `{database}`"]
    views = []
    for table, schema in (("sources", SOURCES_SCHEMA), ("images", IMAGES_SCHEMA)):
        for kind, night in _NIGHT_PROJECTIONS.items():
            statements.append(
                f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{table}_{kind}` (\n"
                f"  {column_ddl(schema)}\n)\n"
                "PARTITIONED BY (`band` string, `night` string)\n"
                "STORED AS PARQUET\n"
                f"LOCATION '{base}{table}/'\n"
                "TBLPROPERTIES (\n"
                "  'projection.enabled'='true',\n"
                "  'projection.band.type'='enum',\n"
                f"  'projection.band.values'='{','.join(bands)}',\n"
                f"{night}"
                f"  'storage.location.template'='{base}{table}/band=${{band}}/night=${{night}}/'\n"
                ")")
        views.append(f'CREATE OR REPLACE VIEW "{database}"."{table}" AS '
                     f'SELECT * FROM "{database}"."{table}_dated" UNION ALL '
                     f'SELECT * FROM "{database}"."{table}_undated"')
    return statements + views


#: What ``ensure_tables`` expects to find, by name: the four tables and the two views. Athena's
#: engine (Trino, Glue catalog through its Hive connector) reports ANSI table types: 'BASE TABLE'
#: for tables, 'VIEW' for views. Anything else only makes the DDL run again (it is idempotent).
EXPECTED_TABLES = {f"{t}_{kind}": "BASE TABLE" for t in ("sources", "images")
                   for kind in _NIGHT_PROJECTIONS} | {"sources": "VIEW", "images": "VIEW"}
TABLES_SQL = ("SELECT table_name, table_type FROM information_schema.tables "
              "WHERE table_schema = ? AND table_name IN ("
              + ", ".join(f"'{name}'" for name in EXPECTED_TABLES) + ")")


def cost_usd(bytes_scanned: int) -> float:
    """Athena's price for one query: $5 per TB, at least 10 MB."""
    return max(int(bytes_scanned), MIN_BYTES) / 2**40 * PRICE_PER_TB


def format_parameter(value) -> str:
    """An ExecutionParameters entry: numbers as they are, strings as quoted SQL literals."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


@dataclass
class AthenaResult:
    dataframe: pd.DataFrame
    query_execution_id: str
    bytes_scanned: int
    cost_usd: float
    seconds: float


def _convert(values: list, athena_type: str) -> pd.Series:
    t = athena_type.lower()
    if t in ("tinyint", "smallint", "integer", "int", "bigint"):
        return pd.array([None if v is None else int(v) for v in values], dtype="Int64")
    if t in ("double", "float", "real") or t.startswith("decimal"):
        return pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").astype(float)
    if t == "boolean":
        return pd.array([None if v is None else v == "true" for v in values], dtype="boolean")
    if t in ("date", "timestamp") or t.startswith("timestamp"):
        return pd.to_datetime(pd.Series(values, dtype="object"))
    return pd.array(values, dtype="string")


def results_to_dataframe(pages: list[dict]) -> pd.DataFrame:
    """``get_query_results`` pages into a typed DataFrame (the header row skipped)."""
    if not pages:
        return pd.DataFrame()
    info = pages[0]["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]
    names = [c["Name"] for c in info]
    rows = []
    for i, page in enumerate(pages):
        page_rows = page["ResultSet"].get("Rows", [])
        if i == 0 and page_rows and [d.get("VarCharValue") for d in page_rows[0]["Data"]] == names:
            page_rows = page_rows[1:]
        rows += [[d.get("VarCharValue") for d in r["Data"]] for r in page_rows]
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    return pd.DataFrame({n: _convert(list(col), c["Type"])
                         for n, col, c in zip(names, columns, info, strict=True)})


def run_athena(sql: str, *, database: str, workgroup: str, output_location: str | None = None,
               params=None, timeout: float = 300.0, poll: float = 0.25, max_poll: float = 5.0,
               client=None, sleep=time.sleep) -> AthenaResult:
    """Run *sql* with bound *params* in *workgroup*; poll with backoff; page the results."""
    client = client or aws.client("athena")
    start = time.monotonic()
    request = {"QueryString": sql, "WorkGroup": workgroup,
               "QueryExecutionContext": {"Database": database}}
    if output_location:
        request["ResultConfiguration"] = {"OutputLocation": output_location}
    if params:
        request["ExecutionParameters"] = [format_parameter(p) for p in params]
    try:
        qid = client.start_query_execution(**request)["QueryExecutionId"]
    except Exception as exc:
        raise aws.translate(exc, f"athena:{workgroup}") from None
    delay = poll
    while True:
        execution = client.get_query_execution(QueryExecutionId=qid)["QueryExecution"]
        state = execution["Status"]["State"]
        if state == "SUCCEEDED":
            break
        if state in ("FAILED", "CANCELLED"):
            reason = execution["Status"].get("StateChangeReason", "no reason given")
            raise QueryError(f"athena:{qid}", f"query {state.lower()}: {reason}")
        if time.monotonic() - start > timeout:
            client.stop_query_execution(QueryExecutionId=qid)
            raise QueryError(f"athena:{qid}", f"timed out after {timeout:.0f} s (cancelled)")
        sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, max_poll)
    pages = list(client.get_paginator("get_query_results").paginate(QueryExecutionId=qid))
    scanned = int(execution.get("Statistics", {}).get("DataScannedInBytes", 0))
    return AthenaResult(results_to_dataframe(pages), qid, scanned, cost_usd(scanned),
                        time.monotonic() - start)


def ensure_tables(database: str, workgroup: str, catalog_uri: str, **kw) -> None:
    """Create the database, tables and views unless all are there (one query when they are).

    ``sources`` or ``images`` left as plain tables by an older setup (dates only) are dropped so
    the views can take their names; dropping an external table leaves its Parquet files alone.
    """
    found = run_athena(TABLES_SQL, database=database, workgroup=workgroup, params=[database],
                       **kw).dataframe
    found = dict(zip(found.get("table_name", []), found.get("table_type", []), strict=True))
    if found == EXPECTED_TABLES:
        return
    for name in ("sources", "images"):
        if found.get(name) == "BASE TABLE":
            run_athena(f"DROP TABLE IF EXISTS `{database}`.`{name}`", database=database,
                       workgroup=workgroup, **kw)
    for statement in ddl_statements(database, catalog_uri):
        run_athena(statement, database=database, workgroup=workgroup, **kw)
