"""Zarr phase-field sequences and atomic file helpers.

A *sequence store* is a zarr array ``(T, Z, Y, X) float32`` in a folder (``run.zarr``), chunked
one frame per chunk, whose attributes hold the physics (``tau``, ``eps``, ``mobility``, ``dt``,
``solver``), the initial-condition parameters (``seed``, a free-form dict), the package
``version`` and the bookkeeping written here: ``chflow_format`` (marks the store as ours),
``complete`` and ``n_frames`` (set when the writer closes, so truncated stores are detected),
``frame_sha256`` (a checksum of each frame's float32 bytes, so corrupted chunks are detected) and
``interrupted`` (set when a run stopped before its end: such a store is never ``complete``).

Overwriting is atomic: a new store replacing an existing one is written beside it
(``<name>.partial-<pid>``) and swapped in only once complete, so a kill or an error mid-run keeps
the previous result.

Stores are written in zarr format 2, which both zarr-python 2.16+ and 3.x read and write.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from napari_chflow import __version__

FORMAT = 1
FORMAT_KEY = "chflow_format"
RESERVED_ATTRS = (FORMAT_KEY, "complete", "n_frames", "version", "frame_sha256", "interrupted")
STANDARD_ATTRS = ("tau", "eps", "mobility", "dt", "solver", "seed")
_ZARR3 = int(zarr.__version__.split(".")[0]) >= 3

__all__ = [
    "SequenceFormatError",
    "SequenceExistsError",
    "Sequence",
    "write_sequence",
    "SequenceWriter",
    "open_sequence",
    "read_sequence",
    "is_sequence_store",
    "frame_checksum",
    "atomic_dir",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "portable_path",
]


class SequenceFormatError(ValueError):
    """A path is not a readable chflow sequence store (missing, foreign, truncated)."""


class SequenceExistsError(ValueError):
    """The output path already exists and ``overwrite`` was not requested."""


# --------------------------------------------------------------------------- atomic helpers


def _fsync_path(path: Path, directory: bool = False) -> None:
    """Flush a file (or, on POSIX, a directory entry table) to disk."""
    if directory and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath), directory=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def partial_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_dir` builds ``path`` before renaming: ``<name>.partial-<pid>``."""
    path = Path(path)
    return path.with_name(f"{path.name}.partial-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Remove ``<name>.partial-<pid>`` / ``<name>.old-<pid>-*`` left beside ``path`` by a killed
    process (its pid no longer runs); those of running processes are left alone."""
    if not path.parent.is_dir():
        return
    prefix = f"{path.name}."
    for sibling in path.parent.iterdir():
        rest = sibling.name[len(prefix):] if sibling.name.startswith(prefix) else ""
        kind, _, tail = rest.partition("-")
        pid = tail.split("-")[0]
        if kind in ("partial", "old") and pid.isdigit() and int(pid) != os.getpid() \
                and not _pid_alive(int(pid)):
            _remove(sibling)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the finished folder ``tmp`` at ``path``, replacing what is there; the old content is
    moved aside first and deleted only after the rename, so ``path`` always holds one whole
    version."""
    _fsync_tree(tmp)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f"{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_path(path.parent, directory=True)
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder atomically: yield ``<path>.partial-<pid>`` to write into; on success it is
    fsynced and renamed to ``path`` (replacing an existing ``path`` only if ``overwrite``); on an
    exception the partial folder is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass overwrite=True to replace it")
    tmp = partial_path(path)
    _remove(tmp)
    _remove_stale_siblings(path)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if not tmp.is_dir():
            raise FileNotFoundError(f"atomic_dir: nothing was written to {tmp}")
        _swap_in(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], Any]) -> Path:
    """Write a file atomically: ``write_fn(tmp_path)`` writes a temporary file in the same folder
    (same suffix as ``path``), which is fsynced and ``os.replace``-d onto ``path``. Readers see the
    old file or the new one, never a partial one; on an exception the temporary file is removed.
    Example: ``atomic_write("ckpt.pt", lambda p: torch.save(state, p))``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        write_fn(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_write: write_fn did not create {tmp}")
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except BaseException:
        _remove(tmp)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def portable_path(path: str | os.PathLike | None, root: str | os.PathLike | None = None,
                  digest: bool = True, sha256: str | None = None) -> str:
    """How a report records ``path`` so that it means something on another machine: relative
    to the project ``root`` (default: the folder holding this package's source checkout, else
    the working directory) when inside it, else the file name with its sha256 (first 16 hex
    digits; of the file if it is here, else the recorded ``sha256``; left out with
    ``digest=False``). Names that are not paths (``"default"``) come back unchanged."""
    if path is None:
        return "none"
    text = os.fspath(path)
    p = Path(text).expanduser()
    if not p.is_absolute() and not p.exists():
        return text  # a relative name or a model name: already portable
    root = Path(root) if root is not None else _project_root()
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        pass
    if digest and p.is_file():
        sha256 = file_sha256(p)
    return f"{p.name} (sha256 {sha256[:16]})" if digest and sha256 else p.name


def _project_root() -> Path:
    """The source checkout holding this package (it has a pyproject.toml), else the cwd."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with UTF-8 ``text`` (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- zarr plumbing


