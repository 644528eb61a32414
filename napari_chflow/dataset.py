"""The paper's training set (Lanzoni et al. 2024, section 2.1), sharded, resumable, atomic.

Each sequence is ``frames`` states ``(Z, Y, X)`` spaced by ``tau``, of a periodic ``size^3`` box
evolved by the Cahn-Hilliard solver from a periodic Perlin-noise initial condition whose mean
phi is drawn from N(0.5, 0.1). A share ``later_start_fraction`` of the sequences starts later in
the evolution: the noise first evolves for ``k * tau``, k uniform in ``[1, max_burn_in_tau]``.
Optionally (``shapes_fraction``, not in the paper) some sequences start from a slab or spheres.

Everything about sequence ``i`` (initial condition, burn-in) comes from
``np.random.default_rng([seed, i])`` (and ``[seed, i, 1]`` for shapes), so it does not depend
on sharding, worker count or order.

Layout of ``out_dir``::

    dataset.json                   config, train/val split, version (written first)
    sequences/seq_000042.zarr      one sequence store per index (see napari_chflow.io)

Each store appears only once fully written (``io.atomic_dir``); rerunning the same command
after an interruption skips the finished ones and produces the same data as an uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_chflow import __version__
from napari_chflow.io import (
    SequenceFormatError,
    SequenceWriter,
    atomic_dir,
    atomic_write_text,
    is_sequence_store,
    open_sequence,
)

DATASET_FILE = "dataset.json"
SEQUENCES_DIR = "sequences"
DATASET_FORMAT = 1
_SPLIT_STREAM = 0x53504C54  # rng stream of the train/val permutation ("SPLT"), apart from indices
_STALE = re.compile(r"^seq_(\d+)\.zarr\.(partial|old)-")

__all__ = ["DatasetConfig", "Dataset", "generate_dataset", "load_dataset", "sequence_params",
           "initial_condition", "split_indices", "sequence_path", "parse_shard", "dataset_command"]


@dataclass(frozen=True)
class DatasetConfig:
    """Dataset recipe. Lengths in grid units, times in model units (``tau`` between frames).

    Initial conditions are ``seeds.perlin``: each sequence draws a feature size (grid units) from
    ``perlin_scales`` and a number of fractal layers from ``perlin_layers``; ``perlin_amplitude``
    is the std of phi before clipping; the mean phi is drawn from N(``mean_phi``,
    ``mean_phi_std``) clipped to ``mean_phi_range``. A share ``shapes_fraction`` of the sequences
    starts instead from simple shapes at rest (:func:`shape_params`): a flat slab, which is an
    exact equilibrium, or a few spheres, which ripen slowly. They teach a surrogate that
    coarsened states barely move, which Perlin spinodal data alone shows rarely.
    """

    n_seq: int
    frames: int = 50
    size: int = 64
    tau: float = 0.5
    eps: float = 3.0
    mobility: float = 1.0
    solver: str = "explicit"
    dt: float | None = None
    seed: int = 0
    val_fraction: float = 0.3
    later_start_fraction: float = 0.5
    max_burn_in_tau: int = 50
    mean_phi: float = 0.5
    mean_phi_std: float = 0.1
    mean_phi_range: tuple[float, float] = (0.25, 0.75)
    perlin_scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    perlin_layers: tuple[int, ...] = (1, 2, 3)
    perlin_amplitude: float = 0.25
    shapes_fraction: float = 0.0

    def __post_init__(self) -> None:
        from napari_chflow.physics import SOLVERS

        object.__setattr__(self, "mean_phi_range", tuple(float(v) for v in self.mean_phi_range))
        object.__setattr__(self, "perlin_scales", tuple(float(v) for v in self.perlin_scales))
        object.__setattr__(self, "perlin_layers", tuple(int(v) for v in self.perlin_layers))
        lo, hi = self.mean_phi_range if len(self.mean_phi_range) == 2 else (1.0, 0.0)
        checks = [
            (self.n_seq >= 1, f"n_seq={self.n_seq}: generate at least 1 sequence (--n-seq)"),
            (self.n_seq < _SPLIT_STREAM, f"n_seq={self.n_seq} is too large: use fewer sequences"),
            (self.frames >= 2, f"frames={self.frames}: a sequence needs >= 2 frames (--frames)"),
            (self.size >= 4, f"size={self.size}: use a box of at least 4 voxels per side (--size)"),
            (all(math.isfinite(v) and v > 0 for v in (self.tau, self.eps, self.mobility)),
             "tau, eps and mobility must be positive: check --tau/--eps/--mobility"),
            (self.solver in SOLVERS, f"unknown solver {self.solver!r}: use {' or '.join(SOLVERS)}"),
            (self.dt is None or (math.isfinite(self.dt) and self.dt > 0),
             f"dt={self.dt}: use a positive step or None"),
            (0 <= self.val_fraction < 1, f"val_fraction={self.val_fraction}: use [0, 1)"),
            (0 <= self.later_start_fraction <= 1,
             f"later_start_fraction={self.later_start_fraction}: use a value in [0, 1]"),
            (self.max_burn_in_tau >= 1 or self.later_start_fraction == 0,
             f"max_burn_in_tau={self.max_burn_in_tau}: use >= 1, or later_start_fraction=0"),
            (0 < lo <= hi < 1, f"mean_phi_range={self.mean_phi_range}: use 0 < low <= high < 1"),
            (self.mean_phi_std >= 0, f"mean_phi_std={self.mean_phi_std}: use a non-negative value"),
            (len(self.perlin_scales) > 0 and min(self.perlin_scales) > 0,
             "perlin_scales must be a non-empty tuple of positive feature sizes"),
            (len(self.perlin_layers) > 0 and min(self.perlin_layers) >= 1,
             "perlin_layers must be a non-empty tuple of integers >= 1"),
            (self.perlin_amplitude >= 0, f"perlin_amplitude={self.perlin_amplitude}: use >= 0"),
            (0 <= self.shapes_fraction <= 1,
             f"shapes_fraction={self.shapes_fraction}: use a value in [0, 1] (--shapes-fraction)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid DatasetConfig: {message}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"dataset config has unknown fields {unknown} (written by a newer napari-chflow?): "
                "upgrade napari-chflow"
            )
        return cls(**data)


# --------------------------------------------------------------------------- recipe


def split_indices(config: DatasetConfig) -> tuple[list[int], list[int]]:
    """Deterministic train/val split ``(train, val)`` of ``range(n_seq)`` (sorted index lists):
    a permutation seeded by ``config.seed``; the first ``round(val_fraction * n_seq)`` are val."""
    perm = np.random.default_rng([config.seed, _SPLIT_STREAM]).permutation(config.n_seq)
    n_val = min(int(math.floor(config.val_fraction * config.n_seq + 0.5)), config.n_seq - 1)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def sequence_params(config: DatasetConfig, index: int) -> dict[str, Any]:
    """Initial-condition parameters and burn-in of sequence ``index``, from
    ``np.random.default_rng([config.seed, index])`` alone. ``burn_in_tau`` is the number of ``tau``
    intervals evolved before the first recorded frame (0: the sequence starts from the noise)."""
    if not 0 <= index < config.n_seq:
        raise ValueError(f"sequence index {index} is outside 0..{config.n_seq - 1}")
    rng = np.random.default_rng([config.seed, index])
    lo, hi = config.mean_phi_range
    mean = float(np.clip(rng.normal(config.mean_phi, config.mean_phi_std), lo, hi))
    scale = float(config.perlin_scales[rng.integers(len(config.perlin_scales))])
    layers = int(config.perlin_layers[rng.integers(len(config.perlin_layers))])
    perlin_seed = int(rng.integers(2**31 - 1))
    later = bool(rng.random() < config.later_start_fraction)
    k = int(rng.integers(1, max(config.max_burn_in_tau, 1) + 1))  # always drawn: stable streams
    burn_in = {"burn_in_tau": k if later else 0}
    shape = shape_params(config, index)
    if shape is not None:
        return {**shape, **burn_in}
    return {
        "kind": "perlin",
        "mean": mean,
        "scale": scale,
        "layers": layers,
        "amplitude": config.perlin_amplitude,
        "seed": perlin_seed,
        **burn_in,
    }


def shape_params(config: DatasetConfig, index: int) -> dict[str, Any] | None:
    """Shape initial condition of sequence ``index``, or None for a Perlin one. Drawn from its own
    stream ``default_rng([seed, index, 1])``, so datasets without shapes keep their Perlin draws.

    With probability ``shapes_fraction``: a slab (1/3: random axis, width in [1/4, 3/4] of the
    box, random centre) or 1-6 spheres (2/3: radii in [1/10, 3/10] of the box, random centres).
    """
    if config.shapes_fraction <= 0:
        return None
    rng = np.random.default_rng([config.seed, index, 1])
    if rng.random() >= config.shapes_fraction:
        return None
    n = config.size
    if rng.random() < 1 / 3:
        return {"kind": "slab", "axis": int(rng.integers(3)),
                "width": float(rng.uniform(0.25, 0.75) * n), "center": float(rng.uniform(0, n))}
    return {"kind": "spheres", "n": int(rng.integers(1, 7)), "radius_range": [0.1 * n, 0.3 * n],
            "seed": int(rng.integers(2**31 - 1))}


def initial_condition(config: DatasetConfig, index: int) -> np.ndarray:
    """The initial condition of sequence ``index`` (Perlin, slab or spheres, per
    :func:`sequence_params`), ``(size, size, size) float32``; its first recorded frame when
    ``burn_in_tau == 0``."""
    from napari_chflow import seeds

    p, shape = sequence_params(config, index), (config.size,) * 3
    if p["kind"] == "slab":
        return seeds.slab(shape, width=p["width"], axis=p["axis"], center=p["center"], eps=config.eps)
    if p["kind"] == "spheres":
        return seeds.random_spheres(shape, n=p["n"], radius_range=tuple(p["radius_range"]),
                                    seed=p["seed"], eps=config.eps)
    return seeds.perlin(shape, scale=p["scale"], layers=p["layers"], mean=p["mean"],
                        amplitude=p["amplitude"], seed=p["seed"])


def sequence_path(out_dir: str | os.PathLike, index: int) -> Path:
    """``out_dir/sequences/seq_{index:06d}.zarr``."""
    return Path(out_dir) / SEQUENCES_DIR / f"seq_{index:06d}.zarr"


def _resolved_dt(config: DatasetConfig) -> float:
    from napari_chflow.physics import EXPLICIT_DT, SPECTRAL_DT

    if config.dt is not None:
        return float(config.dt)
    return EXPLICIT_DT if config.solver == "explicit" else SPECTRAL_DT


class _Stopped(Exception):
    """Raised inside a sequence when ``should_stop()`` turns true (its partial store is removed)."""


def _generate_one(
    out_dir: Path, config: DatasetConfig, index: int, split: str, device=None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Simulate sequence ``index`` and write it atomically to :func:`sequence_path`."""
    from napari_chflow.physics import iter_simulate

    p = sequence_params(config, index)
    shape = (config.size,) * 3
    phi0 = initial_condition(config, index)
    k = p["burn_in_tau"]
    attrs = {
        "tau": config.tau, "eps": config.eps, "mobility": config.mobility,
        "dt": _resolved_dt(config), "solver": config.solver,
        "seed": {key: value for key, value in p.items() if key != "burn_in_tau"},
        "burn_in_tau": k, "t0": k * config.tau, "index": index, "split": split,
        "dataset_seed": config.seed,
    }
    frames = iter_simulate(phi0, k + config.frames - 1, tau=config.tau, solver=config.solver,
                           eps=config.eps, mobility=config.mobility, dt=config.dt, device=device)
    with atomic_dir(sequence_path(out_dir, index)) as tmp:
        with SequenceWriter(tmp, shape, attrs) as writer:
            for j, frame in enumerate(frames):
                if should_stop is not None and should_stop():
                    raise _Stopped
                if j >= k:
                    writer.append(frame)
    return index


