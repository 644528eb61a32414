"""Solver vs CRNN from one initial condition: both sequences, their metric traces, a PNG and a CSV.

RMSE and interface displacement are evaluated on the full-resolution grid, the CRNN frames
upsampled (nearest) to it: the stricter of the paper's two conventions (section 3.3 vs appendix B).
F/V and mass of the CRNN are measured on its own grid with its voxel size (``spacing``), so they
are physical quantities comparable to the solver's, free of the staircase that upsampling adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import physics
from .io import SequenceWriter
from .metrics import traces
from .model import iter_rollout, upsample
from .plots import save_traces_csv, save_traces_png


@dataclass(frozen=True)
class Comparison:
    """Paths written by :func:`compare` and the metric traces (dicts of ``(T,)`` arrays)."""

    out_dir: Path
    solver_traces: dict
    crnn_traces: dict

    def summary(self) -> str:
        c = self.crnn_traces
        rel_f = np.abs(c["free_energy_density"] - c["free_energy_density_ref"]) / c["free_energy_density_ref"]
        return (
            f"wrote {self.out_dir}/(solver.zarr, crnn.zarr, compare.png, traces.csv)\n"
            f"t={c['t'][-1]:g}: RMSE {c['rmse'][-1]:.4f}, interface displacement {c['interface_displacement'][-1]:.3f} "
            f"grid units, max |dF/F| {rel_f.max():.3%}, mass drift {abs(c['mass'][-1] / c['mass'][0] - 1):.2e}"
        )


def paired_traces(gt: np.ndarray, nn: np.ndarray, downscale: int, eps: float = 3.0,
                  tau: float = 0.5) -> tuple[dict, dict]:
    """Traces of a solver sequence ``gt`` ``(T, Z, Y, X)`` and a CRNN sequence ``nn`` on its
    x1/``downscale`` grid ``(T, Z/f, Y/f, X/f)``: errors on the full grid (CRNN upsampled), F/V
    and mass of each on its own grid. Returns ``(gt_traces, nn_traces)``."""
    gt_tr = traces(gt, eps=eps, tau=tau)
    nn_tr = traces(nn, eps=eps, tau=tau, spacing=downscale)
    errors = traces(upsample(nn, downscale), ref=gt, eps=eps, tau=tau)
    nn_tr.update(rmse=errors["rmse"], interface_displacement=errors["interface_displacement"],
                 free_energy_density_ref=gt_tr["free_energy_density"])
    return gt_tr, nn_tr


def compare(phi0: np.ndarray, model, n_tau: int, out_dir, solver: str = "spectral", device=None,
            seed_attrs: dict | None = None, overwrite: bool = False, progress: bool = False) -> Comparison:
    """Run ``solver`` and ``model`` for ``n_tau`` from ``phi0`` ``(Z, Y, X)``; write to ``out_dir``."""
    out = Path(out_dir)
    info = model.info
    f = info.downscale
    phi0 = np.asarray(phi0, dtype=np.float32)
    if any(n % f for n in phi0.shape):
        raise ValueError(f"grid {phi0.shape} is not divisible by the model's downscale {f}: use a size that is")
    from .memory import check_memory

    # every frame of both runs is kept for the traces, plus the upsampled CRNN frames
    check_memory(3 * (int(n_tau) + 1) * phi0.size * 4,
                 f"comparing {n_tau} tau on a {'x'.join(map(str, phi0.shape))} grid",
                 fix="use fewer tau or a smaller grid")
    gt_frames = physics.iter_simulate(phi0, n_tau, tau=info.tau, solver=solver, eps=info.eps, device=device)
    nn_frames = iter_rollout(model, phi0, n_tau, device=device)
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be usable
    meta = {"tau": info.tau, "eps": info.eps, "mobility": info.mobility, "seed": seed_attrs}
    gt, nn = [], []
    model_shape = tuple(n // f for n in phi0.shape)
    with SequenceWriter(out / "solver.zarr", phi0.shape, attrs={**meta, "solver": solver}, overwrite=overwrite) as w_gt, \
         SequenceWriter(out / "crnn.zarr", model_shape, attrs={**meta, "solver": "crnn", "downscale": f,
                                                                   "coarse": info.coarse},
                        overwrite=overwrite) as w_nn:
        for a, b in tqdm(zip(gt_frames, nn_frames), total=n_tau + 1, disable=not progress, desc="solver + CRNN"):
            w_gt.append(a)
            w_nn.append(b)
            gt.append(a)
            nn.append(b)
    gt_tr, nn_tr = paired_traces(np.stack(gt), np.stack(nn), f, eps=info.eps, tau=info.tau)
    runs = {solver: gt_tr, "crnn": nn_tr}
    save_traces_png(out / "compare.png", runs, title=f"{solver} solver vs CRNN, {phi0.shape[0]}^3")
    save_traces_csv(out / "traces.csv", runs)
    return Comparison(out, gt_tr, nn_tr)

