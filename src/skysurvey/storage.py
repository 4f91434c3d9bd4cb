"""Buckets: a local folder or an S3 prefix, behind the same small interface.

``open_store("s3://bucket/prefix")`` gives an :class:`S3Store`; any other string a
:class:`LocalStore` rooted at that folder (the local mode's "bucket"). Keys are always
POSIX-style relative paths (``images/sky_r_000.fits``). Writes are atomic on both: a local
write goes to a temporary name in the same folder and is renamed; an S3 PUT is atomic by nature.
Listing a bucket or folder that does not exist raises :class:`StorageError` (it never looks
like "no images").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import aws
from .config import is_s3_uri, parse_s3_uri
from .errors import StorageError

CHUNK = 8 * 1024 * 1024


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


def open_store(uri: str | os.PathLike) -> LocalStore | S3Store:
    """The store for *uri*: ``s3://bucket[/prefix]`` or a local folder."""
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
        return str(self._path(key))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root != path and self.root not in path.parents:
            raise StorageError(key, "key escapes the store's folder")
        return path

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every file under *prefix* (recursively), sorted by key; temporary files skipped."""
        if not self.root.is_dir():
            raise StorageError(str(self.root), "folder does not exist")
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                yield ObjectInfo(path.relative_to(self.root).as_posix(), path.stat().st_size)

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key, path.stat().st_size, sha256_file(path))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(self.url(key), "no such file") from None
        except OSError as exc:
            raise StorageError(self.url(key), exc.strerror or str(exc)) from None

    def local_path(self, key: str) -> Path:
        """The file itself (no copy is needed locally)."""
        path = self._path(key)
        if not path.is_file():
            raise StorageError(self.url(key), "no such file")
        return path

    def _atomic(self, key: str, fill: Callable[[Path], None]) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        os.close(fd)
        try:
            fill(Path(tmp))
            os.replace(tmp, dest)
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

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def clear(self, prefix: str) -> None:
        """Remove everything under *prefix*."""
        shutil.rmtree(self._path(prefix), ignore_errors=True)


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

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(self.prefix):], int(obj["Size"]))
        except Exception as exc:
            raise aws.translate(exc, self.url(prefix)) from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if aws.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise aws.translate(exc, self.url(key)) from None
        meta = resp.get("Metadata", {})
        return ObjectInfo(key, int(resp["ContentLength"]), meta.get("sha256"), meta)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def read_bytes(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read()
        except Exception as exc:
            raise aws.translate(exc, self.url(key)) from None

    def download(self, key: str, path: str | os.PathLike) -> Path:
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except Exception as exc:
            Path(path).unlink(missing_ok=True)
            raise aws.translate(exc, self.url(key)) from None
        return Path(path)

    def write_bytes(self, key: str, data: bytes, *, content_type: str | None = None,
                    metadata: dict[str, str] | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        meta = {"sha256": hashlib.sha256(data).hexdigest(), **(metadata or {})}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   Metadata=meta, ChecksumAlgorithm="SHA256",
                                   ServerSideEncryption="AES256", **extra)
        except Exception as exc:
            raise aws.translate(exc, self.url(key)) from None

    def upload_file(self, path: str | os.PathLike, key: str, *, content_type: str | None = None,
                    metadata: dict[str, str] | None = None,
                    callback: Callable[[int], None] | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        extra = {"Metadata": {"sha256": sha256_file(path), **(metadata or {})},
                 "ServerSideEncryption": "AES256", "ChecksumAlgorithm": "SHA256"}
        if content_type:
            extra["ContentType"] = content_type
        config = TransferConfig(multipart_threshold=16 * 1024 * 1024,
                                multipart_chunksize=16 * 1024 * 1024)
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=extra,
                                    Config=config, Callback=callback)
        except Exception as exc:
            raise aws.translate(exc, self.url(key)) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise aws.translate(exc, self.url(key)) from None

    def clear(self, prefix: str) -> None:
        keys = [o.key for o in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
