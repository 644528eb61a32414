"""Sequence stores: exact round trips, streaming growth, truncation and foreign-store detection,
overwrite safety, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

from napari_chflow import __version__
from napari_chflow.io import (
    FORMAT_KEY,
    SequenceExistsError,
    SequenceFormatError,
    SequenceWriter,
    atomic_dir,
    atomic_write,
    atomic_write_bytes,
    is_sequence_store,
    open_sequence,
    read_initial_condition,
    read_sequence,
    write_sequence,
)

SEED = {"kind": "perlin", "mean": np.float64(0.47), "octaves": np.int64(4), "shape": (8, 8, 8)}
ATTRS = {"tau": 0.5, "eps": 3.0, "mobility": 1.0, "dt": 1.25e-3, "solver": "explicit", "seed": SEED}


@pytest.fixture()
def frames() -> np.ndarray:
    return np.random.default_rng(7).random((4, 5, 6, 7))  # float64 on purpose


def _zattrs(path) -> dict:
    return json.loads((path / ".zattrs").read_text())


def _set_zattrs(path, **changes) -> None:
    attrs = {**_zattrs(path), **changes}
    (path / ".zattrs").write_text(json.dumps(attrs))


def test_round_trip_is_exact_float32_with_attrs(tmp_path, frames):
    path = write_sequence(tmp_path / "run.zarr", frames, ATTRS)
    phi, attrs = read_sequence(path)
    assert phi.dtype == np.float32 and phi.shape == (4, 5, 6, 7)
    np.testing.assert_array_equal(phi, frames.astype(np.float32))
    assert attrs["seed"] == {"kind": "perlin", "mean": 0.47, "octaves": 4, "shape": [8, 8, 8]}
    assert {k: attrs[k] for k in ("tau", "eps", "mobility", "dt", "solver")} == {
        k: ATTRS[k] for k in ("tau", "eps", "mobility", "dt", "solver")}
    assert attrs[FORMAT_KEY] == 1 and attrs["version"] == __version__
    assert attrs["complete"] is True and attrs["n_frames"] == 4
    seq = open_sequence(path)
    assert tuple(seq.phi.chunks) == (1, 5, 6, 7)  # one frame per chunk
    assert len(seq) == 4 and seq.shape == (4, 5, 6, 7)
    np.testing.assert_array_equal(seq.frame(2), frames[2].astype(np.float32))
    np.testing.assert_array_equal(seq.phi[-1], frames[-1].astype(np.float32))
    assert is_sequence_store(path)


def test_write_accepts_an_iterable_of_frames(tmp_path, frames):
    path = write_sequence(tmp_path / "gen.zarr", (f for f in frames))
    np.testing.assert_array_equal(read_sequence(path)[0], frames.astype(np.float32))


def test_writer_grows_by_one_frame_per_append_and_completes_on_close(tmp_path, frames):
    path = tmp_path / "stream.zarr"
    with SequenceWriter(path, frames.shape[1:], ATTRS) as writer:
        for t, frame in enumerate(frames):
            writer.append(frame)
            assert len(writer) == t + 1
            partial = open_sequence(path, allow_incomplete=True)
            assert len(partial) == t + 1
            np.testing.assert_array_equal(partial.phi[t], frame.astype(np.float32))
            with pytest.raises(SequenceFormatError, match="incomplete"):
                open_sequence(path)
        writer.update_attrs({"note": "done"})
    phi, attrs = read_sequence(path)
    np.testing.assert_array_equal(phi, frames.astype(np.float32))
    assert attrs["n_frames"] == 4 and attrs["note"] == "done"


def test_writer_rejects_wrong_frame_shape_and_append_after_close(tmp_path):
    writer = SequenceWriter(tmp_path / "w.zarr", (4, 4, 4))
    with pytest.raises(ValueError, match="same"):
        writer.append(np.zeros((4, 4, 5)))
    writer.append(np.zeros((4, 4, 4)))
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.append(np.zeros((4, 4, 4)))


def test_all_zero_and_nan_frames_are_stored(tmp_path):
    """Frames equal to the fill value must still be written (a missing chunk means truncation)."""
    frames = np.stack([np.zeros((3, 3, 3)), np.full((3, 3, 3), np.nan)])
    phi, _ = read_sequence(write_sequence(tmp_path / "z.zarr", frames))
    assert (phi[0] == 0).all() and np.isnan(phi[1]).all()


def test_writer_that_never_closes_is_detected(tmp_path, frames):
    path = tmp_path / "killed.zarr"
    writer = SequenceWriter(path, frames.shape[1:])
    writer.append(frames[0])
    writer.append(frames[1])
    del writer  # e.g. the process was killed: close() never ran
    with pytest.raises(SequenceFormatError) as err:
        open_sequence(path)
    message = str(err.value)
    assert str(path) in message and "incomplete" in message and "overwrite=True" in message
    salvaged = open_sequence(path, allow_incomplete=True)
    np.testing.assert_array_equal(salvaged.phi[:], frames[:2].astype(np.float32))


def test_exception_inside_writer_block_leaves_store_incomplete(tmp_path, frames):
    path = tmp_path / "failed.zarr"
    with pytest.raises(RuntimeError):
        with SequenceWriter(path, frames.shape[1:]) as writer:
            writer.append(frames[0])
            raise RuntimeError("solver blew up")
    with pytest.raises(SequenceFormatError, match="incomplete"):
        open_sequence(path)


def test_missing_chunk_and_frame_count_mismatch_are_detected(tmp_path, frames):
    path = write_sequence(tmp_path / "t.zarr", frames)
    os.remove(path / "2.0.0.0")
    with pytest.raises(SequenceFormatError, match=r"missing the chunk files of frame 2 \(of 4\)"):
        open_sequence(path)
    salvaged = open_sequence(path, allow_incomplete=True)
    assert np.isnan(salvaged.phi[2]).all()  # missing frames read as NaN, never as fake data
    np.testing.assert_array_equal(salvaged.phi[3], frames[3].astype(np.float32))

    path = write_sequence(tmp_path / "n.zarr", frames)
    _set_zattrs(path, n_frames=6)
    with pytest.raises(SequenceFormatError, match="n_frames=6 but holds 4"):
        open_sequence(path)


def test_foreign_and_missing_paths_give_clear_errors(tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "nope.zarr", "does not exist")
    (tmp_path / "file.zarr").write_text("x")
    cases["file"] = (tmp_path / "file.zarr", "is a file")
    (tmp_path / "plain_dir").mkdir()
    cases["dir"] = (tmp_path / "plain_dir", "not a zarr store")
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    cases["group"] = (tmp_path / "group.zarr", "zarr group")
    arr = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(2, 3, 3, 3), dtype="f4")
    arr[:] = 1.0
    cases["plain"] = (tmp_path / "plain.zarr", "not a chflow sequence")
    for name, (path, why) in cases.items():
        with pytest.raises(SequenceFormatError) as err:
            open_sequence(path)
        assert str(path) in str(err.value) and why in str(err.value), name
        assert isinstance(err.value, ValueError)
        assert not is_sequence_store(path), name


def test_a_store_named_like_a_file_is_refused_and_nothing_is_written(tmp_path, frames):
    for name in ("out.npy", "out.TIF", "run.h5"):
        path = tmp_path / name
        with pytest.raises(SequenceFormatError, match=r"is a folder .*name the output like"):
            write_sequence(path, frames)
        with pytest.raises(SequenceFormatError, match=r"\.zarr"):
            SequenceWriter(path, frames.shape[1:])
        assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_initial_condition_from_npy_or_store(tmp_path, frames):
    write_sequence(tmp_path / "run.zarr", frames, ATTRS)
    phi, attrs = read_initial_condition(tmp_path / "run.zarr")
    np.testing.assert_array_equal(phi, frames[-1].astype(np.float32))
    assert attrs["solver"] == "explicit"
    np.save(tmp_path / "ic.npy", frames[0])
    phi, attrs = read_initial_condition(tmp_path / "ic.npy")
    assert phi.dtype == np.float32 and attrs == {}
    np.testing.assert_array_equal(phi, frames[0].astype(np.float32))
    bad = {"flat.npy": (np.zeros((8, 8)), "one \\(Z, Y, X\\) volume"),
           "nan.npy": (np.full((4, 4, 4), np.nan), "NaN"),
           "text.npy": (np.array([["a"] * 2] * 2 * 2).reshape(2, 2, 2), "of numbers")}
    for name, (array, why) in bad.items():
        np.save(tmp_path / name, array)
        with pytest.raises(SequenceFormatError, match=why):
            read_initial_condition(tmp_path / name)
    np.save(tmp_path / "obj.npy", np.array([{}, 1], dtype=object), allow_pickle=True)
    with pytest.raises(SequenceFormatError, match="numpy.save"):
        read_initial_condition(tmp_path / "obj.npy")
    with pytest.raises(SequenceFormatError, match="does not exist"):
        read_initial_condition(tmp_path / "missing.npy")


def test_newer_format_and_wrong_array_shape_are_refused(tmp_path, frames):
    path = write_sequence(tmp_path / "future.zarr", frames)
    _set_zattrs(path, **{FORMAT_KEY: 99})
    with pytest.raises(SequenceFormatError, match="upgrade napari-chflow"):
        open_sequence(path)
    arr = zarr.open_array(str(tmp_path / "flat.zarr"), mode="w", shape=(3, 3, 3), dtype="f4")
    arr.attrs.update({FORMAT_KEY: 1, "complete": True, "n_frames": 3})
    with pytest.raises(SequenceFormatError, match=r"expected \(T, Z, Y, X\)"):
        open_sequence(tmp_path / "flat.zarr")


def test_existing_path_needs_overwrite(tmp_path, frames):
    path = write_sequence(tmp_path / "a.zarr", frames)
    for call in (lambda: write_sequence(path, frames[:2]), lambda: SequenceWriter(path, (5, 6, 7))):
        with pytest.raises(SequenceExistsError) as err:
            call()
        assert "overwrite=True" in str(err.value) and "--overwrite" in str(err.value)
    write_sequence(path, frames[:2], overwrite=True)
    assert len(open_sequence(path)) == 2
    with SequenceWriter(path, (5, 6, 7), overwrite=True) as writer:
        writer.append(frames[3])
    np.testing.assert_array_equal(read_sequence(path)[0], frames[3:].astype(np.float32))


def test_overwrite_refuses_to_delete_a_folder_that_is_not_zarr(tmp_path, frames):
    folder = tmp_path / "my_data"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(SequenceExistsError, match="refusing"):
        write_sequence(folder, frames, overwrite=True)
    assert (folder / "precious.txt").read_text() == "keep me"


def test_failed_write_leaves_nothing_and_keeps_the_old_store(tmp_path, frames):
    def broken():
        yield frames[0]
        yield frames[1]
        raise RuntimeError("interrupted")

    path = tmp_path / "x.zarr"
    with pytest.raises(RuntimeError):
        write_sequence(path, broken())
    assert os.listdir(tmp_path) == []  # neither the store nor a partial folder
    write_sequence(path, frames)
    with pytest.raises(RuntimeError):
        write_sequence(path, broken(), overwrite=True)
    np.testing.assert_array_equal(read_sequence(path)[0], frames.astype(np.float32))
    assert os.listdir(tmp_path) == ["x.zarr"]


def test_bad_attrs_are_rejected(tmp_path, frames):
    with pytest.raises(ValueError, match="finite"):
        write_sequence(tmp_path / "a.zarr", frames, {"tau": float("nan")})
    with pytest.raises(ValueError, match="JSON"):
        write_sequence(tmp_path / "b.zarr", frames, {"model": object()})
    with pytest.raises(ValueError, match="manages"):
        write_sequence(tmp_path / "c.zarr", frames, {"complete": True})
    with pytest.raises(ValueError, match="at least one"):
        write_sequence(tmp_path / "d.zarr", [])
    assert os.listdir(tmp_path) == []


def test_atomic_write_replaces_or_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.npy"
    atomic_write(target, lambda p: np.save(p, np.arange(3)))  # np.save would append .npy otherwise
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    atomic_write_bytes(tmp_path / "blob.bin", b"new")
    assert (tmp_path / "blob.bin").read_bytes() == b"new"

    def fail(p):
        p.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, fail)
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["blob.bin", "state.npy"]


def test_atomic_dir_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "out.zarr"
    with pytest.raises(KeyError):
        with atomic_dir(target) as tmp:
            (tmp.mkdir(), (tmp / "a").write_text("1"))
            assert tmp.name == f"out.zarr.partial-{os.getpid()}"
            raise KeyError("boom")
    assert os.listdir(tmp_path) == []
    with atomic_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
        assert not target.exists()
    assert (target / "a").read_text() == "1" and os.listdir(tmp_path) == ["out.zarr"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with atomic_dir(target):
            pass
