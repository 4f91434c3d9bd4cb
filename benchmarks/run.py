"""Benchmarks: per-image time by stage and peak memory, SEP overhead, SExtractor side by side,
local scaling, Lambda cost, queries over millions of sources, cold start.

    python benchmarks/run.py            # full run (about 2 minutes on 2 cores, 1 once cached)
    python benchmarks/run.py --quick    # smaller, about 30 seconds

Prints each table and writes data/output/benchmark_results.md (git-ignored, so a run never
dirties the checkout); ``--update-results`` writes the tracked benchmarks/RESULTS.md instead,
which the README quotes. Medians over repeats; every comparison is
measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sep

from skysurvey import __version__
from skysurvey.detect import SECOND_PASS, DetectionConfig, measure_image
from skysurvey.fitsread import read_fits
from skysurvey.pipeline import table_to_parquet_bytes
from skysurvey.queries import NAMED_QUERIES, run_query
from skysurvey.runner import run_local
from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA, catalog_keys
from skysurvey.synth import make_image, make_sky_sources

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
LAMBDA_GB_SECOND = 0.0000166667  # USD, x86, us-east-1 (checked 2026-11)
LAMBDA_REQUEST = 0.20 / 1e6
STSCI_REFERENCE = 0.00002  # USD per HST image on Lambda, as reported by STScI


def interleaved_times(fns, repeats, clock=time.perf_counter):
    """Median seconds of each function, run in turn within every repeat (drift hits all alike).

    *clock* ``time.process_time`` counts this process's CPU only: steadier on a shared machine
    for single-threaded work."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = clock()
            fn()
            out.append(clock() - start)
    return [statistics.median(t) for t in times]


def median_time(fn, repeats):
    return interleaved_times([fn], repeats)[0]


def handle(raw, config=None):
    """What the handler does to one file's bytes, storage aside: read, measure, Parquet."""
    sources = measure_image(read_fits(raw, name="x"), "x", config)[0]
    table_to_parquet_bytes(sources)
    return sources


def table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep_line = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in rows]
    return "\n".join([line, sep_line, *body])


def make_file(size, n_stars, seed=1):
    """A synthetic image with *n_stars* stars (and a tenth as many galaxies) inside it; its
    truth catalog beside it (:func:`truth_of`)."""
    path = WORK / f"field_{size}_{n_stars}.fits"
    if not path.exists() or not truth_of(path).exists():
        half = size * 0.25 / 3600 / 2 * 0.98
        sky = make_sky_sources(np.random.default_rng(seed), n_stars, n_stars // 10, 150.1,
                               2.2, half)
        image = make_image((size, size), seed=seed, sources=sky)
        image.write(path)
        image.truth.to_csv(truth_of(path), index=False)
    return path


def truth_of(path):
    return path.with_name(path.name.replace(".fits", ".truth.csv"))


def _found(truth, x, y, radius=2.4):
    """Which truth sources have a detection within *radius* px (0.6 FWHM)."""
    from scipy.spatial import cKDTree

    if len(x) == 0:
        return np.zeros(len(truth), bool)
    return cKDTree(np.column_stack([x, y])).query(truth[["x", "y"]].to_numpy())[0] < radius


def _isolated(truth, min_snr, fwhm=4.0):
    """Truth sources with SNR >= *min_snr* and no visible (SNR >= 3) neighbour within
    2 FWHM, away from the edges."""
    from scipy.spatial import cKDTree

    pts = truth[["x", "y"]].to_numpy()
    near = cKDTree(pts[truth["snr"].to_numpy() >= 3]).query(pts, k=2)[0]
    neighbour = np.where(near[:, 0] < 1e-6, near[:, 1], near[:, 0])
    size = max(pts.max(), 1.0)
    inside = ((pts > 5) & (pts < size - 6)).all(axis=1)
    return (truth["snr"].to_numpy() >= min_snr) & inside & (neighbour > 2 * fwhm)


def bench_stages(cases, repeats):
    rows = []
    for size, n in cases:
        path = make_file(size, n)
        raw = path.read_bytes()
        image = read_fits(raw, name=path.name)
        sources = measure_image(image, "x", DetectionConfig())[0]

        def bare(image=image):
            data = image.data.copy()
            bkg = sep.Background(data)
            sep.extract(data - bkg, 1.5, err=bkg.globalrms)

        t_read, t_bare, t_measure, t_write = interleaved_times([
            lambda raw=raw, path=path: read_fits(raw, name=path.name), bare,
            lambda image=image: measure_image(image, "x", DetectionConfig()),
            lambda sources=sources: table_to_parquet_bytes(sources)], repeats)
        total = t_read + t_measure + t_write
        rows.append([f"{size}²", n, sources.num_rows, f"{t_read:.3f}", f"{t_bare:.3f}",
                     f"{t_measure - t_bare:.3f}", f"{t_write:.3f}", f"{total:.3f}",
                     f"{total / t_bare:.2f}"])
    return table(["image", "stars", "detected", "read s", "SEP bkg+extract s",
                  "measure+astrometry s", "write s", "handler s", "handler / bare SEP"], rows)


PEAK_SNIPPET = """
import sys
from skysurvey.detect import DetectionConfig
from skysurvey.pipeline import PipelineConfig, catalog_image
from skysurvey.storage import LocalStore
config = PipelineConfig(detection=DetectionConfig(psf_photometry=sys.argv[4] == "psf"))
reply = catalog_image(LocalStore(sys.argv[1]), sys.argv[2], LocalStore(sys.argv[3]), config)
assert reply["status"] == "ok", reply
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(int(status.split()[0]) / 1024)
"""


def bench_memory(cases):
    """Peak RSS of the handler per (size, stars, psf): *psf* turns PSF photometry on."""
    rows = []
    for size, n, psf in cases:
        path = make_file(size, n)
        with tempfile.TemporaryDirectory() as cat:
            out = subprocess.run([sys.executable, "-c", PEAK_SNIPPET, str(path.parent),
                                  path.name, cat, "psf" if psf else "default"],
                                 capture_output=True, text=True, check=True)
        rows.append([f"{size}²", n, "on" if psf else "off", f"{float(out.stdout.strip()):.0f}"])
    return table(["image", "stars", "PSF photometry", "peak RSS MB (whole handler process)"],
                 rows)


