"""Solver and CRNN side by side from one IC (:func:`paired_run`), the metrics of each recorded
frame (:func:`frame_metrics`) and NaN-tolerant reductions over runs."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from .. import physics
from ..metrics import coarsening_exponent, interface_displacement, mass, rmse
from ..model import RolloutDiverged, iter_rollout, to_model_grid, upsample
from ..physics import free_energy_density

METRIC_KEYS = ("rmse", "delta", "delta_frozen", "delta_grid", "rmse_model", "delta_model",
               "fv_gt", "fv_gt_model", "fv_crnn", "mass_drift", "overshoot_gt", "overshoot_crnn")


def record_frames(n_tau: int, n_log: int = 60, dense: int = 10,
                  extra: Iterable[int] = ()) -> np.ndarray:
    """Frame indices at which to evaluate metrics: 0..``dense``, ``n_log`` log-spaced ones up to
    ``n_tau`` and ``extra`` (sorted, unique, within ``[0, n_tau]``)."""
    ks = set(range(min(dense, n_tau) + 1)) | {int(n_tau)}
    ks |= {int(k) for k in extra if 0 <= k <= n_tau}
    if n_tau > 1:
        ks |= set(np.unique(np.round(np.geomspace(1, n_tau, n_log)).astype(int)).tolist())
    return np.array(sorted(ks), dtype=int)


def overshoot(phi: np.ndarray) -> float:
    """How far ``phi`` leaves [0, 1]: ``max(max(phi) - 1, -min(phi))`` (negative if inside)."""
    return max(float(phi.max()) - 1.0, -float(phi.min()))


def _delta(phi: np.ndarray, ref: np.ndarray) -> float:
    try:
        return interface_displacement(phi, ref)
    except ValueError:  # uniform ground truth: no interface
        return float("nan")


def frame_metrics(gt: np.ndarray, crnn: np.ndarray, info, mass0: float,
                  frozen: np.ndarray | None = None) -> dict:
    """Metrics of one frame: ground truth ``gt`` on the full grid, ``crnn`` on the model grid of
    the model described by ``info`` (:class:`napari_chflow.model.ModelInfo`). ``rmse``/``delta`` on the full grid (CRNN upsampled), ``rmse_model`` and
    ``delta_model`` on the model grid (GT downsampled; δ in model-grid units), F/V of the GT on
    both grids and of the CRNN on its grid (spacing ``factor``), the CRNN's relative mass drift
    from ``mass0``, :func:`overshoot` of both, and ``delta_frozen``: δ of the no-change
    predictor ``frozen`` (the upsampled model-grid IC), a baseline for ``delta``; and
    ``delta_grid``: δ of the ground truth itself sent to the model grid and back, the floor of
    ``delta`` for any model on that grid (a model that matched it there exactly would score it)."""
    factor, eps = info.downscale, info.eps
    up = upsample(crnn, factor)
    gt_c = to_model_grid(gt, info)
    return {"rmse": rmse(up, gt), "delta": _delta(up, gt),
            "delta_frozen": _delta(frozen, gt) if frozen is not None else float("nan"),
            "delta_grid": _delta(upsample(gt_c, factor), gt),
            "rmse_model": rmse(crnn, gt_c), "delta_model": _delta(crnn, gt_c),
            "fv_gt": free_energy_density(gt, eps),
            "fv_gt_model": free_energy_density(gt_c, eps, factor),
            "fv_crnn": free_energy_density(crnn, eps, factor),
            "mass_drift": mass(crnn) / mass0 - 1.0, "overshoot_gt": overshoot(gt),
            "overshoot_crnn": overshoot(crnn)}


def paired_run(model, phi0: np.ndarray, n_tau: int, frames: np.ndarray, solver: str = "spectral",
               device=None, keep: Iterable[int] = ()) -> tuple[dict, dict]:
    """Run ``solver`` and the CRNN from ``phi0`` for ``n_tau`` tau, side by side, streaming.

    Returns ``(trace, snapshots)``: ``trace`` maps ``t`` and each of :data:`METRIC_KEYS` to a
    ``(len(frames),)`` array (NaN after a divergence) plus ``diverged`` (None, or a sentence);
    ``snapshots[k] = (gt, crnn)`` for the frame indices in ``keep``.
    """
    info = model.info
    f = info.downscale
    want, keep = {int(k) for k in frames}, {int(k) for k in keep}
    pos = {int(k): i for i, k in enumerate(frames)}
    trace = {key: np.full(len(frames), np.nan) for key in METRIC_KEYS}
    trace["t"] = np.asarray(frames, dtype=float) * info.tau
    trace["diverged"] = None
    snaps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    gt_frames = physics.iter_simulate(phi0, n_tau, tau=info.tau, solver=solver, eps=info.eps,
                                      mobility=info.mobility, device=device)
    nn_frames = iter_rollout(model, phi0, n_tau, device=device)
    mass0, frozen = None, None
    try:
        for k, (gt, crnn) in enumerate(zip(gt_frames, nn_frames)):
            if mass0 is None:
                mass0, frozen = mass(crnn), upsample(crnn, f)
            if k in want:
                for key, value in frame_metrics(gt, crnn, info, mass0, frozen).items():
                    trace[key][pos[k]] = value
            if k in keep:
                snaps[k] = (gt, crnn)
    except RolloutDiverged as e:
        trace["diverged"] = f"CRNN diverged at t={e.step * info.tau:g}"
    except physics.SimulationDiverged as e:
        trace["diverged"] = f"{solver} solver diverged ({e})"
    return trace, snaps


def stack(traces: Sequence[dict], key: str) -> np.ndarray:
    """``(n_runs, n_frames)``: the ``key`` trace of every run."""
    return np.stack([tr[key] for tr in traces])


def nanmean(a: np.ndarray, axis=0) -> np.ndarray:
    """``np.nanmean`` without the all-NaN warning (all-NaN -> NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def nanstd(a: np.ndarray, axis=0) -> np.ndarray:
    """``np.nanstd`` without the all-NaN warning (all-NaN -> NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(a, axis=axis)


def nanmax(a: np.ndarray) -> float:
    """Largest finite value of ``a``, NaN if there is none."""
    a = np.asarray(a, dtype=float)
    return float(np.nanmax(a)) if np.isfinite(a).any() else float("nan")


def exponent(t: np.ndarray, f: np.ndarray, lo: float, hi: float) -> float:
    """Fitted exponent of ``f ~ t^alpha`` over ``lo <= t <= hi`` (finite points), NaN if none."""
    ok = np.isfinite(f)
    try:
        return coarsening_exponent(t[ok], f[ok], t_min=lo, t_max=hi)
    except ValueError:
        return float("nan")


def diverged(traces: Sequence[dict], where: str) -> list[str]:
    """One shortfall sentence per run of ``traces`` that diverged."""
    return [f"{where}, run {i}: {tr['diverged']}" for i, tr in enumerate(traces) if tr["diverged"]]
