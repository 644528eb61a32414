"""The CRNN surrogate of Lanzoni et al. 2024 (sec. 2.2), its rollout and its checkpoint format.

Architecture (``CRNNConfig()`` = the paper): ``n_layers = 2`` stacked 3D ConvGRU cells with
``hidden = 10`` channels and ``3x3x3`` kernels, circular padding (periodic boundaries). Each gate
uses the "deeper mapping" ``act(conv1x1(tanh(conv3x3([x, h]))))``:

    r, z = sigmoid(gates([x, h]))          reset and update gates
    n    = tanh(candidate([x, r * h]))     candidate state
    h'   = (1 - z) * h + z * n

The "toFlux" head maps the top hidden state to a vector field ``u = (u_z, u_y, u_x)``
(``conv1x1(tanh(conv3x3(h)))``, 3 channels, spatial mean removed) and

    phi_next = phi + div(u)

with a fixed (non-trainable) periodic central-difference divergence, so ``sum(phi)`` is conserved
exactly (to round-off). The default model has 28,970 trainable parameters (paper: ~2.9e4).

The model works on any grid ``(Z, Y, X)``; it runs on the training data downscaled x1/``downscale``
(:func:`downsample`: nearest sampling as in the paper, or the mean over each ``downscale^3`` block,
``ModelInfo.coarse``), and :func:`rollout` does that mapping for full-resolution inputs. Units: one model step is ``tau`` (0.5 time units), lengths in grid units of the full grid.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .io import atomic_write
from .physics import (
    BLOWUP_RANGE,
    EPS,
    MOBILITY,
    TAU,
    blowup_text,
    check_phi_range,
    explicit_dt_limit,
    free_energy_parts,
    gradient_flow_step,
    is_count,
    laplacian_symbol,
    resolve_device,
    semi_implicit_step,
)

FORMAT = "napari-chflow-crnn"
FORMAT_VERSION = 1
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
COARSE_MODES = ("nearest", "mean")
GUARD_DT_FRACTION = 0.6
"""Default energy-guard step as a fraction of the explicit stability bound on the model grid."""
GUARD_MAX = 1000
"""Most energy-guard relaxation steps a checkpoint may ask for."""
FLUX_CHUNK_VOXELS = 1 << 18
"""On a CPU, most samples x voxels per pass of the network; a larger batch (lattice images
included) runs in chunks: the passes then stay in cache (measured, 2 threads: 4 images of 64^3
in one pass 1.06 s, in four 0.70 s; 4 of 32^3 in one pass 0.08 s)."""
RELAX_MAX = 10.0
"""Longest fine-grid relaxation (model time units) a checkpoint may ask for."""
EARLY_MAX = 1_000_000
"""Most early steps (:attr:`ModelInfo.early_steps`) a checkpoint may ask for."""
MODEL_OPTIONS = (("coarse", "nearest"), ("guard_iters", 0), ("flux_limit", None),
                 ("lattice_average", 1), ("relax_dt", 0.0), ("relax_limit", None),
                 ("relax_split", False), ("early_steps", 0), ("early_relax_dt", 0.0))
"""The model options (each checked by :func:`option_problem`, all together by
:func:`options_problem`) with the value a checkpoint that lacks them gets (older checkpoints:
off)."""
_SAME_AXES, _CYCLIC_AXES = ((0, 1, 2),), ((0, 1, 2), (1, 2, 0), (2, 0, 1))
_NO_SHIFT, _BODY_CENTRE = (0.0, 0.0, 0.0), (0.5, 0.5, 0.5)
_FACE_CENTRES = (_NO_SHIFT, (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5))
LATTICE_IMAGES = {
    1: (((0, 1, 2), False, _NO_SHIFT),),
    4: tuple((a, inv, s) for a in _SAME_AXES for inv in (False, True)
             for s in (_NO_SHIFT, _BODY_CENTRE)),
    6: tuple((a, inv, _BODY_CENTRE if inv else _NO_SHIFT) for a in _CYCLIC_AXES
             for inv in (False, True)),
    8: tuple((a, inv, s) for a in _SAME_AXES for inv in (False, True) for s in _FACE_CENTRES),
    12: tuple((a, inv, s) for a in _CYCLIC_AXES for inv in (False, True)
              for s in (_NO_SHIFT, _BODY_CENTRE)),
}
"""Images of the model-grid state over which :meth:`CRNN.step` averages the flux field, by
``lattice_average``: (order of the axes, point inversion?, shift in cells along Z, Y, X). A
learned step on a coarse lattice is not quite invariant under the lattice's symmetries: a flat
interface at rest creeps to preferred sub-cell positions (lattice pinning) or slides one way, and
a settled saddle-shaped arrangement (as the 32^3 boxes reach late) drifts. Half-cell shifts
cancel the first, inversion the second, the cyclic orders of the axes (rotations by 120 degrees
about the cube's diagonal) with inversion the third. 4: the body-centre shift, for interfaces
along the grid axes; 8: the face-centre shifts, also for diagonal ones; 6: the rotations, each
also inverted and shifted to the body centre (rotations and inversion alone, without the shift,
let an axis slab at rest move by 1.1 grid units in 1000 steps: docs/training.md); 12: the
rotations, the inversion and the body-centre shift. Each set is a group up to whole-cell
translations, so the averaged step is equivariant under its images: exactly under rotations and
pure inversions, up to the Nyquist mode under images with a half-cell shift."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (message names the file, the problem and the fix)."""


class RolloutDiverged(RuntimeError):
    """phi became NaN/inf or blew up (left ``physics.BLOWUP_RANGE``) at frame ``step``;
    ``frames`` holds the frames before it."""

    def __init__(self, message: str, frames: list[np.ndarray], step: int):
        super().__init__(message)
        self.frames = frames
        self.step = step


@dataclass(frozen=True)
class CRNNConfig:
    """Architecture: hidden channels per ConvGRU cell, number of stacked cells, odd kernel size,
    and whether gates use the deeper mapping ``conv1x1(tanh(conv_k(.)))`` instead of ``conv_k``."""

    hidden: int = 10
    n_layers: int = 2
    kernel: int = 3
    deep_mapping: bool = True

    def __post_init__(self):
        if self.hidden < 1 or self.n_layers < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(
                f"invalid {self}: use hidden >= 1, n_layers >= 1 and an odd kernel >= 1"
            )


@dataclass(frozen=True)
class ModelInfo:
    """What a model is: architecture, physics it was trained on (``tau`` between frames, ``eps``,
    ``mobility``), grid ``downscale`` factor and how the full grid maps to it (``coarse``:
    "nearest" sampling as in the paper, or the block "mean"), training recipe and data
    description. ``guard_iters > 0`` turns on the energy guard (:meth:`CRNN.guard`, not in the
    paper) with at most that many relaxation steps of ``guard_dt`` (model time units) each.
    ``flux_limit = m`` (not in the paper; None = off) keeps phi within ``[-m, 1 + m]`` by
    limiting the fluxes of the divergence layer (:func:`limited_divergence`).
    ``lattice_average = k`` (not in the paper; 1 = off) averages each step's flux field over
    ``k`` images of the state under the lattice's symmetries (:data:`LATTICE_IMAGES`, k times the
    cost per step): interfaces no longer snap to preferred positions of the model grid.
    ``relax_dt > 0`` (not in the paper; 0 = off) ends each step with a Cahn-Hilliard relaxation
    of that time (model time units) on the solvers' grid (:meth:`CRNN.relax`);
    ``relax_limit = r`` keeps the relaxation's change within ``[-r, 1 + r]`` (None: the flux
    limiter's bounds, unbounded without one). ``relax_split`` (needs ``0 < relax_dt < tau``)
    takes the relaxation's time out of the network's step (Lie splitting): the flux field is
    scaled by ``1 - relax_dt / tau``, so that network and relaxation together span ``tau``;
    without it a step spans about ``tau + relax_dt`` and the model runs ahead of the solver.
    ``early_steps = n`` (not in the paper; 0 = off) gives the first ``n`` steps of a run (counted
    by the hidden state, :class:`RecurrentState`, from zero) a step of their own: the network's
    whole flux field, then a relaxation of ``early_relax_dt`` (0: none), no split; later steps
    use ``relax_dt`` and ``relax_split``. The split's scaled flux field lags the fast growth of
    the spinodal stage, which the unscaled step follows (docs/training.md, rows 33 and 40)."""

    config: CRNNConfig
    tau: float = TAU
    eps: float = EPS
    mobility: float = MOBILITY
    downscale: int = 2
    recipe: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    version: str = __version__
    param_count: int = 0
    coarse: str = "nearest"
    guard_iters: int = 0
    guard_dt: float = 0.0
    flux_limit: float | None = None
    lattice_average: int = 1
    relax_dt: float = 0.0
    relax_limit: float | None = None
    relax_split: bool = False
    early_steps: int = 0
    early_relax_dt: float = 0.0

    @property
    def network_share(self) -> float:
        """The factor on the network's flux field: ``1 - relax_dt / tau`` with ``relax_split``,
        else 1 (the share of the steps after ``early_steps``)."""
        return 1.0 - self.relax_dt / self.tau if self.relax_split else 1.0

    @property
    def relaxes(self) -> bool:
        """Whether some step ends with the fine-grid relaxation."""
        return self.relax_dt > 0 or (self.early_steps > 0 and self.early_relax_dt > 0)

    def stage(self, steps_taken: int) -> tuple[float, float]:
        """``(relaxation time, factor on the network's flux field)`` of the step after
        ``steps_taken`` steps of a run: the early step's or the later one's."""
        if steps_taken < self.early_steps:
            return self.early_relax_dt, 1.0
        return self.relax_dt, self.network_share

    @property
    def flux_bounds(self) -> tuple[float, float] | None:
        """``(lo, hi)`` that the flux limiter keeps phi within, or None (off)."""
        return _margin_bounds(self.flux_limit)

    @property
    def relax_bounds(self) -> tuple[float, float] | None:
        """``(lo, hi)`` that the fine-grid relaxation keeps phi within, or None (unbounded)."""
        return self.flux_bounds if self.relax_limit is None else _margin_bounds(self.relax_limit)


class RecurrentState(list):
    """The hidden state :meth:`CRNN.step` returns and takes: one channels-last tensor per
    ConvGRU cell, plus ``steps``, how many steps the run has taken (the early steps of
    :attr:`ModelInfo.early_steps` count from it). A plain list of tensors counts as past the
    early steps."""

    def __init__(self, tensors, steps: int = 0):
        super().__init__(tensors)
        self.steps = int(steps)


def _margin_bounds(margin: float | None) -> tuple[float, float] | None:
    """``[-margin, 1 + margin]`` as ``(lo, hi)``, or None for no margin (unbounded)."""
    return None if margin is None else (-margin, 1.0 + margin)


# --------------------------------------------------------------------------- network


def _pad_cat(parts: list[torch.Tensor], p: int) -> torch.Tensor:
    """Channels-last ``(B, Z, Y, X, C_i)`` tensors side by side along C and circularly (periodically)
    padded by ``p``: ``(B, Z+2p, Y+2p, X+2p, sum C_i)``, one copy of each part plus the halos."""
    if not p:
        return torch.cat(parts, -1)
    b, *grid, _ = parts[0].shape
    dtype = parts[0].dtype
    for t in parts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    out = parts[0].new_empty(b, *(n + 2 * p for n in grid), sum(t.shape[-1] for t in parts),
                             dtype=dtype)
    inner, c = (slice(p, -p),) * 3, 0
    for t in parts:
        out[(slice(None), *inner, slice(c, c + t.shape[-1]))] = t
        c += t.shape[-1]
    for axis in (3, 2, 1):  # x halos on the interior, then y, then z over everything so far
        lead = (slice(None),) + inner[: axis - 1]
        out[(*lead, slice(0, p))] = out[(*lead, slice(-2 * p, -p))]
        out[(*lead, slice(-p, None))] = out[(*lead, slice(p, 2 * p))]
    return out


def _conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """Unpadded stride-1 3D convolution of a channels-last ``(B, Z, Y, X, C_in)`` tensor ->
    ``(B, Z', Y', X', C_out)``; ``weight`` ``(C_out, C_in, k, k, k)`` as in ``nn.Conv3d``.

    oneDNN and cuDNN take channels-last activations without reordering them; on CPU in float32
    it calls oneDNN directly (for few channels PyTorch's heuristic picks a native kernel that is
    3-5x slower, and a 1x1x1 kernel a generic path). Measured at 64^3 on 2 CPU cores: a CRNN step
    takes about 0.79x the time it took with ``(B, C, Z, Y, X)`` activations.
    """
    x = x.permute(0, 4, 1, 2, 3)
    weight = weight.contiguous(memory_format=torch.channels_last_3d)
    if (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and not torch.is_autocast_enabled("cpu")):
        y = torch.mkldnn_convolution(x, weight, bias, (0, 0, 0), (1, 1, 1), (1, 1, 1), 1)
    else:
        y = F.conv3d(x, weight, bias)
    return y.permute(0, 2, 3, 4, 1)


class _Conv(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last, already padded ``x`` -> channels-last output."""
        return _conv3d(x, self.weight, self.bias)


class _DeepMapping(nn.Sequential):
    """``conv1x1(tanh(conv_k(x)))`` on channels-last tensors, evaluated as
    ``conv1x1'(sigmoid(conv_k'(x)))``: with tanh(a) = 2 sigmoid(2a) - 1 the factors fold into the
    weights (conv_k' = 2 conv_k, conv1x1' weight 2W and bias b - W 1). Same function; sigmoid is
    3x faster than tanh on CPU. Parameters and state-dict keys are those of
    ``Sequential(conv_k, Tanh, Conv3d 1x1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, _, point = self
        a = torch.sigmoid(_conv3d(x, 2 * conv.weight, None if conv.bias is None else 2 * conv.bias))
        shift = -point.weight.sum(dim=(1, 2, 3, 4))
        return _conv3d(a, 2 * point.weight, shift if point.bias is None else point.bias + shift)


def _mapping(c_in: int, c_out: int, cfg: CRNNConfig, c_final: int | None = None,
             bias: bool = True) -> nn.Sequential:
    """``conv_k`` (on an already padded input), then, if deep, ``tanh`` and a 1x1x1 conv."""
    if not cfg.deep_mapping:
        return nn.Sequential(_Conv(c_in, c_final or c_out, cfg.kernel, bias=bias))
    return _DeepMapping(
        _Conv(c_in, c_out, cfg.kernel), nn.Tanh(), nn.Conv3d(c_out, c_final or c_out, 1, bias=bias)
    )


class _ConvGRUCell(nn.Module):
    def __init__(self, c_in: int, cfg: CRNNConfig):
        super().__init__()
        self.p = cfg.kernel // 2
        self.gates = _mapping(c_in + cfg.hidden, 2 * cfg.hidden, cfg)
        self.candidate = _mapping(c_in + cfg.hidden, cfg.hidden, cfg)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Channels-last input ``x`` ``(B, Z, Y, X, C)`` and state ``h`` ``(B, Z, Y, X, H)``."""
        r, z = torch.sigmoid(self.gates(_pad_cat([x, h], self.p))).split(h.shape[-1], -1)
        n = torch.tanh(self.candidate(_pad_cat([x, r * h], self.p)))
        return h + z * (n - h)


def limited_divergence(phi: torch.Tensor, u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The divergence layer's update with Zalesak's flux limiter (flux-corrected transport):
    ``phi + result`` stays within ``[lo, hi]`` wherever ``phi`` is, and mass is conserved exactly.

    ``u`` ``(B, 3, Z, Y, X)``; :meth:`CRNN.divergence` (periodic central differences) equals the
    difference of the face fluxes ``G_d[i] = (u_d[i] + u_d[i+1]) / 2``, which
    :func:`limited_faces` limits. Differentiable almost everywhere. Returns ``(B, Z, Y, X)``.
    """
    with torch.autocast(u.device.type, enabled=False):
        return limited_faces(phi, [(u[:, d] + torch.roll(u[:, d], -1, d + 1)) * 0.5
                                   for d in range(3)], lo, hi)


def limited_faces(phi: torch.Tensor, flux: list[torch.Tensor], lo: float, hi: float
                  ) -> torch.Tensor:
    """The update ``sum_d G_d[i] - G_d[i-1]`` of the face fluxes ``flux`` (3 tensors ``G_d``
    shaped like ``phi`` ``(..., Z, Y, X)``; ``G_d[i]``: mass moved from cell ``i+1`` into cell
    ``i`` along axis ``d``), limited (Zalesak) so that ``phi + result`` stays within ``[lo, hi]``
    wherever ``phi`` is; mass exact. Each face flux is scaled by ``min(R+ of the cell it fills,
    R- of the cell it drains)``, ``R+ = min(1, (hi - phi) / inflow)`` and ``R- = min(1,
    (phi - lo) / outflow)``; where nothing would overshoot, the result is the plain update."""
    dims = (-3, -2, -1)
    prev = [torch.roll(f, 1, d) for d, f in zip(dims, flux)]  # face i - 1/2
    inflow = sum(torch.relu(f) + torch.relu(-g) for f, g in zip(flux, prev))
    outflow = sum(torch.relu(-f) + torch.relu(g) for f, g in zip(flux, prev))
    room_up, room_down = (hi - phi).clamp(min=0), (phi - lo).clamp(min=0)
    r_up = torch.where(inflow > room_up, room_up / inflow.clamp(min=1e-30), 1.0)
    r_down = torch.where(outflow > room_down, room_down / outflow.clamp(min=1e-30), 1.0)
    out = torch.zeros_like(phi)
    for d, f in zip(dims, flux):
        up_next, down_next = torch.roll(r_up, -1, d), torch.roll(r_down, -1, d)
        f = f * torch.where(f >= 0, torch.minimum(r_up, down_next),
                            torch.minimum(up_next, r_down))
        out = out + f - torch.roll(f, 1, d)
    return out


def gradient_faces(change: torch.Tensor) -> list[torch.Tensor]:
    """Face fluxes (as :func:`limited_faces` takes them) whose update is ``change``
    ``(..., Z, Y, X)`` (zero mean per sample): ``G_d[i] = psi[i+1] - psi[i]`` with ``psi`` the
    periodic solution of ``laplacian(psi) = change`` (7-point, :func:`laplacian_symbol`), the
    smallest such flux field."""
    dims = (-3, -2, -1)
    symbol = laplacian_symbol(change.shape[-3:], device=change.device, dtype=change.dtype)
    symbol[0, 0, 0] = 1.0
    hat = torch.fft.rfftn(change, dim=dims) / symbol
    hat[..., 0, 0, 0] = 0.0
    psi = torch.fft.irfftn(hat, s=change.shape[-3:], dim=dims)
    return [torch.roll(psi, -1, d) - psi for d in dims]


def _inverse_order(axes: tuple[int, int, int]) -> list[int]:
    """The axis order that undoes ``axes`` (a permutation of 0, 1, 2)."""
    return [axes.index(j) for j in range(3)]


def lattice_image(phi: torch.Tensor, image: tuple, inverse: bool = False) -> torch.Tensor:
    """A field on the periodic model grid (last three axes) under one of the
    :data:`LATTICE_IMAGES` ``image = (axes, inverted, shift)``: sampled at the nodes moved by
    ``shift`` cells (band-limited: Fourier interpolation), its axes put in the order ``axes``,
    then point-inverted (all three axes reversed) if ``inverted``; ``inverse=True`` undoes it.
    The mean is kept. A flux field's components also change under the image: see
    :func:`flux_from_image`."""
    axes, inverted, shift = image
    dims, lead = (-3, -2, -1), phi.dim() - 3
    if inverse and inverted:
        phi = torch.flip(phi, dims)
    if inverse and tuple(axes) != (0, 1, 2):
        phi = phi.permute(*range(lead), *(lead + a for a in _inverse_order(axes)))
    if any(shift):
        sign = -1.0 if inverse else 1.0
        spec = torch.fft.fftn(phi, dim=dims)
        for axis, (n, s) in enumerate(zip(phi.shape[-3:], shift)):
            if s:
                k = torch.fft.fftfreq(n, device=phi.device, dtype=phi.dtype) * n
                phase = torch.polar(torch.ones_like(k), sign * 2 * math.pi * k * s / n)
                spec = spec * phase.reshape([n if a == axis else 1 for a in range(3)])
        phi = torch.fft.ifftn(spec, dim=dims).real.to(phi.dtype)
    if not inverse and tuple(axes) != (0, 1, 2):
        phi = phi.permute(*range(lead), *(lead + a for a in axes))
    if inverted and not inverse:
        phi = torch.flip(phi, dims)
    return phi


def flux_from_image(u: torch.Tensor, image: tuple) -> torch.Tensor:
    """The flux field ``u`` ``(B, 3, Z, Y, X)`` (components along Z, Y, X) computed on
    :func:`lattice_image` ``image`` of a state, mapped back to the state: positions by the
    inverse image, components reordered with the axes and reversed under inversion."""
    axes, inverted, _ = image
    back = lattice_image(u, image, inverse=True)[:, _inverse_order(axes)]
    return -back if inverted else back


def fourier_resample(phi: torch.Tensor, shape) -> torch.Tensor:
    """Band-limited (Fourier) resampling of the periodic field ``phi`` ``(..., Z, Y, X)`` to
    ``shape`` (3 ints), in ``phi``'s dtype: upsampling interpolates (the old nodes keep their
    values), downsampling keeps the low modes; down after up gives ``phi`` back; mean kept. A
    Nyquist mode is split evenly between +k and -k (and folded back), so the field stays real."""
    out = phi
    for axis, n in zip((-3, -2, -1), shape):
        m = out.shape[axis]
        if n == m:
            continue
        spec = torch.fft.fft(out, dim=axis).movedim(axis, -1)
        new = spec.new_zeros((*spec.shape[:-1], n))
        low = min(m, n)
        p, q = (low + 1) // 2, (low - 1) // 2  # modes 0..p-1 and -q..-1 below Nyquist
        new[..., :p] = spec[..., :p]
        if q:
            new[..., n - q:] = spec[..., m - q:]
        if low % 2 == 0 and n > m:  # the old Nyquist mode, split evenly between +-k
            new[..., low // 2] = new[..., n - low // 2] = spec[..., low // 2] / 2
        elif low % 2 == 0:  # +-k folded onto the new Nyquist mode
            new[..., low // 2] = spec[..., low // 2] + spec[..., m - low // 2]
        out = torch.fft.ifft(new.movedim(-1, axis), dim=axis).real * (n / m)
    return out.to(phi.dtype)


def _autocast(device_type: str, mode: str | None):
    if mode is None:
        return contextlib.nullcontext()
    if mode not in AUTOCAST:
        raise ValueError(f"unknown autocast {mode!r}: use None, 'bf16' or 'fp16'")
    return torch.autocast(device_type, dtype=AUTOCAST[mode])


class CRNN(nn.Module):
    """Convolutional recurrent network ``phi_t -> phi_{t + tau}`` on periodic 3D grids.

    ``info`` (:class:`ModelInfo`) describes the model; ``extra`` is the free-form dict stored with
    its checkpoint (empty for a new model).
    """

    def __init__(self, config: CRNNConfig = CRNNConfig(), *, tau: float = TAU, eps: float = EPS,
                 mobility: float = MOBILITY, downscale: int = 2, recipe: dict | None = None,
                 data: dict | None = None, version: str = __version__, coarse: str = "nearest",
                 guard_iters: int = 0, guard_dt: float | None = None,
                 flux_limit: float | None = None, lattice_average: int = 1,
                 relax_dt: float = 0.0, relax_limit: float | None = None,
                 relax_split: bool = False, early_steps: int = 0,
                 early_relax_dt: float = 0.0):
        super().__init__()
        if int(downscale) != downscale or downscale < 1:
            raise ValueError(f"downscale must be a positive integer, got {downscale!r}")
        problem = options_problem(dict(
            coarse=coarse, guard_iters=guard_iters, flux_limit=flux_limit,
            lattice_average=lattice_average, relax_dt=relax_dt, relax_limit=relax_limit,
            relax_split=relax_split, early_steps=early_steps, early_relax_dt=early_relax_dt), tau)
        if problem:
            raise ValueError(problem)
        limit = explicit_dt_limit(eps, mobility, downscale)
        guard_dt = GUARD_DT_FRACTION * limit if guard_dt is None else float(guard_dt)
        if not 0 < guard_dt <= limit:
            raise ValueError(f"energy guard: use 0 < guard_dt <= {limit:.3g} (the explicit "
                             "stability bound on the model grid)")
        h = config.hidden
        self.cells = nn.ModuleList(
            _ConvGRUCell(1 if i == 0 else h, config) for i in range(config.n_layers)
        )
        # toFlux; no bias on the last conv: a constant u has no divergence (and its mean is removed)
        self.to_flux = _mapping(h, h, config, c_final=3, bias=False)
        n_params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        self.info = ModelInfo(config, float(tau), float(eps), float(mobility), int(downscale),
                              dict(recipe or {}), dict(data or {}), str(version), n_params,
                              coarse, int(guard_iters), guard_dt,
                              None if flux_limit is None else float(flux_limit),
                              int(lattice_average), float(relax_dt),
                              None if relax_limit is None else float(relax_limit),
                              bool(relax_split), int(early_steps), float(early_relax_dt))
        self.extra: dict = {}

    @property
    def config(self) -> CRNNConfig:
        return self.info.config

    def divergence(self, u: torch.Tensor) -> torch.Tensor:
        """Periodic central-difference divergence of ``u`` ``(B, 3, Z, Y, X)`` (components along
        Z, Y, X) -> ``(B, Z, Y, X)``, always evaluated in ``u``'s dtype (autocast off)."""
        with torch.autocast(u.device.type, enabled=False):
            parts = [torch.roll(u[:, d], -1, d + 1) - torch.roll(u[:, d], 1, d + 1) for d in range(3)]
            return (parts[0] + parts[1] + parts[2]) * 0.5

    def init_hidden(self, phi: torch.Tensor) -> RecurrentState:
        """Zero hidden state for ``phi`` ``(B, Z, Y, X)``: one channels-last ``(B k, Z, Y, X, H)``
        per cell, ``k = lattice_average`` images of each sample; no steps taken."""
        k = self.info.lattice_average
        shape = (phi.shape[0] * k, *phi.shape[1:], self.config.hidden)
        return RecurrentState([phi.new_zeros(shape) for _ in self.cells])

    def step(self, phi: torch.Tensor, hidden: list[torch.Tensor] | None = None,
             autocast: str | None = None) -> tuple[torch.Tensor, RecurrentState]:
        """One step of ``tau``: ``phi`` ``(B, Z, Y, X)`` -> ``(phi_next, hidden)``.

        ``hidden=None`` starts a run from zeros; pass the returned :class:`RecurrentState` back
        to go on (it counts the steps for :attr:`ModelInfo.early_steps`). ``autocast``
        ('bf16' | 'fp16') runs the convolutions in reduced precision; the divergence update
        stays in ``phi``'s dtype, so mass is conserved.
        """
        hidden = self.init_hidden(phi) if hidden is None else hidden
        taken = getattr(hidden, "steps", self.info.early_steps)
        relax_dt, share = self.info.stage(taken)
        images = LATTICE_IMAGES[self.info.lattice_average]
        if len(images) == 1:  # the paper's step
            u, new = self._flux(phi, hidden, autocast)
        else:  # each image's flux field mapped back (inversion reverses it), then averaged
            if len(set(phi.shape[-3:])) > 1 and any(a != (0, 1, 2) for a, _, _ in images):
                raise ValueError(f"lattice_average={self.info.lattice_average} rotates the axes, "
                                 f"which needs a cubic grid, not {tuple(phi.shape[-3:])}: use "
                                 "lattice_average 4 or 8")
            x = torch.cat([lattice_image(phi, image) for image in images])
            u, new = self._flux(x, hidden, autocast)
            u = sum(flux_from_image(part, image)
                    for part, image in zip(u.chunk(len(images)), images)) / len(images)
        if share != 1.0:
            u = u * share
        bounds = self.info.flux_bounds
        if bounds is None:
            phi_next = phi + self.divergence(u)
        else:
            phi_next = phi + limited_divergence(phi, u, *bounds)
        if self.info.guard_iters:
            phi_next = self.guard(phi, phi_next)
        if relax_dt:
            phi_next = self.relax(phi_next, relax_dt)
        return phi_next, RecurrentState(new, taken + 1)

    def _flux(self, phi: torch.Tensor, hidden: list[torch.Tensor],
              autocast: str | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The paper's network: ConvGRU cells, then the flux field ``u`` ``(B, 3, Z, Y, X)``
        (zero mean) whose divergence is the step's update; returns ``(u, hidden)``. Per sample:
        on a CPU a large batch runs in chunks of :data:`FLUX_CHUNK_VOXELS`."""
        n = max(1, FLUX_CHUNK_VOXELS // phi[0].numel())
        if phi.device.type == "cpu" and phi.shape[0] > n:
            parts = [self._flux(phi[i:i + n], [h[i:i + n] for h in hidden], autocast)
                     for i in range(0, phi.shape[0], n)]
            return (torch.cat([u for u, _ in parts]),
                    [torch.cat(states) for states in zip(*(new for _, new in parts))])
        p = self.config.kernel // 2
        x, new = phi.unsqueeze(-1), []
        with _autocast(phi.device.type, autocast):
            for cell, h in zip(self.cells, hidden):
                x = cell(x, h)
                new.append(x)
            u = self.to_flux(_pad_cat([x], p))
        u = u.to(phi.dtype)
        return (u - u.mean(dim=(1, 2, 3), keepdim=True)).permute(0, 4, 1, 2, 3), new

    def guard(self, phi: torch.Tensor, phi_next: torch.Tensor) -> torch.Tensor:
        """Energy guard: while the free energy of ``phi_next`` ``(B, Z, Y, X)`` on the model grid
        (:func:`napari_chflow.physics.free_energy_parts`, voxel size ``downscale``) exceeds that
        of ``phi``, relax the samples concerned by explicit Cahn-Hilliard steps of ``guard_dt``
        on the model grid (at most ``guard_iters``). Mass is unchanged, and F stops rising
        unless the budget runs out. Differentiable (the relaxations taken enter the graph)."""
        info = self.info
        spacing = float(info.downscale)
        with torch.autocast(phi.device.type, enabled=False):
            f_old = free_energy_parts(phi, info.eps, spacing).sum(-1)
            for _ in range(info.guard_iters):
                over = free_energy_parts(phi_next, info.eps, spacing).sum(-1) > f_old
                if not bool(over.any()):
                    break
                relaxed = gradient_flow_step(phi_next, info.guard_dt, info.eps, info.mobility,
                                             spacing)
                phi_next = torch.where(over[:, None, None, None], relaxed, phi_next)
        return phi_next

    def relax(self, phi: torch.Tensor, relax_dt: float | None = None) -> torch.Tensor:
        """Fine-grid relaxation: ``phi`` ``(B, Z, Y, X)`` on the model grid, Fourier-interpolated
        to the solvers' grid (``downscale`` times finer, :func:`fourier_resample`), advanced by
        one :func:`napari_chflow.physics.semi_implicit_step` of ``relax_dt`` (model time units;
        None: the model's ``relax_dt``) and brought back
        band-limited. With bounds (:attr:`ModelInfo.relax_bounds`: ``relax_limit``, else
        ``flux_limit``) the change is applied as the fluxes of :func:`gradient_faces`, limited
        like the network's (:func:`limited_faces`), so phi keeps within them. Computed in
        float64; the mean is kept exactly. The model grid plays no part in the relaxation, so it
        adds no lattice pinning (unlike the energy guard). Differentiable."""
        info = self.info
        fine = [n * info.downscale for n in phi.shape[-3:]]
        with torch.autocast(phi.device.type, enabled=False):
            x = phi.to(torch.float64)
            dt = info.relax_dt if relax_dt is None else relax_dt
            relaxed = semi_implicit_step(fourier_resample(x, fine), dt, info.eps,
                                         info.mobility)
            change = fourier_resample(relaxed, phi.shape[-3:]) - x
            change = change - change.mean(dim=(-3, -2, -1), keepdim=True)
            bounds = info.relax_bounds
            if bounds is not None:
                change = limited_faces(x, gradient_faces(change), *bounds)
        return phi + change.to(phi.dtype)

    def forward(self, phi_in: torch.Tensor, n_steps: int = 0,
                hidden: list[torch.Tensor] | None = None,
                autocast: str | None = None, input_noise: float = 0.0,
                detach_every: int = 0) -> torch.Tensor:
        """Teacher forcing on the given frames, then free running.

        ``phi_in`` ``(B, T_in, Z, Y, X)`` holds frames ``0..T_in-1``. Returns the predictions of
        frames ``1..T_in-1+n_steps``, shape ``(B, T_in - 1 + n_steps, Z, Y, X)``: frame ``t+1`` is
        predicted from the given frame ``t`` while ``t < T_in``, afterwards from the model's own
        previous prediction; the hidden state is carried throughout. So
        ``model(seq[:, :k], T - k)`` is compared with ``seq[:, 1:]``, and ``k = 1`` generates the
        whole sequence from the initial condition.

        ``input_noise`` (training only): std of Gaussian noise, spatial mean removed so mass is
        unchanged, added to every step's input phi; the model learns to damp perturbations.
        ``detach_every = k > 0`` (training only): truncated backpropagation through time, the
        input phi and the hidden state are cut from the graph before every k-th step, so a long
        free-running rollout gets gradients only through the last ``< k`` steps of each frame.
        """
        if phi_in.ndim != 5:
            raise ValueError(f"phi_in must be (B, T, Z, Y, X), got shape {tuple(phi_in.shape)}: "
                             "add batch/time axes, e.g. phi[None, None]")
        t_in, n_steps = phi_in.shape[1], int(n_steps)
        if t_in < 1 or n_steps < 0 or t_in - 1 + n_steps < 1:
            raise ValueError(f"nothing to predict from {t_in} frames and n_steps={n_steps}: "
                             "give at least 2 frames or n_steps >= 1")
        out: list[torch.Tensor] = []
        for t in range(t_in - 1 + n_steps):
            phi = phi_in[:, t] if t < t_in else out[-1]
            if detach_every > 0 and t > 0 and t % detach_every == 0:
                phi = phi.detach()
                hidden = RecurrentState([h.detach() for h in hidden], hidden.steps)
            if input_noise:
                noise = torch.randn_like(phi) * input_noise
                phi = phi + (noise - noise.mean(dim=(-3, -2, -1), keepdim=True))
            phi, hidden = self.step(phi, hidden, autocast)
            out.append(phi)
        return torch.stack(out, 1)


# --------------------------------------------------------------------------- grid mapping


def _check_coarse(mode: str) -> None:
    """Refuse a full grid -> model grid mapping that is not one of :data:`COARSE_MODES`."""
    if mode not in COARSE_MODES:
        raise ValueError(f"unknown coarse grid mapping {mode!r}: use one of {', '.join(COARSE_MODES)}")


def downsample(phi, factor: int, mode: str = "nearest"):
    """Downscale the last three axes by ``factor``: ``mode="nearest"`` keeps voxel 0 and every
    f-th one (exactly ``phi[..., ::f, ::f, ::f]``, the paper's mapping); ``"mean"`` averages each
    ``f^3`` block (sub-cell interface positions survive as intermediate values). Numpy in ->
    contiguous numpy out, torch in -> torch out. Each of the last three axes must be a multiple
    of ``factor`` (so the coarse grid stays periodic)."""
    f = int(factor)
    if f != factor or f < 1:
        raise ValueError(f"downscale factor must be a positive integer, got {factor!r}")
    _check_coarse(mode)
    if any(n % f for n in phi.shape[-3:]):
        raise ValueError(f"grid {tuple(phi.shape[-3:])} is not a multiple of the downscale factor "
                         f"{f}: crop or pad each axis to a multiple of {f}")
    if mode == "mean" and f > 1:
        lead, (z, y, x) = phi.shape[:-3], phi.shape[-3:]
        blocks = phi.reshape(*lead, z // f, f, y // f, f, x // f, f)
        axes = tuple(len(lead) + a for a in (1, 3, 5))
        if isinstance(phi, torch.Tensor):
            return blocks.mean(dim=axes)
        return np.ascontiguousarray(blocks.mean(axis=axes, dtype=np.float64).astype(phi.dtype))
    out = phi[..., ::f, ::f, ::f]
    return out.contiguous() if isinstance(out, torch.Tensor) else np.ascontiguousarray(out)


def to_model_grid(phi, info: ModelInfo):
    """``phi`` ``(..., Z, Y, X)`` on the full grid -> the model's grid (x1/``info.downscale``,
    mapped by ``info.coarse``); the one mapping every comparison with a CRNN uses."""
    return downsample(phi, info.downscale, info.coarse)


def model_grid_origin(downscale: int, coarse: str = "nearest") -> float:
    """Where voxel ``(0, 0, 0)`` of the model grid sits on the full grid, in full-grid units along
    each of z, y, x (voxel ``i`` at ``downscale * i + origin``): 0 for nearest sampling (it is
    full-grid voxel 0), ``(downscale - 1) / 2`` for block means (the centre of block 0). A viewer
    that overlays the two grids translates the model grid by it."""
    _check_coarse(coarse)
    return (int(downscale) - 1) / 2 if coarse == "mean" else 0.0


def upsample(frames, factor: int):
    """Nearest upscale of the last three axes: each voxel repeated ``factor`` times per axis,
    ``out[..., i, j, k] = frames[..., i // f, j // f, k // f]``; inverse of :func:`downsample`
    on its image (``downsample(upsample(a, f), f) == a``). Numpy or torch in, same type out."""
    f = int(factor)
    if f != factor or f < 1:
        raise ValueError(f"upscale factor must be a positive integer, got {factor!r}")
    for axis in (-3, -2, -1):
        frames = (frames.repeat_interleave(f, dim=axis) if isinstance(frames, torch.Tensor)
                  else np.repeat(frames, f, axis=axis))
    return frames


# --------------------------------------------------------------------------- rollout


def _as_volumes(a, name: str, ndim: int) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != ndim:
        axes = "(Z, Y, X)" if ndim == 3 else "(W, Z, Y, X)"
        hint = "a single volume, e.g. seq[0]" if ndim == 3 else "a stack of frames, e.g. seq[:k]"
        raise ValueError(f"{name} must be a {ndim}D array {axes}, got shape {a.shape}: pass {hint}")
    if a.size == 0:
        raise ValueError(f"{name} has an empty axis, shape {a.shape}: pass a non-empty volume")
    check_phi_range(a, name)
    return a


def iter_rollout(model: CRNN, phi0, n_tau: int, warmup=None, device=None, upsample: bool = False,
                 autocast: str | None = None) -> Iterator[np.ndarray]:
    """Yield ``n_tau + 1`` frames ``(Z, Y, X) float32`` spaced by ``model.info.tau``.

    ``phi0`` ``(Z, Y, X)`` is at full resolution; it is mapped to the model grid
    (:func:`to_model_grid`) and frame 0 is that downsampled IC, then one prediction per ``tau``.
    Frames are on the model grid, or with ``upsample=True`` repeated back to ``phi0``'s grid.
    ``warmup`` ``(W, Z, Y, X)``: the full-resolution frames *preceding* ``phi0`` (e.g.
    ``warmup=seq[:k]``, ``phi0=seq[k]``), fed with teacher forcing to build the hidden state.
    ``device=None`` keeps the model where it is; otherwise the model is moved there.
    Stop iterating to cancel. Raises :class:`RolloutDiverged` if phi becomes NaN/inf; since no
    history is kept here, its ``frames`` holds only the last finite frame (see :func:`rollout`).
    Input errors raise ``ValueError`` at call time.
    """
    phi0 = _as_volumes(phi0, "phi0", 3)
    if not is_count(n_tau):
        raise ValueError(f"n_tau must be a non-negative integer, got {n_tau!r}")
    f = model.info.downscale
    start = to_model_grid(phi0, model.info)
    warm = None
    if warmup is not None:
        warm = _as_volumes(warmup, "warmup", 4)
        if warm.shape[1:] != phi0.shape:
            raise ValueError(f"warmup frames {warm.shape[1:]} differ from phi0 {phi0.shape}: "
                             "pass frames of the same sequence")
        warm = to_model_grid(warm, model.info)
    if autocast is not None and autocast not in AUTOCAST:
        raise ValueError(f"unknown autocast {autocast!r}: use None, 'bf16' or 'fp16'")
    from .memory import check_memory, rollout_bytes

    cfg = model.config
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    check_memory(rollout_bytes(phi0.shape, cfg.hidden, cfg.n_layers, f,
                               model.info.lattice_average, model.info.relaxes),
                 f"a CRNN rollout on a {'x'.join(map(str, phi0.shape))} grid", dev)
    if device is not None:
        model.to(dev)
    return _frames(model, start, int(n_tau), warm, f if upsample else 1, autocast)


def _frames(model: CRNN, start: np.ndarray, n_tau: int, warm: np.ndarray | None, up: int,
            autocast: str | None) -> Iterator[np.ndarray]:
    p = next(model.parameters())
    model.eval()

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, device=p.device, dtype=p.dtype)[None]

    def emit(phi: torch.Tensor) -> np.ndarray:
        frame = phi[0].to("cpu", torch.float32).numpy().copy()
        return upsample(frame, up) if up > 1 else frame

    with torch.inference_mode():  # never yield inside: the mode must not leak into the caller
        phi, hidden = tensor(start), None
        for w in warm if warm is not None else ():
            _, hidden = model.step(tensor(w), hidden, autocast)
    last = emit(phi)
    yield last
    for k in range(1, n_tau + 1):
        with torch.inference_mode():
            phi, hidden = model.step(phi, hidden, autocast)
            lo, hi = (float(v) for v in torch.aminmax(phi))  # NaN propagates
        if not (BLOWUP_RANGE[0] <= lo and hi <= BLOWUP_RANGE[1]):
            raise RolloutDiverged(
                f"CRNN rollout diverged at frame {k} (t={k * model.info.tau:g}): "
                f"{blowup_text(lo, hi)}: use "
                "autocast=None (float32), an input phi within the training range [0, 1], or the "
                "physics solver", [last], k)
        last = emit(phi)
        yield last


def rollout(model: CRNN, phi0, n_tau: int, warmup=None, device=None, upsample: bool = False,
            autocast: str | None = None) -> np.ndarray:
    """:func:`iter_rollout` collected: ``(n_tau + 1, z, y, x) float32`` (model grid, or ``phi0``'s
    grid with ``upsample=True``). On divergence, :class:`RolloutDiverged` carries all frames so
    far."""
    frames: list[np.ndarray] = []
    try:
        for frame in iter_rollout(model, phi0, n_tau, warmup, device, upsample, autocast):
            frames.append(frame)
    except RolloutDiverged as e:
        raise RolloutDiverged(str(e), frames, e.step) from None
    return np.stack(frames)


# --------------------------------------------------------------------------- checkpoints

_SCALARS = (str, int, float, bool, type(None))
_REQUIRED = ("version", "config", "tau", "eps", "mobility", "downscale", "recipe", "data",
             "sha256", "state_dict")


def _safe(obj, where: str):
    """Copy of ``obj`` made only of types ``torch.load(weights_only=True)`` accepts (paths become
    str, numpy scalars Python scalars); anything else is refused with a ValueError."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, str):
        return str(obj)  # plain str: subclasses such as torch.__version__ do not unpickle safely
    if isinstance(obj, (*_SCALARS, torch.Tensor)):
        return obj
    if isinstance(obj, dict):
        return {k: _safe(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise ValueError(f"{where} is a {type(obj).__name__}, which a checkpoint cannot store safely: "
                     "convert it to str, numbers, lists, dicts or torch tensors")


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_payload(model: CRNN, *, recipe: dict, data: dict, extra: dict | None = None) -> dict:
    """The dict :func:`save_checkpoint` writes (embed it in other files if useful)."""
    info = model.info
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__,
            "config": asdict(info.config), "tau": info.tau, "eps": info.eps,
            "mobility": info.mobility, "downscale": info.downscale, "param_count": info.param_count,
            "guard_dt": info.guard_dt, **{name: getattr(info, name) for name, _ in MODEL_OPTIONS},
            "recipe": _safe(dict(recipe), "recipe"), "data": _safe(dict(data), "data"),
            "extra": _safe(dict(extra or {}), "extra"), "sha256": weights_sha256(state),
            "state_dict": state}


def model_from_payload(payload, source: str = "checkpoint") -> CRNN:
    """Validate a checkpoint dict and build the model from it, or raise :class:`CheckpointError`."""
    def fail(problem: str, fix: str) -> CheckpointError:
        return CheckpointError(f"{source}: {problem}; {fix}")

    if isinstance(payload, dict) and "format" not in payload and payload and all(
            isinstance(v, torch.Tensor) for v in payload.values()):
        raise fail("is a plain state_dict without architecture metadata",
                   "save models with napari_chflow.model.save_checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise fail("is not a napari-chflow CRNN checkpoint",
                   "pass a file written by save_checkpoint or `chflow train`")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise fail(f"has format version {version!r}, this napari-chflow reads <= {FORMAT_VERSION}",
                   "upgrade napari-chflow")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise fail(f"is incomplete (missing {', '.join(missing)})",
                   "re-save it with save_checkpoint")
    state = payload["state_dict"]
    if (not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values())
            or weights_sha256(state) != payload["sha256"]):
        raise fail("weights fail the sha256 integrity check (corrupted or edited)",
                   "re-download or re-save it")
    problem = _header_problem(payload)
    if problem:
        raise fail(f"records {problem}", "re-save it with save_checkpoint or retrain")
    another = ("load it with the napari-chflow that wrote it "
               f"(v{payload['version']}) or retrain")
    kwargs = dict(tau=payload["tau"], eps=payload["eps"], mobility=payload["mobility"],
                  downscale=payload["downscale"], recipe=payload["recipe"], data=payload["data"],
                  version=payload["version"], guard_dt=payload.get("guard_dt"),
                  **{name: payload.get(name, default) for name, default in MODEL_OPTIONS})
    try:
        config = CRNNConfig(**payload["config"])
        with torch.device("meta"):  # shapes only: nothing is allocated before they match
            skeleton = CRNN(config, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        detail = str(e).strip().splitlines()[0][:300]
        raise fail(f"was built for another architecture ({detail})", another) from None
    mismatch = _shape_mismatch(skeleton.state_dict(), state)
    if mismatch:
        raise fail(f"was built for another architecture ({mismatch})", another)
    model = CRNN(config, **kwargs)
    model.load_state_dict(state, strict=True)
    model.extra = payload.get("extra") or {}
    return model


CONFIG_BOUNDS = {"hidden": (1, 256), "n_layers": (1, 16), "kernel": (1, 15)}
"""Architectures a checkpoint may describe (the paper's: hidden 10, 2 layers, kernel 3)."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value, lo: int, hi: int) -> bool:
    """Whether ``value`` is an int (not a bool) in ``[lo, hi]``."""
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def option_problem(name: str, value) -> str | None:
    """What is wrong with the value of the model option ``name`` (``"coarse"``,
    ``"guard_iters"``, ``"flux_limit"``, ``"lattice_average"``, ``"relax_dt"``,
    ``"relax_limit"``, ``"relax_split"``, ``"early_steps"`` or ``"early_relax_dt"``) as
    ``"name = value: it must be ..."``, or None. The one place these bounds live: the model, its
    checkpoint header and the training recipe use it."""
    if name == "coarse":
        ok, need = value in COARSE_MODES, f"one of {', '.join(COARSE_MODES)}"
    elif name == "guard_iters":
        ok, need = _whole(value, 0, GUARD_MAX), f"an integer from 0 (off) to {GUARD_MAX}"
    elif name == "lattice_average":
        ok = _whole(value, 1, max(LATTICE_IMAGES)) and value in LATTICE_IMAGES
        need = f"one of {', '.join(map(str, LATTICE_IMAGES))} (1 = off)"
    elif name in ("flux_limit", "relax_limit"):
        ok = value is None or (_number(value) and 0 <= value <= 1)
        need = ("None (off) or a margin from 0 to 1 beyond [0, 1]" if name == "flux_limit" else
                "None (the flux limit's) or a margin from 0 to 1 beyond [0, 1]")
    elif name in ("relax_dt", "early_relax_dt"):
        ok = _number(value) and 0 <= value <= RELAX_MAX
        need = f"a time from 0 (off) to {RELAX_MAX:g}"
    elif name == "relax_split":
        ok, need = isinstance(value, bool), "True or False"
    elif name == "early_steps":
        ok, need = _whole(value, 0, EARLY_MAX), f"an integer from 0 (off) to {EARLY_MAX}"
    else:
        raise KeyError(f"not a model option: {name!r}")
    return None if ok else f"{name} = {value!r}: it must be {need}"


def split_problem(relax_split: bool, relax_dt, tau) -> str | None:
    """What is wrong with ``relax_split`` given the relaxation time and the step, or None: the
    relaxation can take over only part of a step (``0 < relax_dt < tau``)."""
    if relax_split is True and not (_number(relax_dt) and _number(tau) and 0 < relax_dt < tau):
        return (f"relax_split needs a relaxation shorter than the step (0 < relax_dt < tau), "
                f"got relax_dt = {relax_dt!r}, tau = {tau!r}")
    return None


def early_problem(early_steps, early_relax_dt) -> str | None:
    """What is wrong with an early relaxation given the early steps, or None: without early
    steps it would never act."""
    if early_steps == 0 and _number(early_relax_dt) and early_relax_dt > 0:
        return (f"early_relax_dt = {early_relax_dt!r} acts only in the early steps, but "
                "early_steps = 0: set early_steps > 0 or early_relax_dt = 0")
    return None


def options_problem(options: Mapping[str, object], tau) -> str | None:
    """What is wrong with a model's options (``options``: a mapping holding some of
    :data:`MODEL_OPTIONS`; a missing one takes its default) for a step of ``tau``, or None: each
    option by :func:`option_problem`, then the ones that must agree (:func:`split_problem`,
    :func:`early_problem`). The one check of :class:`CRNN` and of a checkpoint's header."""
    values = {name: options.get(name, default) for name, default in MODEL_OPTIONS}
    for name, value in values.items():
        problem = option_problem(name, value)
        if problem:
            return problem
    return (split_problem(values["relax_split"], values["relax_dt"], tau)
            or early_problem(values["early_steps"], values["early_relax_dt"]))


def _header_problem(payload: dict) -> str | None:
    """What is wrong with a checkpoint's physics, grid factor and architecture, or None."""
    for name in ("tau", "eps", "mobility"):
        value = payload[name]
        if not (_number(value) and np.isfinite(value) and value > 0):
            return f"a non-physical {name} = {value!r} (it must be a positive number)"
    d = payload["downscale"]
    if not _whole(d, 1, 16):
        return f"downscale = {d!r} (it must be an integer from 1 to 16)"
    problem = options_problem(payload, payload["tau"])
    if problem:
        return problem
    config = payload["config"]
    if not isinstance(config, dict):
        return f"an architecture of type {type(config).__name__} (it must be a dict)"
    for name, (lo, hi) in CONFIG_BOUNDS.items():
        value = config.get(name)
        if name in config and not _whole(value, lo, hi):
            return f"an architecture with {name} = {value!r} (supported: {lo} to {hi})"
    return None


def _shape_mismatch(expected: dict, state: dict) -> str | None:
    """The first difference between the weights a model expects and a checkpoint's, or None."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        return f"{len(missing)} missing and {len(unexpected)} unexpected weights, e.g. {names}"
    for name, want in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(want.shape):
            return (f"{name} has shape {tuple(got.shape)}, the architecture needs "
                    f"{tuple(want.shape)}")
        if not got.is_floating_point():
            return f"{name} holds {got.dtype} values, not floating point"
    return None


def save_checkpoint(path, model: CRNN, *, recipe: dict, data: dict,
                    extra: dict | None = None) -> Path:
    """Write ``model`` with its recipe, data description and optional ``extra`` dict (tensors
    allowed) to ``path`` atomically (:func:`napari_chflow.io.atomic_write`). Returns the path."""
    payload = checkpoint_payload(model, recipe=recipe, data=data, extra=extra)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path, device=None) -> CRNN:
    """Load a checkpoint (safe ``weights_only`` unpickling) into a new eval-mode model on
    ``device`` (None -> CPU). Anything but a complete, matching checkpoint raises
    :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path or train one "
                              "with `chflow train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, text file, unsafe pickle, ...
        raise CheckpointError(_load_failure(path, e)) from None
    return model_from_payload(payload, str(path)).to(resolve_device(device)).eval()


def _load_failure(path: Path, err: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused ``path``. Torch's own text is not
    quoted: it suggests turning the safe loading off, which would run code hidden in the file."""
    text = str(err)
    if "weights only" in text.lower() or "weights_only" in text or "GLOBAL" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found[1]})" if found else ""
        return (f"{path}: refused: it holds Python objects{what} that a safe load does not run, so "
                "it is not a napari-chflow checkpoint (those hold only tensors, numbers and text): "
                "use a checkpoint written by napari-chflow, e.g. by `chflow train`")
    detail = (text.strip().splitlines() or [""])[0][:200]
    return (f"{path}: cannot be read as a checkpoint ({type(err).__name__}: {detail}); the file "
            "is truncated, corrupted or not a napari-chflow checkpoint: re-save or re-download it")


def _resources():
    """The bundled ``resources`` folder (package ``napari_chflow.resources``)."""
    try:
        return importlib.resources.files("napari_chflow.resources")
    except ModuleNotFoundError:  # source checkout without the package mapping
        return Path(__file__).resolve().parent.parent / "resources"


def available_pretrained() -> list[str]:
    """Names of the bundled pretrained models (``resources/<name>.pt``)."""
    root = _resources()
    if not root.is_dir():
        return []
    return sorted(p.name[:-3] for p in root.iterdir() if p.name.endswith(".pt") and p.is_file())


def load_pretrained(name: str = "default", device=None) -> CRNN:
    """Load the bundled pretrained model ``name`` (see :func:`available_pretrained`)."""
    names = available_pretrained()
    if name not in names:
        raise CheckpointError(
            f"no pretrained model {name!r} is bundled with napari-chflow (available: "
            f"{', '.join(names) or 'none'}); train one with `chflow train` and load it with "
            "load_checkpoint(path)")
    with importlib.resources.as_file(_resources() / f"{name}.pt") as path:
        return load_checkpoint(path, device)
