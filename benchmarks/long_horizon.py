"""The long-horizon numbers of a CRNN checkpoint on chosen 64^3 Perlin ICs (the development check
behind the ablation table of docs/training.md; the model card and the validation report run the
same measurement on their own held-out ICs).

    python benchmarks/long_horizon.py runs/e2/best.pt --ics 901:0.5 902:0.4 --n-tau 1000

Each IC ``SEED:MEAN`` is ``seeds.perlin((size,)*3, mean=MEAN, seed=SEED)``; the ground truth is
the spectral solver. Prints one line per IC: max relative F/V error (t >= 1, both on the model
grid) and at t = 10, 50, 100, 300 (where reached), the fraction of steps in which F/V rises, the
coarsening exponents over the last decade of t, the bulk/gradient ratio at the end, phi's range.

More checks of the same table (``--checks long short rest early``):

- ``short``: mean interface displacement (grid units) from the spectral solver at 10, 50 and
  100 tau over the ICs ``--short-seeds`` (64^3, mean 0.5), as in the model card, with its floor
  (the solver's own state sent to the model grid and back);
- ``rest``: displacement of an equilibrium slab at rest after 10, 100, 1000 steps (32^3 box,
  interfaces on nodes of the model grid, as in the report), then after 1000 steps for slabs
  moved by 0.5, 1 and 1.5 grid units and for a diagonal (1, 1, 0) slab at two positions: a
  lattice-pinned model moves every slab to the same sub-cell position;
- ``early``: the largest F/V error over the first 40 tau (t <= 20) of a 128^3 IC with large
  features (``--early-seed``), the early spinodal stage that opens the report's coarsening
  experiment;
- ``time``: the report's time extrapolation (section 1) on ``--time-ics`` development ICs, drawn
  as the report draws its held-out ones but with seed offset ``--time-offset`` (the report:
  10000): mean interface displacement from the solver and that of the no-change predictor at
  10x and 100x the training length;
- ``floor``: on the same ICs as ``time``, without the CRNN: the interface displacement from the
  solver at 1x, 2x, 10x and 100x the training length of the solver itself started from the
  model-grid IC (downsampled, upsampled back: all that a surrogate on the model grid is given),
  beside the no-change predictor's. Whether a displacement at 100x is lost information or model
  error (``--time-offset 10000`` gives the report's five ICs with ``--time-ics 5``);
- ``settled``: on the same ICs as ``time``: the solver's state after 10x the training length
  (by then the 32^3 boxes have settled, often into saddle-shaped, Schwarz-P-like arrangements
  that the physics keeps where they are), then ``--settled-steps`` steps of the CRNN and of the
  solver from it: the interface displacement between the two at the start (what the model grid
  loses), after 1/4, 1/2 and all of the steps.
  The creep behind the report's 100x figure (rest slabs cannot show it: they do not creep);
- ``signed``: on the ``--ics``, at t = 1, 10, 50, 100, 300: the signed F/V error on the model
  grid (as ``long``) and on the full grid (the CRNN's state Fourier-interpolated there, against
  the solver's own state), and the interface displacement from the solver on the full grid:
  whether an F/V error is the representation of the interfaces or where they are;
- ``lag``: on the ``--short-seeds`` ICs, the CRNN's state after 10, 30, 50 and 100 steps
  against the solver's after k - 12 ... k + 12 steps: the solver step it matches best (mean
  interface displacement over the ICs). A model that runs ahead of the solver in time (or
  behind) matches a later (earlier) solver state.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from model_card import CHECK_TAU, accuracy  # benchmarks/ is on the path when run as a script
from napari_chflow.metrics import interface_displacement
from napari_chflow.model import (fourier_resample, iter_rollout, load_checkpoint, load_pretrained,
                                 to_model_grid, upsample)
from napari_chflow.physics import free_energy_parts, iter_simulate
from napari_chflow.seeds import perlin, slab, tanh_profile
from napari_chflow.validation.heldout import heldout_ics, training_spec
from napari_chflow.validation.long_horizon import fv_error, long_run, rest_drift, summarize
from napari_chflow.validation.paired import paired_run, record_frames

MARKS = (10, 50, 100, 300)  # times t at which the F/V error is also printed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint file, or 'default' for the shipped model")
    p.add_argument("--ics", nargs="+", default=["901:0.5", "902:0.4"], metavar="SEED:MEAN")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-tau", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checks", nargs="+", default=["long"], choices=("long", "short", "rest",
                                                                     "early", "time", "floor",
                                                                     "settled", "signed",
                                                                     "lag"))
    p.add_argument("--short-seeds", nargs="+", type=int, default=[911, 912, 913, 914])
    p.add_argument("--early-seed", type=int, default=903)
    p.add_argument("--time-ics", type=int, default=3)
    p.add_argument("--time-offset", type=int, default=20_000)
    p.add_argument("--settled-steps", type=int, default=1000)
    p.add_argument("--ics-from", metavar="CHECKPOINT",
                   help="draw the time / floor / settled ICs by this checkpoint's training data "
                        "(default: the checkpoint's own), to compare models fine-tuned on "
                        "different datasets on the same ICs")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load(args.checkpoint)
    args.spec = training_spec(_load(args.ics_from) if args.ics_from else model)
    if "long" in args.checks:
        _long(model, args)
    if "short" in args.checks:
        by_tau = accuracy(model, 64, args.short_seeds)["by_tau"]
        delta = " / ".join(f"{by_tau[t]['delta']:.3f}" for t in CHECK_TAU)
        floor = " / ".join(f"{by_tau[t]['delta_grid_floor']:.3f}" for t in CHECK_TAU)
        print(f"{args.checkpoint} displacement at {CHECK_TAU} tau: {delta} (floor of the model "
              f"grid: {floor})", flush=True)
    if "rest" in args.checks:
        drift = rest_drift(model, 32, 1000)
        print(f"{args.checkpoint} slab at rest, displacement after steps: "
              f"{ {k: round(v, 3) for k, v in drift.items()} }", flush=True)
        _rest_positions(model, args)
    if "early" in args.checks:
        run = long_run(model, perlin((128,) * 3, mean=0.5, seed=args.early_seed), 40)
        rel = fv_error(run)
        print(f"{args.checkpoint} early 128^3 (seed {args.early_seed}): max F/V error over 40 tau "
              f"{rel.max():.3f} at t = {run['t'][rel.argmax()]:g}", flush=True)
    if "time" in args.checks:
        _time(model, args)
    if "floor" in args.checks:
        _floor(model, args)
    if "settled" in args.checks:
        _settled(model, args)
    if "signed" in args.checks:
        _signed(model, args)
    if "lag" in args.checks:
        _lag(model, args)


LAG_STEPS, LAG_REACH = (10, 30, 50, 100), 12


def _lag(model, args) -> None:
    info = model.info
    offsets = np.arange(-LAG_REACH, LAG_REACH + 1, 2)
    delta = {k: [] for k in LAG_STEPS}
    for seed in args.short_seeds:
        phi0 = perlin((64,) * 3, mean=0.5, seed=seed)
        gt = list(_spectral(phi0, max(LAG_STEPS) + LAG_REACH, info))
        crnn = {k: upsample(x, info.downscale)
                for k, x in enumerate(iter_rollout(model, phi0, max(LAG_STEPS))) if k in delta}
        for k in LAG_STEPS:
            delta[k].append([interface_displacement(crnn[k], gt[k + o]) for o in offsets])
    for k in LAG_STEPS:
        mean = np.mean(delta[k], axis=0)
        best = int(offsets[np.argmin(mean)])
        print(f"{args.checkpoint} lag after {k} steps: best-matching solver step {k + best} "
              f"(delta {mean.min():.3f}; at step {k}: {mean[LAG_REACH // 2]:.3f})", flush=True)


def _diagonal_slab(center: float, n: int = 32, eps: float = 3.0) -> np.ndarray:
    """A periodic slab normal to (1, 1, 0), half of its period wide, ``(n, n, n) float32``."""
    _, y, x = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    s = (x + y - center + n / 2) % n - n / 2  # x + y is periodic with period n
    width = n / np.sqrt(2) / 2
    return tanh_profile(width / 2 - np.abs(s) / np.sqrt(2), eps).astype(np.float32)


def _rest_positions(model, args) -> None:
    eps = model.info.eps
    cases = [(f"moved {o}", slab((32,) * 3, 16, 0, 16 + o, eps)) for o in (0.5, 1.0, 1.5)]
    cases += [(f"diagonal at {c}", _diagonal_slab(c, eps=eps)) for c in (16.0, 16.7)]
    out = {}
    for name, phi0 in cases:
        *_, last = iter_rollout(model, phi0, 1000)
        out[name] = round(model.info.downscale * interface_displacement(
            last, to_model_grid(phi0, model.info)), 3)
    print(f"{args.checkpoint} slabs at rest, displacement after 1000 steps: {out}", flush=True)


def _load(name: str):
    return load_pretrained() if name == "default" else load_checkpoint(name)


def _time_ics(args) -> list:
    """The ``--time-ics`` development ICs (seed offset ``--time-offset``) of ``time``, ``floor``
    and ``settled``, drawn by ``args.spec``."""
    return heldout_ics(args.spec, args.time_ics, args.spec.size, args.time_offset)


def _spectral(phi0: np.ndarray, n_steps: int, info):
    """The ground truth: frames of the spectral solver with the model's tau, eps, mobility."""
    return iter_simulate(phi0, n_steps, tau=info.tau, solver="spectral", eps=info.eps,
                         mobility=info.mobility)


