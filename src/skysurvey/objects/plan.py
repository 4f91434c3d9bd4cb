"""What a build has to do: the catalog's images against the last build's record
(:func:`classify_changes`), the unit order, and one task per unit the images touch
(:func:`plan_units`; :func:`plan_repair` for the units found damaged)."""

from __future__ import annotations

import time
import uuid

import numpy as np

from ..geometry import group, healpix, margin_order, pixel_size_arcsec
from ..schema import catalog_keys
from ..storage import open_store
from .model import BuildConfig, BuildPlan, Changes, Damage, ObjectsError, UnitTask
from .tables import LAYOUT, PARTITION_ORDER, STAGING, load_state

__all__ = [
    "classify_changes",
    "input_notes",
    "night_ordinal",
    "open_catalog",
    "plan_repair",
    "plan_units",
    "read_images",
    "usable_images",
]


def night_ordinal(night: str | None) -> int:
    """A night ``YYYY-MM-DD`` as its proleptic ordinal day (-1 for unknown)."""
    from datetime import date

    try:
        return date.fromisoformat(str(night)).toordinal()
    except ValueError:
        return -1


def _fingerprint(row: dict) -> str:
    return f"{row.get('processed_at')}|{row.get('pipeline_version')}|{row.get('n_sources')}"


def read_images(catalog: str) -> list[dict]:
    """Rows of the ``images`` table with ``band``, ``night`` and the sources file key.

    Parameters
    ----------
    catalog : str
        The catalog: a local folder or an ``s3://`` URI.

    Returns
    -------
    list of dict
        One per image; ``key`` is its ``sources`` file (the handler's layout rule).

    Raises
    ------
    ObjectsError
        The catalog has no ``images`` table.
    """
    from ..errors import QueryError
    from ..queries import dataset

    try:
        data = dataset(catalog, "images", check=False)  # every file is read just below
    except QueryError:
        raise ObjectsError(catalog, "catalog without images (no images/ table): run "
                                    "scripts/invoke_lambda.py first") from None
    cols = ["image_id", "has_wcs", "ra_center", "dec_center", "width", "height", "pixel_scale",
            "mjd", "n_sources", "processed_at", "pipeline_version", "band", "night"]
    rows = data.to_table(columns=cols).to_pylist()
    for row in rows:  # the handler's own layout rule gives each image's sources file
        row["key"] = catalog_keys(row["image_id"], row["band"], row["night"])["sources"]
    return rows


def open_catalog(catalog: str):
    """The catalog's store; ObjectsError for a local folder that does not exist."""
    store = open_store(catalog)
    if not store.root_exists():  # (an S3 catalog always "exists": a missing bucket fails later)
        raise ObjectsError(catalog, "no catalog folder here: run scripts/invoke_lambda.py first")
    return store


def classify_changes(catalog: str, store, images: list[dict], config: BuildConfig,
                     listing: dict[str, int]) -> Changes:
    """New, reprocessed and removed images since the last build.

    Parameters
    ----------
    catalog : str
        The catalog (for messages).
    store : LocalStore or S3Store
        Its store (the build record is read from it).
    images : list of dict
        :func:`read_images`'s rows.
    config : BuildConfig
        The settings (``rebuild`` ignores the record).
    listing : dict of str to int
        The tables' files (:func:`table_listing`).

    Returns
    -------
    Changes

    Raises
    ------
    ObjectsError
        The record's radius differs from ``config.radius_arcsec``.
    """
    state = None if config.rebuild else load_state(store)
    has_tables = any(k.startswith("objects/") for k in listing) and not config.rebuild
    notes = []
    if has_tables and state is None:
        notes.append("objects table without a build record (an older version): its "
                     "ids are kept, its statistics recomputed")
    elif state and state.get("layout") != LAYOUT:
        notes.append(f"objects table of layout {state.get('layout')} (older version): "
                     "ids kept, tables rewritten")
    if state and abs(state.get("radius_arcsec", config.radius_arcsec)
                     - config.radius_arcsec) > 1e-9:
        raise ObjectsError(catalog, f"objects were built with --radius "
                                    f"{state['radius_arcsec']}; rerun with that radius or "
                                    "--rebuild")
    seen = (state or {}).get("images", {})
    current = {r["image_id"]: _fingerprint(r) for r in images}
    new = [i for i in current if i not in seen]
    redone = [i for i in current if i in seen and seen[i] != current[i]]
    removed = [i for i in seen if i not in current]
    if has_tables and state is None:  # old tables: images they hold are taken as done
        new, redone, removed = [], [], []
    return Changes(state, has_tables, current, new, redone, removed, notes)


