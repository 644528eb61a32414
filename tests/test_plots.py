"""Trace figures: PNG export is safe while other threads render (the GUI's render thread)."""

from __future__ import annotations

import threading

import numpy as np

from napari_chflow import plots


def _traces(k: int) -> dict:
    """Solver and CRNN traces whose magnitude (10^(k-10)) gives every figure its own tick labels."""
    t = np.arange(11) * 0.5
    scale = 10.0 ** (k - 10)
    fv = scale * (1 + t) ** -0.3
    crnn = {"t": t, "free_energy_density": 1.01 * fv, "mass": 1 + 1e-7 * t,
            "rmse": 0.01 * scale * (1 + t),
            "interface_displacement": 0.1 * scale * (1 + t),
            "free_energy_density_ref": fv}
    return {"solver": {"t": t, "free_energy_density": fv, "mass": np.ones_like(t)}, "crnn": crnn}


def test_png_export_from_several_threads_at_once(tmp_path):
    # matplotlib's mathtext parser (log-axis tick labels) is shared, unlocked state: without
    # plots.DRAW_LOCK, most of these 8 exports failed here (ParseException, IndexError)
    errors: list[BaseException] = []

    def export(j: int) -> None:
        for i in range(2):
            try:
                plots.save_traces_png(tmp_path / f"{j}_{i}.png", _traces(2 * j + i))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=export, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all((tmp_path / f"{j}_{i}.png").stat().st_size > 1000 for j in range(4) for i in range(2))
