"""Physics core: linear stability, equilibrium, conservation, energy decay, solver agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_chflow import physics
from napari_chflow.metrics import interface_displacement
from napari_chflow.physics import (
    EXPLICIT_DT,
    SimulationDiverged,
    chemical_potential,
    explicit_dt_limit,
    free_energy,
    iter_simulate,
    laplacian,
    laplacian_symbol,
    linear_growth_rate,
    simulate,
)
from napari_chflow.seeds import tanh_profile


def _mode(shape, m: int, amplitude: float) -> np.ndarray:
    x = np.arange(shape[-1])
    wave = np.cos(2 * np.pi * m * x / shape[-1])
    return 0.5 + amplitude * np.broadcast_to(wave, shape).copy()


def _amplitude(phi: np.ndarray, m: int) -> float:
    x = np.arange(phi.shape[-1])
    wave = np.cos(2 * np.pi * m * x / phi.shape[-1])
    return float(((phi - phi.mean()) * wave).sum() / (wave**2).sum() / np.prod(phi.shape[:-1]))


def test_laplacian_matches_symbol_and_numpy():
    rng = np.random.default_rng(0)
    phi = rng.random((6, 7, 9))
    ref = sum(np.roll(phi, s, ax) for ax in range(3) for s in (1, -1)) - 6 * phi
    out = laplacian(torch.as_tensor(phi)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-12)
    spectral = np.fft.irfftn(laplacian_symbol(phi.shape).numpy() * np.fft.rfftn(phi), s=phi.shape, axes=(0, 1, 2))
    np.testing.assert_allclose(spectral, ref, atol=1e-10)


def test_chemical_potential_is_variational_derivative_of_free_energy():
    rng = np.random.default_rng(1)
    phi = 0.5 + 0.2 * rng.standard_normal((8, 8, 8))
    mu = chemical_potential(phi)
    i, h = (3, 4, 5), 1e-5
    up, down = phi.copy(), phi.copy()
    up[i] += h
    down[i] -= h
    assert (free_energy(up) - free_energy(down)) / (2 * h) == pytest.approx(mu[i], rel=1e-6)


@pytest.mark.parametrize("m", [5, 11])  # 5: spinodal growth, 11: decay
def test_explicit_growth_rate_matches_discrete_linear_theory(m):
    shape, a0, n_tau = (2, 2, 32), 1e-6, 1
    phi = simulate(_mode(shape, m, a0), n_tau, dtype=torch.float64)
    k2 = 4 * math.sin(math.pi * m / shape[-1]) ** 2
    lam = linear_growth_rate(k2)
    steps = round(physics.TAU / EXPLICIT_DT) * n_tau
    expected = steps * math.log(abs(1 + EXPLICIT_DT * lam))
    measured = math.log(abs(_amplitude(phi[-1].astype(np.float64), m)) / a0)
    assert measured == pytest.approx(expected, rel=0.02)
    assert (lam > 0) == (m == 5)


@pytest.mark.parametrize("m", [2, 5, 7])  # the spinodal (growing) band on a 32-cell box
def test_spectral_growth_rate_matches_linear_theory(m):
    shape, a0, n_tau = (2, 2, 32), 1e-6, 2
    phi = simulate(_mode(shape, m, a0), n_tau, solver="spectral", dtype=torch.float64)
    lam = linear_growth_rate(4 * math.sin(math.pi * m / shape[-1]) ** 2)
    measured = math.log(abs(_amplitude(phi[-1].astype(np.float64), m)) / a0) / (n_tau * physics.TAU)
    assert lam > 0
    assert measured == pytest.approx(lam, rel=0.05)


def _crossing(profile: np.ndarray) -> float:
    i = int(np.argmax(profile > 0.5))
    return i - 1 + (0.5 - profile[i - 1]) / (profile[i] - profile[i - 1]) + 0.5


@pytest.fixture(scope="module")
def slab_equilibrium() -> np.ndarray:
    """Tanh slab (faces at z = 8 and 24) relaxed onto the grid's discrete equilibrium profile."""
    z = np.arange(32)[:, None, None] + 0.5
    d = np.minimum(z - 8.0, 24.0 - z)  # signed distance to the slab's two faces, > 0 inside
    tanh_slab = np.broadcast_to(tanh_profile(d), (32, 2, 2))
    relaxed = simulate(tanh_slab, 6, dtype=torch.float64)[-1]
    # the continuum tanh is already close to the discrete profile, and relaxing does not move it
    assert np.abs(relaxed - tanh_slab).max() < 0.06
    assert _crossing(relaxed[:16, 0, 0]) == pytest.approx(8.0, abs=1e-6)
    return np.broadcast_to(relaxed[:, :1, :1], (32, 8, 8)).copy()


