"""Step 6: figures of the catalog as PNG files, and the run report (one offline HTML page).

    python scripts/plot_catalog.py --truth data/sample/truth

Writes into data/output/plots/: detections drawn as ellipses on one image (RA/Dec axes with
N/E arrows when it has a WCS), the magnitude distribution per band, a sky map (one colour per
band, equal angular scales), the SNR distribution and, with ``--truth``, measured against true
magnitudes (one-to-one matches, residual panel), seeing, depth and zero point per image, with
``--reference`` the calibrated magnitudes against the reference stars, and, once
scripts/build_objects.py has run,
the objects: their sky map, the variability diagram and the light curves of the most variable.
A figure with nothing to show is skipped with one line saying why. Then data/output/report.html
(with ``--output-dir DIR``: DIR/report.html): the run summary, a quality table per image, every
figure (embedded) and the named query results.
Exit status 0, or 1 with one line when the catalog or image cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from skysurvey import cli
from skysurvey.config import OUTPUT_DIR, get_setting
from skysurvey.errors import SkySurveyError
from skysurvey.fitsread import read_fits
from skysurvey.plots import (
    match_to_reference,
    match_to_truth,
    plot_calibration_residuals,
    plot_image_quality,
    plot_light_curves,
    plot_object_map,
    plot_variability,
    read_catalog,
    save_all,
)
from skysurvey.queries import most_variable_light_curves, run_named, run_query
from skysurvey.reference import reference_spec
from skysurvey.report import quality_table, write_report
from skysurvey.runner import list_images
from skysurvey.schema import image_id_from_name
from skysurvey.storage import open_store

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Plot the source catalog (PNG files) and write the run report (HTML).",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/plot_catalog.py --truth data/sample/truth",
    )
    cli.add_version(parser)
    parser.add_argument("--catalog", default=None, help="catalog (default: BUCKET_CATALOG)")
    parser.add_argument("--input", default=None,
                        help="FITS folder or s3:// prefix (default: BUCKET_RAW/images)")
    parser.add_argument("--image-id", default=None,
                        help="image for the detection overlay (default: the first)")
    parser.add_argument("--truth", default=None,
                        help="folder of truth CSVs <image_id>.csv (synthetic images)")
    parser.add_argument("--reference", default=None,
                        help="reference catalog to plot the calibration residuals against "
                             "(default: REFERENCE_CATALOG, none when unset)")
    parser.add_argument("--reference-bands", default=None, metavar="BAND=COLUMN,...",
                        help="reference magnitude column per band (default: REFERENCE_BANDS, "
                             "else <band>mag)")
    parser.add_argument("--output-dir", default=str(OUTPUT_DIR / "plots"), help="PNG folder")
    parser.add_argument("--report", default=None,
                        help="the run report; 'none' to skip it (default: "
                             "data/output/report.html; with --output-dir DIR, DIR/report.html, "
                             "inside the folder you named)")
    return parser


def _overlay(images_uri: str, image_ids: set[str], wanted: str | None):
    """``(image_id, data, header)`` of the overlay image, or None when none is catalogued."""
    store = open_store(images_uri)
    for key in list_images(images_uri):
        image_id = image_id_from_name(key)
        if image_id in image_ids and (wanted is None or image_id == wanted):
            image = read_fits(store.read_bytes(key), name=store.url(key))
            return image_id, image.data, image.header
    return None


def _truth_matches(sources: pd.DataFrame, truth_dir: Path) -> pd.DataFrame | None:
    matches = []
    for image_id, found in sources.groupby("image_id"):
        path = truth_dir / f"{image_id}.csv"
        if path.is_file():
            matches.append(match_to_truth(found, pd.read_csv(path)))
    return pd.concat(matches, ignore_index=True) if matches else None


def _object_figures(catalog: str) -> dict:
    """Figure makers for the survey objects (empty tables make them skip with a reason)."""
    def table(sql):
        try:
            return run_query(sql, catalog)
        except SkySurveyError:  # no objects table in this catalog
            return pd.DataFrame()

    def curves():  # the most variable objects; without any, one with an upper limit
        try:
            found = most_variable_light_curves(catalog)
            return found if len(found) else run_named("light_curve", catalog)
        except SkySurveyError:
            return pd.DataFrame()

    return {"objects_sky_map": lambda: plot_object_map(table("SELECT * FROM objects")),
            "variability": lambda: plot_variability(table(
                "SELECT p.*, o.variable FROM object_photometry p "
                "JOIN objects o ON o.object_id = p.object_id")),
            "light_curves": lambda: plot_light_curves(curves())}


def _default_report(output: str) -> Path:
    """data/output/report.html for the default PNG folder (what the demo prints); with another
    --output, report.html inside that folder: nothing is written where the user did not ask."""
    if Path(output).resolve() == (OUTPUT_DIR / "plots").resolve():
        return OUTPUT_DIR / "report.html"
    return Path(output) / "report.html"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    catalog = get_setting("BUCKET_CATALOG", args.catalog)
    images = args.input or get_setting("BUCKET_RAW").rstrip("/") + "/images"
    try:
        sources = read_catalog(catalog)
        image = _overlay(images, set(sources["image_id"]), args.image_id)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    truth = _truth_matches(sources, Path(args.truth)) if args.truth else None
    try:
        images_table = read_catalog(catalog, "images")
        reference = reference_spec(args.reference, args.reference_bands)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    extra = {"image_quality": lambda: plot_image_quality(quality_table(images_table))}
    if reference is not None:
        # the flag overrides the setting for this run, also for the report's queries (the
        # crossmatch_reference query reads the reference table from REFERENCE_CATALOG)
        os.environ["REFERENCE_CATALOG"] = reference.uri
        extra["calibration_residuals"] = lambda: plot_calibration_residuals(
            match_to_reference(sources, images_table, reference))
    paths, skipped = save_all(sources, args.output_dir, image=image, truth=truth,
                              extra={**extra, **_object_figures(catalog)})
    for path in paths:
        print(path)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    report_path = args.report or str(_default_report(args.output_dir))
    if report_path.lower() != "none":
        try:
            report = write_report(report_path, catalog, png_paths=paths, skipped=skipped,
                                  sources=sources)
        except (SkySurveyError, OSError) as exc:
            print(f"error: report: {exc}", file=sys.stderr)
            return 1
        print(f"report: {report}")
    return 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
