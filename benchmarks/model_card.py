"""Measure a trained CRNN checkpoint and write its model card (markdown) next to the weights.

    python benchmarks/model_card.py runs/default/best.pt --out resources/default.md \
        --dataset-cmd "chflow dataset ..." --train-cmd "chflow train ..."

Accuracy: held-out 64^3 Perlin ICs (seeds never used by `chflow dataset`), CRNN vs the spectral
solver at 10, 50 and 100 tau, metrics on the full 64^3 grid with the CRNN frames upsampled
(nearest) and on the model's 32^3 grid (ground truth mapped to it as the model maps its input).
Long horizon: two more held-out 64^3 ICs (mean phi 0.5 and 0.4) for 1000 tau: F/V error, the
fraction of steps in which F/V rises, the coarsening exponent, the bulk/gradient energy split
(napari_chflow.validation.long_horizon). Stability: 10^4 CRNN steps. Rest: a flat equilibrium
slab, which the physics keeps exactly where it is. Speed: seconds per tau side by side in one
run (napari_chflow.bench).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
import torch

from napari_chflow import __version__
from napari_chflow.bench import format_table, solver_timings
from napari_chflow.io import atomic_write_text, portable_path
from napari_chflow.metrics import mass
from napari_chflow.model import RolloutDiverged, iter_rollout, load_checkpoint
from napari_chflow.seeds import perlin
from napari_chflow.training import best_epoch_number
from napari_chflow.validation import paired_run
from napari_chflow.validation.long_horizon import RISE_TOL, long_run, rest_drift, summarize

HELD_OUT_SEEDS = (10_001, 10_002, 10_003, 10_004)
LONG_ICS = ((10_005, 0.5), (10_006, 0.4))  # (Perlin seed, mean phi), held out as above
CHECK_TAU = (10, 50, 100)


def accuracy(model, size: int = 64, seeds=HELD_OUT_SEEDS) -> dict:
    """Per check time: mean over ICs of RMSE / interface displacement (both grids), and the max
    over 1 <= t <= 100 tau of the relative F/V error (both on the model grid)."""
    keys = {"rmse": "rmse", "delta": "delta", "rmse_model": "rmse_model_grid",
            "delta_model": "delta_model_grid", "delta_grid": "delta_grid_floor"}
    rows = {t: {name: [] for name in keys.values()} for t in CHECK_TAU}
    rel_f = []
    n_tau = max(CHECK_TAU)
    for seed in seeds:
        phi0 = perlin((size,) * 3, mean=0.5, seed=seed)
        trace, _ = paired_run(model, phi0, n_tau, np.arange(n_tau + 1))
        if trace["diverged"]:
            raise RuntimeError(f"IC seed {seed}: {trace['diverged']}")
        for t in CHECK_TAU:
            for key, name in keys.items():
                rows[t][name].append(trace[key][t])
        fg = trace["fv_gt_model"][1:]
        rel_f.append(np.max(np.abs(trace["fv_crnn"][1:] - fg) / fg))
    summary = {t: {k: float(np.mean(v)) for k, v in r.items()} for t, r in rows.items()}
    return {"by_tau": summary, "max_rel_free_energy": float(np.max(rel_f)), "n_ic": len(seeds)}


def stability(model, size: int = 32, n_steps: int = 10_000) -> dict:
    """Roll out ``n_steps`` CRNN steps from a Perlin IC of ``size``^3: mass drift, range, NaN."""
    phi0 = perlin((size,) * 3, mean=0.5, seed=HELD_OUT_SEEDS[0])
    start = time.perf_counter()
    m0, lo, hi, last, blew_up = None, np.inf, -np.inf, None, None
    try:
        for frame in iter_rollout(model, phi0, n_steps):
            m0 = mass(frame) if m0 is None else m0
            lo, hi, last = min(lo, float(frame.min())), max(hi, float(frame.max())), frame
    except RolloutDiverged as err:  # phi left physics.BLOWUP_RANGE: the rollout stops there
        blew_up = err.step
    return {"steps": n_steps, "grid": last.shape, "mass_drift": abs(mass(last) - m0) / m0,
            "min": lo, "max": hi, "finite": bool(np.isfinite(last).all()) and blew_up is None,
            "blew_up_at": blew_up, "seconds": time.perf_counter() - start}


def rest(model, size: int = 32, checks=(10, 100, 1000)) -> dict:
    """Roll out an equilibrium slab (width size/2 along Z, ``size``^3): the exact solution is the
    IC itself. Interface displacement from it on the model grid, in full-grid units, per check."""
    grid = (size // model.info.downscale,) * 3
    return {"grid": grid, "delta": rest_drift(model, size, max(checks), checks)}


def long_horizon(model, size: int = 64, n_tau: int = 1000, ics=LONG_ICS) -> list[dict]:
    """:func:`napari_chflow.validation.long_horizon.summarize` of a ``n_tau`` run from each
    held-out IC ``(seed, mean)`` of ``size``^3 (spectral ground truth), with seed and mean."""
    out = []
    for seed, mean in ics:
        run = long_run(model, perlin((size,) * 3, mean=mean, seed=seed), n_tau)
        if run["diverged"]:
            raise RuntimeError(f"IC seed {seed}: {run['diverged']}")
        out.append({"seed": seed, "mean": mean, **summarize(run)})
    return out


def _stability_verdict(stab: dict) -> str:
    """One sentence on how far phi left [0, 1] during the stability run."""
    if stab.get("blew_up_at") is not None:
        return (f"**Unstable**: phi blew up (left [-2, 3]) at step {stab['blew_up_at']}, where the "
                "rollout stops; use this model for short rollouts only.")
    over = max(-stab["min"], stab["max"] - 1.0)
    if over <= 0.2:
        return "phi stays within [-0.2, 1.2] for the whole run."
    if over <= 1.0:
        return (f"phi stays bounded but overshoots [0, 1] by up to {over:.2f} (the solver stays "
                "within about 0.03 of it); the paper's model stays bounded for 8e4 steps.")
    return ("**Unstable at long times**: phi leaves the physical range [0, 1] well before the end "
            "of the run (the paper's model stays bounded for 8e4 steps); use this model for short "
            "rollouts (tens of tau) only.")


def _train_config(recipe: dict) -> dict:
    """The recipe's train config with its ``init`` checkpoint path made portable."""
    tc = dict(recipe.get("train_config") or recipe)
    if tc.get("init"):
        parent = recipe.get("init_from") or {}
        tc["init"] = portable_path(tc["init"], sha256=parent.get("sha256"))
    return tc


