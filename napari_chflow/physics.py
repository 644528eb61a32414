"""Cahn-Hilliard model of the paper (Lanzoni et al. 2024, eq. 1-2) and its two solvers.

    dphi/dt = M lap(mu),   mu = g'(phi) - eps lap(phi),   g = (18/eps) phi^2 (1 - phi)^2

on a periodic grid with spacing 1 (lengths in grid units, ``eps = 3``, ``M = 1``).

Everything discrete derives from one stencil, the periodic 7-point Laplacian
(:func:`laplacian`, Fourier symbol :func:`laplacian_symbol`). The free energy uses forward
differences, whose variational derivative is exactly ``g'(phi) - eps * laplacian(phi)``, so both
solvers integrate the gradient flow of :func:`free_energy` itself.

Solvers
- ``"explicit"``: the paper's reference, explicit Euler with ``dt = 1.25e-3`` (400 steps per
  ``tau = 0.5``), in-place torch arithmetic on preallocated buffers.
- ``"spectral"``: semi-implicit Fourier scheme (stabilised SBDF2) using the *finite-difference*
  Laplacian symbol, so it converges to the same discrete model with steps ~100x larger.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

EPS = 3.0
MOBILITY = 1.0
TAU = 0.5
EXPLICIT_DT = 1.25e-3
SPECTRAL_DT = 0.125
SOLVERS = ("explicit", "spectral")
PHI_RANGE = (-0.5, 1.5)
"""Initial conditions must lie in this range: phi is a phase fraction, 0 and 1 the two phases
(runs overshoot [0, 1] by a few percent; data in other units, e.g. percent, must be rescaled)."""
BLOWUP_RANGE = (-2.0, 3.0)
"""A run whose phi leaves this range has blown up (no stable scheme gets there from PHI_RANGE)."""


class SimulationDiverged(RuntimeError):
    """phi became NaN/inf or blew up (left :data:`BLOWUP_RANGE`); ``frames`` holds the frames
    produced before, ``step`` the time step."""

    def __init__(self, message: str, frames: list[np.ndarray], step: int):
        super().__init__(message)
        self.frames = frames
        self.step = step


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CPU; ``"cuda"`` only when a CUDA device is present (else a clear error)."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was requested but no CUDA GPU is available: use device='cpu' "
            "(or install a CUDA build of torch on a machine with a GPU)"
        )
    return dev


def check_phi_range(phi: np.ndarray | torch.Tensor, name: str = "phi") -> None:
    """Raise ``ValueError`` naming the span of ``phi`` if it leaves :data:`PHI_RANGE` (e.g.
    percent data, 0..100, or the -1..1 convention) or holds NaN/inf."""
    if isinstance(phi, torch.Tensor):
        lo, hi = (float(v) for v in torch.aminmax(phi.detach()))
    else:
        lo, hi = float(np.min(phi)), float(np.max(phi))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf: replace them (e.g. np.nan_to_num) first")
    if lo < PHI_RANGE[0] or hi > PHI_RANGE[1]:
        raise ValueError(
            f"{name} spans {lo:.4g}..{hi:.4g}, outside the range of the model (0 and 1 are the two "
            "phases): rescale it to [0, 1], e.g. (phi - min) / (max - min)"
        )


def _validate_phi(phi: np.ndarray | torch.Tensor) -> None:
    if phi.ndim != 3:
        raise ValueError(
            f"phi must be a 3D array (Z, Y, X), got shape {tuple(phi.shape)}: "
            "pass a single volume, e.g. phi[0] for the first frame of a sequence"
        )
    if min(phi.shape) < 1:
        raise ValueError(f"phi has an empty axis, shape {tuple(phi.shape)}: "
                         "pass a non-empty volume")
    check_phi_range(phi)


def _as_tensor(phi, dtype=None, device=None) -> torch.Tensor:
    if isinstance(phi, torch.Tensor):
        return phi.to(device=device or phi.device, dtype=dtype or phi.dtype)
    arr = np.asarray(phi)
    if not arr.flags.writeable:  # e.g. np.broadcast_to: torch would warn about sharing it
        arr = arr.copy()
    return torch.as_tensor(arr, dtype=dtype or torch.float64, device=device)


# --------------------------------------------------------------------------- the stencil


def laplacian(
    phi: torch.Tensor, out: torch.Tensor | None = None, pad: torch.Tensor | None = None
) -> torch.Tensor:
    """Periodic 7-point Laplacian (grid spacing 1) over the last three dims of ``(..., Z, Y, X)``.

    ``out`` and ``pad`` (shape ``(..., Z+2, Y+2, X+2)``) are optional work buffers; with them
    the call allocates nothing (the solver's inner loop passes them). Without ``out`` it is
    differentiable (training losses and the CRNN's energy guard use it).
    """
    if out is None and phi.requires_grad:
        return sum(torch.roll(phi, 1, d) + torch.roll(phi, -1, d) for d in (-3, -2, -1)) - 6 * phi
    if pad is None:
        pad = phi.new_empty((*phi.shape[:-3], *(n + 2 for n in phi.shape[-3:])))
    if out is None:
        out = torch.empty_like(phi)
    pad[..., 1:-1, 1:-1, 1:-1] = phi
    pad[..., 0, 1:-1, 1:-1] = phi[..., -1, :, :]
    pad[..., -1, 1:-1, 1:-1] = phi[..., 0, :, :]
    pad[..., :, 0, 1:-1] = pad[..., :, -2, 1:-1]
    pad[..., :, -1, 1:-1] = pad[..., :, 1, 1:-1]
    pad[..., :, :, 0] = pad[..., :, :, -2]
    pad[..., :, :, -1] = pad[..., :, :, 1]
    torch.add(pad[..., 2:, 1:-1, 1:-1], pad[..., :-2, 1:-1, 1:-1], out=out)
    out.add_(pad[..., 1:-1, 2:, 1:-1]).add_(pad[..., 1:-1, :-2, 1:-1])
    out.add_(pad[..., 1:-1, 1:-1, 2:]).add_(pad[..., 1:-1, 1:-1, :-2])
    return out.sub_(phi, alpha=6.0)


def laplacian_symbol(shape, device=None, dtype=torch.float64) -> torch.Tensor:
    """Fourier symbol of :func:`laplacian` on an rfft grid: ``-sum_i 4 sin^2(k_i / 2)``, <= 0."""
    z, y, x = shape
    k2 = [4 * torch.sin(math.pi * torch.fft.fftfreq(n, device=device, dtype=dtype)) ** 2 for n in (z, y)]
    k2.append(4 * torch.sin(math.pi * torch.fft.rfftfreq(x, device=device, dtype=dtype)) ** 2)
    return -(k2[0][:, None, None] + k2[1][None, :, None] + k2[2][None, None, :])


# --------------------------------------------------------------------------- free energy


def bulk_derivative(phi: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """g'(phi) = (36/eps) phi (1 - phi) (1 - 2 phi)."""
    return (36.0 / eps) * phi * (1 - phi) * (1 - 2 * phi)


def chemical_potential(phi, eps: float = EPS, spacing: float = 1.0):
    """mu = g'(phi) - eps lap(phi), same type and shape as ``phi`` (numpy or torch,
    ``(..., Z, Y, X)``); ``spacing`` is the voxel size in grid units (the Laplacian is divided by
    its square), so mu is the variational derivative of :func:`free_energy` on that grid."""
    t = _as_tensor(phi)
    mu = bulk_derivative(t, eps) - (eps / spacing**2) * laplacian(t)
    return mu if isinstance(phi, torch.Tensor) else mu.numpy()


def grad_sq(phi: torch.Tensor) -> torch.Tensor:
    """|grad phi|^2 with periodic forward differences over the last three dims (same shape).

    The discrete gradient whose adjoint pairs with :func:`laplacian`: sum(grad_sq) = -sum(phi lap phi).
    """
    return sum((torch.roll(phi, -1, dims=d) - phi) ** 2 for d in (-3, -2, -1))


def free_energy_parts(phi: torch.Tensor, eps: float = EPS, spacing: float = 1.0) -> torch.Tensor:
    """Bulk and gradient free-energy densities (per unit volume) of ``phi`` ``(..., Z, Y, X)``:
    ``(..., 2)`` in ``phi``'s dtype, differentiable (training losses use it).

    ``[..., 0] = mean g(phi)``, ``[..., 1] = mean eps/2 |grad phi|^2`` with forward differences
    and voxel size ``spacing`` (grid units). For the equilibrium tanh interface the two are equal
    (equipartition); their sum is F/V.
    """
    bulk = (18.0 / eps) * (phi * (1 - phi)) ** 2
    grad = (0.5 * eps / spacing**2) * grad_sq(phi)
    return torch.stack([bulk.mean(dim=(-3, -2, -1)), grad.mean(dim=(-3, -2, -1))], -1)


def free_energy(phi, eps: float = EPS, spacing: float = 1.0) -> float:
    """F = sum over voxels of [g(phi) + eps/2 |grad phi|^2] * spacing^3, float64.

    Forward differences; ``spacing`` is the voxel size in grid units of the model (1 for the
    solvers' grid, 2 for the CRNN's x1/2 grid), so coarse and fine grids measure the same F.
    """
    t = _as_tensor(phi).to(torch.float64)
    n = int(np.prod(t.shape[-3:]))
    return float(free_energy_parts(t, eps, spacing).sum()) * n * spacing**3


def free_energy_density(phi, eps: float = EPS, spacing: float = 1.0) -> float:
    """F/V: :func:`free_energy` divided by the volume (voxels * spacing^3)."""
    return free_energy(phi, eps, spacing) / (int(np.prod(phi.shape[-3:])) * spacing**3)


# --------------------------------------------------------------------------- solvers


def explicit_dt_limit(eps: float = EPS, mobility: float = MOBILITY, spacing: float = 1.0) -> float:
    """Largest stable explicit-Euler step for phi in [0, 1] (linearised about phi = 0 or 1).

    Amplification ``1 - dt M K (eps K + g'')`` with K <= 12 / spacing^2 (3D 7-point stencil on
    voxels of size ``spacing``), g'' <= 36/eps.
    """
    k_max = 12.0 / spacing**2
    return 2.0 / (mobility * k_max * (eps * k_max + 36.0 / eps))


@dataclass(frozen=True)
class _Run:
    solver: str
    eps: float
    mobility: float
    dt: float
    steps_per_tau: int


def _plan(solver: str, tau: float, eps: float, mobility: float, dt: float | None, force: bool) -> _Run:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    for name, value in (("tau", tau), ("eps", eps), ("mobility", mobility)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r}: use a positive finite number (the paper: tau = "
                             f"{TAU}, eps = {EPS}, mobility = {MOBILITY})")
    if dt is not None and not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt={dt!r}: use a positive finite time step (default {EXPLICIT_DT} "
                         f"explicit, {SPECTRAL_DT} spectral)")
    if dt is None:
        dt = EXPLICIT_DT if solver == "explicit" else SPECTRAL_DT
    dt = min(dt, tau)
    steps = max(1, round(tau / dt))
    if not math.isclose(steps * dt, tau, rel_tol=1e-6):
        steps = math.ceil(tau / dt)  # shrink dt slightly so frames land exactly on multiples of tau
    dt = tau / steps
    if solver == "explicit":
        limit = explicit_dt_limit(eps, mobility)
        if dt > limit and not force:
            raise ValueError(
                f"dt={dt:.3g} exceeds the explicit Euler stability bound {limit:.3g} for eps={eps}, "
                f"mobility={mobility}: use dt <= {limit:.3g}, the spectral solver, or force=True (--force)"
            )
    return _Run(solver, float(eps), float(mobility), float(dt), int(steps))


def _explicit_stepper(phi: torch.Tensor, run: _Run):
    """In-place explicit Euler: phi += dt M lap(g'(phi) - eps lap(phi)); 3 work buffers."""
    lap, mu, pad = torch.empty_like(phi), torch.empty_like(phi), phi.new_empty([n + 2 for n in phi.shape])
    c, a = 36.0 / run.eps, run.dt * run.mobility

    def step() -> None:
        laplacian(phi, out=lap, pad=pad)
        torch.mul(phi, 2.0, out=mu)  # g'(phi) = c (2 phi^3 - 3 phi^2 + phi), Horner form
        mu.sub_(3.0).mul_(phi).add_(1.0).mul_(phi).mul_(c)
        mu.sub_(lap, alpha=run.eps)
        laplacian(mu, out=lap, pad=pad)
        phi.add_(lap, alpha=a)

    return step


def inverse_rfftn(shape, device=None, dtype=torch.float32) -> Callable[..., torch.Tensor]:
    """``f(hat, out=None) == torch.fft.irfftn(hat, s=shape)`` for a real ``(Z, Y, X)`` grid, faster.

    With X even it packs the result as ``x[..., 2m] + i x[..., 2m+1]``, which is one complex
    FFT of half the size: about 1.0 ms instead of 1.7 ms at 64^3 on the 2-core CPU this was
    tuned on, where the c2r transform costs twice the r2c one. Odd X falls back to irfftn.
    ``out`` (real, contiguous, ``shape``) receives the result without a copy.
    """
    z, y, x = shape
    if x % 2:
        return lambda hat, out=None: torch.fft.irfftn(hat, s=shape, out=out)
    half = x // 2
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    twiddle = 1j * torch.exp(2j * math.pi * torch.arange(half, dtype=torch.float64) / x)
    alpha = ((1 + twiddle) / 2).to(device, complex_dtype)
    beta = ((1 - twiddle) / 2).to(device, complex_dtype)
    # flat index of the partner mode (-kz, -ky, X/2 - k) of packed mode (kz, ky, k) in hat
    kz, ky = ((-torch.arange(n)) % n for n in (z, y))
    partner_index = ((kz[:, None, None] * y + ky[None, :, None]) * (half + 1)
                     + (half - torch.arange(half))[None, None, :]).to(device)
    partner = torch.empty((z, y, half), dtype=complex_dtype, device=device)

    if complex_dtype == torch.complex64:  # one 8-byte mode = one float64: index_select beats take
        flat_index = partner_index.view(-1)
        partner_flat = torch.view_as_real(partner).view(torch.float64).view(-1)

        def gather(hat: torch.Tensor) -> None:  # partner = hat[partner_index]
            flat = torch.view_as_real(hat.contiguous()).view(torch.float64).view(-1)
            torch.index_select(flat, 0, flat_index, out=partner_flat)
    else:
        def gather(hat: torch.Tensor) -> None:  # partner = hat[partner_index]
            torch.take(hat, partner_index, out=partner)

    def irfftn(hat: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        # even/odd samples: E = (H[k] + conj H[-k'])/2, O = (H[k] - conj H[-k'])/2 e^(2 pi i k/X),
        # with -k' = (-kz, -ky, X/2 - k); their packed spectrum E + i O is alpha H + beta conj H[-k']
        gather(hat)
        torch.conj_physical(partner, out=partner)
        packed = torch.mul(hat[..., :half], alpha).addcmul_(partner, beta)
        if out is None:
            return torch.view_as_real(torch.fft.ifftn(packed)).reshape(shape)
        torch.fft.ifftn(packed, out=torch.view_as_complex(out.view(z, y, half, 2)))
        return out

    return irfftn


def _spectral_stepper(phi: torch.Tensor, run: _Run):
    """Stabilised semi-implicit BDF2 (SBDF2) in Fourier space with the 7-point Laplacian symbol.

    With G = FFT(g'(phi)) and a stabilisation constant S, the linear part ``-M K (eps K + S)``
    is implicit and ``-M K (G - S phi)`` is extrapolated (2 N^n - N^(n-1)). S is set each step
    to the largest g''(phi) on the grid, capped at 18/eps: while phi stays near 1/2 (spinodal
    growth) the implicit part is then the exact linearisation (S = g''(1/2) = -18/eps), and once
    the phases separate S = 18/eps, the usual stabilisation. The first step is four IMEX-Euler
    substeps. One rfft and one irfft per step; per-mode coefficients are cached per S.

    The bulk term is transformed as P = FFT(u^3 - u/4), u = phi - 1/2, which is g'(phi) / 2c
    (c = 36/eps) in three passes over the grid; the factor 2c lives in the per-mode coefficients.
    (Taking the linear part -u/4 from ``hat`` instead saves a pass but lets float32 round-off
    in the non-Hermitian part of ``hat`` grow as a spinodal mode: measured, it diverges.)
    """
    shape = phi.shape
    k = -laplacian_symbol(shape, device=phi.device, dtype=phi.dtype)  # K >= 0
    c, dt = 36.0 / run.eps, run.dt
    mk = run.mobility * k
    mk_lin = mk * (run.eps * k)
    u, bulk = torch.empty_like(phi), torch.empty_like(phi)
    re = torch.view_as_real
    irfftn = inverse_rfftn(shape, device=phi.device, dtype=phi.dtype)

    def stabiliser() -> float:
        lo, hi = torch.aminmax(phi)
        u = max(float(hi) - 0.5, 0.5 - float(lo))  # g'' largest farthest from 1/2
        return min(c * (1 - 6 * (0.5 + u) + 6 * (0.5 + u) ** 2), c / 2)

    def bulk_fft() -> torch.Tensor:
        """P = FFT(u^3 - u/4) = FFT(g'(phi)) / 2c, a new tensor (``out=`` would add a copy)."""
        torch.sub(phi, 0.5, out=u)
        torch.pow(u, 3, out=bulk).sub_(u, alpha=0.25)
        return torch.fft.rfftn(bulk)

    def inverse() -> None:
        irfftn(st["hat"], out=phi)

    hat = torch.fft.rfftn(phi)
    st = {"hat": hat, "hat_prev": torch.empty_like(hat), "p_prev": None, "started": False}

    def euler(h: float) -> None:  # (1 + h MK(eps K + S)) hat' = (1 + h MK S) hat - h MK G
        s = stabiliser()
        p = bulk_fft()
        den = 1.0 + h * (mk_lin + s * mk)
        new = re(st["hat"]).mul_(((1.0 + h * s * mk) / den).unsqueeze(-1))
        new.addcmul_(re(p), (-2.0 * c * h * mk / den).unsqueeze(-1))
        inverse()

    cache: dict[float, tuple[torch.Tensor, ...]] = {}

    def coefficients(s: float) -> tuple[torch.Tensor, ...]:
        """hat' = Q (P_prev - 2P) + A hat + B hat_prev, as (..., 2) tensors for view_as_real."""
        if s not in cache:
            cache.clear()
            den = 3.0 + 2.0 * dt * (mk_lin + s * mk)
            f = -2.0 * dt * mk / den  # hat' = f (2G - G_prev) + a hat + b hat_prev
            a, b = 4.0 / den - 2.0 * s * f, -1.0 / den + s * f
            q = -2.0 * c * f  # G = 2c P
            cache[s] = tuple(x.unsqueeze(-1).expand(*x.shape, 2).contiguous() for x in (q, a, b))
        return cache[s]

    def step() -> None:
        if not st["started"]:
            st["hat_prev"].copy_(st["hat"])
            st["p_prev"] = bulk_fft()
            for _ in range(4):
                euler(dt / 4)
            st["started"] = True
            return
        s = stabiliser()
        hat, hat_prev, p_prev = st["hat"], st["hat_prev"], st["p_prev"]
        p = bulk_fft()
        # (3 + 2dt MK(eps K + S)) hat' = 4 hat - hat_prev - 2dt MK (2G - G_prev - S (2 hat - hat_prev))
        q, a, b = coefficients(s)
        new = re(p_prev).add_(re(p), alpha=-2.0).mul_(q)
        new.addcmul_(re(hat), a).addcmul_(re(hat_prev), b)
        st.update(hat=p_prev, hat_prev=hat, p_prev=p)
        inverse()

    return step


def iter_simulate(
    phi0,
    n_tau: int,
    tau: float = TAU,
    solver: str = "explicit",
    eps: float = EPS,
    mobility: float = MOBILITY,
    dt: float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    force: bool = False,
) -> Iterator[np.ndarray]:
    """Yield ``n_tau + 1`` frames ``(Z, Y, X)`` (numpy, ``dtype``) spaced by ``tau``: first
    ``phi0``, then one per ``tau`` of evolution. Stop iterating to cancel; memory stays constant
    however long the run. Raises :class:`SimulationDiverged` if phi becomes non-finite or blows
    up (leaves :data:`BLOWUP_RANGE`; its ``frames`` holds the last good frame, :func:`simulate`
    fills in all of them). Input errors (phi outside :data:`PHI_RANGE`, a bad dt, a grid that
    does not fit in memory) raise ``ValueError`` at call time, before any frame.
    """
    _validate_phi(phi0)
    if not is_count(n_tau):
        raise ValueError(f"n_tau must be a non-negative integer, got {n_tau!r}")
    run = _plan(solver, tau, eps, mobility, dt, force)
    dev = resolve_device(device)
    from .memory import check_memory, simulate_bytes

    check_memory(simulate_bytes(phi0.shape, solver, torch.finfo(dtype).bits // 8),
                 f"the {solver} solver on a {'x'.join(map(str, phi0.shape))} grid", dev)
    return _simulate_frames(phi0, int(n_tau), run, dev, dtype, tau)


def _simulate_frames(phi0, n_tau: int, run: _Run, dev: torch.device, dtype: torch.dtype,
                     tau: float) -> Iterator[np.ndarray]:
    solver = run.solver
    phi = _as_tensor(phi0, dtype=dtype, device=dev).clone().contiguous()
    step = (_explicit_stepper if solver == "explicit" else _spectral_stepper)(phi, run)
    mass0 = phi.sum(dtype=torch.float64).item()
    frame = phi.detach().to("cpu").numpy().copy()
    yield frame
    for i in range(n_tau):
        with torch.inference_mode():  # only around the work: never left on while suspended
            for _ in range(run.steps_per_tau):
                step()
            lo, hi = (float(v) for v in torch.aminmax(phi))  # NaN propagates
            ok = BLOWUP_RANGE[0] <= lo and hi <= BLOWUP_RANGE[1]
            if ok:  # exact in exact arithmetic; remove float round-off drift (~1e-9 / step)
                mass = phi.sum(dtype=torch.float64).item()
                phi.add_((mass0 - mass) / phi.numel())
        if not ok:
            n = (i + 1) * run.steps_per_tau
            raise SimulationDiverged(
                f"{solver} solver diverged by step {n} (t={(i + 1) * tau:g}, dt={run.dt:g}): "
                f"{blowup_text(lo, hi)}: use a smaller dt or the default settings",
                [frame],
                n,
            )
        frame = phi.detach().to("cpu").numpy().copy()
        yield frame


def is_count(n) -> bool:
    """Whether ``n`` is a non-negative whole number (3 and 3.0 are; -1, 2.5, nan, "3" are not)."""
    try:
        return int(n) == n and n >= 0
    except (TypeError, ValueError, OverflowError):
        return False


def blowup_text(lo: float, hi: float) -> str:
    """``"phi became NaN/inf"`` or ``"phi reached 1.3e+36, far outside [0, 1]"``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "phi became NaN/inf"
    worst = lo if (0.5 - lo) > (hi - 0.5) else hi
    return f"phi reached {worst:.3g}, far outside [0, 1]"


def simulate(
    phi0,
    n_tau: int,
    tau: float = TAU,
    solver: str = "explicit",
    eps: float = EPS,
    mobility: float = MOBILITY,
    dt: float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    force: bool = False,
) -> np.ndarray:
    """Evolve ``phi0`` ``(Z, Y, X)`` for ``n_tau`` intervals of ``tau``.

    Returns ``(n_tau + 1, Z, Y, X)`` in ``dtype`` (float32 by default), frame 0 being ``phi0``.
    ``dt=None`` picks 1.25e-3 (explicit, the paper) or 0.125 (spectral). On divergence the
    :class:`SimulationDiverged` carries every frame produced before it.
    """
    frames: list[np.ndarray] = []
    try:
        for frame in iter_simulate(phi0, n_tau, tau, solver, eps, mobility, dt, device, dtype, force):
            frames.append(frame)
    except SimulationDiverged as err:
        raise SimulationDiverged(str(err), frames, err.step) from None
    return np.stack(frames)


def gradient_flow_step(phi: torch.Tensor, dt: float, eps: float = EPS, mobility: float = MOBILITY,
                       spacing: float = 1.0) -> torch.Tensor:
    """One explicit Euler step of Cahn-Hilliard, ``phi + dt M lap(mu)`` (a new tensor), on
    ``(..., Z, Y, X)`` voxels of size ``spacing``: mass-conserving, and it lowers
    :func:`free_energy` for ``dt`` small enough (:func:`explicit_dt_limit`). Differentiable.
    The solvers' own in-place steppers are faster; this is for small corrections."""
    return phi + (dt * mobility / spacing**2) * laplacian(chemical_potential(phi, eps, spacing))


def semi_implicit_step(phi: torch.Tensor, dt: float, eps: float = EPS,
                       mobility: float = MOBILITY) -> torch.Tensor:
    """One stabilised semi-implicit (IMEX Euler) Cahn-Hilliard step of ``dt`` on the periodic
    unit grid, ``(..., Z, Y, X)`` -> a new tensor in ``phi``'s dtype: the spectral solver's
    first-step scheme (7-point Laplacian symbol, linear part implicit) with its stabilisation for
    separated phases, S = 18/eps; stable for any ``dt``, mass-conserving, differentiable,
    computed in float64. For short corrections (``CRNN.relax``), not for runs."""
    k = -laplacian_symbol(phi.shape[-3:], device=phi.device, dtype=torch.float64)  # K >= 0
    s, mk = 18.0 / eps, mobility * k
    x = phi.to(torch.float64)
    hat = torch.fft.rfftn(x, dim=(-3, -2, -1))
    bulk = torch.fft.rfftn(bulk_derivative(x, eps), dim=(-3, -2, -1))
    new = ((1 + dt * s * mk) * hat - dt * mk * bulk) / (1 + dt * mk * (eps * k + s))
    return torch.fft.irfftn(new, s=phi.shape[-3:], dim=(-3, -2, -1)).to(phi.dtype)


def linear_growth_rate(k2: float, phi_bar: float = 0.5, eps: float = EPS, mobility: float = MOBILITY) -> float:
    """Growth rate of a small Fourier mode with discrete wavenumber ``k2 = -symbol`` about
    uniform ``phi_bar``: ``lambda = -M k2 (g''(phi_bar) + eps k2)`` (positive = spinodal growth)."""
    g2 = (36.0 / eps) * (1 - 6 * phi_bar + 6 * phi_bar**2)
    return -mobility * k2 * (g2 + eps * k2)
