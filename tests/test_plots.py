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


def test_trace_panels_fit_a_350_px_dock(figure_problems):
    """The Traces widget's figure at 350 x 650 px: one quantity per axis (RMSE in phi units and
    interface displacement in grid units apart), every label inside the figure, nothing over
    another axes, the legend above the data, at least two y tick labels per axis."""
    fig, plot = plots.trace_figure(3.5, 6.5, rows=4, fontsize=7, minor_ticks=False)
    runs = _traces(9)
    plot.update(runs, t_mark=2.0)
    assert figure_problems(fig) == []
    ylabels = [ax.get_ylabel() for ax in plot.axes]
    assert ylabels == [plots.YLABELS[p] for p in plots.TRACE_PANELS] and len(set(ylabels)) == 4
    rmse, shift = plot.axes[0], plot.axes[1]
    np.testing.assert_allclose(rmse.lines[0].get_ydata(), runs["crnn"]["rmse"][1:])
    np.testing.assert_allclose(shift.lines[0].get_ydata(),
                               runs["crnn"]["interface_displacement"][1:])
    assert rmse.get_yscale() == shift.get_yscale() == "linear"
    # one legend for all panels, one entry per run (same colour in every panel) and the guide
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["solver", "crnn", plots.GUIDE]
    colors = {line.get_label(): line.get_color() for ax in plot.axes for line in ax.lines
              if not line.get_label().startswith("_")}
    assert colors["crnn"] != colors["solver"]
    for ax in plot.axes:
        for line in ax.lines:
            if line.get_label() in colors:
                assert line.get_color() == colors[line.get_label()]


def test_trace_panels_read_at_page_size_too(figure_problems):
    """The PNG of `chflow compare` (2 x 2 panels, legend below, a title): readable as well."""
    fig, plot = plots.trace_figure(9.0, 6.5, rows=2, dpi=80, legend_loc="outside lower center")
    plot.update(_traces(10))
    fig.suptitle("spectral solver vs CRNN, 32^3")
    assert figure_problems(fig) == []
    plot.show_message("run 'Evolve and compare'")  # before any data: labels, a message
    assert figure_problems(fig) == [] or all("tick label" in p for p in figure_problems(fig))
