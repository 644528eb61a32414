"""Comparison metrics of the paper (section 3.3): RMSE, interface displacement, F/V, mass, and the
coarsening exponent of F(t). Arrays are ``(Z, Y, X)`` volumes (numpy or torch), lengths in grid
units, time in model units.
"""

from __future__ import annotations

import numpy as np

import torch

from .physics import EPS, TAU, free_energy_density, grad_sq

__all__ = [
    "rmse",
    "interface_displacement",
    "free_energy_density",
    "mass",
    "coarsening_exponent",
    "traces",
]


def _f64(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"shapes differ: {a.shape} vs {b.shape}; compare volumes on the same grid "
            "(downsample the reference or upsample the prediction first)"
        )


def rmse(phi, phi_ref) -> float:
    """Root mean squared difference ``sqrt(mean((phi - phi_ref)^2))``."""
    a, b = _f64(phi), _f64(phi_ref)
    _same_shape(a, b)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def interface_displacement(phi, phi_ref) -> float:
    """The paper's delta (eq. 4): ``sqrt(sum (phi - phi_ref)^2 / sum |grad phi_ref|^2)``.

    Root-mean-square distance (grid units) between the phi = 1/2 interfaces of ``phi`` and
    ``phi_ref`` when they differ by a small normal displacement (appendix C).
    """
    a, b = _f64(phi), _f64(phi_ref)
    _same_shape(a, b)
    denom = float(grad_sq(torch.from_numpy(b)).sum())
    if denom == 0:
        raise ValueError("phi_ref is uniform (no interface): interface displacement is undefined")
    return float(np.sqrt(((a - b) ** 2).sum() / denom))


def mass(phi, spacing: float = 1.0) -> float:
    """Total amount of phase 1: ``sum(phi) * spacing^3`` (float64; volume in grid units)."""
    return float(_f64(phi).sum()) * spacing**3


def coarsening_exponent(t, free_energy, t_min: float | None = None, t_max: float | None = None) -> float:
    """Slope of log F vs log t on the window ``t_min <= t <= t_max`` (least squares).

    For Cahn-Hilliard coarsening F ~ t^(-1/3) at late times, so the result is about -1/3.
    """
    t, f = np.asarray(t, dtype=np.float64), np.asarray(free_energy, dtype=np.float64)
    keep = (t > 0) & (f > 0)
    if t_min is not None:
        keep &= t >= t_min
    if t_max is not None:
        keep &= t <= t_max
    if keep.sum() < 2:
        raise ValueError("need at least two points with t > 0 and F > 0 in the fit window: widen it")
    slope, _ = np.polyfit(np.log(t[keep]), np.log(f[keep]), 1)
    return float(slope)


def traces(seq, ref=None, eps: float = EPS, tau: float = TAU, spacing: float = 1.0) -> dict[str, np.ndarray]:
    """Per-frame metrics of a sequence ``(T, Z, Y, X)`` with voxel size ``spacing``.

    Keys: ``t`` (T,), ``free_energy_density`` (F/V), ``mass``; with ``ref`` (same shape, the
    ground truth) also ``rmse``, ``interface_displacement`` and ``free_energy_density_ref``,
    over the frames both have.
    """
    n = len(seq) if ref is None else min(len(seq), len(ref))
    out = {
        "t": np.arange(n) * tau,
        "free_energy_density": np.array([free_energy_density(seq[i], eps, spacing) for i in range(n)]),
        "mass": np.array([mass(seq[i], spacing) for i in range(n)]),
    }
    if ref is not None:
        out["rmse"] = np.array([rmse(seq[i], ref[i]) for i in range(n)])
        out["interface_displacement"] = np.array([interface_displacement(seq[i], ref[i]) for i in range(n)])
        out["free_energy_density_ref"] = np.array([free_energy_density(ref[i], eps, spacing) for i in range(n)])
    return out
