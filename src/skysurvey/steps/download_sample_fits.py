"""Step 1: make the sample images. Nothing is downloaded: the images are synthetic, drawn with
a known truth (realistic WCS, Moffat PSF, stars and Sersic galaxies, sky gradient, noise).

    python scripts/download_sample_fits.py --output-dir data/sample
    python scripts/download_sample_fits.py --count 3 --size 1024 --bands r

Writes ``sky_<band>_<NNN>.fits``, ``truth/<image_id>.csv``, ``metadata.json`` (with each image's
true zero point: the nights lose 0-0.35 mag to transparency that MAGZERO does not know, and
every fourth image has no MAGZERO) and ``reference.parquet``, the field's reference catalog
(stars to r = 21.5; ``invoke_lambda.py --reference``). The same ``--seed`` gives byte-identical
files. Exit status 0, or 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import pandas as pd

from skysurvey import cli
from skysurvey.config import SAMPLE_DIR
from skysurvey.synth import write_sample

__all__ = ["build_parser", "main", "run"]


def _size(text: str) -> int:
    value = cli.positive_int(text)
    if value < 64:
        raise argparse.ArgumentTypeError("must be at least 64 pixels")
    return value


def _progress(start: float):
    """One stderr line per image written (a 2048² image takes a few seconds)."""
    def report(done: int, count: int, path) -> None:
        print(f"  [{done}/{count}] {path.name} ({time.perf_counter() - start:.1f} s)",
              file=sys.stderr, flush=True)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate synthetic FITS sky images with truth catalogs "
        "(the name says download for historical reasons: nothing is downloaded).",
        formatter_class=cli.HelpFormatter,
        epilog="example: python scripts/download_sample_fits.py --count 3 --size 1024",
    )
    parser.add_argument("--output-dir", default=str(SAMPLE_DIR), help="folder to write into")
    parser.add_argument("--count", type=cli.positive_int, default=6, help="number of images")
    parser.add_argument("--size", type=_size, default=2048, help="image side in pixels")
    parser.add_argument("--seed", type=cli.nonnegative_int, default=42, help="random seed")
    parser.add_argument("--bands", default="g,r,i", help="comma-separated filters")
    parser.add_argument("--compress", choices=("none", "gz", "fz"), default="none",
                        help="file compression (fz: lossless tile-compressed, extension 1)")
    parser.add_argument("--real", action="store_true",
                        help="historical flag: no internet here, so images are generated anyway")
    parser.add_argument("--survey", type=cli.positive_int, metavar="NIGHTS", default=None,
                        help="instead: one field observed on NIGHTS nights (dithers, seeing, "
                             "variable stars, one-night transients; bands g,r and 512 px unless "
                             "--bands/--size are given), truth in truth/objects.csv")
    cli.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bands = tuple(b.strip() for b in args.bands.split(",") if b.strip())
    if not bands:
        parser.error("--bands names no band")
    if args.real:
        logging.warning("--real: nothing is downloaded (no internet); generating instead")
    start = time.perf_counter()
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["scripts/download_sample_fits.py", *given])
    if args.survey:
        return _survey(args, given, command, start)
    print(f"drawing {args.count} images of {args.size}x{args.size} px into {args.output_dir} ...",
          file=sys.stderr, flush=True)
    paths = write_sample(args.output_dir, count=args.count, size=args.size, bands=bands,
                         seed=args.seed, compress=None if args.compress == "none" else
                         args.compress, command=command, progress=_progress(start))
    rows = []
    for path in paths:
        truth = pd.read_csv(path.parent / "truth" / f"{path.name.split('.')[0]}.csv")
        rows.append({"file": path.name, "band": path.name.split("_")[1],
                     "stars": int((truth["kind"] == "star").sum()),
                     "galaxies": int((truth["kind"] == "galaxy").sum()),
                     "MB": round(path.stat().st_size / 1e6, 1)})
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"{len(paths)} images of {args.size}x{args.size} px in {args.output_dir} "
          f"({time.perf_counter() - start:.1f} s); truth in {args.output_dir}/truth/; "
          f"reference catalog {args.output_dir}/reference.parquet")
    return 0


def _survey(args, given: list[str], command: str, start: float) -> int:
    """The multi-night survey of skysurvey.synth_survey (the objects step's yardstick)."""
    from skysurvey.synth_survey import write_survey

    bands = tuple(b.strip() for b in args.bands.split(",") if b.strip())
    if not any(a.startswith("--bands") for a in given):
        bands = ("g", "r")
    size = args.size if any(a.startswith("--size") for a in given) else 512
    paths = write_survey(args.output_dir, nights=args.survey, bands=bands, size=size,
                         seed=args.seed, command=command,
                         compress=None if args.compress == "none" else args.compress)
    truth = pd.read_csv(f"{args.output_dir}/truth/objects.csv")
    print(f"{len(paths)} images ({args.survey} nights x {len(bands)} bands, {size}x{size} px) in "
          f"{args.output_dir} ({time.perf_counter() - start:.1f} s): {len(truth)} true objects, "
          f"{int((truth['amplitude'] > 0).sum())} variables, "
          f"{int((truth['transient_night'] >= 0).sum())} transients; truth in "
          f"{args.output_dir}/truth/")
    return 0


def run() -> int:
    """The command line: :func:`main` with a quiet end for ``| head``."""
    return cli.run(main)
