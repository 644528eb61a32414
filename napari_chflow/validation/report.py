"""The report: run the seven experiments (:data:`EXPERIMENTS`) and write ``validation.md`` with a
header (date, command, hardware, model, training data and recipe), the summary of the checks,
the shortfalls and one section per experiment.

An interrupted run resumes: each finished experiment is kept in ``OUT/.validation-partial/`` with
a fingerprint of the weights, the model's options, the settings and the package version
(:func:`run_fingerprint`); a rerun with the same fingerprint takes it from there and runs only the
rest. The folder is removed once the report is written."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import physics
from ..io import atomic_write_text, file_sha256, portable_path
from ..model import weights_sha256
from ..training import best_epoch_number
from .bunny import bunny
from .checks import Check, num, shortfalls, table
from .coarsening import coarsening
from .config import PRESETS, ValidationConfig, ValidationError
from .context import Context, Section
from .domain_extrapolation import domain_extrapolation
from .ensemble import ensemble
from .heldout import TrainingSpec, training_spec
from .long_horizon import long_horizon
from .speed import speed_memory
from .time_extrapolation import time_extrapolation

EXPERIMENTS: tuple[Callable[[Context], Section], ...] = (
    time_extrapolation, domain_extrapolation, bunny, coarsening, ensemble, speed_memory,
    long_horizon)
PARTIAL_DIR = ".validation-partial"  # finished experiments of an interrupted run, under out_dir


def run_fingerprint(model, config: ValidationConfig, experiment: str = "") -> str:
    """sha256 (hex) of what the result of ``experiment`` (an :data:`EXPERIMENTS` name) depends on:
    the weights, the model's options (not its recipe), the settings other than the thread count,
    and the package version. The bunny mesh enters only the ``bunny`` experiment's, by its
    content: the same file named by another path (relative to another folder, or absolute)
    keeps what was finished, and no other experiment is run again for it."""
    from .. import __version__

    options = {k: v for k, v in asdict(model.info).items() if k not in ("recipe", "data")}
    settings = {k: v for k, v in asdict(config).items() if k not in ("threads", "bunny_path")}
    if experiment == "bunny":
        mesh = Path(config.bunny_path).expanduser() if config.bunny_path else None
        settings["bunny"] = (file_sha256(mesh) if mesh is not None and mesh.is_file() else
                             str(mesh.resolve()) if mesh is not None else None)
    text = json.dumps([weights_sha256(model.state_dict()), options, settings, __version__],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _save_section(folder: Path, name: str, fingerprint: str, sec: Section, threads: int) -> None:
    record = {"fingerprint": fingerprint, "threads": threads, "section": asdict(sec)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{name}.json", json.dumps(record, default=float))


def _load_section(folder: Path, name: str, fingerprint: str) -> tuple[Section, int] | None:
    """The kept result of experiment ``name`` and its thread count, or None if there is none for
    this fingerprint (or the file is unreadable: then the experiment runs again)."""
    try:
        record = json.loads((folder / f"{name}.json").read_text())
        if record.get("fingerprint") != fingerprint:
            return None
        fields = dict(record["section"])
        fields["checks"] = [Check(**c) for c in fields.get("checks", [])]
        return Section(**fields), int(record["threads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def environment(device=None) -> dict[str, str]:
    """Hardware and software of this run: CPU model, cores, torch threads, versions, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"cpu": f"{cpu}, {os.cpu_count()} logical cores",
           "torch threads": str(torch.get_num_threads()),
           "software": f"Python {platform.python_version()}, torch {torch.__version__}, "
                       f"numpy {np.__version__}, {platform.system()} {platform.release()}",
           "device": str(device or "cpu")}
    if device is not None and physics.resolve_device(device).type == "cuda":
        env["device"] = f"{device}: {torch.cuda.get_device_name(physics.resolve_device(device))}"
    return env


def _hardware_text(h) -> str:
    """The training ``hardware`` record (a dict from training.py) as one phrase."""
    if not isinstance(h, dict):
        return str(h or "?")
    parts = [f"{h.get('device', '?')} ({h.get('name', '?')})"]
    if h.get("world_size"):
        parts.append(f"{h['world_size']} process(es)")
    if h.get("threads"):
        parts.append(f"{h['threads']} threads")
    if h.get("torch"):
        parts.append(f"torch {h['torch']}")
    return ", ".join(parts)


def model_summary(model, spec: TrainingSpec) -> dict[str, str]:
    """Model, training data and training recipe lines for the report header."""
    info = model.info
    out = {"model": f"CRNN {info.config.n_layers} ConvGRU x {info.config.hidden} channels, "
                    f"{info.param_count:,} parameters, tau = {info.tau:g}, eps = {info.eps:g}, "
                    f"downscale x1/{info.downscale}, napari-chflow {info.version}"}
    d = info.data or {}
    if spec.known:
        c = spec.dataset
        out["training data"] = (f"{c.n_seq} sequences ({d.get('n_train', '?')} train / "
                                f"{d.get('n_val', '?')} val), {c.size}^3, {c.frames} frames "
                                f"(training used {spec.frames}: {spec.n_tau} tau), {c.solver} "
                                f"solver, dataset seed {c.seed}")
    else:
        out["training data"] = ("not described in the checkpoint; assumed the paper's 64^3, 50 "
                                "frames")
    r = info.recipe or {}
    if r:
        tc = r.get("train_config") or {}
        out["training recipe"] = (f"{r.get('epochs_done', '?')} epochs (curriculum "
                                  f"{tc.get('curriculum_epochs', '?')}), lr {tc.get('lr', '?')}, "
                                  f"batch {tc.get('batch_size', '?')}, best epoch "
                                  f"{best_epoch_number(r)}, best validation loss "
                                  f"{num(r.get('best_val_loss_full', float('nan')))}, "
                                  f"{num(r.get('wall_seconds', float('nan')) / 3600)} h on "
                                  f"{_hardware_text(r.get('hardware'))}")
    else:
        out["training recipe"] = "none recorded (untrained model?)"
    return out


