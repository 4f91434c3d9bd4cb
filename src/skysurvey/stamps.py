"""Square stamps around many positions in one image, handled as (n, S²) arrays.

Numpy only (runs in the Lambda). Used by the forced PSF fit (:mod:`skysurvey.forced_psf`):
where each stamp lies (:func:`stamp_geometry`), its pixels (:meth:`Stamps.gather`), the flags
an object gets from its own pixels (:func:`own_flags`), one object's model stamp as seen on a
neighbour's stamp (:func:`model_canvas`, :func:`shifted_stamps`) and float32 row sums and
dot products accumulated as float64 (:func:`sum64`, :func:`rowdot`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .forced import MASKED, NEAR_EDGE, SATURATED

__all__ = [
    "Stamps",
    "model_canvas",
    "own_flags",
    "rowdot",
    "shifted_stamps",
    "stamp_geometry",
    "sum64",
]


@dataclass(frozen=True)
class Stamps:
    """Where square stamps of half-size ``h`` centred on pixels (ix, iy) lie in an image:
    ``edge`` marks those that reach beyond it, ``flat_edge`` their flat pixel indices
    (clipped), ``inside`` (n, S²) whether each pixel is on the image."""

    ix: np.ndarray
    iy: np.ndarray
    h: int
    edge: np.ndarray
    flat_edge: np.ndarray
    inside: np.ndarray

    def gather(self, image: np.ndarray) -> np.ndarray:
        """The stamps' pixels of *image* (of the image's shape), (n, S²): whole rows of S
        pixels copied through a sliding window for stamps within the image."""
        s = 2 * self.h + 1
        # (windows only with a stamp within the image: the image is then at least S wide)
        if self.ix.size and not self.edge.any():  # (a new array already: no second copy)
            windows = np.lib.stride_tricks.sliding_window_view(image, s, axis=1)
            rows = self.iy[:, None] + np.arange(-self.h, self.h + 1)
            return windows[rows, (self.ix - self.h)[:, None]].reshape(-1, s * s)
        out = np.empty((self.ix.size, s * s), image.dtype)
        inner = ~self.edge
        if inner.any():
            windows = np.lib.stride_tricks.sliding_window_view(image, s, axis=1)
            rows = self.iy[inner, None] + np.arange(-self.h, self.h + 1)
            out[inner] = windows[rows, (self.ix[inner] - self.h)[:, None]].reshape(-1, s * s)
        if self.edge.any():
            out[self.edge] = image.ravel()[self.flat_edge]
        return out


def stamp_geometry(shape, x, y, h):
    """:class:`Stamps` of objects (x, y), half-size *h*."""
    ny, nx = shape
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    off = np.arange(-h, h + 1)
    ys, xs = iy[:, None] + off, ix[:, None] + off
    edge = (ix - h < 0) | (ix + h >= nx) | (iy - h < 0) | (iy + h >= ny)
    inside = np.ones((x.size, off.size**2), bool)
    ye, xe = ys[edge], xs[edge]
    inside[edge] = (((ye >= 0) & (ye < ny))[:, :, None]
                    & ((xe >= 0) & (xe < nx))[:, None, :]).reshape(-1, off.size**2)
    flat_edge = ((np.clip(ye, 0, ny - 1) * nx)[:, :, None]
                 + np.clip(xe, 0, nx - 1)[:, None, :]).reshape(-1, off.size**2)
    return Stamps(ix, iy, h, edge, flat_edge, inside)


def own_flags(stamps, x, y, radius, bad):
    """:data:`NEAR_EDGE`, :data:`MASKED`, :data:`SATURATED` of each object from its own
    pixels (within *radius*); *bad* is ``(bad, saturated)`` per stamp pixel (either None),
    and only the stamps that reach beyond the image or hold such pixels are looked at."""
    flags = np.zeros(x.size, np.int64)
    rows = stamps.edge.copy()
    for b in bad:
        if b is not None:
            rows |= b.any(axis=1)
    rows = np.flatnonzero(rows)
    if not rows.size:
        return flags
    off = np.arange(-stamps.h, stamps.h + 1)
    dy2 = (stamps.iy[rows, None] + off - y[rows, None]) ** 2
    dx2 = (stamps.ix[rows, None] + off - x[rows, None]) ** 2
    own = (dy2[:, :, None] + dx2[:, None, :] <= radius**2).reshape(rows.size, -1)
    inside = stamps.inside[rows]
    flags[rows] |= np.where((own & ~inside).any(axis=1), NEAR_EDGE, 0)
    for b, bit in zip(bad, (MASKED, SATURATED), strict=True):
        if b is not None:
            flags[rows] |= np.where((own & inside & b[rows]).any(axis=1), bit, 0)
    return flags


def model_canvas(psf, h):
    """The stamps (n, S²) on canvases (n, S + 1, 3S): each stamp in the middle S columns,
    zeros around and in the last row (what :func:`shifted_stamps` slides over)."""
    s = 2 * h + 1
    canvas = np.zeros((psf.shape[0], s + 1, 3 * s), psf.dtype)
    canvas[:, :s, s:2 * s] = psf.reshape(-1, s, s)
    return canvas


def shifted_stamps(canvas, src, shift, h):
    """Stamps of objects *src* as seen on stamps centred *shift* = (dx, dy) pixels from
    theirs (dx = the source's centre - the destination's), as (m, S²), 0 where they do
    not reach; *canvas* is :func:`model_canvas`'s. Whole rows are copied (sliding windows), not
    single pixels."""
    s = 2 * h + 1
    dx = np.clip(shift[0], -s, s)
    rows = np.arange(s)[None, :] - shift[1][:, None]  # the source row of each row, (m, S)
    rows = np.where((rows >= 0) & (rows < s), rows, s)  # row S is zero
    windows = np.lib.stride_tricks.sliding_window_view(canvas, s, axis=2)  # (n, S+1, 2S+1, S)
    return windows[src[:, None], rows, (s - dx)[:, None]].reshape(src.size, s * s)


def sum64(a):
    """Row sums of a float32 (n, m) array (pairwise), as float64."""
    return a.sum(axis=1).astype(np.float64)


def rowdot(a, b):
    """Row-wise dot products of two float32 (n, m) arrays (no product array), as float64."""
    return np.einsum("ij,ij->i", a, b).astype(np.float64)
