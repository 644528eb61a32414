"""Make docs/evolution.gif: a solver vs CRNN run as the plugin's "Export movie" records it.

Seeds a Perlin volume with "Seed volume", evolves it with "Evolve and compare" (spectral solver
in blue, the CRNN in orange, side by side, camera fitted and tilted by the widget) and exports
the run with the widget's own movie export (every frame, ``t`` in the corner). Deterministic for
a given model: rerun it after the shipped model changes. Needs a display with OpenGL; headless:

    xvfb-run -a -s "-screen 0 1600x1200x24" python scripts/movie.py

``-o run.mp4`` writes an MP4 instead (needs imageio-ffmpeg).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from screenshot import REPO, add_run_arguments, evolved_viewer, wait


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, REPO / "docs" / "evolution.gif", "1400x640")
    parser.add_argument("--width", type=int, default=480, help="movie width in pixels")
    parser.add_argument("--fps", type=float, default=8.0, help="frames per second")
    parser.add_argument("--max-mb", type=float, default=2.0, help="largest file size")
    args = parser.parse_args(argv)

    width, height = (int(v) for v in args.window.split("x"))
    viewer, app, panels = evolved_viewer(args, width, height, docked=False)
    evolve = panels["Evolve and compare"]
    if not evolve.export_movie(args.out, fps=args.fps, width=args.width):
        return 1
    wait(app, lambda: evolve.movie is None)
    out = Path(args.out)
    if not out.is_file():
        print("error: the movie was not written", file=sys.stderr)
        return 1
    size_mb = out.stat().st_size / 2**20
    print(f"{out}: {size_mb:.2f} MB, {evolve.n_frames} frames")
    viewer.close()
    return 0 if size_mb <= args.max_mb else 1


if __name__ == "__main__":
    sys.exit(main())
