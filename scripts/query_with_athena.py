"""Step 5: the named SQL queries (and your own) over the catalog: DuckDB locally.

    python scripts/query_with_athena.py --query all
    python scripts/query_with_athena.py --query bright_sources --param 50
    python scripts/query_with_athena.py --sql "SELECT band, count(*) AS n FROM sources GROUP BY 1"

The same SQL text is meant for Athena (``--engine athena``), where the tables have the same names.
Exit status 0 on success, 1 when a query fails, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skysurvey.config import OUTPUT_DIR, get_setting
from skysurvey.errors import SkySurveyError
from skysurvey.queries import NAMED_QUERIES, get_named, run_query


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the named queries or custom SQL over the Parquet catalog.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/query_with_athena.py --query source_statistics",
    )
    parser.add_argument("--engine", choices=("duckdb", "athena"), default="duckdb")
    parser.add_argument("--catalog", default=None, help="catalog folder or s3:// URI "
                        "(default: BUCKET_CATALOG)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--query", default=None, help="a named query, or 'all' (default)")
    what.add_argument("--sql", default=None, help="custom SQL over the tables sources, images")
    what.add_argument("--list", action="store_true", help="list the named queries")
    parser.add_argument("--param", action="append", default=None,
                        help="a value bound to the next ? in the SQL (repeatable)")
    parser.add_argument("--output", default=None, help="save the result (.csv or .parquet)")
    parser.add_argument("--database", default=None, help="Athena database "
                        "(default: ATHENA_DATABASE)")
    parser.add_argument("--workgroup", default=None, help="Athena workgroup "
                        "(default: ATHENA_WORKGROUP)")
    parser.add_argument("--output-dir", default=None,
                        help="with --query all: one CSV per query (default: data/output)")
    return parser


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _save(df, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def _duckdb(catalog: str):
    return lambda sql, params: (run_query(sql, catalog, params), "")


def _athena(args, catalog: str):
    """A runner on Athena; the tables are created first if missing (DDL is free)."""
    from skysurvey.athena import ensure_tables, run_athena

    database = get_setting("ATHENA_DATABASE", args.database)
    workgroup = get_setting("ATHENA_WORKGROUP", args.workgroup)
    output = get_setting("ATHENA_OUTPUT") or None
    state = {"tables": False}

    def run(sql, params):
        if not state["tables"]:
            ensure_tables(database, workgroup, catalog, output_location=output)
            state["tables"] = True
        result = run_athena(sql, database=database, workgroup=workgroup,
                            output_location=output, params=params)
        return result.dataframe, (f"(scanned {result.bytes_scanned / 1e6:.2f} MB, "
                                  f"${result.cost_usd:.6f}, {result.seconds:.1f} s)")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, q in NAMED_QUERIES.items():
            print(f"{name:<20} {q.description}")
        return 0
    if args.output and Path(args.output).suffix not in (".csv", ".parquet"):
        parser.error("--output must end in .csv or .parquet")
    catalog = get_setting("BUCKET_CATALOG", args.catalog)
    params = [_value(p) for p in args.param] if args.param is not None else None
    if args.sql:
        jobs = [("custom", args.sql, params or [])]
    else:
        names = list(NAMED_QUERIES) if args.query in (None, "all") else [args.query]
        try:
            jobs = [(n, get_named(n).sql,
                     params if params is not None else get_named(n).params) for n in names]
        except SkySurveyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.output and len(jobs) > 1:
        parser.error("--output takes one query; use --output-dir with --query all")
    out_dir = Path(args.output_dir) if args.output_dir else (
        OUTPUT_DIR if len(jobs) > 1 else None)
    run = _duckdb(catalog) if args.engine == "duckdb" else _athena(args, catalog)
    for name, sql, bound in jobs:
        try:
            df, note = run(sql, bound)
        except SkySurveyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"\n== {name} ==")
        print(df.to_string(index=False))
        if note:
            print(note)
        if args.output:
            _save(df, Path(args.output))
        elif out_dir is not None:
            _save(df, out_dir / f"{name}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
