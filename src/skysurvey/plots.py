"""Figures for the demo, the run report and the notebook.

Every function takes data (and an optional ``ax``), draws, and returns the matplotlib Figure.
Nothing here chooses a backend: Jupyter keeps its inline backend (figures appear under the
cell), scripts get matplotlib's default (Agg on a machine without a display). A plot that would
come out empty raises :class:`NothingToPlot` with a one-line reason instead; :func:`save_all`
turns that into a "skipped" line.

Pixel coordinates are 0-based and images are drawn with ``origin="lower"``; RA grows to the
left on sky maps, as on the sky, and one degree of RA is drawn ``cos(Dec)`` as wide as one
degree of Dec, so the map has the shape the sky has. Sources with a flux <= 0 (noise or an
over-subtracted background on crowded fields, flagged; 8-9% of some real fields) have no
magnitude and no meaningful SNR: the detection overlay, the magnitude and SNR histograms and the
sky map leave them out and their captions say how many (:func:`positive_flux`).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Ellipse

from .export import ELLIPSE_SCALE  # the DS9 regions draw the same ellipses
from .queries import VIEWS, dataset, run_query

__all__ = [
    "BAND_COLORS",
    "BAND_ORDER",
    "QUALITY_MIN_SPAN",
    "NothingToPlot",
    "band_color",
    "image_wcs",
    "match_one_to_one",
    "match_to_reference",
    "match_to_truth",
    "overlapping_images",
    "plot_calibration_residuals",
    "plot_image_quality",
    "plot_image_with_sources",
    "plot_light_curves",
    "plot_mag_vs_truth",
    "plot_magnitude_histogram",
    "plot_object_map",
    "plot_sky_map",
    "plot_snr_histogram",
    "plot_variability",
    "positive_flux",
    "read_catalog",
    "robust_limits",
    "save_all",
    "save_figure",
]

#: One colour per common band (the Rubin Observatory's scheme: blue to dark red with
#: wavelength, readable side by side); other bands cycle through matplotlib's colours.
BAND_COLORS = {"u": "#56b4e9", "g": "#008060", "r": "#ff4000", "i": "#850000",
               "z": "#6600cc", "y": "#000000"}
#: Bands in wavelength order (legends list them so); others follow alphabetically.
BAND_ORDER = ("u", "g", "r", "i", "z", "y")


class NothingToPlot(ValueError):
    """The data hold nothing this plot can show (no magnitudes, no WCS...); one-line reason."""


def read_catalog(catalog_uri: str, table: str = "sources") -> pd.DataFrame:
    """A catalog table as a DataFrame (with ``band`` and ``night``); a missing catalog raises.

    ``sources`` (and ``associations``) hold the rows SQL sees: only images with an ``images``
    record, so a killed run's orphan file is not plotted (``queries.VIEWS``).

    Parameters
    ----------
    catalog_uri : str
    table : str, optional

    Returns
    -------
    pandas.DataFrame
    """
    if table in VIEWS:
        return run_query(f"SELECT * FROM {table}", str(catalog_uri))
    return dataset(catalog_uri, table).to_table().to_pandas()


def band_color(band, index: int = 0) -> str:
    """The colour a band gets in every figure (unknown bands: the default cycle)."""
    return BAND_COLORS.get(str(band).lower(), f"C{index % 10}")


def _new_axes(ax, figsize, **subplot_kw):
    """``(fig, ax)``: the given axes, or a new pyplot figure (so Jupyter shows it)."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, subplot_kw=subplot_kw or None)
    return fig, ax


def _by_band(df: pd.DataFrame):
    """``[(band, rows)]`` in wavelength order (``[("all", df)]`` without a band column)."""
    if "band" not in df or df["band"].isna().all():
        return [("all", df)]
    groups = dict(list(df.groupby("band", sort=True)))

    def order(band):
        name = str(band).lower()
        return (BAND_ORDER.index(name), "") if name in BAND_ORDER else (len(BAND_ORDER), name)
    return [(band, groups[band]) for band in sorted(groups, key=order)]


def image_wcs(header):
    """The celestial WCS of a FITS header, or None when it has none (or a broken one)."""
    import warnings

    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FITSFixedWarning and friends: only the answer counts
            wcs = WCS(header, naxis=2)
            if not wcs.has_celestial:
                return None
            wcs.all_pix2world([[0.0, 0.0]], 0)  # a broken WCS fails here
            return wcs.celestial
    except Exception:
        return None


