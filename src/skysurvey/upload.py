"""Copy FITS files into the raw bucket (a local folder or S3): checksums, resume, verify.

One implementation for ``scripts/upload_to_s3.py`` and the notebook. Every object carries its
SHA-256 (S3 metadata ``sha256``); an object already there with the same checksum is skipped,
and each upload is verified by reading its size and checksum back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import SkySurveyError, StorageError
from .schema import is_fits_name
from .storage import LocalStore, open_store, sha256_file

CONTENT_TYPES = {".gz": "application/gzip", ".bz2": "application/x-bzip2"}


@dataclass(frozen=True)
class UploadResult:
    path: str
    key: str
    status: str  # "uploaded" | "skipped" | "failed"
    bytes: int
    error: str | None = None


def find_fits(input_dir: str | os.PathLike) -> list[Path]:
    """Every FITS file under *input_dir* (recursively), sorted; a missing folder raises."""
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise StorageError(str(root), "folder does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_fits_name(p.name))


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/fits")


def upload_one(store, path: Path, key: str, *, verify: bool = True,
               callback: Callable[[int], None] | None = None) -> UploadResult:
    """Upload *path* to *key* unless an identical object is there; verify it afterwards."""
    size = path.stat().st_size
    try:
        digest = sha256_file(path)
        existing = store.head(key)
        if existing is not None and existing.sha256 == digest and existing.size == size:
            if callback:
                callback(size)
            return UploadResult(str(path), key, "skipped", size)
        store.upload_file(path, key, content_type=content_type(path),
                          metadata={"sha256": digest, "source-name": path.name},
                          callback=callback)
        if verify:
            after = store.head(key)
            if after is None or after.size != size or after.sha256 != digest:
                raise StorageError(store.url(key), "checksum mismatch after upload")
    except SkySurveyError as exc:
        return UploadResult(str(path), key, "failed", size, str(exc))
    return UploadResult(str(path), key, "uploaded", size)


def upload_files(paths: Iterable[Path], bucket_uri: str, *, prefix: str = "images/",
                 verify: bool = True, progress: bool = False,
                 on_done: Callable[[UploadResult], None] | None = None) -> list[UploadResult]:
    """Upload every path under *prefix* of the bucket; failures are results, not exceptions."""
    paths = [Path(p) for p in paths]
    store = open_store(bucket_uri)
    if isinstance(store, LocalStore):
        store.root.mkdir(parents=True, exist_ok=True)  # a local "bucket" is just a folder
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    from tqdm import tqdm

    results = []
    with tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True,
              disable=not progress, desc="upload") as bar:
        for path in paths:
            result = upload_one(store, path, prefix + path.name, verify=verify,
                                callback=bar.update)
            results.append(result)
            if on_done:
                on_done(result)
    return results
