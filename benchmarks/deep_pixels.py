"""Deep field with pixels: 1,000 real 2048 x 2048 images of one field, end to end.

``benchmarks/deep_field.py`` writes its 1,000-epoch catalog directly (no pixels), so forced
photometry there is measured on a few images and extrapolated. Here every step runs on real
FITS files: ``--distinct`` synthetic epochs of one field (``synth_survey.write_survey``:
dithers of +-30", seeing 0.8-1.5", ~2,000 detections each) are each linked
``--epochs / --distinct`` times under their own folder (``e00/n00_r.fits``, ...), so there are
``--epochs`` images with their own ``image_id`` (the pixels repeat, which changes no cost: every
image is read, detected and measured as if new). Untimed: the handler over all images
(``runner.run_local``). Then timed, each in a fresh process with ``--workers`` processes, CPU
of the process and its children and peak RSS:

1. ``build_objects`` (association and object statistics);
   (the object tables are removed first, so each run is a full build);
2. ``run_forced`` (forced photometry of every object on every covering image, then the
   ``object_variability`` summary), with the summary's own time from its report line.

Then (untimed) the counts the steps reported are checked against what SQL shows, once.

    python benchmarks/deep_pixels.py --out /tmp/deep-pixels [--epochs 1000] [--distinct 50]

Prints one JSON line per step and writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEP = """
import json, resource, sys, time
t0, c0 = time.perf_counter(), time.process_time()
catalog, raw, workers, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
out = {"step": step}
if step == "build":
    from skysurvey.objects import BuildConfig, build_objects
    r = build_objects(catalog, BuildConfig(workers=workers))
    out.update(status=r.status, objects=r.n_objects, associations=r.n_associations)
else:
    from skysurvey.forced_run import run_forced
    r = run_forced(catalog, raw, workers=workers, rebuild=True)
    ok = sum(x.get("status") == "ok" for x in r.replies)
    rows = sum(x.get("n_objects") or 0 for x in r.replies)
    out.update(images_ok=ok, images_failed=len(r.failed), forced_rows=rows,
               summary=r.variability.line() if r.variability else None,
               summary_seconds=r.variability.seconds if r.variability else None)
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
out.update(seconds=round(time.perf_counter() - t0, 2),
           cpu_seconds=round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 2),
           rss_driver_mb=round(me.ru_maxrss / 1024), rss_worker_mb=round(kids.ru_maxrss / 1024))
print(json.dumps(out))
"""


def make_images(raw: Path, epochs: int, distinct: int) -> list[str]:
    """``epochs`` image keys below *raw*: *distinct* synthetic epochs, each hard-linked
    ``epochs // distinct`` times into folders ``eNN/`` (made once, then reused)."""
    from skysurvey.synth_survey import write_survey

    base = raw.parent / f"{raw.name}-distinct"
    if not base.is_dir():
        write_survey(base, nights=distinct, bands=("r",), size=2048, n_stars=1100,
                     n_galaxies=20, n_bright=10, n_transients=0, dither_arcsec=30.0)
    sources = sorted(base.glob("*.fits"))[:distinct]
    keys = []
    for copy in range(epochs // distinct):
        folder = raw / f"e{copy:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for src in sources:
            dest = folder / src.name
            if not dest.exists():
                os.link(src, dest)
            keys.append(f"e{copy:02d}/{src.name}")
    return keys


def run_step(catalog: Path, raw: Path, workers: int, step: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, str(catalog), str(raw), str(workers),
                          step], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{step} failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_visible(catalog: Path, results: dict) -> None:
    """(Untimed) what the steps reported is what SQL shows, once: objects (rows and distinct
    ids), associations, forced rows (distinct (object, image) pairs)."""
    from skysurvey.queries import run_query

    row = run_query("SELECT (SELECT count(*) FROM objects) AS n, (SELECT count(DISTINCT "
                    "object_id) FROM objects) AS ids, (SELECT count(*) FROM associations) AS a, "
                    "(SELECT count(*) FROM forced_photometry) AS f, (SELECT count(*) FROM "
                    "(SELECT DISTINCT object_id, image_id FROM forced_photometry)) AS fd",
                    str(catalog)).iloc[0]
    seen = {k: int(row[k]) for k in ("n", "ids", "a", "f", "fd")}
    want = {}
    if "build" in results:
        b = results["build"]
        want.update(n=b["objects"], ids=b["objects"], a=b["associations"])
    if "forced" in results:
        want.update(f=results["forced"]["forced_rows"], fd=results["forced"]["forced_rows"])
    if any(seen[k] != v for k, v in want.items()):
        raise SystemExit(f"the steps reported {want}, SQL shows {seen}")
    print(json.dumps({"sql_sees": seen}), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/deep-pixels")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", default="handler,build,forced",
                        help="which of handler,build,forced to run (handler: untimed setup)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    raw, catalog = out / "raw", out / "catalog"
    keys = make_images(raw, args.epochs, args.distinct)
    results = {"epochs": len(keys), "distinct": args.distinct, "workers": args.workers}
    steps = args.steps.split(",")
    if "handler" in steps:
        from skysurvey.runner import run_local

        t = time.perf_counter()
        replies = run_local(str(raw), keys, str(catalog), workers=args.workers)
        failed = [r for r in replies if r.get("status") != "ok"]
        if failed:
            raise SystemExit(f"handler failed on {len(failed)} images: {failed[:3]}")
        results["handler"] = {"seconds": round(time.perf_counter() - t, 1),
                              "detections": sum(r["n_sources"] for r in replies)}
        print(json.dumps(results["handler"]), flush=True)
    if "build" in steps:  # a full build, not an incremental no-op over the same images
        for table in ("objects", "object_photometry", "associations", ".objects-staging",
                      "object_variability", "forced_photometry"):
            shutil.rmtree(catalog / table, ignore_errors=True)
    for step in [s for s in ("build", "forced") if s in steps]:
        results[step] = run_step(catalog, raw, args.workers, step)
        print(json.dumps(results[step]), flush=True)
    check_visible(catalog, results)
    results["load"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