def _north_east_arrows(ax, wcs, shape) -> None:
    """N and E arrows from the image's lower-left corner, along the directions the WCS gives."""
    import astropy.units as u
    from astropy.wcs.utils import pixel_to_skycoord, proj_plane_pixel_scales, skycoord_to_pixel

    ny, nx = shape
    x0, y0 = 0.12 * nx, 0.12 * ny
    length = 0.1 * min(nx, ny)
    origin = pixel_to_skycoord(x0, y0, wcs, origin=0).icrs  # N/E of ICRS, whatever the frame
    step = length * float(np.mean(proj_plane_pixel_scales(wcs))) * u.deg  # CUNIT: deg
    for label, position_angle in (("N", 0.0), ("E", 90.0)):
        tip = origin.directional_offset_by(position_angle * u.deg, step)
        tx, ty = skycoord_to_pixel(tip, wcs, origin=0)
        dx, dy = float(tx) - x0, float(ty) - y0
        scale = length / (np.hypot(dx, dy) or 1.0)
        dx, dy = dx * scale, dy * scale
        ax.annotate("", xy=(x0 + dx, y0 + dy), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 1.5})
        ax.text(x0 + 1.3 * dx, y0 + 1.3 * dy, label, color="yellow", ha="center",
                va="center", fontsize=11, fontweight="bold")


def plot_image_with_sources(data: np.ndarray, sources: pd.DataFrame, title: str = "", *,
                            wcs=None, band: str | None = None, ax=None):
    """The image (zscale, asinh) with one ellipse per source at :data:`ELLIPSE_SCALE` x (a, b).

    With a celestial *wcs* the axes are RA/Dec with a coordinate grid and N/E arrows; without
    one, pixel axes. *band* goes into the title.
    """
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

    if ax is None:
        fig = plt.figure(figsize=(8, 8))
        ax = fig.add_subplot(projection=wcs) if wcs is not None else fig.add_subplot()
    fig = ax.figure
    sources, dropped = positive_flux(sources)
    norm = ImageNormalize(data, interval=ZScaleInterval(), stretch=AsinhStretch())
    ax.imshow(data, origin="lower", cmap="gray", norm=norm)
    for row in sources.itertuples():
        ax.add_patch(Ellipse((row.x, row.y), 2 * ELLIPSE_SCALE * row.a, 2 * ELLIPSE_SCALE * row.b,
                             angle=np.degrees(row.theta), fill=False, color="tab:red", lw=0.6))
    ax.set_xlim(-0.5, data.shape[1] - 0.5)
    ax.set_ylim(-0.5, data.shape[0] - 0.5)
    proxy = Ellipse((0, 0), 1, 1, fill=False, color="tab:red", lw=1.0,
                    label=f"{len(sources)} sources: ellipses at {ELLIPSE_SCALE:g} x (a, b), "
                          f"about the Kron aperture{_left_out(dropped)}")
    if hasattr(ax, "coords") and wcs is not None:
        ax.coords[0].set_axislabel("RA (ICRS)")
        ax.coords[1].set_axislabel("Dec (ICRS)")
        ax.coords.grid(color="white", alpha=0.35, ls="dotted")
        _north_east_arrows(ax, wcs, data.shape)
    else:
        ax.set(xlabel="x [px]", ylabel="y [px]")
    ax.legend(handles=[proxy], loc="upper right", fontsize=8, framealpha=0.8)
    parts = [p for p in (title, f"band {band}" if band else "") if p]
    ax.set_title(" - ".join(parts) or f"{len(sources)} sources")
    return fig


def plot_magnitude_histogram(sources: pd.DataFrame, ax=None):
    """Magnitude distribution, one step histogram per band (log counts)."""
    sources, dropped = positive_flux(sources)
    if "mag" not in sources or sources["mag"].dropna().empty:
        raise NothingToPlot("no magnitudes: no image has a zero point (MAGZERO/PHOTZP... or "
                            "a reference catalog)")
    fig, ax = _new_axes(ax, (7, 4.5))
    mags = sources["mag"].dropna()
    bins = np.arange(np.floor(mags.min()), np.ceil(mags.max()) + 0.25, 0.25)
    for i, (band, group) in enumerate(_by_band(sources)):
        values = group["mag"].dropna()
        if len(values):
            ax.hist(values, bins=bins, histtype="step", lw=1.5, color=band_color(band, i),
                    label=f"{band} ({len(values)})")
    ax.set(xlabel="magnitude", ylabel="sources per 0.25 mag", yscale="log",
           title=f"Magnitude distribution{_left_out(dropped)}")
    ax.legend(title="band")
    return fig


