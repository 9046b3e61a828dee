"""Numerical PDE solvers behind the embedded PDE datasets (numpy/scipy, float64).

Conventions: domains are the unit interval/square. Periodic problems live on ``[0, 1)^d``
and are sampled on uniform grids (the spectral solvers are translation invariant, so the
grid offset does not matter); Darcy flow lives on ``[0, 1]^2`` sampled at cell centres.
All batched functions take the sample axis first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp
import scipy.sparse.linalg as spla

# Part of every cache key: bump it whenever a change here alters generated data.
SOLVER_VERSION = "pde-solvers-1"


def cell_centres(n: int) -> np.ndarray:
    """The ``n`` cell centres ``(i + 1/2) / n`` of the unit interval."""
    return (np.arange(n) + 0.5) / n


# ---------------------------------------------------------------------------------------
# Random fields as truncated Fourier series, so one field can be sampled at any resolution.
# ---------------------------------------------------------------------------------------
def grf_coefficients(
    rng: np.random.Generator, num: int, dim: int, cutoff: int, alpha: float, tau: float
) -> np.ndarray:
    """Complex Fourier coefficients of ``num`` Gaussian random fields, modes ``-cutoff..cutoff``.

    The covariance is ``(4 pi^2 |n|^2 + tau^2)^(-alpha/2)`` per mode (Matern-like), scaled
    so that the real part of the series has unit pointwise variance.
    """
    n = np.arange(-cutoff, cutoff + 1)
    k2 = sum(g**2 for g in np.meshgrid(*([2 * np.pi * n] * dim), indexing="ij"))
    amp = (k2 + tau**2) ** (-alpha / 2)
    amp /= np.sqrt((amp**2).sum())
    z = rng.standard_normal((num, *amp.shape, 2))
    return amp * (z[..., 0] + 1j * z[..., 1])


def eval_fourier(coeffs: np.ndarray, modes: Sequence[np.ndarray], points: Sequence[np.ndarray]) -> np.ndarray:
    """``Re sum_n c_n exp(2 pi i n.x)`` on the tensor grid ``points`` (one 1D array per axis).

    ``coeffs`` is ``[B, len(modes[0]), ...]``; returns ``[B, len(points[0]), ...]``.
    Separable evaluation: one small matrix product per axis.
    """
    out = coeffs
    for axis, (m, x) in enumerate(zip(modes, points)):
        basis = np.exp(2j * np.pi * np.outer(m, x))  # [modes, points]
        out = np.moveaxis(np.tensordot(out, basis, axes=([axis + 1], [0])), -1, axis + 1)
    return out.real


def periodic_interpolate(u: np.ndarray, points: Sequence[np.ndarray]) -> np.ndarray:
    """Evaluate the trigonometric interpolant of ``u`` (``[B, n, ...]`` on cell centres of a
    periodic grid) at ``points``; exact for band-limited fields. The Nyquist mode is dropped
    because its interpolant is not unique."""
    d = u.ndim - 1
    axes = tuple(range(1, d + 1))
    coeffs = sfft.fftn(u, axes=axes) / np.prod(u.shape[1:])
    modes = []
    for axis in axes:
        n = u.shape[axis]
        m = np.rint(sfft.fftfreq(n, 1.0 / n)).astype(int)
        shape = [1] * u.ndim
        shape[axis] = n
        # Shift the phase reference from the first cell centre (x = 1/2n) to x = 0.
        coeffs = coeffs * np.exp(-1j * np.pi * m / n).reshape(shape)
        if n % 2 == 0:
            coeffs = np.delete(coeffs, n // 2, axis=axis)
            m = np.delete(m, n // 2)
        modes.append(m)
    return eval_fourier(coeffs, modes, points)


def _wavenumbers(shape: Sequence[int], real_last: bool = False) -> list[np.ndarray]:
    """Angular wavenumbers ``2 pi n`` per axis, shaped to broadcast over a spectrum."""
    out = []
    for axis, n in enumerate(shape):
        f = sfft.rfftfreq(n, 1.0 / n) if (real_last and axis == len(shape) - 1) else sfft.fftfreq(n, 1.0 / n)
        s = [1] * len(shape)
        s[axis] = -1
        out.append(2 * np.pi * f.reshape(s))
    return out


def _per_sample(value: float | np.ndarray, num: int, extra_dims: int) -> np.ndarray:
    v = np.broadcast_to(np.asarray(value, dtype=np.float64), (num,))
    return v.reshape((num,) + (1,) * extra_dims)


# ---------------------------------------------------------------------------------------
# Linear periodic problems: exact in Fourier space.
# ---------------------------------------------------------------------------------------
def heat_periodic(u0: np.ndarray, nu: float | np.ndarray, t: float) -> np.ndarray:
    """Solve ``u_t = nu lap u`` on the periodic unit box exactly; ``u0`` is ``[B, *grid]``,
    ``nu`` a scalar or ``[B]``."""
    d = u0.ndim - 1
    axes = tuple(range(1, d + 1))
    k2 = sum(k**2 for k in _wavenumbers(u0.shape[1:]))
    decay = np.exp(-_per_sample(nu, u0.shape[0], d) * k2[None] * t)
    return sfft.ifftn(sfft.fftn(u0, axes=axes) * decay, axes=axes).real


def advect_periodic(u0: np.ndarray, velocity: np.ndarray, t: float) -> np.ndarray:
    """Solve ``u_t + c.grad u = 0`` on the periodic unit box exactly (a Fourier phase shift,
    ``u(x, t) = u0(x - c t)``); ``velocity`` is ``[d]`` or ``[B, d]``."""
    b, d = u0.shape[0], u0.ndim - 1
    c = np.broadcast_to(np.asarray(velocity, dtype=np.float64), (b, d))
    axes = tuple(range(1, d + 1))
    phase = sum(_per_sample(c[:, i], b, d) * k[None] for i, k in enumerate(_wavenumbers(u0.shape[1:])))
    return sfft.ifftn(sfft.fftn(u0, axes=axes) * np.exp(-1j * phase * t), axes=axes).real


# ---------------------------------------------------------------------------------------
# Semilinear periodic problems: ETDRK4 (Cox & Matthews 2002; Kassam & Trefethen 2005).
# ---------------------------------------------------------------------------------------
def etdrk4_coefficients(lin: np.ndarray, h: float, contour_points: int = 32) -> tuple[np.ndarray, ...]:
    """``E, E/2, Q, f1, f2, f3`` for a real diagonal linear operator ``lin`` and step ``h``.

    The phi-functions are averaged over a circle around ``h*lin`` (Kassam & Trefethen) to
    avoid cancellation near zero; the loop over contour points keeps memory at ``lin``'s size.
    """
    lh = h * lin
    q = np.zeros_like(lh)
    f1, f2, f3 = np.zeros_like(lh), np.zeros_like(lh), np.zeros_like(lh)
    for r in np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points):
        z = lh + r
        ez = np.exp(z)
        q += ((np.exp(z / 2) - 1) / z).real
        f1 += ((-4 - z + ez * (4 - 3 * z + z**2)) / z**3).real
        f2 += ((2 + z + ez * (z - 2)) / z**3).real
        f3 += ((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3).real
    s = h / contour_points
    return np.exp(lh), np.exp(lh / 2), q * s, f1 * s, f2 * s, f3 * s


def etdrk4(
    v: np.ndarray, lin: np.ndarray, nonlinear: Callable[[np.ndarray], np.ndarray], t: float, dt: float
) -> np.ndarray:
    """Integrate ``v' = lin * v + nonlinear(v)`` in spectral space from 0 to ``t`` with steps
    of at most ``dt`` (the step is shortened so that it lands exactly on ``t``)."""
    steps = max(1, int(np.ceil(t / dt - 1e-9)))
    e, e2, q, f1, f2, f3 = etdrk4_coefficients(lin, t / steps)
    for _ in range(steps):
        nv = nonlinear(v)
        a = e2 * v + q * nv
        na = nonlinear(a)
        b = e2 * v + q * na
        nb = nonlinear(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = nonlinear(c)
        v = e * v + f1 * nv + 2 * f2 * (na + nb) + f3 * nc
    return v


def _dealias_mask(shape: Sequence[int]) -> np.ndarray:
    """2/3-rule mask on an rfft spectrum: keep modes with every ``|n| <= n_axis / 3``."""
    mask = np.ones(1, dtype=bool)
    for k, n in zip(_wavenumbers(shape, real_last=True), shape):
        mask = mask & (np.abs(k) / (2 * np.pi) <= n / 3)
    return mask


def burgers_periodic(
    u0: np.ndarray, nu: float | np.ndarray, t: float, dt: float | None = None, cfl: float = 0.5
) -> np.ndarray:
    """Viscous Burgers ``u_t + (u^2/2)_x = nu u_xx`` on the periodic unit interval.

    Pseudo-spectral in space (2/3-rule dealiasing), ETDRK4 in time. ``u0`` is ``[B, n]``;
    ``nu`` a scalar or ``[B]``. Without ``dt`` the step follows an advective CFL number
    ``cfl`` from ``max|u0|`` (the maximum principle keeps ``max|u|`` from growing).
    """
    b, n = u0.shape
    (k,) = _wavenumbers((n,), real_last=True)
    mask = _dealias_mask((n,))
    lin = -_per_sample(nu, b, 1) * k**2
    ik_half = -0.5j * k * mask

    def nonlinear(v: np.ndarray) -> np.ndarray:
        u = sfft.irfft(v, n, axis=-1)
        return ik_half * sfft.rfft(u * u, axis=-1)

    if dt is None:
        dt = cfl / (n * max(float(np.abs(u0).max()), 1e-12))
    v = etdrk4(sfft.rfft(u0, axis=-1) * mask, lin, nonlinear, t, dt)
    return sfft.irfft(v, n, axis=-1)


def allen_cahn_periodic(u0: np.ndarray, eps2: float | np.ndarray, t: float, dt: float = 0.02) -> np.ndarray:
    """Allen--Cahn ``u_t = eps2 lap u + u - u^3`` on the periodic unit square.

    Pseudo-spectral (2/3-rule dealiasing) with ETDRK4; ``u0`` is ``[B, n, n]``, ``eps2`` a
    scalar or ``[B]``. The stiff diffusion and the linear growth are treated exactly.
    """
    b = u0.shape[0]
    grid = u0.shape[1:]
    k2 = sum(k**2 for k in _wavenumbers(grid, real_last=True))
    mask = _dealias_mask(grid)
    lin = 1.0 - _per_sample(eps2, b, 2) * k2[None]

    def nonlinear(v: np.ndarray) -> np.ndarray:
        u = sfft.irfft2(v, grid, axes=(1, 2))
        return -sfft.rfft2(u**3, axes=(1, 2)) * mask

    v = etdrk4(sfft.rfft2(u0, axes=(1, 2)) * mask, lin, nonlinear, t, dt)
    return sfft.irfft2(v, grid, axes=(1, 2))


# ---------------------------------------------------------------------------------------
# Darcy flow: cell-centred 5-point finite differences.
# ---------------------------------------------------------------------------------------
def darcy_matrix(a: np.ndarray) -> sp.csr_matrix:
    """Matrix of ``-div(a grad u)`` on the ``n x n`` cell centres of ``[0, 1]^2`` with
    ``u = 0`` on the boundary. Face coefficients are harmonic means of the two cells (the
    flux-continuous choice for jumping coefficients); a wall face sits half a cell away and
    uses the cell's own coefficient (a ghost cell with ``u_ghost = -u``)."""
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"a: expected a square [n, n] coefficient field, got shape {a.shape}")
    n = a.shape[0]
    inv_h2 = float(n * n)
    idx = np.arange(n * n).reshape(n, n)
    fx = 2 * a[:-1, :] * a[1:, :] / (a[:-1, :] + a[1:, :]) * inv_h2  # faces between rows i, i+1
    fy = 2 * a[:, :-1] * a[:, 1:] / (a[:, :-1] + a[:, 1:]) * inv_h2  # faces between cols j, j+1
    diag = np.zeros((n, n))
    diag[:-1, :] += fx
    diag[1:, :] += fx
    diag[:, :-1] += fy
    diag[:, 1:] += fy
    wall = 2 * a * inv_h2
    diag[0, :] += wall[0, :]
    diag[-1, :] += wall[-1, :]
    diag[:, 0] += wall[:, 0]
    diag[:, -1] += wall[:, -1]
    rows = [idx.ravel(), idx[:-1, :].ravel(), idx[1:, :].ravel(), idx[:, :-1].ravel(), idx[:, 1:].ravel()]
    cols = [idx.ravel(), idx[1:, :].ravel(), idx[:-1, :].ravel(), idx[:, 1:].ravel(), idx[:, :-1].ravel()]
    vals = [diag.ravel(), -fx.ravel(), -fx.ravel(), -fy.ravel(), -fy.ravel()]
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n * n, n * n)
    )


def solve_darcy(a: np.ndarray, f: float | np.ndarray = 1.0) -> np.ndarray:
    """Pressure ``u`` with ``-div(a grad u) = f`` in ``[0, 1]^2``, ``u = 0`` on the boundary.

    ``a`` is ``[n, n]`` (cell centres) or a batch ``[B, n, n]``; ``f`` a scalar or a field
    of ``a``'s shape. Direct sparse solve per sample."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        fb = np.broadcast_to(np.asarray(f, dtype=np.float64), a.shape)
        return np.stack([solve_darcy(ai, fi) for ai, fi in zip(a, fb)])
    if np.any(a <= 0):
        raise ValueError("a: the Darcy coefficient must be positive everywhere")
    rhs = np.broadcast_to(np.asarray(f, dtype=np.float64), a.shape).ravel()
    return spla.spsolve(darcy_matrix(a).tocsc(), rhs).reshape(a.shape)
