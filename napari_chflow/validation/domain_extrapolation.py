"""Experiment 2, domain extrapolation: a box twice as large as in training, for twice the training
length (paper fig. 2a)."""

from __future__ import annotations

import numpy as np

from ..model import upsample
from .checks import PAPER_DELTA_BOUND, Check, num, pm, table
from .context import Context, Section
from .figures import band, figure, finish, save_png
from .paired import diverged, nanmean, nanstd, paired_run, stack


def domain_extrapolation(ctx: Context) -> Section:
    cfg, T, S = ctx.config, ctx.train_n_tau, ctx.size
    L, n_tau = cfg.domain_factor * S, cfg.domain_time_factor * T
    frames = np.arange(n_tau + 1)  # every frame: the sequence MSE is the training loss
    sec = Section("domain", "2. Domain extrapolation")
    results, last = {}, None
    for size in (S, L):
        runs = []
        for i, (phi0, _) in enumerate(ctx.ics(cfg.domain_n_ics, size, start=100)):
            ctx.log(f"  {size}^3 IC {i + 1}/{cfg.domain_n_ics}: {n_tau} tau "
                    f"({cfg.short_solver} + CRNN)")
            tr, snaps = paired_run(ctx.model, phi0, n_tau, frames, cfg.short_solver, cfg.device,
                                   keep=[n_tau] if (size == L and i == 0) else [])
            runs.append(tr)
            last = snaps.get(n_tau, last)
        results[size] = runs
        sec.problems += diverged(runs, f"2. domain {size}^3")
    t = results[S][0]["t"]

    def seq_mse(runs):
        return float(nanmean(nanmean(stack(runs, "rmse_model")[:, 1:] ** 2, axis=1)))

    rows, vals = [], {}
    for size, runs in results.items():
        dl, rm = stack(runs, "delta"), stack(runs, "rmse")
        vals[size] = seq_mse(runs)
        paper = ("training box" if size == S else
                 f"{cfg.domain_factor}x box, {cfg.domain_time_factor}x time: 'closely reproduces'; "
                 "MSE 'slightly higher than training and validation' (fig. 2a)")
        rows.append([f"{size}^3 ({size // S}x)", len(runs), n_tau, num(vals[size]),
                     pm(nanmean(rm[:, -1]), nanstd(rm[:, -1])),
                     pm(nanmean(dl[:, -1]), nanstd(dl[:, -1])), paper])
    ratio = vals[L] / vals[S] if vals[S] > 0 else float("nan")
    sec.checks.append(Check("2. domain", f"sequence MSE {L}^3 / {S}^3 (same length)", ratio,
                            "'slightly higher' than at the training size", 1.5, "max"))
    sec.checks.append(Check("2. domain", f"δ at t={num(t[-1])} in the {L}^3 box",
                            float(nanmean(stack(results[L], "delta")[:, -1])),
                            f"δ ≲ ε = {PAPER_DELTA_BOUND:g}", PAPER_DELTA_BOUND, "max",
                            " grid units"))

    path, rel = ctx.fig("domain.png")
    fig = figure(11, 3.2)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for size, runs in results.items():
        band(ax1, t[1:], stack(runs, "delta")[:, 1:], f"δ, {size}^3")
        band(ax1, t[1:], stack(runs, "rmse")[:, 1:], f"RMSE, {size}^3", "--")
    ax1.set_title("error vs t", fontsize=8)
    finish(ax1)
    if last is not None:
        gt, crnn = last
        up = upsample(crnn, ctx.model.info.downscale)
        for ax, vol, name in ((ax2, gt, cfg.short_solver), (ax3, up, "CRNN")):
            ax.imshow(vol[vol.shape[0] // 2], vmin=0, vmax=1, cmap="RdBu_r", interpolation="nearest")
            ax.set_title(f"{name}, {L}^3 mid z-slice, t={num(t[-1])}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    save_png(fig, path)

    val = ctx.val_loss
    sec.body = "\n\n".join([
        f"Held-out Perlin ICs in the training box ({S}^3) and in a {cfg.domain_factor}x larger "
        f"periodic box ({L}^3), both evolved for {n_tau} tau ({cfg.domain_time_factor}x the "
        f"training length, as in the paper's fig. 2a) by the {cfg.short_solver} solver and the "
        "CRNN. Sequence MSE = mean over frames 1..n of the model-grid MSE (the training loss); "
        "RMSE and δ at the last frame on the full grid.",
        table(["box", "ICs", "n_tau", "sequence MSE (model grid)", "RMSE end", "δ end [grid units]",
                "paper"], rows),
        f"Training reference: best validation loss of the model (model-grid MSE over the training "
        f"length) = {num(val)}. Sequence MSE ratio {L}^3 / {S}^3 = {num(ratio)}.",
        f"![domain extrapolation]({rel})",
    ])
    return sec
