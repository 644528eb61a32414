"""Every ``chflow`` subcommand driven with bad input, interrupts and hostile files.

The promise (README, "What the command line guarantees"): a failure a user can cause ends with
exit status 2 and exactly one line on stderr that names the problem and the fix, never a
traceback, and leaves nothing a reader would take as a valid result; Ctrl-C exits with 130 and
an interrupted run is marked so; overwriting replaces a result only with a complete one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_chflow.cli import main
from napari_chflow.dataset import DATASET_FILE, sequence_path
from napari_chflow.io import SequenceFormatError, open_sequence, read_sequence, write_sequence
from napari_chflow.model import CRNN, CRNNConfig, checkpoint_payload, save_checkpoint
from napari_chflow.seeds import perlin

REPO = Path(__file__).resolve().parents[1]


class _Evil:
    """Pickles to a call of os.system: a safe checkpoint loader must refuse it unexecuted."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _flip_bytes(chunk: Path, start: int = 64, n: int = 8) -> None:
    data = bytearray(chunk.read_bytes())
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    chunk.write_bytes(bytes(data))


def _truncate(chunk: Path) -> None:
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dataset_factory):
    """Inputs, good and bad, shared by the table (built once)."""
    root = tmp_path_factory.mktemp("bad_input")
    f = {"root": root}
    phi = perlin((16, 16, 16), mean=0.5, seed=4)
    f["ic"] = write_sequence(root / "ic.zarr", phi[None], attrs={"seed": {"kind": "perlin"}})
    f["percent"] = write_sequence(root / "percent.zarr", (100 * phi)[None])  # percent data
    f["odd"] = write_sequence(root / "odd.zarr", perlin((15, 15, 15), seed=1)[None])
    donor = write_sequence(root / "donor.zarr", perlin((16, 16, 16), seed=9)[None])
    for name, damage in (("flipped", _flip_bytes), ("truncated", _truncate),
                         ("edited", lambda chunk: shutil.copy(donor / "0.0.0.0", chunk))):
        f[name] = write_sequence(root / f"{name}.zarr", phi[None])
        damage(f[name] / "0.0.0.0")  # edited: decodes fine, to other values
    f["existing"] = write_sequence(root / "existing.zarr", phi[None])
    np.save(root / "flat.npy", phi[0])  # one 2D slice, not a volume

    model = CRNN(CRNNConfig(hidden=2, n_layers=1))
    f["model"] = save_checkpoint(root / "tiny.pt", model, recipe={}, data={})
    payload = checkpoint_payload(model, recipe={}, data={})
    payload["tau"] = -0.5  # non-physical, checksum still valid (it covers the weights)
    torch.save(payload, root / "negative_tau.pt")
    f["negative_tau"] = root / "negative_tau.pt"
    payload = checkpoint_payload(CRNN(), recipe={}, data={})
    payload["config"]["hidden"] = 4000  # 1 kB file claiming a 3.9 GB model
    torch.save(payload, root / "huge.pt")
    f["huge"] = root / "huge.pt"
    torch.save({"weights": _Evil()}, root / "evil.pt")
    f["evil"] = root / "evil.pt"
    (root / "text.pt").write_text("not a checkpoint")
    f["text"] = root / "text.pt"

    f["data"] = tiny_dataset_factory(4, 0)
    f["other_data"] = tiny_dataset_factory(4, 1)
    f["broken_data"] = root / "broken_data"
    shutil.copytree(f["data"], f["broken_data"])
    _truncate(sequence_path(f["broken_data"], 0) / "1.0.0.0")
    _truncate(sequence_path(f["broken_data"], 1) / "1.0.0.0")
    f["run"] = root / "run"
    assert main(["train", str(f["data"]), "-o", str(f["run"]), "--epochs", "1", "--quiet",
                 "--curriculum-epochs", "0"]) == 0
    return f


def _nothing_valid(path: Path) -> bool:
    """Nothing at ``path``, or nothing that opens as a finished sequence store."""
    if not path.exists():
        return True
    try:
        open_sequence(path)
    except SequenceFormatError:
        return True
    return False


