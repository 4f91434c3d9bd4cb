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
from urllib.parse import quote

from .errors import SkySurveyError, StorageError, one_line
from .runner import colliding_ids, find_inputs
from .schema import image_id_from_name
from .storage import open_store, sha256_file

__all__ = ["CONTENT_TYPES", "UploadResult", "content_type", "find_fits", "metadata_value",
           "upload_files", "upload_one"]

CONTENT_TYPES = {".gz": "application/gzip", ".bz2": "application/x-bzip2"}


@dataclass(frozen=True)
class UploadResult:
    path: str
    key: str
    status: str  # "uploaded" | "skipped" | "failed"
    bytes: int
    error: str | None = None


def find_fits(input_dir: str | os.PathLike) -> list[Path]:
    """Every FITS file under *input_dir* (recursively), sorted; a missing folder raises.

    Files the listing cannot follow (symlinks out of the folder, loops...) are left out here;
    :func:`skysurvey.runner.find_inputs` names them (the upload script reports them).

    Parameters
    ----------
    input_dir : str or os.PathLike
        The local folder (``~`` expanded).

    Returns
    -------
    list of pathlib.Path
        The FITS files, sorted.

    Raises
    ------
    StorageError
        The folder does not exist.
    """
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise StorageError(str(root), "folder does not exist")
    inputs = find_inputs(str(root))
    return [Path(inputs.root) / key for key in inputs.keys]


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/fits")


def metadata_value(text: str) -> str:
    """*text* as an S3 metadata value: percent-encoded UTF-8 (RFC 3986), since S3 metadata
    must be ASCII; ``urllib.parse.unquote`` gives the original back."""
    return quote(text, safe="/ ")


def upload_one(store, path: Path, key: str, *, verify: bool = True, name: str | None = None,
               callback: Callable[[int], None] | None = None) -> UploadResult:
    """Upload *path* to *key* unless an identical object is there; verify it afterwards."""
    try:
        size = path.stat().st_size
        digest = sha256_file(path)
    except OSError as exc:
        return UploadResult(str(path), key, "failed", 0,
                            StorageError(str(path), exc.strerror or str(exc)).args[0])
    try:
        existing = store.head(key)
        if existing is not None and existing.sha256 == digest and existing.size == size:
            if callback:
                callback(size)
            return UploadResult(str(path), key, "skipped", size)
        store.upload_file(path, key, content_type=content_type(path),
                          metadata={"sha256": digest,
                                    "source-name": metadata_value(name or path.name)},
                          callback=callback)
        if verify:
            after = store.head(key)
            if after is None or after.size != size or after.sha256 != digest:
                raise StorageError(store.url(key), "checksum mismatch after upload")
    except SkySurveyError as exc:
        return UploadResult(str(path), key, "failed", size, str(exc))
    return UploadResult(str(path), key, "uploaded", size)


def _refused(paths: list[Path], keys: list[str]) -> dict[int, str]:
    """Index -> error for files outside the root, or sharing an object key or an image id
    (all of those fail, none is uploaded)."""
    errors: dict[int, str] = {}
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key.startswith("../"):
            errors[i] = f"{paths[i]}: outside the input folder; not uploaded"
        by_key.setdefault(key, []).append(i)
    for group in by_key.values():
        for i in group if len(group) > 1 else ():
            others = ", ".join(str(paths[j]) for j in group if j != i)
            errors.setdefault(i, f"{paths[i]}: same object key {keys[i]!r} as {others}; "
                                 "none of them was uploaded")
    for i, others in colliding_ids(keys).items():
        errors.setdefault(i, f"{paths[i]}: image id {image_id_from_name(keys[i])!r} also "
                             f"comes from {', '.join(str(paths[j]) for j in others)}; rename "
                             "one of them (none of them was uploaded)")
    return errors


def upload_files(paths: Iterable[Path], bucket_uri: str, *, root: str | os.PathLike | None = None,
                 prefix: str = "images/", verify: bool = True, progress: bool = False,
                 on_done: Callable[[UploadResult], None] | None = None) -> list[UploadResult]:
    """Upload every path to ``<prefix><path relative to root>``; failures are results.

    *root* defaults to the paths' common folder. The relative path is kept
    (``night1/field.fits`` -> ``images/night1/field.fits``), so the image id is the same as
    when the folder is processed locally. Files that would share an object key or an image
    id all fail by name, without uploading any of them.

    Parameters
    ----------
    paths : iterable of pathlib.Path
        Local files (duplicates uploaded once).
    bucket_uri : str
        ``s3://bucket[/prefix]`` (or a local folder, for tests).
    root : str or os.PathLike, optional
        The folder the keys are relative to (default: the paths' common folder).
    prefix : str
        Key prefix inside the bucket.
    verify : bool
        Compare the stored object's SHA-256 with the file's (and skip identical objects).
    progress : bool
        Show a progress bar (bytes).
    on_done : callable, optional
        Called with each :class:`UploadResult` as soon as it is known.

    Returns
    -------
    list of UploadResult
        One per path, in order: ``uploaded``, ``skipped`` or ``failed`` (with the error).
    """
    paths = list(dict.fromkeys(Path(p) for p in paths))
    if not paths:
        return []
    base = Path(root) if root is not None else Path(
        os.path.commonpath([str(p.absolute().parent) for p in paths]))
    keys = [Path(os.path.relpath(p.absolute(), base.absolute())).as_posix() for p in paths]
    store = open_store(bucket_uri)
    store.prepare()
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    refused = _refused(paths, keys)
    from tqdm import tqdm

    results = []
    with tqdm(total=sum(p.stat().st_size for i, p in enumerate(paths) if i not in refused),
              unit="B", unit_scale=True, disable=not progress, desc="upload") as bar:
        for i, (path, key) in enumerate(zip(paths, keys, strict=True)):
            if i in refused:
                result = UploadResult(str(path), prefix + key, "failed", 0, one_line(refused[i]))
            else:
                result = upload_one(store, path, prefix + key, verify=verify, name=key,
                                    callback=bar.update)
            results.append(result)
            if on_done:
                on_done(result)
    return results
