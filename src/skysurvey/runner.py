"""Run the handler's core over many images: in-process or in a local process pool.

The AWS Lambda backend (``skysurvey.lambda_backend``) returns the same replies, so both share
:func:`summary_table` and :func:`exit_status`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from .config import is_s3_uri, parse_s3_uri
from .errors import StorageError, one_line, printable
from .pipeline import PipelineConfig, catalog_image, make_reply
from .schema import (
    RAW_IMAGES_PREFIX,
    image_id_from_file_stem,
    image_id_from_name,
    is_fits_name,
)
from .storage import Skipped, open_store

__all__ = [
    "OK_STATUSES",
    "Inputs",
    "Timer",
    "catalogued_image_ids",
    "colliding_ids",
    "default_workers",
    "exit_status",
    "find_inputs",
    "list_images",
    "run_local",
    "split_collisions",
    "summary_table",
]

_GLOB_CHARS = frozenset("*?[")


@dataclass
class Inputs:
    """What ``--input`` names: FITS keys relative to one root, and what was left out."""

    root: str  # folder or s3:// prefix the keys are relative to (the image ids come from it)
    keys: list[str] = field(default_factory=list)  # FITS inputs, sorted
    skipped: list[Skipped] = field(default_factory=list)  # entries the lister could not follow
    not_fits: list[str] = field(default_factory=list)  # other files (not failures)

    def failures(self) -> list[dict]:
        """An error reply per input that could not be read: FITS-named files and folders."""
        store = open_store(self.root)
        replies = []
        for s in self.skipped:
            if s.folder or is_fits_name(s.key):
                reply = make_reply(s.key, "error", error=f"{store.url(s.key)}: skipped: {s.cause}")
                replies.append({**reply, "image_id": None} if s.folder else reply)
        return replies

    def notes(self) -> list[str]:
        """One line per skipped entry that is not a failure (links to folders inside)."""
        return [f"{printable(s.key)}: {s.cause}" for s in self.skipped
                if not (s.folder or is_fits_name(s.key))]


def _has_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def _glob_matcher(pattern: str) -> Callable[[str], bool]:
    """A shell glob over relative keys, folder by folder (:func:`fnmatch.fnmatchcase` on each
    part): ``*`` and ``?`` stay within one folder, ``**`` matches any number of folders."""
    parts = tuple(pattern.split("/"))

    def match(pat: tuple[str, ...], key: tuple[str, ...]) -> bool:
        if not pat:
            return not key
        if pat[0] == "**":
            return any(match(pat[1:], key[i:]) for i in range(len(key) + 1))
        return bool(key) and fnmatchcase(key[0], pat[0]) and match(pat[1:], key[1:])

    return lambda key: match(parts, tuple(key.split("/")))


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``(folder, pattern below it or None)``: a glob's literal leading folders are its root."""
    if not _has_glob(spec):
        return spec, None
    parts = spec.split("/")
    literal = next(i for i, part in enumerate(parts) if _has_glob(part))
    return "/".join(parts[:literal]) or ".", "/".join(parts[literal:])


def _common_root(folders: Sequence[str]) -> str:
    if all(is_s3_uri(f) for f in folders):
        locs = [parse_s3_uri(f.rstrip("/") + "/") for f in folders]
        if len({loc.bucket for loc in locs}) > 1:
            raise StorageError(", ".join(folders), "inputs in several buckets: give one at a time")
        prefix = os.path.commonpath(["/" + loc.prefix for loc in locs]).strip("/")
        return f"s3://{locs[0].bucket}/{prefix}".rstrip("/")
    if any(is_s3_uri(f) for f in folders):
        raise StorageError(", ".join(folders), "mix of local and s3:// inputs: give one kind")
    return os.path.commonpath([os.path.abspath(os.path.expanduser(f)) for f in folders])