def _time(model, args) -> None:
    spec = args.spec
    T = spec.n_tau
    frames = record_frames(100 * T, 30, extra=[10 * T, 100 * T])
    at = {k: int(np.searchsorted(frames, k * T)) for k in (10, 100)}
    delta = {k: [] for k in at}
    for phi0, params in _time_ics(args):
        trace = paired_run(model, phi0, 100 * T, frames)[0]
        for k, i in at.items():
            delta[k].append((trace["delta"][i], trace["delta_frozen"][i]))
        print(f"{args.checkpoint} time IC seed {params['seed']}: delta / no-change "
              f"{ {k: tuple(round(float(x), 3) for x in v[-1]) for k, v in delta.items()} }",
              flush=True)
    for k, pairs in delta.items():
        d, d0 = (float(np.mean(x)) for x in zip(*pairs))
        print(f"{args.checkpoint} time {k}x ({spec.size}^3, {k * T} steps): delta {d:.3f}, "
              f"no-change {d0:.3f}, ratio {d / d0:.3f}", flush=True)


def _floor(model, args) -> None:
    spec, info = args.spec, model.info
    T, marks = spec.n_tau, (1, 2, 10, 100)
    at = {m * T for m in marks}
    rows = []
    for phi0, params in _time_ics(args):
        start = upsample(to_model_grid(phi0, info), info.downscale)
        runs = (_spectral(x, 100 * T, info) for x in (phi0, start))
        rows.append({k // T: (interface_displacement(x, gt), interface_displacement(start, gt))
                     for k, (gt, x) in enumerate(zip(*runs)) if k in at})
        print(f"{args.checkpoint} floor IC seed {params['seed']}: solver from the model-grid IC / "
              f"no-change { {m: tuple(round(float(v), 3) for v in d) for m, d in rows[-1].items()} }",
              flush=True)
    for m in marks:
        d, d0 = (float(np.mean(v)) for v in zip(*(r[m] for r in rows)))
        print(f"{args.checkpoint} floor {m}x ({spec.size}^3, {m * T} steps): solver from the "
              f"model-grid IC {d:.3f}, no-change {d0:.3f}", flush=True)


