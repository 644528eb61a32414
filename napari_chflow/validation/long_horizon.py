"""Experiment 7, long-horizon thermodynamics (not in the paper's figures; it tests the paper's
claim of thermodynamic consistency far past the training length).

- :func:`long_run`: the solver and the CRNN side by side from one IC, F/V and its bulk/gradient
  split of both on the model grid at *every* step, so rises of the CRNN's F can be counted.
- :func:`summarize`: max relative F/V error, the fraction of CRNN steps in which F/V rises, the
  coarsening exponents over the last decade, phi's range, and the bulk/gradient energy ratio
  (1 for equilibrium interfaces: equipartition) of both.
- :func:`rest_drift`: a flat equilibrium slab, which the physics keeps where it is; how far the
  CRNN moves it.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import physics
from ..metrics import interface_displacement
from ..model import RolloutDiverged, iter_rollout, to_model_grid
from ..physics import free_energy_parts
from ..seeds import slab
from .checks import Check, num, table
from .context import Context, Section
from .figures import figure, finish, save_png
from .paired import exponent

RISE_TOL = 1e-4
"""A step counts as a rise of F/V when ``F_next > F (1 + RISE_TOL)``."""
LONG_F_LIMIT = 0.10  # issue floor; the paper's own bound (5.5%) is shown beside it
RISE_LIMIT = 0.02
EXPONENT_LIMIT = 0.05
OVERSHOOT_LIMIT = 0.1
"""How far the CRNN's phi may leave [0, 1]."""
RATIO_LIMIT = 0.10
REST_LIMIT = 0.5


def _parts(phi: np.ndarray, eps: float, spacing: float) -> np.ndarray:
    """``[bulk, gradient]`` free-energy densities (float64) of one volume."""
    t = torch.from_numpy(np.asarray(phi, dtype=np.float64))
    return free_energy_parts(t, eps, spacing).numpy()


def long_run(model, phi0: np.ndarray, n_tau: int, solver: str = "spectral",
             device=None) -> dict:
    """Solver and CRNN from ``phi0`` ``(Z, Y, X)`` for ``n_tau`` steps of ``model.info.tau``.

    Returns ``t`` ``(n_tau + 1,)``, ``parts_crnn`` and ``parts_gt`` ``(n_tau + 1, 2)`` (bulk and
    gradient energy densities on the model grid, the solver's state mapped there by
    :func:`napari_chflow.model.to_model_grid`), ``phi_min`` / ``phi_max`` of the CRNN over the
    run and ``diverged`` (None or a sentence; the arrays are NaN after it).
    """
    info = model.info
    f = float(info.downscale)
    out = {"t": np.arange(n_tau + 1) * info.tau, "parts_crnn": np.full((n_tau + 1, 2), np.nan),
           "parts_gt": np.full((n_tau + 1, 2), np.nan), "phi_min": np.inf, "phi_max": -np.inf,
           "diverged": None}
    gt_frames = physics.iter_simulate(phi0, n_tau, tau=info.tau, solver=solver, eps=info.eps,
                                      mobility=info.mobility, device=device)
    nn_frames = iter_rollout(model, phi0, n_tau, device=device)
    try:
        for k, (gt, crnn) in enumerate(zip(gt_frames, nn_frames)):
            out["parts_gt"][k] = _parts(to_model_grid(gt, info), info.eps, f)
            out["parts_crnn"][k] = _parts(crnn, info.eps, f)
            out["phi_min"] = min(out["phi_min"], float(crnn.min()))
            out["phi_max"] = max(out["phi_max"], float(crnn.max()))
    except RolloutDiverged as e:
        out["diverged"] = f"CRNN diverged at t={e.step * info.tau:g}"
    except physics.SimulationDiverged as e:
        out["diverged"] = f"{solver} solver diverged ({e})"
    return out


def fv_error(run: dict) -> np.ndarray:
    """``|F/V_CRNN / F/V_solver - 1|`` at every frame of :func:`long_run`'s ``run``."""
    return np.abs(run["parts_crnn"].sum(1) / run["parts_gt"].sum(1) - 1)


