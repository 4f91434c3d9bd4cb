"""One unit: read its detections and the objects around it, associate, write its tables.

A unit task (:class:`~skysurvey.objects.model.UnitTask`) reads the sources of the images
overlapping its NESTED HEALPix pixel plus a margin, the existing objects of its pixel and its
8 neighbours, associates the new images and keeps the objects whose mean position falls
inside its pixel; it writes its three tables and its statistics sidecars under the build's
staging prefix and replies with what it wrote. :func:`handle_unit_event` is the Lambda entry
(numpy and astropy-healpix only).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..errors import SkySurveyError
from ..geometry import (
    group,
    healpix,
    in_region,
    neighbours,
    pixel_centre,
    separation_arcsec,
    sorted_unique,
    unit_vectors,
    vectors_to_radec,
)
from ..schema import ASSOCIATIONS_SCHEMA, OBJECT_PHOTOMETRY_SCHEMA, OBJECTS_SCHEMA
from ..storage import open_store
from .association import associate, link
from .model import Detections, ObjectsError, UnitTask, no_detections
from .source_reads import ReadStats, read_unit_detections
from .statistics import N_BANDS_MAX, NIGHT_SPAN, Stats, derive, detection_stats, merge_stats
from .tables import (
    ROW_GROUP_ROWS,
    file_entry,
    floats,
    list_keys,
    read_parquet,
    read_parquet_or_none,
    unit_key,
)

__all__ = [
    "EXISTING_ASSOCIATIONS",
    "EXISTING_OBJECTS",
    "ID_ORDER",
    "ID_SHIFT",
    "PHOT_BAD_FLAGS",
    "SOURCE_COLUMNS",
    "handle_unit_event",
    "run_unit",
    "source_arrays",
]

ID_ORDER = 13  # object ids carry the order-13 pixel where the object was created (finer
#: than any unit, so one unit allocates all ids of a prefix)
ID_SHIFT = 33

#: flag bits that keep a detection out of the photometric statistics (blended or found inside
#: a brighter object (8192), truncated by the edge, masked pixels, non-positive or saturated
#: flux, cosmic ray: see data/README.md); a blend's flux changes with the seeing, which would
#: make constant stars look variable
PHOT_BAD_FLAGS = 1 | 2 | 4 | 16 | 32 | 64 | 128 | 256 | 512 | 2048 | 8192


SOURCE_COLUMNS = ("source_id", "ra", "dec", "mag", "mag_err", "mag_apcorr", "mag_apcorr_err",
                  "flags", "snr", "fwhm", "_healpix_29")


def source_arrays(table: pa.Table,
                  pixel_scale: float | np.ndarray | None) -> dict[str, np.ndarray]:
    """Positions, position weights and calibrated magnitudes of one image's sources.

    Parameters
    ----------
    table : pyarrow.Table
        The image's ``sources`` columns :data:`SOURCE_COLUMNS`.
    pixel_scale : float, numpy.ndarray or None
        Arcsec per pixel, or one per row (None or NaN: a 0.3" position error is assumed).

    Returns
    -------
    dict of numpy.ndarray
        ``source_id``, ``ra``, ``dec``, ``weight`` (1 / sigma^2, arcsec^-2), ``mag`` and
        ``mag_err`` (``mag_apcorr`` where measured; NaN for :data:`PHOT_BAD_FLAGS`), ``hp29``.
    """
    ra, dec = floats(table, "ra"), floats(table, "dec")
    mag_ap, err_ap = floats(table, "mag_apcorr"), floats(table, "mag_apcorr_err")
    mag, err = floats(table, "mag"), floats(table, "mag_err")
    has_ap = np.isfinite(mag_ap) & np.isfinite(err_ap)
    m = np.where(has_ap, mag_ap, mag)
    e = np.where(has_ap, err_ap, err)
    flags = table["flags"].cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    m = np.where((flags & PHOT_BAD_FLAGS) == 0, m, np.nan)
    snr = np.clip(np.nan_to_num(floats(table, "snr"), nan=1.0), 1.0, None)
    scale = np.asarray(np.nan if pixel_scale is None else pixel_scale, float)
    fwhm = floats(table, "fwhm") * np.where(scale > 0, scale, np.nan)
    sigma = np.where(np.isfinite(fwhm), fwhm / (2.3548 * snr), 0.3)
    sigma = np.sqrt(sigma**2 + 0.01**2)  # 10 mas floor: no detection is perfect
    hp = table["_healpix_29"].cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    sid = table["source_id"].cast(pa.int32()).to_numpy(zero_copy_only=False)
    return {"source_id": sid, "ra": ra, "dec": dec, "weight": 1 / sigma**2, "mag": m,
            "mag_err": e, "hp29": hp}


#: what a unit reads of the existing objects and associations around it
EXISTING_OBJECTS = pa.schema([("object_id", pa.int64()), ("ra", pa.float64()),
                              ("dec", pa.float64())])


EXISTING_ASSOCIATIONS = pa.schema([("image_id", pa.string()), ("source_id", pa.int32()),
                                   ("object_id", pa.int64())])


def _empty_existing():
    return (np.zeros(0, np.int64), np.zeros(0), np.zeros(0), EXISTING_ASSOCIATIONS.empty_table())


def _read_existing(store, task: UnitTask):
    """Existing objects (id, ra, dec) and associations around the unit."""
    if task.rebuild:
        return _empty_existing()
    objs, assocs = [], []
    if task.existing_layout:
        near = neighbours(np.array([task.unit]), task.unit_order)[:, 0]
        skip = set(task.skip)
        for u in near[near >= 0]:
            okey, akey = (unit_key(t, int(u), task.unit_order) for t in ("objects", "associations"))
            found = (None if okey in skip
                     else read_parquet_or_none(store, okey, ["object_id", "ra", "dec"]))
            if found is not None:
                objs.append(found)
            if (found is not None or okey in skip) and akey not in skip:
                # (a lost objects file: its associations still give the ids, see _lost_objects)
                found = read_parquet_or_none(store, akey, ["image_id", "source_id", "object_id"])
                if found is not None:
                    assocs.append(found)
    else:
        for info in list_keys(store, "objects/"):
            if info.endswith(".parquet"):
                objs.append(read_parquet(store, info, ["object_id", "ra", "dec"]))
        for info in list_keys(store, "associations/"):
            if info.endswith(".parquet"):
                assocs.append(read_parquet(store, info, ["image_id", "source_id", "object_id"]))
    if not objs and not assocs:
        return _empty_existing()
    o = pa.concat_tables([EXISTING_OBJECTS.empty_table(),
                          *(t.cast(EXISTING_OBJECTS) for t in objs)])
    ids = o["object_id"].to_numpy()
    ra, dec = floats(o, "ra"), floats(o, "dec")
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not task.existing_layout:  # whole table read: keep what lies around the unit
        fine = healpix(ra[ok], dec[ok], task.margin_order)
        ok[ok] = in_region(fine, task.margin_order, task.unit, task.unit_order)
    a = pa.concat_tables([EXISTING_ASSOCIATIONS.empty_table(),
                          *(t.cast(EXISTING_ASSOCIATIONS) for t in assocs)])
    return ids[ok], ra[ok], dec[ok], a


def run_unit(task: UnitTask, store=None) -> dict:
    """Associate one unit and write its three tables under ``task.staging``.

    Parameters
    ----------
    task : UnitTask
        The unit, its images and settings.
    store : LocalStore or S3Store, optional
        The catalog's store (default: opened from ``task.catalog``).

    Returns
    -------
    dict
        The reply: ``status``, counts, ``files`` (what the build record lists of each file
        written), ``keys``, ``coverage`` (per image: sources with a position, those inside the
        unit), ``seconds``.
    """
    start = time.perf_counter()
    store = store or open_store(task.catalog)
    if task.fast:
        return _run_unit_fast(task, store, start)
    reads = ReadStats()
    det, coverage = read_unit_detections(store, task, SOURCE_COLUMNS, source_arrays, reads)
    old_ids, old_ra, old_dec, old_assoc = _read_existing(store, task)
    if task.repair:  # objects of a lost objects file keep their ids
        old_ids, old_ra, old_dec = _lost_objects(det, task.images, old_ids, old_ra, old_dec,
                                                 old_assoc)
    # existing associations of images that are not redone: fixed links
    redo = {img["image_id"] for img in task.images if img["redo"]}
    image_index = {img["image_id"]: i for i, img in enumerate(task.images)}
    if old_assoc.num_rows and len(det):
        import pyarrow.compute as pc

        kept_ids = [i for i in image_index if i not in redo]
        a_img_kept = pc.index_in(old_assoc["image_id"], value_set=pa.array(kept_ids, pa.string()))
        a_img_kept = a_img_kept.fill_null(-1).to_numpy(zero_copy_only=False)
        lookup = np.array([image_index[i] for i in kept_ids] + [-1], np.int64)
        a_img = lookup[a_img_kept]  # -1 -> the sentinel at the end
        a_src = old_assoc["source_id"].to_numpy(zero_copy_only=False).astype(np.int64)
        a_obj = old_assoc["object_id"].to_numpy(zero_copy_only=False)
        a_idx = link(old_ids, np.arange(len(old_ids)), a_obj)
        ok = (a_img >= 0) & (a_idx >= 0)
        det.obj = link(a_img[ok] * (1 << 32) + a_src[ok], a_idx[ok],
                       det.image * (1 << 32) + det.source_id.astype(np.int64))
    todo = np.nonzero(det.obj < 0)[0]
    centre = pixel_centre(task.unit, task.unit_order)
    recorded = None
    if task.repair:  # the lost links: back to the objects whose recorded statistics they make
        recorded = _recorded_objects(store, task, old_ids)
        _relink_to_recorded(task, det, todo, recorded, centre)
    rest = todo[det.obj[todo] < 0]
    order = rest[np.lexsort((det.source_id[rest], det.image[rest],
                             np.nan_to_num(det.mjd[rest], nan=np.inf)))]
    det.obj = associate(det, old_ra, old_dec, centre, task.radius_arcsec, order)
    # only objects that have detections survive (an object whose detections all vanished
    # on reprocessing is dropped, and counted)
    n_obj = max(int(det.obj.max(initial=-1)) + 1, len(old_ids))
    stats = detection_stats(det, n_obj, task.floor)
    objects, phot = derive(stats, len(task.bands), task.false_alarm)
    alive = objects["n_detections"] > 0
    own = np.zeros(n_obj, bool)
    own[alive] = healpix(objects["ra"][alive], objects["dec"][alive],
                         task.unit_order) == task.unit
    n_old = len(old_ids)
    ids = np.full(n_obj, -1, np.int64)
    ids[:n_old] = old_ids
    new_owned = np.nonzero(own[n_old:])[0] + n_old
    ids[new_owned] = _new_ids(objects, new_owned, old_ids)
    dropped = int((~alive[:n_old]).sum()) if n_old else 0
    dropped_own = 0
    if dropped:
        old_pix = healpix(old_ra, old_dec, task.unit_order)
        dropped_own = int(((~alive[:n_old]) & (old_pix == task.unit)).sum())
    repair = {}
    if task.repair:  # (a redone image's detections: the next phase redoes every unit)
        redone = np.array([img["redo"] for img in task.images], bool)[det.image]
        relinked = todo[~redone[todo]]
        _check_relinked(task, det.obj[relinked], own, objects)
        # new objects with a detection of an image not redone: an object whose id was lost
        # (its objects file lost too), else detections that found no recorded object
        linked = np.bincount(det.obj[~redone], minlength=n_obj) > 0
        lost_ids = unit_key("objects", task.unit, task.unit_order) in set(task.skip)
        repair = {"n_renumbered": int(linked[new_owned].sum()) if lost_ids else 0,
                  **_relink_summary(det, relinked, recorded, own, n_old, bool(redone.any()))}
    files = _write_unit(store, task, objects, phot, det, ids, own, stats)
    return {"status": "ok", "unit": task.unit, "unit_order": task.unit_order,
            "n_objects": int(own.sum()), "n_new_objects": len(new_owned), **repair,
            "n_associations": int(own[det.obj].sum()) if len(det) else 0,
            "n_dropped_objects": dropped_own, "files": files,
            "keys": [f"{task.staging}/{k}" for k in files], "coverage": coverage,
            "reads": reads.as_dict(),
            "seconds": round(time.perf_counter() - start, 3), "error": None}


def _lost_objects(det: Detections, images: list[dict], ids: np.ndarray, ra: np.ndarray,
                  dec: np.ndarray, assoc: pa.Table):
    """The objects that associations name but no objects file holds (their file was lost):
    appended to (ids, ra, dec), each at the weighted mean of its linked detections (of images
    not redone: a reprocessed image's source ids name other sources), so the links are kept
    and the ids too."""
    import pyarrow.compute as pc

    a_obj = assoc["object_id"].to_numpy(zero_copy_only=False)
    lost = ~np.isin(a_obj, ids)
    if not lost.any() or not len(det):
        return ids, ra, dec
    names = pa.array([None if img["redo"] else img["image_id"] for img in images], pa.string())
    a_img = pc.index_in(assoc["image_id"], value_set=names).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)[lost]
    a_src = assoc["source_id"].to_numpy(zero_copy_only=False).astype(np.int64)[lost]
    row = link(det.image * (1 << 32) + det.source_id.astype(np.int64), np.arange(len(det)),
               a_img * (1 << 32) + a_src)
    ok = (a_img >= 0) & (row >= 0)
    found, inv = group(a_obj[lost][ok])
    rows = row[ok]
    vec = unit_vectors(det.ra[rows], det.dec[rows]) * det.weight[rows, None]
    sums = np.stack([np.bincount(inv, vec[:, i], minlength=len(found)) for i in range(3)], 1)
    lra, ldec = vectors_to_radec(sums)
    return np.r_[ids, found], np.r_[ra, lra], np.r_[dec, ldec]


def _recorded_objects(store, task: UnitTask, old_ids: np.ndarray) -> dict | None:
    """The unit's objects as its statistics sidecar recorded them (the last build): index in
    *old_ids*, final position, detections, nights, first/last mjd. None without a usable
    sidecar (lost or damaged too)."""
    key = unit_key("objects/_stats", task.unit, task.unit_order)
    if key in set(task.skip):
        return None
    import pyarrow.compute as pc

    try:
        t = read_parquet_or_none(store, key)
        if t is None or not t.num_rows:
            return None
        index = link(old_ids, np.arange(len(old_ids)), t["object_id"].to_numpy())
        vec = np.stack([t[c].to_numpy() for c in ("vx", "vy", "vz")], axis=1)
        lists = t["nights"].combine_chunks()
        parents = np.asarray(pc.list_parent_indices(lists), np.int64)
        nights = sorted_unique(parents * NIGHT_SPAN + np.asarray(lists.flatten(), np.int64))
        found = {"sw": t["sw"].to_numpy(), "n_det": t["n_det"].to_numpy().astype(np.int64),
                 "first": t["first"].to_numpy(), "last": t["last"].to_numpy()}
    except (KeyError, ValueError, TypeError, pa.ArrowException):  # (not usable: matched as
        return None  # before, from scratch)
    with np.errstate(invalid="ignore", divide="ignore"):
        ra, dec = vectors_to_radec(vec)
    return {"index": index, "ra": ra, "dec": dec, "vec": vec, "nights": nights, **found}


def _relink_to_recorded(task: UnitTask, det: Detections, todo: np.ndarray,
                        recorded: dict | None, centre) -> None:
    """Link the detections *todo* (those of the lost files) to the unit's recorded objects,
    image by image: each detection to the nearest recorded object (final mean position, within
    the radius) observed on its night, within its first..last mjd, with detections left to
    take and none of that image yet; mutual nearest pairs, as :func:`associate` does. A
    matching from scratch (running means from the first detection) moved detections to
    neighbours and made new objects."""
    from ..geometry import tangent_plane
    from .association import CellIndex, mutual_nearest

    if recorded is None or not todo.size:
        return
    redo = np.array([img["redo"] for img in task.images] or [False], bool)
    todo = todo[~redo[det.image[todo]]]  # (a reprocessed image's sources: matched afresh)
    target = np.nonzero((recorded["index"] >= 0) & np.isfinite(recorded["ra"]))[0]
    if not todo.size or not target.size:
        return
    ra0, dec0 = centre
    ox, oy = tangent_plane(recorded["ra"][target], recorded["dec"][target], ra0, dec0)
    x, y = tangent_plane(det.ra[todo], det.dec[todo], ra0, dec0)
    radius = task.radius_arcsec
    allx, ally = np.r_[x, ox], np.r_[y, oy]
    pad = 4 * radius
    grid = CellIndex(allx.min() - pad, ally.min() - pad, np.ptp(allx) + 2 * pad,
                     np.ptp(ally) + 2 * pad, radius)
    grid.add(0, ox, oy)
    old_index = recorded["index"][target]
    have = det.obj >= 0  # kept links: (image, object) pairs taken, detections already held
    taken = sorted_unique(det.image[have] * (1 << 32) + det.obj[have])
    left = recorded["n_det"][target] - np.bincount(
        link(old_index, np.arange(len(target)), det.obj[have]) + 1,
        minlength=len(target) + 1)[1:]
    pairs_d, pairs_t = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for image in np.unique(det.image[todo]):
        mine = np.nonzero(det.image[todo] == image)[0]
        # (twice the radius: a detection was within it of the running mean when it was
        # linked, not necessarily of the final one; only _settle uses the farther pairs)
        s, o, d2 = grid.candidates(x[mine], y[mine], ox, oy, 2 * radius)
        d = todo[mine[s]]
        obj = old_index[o]
        ok = np.ones(len(d), bool)
        night = det.night[d]
        pair = target[o] * NIGHT_SPAN + night
        pos = np.minimum(np.searchsorted(recorded["nights"], pair),
                         max(len(recorded["nights"]) - 1, 0))
        seen = (recorded["nights"][pos] == pair) if len(recorded["nights"]) else ok & False
        ok &= (night < 0) | seen
        mjd = det.mjd[d]
        ok &= ~np.isfinite(mjd) | ((mjd >= recorded["first"][target[o]] - 1e-9)
                                   & (mjd <= recorded["last"][target[o]] + 1e-9))
        if taken.size:
            key = image * (1 << 32) + obj
            ok &= taken[np.minimum(np.searchsorted(taken, key), taken.size - 1)] != key
        pairs_d.append(d[ok])
        pairs_t.append(o[ok])
        ok &= (d2 <= radius * radius) & (left[o] > 0)
        s, o = mutual_nearest(s[ok], o[ok], d2[ok])
        det.obj[todo[mine[s]]] = old_index[o]
        left[o] -= 1
    _settle(det, todo, recorded, target, np.concatenate(pairs_d), np.concatenate(pairs_t))


def _settle(det: Detections, todo: np.ndarray, recorded: dict, target: np.ndarray,
            pair_d: np.ndarray, pair_t: np.ndarray, max_passes: int = 20) -> None:
    """Where nearest matching left objects whose recorded statistics are not reproduced (a
    crowded field: two objects within the radius of each other's detections), move or swap
    detections of one image between the candidate objects (*pair_d*, *pair_t*: the allowed
    links, ``t`` a position in *target*) while that brings the objects closer to their
    recorded detection counts, then their recorded sums of weighted positions."""
    n_t = len(target)
    old_index = recorded["index"][target]
    cur = link(old_index, np.arange(n_t), det.obj)  # per detection: its target, or -1
    u = unit_vectors(det.ra, det.dec) * det.weight[:, None]
    has = cur >= 0
    cnt = np.bincount(cur[has], minlength=n_t)
    sums = np.zeros((n_t, 3))
    np.add.at(sums, cur[has], u[has])
    want_n, want_v = recorded["n_det"][target], recorded["vec"][target]
    scale = np.maximum(recorded["sw"][target], 1e-300)

    def cost(t: int, dn: int = 0, dv=0.0) -> tuple[int, float]:
        resid = np.linalg.norm(want_v[t] - sums[t] - dv) / scale[t]
        return abs(int(want_n[t]) - int(cnt[t]) - dn), resid if resid > 1e-9 else 0.0

    bad = {t for t in range(n_t) if cost(t) != (0, 0.0)}
    if not bad:
        return
    movable = set(todo.tolist())
    holder = {(int(det.image[d]), int(cur[d])): int(d) for d in np.nonzero(has)[0]}
    allowed = set(zip(pair_d.tolist(), pair_t.tolist(), strict=True))
    for _ in range(max_passes):
        changed = False
        near = sorted(bad)  # only pairs touching an object not reproduced can help
        some = np.isin(pair_t, near) | np.isin(cur[pair_d], near)
        for d, t in zip(pair_d[some].tolist(), pair_t[some].tolist(), strict=True):
            a = int(cur[d])
            if a == t or not ({a, t} & bad):
                continue
            image = int(det.image[d])
            d2 = holder.get((image, t))
            if d2 is not None and (d2 not in movable or a < 0 or (d2, a) not in allowed):
                continue
            moved_t = u[d] - (u[d2] if d2 is not None else 0.0)
            before = [cost(t)] + ([cost(a)] if a >= 0 else [])
            after = [cost(t, 1 - (d2 is not None), moved_t)]
            if a >= 0:
                after.append(cost(a, (d2 is not None) - 1, -moved_t))
            if (sum(c[0] for c in after), sum(c[1] for c in after)) >= (
                    sum(c[0] for c in before), sum(c[1] for c in before)):
                continue
            sums[t] += moved_t
            cnt[t] += 1 - (d2 is not None)
            cur[d] = t
            holder[(image, t)] = d
            if a >= 0:
                sums[a] -= moved_t
                cnt[a] -= 1 - (d2 is not None)
                holder.pop((image, a), None)
                if d2 is not None:
                    cur[d2] = a
                    holder[(image, a)] = d2
            changed = True
            for x in (t, a):
                if x >= 0:
                    (bad.discard if cost(x) == (0, 0.0) else bad.add)(x)
        if not changed or not bad:
            break
    moved = todo[cur[todo] >= 0]
    det.obj[moved] = old_index[cur[moved]]


def _relink_summary(det: Detections, relinked: np.ndarray, recorded: dict | None,
                    own: np.ndarray, n_old: int, redone: bool) -> dict:
    """What a repair did to the lost links: detections re-linked, those that went to another
    object than a recorded one of the unit (a neighbour's or a new one), and the unit's
    recorded objects whose statistics they do not reproduce (count and sum of weighted
    positions; not checked when an image was reprocessed since)."""
    out = {"n_relinked": int(relinked.size), "n_relinked_elsewhere": int(relinked.size),
           "n_relinked_new_ids": int(np.unique(det.obj[relinked][det.obj[relinked] >= n_old]).size),
           "n_objects_differ": None}
    if recorded is None:
        return out
    mine = recorded["index"][recorded["index"] >= 0]
    out["n_relinked_elsewhere"] = int((~np.isin(det.obj[relinked], mine)).sum())
    if redone:
        return out
    index = recorded["index"]
    ok = index >= 0
    n = np.bincount(det.obj, minlength=n_old)[:n_old] if len(det) else np.zeros(n_old, int)
    vec = unit_vectors(det.ra, det.dec) * det.weight[:, None] if len(det) else np.zeros((0, 3))
    sums = np.stack([np.bincount(det.obj, vec[:, i], minlength=n_old)[:n_old]
                     for i in range(3)], 1) if len(det) else np.zeros((n_old, 3))
    same = np.zeros(len(index), bool)
    same[ok] = (n[index[ok]] == recorded["n_det"][ok]) & np.all(
        np.abs(sums[index[ok]] - recorded["vec"][ok])
        <= 1e-9 * np.maximum(recorded["sw"][ok], 1e-300)[:, None], axis=1)
    out["n_objects_differ"] = int((~same).sum())
    return out


def _check_relinked(task: UnitTask, relinked: np.ndarray, own: np.ndarray,
                    objects: dict) -> None:
    """A repair re-links the detections of the lost files; one that now joins an object of a
    unit not being restored would be written by nobody: ObjectsError (never lost silently)."""
    other = relinked[~own[relinked]]
    if not other.size:
        return
    home = healpix(objects["ra"][other], objects["dec"][other], task.unit_order)
    away = sorted(set(home.tolist()) - set(task.repair))
    if away:
        n = int(np.isin(home, away).sum())
        raise ObjectsError(f"unit {task.unit}", f"{n} detection(s) of its lost files now "
                           f"match objects of unit(s) {away[:5]}, which are not being restored: "
                           "run with --rebuild")


def _new_ids(objects: dict, new: np.ndarray, old_ids: np.ndarray) -> np.ndarray:
    """Ids for new objects: order-13 pixel << 33 | next free sequence in that pixel."""
    if not len(new):
        return np.zeros(0, np.int64)
    prefix = healpix(objects["ra"][new], objects["dec"][new], ID_ORDER)
    order = np.lexsort((objects["dec"][new], objects["ra"][new],
                        np.nan_to_num(objects["first_mjd"][new], nan=np.inf), prefix))
    out = np.zeros(len(new), np.int64)
    old_prefix = old_ids >> ID_SHIFT
    old_seq = old_ids & ((1 << ID_SHIFT) - 1)
    sp = prefix[order]
    starts = np.r_[True, sp[1:] != sp[:-1]]
    run_start = np.maximum.accumulate(np.where(starts, np.arange(len(sp)), 0))
    rank = np.arange(len(sp)) - run_start
    base = np.zeros(len(sp), np.int64)
    for p in np.unique(sp):
        mine = old_seq[old_prefix == p]
        base[sp == p] = int(mine.max()) + 1 if mine.size else 0
    out[order] = (sp << ID_SHIFT) | (base + rank)
    return out


def _write_unit(store, task: UnitTask, objects, phot, det: Detections, ids, own,
                stats: Stats, kept_assoc: pa.Table | None = None) -> dict[str, dict]:
    """The unit's three tables (objects it owns) and its statistics sidecars, written under
    ``task.staging``; returns what the build record lists of each (:func:`file_entry`), by
    table key."""
    files = {}
    idx = np.nonzero(own)[0]
    idx = idx[np.argsort(ids[idx])]
    hp29 = healpix(objects["ra"][idx], objects["dec"][idx], 29)
    otab = pa.table({
        "object_id": pa.array(ids[idx], pa.int64()),
        "ra": objects["ra"][idx], "dec": objects["dec"][idx],
        "ra_err": objects["ra_err"][idx], "dec_err": objects["dec_err"][idx],
        "_healpix_29": pa.array(hp29, pa.int64()),
        "n_detections": pa.array(objects["n_detections"][idx], pa.int32()),
        "n_nights": pa.array(objects["n_nights"][idx], pa.int32()),
        "first_mjd": pa.array(objects["first_mjd"][idx], pa.float64(), from_pandas=True),
        "last_mjd": pa.array(objects["last_mjd"][idx], pa.float64(), from_pandas=True),
        "variable": objects["variable"][idx],
        "transient_candidate": objects["transient_candidate"][idx],
        "pipeline_version": pa.array([__version__] * len(idx), pa.string()),
    }, schema=OBJECTS_SCHEMA)
    sel = own[phot["obj"]]
    pid = ids[phot["obj"][sel]]
    porder = np.lexsort((phot["band"][sel], pid))
    bands = np.array(task.bands or ["unknown"], dtype=object)
    ptab = pa.table({
        "object_id": pa.array(pid[porder], pa.int64()),
        "band": pa.array(bands[phot["band"][sel][porder]].tolist(), pa.string()),
        "n": pa.array(phot["n"][sel][porder], pa.int32()),
        **{c: pa.array(phot[c][sel][porder], pa.float64(), from_pandas=True)
           for c in ("mean_mag", "mean_mag_err", "scatter", "chi2_reduced")},
    }, schema=OBJECT_PHOTOMETRY_SCHEMA)
    dsel = np.nonzero(own[det.obj])[0] if len(det) else np.zeros(0, np.int64)
    o = det.obj[dsel]
    sep = separation_arcsec(det.ra[dsel], det.dec[dsel], objects["ra"][o], objects["dec"][o])
    image_ids = np.array([img["image_id"] for img in task.images] or [""], dtype=object)
    aorder = np.lexsort((det.source_id[dsel], det.image[dsel], ids[o]))  # light curves: by id
    atab = pa.table({
        "image_id": pa.array(image_ids[det.image[dsel][aorder]].tolist(), pa.string()),
        "source_id": pa.array(det.source_id[dsel][aorder], pa.int32()),
        "object_id": pa.array(ids[o][aorder], pa.int64()),
        "separation_arcsec": sep[aorder],
    }, schema=ASSOCIATIONS_SCHEMA)
    if kept_assoc is not None and kept_assoc.num_rows:
        atab = pa.concat_tables([kept_assoc.cast(ASSOCIATIONS_SCHEMA), atab]).sort_by(
            [("object_id", "ascending"), ("image_id", "ascending"),
             ("source_id", "ascending")])
    sides = _stats_tables(stats, idx, ids, task.bands)
    for name, table in (("objects", otab), ("object_photometry", ptab),
                        ("associations", atab), ("objects/_stats", sides[0]),
                        ("object_photometry/_stats", sides[1])):
        if table.num_rows == 0:
            continue
        key = unit_key(name, task.unit, task.unit_order)
        sink = io.BytesIO()
        # rows sorted by object id (~ by position: ids start with the order-13 pixel), in
        # small row groups, so that _healpix_29 and object_id statistics prune a cone search
        # or a light curve to a few row groups
        strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
        pq.write_table(table, sink, compression="zstd", use_dictionary=strings,
                       row_group_size=ROW_GROUP_ROWS * (4 if name == "associations" else 1))
        data = sink.getvalue()
        store.write_bytes(f"{task.staging}/{key}", data,
                          content_type="application/vnd.apache.parquet")
        files[key] = file_entry(data, table.num_rows)
    return files


def _stats_tables(stats: Stats, idx: np.ndarray, ids: np.ndarray,
                  bands: Sequence[str]) -> tuple[pa.Table, pa.Table]:
    """Sidecar tables of the objects *idx* (rows in that order)."""
    pos = np.full(len(stats), -1, np.int64)
    pos[idx] = np.arange(len(idx))
    pairs = stats.night_pairs[np.isin(stats.night_pairs // NIGHT_SPAN, idx)]
    owner = pos[pairs // NIGHT_SPAN]
    order = np.argsort(owner, kind="stable")
    offsets = np.searchsorted(owner[order], np.arange(len(idx) + 1))
    nights = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                      pa.array((pairs % NIGHT_SPAN)[order], pa.int32()))
    otab = pa.table({"object_id": pa.array(ids[idx], pa.int64()), "sw": stats.sw[idx],
                     "vx": stats.vec[idx, 0], "vy": stats.vec[idx, 1], "vz": stats.vec[idx, 2],
                     "n_det": pa.array(stats.n_det[idx], pa.int64()),
                     "first": stats.first[idx], "last": stats.last[idx], "nights": nights})
    obj = stats.p_key // N_BANDS_MAX
    sel = np.nonzero(pos[obj] >= 0)[0] if len(obj) else np.zeros(0, np.int64)
    names = np.array([*bands, "unknown"], dtype=object)
    ptab = pa.table({"object_id": pa.array(ids[obj[sel]], pa.int64()),
                     "band": pa.array(names[stats.p_key[sel] % N_BANDS_MAX].tolist(),
                                      pa.string()),
                     "n": stats.p_n[sel], "sw": stats.p_sw[sel], "mean": stats.p_mean[sel],
                     "m2w": stats.p_m2w[sel], "mu": stats.p_mu[sel], "m2u": stats.p_m2u[sel]})
    return otab, ptab


_POSITION_COLUMNS = ["object_id", "sw", "vx", "vy", "vz", "n_det", "first", "last"]


def _read_stats(store, task: UnitTask, bands: list[str], full_units: set[int]):
    """Stored statistics of the unit and its neighbours: (ids, home unit, Stats).

    Only the units in *full_units* are read whole; for the others, the positions (enough to
    match against; their objects are written by their own unit) without nights or photometry.
    """
    import pyarrow.compute as pc

    otabs, ptabs, homes = [], [], []
    near = neighbours(np.array([task.unit]), task.unit_order)[:, 0]
    for u in near[near >= 0]:
        full = int(u) in full_units
        t = read_parquet_or_none(store, unit_key("objects/_stats", int(u), task.unit_order),
                                 None if full else _POSITION_COLUMNS)
        if t is not None:
            if not full:
                t = t.append_column("nights", pa.array([[]] * t.num_rows,
                                                       pa.list_(pa.int32())))
            otabs.append(t.select([*_POSITION_COLUMNS, "nights"]))
            homes.append(np.full(t.num_rows, int(u), np.int64))
            if full:
                p = read_parquet_or_none(
                    store, unit_key("object_photometry/_stats", int(u), task.unit_order))
                if p is not None:
                    ptabs.append(p)
    if not otabs:
        empty = detection_stats(no_detections(), 0, task.floor)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), empty
    o = pa.concat_tables(otabs)
    ids = o["object_id"].to_numpy()
    n = len(ids)
    lists = o["nights"].combine_chunks()
    parents = np.asarray(pc.list_parent_indices(lists), np.int64)
    values = np.asarray(lists.flatten(), np.int64)
    stats = Stats(sw=o["sw"].to_numpy(), vec=np.stack([o["vx"].to_numpy(), o["vy"].to_numpy(),
                                                       o["vz"].to_numpy()], axis=1),
                  n_det=o["n_det"].to_numpy(), first=o["first"].to_numpy(),
                  last=o["last"].to_numpy(),
                  night_pairs=sorted_unique(parents * NIGHT_SPAN + values),
                  p_key=np.zeros(0, np.int64), p_n=np.zeros(0), p_sw=np.zeros(0),
                  p_mean=np.zeros(0), p_m2w=np.zeros(0), p_mu=np.zeros(0), p_m2u=np.zeros(0))
    if ptabs:
        p = pa.concat_tables(ptabs)
        index = {b: i for i, b in enumerate(bands)}
        for b in p["band"].unique().to_pylist():
            if b not in index:
                index[b] = len(bands)
                bands.append(b)
        band = np.array([index[b] for b in p["band"].to_pylist()], np.int64)
        obj = link(ids, np.arange(n), p["object_id"].to_numpy())
        ok = obj >= 0
        key = obj[ok] * N_BANDS_MAX + band[ok]
        order = np.argsort(key)
        stats.p_key = key[order]
        for name, col in (("p_n", "n"), ("p_sw", "sw"), ("p_mean", "mean"), ("p_m2w", "m2w"),
                          ("p_mu", "mu"), ("p_m2u", "m2u")):
            setattr(stats, name, p[col].to_numpy()[ok][order])
    return ids, np.concatenate(homes), stats


def _kept_associations(store, task: UnitTask, ids: np.ndarray, homes: np.ndarray,
                       owned_old: np.ndarray) -> pa.Table:
    """Existing association rows of the old objects this unit owns now (from its own file,
    and from a neighbour's for an object whose mean moved across the border)."""
    import pyarrow.compute as pc

    tables = []
    for home in np.unique(homes[owned_old]):
        t = read_parquet_or_none(store, unit_key("associations", int(home), task.unit_order))
        if t is not None:
            mine = pa.array(ids[owned_old & (homes == home)], pa.int64())
            tables.append(t.filter(pc.is_in(t["object_id"], value_set=mine)))
    return pa.concat_tables(tables) if tables else None


def _run_unit_fast(task: UnitTask, store, start: float) -> dict:
    """Only new images: match them against the stored objects and merge the statistics."""
    from dataclasses import replace

    bands = list(task.bands)
    old_ids, homes, old = _read_stats(store, task, bands, {task.unit})
    task = replace(task, images=[img for img in task.images if img.get("new")])
    reads = ReadStats()
    det, coverage = read_unit_detections(store, task, SOURCE_COLUMNS, source_arrays, reads)
    with np.errstate(invalid="ignore", divide="ignore"):
        old_ra, old_dec = vectors_to_radec(old.vec)
    todo = np.arange(len(det))
    order = todo[np.lexsort((det.source_id, det.image, np.nan_to_num(det.mjd, nan=np.inf)))]
    det.obj = associate(det, old_ra, old_dec, pixel_centre(task.unit, task.unit_order),
                        task.radius_arcsec, order, obj_weight=old.sw)
    n_old = len(old_ids)
    n_obj = max(int(det.obj.max(initial=-1)) + 1, n_old)
    new_stats = detection_stats(det, n_obj, task.floor)
    stats = merge_stats(old, new_stats)
    with np.errstate(invalid="ignore", divide="ignore"):
        ra, dec = vectors_to_radec(stats.vec)
    alive = stats.n_det > 0
    own = np.zeros(n_obj, bool)
    own[alive] = healpix(ra[alive], dec[alive], task.unit_order) == task.unit
    migrated = set(homes[own[:n_old] & (homes != task.unit)].tolist())
    if migrated:  # objects whose mean crossed into this unit: their whole statistics
        again = _read_stats(store, task, bands, {task.unit} | migrated)
        stats = merge_stats(again[2], new_stats)
    task = replace(task, bands=bands)
    objects, phot = derive(stats, len(bands), task.false_alarm)
    ids = np.full(n_obj, -1, np.int64)
    ids[:n_old] = old_ids
    new_owned = np.nonzero(own[n_old:])[0] + n_old
    ids[new_owned] = _new_ids(objects, new_owned, old_ids)
    kept = _kept_associations(store, task, old_ids, homes, own[:n_old])
    files = _write_unit(store, task, objects, phot, det, ids, own, stats, kept)
    n_kept = kept.num_rows if kept is not None else 0
    return {"status": "ok", "unit": task.unit, "unit_order": task.unit_order,
            "n_objects": int(own.sum()), "n_new_objects": len(new_owned),
            "n_associations": n_kept + (int(own[det.obj].sum()) if len(det) else 0),
            "n_new_associations": int(own[det.obj].sum()) if len(det) else 0,
            "n_dropped_objects": 0, "files": files,
            "keys": [f"{task.staging}/{k}" for k in files], "coverage": coverage,
            "reads": reads.as_dict(),
            "seconds": round(time.perf_counter() - start, 3), "error": None}


def handle_unit_event(event: dict) -> dict:
    """The Lambda entry for one unit: ``{"task": "objects_unit", ...}`` (see README).

    Parameters
    ----------
    event : dict
        :meth:`UnitTask.event`'s dict.

    Returns
    -------
    dict
        :func:`run_unit`'s reply, or an error reply naming the unit (never raises).
    """
    fields = {k: v for k, v in event.items() if k != "task"}
    try:
        task = UnitTask(**fields)
    except TypeError as exc:
        return {"status": "error", "unit": event.get("unit"), "error": f"bad event: {exc}"}
    try:
        return run_unit(task)
    except SkySurveyError as exc:
        return {"status": "error", "unit": task.unit, "error": str(exc)}
    except Exception as exc:  # one line, never a crash of the whole build
        return {"status": "error", "unit": task.unit,
                "error": f"unit {task.unit}: unexpected {type(exc).__name__}: {exc}"}
