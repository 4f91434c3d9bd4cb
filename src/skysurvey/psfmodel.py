"""A spatially varying PSF model built from an image's own stars (arrays in, arrays out).

PSFEx's idea, in numpy only (so it runs in the Lambda): the PSF is a pixel basis, an image of
the *pixel-convolved* PSF on a grid ``oversample`` times finer than the image's pixels, whose
every node is a low-order polynomial in the image position (``order`` 0, 1 or 2: 1, 3 or 6
basis images). Sampling the model at a star's native pixels is a Lanczos-3 interpolation of
the grid shifted by the star's sub-pixel position; no pixel integration is needed since the
grid already holds pixel-integrated values.

Building (:func:`build`): the stars' fluxes are refitted with the current model, their
residuals ``(data - flux * model) / flux`` are binned onto the grid node nearest to each
sample's offset from the star, and each node's polynomial is fitted to its samples by weighted
least squares (one small K x K solve per node, all at once). Binning blurs a correction by one
node, so a few iterations converge to the model whose interpolation fits the stars (the
residual-stacking of photutils' EPSFBuilder, with PSFEx's polynomial in x, y). Each iteration
the model is normalised to unit sum over its stamp; the fitted star positions' mean shift is
taken out (the model's centre is the stars' windowed centroid on average).

Evaluation (:func:`render`): lookup tables of the model at ``N_PHASE + 1`` sub-pixel phases per
axis, per basis image, interpolated bilinearly between phases and combined with each source's
polynomial terms: one gather and one ``einsum`` for thousands of sources. Derivatives with
respect to the source's position come from the same tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LANCZOS", "N_PHASE", "PsfGrid", "PhaseTables", "poly_terms", "n_terms", "lanczos",
    "interpolation_matrix", "phase_tables", "cutouts", "render", "choose_order", "build", "shape_at", "quality",
]

#: Lanczos kernel half-width (grid nodes).
LANCZOS = 3
#: Sub-pixel phases per pixel in the lookup tables (bilinear between them: <1e-4 of the peak).
N_PHASE = 16
#: Minimum stars per polynomial term.
STARS_PER_TERM = 8


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
    terms = [u ** (d - j) * v ** j for d in range(order + 1) for j in range(d + 1)]
    return np.stack([np.broadcast_to(t, u.shape) for t in terms], axis=-1)


def lanczos(z, a: int = LANCZOS) -> np.ndarray:
    """The Lanczos kernel ``sinc(z) sinc(z / a)`` for ``|z| < a``, else 0."""
    z = np.asarray(z, float)
    return np.where(np.abs(z) < a, np.sinc(z) * np.sinc(z / a), 0.0)


def interpolation_matrix(shift: float, half_out: int, half: int, oversample: int) -> np.ndarray:
    """Weights (S, G) turning one grid axis into native pixels ``-half_out .. half_out`` of a
    source at sub-pixel *shift* (its position minus the stamp's central pixel), rows summing
    to 1 (S = 2 half_out + 1, G = 2 half oversample + 1)."""
    c = half * oversample
    nodes = np.arange(2 * c + 1)
    at = c + (np.arange(-half_out, half_out + 1) - shift) * oversample
    w = lanczos(at[:, None] - nodes[None, :])
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=np.abs(total) > 1e-12)


@dataclass(frozen=True)
class PhaseTables:
    """The model sampled at native pixels for ``N_PHASE + 1`` sub-pixel shifts per axis."""

    table: np.ndarray  # (K, P, P, S, S): [k, y phase, x phase, row, column]
    half_out: int
    n_phase: int


def phase_tables(grid: PsfGrid, half_out: int, n_phase: int = N_PHASE,
                 full_sum: bool | None = None) -> PhaseTables:
    """Lookup tables for :func:`render` at stamp half-size *half_out* (native pixels).

    When the stamp is the model's whole support (*full_sum*, default ``half_out >=
    grid.half``) each phase is renormalised to unit sum: the flux of a source is its sum
    over pixels whatever its sub-pixel position (an oversampled grid's shortest
    wavelengths, which few stars constrain, would otherwise change it with the phase)."""
    full_sum = half_out >= grid.half if full_sum is None else full_sum
    shifts = np.linspace(-0.5, 0.5, n_phase + 1)
    w = np.stack([interpolation_matrix(s, half_out, grid.half, grid.oversample)
                  for s in shifts])  # (P, S, G)
    # rows first: (K, G, G) x (P, S, G) -> (K, P, S, G); then columns
    rows = np.einsum("pag,kgh->kpah", w, grid.basis, optimize=True)
    table = np.einsum("kpah,qbh->kpqab", rows, w, optimize=True)
    if full_sum:  # every phase sums to 1 (constant term) and 0 (the others): no phase bias
        total = table[0].sum(axis=(-2, -1), keepdims=True)
        table[0] /= np.where(total != 0, total, 1.0)
        for k in range(1, table.shape[0]):
            table[k] -= table[0] * table[k].sum(axis=(-2, -1), keepdims=True)
    return PhaseTables(np.ascontiguousarray(table), half_out, n_phase)


def cutouts(image, ix, iy, half, fill=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Square stamps ``(N, S, S)`` of *image* centred on pixels (ix, iy), S = 2 half + 1, and
    whether each stamp pixel is inside the image (outside: *fill*)."""
    ny, nx = image.shape
    off = np.arange(-half, half + 1)
    yy = np.asarray(iy)[:, None, None] + off[None, :, None]
    xx = np.asarray(ix)[:, None, None] + off[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    values = image[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)]
    return np.where(inside, values, fill), inside


