"""Export a run of "Evolve and compare" as a movie (``.gif`` or ``.mp4``).

:class:`MovieExport` steps the viewer through the run's frames on the GUI thread, one frame per
event-loop turn (napari renders there; Cancel and the rest of the GUI stay live between frames),
writes ``t`` into napari's text overlay and takes a screenshot of the canvas. A
:class:`._common.Job` encodes the screenshots meanwhile (:class:`MovieWriter`: Pillow for GIF,
imageio-ffmpeg for MP4) and writes the file atomically: a cancelled or failed export leaves no
file. The viewer's time step and text overlay are restored afterwards.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

SUFFIXES = (".gif", ".mp4")
_END, _QUEUE = None, 4  # end-of-movie marker; screenshots waiting for the encoder at most


def has_mp4() -> bool:
    """Whether MP4 can be written (the ``imageio-ffmpeg`` package ships an ffmpeg binary)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


def check_movie_path(path) -> str | None:
    """``None`` if a movie can be written to ``path``, else the message to show."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        return f"Save the movie as .gif or .mp4: '{path.name}' has neither ending"
    if suffix == ".mp4" and not has_mp4():
        return "Save the movie as .gif (.mp4 needs the imageio-ffmpeg package)"
    if not path.parent.is_dir():
        return f"Choose an existing folder for the movie: {path.parent} does not exist"
    return None


class MovieWriter:
    """Frames ``(H, W, 3|4) uint8`` in, a ``.gif`` or ``.mp4`` at ``path`` out (written by
    :meth:`close`, atomically). Frames are resized to ``width`` pixels (aspect kept; for MP4
    both sides rounded to multiples of 16) at ``fps`` frames per second; GIFs loop."""

    def __init__(self, path, fps: float = 8.0, width: int | None = 640) -> None:
        self.path, self.fps, self.width = Path(path), float(fps), width
        self.mp4 = self.path.suffix.lower() == ".mp4"
        self.frames: list = []

    def _resized(self, frame: np.ndarray):
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
        w, h = image.size
        if self.width and w != self.width:
            h, w = max(round(h * self.width / w), 2), self.width
        if self.mp4:
            w, h = max(16, w // 16 * 16), max(16, h // 16 * 16)
        if (w, h) != image.size:
            image = image.resize((w, h), Image.Resampling.LANCZOS)
        return image

    def add(self, frame: np.ndarray) -> None:
        self.frames.append(self._resized(frame))

    def close(self) -> Path:
        """Encode all frames into :attr:`path` (atomically); returns the path."""
        from napari_chflow.io import atomic_write

        if not self.frames:
            raise ValueError("no frames to write")
        return atomic_write(self.path, self._write_mp4 if self.mp4 else self._write_gif)

    def _write_gif(self, tmp: Path) -> None:
        from PIL import Image

        # one palette for the whole movie (from a few frames): no flicker, smaller files
        sample = [self.frames[i] for i in np.linspace(0, len(self.frames) - 1, 4).astype(int)]
        strip = Image.new("RGB", (sample[0].width, sample[0].height * len(sample)))
        for i, image in enumerate(sample):
            strip.paste(image, (0, i * image.height))
        palette = strip.quantize(colors=96, method=Image.Quantize.MEDIANCUT)
        frames = [image.quantize(palette=palette, dither=Image.Dither.NONE)
                  for image in self.frames]
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                       duration=round(1000 / self.fps), optimize=False, disposal=1)

    def _write_mp4(self, tmp: Path) -> None:
        import imageio.v2 as iio

        writer = iio.get_writer(tmp, format="FFMPEG", fps=self.fps, codec="libx264", quality=7,
                                macro_block_size=16, pixelformat="yuv420p")
        try:
            for image in self.frames:
                writer.append_data(np.asarray(image))
        finally:
            writer.close()


def _encode_job(job, frames: queue.Queue, path, fps: float, width: int | None):
    """Job: take screenshots from ``frames`` until the end marker, then write the movie.
    Returns the path, or None when stopped (nothing is written)."""
    writer = MovieWriter(path, fps, width)
    while not job.stopped.is_set():
        try:
            frame = frames.get(timeout=0.05)
        except queue.Empty:
            continue
        if frame is _END:
            return writer.close()
        writer.add(frame)
    return None


def text_overlay(viewer):
    """napari's canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    return viewer.canvas.overlays.text


class MovieExport:
    """Record frames ``0 .. n_frames - 1`` of the viewer's time axis into ``path``; the overlay
    reads ``t = k * tau`` and ``label``. ``on_progress(frames done)`` and ``on_done(path or None
    when cancelled, error)`` run on the GUI thread."""

    def __init__(self, owner, viewer, path, n_frames: int, tau: float, label: str = "",
                 fps: float = 8.0, width: int | None = 640, on_progress=None, on_done=None):
        from ._common import Job

        self.viewer, self.path, self.n = viewer, Path(path), n_frames
        self.tau, self.label = tau, label
        self.on_progress, self.on_done = on_progress, on_done
        self.frames: queue.Queue = queue.Queue(maxsize=_QUEUE)
        self.job = Job(owner, _encode_job, self.frames, self.path, fps, width,
                       on_done=self._encoded, name="napari-chflow movie")
        self.k = 0
        self.cancelled = False
        self._timer = None
        self._owner = owner

    def start(self) -> None:
        from qtpy.QtCore import QTimer

        overlay = text_overlay(self.viewer)
        self._restore = {"step": self.viewer.dims.current_step[0],
                         "overlay": {k: getattr(overlay, k) for k in
                                     ("visible", "text", "position", "font_size", "color")}}
        overlay.position, overlay.font_size, overlay.color = "top_left", 12, "white"
        overlay.visible = True
        self._timer = QTimer(self._owner)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._step)
        self.job.start()
        self._timer.start(0)

    def _step(self) -> None:
        """One frame: move the time slider, label it, take the screenshot, queue it."""
        if self.cancelled or self.job.stopped.is_set():
            return
        if self.frames.full():  # the encoder is behind: look again soon
            self._timer.start(20)
            return
        self.viewer.dims.set_current_step(0, self.k)
        text_overlay(self.viewer).text = (f"t = {self.k * self.tau:g}" +
                                          (f"    {self.label}" if self.label else ""))
        self.frames.put(self.viewer.screenshot(canvas_only=True, flash=False))
        self.k += 1
        if self.on_progress is not None:
            self.on_progress(self.k)
        if self.k < self.n:
            self._timer.start(0)
        else:
            self.frames.put(_END)

    def cancel(self) -> None:
        """Stop recording; nothing is written."""
        self.cancelled = True
        if self._timer is not None:
            self._timer.stop()
        self.job.stop()
        if self.job.thread is None:  # never started
            self._encoded(None, None)

    def _encoded(self, path, error) -> None:
        self._put_back()
        if self.on_done is not None:
            self.on_done(None if self.cancelled else path, error)

    def _put_back(self) -> None:
        restore = getattr(self, "_restore", None)
        if restore is None:
            return
        overlay = text_overlay(self.viewer)
        for key, value in restore["overlay"].items():
            setattr(overlay, key, value)
        self.viewer.dims.set_current_step(0, restore["step"])
        self._restore = None
