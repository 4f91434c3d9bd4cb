"""The forced step: every object measured on every image that covers it.

For each image with a footprint (``images.footprint_hpx12``), a task reads the objects of the
order-5 partitions its footprint touches (``<catalog>/objects/hpx5=P/``), keeps those whose
order-12 cell is in the footprint, measures them on the image (:mod:`skysurvey.forced`: the
same background and noise as detection, the image's aperture radius, aperture correction and
zero point from its ``images`` record) and writes
``<catalog>/forced_photometry/band=<band>/night=<night>/<image_id>.parquet`` (one write: atomic
locally and on S3; a re-run replaces it; a file of the same image in another partition is
removed after the new one is written). Positions that the image does not cover precisely (off
the image through its WCS, or on a masked pixel) get no row.

Tasks run in a local process pool or one Lambda invocation each (``{"task": "forced_image"}``,
handled by the same function as the images: numpy, astropy and SEP's background only).

Incremental: after a run, ``forced_photometry/_manifest.json`` records, per image, a
fingerprint of what its file was made from: the image's record (``processed_at``,
``pipeline_version``), the objects unit files whose HEALPix unit holds cells of its footprint
(size and SHA-256 from the objects build record ``objects/_build.json``) and this step's
version. A
later run skips the images whose fingerprint is unchanged and whose file exists, and
measures again those whose partitions gained objects (back-fill) or that were re-processed.
Parquet readers skip the manifest (leading underscore). One forced run per catalog at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .config import is_s3_uri
from .errors import SkySurveyError, TransientStorageError, one_line, printable
from .forced import (
    ImagePhotometry,
    background_subtracted,
    icrs_to_pixel,
)
from .forced_objects import (
    _UNIT_FILE,
    _partitions,
    file_touches,
    objects_in_footprint,
    unit_touches,
)
from .forced_psf import (
    ForcedOptions,
    PsfFitSettings,
    PsfStars,
    forced_photometry,
    psf_measure,
    psf_model,
    psf_stars,
)
from .forced_summary import (
    VARIABILITY_FILE,
    VARIABILITY_FOLDER,
    VariabilitySummary,
    summarize_forced,
)
from .measurement import Pixels, single_thread_blas
from .schema import (
    FORCED_PHOTOMETRY_SCHEMA,
    catalog_keys,
    forced_key,
    image_id_from_file_stem,
    image_id_from_name,
    partition_value,
)
from .storage import open_store

__all__ = [
    "FOLDER",
    "MANIFEST_KEY",
    "VARIABILITY_FILE",
    "VARIABILITY_FOLDER",
    "ForcedPlan",
    "ForcedReport",
    "ForcedTask",
    "VariabilitySummary",
    "file_touches",
    "fingerprint",
    "forced_image",
    "handle_forced_event",
    "measure_task",
    "objects_in_footprint",
    "plan_forced",
    "read_image_records",
    "read_psf_stars",
    "register_partitions",
    "run_forced",
    "run_lambda",
    "run_local",
    "summarize_forced",
]

log = logging.getLogger(__name__)

FOLDER = "forced_photometry/"
MANIFEST_KEY = f"{FOLDER}_manifest.json"
OBJECTS_BUILD_KEY = "objects/_build.json"
#: Bump when the measurement changes: every image is measured again.
STEP_VERSION = "2"  # 2: forced PSF fluxes (forced_psf.py) instead of aperture fluxes
EVENT_TASK = "forced_image"
IMAGE_FIELDS = ("image_id", "band", "night", "mjd", "footprint_hpx12", "aperture_radius",
                "aperture_correction", "aperture_correction_err", "zero_point", "gain",
                "saturate", "fwhm_median", "processed_at", "pipeline_version")


@dataclass(frozen=True)
class ForcedTask:
    """One image to measure: where its FITS is, the catalog, its ``images`` record (the
    :data:`IMAGE_FIELDS`, JSON-ready) and the forced files of the same image elsewhere."""

    raw_uri: str
    key: str  # below raw_uri: gives the image id
    catalog_uri: str
    image: dict
    stale: tuple[str, ...] = ()
    fingerprint: str = ""
    #: ``(key, sha256)`` of the objects files the plan expects for the footprint (from the
    #: objects build record): a worker that already decoded a file of that content reuses it
    objects: tuple[tuple[str, str], ...] = ()

    def event(self) -> dict:
        """The Lambda event (``task: forced_image``)."""
        return {"task": EVENT_TASK, **asdict(self), "stale": list(self.stale),
                "objects": [list(o) for o in self.objects]}

    @classmethod
    def from_event(cls, event: dict) -> ForcedTask:
        """The task of a Lambda event (:meth:`event`).

        Parameters
        ----------
        event : dict
            ``{"task": "forced_image", ...}``.

        Returns
        -------
        ForcedTask
        """
        return cls(str(event["raw_uri"]), str(event["key"]), str(event["catalog_uri"]),
                   dict(event["image"]), tuple(event.get("stale") or ()),
                   str(event.get("fingerprint") or ""),
                   tuple((str(k), str(h)) for k, h in event.get("objects") or ()))


def _reply(task: ForcedTask, status: str, *, seconds: float, error: str | None = None,
           **extra) -> dict:
    return {"status": status, "image_id": task.image.get("image_id"), "key": task.key,
            "seconds": round(seconds, 4), "error": None if error is None else one_line(error),
            **extra}


# ---- one image -------------------------------------------------------------------------------


SOURCE_COLUMNS = ["x", "y", "flux", "flux_apcorr", "snr", "class_star", "flags", "fwhm"]


def read_psf_stars(catalog, image: dict, obj_x=None, obj_y=None) -> PsfStars | None:
    """:func:`~skysurvey.forced_psf.psf_stars` of an image from its ``sources`` file.

    Parameters
    ----------
    catalog : Store
        The catalog's store (:func:`skysurvey.storage.open_store`).
    image : dict
        The image's ``images`` record (image_id, band, night, fwhm_median).
    obj_x, obj_y : ndarray, optional
        The objects' positions on the image (isolation of the PSF stars).

    Returns
    -------
    PsfStars or None
        None when the sources file is missing or empty.
    """
    key = catalog_keys(image["image_id"], image.get("band"), image.get("night"))["sources"]
    data = catalog.read_bytes_or_none(key)
    if data is None:
        return None
    # one file, a few columns: ParquetFile.read without threads (pq.read_table goes through
    # the dataset machinery: 2.1 -> 0.9 ms on a 2,400-row file)
    table = pq.ParquetFile(io.BytesIO(data)).read(columns=SOURCE_COLUMNS, use_threads=False)
    cols = {c: table[c].to_numpy(zero_copy_only=False) for c in SOURCE_COLUMNS}
    cols = {c: np.asarray(v, float) if c != "flags" else np.asarray(v, np.int64)
            for c, v in cols.items()}
    fwhm = image.get("fwhm_median")
    return psf_stars(cols, float(fwhm) if fwhm else None, obj_x, obj_y)


def measure_task(task: ForcedTask, image, ids, ra, dec, stars: PsfStars | None = None, *,
                 wcs=None, xy=None, overwrite: bool = False) -> pa.Table:
    """The ``forced_photometry`` rows of one read image (a :class:`FitsImage`) for objects
    ``(ids, ra, dec)``: the covered positions only.

    With *stars* (the image's PSF star candidates, :func:`psf_stars`), every object is
    measured with the image's PSF model (forced_psf.py); without, or when the model cannot
    be built, with the aperture (flag ``APERTURE_FLUX``).

    Parameters
    ----------
    task : ForcedTask
        The image's task (its ``images`` record).
    image : FitsImage
        The read image.
    ids, ra, dec : ndarray
        The objects in its footprint.
    stars : PsfStars, optional
        The image's PSF star candidates.
    wcs : astropy.wcs.WCS, optional
        The image's celestial WCS when already made (else made from the header).
    xy : tuple of ndarray, optional
        The objects' pixel positions through that WCS when already computed
        (:func:`~skysurvey.forced.icrs_to_pixel`).
    overwrite : bool
        Subtract the background in *image*'s own pixels (its data is then the subtracted
        image): for a caller that read the image for this alone, as :func:`forced_image`.

    Returns
    -------
    pyarrow.Table
        ``FORCED_PHOTOMETRY_SCHEMA`` rows of the covered objects.
    """
    from .astrometry import celestial_wcs

    wcs = wcs if wcs is not None else celestial_wcs(image.header)[0]
    if wcs is None:
        raise ValueError("no celestial WCS in the FITS header")
    phot = ImagePhotometry.from_row(task.image)
    x, y = icrs_to_pixel(wcs, ra, dec) if xy is None else xy
    with single_thread_blas():  # small matrix products: OpenBLAS's threads cost CPU
        sub, rms, mask, sat, level_err = background_subtracted(
            image, x, y, phot.aperture_radius, overwrite=overwrite)
        pixels = Pixels(sub, rms, mask=mask, gain=phot.gain)
        grid = None if stars is None else psf_model(pixels, stars)
        if grid is None:
            options = ForcedOptions(sky_level_err=level_err, saturated=sat,
                                    flag_aperture=True, xy=(x, y))
        else:
            used = np.asarray(stars.stars, bool)
            settings = PsfFitSettings(grid, stars.fwhm, phot.aperture_radius, level_err,
                                      stars.x[used], stars.y[used])
            options = ForcedOptions(psf_measure(settings), level_err, sat, xy=(x, y))
        result = forced_photometry(pixels, wcs, ra, dec, phot, options)
    keep = result["covered"]
    n = int(keep.sum())

    def col(name):
        values = np.asarray(result[name], float)[keep]
        return pa.array(values, pa.float64(), mask=~np.isfinite(values))

    mjd = task.image.get("mjd")
    return pa.Table.from_arrays([
        pa.array(np.asarray(ids, np.int64)[keep], pa.int64()),
        pa.array([task.image["image_id"]] * n, pa.string()),
        pa.array([mjd] * n, pa.float64()),
        col("x"), col("y"), col("flux"), col("flux_err"), col("snr"), col("mag"), col("mag_err"),
        col("mag_limit"),
        pa.array(result["flags"][keep], pa.int32()),
        pa.array([__version__] * n, pa.string()),
    ], schema=FORCED_PHOTOMETRY_SCHEMA)


def forced_image(task: ForcedTask, *, tmp_dir: str | None = None,
                 raise_transient: bool = False) -> dict:
    """Measure one image's covered objects and write its forced photometry file.

    Never raises for a bad image: the reply says ``status: "error"`` with one line naming the
    file and the cause (transient storage errors propagate with *raise_transient*, for
    Lambda's retry). Reply: ``{status, image_id, key, n_objects, forced_key, seconds, error}``.

    Parameters
    ----------
    task : ForcedTask
        The image to measure.
    tmp_dir : str, optional
        Where a remote FITS is downloaded.
    raise_transient : bool
        Re-raise transient storage errors (Lambda's retry).

    Returns
    -------
    dict
        The reply.
    """
    from .astrometry import celestial_wcs
    from .fitsread import read_fits
    from .pipeline import table_to_parquet_bytes

    start = time.perf_counter()
    raw = open_store(task.raw_uri)
    where = raw.url(task.key)
    try:
        catalog = open_store(task.catalog_uri)
        cells = np.asarray(task.image.get("footprint_hpx12") or [], np.int64)
        ids, ra, dec = objects_in_footprint(catalog, cells, task.objects)
        with raw.local_file(task.key, tmp_dir=tmp_dir) as path:
            image = read_fits(path, name=where)
        wcs = celestial_wcs(image.header)[0]  # made once: ~15-30 ms per header
        xy = None if wcs is None else icrs_to_pixel(wcs, ra, dec)  # once, for both
        stars = _image_psf_stars(catalog, task.image, xy)
        table = measure_task(task, image, ids, ra, dec, stars, wcs=wcs, xy=xy, overwrite=True)
        key = forced_key(task.image["image_id"], task.image.get("band"), task.image.get("night"))
        catalog.write_bytes(key, table_to_parquet_bytes(table),
                            content_type="application/vnd.apache.parquet")
        for other in task.stale:
            if other != key:
                catalog.delete(other)
        return _reply(task, "ok", seconds=time.perf_counter() - start,
                      n_objects=table.num_rows, forced_key=catalog.url(key),
                      fingerprint=task.fingerprint)
    except SkySurveyError as exc:
        if raise_transient and isinstance(exc, TransientStorageError):
            raise
        error = str(exc)
    except Exception as exc:  # a bug or an unforeseen input: one line, no crash
        error = f"{printable(where)}: {type(exc).__name__}: {exc}"
    return _reply(task, "error", seconds=time.perf_counter() - start, error=error)


def _image_psf_stars(catalog, record: dict, xy) -> PsfStars | None:
    if xy is None:  # no WCS
        return None
    ox, oy = xy
    try:
        return read_psf_stars(catalog, record, ox, oy)
    except (KeyError, ValueError, pa.ArrowException) as exc:  # a sources file of an older
        # pipeline_version without class_star...: the aperture (flagged), not a failed image
        log.warning("%s: no PSF stars (%s): aperture fluxes", record.get("image_id"), exc)
        return None


def handle_forced_event(event: dict) -> dict:
    """The Lambda handler's entry for ``{"task": "forced_image", ...}`` (lambda_function.py).

    Parameters
    ----------
    event : dict
        ``{"task": "forced_image", ...}`` (:meth:`ForcedTask.event`).

    Returns
    -------
    dict
        :func:`forced_image`'s reply, or an error reply for a bad event.
    """
    import os

    try:
        task = ForcedTask.from_event(event)
    except (KeyError, TypeError, ValueError) as exc:
        return {"status": "error", "image_id": None, "error": f"bad forced event: {exc}"}
    return forced_image(task, tmp_dir=os.environ.get("TMPDIR"), raise_transient=True)


# ---- planning --------------------------------------------------------------------------------


def _json_ready(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def read_image_records(catalog_uri: str) -> list[dict]:
    """The ``images`` rows forced photometry needs (:data:`IMAGE_FIELDS`), JSON-ready.

    Parameters
    ----------
    catalog_uri : str
        The catalog.

    Returns
    -------
    list of dict
    """
    from .queries import dataset

    table = dataset(catalog_uri, "images").to_table(columns=list(IMAGE_FIELDS))
    columns = {}
    for name in IMAGE_FIELDS:
        column = table[name]
        if name == "footprint_hpx12":  # ~130 cells an image: numpy, not Arrow's per value
            columns[name] = _int_lists(column.combine_chunks())
        else:
            columns[name] = [_json_ready(v) for v in column.to_pylist()]
    return [dict(zip(IMAGE_FIELDS, row, strict=True)) for row in zip(*columns.values(),
                                                                       strict=True)]


def _int_lists(array: pa.Array) -> list:
    """A list<int64> Arrow array as Python lists (None for a null list), as ``to_pylist``."""
    if not len(array):
        return []
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False) if len(array.values) else np.zeros(0)
    if array.values.null_count:  # rare: let Arrow convert
        return array.to_pylist()
    values = values.astype(np.int64).tolist()
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i]:offsets[i + 1]] if valid[i] else None
            for i in range(len(array))]


def _objects_files(store) -> dict[str, dict]:
    """The objects files and their size/SHA-256: from the build record, else a listing."""
    data = store.read_bytes_or_none(OBJECTS_BUILD_KEY)
    if data is not None:
        try:
            files = json.loads(data).get("files") or {}
            return {k: v for k, v in files.items() if k.startswith("objects/")}
        except (ValueError, AttributeError):
            pass
    return {i.key: {"size": i.size} for i in store.list("objects/")
            if i.key.endswith(".parquet")
            and not PurePosixPath(i.key).name.startswith(("_", "."))}


class _ObjectsIndex:
    """The objects files of a build record by ``hpx5`` folder, with each unit file's HEALPix
    order and pixel parsed once (:func:`file_touches` for many images)."""

    def __init__(self, objects_files: dict[str, dict]):
        self.by_folder: dict[str, list[tuple]] = {}
        for k, v in objects_files.items():
            name = PurePosixPath(k).name
            if name.startswith(("_", ".")):
                continue
            match = _UNIT_FILE.match(name)
            unit = None if match is None else (int(match[1]), int(match[2]))
            self.by_folder.setdefault(k[:k.rfind("/") + 1], []).append(
                (k, v.get("size"), v.get("sha256"), unit))

    def used(self, cells: np.ndarray) -> list[tuple]:
        """``(key, size, sha256)`` of the files that can hold objects in *cells* (sorted
        unique order-12 cells), sorted."""
        used = []
        for p in _partitions(cells):
            for k, size, sha, unit in self.by_folder.get(f"objects/hpx5={int(p)}/", ()):
                if unit is None:
                    used.append((k, size, sha))
                    continue
                if unit_touches(*unit, cells):
                    used.append((k, size, sha))
        return sorted(used)


def fingerprint(image: dict, objects_files: dict[str, dict] | _ObjectsIndex) -> str:
    """What an image's forced file is made of (see the module docstring), as a SHA-256: the
    objects files that can hold objects of its footprint (:func:`file_touches`) count.

    Parameters
    ----------
    image : dict
        The image's record (:data:`IMAGE_FIELDS`).
    objects_files : dict
        Objects file key -> ``{size, sha256}`` (or their index, made once for many images).

    Returns
    -------
    str
        Hex SHA-256.
    """
    return _fingerprint_and_files(image, objects_files)[0]


def _fingerprint_and_files(image: dict, objects_files) -> tuple[str, list[tuple]]:
    index = objects_files if isinstance(objects_files, _ObjectsIndex) else _ObjectsIndex(
        objects_files)
    cells = np.unique(np.asarray(image.get("footprint_hpx12") or [], np.int64))
    used = index.used(cells)
    body = json.dumps([STEP_VERSION, image.get("image_id"), image.get("processed_at"),
                       image.get("pipeline_version"), used], default=str)
    return hashlib.sha256(body.encode()).hexdigest(), used


@dataclass
class ForcedPlan:
    tasks: list[ForcedTask] = field(default_factory=list)
    unchanged: int = 0
    orphans: list[str] = field(default_factory=list)  # forced files of images gone
    failures: list[dict] = field(default_factory=list)  # images whose FITS was not found
    notes: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


def _read_manifest(store) -> dict:
    data = store.read_bytes_or_none(MANIFEST_KEY)
    try:
        manifest = json.loads(data) if data is not None else {}
    except ValueError:
        manifest = {}
    return manifest if isinstance(manifest, dict) else {}


def plan_forced(catalog_uri: str, input_uri: str, *, rebuild: bool = False) -> ForcedPlan:
    """Which images to measure (new, re-processed, or whose objects changed), and where
    their FITS files are (below *input_uri*, by image id).

    Parameters
    ----------
    catalog_uri, input_uri : str
        The catalog and the folder (or ``s3://`` prefix) of the FITS files.
    rebuild : bool
        Measure every image.

    Returns
    -------
    ForcedPlan
    """
    from .runner import find_inputs

    store = open_store(catalog_uri)
    images = read_image_records(catalog_uri)
    plan = ForcedPlan(manifest=_read_manifest(store))
    objects_files = _objects_files(store)
    index = _ObjectsIndex(objects_files)
    if not objects_files:  # nothing to measure: no image is read
        plan.notes.append("no objects yet: run scripts/build_objects.py first")
        return plan
    existing: dict[str, list[str]] = {}
    for info in store.list(FOLDER):
        name = PurePosixPath(info.key).name
        if info.key.endswith(".parquet") and not name.startswith(("_", ".")):
            existing.setdefault(image_id_from_file_stem(name[:-8]), []).append(info.key)
    inputs = find_inputs(input_uri)
    keys = {image_id_from_name(k): k for k in inputs.keys}
    known = set()
    no_footprint = 0
    for image in images:
        image_id = image["image_id"]
        known.add(image_id)
        if not image.get("footprint_hpx12"):
            no_footprint += 1
            continue
        key = forced_key(image_id, image.get("band"), image.get("night"))
        stale = tuple(k for k in existing.get(image_id, []) if k != key)
        print_, used = _fingerprint_and_files(image, index)
        if (not rebuild and plan.manifest.get(image_id) == print_ and not stale
                and key in existing.get(image_id, [])):
            plan.unchanged += 1
            continue
        if image_id not in keys:
            plan.failures.append({"status": "error", "image_id": image_id, "key": None,
                                  "seconds": 0.0, "error": f"{image_id}: no FITS file for this "
                                  f"image below {input_uri}"})
            continue
        plan.tasks.append(ForcedTask(inputs.root, keys[image_id], catalog_uri, image, stale,
                                     print_, tuple((k, sha) for k, _, sha in used if sha)))
    if no_footprint:
        plan.notes.append(f"{no_footprint} images without footprint_hpx12 (no WCS, or written "
                          "by an older pipeline_version: re-run invoke_lambda.py) skipped")
    plan.orphans = sorted(k for image_id, ks in existing.items() if image_id not in known
                          for k in ks)
    return plan


# ---- running ---------------------------------------------------------------------------------


def _run_one(task: ForcedTask) -> dict:
    return forced_image(task)


def run_local(tasks: Sequence[ForcedTask], workers: int = 1) -> list[dict]:
    """Measure *tasks* here (``workers=1``) or in a process pool; replies in task order.

    Parameters
    ----------
    tasks : sequence of ForcedTask
        The images.
    workers : int
        Processes.

    Returns
    -------
    list of dict
        The replies.
    """
    if workers <= 1 or len(tasks) <= 1:
        return [forced_image(t) for t in tasks]
    replies: dict[int, dict] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_run_one, t): i for i, t in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                replies[i] = future.result()
            except Exception as exc:  # a dead worker: that image failed
                replies[i] = _reply(tasks[i], "error", seconds=0.0,
                                    error=f"{tasks[i].key}: worker died: {exc}")
    return [replies[i] for i in range(len(tasks))]


def run_lambda(tasks: Sequence[ForcedTask], function: str, workers: int = 8,
               client=None) -> list[dict]:
    """One synchronous invocation of *function* per task (threads: the work runs in Lambda).

    Parameters
    ----------
    tasks : sequence of ForcedTask
        The images.
    function : str
        The Lambda function's name.
    workers : int
        Concurrent invocations.
    client : botocore client, optional
        A Lambda client (default: one sized for *workers*).

    Returns
    -------
    list of dict
        The replies, in task order.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .lambda_backend import invoke_payload, lambda_client

    if client is None:
        from .lambda_backend import function_limits

        client = lambda_client(function_limits(function), workers)

    def invoke(task: ForcedTask) -> dict:
        reply = invoke_payload(client, function, task.key, task.event())
        return {**reply, "image_id": reply.get("image_id") or task.image.get("image_id")}

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(invoke, tasks))


@dataclass
class ForcedReport:
    replies: list[dict] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    partitions: list[dict] = field(default_factory=list)  # {band, night} written
    seconds: float = 0.0
    variability: VariabilitySummary | None = None  # the object_variability table written

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.replies if r.get("status") != "ok"]

    def summary(self) -> str:
        ok = [r for r in self.replies if r.get("status") == "ok"]
        rows = sum(int(r.get("n_objects") or 0) for r in ok)
        lines = [f"forced photometry: {len(ok)} images measured ({rows} rows), "
                 f"{self.unchanged} unchanged, {len(self.failed)} failed, "
                 f"{len(self.removed)} orphan files removed, {self.seconds:.1f} s"]
        if self.variability is not None:
            lines.append(self.variability.line())
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"error: {r.get('error')}" for r in self.failed]
        return "\n".join(lines)


