"""Dataset recipe: parameter statistics, split, physics of the stored sequences, and that
resuming after any interruption (deleted store, stale partial, SIGKILL, shards, workers) yields
bit-identical data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_chflow.dataset import (
    DatasetConfig,
    generate_dataset,
    initial_condition,
    load_dataset,
    parse_shard,
    sequence_params,
    sequence_path,
    split_indices,
)
from napari_chflow.io import read_sequence
from napari_chflow.physics import simulate

# explicit Euler (the paper's solver) on 16^3, 3 frames, burn-in of 1-2 tau for about half:
# bitwise reproducible whatever the thread count, and slow enough (~0.3 s) to be killed mid-way
TINY = DatasetConfig(n_seq=4, frames=3, size=16, solver="explicit", max_burn_in_tau=2, seed=1)
FAST = DatasetConfig(n_seq=3, frames=3, size=16, solver="spectral", max_burn_in_tau=2, seed=2)


def _arrays(out_dir: Path, n_seq: int) -> list[tuple[np.ndarray, dict]]:
    return [read_sequence(sequence_path(out_dir, k)) for k in range(n_seq)]


def _assert_same_data(out_dir: Path, ref_dir: Path, n_seq: int) -> None:
    pairs = zip(_arrays(out_dir, n_seq), _arrays(ref_dir, n_seq))
    for k, ((phi, attrs), (ref, ref_attrs)) in enumerate(pairs):
        np.testing.assert_array_equal(phi, ref, err_msg=f"sequence {k}")
        assert attrs == ref_attrs
    manifest = (out_dir / "dataset.json").read_text()
    assert json.loads(manifest) == json.loads((ref_dir / "dataset.json").read_text())
    leftovers = [p.name for p in (out_dir / "sequences").iterdir() if not p.name.endswith(".zarr")]
    assert leftovers == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted single-process run of TINY."""
    out = tmp_path_factory.mktemp("ref")
    summary = generate_dataset(out, TINY, progress=False)
    assert summary == {"generated": [0, 1, 2, 3], "skipped": [], "stopped": False}
    return out


def test_sequence_parameters_follow_the_recipe():
    config = DatasetConfig(n_seq=4000, seed=3)
    params = [sequence_params(config, k) for k in range(config.n_seq)]
    means = np.array([p["mean"] for p in params])
    assert abs(means.mean() - 0.5) < 0.01 and abs(means.std() - 0.1) < 0.01
    assert means.min() >= 0.25 and means.max() <= 0.75
    burn = np.array([p["burn_in_tau"] for p in params])
    assert abs((burn > 0).mean() - config.later_start_fraction) < 0.03
    assert burn[burn > 0].min() == 1 and burn.max() == config.max_burn_in_tau
    assert {p["scale"] for p in params} == set(config.perlin_scales)
    assert {p["layers"] for p in params} == set(config.perlin_layers)
    assert len({p["seed"] for p in params}) == config.n_seq
    # per-index: independent of the dataset size and of the order of calls
    bigger = DatasetConfig(n_seq=5000, seed=3)
    assert sequence_params(bigger, 1234) == params[1234]
    assert sequence_params(DatasetConfig(n_seq=4000, seed=4), 1234) != params[1234]


