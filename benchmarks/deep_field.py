"""Deep field: 1,000 epochs of one 2048 x 2048 field, associated, summarised, forced.

The catalog is written directly from a truth list, with the handler's own writers
(:func:`skysurvey.pipeline.sources_to_parquet_bytes` for ``sources``: sorted by
``_healpix_29`` in small row groups; :func:`table_to_parquet_bytes` for ``images``, with
``footprint_hpx12`` from :func:`skysurvey.forced.footprint_hpx12` and the image's TAN WCS), at
the handler's keys (:func:`skysurvey.schema.catalog_keys`). Per epoch: a dither of up to
+-30" and a rotation of up to +-0.5 deg, seeing 0.7-1.6", a 5-sigma depth of 23.0 +- 0.4 mag;
a star is detected when its noisy SNR is >= 5; its position scatters by
``fwhm / (2.35 SNR)`` (+ 10 mas) about the truth plus an epoch-wide astrometric offset of
~30 mas; 3% of detections carry a blend flag. No pixel is drawn.

Then, each in a fresh process (its own peak RSS), ``--repeats`` times:

1. ``build_objects`` of all epochs (association + object statistics), ``--workers`` processes:
   wall seconds, CPU seconds (driver + workers), peak RSS, and the bytes the units read of the
   sources files against their size (the build's ``reads`` record);
2. the same at ``--compare-epochs`` epochs with the files written sorted and as older versions
   wrote them (unsorted, one row group), to show what the pruning saves;
3. ``summarize_forced`` (the ``object_variability`` summary) over a ``forced_photometry`` table
   written directly (one row per object and covering epoch, the forced schema);
4. forced photometry proper needs pixels: ``--forced-images`` real 2048 x 2048 images
   (``synth_survey.write_survey``, ~2,500 detections each) go through the handler,
   ``build_objects`` and :func:`skysurvey.forced_run.run_forced`; the per-image cost is
   measured there (and again per image in this process, without the pool's start-up) and
   extrapolated to the deep field's images (stated as such).

    python benchmarks/deep_field.py --out /tmp/deep-bench [--epochs 1000] [--workers 2]

Prints a Markdown section for benchmarks/RESULTS.md and writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from skysurvey.geometry import healpix
from skysurvey.pipeline import (
    SOURCES_ROW_GROUP_ROWS,
    sources_to_parquet_bytes,
    table_to_parquet_bytes,
)
from skysurvey.schema import (
    FORCED_PHOTOMETRY_SCHEMA,
    IMAGES_SCHEMA,
    SOURCES_SCHEMA,
    catalog_keys,
    forced_key,
)

RA0, DEC0 = 210.0, 12.0
SIZE, SCALE = 2048, 0.26  # pixels, arcsec/pixel: 8.9' x 8.9'
ZP = 28.0
TABLES = ("objects", "object_photometry", "associations", ".objects-staging",
          "object_variability")


# ---- the catalog ----------------------------------------------------------------------------


def truth(seed: int = 1):
    """True stars over the field and its dither margin, ~2,500 detected per epoch."""
    rng = np.random.default_rng(seed)
    half = (SIZE * SCALE / 2 + 40) / 3600
    n = 4200
    cosd = np.cos(np.radians(DEC0))
    ra = RA0 + rng.uniform(-half, half, n) / cosd
    dec = DEC0 + rng.uniform(-half, half, n)
    u = rng.uniform(size=n)
    mag = 16 + 8.5 * u ** 0.55  # more faint than bright stars
    return ra, dec, mag


def epoch_setup(e: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, e])
    return {"d_ra": rng.uniform(-30, 30) / 3600, "d_dec": rng.uniform(-30, 30) / 3600,
            "rot": np.radians(rng.uniform(-0.5, 0.5)), "seeing": rng.uniform(0.7, 1.6),
            "m5": 23.0 + rng.normal(0, 0.4), "astrom": rng.normal(0, 0.03, 2) / 3600,
            "mjd": 61000.0 + e // 4 + 0.05 * (e % 4), "rng": rng}


def _wcs(ra_c: float, dec_c: float, rot: float):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_c, dec_c]
    w.wcs.crpix = [SIZE / 2 + 0.5, SIZE / 2 + 0.5]
    s = SCALE / 3600
    w.wcs.cd = [[-s * np.cos(rot), s * np.sin(rot)], [s * np.sin(rot), s * np.cos(rot)]]
    return w


def write_epoch(root: str, e: int, seed: int, row_group_rows: int | None) -> int:
    """One epoch's two files (*row_group_rows* None: as older versions wrote them)."""
    from skysurvey.forced import footprint_hpx12

    ra_t, dec_t, mag_t = truth(seed)
    ep = epoch_setup(e, seed)
    rng = ep["rng"]
    cosd = np.cos(np.radians(DEC0))
    ra_c, dec_c = RA0 + ep["d_ra"] / cosd, DEC0 + ep["d_dec"]
    wcs = _wcs(ra_c, dec_c, ep["rot"])
    x, y = wcs.all_world2pix(ra_t, dec_t, 0)
    snr_true = 5 * 10 ** (-0.4 * (mag_t - ep["m5"]))
    snr = snr_true + rng.normal(0, 1, len(mag_t))
    det = (x > 2) & (x < SIZE - 3) & (y > 2) & (y < SIZE - 3) & (snr >= 5)
    idx = np.nonzero(det)[0]
    idx = idx[np.argsort(y[idx])]  # detections come out of the extractor in y order
    n = len(idx)
    fwhm_pix = ep["seeing"] / SCALE
    sigma = np.hypot(ep["seeing"] / (2.35 * snr[idx]), 0.01) / 3600
    dec = dec_t[idx] + ep["astrom"][1] + rng.normal(0, 1, n) * sigma
    ra = ra_t[idx] + (ep["astrom"][0] + rng.normal(0, 1, n) * sigma) / cosd
    flux = 10 ** (-0.4 * (mag_t[idx] - ZP)) * (1 + rng.normal(0, 1, n) / snr_true[idx])
    flux_err = flux / snr[idx]
    mag = ZP - 2.5 * np.log10(np.clip(flux, 1e-3, None))
    mag_err = 1.0857 / snr[idx]
    image_id = f"deep_e{e:04d}"
    night = datetime.fromordinal(datetime(2026, 1, 1).toordinal() + e // 4).strftime("%Y-%m-%d")
    cols = {f.name: pa.nulls(n, f.type) for f in SOURCES_SCHEMA}

    def noisy(scale, base=0.0):
        return pa.array(base + scale * rng.normal(0, 1, n))

    cols.update(image_id=pa.array([image_id] * n), source_id=pa.array(np.arange(n, dtype=np.int32)),
                x=pa.array(x[idx]), y=pa.array(y[idx]), ra=pa.array(ra), dec=pa.array(dec),
                flux=pa.array(flux), flux_err=pa.array(flux_err), flux_aper=pa.array(flux * 0.95),
                flux_aper_err=pa.array(flux_err * 0.9), mag=pa.array(mag),
                mag_err=pa.array(mag_err), flux_apcorr=pa.array(flux * 0.99),
                flux_apcorr_err=pa.array(flux_err), class_star=pa.array(rng.uniform(0.8, 1, n)),
                snr=pa.array(snr[idx]), peak=pa.array(flux / (1.13 * fwhm_pix**2)),
                background=noisy(2.0, 300.0), a=noisy(0.1, fwhm_pix / 2.35),
                b=noisy(0.1, fwhm_pix / 2.4), theta=pa.array(rng.uniform(-1.5, 1.5, n)),
                fwhm=noisy(0.1, fwhm_pix), ellipticity=pa.array(rng.uniform(0, 0.1, n)),
                npix=pa.array(rng.integers(9, 400, n).astype(np.int32)),
                flags=pa.array(np.where(rng.uniform(size=n) < 0.03, 2, 0).astype(np.int32)),
                _healpix_29=pa.array(healpix(ra, dec, 29)))
    sources = pa.table(cols, schema=SOURCES_SCHEMA)
    keys = catalog_keys(image_id, "r", night)
    data = (sources_to_parquet_bytes(sources, row_group_rows) if row_group_rows
            else table_to_parquet_bytes(sources))
    row = {f.name: None for f in IMAGES_SCHEMA}
    row.update(image_id=image_id, source_key=f"synthetic://deep/{image_id}.fits", has_wcs=True,
               n_sources=n, width=SIZE, height=SIZE, mjd=ep["mjd"], band="r",
               ra_center=ra_c, dec_center=dec_c, pixel_scale=SCALE,
               fwhm_arcsec=ep["seeing"], depth_5sigma=ep["m5"], zero_point=ZP, exptime=60.0,
               footprint_hpx12=footprint_hpx12(wcs, (SIZE, SIZE)).tolist(),
               pipeline_version="bench", processed_at=datetime(2026, 12, 1))
    row = {k: v for k, v in row.items() if k in IMAGES_SCHEMA.names}
    images = pa.Table.from_pylist([row], schema=IMAGES_SCHEMA)
    for key, blob in ((keys["sources"], data), (keys["images"], table_to_parquet_bytes(images))):
        path = Path(root) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return n


def write_catalog(root: Path, epochs: int, *, seed: int = 1, workers: int = 2,
                  row_group_rows: int | None = SOURCES_ROW_GROUP_ROWS) -> int:
    """Every epoch's files (a process pool); returns the detections."""
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(write_epoch, str(root), e, seed, row_group_rows)
                   for e in range(epochs)]
        return sum(f.result() for f in futures)


