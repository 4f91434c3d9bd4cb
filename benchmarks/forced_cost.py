"""Forced photometry's cost beside the handler's, per image (issue 24: <= 25% at 2,500 objects).

One synthetic 2048² image (0.25"/px, ~1" seeing) is catalogued once with the handler's core
(``pipeline.catalog_image``: its ``images`` record and ``sources``). Its objects are the
detections' positions plus random blank positions, 2,500 in all (the issue's density). Then, in
turn within every repeat (so drift on a shared machine hits all alike), CPU seconds
(``time.process_time``, this process only) of:

- the handler: read the FITS, ``detect.measure_image``, the sources as Parquet bytes;
- the forced step with PSF fluxes (``forced_run.measure_task`` with the image's PSF stars read
  from its sources file, plus reading the FITS, making its WCS and the objects' pixel
  positions once and writing Parquet bytes: what ``forced_run.forced_image`` does apart from
  listing the objects, the background subtracted in the freshly read pixels as it does);
- the same forced step with the aperture (no PSF stars: the fallback).

    python benchmarks/forced_cost.py [--repeats 5] [--stars 12000] [--objects 2500]

Prints a Markdown section for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from skysurvey.astrometry import celestial_wcs
from skysurvey.detect import measure_image
from skysurvey.fitsread import read_fits
from skysurvey.forced import icrs_to_pixel
from skysurvey.forced_run import ForcedTask, measure_task, read_psf_stars
from skysurvey.pipeline import catalog_image, table_to_parquet_bytes
from skysurvey.queries import dataset
from skysurvey.storage import open_store
from skysurvey.synth import make_image, make_sky_sources

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"


def make_field(size: int, n_stars: int, seed: int = 1) -> Path:
    """The benchmark image (cached in benchmarks/work/, git-ignored): *n_stars* stars and a
    tenth as many galaxies, as benchmarks/run.py draws them."""
    path = WORK / f"forced_field_{size}_{n_stars}.fits"
    if not path.exists():
        WORK.mkdir(exist_ok=True)
        half = size * 0.25 / 3600 / 2 * 0.98
        sky = make_sky_sources(np.random.default_rng(seed), n_stars, n_stars // 10, 150.1, 2.2,
                               half)
        make_image((size, size), seed=seed, sources=sky).write(path)
    return path


def objects_for(catalog: Path, record: dict, n_objects: int, seed: int = 2):
    """``(ids, ra, dec)``: the image's detections plus random positions, *n_objects* in all."""
    sources = dataset(str(catalog), "sources").to_table(columns=["ra", "dec"]).to_pandas()
    ra, dec = sources["ra"].to_numpy(), sources["dec"].to_numpy()
    extra = max(n_objects - ra.size, 0)
    rng = np.random.default_rng(seed)
    ra = np.r_[ra, rng.uniform(ra.min(), ra.max(), extra)][:n_objects]
    dec = np.r_[dec, rng.uniform(dec.min(), dec.max(), extra)][:n_objects]
    return np.arange(ra.size, dtype=np.int64), ra, dec, int(sources.shape[0])


def stages(raw_bytes, record, store, ra, dec) -> dict:
    """The forced step's parts, each alone (inputs prepared once), with one BLAS thread as
    ``measure_task`` runs them: reading the FITS and the WCS; the background with the
    objects masked (into a new array: the image is reused); the PSF stars and model; the
    joint fit."""
    from skysurvey.forced import ImagePhotometry, background_subtracted
    from skysurvey.forced_psf import PsfFitSettings, psf_fit, psf_model
    from skysurvey.measurement import Pixels, single_thread_blas

    image = read_fits(raw_bytes, name="x")
    wcs, _ = celestial_wcs(image.header)
    x, y = icrs_to_pixel(wcs, ra, dec)
    phot = ImagePhotometry.from_row(record)
    sub, rms, mask, _, level = background_subtracted(image, x, y, phot.aperture_radius)
    pixels = Pixels(sub, rms, mask=mask, gain=phot.gain)
    stars = read_psf_stars(store, record, x, y)
    grid = psf_model(pixels, stars)
    settings = PsfFitSettings(grid, stars.fwhm, phot.aperture_radius, level,
                              stars.x[stars.stars], stars.y[stars.stars])

    def read():
        img = read_fits(raw_bytes, name="x")
        icrs_to_pixel(celestial_wcs(img.header)[0], ra, dec)

    def model():
        with single_thread_blas():
            psf_model(pixels, read_psf_stars(store, record, x, y))

    def fit():
        with single_thread_blas():
            psf_fit(pixels, x, y, settings)

    return {
        "read FITS, positions through the WCS": read,
        "background (objects masked)": lambda: background_subtracted(image, x, y,
                                                                     phot.aperture_radius),
        "PSF stars and model": model,
        "joint PSF fit of all objects": fit,
    }


