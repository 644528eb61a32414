"""Make docs/screenshot.png: napari with the four napari-chflow dock widgets after a run.

Seeds a Perlin volume, evolves it with the spectral solver and the CRNN side by side, moves the
time slider to the last frame and saves the whole window. Needs a display with OpenGL; headless:

    xvfb-run -a -s "-screen 0 1600x1200x24" python scripts/screenshot.py

The CRNN is the shipped default model, or ``--checkpoint PATH``; without either an untrained
model is used (the picture then shows the GUI, not a meaningful prediction).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _wait(app, done, timeout: float = 600.0) -> None:
    start = time.monotonic()
    while not done():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() - start > timeout:
            raise TimeoutError("the run did not finish in time: lower --size or --n-tau")
    for _ in range(20):  # let the last redraws land
        app.processEvents()
        time.sleep(0.01)


def _checkpoint(arg: str | None) -> str:
    from napari_chflow.model import CRNN, available_pretrained, save_checkpoint
    from napari_chflow.widgets._compare import DEFAULT_MODEL

    if arg:
        return arg
    if "default" in available_pretrained():
        return DEFAULT_MODEL
    print("warning: no shipped model and no --checkpoint: using an untrained CRNN", file=sys.stderr)
    path = Path(tempfile.mkdtemp()) / "untrained.pt"
    return str(save_checkpoint(path, CRNN(), recipe={"untrained": True}, data={}))


def _save_png(image: np.ndarray, path: Path, max_bytes: int) -> None:
    """RGB PNG, quantised to a 256-colour palette if that is needed to stay under ``max_bytes``."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    if path.stat().st_size > max_bytes:
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", default=str(REPO / "docs" / "screenshot.png"))
    parser.add_argument("--size", type=int, default=64, help="seed grid N (N^3)")
    parser.add_argument("--n-tau", type=int, default=40, help="frames to evolve")
    parser.add_argument("--seed", type=int, default=2, help="Perlin random seed")
    parser.add_argument("--solver", default="spectral", choices=("explicit", "spectral"))
    parser.add_argument("--checkpoint", help="CRNN checkpoint (default: the shipped model)")
    parser.add_argument("--window", default="1600x1100", help="window size WxH in pixels")
    parser.add_argument("--zoom", type=float, default=0.75, help="zoom after fitting the view")
    parser.add_argument("--max-kb", type=int, default=300, help="largest PNG size")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-chflow")
    width, height = (int(v) for v in args.window.split("x"))
    viewer.window.resize(width, height)
    app = QApplication.instance()
    from napari_chflow.widgets import evolve, seed, traces, train

    widgets, docks = {}, {}
    for name, cls, area in (("Seed volume", seed.SeedWidget, "left"),
                            ("Train surrogate", train.TrainWidget, "left"),
                            ("Evolve and compare", evolve.EvolveWidget, "right"),
                            ("Traces", traces.TracesWidget, "right")):
        widgets[name] = cls(viewer)
        docks[name] = viewer.window.add_dock_widget(widgets[name], name=f"{name} (napari-chflow)",
                                                    area=area, tabify=name == "Train surrogate")

    seed = widgets["Seed volume"]
    seed.size.setValue(args.size)
    seed.params["Perlin noise"]["seed"].setValue(args.seed)
    seed.params["Perlin noise"]["scale"].setValue(args.size / 4)
    seed.add_seed()
    _wait(app, lambda: not seed.running and len(viewer.layers) > 0)

    evolve = widgets["Evolve and compare"]
    checkpoint = _checkpoint(args.checkpoint)
    if checkpoint in (evolve.model_combo.itemText(i) for i in range(evolve.model_combo.count())):
        evolve.model_combo.setCurrentText(checkpoint)
    else:
        evolve.select_checkpoint(checkpoint)
    evolve.solver_combo.setCurrentText(args.solver)
    evolve.n_tau.setValue(args.n_tau)
    if not evolve.run():
        return 1
    _wait(app, lambda: not evolve.running)
    if evolve.status != "done":
        print(f"error: the run ended with status {evolve.status!r}", file=sys.stderr)
        return 1

    viewer.layers[0].visible = False  # the seed sits under the solver volume
    viewer.layers.selection.active = evolve.layers["solver"]
    viewer.dims.set_current_step(0, args.n_tau)
    viewer.reset_view()
    camera = viewer.scene.camera
    camera.angles = (-10.0, 15.0, 95.0)
    camera.zoom *= args.zoom
    main_window = docks["Seed volume"].parentWidget()  # the QMainWindow holding the docks
    main_window.resizeDocks([docks["Seed volume"], docks["Evolve and compare"]], [340, 420],
                            Qt.Horizontal)
    main_window.resizeDocks([docks["Evolve and compare"], docks["Traces"]], [300, 800], Qt.Vertical)
    docks["Seed volume"].raise_()
    # the plots render in a background thread: wait until the latest drawing is on screen
    _wait(app, lambda: widgets["Traces"].view.idle and widgets["Train surrogate"].view.idle)
    out = Path(args.out)
    _save_png(viewer.screenshot(canvas_only=False, flash=False), out, args.max_kb * 1024)
    print(f"{out}: {out.stat().st_size / 1024:.0f} KB")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