def render(grid: PsfGrid, tables: PhaseTables, x, y, derivatives: bool = False):
    """The PSF of sources at (x, y) on stamps centred on their nearest pixels.

    Returns ``(ix, iy, P)`` with P (N, S, S) summing to ~1 (the part of the model inside the
    stamp), or ``(ix, iy, P, dP/dx, dP/dy)`` with *derivatives* (d/dx of the model as the
    source moves by +1 px in x).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    n_phase = tables.n_phase
    tx = np.clip((x - ix + 0.5) * n_phase, 0, n_phase - 1e-9)
    ty = np.clip((y - iy + 0.5) * n_phase, 0, n_phase - 1e-9)
    px, py = np.minimum(tx.astype(int), n_phase - 1), np.minimum(ty.astype(int), n_phase - 1)
    fx, fy = (tx - px)[:, None, None], (ty - py)[:, None, None]
    terms = poly_terms(x, y, grid.order, grid.centre, grid.scale)  # (N, K)
    t = tables.table

    def at(qy, qx):
        return np.einsum("nk,knab->nab", terms, t[:, qy, qx], optimize=True)

    c00, c01, c10, c11 = at(py, px), at(py, px + 1), at(py + 1, px), at(py + 1, px + 1)
    top = c00 + fx * (c01 - c00)
    bottom = c10 + fx * (c11 - c10)
    psf = top + fy * (bottom - top)
    if not derivatives:
        return ix, iy, psf
    dx = ((1 - fy) * (c01 - c00) + fy * (c11 - c10)) * n_phase
    dy = (bottom - top) * n_phase
    return ix, iy, psf, dx, dy


def choose_order(n_stars: int, max_order: int = 2) -> int:
    """Polynomial degree the star count supports (STARS_PER_TERM stars per term)."""
    for order in range(max_order, 0, -1):
        if n_stars >= STARS_PER_TERM * n_terms(order):
            return order
    return 0


def _bin_fit(nodes, terms, residual, weight, n_nodes, ridge=1e-6):
    """Per-node weighted least squares of *residual* on polynomial *terms*.

    *nodes* (M,) node index per sample, *terms* (M, K), *residual*, *weight* (M,). Returns the
    (n_nodes, K) coefficients (0 where a node has fewer than K + 1 samples)."""
    k = terms.shape[1]
    normal = np.zeros((n_nodes, k, k))
    rhs = np.zeros((n_nodes, k))
    for i in range(k):
        wi = weight * terms[:, i]
        rhs[:, i] = np.bincount(nodes, wi * residual, n_nodes)
        for j in range(i, k):
            normal[:, i, j] = normal[:, j, i] = np.bincount(nodes, wi * terms[:, j], n_nodes)
    count = np.bincount(nodes, minlength=n_nodes)
    ok = (count > k) & (normal[:, 0, 0] > 0)
    out = np.zeros((n_nodes, k))
    if ok.any():
        a = normal[ok]
        a = a + ridge * a[:, :1, :1] * np.eye(k)
        out[ok] = np.linalg.solve(a, rhs[ok][..., None])[..., 0]
    return out


def _normalise(basis, oversample):
    """Unit native-pixel sum for the constant term, zero sum for the others (their flux
    change is carried by the constant term's shape)."""
    total = basis[0].sum() / oversample**2
    basis = basis / total
    for k in range(1, basis.shape[0]):
        basis[k] -= basis[0] * (basis[k].sum() / basis[0].sum())
    return basis


def build(stamps, weights, x, y, flux, *, half: int, oversample: int, order: int,
          centre, scale, n_iter: int = 6, clip: float = 5.0) -> PsfGrid:
    """Fit a :class:`PsfGrid` to stars.

    Parameters
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
    half, oversample, order : int
        Model stamp half-size (native pixels), grid nodes per pixel, polynomial degree.
    centre, scale : (float, float)
        Polynomial origin and scale (the image's centre and half-size).
    n_iter : int
        Iterations of residual stacking.
    clip : float
        Stars whose residual chi² exceeds *clip* times the median are dropped each iteration.

    Returns
    -------
    PsfGrid
    """
    stamps = np.asarray(stamps, float)
    weights = np.asarray(weights, float)
    x, y = np.asarray(x, float).copy(), np.asarray(y, float).copy()
    flux = np.asarray(flux, float).copy()
    n, s = stamps.shape[0], stamps.shape[1]
    k = n_terms(order)
    g = 2 * half * oversample + 1
    c = half * oversample
    basis = np.zeros((k, g, g))
    use = np.ones(n, bool)
    off = np.arange(-half, half + 1)
    terms_star = poly_terms(x, y, order, centre, scale)
    grid = PsfGrid(basis, oversample, half, order, tuple(centre), tuple(scale))
    for it in range(n_iter):
        if it == 0:
            model = np.zeros_like(stamps)
        else:
            tables = phase_tables(grid, half)
            _, _, model = render(grid, tables, x, y)
            flux, _, chi2 = _refit(stamps, weights, model, None, None, flux)
            ok = np.isfinite(flux) & (flux > 0)
            med = np.median(chi2[use & ok]) if (use & ok).any() else np.inf
            use &= ok & (chi2 < clip * max(med, 1.0))
        ix, iy = np.rint(x), np.rint(y)
        fx, fy = x - ix, y - iy
        # residual samples at offsets (u, v) from each star, shared by the four nearest nodes
        # with bilinear weights (nearest-node binning leaves holes where few stars fall)
        u = np.broadcast_to(c + (off[None, None, :] - fx[:, None, None]) * oversample,
                            (n, s, s))
        v = np.broadcast_to(c + (off[None, :, None] - fy[:, None, None]) * oversample,
                            (n, s, s))
        f = flux[:, None, None]
        res = (stamps - f * model) / f
        wt = weights * f**2 * use[:, None, None]
        keep = wt > 0
        u, v, res, wt = u[keep], v[keep], res[keep], wt[keep]
        terms = np.broadcast_to(terms_star[:, None, None, :], (n, s, s, k))[keep]
        gx0, gy0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        ax, ay = u - gx0, v - gy0
        parts = [(gx0 + i, gy0 + j, (ax if i else 1 - ax) * (ay if j else 1 - ay))
                 for i in (0, 1) for j in (0, 1)]
        gxs = np.concatenate([p[0] for p in parts])
        gys = np.concatenate([p[1] for p in parts])
        tent = np.concatenate([p[2] for p in parts])
        inside = (gxs >= 0) & (gxs < g) & (gys >= 0) & (gys < g) & (tent > 0)
        nodes = (gys * g + gxs)[inside]
        delta = _bin_fit(nodes, np.tile(terms, (4, 1))[inside], np.tile(res, 4)[inside],
                         (np.tile(wt, 4) * tent)[inside], g * g)
        basis = _normalise(basis + delta.T.reshape(k, g, g), oversample)
        grid = PsfGrid(basis, oversample, half, order, tuple(centre), tuple(scale))
    tables = phase_tables(grid, half)
    _, _, model = render(grid, tables, x, y)
    flux, _, chi2 = _refit(stamps, weights, model, None, None, flux)
    use &= np.isfinite(flux) & (flux > 0)
    rms = _resid_rms(stamps, weights, model, flux, use)
    return PsfGrid(basis, oversample, half, order, tuple(centre), tuple(scale),
                   n_stars=int(use.sum()), resid_rms=rms,
                   extra={"x": x, "y": y, "flux": flux, "used": use})


def _refit(stamps, weights, model, mdx, mdy, flux):
    """Fluxes (linear), position shifts (one Gauss-Newton step; None without derivatives)
    and reduced chi² of the stars against the model."""
    wp = weights * model
    den = np.sum(wp * model, axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.sum(wp * stamps, axis=(1, 2)) / den
    shift = None
    if mdx is not None:
        a = amp[:, None, None, None]
        jac = np.stack([model, a[..., 0] * mdx, a[..., 0] * mdy], axis=-1)  # (N, S, S, 3)
        r = stamps - amp[:, None, None] * model
        jw = jac * weights[..., None]
        normal = np.einsum("nabi,nabj->nij", jw, jac)
        rhs = np.einsum("nabi,nab->ni", jw, r)
        normal += 1e-9 * np.eye(3) * normal[:, :1, :1]
        ok = np.isfinite(normal).all(axis=(1, 2)) & (np.abs(np.linalg.det(normal)) > 0)
        step = np.zeros((len(amp), 3))
        step[ok] = np.linalg.solve(normal[ok], rhs[ok][..., None])[..., 0]
        shift = step[:, 1:]
    r = stamps - amp[:, None, None] * model
    npix = np.sum(weights > 0, axis=(1, 2))
    chi2 = np.sum(weights * r * r, axis=(1, 2)) / np.maximum(npix - 1, 1)
    return amp, shift, chi2


def _resid_rms(stamps, weights, model, flux, use):
    """Median over the used stars of the model's error (RMS residual beyond the noise within
    the core, where the model exceeds a tenth of its peak) as a fraction of the star's peak."""
    if not use.any():
        return math.nan
    s, w, m, f = stamps[use], weights[use], model[use], flux[use][:, None, None]
    peak = m.max(axis=(1, 2), keepdims=True)
    core = (m > 0.1 * peak) & (w > 0)
    r2 = (s - f * m) ** 2 - np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), 0.0)
    excess = np.sum(np.where(core, r2, 0.0), axis=(1, 2)) / np.maximum(core.sum(axis=(1, 2)), 1)
    frac = np.sqrt(np.maximum(excess, 0.0)) / (f[:, 0, 0] * peak[:, 0, 0])
    return float(np.median(frac))