def run_forced(catalog_uri: str, input_uri: str, *, workers: int = 1, rebuild: bool = False,
               runner: Callable[[list[ForcedTask]], list[dict]] | None = None,
               summarize: bool = True) -> ForcedReport:
    """Plan (:func:`plan_forced`), measure (*runner*, default a local pool of *workers*),
    then record the successful images' fingerprints and remove forced files of images that
    are gone. A failed image keeps its earlier file and is tried again next run. Then (with
    *summarize*) the per-object summary ``object_variability`` is written from the whole
    forced table (:func:`summarize_forced`), whether images were measured or not.

    Parameters
    ----------
    catalog_uri, input_uri : str
        The catalog and the FITS files' folder.
    workers : int
        Local processes.
    rebuild : bool
        Measure every image.
    runner : callable, optional
        ``runner(tasks) -> replies`` (e.g. :func:`run_lambda`).
    summarize : bool
        Write ``object_variability`` afterwards.

    Returns
    -------
    ForcedReport
    """
    start = time.perf_counter()
    store = open_store(catalog_uri)
    plan = plan_forced(catalog_uri, input_uri, rebuild=rebuild)
    runner = runner or (lambda tasks: run_local(tasks, workers))
    replies = runner(plan.tasks) if plan.tasks else []
    by_id = {t.image["image_id"]: t for t in plan.tasks}
    manifest = dict(plan.manifest)
    report = ForcedReport(replies=replies + plan.failures, unchanged=plan.unchanged,
                          notes=plan.notes)
    for reply in replies:
        task = by_id.get(reply.get("image_id"))
        if reply.get("status") == "ok" and task is not None:
            manifest[task.image["image_id"]] = task.fingerprint
            part = {"band": partition_value(task.image.get("band")),
                    "night": partition_value(task.image.get("night"))}
            if part not in report.partitions:
                report.partitions.append(part)
    for key in plan.orphans:
        store.delete(key)
        manifest.pop(image_id_from_file_stem(PurePosixPath(key).name[:-8]), None)
        report.removed.append(key)
    if replies or plan.orphans:
        store.write_bytes(MANIFEST_KEY, json.dumps(manifest, indent=0, sort_keys=True).encode(),
                          content_type="application/json")
    if summarize and _objects_files(store):  # the light curves are complete: summarise them
        report.variability = summarize_forced(catalog_uri)
    if is_s3_uri(catalog_uri):  # Athena sees what was written, whoever called this
        report.notes += register_partitions(catalog_uri, report)
    report.seconds = time.perf_counter() - start
    return report


def register_partitions(catalog_uri: str, report: ForcedReport) -> list[str]:
    """Register the partitions a run wrote (band/night of ``forced_photometry``, hpx5 of
    ``object_variability``) with the Athena database (DESIGN: registered as written).

    Returns the notes: none, or one line when Glue is not there (another S3-compatible store):
    the next ``query_with_athena.py --engine athena`` registers what it finds.

    Parameters
    ----------
    catalog_uri : str
        The catalog (``s3://``).
    report : ForcedReport
        What the run wrote.

    Returns
    -------
    list of str
        The notes.
    """
    from .athena import register_partitions as glue_register

    written = [("forced_photometry", report.partitions)]
    if report.variability is not None:
        written.append(("object_variability", report.variability.partitions))
    try:
        for folder, partitions in written:
            if partitions:
                glue_register(catalog_uri, folder, partitions)
    except SkySurveyError as exc:
        return [f"partitions not registered in Glue: {exc}"]
    return []