def _lineage(recipe: dict) -> list[str]:
    """Card lines for the checkpoints a fine-tuned model started from (``--init``), oldest last;
    paths relative to the project, or file name and sha256 (``io.portable_path``)."""
    lines, parent = [], recipe.get("init_from")
    while parent:
        rec, data = parent.get("recipe") or {}, parent.get("data") or {}
        cfg = data.get("config") or {}
        where = portable_path(parent.get("path"), sha256=parent.get("sha256"))
        lines.append(
            f"- started from `{where}`: {rec.get('epochs_done', '?')} epochs, "
            f"{rec.get('wall_seconds', 0) / 3600:.2f} h, on {data.get('n_train', '?')} training sequences "
            f"of {cfg.get('frames', '?')} frames at {cfg.get('size', '?')}^3 (lr "
            f"{(rec.get('train_config') or {}).get('lr', '?')}, best full-sequence validation loss "
            f"{rec.get('best_val_loss_full', '?')})")
        parent = rec.get("init_from")
    return lines + [""]


_MAPPING = {"nearest": "nearest sampling, as in the paper",
            "mean": ("the mean of each block of full-grid voxels; the paper samples one voxel "
                     "per block")}
"""How the full grid maps to the model grid, by ``ModelInfo.coarse``, in the card's words."""