def _init_worker(parent: int | None = None) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """End this worker process as soon as ``parent`` is no longer its parent (it died or was
    killed): nobody would collect its result, and its partial store is redone on the rerun."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def _is_done(path: Path, config: DatasetConfig, index: int) -> bool:
    """A finished store of this dataset (complete, right shape and index, every frame matching
    its recorded checksum)."""
    if not path.exists():
        return False
    try:
        seq = open_sequence(path)
        if seq.shape != (config.frames, *(config.size,) * 3) or seq.attrs.get("index") != index:
            return False
        seq.verify()
    except SequenceFormatError:
        return False
    return True


# --------------------------------------------------------------------------- dataset.json


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / DATASET_FILE
    if not path.is_file():
        raise ValueError(
            f"{out_dir} is not a chflow dataset (no {DATASET_FILE}): generate one with "
            f"`chflow dataset -o {out_dir} --n-seq N`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        config = DatasetConfig.from_dict(manifest["config"])
        manifest["split"]["train"], manifest["split"]["val"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is unreadable or not a chflow dataset manifest ({err}): regenerate the "
            "dataset in a new folder"
        ) from err
    manifest["config"] = config
    return manifest


def _write_or_check_manifest(out_dir: Path, config: DatasetConfig) -> None:
    path = out_dir / DATASET_FILE
    if path.exists():
        old = _read_manifest(out_dir)["config"]
        if old != config:
            diff = ", ".join(
                f"{f.name}={getattr(config, f.name)!r} (folder has {getattr(old, f.name)!r})"
                for f in fields(DatasetConfig) if getattr(old, f.name) != getattr(config, f.name)
            )
            raise ValueError(
                f"{out_dir} holds a dataset made with different settings: {diff}; rerun with the "
                f"folder's settings to resume it (`{dataset_command(out_dir, old)}`) "
                "or use a new folder"
            )
        return
    train, val = split_indices(config)
    manifest = {
        "chflow_dataset": DATASET_FORMAT,
        "version": __version__,
        "config": config.to_dict(),
        "split": {"train": train, "val": val},
        "layout": f"{SEQUENCES_DIR}/seq_{{index:06d}}.zarr",
    }
    atomic_write_text(path, _format_manifest(manifest))


def _format_manifest(manifest: dict[str, Any]) -> str:
    """JSON with one line per config field and the split lists on one line each."""
    def block(d: dict[str, Any], indent: str) -> str:
        inner = ",\n".join(
            f"{indent}  {json.dumps(k)}: "
            + (block(v, indent + "  ") if isinstance(v, dict) else json.dumps(v))
            for k, v in d.items()
        )
        return "{\n" + inner + "\n" + indent + "}"

    return block(manifest, "") + "\n"


def dataset_command(out_dir: str | os.PathLike, config: DatasetConfig) -> str:
    """The ``chflow dataset`` command line that (re)generates ``config`` in ``out_dir``."""
    defaults = DatasetConfig(n_seq=1)
    parts = ["chflow dataset", f"-o {out_dir}", f"--n-seq {config.n_seq}"]
    for f in fields(DatasetConfig):
        value = getattr(config, f.name)
        if f.name == "n_seq" or value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        text = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        parts.append(f"{flag} {text}")
    return " ".join(parts)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (CLI ``--shard``)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"--shard {text!r} is not i/n with 0 <= i < n: use e.g. --shard 0/4")
    return int(match[1]), int(match[2])


# --------------------------------------------------------------------------- generation


def generate_dataset(
    out_dir: str | os.PathLike,
    config: DatasetConfig,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    device=None,
) -> dict[str, Any]:
    """Generate (or resume) this shard's sequences: indices ``k`` with ``k % n == i``.

    Finished stores are kept; broken ones and stale partial folders of this shard are removed
    and redone. ``workers > 1`` runs that many processes (one torch thread each). ``should_stop``
    (polled between sequences, and between frames when ``workers == 1``) cancels cleanly.
    Returns ``{"generated": [...], "skipped": [...], "stopped": bool}``.
    """
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
        raise ValueError(f"shard={shard!r} must be (i, n) with 0 <= i < n: e.g. shard=(0, 4)")
    if workers < 1:
        raise ValueError(f"workers={workers}: use at least 1 process")
    from napari_chflow.memory import check_memory, dataset_bytes

    processes = max(1, min(workers, len(range(i, config.n_seq, n))))
    check_memory(dataset_bytes(config.size, config.solver, processes),
                 f"a dataset of {config.size}^3 boxes with {processes} worker(s)", device,
                 fix="use a smaller size or fewer workers")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_or_check_manifest(out_dir, config)
    train, _ = split_indices(config)
    train_set = set(train)
    seq_dir = out_dir / SEQUENCES_DIR
    seq_dir.mkdir(exist_ok=True)
    for stale in seq_dir.iterdir():
        match = _STALE.match(stale.name)
        if match and int(match[1]) % n == i:
            _remove_tree(stale)

    mine = list(range(i, config.n_seq, n))
    todo, skipped = [], []
    for k in mine:
        path = sequence_path(out_dir, k)
        if _is_done(path, config, k):
            skipped.append(k)
            continue
        if path.exists():
            warnings.warn(f"{path} is incomplete or corrupt: regenerating it", stacklevel=2)
            _remove_tree(path)
        todo.append(k)

    def split_of(k: int) -> str:
        return "train" if k in train_set else "val"

    generated: list[int] = []
    stopped = False
    bar = _progress_bar(len(mine), len(skipped), progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for k in todo:
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                try:
                    _generate_one(out_dir, config, k, split_of(k), device, should_stop)
                except _Stopped:
                    stopped = True
                    break
                generated.append(k)
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx,
                                        initializer=_init_worker,
                                        initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_generate_one, out_dir, config, k, split_of(k), device)
                           for k in todo]
                try:
                    for future in cf.as_completed(futures):
                        generated.append(future.result())
                        bar.update(1)
                        if should_stop is not None and should_stop():
                            stopped = True
                            break
                finally:
                    for future in futures:
                        future.cancel()
    finally:
        bar.close()
    return {"generated": sorted(generated), "skipped": skipped, "stopped": stopped}


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _progress_bar(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="seq", desc="dataset", disable=not enabled)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Dataset:
    """A generated dataset: sequence store paths of the train/val split (sorted by index);
    ``missing`` lists indices not generated yet (only non-empty with ``allow_missing=True``)."""

    path: Path
    config: DatasetConfig
    train: list[Path]
    val: list[Path]
    missing: list[int] = field(default_factory=list)
    version: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for checkpoints: config, split indices, version, path."""
        def index(p: Path) -> int:  # seq_000042.zarr -> 42
            return int(p.stem[4:])

        return {
            "path": str(self.path),
            "config": self.config.to_dict(),
            "version": self.version,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "train_indices": [index(p) for p in self.train],
            "val_indices": [index(p) for p in self.val],
            "missing": list(self.missing),
        }


def load_dataset(out_dir: str | os.PathLike, allow_missing: bool = False) -> Dataset:
    """Open a dataset folder written by :func:`generate_dataset` (cheap: metadata checks only).

    Raises ``ValueError`` if it is not a dataset or (unless ``allow_missing``) is incomplete.
    """
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    config: DatasetConfig = manifest["config"]
    present = {k for k in range(config.n_seq) if is_sequence_store(sequence_path(out_dir, k))}
    missing = [k for k in range(config.n_seq) if k not in present]
    if missing and not allow_missing:
        listed = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{out_dir} is incomplete: {len(missing)} of {config.n_seq} sequences are missing "
            f"({listed}); finish it with `{dataset_command(out_dir, config)}` (run every shard)"
        )
    split = manifest["split"]
    return Dataset(
        path=out_dir,
        config=config,
        train=[sequence_path(out_dir, k) for k in split["train"] if k in present],
        val=[sequence_path(out_dir, k) for k in split["val"] if k in present],
        missing=missing,
        version=str(manifest.get("version", "")),
    )