def test_shapes_fraction_adds_slabs_and_spheres_and_keeps_the_perlin_draws():
    plain, mixed = DatasetConfig(n_seq=900, seed=3), DatasetConfig(n_seq=900, seed=3, shapes_fraction=0.3)
    params = [sequence_params(mixed, k) for k in range(mixed.n_seq)]
    kinds = np.array([p["kind"] for p in params])
    assert abs((kinds != "perlin").mean() - 0.3) < 0.05
    assert abs((kinds == "slab").sum() / (kinds != "perlin").sum() - 1 / 3) < 0.08
    for k, p in enumerate(params):  # the Perlin sequences and every burn-in are unchanged
        ref = sequence_params(plain, k)
        assert p["burn_in_tau"] == ref["burn_in_tau"]
        if p["kind"] == "perlin":
            assert p == ref
    small = DatasetConfig(n_seq=40, size=16, seed=3, shapes_fraction=0.5)
    slab_k = next(k for k in range(40) if sequence_params(small, k)["kind"] == "slab")
    p, phi = sequence_params(small, slab_k), initial_condition(small, slab_k)
    assert phi.shape == (16, 16, 16) and phi.min() >= 0 and phi.max() <= 1
    profile = phi.mean(axis=tuple(a for a in range(3) if a != p["axis"]))
    assert np.ptp(phi, axis=tuple(a for a in range(3) if a != p["axis"])).max() == 0  # flat
    assert abs(profile.sum() - p["width"]) < 0.05  # the slab holds width voxels of phase 1
    sph_k = next(k for k in range(40) if sequence_params(small, k)["kind"] == "spheres")
    phi = initial_condition(small, sph_k)
    assert 0.01 < phi.mean() < 0.9 and phi.max() > 0.99
    with pytest.raises(ValueError, match="shapes_fraction=1.5.*--shapes-fraction"):
        DatasetConfig(n_seq=4, shapes_fraction=1.5)


def test_split_is_a_deterministic_70_30_partition():
    config = DatasetConfig(n_seq=1850, seed=0)
    train, val = split_indices(config)
    assert len(val) == 555 and len(train) == 1295
    assert sorted(train + val) == list(range(1850))
    assert split_indices(config) == (train, val)
    assert split_indices(DatasetConfig(n_seq=1850, seed=1))[1] != val
    assert train != list(range(1295))  # shuffled, not the first 70 %


def test_stored_sequences_are_the_solver_output(reference):
    manifest = json.loads((reference / "dataset.json").read_text())
    train, val = split_indices(TINY)
    assert manifest["split"] == {"train": train, "val": val}
    assert manifest["config"]["solver"] == "explicit"
    burn_ins = set()
    for k in range(TINY.n_seq):
        phi, attrs = read_sequence(sequence_path(reference, k))
        p = sequence_params(TINY, k)
        kb = p["burn_in_tau"]
        burn_ins.add(kb > 0)
        assert phi.shape == (3, 16, 16, 16)
        phi0 = initial_condition(TINY, k)
        expected = simulate(phi0, kb + TINY.frames - 1, solver="explicit")[kb:]
        np.testing.assert_array_equal(phi, expected)
        # mass conservation: every frame keeps the drawn mean composition
        np.testing.assert_allclose(phi.mean(axis=(1, 2, 3)), p["mean"], atol=2e-6)
        assert attrs["burn_in_tau"] == kb and attrs["t0"] == kb * TINY.tau
        assert attrs["seed"]["mean"] == p["mean"] and attrs["seed"]["seed"] == p["seed"]
        physics = (attrs["tau"], attrs["eps"], attrs["mobility"], attrs["dt"], attrs["solver"])
        assert physics == (0.5, 3.0, 1.0, 1.25e-3, "explicit")
        assert attrs["split"] == ("train" if k in train else "val") and attrs["index"] == k
    assert burn_ins == {True, False}  # both kinds of start are exercised by TINY


