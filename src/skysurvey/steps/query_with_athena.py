"""Step 5: the named SQL queries (and your own) over the catalog: DuckDB locally.

    python scripts/query_with_athena.py --query all
    python scripts/query_with_athena.py --query bright_sources --param 50
    python scripts/query_with_athena.py --sql "SELECT band, count(*) AS n FROM sources GROUP BY 1"
    python scripts/query_with_athena.py --sql "SELECT * FROM sources" --output sources.fits

The same SQL text is meant for Athena (``--engine athena``), where the tables have the same names.
``--output`` writes CSV, Parquet, FITS, VOTable (.vot/.xml) or DS9 regions (.reg), with units
and UCDs where the format holds them (skysurvey.export). ``--query all`` saves one CSV per query
in a new run folder under data/output/queries/ and prints each path; an existing file is never
replaced without ``--force``. Exit status 0 on success, 1 when a query fails, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from skysurvey import cli
from skysurvey.config import OUTPUT_DIR, get_setting
from skysurvey.errors import SkySurveyError, printable
from skysurvey.export import (
    FORMATS,
    check_output_file,
    check_output_folder,
    export_format,
    write_table,
)
from skysurvey.queries import (
    NAMED_QUERIES,
    get_named,
    run_query,
    single_statement,
    why_empty,
)

#: rows printed when --output writes the whole result to a file
PREVIEW_ROWS = 10

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the named queries or custom SQL over the Parquet catalog.",
        formatter_class=cli.HelpFormatter,
        epilog="examples:\n  python scripts/query_with_athena.py --query source_statistics\n"
               "  python scripts/query_with_athena.py --sql \"SELECT * FROM sources WHERE snr > ?\""
               " --param 20 --output bright.vot",
    )
    cli.add_version(parser)
    parser.add_argument("--engine", choices=("duckdb", "athena"), default="duckdb",
                        help="duckdb: local SQL over the Parquet files (no account); athena: "
                             "the same SQL on AWS Athena (billed per byte scanned)")
    parser.add_argument("--catalog", default=None, help="catalog folder or s3:// URI "
                        "(default: BUCKET_CATALOG)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--query", default=None, help="a named query, or 'all' (default)")
    what.add_argument("--sql", default=None,
                      help="custom SQL over the tables sources, images: exactly one statement. "
                           "On DuckDB it can also read any local file this user can "
                           "(read_csv, read_parquet...); add --safe for shared catalogs")
    what.add_argument("--list", action="store_true",
                      help="list the named queries and their default thresholds")
    parser.add_argument("--safe", action="store_true",
                        help="DuckDB: the SQL sees only the catalog's tables, with no access to "
                             "local files or the network (for catalogs and SQL shared with "
                             "others; Athena never reads local files)")
    parser.add_argument("--param", action="append", default=None,
                        help="a value bound to the next ? in the SQL (repeatable)")
    parser.add_argument("--output", default=None,
                        help="save the result of one query: " + ", ".join(FORMATS)
                             + " (FITS/VOTable/Parquet carry units)")
    parser.add_argument("--database", default=None, help="Athena database "
                        "(default: ATHENA_DATABASE)")
    parser.add_argument("--workgroup", default=None, help="Athena workgroup "
                        "(default: ATHENA_WORKGROUP)")
    parser.add_argument("--output-dir", default=None,
                        help="with --query all: one CSV per query (default: a new folder "
                             "data/output/queries/<UTC time>/)")
    parser.add_argument("--force", action="store_true",
                        help="replace files that --output or --output-dir would overwrite")
    return parser


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _run_folder() -> Path:
    """A new folder for this run's query exports (earlier runs are kept)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder, n = OUTPUT_DIR / "queries" / stamp, 1
    while folder.exists():
        n += 1
        folder = OUTPUT_DIR / "queries" / f"{stamp}-{n}"
    return folder


def _pixel_scales(run, df) -> dict | None:
    """Pixel scale by image id, for DS9 sky ellipses (None when the result has no image ids)."""
    if "image_id" not in df.columns or "pixel_scale" in df.columns:
        return None
    scales, _ = run("SELECT image_id, pixel_scale FROM images", [])
    return dict(zip(scales["image_id"], scales["pixel_scale"], strict=True))


