"""Figures of an image's PSF model and of what PSF photometry leaves behind (the notebook's
"The PSF model and its residuals").

:func:`measure_with_psf_model` runs the handler's measurement (:func:`skysurvey.detect.
measure_image` with PSF photometry) and keeps the PSF model it fitted, which the catalog
itself does not store (only its quality, the ``images`` record's ``psf_*`` columns).
:func:`plot_psf_model` draws that model at the image's centre and at a corner;
:func:`plot_psf_residual` a crowded cutout of the image beside the same cutout with every
fitted source subtracted (:func:`fitted_model`). Like :mod:`skysurvey.plots`, each function
takes data and an optional ``ax`` and returns the Figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import detect
from . import psfmodel as pm
from .plots import NothingToPlot

__all__ = [
    "MeasuredImage",
    "crowded_box",
    "fitted_model",
    "measure_with_psf_model",
    "plot_psf_model",
    "plot_psf_residual",
]


class MeasuredImage:
    """One image as the handler measured it with PSF photometry: ``sources`` (DataFrame),
    ``row`` (the ``images`` record), ``grid`` (the PSF model, :class:`~skysurvey.psfmodel.
    PsfGrid`, or None without PSF stars) and ``sub`` (the background-subtracted pixels the
    fits saw)."""

    def __init__(self, sources: pd.DataFrame, row: dict, grid, sub):
        self.sources, self.row, self.grid, self.sub = sources, row, grid, sub


def measure_with_psf_model(image, image_id: str) -> MeasuredImage:
    """:func:`skysurvey.detect.measure_image` with ``DetectionConfig(psf_photometry=True)``,
    keeping the PSF model and pixels that its PSF photometry used
    (:func:`skysurvey.detect.measure_image_pixels`).

    Parameters
    ----------
    image : FitsImage
        The image as :func:`skysurvey.fitsread.read_fits` read it.
    image_id : str
        The id written in every row.

    Returns
    -------
    MeasuredImage
        The sources, the ``images`` record, the PSF model (None without PSF stars) and the
        background-subtracted pixels.
    """
    measured = detect.measure_image_pixels(image, image_id,
                                           detect.DetectionConfig(psf_photometry=True))
    return MeasuredImage(measured.sources.to_pandas(), measured.row, measured.psf_grid,
                         measured.pixels.sub)


def fitted_model(grid, sources: pd.DataFrame, shape) -> np.ndarray:
    """The image of every fitted source: ``flux_psf`` x the PSF model at ``(x_psf, y_psf)``
    (sources without a PSF fit left out).

    Parameters
    ----------
    grid : psfmodel.PsfGrid
        The image's PSF model.
    sources : DataFrame
        ``x_psf``, ``y_psf``, ``flux_psf`` per source.
    shape : (int, int)
        The image's ``(ny, nx)``.

    Returns
    -------
    ndarray
        The model image, *shape*.
    """
    x, y, flux = (sources[c].to_numpy(float) for c in ("x_psf", "y_psf", "flux_psf"))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    half = grid.half - pm.LANCZOS
    model = pm.ModelImage(shape, grid, (x[ok], y[ok]),
                          (np.rint(x[ok]).astype(np.int64), np.rint(y[ok]).astype(np.int64)),
                          (half, half, None))
    return np.asarray(model.image(flux[ok]), float)


def crowded_box(sources: pd.DataFrame, shape, size: int = 64) -> tuple[slice, slice]:
    """The *size* x *size* cutout holding the most sources (searched in steps of size / 4).

    Parameters
    ----------
    sources : DataFrame
        ``x``, ``y`` per source (pixels).
    shape : (int, int)
        The image's ``(ny, nx)``.
    size : int, optional
        The cutout's side (pixels; at most the image's).

    Returns
    -------
    (slice, slice)
        Its rows and columns.
    """
    ny, nx = shape
    size = min(size, ny, nx)
    x, y = sources["x"].to_numpy(float), sources["y"].to_numpy(float)
    step = max(size // 4, 1)
    best, at = -1, (0, 0)
    for y0 in range(0, ny - size + 1, step):
        for x0 in range(0, nx - size + 1, step):
            n = int(np.sum((x >= x0) & (x < x0 + size) & (y >= y0) & (y < y0 + size)))
            if n > best:
                best, at = n, (y0, x0)
    return slice(at[0], at[0] + size), slice(at[1], at[1] + size)


def plot_psf_model(grid, row: dict, axes=None):
    """The PSF model at the image's centre and at its (0, 0) corner (log scale), titled with
    the ``images`` record's ``psf_fwhm_center``, ``psf_fwhm_corner_max`` (the widest corner),
    ``psf_ellipticity_max``, ``psf_nstars`` and ``psf_resid_rms``.

    Parameters
    ----------
    grid : psfmodel.PsfGrid or None
        The image's PSF model (None raises :class:`~skysurvey.plots.NothingToPlot`).
    row : dict
        The image's ``images`` record.
    axes : sequence of two Axes, optional
        Where to draw (default: a new figure).

    Returns
    -------
    Figure
    """
    if grid is None:
        raise NothingToPlot("no PSF model: the image had no PSF stars")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    fig = axes[0].figure
    half = grid.half - pm.LANCZOS
    places = ((*grid.centre, f"centre: FWHM {row['psf_fwhm_center']:.2f} px"),
              (0.0, 0.0, f"corner (0, 0): widest corner {row['psf_fwhm_corner_max']:.2f} px"))
    for ax, (x, y, label) in zip(axes, places, strict=True):
        stamp = pm.render(grid, [x], [y], half)[2][0]
        peak = float(stamp.max())
        image = ax.imshow(np.log10(np.clip(stamp / peak, 1e-4, None)), origin="lower",
                          cmap="magma", vmin=-4, vmax=0,
                          extent=(-half - 0.5, half + 0.5, -half - 0.5, half + 0.5))
        ax.set(title=label, xlabel="dx [px]")
    axes[0].set_ylabel("dy [px]")
    fig.colorbar(image, ax=list(axes), label="log10 (model / peak)", shrink=0.85)
    fig.suptitle(f"PSF model from {row['psf_nstars']} stars (FWHM from the images record): "
                 f"largest ellipticity "
                 f"{row['psf_ellipticity_max']:.3f}, star residual rms "
                 f"{row['psf_resid_rms']:.4f} of the peak", fontsize=10)
    return fig


def plot_psf_residual(sub: np.ndarray, model: np.ndarray, box, sources=None, axes=None):
    """A cutout of the background-subtracted image beside the same cutout minus every fitted
    source, on one colour scale.

    Parameters
    ----------
    sub : ndarray
        The background-subtracted image.
    model : ndarray
        Every fitted source's PSF (:func:`fitted_model`).
    box : (slice, slice)
        The cutout's rows and columns (:func:`crowded_box`).
    sources : DataFrame, optional
        ``x_psf``, ``y_psf``: marked on the data.
    axes : sequence of two Axes, optional
        Where to draw (default: a new figure).

    Returns
    -------
    Figure
    """
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    fig = axes[0].figure
    rows, cols = box
    data, resid = sub[rows, cols], (sub - model)[rows, cols]
    norm = ImageNormalize(data, interval=ZScaleInterval(), stretch=AsinhStretch())
    extent = (cols.start - 0.5, cols.stop - 0.5, rows.start - 0.5, rows.stop - 0.5)
    for ax, values, title in ((axes[0], data, "data (background subtracted)"),
                              (axes[1], resid, "data - every fitted PSF")):
        ax.imshow(values, origin="lower", cmap="gray", norm=norm, extent=extent)
        ax.set(title=title, xlabel="x [px]", ylabel="y [px]")
    if sources is not None:
        x, y = sources["x_psf"].to_numpy(float), sources["y_psf"].to_numpy(float)
        inside = (x >= cols.start) & (x < cols.stop) & (y >= rows.start) & (y < rows.stop)
        axes[0].plot(x[inside], y[inside], "+", color="tab:red", ms=6,
                     label=f"{int(inside.sum())} PSF fits")
        axes[0].legend(loc="upper right", fontsize=8, framealpha=0.8)
    rms = float(np.std(resid))
    fig.suptitle(f"residual rms {rms:.1f} ADU in the cutout (data rms {float(np.std(data)):.1f})",
                 fontsize=10)
    return fig
