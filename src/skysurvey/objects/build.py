"""The build: plan the units, run them, commit their tables; repair what the last build's
record shows damaged first. :func:`build_objects` is the entry point
(``scripts/build_objects.py``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..config import is_s3_uri
from ..errors import SkySurveyError
from ..schema import OBJECT_TABLES
from .commit import build_lock, discard, recover, stage_and_commit
from .integrity import check_tables, stray_keys
from .model import BuildConfig, BuildPlan, BuildReport, Changes, Damage, ObjectsError, UnitTask
from .plan import (
    classify_changes,
    input_notes,
    open_catalog,
    plan_repair,
    plan_units,
    read_images,
    usable_images,
)
from .runners import run_units_local
from .source_reads import ReadStats
from .tables import (
    LAYOUT,
    STATE_KEY,
    SWAP_KEY,
    partition_of,
    recorded_files,
    table_listing,
    unit_of_key,
)

__all__ = [
    "build_objects",
    "commit_build",
    "list_files_in_record",
    "register_partitions",
    "remove_strays",
    "repair",
]


def build_objects(catalog: str, config: BuildConfig | None = None, *,
                  runner: Callable[[list[UnitTask]], list[dict]] | None = None) -> BuildReport:
    """Associate the catalog's sources into objects; incremental unless ``config.rebuild``.

    Steps: finish or drop an interrupted build (:func:`recover`), compare the catalog with the
    last build (:func:`classify_changes`) and the tables with its record (:func:`check_tables`;
    damaged units are rebuilt first: :func:`repair`), plan the units (:func:`plan_units`), run
    them, then swap their tables in (:func:`commit_build`); a failed unit changes nothing.

    Parameters
    ----------
    catalog : str
        The catalog: a local folder or an ``s3://`` URI.
    config : BuildConfig, optional
        The settings (default: ``BuildConfig()``).
    runner : callable, optional
        Runs the unit tasks, one reply each (default: :func:`run_units_local` with
        ``config.workers``; :func:`run_units_lambda` on AWS).

    Returns
    -------
    BuildReport
        What was built, with notes; ``status`` is ``error`` when a unit failed.

    Raises
    ------
    ObjectsError
        No catalog or no images there, another build running, settings that differ from the
        last build's (radius, unit order).
    """
    config = config or BuildConfig()
    store = open_catalog(catalog)
    with build_lock(store) as notes:
        report = _build(catalog, store, config, runner)
        report.notes[:0] = notes
    if report.status == "ok" and report.partitions and is_s3_uri(catalog):
        report.notes += register_partitions(catalog, report.partitions)
    return report


def register_partitions(catalog: str, partitions: list[int]) -> list[str]:
    """Register the ``hpx5`` partitions a build wrote with the Athena database (DESIGN:
    partitions are registered as they are written), so that any caller of
    :func:`build_objects` (the script, the notebook) leaves Athena seeing them.

    Returns the notes: none, or one line when Glue is not there (another S3-compatible store):
    the tables are written, and the next ``query_with_athena.py --engine athena`` registers
    whatever it finds.
    """
    from ..athena import register_partitions as glue_register

    values = [{"hpx5": int(p)} for p in partitions]
    try:
        for folder in OBJECT_TABLES:
            glue_register(catalog, folder, values)
    except SkySurveyError as exc:
        return [f"partitions not registered in Glue: {exc}"]
    return []


def _build(catalog: str, store, config: BuildConfig, runner) -> BuildReport:
    """:func:`build_objects` under the build lock."""
    start = time.perf_counter()
    report = BuildReport()
    report.notes += recover(store)
    images = read_images(catalog)
    if not images:
        raise ObjectsError(catalog, "catalog without images: nothing to associate")
    report.n_images = len(images)
    run = runner or (lambda ts: run_units_local(ts, config.workers))
    listing = table_listing(store)
    changes = classify_changes(catalog, store, images, config, listing)
    report.notes += changes.notes
    usable = usable_images(images)
    report.n_images_without_wcs = len(images) - len(usable)
    report.notes += input_notes(images, usable)
    n_notes, restored = len(report.notes), False
    if changes.layout_ok and changes.has_tables:  # the tables against the last build's record
        checked = _check_and_repair(catalog, store, images, usable, changes, listing, config,
                                    run, report)
        if checked is None:
            report.seconds = time.perf_counter() - start
            return report
        restored = checked[0] is not changes  # (classified again after a repair)
        changes, listing = checked
    report.n_new_images, report.n_redone_images = len(changes.new), len(changes.redone)
    report.n_removed_images = len(changes.removed)
    if changes.unchanged:
        report.status = "ok" if len(report.notes) > n_notes else "unchanged"
        report.unit_order = changes.state["unit_order"]
        report.n_objects = changes.state.get("n_objects", 0)
        report.n_associations = changes.state.get("n_associations", 0)
        report.seconds = time.perf_counter() - start
        return report
    plan = plan_units(catalog, images, usable, changes, config)
    report.n_units, report.unit_order = len(plan.tasks), plan.unit_order
    replies = run(plan.tasks)
    errors = _failures(replies)
    if errors:
        discard(store, plan.staging)
        report.status = "error"
        report.errors = [*errors, "nothing was changed: the previous tables are intact" + (
            " (but for the units restored first)" if restored else "")]
        report.seconds = time.perf_counter() - start
        return report
    restored_dropped = report.n_dropped_objects  # noted by repair()
    _tally(report, replies, changes)
    report.partitions = sorted({*report.partitions,
                                *(partition_of(t.unit, plan.unit_order) for t in plan.tasks)})
    report.n_dropped_objects += commit_build(store, plan, changes, config, report, replies,
                                             listing)
    if report.n_dropped_objects > restored_dropped:
        report.notes.append(f"{report.n_dropped_objects - restored_dropped} object(s) lost all "
                            "their detections (reprocessed or removed images) and were dropped")
    report.seconds = time.perf_counter() - start
    return report


def _check_and_repair(catalog: str, store, images: list[dict], usable: list[dict],
                      changes: Changes, listing: dict[str, int], config: BuildConfig, run,
                      report: BuildReport) -> tuple[Changes, dict[str, int]] | None:
    """Remove the stray files, check the tables against the build record and rebuild the
    damaged units (:func:`repair`); notes go to *report*. The changes and the listing to build
    on from here, or None when the damage could not be repaired (*report* says why)."""
    report.notes += remove_strays(store, changes.state["unit_order"], listing)
    damage = check_tables(store, changes.state, listing, verify=config.verify)
    if damage:
        if not repair(catalog, store, usable, changes, listing, damage, config, run, report):
            return None
        listing = table_listing(store)
        return classify_changes(catalog, store, images, config, listing), listing
    if damage.swap:  # its files are all as recorded: only the marker is left
        store.delete(SWAP_KEY)
        report.notes.append("a swap of staged files did not finish, but every file is as the "
                            "build record lists: removed its marker")
    elif "files" not in changes.state and changes.unchanged:
        report.notes.append(list_files_in_record(store, changes.state, listing))
    return changes, listing


def repair(catalog: str, store, usable: list[dict], changes: Changes, listing: dict[str, int],
           damage: Damage, config: BuildConfig, run, report: BuildReport) -> bool:
    """Rebuild the damaged units from the sources and swap them in, as a build of its own.

    The units of :func:`plan_repair` run, then their tables are committed with a new build
    record; a note names the files.

    Parameters
    ----------
    catalog : str
        The catalog.
    store : LocalStore or S3Store
        Its store.
    usable : list of dict
        The images with a WCS.
    changes : Changes
        The catalog against the last build's record.
    listing : dict of str to int
        The tables' files (:func:`table_listing`).
    damage : Damage
        What :func:`check_tables` found.
    config : BuildConfig
        The settings.
    run : callable
        Runs unit tasks (the build's runner).
    report : BuildReport
        Receives the notes, counts and, on failure, the error.

    Returns
    -------
    bool
        False (the report holds a one-line error naming the files; nothing changed) when they
        cannot be rebuilt.
    """
    plan = plan_repair(catalog, usable, changes, damage, config)
    replies = run(plan.tasks)
    errors = [r.get("error") or f"unit {r.get('unit')} failed" for r in replies
              if r.get("status") != "ok"]
    if errors:
        discard(store, plan.staging)
        report.status = "error"
        report.errors = [f"objects tables damaged ({damage.describe()}) and not rebuilt from "
                         f"the sources ({'; '.join(errors[:3])}); nothing was changed: fix the "
                         "cause or run with --rebuild"]
        return False
    touched = damage.units
    renumbered = sum(r.get("n_renumbered", r.get("n_new_objects", 0)) for r in replies)
    if renumbered:  # no file named their ids any more (not: new in a reprocessed image)
        report.notes.append(f"{renumbered} object(s) of the restored units have new ids (the "
                            "files that named theirs were lost)")
    report.notes += _relink_notes(replies)
    dropped = sum(r.get("n_dropped_objects", 0) for r in replies)
    if dropped:
        report.n_dropped_objects += dropped
        report.notes.append(f"{dropped} object(s) of the restored units found no detection "
                            "again and were dropped")
    files = _files_after(store, plan.staging, changes.state, listing, touched, replies)
    state = {**changes.state, "files": files, **_totals(store, files)}
    stage_and_commit(store, plan.staging, state, touched, listing)
    report.n_units += len(plan.tasks)
    report.unit_order = plan.unit_order
    report.partitions = sorted({partition_of(u, plan.unit_order) for u in touched})
    report.notes.append(f"restored {len(touched)} unit(s) from the sources: {damage.describe()}")
    return True


def _relink_notes(replies: list[dict]) -> list[str]:
    """One note on the detections of the lost associations files a repair linked again: to
    the objects they belonged to (the statistics sidecars recorded them) or, said with the
    counts, to other objects (a neighbour's, or new ids)."""
    relinked = sum(r.get("n_relinked", 0) for r in replies)
    if not relinked:
        return []
    elsewhere = sum(r.get("n_relinked_elsewhere", 0) for r in replies)
    new = sum(r.get("n_relinked_new_ids", 0) for r in replies)
    differ = [r.get("n_objects_differ") for r in replies]
    if not elsewhere and not new and differ and all(d == 0 for d in differ):
        return [f"re-linked {relinked} detection(s) of the lost or changed files to the "
                "objects they belonged to (every object's recorded statistics reproduced; no "
                "id changed)"]
    checked = sum(d for d in differ if d is not None)
    return [f"re-linked {relinked} detection(s) of the lost or changed files: "
            f"{relinked - elsewhere} to their unit's recorded objects, {elsewhere} matched "
            f"afresh (to a neighbour's object or a new one; {max(new, 0)} new id(s)); "
            f"{checked} object(s) differ from the statistics the last build recorded"
            + ("" if all(d is not None for d in differ) else " (not checked in units with a "
               "reprocessed image or without statistics)")]


def remove_strays(store, unit_order: int, listing: dict[str, int] | None = None) -> list[str]:
    """Delete the :func:`stray_keys`: a finished build leaves exactly its own files.

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.
    unit_order : int
        The tables' unit order.
    listing : dict of str to int, optional
        The tables' files (:func:`table_listing`; loses the keys deleted); else the tables are
        listed.

    Returns
    -------
    list of str
        A note naming the files (their rows were counted twice, or belong to no build), or none.
    """
    strays = stray_keys(store, unit_order, listing)
    for key in strays:
        store.delete(key)
        if listing is not None:
            del listing[key]
    if not strays:
        return []
    return [f"removed {len(strays)} file(s) no build wrote from the tables (readers counted "
            "their rows too): " + ", ".join(strays[:5]) + (" ..." if len(strays) > 5 else "")]


def list_files_in_record(store, state: dict, listing: dict[str, int]) -> str:
    """Write the build record of an older version again, with the files there now (from here
    on a lost file is detected); returns a note."""
    files = recorded_files(state, listing)
    store.write_bytes(STATE_KEY, json.dumps({**state, "files": files}, indent=1).encode())
    return (f"the build record listed no files (older version): it now lists the {len(files)} "
            "unit files found; a file lost before this build cannot be detected")


def _totals(store, files: dict[str, dict]) -> dict[str, int]:
    """``n_objects`` and ``n_associations``: the rows of the listed table files (a Parquet
    footer is read where the record does not know them)."""
    totals = {"n_objects": 0, "n_associations": 0}
    for key, entry in files.items():
        table, name = key.split("/", 1)[0], key.rsplit("/", 1)[-1]
        if table in ("objects", "associations") and not name.startswith("_"):
            rows = entry.get("rows")
            if rows is None:
                rows = pq.ParquetFile(pa.BufferReader(store.read_bytes(key))).metadata.num_rows
            totals[f"n_{table}"] += rows
    return totals


def _orphan_objects(store, units: set[int], state: dict | None,
                   listing: dict[str, int]) -> int:
    """Objects in the current tables' unit files (*listing*) outside *units* (the build drops
    them): the rows *state* records, else read from the file's footer."""
    recorded = (state or {}).get("files") or {}
    n = 0
    for key in listing:
        unit = unit_of_key(key)
        if (key.startswith("objects/") and unit is not None and unit not in units
                and not key.rsplit("/", 1)[-1].startswith("_")):
            rows = recorded.get(key, {}).get("rows")
            n += rows if rows is not None else pq.ParquetFile(
                pa.BufferReader(store.read_bytes(key))).metadata.num_rows
    return n


def _failures(replies: list[dict]) -> list[str]:
    """One message per failed unit, and per image with sources outside every unit."""
    failed = [r for r in replies if r.get("status") != "ok"]
    failed += _uncovered(replies)
    return [r.get("error") or f"unit {r.get('unit')} failed" for r in failed]


def _uncovered(replies: list[dict]) -> list[dict]:
    """Error replies for images with sources outside every unit that read them (a footprint
    in ``images`` smaller than the sources' spread): never lose a source silently."""
    found: dict[str, list[int]] = {}
    for reply in replies:
        for image_id, (n_pos, n_core) in (reply.get("coverage") or {}).items():
            entry = found.setdefault(image_id, [n_pos, 0])
            entry[1] += n_core
    return [{"status": "error", "error": f"{image_id}: {n_pos - n_core} of its {n_pos} sources "
                                         "lie outside the footprint its images record gives "
                                         "(centre, size, pixel scale)"}
            for image_id, (n_pos, n_core) in sorted(found.items()) if n_core < n_pos]


def _tally(report: BuildReport, replies: list[dict], changes: Changes) -> None:
    """The report's object and association counts from the units' replies."""
    reads = ReadStats()
    for r in replies:
        reads.add(r.get("reads") or {})
        report.n_objects += r["n_objects"]
        report.n_new_objects += r["n_new_objects"]
        report.n_associations += r["n_associations"]
        report.n_dropped_objects += r["n_dropped_objects"]
    report.reads = reads.summary() if reads.files else {}
    if changes.fast:  # the untouched units keep their objects: totals = before + this night's
        report.n_objects = changes.state.get("n_objects", 0) + report.n_new_objects
        report.n_associations = changes.state.get("n_associations", 0) + sum(
            r.get("n_new_associations", 0) for r in replies)


def commit_build(store, plan: BuildPlan, changes: Changes, config: BuildConfig,
                 report: BuildReport, replies: list[dict], listing: dict[str, int]) -> int:
    """Stage the build record and swap the build's tables in.

    The record lists the files of the new tables; the staged tables are completed with the
    units not rebuilt (locally), marked complete and swapped in (:func:`stage_and_commit`).

    Parameters
    ----------
    store : LocalStore or S3Store
        The catalog's store.
    plan : BuildPlan
        The build's tasks and staging prefix.
    changes : Changes
        What the build did (the fast path keeps the units it did not touch).
    config : BuildConfig
        The settings recorded.
    report : BuildReport
        The totals recorded.
    replies : list of dict
        The units' replies (the files they wrote).
    listing : dict of str to int
        The tables' files before the build (:func:`table_listing`).

    Returns
    -------
    int
        The objects dropped with units no image covers any more (a full build over kept tables).
    """
    touched = {t.unit for t in plan.tasks} if changes.fast else None
    files = _files_after(store, plan.staging, changes.state, listing, touched, replies)
    new_state = {"layout": LAYOUT, "version": __version__, "radius_arcsec": config.radius_arcsec,
                 "unit_order": plan.unit_order, "floor": config.floor,
                 "n_objects": report.n_objects, "n_associations": report.n_associations,
                 "images": changes.current, "files": files, "reads": report.reads}
    dropped = 0
    if not changes.fast and changes.has_tables:  # units no image covers any more (all
        # removed): their objects go, counted (not on --rebuild: it starts over)
        dropped = _orphan_objects(store, {t.unit for t in plan.tasks}, changes.state, listing)
    stage_and_commit(store, plan.staging, new_state, touched, listing)
    return dropped


def _files_after(store, staging: str, state: dict | None, listing: dict[str, int],
                 touched: set[int] | None, replies: list[dict]) -> dict[str, dict]:
    """The new build record's file list: the files *state* recorded of the units not in
    *touched* (None: no unit is kept), and those the units wrote."""
    kept = {} if touched is None else {k: v for k, v in recorded_files(state, listing).items()
                                       if unit_of_key(k) not in touched}
    return {**kept, **_written_files(store, staging, replies)}


def _written_files(store, staging: str, replies: list[dict]) -> dict[str, dict]:
    """The record's entries of the files the units wrote (from their replies; from a listing
    of the staged files, sizes only, if a unit of an older version did not say)."""
    if all("files" in r for r in replies):
        return {k: v for r in replies for k, v in r["files"].items()}
    prefix = f"{staging}/"
    return {i.key[len(prefix):]: {"size": i.size, "sha256": None, "rows": None}
            for i in store.list(prefix) if i.key.endswith(".parquet")}
