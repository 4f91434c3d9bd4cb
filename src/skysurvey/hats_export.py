"""Export the catalog's ``objects`` and ``sources`` as HATS catalogs that LSDB opens.

Each becomes a HATS *collection* (``<output>/objects``, ``<output>/sources``): the catalog,
HEALPix-partitioned by ``hats-import``, plus a margin cache (the rows within a few arcsec of
each partition's border, so that ``lsdb`` cross-matches are complete near borders), set as the
collection's default margin. ``lsdb.open_catalog("<output>/objects")`` opens it with the margin.

Runs outside the Lambda (hats-import, dask and lsdb weigh ~310 MB). hats writes local files only
here (S3 needs s3fs, which breaks the boto3 pin): the export is built in a local temporary folder,
then moved into place or uploaded. Local output: an atomic exchange of ``objects/``, then of
``sources/``, so a reader of either collection sees its old or its new version, never a mix of
files (between the two exchanges the new objects stand beside the old sources). S3 output,
through the project's S3 store: the new files are written over the old keys, then the keys the
new export no longer has are deleted; during the upload a reader may see both, a window of the
upload's length.

Writers create only what they own (DESIGN.md): :func:`check_output` runs before any work and
refuses an output that is an existing file, a folder that is, contains or lies inside the
catalog, and a non-empty folder (or prefix) that an earlier export did not make (it holds
:data:`MARKER`, or only ``objects/`` and ``sources/``), unless *force*. Even then only
``<output>/objects`` and ``<output>/sources`` are replaced, each swapped in on its own: the
user's other files there are never touched, on a local folder and on ``s3://`` alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .config import is_s3_uri, parse_s3_uri
from .errors import SkySurveyError
from .storage import open_store

__all__ = [
    "MARGIN_ARCSEC",
    "MARKER",
    "OWNED",
    "ROWS_PER_CHUNK",
    "ExportError",
    "ExportReport",
    "check_output",
    "export_hats",
    "quiet_hats_logs",
]

log = logging.getLogger("skysurvey.hats_export")

#: margin width: the association radius is 1", LSDB's cross-match radii are a few arcsec
MARGIN_ARCSEC = 10.0
ROWS_PER_CHUNK = 1_000_000
#: The export's own folders below the output, the only ones it ever replaces.
OWNED = ("objects", "sources")
#: Written at the output's root by every export: the folder is one this writer made.
MARKER = ".skysurvey-hats-export"


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

    data = dataset(catalog, "objects")  # every file's footer: a damaged one is named
    columns = [c for c in data.schema.names if c not in ("hpx5", "_healpix_29")]  # recomputed
    return _write_chunks(data.to_batches(columns=columns), folder, "objects")


def _sources_input(catalog: str, folder: Path) -> tuple[list[str], int]:
    """Sources with a position, with band, night and the image's mjd as columns."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from .queries import dataset

    images = dataset(catalog, "images").to_table(columns=["image_id", "mjd"])
    data = dataset(catalog, "sources")
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