def shape_at(grid: PsfGrid, x: float, y: float) -> tuple[float, float]:
    """FWHM (pixels) and ellipticity ``1 - b/a`` of the model at image position (x, y).

    FWHM from the area above half the peak on the oversampled grid (``2 sqrt(area / pi)``,
    pixel-convolved as the image sees it); ellipticity from the second moments within a
    Gaussian window of that FWHM (adaptive moments, a few iterations)."""
    terms = poly_terms(np.array([x]), np.array([y]), grid.order, grid.centre, grid.scale)[0]
    img = np.tensordot(terms, grid.basis, axes=1)
    s = grid.oversample
    peak = img.max()
    if not peak > 0:
        return math.nan, math.nan
    area = np.count_nonzero(img >= 0.5 * peak) / s**2
    fwhm = 2.0 * math.sqrt(area / math.pi)
    g = img.shape[0]
    yy, xx = (np.mgrid[:g, :g] - (g - 1) / 2) / s
    sigma2 = (fwhm / 2.3548) ** 2
    cxx, cyy, cxy = sigma2, sigma2, 0.0
    for _ in range(5):
        det = cxx * cyy - cxy**2
        q = (cyy * xx * xx - 2 * cxy * xx * yy + cxx * yy * yy) / det
        w = img * np.exp(-0.5 * q)
        tot = w.sum()
        mx, my = (w * xx).sum() / tot, (w * yy).sum() / tot
        dx, dy = xx - mx, yy - my
        mxx, myy, mxy = (w * dx * dx).sum() / tot, (w * dy * dy).sum() / tot, \
            (w * dx * dy).sum() / tot
        # a Gaussian's windowed moments are half its own: the profile's are twice these
        cxx, cyy, cxy = 2 * mxx, 2 * myy, 2 * mxy
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