@pytest.mark.parametrize("solver", ["explicit", "spectral"])
def test_equilibrium_tanh_slab_stays_put(slab_equilibrium, solver):
    out = simulate(slab_equilibrium, 1, solver=solver, dtype=torch.float64)
    assert np.abs(out[1] - out[0]).max() < 1e-3
    assert _crossing(out[1][:16, 0, 0]) == pytest.approx(8.0, abs=1e-3)


@pytest.mark.parametrize("solver", ["explicit", "spectral"])
def test_mass_conserved_over_10_tau(perlin16, solver):
    frames = simulate(perlin16, 10, solver=solver)
    m = frames.astype(np.float64).sum(axis=(1, 2, 3))
    assert np.abs(m - m[0]).max() / m[0] < 1e-6


@pytest.mark.parametrize("solver", ["explicit", "spectral"])
def test_free_energy_never_increases(perlin16, solver):
    f = [free_energy(p) for p in simulate(perlin16, 10, solver=solver, dtype=torch.float64)]
    assert np.all(np.diff(f) <= 1e-9 * f[0])
    assert f[-1] < 0.7 * f[0]  # real coarsening happened


def test_spectral_agrees_with_explicit_reference(perlin32):
    ref = simulate(perlin32, 10, solver="explicit")
    fast = simulate(perlin32, 10, solver="spectral")
    assert interface_displacement(fast[-1], ref[-1]) < 0.05


def test_iterator_yields_initial_condition_then_one_frame_per_tau(perlin16):
    frames = list(iter_simulate(perlin16, 3, solver="spectral"))
    assert len(frames) == 4 and frames[0].dtype == np.float32
    np.testing.assert_array_equal(frames[0], perlin16)
    np.testing.assert_allclose(np.stack(frames), simulate(perlin16, 3, solver="spectral"), atol=0)


def test_explicit_dt_bound_refused_unless_forced(perlin16):
    limit = explicit_dt_limit(3.0, 1.0)
    assert EXPLICIT_DT < limit < 3 * EXPLICIT_DT
    with pytest.raises(ValueError, match="stability bound"):
        simulate(perlin16, 1, dt=2 * limit)
    with pytest.raises(SimulationDiverged, match="by step") as info:
        simulate(perlin16, 3, dt=0.5 / 40, force=True)  # 3.6x over the bound: blows up
    assert len(info.value.frames) >= 1
    np.testing.assert_array_equal(info.value.frames[0], perlin16)


@pytest.mark.parametrize(
    ("phi0", "kwargs", "match"),
    [
        (np.zeros((4, 4)), {}, "3D array"),
        (np.full((4, 4, 4), np.nan), {}, "NaN"),
        (np.zeros((4, 4, 4)), {"solver": "rk4"}, "unknown solver"),
        (np.zeros((4, 4, 4)), {"device": "cuda"}, "cuda"),
    ],
)
def test_bad_inputs_give_clear_errors(phi0, kwargs, match):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match=match):
        simulate(phi0, 1, **kwargs)


def test_iterator_does_not_leak_inference_mode_to_the_caller(perlin16):
    frames = iter_simulate(perlin16, 2, solver="spectral")
    next(frames)
    next(frames)
    assert not torch.is_inference_mode_enabled()
    x = torch.ones(2, requires_grad=True)
    (x * 2).sum().backward()  # autograd still works between frames
    assert x.grad is not None