def _architecture(info) -> str:
    """The architecture paragraph: the paper's CRNN, plus what this model adds to it."""
    text = (f"The paper's CRNN: {info.config.n_layers} ConvGRU blocks, {info.config.hidden} hidden "
            f"channels, {info.config.kernel}^3 kernels, deep mapping={info.config.deep_mapping}, "
            f"divergence output layer; {info.param_count} trainable parameters (paper: ~2.9e4). "
            f"tau = {info.tau}, eps = {info.eps}, runs on the x1/{info.downscale} grid "
            f"({_MAPPING[info.coarse]}).")
    extras = []
    if info.flux_limit is not None:
        extras.append(f"a flux limiter in the divergence layer (Zalesak's flux-corrected "
                      f"transport, `model.limited_divergence`) keeps phi within "
                      f"[{-info.flux_limit:g}, {1 + info.flux_limit:g}] with mass exact")
    if info.guard_iters:
        extras.append(f"an energy guard (`CRNN.guard`): after a step that raised the free "
                      f"energy, at most {info.guard_iters} explicit Cahn-Hilliard relaxation steps "
                      f"of {info.guard_dt:.3g} time units on the model grid")
    if info.lattice_average > 1:
        extras.append(f"each step's flux field averaged over {info.lattice_average} images of "
                      f"the state under the lattice's symmetries (`model.LATTICE_IMAGES`; "
                      f"{info.lattice_average}x the cost per step), against lattice pinning")
    if info.relax_dt:
        extras.append(f"a fine-grid relaxation (`CRNN.relax`): each step ends with one "
                      f"semi-implicit Cahn-Hilliard step of {info.relax_dt:g} time units on the "
                      f"solvers' grid (the state Fourier-interpolated there and back), which adds "
                      f"no lattice pinning"
                      + (", its change applied as face fluxes (`model.gradient_faces`) limited "
                         f"to [{info.relax_bounds[0]:g}, {info.relax_bounds[1]:g}]"
                         if info.relax_bounds is not None else "")
                      + (f"; its time is taken out of the network's step (`relax_split`: the "
                         f"flux field scaled by {info.network_share:g}), so that a step spans "
                         f"tau = {info.tau:g}" if info.relax_split else ""))
    if info.early_steps:
        extras.append(f"the first {info.early_steps} steps of a run ({info.early_steps * info.tau:g} "
                      f"tau, the spinodal stage) take the network's whole flux field and "
                      + (f"a relaxation of {info.early_relax_dt:g}" if info.early_relax_dt
                         else "no relaxation")
                      + " without the split (`early_steps`, `early_relax_dt`)")
    if extras:
        text += " Not in the paper: " + "; ".join(extras) + "."
    return text


def _long_lines(rows: list[dict], n_tau: int) -> list[str]:
    lines = [
        f"## Long horizon: 64^3, {n_tau} tau, two held-out ICs vs the spectral solver",
        "",
        f"F/V of both on the model grid at every step; a rise is F_next > F (1 + {RISE_TOL:g}). "
        "Bulk/gradient: the ratio of bulk energy g(phi) to gradient energy eps/2 |grad phi|^2 at the "
        "end (1 for equilibrium interfaces). The solver's figures in brackets.",
        "",
        "| IC (seed, mean phi) | max rel. F/V error | F/V rises (solver) | exponent over the last "
        "decade (solver) | bulk/gradient at the end (solver) | CRNN phi range |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']}, {r['mean']} | {r['max_rel_f']:.2%} | {r['rises']:.2%} "
            f"({r['rises_gt']:.2%}) | {r['exponent_crnn']:.3f} ({r['exponent_gt']:.3f}) | "
            f"{r['ratio_crnn']:.3f} ({r['ratio_gt']:.3f}) | [{r['phi_min']:.3f}, "
            f"{r['phi_max']:.3f}] |")
    return lines + [""]


