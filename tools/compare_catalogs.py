"""Compare two catalog folders value by value: the same Parquet files, columns and rows.

    .venv/bin/python tools/compare_catalogs.py BEFORE AFTER [--ignore COL ...]

Every ``*.parquet`` below either folder (paths relative to it) must be in both, with the same
schema (names and types) and equal values in every column but the run's clock
(:data:`IGNORED`: ``processed_at``, ``seconds``) and any given with ``--ignore``. Floats must be
exactly equal (no tolerance; NaN equals NaN, nulls at the same rows). Tables with the row key
(:data:`ROW_KEY`: ``image_id``, ``source_id``) are compared in key order: a ``sources``
file's rows are stored sorted by ``_healpix_29`` and their order carries no meaning. One line
per difference on stdout; exit status 0 when there is none, 1 otherwise, 2 on bad usage.
Used to check that a refactor leaves the catalogs bit-identical (issue 26).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Columns that record when and how long a run took, not what it measured.
IGNORED = ("processed_at", "seconds")
#: Columns that name a row; tables holding all of them are compared sorted by them.
ROW_KEY = ("image_id", "source_id")


def parquet_files(root: Path) -> set[str]:
    """Paths (relative to *root*, POSIX) of every Parquet file below *root*."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*.parquet")}


def _same_values(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    """Whether two columns hold the same values: nulls at the same rows, floats exactly
    equal (``==``, no tolerance) or both NaN."""
    a, b = a.combine_chunks(), b.combine_chunks()
    if a.type != b.type or len(a) != len(b):
        return False
    if pa.types.is_floating(a.type):
        if not a.is_null().equals(b.is_null()):
            return False
        x = a.to_numpy(zero_copy_only=False)
        y = b.to_numpy(zero_copy_only=False)
        return bool(np.all((x == y) | (np.isnan(x) & np.isnan(y))))
    return a.equals(b)


def compare_tables(before: pa.Table, after: pa.Table, ignore=IGNORED) -> list[str]:
    """What differs between two tables (schema, rows, values), one string each; [] when
    nothing does. Columns in *ignore* are left out."""
    out = []
    names_a = [n for n in before.column_names if n not in ignore]
    names_b = [n for n in after.column_names if n not in ignore]
    if names_a != names_b:
        out.append(f"columns differ: {sorted(set(names_a) ^ set(names_b)) or 'order'}")
    if before.num_rows != after.num_rows:
        out.append(f"rows: {before.num_rows} != {after.num_rows}")
        return out
    for name in (n for n in names_a if n in names_b):
        a, b = before[name], after[name]
        if a.type != b.type:
            out.append(f"{name}: type {a.type} != {b.type}")
        elif not _same_values(a, b):
            rows = [i for i, (u, v) in enumerate(zip(a.to_pylist(), b.to_pylist(),
                                                     strict=True))
                    if not (u == v or (u != u and v != v))]
            shown = ", ".join(f"row {i}: {a[i].as_py()!r} != {b[i].as_py()!r}"
                              for i in rows[:3])
            out.append(f"{name}: {len(rows)} rows differ ({shown})")
    return out


def in_key_order(table: pa.Table) -> pa.Table:
    """*table* sorted by :data:`ROW_KEY` when it has those columns, else as it is."""
    if all(name in table.column_names for name in ROW_KEY):
        return table.sort_by([(name, "ascending") for name in ROW_KEY])
    return table


def compare_folders(before: Path, after: Path, ignore=IGNORED) -> list[str]:
    """Every difference between the catalogs under *before* and *after*, prefixed with the
    file's relative path."""
    files_a, files_b = parquet_files(before), parquet_files(after)
    out = [f"{f}: only in {before}" for f in sorted(files_a - files_b)]
    out += [f"{f}: only in {after}" for f in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        diffs = compare_tables(in_key_order(pq.read_table(before / rel)),
                               in_key_order(pq.read_table(after / rel)), ignore)
        out += [f"{rel}: {d}" for d in diffs]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="catalog folder of the reference run")
    parser.add_argument("after", type=Path, help="catalog folder to compare with it")
    parser.add_argument("--ignore", nargs="*", default=[],
                        help=f"more columns to leave out (always: {', '.join(IGNORED)})")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for folder in (args.before, args.after):
        if not folder.is_dir():
            print(f"not a folder: {folder}", file=sys.stderr)
            return 2
    n_files = len(parquet_files(args.before) | parquet_files(args.after))
    diffs = compare_folders(args.before, args.after, (*IGNORED, *args.ignore))
    for line in diffs:
        print(line)
    print(f"{n_files} files compared: {len(diffs)} differences", file=sys.stderr)
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