@pytest.mark.parametrize("shape", [(9, 7, 16), (16, 16, 16), (8, 6, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_fft_round_trips_in_the_input_precision(shape, dtype):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    inverse = physics.inverse_rfftn(shape, dtype=dtype)
    back = inverse(torch.fft.rfftn(x))
    assert back.dtype == dtype and back.shape == shape
    torch.testing.assert_close(back, x, rtol=0, atol=tol)
    out = torch.empty_like(x)
    assert inverse(torch.fft.rfftn(x), out=out) is out
    torch.testing.assert_close(out, x, rtol=0, atol=tol)


def test_free_energy_parts_sum_to_f_and_split_evenly_on_an_equilibrium_interface():
    from napari_chflow.physics import free_energy_parts
    from napari_chflow.seeds import slab

    phi = slab((32, 32, 32), width=16)
    parts = free_energy_parts(torch.from_numpy(phi).double())
    assert float(parts.sum()) * phi.size == pytest.approx(free_energy(phi), rel=1e-12)
    # the relaxed interface (the grid's equilibrium, close to the tanh seed) stores as much bulk
    # as gradient energy (equipartition)
    relaxed = simulate(phi, 10, solver="spectral")[-1]
    parts = free_energy_parts(torch.from_numpy(relaxed).double())
    assert float(parts[0] / parts[1]) == pytest.approx(1.0, abs=0.03)
    # a broadened interface stores more bulk than gradient energy
    broad = 0.5 + 0.5 * np.tanh((np.abs(np.arange(32) - 15.5) - 8) / -3.0)
    broad = np.broadcast_to(broad[:, None, None], (32, 32, 32)).copy()
    b = free_energy_parts(torch.from_numpy(broad))
    assert float(b[0] / b[1]) > 2.0


def test_gradient_flow_step_conserves_mass_and_lowers_f_on_a_coarse_grid(perlin16):
    from napari_chflow.physics import gradient_flow_step

    phi = torch.from_numpy(perlin16).double()
    dt = 0.6 * explicit_dt_limit(spacing=2)
    f = [free_energy(phi, spacing=2)]
    for _ in range(20):
        phi = gradient_flow_step(phi, dt, spacing=2)
        f.append(free_energy(phi, spacing=2))
    assert np.all(np.diff(f) < 0)
    assert float(phi.sum()) == pytest.approx(float(perlin16.astype(np.float64).sum()), rel=1e-12)
    # above the stability bound the same step blows up
    bad = torch.from_numpy(perlin16).double()
    for _ in range(60):
        bad = gradient_flow_step(bad, 1.5 * explicit_dt_limit(spacing=2), spacing=2)
    assert not bool(torch.isfinite(bad).all()) or float(bad.abs().max()) > 10


def test_semi_implicit_step_grows_modes_at_the_linear_rate_and_is_stable_at_any_dt(perlin16):
    from napari_chflow.physics import semi_implicit_step

    # small dt: a spinodal mode grows at the discrete linear rate, a short one decays
    shape, a0, dt, n = (2, 2, 32), 1e-6, 1e-3, 500
    for m in (5, 11):
        phi = torch.from_numpy(_mode(shape, m, a0))
        for _ in range(n):
            phi = semi_implicit_step(phi, dt)
        lam = linear_growth_rate(4 * math.sin(math.pi * m / 32) ** 2)
        measured = math.log(abs(_amplitude(phi.numpy(), m)) / a0) / (n * dt)
        assert measured == pytest.approx(lam, rel=0.05)
    # a step 100x the explicit bound: F falls every step, mass kept, phi bounded
    phi = torch.from_numpy(perlin16).double()
    f = [free_energy(phi)]
    for _ in range(10):
        phi = semi_implicit_step(phi, 100 * explicit_dt_limit())
        f.append(free_energy(phi))
    assert np.all(np.diff(f) < 0) and float(phi.abs().max()) < 1.5
    assert float(phi.sum()) == pytest.approx(float(perlin16.astype(np.float64).sum()), rel=1e-12)
