"""The values a build passes around: its settings, the detections a unit works on, a unit's
task (also the Lambda event), the catalog's changes, the plan, the damage found, the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import SkySurveyError
from .tables import LAYOUT, unit_of_key

__all__ = [
    "SYSTEMATIC_FLOOR",
    "VARIABLE_FALSE_ALARM",
    "BuildConfig",
    "BuildPlan",
    "BuildReport",
    "Changes",
    "Damage",
    "Detections",
    "ObjectsError",
    "UnitTask",
    "no_detections",
]

#: magnitude error added in quadrature before the chi2 test: what our own photometry
#: reproduces on constant stars (aperture corrections, flat field, seeing), see the README
SYSTEMATIC_FLOOR = 0.02
#: false-alarm probability per object and band of the chi2 variability test
VARIABLE_FALSE_ALARM = 1e-4


class ObjectsError(SkySurveyError):
    """The objects step cannot run: no catalog, no images, incompatible settings."""


@dataclass(frozen=True)
class BuildConfig:
    """The settings of one build (``scripts/build_objects.py``'s flags)."""

    radius_arcsec: float = 1.0
    workers: int = 1
    rebuild: bool = False
    floor: float = SYSTEMATIC_FLOOR
    false_alarm: float = VARIABLE_FALSE_ALARM
    unit_order: int | None = None  # None: chosen from the data at the first build (5..12)
    verify: bool = False  # also compare the tables' checksums with the build record's

    @property
    def margin_arcsec(self) -> float:
        return max(5.0, 5.0 * self.radius_arcsec)


@dataclass
class Detections:
    """The detections a unit works on (arrays of equal length)."""

    image: np.ndarray  # index into the unit's image list
    source_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    weight: np.ndarray  # 1 / sigma_position^2, arcsec^-2
    mjd: np.ndarray
    night: np.ndarray  # night index, -1 unknown
    band: np.ndarray  # band index
    mag: np.ndarray  # calibrated (mag_apcorr when measured, else mag); NaN when unusable
    mag_err: np.ndarray
    obj: np.ndarray  # object index (existing associations), -1: to be matched

    def __len__(self) -> int:
        return len(self.ra)

    def take(self, index) -> Detections:
        return Detections(**{k: v[index] for k, v in asdict(self).items()})


def no_detections() -> Detections:
    """Empty :class:`Detections`."""
    cols = {k: np.zeros(0) for k in ("ra", "dec", "weight", "mjd", "mag", "mag_err")}
    ints = {k: np.zeros(0, np.int64) for k in ("image", "night", "band", "source_id", "obj")}
    return Detections(**cols, **ints)


@dataclass
class UnitTask:
    """What one unit (a NESTED HEALPix pixel) does; also the Lambda event, as a dict."""

    catalog: str
    staging: str  # key prefix under the catalog where this build's tables go
    unit: int
    unit_order: int
    radius_arcsec: float
    margin_order: int
    floor: float
    false_alarm: float
    images: list[dict]  # image_id, key, mjd, night, band, pixel_scale, redo, new (bools)
    nights: list[str]
    bands: list[str]
    existing_layout: bool  # existing tables are in this layout (else: scan them whole)
    rebuild: bool = False
    fast: bool = False  # only new images: merge into the stored statistics (no old sources)
    #: a repair (:func:`plan_repair`): the units restored together, and the table files
    #: (keys under the catalog) not to read, lost or changed since the build that wrote them
    repair: list[int] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)

    def event(self) -> dict:
        """The Lambda event; ``repair`` and ``skip`` only in a repair (a function of the
        previous version runs the other units as before)."""
        fields = {k: v for k, v in asdict(self).items() if v or k not in ("repair", "skip")}
        return {"task": "objects_unit", **fields}


@dataclass
class Changes:
    """The catalog against the last build's record: what a build has to (re)do.

    *state* is that record (None on the first build, with ``--rebuild``, or beside tables of an
    older version, *has_tables* then True); *current* maps every image to its fingerprint.
    """

    state: dict | None
    has_tables: bool
    current: dict[str, str]
    new: list[str]
    redone: list[str]
    removed: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def layout_ok(self) -> bool:
        """The existing tables are in this version's layout (False on ``--rebuild``)."""
        return bool(self.state and self.state.get("layout") == LAYOUT)

    @property
    def unchanged(self) -> bool:
        return self.layout_ok and not self.new and not self.redone and not self.removed

    @property
    def fast(self) -> bool:
        """Only new images: merge them into the stored statistics, re-read no old source."""
        return self.layout_ok and self.has_tables and not self.redone and not self.removed


@dataclass
class BuildPlan:
    """The unit tasks of one build and the staging prefix they write under."""

    unit_order: int
    staging: str
    tasks: list[UnitTask]


@dataclass
class Damage:
    """Unit files that differ from the build record: lost, changed, or not written by it."""

    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # of a swap that did not finish
    swap: bool = False  # a swap marker was found (its staging gone)

    @property
    def keys(self) -> list[str]:
        return sorted({*self.missing, *self.changed, *self.unknown, *self.unfinished})

    @property
    def units(self) -> set[int]:
        return {unit_of_key(k) for k in self.keys}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def describe(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        parts = ((self.missing, "missing"), (self.changed, "changed since the build wrote it"),
                 (self.unknown, "not written by the last build"), (self.unfinished, "old or new"))
        found = "; ".join(f"{names(keys)} {what}" for keys, what in parts if keys)
        return ("a swap of staged files did not finish and its staging is gone: "
                if self.swap else "") + found


@dataclass
class BuildReport:
    """What a build did (``build_objects.py`` prints :meth:`summary`)."""

    status: str = "ok"  # ok | unchanged | error
    n_images: int = 0
    n_new_images: int = 0
    n_redone_images: int = 0
    n_removed_images: int = 0
    n_images_without_wcs: int = 0
    n_objects: int = 0
    n_new_objects: int = 0
    n_associations: int = 0
    n_dropped_objects: int = 0
    n_units: int = 0
    unit_order: int = 0
    partitions: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: what the units read of the sources files (:class:`~.source_reads.ReadStats`' counts)
    reads: dict = field(default_factory=dict)

    def summary(self) -> str:
        rows = [("status", self.status), ("images", self.n_images),
                ("new images", self.n_new_images), ("reprocessed images", self.n_redone_images),
                ("removed images", self.n_removed_images),
                ("images without WCS", self.n_images_without_wcs),
                ("objects", f"{self.n_objects:,}"), ("new objects", f"{self.n_new_objects:,}"),
                ("associations", f"{self.n_associations:,}"),
                ("dropped objects", self.n_dropped_objects),
                ("units (order)", f"{self.n_units} ({self.unit_order})"),
                ("seconds", f"{self.seconds:.1f}")]
        if self.reads.get("files"):  # bytes of the sources files read / their size
            r = self.reads
            rows.append(("sources read (x)",
                         f"{r['bytes_read'] / max(r['source_bytes'], 1):.2f}"))
            rows.append(("  bytes", f"{r['bytes_read']:,} / {r['source_bytes']:,}"))
            rows.append(("  row groups", f"{r['row_groups_read']:,}/{r['row_groups']:,}"))
        lines = ["Objects", "-" * 36] + [f"{k:<20}{v!s:>16}" for k, v in rows]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)