def _jsonable(value: Any, key: str) -> Any:
    """numpy scalars/arrays, tuples and paths -> plain JSON types; anything else is an error."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        items = value.tolist() if isinstance(value, np.ndarray) else value
        return [_jsonable(v, key) for v in items]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"attribute {key!r} is {value}: store finite numbers (or None) in attrs")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(
        f"attribute {key!r} has type {type(value).__name__}, which JSON cannot store: "
        "convert it to a number, string, list or dict"
    )


def _user_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    attrs = dict(attrs or {})
    clash = [k for k in RESERVED_ATTRS if k in attrs]
    if clash:
        raise ValueError(f"attrs may not set {clash}: napari_chflow.io manages them, drop them")
    return {str(k): _jsonable(v, str(k)) for k, v in attrs.items()}


def _create_array(path: Path, frame_shape: tuple[int, int, int], attrs: dict[str, Any]):
    """Empty ``(0, Z, Y, X) float32`` zarr-v2 array, one chunk per frame, NaN fill, every chunk
    stored (so a missing chunk always means a missing frame)."""
    kwargs: dict[str, Any] = dict(
        shape=(0, *frame_shape), chunks=(1, *frame_shape), dtype="float32", fill_value=np.nan
    )
    if _ZARR3:
        config = {"write_empty_chunks": True}
        arr = zarr.create(store=str(path), zarr_format=2, config=config, attributes=attrs, **kwargs)
    else:  # pragma: no cover - exercised only with zarr 2
        arr = zarr.create(store=str(path), write_empty_chunks=True, **kwargs)
        arr.attrs.update(attrs)
    return arr


def _update_attrs(arr, attrs: dict[str, Any]) -> None:
    if _ZARR3:
        arr.update_attributes(attrs)
    else:  # pragma: no cover
        arr.attrs.update(attrs)


FILE_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".h5", ".hdf5", ".nc", ".mat", ".vti", ".vtk",
                 ".raw", ".png", ".csv", ".txt", ".json")
"""Names of single files, which a sequence store (a folder) must not take: ``out.npy`` written as
a zarr folder would be mistaken for a NumPy file by everything that reads it later."""


def _check_free(path: Path, overwrite: bool) -> None:
    """Raise if ``path`` is named like a single file (:data:`FILE_SUFFIXES`) or exists (unless
    ``overwrite``); ``overwrite`` replaces only a chflow sequence store (or an empty folder), never
    a file, another folder or someone else's zarr."""
    if path.suffix.lower() in FILE_SUFFIXES:
        raise SequenceFormatError(
            f"{path}: a chflow sequence is a folder (a zarr store), not a {path.suffix} file; "
            f"name the output like {path.with_suffix('.zarr').name}"
        )
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise SequenceExistsError(
            f"{path} already exists: pass overwrite=True (CLI: --overwrite) to replace it, "
            "or choose another output path"
        )
    if not path.is_dir():
        raise SequenceExistsError(
            f"{path} is a file, not a chflow sequence store; refusing to overwrite it: choose "
            "an output path ending in .zarr (or delete the file yourself)"
        )
    if any(path.iterdir()) and not is_sequence_store(path):
        what = "a zarr store" if _zarr_kind(path) else "a non-empty folder"
        raise SequenceExistsError(
            f"{path} is {what} that is not a chflow sequence; refusing to overwrite it: "
            "choose another output path ending in .zarr"
        )


def frame_checksum(frame: np.ndarray) -> str:
    """sha256 (hex) of a frame's float32 little-endian bytes in C order: what is recorded in a
    store's ``frame_sha256`` when the frame is written and compared when it is read."""
    data = np.ascontiguousarray(frame, dtype="<f4")
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


# --------------------------------------------------------------------------- writing


