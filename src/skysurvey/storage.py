"""Buckets: a local folder or an S3 prefix, behind the same small interface.

``open_store("s3://bucket/prefix")`` gives an :class:`S3Store`; any other string a
:class:`LocalStore` rooted at that folder (the local mode's "bucket"). Keys are always
POSIX-style relative paths (``images/sky_r_000.fits``). Writes are atomic on both: a local
write goes to a temporary name in the same folder and is renamed; an S3 PUT is atomic by nature.
Listing a bucket or folder that does not exist raises :class:`StorageError` (it never looks
like "no images"); a file the listing cannot follow (a symlink loop, a link out of the folder,
an unreadable subfolder, a name that is not UTF-8) is reported to ``on_skip``, never dropped
in silence. Both stores have the same methods, so nothing outside this module asks which one
it has: ``with store.local_file(key) as path`` is the file itself locally and a temporary
download on S3. ``read_bytes_or_none(key)`` reads a key that may be missing in one request (a GET,
no HEAD before it); ``copy(src, dst)`` copies inside the store (S3: server side, no byte passes
through the caller). ``read_versioned`` and ``write_bytes_if`` are a compare-and-swap (S3's
conditional writes; a lock file locally) for what several runs may update at once. S3
failures become :class:`StorageError` (:class:`TransientStorageError` for throttling, 5xx and
timeouts); only botocore's and boto3's own exceptions are translated, so a
bug is never reported as a storage error.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

try:  # POSIX (Linux, macOS): the kernel drops a dead holder's lock
    import fcntl
except ImportError:  # elsewhere: an O_EXCL file, taken over when stale
    fcntl = None

from . import aws
from .config import is_s3_uri, parse_s3_uri
from .errors import StorageError, TransientStorageError

__all__ = [
    "CHANGED_MEANWHILE",
    "CHUNK",
    "COPY_OBJECT_MAX",
    "LOCK_STALE_SECONDS",
    "MULTIPART",
    "NOT_FOUND",
    "LocalStore",
    "ObjectInfo",
    "S3Store",
    "Skipped",
    "local_root",
    "new_file_mode",
    "open_store",
    "replace_dir",
    "sha256_file",
]

CHUNK = 8 * 1024 * 1024
#: Objects above this size go to S3 in parts (upload) or are copied in parts (copy).
MULTIPART = 16 * 1024 * 1024
#: The largest object one CopyObject request can copy (5 GiB); above it, a multipart copy.
COPY_OBJECT_MAX = 5 * 1024**3
#: S3 error codes of a missing key (a HEAD has no body, so only its status code says it).
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
#: S3 replies to a conditional write whose condition no longer holds: the ETag changed (412),
#: another conditional write is in flight (409), or the object is gone (an If-Match on a
#: deleted key).
CHANGED_MEANWHILE = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict",
                               "409"}) | NOT_FOUND
#: Without flock (not POSIX): a local lock file older than this is from a killed process (a
#: write takes milliseconds).
LOCK_STALE_SECONDS = 60.0
#: Temporary names of atomic local writes: ``.tmp-<random>.partial``. Only names with both
#: the prefix and the suffix are the store's own (a user's ``.tmp-x.fits`` is listed).
TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".partial"


@dataclass(frozen=True)
class Skipped:
    """An entry the listing could not follow: its key (relative path) and why."""

    key: str
    cause: str
    folder: bool = False  # a whole folder (its files are unknown)


def _is_own_temp(name: str) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None  # hex digest when the store knows it without reading
    metadata: dict[str, str] = field(default_factory=dict)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def open_store(uri: str | os.PathLike) -> LocalStore | S3Store:
    """The store for *uri*: ``s3://bucket[/prefix]`` or a local folder.

    Parameters
    ----------
    uri : str or os.PathLike
        ``s3://bucket[/prefix]`` or a local folder (``~`` expanded; need not exist yet).

    Returns
    -------
    LocalStore or S3Store
        Nothing is read or created until the store is used.
    """
    if is_s3_uri(uri):
        loc = parse_s3_uri(str(uri))
        return S3Store(loc.bucket, loc.prefix)
    return LocalStore(uri)


class LocalStore:
    """A folder used as a bucket."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    @property
    def uri(self) -> str:
        return str(self.root)

    def url(self, key: str) -> str:
        """The file's path as given (symlinks not resolved), for messages and records."""
        return str(self.root / key)

    def _path(self, key: str) -> Path:
        try:
            path = (self.root / key).resolve()
        except RuntimeError:  # Python < 3.13 reports a symlink loop so, not as an OSError
            raise StorageError(str(self.root / key), "symlink loop") from None
        if self.root != path and self.root not in path.parents:
            raise StorageError(str(self.root / key), "key escapes the store's folder")
        return path

    def root_exists(self) -> bool:
        """True when the folder exists (a catalog before its first run has none)."""
        return self.root.is_dir()

    def prepare(self) -> None:
        """Create the folder if needed (a local "bucket" is just a folder)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(self.uri, f"cannot create the folder ({_why(exc)})") from None

    def check_writable(self) -> None:
        """Raise StorageError unless a file can be created here (before any work is done)."""
        self.prepare()
        try:
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=self.root)
        except OSError as exc:
            raise StorageError(self.uri, f"cannot write here ({_why(exc)})") from None
        os.close(fd)
        os.unlink(tmp)

    def list(self, prefix: str = "", *,
             on_skip: Callable[[Skipped], None] | None = None) -> Iterator[ObjectInfo]:
        """Every file under the folder *prefix* (recursively), sorted by key.

        The store's own temporary files are left out. Entries it cannot follow (symlink loops,
        broken links, links to files outside the folder, links to folders, unreadable folders,
        names that are not UTF-8, sockets and pipes) go to *on_skip* instead.
        """
        if not self.root.is_dir():
            raise StorageError(str(self.root), "folder does not exist")
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        skip = on_skip or (lambda _s: None)
        found = []

        def unreadable(exc: OSError) -> None:
            skip(Skipped(self._relative(Path(exc.filename)),
                         f"unreadable folder ({_why(exc)})", folder=True))

        for dirpath, dirnames, filenames in os.walk(base, onerror=unreadable):
            folder = Path(dirpath)
            for name in sorted(dirnames):
                if (folder / name).is_symlink():
                    skip(self._link_to_folder(folder / name))
            for name in filenames:
                if _is_own_temp(name):
                    continue
                info = self._file_info(folder / name, skip)
                if info is not None:
                    found.append(info)
        yield from sorted(found, key=lambda i: i.key)

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _link_to_folder(self, path: Path) -> Skipped:
        target = path.resolve()
        inside = self.root == target or self.root in target.parents
        where = "inside the folder: its files are listed there" if inside else "out of the folder"
        return Skipped(self._relative(path), f"symlink to a folder {where} (not followed)",
                       folder=not inside)

    def _file_info(self, path: Path, skip: Callable[[Skipped], None]) -> ObjectInfo | None:
        key = self._relative(path)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            skip(Skipped(key, "file name is not valid UTF-8 (rename it)"))
            return None
        try:
            st = path.stat()
        except OSError as exc:
            cause = {errno.ELOOP: "symlink loop", errno.ENOENT: "broken symlink"}.get(
                exc.errno, _why(exc))
            skip(Skipped(key, cause))
            return None
        if not stat.S_ISREG(st.st_mode):
            skip(Skipped(key, "not a regular file"))
            return None
        if path.is_symlink():
            target = path.resolve()
            if self.root not in target.parents:
                skip(Skipped(key, f"symlink to a file outside the folder ({target})"))
                return None
        return ObjectInfo(key, st.st_size)

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key, path.stat().st_size, sha256_file(path))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        data = self.read_bytes_or_none(key)
        if data is None:
            raise StorageError(self.url(key), "no such file")
        return data

    def read_bytes_or_none(self, key: str) -> bytes | None:
        """The file's bytes, or None when nothing is at *key* (no file, a broken symlink, or a
        file where a folder of the key should be). A folder at *key* or a file that cannot be
        read (permissions, a symlink loop) raises StorageError."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(self.url(key), _why(exc)) from None

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """The bytes at *key* and their version (here the SHA-256 of the content), or
        ``(None, None)``: what :meth:`write_bytes_if` compares against."""
        data = self.read_bytes_or_none(key)
        return (None, None) if data is None else (data, hashlib.sha256(data).hexdigest())

    def write_bytes_if(self, key: str, data: bytes, *, version: str | None,
                       content_type: str | None = None) -> str | None:
        """Write *data* only if *key* still holds *version* (None: only if nothing is there);
        returns the new version, or None when another writer changed *key* first. Atomic
        between processes through a lock beside *key* (:func:`_exclusive`: a killed holder's
        lock does not outlive it)."""
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(str(dest), f"cannot write ({_why(exc)})") from None
        with _exclusive(dest.with_name(f"{TMP_PREFIX}{dest.name}.lock{TMP_SUFFIX}")):
            if self.read_versioned(key)[1] != version:
                return None
            self.write_bytes(key, data, content_type=content_type)
        return hashlib.sha256(data).hexdigest()

    @contextlib.contextmanager
    def local_file(self, key: str, *, tmp_dir: str | None = None) -> Iterator[Path]:
        """The file itself (no copy is needed locally)."""
        path = self._path(key)
        if not path.is_file():
            raise StorageError(self.url(key), "no such file")
        yield path

    def _atomic(self, key: str, fill: Callable[[Path], None]) -> None:
        """Fill a temporary file beside *key* and rename it into place; it gets the mode any
        new file gets under the umask (mkstemp's 0600 hid catalogs from other users)."""
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=dest.parent)
        except OSError as exc:
            raise StorageError(str(dest), f"cannot write ({_why(exc)})") from None
        os.close(fd)
        try:
            fill(Path(tmp))
            os.chmod(tmp, new_file_mode())
            os.replace(tmp, dest)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StorageError(str(dest), f"cannot write ({_why(exc)})") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_bytes(self, key: str, data: bytes, *, content_type: str | None = None,
                    metadata: dict[str, str] | None = None) -> None:
        self._atomic(key, lambda tmp: tmp.write_bytes(data))

    def upload_file(self, path: str | os.PathLike, key: str, *, content_type: str | None = None,
                    metadata: dict[str, str] | None = None,
                    callback: Callable[[int], None] | None = None) -> None:
        def fill(tmp: Path) -> None:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if callback:
                        callback(len(chunk))
        self._atomic(key, fill)

    def copy(self, src_key: str, dst_key: str, *, size: int | None = None) -> None:
        """Copy *src_key* to *dst_key*, atomically (a temporary file renamed into place), with
        the mode a new file gets. *size* is for the S3 store's sake (unused here)."""
        src = self._path(src_key)
        if not src.is_file():
            raise StorageError(self.url(src_key), "no such file")
        self._atomic(dst_key, lambda tmp: shutil.copyfile(src, tmp))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(self.url(key), f"cannot delete ({_why(exc)})") from None

    def clear(self, prefix: str) -> None:
        """Remove everything under *prefix*."""
        shutil.rmtree(self._path(prefix), ignore_errors=True)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