# Two SExtractor runs: the minimum (positions and one flux) and the outputs our catalog has
# (windowed centroids, sky coordinates, Kron and aperture fluxes with errors, half-light
# radius, FWHM, shape, peak, local background, area, flags): the fair comparison is the second.
SEX_PARAMS = {
    "minimal": ["X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO"],
    "equivalent": ["X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "XWIN_IMAGE",
                   "YWIN_IMAGE", "ALPHAWIN_J2000", "DELTAWIN_J2000", "FLUX_APER", "FLUXERR_APER",
                   "FLUX_RADIUS", "FWHM_IMAGE", "A_IMAGE", "B_IMAGE", "THETA_IMAGE", "FLUX_MAX",
                   "BACKGROUND", "ISOAREA_IMAGE", "FLAGS"],
}


def find_sextractor():
    """The `source-extractor` executable; installs Debian's package when missing and root."""
    exe = shutil.which("source-extractor") or shutil.which("sex")
    if exe or not shutil.which("apt-get") or os.geteuid() != 0:
        return exe
    print("installing source-extractor with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "source-extractor"]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        subprocess.run(cmd, capture_output=True, env=env, check=False)
        exe = shutil.which("source-extractor") or shutil.which("sex")
        if exe:
            return exe
    return None


def bench_sextractor(cases, repeats):
    exe = find_sextractor()
    if not exe:
        return ("SExtractor not found and could not be installed: "
                "`apt-get install source-extractor` to run this section.")
    from scipy.spatial import cKDTree

    conf = WORK / "sex"
    conf.mkdir(exist_ok=True)
    (conf / "gauss.conv").write_text("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
    rows = []
    for size, n in cases:
        path = make_file(size, n)
        raw = path.read_bytes()
        sources, row = measure_image(read_fits(raw, name="x"), "x")
        aperture = 2 * row["aperture_radius"]
        runs = {}
        for kind, params in SEX_PARAMS.items():
            (conf / f"{kind}.param").write_text("\n".join(params) + "\n")
            args = [exe, str(path), "-c", "/dev/null", "-CATALOG_NAME", str(conf / "cat.txt"),
                    "-CATALOG_TYPE", "ASCII", "-PARAMETERS_NAME", str(conf / f"{kind}.param"),
                    "-FILTER_NAME", str(conf / "gauss.conv"), "-DETECT_THRESH", "1.5",
                    "-ANALYSIS_THRESH", "1.5", "-DETECT_MINAREA", "5", "-BACK_SIZE", "64",
                    "-PHOT_AUTOPARAMS", "2.5,3.5", "-PHOT_APERTURES", f"{aperture:.2f}",
                    "-GAIN", "2.0",
                    "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE", "-NTHREADS", "1"]
            runs[kind] = lambda args=args: subprocess.run(args, check=True, capture_output=True)
        # the equivalent run goes last in every round: its catalog is the one compared below
        t_min, t_ours, t_eq = interleaved_times(
            [runs["minimal"], lambda raw=raw: handle(raw), runs["equivalent"]], repeats)
        theirs = np.loadtxt(conf / "cat.txt", ndmin=2)  # the equivalent run's catalog
        mine = sources.to_pandas()
        import pandas as pd

        truth = pd.read_csv(truth_of(path))
        ten = truth["snr"].to_numpy() >= 10
        column = SEX_PARAMS["equivalent"].index
        sex_found = _found(truth, theirs[:, column("XWIN_IMAGE")] - 1.0,
                           theirs[:, column("YWIN_IMAGE")] - 1.0)
        our_found = _found(truth, mine["x"].to_numpy(), mine["y"].to_numpy())
        second = mine[(mine["flags"].to_numpy() & SECOND_PASS) > 0]
        by_second = _found(truth, second["x"].to_numpy(), second["y"].to_numpy())
        extra = ten & our_found & ~sex_found
        dist, idx = cKDTree(theirs[:, :2] - 1.0).query(mine[["x", "y"]].to_numpy())  # 1-based
        matched = dist < 1.0
        ours, pairs = mine[matched], theirs[idx[matched]]
        flux = ours["flux"].to_numpy() / pairs[:, column("FLUX_AUTO")]
        aper = ours["flux_aper"].to_numpy() / pairs[:, column("FLUX_APER")]
        radius = ours["fwhm"].to_numpy() / 2 / pairs[:, column("FLUX_RADIUS")]
        blended = (ours["flags"].to_numpy() & sep.OBJ_MERGED) > 0
        rows.append([f"{size}²", n, len(mine), len(theirs), f"{t_ours:.3f}",
                     f"{t_min:.3f}", f"{t_eq:.3f}", f"{t_ours / t_min:.2f}",
                     f"{t_ours / t_eq:.2f}", f"{matched.mean():.3f}",
                     f"{np.median(flux):.3f}", f"{np.median(flux[blended]):.3f}",
                     f"{np.median(aper):.3f}", f"{np.median(radius):.3f}",
                     f"{our_found[ten].mean():.4f} / {sex_found[ten].mean():.4f}",
                     f"{extra.sum()} ({(extra & by_second).sum()})",
                     f"{(ten & sex_found & ~our_found).sum()}"])
    return table(["image", "stars", "our sources", "SExtractor sources",
                  "ours s (read+measure+parquet)", "SExtractor minimal s",
                  "SExtractor equivalent s", "ours / minimal", "ours / equivalent",
                  "matched (<1 px) fraction", "median flux ratio (Kron/AUTO)",
                  "same, deblended sources", "median aperture flux ratio",
                  "median half-light radius ratio",
                  "truth SNR >= 10 found: ours / SExtractor",
                  "SExtractor misses, we find (by the second pass)",
                  "we miss, SExtractor finds"], rows)


def bench_second_pass(cases, repeats):
    """Issue 18's second detection pass (deblend.py) side by side with a single pass: the
    whole handler's time and the completeness against the generator's truth."""
    import pandas as pd

    single = DetectionConfig(second_pass=False)
    rows = []
    for size, n in cases:
        path = make_file(size, n)
        raw = path.read_bytes()
        truth = pd.read_csv(truth_of(path))
        image = read_fits(raw, name="x")
        with_pass = measure_image(image, "x")[0].to_pandas()
        without = measure_image(image, "x", single)[0].to_pandas()
        t_off, t_on = interleaved_times(
            [lambda raw=raw: handle(raw, single), lambda raw=raw: handle(raw)], repeats,
            clock=time.process_time)
        iso, ten = _isolated(truth, 20), truth["snr"].to_numpy() >= 10
        found = {k: _found(truth, c["x"].to_numpy(), c["y"].to_numpy())
                 for k, c in (("on", with_pass), ("off", without))}
        new = int(((with_pass["flags"].to_numpy() & SECOND_PASS) > 0).sum())
        rows.append([f"{size}²", n, len(without), new, f"{t_off:.3f}", f"{t_on:.3f}",
                     f"{t_on / t_off:.2f}",
                     f"{found['off'][iso].mean():.4f} -> {found['on'][iso].mean():.4f}",
                     f"{found['off'][ten].mean():.4f} -> {found['on'][ten].mean():.4f}"])
    return table(["image", "stars", "single-pass sources", "second-pass sources",
                  "handler CPU s, single pass", "handler CPU s, second pass", "time ratio",
                  "SNR >= 20 isolated found", "SNR >= 10 found"], rows)


def _run_folder(folder, keys, workers):
    with tempfile.TemporaryDirectory() as cat:
        replies = run_local(str(folder), keys, cat, workers=workers)
    assert all(r["status"] == "ok" for r in replies), replies


def bench_scaling(n_images, size, repeats):
    """Workers (parallel efficiency), image count (linearity) and image size (per pixel)."""
    folder = WORK / f"scaling_{size}"
    folder.mkdir(exist_ok=True)
    for i in range(n_images):
        path = folder / f"s_{i:03d}.fits"
        if not path.exists():
            make_image((size, size), n_stars=size * size // 2000, n_galaxies=20,
                       seed=100 + i).write(path)
    keys = sorted(p.name for p in folder.glob("*.fits"))[:n_images]
    cpus = len(os.sched_getaffinity(0))
    workers_rows, base = [], None
    for workers in sorted({1, 2, cpus}):
        seconds = median_time(lambda w=workers: _run_folder(folder, keys, w), repeats)
        rate = n_images / seconds
        base = base or rate
        workers_rows.append([workers, n_images, f"{seconds:.2f}", f"{rate:.1f}",
                             f"{rate / (base * workers):.2f}"])
    count_rows, per_image = [], None
    for count in (n_images // 4, n_images // 2, n_images):
        seconds = median_time(lambda c=count: _run_folder(folder, keys[:c], cpus), repeats)
        per_image = per_image or seconds / count
        count_rows.append([count, cpus, f"{seconds:.2f}", f"{seconds / count * 1e3:.1f}",
                           f"{seconds / (per_image * count):.2f}"])
    pixel_rows, per_mpix = [], None
    for side in (512, 1024, 2048, 4096):
        raw = make_file(side, side * side // 2000).read_bytes()
        seconds = median_time(lambda raw=raw: handle(raw), repeats)
        mpix = side * side / 1e6
        per_mpix = per_mpix or seconds / mpix
        pixel_rows.append([f"{side}²", f"{mpix:.2f}", side * side // 2000, f"{seconds:.3f}",
                           f"{seconds / mpix:.3f}", f"{seconds / (per_mpix * mpix):.2f}"])
    return "\n\n".join([
        table(["workers", "images", "seconds", "images/s", "parallel efficiency"], workers_rows),
        table(["images", "workers", "seconds", "ms/image", "time / linear"], count_rows),
        table(["image", "Mpix", "stars (constant density)", "handler s", "s per Mpix",
               "time / linear in pixels"], pixel_rows)])


def bench_cost(seconds_per_image):
    """Lambda gives a function CPU in proportion to memory, one full vCPU at 1769 MB: below
    that, single-threaded work takes longer by 1769 / memory (seconds measured here x that)."""
    rows = []
    for memory_mb in (1024, 1769):
        seconds = seconds_per_image * max(1769 / memory_mb, 1.0)
        gb_s = seconds * memory_mb / 1024
        per_image = gb_s * LAMBDA_GB_SECOND + LAMBDA_REQUEST
        rows.append([f"{memory_mb} MB", f"{seconds_per_image:.3f}", f"{seconds:.3f}",
                     f"{gb_s:.3f}", f"${per_image:.7f}", f"${per_image * 1e6:.2f}",
                     f"${STSCI_REFERENCE:.5f}"])
    return table(["Lambda memory", "handler s/image (2048², here)",
                  "expected s on Lambda (CPU share)", "GB-s/image", "$/image",
                  "$ per million images", "STScI HST reference $/image"], rows)


def make_big_catalog(root, n_images, rows_per_image):
    if (root / "done").exists():
        return
    rng = np.random.default_rng(0)
    for i in range(n_images):
        n = rows_per_image
        cols = {f.name: rng.uniform(0, 100, n) for f in SOURCES_SCHEMA
                if f.type == pa.float64()}
        cols["mag"] = rng.uniform(15, 25, n)
        cols["snr"] = 10 ** rng.uniform(0, 3, n)
        cols.update(image_id=pa.array([f"img{i:04d}"] * n), source_id=np.arange(n, dtype=np.int32),
                    npix=np.full(n, 9, np.int32), flags=np.zeros(n, np.int32),
                    _healpix_29=rng.integers(0, 12 * 4**29, n, dtype=np.int64))
        t = pa.table(cols).select(SOURCES_SCHEMA.names).cast(SOURCES_SCHEMA)
        keys = catalog_keys(f"img{i:04d}", "gri"[i % 3], f"2026-03-{1 + i % 28:02d}")
        record = pa.Table.from_pylist([{"image_id": f"img{i:04d}", "n_sources": n}],
                                      schema=IMAGES_SCHEMA)
        for key, data in ((keys["sources"], t), (keys["images"], record)):
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(data, root / key)
    (root / "done").write_text("ok")


def scanned_bytes(root, columns):
    """Compressed bytes of the column chunks a query reads (what Athena bills)."""
    total = 0
    for path in (root / "sources").rglob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for c in range(rg.num_columns):
                if rg.column(c).path_in_schema in columns:
                    total += rg.column(c).total_compressed_size
    return total


QUERY_COLUMNS = {"total_sources": {"image_id"},
                 "source_statistics": {"mag", "snr", "fwhm"},
                 "bright_sources": {"image_id", "source_id", "ra", "dec", "mag", "mag_err", "snr"},
                 "snr_distribution": {"snr"}}


def bench_queries(n_images, rows_per_image, repeats):
    root = WORK / f"catalog_v2_{n_images}x{rows_per_image}"
    make_big_catalog(root, n_images, rows_per_image)
    rows = []
    for name in QUERY_COLUMNS:  # the queries over `sources` (the objects ones: objects_scale.py)
        q = NAMED_QUERIES[name]
        t = median_time(lambda q=q: run_query(q.sql, str(root), q.bind()), repeats)
        # the `sources` view also reads image_id to keep only images with a record
        scanned = scanned_bytes(root, QUERY_COLUMNS[name] | {"image_id"})
        cost = max(scanned, 10 * 2**20) / 2**40 * 5
        rows.append([name, f"{n_images * rows_per_image:,}", f"{t:.3f}",
                     f"{scanned / 1e6:.1f}", f"${cost:.6f}"])
    return table(["query", "sources", "DuckDB median s", "Athena would scan MB",
                  "Athena $"], rows)


def _lambda_artifacts(folder: Path) -> tuple[Path, Path]:
    """The Lambda zip (scripts/build_lambda_package.py) built for this interpreter's Python,
    unpacked: what the function's init imports (bytecode included, no pandas); and a copy
    without its ``__pycache__`` folders (the zip as built before it carried bytecode)."""
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location(
        "build_lambda_package", HERE.parent / "scripts" / "build_lambda_package.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stage = folder / "stage"
    builder.build(folder / "lambda.zip", version, stage, HERE.parent / "build" / "pip-cache")
    shutil.rmtree(stage, ignore_errors=True)  # (the zip holds it)
    unpacked, sources = folder / "artifact", folder / "artifact-sources"
    for path in (unpacked, sources):
        shutil.rmtree(path, ignore_errors=True)
    zipfile.ZipFile(folder / "lambda.zip").extractall(unpacked)
    shutil.copytree(unpacked, sources, ignore=shutil.ignore_patterns("__pycache__"))
    return unpacked, sources


def bench_cold_start(repeats):
    """``import lambda_function`` in a fresh interpreter (a Lambda cold start's init), and the
    same import followed by the handler's first image (512², local folders), alternated, so
    that an import moved out of the first into the second shows up (issue 25): from the
    unpacked Lambda zip (``python -S``: nothing else on the path; no bytecode written, as in
    Lambda's read-only code folder), the same without its bytecode, and in the project's
    environment. The environment has pandas, which pyarrow imports on its first conversion
    (~0.3 s of the first image); the zip has neither pandas nor that cost."""
    folder = WORK / "cold_start"
    folder.mkdir(exist_ok=True)
    if not (folder / "first.fits").exists():
        make_image((512, 512), seed=25).write(folder / "first.fits")
    artifact, sources = _lambda_artifacts(folder)
    code = ("import json, sys, time; t = time.perf_counter(); sys.path.insert(0, 'scripts'); "
            "import lambda_function; t1 = time.perf_counter() - t; "
            "r = lambda_function.lambda_handler(json.loads(sys.argv[1])) if sys.argv[1:] else {}; "
            "assert r.get('status', 'ok') == 'ok', r; print(t1, time.perf_counter() - t)")

    def unpacked(path):
        return ([sys.executable, "-S", "-s", "-c", code], path,
                {"PATH": os.environ["PATH"], "PYTHONPATH": str(path), "HOME": str(folder),
                 "PYTHONDONTWRITEBYTECODE": "1"})

    runs = {"zip": unpacked(artifact), "sources": unpacked(sources),
            "venv": ([sys.executable, "-c", code], HERE.parent, None)}
    where = {"zip": "the Lambda zip for this Python, unpacked (`python -S`)",
             "sources": "the same without its bytecode (the zip as built before)",
             "venv": "the project's .venv"}
    times = {(w, k): [] for w in runs for k in ("import", "first")}
    load = [os.getloadavg()[0]]
    for _ in range(repeats):
        for name, (cmd, cwd, env) in runs.items():
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd,
                                 env=env).stdout
            times[name, "import"].append(float(out.split()[0]))
            with tempfile.TemporaryDirectory() as cat:
                event = json.dumps({"bucket": str(folder), "key": "first.fits",
                                    "catalog_bucket": cat})
                out = subprocess.run([*cmd, event], capture_output=True, text=True, check=True,
                                     cwd=cwd, env=env).stdout
            times[name, "first"].append(float(out.split()[1]))
    load.append(os.getloadavg()[0])
    med = {key: f"{statistics.median(v):.3f}" for key, v in times.items()}
    return table(["handler module import (cold start), median s",
                  "import + first image (512²), median s", "where", "runs", "load average"],
                 [[med[name, "import"], med[name, "first"], where[name], repeats,
                   f"{load[0]:.1f} -> {load[1]:.1f}"] for name in runs])


def bench_huge_header(n_cards, repeats):
    """read_fits with *n_cards* HIERARCH cards in the primary header and the image in extension
    1 (issue 13: 90 s when the cards were merged one at a time; the target is <= 2 s)."""
    from astropy.io import fits

    cards = [fits.Card.fromstring(f"HIERARCH ESO DET CHIP{i} VALUE = {i}.5 / chip {i}")
             for i in range(n_cards)]
    image = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    path = WORK / "hierarch.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header(cards)), fits.ImageHDU(image)]).writeto(
        path, overwrite=True)
    seconds = median_time(lambda: read_fits(path, name=path.name), repeats)
    return table(["primary header cards", "file MB", f"read_fits, median of {repeats} s",
                  "target s"],
                 [[f"{n_cards:,}", f"{path.stat().st_size / 1e6:.1f}", f"{seconds:.2f}", "2"]])


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import astropy
    import duckdb

    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, {mem:.0f} GiB RAM; "
            f"Python {platform.python_version()}, numpy {np.__version__}, sep {sep.__version__}, "
            f"astropy {astropy.__version__}, pyarrow {pa.__version__}, "
            f"duckdb {duckdb.__version__}; "
            f"skysurvey {__version__}")


# ---- Astrometry (ICRS from any frame) and calibration against a reference catalog (H4)

def _bench_sky(size, n_stars, seed=1):
    """The sky of make_file(size, n_stars, seed), drawn again (same generator, same stars)."""
    half = size * 0.25 / 3600 / 2 * 0.98
    return make_sky_sources(np.random.default_rng(seed), n_stars, n_stars // 10, 150.1, 2.2,
                            half)


def _galactic_header_bytes(path):
    """The same image with its TAN WCS re-expressed in galactic coordinates."""
    import io

    from astropy.io import fits

    from skysurvey.synth import header_in_frame

    with fits.open(path) as hdul:
        header, data = hdul[0].header, hdul[0].data
        buffer = io.BytesIO()
        fits.PrimaryHDU(data, header_in_frame(header, data.shape)).writeto(buffer)
    return buffer.getvalue()


def bench_astrometry(repeats):
    """ICRS conversion, theta_world and _healpix_29 against the plain all_pix2world they
    replace, beside the whole handler, for an ICRS and a galactic header (2048², ~2,400
    sources)."""
    from skysurvey.astrometry import celestial_wcs, healpix_29, sky_positions

    path = make_file(2048, 12000)
    rows = []
    for frame, raw in (("icrs", path.read_bytes()), ("galactic", _galactic_header_bytes(path))):
        image = read_fits(raw, name=frame)
        sources = measure_image(image, "x")[0]
        x, y = sources["x"].to_numpy(), sources["y"].to_numpy()
        theta = sources["theta"].to_numpy()
        wcs, name = celestial_wcs(image.header)

        def ours(wcs=wcs, x=x, y=y, theta=theta):
            ra, dec, _ = sky_positions(wcs, x, y, theta)
            healpix_29(ra, dec)

        t_plain, t_ours, t_handler = interleaved_times(
            [lambda wcs=wcs, x=x, y=y: wcs.all_pix2world(x, y, 0), ours,
             lambda raw=raw: handle(raw)], repeats)
        rows.append([name, sources.num_rows, f"{t_handler:.3f}", f"{t_plain * 1e3:.1f}",
                     f"{t_ours * 1e3:.1f}", f"{(t_ours - t_plain) / t_handler:.1%}"])
    return table(["header frame", "sources", "handler s", "all_pix2world ms (before)",
                  "ICRS + theta_world + _healpix_29 ms (now)", "added / handler"], rows)


def bench_psf(repeats):
    """The PSF step (psf.measure: aperture correction, class_star, seeing) beside the whole
    handler, on the inputs measure_image hands it (2048², ~530 and ~2,400 sources)."""
    from skysurvey import detect, psf

    rows = []
    for n in (2500, 12000):
        raw = make_file(2048, n).read_bytes()
        image = read_fits(raw, name="x")
        captured = {}

        def keep(*args, captured=captured, **kwargs):
            captured["args"] = args
            return psf.measure(*args, **kwargs)

        detect.measure_psf = keep
        try:
            sources = measure_image(image, "x")[0]
        finally:
            detect.measure_psf = psf.measure
        t_psf, t_handler = interleaved_times(
            [lambda args=captured["args"]: psf.measure(*args), lambda raw=raw: handle(raw)],
            repeats)
        rows.append([sources.num_rows, f"{t_handler:.3f}", f"{t_psf * 1e3:.1f}",
                     f"{t_psf / (t_handler - t_psf):.1%}"])
    return table(["sources", "handler s", "psf.measure ms", "added / handler without it"],
                 rows)


PSFEX_PRE_PARAMS = ["VIGNET(35,35)", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE",
                    "FLUX_APER", "FLUXERR_APER", "FLUX_RADIUS", "ELONGATION", "FLAGS",
                    "SNR_WIN", "FLUX_MAX"]
PSFEX_FIT_PARAMS = ["XPSF_IMAGE", "YPSF_IMAGE", "FLUX_PSF", "FLUXERR_PSF", "FLAGS"]


def crowded_psf_file(size=2048, n_stars=6600, n_galaxies=1200, seed=11):
    """The issue-25 crowded field: *n_stars* stars of r 17-23.5 (all detectable: ~6,000 per
    2048²) and *n_galaxies* galaxies of r 18-22.5, Moffat seeing 1.0" (4 px); truth beside."""
    path = WORK / f"crowded_psf_{size}_{n_stars}.fits"
    if not path.exists() or not truth_of(path).exists():
        rng = np.random.default_rng(seed)
        sky = make_sky_sources(rng, n_stars, n_galaxies, 150.1, 2.2, size * 0.25 / 3600 / 2)
        star = sky["kind"].to_numpy() == "star"
        sky["mag_r"] = np.where(star, rng.uniform(17.0, 23.5, len(sky)),
                                rng.uniform(18.0, 22.5, len(sky)))
        image = make_image((size, size), sources=sky, seed=seed + 1, fwhm_arcsec=1.0)
        image.write(path)
        image.truth.to_csv(truth_of(path), index=False)
    return path


def _child_cpu():
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sextractor_psfex(exe, psfex, path, conf):
    """SExtractor (vignets) -> PSFEx -> SExtractor with the PSF: CPU seconds of each step and
    the last catalog (x, y 0-based, flux, flux_err)."""
    (conf / "gauss.conv").write_text("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
    (conf / "pre.param").write_text("\n".join(PSFEX_PRE_PARAMS) + "\n")
    (conf / "fit.param").write_text("\n".join(PSFEX_FIT_PARAMS) + "\n")
    common = ["-c", "/dev/null", "-FILTER_NAME", str(conf / "gauss.conv"), "-DETECT_THRESH",
              "1.5", "-ANALYSIS_THRESH", "1.5", "-DETECT_MINAREA", "5", "-BACK_SIZE", "64",
              "-GAIN", "2.0", "-SATUR_LEVEL", "65535", "-PHOT_APERTURES", "10",
              "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE", "-NTHREADS", "1"]
    steps = {
        "pass 1": [exe, str(path), *common, "-CATALOG_NAME", str(conf / "pre.cat"),
                   "-CATALOG_TYPE", "FITS_LDAC", "-PARAMETERS_NAME", str(conf / "pre.param")],
        "PSFEx": [psfex, str(conf / "pre.cat"), "-c", "/usr/share/psfex/default.psfex",
                  "-CHECKPLOT_TYPE", "NONE", "-CHECKIMAGE_TYPE", "NONE", "-WRITE_XML", "N",
                  "-VERBOSE_TYPE", "QUIET", "-NTHREADS", "1", "-PSF_SIZE", "33,33",
                  "-PSF_DIR", str(conf)],
        "pass 2": [exe, str(path), *common, "-CATALOG_NAME", str(conf / "fit.cat"),
                   "-CATALOG_TYPE", "ASCII", "-PARAMETERS_NAME", str(conf / "fit.param"),
                   "-PSF_NAME", str(conf / "pre.psf")],
    }
    cpu = {}
    for name, args in steps.items():
        start = _child_cpu()
        subprocess.run(args, check=True, capture_output=True)
        cpu[name] = _child_cpu() - start
    cat = np.loadtxt(conf / "fit.cat", ndmin=2)
    return cpu, (cat[:, 0] - 1.0, cat[:, 1] - 1.0, cat[:, 2], cat[:, 3])


def _photutils_runs(sub, rms, x, y, fwhm, beta):
    """photutils PSFPhotometry (our detections as starting positions) and
    IterativePSFPhotometry (its own DAOStarFinder, two iterations), both given the field's
    true Moffat PSF (alpha, beta fixed): CPU seconds and (x, y, flux, flux_err) of each."""
    import warnings

    from astropy.table import QTable
    from photutils.detection import DAOStarFinder
    from photutils.psf import IterativePSFPhotometry, MoffatPSF, PSFPhotometry, SourceGrouper

    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    model = MoffatPSF(alpha=alpha, beta=beta)
    model.alpha.fixed = model.beta.fixed = True
    error = np.broadcast_to(np.float64(rms), sub.shape)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = {
            "photutils PSFPhotometry": lambda: PSFPhotometry(
                model, (11, 11), grouper=SourceGrouper(min_separation=2.5 * fwhm),
                aperture_radius=fwhm)(sub, error=error, init_params=QTable({"x": x, "y": y})),
            "photutils IterativePSFPhotometry": lambda: IterativePSFPhotometry(
                model, (11, 11), finder=DAOStarFinder(threshold=5 * rms, fwhm=fwhm),
                grouper=SourceGrouper(min_separation=2.5 * fwhm), aperture_radius=fwhm,
                maxiters=2)(sub, error=error),
        }
        for name, run in runs.items():
            start = time.process_time()
            res = run()
            seconds = time.process_time() - start
            out[name] = (seconds, (np.asarray(res["x_fit"], float),
                                   np.asarray(res["y_fit"], float),
                                   np.asarray(res["flux_fit"], float),
                                   np.asarray(res["flux_err"], float)))
    return out


def _psf_accuracy(truth, x, y, flux, err):
    """Stars of truth SNR >= 20 (and 5-20) matched within 1 px: fraction matched, median
    flux / true, robust sigma of the pulls."""
    from scipy.spatial import cKDTree

    star = truth["kind"].to_numpy() == "star"
    snr = truth["snr"].to_numpy()
    ok = np.isfinite(x) & np.isfinite(y)
    dist, idx = cKDTree(np.column_stack([x[ok], y[ok]])).query(truth[["x", "y"]].to_numpy())
    found = dist < 1.0
    f, e = flux[ok][idx], err[ok][idx]
    true = truth["flux"].to_numpy()
    figures = []
    for lo, hi in ((20, np.inf), (5, 20)):
        sel = star & (snr >= lo) & (snr < hi)
        got = sel & found & np.isfinite(f)
        pull = (f[got] - true[got]) / e[got]
        pull = pull[np.isfinite(pull)]
        sigma = 1.4826 * np.median(np.abs(pull - np.median(pull))) if pull.size else np.nan
        figures += [f"{got.sum() / max(sel.sum(), 1):.3f}",
                    f"{np.median(f[got] / true[got]):.4f}", f"{sigma:.2f}"]
    return figures


PSF_PHOTOMETRY_NOTES = """ PSF photometry stays opt-in (`invoke_lambda.py
--psf-photometry`, `DetectionConfig(psf_photometry=True)`, event `"psf_photometry": true`; the
default handler's flux_psf columns are null) until ours / (SExtractor + PSFEx) is at most 0.25.

Ours: the CPU time of `psfphot.photometry` (PSF model twice, fits, background from the
residual, splits; the residual search is off by default) on the inputs `measure_image` hands
it; the handler lines are the whole image (detection, Kron, apertures, psf.py, Parquet) with
and without PSF photometry, interleaved with it. SExtractor + PSFEx: the
children's CPU time of pass 1 (35x35 vignets, FITS_LDAC), PSFEx (PIXEL_AUTO basis, degree-2
variation, 33x33) and pass 2 (FLUX_PSF), one thread each. SExtractor's FLUX_PSF / true of
0.88 matches PSFEx's convention rather than a failed fit: the stars are normalised by
PHOTFLUX_KEY = FLUX_APER(1) (a 10 px aperture here, which holds ~0.88 of a 4 px Moffat), so
FLUX_PSF is on that aperture's scale and its pulls measure the 12% scale. photutils is
given the true Moffat (alpha, beta fixed; no model to build) and a background-only error
array (no Poisson term: likely why its bright stars' pulls are ~3.5); MoffatPSF is evaluated
at pixel centres, not integrated over them (flux / true 0.989).
PSFPhotometry starts from our detections, IterativePSFPhotometry from its DAOStarFinder (5
sigma, two iterations), which finds fewer faint stars. "Matched": truth stars with a fitted
position within 1 px."""


def bench_psf_photometry(repeats):
    """Issue 25: PSF photometry on the crowded 2048² field, ours (model + fits, on top of
    the handler) beside SExtractor + PSFEx (both passes and PSFEx) and photutils."""
    import pandas as pd

    from skysurvey import detect

    path = crowded_psf_file()
    truth = pd.read_csv(truth_of(path))
    raw = path.read_bytes()
    image = read_fits(raw, name="x")
    captured = {}

    def keep(*args, **kwargs):
        captured["call"] = (args, kwargs)
        return original(*args, **kwargs)

    original = detect.psf_photometry
    detect.psf_photometry = keep
    config = DetectionConfig(psf_photometry=True)
    try:
        sources = measure_image(image, "x", config)[0].to_pandas()
    finally:
        detect.psf_photometry = original
    args, kwargs = captured["call"]
    t_ours, t_handler, t_plain = interleaved_times(
        [lambda: original(*args, **kwargs), lambda: handle(raw, config), lambda: handle(raw)],
        repeats, clock=time.process_time)
    rows = [["ours: psfphot (model + fits)", len(sources), f"{t_ours:.2f}", "1.00",
             *_psf_accuracy(truth, sources["x_psf"].to_numpy(), sources["y_psf"].to_numpy(),
                            sources["flux_psf"].to_numpy(),
                            sources["flux_psf_err"].to_numpy())],
            ["ours: whole handler (PSF included)", len(sources), f"{t_handler:.2f}",
             f"{t_handler / t_ours:.2f}", "", "", "", "", "", ""],
            ["ours: whole handler (PSF off, the default)", "", f"{t_plain:.2f}",
             f"{t_plain / t_ours:.2f}", "", "", "", "", "", ""]]
    exe, psfex = find_sextractor(), shutil.which("psfex")
    if exe and psfex:
        conf = WORK / "psfex"
        conf.mkdir(exist_ok=True)
        runs = [_sextractor_psfex(exe, psfex, path, conf) for _ in range(repeats)]
        cpu = {k: statistics.median(r[0][k] for r in runs) for k in runs[0][0]}
        total = sum(cpu.values())
        x, y, flux, err = runs[-1][1]
        rows.append(["SExtractor + PSFEx (" + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
                     + ")", len(x), f"{total:.2f}", f"{total / t_ours:.2f}",
                     *_psf_accuracy(truth, x, y, flux, err)])
        budget = (f"ours / (SExtractor + PSFEx) = {t_ours / total:.2f} (target <= 0.25); "
                  f"handler with PSF / (SExtractor + PSFEx) = {t_handler / total:.2f}")
    else:
        budget = "SExtractor or PSFEx not installed (apt-get install source-extractor psfex)"
    try:
        pixels = args[0]
        sub, rms = pixels.sub, float(np.median(pixels.rms))
        results = _photutils_runs(np.asarray(sub, float), rms, sources["x"].to_numpy(),
                                  sources["y"].to_numpy(), 4.0, 3.5)
        for name, (seconds, (x, y, flux, err)) in results.items():
            rows.append([name + " (true PSF given, 1 run)", len(x), f"{seconds:.2f}",
                         f"{seconds / t_ours:.2f}", *_psf_accuracy(truth, x, y, flux, err)])
    except ImportError:
        rows.append(["photutils not installed (pip install photutils)", "", "", "", "", "", "",
                     "", "", ""])
    return table(["method", "sources", "CPU s", "x ours", "stars SNR>=20 matched",
                  "flux/true", "pull sigma", "stars SNR 5-20 matched", "flux/true",
                  "pull sigma"], rows) + f"\n\n{budget}; CPU seconds, medians of {repeats}." \
        + PSF_PHOTOMETRY_NOTES


def _moto_s3(frame, hats_root):
    """A moto S3 server on loopback holding *frame* as s3://bench-ref/ref.parquet and the HATS
    catalog at *hats_root* under s3://bench-ref/hats/."""
    import io
    import logging

    from moto.server import ThreadedMotoServer

    from skysurvey import aws

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address[:2]
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    aws.clear_clients()
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="bench-ref")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    s3.put_object(Bucket="bench-ref", Key="ref.parquet", Body=buffer.getvalue())
    for path in hats_root.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket="bench-ref", Key=f"hats/{path.relative_to(hats_root).as_posix()}",
                          Body=path.read_bytes())
    return server


def paired_times(first, second):
    """Seconds of *first* then *second*, run back to back (a pair shares the machine's load)."""
    out = []
    for fn in (first, second):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return tuple(out)


def bench_calibration(repeats):
    """Handler time with and without calibration (warm container: the reference is opened
    once, as a warm Lambda does), and the first (cold) read of each kind of reference."""
    from skysurvey.calibrate import calibrate
    from skysurvey.reference import ReferenceSpec, clear_cache, write_hats
    from skysurvey.synth import reference_catalog

    path = make_file(2048, 12000)
    raw = path.read_bytes()
    frame = reference_catalog(_bench_sky(2048, 12000), seed=1)
    folder = WORK / "reference"
    folder.mkdir(exist_ok=True)
    frame.to_parquet(folder / "ref.parquet", index=False)
    if not (folder / "ref_hats" / "properties").exists():
        write_hats(frame, folder / "ref_hats", order=6)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    server = _moto_s3(frame, folder / "ref_hats")
    specs = {"local Parquet": ReferenceSpec.parse(str(folder / "ref.parquet")),
             "HATS folder": ReferenceSpec.parse(str(folder / "ref_hats")),
             "S3 Parquet (moto server)": ReferenceSpec.parse("s3://bench-ref/ref.parquet"),
             "S3 HATS prefix (moto server)": ReferenceSpec.parse("s3://bench-ref/hats")}

    def handler(spec=None):
        image = read_fits(raw, name="x")
        sources, row = measure_image(image, "x")
        sources, row = calibrate(sources, row, "r", spec)
        table_to_parquet_bytes(sources)
        return row

    try:
        sources, row = measure_image(read_fits(raw, name="x"), "x")
        rows = []
        for kind, spec in specs.items():
            clear_cache()
            start = time.perf_counter()
            cold = calibrate(sources, row, "r", spec)[1]
            t_cold = time.perf_counter() - start
            assert cold["zero_point_source"] == "reference", cold["warnings"]
            t_cal = median_time(lambda spec=spec: calibrate(sources, row, "r", spec), repeats)
            pairs = [paired_times(handler, lambda spec=spec: handler(spec))
                     for _ in range(2 * repeats)]
            t_without = statistics.median(a for a, _ in pairs)
            t_with = t_without + statistics.median(b - a for a, b in pairs)
            rows.append([kind, len(frame), cold["n_calib"], f"{t_cold * 1e3:.0f}",
                         f"{t_cal * 1e3:.1f}", f"{t_cal / t_without:.1%}", f"{t_without:.3f}",
                         f"{t_with:.3f}", f"{t_with / t_without - 1:+.1%}"])
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return table(["reference", "reference stars", "calibration stars",
                  "first call ms (open + read, cold)", "calibrate ms (warm)",
                  "calibrate / handler", "handler s without",
                  "handler s with (warm, median paired difference added)", "added"], rows)


class _Printing(dict):
    """Sections print as soon as they are measured."""

    def __setitem__(self, key, value):
        print(f"\n## {key}\n{value}", flush=True)
        super().__setitem__(key, value)


def results_path(update_results: bool) -> Path:
    """Where a run writes its tables: the tracked RESULTS.md only when asked to."""
    from skysurvey.config import OUTPUT_DIR

    return HERE / "RESULTS.md" if update_results else OUTPUT_DIR / "benchmark_results.md"


def merge_sections(old_text: str, sections: dict, header: list) -> str:
    """The results file with *sections* replaced in place (or appended) and every other section
    of *old_text* kept as it was (the Lambda burst and objects tables come from other scripts;
    a ``--section`` run measures only some)."""
    parts = [f"## {title}\n\n{body}\n" for title, body in sections.items()]
    if not old_text:
        return "\n".join(header + parts)
    chunks = old_text.split("\n## ")
    kept, done = [], set()
    for chunk in chunks[1:]:
        title = chunk.split("\n", 1)[0]
        if title in sections:
            kept.append(f"## {title}\n\n{sections[title]}\n")
            done.add(title)
        else:
            kept.append("## " + chunk.rstrip("\n") + "\n")
    kept += [part for title, part in zip(sections, parts, strict=True) if title not in done]
    return "\n".join(header + kept)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller cases, fewer repeats")
    parser.add_argument("--update-results", action="store_true",
                        help="write the tracked benchmarks/RESULTS.md (default: "
                             "data/output/benchmark_results.md)")
    parser.add_argument("--section", action="append", default=[], metavar="WORDS",
                        help="run only the sections whose title contains WORDS (repeatable, "
                             "case-insensitive); the file's other sections are kept")
    args = parser.parse_args(argv)
    WORK.mkdir(exist_ok=True)
    quick = args.quick
    repeats = 3 if quick else 5
    # 2048² with 2,500 stars detects ~530 sources, with 12,000 ~2,400; 4096² with 50,000 ~10,000
    stage_cases = ([(1024, 600), (2048, 2500), (2048, 12000)] if quick else
                   [(1024, 600), (2048, 2500), (2048, 6000), (2048, 12000), (4096, 10000),
                    (4096, 50000)])
    stages_title = f"Per image, by stage (median of {repeats})"
    stages = {}

    def stage_table():  # measured once: the cost section reads the 2048² handler time
        if not stages:
            stages["table"] = bench_stages(stage_cases, repeats)
        return stages["table"]

    def lambda_cost():
        row = stage_table().splitlines()[3]
        return bench_cost(float(row.split("|")[8]))

    plan = {
        stages_title: stage_table,
        "Peak memory per image": lambda: bench_memory(
            [(1024, 600, False), (2048, 2500, False), (2048, 12000, False)]
            + ([] if quick else [(4096, 50000, False), (4096, 50000, True)])),
        # a 10-25% difference: three times the repeats (the medians of 5 moved by 5%)
        "Second detection pass (faint neighbours, issue 18)": lambda: bench_second_pass(
            [(2048, 2500), (2048, 6000), (2048, 12000)], 3 * repeats),
        "Side by side with SExtractor": lambda: bench_sextractor([(2048, 2500), (2048, 12000)],
                                                                 repeats),
        "Local scaling": lambda: bench_scaling(12 if quick else 48, 1024, repeats),
        "Cost on Lambda": lambda_cost,
        "Named queries": lambda: bench_queries(100 if quick else 500, 10_000, 3),
        "Cold start": lambda: bench_cold_start(5),
        "Huge primary header": lambda: bench_huge_header(40_000, 3),
        "Astrometry: ICRS from any header frame": lambda: bench_astrometry(repeats),
        "Calibration against a reference catalog": lambda: bench_calibration(repeats),
        "PSF: aperture correction, class_star, seeing": lambda: bench_psf(repeats),
        "PSF photometry: ours, SExtractor + PSFEx, photutils (issue 25)":
            lambda: bench_psf_photometry(3),
    }
    wanted = [w.lower() for w in args.section]
    chosen = [t for t in plan if not wanted or any(w in t.lower() for w in wanted)]
    if not chosen:
        parser.error(f"no section matches {args.section}; sections: {', '.join(plan)}")
    sections = _Printing()
    for title in chosen:
        sections[title] = plan[title]()
    command = " ".join(["python benchmarks/run.py", *(["--quick"] if quick else []),
                        *(f"--section '{w}'" for w in args.section)])
    header = [f"# Benchmark results\n\nMachine: {machine()}\n",
              f"Command: `{command}`; {time.strftime('%Y-%m-%d', time.gmtime())}.\n"]
    target = results_path(args.update_results)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.read_text() if target.exists() else ""
    if args.section and old:  # the header stays the full run's; the sections say what changed
        header = [old.split("\n## ", 1)[0].rstrip("\n") + "\n"]
        sections = {t: f"{body}\n\n(Re-measured on {time.strftime('%Y-%m-%d', time.gmtime())}"
                       f" with `{command}`.)" for t, body in sections.items()}
    target.write_text(merge_sections(old, sections, header))
    print(json.dumps({"written": str(target)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
