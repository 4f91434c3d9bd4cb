"""Objects at scale: association time, memory, incremental nights, cone-search bytes.

A synthetic catalog is written directly with the handler's writers (``sources`` and ``images``
Parquet files, sources sorted by ``_healpix_29`` in small row groups; no images drawn): 40
overlapping tiles (8 x 5, 8.5' wide, 7.5' apart) observed on 50 epochs, ~2,500 sources per
image (5 million in all), positions jittered by 0.1", 5% of the detections missing at random.
Then, each in a fresh process (so peak RSS is its own):

1. a full build of all 2,000 images (time, peak RSS of the driver and of the pool workers);
2. builds of 5, 10, 25 epochs (time against the number of sources);
3. an incremental night: 1,900 images built, then 100 more added (time of the second run);
4. the Parquet bytes a 1' cone on ``objects`` reads with the pruning the ``cone`` query binds
   (order-5 partition + ``_healpix_29`` row-group statistics) and with a full scan: the
   compressed size of the column chunks of the row groups that survive (what Athena bills).

    python benchmarks/objects_scale.py --out /tmp/objects-bench [--epochs 50] [--workers 2]

Prints a Markdown section for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skysurvey import objects as obj
from skysurvey.pipeline import sources_to_parquet_bytes, table_to_parquet_bytes
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA

RA0, DEC0 = 150.0, 2.0
TILE_DEG = 8.5 / 60
STEP_DEG = 7.5 / 60
NX, NY = 8, 5
PER_IMAGE = 2500


def tiles():
    cosd = np.cos(np.radians(DEC0))
    return [(RA0 + (i - (NX - 1) / 2) * STEP_DEG / cosd, DEC0 + (j - (NY - 1) / 2) * STEP_DEG)
            for j in range(NY) for i in range(NX)]


def true_objects(rng):
    """Objects over the whole field, dense enough for ~PER_IMAGE per tile."""
    cosd = np.cos(np.radians(DEC0))
    half_x = ((NX - 1) * STEP_DEG + TILE_DEG) / 2
    half_y = ((NY - 1) * STEP_DEG + TILE_DEG) / 2
    n = int(PER_IMAGE / 0.95 * (2 * half_x) * (2 * half_y) / TILE_DEG**2)
    ra = RA0 + rng.uniform(-half_x, half_x, n) / cosd
    dec = DEC0 + rng.uniform(-half_y, half_y, n)
    mag = 17 + 5 * rng.uniform(size=n) ** 0.5
    return ra, dec, mag


def write_catalog(root: Path, epochs: int, seed: int = 1) -> int:
    """The synthetic catalog; returns the number of sources."""
    rng = np.random.default_rng(seed)
    ra, dec, mag = true_objects(rng)
    cosd = np.cos(np.radians(DEC0))
    total = 0
    for e in range(epochs):
        night = f"2026-{1 + e // 28:02d}-{1 + e % 28:02d}"
        for t, (tra, tdec) in enumerate(tiles()):
            inside = ((np.abs((ra - tra) * cosd) < TILE_DEG / 2)
                      & (np.abs(dec - tdec) < TILE_DEG / 2)
                      & (rng.uniform(size=len(ra)) > 0.05))
            n = int(inside.sum())
            r = ra[inside] + rng.normal(0, 0.1, n) / 3600 / cosd
            d = dec[inside] + rng.normal(0, 0.1, n) / 3600
            m = mag[inside] + rng.normal(0, 0.02, n)
            image_id = f"e{e:02d}_t{t:02d}"
            cols = {f.name: pa.nulls(n, f.type) for f in SOURCES_SCHEMA}
            cols.update(image_id=pa.array([image_id] * n),
                        source_id=pa.array(np.arange(n, dtype=np.int32)),
                        ra=pa.array(r), dec=pa.array(d), mag=pa.array(m),
                        mag_err=pa.array(np.full(n, 0.02)), snr=pa.array(np.full(n, 50.0)),
                        fwhm=pa.array(np.full(n, 4.0)), flags=pa.array(np.zeros(n, np.int32)),
                        _healpix_29=pa.array(obj.healpix(r, d, 29)))
            row = {f.name: None for f in IMAGES_SCHEMA}
            row.update(image_id=image_id, has_wcs=True, n_sources=n, mjd=61000.0 + e + 0.001 * t,
                       ra_center=tra, dec_center=tdec, width=2040, height=2040,
                       pixel_scale=0.25, pipeline_version="bench",
                       processed_at=datetime(2026, 5, 1))
            # the handler's writers: sources sorted by _healpix_29 in small row groups
            for table, data in (
                    ("sources", sources_to_parquet_bytes(pa.table(cols, schema=SOURCES_SCHEMA))),
                    ("images", table_to_parquet_bytes(
                        pa.Table.from_pylist([row], schema=IMAGES_SCHEMA)))):
                path = root / table / "band=r" / f"night={night}" / f"{image_id}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            total += n
    return total


def subset(full: Path, dest: Path, keep) -> int:
    """Hard links to the images of *full* that *keep* (image_id -> bool) selects."""
    shutil.rmtree(dest, ignore_errors=True)
    n = 0
    for path in full.rglob("*.parquet"):
        rel = path.relative_to(full)
        if rel.parts[0] in ("sources", "images") and keep(path.stem):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest / rel)
            n += rel.parts[0] == "sources"
    return n


def timed_build(catalog: Path, workers: int) -> dict:
    """One build in a fresh process: seconds, peak RSS of the driver and of the workers."""
    code = ("import json, resource, sys, time\n"
            "from skysurvey.objects import BuildConfig, build_objects\n"
            "t = time.perf_counter()\n"
            f"r = build_objects({str(catalog)!r}, BuildConfig(workers={workers}))\n"
            "s = time.perf_counter() - t\n"
            "print(json.dumps({'seconds': s, 'status': r.status, 'objects': r.n_objects,\n"
            "  'associations': r.n_associations, 'units': r.n_units, 'order': r.unit_order,\n"
            "  'reads': r.reads,\n"
            "  'rss_driver_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
            "  'rss_worker_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["status"] != "ok":  # a failed build is fast: its time is no measurement
        raise SystemExit(f"build of {catalog} ended {result['status']!r}: {out.stderr[-2000:]}")
    seen = users_see(catalog)  # (untimed) a build succeeded only if SQL sees it, once
    if seen != (result["objects"], result["objects"], result["associations"]):
        raise SystemExit(f"build of {catalog}: it reported {result['objects']:,} objects and "
                         f"{result['associations']:,} associations, SQL sees (rows, distinct "
                         f"ids, associations) {seen}")
    return result


def users_see(catalog: Path) -> tuple[int, int, int]:
    """Rows and distinct ids of ``objects``, rows of ``associations``, through the DuckDB
    tables and views users query (skysurvey.queries)."""
    from skysurvey.queries import run_query

    row = run_query("SELECT (SELECT count(*) FROM objects) AS n, (SELECT count(DISTINCT "
                    "object_id) FROM objects) AS ids, (SELECT count(*) FROM associations) AS a",
                    str(catalog)).iloc[0]
    return int(row["n"]), int(row["ids"]), int(row["a"])


def cone_bytes(catalog: Path, ra: float, dec: float, radius_arcsec: float) -> tuple[int, int]:
    """Compressed bytes of the columns the cone query reads: (pruned, full scan)."""
    params = obj.cone_parameters((ra, dec, radius_arcsec))
    parts = set(params[3:7])
    ranges = list(zip(params[7::2], params[8::2], strict=True))
    columns = {"object_id", "ra", "dec", "n_detections", "n_nights", "variable",
               "transient_candidate", "_healpix_29"}
    pruned = full = 0
    for path in sorted((catalog / "objects").rglob("*.parquet")):
        if path.name.startswith("_"):  # statistics sidecars: not part of the table
            continue
        part = int(path.parent.name.split("=")[1])
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            chunks = [group.column(c) for c in range(group.num_columns)
                      if group.column(c).path_in_schema in columns]
            size = sum(c.total_compressed_size for c in chunks)
            full += size
            hp = next(c for c in chunks if c.path_in_schema == "_healpix_29").statistics
            if part in parts and any(lo <= hp.max and hp.min <= hi for lo, hi in ranges):
                pruned += size
    return pruned, full


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/objects-bench")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scaling", default="5,10,25", help="epochs of the smaller builds")
    args = parser.parse_args(argv)
    out = Path(args.out)
    full = out / "full"
    t0 = time.perf_counter()
    if not (full / "images").is_dir():
        n_sources = write_catalog(full, args.epochs)
    else:
        n_sources = sum(pq.ParquetFile(p).metadata.num_rows
                        for p in (full / "sources").rglob("*.parquet"))
    print(f"catalog: {n_sources:,} sources in {len(tiles()) * args.epochs} images "
          f"({time.perf_counter() - t0:.0f} s to write)", file=sys.stderr)
    rows = []
    for epochs in [int(e) for e in args.scaling.split(",") if e] + [args.epochs]:
        cat = out / f"epochs{epochs}"
        n = subset(full, cat, lambda stem, e=epochs: int(stem[1:3]) < e)
        result = timed_build(cat, args.workers)
        src = sum(pq.ParquetFile(p).metadata.num_rows for p in (cat / "sources").rglob("*.parquet"))
        rows.append({"epochs": epochs, "images": n, "sources": src, **result})
        print(json.dumps(rows[-1]), file=sys.stderr)
    # incremental: all but the last 100 images, then the 100
    images = sorted(p.stem for p in (full / "images").rglob("*.parquet"))
    last = set(images[-100:])
    inc = out / "incremental"
    subset(full, inc, lambda stem: stem not in last)
    first = timed_build(inc, args.workers)
    subset_add = [p for p in full.rglob("*.parquet") if p.stem in last]
    for path in subset_add:
        rel = path.relative_to(full)
        (inc / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, inc / rel)
    second = timed_build(inc, args.workers)
    pruned, scanned = cone_bytes(out / f"epochs{args.epochs}", RA0, DEC0, 60.0)
    report = {"scaling": rows, "incremental_first": first, "incremental_night": second,
              "cone_bytes_pruned": pruned, "cone_bytes_full": scanned,
              "cpu_count": os.cpu_count(), "load": os.getloadavg()}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = ["| epochs | images | sources | objects | units (order) | seconds | sources/s | "
             "peak RSS driver / worker (MB) |", "|---|---|---|---|---|---|---|---|"]
    for r in report["scaling"]:
        lines.append(f"| {r['epochs']} | {r['images']:,} | {r['sources']:,} | {r['objects']:,} "
                     f"| {r['units']} ({r['order']}) | {r['seconds']:.1f} | "
                     f"{r['sources'] / r['seconds']:,.0f} | {r['rss_driver_mb']:.0f} / "
                     f"{r['rss_worker_mb']:.0f} |")
    night = report["incremental_night"]
    lines += ["", f"Incremental night of 100 images on top of 1,900: {night['seconds']:.1f} s "
                  f"(first build of the 1,900: {report['incremental_first']['seconds']:.1f} s).",
              f"1' cone on objects: {report['cone_bytes_pruned']:,} bytes read with pruning, "
              f"{report['cone_bytes_full']:,} with a full scan "
              f"({report['cone_bytes_full'] / max(report['cone_bytes_pruned'], 1):.0f}x).",
              f"Load average during the run: {', '.join(f'{v:.1f}' for v in report['load'])} "
              f"on {report['cpu_count']} CPUs."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
