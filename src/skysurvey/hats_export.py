"""Export the catalog's ``objects`` and ``sources`` as HATS catalogs that LSDB opens.

Each becomes a HATS *collection* (``<output>/objects``, ``<output>/sources``): the catalog,
HEALPix-partitioned by ``hats-import``, plus a margin cache (the rows within a few arcsec of
each partition's border, so that ``lsdb`` cross-matches are complete near borders), set as the
collection's default margin. ``lsdb.open_catalog("<output>/objects")`` opens it with the margin.

Runs outside the Lambda (hats-import, dask and lsdb weigh ~310 MB). hats writes local files only
here (S3 needs s3fs, which breaks the boto3 pin): the export is built in a local temporary folder,
then moved into place (local output: an atomic exchange of folders, so a reader sees the old or
the new export, never a mix) or uploaded with the project's S3 store (S3 output: the new files
are written over the old keys, then the keys the new export no longer has are deleted; during
the upload a reader may see both, a window of the upload's length). An existing output is
replaced as a whole.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .config import is_s3_uri
from .errors import SkySurveyError
from .storage import open_store

log = logging.getLogger("skysurvey.hats_export")

#: margin width: the association radius is 1", LSDB's cross-match radii are a few arcsec
MARGIN_ARCSEC = 10.0
ROWS_PER_CHUNK = 1_000_000


class ExportError(SkySurveyError):
    """The HATS export cannot run (no objects, no sources, an unwritable output)."""


@dataclass
class ExportReport:
    output: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = ["HATS export", "-" * 36]
        lines += [f"{name:<20}{n:>16,}" for name, n in self.rows.items()]
        lines += [f"{'output':<20}{self.output}", f"{'seconds':<20}{self.seconds:>16.1f}"]
        return "\n".join(lines)


def _write_chunks(batches, folder: Path, prefix: str) -> tuple[list[str], int]:
    """Write record batches as Parquet files of about ROWS_PER_CHUNK rows each."""
    folder.mkdir(parents=True, exist_ok=True)
    files, pending, size, total = [], [], 0, 0

    def flush():
        nonlocal pending, size
        if pending:
            path = folder / f"{prefix}-{len(files):05d}.parquet"
            pq.write_table(pa.Table.from_batches(pending), path)
            files.append(str(path))
            pending, size = [], 0

    for batch in batches:
        if batch.num_rows:
            pending.append(batch)
            size += batch.num_rows
            total += batch.num_rows
        if size >= ROWS_PER_CHUNK:
            flush()
    flush()
    return files, total


def _objects_input(catalog: str, folder: Path) -> tuple[list[str], int]:
    from .queries import dataset

    data = dataset(catalog, "objects", check=False)
    columns = [c for c in data.schema.names if c not in ("hpx5", "_healpix_29")]  # recomputed
    return _write_chunks(data.to_batches(columns=columns), folder, "objects")


def _sources_input(catalog: str, folder: Path) -> tuple[list[str], int]:
    """Sources with a position, with band, night and the image's mjd as columns."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from .queries import dataset

    images = dataset(catalog, "images", check=False).to_table(columns=["image_id", "mjd"])
    data = dataset(catalog, "sources", check=False)
    columns = [c for c in data.schema.names if c != "_healpix_29"]  # hats-import recomputes it
    keep = pads.field("ra").is_valid() & pads.field("dec").is_valid()
    ids, mjds = images["image_id"], images["mjd"]

    def batches():
        for batch in data.to_batches(columns=columns, filter=keep):
            index = pc.index_in(batch["image_id"], value_set=ids)
            yield batch.append_column("mjd", pc.take(mjds, index))

    return _write_chunks(batches(), folder, "sources")


def _import(name: str, files: list[str], out: Path, tmp: Path, catalog_type: str,
            client) -> None:
    from hats_import import CollectionArguments
    from hats_import.pipeline import pipeline_with_client

    args = (CollectionArguments(output_artifact_name=name, output_path=str(out),
                                tmp_dir=str(tmp), progress_bar=False, resume=False)
            .catalog(input_file_list=files, file_reader="parquet", ra_column="ra",
                     dec_column="dec", catalog_type=catalog_type, output_artifact_name=name,
                     highest_healpix_order=10, pixel_threshold=500_000)
            .add_margin(margin_threshold=MARGIN_ARCSEC, output_artifact_name=f"{name}_margin",
                        is_default=True))
    pipeline_with_client(args, client)


def export_hats(catalog: str, output: str, *, workers: int = 1) -> ExportReport:
    """Write ``<output>/objects`` and ``<output>/sources`` (HATS collections with margins)."""
    from dask.distributed import Client

    start = time.perf_counter()
    report = ExportReport(output)
    work = Path(tempfile.mkdtemp(prefix="hats-export-"))
    try:
        built = work / "export"
        inputs = {}
        for name, reader in (("objects", _objects_input), ("sources", _sources_input)):
            inputs[name], n = reader(catalog, work / f"input-{name}")
            if not n:
                hint = ("run scripts/build_objects.py first" if name == "objects"
                        else "run scripts/invoke_lambda.py first")
                raise ExportError(catalog, f"no {name} with a position to export: {hint}")
            report.rows[name] = n
        with Client(n_workers=workers, threads_per_worker=1, processes=workers > 1,
                    dashboard_address=None) as client:
            for name, kind in (("objects", "object"), ("sources", "source")):
                _import(name, inputs[name], built, work / "tmp", kind, client)
        _publish(built, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report


def _publish(built: Path, output: str) -> None:
    """Replace *output* by *built* as a whole."""
    if is_s3_uri(output):
        store = open_store(output)
        new = {p.relative_to(built).as_posix(): p for p in sorted(built.rglob("*"))
               if p.is_file()}
        for key, path in new.items():
            store.upload_file(path, key)
        for name in ("objects", "sources"):
            for info in list(store.list(f"{name}/")):
                if info.key not in new:
                    store.delete(info.key)
        return
    from .storage import replace_dir

    target = Path(output).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}-new-", dir=target.parent))
    shutil.rmtree(staged)
    shutil.copytree(built, staged)  # same file system as the target: renames are atomic
    replace_dir(staged, target, target.with_name(f".{target.name}-old-{time.time_ns()}"))
