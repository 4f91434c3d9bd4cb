"""The named SQL queries, written once, run on DuckDB here (and on Athena through athena.py).

The SQL is plain ANSI that both DuckDB and Trino (Athena) accept; user values are bound as
``?`` parameters, never pasted into the text. The tables are ``sources`` and ``images``: in
DuckDB, Arrow datasets over the Hive-partitioned Parquet catalog with explicit schemas (so an
empty catalog keeps its column types), ``band`` and ``night`` appearing as columns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads

from .config import is_s3_uri, parse_s3_uri
from .errors import QueryError
from .schema import IMAGES_SCHEMA, SOURCES_SCHEMA

PARTITIONS = pa.schema([pa.field("band", pa.string()), pa.field("night", pa.string())])


@dataclass(frozen=True)
class NamedQuery:
    description: str
    sql: str
    params: tuple = ()


NAMED_QUERIES: dict[str, NamedQuery] = {
    "total_sources": NamedQuery(
        "How many sources, images and bands the catalog holds",
        "SELECT count(*) AS total_sources, count(DISTINCT image_id) AS total_images, "
        "count(DISTINCT band) AS bands FROM sources",
    ),
    "source_statistics": NamedQuery(
        "Per band: sources, magnitudes, SNR and FWHM (sources with SNR >= ?)",
        "SELECT band, count(*) AS n_sources, avg(mag) AS mean_mag, min(mag) AS brightest_mag, "
        "max(mag) AS faintest_mag, avg(snr) AS mean_snr, avg(fwhm) AS mean_fwhm_px "
        "FROM sources WHERE snr >= ? GROUP BY band ORDER BY band",
        (5.0,),
    ),
    "bright_sources": NamedQuery(
        "The 20 brightest sources with SNR >= ?",
        "SELECT image_id, band, source_id, ra, dec, mag, mag_err, snr FROM sources "
        "WHERE mag IS NOT NULL AND snr >= ? ORDER BY mag ASC, image_id, source_id LIMIT 20",
        (10.0,),
    ),
    "snr_distribution": NamedQuery(
        "Number of sources per SNR bin",
        "SELECT CASE WHEN snr < 5 THEN '0-5' WHEN snr < 10 THEN '5-10' "
        "WHEN snr < 20 THEN '10-20' WHEN snr < 50 THEN '20-50' WHEN snr < 100 THEN '50-100' "
        "ELSE '100+' END AS snr_bin, count(*) AS n_sources, min(snr) AS min_snr "
        "FROM sources WHERE snr IS NOT NULL GROUP BY 1 ORDER BY min(snr)",
    ),
}


def s3_filesystem():
    """pyarrow's S3 filesystem with boto3's credentials, region and endpoint."""
    import boto3
    from pyarrow import fs

    session = boto3.Session()
    creds = session.get_credentials()
    kwargs = {"region": session.region_name or os.environ.get("AWS_REGION", "us-east-1")}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key,
                      session_token=frozen.token)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    return fs.S3FileSystem(**kwargs)


def dataset(catalog_uri: str, table: str) -> pads.Dataset:
    """The Arrow dataset of one table (``sources`` or ``images``) of a catalog."""
    file_schema = {"sources": SOURCES_SCHEMA, "images": IMAGES_SCHEMA}[table]
    full = pa.schema(list(file_schema) + list(PARTITIONS))
    partitioning = pads.partitioning(PARTITIONS, flavor="hive")
    try:
        if is_s3_uri(catalog_uri):
            loc = parse_s3_uri(catalog_uri)
            path = f"{loc.bucket}/{loc.prefix}{table}"
            data = pads.dataset(path, filesystem=s3_filesystem(), format="parquet",
                                partitioning=partitioning, schema=full)
        else:
            data = pads.dataset(os.path.join(os.path.expanduser(catalog_uri), table),
                                format="parquet", partitioning=partitioning, schema=full)
    except (FileNotFoundError, OSError) as exc:
        raise QueryError(str(catalog_uri),
                         f"no catalog here ({exc}): run scripts/invoke_lambda.py first") from None
    if not data.files:
        raise QueryError(str(catalog_uri), "no catalog here: run scripts/invoke_lambda.py first")
    return data


def connect(catalog_uri: str):
    """A DuckDB connection with the tables ``sources`` and ``images`` of *catalog_uri*."""
    import duckdb

    con = duckdb.connect()
    con.register("sources", dataset(catalog_uri, "sources"))
    con.register("images", dataset(catalog_uri, "images"))
    return con


def run_query(sql: str, catalog_uri: str, params=None):
    """Run *sql* with bound *params* on DuckDB over the catalog; a pandas DataFrame."""
    import duckdb

    con = connect(catalog_uri)
    try:
        return con.execute(sql, list(params or [])).fetch_df()
    except duckdb.Error as exc:
        raise QueryError("sql", str(exc).splitlines()[0]) from None
    finally:
        con.close()


def get_named(name: str) -> NamedQuery:
    if name not in NAMED_QUERIES:
        raise QueryError(name, f"no such query (known: {', '.join(NAMED_QUERIES)})")
    return NAMED_QUERIES[name]


def run_named(name: str, catalog_uri: str, params=None):
    query = get_named(name)
    return run_query(query.sql, catalog_uri, query.params if params is None else params)
