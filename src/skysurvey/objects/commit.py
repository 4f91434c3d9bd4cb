"""Making a build visible: staging, the swap, the build lock, recovery of an interrupted build.

A build writes its tables under ``<catalog>/.objects-staging/<token>/``; once every unit has
succeeded, the build record and a ``_complete`` marker are written there and the staged tables
are swapped in. How depends on the store, so there is one committer per store kind:

- :class:`FolderCommitter` (a local folder): the staged table folders are exchanged with the
  current ones atomically (Linux ``renameat2``), the units not rebuilt hard-linked in first;
- :class:`ObjectCommitter` (S3): the staged files are copied over the tables server side, the
  units not rebuilt stay where they are, and a marker (:data:`SWAP_KEY`) stands in the tables
  while the copies run.

A build interrupted before its marker leaves the previous tables untouched and is discarded by
the next one (:func:`recover`); one interrupted after it is finished by the next one. One
build runs at a time per catalog (:func:`build_lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..storage import local_root, replace_dir
from .model import ObjectsError
from .tables import STAGING, STATE_KEY, SWAP_KEY, TABLES, list_keys, unit_of_key

__all__ = [
    "LOCK",
    "LOCK_STALE_SECONDS",
    "FolderCommitter",
    "ObjectCommitter",
    "build_lock",
    "committer",
    "discard",
    "recover",
    "stage_and_commit",
]

#: One build at a time per catalog: ``<catalog>/.objects-build.lock`` (JSON: when, host, pid,
#: process start time, pid namespace), created by a conditional write; one whose holder's
#: liveness cannot be checked (another host, S3) and older than this is from a killed build.
LOCK, LOCK_STALE_SECONDS = ".objects-build.lock", 6 * 3600.0


class FolderCommitter:
    """Commits into a local catalog folder *root* (the store's own folder)."""

    def __init__(self, store, root: Path):
        self.store, self.root = store, root

    def staging_tokens(self) -> list[str]:
        """The builds staged here (finished or not)."""
        base = self.root / STAGING
        return sorted(p.name for p in base.iterdir()) if base.is_dir() else []

    def discard(self, prefix: str) -> None:
        """Delete a staged build, and the staging folder when no other build is staged."""
        self.store.clear(f"{prefix}/")
        with contextlib.suppress(OSError):
            (self.root / STAGING).rmdir()  # only when no other build is staged

    def carry_over(self, staging: str, touched: set[int]) -> None:
        """Hard links, in the staged tables, to the files of the units not rebuilt."""
        for table in TABLES:
            base = self.root / table
            for path in sorted(base.rglob("*.parquet")) if base.is_dir() else []:
                unit = unit_of_key(path.name)
                if unit is not None and unit not in touched:
                    dest = self.root / staging / path.relative_to(self.root)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(path, dest)
                    except OSError:
                        shutil.copy2(path, dest)

    def seal(self, staging: str, marker: dict) -> None:
        """Complete *marker* with the staged folders' inodes (a table folder left with no
        file is swapped in empty)."""
        marker["inodes"] = {}
        for table in TABLES:
            (self.root / staging / table).mkdir(parents=True, exist_ok=True)
            marker["inodes"][table] = (self.root / staging / table).stat().st_ino

    def swap(self, prefix: str, listing: dict[str, int] | None = None) -> None:
        """Exchange the staged table folders with the current ones; idempotent."""
        staged = self.root / prefix
        # the staged folders' inodes (``_complete``): after an exchange killed before the
        # previous version moved out of the way, the folder there is that previous version
        complete = self.store.read_bytes_or_none(f"{prefix}/_complete")
        inodes = json.loads(complete or b"{}").get("inodes", {})
        for table in TABLES:
            src = staged / table
            # else swapped already (an interrupted commit being finished)
            if src.exists() and inodes.get(table, src.stat().st_ino) == src.stat().st_ino:
                replace_dir(src, self.root / table, staged / f"old-{table}")
        shutil.rmtree(staged, ignore_errors=True)
        with contextlib.suppress(OSError):
            staged.parent.rmdir()  # only when no other build is staged


class ObjectCommitter:
    """Commits into an object store (S3), key by key."""

    def __init__(self, store):
        self.store = store

    def staging_tokens(self) -> list[str]:
        """The builds staged here (finished or not)."""
        return sorted({k.split("/")[1] for k in list_keys(self.store, f"{STAGING}/")})

    def discard(self, prefix: str) -> None:
        """Delete a staged build."""
        self.store.clear(f"{prefix}/")

    def carry_over(self, staging: str, touched: set[int]) -> None:
        """Nothing: :meth:`swap` keeps the units not rebuilt (the marker lists the others)."""

    def seal(self, staging: str, marker: dict) -> None:
        """Nothing to add to the marker."""

    def swap(self, prefix: str, listing: dict[str, int] | None = None) -> None:
        """Copy the staged files over the tables and delete the files of the rebuilt units
        the build did not write; idempotent. *listing* (:func:`table_listing`, taken under
        the build lock) gives the current files, else the tables are listed."""
        store = self.store
        complete = store.read_bytes(f"{prefix}/_complete")
        touched = json.loads(complete or b"{}").get("touched")  # None: every unit was rebuilt
        # listed with store.list, not list_keys: a failed listing must stop here, not look
        # empty and let the loop below delete the current tables
        staged = [i for i in store.list(f"{prefix}/") if not i.key.endswith("/_complete")]
        new_keys = {i.key[len(prefix) + 1:] for i in staged}
        # while the copies run, the tables hold the marker (a copy of _complete: the units
        # being replaced); one still there once the staging is gone marks an unfinished swap
        store.copy(f"{prefix}/_complete", SWAP_KEY, size=len(complete))
        for info in staged:  # the window: readers may see some units old, some new
            # server-side copy (one CopyObject each; content type and sha256 metadata come)
            store.copy(info.key, info.key[len(prefix) + 1:], size=info.size)
        current = list(listing) if listing is not None else [
            k for t in TABLES for k in list_keys(store, f"{t}/")]
        for key in current:
            unit = unit_of_key(key)
            if key != SWAP_KEY and key not in new_keys and (
                    touched is None or unit is None or unit in touched):
                store.delete(key)
        store.delete(SWAP_KEY)
        store.clear(f"{prefix}/")


def committer(store) -> FolderCommitter | ObjectCommitter:
    """The committer for *store*'s kind."""
    root = local_root(store)
    return ObjectCommitter(store) if root is None else FolderCommitter(store, root)


@contextlib.contextmanager
def build_lock(store):
    """Hold the catalog's build lock (:data:`LOCK`) for the block; yields notes.

    The lock records the holder's host, pid and process start time. Another build running is
    an ObjectsError naming it (host, pid, since when): its staging area must not be recovered
    or discarded under it. A lock of this host whose process is gone (or is another process
    that reused the pid) is taken over at once, with a note; a lock of another host, or any
    lock on S3 (liveness cannot be checked there), is taken over once older than
    :data:`LOCK_STALE_SECONDS`. Both claims are conditional writes, so two builds starting at
    once cannot both win."""
    key, notes = LOCK, []
    data, version = store.read_versioned(key)
    if data is not None:
        try:
            held = json.loads(data)
            age = time.time() - float(held["since"])
        except (ValueError, KeyError, TypeError):
            held, age = {}, float("inf")  # unreadable: treat as left over
        holder = _holder(held)
        alive = _holder_alive(store, held)
        if alive is True or (alive is None and age < LOCK_STALE_SECONDS):
            raise ObjectsError(store.url(key), _refusal(store, held, holder, alive, age))
        if alive is False:
            notes.append(f"took over the lock of a build that is no longer running ({holder}; "
                         "killed or crashed on this host)")
        else:
            notes.append(f"took over the lock of a build that did not finish ({holder}; "
                         f"older than {LOCK_STALE_SECONDS / 3600:g} h)")
    body = json.dumps({"since": time.time(), "started": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(), "pid": os.getpid(),
        "pid_started": _process_start(os.getpid()), "pid_namespace": _pid_namespace()})
    mine = store.write_bytes_if(key, body.encode(), version=version,
                                content_type="application/json")
    if mine is None:
        raise ObjectsError(store.url(key), "another build took the lock at the same moment")
    try:
        yield notes
    finally:
        if store.read_versioned(key)[1] == mine:
            store.delete(key)


def _holder(held: dict) -> str:
    """Who holds a lock, for messages: ``host <h> pid <p> since <started>``."""
    return (f"host {held.get('host', '?')} pid {held.get('pid', '?')} since "
            f"{held.get('started', '?')}")


def _refusal(store, held: dict, holder: str, alive: bool | None, age: float) -> str:
    """The one-line refusal for a lock held by a build that is (or may be) running."""
    if alive:
        return (f"another build is running ({holder}; that process is alive on this host): "
                "wait for it to finish")
    left = max(LOCK_STALE_SECONDS - age, 0.0)
    where = ("an S3 catalog" if local_root(store) is None
             else "another host" if held.get("host") != socket.gethostname()
             else "another machine or container of this host name"
             if held.get("pid_namespace") != _pid_namespace()
             else "the lock does not record its process start time")
    return (f"another build is running ({holder}), or was killed: its liveness cannot be "
            f"checked from here ({where}); if it was killed, delete this lock, else it is "
            f"taken over in {left / 3600:.1f} h")


def _process_start(pid: int) -> float | None:
    """The start time (epoch seconds) of process *pid*, None when there is no such process
    (or it is a zombie: exited, not yet reaped)."""
    try:
        import psutil
    except ImportError:  # (a requirement; without it, a pid that exists counts as alive)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return 0.0


def _pid_namespace() -> str | None:
    """This process's pid namespace and boot (Linux; None elsewhere): a pid means the same
    process only within both."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _holder_alive(store, held: dict) -> bool | None:
    """Whether the lock's holder still runs: True or False for a lock of this host in a local
    catalog (a pid reused by another process counts as gone: its start time differs), None
    when it cannot be known (another host, an S3 catalog, a lock without host, pid or start
    time of a process that exists)."""
    if local_root(store) is None or held.get("host") != socket.gethostname():
        return None
    if held.get("pid_namespace") != _pid_namespace():  # (a container or another machine
        return None  # under the same host name: its pids are not ours to look up)
    try:
        pid = int(held["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if pid <= 0:
        return None
    started = _process_start(pid)
    if started is None:
        return False
    recorded = held.get("pid_started")
    if recorded is None or not started:  # an older lock, or a start time we may not read:
        return None  # (the pid may be another process's by now)
    return abs(float(recorded) - started) < 1.0


def recover(store) -> list[str]:
    """Finish a build interrupted after its ``_complete`` marker; drop unfinished ones.

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store (under the build lock).

    Returns
    -------
    list of str
        One note per staged build finished or discarded.
    """
    notes = []
    for token in committer(store).staging_tokens():
        prefix = f"{STAGING}/{token}"
        if store.exists(f"{prefix}/_complete"):
            _commit(store, prefix)
            notes.append(f"finished the swap of an interrupted build ({token})")
        else:
            discard(store, prefix)
            notes.append(f"discarded an unfinished build ({token}); previous tables kept")
    return notes


def discard(store, prefix: str) -> None:
    """Delete the staged build under *prefix* (a build that failed: nothing was changed)."""
    committer(store).discard(prefix)


def _commit(store, prefix: str, listing: dict[str, int] | None = None) -> None:
    """Swap the staged tables in, table by table; idempotent (safe to redo after a crash).
    On S3, *listing* (:func:`table_listing`, taken under the build lock) gives the current
    files, else the tables are listed."""
    committer(store).swap(prefix, listing)


def stage_and_commit(store, staging: str, state: dict, touched: set[int] | None,
                     listing: dict[str, int]) -> None:
    """Write the build record into *staging*, complete the staged tables, mark them, swap them in.

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.
    staging : str
        The build's staging prefix.
    state : dict
        The new build record.
    touched : set of int or None
        The units rebuilt; the others' files are carried over (locally hard links, on S3 they
        stay where they are). None: every unit was rebuilt.
    listing : dict of str to int
        The current files (:func:`table_listing`).
    """
    store.write_bytes(f"{staging}/{STATE_KEY}", json.dumps(state, indent=1).encode())
    kind = committer(store)
    if touched is not None:
        kind.carry_over(staging, touched)
    marker = {"touched": None if touched is None else sorted(touched)}
    kind.seal(staging, marker)
    store.write_bytes(f"{staging}/_complete", json.dumps(marker).encode())
    _commit(store, staging, listing)
