"""Metrics against analytic cases."""

from __future__ import annotations

import numpy as np
import pytest

from napari_chflow.metrics import (
    coarsening_exponent,
    free_energy_density,
    interface_displacement,
    mass,
    rmse,
    traces,
)
from napari_chflow.seeds import tanh_profile


def _slab(shift: float, eps: float = 3.0, n: int = 32) -> np.ndarray:
    """Periodic slab with faces at z = 8 + shift and z = 24 + shift, equilibrium profile."""
    z = np.arange(n)[:, None, None] + 0.5
    d = np.minimum(z - 8.0 - shift, 24.0 + shift - z)
    return np.broadcast_to(tanh_profile(d, eps), (n, 8, 8)).astype(np.float64)


def test_rmse_of_constant_offset():
    a = np.random.default_rng(0).random((8, 8, 8))
    assert rmse(a + 0.25, a) == pytest.approx(0.25)
    assert rmse(a, a) == 0.0


@pytest.mark.parametrize("eps", [3.0, 6.0])
@pytest.mark.parametrize("shift", [0.1, 0.3])
def test_interface_displacement_of_shifted_slab_is_the_shift(shift, eps):
    assert interface_displacement(_slab(shift, eps), _slab(0.0, eps)) == pytest.approx(shift, rel=0.05)


def test_interface_displacement_refuses_uniform_reference():
    with pytest.raises(ValueError, match="uniform"):
        interface_displacement(np.zeros((4, 4, 4)), np.full((4, 4, 4), 0.5))


@pytest.mark.parametrize(("eps", "rel"), [(3.0, 0.05), (6.0, 0.01)])
def test_free_energy_density_uniform_and_flat_interfaces(eps, rel):
    c = 0.3
    assert free_energy_density(np.full((8, 8, 8), c), eps) == pytest.approx((18 / eps) * c**2 * (1 - c) ** 2)
    # the surface tension of this model is exactly 1 in the continuum, for any eps; the grid
    # under-resolves the eps = 3 profile (about one cell wide) by a few percent
    slab = _slab(0.0, eps)
    assert free_energy_density(slab, eps) * slab.size == pytest.approx(2 * 8 * 8, rel=rel)


def test_mass_is_total_phi():
    phi = np.full((4, 5, 6), 0.5, dtype=np.float32)
    assert mass(phi) == pytest.approx(60.0)


def test_coarsening_exponent_of_power_law():
    t = np.linspace(1, 1000, 200)
    f = 3.0 * t ** (-1 / 3)
    assert coarsening_exponent(t, f) == pytest.approx(-1 / 3, abs=1e-9)
    bent = np.where(t < 100, 3.0 * t ** -0.1, 3.0 * 100**0.233 * t ** (-1 / 3))
    assert coarsening_exponent(t, bent, t_min=100) == pytest.approx(-1 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="window"):
        coarsening_exponent(t, f, t_min=2000)


def test_traces_bundle():
    seq = np.stack([_slab(s) for s in (0.0, 0.1, 0.2)])
    tr = traces(seq, ref=np.stack([_slab(0.0)] * 3), tau=0.5)
    np.testing.assert_allclose(tr["t"], [0.0, 0.5, 1.0])
    assert tr["interface_displacement"][0] == 0.0
    assert tr["interface_displacement"][2] == pytest.approx(0.2, rel=0.05)
    assert set(tr) >= {"rmse", "free_energy_density", "free_energy_density_ref", "mass"}


def test_free_energy_density_is_grid_independent_with_spacing():
    # the same physical slab (eps = 6 so both grids resolve it) sampled at spacing 1 and 2
    fine = _slab(0.0, eps=6.0)
    coarse = fine[::2, ::2, ::2]
    f_fine = free_energy_density(fine, 6.0)
    assert free_energy_density(coarse, 6.0, spacing=2.0) == pytest.approx(f_fine, rel=0.05)
    assert free_energy_density(coarse, 6.0) > 1.5 * f_fine  # wrong spacing: clearly off