class SequenceWriter:
    """Stream frames ``(Z, Y, X)`` into a new sequence store at ``path``, growing T by one per
    :meth:`append`. :meth:`close` marks the store complete; if the writer is never closed (crash,
    kill) or the ``with`` block raises, the store stays incomplete (marked ``interrupted``) and
    :func:`open_sequence` refuses it. With ``overwrite=True`` an existing store is replaced only
    by a complete one: the frames go to a sibling folder swapped in by :meth:`close`, and an
    interrupted run leaves the old store as it was. One thread should own a writer (e.g. a GUI
    worker thread).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        frame_shape: tuple[int, int, int],
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        frame_shape = tuple(int(n) for n in frame_shape)
        if len(frame_shape) != 3 or min(frame_shape) < 1:
            raise ValueError(f"frame_shape must be (Z, Y, X) of positive sizes, got {frame_shape}")
        self.frame_shape = frame_shape
        user = _user_attrs(attrs)
        _check_free(self.path, overwrite)
        self.replacing = self.path.exists() or self.path.is_symlink()
        self._target = partial_path(self.path) if self.replacing else self.path
        _remove(self._target)
        _remove_stale_siblings(self.path)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        meta = {**user, FORMAT_KEY: FORMAT, "version": __version__}
        meta.update(complete=False, n_frames=None)
        self._arr = _create_array(self._target, frame_shape, meta)
        self._sums: list[str] = []
        self.n_frames = 0
        self.closed = False

    def append(self, frame: np.ndarray) -> None:
        """Write one frame ``(Z, Y, X)`` (cast to float32) as frame number ``n_frames``."""
        if self.closed:
            raise ValueError(f"cannot append to {self.path}: the writer is closed; open a new one")
        frame = np.asarray(frame, dtype=np.float32)
        if frame.shape != self.frame_shape:
            raise ValueError(
                f"frame has shape {frame.shape} but {self.path} holds frames of shape "
                f"{self.frame_shape}: "
                "append frames of the same (Z, Y, X) size"
            )
        t = self.n_frames
        self._arr.resize((t + 1, *self.frame_shape))
        self._arr[t] = frame
        self._sums.append(frame_checksum(frame))
        self.n_frames = t + 1

    def __len__(self) -> int:
        return self.n_frames

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add or change user attributes (e.g. final statistics) before closing."""
        _update_attrs(self._arr, _user_attrs(attrs))

    def close(self) -> None:
        """Mark the store complete with its current frame count and put it at ``path``
        (replacing the old store when overwriting); idempotent."""
        if not self.closed:
            _update_attrs(self._arr, {"complete": True, "n_frames": self.n_frames,
                                      "frame_sha256": self._sums})
            self.closed = True
            if self.replacing:
                _swap_in(self._target, self.path)

    def close_interrupted(self) -> bool:
        """End a run that stopped before its end (Ctrl-C, an error). A new store keeps its frames,
        marked ``interrupted`` and never ``complete`` (:func:`open_sequence` refuses it unless
        ``allow_incomplete=True``); when overwriting, the unfinished frames are dropped and the
        old store stays. Returns whether the frames were kept at ``path``."""
        if self.closed:
            return False
        self.closed = True
        if self.replacing:
            _remove(self._target)
            return False
        _update_attrs(self._arr, {"interrupted": True, "n_frames": self.n_frames,
                                  "frame_sha256": self._sums})
        return True

    def __enter__(self) -> SequenceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # a failed write must not look finished, nor replace a finished one
            self.close_interrupted()


