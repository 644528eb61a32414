"""Make docs/screenshot.png: napari with the four napari-chflow dock widgets after a run.

Docks the panels as ``napari -w napari-chflow`` does, seeds a Perlin volume, evolves it with the
spectral solver and the CRNN side by side (the widget fits and tilts the camera), moves the time
slider to the last frame and saves the whole window. Needs a display with OpenGL; headless:

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


def wait(app, done, timeout: float = 600.0) -> None:
    """Process Qt events until ``done()`` (then a little longer, for the last redraws)."""
    start = time.monotonic()
    while not done():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() - start > timeout:
            raise TimeoutError("the run did not finish in time: lower --size or --n-tau")
    for _ in range(20):  # let the last redraws land
        app.processEvents()
        time.sleep(0.01)


def checkpoint(arg: str | None) -> str:
    """``arg``, else the shipped model, else an untrained CRNN saved to a temporary file."""
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


def evolved_viewer(args, width: int, height: int, docked: bool = True):
    """A napari window after a seed and a run made through the widgets as a user would (with
    the workflow docked, or with the panels kept out of the window: the canvas alone); returns
    ``(viewer, app, panels)`` or raises SystemExit on failure."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_chflow.widgets.evolve import EvolveWidget
    from napari_chflow.widgets.seed import SeedWidget
    from napari_chflow.widgets.workflow import dock_workflow

    viewer = napari.Viewer(title="napari-chflow")
    viewer.window.resize(width, height)
    app = QApplication.instance()
    if docked:
        panels = dock_workflow(viewer)  # what `napari -w napari-chflow` docks
    else:
        panels = {"Seed volume": SeedWidget(viewer), "Evolve and compare": EvolveWidget(viewer)}
    wait(app, lambda: True)

    seed = panels["Seed volume"]
    seed.size.value = args.size
    seed.params["Perlin noise"]["seed"].value = args.seed
    seed.params["Perlin noise"]["scale"].value = args.size / 4
    seed.add_seed()
    wait(app, lambda: not seed.running and len(viewer.layers) > 0)

    evolve = panels["Evolve and compare"]
    model = checkpoint(args.checkpoint)
    if model in evolve.model.choices:
        evolve.model.value = model
    else:
        evolve.select_checkpoint(model)
    evolve.solver.value = args.solver
    evolve.n_tau.value = args.n_tau
    if not evolve.run():
        raise SystemExit(1)
    wait(app, lambda: not evolve.running)
    if evolve.status != "done":
        print(f"error: the run ended with status {evolve.status!r}", file=sys.stderr)
        raise SystemExit(1)
    return viewer, app, panels


def add_run_arguments(parser: argparse.ArgumentParser, out: Path, window: str) -> None:
    """The options of the run both scripts record: output path, seed, solver, model, window."""
    parser.add_argument("-o", "--out", default=str(out))
    parser.add_argument("--size", type=int, default=64, help="seed grid N (N^3)")
    parser.add_argument("--n-tau", type=int, default=40, help="frames to evolve")
    parser.add_argument("--seed", type=int, default=2, help="Perlin random seed")
    parser.add_argument("--solver", default="spectral", choices=("explicit", "spectral"))
    parser.add_argument("--checkpoint", help="CRNN checkpoint (default: the shipped model)")
    parser.add_argument("--window", default=window, help="window size WxH in pixels")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, REPO / "docs" / "screenshot.png", "1600x1100")
    parser.add_argument("--max-kb", type=int, default=300, help="largest PNG size")
    args = parser.parse_args(argv)

    width, height = (int(v) for v in args.window.split("x"))
    viewer, app, panels = evolved_viewer(args, width, height)
    evolve = panels["Evolve and compare"]
    viewer.layers.selection.active = evolve.layers["solver"]
    viewer.dims.set_current_step(0, args.n_tau)
    # the plots render in a background thread: wait until the latest drawing is on screen
    wait(app, lambda: panels["Traces"].view.idle and panels["Train surrogate"].view.idle)
    out = Path(args.out)
    _save_png(viewer.screenshot(canvas_only=False, flash=False), out, args.max_kb * 1024)
    print(f"{out}: {out.stat().st_size / 1024:.0f} KB")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