def interleaved(fns, repeats):
    """Median CPU seconds of each function, run in turn within every repeat."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.process_time()
            fn()
            out.append(time.process_time() - start)
    return [statistics.median(t) for t in times], times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--stars", type=int, default=12000,
                        help="stars drawn (about a fifth are detected) (default: %(default)s)")
    parser.add_argument("--objects", type=int, default=2500, help="(default: %(default)s)")
    parser.add_argument("--size", type=int, default=2048, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    path = make_field(args.size, args.stars)
    raw_bytes = path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "cat"
        reply = catalog_image(open_store(path.parent), path.name, open_store(catalog))
        if reply["status"] != "ok":
            print(reply["error"], file=sys.stderr)
            return 1
        record = dataset(str(catalog), "images").to_table().to_pylist()[0]
        ids, ra, dec, n_sources = objects_for(catalog, record, args.objects)
        task = ForcedTask("", path.name, str(catalog), record)
        store = open_store(catalog)

        def handler():
            table = measure_image(read_fits(raw_bytes, name="x"), "x")[0]
            table_to_parquet_bytes(table)

        def forced(psf=True):  # as forced_image: the WCS and the positions made once
            image = read_fits(raw_bytes, name="x")
            wcs, _ = celestial_wcs(image.header)
            xy = icrs_to_pixel(wcs, ra, dec)
            stars = read_psf_stars(store, record, *xy) if psf else None
            table = measure_task(task, image, ids, ra, dec, stars, wcs=wcs, xy=xy,
                                 overwrite=True)  # (a fresh read: subtracted in place)
            table_to_parquet_bytes(table)
            return table

        rows = forced().to_pandas()
        aperture = (rows["flags"].to_numpy() & 1048576) > 0
        parts = stages(raw_bytes, record, store, ra, dec)
        (t_handler, t_psf, t_aper, *t_parts), _ = interleaved(
            [handler, forced, lambda: forced(False), *parts.values()], args.repeats)
    print(f"## Forced photometry beside the handler (benchmarks/forced_cost.py)\n\n"
          f"`python benchmarks/forced_cost.py --repeats {args.repeats}`: one {args.size}² image "
          f"({args.stars:,} stars drawn, {n_sources:,} detected), {len(ids):,} objects "
          f"({len(rows):,} covered, {aperture.mean():.0%} measured with the aperture "
          f"fallback); CPU seconds (`time.process_time`), medians of {args.repeats}, run in "
          f"turn within each repeat.\n")
    print("| step | CPU s | / handler |")
    print("|---|---|---|")
    print(f"| handler (read, detect and measure, Parquet) | {t_handler:.3f} | 100% |")
    print(f"| forced, PSF fit (read, background, PSF model, joint fit, Parquet) | {t_psf:.3f} "
          f"| {t_psf / t_handler:.0%} |")
    print(f"| forced, aperture (fallback) | {t_aper:.3f} | {t_aper / t_handler:.0%} |")
    for name, t in zip(parts, t_parts, strict=True):
        print(f"| - of which {name} | {t:.3f} | {t / t_handler:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