def _for_terminal(df):
    """*df* with control characters in its text shown escaped (``\\x1b``, ``\\n``): a value
    from the catalog (an image id) never moves the cursor or recolours the terminal."""
    out = df.rename(columns=lambda c: printable(str(c)))
    for name in out.columns:
        column = out[name]
        if column.dtype == object or str(column.dtype) in ("string", "str"):
            out[name] = column.map(lambda v: printable(v) if isinstance(v, str) else v)
    return out


def _why_empty(engine: str, sql: str = "", catalog: str = "") -> str:
    if engine == "athena":
        return ("(no rows) Athena returned an empty result. Possible reasons: the catalog "
                "has no images yet (run scripts/invoke_lambda.py --backend lambda), the "
                "tables point at another bucket or prefix (--catalog, BUCKET_CATALOG), a "
                "partition was never registered, a typo in a value; under moto, Athena runs "
                "no SQL and answers only what a test queued.")
    return f"(no rows) {why_empty(sql, catalog)}."


def _duckdb(catalog: str, safe: bool = False):
    return lambda sql, params: (run_query(sql, catalog, params, safe=safe), "")


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
            defaults = (f"  (default: {', '.join(f'? = {p}' for p in q.params)})"
                        if q.params else "")
            print(f"{name:<20} {q.description}{defaults}")
        return 0
    catalog = get_setting("BUCKET_CATALOG", args.catalog)
    # writers create only what they own: never a folder, never a file inside the catalog
    checks = [("--output", args.output, lambda v: (export_format(v), check_output_file(
        v, catalog, force=args.force))), ("--output-dir", args.output_dir,
                                          lambda v: check_output_folder(v, catalog))]
    for flag, value, check in checks:
        if value:
            try:
                check(value)
            except SkySurveyError as exc:
                parser.error(f"{flag}: {exc}")
    params = [_value(p) for p in args.param] if args.param is not None else None
    if args.sql:
        try:
            single_statement(args.sql, args.engine)
        except SkySurveyError as exc:
            parser.error(f"--sql: {exc.cause}")
        jobs = [("custom", args.sql, params or [])]
    else:
        names = list(NAMED_QUERIES) if args.query in (None, "all") else [args.query]
        try:
            jobs = [(n, get_named(n).sql, get_named(n).bind(params)) for n in names]
        except SkySurveyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.output and len(jobs) > 1:
        parser.error("--output takes one query; use --output-dir with --query all")
    out_dir = Path(args.output_dir) if args.output_dir else (
        _run_folder() if len(jobs) > 1 else None)
    if out_dir is not None and not args.force:
        existing = [n for n, _, _ in jobs if (out_dir / f"{n}.csv").exists()]
        if existing:
            parser.error(f"{out_dir} already holds {', '.join(existing)}.csv: add --force to "
                         "replace them, or leave out --output-dir for a new run folder")
    run = _duckdb(catalog, args.safe) if args.engine == "duckdb" else _athena(args, catalog)
    saved, failed = [], []
    for name, sql, bound in jobs:  # one failing query is named; the others still run
        try:
            df, note = run(sql, bound)
        except SkySurveyError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"\n== {name} ==")
        shown = df.head(PREVIEW_ROWS) if args.output else df  # the file has them all
        print(_for_terminal(shown).to_string(index=False) if len(df) else
              _why_empty(args.engine, sql, catalog))
        if len(shown) < len(df):
            print(f"... {len(df) - len(shown)} more rows ({len(df)} in all) in "
                  f"{printable(args.output)}")
        if note:
            print(note)
        try:
            if args.output:
                scales = _pixel_scales(run, df) if export_format(args.output) == "ds9" else None
                saved.append(write_table(df, args.output, pixel_scales=scales))
            elif out_dir is not None:
                saved.append(write_table(df, out_dir / f"{name}.csv"))
        except SkySurveyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for path in saved:
        print(f"saved {printable(str(path))}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
