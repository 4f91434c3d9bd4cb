"""What is damaged: the tables' files against the last build's record.

Only says; :func:`skysurvey.objects.build.repair` rebuilds what :func:`check_tables` finds and
:func:`skysurvey.objects.build.remove_strays` deletes what :func:`stray_keys` names.
"""

from __future__ import annotations

import json

from .model import Damage
from .tables import SWAP_KEY, TABLES, is_unit_file, list_keys, unit_key, unit_of_key

__all__ = ["check_tables", "stray_keys"]


def stray_keys(store, unit_order: int, listing: dict[str, int] | None = None) -> list[str]:
    """Files of the three tables that Parquet readers count but no build wrote.

    Anything but ``<table>/hpx5=<partition of N>/k<unit order>-<N>.parquet`` (a copy beside a
    unit file, a unit file in another partition's folder or of another order). Names starting
    with ``_`` or ``.`` (the build record, the statistics sidecars) are skipped by readers, and
    here.

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.
    unit_order : int
        The tables' unit order.
    listing : dict of str to int, optional
        The tables' files (:func:`table_listing`); else the tables are listed.

    Returns
    -------
    list of str
        The keys.
    """
    keys = listing if listing is not None else [
        k for t in TABLES for k in list_keys(store, f"{t}/")]
    strays = []
    for key in keys:
        table = key.split("/", 1)[0]
        if any(part.startswith(("_", ".")) for part in key.split("/")[1:]):
            continue
        unit = unit_of_key(key)
        if unit is None or key != unit_key(table, unit, unit_order):
            strays.append(key)
    return strays


def check_tables(store, state: dict, listing: dict[str, int], *, verify: bool = False) -> Damage:
    """The tables' unit files against those the last build recorded.

    Missing, of another size, or (*verify*) another SHA-256 (reads every file locally, one
    HEAD each on S3; a file without the ``sha256`` metadata differs), and unit files the record
    does not list. Nothing to compare for a record that lists no files.

    A swap marker (:data:`SWAP_KEY`; :func:`recover` has finished every swap whose staging is
    still there) names units whose files may be old or new: their SHA-256 are compared (one
    HEAD each on S3), or, for a record without files, they are all taken as damaged.

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.
    state : dict
        The last build's record.
    listing : dict of str to int
        The tables' files and sizes (:func:`table_listing`).
    verify : bool
        Also compare every file's SHA-256 with the record's.

    Returns
    -------
    Damage
        False when nothing differs.
    """
    files, order = state.get("files"), state["unit_order"]
    damage, touched = Damage(swap=SWAP_KEY in listing), None
    if damage.swap:
        touched = json.loads(store.read_bytes(SWAP_KEY) or b"{}").get("touched")

    def swapped(key: str) -> bool:
        return damage.swap and (touched is None or unit_of_key(key) in touched)

    if files is None:
        damage.unfinished = sorted(k for k in listing if is_unit_file(k, order) and swapped(k))
        return damage
    for key, entry in sorted(files.items()):
        if key not in listing:
            damage.missing.append(key)
        elif listing[key] != entry["size"] or (
                (verify or swapped(key)) and not _same_sha256(store, key, entry)):
            damage.changed.append(key)
    damage.unknown = sorted(k for k in listing if k not in files and is_unit_file(k, order))
    return damage


def _same_sha256(store, key: str, entry: dict) -> bool:
    if not entry.get("sha256"):
        return True  # not recorded (a record made from a listing)
    info = store.head(key)
    return info is not None and info.sha256 == entry["sha256"]
