"""How much memory an operation needs, and whether this machine has it, checked before allocating.

The estimates are upper bounds of the peak memory measured on CPU (``chflow bench --memory``, peak
resident set in a fresh process, 64^3 and 96^3, float32), rounded up; they are meant to refuse a
run that cannot fit (``--size 1200``) with a clear message before it exhausts the machine, not to
predict memory to the megabyte.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["NotEnoughMemory", "available_bytes", "check_memory", "format_bytes", "seed_bytes",
           "simulate_bytes", "rollout_bytes", "dataset_bytes", "train_bytes"]

SIMULATE_WORDS = {"explicit": 8, "spectral": 36}
"""Arrays of the grid's size (in phi's dtype) a solver holds at its peak: phi, the Laplacian, mu
and the padded buffer (explicit, measured 24 B per voxel in float32); FFT work arrays and the two
SBDF2 histories (spectral, measured 118 B per voxel)."""
SEED_BYTES_PER_VOXEL = {"perlin": 96, "mesh": 320, "spheres": 48, "slab": 8}
"""Peak bytes per voxel of making a seed (measured 85, 287 (+ the mesh itself), 35 and 5)."""
MESH_BYTES = 64 * 2**20
RUN_BYTES = 16 * 2**20
"""Fixed part of a solver's or the CRNN's peak (torch work buffers, allocator slack; measured
about 5 MiB)."""
WORKER_BYTES = 400 * 2**20
"""A spawned dataset worker: the Python interpreter with torch and numpy imported."""


class NotEnoughMemory(ValueError):
    """The operation would need more memory than the machine has available."""


def format_bytes(n: float) -> str:
    """``1536 -> "1.5 KiB"``; binary units up to EiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _cgroup_free() -> int | None:
    """Memory left under this process's cgroup limit (v2, then v1), None without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 2**60:
            return max(cap - used, 0)
    return None


def available_bytes(device=None) -> int | None:
    """Memory available to a new allocation: on CPU ``MemAvailable`` (Linux; the free pages
    elsewhere), capped by a cgroup limit; on CUDA the device's free memory plus what torch's
    allocator holds unused. None when it cannot be determined (then nothing is refused)."""
    import torch

    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    if dev.type != "cpu":
        return None
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    cgroup = _cgroup_free()
    if cgroup is not None:
        avail = cgroup if avail is None else min(avail, cgroup)
    return avail


def check_memory(needed: int, what: str, device=None,
                 fix: str = "use a smaller grid or a machine with more memory") -> None:
    """Raise :class:`NotEnoughMemory` naming ``what``, the estimate and the available memory if
    ``needed`` bytes exceed what ``device`` (None: CPU) has available."""
    avail = available_bytes(device)
    if avail is not None and needed > avail:
        where = "this machine" if device is None or str(device) == "cpu" else f"device {device}"
        raise NotEnoughMemory(f"{what} needs about {format_bytes(needed)} of memory, but "
                              f"{where} has {format_bytes(avail)} available: {fix}")


def _voxels(shape) -> int:
    return math.prod(int(n) for n in shape)


def seed_bytes(shape, kind: str = "perlin") -> int:
    """Peak bytes of making a seed of ``kind`` ("perlin", "mesh", "spheres", "slab") on
    ``shape``."""
    extra = MESH_BYTES if kind == "mesh" else 0
    return _voxels(shape) * SEED_BYTES_PER_VOXEL[kind] + extra


def simulate_bytes(shape, solver: str = "explicit", itemsize: int = 4) -> int:
    """Peak bytes of :func:`napari_chflow.physics.iter_simulate` on ``shape`` (``itemsize`` 4 for
    float32, 8 for float64), besides the initial condition."""
    words = SIMULATE_WORDS.get(solver, max(SIMULATE_WORDS.values()))
    return _voxels(shape) * (words * itemsize + 8) + RUN_BYTES


RELAX_BYTES_PER_VOXEL = 64
"""Work arrays of the model's fine-grid relaxation (``relax_dt``) per voxel of the solvers' grid:
float64 fields and their spectra (peak measured: 55 B on a 192^3 grid)."""


def rollout_bytes(shape, hidden: int = 10, n_layers: int = 2, downscale: int = 2,
                  images: int = 1, relax: bool = False) -> int:
    """Peak bytes of a CRNN rollout from a full-resolution ``shape``: the downsampled grid with
    ``hidden`` channels per cell (measured 1008 B per model voxel for 10 x 2) for each of the
    ``images`` the step averages (``lattice_average``), the input, and with ``relax`` (the
    model's ``relax_dt``) the fine-grid relaxation."""
    coarse = _voxels(int(n) // int(downscale) or 1 for n in shape) * int(images)
    fine = RELAX_BYTES_PER_VOXEL * _voxels(shape) if relax else 0
    return (4 * coarse * (16 * int(hidden) * int(n_layers) + 16) + 8 * _voxels(shape) + fine
            + RUN_BYTES)


def dataset_bytes(size: int, solver: str, workers: int) -> int:
    """Peak bytes of ``chflow dataset``: per process a Perlin seed and a solver on ``size^3``
    (spawned workers add an interpreter with torch each)."""
    shape = (size,) * 3
    one = seed_bytes(shape) + simulate_bytes(shape, solver)
    return one * workers + (WORKER_BYTES * workers if workers > 1 else 0)


def train_bytes(n_seq: int, frames: int, size: int, downscale: int, batch: int, hidden: int,
                n_layers: int, window: int | None = None, images: int = 1,
                relax: bool = False) -> tuple[int, int]:
    """Peak bytes of training as ``(dataset, activations)``: the sequences held on the model grid
    (float32, in CPU memory) and what autograd keeps for one batch over ``frames - 1`` steps, or
    ``window - 1`` with the window sampler (1.5 rollout steps per sample and step; measured 545
    MiB in all for 3 x 8 steps on 24^3, estimated 680 MiB); ``images``: the model's
    ``lattice_average`` multiplies the activations; ``relax`` (``relax_dt``) adds the fine-grid
    relaxation's arrays to each step."""
    coarse = (int(size) // int(downscale)) ** 3
    data = int(n_seq) * int(frames) * coarse * 4
    step = 4 * coarse * (16 * int(hidden) * int(n_layers) + 16) * int(images)
    if relax:
        step += RELAX_BYTES_PER_VOXEL * coarse * int(downscale) ** 3
    steps = min(int(frames), int(window or frames)) - 1
    return data, int(batch) * max(steps, 1) * 3 * step // 2
