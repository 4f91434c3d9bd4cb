"""Where each image's catalog files are, and replacing them without duplicates or orphans.

An image's catalog is two Parquet files (``sources/...`` and ``images/...``, see
:func:`skysurvey.schema.catalog_keys`); their partition depends on the header (FILTER,
DATE-OBS), so a re-processed image may land in another partition than before. To find the
earlier files without listing the whole catalog for every image, each image id has a small
JSON entry, ``image_ids/<file stem>.json``: ``{"image_id", "source_key", "files",
"pending"}``. Parquet readers never look there (the tables are ``sources/`` and ``images/``).

Replacing an image's catalog (:func:`replace_catalog`) goes:

1. read the entry; refuse (:class:`ImageIdConflictError`) when it, or an image record already
   at the new keys, names another source file;
2. write the entry: the earlier keys as ``files``, the new ones as ``pending`` (a run killed from
   here on leaves an entry that names every file it may have written);
3. write the new sources file, then the new image record;
4. delete the earlier files that are not at the new keys: image records first, then sources.

The entry is not rewritten after step 4, nor in step 2 when it already names the new keys (a
PUT costs about as much as the image's Lambda time): a run treats ``files`` and ``pending``
alike as "may exist" and deletes what is not at its own keys (deleting a missing key is a
no-op). The lists grow only when an image moves to another partition; ``--repair`` writes them
afresh.

Requests per image on S3: 3 PUTs the first time (entry, sources, record), 2 when re-processed
in place (as without entries); one GET for the entry (a missing key is a 404 reply to that GET,
never a HEAD before it), and when there is none a second GET for the record at the new keys;
free DELETEs when a partition moved.

What a reader sees: only when a re-processed image moved to another partition, it is there
twice from the end of 3 until its earlier sources are deleted (two DELETE round trips, a few
milliseconds on S3); its earlier image record goes first, so ``images`` is right after one.
Nothing is ever missing: the new files are complete before the old ones go. (A ``sources``
view that keeps rows whose ``(image_id, band, night)`` has an image record would close the
window at the first DELETE.) The image-record-first order also means that a run killed during
4 leaves orphan sources, which the next run and ``--repair`` remove, never a record without its
sources; a run killed between 3 and 4 leaves the earlier files, which the next run of that image
removes (the entry names them), and :func:`repair_catalog` removes every orphan and duplicate on
demand.

Two runs writing the same image id at the same moment are not serialised (S3 has no lock): the
runner never starts two (it refuses two inputs with one id); two S3 notifications of one key at
once (an object overwritten while it is processed) can leave an earlier copy that ``--repair``
removes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pyarrow.parquet as pq

from .errors import ImageIdConflictError, SkySurveyError, StorageError
from .schema import catalog_file_stem, image_id_from_file_stem

#: Folder of the per-image entries (not a table: Parquet readers never see it).
ENTRIES = "image_ids/"
TABLES = ("sources", "images")
PARQUET = "application/vnd.apache.parquet"


def entry_key(image_id: str) -> str:
    return f"{ENTRIES}{catalog_file_stem(image_id)}.json"


def read_entry(store, image_id: str) -> dict | None:
    """The image's entry, or None when it has none (a new image, or an older catalog)."""
    data = store.read_bytes_or_none(entry_key(image_id))
    if data is None:
        return None
    try:
        entry = json.loads(data)
    except ValueError:
        return None  # unreadable entry: treated as missing, rewritten below
    return entry if isinstance(entry, dict) else None


def write_entry(store, image_id: str, source_key: str, files, pending=()) -> None:
    body = {"image_id": image_id, "source_key": source_key, "files": sorted(set(files)),
            "pending": sorted(set(pending))}
    store.write_bytes(entry_key(image_id), json.dumps(body, ensure_ascii=False).encode(),
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
    another source file. On a write failure the new files are removed again.
    """
    entry = read_entry(store, image_id)
    if entry is not None and entry.get("source_key") not in (None, source_key):
        raise _conflict(image_id, source_key, entry["source_key"])
    images_key = next(k for k in files if k.startswith("images/"))
    if entry is None:  # an older catalog, without entries: the record at the new keys
        other = record_source_key(store, images_key)
        if other is not None and other != source_key:
            raise _conflict(image_id, source_key, other)
    earlier = set(entry.get("files", []) + entry.get("pending", [])) if entry else set()
    if entry is None or not set(files) <= earlier:  # else the entry names them already
        write_entry(store, image_id, source_key, earlier, pending=files)
    written = []
    try:
        for key, data in files.items():
            store.write_bytes(key, data, content_type=PARQUET)
            written.append(key)
    except SkySurveyError:
        _delete(store, written)
        raise
    _delete(store, earlier - set(files))


def _delete(store, keys) -> None:
    """Delete *keys*: image records first (the image leaves every query at once), then the rest."""
    for key in sorted(keys, key=lambda k: (not k.startswith("images/"), k)):
        store.delete(key)


@dataclass
class RepairReport:
    removed: list[str] = field(default_factory=list)  # catalog files deleted, with the reason
    entries_written: int = 0


def _by_stem(store, table: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for info in store.list(f"{table}/"):
        if info.key.endswith(".parquet"):
            found.setdefault(PurePosixPath(info.key).name.removesuffix(".parquet"), []).append(
                info.key)
    return found


def _processed_at(store, key: str):
    table = pq.read_table(io.BytesIO(store.read_bytes(key)), columns=["processed_at"])
    values = [v for v in table["processed_at"].to_pylist() if v is not None]
    return (values[0].isoformat() if values else "", key)


def repair_catalog(store) -> RepairReport:
    """Remove every orphan and duplicate from the catalog in *store*, and rebuild the entries.

    - a sources file without an image record beside it (a killed run) is removed;
    - an image id with records in several partitions keeps the most recently processed one;
    - every image gets an entry naming its files (older catalogs had none).
    """
    report = RepairReport()
    if not store.root_exists():
        return report
    sources, images = _by_stem(store, "sources"), _by_stem(store, "images")

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
    """One line, before any image is measured, when the catalog cannot be written."""
    try:
        store.check_writable()
    except StorageError as exc:
        raise StorageError(exc.source, f"the catalog is not writable: {exc.cause}") from None
