"""Memory estimates: upper bounds of the measured peaks, and the check that uses them."""

from __future__ import annotations

import pytest

from napari_chflow import bench, memory


def test_available_memory_is_positive_and_bounded_by_the_machine():
    avail = memory.available_bytes()
    total = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except OSError:
        pytest.skip("no /proc/meminfo")
    assert avail is not None and 0 < avail <= total


def test_check_names_the_estimate_and_what_is_available(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 3 * 2**30)
    memory.check_memory(2 * 2**30, "a small run")  # fits: nothing raised
    with pytest.raises(memory.NotEnoughMemory, match=r"a big run needs about 4 GiB of memory, "
                       r"but this machine has 3 GiB available: use a smaller grid"):
        memory.check_memory(4 * 2**30, "a big run")
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: None)
    memory.check_memory(2**62, "anything")  # unknown availability: nothing is refused


def test_estimates_scale_with_the_grid_and_the_model():
    small, big = (32,) * 3, (64,) * 3
    for f in (lambda s: memory.simulate_bytes(s, "explicit"),
              lambda s: memory.simulate_bytes(s, "spectral"), memory.rollout_bytes,
              memory.seed_bytes):
        assert f(big) - f(small) == pytest.approx(7 * (f(small) - f((0, 0, 0))), rel=0.05)
    assert memory.simulate_bytes(big, "spectral", 8) > memory.simulate_bytes(big, "spectral", 4)
    assert memory.rollout_bytes(big, hidden=20) > memory.rollout_bytes(big, hidden=10)
    assert memory.dataset_bytes(32, "explicit", 4) > 4 * memory.dataset_bytes(32, "explicit", 1)


@pytest.mark.slow
def test_estimates_bound_the_peak_measured_in_a_fresh_process(tmp_path):
    """Each method at 64^3 in a fresh process (chflow bench --memory): estimate >= peak."""
    from napari_chflow.model import CRNN, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", CRNN(), recipe={}, data={})
    from napari_chflow.model import load_checkpoint

    model = load_checkpoint(ckpt)
    timings = bench.isolated_timings((64,), ("explicit", "spectral", "crnn"), model=model,
                                     n_tau=lambda m, n: 2, threads=1)
    shape = (64,) * 3
    estimate = {"explicit": memory.simulate_bytes(shape, "explicit"),
                "spectral": memory.simulate_bytes(shape, "spectral"),
                "crnn": memory.rollout_bytes(shape)}
    for t in timings:
        assert t.peak_bytes <= estimate[t.method] <= 4 * max(t.peak_bytes, 2**20), t