def test_resume_after_deleted_store_stale_partial_and_corruption(reference, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    seqs = out / "sequences"
    shutil.rmtree(seqs / "seq_000001.zarr")
    (seqs / "seq_000002.zarr.partial-999999").mkdir()
    (seqs / "seq_000002.zarr.partial-999999" / "junk").write_bytes(b"\0" * 10)
    os.remove(seqs / "seq_000003.zarr" / "1.0.0.0")  # a damaged finished store is redone
    with pytest.warns(UserWarning, match="seq_000003"):
        summary = generate_dataset(out, TINY, progress=False)
    assert summary == {"generated": [1, 3], "skipped": [0, 2], "stopped": False}
    _assert_same_data(out, reference, TINY.n_seq)


def test_sigkill_midway_then_rerun_gives_identical_data(reference, tmp_path):
    out = tmp_path / "killed"
    code = (
        "from napari_chflow.dataset import DatasetConfig, generate_dataset\n"
        f"generate_dataset({str(out)!r}, DatasetConfig(**{TINY.to_dict()!r}), progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not sequence_path(out, 0).exists():
            assert proc.poll() is None, "generator exited before writing a sequence"
            assert time.monotonic() < deadline, "no sequence after 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = [k for k in range(TINY.n_seq) if sequence_path(out, k).exists()]
    assert 0 in finished and len(finished) < TINY.n_seq  # killed while sequence 1 was running
    summary = generate_dataset(out, TINY, progress=False)
    assert summary["skipped"] == finished
    _assert_same_data(out, reference, TINY.n_seq)


def test_shards_and_worker_processes_give_the_same_data(reference, tmp_path):
    out = tmp_path / "sharded"
    first = generate_dataset(out, TINY, shard=(1, 2), workers=2, progress=False)
    assert first["generated"] == [1, 3]
    with pytest.raises(ValueError, match="incomplete: 2 of 4"):
        load_dataset(out)
    second = generate_dataset(out, TINY, shard=(0, 2), workers=1, progress=False)
    assert second["generated"] == [0, 2]
    _assert_same_data(out, reference, TINY.n_seq)


def test_load_dataset_split_describe_and_missing(reference, tmp_path):
    data = load_dataset(reference)
    train, val = split_indices(TINY)
    assert data.config == TINY and data.missing == []
    assert data.train == [sequence_path(reference, k) for k in train]
    assert data.val == [sequence_path(reference, k) for k in val]
    described = json.loads(json.dumps(data.describe()))
    assert described["train_indices"] == train and described["val_indices"] == val
    assert DatasetConfig.from_dict(described["config"]) == TINY

    out = tmp_path / "part"
    generate_dataset(out, FAST, shard=(0, 3), progress=False)
    with pytest.raises(ValueError) as err:
        load_dataset(out)
    message = str(err.value)
    assert "2 of 3 sequences are missing" in message
    assert f"chflow dataset -o {out} --n-seq 3" in message and "--solver spectral" in message
    partial = load_dataset(out, allow_missing=True)
    assert partial.missing == [1, 2]
    assert [int(p.stem[4:]) for p in partial.train + partial.val] == [0]


def test_not_a_dataset_and_config_mismatch_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a chflow dataset .*chflow dataset -o"):
        load_dataset(tmp_path)
    out = tmp_path / "d"
    generate_dataset(out, FAST, shard=(0, 3), progress=False)
    other = DatasetConfig(**{**FAST.to_dict(), "frames": 5})
    with pytest.raises(ValueError) as err:
        generate_dataset(out, other, progress=False)
    message = str(err.value)
    assert "frames=5 (folder has 3)" in message and "new folder" in message
    assert not sequence_path(out, 1).exists()  # nothing was generated with the wrong settings


def test_should_stop_cancels_cleanly_between_and_within_sequences(tmp_path):
    out = tmp_path / "stop"
    seqs = out / "sequences"
    summary = generate_dataset(out, FAST, progress=False,
                               should_stop=lambda: len(list(seqs.glob("*.zarr"))) >= 1)
    assert summary == {"generated": [0], "skipped": [], "stopped": True}
    calls = iter(range(10**6))
    summary = generate_dataset(out, FAST, progress=False, should_stop=lambda: next(calls) >= 3)
    assert summary["stopped"] and summary["generated"] == [] and summary["skipped"] == [0]
    assert sorted(p.name for p in seqs.iterdir()) == ["seq_000000.zarr"]  # no partial left behind


def test_config_and_shard_validation():
    cases = [({"solver": "rk4"}, "solver"), ({"frames": 1}, "frames"),
             ({"val_fraction": 1.0}, "val"), ({"mean_phi_range": (0.0, 0.5)}, "mean_phi_range")]
    for bad, word in cases:
        with pytest.raises(ValueError, match=word):
            DatasetConfig(n_seq=4, **bad)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="shard"):
        generate_dataset("unused", FAST, shard=(3, 2))