def export_hats(catalog: str, output: str, *, workers: int = 1,
                force: bool = False) -> ExportReport:
    """Write ``<output>/objects`` and ``<output>/sources`` (HATS collections with margins).

    The output is checked first (:func:`check_output`, *force* as there); an
    :class:`ExportError` names it and the reason, and nothing is written.

    Parameters
    ----------
    catalog : str
        The catalog to read (local folder or ``s3://``), with ``objects`` built.
    output : str
        The folder (or ``s3://`` prefix) to write the HATS collections into.
    workers : int, optional
        Dask workers.
    force : bool, optional
        Replace an earlier export in *output* (:func:`check_output`).

    Returns
    -------
    ExportReport
        Rows written per collection, the output and the time taken.

    Raises
    ------
    ExportError
        When *output* may not be written (nothing is written then).
    """
    from dask.distributed import Client

    check_output(catalog, output, force=force)  # before any work: nothing to undo
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
        # Port 0: dask's scheduler serves HTTP even without a dashboard, on 8787 by default,
        # and warns when another process holds it (two exports, two test runs at once).
        with quiet_hats_logs(), Client(n_workers=workers, threads_per_worker=1,
                                   processes=workers > 1,
                                   dashboard_address="127.0.0.1:0") as client:
            for name, kind in (("objects", "object"), ("sources", "source")):
                _import(name, inputs[name], built, work / "tmp", kind, client)
        _publish(built, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report


def _hats_collection_note(record: logging.LogRecord) -> bool:
    """False for hats' root-logger warning on opening a collection it was asked to open."""
    return not record.getMessage().startswith("Looking for catalog - found collection")


@contextlib.contextmanager
def quiet_hats_logs():
    """While it is open: dask's INFO chatter (cluster start, workers, connections, the
    jupyter-server-proxy hint; ~35 lines with the scripts' INFO logging) and hats' root-logger
    warning that it found the collection it was pointed at are left out; dask's warnings and
    errors stay. The export uses it, and so can a reader opening the export with LSDB.

    Returns
    -------
    contextlib.AbstractContextManager
        A context manager (``with quiet_hats_logs(): ...``); the loggers' levels and filters
        are restored on exit.
    """
    chatty = logging.getLogger("distributed")
    level = chatty.level
    chatty.setLevel(max(level, logging.WARNING))
    logging.getLogger().addFilter(_hats_collection_note)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(_hats_collection_note)
        chatty.setLevel(level)


def _local_path(uri: str) -> Path:
    """*uri* as an absolute local path, symbolic links resolved (``..`` and ``~`` too)."""
    return Path(uri).expanduser().resolve()


def _contains(outer: str, inner: str) -> bool:
    """Whether the key prefix or path *inner* is *outer* or lies below it."""
    outer, inner = outer.rstrip("/"), inner.rstrip("/")
    return not outer or inner == outer or inner.startswith(outer + "/")


def _overlap(catalog: str, output: str) -> str | None:
    """How *output* overlaps *catalog*, or None (different buckets or folders)."""
    if is_s3_uri(catalog) != is_s3_uri(output):
        return None
    if is_s3_uri(output):
        cat, out = parse_s3_uri(catalog), parse_s3_uri(output)
        if cat.bucket != out.bucket:
            return None
        cat_key, out_key = cat.prefix, out.prefix
    else:
        cat_key, out_key = str(_local_path(catalog)), str(_local_path(output))
    if cat_key.rstrip("/") == out_key.rstrip("/"):
        return "is the catalog"
    if _contains(out_key, cat_key):
        return "contains the catalog"
    if _contains(cat_key, out_key):
        return "lies inside the catalog"
    return None


def _staging(name: str) -> bool:
    """Whether *name* is a folder a local export stages or retires (``.objects-new-...``,
    ``.sources-old-...``), left behind when an export was killed mid-swap."""
    return any(name.startswith(f".{owned}-{kind}-") for owned in OWNED
               for kind in ("new", "old"))


def _foreign_entries(names: set[str]) -> list[str]:
    """The entries of an output folder that no export made (empty: the folder is ours)."""
    return sorted(n for n in names if n not in OWNED and n != MARKER and not _staging(n))


def _check_creatable(target: Path, output: str) -> None:
    """Refuse, before the export's work, a local output that cannot be written: below an
    existing file, or in a folder this user cannot write to."""
    folder = target.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(output, f"cannot be created: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(output, f"cannot be written: no write permission in {folder}")


def check_output(catalog: str, output: str, *, force: bool = False) -> None:
    """Refuse an output this export does not own (:class:`ExportError`, one line).

    Refused: an existing file; a folder (or s3:// prefix) that is, contains or lies inside
    *catalog*; a non-empty folder without :data:`MARKER` holding anything besides
    ``objects/`` and ``sources/``, unless *force* (which still replaces only those two).
    """
    how = _overlap(catalog, output)
    if how:
        raise ExportError(output, f"{how} ({catalog}): an export never writes over the "
                                  "catalog it reads; choose another --output")
    if is_s3_uri(output):
        loc = parse_s3_uri(output)
        if not loc.prefix:
            names = {i.key.split("/", 1)[0] for i in open_store(f"s3://{loc.bucket}").list("")}
        else:
            bucket = open_store(f"s3://{loc.bucket}")
            if bucket.exists(loc.prefix.rstrip("/")):
                raise ExportError(output, "is an existing object (a file), not a prefix: "
                                          "choose another --output")
            names = {i.key.split("/", 1)[0] for i in open_store(output).list("")}
    else:
        target = Path(output).expanduser()
        if target.exists() and not target.is_dir():
            raise ExportError(output, "is an existing file: an export writes a folder; "
                                      "choose another --output")
        try:
            names = {p.name for p in target.iterdir()} if target.is_dir() else set()
        except OSError as exc:
            raise ExportError(output, f"cannot list it ({exc.strerror or exc})") from None
        _check_creatable(target, output)
    foreign = _foreign_entries(names)
    if foreign and MARKER not in names and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise ExportError(output, f"is a non-empty folder this export did not make (holds "
                                  f"{shown}): choose an empty or new --output, or add --force "
                                  "to replace only its objects/ and sources/")


def _publish(built: Path, output: str) -> None:
    """Put *built*'s ``objects/`` and ``sources/`` in place below *output*, and only those
    (each folder swapped atomically on a local disk); other entries of *output* are kept."""
    if is_s3_uri(output):
        store = open_store(output)
        new = {p.relative_to(built).as_posix(): p for p in sorted(built.rglob("*"))
               if p.is_file() and p.relative_to(built).parts[0] in OWNED}
        for key, path in new.items():
            store.upload_file(path, key)
        for name in OWNED:
            for info in list(store.list(f"{name}/")):
                if info.key not in new:
                    store.delete(info.key)
        store.write_bytes(MARKER, b"written by skysurvey export_hats\n")
        return
    from .storage import replace_dir

    try:
        _publish_local(built, Path(output).expanduser(), replace_dir)
    except OSError as exc:  # a disk full or a permission changed during the export
        raise ExportError(output, f"cannot write the export ({exc.strerror or exc}); "
                                  "nothing of the catalog was touched") from None


def _publish_local(built: Path, target: Path, replace_dir) -> None:
    """Swap *built*'s ``objects/`` and ``sources/`` into *target* with *replace_dir*."""
    target.mkdir(parents=True, exist_ok=True)
    for leftover in [p for p in target.iterdir() if _staging(p.name)]:  # a killed export's
        shutil.rmtree(leftover, ignore_errors=True)
    for name in OWNED:
        # staged inside the target: the same file system, so the swap is a rename
        staged = Path(tempfile.mkdtemp(prefix=f".{name}-new-", dir=target))
        shutil.rmtree(staged)
        shutil.copytree(built / name, staged)
        replace_dir(staged, target / name, target / f".{name}-old-{time.time_ns()}")
    (target / MARKER).write_text("written by skysurvey export_hats\n")