# (id, argv, a phrase the message must contain, output that must not look valid)
CASES = [
    # seed
    ("seed-too-small", "seed perlin --size 2 -o {out}", "too small", "{out}"),
    ("seed-size-beyond-memory", "seed perlin --size 100000 -o {out}", "available", "{out}"),
    ("seed-mesh-without-path", "seed mesh -o {out}", "--path", "{out}"),
    ("seed-mesh-missing", "seed mesh --path {root}/none.ply -o {out}", "does not exist", "{out}"),
    ("seed-overwrite-a-file", "seed slab --size 8 -o {file} --overwrite", "refusing", None),
    ("seed-output-named-like-a-file", "seed slab --size 8 -o {root}/phi.npy", "not a .npy file",
     "{root}/phi.npy"),
    ("rollout-ic-npy-not-3d", "rollout {root}/flat.npy -o {out}", "one (Z, Y, X) volume", "{out}"),
    ("seed-existing-output", "seed slab --size 8 -o {existing}", "overwrite", None),
    ("seed-not-a-number", "seed perlin --size abc -o {out}", "invalid int", "{out}"),
    ("seed-bad-mean", "seed perlin --size 8 --mean 1.5 -o {out}", "mean", "{out}"),
    # simulate
    ("simulate-negative-dt", "simulate {ic} --n-tau 2 --dt -0.001 -o {out}", "dt=-0.001", "{out}"),
    ("simulate-negative-dt-spectral",
     "simulate {ic} --n-tau 2 --solver spectral --dt -0.001 -o {out}", "dt=-0.001", "{out}"),
    ("simulate-zero-dt", "simulate {ic} --n-tau 2 --dt 0 -o {out}", "dt=0", "{out}"),
    ("simulate-nan-dt", "simulate {ic} --n-tau 2 --dt nan -o {out}", "dt=nan", "{out}"),
    ("simulate-nan-tau", "simulate {ic} --n-tau 2 --tau nan -o {out}", "tau=nan", "{out}"),
    ("simulate-forced-blowup", "simulate {ic} --n-tau 3 --dt 0.3 --force -o {out}", "diverged",
     "{out}"),
    ("simulate-percent-ic", "simulate {percent} --n-tau 2 -o {out}", "spans", "{out}"),
    ("simulate-over-stability-bound", "simulate {ic} --dt 0.01 -o {out}", "stability bound",
     "{out}"),
    ("simulate-missing-ic", "simulate {root}/missing.zarr -o {out}", "does not exist", "{out}"),
    ("simulate-flipped-chunk", "simulate {flipped} --n-tau 2 -o {out}", "regenerate", "{out}"),
    ("simulate-edited-chunk", "simulate {edited} --n-tau 2 -o {out}", "checksum", "{out}"),
    ("simulate-truncated-chunk", "simulate {truncated} --n-tau 2 -o {out}", "damaged", "{out}"),
    ("simulate-negative-n-tau", "simulate {ic} --n-tau -1 -o {out}", "n_tau", "{out}"),
    # rollout
    ("rollout-percent-ic", "rollout {percent} --n-tau 2 --model {model} -o {out}", "spans",
     "{out}"),
    ("rollout-negative-tau-checkpoint", "rollout {ic} --n-tau 2 --model {negative_tau} -o {out}",
     "tau", "{out}"),
    ("rollout-huge-checkpoint", "rollout {ic} --n-tau 2 --model {huge} -o {out}", "hidden",
     "{out}"),
    ("rollout-pickle-checkpoint", "rollout {ic} --n-tau 2 --model {evil} -o {out}", "refused",
     "{out}"),
    ("rollout-text-checkpoint", "rollout {ic} --n-tau 2 --model {text} -o {out}", "checkpoint",
     "{out}"),
    ("rollout-odd-grid", "rollout {odd} --n-tau 2 --model {model} -o {out}", "multiple", "{out}"),
    # compare
    ("compare-percent-ic", "compare {percent} --n-tau 2 --model {model} -o {out}", "spans",
     "{out}/solver.zarr"),
    ("compare-negative-tau-checkpoint", "compare {ic} --n-tau 2 --model {negative_tau} -o {out}",
     "tau", "{out}/solver.zarr"),
    # dataset
    ("dataset-size-beyond-memory", "dataset --n-seq 2 --size 100000 -o {out}", "available",
     "{out}/" + DATASET_FILE),
    ("dataset-negative-dt", "dataset --n-seq 2 --size 8 --dt -1 -o {out}", "dt", "{out}/"
     + DATASET_FILE),
    ("dataset-infinite-tau", "dataset --n-seq 2 --size 8 --tau inf -o {out}", "tau",
     "{out}/" + DATASET_FILE),
    ("dataset-bad-shard", "dataset --n-seq 2 --shard 3 -o {out}", "shard", "{out}/" + DATASET_FILE),
    # train
    ("train-not-a-dataset", "train {root} -o {out}", "not a chflow dataset", "{out}/best.pt"),
    ("train-damaged-dataset", "train {broken_data} -o {out} --epochs 1 --quiet", "chflow dataset",
     "{out}/best.pt"),
    ("train-resume-other-dataset", "train {other_data} -o {run} --epochs 2 --resume --quiet",
     "not", None),
    ("train-existing-run", "train {data} -o {run} --epochs 2 --quiet", "--resume", None),
    # bench, validate
    ("bench-size-beyond-memory", "bench solvers --sizes 100000", "available", None),
    ("validate-bad-setting", "validate --scale tiny --set nonsense=1 -o {out}", "KEY=VALUE",
     "{out}/validation.md"),
]