def find_inputs(specs: str | Sequence[str]) -> Inputs:
    """Resolve ``--input``: a folder (or s3:// prefix), one file, several files, or globs.

    The root is the folder for a folder, the file's folder for one file, the literal leading
    folders for a glob (``data/*/*.fits`` -> ``data``) and the common folder of several; keys
    (and so image ids) are relative to it, so ``--input data`` and ``--input 'data/*/*.fits'``
    give the same ids. A folder is listed recursively; entries it cannot follow are kept in
    ``skipped`` with their cause. A missing folder or file raises StorageError.

    Parameters
    ----------
    specs : str or sequence of str
        What ``--input`` gave: folders, ``s3://`` prefixes, files or globs.

    Returns
    -------
    Inputs
        The root, the FITS keys below it, and what was skipped or is not FITS.

    Raises
    ------
    StorageError
        When a named folder or file does not exist.
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise StorageError("--input", "no input given")
    split = [_split_spec(str(s)) for s in specs]
    if (len(specs) == 1 and split[0][1] is None and _is_folder(specs[0])
            and _raw_images_root(specs[0]) == specs[0]):
        return _scan(specs[0], lambda key: True)
    roots = []
    for spec, (folder, pattern) in zip(specs, split, strict=True):
        if pattern is None and not _is_folder(spec):  # a file: its folder
            folder = spec.rstrip("/").rsplit("/", 1)[0] if "/" in spec.rstrip("/") else "."
        roots.append(folder)
    root = _raw_images_root(_common_root(roots))
    files, matchers, bases = [], [], []
    for spec, folder, (_, pattern) in zip(specs, roots, split, strict=True):
        base = _relative_to(root, folder)
        if pattern is None and not _is_folder(spec):  # a file: no listing needed
            name = spec.rstrip("/").rsplit("/", 1)[-1]
            key = f"{base}/{name}" if base else name
            if not open_store(root).exists(key):
                raise StorageError(spec, "no such file or folder")
            files.append(key)
            continue
        bases.append(base)
        matchers.append(_glob_matcher(f"{base}/{pattern}" if base else pattern)
                        if pattern is not None
                        else (lambda key, b=base: not b or key.startswith(b + "/")))
    inputs = Inputs(root)
    if matchers:  # list only below the folders the globs and folders share
        prefix = os.path.commonpath(bases) if all(bases) else ""
        inputs = _scan(root, lambda key: any(match(key) for match in matchers),
                       prefix + "/" if prefix else "")
    for key in files:
        if key not in inputs.keys and key not in inputs.not_fits:
            (inputs.keys if is_fits_name(key) else inputs.not_fits).append(key)
    inputs.keys.sort()
    return inputs


def _raw_images_root(root: str) -> str:
    """``s3://bucket/images`` for any root inside it: in the raw bucket, ids are the path
    below ``images/`` (as the handler computes them for S3 notifications), whatever the input
    prefix; other roots are kept."""
    if is_s3_uri(root):
        loc = parse_s3_uri(root.rstrip("/") + "/")
        if loc.prefix.startswith(RAW_IMAGES_PREFIX):
            return f"s3://{loc.bucket}/{RAW_IMAGES_PREFIX.rstrip('/')}"
    return root


def _is_folder(spec: str) -> bool:
    if is_s3_uri(spec):
        return not is_fits_name(spec)  # an s3:// input is a prefix unless it names a FITS file
    return os.path.isdir(os.path.expanduser(spec))


def _relative_to(root: str, folder: str) -> str:
    if is_s3_uri(root):
        loc, sub = parse_s3_uri(root + "/"), parse_s3_uri(folder.rstrip("/") + "/")
        return sub.prefix[len(loc.prefix):].strip("/")
    rel = os.path.relpath(os.path.abspath(os.path.expanduser(folder)), root)
    return "" if rel == "." else rel.replace(os.sep, "/")


def _scan(root: str, wanted, prefix: str = "") -> Inputs:
    inputs = Inputs(root)
    for info in open_store(root).list(prefix, on_skip=inputs.skipped.append):
        if wanted(info.key):
            (inputs.keys if is_fits_name(info.key) else inputs.not_fits).append(info.key)
    inputs.skipped = [s for s in inputs.skipped if s.folder or wanted(s.key)]
    return inputs


def list_images(uri: str, prefix: str = "") -> list[str]:
    """Keys of every FITS file under *uri*/*prefix*, sorted. A missing bucket or folder raises.

    Parameters
    ----------
    uri : str
        A folder or ``s3://`` bucket/prefix.
    prefix : str, optional
        A prefix below it (``images/`` for the raw bucket).

    Returns
    -------
    list of str
        The FITS files' keys, relative to *uri*.
    """
    store = open_store(uri)
    return [info.key for info in store.list(prefix) if is_fits_name(info.key)]


def split_collisions(raw_uri: str, keys: Sequence[str]) -> tuple[list[str], list[dict]]:
    """``(keys to process, error replies)``: inputs that share an image id are all refused,
    each reply naming the others (``x.fits`` beside ``x.fits.gz``, ``a__b/c.fits`` beside
    ``a/b__c.fits``); processing either would overwrite the other's catalog.

    Parameters
    ----------
    raw_uri : str
        The input root (for the messages).
    keys : sequence of str
        The inputs' keys.

    Returns
    -------
    keys : list of str
        The inputs whose image id no other input shares.
    replies : list of dict
        An error reply for each of the others.
    """
    store = open_store(raw_uri)
    shared = colliding_ids(keys)
    ok, refused = [], []
    for i, key in enumerate(keys):
        if i not in shared:
            ok.append(key)
            continue
        others = ", ".join(store.url(keys[j]) for j in shared[i])
        refused.append(make_reply(key, "error", error=(
            f"{store.url(key)}: image id {image_id_from_name(key)!r} also comes from {others}; "
            "rename one of them (none of them was processed)")))
    return ok, refused


def colliding_ids(keys: Sequence[str]) -> dict[int, list[int]]:
    """For each key whose image id another key shares: its index -> the others' indices."""
    by_id: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_id.setdefault(image_id_from_name(key), []).append(i)
    return {i: [j for j in group if j != i]
            for group in by_id.values() if len(group) > 1 for i in group}


def catalogued_image_ids(catalog_uri: str) -> set[str]:
    """Image ids that already have an image record in the catalog (for ``--only-new``).

    Parameters
    ----------
    catalog_uri : str
        The catalog (local folder or ``s3://``).

    Returns
    -------
    set of str
        The image ids with an ``images`` record.
    """
    store = open_store(catalog_uri)
    if not store.root_exists():
        return set()  # first run: no catalog folder yet
    return {image_id_from_file_stem(PurePosixPath(i.key).name.removesuffix(".parquet"))
            for i in store.list("images/") if i.key.endswith(".parquet")}


def default_workers() -> int:
    """The local backend's default number of parallel images.

    Returns
    -------
    int
        The CPUs this process may run on (its affinity; the CPU count where there is none).
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _work(raw_uri: str, key: str, catalog_uri: str, config: PipelineConfig) -> dict:
    return catalog_image(open_store(raw_uri), key, open_store(catalog_uri), config)


def _died(key: str, why: str) -> dict:
    return make_reply(key, "error", error=f"{key}: {why}")


def run_local(
    raw_uri: str,
    keys: Sequence[str],
    catalog_uri: str,
    *,
    workers: int | None = None,
    config: PipelineConfig | None = None,
    on_done: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Catalog every key; replies in the order of *keys*.

    ``workers=1`` runs in this process. Otherwise a process pool (SEP holds the GIL); if a
    worker dies (killed, out of memory) the pool is rebuilt and the unfinished images are tried
    once more, each alone, so one bad image cannot take the batch with it.

    Parameters
    ----------
    raw_uri : str
        The input root (folder or ``s3://`` prefix) the keys are relative to.
    keys : sequence of str
        The images to catalog.
    catalog_uri : str
        Where the catalog goes.
    workers : int, optional
        Parallel images (None: :func:`default_workers`).
    config : PipelineConfig, optional
        Detection, reference and memory settings.
    on_done : callable, optional
        Called with each reply as it arrives (progress).

    Returns
    -------
    list of dict
        One reply per key (:func:`skysurvey.pipeline.make_reply`).
    """
    config = config or PipelineConfig()
    workers = workers or default_workers()
    replies: dict[str, dict] = {}

    def done(key: str, reply: dict) -> None:
        replies[key] = reply
        if on_done:
            on_done(reply)

    if workers == 1:
        for key in keys:
            done(key, _work(raw_uri, key, catalog_uri, config))
        return [replies[k] for k in keys]

    pending = list(dict.fromkeys(keys))
    for attempt in range(2):
        if not pending:
            break
        pool_size = workers if attempt == 0 else 1
        pending = _pool_round(raw_uri, pending, catalog_uri, config, pool_size, done)
    for key in pending:
        done(key, _died(key, "the worker process died (killed or out of memory)"))
    return [replies[k] for k in keys]


def _pool_round(raw_uri, keys, catalog_uri, config, workers, done) -> list[str]:
    """One pool over *keys*; returns the keys left unfinished by a broken pool."""
    unfinished = []
    if workers == 1:  # retry round: one fresh process per image isolates the culprit
        for key in keys:
            unfinished += _pool_round_single(raw_uri, key, catalog_uri, config, done)
        return unfinished
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_work, raw_uri, k, catalog_uri, config): k for k in keys}
        for future in as_completed(futures):
            key = futures[future]
            try:
                done(key, future.result())
            except BrokenProcessPool:
                unfinished.append(key)
    return unfinished


def _pool_round_single(raw_uri, key, catalog_uri, config, done) -> list[str]:
    with ProcessPoolExecutor(max_workers=1) as pool:
        try:
            done(key, pool.submit(_work, raw_uri, key, catalog_uri, config).result())
            return []
        except BrokenProcessPool:
            return [key]


#: Reply statuses that count as success ("queued": an asynchronous Lambda invocation accepted).
OK_STATUSES = frozenset({"ok", "queued"})


def exit_status(replies: Iterable[dict]) -> int:
    """0 when every image succeeded (or was queued), 1 when any failed.

    Parameters
    ----------
    replies : iterable of dict
        The run's replies (``status`` ``"ok"``, ``"queued"`` or ``"error"``).

    Returns
    -------
    int
        The command's exit status.
    """
    return 0 if all(r["status"] in OK_STATUSES for r in replies) else 1


def summary_table(replies: Sequence[dict], seconds: float, backend: str = "local", *,
                  already_done: int = 0, not_fits: int = 0, notes: Sequence[str] = ()) -> str:
    """The table that ends a run, then one line per failed input and what was left out.

    *already_done* (``--only-new`` skips), *not_fits* (other files in the input folder) and
    *notes* (entries skipped for a reason that is not a failure) are listed, never counted as
    failures. Every name is printed escaped (one line per entry, no terminal escapes).

    Parameters
    ----------
    replies : sequence of dict
        The run's replies.
    seconds : float
        The run's wall time.
    backend : str, optional
        ``"local"`` or ``"lambda"``.
    already_done : int, optional
        Inputs ``--only-new`` skipped.
    not_fits : int, optional
        Other files in the input folder.
    notes : sequence of str, optional
        Entries skipped for a reason that is not a failure.

    Returns
    -------
    str
        The text to print.
    """
    ok = [r for r in replies if r["status"] == "ok"]
    queued = [r for r in replies if r["status"] == "queued"]  # not in the catalog yet
    failed = [r for r in replies if r["status"] not in OK_STATUSES]
    n_sources = sum(int(r.get("n_sources") or 0) for r in ok)
    rate = len(replies) / seconds if seconds > 0 else 0.0
    rows = [
        ("backend", backend),
        ("images", str(len(replies))),
        ("succeeded", str(len(ok))),
        *([("queued (async)", str(len(queued)))] if queued else []),
        ("failed", str(len(failed))),
        ("sources", f"{n_sources:,}"),
        ("seconds", f"{seconds:.1f}"),
        ("images/s", f"{rate:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["Summary", "-" * (width + 14)]
    lines += [f"{k:<{width}}  {v:>12}" for k, v in rows]
    if failed:
        lines += ["", "Failed images:"]
        lines += [f"  {one_line(r.get('error') or str(r.get('image_id')))}" for r in failed]
    left_out = ([f"{already_done} already catalogued (--only-new)"] if already_done else []) + (
        [f"{not_fits} files not FITS (ignored)"] if not_fits else []) + list(notes)
    if left_out:
        lines += ["", "Not processed (not failures):"]
        lines += [f"  {printable(line)}" for line in left_out]
    return "\n".join(lines)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
