"""psfmodel.build and psfmodel.render, an older psfmodel.py against this one, on real inputs.

The inputs are captured by running the pipeline on 2048² fields with the two functions
wrapped: ``detect.measure_image`` with PSF photometry (psfphot's builds and renders) and the
forced step (``forced_run.measure_task`` with the image's PSF stars: forced_psf's build and
render). Every captured call is then replayed through the older module (loaded from
``--base`` under another name) and this checkout's, alternated within each repeat (so drift
on a shared machine hits both alike): CPU seconds (``time.process_time``, this process, BLAS
threads included), medians; and the largest difference of their outputs (build: the basis;
render: the stamps and their derivatives) relative to the model's peak.

    git archive main | tar -x -C /tmp/base
    python benchmarks/psfmodel_ab.py --base /tmp/base/src/skysurvey/psfmodel.py \\
        [--repeats 9] [--fields benchmarks/work/field_2048_12000.fits ...]

With ``OPENBLAS_NUM_THREADS=1`` in the environment both run on one BLAS thread (as under
``measurement.single_thread_blas``); without it OpenBLAS's threads take part (and spin).

Prints a Markdown section for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import skysurvey.psfmodel as pm
from skysurvey.astrometry import celestial_wcs
from skysurvey.detect import DetectionConfig, measure_image
from skysurvey.fitsread import read_fits
from skysurvey.forced import icrs_to_pixel
from skysurvey.forced_run import ForcedTask, measure_task, read_psf_stars
from skysurvey.pipeline import catalog_image
from skysurvey.queries import dataset
from skysurvey.storage import open_store

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from forced_cost import make_field, objects_for  # noqa: E402


def load_module(path: Path, name: str = "psfmodel_base"):
    """The module at *path*, imported as *name* (beside this checkout's psfmodel)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def capture(run) -> list:
    """``(kind, args, kwargs)`` of the build and render calls *run()* makes (not the renders
    inside build)."""
    calls, inner = [], [0]
    build, render = pm.build, pm.render

    def wrapped_build(stars, layout, **kw):
        inner[0] += 1
        try:
            return build(stars, layout, **kw)
        finally:
            inner[0] -= 1
            calls.append(("build", (stars, layout), kw))

    def wrapped_render(grid, x, y, half_out, derivatives=False, centre=None):
        if not inner[0]:
            calls.append(("render", (grid, np.array(x), np.array(y), half_out, derivatives,
                                     centre), {}))
        return render(grid, x, y, half_out, derivatives, centre)

    pm.build, pm.render = wrapped_build, wrapped_render
    try:
        run()
    finally:
        pm.build, pm.render = build, render
    return calls


def field_calls(path: Path) -> dict:
    """The captured calls of PSF photometry and of the forced step on the FITS file *path*."""
    raw = path.read_bytes()
    out = {"psfphot": capture(lambda: measure_image(read_fits(raw, name="x"), "x",
                                                    DetectionConfig(psf_photometry=True)))}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "cat"
        reply = catalog_image(open_store(path.parent), path.name, open_store(catalog))
        if reply["status"] != "ok":
            raise RuntimeError(reply["error"])
        record = dataset(str(catalog), "images").to_table().to_pylist()[0]
        ids, ra, dec, _ = objects_for(catalog, record, 2500)
        image = read_fits(raw, name="x")
        x, y = icrs_to_pixel(celestial_wcs(image.header)[0], ra, dec)
        stars = read_psf_stars(open_store(catalog), record, x, y)
        task = ForcedTask("", path.name, str(catalog), record)
        out["forced"] = capture(lambda: measure_task(task, image, ids, ra, dec, stars))
    return out


def max_difference(old, new, calls) -> float:
    """Largest |new - old| over the calls' outputs, relative to each call's model peak."""
    worst = 0.0
    for kind, args, kw in calls:
        a, b = getattr(old, kind)(*args, **kw), getattr(new, kind)(*args, **kw)
        if kind == "build":
            worst = max(worst, np.abs(b.basis - a.basis).max() / np.abs(a.basis[0]).max())
            continue
        peak = np.abs(a[2]).max() if a[2].size else 1.0
        worst = max([worst] + [np.abs(q - p.astype(float)).max(initial=0) / peak
                               for p, q in zip(a[2:], b[2:], strict=True)])
    return float(worst)


def interleaved(old, new, calls, repeats: int) -> tuple[float, float]:
    """Median CPU seconds of replaying *calls* through *old* and *new*, in turn."""
    times = {"old": [], "new": []}
    for rep in range(repeats):
        for key in ("old", "new") if rep % 2 else ("new", "old"):
            module = old if key == "old" else new
            start = time.process_time()
            for kind, args, kw in calls:
                getattr(module, kind)(*args, **kw)
            times[key].append(time.process_time() - start)
    return statistics.median(times["old"]), statistics.median(times["new"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True,
                        help="the older psfmodel.py (e.g. from `git archive main`)")
    parser.add_argument("--fields", type=Path, nargs="*",
                        help="2048² FITS files (default: forced_cost.py's cached field)")
    parser.add_argument("--repeats", type=int, default=9, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    old = load_module(args.base)
    rows = []
    for path in args.fields or [make_field(2048, 12000)]:
        for step, calls in field_calls(path).items():
            for kind in ("build", "render"):
                sub = [c for c in calls if c[0] == kind]
                if not sub:
                    continue
                t_old, t_new = interleaved(old, pm, sub, args.repeats)
                label = (f"{len(sub)} x {sub[0][1][0].stamps.shape[0]} stars" if kind == "build"
                         else f"{len(sub)} calls, {sum(c[1][1].size for c in sub):,} stamps")
                rows.append((path.stem, step, kind, label, t_old, t_new,
                             max_difference(old, pm, sub)))
    print(f"## psfmodel build and render, {args.base} against this checkout "
          f"(benchmarks/psfmodel_ab.py)\n\nCPU ms (`time.process_time`), medians of "
          f"{args.repeats}, old and new in turn within each repeat; max |new - old| relative "
          f"to the model's peak.\n")
    print("| field | step | function | calls | old ms | new ms | old / new | max diff |")
    print("|---|---|---|---|---|---|---|---|")
    for field, step, kind, label, t_old, t_new, diff in rows:
        print(f"| {field} | {step} | {kind} | {label} | {t_old * 1e3:.1f} | {t_new * 1e3:.1f} "
              f"| {t_old / t_new:.2f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