def rise_fraction(fv: np.ndarray, tol: float = RISE_TOL) -> float:
    """Fraction of steps ``k -> k+1`` of the finite series ``fv`` in which it rises by more than
    the relative tolerance ``tol``."""
    fv = np.asarray(fv, dtype=float)
    fv = fv[np.isfinite(fv)]
    if len(fv) < 2:
        return float("nan")
    return float(np.mean(fv[1:] > fv[:-1] * (1 + tol)))


def summarize(run: dict) -> dict:
    """The long-run numbers of :func:`long_run` (t >= 1 for the F/V error, last decade of t for
    the exponents, the bulk/gradient ratio at the end of the run)."""
    t = run["t"]
    fv_c, fv_g = run["parts_crnn"].sum(1), run["parts_gt"].sum(1)
    late = (t[-1] / 10, t[-1])
    rel = fv_error(run)[t >= 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_c = run["parts_crnn"][:, 0] / run["parts_crnn"][:, 1]
        ratio_g = run["parts_gt"][:, 0] / run["parts_gt"][:, 1]
    exp_c, exp_g = exponent(t, fv_c, *late), exponent(t, fv_g, *late)
    return {"max_rel_f": float(np.nanmax(rel)) if np.isfinite(rel).any() else float("nan"),
            "end_rel_f": float(rel[-1]), "rises": rise_fraction(fv_c),
            "rises_gt": rise_fraction(fv_g), "exponent_crnn": exp_c, "exponent_gt": exp_g,
            "exponent_diff": abs(exp_c - exp_g), "phi_min": run["phi_min"],
            "phi_max": run["phi_max"], "ratio_crnn": float(ratio_c[-1]),
            "ratio_gt": float(ratio_g[-1]),
            "ratio_error": float(abs(ratio_c[-1] / ratio_g[-1] - 1))}


def rest_drift(model, size: int = 32, n_steps: int = 1000,
               checks: tuple[int, ...] = (10, 100, 1000)) -> dict[int, float]:
    """Roll out an equilibrium slab (``size``^3, width ``size / 2`` along Z), which the physics
    keeps exactly where it is: interface displacement of the CRNN from it on the model grid, in
    grid units of the full grid, after each of ``checks`` steps (<= ``n_steps``)."""
    phi0 = slab((size,) * 3, width=size / 2, eps=model.info.eps)
    target, f = to_model_grid(phi0, model.info), model.info.downscale
    want = {k for k in checks if k <= n_steps}
    out = {}
    for k, frame in enumerate(iter_rollout(model, phi0, n_steps)):
        if k in want:
            out[k] = f * interface_displacement(frame, target)
    return out


def long_horizon(ctx: Context) -> Section:
    cfg = ctx.config
    L, n_tau = cfg.long_size, cfg.long_n_tau
    sec = Section("long_horizon", "7. Long horizon: free-energy descent, equipartition, rest")
    runs = []
    for i, mean in enumerate(cfg.long_means):
        phi0, params = ctx.ics(1, L, start=300 + 10 * i, mean=mean)[0]
        ctx.log(f"  {L}^3, mean phi {mean}, {n_tau} tau ({cfg.long_solver} + CRNN)")
        run = long_run(ctx.model, phi0, n_tau, cfg.long_solver, cfg.device)
        if run["diverged"]:
            sec.problems.append(f"7. long horizon, mean {mean}: {run['diverged']}")
        runs.append((mean, params, run, summarize(run)))
    ctx.log(f"  rest: slab {cfg.rest_size}^3, {cfg.rest_steps} steps")
    drift = rest_drift(ctx.model, cfg.rest_size, cfg.rest_steps,
                       tuple(k for k in (10, 100, 1000, cfg.rest_steps) if k <= cfg.rest_steps))

    worst = {key: max(s[key] for *_, s in runs) for key in
             ("max_rel_f", "rises", "exponent_diff", "ratio_error", "phi_max")}
    phi_min = min(s["phi_min"] for *_, s in runs)
    where = f"7. long horizon ({L}^3, {n_tau} tau)"
    sec.checks += [
        Check(where, "max relative F/V error (worst IC)", worst["max_rel_f"],
              f"< 5.5% (sec. 3.3); this report's floor {LONG_F_LIMIT:.0%}", LONG_F_LIMIT,
              "max", percent=True),
        Check(where, "fraction of CRNN steps in which F/V rises", worst["rises"],
              "a gradient flow never raises F (the solver's rises are listed below)",
              RISE_LIMIT, "max", percent=True, from_paper=False),
        Check(where, "|exponent CRNN - solver| in the last decade of t", worst["exponent_diff"],
              "same coarsening law (fig. 6a)", EXPONENT_LIMIT, "max"),
        Check(where, "bulk/gradient energy ratio at the end, relative to the solver's",
              worst["ratio_error"], "equilibrium interfaces keep bulk and gradient energy "
              "equal (equipartition)", RATIO_LIMIT, "max", percent=True, from_paper=False),
        Check(where, "how far phi leaves [0, 1]",
              max(worst["phi_max"] - 1, -phi_min), "phi stays a phase field (bounded, fig. 4)",
              OVERSHOOT_LIMIT, "max", from_paper=False),
        Check("7. rest", f"slab drift after {max(drift)} steps", drift[max(drift)],
              "the exact solution does not move", REST_LIMIT, "max", unit=" grid units",
              from_paper=False),
    ]

    rows = []
    for mean, params, run, s in runs:
        rows.append([f"{mean:g} (Perlin seed {params['seed']})", f"{s['max_rel_f']:.2%}",
                     f"{s['end_rel_f']:.2%}", f"{s['rises']:.2%} ({s['rises_gt']:.2%})",
                     f"{num(s['exponent_crnn'])} ({num(s['exponent_gt'])})",
                     f"{num(s['ratio_crnn'])} ({num(s['ratio_gt'])})",
                     f"[{num(s['phi_min'])}, {num(s['phi_max'])}]"])
    path, rel = ctx.fig("long_horizon.png")
    fig = figure(10, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    for mean, _, run, _ in runs:
        t = run["t"]
        ok = t > 0
        line, = ax1.plot(t[ok], run["parts_gt"].sum(1)[ok], label=f"solver, mean {mean:g}")
        ax1.plot(t[ok], run["parts_crnn"].sum(1)[ok], "--", color=line.get_color(),
                 label=f"CRNN, mean {mean:g}")
        ax2.plot(t[ok], (run["parts_gt"][:, 0] / run["parts_gt"][:, 1])[ok],
                 color=line.get_color(), label=f"solver, mean {mean:g}")
        ax2.plot(t[ok], (run["parts_crnn"][:, 0] / run["parts_crnn"][:, 1])[ok], "--",
                 color=line.get_color(), label=f"CRNN, mean {mean:g}")
    ax1.set_title(f"F/V on the model grid, {L}^3", fontsize=8)
    ax2.set_title("bulk / gradient energy (1 = equipartition)", fontsize=8)
    finish(ax1, log_y=True)
    ax2.set_xscale("log")
    finish(ax2)
    fig.tight_layout()
    save_png(fig, path)

    sec.body = "\n\n".join([
        f"Two held-out Perlin ICs in a {L}^3 box (mean phi {', '.join(f'{m:g}' for m in cfg.long_means)}) "
        f"evolved for {n_tau} steps of tau = {ctx.model.info.tau:g} by the {cfg.long_solver} solver and "
        "the CRNN; F/V and its split into bulk energy g(phi) and gradient energy eps/2 |grad phi|^2 "
        "of both on the model grid at every step. A rise is a step with F_next > F (1 + "
        f"{RISE_TOL:g}). The solver's figure is in brackets.",
        table(["IC mean phi", "max rel. F/V error", "at the end", "F/V rises (solver)",
               "exponent, last decade (solver)", "bulk/gradient at the end (solver)",
               "CRNN phi range"], rows),
        "Rest: an equilibrium slab (width half the box) rolled out by the CRNN; interface "
        "displacement from the IC, grid units: "
        + ", ".join(f"{num(v)} after {k} steps" for k, v in sorted(drift.items())) + ".",
        f"![long horizon]({rel})",
    ])
    return sec