def _settled(model, args) -> None:
    spec, info = args.spec, model.info
    n = args.settled_steps
    marks, rows = (0, n // 4, n // 2, n), []
    for phi0, params in _time_ics(args):
        *_, start = _spectral(phi0, 10 * spec.n_tau, info)
        solver = _spectral(start, n, info)
        rows.append([interface_displacement(upsample(crnn, info.downscale), gt)
                     for k, (gt, crnn) in enumerate(zip(solver, iter_rollout(model, start, n)))
                     if k in marks])
        print(f"{args.checkpoint} settled IC seed {params['seed']}: displacement from the solver "
              f"after {marks} steps: {[round(float(d), 3) for d in rows[-1]]}", flush=True)
    mean = np.mean(rows, axis=0)
    print(f"{args.checkpoint} settled ({spec.size}^3, from the solver at {10 * spec.n_tau} "
          f"steps), mean displacement after {marks} steps: {[round(float(d), 3) for d in mean]}",
          flush=True)


def _signed(model, args) -> None:
    info = model.info
    marks = [round(t / info.tau) for t in (1, 10, 50, 100, 300) if t / info.tau <= args.n_tau]

    def fv(phi: np.ndarray, spacing: float) -> float:
        return float(free_energy_parts(torch.from_numpy(phi).double(), info.eps, spacing).sum())

    for item in args.ics:
        seed, mean = item.split(":")
        phi0 = perlin((args.size,) * 3, mean=float(mean), seed=int(seed))
        rows = []
        solver = _spectral(phi0, marks[-1], info)
        pairs = zip(solver, iter_rollout(model, phi0, marks[-1]))
        for k, (gt, crnn) in enumerate(pairs):
            if k in marks:
                full = fourier_resample(torch.from_numpy(crnn).double(), gt.shape).numpy()
                model_err = fv(crnn, info.downscale) / fv(to_model_grid(gt, info), info.downscale)
                rows.append(f"t = {k * info.tau:g}: {model_err - 1:+.3f} / "
                            f"{fv(full, 1.0) / fv(gt, 1.0) - 1:+.3f} / "
                            f"{interface_displacement(full, gt):.2f}")
        print(f"{args.checkpoint} IC {item}: F/V error on the model grid / on the full grid / "
              f"displacement: " + "; ".join(rows), flush=True)


def _long(model, args) -> None:
    for item in args.ics:
        seed, mean = item.split(":")
        start = time.perf_counter()
        run = long_run(model, perlin((args.size,) * 3, mean=float(mean), seed=int(seed)),
                       args.n_tau)
        s = summarize(run)
        rel = fv_error(run)
        marks = {t: round(float(rel[int(t / model.info.tau)]), 3) for t in MARKS
                 if t / model.info.tau <= args.n_tau}
        print(f"{args.checkpoint} IC {seed}:{mean}: max F/V error {s['max_rel_f']:.3f} {marks} "
              f"rises {s['rises']:.3f} (solver {s['rises_gt']:.3f}) exponent "
              f"{s['exponent_crnn']:.3f} vs {s['exponent_gt']:.3f} (diff {s['exponent_diff']:.3f}) "
              f"bulk/gradient {s['ratio_crnn']:.3f} vs {s['ratio_gt']:.3f} phi "
              f"[{s['phi_min']:.3f}, {s['phi_max']:.3f}] "
              f"{'DIVERGED ' + run['diverged'] if run['diverged'] else ''}"
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
