"""Figures of the validation report: size-capped PNGs, isosurface grids, mean ± std bands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .paired import nanmean, nanstd

MAX_PNG_BYTES = 300_000


def figure(w: float, h: float):
    """A matplotlib ``Figure`` of ``w`` x ``h`` inches at 80 dpi (no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=80)


def save_png(fig, path: str | Path, max_bytes: int = MAX_PNG_BYTES) -> Path:
    """Save ``fig`` as PNG, lowering the dpi until the file is below ``max_bytes``."""
    path = Path(path)
    for dpi in (80, 64, 50, 40, 30):
        fig.savefig(path, dpi=dpi)
        if path.stat().st_size < max_bytes:
            break
    return path


def _phase_box(vol: np.ndarray, spacing: float, level: float = 0.5) -> np.ndarray:
    """``[[x0, y0, z0], [x1, y1, z1]]`` bounding box (full-grid units) of ``vol >= level``."""
    idx = np.argwhere(vol >= level)
    if len(idx) == 0:
        return np.array([[0.0] * 3, [n * spacing for n in vol.shape[::-1]]])
    return np.array([idx.min(0)[::-1] * spacing, (idx.max(0)[::-1] + 1) * spacing], dtype=float)


def _draw_isosurface(ax, vol: np.ndarray, spacing: float, box: np.ndarray,
                     level: float = 0.5) -> None:
    """Shaded ``phi = level`` surface of ``vol`` ``(Z, Y, X)`` (the ``phi >= level`` phase) on 3D
    axes limited to ``box`` (see :func:`_phase_box`), x, y, z = X, Y, Z in full-grid units."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from skimage.measure import marching_cubes

    centre, half = box.mean(0), 0.5 * float((box[1] - box[0]).max()) + spacing
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1), zoom=1.25)
    ax.set_axis_off()
    ax.view_init(elev=15, azim=-60)
    if not vol.min() < level < vol.max():
        ax.text2D(0.5, 0.5, "no interface", transform=ax.transAxes, ha="center")
        return
    step = max(1, round(max(vol.shape) / 48))
    verts, faces, _, _ = marching_cubes(np.asarray(vol, np.float32), level,
                                        spacing=(spacing,) * 3, step_size=step)
    tri = verts[:, ::-1][faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    shade = 0.25 + 0.75 * np.abs(normal @ light)
    colors = np.clip(shade[:, None] * np.array([0.9, 0.45, 0.3])[None], 0, 1)
    ax.add_collection3d(Poly3DCollection(tri, facecolors=colors, edgecolors="none", linewidths=0))


def isosurface_figure(path: str | Path, rows: Sequence[tuple[str, Sequence[np.ndarray], float]],
                      times: Sequence[str], title: str = "") -> Path:
    """Grid of ``phi >= 0.5`` isosurfaces: one row per ``(label, volumes, spacing)``, one column
    per entry of ``times`` (column labels, e.g. ``"20 tau"``; volumes ``(Z, Y, X)``; ``spacing``
    in full-grid units, e.g. 2 for the CRNN grid).
    All panels share one cubic view: the bounding box of the phase over every volume."""
    import mpl_toolkits.mplot3d  # noqa: F401  (registers the 3d projection)

    boxes = np.stack([_phase_box(v, sp) for _, vols, sp in rows for v in vols])
    box = np.array([boxes[:, 0].min(0), boxes[:, 1].max(0)])
    ncol = len(times)
    fig = figure(1.8 * ncol + 0.4, 1.9 * len(rows) + 0.4)
    for r, (label, vols, spacing) in enumerate(rows):
        for c, (vol, t) in enumerate(zip(vols, times)):
            ax = fig.add_subplot(len(rows), ncol, r * ncol + c + 1, projection="3d")
            _draw_isosurface(ax, vol, spacing, box)
            ax.set_title(f"{label}, {t}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.9 if title else 0.97,
                        wspace=0.0, hspace=0.1)
    return save_png(fig, path)


def band(ax, t, values: np.ndarray, label: str, style: str = "-") -> None:
    """Mean over runs of ``values`` ``(n_runs, len(t))`` against ``t``, shaded ± one std."""
    m, s = nanmean(values), nanstd(values)
    (line,) = ax.plot(t, m, style, label=label)
    if values.shape[0] > 1:
        ax.fill_between(t, m - s, m + s, color=line.get_color(), alpha=0.2, lw=0)


def finish(ax, xlabel: str = "t", log_x: bool = True, log_y: bool = False) -> None:
    """Axis scales, x label, grid and (if anything is labelled) a legend."""
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