def _unit_vectors(ra, dec) -> np.ndarray:
    r, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])


def _footprint(points: np.ndarray):
    """The convex hull of *points* (tangent-plane arcsec) grown by 1% about its centre, as a
    matplotlib Path; a box around them when they are fewer than 3 or on one line."""
    from matplotlib.path import Path as Polygon
    from scipy.spatial import ConvexHull, QhullError

    try:
        corners = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        (x0, y0), (x1, y1) = points.min(axis=0) - 1.0, points.max(axis=0) + 1.0  # 1 arcsec
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    centre = corners.mean(axis=0)
    return Polygon(centre + 1.01 * (corners - centre))


def overlapping_images(sources: pd.DataFrame, min_fraction: float = 0.02
                       ) -> list[tuple[str, str]]:
    """Pairs of images whose fields overlap on the sky.

    Each image's field is the convex hull of its detections on the tangent plane (so RA
    wrapping at 0/360 and rotated fields are handled, and a box around a diagonal row of fields
    does not count); two images overlap when at least *min_fraction* of either one's detections
    fall inside the other's field.
    """
    from .geometry import tangent_plane

    sky = sources.dropna(subset=["ra", "dec"])
    fields = {}
    for image_id, group in sky.groupby("image_id", sort=True):
        vectors = _unit_vectors(group["ra"], group["dec"])
        centre = vectors.mean(axis=0)
        centre /= np.linalg.norm(centre) or 1.0
        radius = float(np.arccos(np.clip(vectors @ centre, -1, 1)).max())
        fields[image_id] = (group, centre, radius)
    pairs = []
    ids = list(fields)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ga, ca, ra_), (gb, cb, rb) = fields[a], fields[b]
            if np.arccos(np.clip(ca @ cb, -1, 1)) > ra_ + rb + 1e-9:
                continue  # their circles do not even touch
            mid = ca + cb
            mid /= np.linalg.norm(mid) or 1.0
            ra0, dec0 = np.degrees(np.arctan2(mid[1], mid[0])), np.degrees(np.arcsin(mid[2]))
            pa = np.column_stack(tangent_plane(ga["ra"], ga["dec"], ra0, dec0))
            pb = np.column_stack(tangent_plane(gb["ra"], gb["dec"], ra0, dec0))
            inside_b = _footprint(pb).contains_points(pa).mean()
            inside_a = _footprint(pa).contains_points(pb).mean()
            if max(inside_a, inside_b) >= min_fraction:
                pairs.append((a, b))
    return pairs


