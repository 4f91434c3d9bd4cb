"""Where each image's catalog files are, and replacing them without duplicates or orphans.

An image's catalog is two Parquet files (``sources/...`` and ``images/...``, see
:func:`skysurvey.schema.catalog_keys`); their partition depends on the header (FILTER,
DATE-OBS), so a re-processed image may land in another partition than before. To find the
earlier files without listing the whole catalog for every image, each image id has a small
JSON entry, ``image_ids/<file stem>.json``: ``{"image_id", "source_key", "files",
"pending"}``. Parquet readers never look there (the tables are ``sources/`` and ``images/``).

Replacing an image's catalog (:func:`replace_catalog`) goes:

1. read the entry (and its version: the ETag on S3); refuse (:class:`ImageIdConflictError`)
   when it, or an image record already at the new keys, names another source file;
2. claim the entry: write it with the earlier keys as ``files`` and the new ones as ``pending``,
   only if it still has the version read (S3's conditional write; a lock file locally), else
   go back to 1. A run killed from here on leaves an entry that names every file it may have
   written;
3. write the new sources file, then the new image record;
4. read the entry again: if another run of the same image id claimed it meanwhile, remove this
   run's files that the other one does not write and raise
   :class:`~skysurvey.errors.TransientStorageError` (Lambda retries the image; the local runner
   names it as failed);
5. delete the earlier files that are not at the new keys: image records first, then sources.

Two runs of one image id at once (an object overwritten while it is processed: two S3
notifications) therefore never leave both catalogs: the later claim sees the earlier one's
files as earlier files and deletes them after writing its own, and the earlier run, seeing the
later claim in step 4, removes whatever of its own it wrote after that deletion. A run treats
``files`` and ``pending`` alike as "may exist" and deletes what is not at its own keys
(deleting a missing key is a no-op). The lists grow only when an image moves to another
partition; ``--repair`` writes them afresh.

Requests per image on S3: 3 PUTs (entry, sources, record); two GETs of the entry (steps 1 and
4; a missing key is a 404 reply to the GET, never a HEAD before it), and when there is none a
GET for the record at the new keys; free DELETEs when a partition moved. (Re-processing in
place once skipped the entry PUT; every run claims now, so that step 4 sees every other run.)

What a reader sees: only when a re-processed image moved to another partition, its files are
there twice from the end of 3 until its earlier image record is deleted (a few milliseconds on
S3), and the ``sources`` view counts its rows once even then (it keeps rows whose
``(image_id, band, night)`` has an image record); its earlier image record goes first.
Nothing is ever missing: the new files are complete before the old ones go. The
image-record-first order also means that a run killed during 5 leaves orphan sources, which the
next run and ``--repair`` remove, never a record without its sources; a run killed between 3
and 5 leaves the earlier files, which the next run of that image removes (the entry names
them), and :func:`repair_catalog` removes every orphan and duplicate on demand.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import (
    ImageIdConflictError,
    SkySurveyError,
    StorageError,
    TransientStorageError,
)
from .schema import catalog_file_stem, image_id_from_file_stem

__all__ = [
    "ENTRIES",
    "PARQUET",
    "SETTINGS_KEY",
    "TABLES",
    "RepairReport",
    "check_writable",
    "entry_key",
    "read_entry",
    "record_reference",
    "record_source_key",
    "recorded_reference",
    "repair_catalog",
    "replace_catalog",
    "write_entry",
]

#: Folder of the per-image entries (not a table: Parquet readers never see it).
ENTRIES = "image_ids/"
TABLES = ("sources", "images")
PARQUET = "application/vnd.apache.parquet"


#: The catalog's own record of the settings its runs used (a reference catalog), so that a
#: later command on the same catalog calibrates the same way without being told again.
SETTINGS_KEY = "catalog_settings.json"


def recorded_reference(store) -> tuple[str, str] | None:
    """``(uri, bands)`` of the reference this catalog was last calibrated against, or None.

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store (:func:`skysurvey.storage.open_store`).

    Returns
    -------
    (str, str) or None
        The reference's URI and its band mapping (``""`` when none); None when the catalog
        records no reference (or its :data:`SETTINGS_KEY` file is not JSON).
    """
    data = store.read_bytes_or_none(SETTINGS_KEY)
    try:
        settings = json.loads(data) if data else {}
    except ValueError:
        return None
    uri = settings.get("reference") if isinstance(settings, dict) else None
    return (uri, settings.get("reference_bands") or "") if isinstance(uri, str) and uri else None


def record_reference(store, uri: str, bands: str) -> None:
    """Record *uri*/*bands* as the reference of the catalog in *store* (see SETTINGS_KEY).

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.
    uri : str
        The reference catalog (local path or ``s3://`` URI).
    bands : str
        Its band mapping (``"r=rmag,g=gmag"``; ``""``: the reference's defaults).

    Returns
    -------
    None
    """
    body = {"reference": uri, "reference_bands": bands}
    store.write_bytes(SETTINGS_KEY, json.dumps(body).encode(), content_type="application/json")


def entry_key(image_id: str) -> str:
    return f"{ENTRIES}{catalog_file_stem(image_id)}.json"


def read_entry(store, image_id: str) -> dict | None:
    """The image's entry, or None when it has none (a new image, or an older catalog)."""
    return _read_entry(store, image_id)[0]


def _read_entry(store, image_id: str) -> tuple[dict | None, str | None]:
    """The entry and its version (None, None when there is no entry)."""
    data, version = store.read_versioned(entry_key(image_id))
    if data is None:
        return None, None
    try:
        entry = json.loads(data)
    except ValueError:
        entry = None  # unreadable entry: treated as missing, rewritten below
    return (entry if isinstance(entry, dict) else None), version


def _entry_body(image_id: str, source_key: str, files, pending=()) -> bytes:
    body = {"image_id": image_id, "source_key": source_key, "files": sorted(set(files)),
            "pending": sorted(set(pending))}
    return json.dumps(body, ensure_ascii=False).encode()


def write_entry(store, image_id: str, source_key: str, files, pending=()) -> None:
    store.write_bytes(entry_key(image_id), _entry_body(image_id, source_key, files, pending),
                      content_type="application/json")


def record_source_key(store, key: str) -> str | None:
    """The ``source_key`` of the image record at *key* (None if there is none)."""
    data = store.read_bytes_or_none(key)
    if data is None:
        return None
    table = pq.read_table(io.BytesIO(data), columns=["source_key"])
    values = table["source_key"].to_pylist()
    return values[0] if values else None


def _conflict(image_id: str, source_key: str, other: str) -> ImageIdConflictError:
    return ImageIdConflictError(
        source_key, f"image id {image_id!r} already holds the catalog of {other}; rename one "
                    "of them (or delete that catalog) so that each image keeps its own id")


def replace_catalog(store, image_id: str, source_key: str, files: dict[str, bytes]) -> None:
    """Write *files* (``{key: Parquet bytes}``, sources before images) as *image_id*'s catalog
    and remove its earlier files wherever they are (see the module docstring for the order).

    Raises ImageIdConflictError, without writing, when the catalog of *image_id* came from
    another source file. On a write failure the new files are removed again. When another
    run of the same image id claimed the entry while this one wrote, this run's files that
    the other run does not write are removed and TransientStorageError is raised (a retry
    processes the image again, after the other run).
    """
    version = _claim(store, image_id, source_key, files)
    written = []
    try:
        for key, data in files.items():
            store.write_bytes(key, data, content_type=PARQUET)
            written.append(key)
    except SkySurveyError:
        _delete(store, written)
        raise
    latest, now = _read_entry(store, image_id)
    if now != version:  # claimed by another run meanwhile: the files it writes win
        _delete(store, set(files) - set((latest or {}).get("pending", [])))
        raise TransientStorageError(
            store.url(entry_key(image_id)), f"image id {image_id!r} was re-processed by "
            "another run at the same time; this run's files were removed (retry it)")
    _delete(store, _earlier(latest) - set(files))


def _earlier(entry: dict | None) -> set[str]:
    """The files an entry says may exist (``files`` and ``pending``)."""
    return set(entry.get("files", []) + entry.get("pending", [])) if entry else set()


def _claim(store, image_id: str, source_key: str, files: dict[str, bytes],
           attempts: int = 5) -> str:
    """Write the entry with *files* as ``pending`` (compare-and-swap on the version read: a
    run of the same image id that claimed it first is seen, and its files counted as
    earlier); returns the version written. Every run claims, even when the entry names
    *files* already, so that a run can tell that another one claimed after it."""
    for _ in range(attempts):
        entry, version = _read_entry(store, image_id)
        if entry is not None and entry.get("source_key") not in (None, source_key):
            raise _conflict(image_id, source_key, entry["source_key"])
        if entry is None:  # an older catalog, without entries: the record at the new keys
            images_key = next(k for k in files if k.startswith("images/"))
            other = record_source_key(store, images_key)
            if other is not None and other != source_key:
                raise _conflict(image_id, source_key, other)
        earlier = _earlier(entry) - set(files)
        body = _entry_body(image_id, source_key, earlier, pending=files)
        written = store.write_bytes_if(entry_key(image_id), body, version=version,
                                       content_type="application/json")
        if written is not None:
            return written
    raise TransientStorageError(store.url(entry_key(image_id)),
                                f"changed by other runs {attempts} times in a row")


def _delete(store, keys) -> None:
    """Delete *keys*: image records first (the image leaves every query at once), then the rest."""
    for key in sorted(keys, key=lambda k: (not k.startswith("images/"), k)):
        store.delete(key)


@dataclass
class RepairReport:
    removed: list[str] = field(default_factory=list)  # catalog files deleted, with the reason
    entries_written: int = 0
    unreadable: list[str] = field(default_factory=list)  # "key (cause)": left for the user


def _by_stem(store, table: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for info in store.list(f"{table}/"):
        if info.key.endswith(".parquet"):
            found.setdefault(PurePosixPath(info.key).name.removesuffix(".parquet"), []).append(
                info.key)
    return found


def _unreadable(store, key: str, report: RepairReport) -> bool:
    """True (and *key* named in *report*) when the file has no readable Parquet footer."""
    try:
        pq.read_metadata(io.BytesIO(store.read_bytes(key)))
        return False
    except (pa.ArrowException, OSError) as exc:
        report.unreadable.append(f"{key} ({str(exc).splitlines()[0] if str(exc) else exc!r})")
        return True


def _processed_at(store, key: str):
    table = pq.read_table(io.BytesIO(store.read_bytes(key)), columns=["processed_at"])
    values = [v for v in table["processed_at"].to_pylist() if v is not None]
    return (values[0].isoformat() if values else "", key)


def repair_catalog(store) -> RepairReport:
    """Remove every orphan and duplicate from the catalog in *store*, and rebuild the entries.

    - a sources file without an image record beside it (a killed run) is removed;
    - an image id with records in several partitions keeps the most recently processed one;
    - every image gets an entry naming its files (older catalogs had none).

    Files without a readable Parquet footer are named in the report and left alone, with
    every other file of their image id.

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.

    Returns
    -------
    RepairReport
        Files removed (with the reason), entries written, unreadable files.
    """
    report = RepairReport()
    if not store.root_exists():
        return report
    sources, images = _by_stem(store, "sources"), _by_stem(store, "images")
    # an empty or truncated file is named and left alone, with everything of its image id
    # (its other file may be the only good copy): never read further, never deleted here
    broken = {stem for table in (sources, images) for stem, keys in table.items()
              for key in keys if _unreadable(store, key, report)}
    sources = {k: v for k, v in sources.items() if k not in broken}
    images = {k: v for k, v in images.items() if k not in broken}

    def remove(key: str, why: str) -> None:
        store.delete(key)
        report.removed.append(f"{key} ({why})")

    for stem, keys in sorted(images.items()):
        if len(keys) > 1:
            keep = max(keys, key=lambda k: _processed_at(store, k))
            for key in sorted(set(keys) - {keep}):
                remove(key, f"older duplicate of {keep}")
            images[stem] = [keep]
    kept = {"sources/" + k.removeprefix("images/") for keys in images.values() for k in keys}
    for keys in sources.values():
        for key in keys:
            if key not in kept:
                remove(key, "sources without an image record")
    for stem, keys in sorted(images.items()):
        image_id = image_id_from_file_stem(stem)
        files = sorted([*keys, "sources/" + keys[0].removeprefix("images/")])
        entry = read_entry(store, image_id)
        named = set(entry.get("files", []) + entry.get("pending", [])) if entry else set()
        if not set(files) <= named:  # no entry (older catalog) or one missing a file
            source_key = record_source_key(store, keys[0])
            write_entry(store, image_id, source_key, files)
            report.entries_written += 1
    for info in store.list(ENTRIES):
        stem = PurePosixPath(info.key).name.removesuffix(".json")
        if stem not in images:
            store.delete(info.key)
    return report


def check_writable(store) -> None:
    """One line, before any image is measured, when the catalog cannot be written.

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.

    Returns
    -------
    None

    Raises
    ------
    StorageError
        The catalog cannot be written (the cause named).
    """
    try:
        store.check_writable()
    except StorageError as exc:
        raise StorageError(exc.source, f"the catalog is not writable: {exc.cause}") from None