@pytest.mark.parametrize(("argv", "phrase", "output"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_valid(files, tmp_path, capsys, argv,
                                                                phrase, output):
    notes = tmp_path / "notes"
    notes.write_text("precious")
    names = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out.zarr"),
                                                      "file": str(notes)}
    run_before = (files["run"] / "best.pt").read_bytes()
    code = _run([a.format(**names) for a in argv.split()])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and phrase in err, err
    if output is not None:
        assert _nothing_valid(Path(output.format(**names)))
    assert notes.read_text() == "precious"  # a file is never overwritten
    assert (files["run"] / "best.pt").read_bytes() == run_before  # the run is left as it was
    assert read_sequence(files["existing"])[0].shape == (1, 16, 16, 16)


def _run(argv: list[str]) -> int:
    """``main(argv)``, or the status argparse exits with for a malformed command line."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_checkpoint_errors_never_suggest_turning_the_safe_loading_off(files, capsys):
    assert main(["rollout", str(files["ic"]), "--model", str(files["evil"]), "-o",
                 str(files["root"] / "never.zarr")]) == 2
    err = capsys.readouterr().err
    assert "weights_only" not in err and "Re-running" not in err
    assert "posix.system" in err or "os.system" in err  # names what was refused


@pytest.mark.parametrize("hidden", [4000, 200])
def test_crafted_architecture_is_refused_before_any_weights_are_allocated(files, monkeypatch,
                                                                          hidden):
    """A 1 kB file claiming hidden = 4000 (3.9 GB of weights; beyond the bounds) or 200 (within
    them, but not the shapes of its weights) is refused from its header and the weights'
    shapes: nothing but meta tensors is built."""
    from napari_chflow import model as model_module

    payload = checkpoint_payload(CRNN(), recipe={}, data={})
    payload["config"]["hidden"] = hidden  # the weights' checksum stays valid
    path = files["root"] / f"crafted_{hidden}.pt"
    torch.save(payload, path)
    built = []
    init = model_module.CRNN.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(model_module.CRNN, "__init__", spy)
    with pytest.raises(model_module.CheckpointError, match="hidden|architecture"):
        model_module.load_checkpoint(path)
    assert set(built) <= {"meta"}


def test_memory_is_checked_before_allocating(files, tmp_path, capsys, monkeypatch):
    """With 16 KiB available every command refuses a 16^3 run up front, naming the estimate and
    what is available; a 1200^3 seed would need ~150 GiB: refused on any ordinary machine."""
    from napari_chflow import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2**14)
    out = tmp_path / "o.zarr"
    for argv in (["seed", "perlin", "--size", "16", "-o", str(out)],
                 ["simulate", str(files["ic"]), "--n-tau", "1", "-o", str(out)],
                 ["rollout", str(files["ic"]), "--model", str(files["model"]), "-o", str(out)],
                 ["dataset", "--n-seq", "2", "--size", "16", "-o", str(tmp_path / "d")],
                 ["train", str(files["data"]), "-o", str(tmp_path / "t"), "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs about" in err and "16 KiB available" in err
    assert not out.exists() and not (tmp_path / "d").exists() and not (tmp_path / "t").exists()
    assert memory.seed_bytes((1200,) * 3) > 100 * 2**30


def test_debug_flag_and_environment_variable_print_the_traceback(files, capsys, monkeypatch):
    argv = ["simulate", str(files["ic"]), "--dt", "0", "-o", str(files["root"] / "never.zarr")]
    for extra, env in ((["--debug"], None), ([], "1")):
        if env:
            monkeypatch.setenv("CHFLOW_DEBUG", env)
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.strip().splitlines()[-1].startswith("chflow simulate: error")


# --------------------------------------------------------------------------- in a subprocess


@pytest.fixture
def chflow():
    """``chflow(*args, **popen_kwargs) -> Popen``: the CLI in a subprocess. Whatever is still
    running when the test ends (a failed assertion, a timeout) is killed, so a long run cannot
    outlive its test and load the machine under the tests that follow."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs: list[subprocess.Popen] = []

    def spawn(*args: str, **kwargs) -> subprocess.Popen:
        # Ctrl-C reaches the CLI as in a terminal even where the suite itself runs as a background
        # job, which starts with SIGINT ignored (children inherit that, and Python keeps it)
        procs.append(subprocess.Popen([sys.executable, "-m", "napari_chflow.cli", *args],
                                      env=env, stderr=subprocess.PIPE, text=True,
                                      preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                       signal.SIG_DFL),
                                      **kwargs))
        return procs[-1]

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait_for_frames(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``path`` (or its partial sibling) holds ``n`` frames' chunks."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        for p in [path, *path.parent.glob(path.name + ".partial-*")]:
            if len(list(p.glob("*.0.0.0"))) >= n:
                return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {n} frames")


def test_ctrl_c_exits_130_and_marks_the_store_interrupted(files, tmp_path, chflow):
    out = tmp_path / "run.zarr"
    proc = chflow("simulate", str(files["ic"]), "--n-tau", "100000", "-o", str(out))
    _wait_for_frames(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    with pytest.raises(SequenceFormatError, match="interrupted"):
        open_sequence(out)  # every reader sees it: not a finished run
    kept = open_sequence(out, allow_incomplete=True)
    assert kept.attrs["interrupted"] is True and not kept.attrs["complete"] and len(kept) >= 3
    np.testing.assert_array_equal(kept.frame(0), read_sequence(files["ic"])[0][0])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_overwrite_keeps_the_previous_result_until_the_new_one_is_complete(files, tmp_path, sig,
                                                                          chflow):
    out = tmp_path / "run.zarr"
    assert main(["simulate", str(files["ic"]), "--n-tau", "2", "--solver", "spectral",
                 "-o", str(out)]) == 0
    before = read_sequence(out)[0]
    proc = chflow("simulate", str(files["ic"]), "--n-tau", "100000", "-o", str(out),
                  "--overwrite")
    _wait_for_frames(out, 4, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    np.testing.assert_array_equal(read_sequence(out)[0], before)  # the last good result
    assert main(["simulate", str(files["ic"]), "--n-tau", "1", "--solver", "spectral",
                 "-o", str(out), "--overwrite"]) == 0
    assert len(read_sequence(out)[0]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr"]  # no debris left


@pytest.mark.parametrize("damage", ["flipped", "truncated", "edited"])
def test_dataset_rerun_redoes_a_damaged_sequence(tiny_dataset_factory, tmp_path, damage):
    from napari_chflow.dataset import generate_dataset, load_dataset

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset_factory(4, 0), data)
    good = read_sequence(sequence_path(data, 2))[0]
    chunk = sequence_path(data, 2) / "3.0.0.0"
    if damage == "edited":  # a valid chunk of other values: only a checksum can tell
        shutil.copy(sequence_path(data, 1) / "3.0.0.0", chunk)
    else:
        (_flip_bytes if damage == "flipped" else _truncate)(chunk)
    with pytest.raises(SequenceFormatError, match="checksum|damaged"):
        read_sequence(sequence_path(data, 2))  # and so training refuses it (see the table)
    with pytest.warns(UserWarning, match="seq_000002.zarr is incomplete or corrupt"):
        done = generate_dataset(data, load_dataset(data).config, progress=False)
    assert done["generated"] == [2] and done["skipped"] == [0, 1, 3]
    np.testing.assert_array_equal(read_sequence(sequence_path(data, 2))[0], good)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids |= {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            pass
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_dataset_workers_stop_when_the_parent_is_killed(tmp_path, chflow):
    out = tmp_path / "data"
    proc = chflow("dataset", "--n-seq", "4", "--frames", "400", "--size", "16", "--workers", "2",
                  "-o", str(out), "--quiet")
    end, workers = time.monotonic() + 60, set()
    while time.monotonic() < end and len(list((out / "sequences").glob("*.partial-*"))) < 2:
        time.sleep(0.05)
    workers = {k for k in _children(proc.pid)
               if "napari_chflow" in Path(f"/proc/{k}/cmdline").read_text(errors="ignore")
               or "multiprocessing" in Path(f"/proc/{k}/cmdline").read_text(errors="ignore")}
    assert len(workers) >= 2
    proc.kill()
    proc.wait()
    end = time.monotonic() + 5
    while time.monotonic() < end and any(_alive(k) for k in workers):
        time.sleep(0.05)
    assert not any(_alive(k) for k in workers)