def write_forced_table(root: Path, seed: int = 1) -> int:
    """A ``forced_photometry`` file per image: every object (from the build) that its footprint
    covers, with a flux scattered about the object's mean (what summarize_forced reads)."""
    import pyarrow.parquet as pq

    objects = pq.read_table(root / "objects", columns=["object_id", "ra", "dec"])
    oid = objects["object_id"].to_numpy()
    ora, odec = objects["ra"].to_numpy(), objects["dec"].to_numpy()
    hp12 = healpix(ora, odec, 12)
    images = pq.read_table(root / "images", columns=["image_id", "mjd", "night", "depth_5sigma",
                                                      "footprint_hpx12"]).to_pylist()
    rng = np.random.default_rng(seed)
    base = 10 ** (-0.4 * (rng.uniform(18, 23.5, len(oid)) - ZP))
    total = 0
    for img in images:
        sel = np.isin(hp12, np.asarray(img["footprint_hpx12"], np.int64))
        n = int(sel.sum())
        err = 10 ** (-0.4 * (img["depth_5sigma"] - ZP)) / 5
        flux = base[sel] + rng.normal(0, err, n)
        snr = flux / err
        with np.errstate(invalid="ignore", divide="ignore"):
            mag = np.where(flux > 0, ZP - 2.5 * np.log10(np.abs(flux)), np.nan)
        table = pa.table({
            "object_id": pa.array(oid[sel]), "image_id": pa.array([img["image_id"]] * n),
            "mjd": pa.array(np.full(n, img["mjd"])), "x": pa.array(rng.uniform(0, SIZE, n)),
            "y": pa.array(rng.uniform(0, SIZE, n)), "flux": pa.array(flux),
            "flux_err": pa.array(np.full(n, err)), "snr": pa.array(snr),
            "mag": pa.array(mag, mask=~np.isfinite(mag)),
            "mag_err": pa.array(1.0857 / np.abs(snr)),
            "mag_limit": pa.array(np.full(n, img["depth_5sigma"])),
            "flags": pa.array(np.zeros(n, np.int32)),
            "pipeline_version": pa.array(["bench"] * n)}, schema=FORCED_PHOTOMETRY_SCHEMA)
        path = root / forced_key(img["image_id"], "r", img["night"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(table_to_parquet_bytes(table))
        total += n
    return total


def subset(full: Path, dest: Path, epochs: int) -> None:
    """Hard links to the first *epochs* epochs of *full*."""
    shutil.rmtree(dest, ignore_errors=True)
    for table in ("sources", "images"):
        for path in (full / table).rglob("*.parquet"):
            if int(path.stem.rsplit("_e", 1)[1]) < epochs:
                target = dest / path.relative_to(full)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)


# ---- timed steps, each in a fresh process ---------------------------------------------------

_TIMED = """
import json, resource, sys, time
t, c = time.perf_counter(), time.process_time()
{body}
s = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
out.update(seconds=s, cpu_seconds=me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
           rss_driver_mb=me.ru_maxrss / 1024, rss_worker_mb=kids.ru_maxrss / 1024)
print(json.dumps(out))
"""

_BUILD = """
from skysurvey.objects import BuildConfig, build_objects
r = build_objects({catalog!r}, BuildConfig(workers={workers}))
assert r.status == "ok", r.summary()
out = dict(status=r.status, objects=r.n_objects, associations=r.n_associations,
           units=r.n_units, order=r.unit_order, reads=r.reads)
"""

_SUMMARY = """
from skysurvey.forced_run import summarize_forced
v = summarize_forced({catalog!r})
out = dict(objects=v.n_objects, rows=v.n_rows, variable=v.n_variable,
           transient=v.n_transient)
"""


def timed(body: str, **values) -> dict:
    code = _TIMED.format(body=body.format(**values))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def clear_tables(catalog: Path) -> None:
    for name in TABLES:
        shutil.rmtree(catalog / name, ignore_errors=True)


def repeated_builds(catalog: Path, workers: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        clear_tables(catalog)
        runs.append(timed(_BUILD, catalog=str(catalog), workers=workers))
        print(json.dumps(runs[-1]), file=sys.stderr)
    return _median(runs)


def _median(runs: list[dict]) -> dict:
    out = dict(runs[-1])
    for k in ("seconds", "cpu_seconds", "rss_driver_mb", "rss_worker_mb"):
        out[k] = statistics.median(r[k] for r in runs)
        out[k + "_all"] = [round(r[k], 2) for r in runs]
    return out


# ---- forced photometry on real images ---------------------------------------------------------


def forced_on_images(out: Path, n_images: int, workers: int) -> dict:
    """The handler, build_objects and run_forced on *n_images* real 2048^2 images; seconds."""
    from skysurvey.forced_run import run_forced
    from skysurvey.objects import BuildConfig, build_objects
    from skysurvey.runner import list_images, run_local
    from skysurvey.synth_survey import write_survey

    raw, cat = out / "forced-raw", out / "forced-catalog"
    if not raw.is_dir():
        write_survey(raw, nights=n_images, bands=("r",), size=SIZE, n_stars=1100,
                     n_galaxies=20, n_bright=10, n_transients=0, dither_arcsec=30.0)
    shutil.rmtree(cat, ignore_errors=True)
    keys = list_images(str(raw))
    t = time.perf_counter()
    replies = run_local(str(raw), keys, str(cat), workers=workers)
    handler = time.perf_counter() - t
    n_sources = sum(r["n_sources"] for r in replies)
    build_objects(str(cat), BuildConfig(workers=workers))
    c0 = _cpu()
    t = time.perf_counter()
    report = run_forced(str(cat), str(raw), workers=workers, summarize=False)
    forced = time.perf_counter() - t
    cpu = _cpu() - c0
    ok = sum(r.get("status") == "ok" for r in report.replies)
    return {"images": len(keys), "ok": ok, "detections": n_sources,
            "handler_seconds": handler, "forced_seconds": forced, "forced_cpu_seconds": cpu,
            "forced_per_image": forced * workers / max(ok, 1),
            "forced_cpu_per_image": cpu / max(ok, 1), **_forced_in_process(cat, raw)}


def _forced_in_process(cat: Path, raw: Path, repeats: int = 3) -> dict:
    """Each image's ``forced_image`` again in this process, *repeats* times: the median CPU
    seconds per image without the pool's start-up (which a handful of images cannot
    amortise) and the objects measured per image."""
    from skysurvey.forced_run import forced_image, plan_forced

    tasks = plan_forced(str(cat), str(raw), rebuild=True).tasks
    cpu, rows = [], []
    for _ in range(repeats):
        for task in tasks:
            c0 = time.process_time()
            reply = forced_image(task)
            cpu.append(time.process_time() - c0)
            rows.append(reply.get("n_objects") or 0)
    return {"forced_cpu_per_image_in_process": statistics.median(cpu) if cpu else None,
            "forced_objects_per_image": statistics.median(rows) if rows else None}


def _cpu() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# ---- main ------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/deep-bench")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-epochs", type=int, default=100,
                        help="epochs of the sorted vs older-layout comparison (0: none)")
    parser.add_argument("--forced-images", type=int, default=8,
                        help="real images for the forced cost per image (0: none)")
    parser.add_argument("--skip", default="", help="steps to skip: build,compare,summary,forced")
    args = parser.parse_args(argv)
    out = Path(args.out)
    skip = set(args.skip.split(","))
    report = {"epochs": args.epochs, "workers": args.workers, "cpu_count": os.cpu_count(),
              "row_group_rows": SOURCES_ROW_GROUP_ROWS}
    full = out / "full"
    if not (full / "images").is_dir():
        t = time.perf_counter()
        report["detections"] = write_catalog(full, args.epochs, workers=args.workers)
        report["write_seconds"] = time.perf_counter() - t
    report["source_bytes"] = sum(p.stat().st_size for p in (full / "sources").rglob("*.parquet"))
    report["source_files"] = sum(1 for _ in (full / "sources").rglob("*.parquet"))
    if "build" not in skip:
        report["build"] = repeated_builds(full, args.workers, args.repeats)
    if args.compare_epochs and "compare" not in skip:
        n = args.compare_epochs
        sorted_cat, old_cat = out / f"sorted{n}", out / f"old{n}"
        subset(full, sorted_cat, args.compare_epochs)
        if not (old_cat / "images").is_dir():
            write_catalog(old_cat, args.compare_epochs, workers=args.workers, row_group_rows=None)
        report["compare"] = {"sorted": repeated_builds(sorted_cat, args.workers, args.repeats),
                             "old": repeated_builds(old_cat, args.workers, 1)}
    if "summary" not in skip:
        if "build" in skip:
            clear_tables(full)
            timed(_BUILD, catalog=str(full), workers=args.workers)
        shutil.rmtree(full / "forced_photometry", ignore_errors=True)
        report["forced_rows"] = write_forced_table(full)
        report["summary"] = _median([timed(_SUMMARY, catalog=str(full))
                                     for _ in range(args.repeats)])
    if args.forced_images and "forced" not in skip:
        report["forced"] = forced_on_images(out, args.forced_images, args.workers)
    report["load"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