def write_sequence(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``frames`` (array ``(T, Z, Y, X)`` or an iterable of ``(Z, Y, X)`` frames) to a new
    sequence store, atomically: the store appears at ``path`` only once complete, and an existing
    store is replaced only after the new one is fully written (``overwrite=True``).
    """
    path = Path(path)
    user = _user_attrs(attrs)
    _check_free(path, overwrite)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"no frames to write to {path}: pass at least one (Z, Y, X) frame")
    first = np.asarray(first, dtype=np.float32)
    if first.ndim != 3:
        raise ValueError(
            f"frames must be (T, Z, Y, X) or a list of (Z, Y, X) frames; got a frame of shape "
            f"{first.shape}"
        )
    with atomic_dir(path, overwrite=overwrite) as tmp:
        with SequenceWriter(tmp, first.shape, user) as writer:
            writer.append(first)
            for frame in it:
                writer.append(frame)
    return path


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _zarr_kind(path: Path) -> str | None:
    """"array", "group" or None (not a zarr store), from the metadata files alone."""
    if (path / ".zarray").is_file():
        return "array"
    if (path / ".zgroup").is_file():
        return "group"
    meta = _read_json(path / "zarr.json")
    if meta is not None:
        return meta.get("node_type") if meta.get("node_type") in ("array", "group") else None
    return None


def _raw_attrs(path: Path) -> dict:
    """Attributes straight from the metadata files (v2 ``.zattrs`` or v3 ``zarr.json``)."""
    if (path / ".zarray").is_file():
        return _read_json(path / ".zattrs") or {}
    return (_read_json(path / "zarr.json") or {}).get("attributes") or {}


def is_sequence_store(path: str | os.PathLike) -> bool:
    """Cheap check (metadata files only) that ``path`` is a zarr array marked as a chflow sequence.
    It says nothing about completeness: :func:`open_sequence` checks that and explains problems."""
    path = Path(path)
    return path.is_dir() and _zarr_kind(path) == "array" and FORMAT_KEY in _raw_attrs(path)


def _missing_frames(path: Path, arr) -> list[int]:
    """Frame indices whose chunk files are absent (v2 layout: checked on disk, key by key)."""
    meta = _read_json(path / ".zarray")
    shape, chunks = tuple(arr.shape), tuple(arr.chunks)
    grid = [range(math.ceil(s / c)) for s, c in zip(shape, chunks)]
    if meta is None:  # zarr v3 layout (not written by us): count only
        n_chunks = math.prod(len(g) for g in grid)
        return [] if arr.nchunks_initialized == n_chunks else [-1]
    sep = meta.get("dimension_separator") or "."
    missing = set()
    for idx in itertools.product(*grid):
        if not (path / sep.join(map(str, idx))).is_file():
            missing.add(idx[0] * chunks[0])
    return sorted(missing)


@dataclass(frozen=True, eq=False)
class Sequence:
    """An opened sequence store: ``phi`` is the lazy read-only zarr array ``(T, Z, Y, X) float32``
    (index it to load frames, e.g. ``seq.phi[-1]``), ``attrs`` its attributes."""

    path: Path
    phi: Any
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.phi.shape[0])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.phi.shape)

    def frame(self, t: int, verify: bool = True) -> np.ndarray:
        """Frame ``t`` as a ``(Z, Y, X) float32`` numpy array, checked against its recorded
        checksum (``verify``; stores written before checksums existed are not checked)."""
        n = len(self)
        if not -n <= t < n:
            raise IndexError(f"frame {t} is outside 0..{n - 1} of {self.path}")
        t = t % n
        frame = _decode(self, lambda: np.asarray(self.phi[t], dtype=np.float32), f"frame {t}")
        if verify:
            self._check_frame(t, frame)
        return frame

    def frames(self, verify: bool = True) -> np.ndarray:
        """All frames ``(T, Z, Y, X) float32``, each checked against its recorded checksum."""
        phi = _decode(self, lambda: np.asarray(self.phi[...], dtype=np.float32), "its frames")
        if verify:
            for t in range(len(phi)):
                self._check_frame(t, phi[t])
        return phi

    def verify(self) -> None:
        """Read every frame and compare it with its recorded checksum (one frame in memory at a
        time); raise :class:`SequenceFormatError` naming the first bad frame."""
        for t in range(len(self)):
            self.frame(t)

    def _check_frame(self, t: int, frame: np.ndarray) -> None:
        sums = self.attrs.get("frame_sha256")
        if not isinstance(sums, list) or t >= len(sums):
            return
        if frame_checksum(frame) != sums[t]:
            raise SequenceFormatError(
                f"{self.path}: frame {t} does not match its recorded checksum (the store was "
                "corrupted or edited on disk): regenerate it"
            )


def _decode(seq: Sequence, read: Callable[[], np.ndarray], what: str) -> np.ndarray:
    """``read()``, with a failure to decode a chunk reported as :class:`SequenceFormatError`."""
    try:
        return read()
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # zarr / numcodecs raise many types for damaged chunks
        detail = (str(err).strip().splitlines() or [""])[0][:120]
        raise SequenceFormatError(
            f"{seq.path}: {what} cannot be decoded ({type(err).__name__}: {detail}): a chunk "
            "file is damaged; regenerate the store"
        ) from None


def open_sequence(path: str | os.PathLike, allow_incomplete: bool = False) -> Sequence:
    """Open a sequence store lazily, checking that it is ours and complete.

    ``allow_incomplete=True`` opens a store whose writer never finished (or that lost chunks):
    use it to salvage frames; missing frames read as NaN.
    """
    path = Path(path)
    hint = "a chflow sequence is a .zarr folder written by write_sequence / `chflow simulate -o`"
    if not path.exists():
        raise SequenceFormatError(f"{path} does not exist: check the path ({hint})")
    if not path.is_dir():
        raise SequenceFormatError(f"{path} is a file, not a zarr folder: {hint}")
    kind = _zarr_kind(path)
    if kind is None:
        raise SequenceFormatError(
            f"{path} is not a zarr store (no .zarray or zarr.json inside): {hint}"
        )
    if kind == "group":
        raise SequenceFormatError(
            f"{path} is a zarr group, not a chflow sequence array: open the array inside it with "
            "zarr, or convert it with napari_chflow.io.write_sequence"
        )
    attrs = _raw_attrs(path)
    fmt = attrs.get(FORMAT_KEY)
    if fmt is None:
        raise SequenceFormatError(
            f"{path} is a zarr array but not a chflow sequence (no {FORMAT_KEY!r} attribute): "
            "convert it with napari_chflow.io.write_sequence(path, frames, attrs)"
        )
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise SequenceFormatError(
            f"{path} uses chflow sequence format {fmt!r}, newer than this napari-chflow "
            f"({__version__}, format {FORMAT}) reads: upgrade napari-chflow"
        )
    try:
        arr = zarr.open_array(store=str(path), mode="r")
    except Exception as err:  # zarr raises several types for broken metadata
        raise SequenceFormatError(
            f"{path} has unreadable zarr metadata ({type(err).__name__}: {err}): "
            "regenerate the sequence"
        ) from err
    if arr.ndim != 4 or arr.dtype != np.float32:
        raise SequenceFormatError(
            f"{path} holds a {arr.ndim}D {arr.dtype} array of shape {arr.shape}, expected "
            "(T, Z, Y, X) float32: regenerate it with napari_chflow.io.write_sequence"
        )
    if not allow_incomplete:
        _check_complete(path, arr, attrs)
    return Sequence(path=path, phi=arr, attrs=dict(attrs))


def _check_complete(path: Path, arr, attrs: dict) -> None:
    t = int(arr.shape[0])
    salvage = "or open_sequence(path, allow_incomplete=True) to read what is there"
    if attrs.get("interrupted"):
        raise SequenceFormatError(
            f"{path} is incomplete: the run was interrupted after {t} frame(s), before its end: "
            f"rerun it with overwrite=True (CLI: --overwrite), {salvage}"
        )
    if not attrs.get("complete"):
        raise SequenceFormatError(
            f"{path} is incomplete: its writer never finished ({t} frames written): rerun the "
            f"simulation with overwrite=True (CLI: --overwrite), {salvage}"
        )
    recorded = attrs.get("n_frames")
    if recorded != t:
        raise SequenceFormatError(
            f"{path} records n_frames={recorded} but holds {t} frames (truncated or edited): "
            f"regenerate it with overwrite=True (CLI: --overwrite), {salvage}"
        )
    if t == 0:
        raise SequenceFormatError(
            f"{path} holds no frames (it was closed before any frame was written): regenerate it"
        )
    missing = _missing_frames(path, arr)
    if missing:
        listed = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        plural = "s" if len(missing) > 1 else ""
        which = "some frames" if missing == [-1] else f"frame{plural} {listed}"
        raise SequenceFormatError(
            f"{path} is missing the chunk files of {which} (of {t}): the store was truncated or "
            f"partly deleted; regenerate it with overwrite=True (CLI: --overwrite), {salvage}"
        )


def read_initial_condition(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """The initial condition in ``path``: the last frame of a sequence store, or the array of a
    ``.npy`` file holding one ``(Z, Y, X)`` volume of finite numbers. Returns ``(phi, attrs)``,
    phi ``(Z, Y, X)`` float32 (attrs: the store's, or ``{}`` for a ``.npy``)."""
    path = Path(path)
    if path.suffix.lower() != ".npy" or path.is_dir():
        seq = open_sequence(path)
        return seq.frame(-1), dict(seq.attrs)
    if not path.exists():
        raise SequenceFormatError(f"{path} does not exist: check the path")
    try:
        phi = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise SequenceFormatError(
            f"{path} is not a plain NumPy array ({err}): save phi with numpy.save") from None
    if phi.ndim != 3 or min(phi.shape) < 1 or not np.issubdtype(phi.dtype, np.number):
        raise SequenceFormatError(
            f"{path} holds an array of shape {phi.shape} and dtype {phi.dtype}: an initial "
            "condition is one (Z, Y, X) volume of numbers")
    phi = phi.astype(np.float32)
    if not np.isfinite(phi).all():
        raise SequenceFormatError(f"{path} holds NaN or infinite values: an initial condition "
                                  "must be finite everywhere")
    return phi, {}


def read_sequence(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Load a whole sequence: ``(phi (T, Z, Y, X) float32, attrs)``, every frame checked against
    its recorded checksum (:class:`SequenceFormatError` if one was corrupted)."""
    seq = open_sequence(path)
    return seq.frames(), seq.attrs
