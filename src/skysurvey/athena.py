"""The catalog on Amazon Athena: Glue tables with partitions registered as written, views, and
a query runner.

Tables live in the Glue Data Catalog (created through the Glue API, so they can be checked and
owned like any resource); their partitions are registered when files are written (Glue
``BatchCreatePartition``: the handler after each image, skipping those its process already
registered; ``ensure_tables`` for what is already in the bucket), never by a fixed projection
list, so any band (``f606w``, ``ks``, ``irac1``) and any night (1850-01-01 .. today + 1, or
``unknown``) is queryable. In SQL, ``images``, ``object_photometry``, ``forced_photometry``
and ``object_variability`` are tables; ``sources`` and ``associations`` are views over
``sources_data`` and ``associations_data`` that keep only images with an ``images`` record
(an image whose write was interrupted between its two files stays invisible, as on DuckDB);
``objects`` is a view over ``objects_data`` joined with ``object_variability``.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from . import aws
from .config import is_s3_uri, parse_s3_uri
from .errors import QueryError, SkySurveyError, StorageError, TransientStorageError
from .lightcurves import OBJECT_VARIABILITY_SCHEMA
from .prices import athena_query_usd
from .schema import (
    ASSOCIATIONS_SCHEMA,
    FORCED_PHOTOMETRY_SCHEMA,
    IMAGES_SCHEMA,
    OBJECT_PHOTOMETRY_SCHEMA,
    OBJECTS_SCHEMA,
    SOURCES_SCHEMA,
)

if TYPE_CHECKING:  # pandas only where query results are read (not in the Lambda)
    import pandas as pd

__all__ = [
    "HPX_KEY",
    "LEGACY_TABLES",
    "PARTITIONED_TABLES",
    "TABLES",
    "VIEWS",
    "AthenaResult",
    "TableSpec",
    "after_write",
    "column_ddl",
    "cost_usd",
    "ddl_statements",
    "ensure_tables",
    "existing_partitions",
    "format_parameter",
    "glue_table_input",
    "partition_location",
    "register_partitions",
    "register_written",
    "results_to_dataframe",
    "run_athena",
    "storage_descriptor",
    "view_statements",
]

_TYPES = {pa.string(): "string", pa.int32(): "int", pa.int64(): "bigint", pa.float64(): "double",
          pa.bool_(): "boolean", pa.timestamp("ms"): "timestamp",
          pa.list_(pa.int64()): "array<bigint>"}
HPX_KEY = "hpx5"  # objects, object_photometry, associations: nested HEALPix pixel at order 5
_OBSERVATION = (("band", "string"), ("night", "string"))
_SKY = ((HPX_KEY, "int"),)


@dataclass(frozen=True)
class TableSpec:
    name: str  # Glue table name
    folder: str  # <catalog>/<folder>/
    schema: pa.Schema
    partition_keys: tuple[tuple[str, str], ...]


TABLES = {spec.folder: spec for spec in (
    TableSpec("sources_data", "sources", SOURCES_SCHEMA, _OBSERVATION),
    TableSpec("images", "images", IMAGES_SCHEMA, _OBSERVATION),
    TableSpec("objects_data", "objects", OBJECTS_SCHEMA, _SKY),
    TableSpec("object_photometry", "object_photometry", OBJECT_PHOTOMETRY_SCHEMA, _SKY),
    TableSpec("associations_data", "associations", ASSOCIATIONS_SCHEMA, _SKY),
    TableSpec("forced_photometry", "forced_photometry", FORCED_PHOTOMETRY_SCHEMA, _OBSERVATION),
    TableSpec("object_variability", "object_variability", OBJECT_VARIABILITY_SCHEMA, _SKY),
)}
#: The tables whose partitions the Lambda function registers (its role may do exactly that).
PARTITIONED_TABLES = (TABLES["sources"].name, TABLES["images"].name)
#: Views that hide rows of images without an ``images`` record, and ``objects`` joined with
#: the forced-photometry summary ``object_variability`` (queries.objects_view_sql).
VIEWS = {"sources": "sources_data", "associations": "associations_data",
         "objects": "objects_data"}
#: Names an older setup made (projected dated/undated tables, views, plain tables).
LEGACY_TABLES = ("sources_dated", "sources_undated", "images_dated", "images_undated")
_PARQUET = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {"SerializationLibrary":
                  "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"},
}


def column_ddl(schema: pa.Schema) -> str:
    return ",\n  ".join(f"`{f.name}` {_TYPES[f.type]}" for f in schema)


def _base(catalog_uri: str) -> str:
    loc = parse_s3_uri(catalog_uri)
    return f"s3://{loc.bucket}/{loc.prefix}"


def storage_descriptor(spec: TableSpec, location: str) -> dict:
    return {"Columns": [{"Name": f.name, "Type": _TYPES[f.type]} for f in spec.schema],
            "Location": location, **_PARQUET}


def glue_table_input(spec: TableSpec, catalog_uri: str) -> dict:
    """The Glue ``TableInput`` of one table: Parquet under ``<catalog>/<folder>/``."""
    return {"Name": spec.name, "TableType": "EXTERNAL_TABLE",
            "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
            "PartitionKeys": [{"Name": n, "Type": t} for n, t in spec.partition_keys],
            "StorageDescriptor": storage_descriptor(spec, f"{_base(catalog_uri)}{spec.folder}/")}


def view_statements(database: str) -> list[str]:
    """``sources`` and ``associations``: rows of images that have an ``images`` record;
    ``objects``: the objects with their forced-photometry summary (the same rules and SQL
    text as DuckDB's, :func:`skysurvey.queries.view_sql`)."""
    from .queries import view_sql

    return [f'CREATE OR REPLACE VIEW "{database}"."{view}" AS '
            + view_sql(view, f'"{database}"."{table}"', f'"{database}"."images"',
                       f'"{database}"."object_variability"')
            for view, table in VIEWS.items()]


def ddl_statements(database: str, catalog_uri: str) -> list[str]:
    """The same tables and views as Athena DDL (for the manual path of the setup guide; the
    scripts create the tables through Glue, see :func:`glue_table_input`)."""
    base = _base(catalog_uri)
    statements = [f"CREATE DATABASE IF NOT EXISTS `{database}`"]
    for spec in TABLES.values():
        keys = ", ".join(f"`{n}` {t}" for n, t in spec.partition_keys)
        statements.append(
            f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{spec.name}` (\n"
            f"  {column_ddl(spec.schema)}\n)\n"
            f"PARTITIONED BY ({keys})\n"
            "STORED AS PARQUET\n"
            f"LOCATION '{base}{spec.folder}/'")
    return statements + view_statements(database)


# ---- partitions ----------------------------------------------------------------------------


def partition_location(catalog_uri: str, folder: str, values: dict) -> str:
    spec = TABLES[folder]
    path = "/".join(f"{k}={values[k]}" for k, _ in spec.partition_keys)
    return f"{_base(catalog_uri)}{folder}/{path}/"


#: Partitions this process registered or found to exist, by (region, endpoint, database,
#: table, values): a warm Lambda container calls Glue once per new band and night, not once
#: per image. A new process starts empty, so a partition deleted by someone else is registered
#: again at the next cold start (or by ``ensure_tables``, which always asks Glue).
_registered: set[tuple] = set()
aws.on_clear_clients(_registered.clear)


def register_partitions(catalog_uri: str, folder: str, partitions: list[dict], *,
                        database: str | None = None, recheck: bool = False) -> int:
    """Register *partitions* (``[{"band": "r", "night": "2026-03-14"}]``, or ``{"hpx5": 1234}``)
    of the table stored under ``<catalog>/<folder>/`` in Glue; existing ones are kept.
    Partitions this process already registered or saw to exist are skipped without a Glue
    call unless *recheck*. Returns how many were new."""
    from .config import get_setting

    spec = TABLES[folder]
    database = database or get_setting("ATHENA_DATABASE")
    glue, new = aws.client("glue"), 0
    scope = (glue.meta.region_name, glue.meta.endpoint_url, database, spec.name)
    unique = [(values, p) for values, p in
              {tuple(str(p[k]) for k, _ in spec.partition_keys): p for p in partitions}.items()
              if recheck or (*scope, values) not in _registered]
    for start in range(0, len(unique), 100):  # BatchCreatePartition takes 100 at a time
        batch = unique[start:start + 100]
        inputs = [{"Values": list(values), "StorageDescriptor": storage_descriptor(
            spec, partition_location(catalog_uri, folder, p))} for values, p in batch]
        try:
            errors = glue.batch_create_partition(
                DatabaseName=database, TableName=spec.name,
                PartitionInputList=inputs).get("Errors", [])
        except aws.botocore_errors() as exc:
            raise aws.translate(exc, f"glue:{database}.{spec.name}") from None
        failed = [e for e in errors
                  if e.get("ErrorDetail", {}).get("ErrorCode") != "AlreadyExistsException"]
        refused = {tuple(e.get("PartitionValues") or ()) for e in failed}
        _registered.update((*scope, values) for values, _ in batch if values not in refused)
        if failed:
            detail = failed[0].get("ErrorDetail", {})
            raise StorageError(f"glue:{database}.{spec.name}",
                               f"partition {failed[0].get('PartitionValues')}: "
                               f"{detail.get('ErrorCode')}: {detail.get('ErrorMessage', '')}")
        new += len(batch) - len(errors)
    return new


def register_written(catalog_key: str, *, database: str) -> None:
    """After the handler wrote ``<catalog>/sources/band=B/night=N/<id>.parquet`` (and its
    ``images`` twin): register that band and night for both tables."""
    base, _, rest = catalog_key.rpartition("/sources/")
    values = dict(part.split("=", 1) for part in rest.split("/")[:-1])
    for folder in ("sources", "images"):
        register_partitions(base, folder, [values], database=database)


def after_write(reply: dict, database: str | None = None) -> dict:
    """The handler's hook: register the partitions of a successful ``s3://`` write when a
    Glue database is configured (``ATHENA_DATABASE`` on the function). A failure makes the
    reply an error (the files are written; a rerun or ``ensure_tables`` registers them)."""
    database = database if database is not None else os.environ.get("ATHENA_DATABASE")
    key = reply.get("catalog_key") or ""
    if not database or reply.get("status") != "ok" or not is_s3_uri(key):
        return reply
    try:
        register_written(key, database=database)
    except TransientStorageError:
        raise  # Lambda's own retry (the write is idempotent)
    except SkySurveyError as exc:
        return {**reply, "status": "error",
                "error": f"written, but not registered for Athena: {exc}"}
    return reply


def _common_prefixes(bucket: str, prefix: str) -> list[str]:
    s3, found = aws.client("s3"), []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix,
                                                             Delimiter="/"):
        found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return found


def existing_partitions(catalog_uri: str, folder: str) -> list[dict]:
    """The partitions present in the bucket (``key=value`` folders, listed level by level)."""
    loc = parse_s3_uri(catalog_uri)
    prefixes = [f"{loc.prefix}{folder}/"]
    for key, _ in TABLES[folder].partition_keys:
        prefixes = [p for parent in prefixes for p in _common_prefixes(loc.bucket, parent)
                    if p[len(parent):].startswith(f"{key}=")]
    return [dict(part.split("=", 1) for part in p[len(loc.prefix) + len(folder) + 1:]
                 .strip("/").split("/")) for p in prefixes]


def cost_usd(bytes_scanned: int) -> float:
    """Athena's price for one query (:func:`skysurvey.prices.athena_query_usd`: the prices live
    in ``prices.PRICES`` only)."""
    return athena_query_usd(int(bytes_scanned))


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
    import pandas as pd

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
    import pandas as pd

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
    """Run *sql* with bound *params* in *workgroup*; poll with backoff; page the results.

    Parameters
    ----------
    sql : str
        One statement, with ``?`` placeholders for *params*.
    database, workgroup : str
        The Glue database and the Athena workgroup.
    output_location : str, optional
        ``s3://`` folder for the results (default: the workgroup's).
    params : sequence, optional
        Values bound to the placeholders, in order.
    timeout : float
        Seconds before the query is cancelled.
    poll, max_poll : float
        First and longest wait between status checks, s (doubling, with jitter).
    client : optional
        A boto3 Athena client (default: a new one).
    sleep : callable
        How to wait between checks (``time.sleep``; tests pass a recorder).

    Returns
    -------
    AthenaResult
        The typed DataFrame, query id, bytes scanned, cost (USD) and seconds.

    Raises
    ------
    QueryError
        The query failed, was cancelled or timed out.
    ConfigError or StorageError
        Athena cannot be reached (credentials, access, no such workgroup).
    """
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
    except aws.botocore_errors() as exc:
        raise aws.translate(exc, f"athena:{workgroup}") from None
    try:  # polling and paging fail like the start: one line naming the query
        execution = _wait(client, qid, start, timeout, poll, max_poll, sleep)
        pages = list(client.get_paginator("get_query_results").paginate(QueryExecutionId=qid))
    except aws.botocore_errors() as exc:
        raise aws.translate(exc, f"athena:{qid}") from None
    scanned = int(execution.get("Statistics", {}).get("DataScannedInBytes", 0))
    return AthenaResult(results_to_dataframe(pages), qid, scanned, cost_usd(scanned),
                        time.monotonic() - start)


def _wait(client, qid: str, start: float, timeout: float, poll: float, max_poll: float,
          sleep) -> dict:
    """Poll query *qid* with backoff until it succeeds (its execution) or fails (QueryError)."""
    delay = poll
    while True:
        execution = client.get_query_execution(QueryExecutionId=qid)["QueryExecution"]
        state = execution["Status"]["State"]
        if state == "SUCCEEDED":
            return execution
        if state in ("FAILED", "CANCELLED"):
            reason = execution["Status"].get("StateChangeReason", "no reason given")
            raise QueryError(f"athena:{qid}", f"query {state.lower()}: {reason}")
        if time.monotonic() - start > timeout:
            client.stop_query_execution(QueryExecutionId=qid)
            raise QueryError(f"athena:{qid}", f"timed out after {timeout:.0f} s (cancelled)")
        sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, max_poll)


def _glue_tables(database: str) -> dict[str, dict] | None:
    glue, tables = aws.client("glue"), {}
    try:
        for page in glue.get_paginator("get_tables").paginate(DatabaseName=database):
            tables.update({t["Name"]: t for t in page["TableList"]})
    except aws.botocore_errors() as exc:
        if aws.error_code(exc) == "EntityNotFoundException":
            return None
        raise aws.translate(exc, f"glue:{database}") from None
    return tables


def _columns(table: dict) -> list:
    return [(c["Name"], c["Type"]) for c in table.get("StorageDescriptor", {}).get("Columns", [])]


def ensure_tables(database: str, workgroup: str, catalog_uri: str, **kw) -> None:
    """Make the Glue tables match the schemas, the views exist, and every partition in the
    bucket registered. Tables of an older setup (projected ``*_dated``/``*_undated`` tables,
    an ``images`` view, a plain ``sources`` table) are dropped first: their Parquet stays.

    Parameters
    ----------
    database, workgroup : str
        The Glue database (made when missing) and the workgroup the views are created in.
    catalog_uri : str
        ``s3://`` URI of the catalog the tables point at.
    **kw
        Passed to :func:`run_athena` (``output_location``, ``timeout``...).

    Returns
    -------
    None

    Raises
    ------
    ConfigError or StorageError
        Glue cannot be reached or changed.
    QueryError
        A view's statement failed.
    """
    glue = aws.client("glue")
    try:
        found = _glue_tables(database)
        if found is None:  # setup makes it (tagged); a bare query run may not have
            glue.create_database(DatabaseInput={"Name": database})
            found = {}
        stale = [n for n in LEGACY_TABLES if n in found]
        stale += [n for n in VIEWS if n in found and (  # a plain table, or a view of those
            stale or found[n].get("TableType") != "VIRTUAL_VIEW")]
        if found.get("images", {}).get("TableType") == "VIRTUAL_VIEW":
            stale.append("images")
        for name in stale:
            glue.delete_table(DatabaseName=database, Name=name)
            found.pop(name)
        for spec in TABLES.values():
            table = glue_table_input(spec, catalog_uri)
            if spec.name not in found:
                glue.create_table(DatabaseName=database, TableInput=table)
            elif _columns(found[spec.name]) != _columns(table) or found[spec.name].get(
                    "StorageDescriptor", {}).get("Location") != table["StorageDescriptor"][
                        "Location"]:
                glue.update_table(DatabaseName=database, TableInput=table)
    except aws.botocore_errors() as exc:  # _glue_tables' own errors are already translated
        raise aws.translate(exc, f"glue:{database}") from None
    for view, statement in zip(VIEWS, view_statements(database), strict=True):
        if found.get(view, {}).get("TableType") != "VIRTUAL_VIEW":
            run_athena(statement, database=database, workgroup=workgroup, **kw)
    for folder in TABLES:
        register_partitions(catalog_uri, folder, existing_partitions(catalog_uri, folder),
                            database=database, recheck=True)