def usable_images(images: list[dict]) -> list[dict]:
    """The images whose sources can be associated (a celestial WCS and a centre)."""
    return [r for r in images if r["has_wcs"] and r["ra_center"] is not None]


def input_notes(images: list[dict], usable: list[dict]) -> list[str]:
    """Notes on images left out (no WCS) and on a catalog of several pipeline versions."""
    notes = []
    if len(images) - len(usable):
        names = sorted(r["image_id"] for r in images if r not in usable)
        notes.append(f"{len(names)} image(s) without WCS, sources left unassociated: "
                     + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
    mixed = sorted({r["pipeline_version"] for r in images if r["pipeline_version"]})
    if len(mixed) > 1:
        notes.append("images from several pipeline versions: " + ", ".join(mixed))
    return notes


#: a unit's estimated cost (measured on benchmarks/deep_field.py and objects_scale.py,
#: 2026-12): opening one image's sources file (footer, row-group selection, its row groups)
#: and associating one detection, in seconds
OPEN_SECONDS = 3e-3
SOURCE_SECONDS = 6e-6
#: the most detections one unit may hold: a worker needs ~0.45 kB per detection beyond its
#: ~350 MB base (1.2 million: 850 MB, measured)
MAX_UNIT_SOURCES = 1_250_000


def _choose_unit_order(images: list[dict], workers: int) -> int:
    """The order (5..12) with the least estimated time on *workers* processes, among those
    whose busiest pixel holds <= 1/(2 workers) of the sources (or 20,000) or whose units are
    cheaper that way: each unit opens every image it overlaps and associates its detections
    (:data:`OPEN_SECONDS`, :data:`SOURCE_SECONDS`); the time is the larger of the busiest unit
    and the total over the workers; no unit holds more than :data:`MAX_UNIT_SOURCES`. Each
    image's sources are spread over its area (a 9 x 9 grid of points), so that a deep field
    (hundreds of images on one centre) splits by where its sources are, not into one pixel
    per centre (which chose order 12: ~100 units each opening every image)."""
    total = sum(int(r["n_sources"] or 0) for r in images) or 1
    k = 9
    ra, dec, n = _spread(images, k)
    image = np.repeat(np.arange(len(images)), k * k)
    target = max(total / (2 * max(workers, 1)), 20_000)
    first, best = None, None
    for order in range(PARTITION_ORDER, 13):
        units, inv = group(healpix(ra, dec, order))
        rows = np.bincount(inv, n)
        opens = np.bincount(np.unique(image * len(units) + inv) % len(units),
                            minlength=len(units))
        cost = opens * OPEN_SECONDS + rows * SOURCE_SECONDS
        estimate = max(cost.max(), cost.sum() / max(workers, 1))
        if first is None and rows.max() <= target:
            first = (estimate, order)
        if rows.max() <= MAX_UNIT_SOURCES and (best is None or estimate < best[0]):
            best = (estimate, order)
    if first is None:
        return 12 if best is None else best[1]
    return first[1] if best is None or best[0] >= 0.8 * first[0] else best[1]


def _spread(images: list[dict], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (ra, dec) on a k x k grid over each image (its centre, size and pixel scale;
    the centre alone without them), each carrying its share of the image's sources."""
    ra0 = np.array([r["ra_center"] for r in images], float)
    dec0 = np.array([r["dec_center"] for r in images], float)
    n = np.array([int(r["n_sources"] or 0) for r in images], float)
    size = np.array([[(r["width"] or 0) * (r["pixel_scale"] or 0),
                      (r["height"] or 0) * (r["pixel_scale"] or 0)] for r in images],
                    float).reshape(-1, 2) / 3600
    step = (np.arange(k) + 0.5) / k - 0.5
    gx, gy = (g.ravel() for g in np.meshgrid(step, step))
    cosd = np.maximum(np.cos(np.radians(dec0)), 1e-3)
    ra = (ra0[:, None] + gx[None] * size[:, :1] / cosd[:, None]) % 360
    dec = np.clip(dec0[:, None] + gy[None] * size[:, 1:], -90, 90)
    return ra.ravel(), dec.ravel(), np.repeat(n / k**2, k * k)


def _image_units(images: list[dict], order: int, margin_arcsec: float) -> list[np.ndarray]:
    """Unit pixels each image may touch: a disc around its centre (half diagonal + margin)."""
    from astropy import units as u
    from astropy_healpix import HEALPix

    grid = HEALPix(nside=2**order, order="nested")
    out = []
    for r in images:
        scale = r["pixel_scale"] or 1.0
        half = 0.5 * np.hypot(r["width"] or 0, r["height"] or 0) * scale
        radius = (half * 1.2 + margin_arcsec) / 3600  # 1.2: distortion, rounding
        out.append(np.asarray(grid.cone_search_lonlat(r["ra_center"] * u.deg,
                                                      r["dec_center"] * u.deg,
                                                      radius * u.deg), np.int64))
    return out


def _unit_order(catalog: str, images: list[dict], usable: list[dict], changes: Changes,
                config: BuildConfig) -> int:
    """The unit order: the setting, else the last build's, else chosen from the data; never
    finer than the margin's order (ObjectsError when it differs from the last build's)."""
    state = changes.state
    unit_order = (config.unit_order or (state or {}).get("unit_order")
                  or _choose_unit_order(usable or images, config.workers))
    unit_order = min(unit_order, margin_order(config.margin_arcsec))
    if state and state.get("unit_order") not in (None, unit_order):
        raise ObjectsError(catalog, "unit order differs from the last build: use --rebuild")
    return unit_order


def _unit_images(scan: list[dict], unit_order: int, mo: int, bands: list[str],
                 new_set: set[str], redo_set: set[str]) -> dict[int, list[dict]]:
    """Per unit, the entries of the images of *scan* it reads."""
    band_index = {b: i for i, b in enumerate(bands)}
    per_unit: dict[int, list[dict]] = {}
    reach = 2.2 * pixel_size_arcsec(mo)  # what in_region() may add around a unit
    for r, units in zip(scan, _image_units(scan, unit_order, reach), strict=True):
        entry = {"image_id": r["image_id"], "key": r["key"], "mjd": r["mjd"],
                 "night": night_ordinal(r["night"]),
                 "band": band_index[r["band"] or "unknown"],
                 "pixel_scale": r["pixel_scale"],
                 "redo": r["image_id"] in redo_set, "new": r["image_id"] in new_set}
        for u in units:
            per_unit.setdefault(int(u), []).append(entry)
    return per_unit


def plan_units(catalog: str, images: list[dict], usable: list[dict], changes: Changes,
               config: BuildConfig) -> BuildPlan:
    """The unit tasks of this build, writing under a new staging prefix.

    Parameters
    ----------
    catalog : str
        The catalog.
    images : list of dict
        Every image (:func:`read_images`); *usable*: those with a WCS (:func:`usable_images`).
    usable : list of dict
        The images whose sources are associated.
    changes : Changes
        What to (re)do; on the fast path only the new images are read.
    config : BuildConfig
        The settings.

    Returns
    -------
    BuildPlan

    Raises
    ------
    ObjectsError
        The unit order differs from the last build's.
    """
    unit_order = _unit_order(catalog, images, usable, changes, config)
    new_set = set(changes.new)
    # only the new images on the fast path
    scan = [r for r in usable if r["image_id"] in new_set] if changes.fast else usable
    return _plan(catalog, config, unit_order, images, scan, new_set,
                 new_set | set(changes.redone), existing_layout=changes.layout_ok,
                 rebuild=config.rebuild or not changes.has_tables, fast=changes.fast)


def plan_repair(catalog: str, usable: list[dict], changes: Changes, damage: Damage,
                config: BuildConfig) -> BuildPlan:
    """Unit tasks that rebuild the damaged units from the sources.

    The sources of the images the last build associated, reading the kept associations around
    the units but not the damaged files. An image reprocessed since is matched again (``redo``:
    its objects keep their ids) and the next phase of the build redoes it everywhere; new
    images are left to that phase.

    Parameters
    ----------
    catalog : str
        The catalog.
    usable : list of dict
        The images with a WCS.
    changes : Changes
        The catalog against the record (``changes.state`` is that record).
    damage : Damage
        What :func:`check_tables` found.
    config : BuildConfig
        The settings.

    Returns
    -------
    BuildPlan
    """
    state = changes.state
    seen = state.get("images", {})
    known = [r for r in usable if r["image_id"] in seen]
    redone = {r["image_id"] for r in known
              if seen[r["image_id"]] != changes.current[r["image_id"]]}
    return _plan(catalog, config, state["unit_order"], known, known, set(), redone,
                 units=damage.units, existing_layout=True, repair=sorted(damage.units),
                 skip=damage.keys)


def _plan(catalog: str, config: BuildConfig, unit_order: int, images: list[dict],
          scan: list[dict], new_set: set[str], redo_set: set[str],
          units: set[int] | None = None, **flags) -> BuildPlan:
    """One task per unit the images of *scan* touch (only *units*, when given), its bands
    and nights those of *images*; *flags*: the remaining :class:`UnitTask` fields."""
    mo = margin_order(config.margin_arcsec)
    bands = sorted({r["band"] or "unknown" for r in images})
    nights = sorted({r["night"] for r in images if r["night"] and r["night"] != "unknown"})
    per_unit = _unit_images(scan, unit_order, mo, bands, new_set, redo_set)
    staging = f"{STAGING}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    tasks = [UnitTask(catalog=catalog, staging=staging, unit=u, unit_order=unit_order,
                      radius_arcsec=config.radius_arcsec, margin_order=mo, floor=config.floor,
                      false_alarm=config.false_alarm, images=imgs, nights=nights, bands=bands,
                      **flags)
             for u, imgs in sorted(per_unit.items()) if units is None or u in units]
    cost = _unit_costs(scan, unit_order, {t.unit: len(t.images) for t in tasks})
    tasks.sort(key=lambda t: -cost[t.unit])  # the busiest first: the pool ends together
    return BuildPlan(unit_order, staging, tasks)


def _unit_costs(scan: list[dict], unit_order: int, opens: dict[int, int]) -> dict[int, float]:
    """Per unit, its estimated seconds: the images it opens and the detections in it (each
    image's sources spread over its area, as :func:`_choose_unit_order` counts them)."""
    cost = {u: n * OPEN_SECONDS for u, n in opens.items()}
    if scan and cost:
        ra, dec, n = _spread(scan, 9)
        ok = np.isfinite(ra) & np.isfinite(dec)
        units, inv = group(healpix(ra[ok], dec[ok], unit_order))
        for u, rows in zip(units, np.bincount(inv, n[ok]), strict=True):
            if int(u) in cost:
                cost[int(u)] += float(rows) * SOURCE_SECONDS
    return cost