def render_report(sections: Sequence[Section], header: dict[str, str], command: str) -> str:
    """The markdown report: header table, summary of the checks, shortfalls, the sections."""
    checks = [c for s in sections for c in s.checks]
    lines = ["# Validation report", "",
             "Generated by `napari_chflow.validation` from the model and the project's own solvers; "
             "regenerate with the command below. Each experiment states the paper's number "
             "(Lanzoni et al. 2024) beside ours.", "",
             table(["", ""], [[k, v] for k, v in header.items()]), "",
             "## Summary", "",
             table(["experiment", "quantity", "paper", "ours", "verdict"],
                    [[c.experiment, c.quantity, c.paper, c.show(c.ours), c.verdict()]
                     for c in checks]), "",
             "## Where we fall short", ""]
    falls = shortfalls(checks) + [p for s in sections for p in s.problems]
    lines += [f"- {s}" for s in falls] if falls else ["Nothing: every check meets the paper's number."]
    for s in sections:
        lines += ["", f"## {s.title}", "", s.body, "", f"_Run time: {s.seconds:.0f} s._"]
    lines += ["", "## Reproduce", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def validate(model, config: ValidationConfig | None = None, out_dir: str | Path = "docs",
             command: str | None = None, model_source: str = "", progress: bool = True,
             only: Sequence[str] | None = None) -> Path:
    """Run the seven experiments with ``model`` and write ``out_dir/validation.md`` and its figures
    ``out_dir/validation/*.png``. Returns the report path. Paths in the report (model, bunny
    mesh) are recorded relative to the project, or as file name and sha256
    (:func:`napari_chflow.io.portable_path`).

    ``only``: names of experiments (:data:`EXPERIMENTS`' function names) to run and keep in
    ``out_dir/.validation-partial/`` without writing the report (returns that folder), so that
    experiments can run in parallel processes; a later run without ``only`` writes the report
    from them."""
    names = [run.__name__ for run in EXPERIMENTS]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValidationError(f"unknown experiment(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(names)}")
    config = config or PRESETS["cpu"]
    physics.resolve_device(config.device)
    out = Path(out_dir)
    fig_dir = out / "validation"
    fig_dir.mkdir(parents=True, exist_ok=True)
    command = command or f"chflow validate --scale {config.scale}"

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    model.eval()
    try:
        spec = training_spec(model)
        ctx = Context(model, config, spec, fig_dir, log)
        header = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "command": f"`{command}`", **environment(config.device)}
        header["model source"] = portable_path(model_source) if model_source else "model object"
        header.update(model_summary(model, spec))
        settings = {**asdict(config), "bunny_path": portable_path(config.bunny_path)
                    if config.bunny_path else None}
        header["scale preset"] = (
            f"{config.scale}: " + ", ".join(f"{k}={v}" for k, v in settings.items()
                                            if k not in ("scale", "device", "threads")))
        header["ground truth"] = (f"{config.long_solver} solver for the long runs (1, 4, 5), "
                                  f"{config.short_solver} for the short ones (2, 3)")
        override = "" if config.train_n_tau is None else " (preset override)"
        header["training length used"] = f"{ctx.train_n_tau} tau (box {ctx.size}^3){override}"
        partial = out / PARTIAL_DIR
        sections, resumed = [], []
        for run in EXPERIMENTS:
            if only and run.__name__ not in only:
                continue
            fingerprint = run_fingerprint(model, config, run.__name__)
            kept = _load_section(partial, run.__name__, fingerprint)
            if kept is not None:
                sec, sec_threads = kept
                plural = "s" if sec_threads != 1 else ""
                resumed.append(f"{run.__name__} ({sec.seconds:.0f} s, "
                               f"{sec_threads} thread{plural})")
                log(f"validate: {run.__name__} kept from an earlier run")
            else:
                t0 = time.perf_counter()
                log(f"validate: {run.__name__} ...")
                sec = run(ctx)
                sec.seconds = time.perf_counter() - t0
                log(f"validate: {run.__name__} done in {sec.seconds:.1f} s")
                if sec.ran:  # one that could not run (a missing input) is tried again
                    _save_section(partial, run.__name__, fingerprint, sec,
                                  torch.get_num_threads())
            sections.append(sec)
        if only:
            return partial
        header["total run time"] = f"{sum(s.seconds for s in sections):.0f} s"
        if resumed:
            header["resumed"] = ("earlier runs of the same model and settings (interrupted, or "
                                 "--only) gave "
                                 + ", ".join(resumed))
        path = atomic_write_text(out / "validation.md", render_report(sections, header, command))
        shutil.rmtree(partial, ignore_errors=True)
    finally:
        torch.set_num_threads(threads)
    return path