@contextlib.contextmanager
def _exclusive(lock: Path, wait: float = 10.0) -> Iterator[None]:
    """Hold *lock* for the block: one process at a time, waiting up to *wait* seconds.

    On POSIX an ``flock`` on the file: the kernel releases it when its holder exits, killed
    or not, so a run killed while holding it never blocks the next one; the holder removes
    the file while it still holds it, and a waiter keeps only a lock on the file the path
    names (not one removed meanwhile). Elsewhere (:func:`_exclusive_file`) a file created
    with ``O_EXCL``, taken over after :data:`LOCK_STALE_SECONDS`."""
    if fcntl is None:
        with _exclusive_file(lock, wait):
            yield
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_WRONLY, 0o600)
        except OSError as exc:
            raise StorageError(str(lock.parent), f"cannot lock ({_why(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise TransientStorageError(str(lock.parent), f"locked by another process "
                                            f"({lock.name})") from None
            time.sleep(0.01)
            continue
        except OSError as exc:
            os.close(fd)
            raise StorageError(str(lock.parent), f"cannot lock ({_why(exc)})") from None
        try:
            now = os.stat(lock)
            mine = os.fstat(fd)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed it after we opened it: again
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def _exclusive_file(lock: Path, wait: float = 10.0) -> Iterator[None]:
    """:func:`_exclusive` without ``flock``: a file created with ``O_EXCL``; one left by a
    killed process is taken over once its age passes :data:`LOCK_STALE_SECONDS`."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            break
        except FileExistsError:
            try:
                stale = time.time() - lock.stat().st_mtime > LOCK_STALE_SECONDS
            except FileNotFoundError:
                continue  # released meanwhile
            if stale:
                lock.unlink(missing_ok=True)
            elif time.monotonic() > deadline:
                raise TransientStorageError(str(lock.parent), f"locked by another process "
                                            f"({lock.name})") from None
            else:
                time.sleep(0.01)
        except OSError as exc:
            raise StorageError(str(lock.parent), f"cannot lock ({_why(exc)})") from None
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


class S3Store:
    """An S3 bucket (optionally under a prefix) through boto3."""

    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = aws.client("s3")
        return self._client

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def root_exists(self) -> bool:
        """Always True: a missing bucket is an error when it is used, not an empty catalog."""
        return True

    def prepare(self) -> None:
        """Nothing to do: buckets are created by setup_aws.py."""

    def check_writable(self) -> None:
        """Raise StorageError unless an object can be written here (a probe, then deleted)."""
        key = f".write-probe-{uuid.uuid4().hex}"
        self.write_bytes(key, b"")
        self.delete(key)

    def list(self, prefix: str = "", *,
             on_skip: Callable[[Skipped], None] | None = None) -> Iterator[ObjectInfo]:
        """Every object under *prefix*, in key order (folder markers ``x/`` left out)."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        yield ObjectInfo(obj["Key"][len(self.prefix):], int(obj["Size"]))
        except aws.botocore_errors() as exc:
            raise aws.translate(exc, self.url(prefix)) from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except aws.botocore_errors() as exc:
            if aws.error_code(exc) in NOT_FOUND:
                return None
            raise aws.translate(exc, self.url(key)) from None
        meta = resp.get("Metadata", {})
        return ObjectInfo(key, int(resp["ContentLength"]), meta.get("sha256"), meta)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def read_bytes(self, key: str) -> bytes:
        data = self.read_bytes_or_none(key)
        if data is None:
            raise StorageError(self.url(key), "no such object")
        return data

    def read_bytes_or_none(self, key: str) -> bytes | None:
        """The object's bytes, or None when the key does not exist: one GET (no HEAD first).
        A missing bucket, a denied access or any other failure raises StorageError."""
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and ETag (one GET), or ``(None, None)`` when there is none."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read(), resp["ETag"]
        except aws.botocore_errors() as exc:
            if aws.error_code(exc) in NOT_FOUND:
                return None, None
            raise aws.translate(exc, self.url(key)) from None

    def write_bytes_if(self, key: str, data: bytes, *, version: str | None,
                       content_type: str | None = None) -> str | None:
        """Write *data* only if the object still has ETag *version* (None: only if there is
        no object): S3's conditional write (``If-Match`` / ``If-None-Match: *``), one PUT.
        Returns the new ETag, or None when another writer changed the key first (412, or 409
        for a conditional write racing another)."""
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        extra = {"ContentType": content_type} if content_type else {}
        try:
            resp = self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ChecksumAlgorithm="SHA256",
                Metadata={"sha256": hashlib.sha256(data).hexdigest()},
                ServerSideEncryption="AES256", **condition, **extra)
        except aws.botocore_errors() as exc:
            if aws.error_code(exc) in CHANGED_MEANWHILE:
                return None
            raise aws.translate(exc, self.url(key)) from None
        return resp["ETag"]

    @contextlib.contextmanager
    def local_file(self, key: str, *, tmp_dir: str | None = None) -> Iterator[Path]:
        """A temporary download of *key* (same suffixes), removed on exit (warm Lambda
        containers reuse /tmp)."""
        suffix = "".join(PurePosixPath(key).suffixes[-2:])[-16:]
        fd, tmp = tempfile.mkstemp(suffix=suffix, dir=tmp_dir)
        os.close(fd)
        try:
            try:
                self.client.download_file(self.bucket, self._key(key), tmp)
            except aws.botocore_errors() as exc:
                raise aws.translate(exc, self.url(key)) from None
            yield Path(tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes, *, content_type: str | None = None,
                    metadata: dict[str, str] | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        meta = {"sha256": hashlib.sha256(data).hexdigest(), **(metadata or {})}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   Metadata=meta, ChecksumAlgorithm="SHA256",
                                   ServerSideEncryption="AES256", **extra)
        except aws.botocore_errors() as exc:
            raise aws.translate(exc, self.url(key)) from None

    def upload_file(self, path: str | os.PathLike, key: str, *, content_type: str | None = None,
                    metadata: dict[str, str] | None = None,
                    callback: Callable[[int], None] | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        extra = {"Metadata": {"sha256": sha256_file(path), **(metadata or {})},
                 "ServerSideEncryption": "AES256", "ChecksumAlgorithm": "SHA256"}
        if content_type:
            extra["ContentType"] = content_type
        config = TransferConfig(multipart_threshold=MULTIPART, multipart_chunksize=MULTIPART)
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=extra,
                                    Config=config, Callback=callback)
        except aws.botocore_errors() as exc:
            raise aws.translate(exc, self.url(key)) from None

    def copy(self, src_key: str, dst_key: str, *, size: int | None = None) -> None:
        """Copy *src_key* to *dst_key* inside S3 (no byte passes through this machine); the
        copy keeps the object's content type and metadata (its ``sha256``) and is encrypted.

        With *size* known (from a listing) and at most 5 GiB: one CopyObject request. Else
        boto3's managed copy, which asks the size first (a HEAD) and copies in parts
        (UploadPartCopy) above :data:`MULTIPART`.
        """
        from boto3.s3.transfer import TransferConfig

        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        extra = {"ServerSideEncryption": "AES256", "ChecksumAlgorithm": "SHA256"}
        try:
            if size is not None and size <= COPY_OBJECT_MAX:
                self.client.copy_object(CopySource=source, Bucket=self.bucket,
                                        Key=self._key(dst_key), **extra)
            else:
                config = TransferConfig(multipart_threshold=MULTIPART,
                                        multipart_chunksize=MULTIPART)
                self.client.copy(source, self.bucket, self._key(dst_key), ExtraArgs=extra,
                                 Config=config)
        except aws.botocore_errors() as exc:
            raise aws.translate(exc, f"{self.url(src_key)} (copy to {dst_key})") from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except aws.botocore_errors() as exc:
            raise aws.translate(exc, self.url(key)) from None

    def clear(self, prefix: str) -> None:
        keys = [o.key for o in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
            except aws.botocore_errors() as exc:
                raise aws.translate(exc, self.url(prefix)) from None


# ---------------------------------------------------------------------------------------
# Folders swapped whole (a local store's tables; a HATS export)


def local_root(store: LocalStore | S3Store) -> Path | None:
    """The folder behind *store* when it is local (its folders can be renamed, its files
    hard-linked), None for S3: what a caller needing whole folders asks instead of the type.

    Parameters
    ----------
    store : LocalStore or S3Store
        A store from :func:`open_store`.

    Returns
    -------
    pathlib.Path or None
        The store's resolved root folder, or None.
    """
    return store.root if isinstance(store, LocalStore) else None


def _exchange(a: Path, b: Path) -> bool:
    """Exchange two directories atomically (Linux renameat2 RENAME_EXCHANGE); False if not."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def replace_dir(new: Path, target: Path, old: Path) -> None:
    """Put the directory *new* in place of *target* and delete the previous version.

    An atomic exchange where Linux has one, else two renames through *old*.

    Parameters
    ----------
    new : pathlib.Path
        The finished directory (it is gone afterwards).
    target : pathlib.Path
        Where it goes; need not exist.
    old : pathlib.Path
        A free path beside *target*, used only without an atomic exchange.
    """
    if not target.exists():
        new.rename(target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now the previous version
        return
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
