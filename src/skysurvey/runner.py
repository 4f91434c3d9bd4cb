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
from pathlib import PurePosixPath

from .pipeline import PipelineConfig, catalog_image
from .schema import image_id_from_file_stem, image_id_from_name, is_fits_name
from .storage import LocalStore, open_store


def list_images(uri: str, prefix: str = "") -> list[str]:
    """Keys of every FITS file under *uri*/*prefix*, sorted. A missing bucket or folder raises."""
    store = open_store(uri)
    return [info.key for info in store.list(prefix) if is_fits_name(info.key)]


def catalogued_image_ids(catalog_uri: str) -> set[str]:
    """Image ids that already have an image record in the catalog (for ``--only-new``)."""
    store = open_store(catalog_uri)
    if isinstance(store, LocalStore) and not store.root.is_dir():
        return set()  # first run: no catalog folder yet
    return {image_id_from_file_stem(PurePosixPath(i.key).name.removesuffix(".parquet"))
            for i in store.list("images/") if i.key.endswith(".parquet")}


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _work(raw_uri: str, key: str, catalog_uri: str, config: PipelineConfig) -> dict:
    return catalog_image(open_store(raw_uri), key, open_store(catalog_uri), config)


def _died(key: str, why: str) -> dict:
    return {"status": "error", "image_id": image_id_from_name(key), "key": key, "n_sources": 0,
            "catalog_key": None, "seconds": 0.0, "error": f"{key}: {why}"}


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
    """0 when every image succeeded (or was queued), 1 when any failed."""
    return 0 if all(r["status"] in OK_STATUSES for r in replies) else 1


def summary_table(replies: Sequence[dict], seconds: float, backend: str = "local") -> str:
    """The table that ends a run, then one line per failed image."""
    ok = [r for r in replies if r["status"] in OK_STATUSES]
    failed = [r for r in replies if r["status"] not in OK_STATUSES]
    n_sources = sum(int(r.get("n_sources") or 0) for r in ok)
    rate = len(replies) / seconds if seconds > 0 else 0.0
    rows = [
        ("backend", backend),
        ("images", str(len(replies))),
        ("succeeded", str(len(ok))),
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
        lines += [f"  {r.get('error') or r.get('image_id')}" for r in failed]
    return "\n".join(lines)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
