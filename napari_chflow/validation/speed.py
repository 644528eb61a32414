"""Experiment 6, speed and memory of the explicit solver, the spectral solver and the CRNN (paper
sec. 3.2, appendix A)."""

from __future__ import annotations

import torch

from .. import bench, physics
from ..model import iter_rollout
from .checks import PAPER_SPEEDUP, Check, num, table
from .context import Context, Section
from .figures import figure, finish, save_png


def speed_memory(ctx: Context) -> Section:
    cfg, model = ctx.config, ctx.model
    sizes = tuple(int(s) for s in cfg.bench_sizes)
    ctx.log(f"  sizes {', '.join(map(str, sizes))}: explicit, spectral, CRNN"
            + (" (each in a fresh process)" if cfg.memory else ""))
    if cfg.memory:
        timings = bench.isolated_timings(sizes, model=model, device=cfg.device, threads=cfg.threads)
    else:
        extra = {"crnn": lambda phi0, k: iter_rollout(model, phi0, k, device=cfg.device)}
        timings = bench.solver_timings(sizes, device=cfg.device, extra=extra)
    sec = Section("speed", "6. Speed and memory")
    r = bench.ratios(timings)
    rows = []
    for tm in timings:
        rr = r[(tm.method, tm.size)]
        mib = tm.peak_bytes / 2**20 if tm.peak_bytes is not None else float("nan")
        rows.append([tm.method, f"{tm.size}^3", tm.n_tau, num(tm.seconds_per_tau),
                     num(rr["speedup"]), num(mib), num(rr["memory"])])
    alphas = {m: bench.cost_exponent(timings, m) for m in dict.fromkeys(tm.method for tm in timings)}
    ref_size = ctx.spec.size if ctx.spec.size in sizes else max(sizes)
    speedup = r.get(("crnn", ref_size), {}).get("speedup", float("nan"))
    sec.checks += [
        Check("6. speed", f"CRNN speed-up vs explicit at {ref_size}^3 on {cfg.device or 'cpu'}",
              speedup, "≈ 10^3 on an RTX A4000 GPU vs their non-optimised explicit code",
              PAPER_SPEEDUP, "min", "x"),
        Check("6. speed", "CRNN cost exponent alpha (s/tau ~ N^alpha)",
              alphas.get("crnn", float("nan")),
              "linear in N (appendix A)", 1.2, "max"),
    ]

    path, rel = ctx.fig("speed.png")
    fig = figure(10, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    for m, a in alphas.items():
        pts = sorted((tm.size**3, tm.seconds_per_tau, tm.peak_bytes)
                     for tm in timings if tm.method == m)
        n = [p[0] for p in pts]
        ax1.plot(n, [p[1] for p in pts], "o-", label=f"{m} (N^{a:.2f})")
        if all(p[2] is not None for p in pts):
            ax2.plot(n, [max(p[2], 1) / 2**20 for p in pts], "o-", label=m)
    ax1.set_ylabel("s / tau")
    ax1.set_title("wall time per tau", fontsize=8)
    ax2.set_ylabel("peak extra MiB")
    ax2.set_title("peak memory" if cfg.memory else "peak memory (not measured)", fontsize=8)
    finish(ax1, "N = grid points", log_y=True)
    finish(ax2, "N = grid points", log_y=True)
    fig.tight_layout()
    save_png(fig, path)

    threads = cfg.threads or torch.get_num_threads()
    mem_note = ("Each (method, size) ran in a fresh process; peak memory = growth of the resident "
                "set (sampled every millisecond) over the idle process after imports and setup (CPU), or "
                "torch.cuda.max_memory_allocated over the allocation before the run (GPU)."
                if cfg.memory else "Timed in this process; memory not measured (memory=False).")
    sec.body = "\n\n".join([
        f"Seconds of wall time per tau of physical time (1-tau warm-up first), torch threads: "
        f"{threads} for every method, device {cfg.device or 'cpu'}. Explicit: the paper's Euler "
        f"scheme, dt = {physics.EXPLICIT_DT:g} (400 steps per tau); spectral: SBDF2, dt = "
        f"{physics.SPECTRAL_DT:g}; CRNN: one step per tau on the x1/{model.info.downscale} grid "
        f"(the size column is the full grid). Ratios are to the explicit solver of the same run. "
        + mem_note,
        table(["method", "size", "tau timed", "s / tau", "x faster than explicit", "peak MiB",
                "memory vs explicit"], rows),
        "Cost growth, s/tau ~ N^alpha over these sizes: "
        + ", ".join(f"{m} alpha = {num(a)}" for m, a in alphas.items())
        + " (paper, appendix A: CRNN linear in N on a GPU; pseudo-spectral N log N).",
        f"![speed]({rel})",
    ])
    return sec
