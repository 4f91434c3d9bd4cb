"""Figures for the demo and the notebook: each function takes data and returns a Figure.

Pixel coordinates are 0-based and images are drawn with ``origin="lower"``; RA grows to the
left on sky maps, as on the sky.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Ellipse

from .queries import dataset

#: Ellipses are drawn at this many times the isophotal a, b (about the Kron aperture).
ELLIPSE_SCALE = 3.0


def read_catalog(catalog_uri: str, table: str = "sources") -> pd.DataFrame:
    """A catalog table as a DataFrame (with ``band`` and ``night``); a missing catalog raises."""
    return dataset(catalog_uri, table).to_table().to_pandas()


def plot_image_with_sources(data: np.ndarray, sources: pd.DataFrame, title: str = ""):
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

    fig, ax = plt.subplots(figsize=(8, 8))
    norm = ImageNormalize(data, interval=ZScaleInterval(), stretch=AsinhStretch())
    ax.imshow(data, origin="lower", cmap="gray", norm=norm)
    for row in sources.itertuples():
        ax.add_patch(Ellipse((row.x, row.y), 2 * ELLIPSE_SCALE * row.a, 2 * ELLIPSE_SCALE * row.b,
                             angle=np.degrees(row.theta), fill=False, color="tab:red", lw=0.6))
    ax.set(xlabel="x [px]", ylabel="y [px]", title=title or f"{len(sources)} sources")
    return fig


def plot_magnitude_histogram(sources: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = sources.groupby("band") if "band" in sources else [("all", sources)]
    for band, group in groups:
        mags = group["mag"].dropna()
        if len(mags):
            ax.hist(mags, bins=np.arange(np.floor(mags.min()), np.ceil(mags.max()) + 0.25, 0.25),
                    histtype="step", label=str(band))
    ax.set(xlabel="magnitude", ylabel="sources", yscale="log", title="Magnitude distribution")
    ax.legend(title="band")
    return fig


def plot_sky_map(sources: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 6))
    sky = sources.dropna(subset=["ra", "dec"])
    points = ax.scatter(sky["ra"], sky["dec"], c=sky["mag"], s=3, cmap="viridis_r")
    fig.colorbar(points, ax=ax, label="magnitude")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()  # east to the left
    ax.set(xlabel="RA [deg]", ylabel="Dec [deg]", title="Sky map")
    return fig


def plot_snr_histogram(sources: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    snr = sources["snr"].dropna()
    snr = snr[snr > 0]
    bins = np.logspace(np.log10(max(snr.min(), 0.1)), np.log10(snr.max() * 1.01), 40) if len(
        snr) else 10
    ax.hist(snr, bins=bins)
    ax.set(xscale="log", xlabel="SNR", ylabel="sources", title="SNR distribution")
    return fig


def match_to_truth(sources: pd.DataFrame, truth: pd.DataFrame, max_pix: float = 1.5):
    """Nearest detection (pixel space) for every truth source within *max_pix*."""
    from scipy.spatial import cKDTree

    if sources.empty or truth.empty:
        return pd.DataFrame(columns=["mag", "true_mag", "flux", "true_flux", "sep"])
    dist, idx = cKDTree(sources[["x", "y"]].to_numpy()).query(truth[["x", "y"]].to_numpy())
    ok = dist <= max_pix
    found = sources.iloc[idx[ok]].reset_index(drop=True)
    true = truth[ok].reset_index(drop=True)
    return pd.DataFrame({"mag": found["mag"], "true_mag": true["mag"], "flux": found["flux"],
                         "true_flux": true["flux"], "sep": dist[ok]})


def plot_mag_vs_truth(matched: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(matched["true_mag"], matched["mag"], s=4)
    if len(matched):
        lo, hi = matched["true_mag"].min(), matched["true_mag"].max()
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="1:1")
        ax.legend()
    ax.set(xlabel="true magnitude", ylabel="measured magnitude", title="Measured vs true")
    return fig


def save_all(sources: pd.DataFrame, out_dir, *, image: tuple[str, np.ndarray] | None = None,
             truth: pd.DataFrame | None = None) -> list[Path]:
    """Write every figure as PNG into *out_dir*; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"magnitudes": plot_magnitude_histogram(sources), "sky_map": plot_sky_map(sources),
               "snr": plot_snr_histogram(sources)}
    if image is not None:
        image_id, data = image
        on_image = sources[sources["image_id"] == image_id]
        figures[f"detections_{image_id}"] = plot_image_with_sources(data, on_image, image_id)
    if truth is not None:
        figures["mag_vs_truth"] = plot_mag_vs_truth(truth)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
