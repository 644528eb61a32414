"""Validation report: checks against the paper's numbers, F/V on a coarse grid, held-out ICs, and
a tiny end-to-end report (every section, figures under 300 KB)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_chflow import physics
from napari_chflow.dataset import DatasetConfig, sequence_params
from napari_chflow.io import file_sha256
from napari_chflow.model import CRNN, downsample, save_checkpoint, upsample
from napari_chflow.validation import (
    MAX_PNG_BYTES,
    Check,
    TrainingSpec,
    ValidationError,
    heldout_ics,
    parse_overrides,
    preset,
    record_frames,
    shortfalls,
    training_spec,
    validate,
)

SECTIONS = ("## Summary", "## Where we fall short", "## 1. Time extrapolation",
            "## 2. Domain extrapolation", "## 3. Stanford bunny",
            "## 4. Coarsening and free-energy decay", "## 5. Ensemble of random initial conditions",
            "## 6. Speed and memory", "## 7. Long horizon", "## Reproduce")


def test_check_flags_a_number_beyond_the_paper_and_says_by_how_much():
    bad = Check("1. time", "δ at 10x", 4.5, "δ ≲ ε = 3", 3.0, "max", " grid units")
    good = replace(bad, ours=2.0)
    slow = Check("6. speed", "CRNN speed-up", 25.0, "≈ 10^3", 1000.0, "min", "x")
    lost = replace(bad, ours=float("nan"))
    assert not bad.ok and good.ok and not slow.ok and not lost.ok
    assert good.shortfall() is None
    assert "4.5 grid units" in bad.shortfall() and "50% above" in bad.shortfall()
    assert "a factor 40 below" in slow.shortfall()
    assert "could not be measured" in lost.shortfall()
    assert shortfalls([good, bad, slow]) == [bad.shortfall(), slow.shortfall()]
    pct = Check("4. coarsening", "max relative F/V error", 0.11, "< 5.5%", 0.055, percent=True)
    assert pct.shortfall().startswith(
        "4. coarsening: max relative F/V error = 11%, 2 times the limit 5.5%")


def test_fv_is_compared_on_the_model_grid_because_upsampling_inflates_it():
    x = np.arange(32)
    phi = (0.5 + 0.45 * np.sin(2 * np.pi * x / 32))[None, None, :] * np.ones((32, 32, 1))
    phi = phi.astype(np.float32)

    def gradient_part(field, spacing=1):  # F/V minus the bulk term (18/eps) phi^2 (1-phi)^2
        f = field.astype(np.float64)
        bulk = float(np.mean(6.0 * f**2 * (1 - f) ** 2))
        return physics.free_energy_density(field, 3.0, spacing) - bulk

    fine = gradient_part(phi)
    coarse = gradient_part(downsample(phi, 2), spacing=2)
    staircase = gradient_part(upsample(downsample(phi, 2), 2))
    assert fine > 0
    assert coarse == pytest.approx(fine, rel=0.02)  # resolution-independent for a smooth field
    assert staircase == pytest.approx(2 * fine, rel=0.05)  # nearest upsampling doubles |grad|^2


def test_the_model_grid_floor_is_what_an_exact_coarse_model_scores():
    """``delta_grid``: the solver's state sent to the model grid and back. A model that matches
    the solver exactly on its grid scores that floor, no less; a curved interface between the
    coarse nodes has a floor of a good part of a grid unit; a state that is already blockwise
    constant on the model grid has none."""
    from napari_chflow.seeds import sphere
    from napari_chflow.validation import frame_metrics

    info = CRNN(downscale=2).info
    gt = sphere((32, 32, 32), radius=9.3, center=(16.4, 15.7, 16.2)).astype(np.float32)
    exact = downsample(gt, 2)
    metrics = frame_metrics(gt, exact, info, mass0=float(exact.sum()))
    assert metrics["delta"] == pytest.approx(metrics["delta_grid"])
    assert 0.3 < metrics["delta_grid"] < 1.0, metrics["delta_grid"]  # staircase of a sphere
    blocky = upsample(exact, 2)
    assert frame_metrics(blocky, exact, info, mass0=1.0)["delta_grid"] == pytest.approx(0, abs=1e-9)


def test_record_frames_dense_start_log_tail_and_requested_times():
    f = record_frames(1000, n_log=20, dense=10, extra=[19, 190, 5000])
    assert list(f[:11]) == list(range(11))
    assert f[-1] == 1000 and 19 in f and 190 in f and 5000 not in f
    assert np.all(np.diff(f) > 0)
    assert list(record_frames(3)) == [0, 1, 2, 3]


def test_training_spec_reads_the_checkpoint_description():
    cfg = DatasetConfig(n_seq=6, frames=30, size=32, seed=7, solver="spectral")
    model = CRNN(data={"config": cfg.to_dict()}, recipe={"train_config": {"frames": 20}})
    spec = training_spec(model)
    assert (spec.size, spec.frames, spec.n_tau, spec.known) == (32, 20, 19, True)
    assert spec.train_seeds == {sequence_params(cfg, i)["seed"] for i in range(6)}
    windows = CRNN(data={"config": cfg.to_dict()}, recipe={"train_config": {"window": 12}})
    assert training_spec(windows).n_tau == 11  # the sampled windows are what it saw
    blank = training_spec(CRNN())
    assert (blank.size, blank.n_tau, blank.known) == (64, 49, False)


def test_heldout_ics_avoid_training_seeds_and_have_the_asked_mean():
    cfg = DatasetConfig(n_seq=5, size=16, seed=3)
    low = heldout_ics(TrainingSpec(16, 10, 0.5, True, cfg), 1, 16, mean=0.4)[0][0]
    assert float(low.mean()) == pytest.approx(0.4, abs=1e-5)
    first = heldout_ics(TrainingSpec(16, 10, 0.5, True, cfg), 2, 16)
    # pretend the first held-out Perlin seed was a training seed: it must be skipped
    spec = TrainingSpec(16, 10, 0.5, True, cfg, frozenset({first[0][1]["seed"]}))
    ics = heldout_ics(spec, 2, 16)
    assert ics[0][1]["seed"] == first[1][1]["seed"]
    assert all(p["seed"] not in spec.train_seeds for _, p in ics)
    for phi, p in ics:
        assert phi.shape == (16, 16, 16) and phi.dtype == np.float32
        assert float(phi.mean()) == pytest.approx(0.5, abs=1e-5)
        assert p["dataset_seed"] == 3 + 10_000


def test_preset_overrides_and_bad_settings():
    cfg = preset("tiny", memory=False, threads=None)
    assert cfg.scale == "tiny" and cfg.memory is False and cfg.threads is None
    sets = parse_overrides(["coarsen_n_tau=40", "bench_sizes=[8, 12]", "long_solver=explicit"])
    assert sets == {"coarsen_n_tau": 40, "bench_sizes": (8, 12), "long_solver": "explicit"}
    assert preset("cpu", **sets).coarsen_n_tau == 40
    with pytest.raises(ValidationError, match="KEY=VALUE"):
        parse_overrides(["coarsen-size"])
    with pytest.raises(ValidationError, match="solvers"):
        preset("tiny", long_solver="magic")
    with pytest.raises(ValidationError, match="scale"):
        preset("huge")
    with pytest.raises(ValidationError, match="ValidationConfig"):
        preset("tiny", sizes=3)
    assert preset("cpu").ensemble_n >= 20 and preset("full").coarsen_size == 128


def test_tiny_report_has_every_section_small_figures_and_flags_an_untrained_model(tmp_path, bunny_path):
    torch.manual_seed(0)
    model = CRNN()  # untrained: phi barely moves, so F/V does not decay as the solver's does
    cfg = replace(preset("tiny"), time_factors=(2, 10), coarsen_n_tau=40, bench_sizes=(8, 12),
                  memory=False, n_record=12, bunny_path=str(bunny_path), threads=1)
    ckpt = save_checkpoint(tmp_path / "untrained.pt", model, recipe={}, data={})
    report = validate(model, cfg, out_dir=tmp_path, command="chflow validate --scale tiny",
                      model_source=str(ckpt), progress=False)
    text = report.read_text()
    # no path of this machine: files outside the project appear as name and sha256
    assert str(tmp_path) not in text and str(bunny_path.parent) not in text
    assert f"untrained.pt (sha256 {file_sha256(ckpt)[:16]})" in text
    assert f"bun_zipper_res3.ply (sha256 {file_sha256(bunny_path)[:16]})" in text
    assert report == tmp_path / "validation.md"
    for title in SECTIONS:
        assert title in text
    links = re.findall(r"!\[[^\]]*\]\((validation/[^)]+\.png)\)", text)
    assert len(links) == 8
    for link in links:
        png = tmp_path / link
        assert png.is_file() and 0 < png.stat().st_size < MAX_PNG_BYTES
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    falls = text.split("## Where we fall short")[1].split("\n## ")[0]
    assert "4. coarsening: max relative F/V error" in falls  # untrained model is flagged
    assert "7. long horizon (16^3, 40 tau): max relative F/V error" in falls
    assert "mass drift" not in falls  # the divergence layer conserves mass even untrained
    # the spectral ground truth stays close to the explicit solver
    m = re.search(r"stays within δ = ([0-9.e-]+) grid units", text)
    assert m and float(m.group(1)) < 0.1
    speed = text.split("## 6. Speed and memory")[1]
    assert re.search(r"\| explicit \| 8\^3 \| 2 \| [0-9.e-]+ \| 1 \|", speed)
    assert "chflow validate --scale tiny" in text.split("## Reproduce")[1]


def test_an_interrupted_report_resumes_and_reruns_only_what_is_missing(tmp_path, monkeypatch):
    from napari_chflow.validation import Section
    from napari_chflow.validation import report as report_module

    calls, interrupt = [], [True]

    def first(ctx):
        calls.append("first")
        return Section("a", "1. First", body="alpha body",
                       checks=[Check("1. a", "delta", np.float32(3.5), "<= 3", 3.0)])

    def second(ctx):
        calls.append("second")
        if interrupt[0]:
            raise KeyboardInterrupt  # the user stops the run (or the machine goes away)
        return Section("b", "2. Second", body="beta body")

    monkeypatch.setattr(report_module, "EXPERIMENTS", (first, second))
    torch.manual_seed(0)
    model, cfg = CRNN(), preset("tiny", threads=1)
    with pytest.raises(KeyboardInterrupt):
        validate(model, cfg, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "validation.md").exists()
    interrupt[0] = False
    text = validate(model, replace(cfg, threads=2), out_dir=tmp_path, progress=False).read_text()
    assert calls == ["first", "second", "second"]  # the finished experiment is not run again
    assert "alpha body" in text and "beta body" in text
    assert "1. a: delta" in text.split("## Where we fall short")[1]  # its check survives the file
    assert "| resumed | earlier runs of the same model and settings (interrupted, or --only) gave first" in text
    assert not (tmp_path / report_module.PARTIAL_DIR).exists()
    # a kept result is used only for the same weights and settings
    interrupt[0] = True
    with pytest.raises(KeyboardInterrupt):
        validate(model, cfg, out_dir=tmp_path, progress=False)
    interrupt[0] = False
    calls.clear()
    validate(model, replace(cfg, n_record=cfg.n_record + 1), out_dir=tmp_path, progress=False)
    assert calls == ["first", "second"]  # the kept result was for other settings
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    interrupt[0] = True
    with pytest.raises(KeyboardInterrupt):
        validate(model, cfg, out_dir=tmp_path, progress=False)
    calls.clear()
    interrupt[0] = False
    with torch.no_grad():
        next(model.parameters()).sub_(0.01)
    validate(model, cfg, out_dir=tmp_path, progress=False)
    assert calls == ["first", "second"]  # the kept result was for other weights
    # experiments spread over processes: --only keeps them, the plain run writes the report
    calls.clear()
    spread = tmp_path / "spread"
    kept = validate(model, cfg, out_dir=spread, progress=False, only=["second"])
    assert calls == ["second"] and kept == spread / report_module.PARTIAL_DIR
    assert not (spread / "validation.md").exists()
    assert "beta body" in validate(model, cfg, out_dir=spread, progress=False).read_text()
    assert calls == ["second", "first"]
    with pytest.raises(ValidationError, match="unknown experiment.*choose from first, second"):
        validate(model, cfg, out_dir=tmp_path, progress=False, only=["third"])


def test_an_experiment_that_could_not_run_is_not_kept_for_the_next_run(tmp_path, bunny_path):
    """The bunny section with a mesh path that does not exist (here: relative to another folder)
    says so, and is not kept as finished: the same command with the mesh in place runs it."""
    from napari_chflow.validation import report as report_module

    torch.manual_seed(0)
    model = CRNN()
    cfg = replace(preset("tiny", threads=1), bunny_path=str(tmp_path / "bun_zipper_res3.ply"))
    partial = validate(model, cfg, out_dir=tmp_path / "out", progress=False, only=["bunny"])
    assert partial == tmp_path / "out" / report_module.PARTIAL_DIR
    assert not (partial / "bunny.json").exists()
    (tmp_path / "bun_zipper_res3.ply").write_bytes(bunny_path.read_bytes())
    validate(model, cfg, out_dir=tmp_path / "out", progress=False, only=["bunny"])
    kept = report_module._load_section(partial, "bunny",
                                       report_module.run_fingerprint(model, cfg, "bunny"))
    assert kept is not None and kept[0].ran and "Not run" not in kept[0].body
    assert any(c.quantity.startswith("δ at t=") for c in kept[0].checks)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_validate_on_cuda_without_gpu_is_a_one_line_error(tmp_path, capsys):
    from napari_chflow.cli import main
    from napari_chflow.model import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", CRNN(), recipe={}, data={})
    assert main(["validate", "--scale", "tiny", "--model", str(ckpt), "--device", "cuda",
                 "-o", str(tmp_path / "docs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cuda" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "docs" / "validation.md").exists()


def test_the_bunny_enters_only_its_experiments_fingerprint_by_content(tmp_path, bunny_path,
                                                                      monkeypatch):
    """A resumed report may name the mesh by another path: nothing finished is run again; a
    different mesh reruns only the bunny experiment."""
    from napari_chflow.validation.report import run_fingerprint

    model = CRNN()
    (tmp_path / "a").mkdir()
    copy = tmp_path / "a" / "bun.ply"
    copy.write_bytes(bunny_path.read_bytes())
    monkeypatch.chdir(tmp_path / "a")
    by_name, by_path, none = (replace(preset("tiny"), bunny_path=p)
                              for p in ("bun.ply", str(copy), None))
    for name in ("bunny", "coarsening"):
        assert run_fingerprint(model, by_name, name) == run_fingerprint(model, by_path, name)
    assert run_fingerprint(model, by_name, "coarsening") == run_fingerprint(model, none, "coarsening")
    before = {n: run_fingerprint(model, by_name, n) for n in ("bunny", "coarsening")}
    copy.write_bytes(bunny_path.read_bytes() + b"\n")  # another mesh under the same name
    assert run_fingerprint(model, by_name, "bunny") != before["bunny"]
    assert run_fingerprint(model, by_name, "coarsening") == before["coarsening"]