def card(model, acc: dict, stab: dict, still: dict, speed_table: str, dataset_cmd: str,
         train_cmd: str, long: list[dict] | None = None, long_n_tau: int = 1000) -> str:
    info = model.info
    rec = info.recipe
    threads = torch.get_num_threads()
    lines = [
        "# Shipped CRNN: `default`",
        "",
        f"Measured {datetime.date.today()} with napari-chflow {__version__}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {threads} thread{'s' if threads != 1 else ''}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}. "
        "Regenerate: `python benchmarks/model_card.py resources/default.pt --out resources/default.md`.",
        "",
        "## Architecture",
        _architecture(info),
        "",
        "## Data and training",
        f"- data: `{dataset_cmd}`",
        f"- training: `{train_cmd}`",
        f"- dataset: {info.data.get('config')}; {info.data.get('n_train')} training and "
        f"{info.data.get('n_val')} validation sequences",
        f"- recipe: {_train_config(rec)}",
        f"- epochs done: {rec.get('epochs_done', '?')}, wall time: {rec.get('wall_seconds', 0) / 3600:.2f} h, "
        f"hardware: {rec.get('hardware', '?')}, best full-sequence validation loss {rec.get('best_val_loss_full', '?')} "
        f"(epoch {best_epoch_number(rec)})",
        "",
        *_lineage(rec),
        "This is a CPU-budget model: the paper trained ~50 GPU hours on 1850 sequences of 64^3 x 50 frames; "
        "this one saw far less data and compute (above), so its accuracy is below the paper's.",
        "",
        f"## Accuracy on {acc['n_ic']} held-out 64^3 Perlin ICs vs the spectral solver",
        "",
        "| t (tau) | RMSE (64^3, CRNN upsampled) | interface displacement (grid units) | "
        "floor: the solver's state on the model grid | RMSE (32^3 model grid) | "
        "displacement (model grid, its units) |",
        "|---|---|---|---|---|---|",
    ]
    for t, r in acc["by_tau"].items():
        lines.append(f"| {t} | {r['rmse']:.4f} | {r['delta']:.3f} | {r['delta_grid_floor']:.3f} | "
                     f"{r['rmse_model_grid']:.4f} | {r['delta_model_grid']:.3f} |")
    lines += [
        "",
        "The floor column is the displacement of the solver's own state sent to the model grid "
        f"as the model maps its input ({_MAPPING[model.info.coarse]}) and back (nearest "
        "upsampling, as the CRNN columns): what any model on that grid scores if it matches the "
        "solver there exactly.",
        "",
        f"Paper: interface displacement stays below one interface width (eps = 3 grid units). "
        f"Max relative F/V error over 1 <= t <= {max(CHECK_TAU)} tau (both on the model grid, voxel "
        f"size {model.info.downscale}): **{acc['max_rel_free_energy']:.2%}** (paper: < 5.5%).",
        "",
        *(_long_lines(long, long_n_tau) if long else []),
        f"## Stability: {stab['steps']} CRNN steps on a {stab['grid']} grid",
        f"- relative mass drift {stab['mass_drift']:.2e} (requirement < 1e-5)",
        f"- phi range [{stab['min']:.3f}, {stab['max']:.3f}], all finite: {stab['finite']}, took {stab['seconds']:.0f} s",
        "",
        _stability_verdict(stab),
        "",
        f"## Rest: an equilibrium slab ({still['grid']} model grid, width half the box)",
        "The physics keeps it exactly where it is. Interface displacement of the CRNN from it "
        "(grid units of the full grid): "
        + ", ".join(f"{d:.3f} after {k} steps" for k, d in still["delta"].items()) + ".",
        "",
        "## Speed (seconds per tau of physical time, same physical domain, one run)",
        "",
        "The CRNN column is the model on the x1/2 grid of the named domain size; each figure is the "
        "median of the interleaved timing rounds.",
        "",
        speed_table,
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset-cmd", default="?")
    p.add_argument("--train-cmd", default="?")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median kept)")
    p.add_argument("--long-tau", type=int, default=1000, help="length of the long-horizon runs")
    args = p.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    speed = solver_timings(args.sizes, extra={"crnn": lambda phi0, k: iter_rollout(model, phi0, k)},
                           rounds=args.rounds)
    acc = accuracy(model)
    stab = stability(model, n_steps=args.steps)
    still = rest(model)
    long = long_horizon(model, n_tau=args.long_tau)
    text = card(model, acc, stab, still, format_table(speed), args.dataset_cmd, args.train_cmd,
                long, args.long_tau)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
