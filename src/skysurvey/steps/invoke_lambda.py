"""Step 4: run the handler over every image, locally in a process pool or on AWS Lambda.

    python scripts/invoke_lambda.py                   # local: BUCKET_RAW/images -> BUCKET_CATALOG
    python scripts/invoke_lambda.py --input ~/fits --catalog ~/catalog
    python scripts/invoke_lambda.py --backend lambda     # AWS: one invocation per image

Exit status: 0 when every image succeeded, 1 when any failed (the others are still written),
2 on bad usage or when the images cannot be listed at all.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm import tqdm

from skysurvey import cli
from skysurvey.catalog import (
    check_writable,
    record_reference,
    recorded_reference,
    repair_catalog,
)
from skysurvey.config import get_setting, is_s3_uri
from skysurvey.detect import DetectionConfig
from skysurvey.errors import SkySurveyError, printable
from skysurvey.fitsread import default_memory_budget
from skysurvey.pipeline import PipelineConfig
from skysurvey.reference import (
    ReferenceSpec,
    check_reference,
    picked_columns,
    reference_spec,
)
from skysurvey.runner import (
    Timer,
    catalogued_image_ids,
    default_workers,
    exit_status,
    find_inputs,
    run_local,
    split_collisions,
    summary_table,
)
from skysurvey.schema import band_of_key, image_id_from_name
from skysurvey.storage import open_store

__all__ = ["build_parser", "main", "repair", "resolve_input", "run"]

log = logging.getLogger("invoke_lambda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run source detection over every FITS image and write the Parquet catalog.",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/invoke_lambda.py --input data/sample --catalog /tmp/cat",
    )
    parser.add_argument("--backend", choices=("local", "lambda"), default="local",
                        help="local process pool or AWS Lambda")
    parser.add_argument("--input", nargs="+", default=None,
                        help="folder or s3:// prefix holding FITS files (searched recursively), "
                             "or FITS files, or globs such as 'data/*/*.fits'; image ids are "
                             "the paths below the folder (default: BUCKET_RAW's images/)")
    parser.add_argument("--catalog", default=None,
                        help="folder or s3:// URI for the catalog (default: BUCKET_CATALOG)")
    parser.add_argument("--workers", type=cli.positive_int, default=None,
                        help="parallel images (default: cores for local, 4 for lambda)")
    parser.add_argument("--function", default=None,
                        help="Lambda function name (default: LAMBDA_FUNCTION)")
    parser.add_argument("--async", dest="asynchronous", action="store_true",
                        help="lambda backend: fire-and-forget invocations (InvocationType Event)")
    parser.add_argument("--only-new", action="store_true",
                        help="skip images that already have a catalog")
    parser.add_argument("--max-memory-mb", type=cli.positive_int, default=None,
                        help="refuse images that would need more memory than this "
                             "(default: half the machine's RAM shared by the workers)")
    parser.add_argument("--limit", type=cli.positive_int, default=None,
                        help="process at most N images (N >= 1)")
    parser.add_argument("--reference", default=None,
                        help="calibrate against this reference catalog: Parquet, CSV, FITS or "
                             "VOTable file, or HATS catalog folder, local or s3://; 'none': "
                             "header zero points (default: REFERENCE_CATALOG, else the "
                             "reference the catalog was calibrated against before, else none)")
    parser.add_argument("--reference-bands", default=None, metavar="BAND=COLUMN,...",
                        help="reference magnitude column per band, e.g. g=gmag,r=rmag "
                             "(default: REFERENCE_BANDS, else columns named <band>mag or "
                             "<band>_mag)")
    parser.add_argument("--psf-photometry", action="store_true",
                        help="also fit every source with the image's own PSF model (flux_psf, "
                             "mag_psf, psf_chi2, x_psf, y_psf; close pairs split): ~2x the "
                             "handler's time on crowded fields, so off by default")
    parser.add_argument("--repair", action="store_true",
                        help="only repair the catalog: remove sources files without an image "
                             "record (killed runs) and older copies of re-processed images, "
                             "print what was removed, name empty or truncated Parquet files "
                             "(exit 1; they are left for you), and exit")
    parser.add_argument("--redrive", action="store_true",
                        help="lambda: invoke again the failed asynchronous (S3-triggered) events "
                             "waiting in the failed-events queue (FAILED_EVENTS_QUEUE), delete "
                             "those that now succeed, report, and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cli.add_version(parser)
    return parser


def resolve_input(flag: list[str] | str | None) -> list[str]:
    """``--input`` as given, else ``BUCKET_RAW`` + ``/images``."""
    if flag:
        return [flag] if isinstance(flag, str) else list(flag)
    return [get_setting("BUCKET_RAW").rstrip("/") + "/images"]


def repair(catalog_uri: str) -> int:
    """``--repair``: remove orphans and duplicates, print each removed file."""
    try:
        report = repair_catalog(open_store(catalog_uri))
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in report.removed:
        print(f"removed {printable(line)}")
    for line in report.unreadable:  # left in place: re-process the image or delete the file
        print(f"unreadable {printable(line)}", file=sys.stderr)
    print(f"Repair of {printable(catalog_uri)}: {len(report.removed)} files removed, "
          f"{report.entries_written} image entries written"
          + (f", {len(report.unreadable)} unreadable files left (re-process their images or "
             "delete them)" if report.unreadable else ""))
    return 1 if report.unreadable else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    catalog_uri = get_setting("BUCKET_CATALOG", args.catalog)
    if args.repair:
        return repair(catalog_uri)
    if args.redrive:
        from skysurvey.lambda_backend import redrive_report

        text, status = redrive_report(get_setting("FAILED_EVENTS_QUEUE"),
                                      get_setting("LAMBDA_FUNCTION", args.function),
                                      workers=args.workers or 4)
        print(text, file=sys.stderr if status == 2 else sys.stdout)
        return status
    try:
        reference = reference_spec(args.reference, args.reference_bands)
    except SkySurveyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        recorded = recorded_reference(open_store(catalog_uri))
    except SkySurveyError:
        recorded = None  # an unreadable catalog fails below, by name
    if reference is None and recorded:  # later commands keep the catalog's calibration
        reference = ReferenceSpec.parse(*recorded)
        log.info("calibrating against %s, the reference this catalog was calibrated against "
                 "(--reference none: header zero points)", printable(reference.uri))
    elif reference is not None and reference.is_none and recorded:
        log.warning("--reference none: images catalogued again lose their calibration against "
                    "%s (header zero points instead)", printable(recorded[0]))
    if (reference and not reference.is_none and args.backend == "lambda"
            and not is_s3_uri(reference.uri)):
        print(f"error: --backend lambda reads the reference from S3, not {reference.uri}",
              file=sys.stderr)
        return 2
    opened = None
    if reference and not reference.is_none:
        try:  # before any image: a reference that cannot be used fails the run, in one line
            opened = check_reference(reference)
        except SkySurveyError as exc:
            print(f"error: reference {exc}", file=sys.stderr)
            return 2
        log.info("calibrating against %s", reference.uri)
    try:
        inputs = find_inputs(resolve_input(args.input))
    except SkySurveyError as exc:
        print(f"error: cannot list images: {exc}", file=sys.stderr)
        return 2
    raw_uri = inputs.root
    keys, refused = split_collisions(raw_uri, inputs.keys)
    refused += inputs.failures()  # unreadable inputs: named in the summary, exit status 1
    already = 0
    if args.only_new:
        done_ids = catalogued_image_ids(catalog_uri)
        todo = [k for k in keys if image_id_from_name(k) not in done_ids]
        already, keys = len(keys) - len(todo), todo
    keys = keys[: args.limit] if args.limit else keys
    if not keys and not refused:
        if already:
            print(f"Nothing to do: all {already} images already catalogued in "
                  f"{printable(catalog_uri)}")
        else:
            print(f"No FITS images to process under {printable(raw_uri)}")
        return 0
    if args.backend == "local" and keys:
        try:  # a read-only catalog fails here, once, before any image is measured
            check_writable(open_store(catalog_uri))
        except SkySurveyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    log.info("%d images from %s -> %s (%s backend)", len(keys), printable(raw_uri),
             printable(catalog_uri), args.backend)

    bar = tqdm(total=len(keys), unit="img", disable=args.no_progress, file=sys.stderr)

    def on_done(reply: dict) -> None:
        bar.update(1)
        if reply["status"] != "ok":
            bar.write(f"FAILED {reply['error']}", file=sys.stderr)

    with Timer() as timer:
        try:
            if args.backend == "local":
                config = PipelineConfig(
                    max_memory_bytes=(args.max_memory_mb * 2**20 if args.max_memory_mb else
                                      default_memory_budget(args.workers or default_workers())),
                    reference=reference,
                    detection=DetectionConfig(psf_photometry=args.psf_photometry))
                replies = run_local(raw_uri, keys, catalog_uri,
                                    workers=args.workers or default_workers(),
                                    config=config, on_done=on_done)
            else:
                from skysurvey.lambda_backend import run_lambda

                if not is_s3_uri(raw_uri):
                    print("error: --backend lambda needs an s3:// input", file=sys.stderr)
                    return 2
                replies = run_lambda(raw_uri, keys, catalog_uri,
                                     function=get_setting("LAMBDA_FUNCTION", args.function),
                                     workers=args.workers or 4,
                                     asynchronous=args.asynchronous, on_done=on_done,
                                     reference=reference, psf_photometry=args.psf_photometry)
        except SkySurveyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            bar.close()
    if opened is not None:
        bands = [band_of_key(r["catalog_key"]) for r in replies if r.get("catalog_key")]
        if bands and (reference.uri, reference.bands_text) != recorded:
            record_reference(open_store(catalog_uri), reference.uri, reference.bands_text)
        for band, column in picked_columns(opened, reference, bands).items():
            log.info("reference %s: band %s uses column %s (picked by name; map it with "
                     "--reference-bands %s=COLUMN)", printable(reference.uri), band, column,
                     band)
    replies = refused + replies
    print(summary_table(replies, timer.seconds, args.backend, already_done=already,
                        not_fits=len(inputs.not_fits), notes=inputs.notes()))
    return exit_status(replies)


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
