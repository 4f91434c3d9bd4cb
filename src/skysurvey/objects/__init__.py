"""From detections to objects: positional association across images, light-curve statistics.

Every source with a position is linked to one object; an object never takes two sources from
one image (mutual-nearest matching within the radius, image by image in time order); a source
left unmatched starts a new object (a transient, or a star seen for the first time).

Work is split by NESTED HEALPix pixel (a *unit*, order ``unit_order`` >= 5, fixed at the first
build). A unit task reads the sources of the images overlapping its pixel plus a margin (one to
two order-15 pixels, 6-13 arcsec, at the default radius; each image's file opened once and only
its row groups that meet the region read, the files being sorted by ``_healpix_29``:
:mod:`.source_reads`), the existing objects of its pixel and its 8 neighbours, associates the
new images, and keeps the objects whose mean position falls inside its pixel. Since the margin
is many radii wide, the two tasks on either side of a border see all detections of a border
object and reach the same result: the owner keeps it, the other drops it, so it is neither
split nor duplicated. Units run in a local process pool, or one AWS Lambda invocation per unit
(:func:`handle_unit_event`; numpy and astropy-healpix only, no scipy). Tables are written per
unit: ``<catalog>/<table>/hpx5=<order-5 pixel>/k<unit order>-<unit pixel>.parquet``.

Incremental: existing associations are kept as they are; only images that are new, or whose
catalog changed since the last build (reprocessed: another ``processed_at`` or pipeline
version), are matched, in time order, against the existing objects (whose ids never change).
When all the changes are new images, each unit merges them into the sufficient statistics it
stored beside its files (``_stats-*.parquet``, :class:`Stats`) and reads no old source; a
reprocessed or removed image makes every unit re-read its images and recompute the statistics
from all detections. Only the units new images touch are rewritten. A build writes its tables into a
staging folder; after every unit has succeeded a ``_complete`` marker is written and the folders
are swapped in (locally an atomic exchange of directories; on S3 a copy, during which a reader
may see some units old and some new: a window of seconds, documented in the README). A build
interrupted before the marker leaves the previous tables untouched and is started over; one
interrupted after it is finished by the next run. Every reader counts every file of a table's
folders, so each build over tables of this layout (even one with nothing new) starts by deleting
the files no build wrote (:func:`stray_keys`: a copy beside a unit file, a unit file in another
partition's folder); a build that rebuilds every unit swaps in only its own files.
One build runs at a time per catalog (:func:`build_lock`): a second one would take the first's
staging folder for an interrupted build and discard it.

The build record (``objects/_build.json``) lists every unit file the build committed (size,
SHA-256, rows). Every build, even one with nothing new, first compares the tables' listing with
it (:func:`check_tables`: sizes, free with the listing; SHA-256 with ``verify``): a unit whose
files are missing, of another size, or not written by the last build (and, on S3, among the
units a swap was replacing when it stopped with its staging gone, :data:`SWAP_KEY`, those whose
files' SHA-256 differ from the record) is rebuilt from the sources before anything else
(:func:`repair`: the images of the record, the kept associations around it, not the damaged
files; its object ids come back from its associations), and a note names the files. When they
cannot be rebuilt (a sources file gone too) the build stops with one line naming them, and
changes nothing.

Object ids: ``(order-13 pixel of the object's position when it was created) << 33 | sequence``,
so a unit allocates ids without asking anybody, and they stay unique across units and runs.

The package, one concept per module (each imports only those listed after it):

- :mod:`.build`: the build and its repair (:func:`build_objects`);
- :mod:`.runners`: where unit tasks run (process pool, Lambda);
- :mod:`.commit`: staging, the swap, the build lock, recovery (one committer per store kind);
- :mod:`.plan`: the catalog's changes and the unit tasks;
- :mod:`.integrity`: what is damaged (the tables against the build record);
- :mod:`.unit`: one unit's read, associate, write (the Lambda entry);
- :mod:`.source_reads`: a unit's pruned reads of the sources files (and their byte counts);
- :mod:`.association` and :mod:`.statistics`: arrays only (numpy);
- :mod:`.model`: the value types; :mod:`.tables`: the tables' layout and reading.

Sky geometry lives in :mod:`skysurvey.geometry`, the SQL helpers in :mod:`skysurvey.queries`;
those of their names that callers took from the former ``objects.py`` (:data:`MOVED`) are
still importable from here.
"""

# moved out of this package, re-exported for existing callers (see MOVED)
from ..geometry import healpix as healpix
from ..geometry import in_region as in_region
from ..geometry import neighbours as neighbours
from ..geometry import pixel_centre as pixel_centre
from ..geometry import separation_arcsec as separation_arcsec
from ..queries import CONE_RANGES as CONE_RANGES
from ..queries import cone_parameters as cone_parameters
from ..queries import most_variable_light_curves as most_variable_light_curves
from . import (
    association,
    build,
    commit,
    integrity,
    model,
    plan,
    runners,
    source_reads,
    statistics,
    tables,
    unit,
)
from .association import *  # noqa: F403
from .build import *  # noqa: F403
from .commit import *  # noqa: F403
from .integrity import *  # noqa: F403
from .model import *  # noqa: F403
from .plan import *  # noqa: F403
from .runners import *  # noqa: F403
from .source_reads import *  # noqa: F403
from .statistics import *  # noqa: F403
from .tables import *  # noqa: F403
from .unit import *  # noqa: F403

#: Names that moved out of this package and are re-exported for existing callers.
MOVED = ("CONE_RANGES", "cone_parameters", "healpix", "in_region", "most_variable_light_curves",
         "neighbours", "pixel_centre", "separation_arcsec")

__all__ = [
    *model.__all__, *tables.__all__, *association.__all__, *statistics.__all__,
    *source_reads.__all__, *unit.__all__, *integrity.__all__, *plan.__all__, *commit.__all__,
    *runners.__all__,
    *build.__all__, *MOVED,
]
