"""``chflow`` command line: seed, simulate, dataset, train, rollout, compare, bench, validate.

Every subcommand has ``--help``. Long work shows a tqdm progress bar; Ctrl-C stops it and keeps
what was finished (frames written so far, completed dataset sequences, the last epoch), and exits
with status 130. Any failure prints one line naming the problem and the fix and exits with status
2; ``--debug`` (or ``CHFLOW_DEBUG=1``) prints the traceback before it.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from . import __version__

DEBUG_ENV = "CHFLOW_DEBUG"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a sentence on what was kept."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2), like every other failure."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shape(size: int) -> tuple[int, int, int]:
    if size < 4:
        raise ValueError(f"--size {size} is too small: use at least 4 voxels per side")
    return (size, size, size)


# --------------------------------------------------------------------------- seed


def _cmd_seed(args) -> None:
    from . import seeds
    from .io import write_sequence

    shape = _shape(args.size)
    params: dict = {"kind": args.kind, "size": args.size}
    if args.kind == "perlin":
        phi = seeds.perlin(shape, octaves=args.octaves, mean=args.mean, seed=args.seed)
        params.update(octaves=args.octaves, mean=args.mean, seed=args.seed)
    elif args.kind in ("bunny", "mesh"):
        rotation = tuple(args.rotation) if args.rotation else None
        if args.kind == "bunny":
            phi = seeds.stanford_bunny(shape, path=args.path, fill=args.fill, rotation=rotation)
        else:
            if args.path is None:
                raise ValueError("chflow seed mesh needs a mesh file: chflow seed mesh --path FILE.ply|.stl|.obj")
            phi = seeds.from_mesh(args.path, shape, fill=args.fill, rotation=rotation)
        params.update(fill=args.fill, rotation=rotation, path=str(args.path) if args.path else None)
    elif args.kind == "spheres":
        if args.n:
            phi = seeds.random_spheres(shape, args.n, seed=args.seed)
            params.update(n=args.n, seed=args.seed)
        else:
            phi = seeds.two_spheres(shape)
    else:  # slab
        phi = seeds.slab(shape, width=args.size / 2)
        params.update(width=args.size / 2)
    write_sequence(args.output, phi[None], attrs={"seed": params}, overwrite=args.overwrite)
    print(f"wrote {args.output}: {args.kind} {shape}, mean phi {float(phi.mean()):.4f}")


def _read_ic(path: str) -> tuple[np.ndarray, dict]:
    from .io import read_initial_condition

    return read_initial_condition(path)


# --------------------------------------------------------------------------- simulate / rollout


def _stream(frames, n_tau: int, out: str, attrs: dict, overwrite: bool, desc: str) -> None:
    """Write an iterator of frames (IC first) to a zarr sequence, with a progress bar on a
    terminal. A run that stops early (Ctrl-C, an error) keeps its frames marked interrupted, or,
    when it was to replace a store, leaves that store as it was."""
    from tqdm import tqdm

    from .io import SequenceWriter

    first = next(frames)
    writer = SequenceWriter(out, first.shape, attrs=attrs, overwrite=overwrite)
    try:
        writer.append(first)
        for frame in tqdm(frames, total=n_tau, desc=desc, unit="tau", disable=None):
            writer.append(frame)
    except BaseException as err:
        n = len(writer)
        kept = (f"kept the {n} of {n_tau + 1} frames computed in {out}, marked interrupted"
                if writer.close_interrupted() else
                f"{out} keeps its previous result, the {n} new frames were dropped")
        if isinstance(err, KeyboardInterrupt):
            raise Interrupted(f"{kept}: rerun with --overwrite to finish") from None
        if isinstance(err, Exception):
            err.chflow_kept = kept
        raise
    writer.close()


def _cmd_simulate(args) -> None:
    import torch

    from .physics import iter_simulate

    phi0, attrs = _read_ic(args.ic)
    dtype = torch.float64 if args.float64 else torch.float32
    frames = iter_simulate(phi0, args.n_tau, tau=args.tau, solver=args.solver, eps=args.eps,
                           mobility=args.mobility, dt=args.dt, device=args.device, dtype=dtype,
                           force=args.force)
    meta = {"tau": args.tau, "eps": args.eps, "mobility": args.mobility, "dt": args.dt,
            "solver": args.solver, "seed": attrs.get("seed"), "source": str(args.ic)}
    _stream(frames, args.n_tau, args.output, meta, args.overwrite, f"{args.solver} solver")
    print(f"wrote {args.output}")


def _load_model(name_or_path: str, device):
    from .model import CheckpointError, available_pretrained, load_checkpoint, load_pretrained

    if Path(name_or_path).suffix == ".pt" or Path(name_or_path).exists():
        return load_checkpoint(name_or_path, device=device)
    bundled = available_pretrained()
    if name_or_path not in bundled:
        raise CheckpointError(
            f"--model {name_or_path}: no such bundled model or file; use one of "
            f"{', '.join(bundled)} or a checkpoint path such as run/best.pt "
            "(written by `chflow train`)")
    return load_pretrained(name_or_path, device=device)


def _cmd_rollout(args) -> None:
    from .model import iter_rollout

    phi0, attrs = _read_ic(args.ic)
    model = _load_model(args.model, args.device)
    frames = iter_rollout(model, phi0, args.n_tau, device=args.device, upsample=args.upsample)
    info = model.info
    meta = {"tau": info.tau, "eps": info.eps, "mobility": info.mobility, "dt": None,
            "solver": f"crnn:{args.model}", "downscale": 1 if args.upsample else info.downscale,
            "seed": attrs.get("seed"), "source": str(args.ic)}
    if not args.upsample:  # how the frames' grid maps to the IC's (model.model_grid_origin)
        meta["coarse"] = info.coarse
    _stream(frames, args.n_tau, args.output, meta, args.overwrite, "CRNN")
    print(f"wrote {args.output}")


# --------------------------------------------------------------------------- compare


def _cmd_compare(args) -> None:
    from .compare import compare

    phi0, attrs = _read_ic(args.ic)
    model = _load_model(args.model, args.device)
    result = compare(phi0, model, args.n_tau, args.output, solver=args.solver, device=args.device,
                     seed_attrs=attrs.get("seed"), overwrite=args.overwrite, progress=True)
    print(result.summary())


# --------------------------------------------------------------------------- dataset / train


def _cmd_dataset(args) -> None:
    from .dataset import DatasetConfig, generate_dataset, parse_shard

    config = DatasetConfig(
        n_seq=args.n_seq, frames=args.frames, size=args.size, tau=args.tau, eps=args.eps,
        mobility=args.mobility, solver=args.solver, dt=args.dt, seed=args.seed,
        val_fraction=args.val_fraction, later_start_fraction=args.later_start_fraction,
        max_burn_in_tau=args.max_burn_in_tau, shapes_fraction=args.shapes_fraction,
    )
    done = generate_dataset(args.output, config, shard=parse_shard(args.shard), workers=args.workers,
                            progress=not args.quiet, device=args.device)
    state = "stopped early (run the same command to finish)" if done["stopped"] else "done"
    print(f"{args.output}: generated {len(done['generated'])}, already present {len(done['skipped'])}; {state}")


def _cmd_train(args) -> None:
    from .training import run_from_args

    print(f"best checkpoint: {run_from_args(args)}")


# --------------------------------------------------------------------------- bench


def _cmd_bench(args) -> None:
    import torch

    from .bench import format_report, isolated_timings, solver_timings

    if args.threads:
        torch.set_num_threads(args.threads)
    extra, model = {}, None
    if args.what == "all":
        from .model import iter_rollout

        model = _load_model(args.model, args.device)
        extra["crnn"] = lambda phi0, k: iter_rollout(model, phi0, k, device=args.device)
    if args.memory:
        methods = ("explicit", "spectral", "crnn") if model is not None else ("explicit", "spectral")
        timings = isolated_timings(args.sizes, methods, model=model, device=args.device,
                                   threads=args.threads)
    else:
        timings = solver_timings(args.sizes, device=args.device, extra=extra, rounds=args.rounds)
    print(format_report(timings, args.device, args.threads))


# --------------------------------------------------------------------------- validate


def _cmd_validate(args) -> None:
    from .io import portable_path
    from .validation import parse_overrides, preset, validate

    settings = {"device": args.device, "threads": args.threads, "bunny_path": args.bunny,
                "memory": False if args.no_memory else None, **parse_overrides(args.set)}
    config = preset(args.scale, **settings)
    model = _load_model(args.model, config.device)
    command = ["chflow", "validate", "--scale", args.scale]
    for flag, value, default in (("--model", args.model, "default"), ("--device", args.device, None),
                                 ("--threads", args.threads, None), ("--bunny", args.bunny, None),
                                 ("-o", args.output, "docs")):
        if value != default:
            path_like = flag in ("--model", "--bunny", "-o")
            command += [flag, portable_path(value, digest=False) if path_like else str(value)]
    command += ["--no-memory"] if args.no_memory else []
    command += [f"--set '{item}'" for item in args.set]
    only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    path = validate(model, config, out_dir=args.output, command=" ".join(command),
                    model_source=portable_path(args.model), progress=not args.quiet, only=only)
    if only:
        print(f"kept {', '.join(only)} in {path}; the same command without --only writes the "
              "report")
    else:
        print(f"wrote {path} and {Path(args.output) / 'validation'}/*.png")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="chflow", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"napari-chflow {__version__}")
    debug_help = f"on failure, print the full traceback (also: {DEBUG_ENV}=1)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    sub = p.add_subparsers(dest="command", required=True)

    def out(sp, what="sequence folder (a zarr store), e.g. run.zarr"):
        sp.add_argument("-o", "--output", required=True, help=f"output {what}")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing output")

    s = sub.add_parser("seed", help="make an initial condition (a 1-frame zarr sequence)")
    s.add_argument("kind", choices=["perlin", "bunny", "mesh", "spheres", "slab"])
    s.add_argument("--size", type=int, default=64, help="grid points per side (default 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed (perlin, spheres)")
    s.add_argument("--octaves", type=int, default=4, help="Perlin octaves (feature scale)")
    s.add_argument("--mean", type=float, default=None, help="mean phi (default: drawn from N(0.5, 0.1))")
    s.add_argument("--path", default=None, help="mesh file (mesh), or a local bunny .ply (bunny)")
    s.add_argument("--fill", type=float, default=0.6, help="fraction of the box the mesh spans")
    s.add_argument("--rotation", type=float, nargs=3, metavar=("RX", "RY", "RZ"), help="Euler angles, degrees")
    s.add_argument("--n", type=int, default=0, help="number of random spheres (0: two spheres)")
    out(s)
    s.set_defaults(func=_cmd_seed)

    s = sub.add_parser("simulate", help="evolve an initial condition with a physics solver")
    s.add_argument("ic", help="initial condition: a sequence .zarr (its last frame is used) "
                   "or a (Z, Y, X) .npy")
    s.add_argument("--n-tau", type=int, default=50, help="number of tau intervals to simulate")
    s.add_argument("--solver", choices=["explicit", "spectral"], default="explicit")
    s.add_argument("--tau", type=float, default=0.5)
    s.add_argument("--eps", type=float, default=3.0)
    s.add_argument("--mobility", type=float, default=1.0)
    s.add_argument("--dt", type=float, default=None, help="time step (default 1.25e-3 explicit, 0.125 spectral)")
    s.add_argument("--force", action="store_true", help="allow dt above the explicit stability bound")
    s.add_argument("--float64", action="store_true", help="double precision")
    s.add_argument("--device", default=None, help="cpu (default) or cuda")
    out(s)
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("dataset", help="generate the paper's training dataset (resumable, shardable)")
    s.add_argument("--n-seq", type=int, required=True, help="number of sequences")
    s.add_argument("--frames", type=int, default=50, help="frames per sequence (default 50)")
    s.add_argument("--size", type=int, default=64, help="grid points per side (default 64)")
    s.add_argument("--tau", type=float, default=0.5)
    s.add_argument("--eps", type=float, default=3.0)
    s.add_argument("--mobility", type=float, default=1.0)
    s.add_argument("--solver", choices=["explicit", "spectral"], default="explicit")
    s.add_argument("--dt", type=float, default=None, help="solver time step (default: the solver's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-fraction", type=float, default=0.3, help="validation share (default 0.3)")
    s.add_argument("--later-start-fraction", type=float, default=0.5,
                   help="share of sequences that start from a later state, not the noise")
    s.add_argument("--max-burn-in-tau", type=int, default=50, help="longest burn-in before recording")
    s.add_argument("--shapes-fraction", type=float, default=0.0,
                   help="share of sequences starting from a slab or spheres at rest (default 0)")
    s.add_argument("--shard", default="0/1", help="i/n: generate only sequences k with k %% n == i")
    s.add_argument("--workers", type=int, default=1, help="parallel processes")
    s.add_argument("--device", default=None, help="cpu (default) or cuda")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("-o", "--output", required=True, help="dataset folder")
    s.set_defaults(func=_cmd_dataset)

    from .training import add_arguments as add_training_arguments

    s = sub.add_parser("train", help="train the CRNN on a dataset (curriculum, augmentation, --resume)")
    add_training_arguments(s)
    s.set_defaults(func=_cmd_train)

    for name, helptext in (("rollout", "evolve an initial condition with the CRNN"),
                           ("compare", "solver vs CRNN from one IC: both sequences + metrics PNG/CSV")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("ic", help="initial condition: a sequence .zarr (its last frame is "
                       "used) or a (Z, Y, X) .npy")
        s.add_argument("--n-tau", type=int, default=50)
        s.add_argument("--model", default="default", help="shipped model name or checkpoint .pt")
        s.add_argument("--device", default=None)
        if name == "rollout":
            s.add_argument("--upsample", action="store_true", help="return frames on the input grid")
        else:
            s.add_argument("--solver", choices=["explicit", "spectral"], default="spectral")
        out(s, "sequence folder (a zarr store), e.g. crnn.zarr" if name == "rollout" else
            "folder for both sequences, compare.png and traces.csv")
        s.set_defaults(func=_cmd_rollout if name == "rollout" else _cmd_compare)

    s = sub.add_parser("bench", help="speed table: seconds per tau, ratios to the explicit solver")
    s.add_argument("what", choices=["solvers", "all"], nargs="?", default="all",
                   help="solvers: explicit vs spectral; all: also the CRNN")
    s.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    s.add_argument("--model", default="default")
    s.add_argument("--device", default=None)
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads for every method")
    s.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds per size, median kept (default 3)")
    s.add_argument("--memory", action="store_true",
                   help="time each method in a fresh process and add its peak memory")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("validate", help="regenerate docs/validation.md: the paper's tests with "
                                        "the model and the solvers (figures in docs/validation/)",
                       description="Regenerate docs/validation.md. An interrupted run resumes: "
                                   "rerun the same command and the experiments that finished "
                                   "(kept in OUTPUT/.validation-partial/) are not run again.")
    s.add_argument("--scale", choices=["tiny", "cpu", "full"], default="cpu",
                   help="tiny: seconds (smoke test); cpu: 1 h (fast model) to 3.5 h (default "
                        "model) on 1 thread, about 2 h on 2 cores with --only; full: paper "
                        "scale, GPU")
    s.add_argument("--model", default="default", help="shipped model name or checkpoint .pt")
    s.add_argument("--device", default=None, help="cpu or cuda (default: the preset's)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads for everything")
    s.add_argument("--bunny", default=None,
                   help="Stanford bunny .ply (default: CHFLOW_BUNNY_PATH, else download)")
    s.add_argument("--no-memory", action="store_true",
                   help="time in this process, skip the peak-memory measurement")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set coarsen_n_tau=2000 (repeatable)")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("-o", "--output", default="docs", help="folder for validation.md (default docs)")
    s.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                   help="run only these experiments and keep them for the report, to spread "
                        "the run over processes: time_extrapolation, domain_extrapolation, "
                        "bunny, coarsening, ensemble, speed_memory, long_horizon")
    s.set_defaults(func=_cmd_validate)
    for sp in sub.choices.values():  # --debug after the subcommand too
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return p


KEPT_ON_INTERRUPT = {
    "dataset": "finished sequences are kept: run the same command to finish",
    "train": "last.pt keeps the last completed epoch: continue with --resume",
}


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(err: BaseException) -> str:
    """One line naming the problem and the fix for any exception a command can end with."""
    import torch

    from .model import RolloutDiverged
    from .physics import SimulationDiverged

    if isinstance(err, (ValueError, SimulationDiverged, RolloutDiverged)):
        return _one_line(err)
    if isinstance(err, torch.OutOfMemoryError):
        return ("the GPU ran out of memory: use a smaller grid (--size, a smaller initial "
                "condition), a smaller --batch-size, or --device cpu")
    if isinstance(err, MemoryError):
        return ("ran out of memory: use a smaller grid (--size or a smaller initial condition), "
                "fewer --workers or a smaller --batch-size")
    if isinstance(err, OSError):
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        reason = err.strerror or _one_line(err)
        fix = {errno.ENOSPC: "free some disk space or write to another disk",
               errno.EACCES: "choose a path you may write to",
               errno.EROFS: "choose a writable path",
               errno.ENOENT: "check the path", errno.EISDIR: "give a file, not a folder",
               errno.ENOTDIR: "check the path"}.get(err.errno, "check the path and the disk")
        return f"{reason}{where}: {fix}"
    return (f"unexpected {type(err).__name__}: {_one_line(err, 300)} (rerun with --debug or "
            f"{DEBUG_ENV}=1 for the traceback, and report it)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chflow``. Any failure prints one line naming the problem and the fix and
    returns 2 (``--debug`` or ``CHFLOW_DEBUG=1`` print the traceback first); Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    name = f"chflow {args.command}"

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{name}: warning: {_one_line(message)}", file=sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = one_line_warning
    try:
        args.func(args)
    except KeyboardInterrupt as err:
        kept = str(err) if isinstance(err, Interrupted) else KEPT_ON_INTERRUPT.get(args.command, "")
        print(f"\n{name}: interrupted" + (f": {kept}" if kept else ""), file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            import traceback

            traceback.print_exc()
        kept = getattr(err, "chflow_kept", "")
        print(f"{name}: error: {explain(err)}" + (f" ({kept})" if kept else ""), file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
    return 0


if __name__ == "__main__":
    sys.exit(main())
