"""A spatially varying PSF model built from an image's own stars (arrays in, arrays out).

PSFEx's idea, in numpy only (so it runs in the Lambda): the PSF is a pixel basis, an image of
the *pixel-convolved* PSF sampled at the image's own pixels, whose every pixel is a low-order
polynomial in the image position (``order`` 0, 1 or 2: 1, 3 or 6 basis images). A source at a
sub-pixel position sees the model shifted by a separable Lanczos-3 interpolation.

Native sampling, not an oversampled grid: on noise-free synthetic stars (Moffat beta 3.5) the
native basis gave flux ratios 1.0006 +- 0.0008 (FWHM 4 px), 0.9997 +- 0.0018 (2.5 px) and
1.0001 +- 0.004 (1.6 px, undersampled), while a 2x oversampled grid built the same way gave
1-2% phase-dependent scatter (its shortest wavelengths are constrained by few stars). The
``oversample`` field is kept in :class:`PsfGrid` for a later oversampled builder.

Building (:func:`build`): the stars' fluxes are refitted with the current model, their
residuals ``(data - flux * model) / flux`` go to the model pixel nearest each sample's offset
from the star (native sampling: every model pixel gets one sample of every star), and each
model pixel's polynomial is fitted to its samples by weighted least squares (K x K normal
equations per pixel from a few matrix products, solved by a Cholesky factorisation vectorised
over the pixels). A few iterations converge to the model whose interpolation fits the stars
(photutils' EPSFBuilder's residual stacking, with PSFEx's polynomial in x, y). Each
iteration the model is normalised to unit sum; the stars' positions stay at their windowed
centroids (refitting them let the model and the positions drift together: 5% flux scatter at
FWHM 1.6 px), so the model is centred on the windowed centroid.

Evaluation (:func:`render`): the shift's y pass for all sources in one matrix product (taps
x terms against shifted copies of the basis), its x pass with each source's banded matrix of
taps (batched matmul); derivatives with respect to the position from the kernel's derivative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "LANCZOS",
    "RENDER_CHUNK",
    "GridLayout",
    "ModelImage",
    "PsfGrid",
    "StarStamps",
    "as_float32",
    "build",
    "choose_order",
    "lanczos",
    "n_terms",
    "nearest_distance",
    "noise_at",
    "normal_equations",
    "poly_terms",
    "quality",
    "render",
    "shape_at",
    "stamp_index",
]

#: Lanczos kernel half-width (grid nodes).
LANCZOS = 3
#: Minimum stars per polynomial term.
STARS_PER_TERM = 8
#: Sources rendered at a time by :class:`ModelImage` (bounds render's temporaries).
RENDER_CHUNK = 2048


@dataclass(frozen=True)
class PsfGrid:
    """The PSF model of one image.

    ``basis[k]`` is the k-th polynomial term's image on the grid (``oversample`` nodes per
    pixel, offsets ``-half .. half`` pixels from the centre); the PSF at image position (x, y)
    is ``sum_k poly_terms(x, y)[k] * basis[k]``, normalised to unit sum over native pixels.
    """

    basis: np.ndarray  # (K, G, G), G = 2 * half * oversample + 1
    oversample: int
    half: int
    order: int
    centre: tuple[float, float]  # polynomial origin (x, y), pixels
    scale: tuple[float, float]  # polynomial scale (x, y), pixels
    n_stars: int = 0
    resid_rms: float = math.nan  # RMS residual of the stars, fraction of their peak
    extra: dict = field(default_factory=dict, compare=False)


def n_terms(order: int) -> int:
    """Number of polynomial terms of total degree <= *order* in two variables."""
    return (order + 1) * (order + 2) // 2


def poly_terms(x, y, order, centre, scale) -> np.ndarray:
    """The polynomial terms ``1, u, v, u², uv, v², ...`` at positions (x, y): (N, K).

    ``u = (x - centre[0]) / scale[0]``, ``v`` likewise; terms of total degree <= *order*.
    """
    u = (np.asarray(x, float) - centre[0]) / scale[0]
    v = (np.asarray(y, float) - centre[1]) / scale[1]
    out = np.empty((*u.shape, n_terms(order)))
    for i, (p, q) in enumerate((d, j) for d in range(order + 1) for j in range(d + 1)):
        out[..., i] = u ** (p - q) * v ** q
    return out


def lanczos(z, a: int = LANCZOS) -> np.ndarray:
    """The Lanczos kernel ``sinc(z) sinc(z / a)`` for ``|z| < a``, else 0."""
    z = np.asarray(z, float)
    return np.where(np.abs(z) < a, np.sinc(z) * np.sinc(z / a), 0.0)


def _taps(shift, derivative=False, reach=LANCZOS):
    """Lanczos-3 taps (N, 2 reach + 1) for sub-pixel *shifts* (N,), summing to 1: the model
    value at offset ``u - shift`` is ``sum_d taps[d] * model[u + d]``, d = -reach..reach
    (*reach* > LANCZOS for shifts beyond half a pixel); with *derivative* also their
    derivative with respect to the shift.

    With *derivative*, :func:`lanczos` at ``z = -shift - d`` from one sine and cosine per
    source (``sin(pi z)`` is ``-(-1)^d sin(pi shift)``, ``sin(pi z / 3)`` by angle addition),
    worked out as (taps, N) arrays: long inner loops."""
    a = LANCZOS
    d = np.arange(-reach, reach + 1)[:, None]
    s = np.asarray(shift, float)[None, :]
    z = -s - d
    if not derivative:
        taps = lanczos(z)
        return (taps / taps.sum(axis=0)).T
    sign = np.where(d % 2, 1.0, -1.0)
    ps, cd, sd = np.pi * s, np.cos(np.pi * d / a), np.sin(np.pi * d / a)
    sa, ca = np.sin(ps / a), np.cos(ps / a)
    f_num, g_num = sign * np.sin(ps), -(sa * cd + ca * sd)  # sin(pi z), sin(pi z / a)
    small, inside = np.abs(z) < 1e-8, np.abs(z) < a
    zs = np.where(small, 1.0, z)
    f, g = f_num / (np.pi * zs), g_num * a / (np.pi * zs)  # sinc(z), sinc(z / a)
    taps = np.where(small, 1.0, np.where(inside, f * g, 0.0))
    total = taps.sum(axis=0)
    # d/dz: (cos(pz) pz - sin(pz)) / (pz z), likewise for pz / a
    df, dg = (-sign * np.cos(ps) - f) / zs, ((ca * cd - sa * sd) - g) / zs
    dtaps = -np.where(inside & ~small, df * g + f * dg, 0.0)
    return (taps / total).T, ((dtaps * total - taps * dtaps.sum(axis=0)) / total**2).T


def render(grid: PsfGrid, x, y, half_out: int, derivatives: bool = False, centre=None):
    """The PSF of sources at (x, y) on stamps of half-size *half_out* centred on their
    nearest pixels (or on the pixels *centre* = (ix, iy), within a few pixels of them).

    Each source's model (its polynomial terms times the basis, one matrix product for all)
    is shifted by a separable Lanczos-3 interpolation. The basis sums to 1 and the taps
    conserve sums, so a full stamp sums to 1 and a cropped one keeps the model's scale.
    Returns ``(ix, iy, P)`` with P (N, S, S), or ``(ix, iy, P, dP/dx, dP/dy)`` with
    *derivatives* (the change of P as the source moves by +1 px), in the basis' dtype (a
    float32 basis renders in float32: half the memory traffic).
    """
    if grid.oversample != 1:
        raise ValueError("render samples native-pixel models (oversample 1) only")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if centre is None:
        ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    else:
        ix, iy = (np.asarray(c, np.int64) for c in centre)
    fx, fy = x - ix, y - iy
    # taps reach LANCZOS nodes beyond the shift: a stamp centred off the nearest pixel
    # needs more of them (those few sources are rendered on their own)
    extra = np.maximum(np.ceil(np.maximum(np.abs(fx), np.abs(fy)) - 0.5), 0).astype(int)
    far = extra > 0
    if far.any() and not far.all():
        near = ~far
        parts = [render(grid, x[sel], y[sel], half_out, derivatives, (ix[sel], iy[sel]))[2:]
                 for sel in (near, far)]
        back = np.argsort(np.r_[np.flatnonzero(near), np.flatnonzero(far)])
        return (ix, iy, *(np.concatenate(p)[back] for p in zip(*parts, strict=True)))
    reach = LANCZOS + int(extra.max(initial=0))
    dtype = grid.basis.dtype
    terms = poly_terms(x, y, grid.order, grid.centre, grid.scale).astype(dtype)  # (N, K)
    h, window = grid.half, half_out + reach  # the model pixels the stamp's taps reach
    pad = max(window - h, 0)
    basis = np.pad(grid.basis, ((0, 0), (pad, pad), (pad, pad))) if pad else grid.basis
    c = h + pad
    basis = basis[:, c - window:c + window + 1, c - window:c + window + 1]
    gw = 2 * window + 1
    size, nt, n = 2 * half_out + 1, 2 * reach + 1, x.size
    # y pass, all sources in one product: row i is sum_{d,k} ty[d] t[k] basis[k, i + d, :],
    # (N, nt K) @ (nt K, size gw); x pass: each source's banded (gw, size) matrix of taps
    shifted = np.stack([basis[:, d:d + size] for d in range(nt)]).reshape(-1, size * gw)
    if not derivatives:
        ty = _taps(fy, reach=reach).astype(dtype)
        rows = (ty[:, :, None] * terms[:, None, :]).reshape(n, -1) @ shifted
        wx = _banded(_taps(fx, reach=reach).astype(dtype), size)
        return ix, iy, rows.reshape(n, size, gw) @ wx.transpose(0, 2, 1)
    tx, dtx = (t.astype(dtype) for t in _taps(fx, True, reach))
    ty = np.concatenate(_taps(fy, True, reach)).astype(dtype)  # taps, then derivatives
    coef = (ty.reshape(2, n, nt, 1) * terms[:, None, :]).reshape(2 * n, -1)
    rows = (coef @ shifted).reshape(2, n, size, gw)
    wxt = _banded(tx, size).transpose(0, 2, 1)
    return ix, iy, rows[0] @ wxt, rows[0] @ _banded(dtx, size).transpose(0, 2, 1), rows[1] @ wxt


def _banded(taps, size):
    """(N, size, size + k - 1) matrices with row i holding the k *taps* in columns i .. i+k-1
    (a strided view of one zeroed buffer: row i + 1 starts one element later)."""
    n, k = taps.shape
    buf = np.zeros((n, size, size + k), taps.dtype)
    buf[:, :, :k] = taps[:, None, :]
    return buf.reshape(n, -1)[:, :size * (size + k - 1)].reshape(n, size, size + k - 1)


def as_float32(grid: PsfGrid) -> PsfGrid:
    """The same model with a float32 basis (:func:`render` then works in float32)."""
    return replace(grid, basis=grid.basis.astype(np.float32))


def stamp_index(shape, ix, iy, half):
    """Flat indices of square stamps in an image.

    Parameters
    ----------
    shape : (int, int)
        The image's ``(ny, nx)``.
    ix, iy : (N,) int arrays
        The stamps' centre pixels.
    half : int
        Half-size: stamps of S = 2 half + 1 pixels a side.

    Returns
    -------
    (flat, inside)
        Flat indices (N, S, S), clipped to the image (int32 when the image has fewer than
        2**31 pixels: half the memory), and whether each pixel is inside it.
    """
    ny, nx = shape
    dtype = np.int32 if ny * nx < 2**31 else np.int64
    off = np.arange(-half, half + 1, dtype=dtype)
    yy = np.asarray(iy).astype(dtype)[:, None, None] + off[None, :, None]
    xx = np.asarray(ix).astype(dtype)[:, None, None] + off[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    return np.clip(yy, 0, ny - 1) * nx + np.clip(xx, 0, nx - 1), inside


class ModelImage:
    """Many sources' model stamps at fixed positions, on stamps centred on given pixels, and
    where they land in a padded copy of the image, so the model image for any amplitudes is
    one weighted ``bincount`` (PSF photometry's neighbour model).

    Parameters
    ----------
    shape : (int, int)
        The image's ``(ny, nx)``.
    grid : PsfGrid
        The model (a float32 basis renders in float32).
    xy : tuple of (N,) arrays
        The sources' positions, pixels.
    centre : tuple of (N,) int arrays
        The pixels the stamps are centred on (within a few pixels of the positions).
    halves : tuple
        ``(half, small, big)``, described below.
    known : tuple
        ``(small_stamps, earlier)``, described below.

    *halves* = (half, small, big): the sources where *big* is set (None: all) get stamps of
    *half*, the others the fit stamp's *small*. *known* = (small_stamps, earlier), either
    None: every source's model on its fit stamp at these positions (N, S²), and an earlier
    rendering whose stamps are kept for the sources at the same positions with the same
    stamp size (not rendered again)."""

    def __init__(self, shape, grid, xy, centre, halves, known=(None, None)):
        half, small, big = halves
        small_stamps, earlier = known
        self.shape = shape
        self.x, self.y = (np.array(v, float) for v in xy)
        n = self.x.size
        self.ix, self.iy = centre
        big = np.ones(n, bool) if big is None or small >= half else big.copy()
        same = np.zeros(n, bool)
        if earlier is not None:
            same = (self.x == earlier.x) & (self.y == earlier.y) & (big == earlier.big)
            earlier._last = (None, None)  # its model image is not asked for again
        self.big = big
        self.stamps = {}  # half-size: (sources, their stamps)
        self.row = np.zeros(n, np.int64)  # each source's row in its group's stamps
        self.small = small
        ny, nx = shape
        reach = max(0, -int(np.min(self.ix, initial=0)), -int(np.min(self.iy, initial=0)),
                    int(np.max(self.ix, initial=0)) - nx + 1,
                    int(np.max(self.iy, initial=0)) - ny + 1)
        self.pad = pad = half + reach + 1
        self.width = nx + 2 * pad
        self.size = (ny + 2 * pad) * self.width
        # each group's sources in the order of their stamps' rows (the model image is made
        # in bands of rows)
        groups = [(np.flatnonzero(sel), h) for sel, h in ((big, half), (~big, small))]
        groups = [(idx[np.argsort(self.iy[idx], kind="stable")], h) for idx, h in groups
                  if idx.size]
        # every stamp's values in one array (the groups' stamps are views of it)
        self.values = np.empty(sum(idx.size * (2 * h + 1) ** 2 for idx, h in groups),
                               np.float32)
        self.groups = []  # sources, their stamps' centre rows and columns (padded), stamps
        start = 0
        for idx, h in groups:
            size = idx.size * (2 * h + 1) ** 2
            psf = self.values[start:start + size].reshape(idx.size, 2 * h + 1, 2 * h + 1)
            start += size
            todo = np.ones(idx.size, bool)
            keep = same[idx]
            if keep.any():
                psf[keep] = earlier.stamps[h][1][earlier.row[idx[keep]]]
                todo = ~keep
            if h == small and small_stamps is not None:
                psf[todo] = small_stamps[idx[todo]].reshape(-1, 2 * h + 1, 2 * h + 1)
            else:  # in chunks of sources: render's temporaries stay a few MB
                rows = np.flatnonzero(todo)
                for c in (rows[i:i + RENDER_CHUNK] for i in range(0, rows.size, RENDER_CHUNK)):
                    sel = idx[c]
                    psf[c] = render(grid, self.x[sel], self.y[sel], h,
                                    centre=(self.ix[sel], self.iy[sel]))[2]
            self.stamps[h] = (idx, psf)
            self.row[idx] = np.arange(idx.size)
            self.groups.append((idx, self.iy[idx] + pad, self.ix[idx] + pad, psf))
        self.half = half
        self._last = (None, None)

    def own(self, rows):
        """Sources *rows*' models on their fit stamps (N, (2 small + 1)²), from the stamps."""
        idx = np.arange(self.x.size)[rows]
        s = self.small
        out = np.empty((idx.size, (2 * s + 1) ** 2), np.float32)
        for h, (_, psf) in self.stamps.items():
            sel = self.big[idx] if h == self.half else ~self.big[idx]
            c = slice(h - s, h + s + 1)
            out[sel] = psf[self.row[idx[sel]], c, c].reshape(-1, out.shape[1])
        return out

    def padded(self, amp):
        """Sum of amplitude x PSF over all sources, on the image padded by ``pad`` pixels
        (the last result is kept: fits ask again for the same amplitudes)."""
        last_amp, last = self._last
        if last_amp is not None and np.array_equal(last_amp, amp):
            return last
        self._last = (None, None)  # the old image goes before the new one is made
        out = np.zeros((self.size // self.width, self.width), np.float32)
        self._add_into(out, amp)
        self._last = (np.array(amp, copy=True), out)
        return out

    def _add_into(self, out, amp):
        """Add amplitude x PSF of every source into the padded float32 image *out*, in bands
        of rows (one float64 ``bincount`` of a band's stamps at a time: no whole-image
        float64 temporaries)."""
        rows, width = out.shape
        h = self.half
        band = max(2 * h + 1, (1 << 20) // width)
        amp32 = np.asarray(amp).astype(np.float32)
        for r0 in range(0, rows, band):
            lo, hi = r0 - h, min(r0 + band + h, rows)
            acc = None
            for idx, cy, cx, psf in self.groups:
                s, e = np.searchsorted(cy, [r0, r0 + band])
                if e <= s:
                    continue
                g = psf.shape[1] // 2
                off = np.arange(-g, g + 1)
                local = (off[:, None] * width + off[None, :]).ravel()
                flat = (((cy[s:e] - lo) * width + cx[s:e])[:, None] + local).ravel()
                weights = (psf[s:e] * amp32[idx[s:e], None, None]).ravel()
                part = np.bincount(flat, weights, (hi - lo) * width)
                acc = part if acc is None else np.add(acc, part, out=acc)
            if acc is not None:
                a = max(lo, 0)
                out[a:hi] += acc.reshape(-1, width)[a - lo:]

    def image(self, amp):
        """Sum of amplitude x PSF over all sources, on the image."""
        p = self.pad
        return self.padded(amp)[p:-p, p:-p]

    def rows(self, amp, lo, hi):
        """Rows [lo, hi) of :meth:`padded` (float64), from the stamps that reach them only
        (one ``bincount``, its indices and weights written in place)."""
        width, g = self.width, self.half
        amp32 = np.asarray(amp).astype(np.float32)
        parts = []
        for idx, cy, cx, psf in self.groups:
            s, e = np.searchsorted(cy, [lo - psf.shape[1] // 2, hi + psf.shape[1] // 2])
            if e > s:
                parts.append((idx[s:e], cy[s:e], cx[s:e], psf[s:e]))
        total = sum(p[3].size for p in parts)
        flat, weight = np.empty(total, np.intp), np.empty(total)
        at = 0
        for idx, cy, cx, psf in parts:
            m, h = psf.shape[0], psf.shape[1] // 2
            off = np.arange(-h, h + 1)
            local = (off[:, None] * width + off[None, :]).ravel()
            np.add(((cy - (lo - 2 * g)) * width + cx)[:, None], local,
                   out=flat[at:at + psf.size].reshape(m, -1))
            np.multiply(psf, amp32[idx, None, None],
                        out=weight[at:at + psf.size].reshape(psf.shape))
            at += psf.size
        out = np.bincount(flat, weight, (hi - lo + 4 * g) * width).reshape(-1, width)
        return out[2 * g:2 * g + hi - lo]

    def take(self, amp, where, chunk=2048):
        """``padded(amp).ravel()[where]`` (float32) without the whole image: *where* (N, ...)
        holds each source's indices (within a few stamp sizes of each other), made for
        chunks of sources in the order of their rows (at most *chunk* sources, centres
        within ~1 MB of rows) from the rows they need."""
        n = where.shape[0]
        where = where.reshape(n, -1)
        out = np.empty(where.shape, np.float32)
        if n == 0:
            return out
        centre = where[:, where.shape[1] // 2] // self.width
        order = np.argsort(centre, kind="stable")
        centre = centre[order]
        span = max(64, (1 << 20) // self.width)  # rows of a chunk's centres (float64 band)
        start = 0
        while start < n:
            end = min(start + chunk, int(np.searchsorted(centre, centre[start] + span)))
            c = order[start:max(end, start + 1)]
            start += c.size
            w = where[c]
            lo, hi = int(w.min()) // self.width, int(w.max()) // self.width + 1
            out[c] = self.rows(amp, lo, hi).reshape(-1)[w - lo * self.width]
        return out

    def subtract_from(self, image, amp):
        """``image -= image(amp)`` in place, in bands of rows (no whole model image)."""
        p = self.pad
        ny = image.shape[0]
        band = max(64, (1 << 20) // self.width)
        for r0 in range(0, ny, band):
            r1 = min(r0 + band, ny)
            image[r0:r1] -= self.rows(amp, r0 + p, r1 + p)[:, p:-p]
        return image

    def index(self, flat):
        """Indices into :meth:`padded` of the image's flat indices *flat* (int32 if it fits)."""
        nx = self.shape[1]
        flat = np.asarray(flat)
        out = (flat // nx).astype(np.int32 if self.size < 2**31 else np.int64, copy=False)
        out += self.pad
        out *= self.width
        out += flat % nx
        out += self.pad
        return out

    def fits(self, ix, iy, small):
        """Whether the stamps are centred on pixels (ix, iy) with fit stamps of *small*."""
        return small == self.small and np.array_equal(ix, self.ix) and np.array_equal(iy, self.iy)

    def moved(self, x, y):
        """Whether the positions differ from the rendered ones."""
        return not (np.array_equal(x, self.x) and np.array_equal(y, self.y))


def normal_equations(columns, w, resid):
    """Per-source normal matrix ``J^T W J`` and ``J^T W r`` of the Jacobian *columns* (each
    (N, ...) like *resid*): one float32 dot product per pair of columns (float32 sums over
    one stamp: ~1e-6 relative), returned as float64."""
    n, k = w.shape[0], len(columns)
    cols = [np.broadcast_to(c, resid.shape).reshape(n, -1) for c in columns]
    w, resid = w.reshape(n, -1), resid.reshape(n, -1)
    normal = np.empty((n, k, k))
    rhs = np.empty((n, k))
    for i in range(k):
        wi = w * cols[i]
        rhs[:, i] = np.einsum("ij,ij->i", wi, resid)
        for j in range(i, k):
            normal[:, i, j] = normal[:, j, i] = np.einsum("ij,ij->i", wi, cols[j])
    return normal, rhs


def nearest_distance(x, y, px, py, reach):
    """Distance from each (x, y) to the nearest of (px, py) when within *reach*, else inf
    (chunks of at most two million pairs)."""
    out = np.full(x.size, np.inf)
    step = max(1, 2_000_000 // max(px.size, 1))
    for start in range(0, x.size if px.size else 0, step):
        sel = slice(start, start + step)
        d2 = ((x[sel, None] - px[None, :]) ** 2 + (y[sel, None] - py[None, :]) ** 2).min(axis=1)
        out[sel] = np.where(d2 <= reach**2, np.sqrt(d2), np.inf)
    return out


def noise_at(rms, flat):
    """The noise map at flat indices (a broadcast scalar without making the map)."""
    if not any(rms.strides):
        return np.full(flat.shape, rms.flat[0], rms.dtype)
    return rms.reshape(-1)[flat]


def choose_order(n_stars: int, max_order: int = 2) -> int:
    """Polynomial degree the star count supports (STARS_PER_TERM stars per term)."""
    for order in range(max_order, 0, -1):
        if n_stars >= STARS_PER_TERM * n_terms(order):
            return order
    return 0


def _spd_solve(a, b, ridge):
    """Solutions (K, M) of the symmetric positive definite systems *a* (K, K, M), *b* (K, M)
    with ``ridge * a[0, 0]`` added to the diagonal: a Cholesky factorisation vectorised over
    M (a few dozen operations on (M,) vectors instead of M small LAPACK solves)."""
    k = b.shape[0]
    low = np.zeros_like(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(k):
            d = a[j, j] + ridge * a[0, 0] - np.einsum("lm,lm->m", low[j, :j], low[j, :j])
            low[j, j] = np.sqrt(d)
            for i in range(j + 1, k):
                low[i, j] = (a[i, j] - np.einsum("lm,lm->m", low[i, :j], low[j, :j])) / low[j, j]
        x = np.empty_like(b)
        for i in range(k):  # low y = b, then low^T x = y
            x[i] = (b[i] - np.einsum("lm,lm->m", low[i, :i], x[:i])) / low[i, i]
        for i in reversed(range(k)):
            x[i] = (x[i] - np.einsum("lm,lm->m", low[i + 1:, i], x[i + 1:])) / low[i, i]
    return x


class _Stars:
    """:func:`build`'s stars as (N, P) float64 and what every iteration reuses, so that its
    sums are a few matrix products: with ``a = flux * use``, a model pixel's normal matrix
    is ``sum_n w a² t tᵀ``, its right side ``sum_n t (a w s - a² w m)`` (the residual
    ``(s - flux m) / flux`` at weight ``w flux²``, never made)."""

    def __init__(self, stars: StarStamps, terms):
        n = stars.stamps.shape[0]
        self.s = np.asarray(stars.stamps, float).reshape(n, -1)
        self.w = np.asarray(stars.weights, float).reshape(n, -1)
        self.both = np.empty((2 * n, self.s.shape[1]))  # w s, then w m (set by refit)
        np.multiply(self.w, self.s, out=self.both[:n])
        self.sws = np.einsum("np,np->n", self.both[:n], self.s)
        self.valid = self.w > 0
        self.dof = np.maximum(self.valid.sum(axis=1) - 1, 1)
        self.terms = terms
        self.iu = np.triu_indices(terms.shape[1])
        self.pairs = terms[:, self.iu[0]] * terms[:, self.iu[1]]
        self.model = None  # (N, P), the last refit's

    def refit(self, model):
        """Fluxes (linear) and reduced chi² of the stars against *model* (N, S, S)."""
        n = self.s.shape[0]
        self.model = m = model.reshape(n, -1)
        wm = np.multiply(self.w, m, out=self.both[n:])
        a, b = np.einsum("np,np->n", wm, self.s), np.einsum("np,np->n", wm, m)
        with np.errstate(divide="ignore", invalid="ignore"):
            amp = a / b
        # sum w (s - amp m)², expanded (float64: the cancellation costs ~1e-12)
        return amp, (self.sws - 2 * amp * a + amp * amp * b) / self.dof

    def pixel_fit(self, flux, use, ridge=1e-6):
        """Each model pixel's polynomial correction (P, K) from the stars' residuals, one
        sample of every star per model pixel (0 where fewer than K + 1 stars cover it)."""
        n, k = self.terms.shape
        fa = np.where(use, flux, 0.0)
        packed = (self.w.T @ (self.pairs * (fa * fa)[:, None])).T
        normal = np.empty((k, k, packed.shape[1]))
        normal[self.iu[0], self.iu[1]] = normal[self.iu[1], self.iu[0]] = packed
        if self.model is None:  # a zero model
            rhs = self.both[:n].T @ (self.terms * fa[:, None])
        else:
            rhs = self.both.T @ np.concatenate([self.terms * fa[:, None],
                                                self.terms * (-fa * fa)[:, None]])
        ok = (self.valid[use].sum(axis=0) > k) & (normal[0, 0] > 0)
        return np.where(ok, _spd_solve(normal, np.ascontiguousarray(rhs.T), ridge), 0.0).T

    def resid_rms(self, flux, use):
        """The model's own error: the used stars' residuals ``(data - flux model) / flux``
        stacked pixel by pixel (inverse-variance weighted: the noise averages down), RMS over
        the core (the model above a tenth of its peak), as a fraction of the peak."""
        if not use.any():
            return math.nan
        n = self.s.shape[0]
        fa = np.where(use, flux, 0.0)
        total = np.einsum("n,np->p", fa * fa, self.w)
        stacked = (np.einsum("n,np->p", fa, self.both[:n])
                   - np.einsum("n,np->p", fa * fa, self.both[n:]))
        stacked /= np.where(total > 0, total, 1.0)
        mean = np.einsum("n,np->p", use.astype(float), self.model) / use.sum()
        peak = mean.max()
        core = (mean > 0.1 * peak) & (total > 0)
        if not core.any() or not peak > 0:
            return math.nan
        return float(np.sqrt(np.mean(stacked[core] ** 2)) / peak)


def _normalise(basis, oversample):
    """Unit native-pixel sum for the constant term, zero sum for the others (their flux
    change is carried by the constant term's shape)."""
    total = basis[0].sum() / oversample**2
    basis = basis / total
    for k in range(1, basis.shape[0]):
        basis[k] -= basis[0] * (basis[k].sum() / basis[0].sum())
    return basis


@dataclass(frozen=True)
class StarStamps:
    """The stars a model is built from (:func:`build`).

    Attributes
    ----------
    stamps : (N, S, S) array
        Background-subtracted (neighbour-subtracted when possible) stamps, S = 2 half + 1,
        centred on pixel ``rint(x), rint(y)``.
    weights : (N, S, S) array
        Inverse variance of each pixel (0: not used).
    x, y : (N,) arrays
        The stars' positions (windowed centroids), pixels.
    flux : (N,) array
        First guess of the stars' fluxes (refitted every iteration).
    """

    stamps: np.ndarray
    weights: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray


@dataclass(frozen=True)
class GridLayout:
    """The shape of a model (:func:`build`).

    Attributes
    ----------
    half, oversample, order : int
        Model stamp half-size (native pixels), grid nodes per pixel, polynomial degree.
    centre, scale : (float, float)
        Polynomial origin and scale (the image's centre and half-size).
    """

    half: int
    oversample: int
    order: int
    centre: tuple[float, float]
    scale: tuple[float, float]


def build(stars: StarStamps, layout: GridLayout, *, n_iter: int = 6, clip: float = 5.0,
          start: PsfGrid | None = None) -> PsfGrid:
    """Fit a :class:`PsfGrid` to stars.

    Parameters
    ----------
    stars : StarStamps
        The stars' stamps, pixel weights, positions and first flux guesses.
    layout : GridLayout
        Model half-size, oversampling, polynomial degree, its origin and scale.
    n_iter : int
        Iterations of residual stacking.
    clip : float
        Stars whose residual chi² exceeds *clip* times the median are dropped each iteration.
    start : PsfGrid or None
        A model to start from (same half-size and order), e.g. an earlier pass's.

    Returns
    -------
    PsfGrid

    Raises
    ------
    ValueError
        Unless the stamps are the model's size and it samples native pixels (oversample 1).
    """
    x, y = np.asarray(stars.x, float).copy(), np.asarray(stars.y, float).copy()
    flux = np.asarray(stars.flux, float).copy()
    half, oversample, order = layout.half, layout.oversample, layout.order
    centre, scale = tuple(layout.centre), tuple(layout.scale)
    n, s = stars.stamps.shape[0], stars.stamps.shape[1]
    k, g = n_terms(order), 2 * half + 1
    if s != g or oversample != 1:
        raise ValueError("build fits native-pixel models to stamps of their size")
    basis = np.zeros((k, g, g))
    if start is not None and start.basis.shape == basis.shape:
        basis = start.basis.copy()
    use = np.ones(n, bool)
    # a stamp pixel's residual goes to the model pixel at its offset (stamps are centred on
    # the stars' nearest pixels; a star exactly half-way between two pixels counts as centred)
    fit = _Stars(stars, poly_terms(x, y, order, centre, scale))
    grid = PsfGrid(basis, oversample, half, order, centre, scale)
    for it in range(n_iter):
        if it > 0 or start is not None:
            flux, chi2 = fit.refit(render(as_float32(grid), x, y, half)[2])
            ok = np.isfinite(flux) & (flux > 0)
            med = np.median(chi2[use & ok]) if (use & ok).any() else np.inf
            use &= ok & (chi2 < clip * max(med, 1.0))
        delta = fit.pixel_fit(flux, use)
        basis = _normalise(basis + delta.T.reshape(k, g, g), oversample)
        grid = PsfGrid(basis, oversample, half, order, centre, scale)
    flux, _ = fit.refit(render(as_float32(grid), x, y, half)[2])
    use &= np.isfinite(flux) & (flux > 0)
    return PsfGrid(basis, oversample, half, order, centre, scale, n_stars=int(use.sum()),
                   resid_rms=fit.resid_rms(flux, use),
                   extra={"x": x, "y": y, "flux": flux, "used": use})


def shape_at(grid: PsfGrid, x: float, y: float, fine: int = 4) -> tuple[float, float]:
    """FWHM (pixels) and ellipticity ``1 - b/a`` of the model at image position (x, y).

    The model is rendered at *fine* x *fine* sub-pixel shifts and interleaved into an image
    *fine* times finer than the pixels (the pixel-convolved PSF, as the image sees it). FWHM
    from the area above half its peak (``2 sqrt(area / pi)``); ellipticity from the second
    moments within a Gaussian window of that FWHM (adaptive moments, a few iterations)."""
    h = grid.half - LANCZOS
    shifts = (np.arange(fine) - (fine - 1) / 2) / fine
    sx, sy = np.meshgrid(shifts, shifts)
    _, _, stamps = render(grid, np.round(x) + sx.ravel(), np.round(y) + sy.ravel(), h)
    n = 2 * h + 1
    img = np.zeros((n * fine, n * fine))
    for k, (ox, oy) in enumerate(zip(sx.ravel(), sy.ravel(), strict=True)):
        # a source shifted by +o is the model sampled at pixel - o
        i, j = round((oy - shifts[0]) * fine), round((ox - shifts[0]) * fine)
        img[fine - 1 - i::fine, fine - 1 - j::fine] = stamps[k]
    peak = img.max()
    if not peak > 0:
        return math.nan, math.nan
    area = np.count_nonzero(img >= 0.5 * peak) / fine**2
    fwhm = 2.0 * math.sqrt(area / math.pi)
    g = img.shape[0]
    yy, xx = (np.mgrid[:g, :g] - (g - 1) / 2) / fine
    sigma2 = (fwhm / 2.3548) ** 2
    cxx, cyy, cxy = sigma2, sigma2, 0.0
    for _ in range(5):
        det = cxx * cyy - cxy**2
        q = (cyy * xx * xx - 2 * cxy * xx * yy + cxx * yy * yy) / det
        w = img * np.exp(-0.5 * q)
        tot = w.sum()
        mx, my = (w * xx).sum() / tot, (w * yy).sum() / tot
        dx, dy = xx - mx, yy - my
        # a Gaussian's windowed moments are half its own: the profile's are twice these
        cxx = 2 * (w * dx * dx).sum() / tot
        cyy = 2 * (w * dy * dy).sum() / tot
        cxy = 2 * (w * dx * dy).sum() / tot
    tr, det = cxx + cyy, cxx * cyy - cxy**2
    root = math.sqrt(max(tr * tr / 4 - det, 0.0))
    lam1, lam2 = tr / 2 + root, max(tr / 2 - root, 1e-12)
    return fwhm, 1.0 - math.sqrt(lam2 / lam1)

def quality(grid: PsfGrid | None, width: int, height: int) -> dict:
    """The ``images`` columns of the model: psf_nstars, psf_resid_rms, psf_fwhm_center,
    psf_fwhm_corner_max, psf_ellipticity_max (centre and the four corners); None without."""
    keys = ("psf_nstars", "psf_resid_rms", "psf_fwhm_center", "psf_fwhm_corner_max",
            "psf_ellipticity_max")
    if grid is None:
        return dict.fromkeys(keys)
    centre = shape_at(grid, (width - 1) / 2, (height - 1) / 2)
    corners = [shape_at(grid, cx, cy) for cx in (0, width - 1) for cy in (0, height - 1)]
    fwhms = [f for f, _ in corners]
    ells = [e for _, e in corners] + [centre[1]]
    return {"psf_nstars": grid.n_stars, "psf_resid_rms": grid.resid_rms,
            "psf_fwhm_center": centre[0], "psf_fwhm_corner_max": float(np.nanmax(fwhms)),
            "psf_ellipticity_max": float(np.nanmax(ells))}
