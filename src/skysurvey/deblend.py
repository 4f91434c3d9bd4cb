"""Second detection pass: faint sources hidden inside a bright neighbour's isophote (issue 18).

SEP's and SExtractor's multi-threshold deblending misses a faint peak sitting on a bright
wing: the bright object's detection absorbs it. Here every bright first-pass object (peak at
least ``second_pass_peak`` times the noise; not a streak, not sharper than the PSF) is
replaced by a smooth model of itself: a piecewise-linear profile of the elliptical radius,
least-squares fitted to its own and the sky's pixels (then refitted without those 3 sigma
above it: a companion), centred and shaped by the light within a Gaussian window (the
isophotal barycentre and moments of a blend are pulled by the companion), so it fits stars
and Sersic galaxies alike. SEP detects again on the residual with the same threshold
semantics (``thresh`` times the noise, same filter and minimum area) against the local noise:
the clipped scatter of the residuals at each radius (Poisson noise of the wing, model
mismatch) or the sky noise, whichever is larger, so noise in a bright wing is not turned into
sources. A residual detection is kept when its isophotal S/N reaches ``second_pass_snr``, it
lies 1.3 PSF FWHM or more from the parent's centre (its core is not searched) and it still
stands out of a closer model of the parent (profile plus an m = 2 harmonic, fitted without
the companions). Saturated pixels (and 3 PSF half widths around a clipped core) are left out.

Approach, measured against splitting segments at secondary peaks of the filtered image (the
other way issue 18 names): on faint stars planted 2-5 FWHM from objects 5-100x brighter the
residual search found 125-126 of 128, peak splitting 101 (at its threshold with no false
source beside the same bright objects alone; a single pass 77-78): a faint star on a steep
wing makes a shoulder, not a peak. On the generator's 2048² fields both gain about as much
(crowded: SNR >= 10 completeness 0.976 -> 0.979 here, 0.979-0.983 splitting at 3-2 sigma of
prominence, which also made 2 false sources on the sparse field); peak splitting costs less
(12 ms against 34 ms at 1,300 sources; 78 ms at 2,400).

The pass is numpy + SEP only (it runs inside the Lambda), without large matrix products (no
BLAS threads), and looks only at cutouts around bright objects. It reads the image as one
:class:`~skysurvey.measurement.Pixels` and its settings from the detection's configuration;
SEP's pixel stack is set through :func:`~skysurvey.measurement.sep_settings`. A residual that
overflows SEP's buffers leaves its parent as the first pass found it and is named in the
image's warnings; any other error propagates.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import sep

from .measurement import Pixels, sep_settings

__all__ = [
    "PAD",
    "PROTECT",
    "SEP_BUFFER_FULL",
    "Hidden",
    "Profiles",
    "find_hidden",
    "harmonic_model",
    "radial_models",
    "sep_buffer_full",
]

#: The messages of SEP's buffer limits (its pixel stack, its sub-objects while deblending),
#: which it raises as plain ``Exception``: a parent whose residual overflows them is left as
#: the first pass found it. Any other error is a bug and propagates.
SEP_BUFFER_FULL = ("internal pixel buffer full", "object deblending overflow")


def sep_buffer_full(exc: BaseException) -> bool:
    """True when *exc* is one of SEP's buffer-limit errors (:data:`SEP_BUFFER_FULL`).

    Parameters
    ----------
    exc : BaseException
        What ``sep.extract`` raised.

    Returns
    -------
    bool
        False for anything else (a bad argument, a bug), which must not be swallowed.
    """
    return any(m in str(exc) for m in SEP_BUFFER_FULL)


@dataclass
class Hidden:
    """What the second pass found.

    objects: SEP-style records of the new sources (image coordinates), in label order (the
    caller's segmap gets their labels ``n + 1 ...`` in place); parents: index of the
    first-pass object each was hidden in; patches: per parent with a new source, its cutout
    box ``(y0, y1, x0, x1)``, smooth model, core pixels and label.
    """

    objects: np.ndarray
    parents: np.ndarray
    patches: list

    def model_at(self, xi, yi):
        """The sum of the parents' models at pixels (xi, yi)."""
        out = np.zeros(len(xi))
        for y0, y1, x0, x1, model, _, _ in self.patches:
            inside = (xi >= x0) & (xi < x1) & (yi >= y0) & (yi < y1)
            out[inside] += model[yi[inside] - y0, xi[inside] - x0]
        return out

    @contextmanager
    def modelled(self, sub, segmap):
        """*sub* and *segmap* as the new sources are measured: the parents' models subtracted
        and their pixels (but for their cores) unlabelled; restored exactly on exit. In place,
        cutouts only: no full-size copy."""
        saved = []
        try:
            for y0, y1, x0, x1, model, core, label in self.patches:
                block, seg = sub[y0:y1, x0:x1], segmap[y0:y1, x0:x1]
                saved.append((y0, y1, x0, x1, block.copy(), seg.copy()))
                block -= model.astype(block.dtype)
                seg[seg == label] = 0
                seg[core] = label  # the parent's protected pixels stay out, even a new
                # source's own pixels there
            yield sub, segmap
        finally:
            for y0, y1, x0, x1, block, seg in reversed(saved):
                sub[y0:y1, x0:x1] = block
                segmap[y0:y1, x0:x1] = seg


# nodes of the radial profile (px): every 0.5 px in the core, where the profile bends most,
# every px to 8, then 25% apart
_STEP, _MID, _GROWTH = 0.5, 8.0, 1.25
PROTECT = 5.0  # a new source is measured without where its parent is this many times its peak
PAD = 5  # px: each parent is searched in its isophote's bounding box grown by this much


def _node(r):
    """Index of the profile node below each radius and the fraction towards the next one."""
    # 2 nodes per px to 3 px, 1 per px to 8 px, then log-spaced: each term is constant
    # outside its own range (the same numbers as a case-by-case formula, in fewer passes)
    pos = np.minimum(r, 3.0) / _STEP
    pos += np.clip(r - 3.0, 0.0, _MID - 3.0)
    far = r > _MID
    pos[far] += np.log(r[far] / _MID) / np.log(_GROWTH)
    j = pos.astype(np.int64)
    return j, pos - j


def _radius(node):
    """The radius (px) of profile node number *node* (inverse of :func:`_node`)."""
    node = np.asarray(node, dtype=np.float64)
    return np.where(node < 6, node * _STEP,
                    np.where(node < 11, node - 3.0, _MID * _GROWTH ** (node - 11.0)))


def _fit_profiles(node, t, values, weights, count, k):
    """Least-squares piecewise-linear profiles, *count* objects of *k* nodes at once.

    Pixel i counts at its own radius (node ``node[i]`` = object * k + node index, fraction
    *t* towards the next node): no binning bias on a steep profile. Each object's normal
    matrix is tridiagonal and positive definite: built with bincount (a pixel's share of the
    next node is the same sums shifted by one node), solved by elimination over all objects
    at once.
    """
    u, size = 1.0 - t, count * k
    wt = weights * t

    def sums(x):
        return np.bincount(node, x, size).reshape(count, k)

    def shifted(x):  # the sums over node + 1: never across objects (a node below k - 1)
        out = np.zeros((count, k))
        out[:, 1:] = sums(x)[:, :-1]
        return out

    diag = sums(weights * u * u) + shifted(wt * t)
    off = sums(wt * u)[:, :-1]
    rhs = sums(weights * u * values) + shifted(wt * values)
    diag += 1e-9 * np.maximum(diag.max(axis=1, keepdims=True), 1.0)
    for j in range(1, k):  # forward elimination
        factor = off[:, j - 1] / diag[:, j - 1]
        diag[:, j] -= factor * off[:, j - 1]
        rhs[:, j] -= factor * rhs[:, j - 1]
    rhs[:, -1] /= diag[:, -1]
    for j in range(k - 2, -1, -1):  # back substitution
        rhs[:, j] = (rhs[:, j] - off[:, j] * rhs[:, j + 1]) / diag[:, j]
    return rhs.ravel()



def _index_type(n):
    """int32 for indices below *n* when they fit (half the memory of int64), else int64."""
    return np.int32 if n < 2**31 - 1 else np.int64


def _evaluate(nodes, node, t):
    """The profiles at each pixel, ``nodes[node] * (1 - t) + nodes[node + 1] * t``, with one
    temporary less per term (the same operations in the same order)."""
    out = nodes[node]
    out *= 1.0 - t
    after = nodes[1:][node]  # nodes[node + 1]: node is never an object's last
    after *= t
    out += after
    return out

@dataclass
class Profiles:
    """:func:`radial_models`' fits over the concatenated cutouts (flat, object after object):
    per pixel the *model*, the *scatter* of the residuals at its radius, its elliptical radius
    *r*, the *residual* (data - model), whether it was fitted (*good*), cutout coordinates
    *x*, *y* and object *obj*; per object *half* (px), the cutout *shapes* and where each
    object's pixels *start*."""

    model: np.ndarray
    scatter: np.ndarray
    r: np.ndarray
    residual: np.ndarray
    good: np.ndarray
    x: np.ndarray
    y: np.ndarray
    obj: np.ndarray
    half: np.ndarray
    shapes: list
    start: np.ndarray

    def part(self, i) -> slice:
        """Object *i*'s pixels in the flat arrays."""
        h, w = self.shapes[i]
        return slice(self.start[i], self.start[i] + h * w)

    def of(self, i, *more):
        """Object *i*'s model, scatter and radius (and any per-pixel arrays in *more*) as
        cutout-shaped views."""
        part = self.part(i)
        return tuple(a[part].reshape(self.shapes[i])
                     for a in (self.model, self.scatter, self.r, *more))

    def bright_boxes(self, core):
        """Per object: whether a 3x3 box sum of the residual reaches 4 sigma (12 times the
        scatter) on an inner pixel that was fitted and is not in the *core* (per pixel), for
        all cutouts at once. SEP runs only on those: an S/N 10 source's brightest box is at
        ~8 sigma; pure noise reaches 4 sigma in ~3e-5 of the boxes."""
        residual = self.residual
        n = residual.size
        index = np.arange(n)
        sizes = np.diff(np.append(self.start, n))
        width = np.repeat([w for _, w in self.shapes], sizes)
        height = np.repeat([h for h, _ in self.shapes], sizes)
        rows = (residual[np.maximum(index - width, 0)] + residual
                + residual[np.minimum(index + width, n - 1)])
        box = np.full(n, np.nan)
        box[1:-1] = rows[:-2] + rows[1:-1] + rows[2:]
        inner = ((self.x >= 1) & (self.x <= width - 2) & (self.y >= 1)
                 & (self.y <= height - 2))
        hits = inner & self.good & ~core & (box > 12.0 * self.scatter)
        return np.bincount(self.obj[hits], minlength=len(self.shapes)) > 0


def radial_models(cuts, goods, peaks, sigmas, noise):
    """Smooth elliptical models of objects in their cutouts and the local noise around them.

    For each object: a piecewise-linear profile of the elliptical radius, centred and shaped by
    the light within a Gaussian window of *sigmas* around its *peaks* (the isophotal barycentre
    and moments of a blend are pulled by the companion), fitted to its *goods* pixels (its own
    and the sky's), then refitted without the pixels more than 3 robust sigma above it (a
    companion). All objects are fitted together (numpy over the concatenated cutouts).
    Returns :class:`Profiles`: per pixel the ``model``, ``scatter`` (rms of the kept
    residuals at that radius, never below the object's sky *noise*) and elliptical radius
    ``r`` (px); per object the radius ``half`` where the profile falls to half its centre
    (half the FWHM).
    """
    count = len(cuts)
    shapes = [c.shape for c in cuts]
    sizes = np.array([c.size for c in cuts])
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def each(per_object):  # a per-object array, per pixel
        return np.repeat(per_object, sizes)

    # per pixel (~1e6 on a crowded 4096² field, 8 MB per float64 array: the handler's peak
    # without PSF photometry): integers in int32, the data in their own dtype, every array
    # freed after its last use and the products made in place (same operations, same order)
    itype = _index_type(sizes.sum())
    obj = each(np.arange(count, dtype=itype))
    raw = np.concatenate([c.ravel() for c in cuts])
    good = np.concatenate([g.ravel() for g in goods]) & np.isfinite(raw)
    values = np.zeros(raw.size)  # the good pixels as float64, else 0
    np.copyto(values, raw, where=good)
    yy = np.arange(values.size, dtype=itype) - each(start.astype(itype))
    yy, xx = np.divmod(yy, each(np.array([w for _, w in shapes], dtype=itype)))
    xc, yc = (np.array(v, dtype=np.float64) for v in zip(*peaks, strict=True))
    sig2 = np.asarray(sigmas, dtype=np.float64) ** 2
    # the window only reaches 4 sigma around the peak: compute it there (light: values > 0)
    win = (((xx - each(xc)) ** 2 + (yy - each(yc)) ** 2 < 16.0 * each(sig2))
           & (values > 0))
    wobj, wx, wy, wlight = obj[win].astype(np.intp), xx[win], yy[win], values[win]
    del win
    for _ in range(3):  # two re-centrings, then the window's moments
        dx, dy = wx - xc[wobj], wy - yc[wobj]
        w = wlight * np.exp(-(dx * dx + dy * dy) / (2.0 * sig2[wobj]))
        total = np.bincount(wobj, w, count)
        has = total > 0
        total = np.where(has, total, 1.0)
        mx = np.bincount(wobj, w * wx, count) / total
        my = np.bincount(wobj, w * wy, count) / total
        if _ < 2:
            xc, yc = np.where(has, mx, xc), np.where(has, my, yc)
    x2 = np.bincount(wobj, w * dx * dx, count) / total
    y2 = np.bincount(wobj, w * dy * dy, count) / total
    xy = np.bincount(wobj, w * dx * dy, count) / total
    det = x2 * y2 - xy * xy
    ok = has & (det > 0)
    det = np.where(ok, det, 1.0)
    # the window makes the moments rounder: take it out (Gaussian light and window, as
    # SExtractor's windowed shapes), unless that leaves no ellipse
    a00, a11, a01 = y2 / det, x2 / det, -xy / det
    d00, d11 = a00 - 1.0 / sig2, a11 - 1.0 / sig2
    deconvolved = (d00 > 0) & (d11 > 0) & (d00 * d11 - a01 * a01 > 0)
    a00, a11 = np.where(deconvolved, d00, a00), np.where(deconvolved, d11, a11)
    # unit radius at the mean of the two axes' variances: r in px along a round profile
    scale = 0.5 * (a00 + a11) / (a00 * a11 - a01 * a01)
    cxx, cyy, cxy = (np.where(ok, a00 * scale, 1.0), np.where(ok, a11 * scale, 1.0),
                     np.where(ok, 2.0 * a01 * scale, 0.0))
    # r = sqrt(max(cxx dx dx + cyy dy dy + cxy dx dy, 0)), term by term in place
    dx, dy = xx - each(xc), yy - each(yc)
    r, term = each(cxx), each(cyy)
    r *= dx
    r *= dx
    term *= dy
    term *= dy
    r += term
    term = each(cxy)
    term *= dx
    term *= dy
    r += term
    del dx, dy, term
    np.sqrt(np.maximum(r, 0.0, out=r), out=r)
    node, t = _node(r)
    k = int(node.max()) + 2
    node += obj * np.int64(k)  # object * k + node index
    weights = good.astype(np.float64)
    nodes = _fit_profiles(node, t, values, weights, count, k)
    resid = _evaluate(nodes, node, t)
    np.subtract(values, resid, out=resid)
    floor = np.repeat(np.asarray(noise, dtype=np.float64), k)  # per object, per node
    # the scatter at each radius: an rms, then an rms without what lies beyond 3 of it (a
    # companion's core), which is what the refit leaves out too
    keep = weights
    for _ in range(2):
        counts = np.bincount(node, keep, count * k)
        spread = np.sqrt(np.bincount(node, keep * resid * resid, count * k)
                         / np.maximum(counts, 1.0))
        spread = np.where(counts >= 5, np.maximum(spread, floor), 3.0 * floor)
        keep = weights * (np.abs(resid) < (3.0 * spread)[node])
    keep = weights * (resid < (3.0 * spread)[node])
    del weights, resid
    nodes = _fit_profiles(node, t, values, keep, count, k)
    model = _evaluate(nodes, node, t)
    del t
    resid = np.subtract(values, model)
    del values
    kept = np.bincount(node, keep, count * k)
    rms = np.sqrt(np.bincount(node, keep * resid * resid, count * k) / np.maximum(kept, 1.0))
    del keep, resid
    rms = np.where(kept >= 5, np.maximum(rms, floor), spread)[node]
    del node
    profile = nodes.reshape(count, k)
    top = profile.argmax(axis=1)[:, None]  # the centre, or the edge of a masked core
    below = (profile < 0.5 * profile.max(axis=1, keepdims=True)) & (np.arange(k) > top)
    first = np.where(below.any(axis=1), below.argmax(axis=1), k - 1)
    knots = _radius(np.arange(k))
    half = knots[np.maximum(first, 1)]  # conservative: the node at or beyond half maximum
    residual = np.subtract(raw, model, dtype=np.float64)
    del raw
    return Profiles(model, rms, r, residual, good, xx, yy, obj, half, shapes, start)


def _grow(flags, times):
    """A boolean map grown by one pixel (8-connected) *times* times."""
    out = flags.copy()
    for _ in range(times):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        out = grown
    return out


def harmonic_model(cut, fit, r, phi, noise, iterations=2):
    """A parent's model for measuring its companions: the piecewise-linear radial profile
    plus an m = 2 term (cos 2phi, sin 2phi, each with its own profile), which takes up the
    ellipticity a Gaussian-window shape gets wrong on a Sersic galaxy; fitted by least squares
    to the *fit* pixels, refitted without those more than 3 sigma above it.

    The normal equations are built with bincount (six basis functions touch each pixel):
    no large matrix product, so no BLAS threads (they multiply the CPU time on a busy host).
    """
    j, t = _node(r.ravel())
    k = int(j.max()) + 2
    size = 3 * k
    angular = (np.ones(j.size), np.cos(2 * phi).ravel(), np.sin(2 * phi).ravel())
    cols = np.stack([m * k + j + step for m in range(3) for step in (0, 1)], axis=1)
    vals = np.stack([a * w for a in angular for w in (1.0 - t, t)], axis=1)
    values = cut.ravel().astype(np.float64)
    rows = fit.ravel() & np.isfinite(values)
    values = np.where(rows, values, 0.0)
    # the normal matrix's upper triangle only (21 of 36 products per pixel): a pixel's six
    # columns are distinct and increasing, so each bin sums one product per pixel in pixel
    # order, and the lower triangle holds the same sums (vals[p] * vals[q] == vals[q] * vals[p])
    p, q = np.triu_indices(6)
    pairs = (cols[:, p] * size + cols[:, q]).ravel()
    products = vals[:, p] * vals[:, q]
    weights = rows.astype(np.float64)
    for step in range(iterations + 1):
        normal = np.bincount(pairs, (weights[:, None] * products).ravel(), size * size)
        normal = normal.reshape(size, size)
        normal += np.triu(normal, 1).T  # the lower triangle (0 so far) mirrored
        normal[np.diag_indices(size)] += 1e-9 * max(normal.diagonal().max(), 1.0)
        rhs = np.bincount(cols.ravel(), ((weights * values)[:, None] * vals).ravel(), size)
        coef = np.linalg.solve(normal, rhs)
        model = (vals * coef[cols]).sum(axis=1)
        if step < iterations:
            resid = values - model
            spread = max(1.4826 * float(np.median(np.abs(resid[rows]))), noise)
            weights = (rows & (resid < 3.0 * spread)).astype(np.float64)
    return model.reshape(cut.shape)


class _Search:
    """SEP on one parent's residual with the first pass's threshold semantics (*config*: the
    detection's ``thresh``, ``minarea``, ``deblend_nthresh``, ``deblend_cont``); ``min_snr``
    is the S/N a detection must reach; ``overflows`` collects SEP's buffer-full messages."""

    def __init__(self, config):
        self.config = config
        self.min_snr = config.second_pass_snr
        self.overflows: list[str] = []

    def __call__(self, residual, err, mask):
        c = self.config
        return sep.extract(residual, c.thresh, err=err, mask=mask, minarea=c.minarea,
                           filter_type="conv", deblend_nthresh=c.deblend_nthresh,
                           deblend_cont=c.deblend_cont, segmentation_map=True)


def _candidates(residual, err, hide, bounds, shape, extract):
    """SEP's detections on one parent's residual that pass the S/N cut, with their pixels;
    [] when SEP's buffers overflow (the message added to ``extract.overflows``); any other
    error propagates. *extract* is a :class:`_Search` (or any callable with its
    ``min_snr`` and ``overflows``)."""
    try:
        cand, cseg = extract(np.ascontiguousarray(residual, dtype=np.float32),
                             err=np.ascontiguousarray(err, dtype=np.float32),
                             mask=np.ascontiguousarray(hide))
    except Exception as exc:  # SEP raises bare Exceptions
        if not sep_buffer_full(exc):
            raise
        extract.overflows.append(str(exc))
        return []  # its buffers overflowed on this residual: leave this parent as is
    if len(cand) == 0:
        return []
    labels = cseg.ravel()
    signal = np.bincount(labels, residual.ravel(), len(cand) + 1)[1:]
    var = np.bincount(labels, err.ravel().astype(np.float64) ** 2, len(cand) + 1)[1:]
    snr = signal / np.sqrt(np.maximum(var, 1e-30))
    h, w = residual.shape
    y0, y1, x0, x1 = bounds
    # a detection cut by the box's edge (not the image's) is a piece of something outside
    cut_edge = (((cand["xmin"] == 0) & (x0 > 0)) | ((cand["ymin"] == 0) & (y0 > 0))
                | ((cand["xmax"] == w - 1) & (x1 < shape[1]))
                | ((cand["ymax"] == h - 1) & (y1 < shape[0])))
    return [(cand[j], cseg == j + 1) for j in np.flatnonzero((snr >= extract.min_snr)
                                                             & ~cut_edge)]


@dataclass
class _Parent:
    """One bright first-pass object as the second pass sees it: its cutout *box*
    ``(y0, y1, x0, x1)``, the pixels fitted (*good*: its own and the sky's), its peak in the
    cutout, window sigma, sky noise and number of saturated pixels."""

    index: int
    box: tuple
    cut: np.ndarray
    good: np.ndarray
    peak: tuple
    sigma: float
    noise: float
    clipped: int


def _parents(pixels, objects, noise, saturated, parent_peak):
    """The first-pass objects to search: peak >= *parent_peak* x noise, no streak (a hot
    column or trail has no radial profile), each in its isophote's box grown by PAD px."""
    sub, segmap, mask, pad = pixels.sub, pixels.segmap, pixels.mask, PAD
    ny, nx = sub.shape
    chosen = np.flatnonzero((objects["peak"] >= parent_peak * noise)
                            & (objects["a"] < 5.0 * objects["b"]))
    # box edges and the rest as Python numbers up front (a structured record's fields are slow)
    y0s = np.maximum(objects["ymin"][chosen] - pad, 0).tolist()
    y1s = np.minimum(objects["ymax"][chosen] + pad + 1, ny).tolist()
    x0s = np.maximum(objects["xmin"][chosen] - pad, 0).tolist()
    x1s = np.minimum(objects["xmax"][chosen] + pad + 1, nx).tolist()
    xpeaks, ypeaks = objects["xpeak"][chosen].tolist(), objects["ypeak"][chosen].tolist()
    sigmas = np.maximum(np.sqrt(objects["a"][chosen] * objects["b"][chosen]), 1.0).tolist()
    out = []
    for i, p in enumerate(chosen.tolist()):
        y0, y1, x0, x1 = y0s[i], y1s[i], x0s[i], x1s[i]
        seg = segmap[y0:y1, x0:x1]
        others = (seg != 0) & (seg != p + 1)
        if mask is not None:
            others |= mask[y0:y1, x0:x1]
        n_sat = 0 if saturated is None else int(np.count_nonzero(saturated[y0:y1, x0:x1]))
        if n_sat:  # a clipped core fits no profile: its pixels and their neighbours stay out
            others |= _grow(saturated[y0:y1, x0:x1], 2)
        out.append(_Parent(p, (y0, y1, x0, x1), sub[y0:y1, x0:x1], ~others,
                           (xpeaks[i] - x0, ypeaks[i] - y0), sigmas[i], float(noise[p]), n_sat))
    return out


def _companions(parent, fit, half, psf_half, shape, extract):
    """The new sources hidden in one parent and the patch to measure them with, or None.

    *fit* is the parent's ``(model, scatter, r, core)`` (:meth:`Profiles.of`), *half* its
    half width, *psf_half* the PSF's.

    The *core* (:func:`_cores`), where a symmetric model of pixel-integrated light is least
    exact, is not searched, and a detection must lie 1.3 FWHM out (the PSF's, for a galaxy).
    The parent is then refitted without the pixels near its companions (their light lifted
    it), with an m = 2 term; a detection must still stand out of that closer model.
    """
    model, scatter, r, core = fit
    h, w = parent.cut.shape
    yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
    px, py = parent.peak
    cands = _candidates(parent.cut - model, scatter, ~parent.good | core, parent.box, shape,
                        extract)
    cands = [(rec, pix) for rec, pix in cands
             if np.hypot(rec["x"] - px, rec["y"] - py) >= 2.6 * min(half, psf_half)]
    if not cands:
        return None
    near = np.zeros(parent.cut.shape, bool)
    for rec, _ in cands:
        reach = max(4.0 * float(np.sqrt(rec["a"] * rec["b"])), 4.0 * psf_half)
        near |= (xx - rec["x"]) ** 2 + (yy - rec["y"]) ** 2 < reach**2
    model = harmonic_model(parent.cut, parent.good & ~near, r, np.arctan2(yy - py, xx - px),
                           parent.noise)
    residual, var = parent.cut - model, scatter.astype(np.float64) ** 2
    cands = [(rec, pix) for rec, pix in cands
             if residual[pix].sum() >= extract.min_snr * np.sqrt(var[pix].sum())]
    if not cands:
        return None
    # the new sources' measurement leaves out the core and where the parent is much
    # brighter than the faintest of them (there its model's small errors dominate)
    faintest = min(float(rec["peak"]) for rec, _ in cands)
    inner = r < 1.5 * min(half, psf_half)
    if parent.clipped:
        inner |= core
    return cands, (*parent.box, model, inner | ~parent.good | (model > PROTECT * faintest))


def _cores(fits: Profiles, parents: list, psf_half: float) -> np.ndarray:
    """Per pixel, whether it is in its parent's core, which is not searched: within 0.75 of
    the parent's FWHM and, around a clipped core, 3 PSF half widths beyond it."""
    core = fits.r < 1.5 * fits.half[fits.obj]
    for i, parent in enumerate(parents):
        if parent.clipped:
            part, (px, py) = fits.part(i), parent.peak
            reach = np.sqrt(parent.clipped / np.pi) + 3.0 * psf_half
            core[part] |= (fits.x[part] - px) ** 2 + (fits.y[part] - py) ** 2 < reach**2
    return core


def _records(found, objects, segmap):
    """SEP-style records of the new sources in image coordinates (one per source: a companion
    seen from two overlapping parents is kept once), their parents, and their labels
    ``n + 1 ...`` written into *segmap*."""
    n = len(objects)
    keep, positions = [], []
    for item in found:
        xy = (item[3]["x"] + item[1], item[3]["y"] + item[2])
        if any((xy[0] - u) ** 2 + (xy[1] - v) ** 2 < 4.0 for u, v in positions):
            continue
        positions.append(xy)
        keep.append(item)
    new = np.zeros(len(keep), dtype=objects.dtype)
    parent_of = np.zeros(len(keep), dtype=np.int64)
    for k, (p, x0, y0, rec, pixels) in enumerate(keep):
        rec = rec.copy()
        for field in ("x", "xmin", "xmax", "xpeak", "xcpeak"):
            rec[field] += x0
        for field in ("y", "ymin", "ymax", "ypeak", "ycpeak"):
            rec[field] += y0
        new[k] = rec
        parent_of[k] = p
        h, w = pixels.shape
        segmap[y0:y0 + h, x0:x0 + w][pixels] = n + k + 1
    return new, parent_of


def find_hidden(pixels: Pixels, objects, noise, config, *, saturated=None,
                notes=None) -> Hidden | None:
    """Detect the sources hidden in bright first-pass objects (see the module docstring).

    Parameters
    ----------
    pixels : Pixels
        The background-subtracted image, its segmentation map (the new sources' labels
        ``n + 1 ...`` are written into it) and mask.
    objects : ndarray
        SEP's first-pass objects.
    noise : float or ndarray
        The noise the first pass used (a scalar, or a per-pixel map read at each object's
        peak).
    config : DetectionConfig
        The detection's settings: parents are the objects whose peak reaches
        ``second_pass_peak`` times the noise (streaks excepted), a residual detection uses
        ``thresh``, ``minarea``, ``deblend_nthresh``, ``deblend_cont`` and is kept from
        isophotal S/N ``second_pass_snr``.
    saturated : ndarray of bool, optional
        Saturated pixels: they and their neighbours are left out of the fits and the search.
    notes : list of str, optional
        The image's warnings: a note is added when SEP's buffers overflowed on some parents'
        residuals (those parents are left as the first pass found them).

    Returns
    -------
    Hidden or None
        The new sources, or None when nothing is found.
    """
    if len(objects) == 0:
        return None
    sub = pixels.sub
    ny, nx = sub.shape
    if np.ndim(noise):
        noise = noise[np.clip(objects["ypeak"], 0, ny - 1), np.clip(objects["xpeak"], 0, nx - 1)]
    else:
        noise = np.full(len(objects), float(noise))
    parents = _parents(pixels, objects, noise, saturated, config.second_pass_peak)
    if not parents:
        return None
    extract = _Search(config)
    fits = radial_models([q.cut for q in parents], [q.good for q in parents],
                         [q.peak for q in parents], [q.sigma for q in parents],
                         np.array([q.noise for q in parents]))
    halves = fits.half
    # the PSF's half width: the sharp end of the parents' (galaxies are broader; cosmic rays,
    # sharper than any sampled PSF, left out)
    resolved = halves[halves >= 1.0]
    psf_half = float(np.percentile(resolved if resolved.size else halves, 25))
    core = _cores(fits, parents, psf_half)
    search = fits.bright_boxes(core)
    search &= halves >= 0.5 * psf_half  # sharper than the PSF: a cosmic ray, hot pixel
    # SEP allocates its whole pixel stack on every call: size it for the largest cutout
    pixstack = max(min(sep.get_extract_pixstack(), max(q.cut.size for q in parents)), 1024)
    found, patches = [], {}
    with sep_settings(pixstack=pixstack):
        for i in np.flatnonzero(search):
            parent = parents[i]
            hit = _companions(parent, fits.of(i, core), halves[i], psf_half, (ny, nx),
                              extract)
            if hit is None:
                continue
            cands, patches[parent.index] = hit
            found += [(parent.index, parent.box[2], parent.box[0], rec, pix)
                      for rec, pix in cands]
    if extract.overflows and notes is not None:
        notes.append(f"second pass: SEP's buffers overflowed on {len(extract.overflows)} "
                     f"bright object(s), left as the first pass found them "
                     f"({extract.overflows[0].split(':')[0]})")
    if not found:
        return None
    new, parent_of = _records(found, objects, segmap=pixels.segmap)
    # the parent's core stays labelled (out of the new sources' measurement)
    return Hidden(new, parent_of, [(*patches[p], p + 1) for p in np.unique(parent_of)])
