"""psfmodel's fast paths against direct computations: render's one-product y pass and banded x
pass against an explicit separable Lanczos sum (and its derivatives against finite
differences), build's vectorised Cholesky against numpy's solver, build's input checks."""

from __future__ import annotations

import numpy as np
import pytest

from skysurvey import psfmodel as pm


def _grid(order=2, half=8, seed=0):
    rng = np.random.default_rng(seed)
    off = np.arange(-half, half + 1)
    r2 = off[None, :] ** 2 + off[:, None] ** 2
    core = (1 + r2 / 6.0) ** -3.5
    k = pm.n_terms(order)
    basis = np.concatenate([(core / core.sum())[None],
                            1e-3 * rng.normal(size=(k - 1, 2 * half + 1, 2 * half + 1))])
    return pm.PsfGrid(basis, 1, half, order, (300.0, 200.0), (300.0, 200.0))


def _direct(grid, x, y, ix, iy, half_out):
    """sum_{d, e} ty[d] tx[e] model[i + d, j + e], the model and taps from first principles."""
    h = grid.half
    out = np.zeros((x.size, 2 * half_out + 1, 2 * half_out + 1))
    for n in range(x.size):
        t = pm.poly_terms(x[n:n + 1], y[n:n + 1], grid.order, grid.centre, grid.scale)[0]
        model = np.tensordot(t, grid.basis, axes=1)
        fx, fy = x[n] - ix[n], y[n] - iy[n]
        reach = 3 + int(np.ceil(max(abs(fx), abs(fy)) - 0.5) if max(abs(fx), abs(fy)) > 0.5
                        else 0)
        d = np.arange(-reach, reach + 1)
        tx, ty = pm.lanczos(-fx - d), pm.lanczos(-fy - d)
        tx, ty = tx / tx.sum(), ty / ty.sum()
        for i in range(-half_out, half_out + 1):
            for j in range(-half_out, half_out + 1):
                rows, cols = i + d + h, j + d + h
                ok_r, ok_c = (rows >= 0) & (rows <= 2 * h), (cols >= 0) & (cols <= 2 * h)
                block = model[np.ix_(rows[ok_r], cols[ok_c])]
                out[n, i + half_out, j + half_out] = ty[ok_r] @ block @ tx[ok_c]
    return out


@pytest.mark.parametrize("order", [0, 1, 2])
def test_render_matches_an_explicit_lanczos_sum(order):
    grid = _grid(order)
    rng = np.random.default_rng(order)
    x, y = rng.uniform(0, 600, 40), rng.uniform(0, 400, 40)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    ix[:5] += np.array([1, -1, 2, 0, 1])  # stamps centred off the nearest pixel
    for half_out in (3, 8, 11):  # inside, at and beyond the model's half-size
        _, _, psf = pm.render(grid, x, y, half_out, centre=(ix, iy))
        assert np.abs(psf - _direct(grid, x, y, ix, iy, half_out)).max() < 1e-12
        _, _, p32 = pm.render(pm.as_float32(grid), x, y, half_out, centre=(ix, iy))
        assert p32.dtype == np.float32 and np.abs(p32 - psf).max() < 1e-6 * psf.max()


@pytest.mark.parametrize(("order", "tol"), [(0, 1e-7), (2, 1e-3)])
def test_render_derivatives_match_finite_differences(order, tol):
    """The derivatives are the shift's (the polynomial terms' motion, ~3e-4 of them at order
    2 here, is left out)."""
    grid = _grid(order)
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 600, 30), rng.uniform(0, 400, 30)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    _, _, psf, dx, dy = pm.render(grid, x, y, 7, derivatives=True, centre=(ix, iy))
    assert np.abs(psf - pm.render(grid, x, y, 7, centre=(ix, iy))[2]).max() < 1e-15
    step = 1e-5
    for d, (sx, sy) in ((dx, (step, 0)), (dy, (0, step))):
        up = pm.render(grid, x + sx, y + sy, 7, centre=(ix, iy))[2]
        down = pm.render(grid, x - sx, y - sy, 7, centre=(ix, iy))[2]
        assert np.abs(d - (up - down) / (2 * step)).max() < tol * np.abs(d).max()


def test_cholesky_solve_matches_numpy():
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(500, 30, 6))
    a = np.einsum("pnk,pnl->pkl", jac, jac)
    b = rng.normal(size=(500, 6))
    ref = np.linalg.solve(a + 1e-6 * a[:, :1, :1] * np.eye(6), b[..., None])[..., 0]
    out = pm._spd_solve(np.ascontiguousarray(np.moveaxis(a, 0, -1)), b.T.copy(), 1e-6).T
    assert np.abs(out - ref).max() < 1e-10 * np.abs(ref).max()


def test_build_needs_stamps_of_the_model_size():
    stars = pm.StarStamps(np.ones((3, 9, 9)), np.ones((3, 9, 9)), np.zeros(3), np.zeros(3),
                          np.ones(3))
    with pytest.raises(ValueError, match="native"):
        pm.build(stars, pm.GridLayout(5, 1, 0, (0.0, 0.0), (1.0, 1.0)))