def positive_flux(sources: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``(rows with flux > 0, number left out)``: a negative or zero flux (noise, or an
    over-subtracted background in a crowded field; flagged) has no magnitude and no meaningful
    SNR, so the figures leave it out and say so (rows without a ``flux`` column are kept)."""
    if "flux" not in sources:
        return sources, 0
    keep = sources["flux"].isna() | (sources["flux"] > 0)
    return sources[keep], int((~keep).sum())


def _left_out(n: int) -> str:
    return f" ({n} with flux <= 0 left out)" if n else ""


def plot_sky_map(sources: pd.DataFrame, ax=None):
    """Detections on the sky, one colour per band, RA to the left, equal angular scales.

    When images overlap (the same field in several bands or nights), a star is drawn once per
    image: the title says how many images overlap (:func:`overlapping_images`, from each
    image's field, not its RA/Dec box). Sources with flux <= 0 are left out (counted in the
    title).
    """
    sky = sources.dropna(subset=["ra", "dec"]) if {"ra", "dec"} <= set(sources) else sources[:0]
    if sky.empty:
        raise NothingToPlot("no source has RA/Dec: the images have no celestial WCS")
    sky, dropped = positive_flux(sky)
    fig, ax = _new_axes(ax, (7, 6.5))
    bands = _by_band(sky)
    size = 10 if len(sky) > 2000 else 18
    for i, (band, group) in enumerate(bands):  # hollow markers: overlapping bands stay visible
        ax.scatter(group["ra"], group["dec"], s=size, lw=0.8, facecolors="none",
                   edgecolors=band_color(band, i), marker="os^Dv<>"[i % 7],
                   label=f"{band}: {len(group)} detections")
    dec0 = float(np.radians(sky["dec"].median()))
    ax.set_aspect(1.0 / max(np.cos(dec0), 1e-3), adjustable="datalim")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()  # east to the left
    n_images = sky["image_id"].nunique() if "image_id" in sky else 1
    pairs = overlapping_images(sky) if "image_id" in sky else []
    note = (f"{n_images} images, {len({i for p in pairs for i in p})} overlapping: a star "
            "appears once per image" if pairs else f"{n_images} image(s), no overlap")
    ax.set(xlabel="RA [deg]", ylabel="Dec [deg]", title=f"Sky map\n{note}{_left_out(dropped)}")
    ax.legend(title="band", markerscale=2, fontsize=8)
    return fig


def plot_snr_histogram(sources: pd.DataFrame, ax=None):
    """Signal-to-noise distribution on a log axis, per band (sources with flux > 0; the title
    counts the others)."""
    sources, dropped = positive_flux(sources)
    snr = sources["snr"].dropna() if "snr" in sources else pd.Series(dtype=float)
    snr = snr[snr > 0]
    if snr.empty:
        raise NothingToPlot("no source with a positive SNR")
    fig, ax = _new_axes(ax, (7, 4.5))
    bins = np.logspace(np.log10(max(snr.min(), 0.1)), np.log10(snr.max() * 1.01), 40)
    groups = _by_band(sources)
    values = [g["snr"][g["snr"] > 0].dropna() for _, g in groups]
    ax.hist(values, bins=bins, stacked=True, label=[f"{b} ({len(v)})" for (b, _), v in
                                                     zip(groups, values, strict=True)],
            color=[band_color(b, i) for i, (b, _) in enumerate(groups)])
    ax.axvline(5, color="k", lw=0.8, ls="--", label="SNR 5")
    ax.set(xscale="log", xlabel="SNR (flux / flux_err)", ylabel="sources",
           title=f"SNR distribution (stacked by band){_left_out(dropped)}")
    ax.legend(title="band", fontsize=8)
    return fig


def match_one_to_one(found: np.ndarray, truth: np.ndarray, max_sep: float):
    """Pairs ``(i_found, i_truth, sep)``: closest pairs first, each row used at most once.

    Greedy closest-first matching within *max_sep*: a detection is never paired with two truth
    sources (nearest-neighbour matching does that with blends, making false outliers).
    """
    from scipy.spatial import cKDTree

    if len(found) == 0 or len(truth) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    pairs = cKDTree(found).sparse_distance_matrix(cKDTree(truth), max_sep, output_type="ndarray")
    order = np.argsort(pairs["v"], kind="stable")
    used_f, used_t = set(), set()
    keep = []
    for k in order:
        i, j = int(pairs["i"][k]), int(pairs["j"][k])
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            keep.append(k)
    keep = np.asarray(keep, dtype=int)
    return pairs["i"][keep].astype(int), pairs["j"][keep].astype(int), pairs["v"][keep]


def match_to_truth(sources: pd.DataFrame, truth: pd.DataFrame, max_pix: float = 1.5):
    """Detections matched one-to-one (pixel space, within *max_pix*) to a truth catalog.

    One row per pair: measured ``mag``, ``flux``, the truth's ``true_mag``, ``true_flux``, the
    separation ``sep`` (pixels), and ``band``/``image_id`` when the sources have them.

    Parameters
    ----------
    sources, truth : pandas.DataFrame
    max_pix : float, optional

    Returns
    -------
    pandas.DataFrame
    """
    columns = ["image_id", "band", "mag", "true_mag", "flux", "true_flux", "sep"]
    if sources.empty or truth.empty:
        return pd.DataFrame(columns=columns)
    i, j, sep = match_one_to_one(sources[["x", "y"]].to_numpy(float),
                                 truth[["x", "y"]].to_numpy(float), max_pix)
    found = sources.iloc[i].reset_index(drop=True)
    true = truth.iloc[j].reset_index(drop=True)
    out = pd.DataFrame({
        "image_id": found.get("image_id"), "band": found.get("band"),
        "mag": found.get("mag", np.nan), "true_mag": true.get("mag", np.nan),
        "flux": found["flux"], "true_flux": true["flux"], "sep": sep})
    return out.sort_values("true_mag" if "mag" in true else "sep", kind="stable").reset_index(
        drop=True)


def plot_mag_vs_truth(matched: pd.DataFrame, ax=None):
    """Measured against true magnitude (one-to-one matches), coloured by band, with residuals.

    *ax*, when given, is a pair of axes: the comparison and the residual panel below it.
    """
    ok = matched.dropna(subset=["mag", "true_mag"]) if len(matched) else matched
    if ok.empty:
        raise NothingToPlot("no matched source has both a measured and a true magnitude")
    if ax is None:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 7.5), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1.3]})
    else:
        top, bottom = ax
        fig = top.figure
    lo, hi = ok["true_mag"].min(), ok["true_mag"].max()
    for i, (band, group) in enumerate(_by_band(ok)):
        color = band_color(band, i)
        top.scatter(group["true_mag"], group["mag"], s=5, color=color, alpha=0.7, lw=0,
                    label=f"{band} ({len(group)})")
        bottom.scatter(group["true_mag"], group["mag"] - group["true_mag"], s=5, color=color,
                       alpha=0.7, lw=0)
    top.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="1:1")
    residual = ok["mag"] - ok["true_mag"]
    edges = np.arange(np.floor(lo), np.ceil(hi) + 0.5, 0.5)
    centres, medians = [], []
    for a, b in itertools.pairwise(edges):
        sel = residual[(ok["true_mag"] >= a) & (ok["true_mag"] < b)]
        if len(sel) >= 5:
            centres.append((a + b) / 2)
            medians.append(float(sel.median()))
    bottom.axhline(0, color="k", lw=0.8)
    if centres:
        bottom.plot(centres, medians, color="k", lw=1.5, ls="--", label="median per 0.5 mag")
        bottom.legend(fontsize=8, loc="lower left")
    spread = max(0.3, float(np.nanpercentile(np.abs(residual), 95)) * 1.2)
    bottom.set_ylim(-spread, spread)
    top.set(ylabel="measured magnitude (Kron)",
            title=f"Measured vs true: {len(ok)} one-to-one matches")
    top.legend(title="band", fontsize=8)
    bottom.set(xlabel="true magnitude", ylabel="measured - true")
    return fig


def match_to_reference(sources: pd.DataFrame, images: pd.DataFrame, reference, *,
                       radius_arcsec: float = 1.0, mag_column: str = "mag_apcorr"
                       ) -> pd.DataFrame:
    """Each image's sources matched one-to-one to the reference stars around it.

    *reference* is a :class:`skysurvey.reference.ReferenceSpec` (or a URI): any format the
    calibration reads (Parquet, CSV, FITS, VOTable, HATS, local or ``s3://``), the stars taken
    in the image's band as the calibration takes them (``--reference-bands`` mapping, else a
    ``<band>mag`` column), moved to the image's epoch when the catalog has proper motions.
    Pairs are kept closest first within *radius_arcsec* on the tangent plane. One row per
    pair: image_id, band, the measured magnitude (*mag_column*, ``mag`` where it is null),
    ``ref_mag``, ``residual`` (measured - reference), ``class_star``, ``flags``,
    ``sep_arcsec``. Images without a position, band or reference stars are left out.

    Parameters
    ----------
    sources, images : pandas.DataFrame
    reference : ReferenceSpec or str
    radius_arcsec : float, optional
    mag_column : str, optional

    Returns
    -------
    pandas.DataFrame
    """
    from .calibrate import tangent_plane
    from .reference import ReferenceError, ReferenceSpec, julian_year, open_reference

    spec = reference if isinstance(reference, ReferenceSpec) else ReferenceSpec.parse(
        str(reference))
    catalog = open_reference(spec.uri)
    columns_out = ["image_id", "band", "mag", "ref_mag", "residual", "class_star", "flags",
                   "sep_arcsec"]
    rows = []
    for image in images.to_dict("records"):
        found = sources[sources["image_id"] == image["image_id"]].dropna(subset=["ra", "dec"])
        centre = (image.get("ra_center"), image.get("dec_center"))
        if found.empty or not all(np.isfinite(pd.to_numeric(pd.Series(centre)))):
            continue
        half_diagonal = np.hypot(image["width"], image["height"]) / 2 * (
            image.get("pixel_scale") or 1.0) / 3600
        try:
            stars = catalog.stars(image.get("band"), centre[0], centre[1], 1.05 * half_diagonal,
                                  spec, julian_year(image.get("mjd")))
        except ReferenceError:  # no magnitude column for this band
            continue
        sx, sy = tangent_plane(found["ra"], found["dec"], *centre)
        rx, ry = tangent_plane(stars.ra, stars.dec, *centre)
        i, j, sep = match_one_to_one(np.column_stack([sx, sy]), np.column_stack([rx, ry]),
                                     radius_arcsec)
        picked = found.iloc[i]
        measured = picked[mag_column] if mag_column in picked else picked["mag"]
        rows.append(pd.DataFrame({
            "image_id": image["image_id"], "band": image.get("band"),
            "mag": measured.fillna(picked["mag"]).to_numpy(), "ref_mag": stars.mag[j],
            "class_star": picked["class_star"].to_numpy() if "class_star" in picked else np.nan,
            "flags": picked["flags"].to_numpy() if "flags" in picked else 0,
            "sep_arcsec": sep}))
    if not rows:
        return pd.DataFrame(columns=columns_out)
    out = pd.concat(rows, ignore_index=True)
    out["residual"] = out["mag"] - out["ref_mag"]
    return out[columns_out]


def plot_calibration_residuals(pairs: pd.DataFrame, ax=None):
    """Calibrated minus reference magnitude of matched stars against the reference magnitude,
    one colour per band, with each image's median residual in the legend.

    Parameters
    ----------
    pairs : pandas.DataFrame
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    ok = pairs.dropna(subset=["residual", "ref_mag"]) if len(pairs) else pairs
    if ok.empty:
        raise NothingToPlot("no source matched to a reference star with a magnitude "
                            "(no reference catalog, or no zero point)")
    fig, ax = _new_axes(ax, (7.5, 4.5))
    for i, (band, group) in enumerate(_by_band(ok)):
        medians = ", ".join(f"{iid} {m:+.3f}" for iid, m in
                            group.groupby("image_id")["residual"].median().items())
        ax.scatter(group["ref_mag"], group["residual"], s=6, alpha=0.6, lw=0,
                   color=band_color(band, i), label=f"{band}: median {medians}")
    ax.axhline(0, color="k", lw=0.8)
    spread = max(0.2, float(np.nanpercentile(np.abs(ok["residual"]), 95)) * 1.2)
    ax.set_ylim(-spread, spread)
    ax.set(xlabel="reference magnitude", ylabel="calibrated - reference [mag]",
           title=f"Calibration residuals: {len(ok)} stars matched to the reference")
    ax.legend(fontsize=7, loc="lower left")
    return fig


#: The smallest axis span of each image-quality panel: values within it of the median are
#: never called outliers (0.5" of seeing, 1 mag of depth or zero point).
QUALITY_MIN_SPAN = {"seeing_arcsec": 0.5, "depth_5sigma": 1.0, "zero_point": 1.0}


def robust_limits(values: pd.Series, min_span: float, n_sigma: float = 5.0):
    """``(axis limits, outliers)``: limits around the values within ``n_sigma`` robust sigmas
    (1.4826 x MAD) of the median, or *min_span* of it, whichever is wider; the values outside
    as a Series (same index). One 9,800-arcsec seeing then no longer squashes the others into
    a line. ``(None, empty)`` when there is no finite value."""
    finite = pd.to_numeric(values, errors="coerce").dropna()
    finite = finite[np.isfinite(finite)]
    if finite.empty:
        return None, finite
    median = float(finite.median())
    sigma = 1.4826 * float((finite - median).abs().median())
    half = max(n_sigma * sigma, min_span)
    outliers = finite[(finite - median).abs() > half]
    inliers = finite.drop(outliers.index)
    lo, hi = float(inliers.min()), float(inliers.max())
    pad = max(0.1 * (hi - lo), 0.05 * min_span)
    return (lo - pad, hi + pad), outliers


def plot_image_quality(quality: pd.DataFrame, axes=None):
    """Seeing, 5-sigma depth and zero point (with its error) per image, coloured by band.

    *quality* is :func:`skysurvey.report.quality_table` (or the ``images`` table with
    ``seeing_arcsec``); *axes*, when given, three axes.

    Parameters
    ----------
    quality : pandas.DataFrame
    axes : sequence of matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = [c for c in ("seeing_arcsec", "depth_5sigma", "zero_point") if c in quality]
    if quality.empty or not names or quality[names].isna().all().all():
        raise NothingToPlot("no image with a seeing, depth or zero point")
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    fig = axes[0].figure
    labels = {"seeing_arcsec": "seeing (FWHM) [arcsec]", "depth_5sigma": "5-sigma depth [mag]",
              "zero_point": "zero point [mag]"}
    ids = list(quality["image_id"])
    for ax, name in zip(axes, ("seeing_arcsec", "depth_5sigma", "zero_point"), strict=True):
        column = quality[name] if name in quality else pd.Series(np.nan, index=quality.index)
        limits, outliers = robust_limits(column, QUALITY_MIN_SPAN[name])
        for i, (band, group) in enumerate(_by_band(quality)):
            x = [ids.index(v) for v in group["image_id"]]
            with_err = name == "zero_point" and "zero_point_err" in group
            err = group["zero_point_err"] if with_err else None
            values = group[name] if name in group else pd.Series(np.nan, index=group.index)
            shown = values.where(~values.index.isin(outliers.index))
            ax.errorbar(x, shown, yerr=err, fmt="o", color=band_color(band, i),
                        label=str(band), capsize=2)
        if limits is not None:
            ax.set_ylim(*limits)
        for index, value in outliers.items():  # off the axis: a triangle at the edge, labelled
            x = ids.index(quality.loc[index, "image_id"])
            high = value > limits[1]
            edge = limits[1] if high else limits[0]
            ax.plot(x, edge, marker="^" if high else "v", color="k", ms=8, clip_on=False)
            ax.annotate(f"{value:.4g}", (x, edge), xytext=(4, -10 if high else 4),
                        textcoords="offset points", fontsize=7)
        if len(outliers):
            ax.set_title(f"{len(outliers)} outlier(s) off scale (triangles)", fontsize=8)
        ax.set_xticks(range(len(ids)), ids, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(labels[name])
    axes[0].legend(title="band", fontsize=8)
    fig.suptitle("Image quality")
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> Path:
    """Write *fig* as PNG and close it (pyplot keeps figures alive until closed)."""
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def save_all(sources: pd.DataFrame, out_dir, *, image: tuple | None = None,
             truth: pd.DataFrame | None = None, extra: dict | None = None):
    """Write every figure that has something to show as PNG into *out_dir*.

    *image* is ``(image_id, data)`` or ``(image_id, data, header)`` (the header gives WCS axes
    and the band); *truth* the output of :func:`match_to_truth`; *extra* maps names to callables
    returning a figure. Returns ``(paths, skipped)``: the PNG paths and one
    ``"<name>.png: <reason>"`` line per plot that had nothing to show.

    Parameters
    ----------
    sources : pandas.DataFrame
    out_dir : str or os.PathLike
    image : tuple, optional
    truth : pandas.DataFrame, optional
    extra : dict, optional

    Returns
    -------
    paths : list of Path
    skipped : list of str
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    makers = {"magnitudes": lambda: plot_magnitude_histogram(sources),
              "sky_map": lambda: plot_sky_map(sources),
              "snr": lambda: plot_snr_histogram(sources)}
    if image is not None:
        image_id, data, *rest = image
        header = rest[0] if rest else None
        on_image = sources[sources["image_id"] == image_id]
        band = on_image["band"].iloc[0] if "band" in on_image and len(on_image) else None
        wcs = image_wcs(header) if header is not None else None
        makers[f"detections_{image_id}"] = lambda: plot_image_with_sources(
            data, on_image, image_id, wcs=wcs, band=band)
    if truth is not None:
        makers["mag_vs_truth"] = lambda: plot_mag_vs_truth(truth)
    makers.update(extra or {})
    paths, skipped = [], []
    for name, make in makers.items():
        try:
            fig = make()
        except NothingToPlot as exc:
            skipped.append(f"{name}.png: {exc}")
            continue
        paths.append(save_figure(fig, out / f"{name}.png"))
    return paths, skipped


# --- survey objects (scripts/build_objects.py) --------------------------------------------


def _light_curve_points(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A ``light_curve`` result split into what is drawn: ``detected`` (the detection's
    magnitude), ``forced`` (not detected, a forced magnitude with SNR >= 3) and ``limits``
    (not detected and no significant flux: the 5-sigma limit bounds it). Rows of the older
    detections-only form are all ``detected``."""
    if "is_detection" not in rows:
        return {"detected": rows.dropna(subset=["mag"]), "forced": rows[:0], "limits": rows[:0]}
    detected = rows["is_detection"].fillna(False).astype(bool)
    limit = rows["is_upper_limit"].fillna(False).astype(bool) & ~detected
    forced = ~detected & ~limit & rows["forced_mag"].notna()
    return {"detected": rows[detected & rows["mag"].notna()],
            "forced": rows[forced].assign(mag=rows["forced_mag"], mag_err=rows["forced_mag_err"]),
            "limits": rows[limit & rows["mag_limit"].notna()]}


def _of_band(rows: pd.DataFrame, band) -> pd.DataFrame:
    return rows[rows["band"] == band] if "band" in rows and band != "all" else rows


def plot_light_curves(light_curves: pd.DataFrame, ax=None):
    """Light curves from ``light_curve`` query rows, one panel per object, one colour per
    band: detections as filled circles with 1-sigma error bars, forced measurements where
    nothing was detected (SNR >= 3) as open circles, and the epochs with no flux as downward
    triangles at their 5-sigma limiting magnitude. *ax*: one axes per object (or one axes
    for a single object); default a new figure.

    Parameters
    ----------
    light_curves : pandas.DataFrame
    ax : matplotlib.axes.Axes or sequence of them, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    lc = light_curves[light_curves["mjd"].notna()] if {"mjd", "object_id"} <= set(
        light_curves) else light_curves[:0]
    ids = [i for i in dict.fromkeys(lc["object_id"])
           if any(len(v) for v in _light_curve_points(lc[lc["object_id"] == i]).values())]
    if not ids:
        raise NothingToPlot("no light curve: run scripts/build_objects.py (no detection with "
                            "a date and a magnitude)")
    if ax is None:
        fig, axes = plt.subplots(len(ids), 1, figsize=(8, 1.0 + 2.0 * len(ids)), sharex=True,
                                 squeeze=False)
        axes = list(axes[:, 0])
    else:
        axes = list(np.atleast_1d(ax))
        fig = axes[0].figure
    for a, oid in zip(axes, ids, strict=False):
        parts = _light_curve_points(lc[lc["object_id"] == oid])
        bands = pd.concat(list(parts.values()))
        for i, (band, _) in enumerate(_by_band(bands)):
            color = band_color(band, i)
            det, forced, limits = (_of_band(parts[k], band)
                                   for k in ("detected", "forced", "limits"))
            if len(det):
                a.errorbar(det["mjd"], det["mag"], yerr=det.get("mag_err"), fmt="o", ms=5,
                           capsize=2, color=color, label=f"{band} detected")
            if len(forced):
                a.errorbar(forced["mjd"], forced["mag"], yerr=forced["mag_err"], fmt="o",
                           ms=5, capsize=2, mfc="none", color=color, label=f"{band} forced")
            if len(limits):
                a.scatter(limits["mjd"], limits["mag_limit"], marker="v", s=36, color=color,
                          label=f"{band} limit (5σ, no flux)")
        a.invert_yaxis()
        a.set(ylabel="magnitude", title=f"object {oid}")
        a.legend(fontsize=7, loc="best")
    axes[-1].ticklabel_format(axis="x", useOffset=False, style="plain")  # MJD as written
    axes[-1].set(xlabel="MJD")
    fig.tight_layout()
    return fig


def plot_variability(photometry: pd.DataFrame, ax=None):
    """Scatter of each object's magnitudes against its mean magnitude, per band; objects
    flagged ``variable`` ringed in black (``object_photometry`` joined with ``objects``).

    Parameters
    ----------
    photometry : pandas.DataFrame
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    phot = photometry.dropna(subset=["mean_mag", "scatter"]) \
        if {"mean_mag", "scatter"} <= set(photometry) else photometry[:0]
    if phot.empty:
        raise NothingToPlot("no object seen twice in a band: nothing to measure a scatter on")
    fig, ax = _new_axes(ax, (7, 4.5))
    for i, (band, group) in enumerate(_by_band(phot)):
        ax.scatter(group["mean_mag"], group["scatter"], s=8, alpha=0.6,
                   color=band_color(band, i), label=f"{band} ({len(group)})")
    if "variable" in phot:
        flagged = phot[phot["variable"].fillna(False).astype(bool)]
        ax.scatter(flagged["mean_mag"], flagged["scatter"], s=40, facecolors="none",
                   edgecolors="k", lw=1, label=f"flagged variable ({flagged['object_id'].nunique()}"
                                                " objects)")
    ax.set(xlabel="mean magnitude", ylabel="scatter [mag]", yscale="log",
           title="Variability: scatter against magnitude")
    ax.legend(fontsize=8)
    return fig


def plot_object_map(objects: pd.DataFrame, ax=None):
    """Objects on the sky coloured by number of detections (RA to the left, equal scales).

    Parameters
    ----------
    objects : pandas.DataFrame
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    sky = objects.dropna(subset=["ra", "dec"]) if {"ra", "dec"} <= set(objects) else objects[:0]
    if sky.empty:
        raise NothingToPlot("no objects: run scripts/build_objects.py first")
    fig, ax = _new_axes(ax, (7, 6.5))
    points = ax.scatter(sky["ra"], sky["dec"], c=sky["n_detections"], s=10, cmap="viridis")
    fig.colorbar(points, ax=ax, label="detections")
    dec0 = float(np.radians(sky["dec"].median()))
    ax.set_aspect(1.0 / max(np.cos(dec0), 1e-3), adjustable="datalim")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set(xlabel="RA [deg]", ylabel="Dec [deg]", title=f"{len(sky)} objects")
    return fig
