"""The long-horizon numbers of a CRNN checkpoint on chosen 64^3 Perlin ICs (the development check
behind the ablation table of docs/training.md; the model card and the validation report run the
same measurement on their own held-out ICs).

    python benchmarks/long_horizon.py runs/e2/best.pt --ics 901:0.5 902:0.4 --n-tau 1000

Each IC ``SEED:MEAN`` is ``seeds.perlin((size,)*3, mean=MEAN, seed=SEED)``; the ground truth is
the spectral solver. Prints one line per IC: max relative F/V error (t >= 1, both on the model
grid) and at t = 10, 50, 100, 300 (where reached), the fraction of steps in which F/V rises, the
coarsening exponents over the last decade of t, the bulk/gradient ratio at the end, phi's range.

More checks of the same table (``--checks long short rest early``):

- ``short``: mean interface displacement (grid units) from the explicit solver at 10, 50 and
  100 tau over the ICs ``--short-seeds`` (64^3, mean 0.5), as in the model card;
- ``rest``: displacement of an equilibrium slab at rest after 10, 100, 1000 steps (32^3 box);
- ``early``: the largest F/V error over the first 40 tau (t <= 20) of a 128^3 IC with large
  features (``--early-seed``), the early spinodal stage that opens the report's coarsening
  experiment.
"""

from __future__ import annotations

import argparse
import time

import torch

from model_card import CHECK_TAU, accuracy  # benchmarks/ is on the path when run as a script
from napari_chflow.model import load_checkpoint, load_pretrained
from napari_chflow.seeds import perlin
from napari_chflow.validation.long_horizon import fv_error, long_run, rest_drift, summarize

MARKS = (10, 50, 100, 300)  # times t at which the F/V error is also printed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint file, or 'default' for the shipped model")
    p.add_argument("--ics", nargs="+", default=["901:0.5", "902:0.4"], metavar="SEED:MEAN")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-tau", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checks", nargs="+", default=["long"], choices=("long", "short", "rest",
                                                                     "early"))
    p.add_argument("--short-seeds", nargs="+", type=int, default=[911, 912, 913, 914])
    p.add_argument("--early-seed", type=int, default=903)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_pretrained() if args.checkpoint == "default" else load_checkpoint(args.checkpoint)
    if "long" in args.checks:
        _long(model, args)
    if "short" in args.checks:
        by_tau = accuracy(model, 64, args.short_seeds)["by_tau"]
        delta = " / ".join(f"{by_tau[t]['delta']:.3f}" for t in CHECK_TAU)
        print(f"{args.checkpoint} displacement at {CHECK_TAU} tau: {delta}", flush=True)
    if "rest" in args.checks:
        drift = rest_drift(model, 32, 1000)
        print(f"{args.checkpoint} slab at rest, displacement after steps: "
              f"{ {k: round(v, 3) for k, v in drift.items()} }", flush=True)
    if "early" in args.checks:
        run = long_run(model, perlin((128,) * 3, mean=0.5, seed=args.early_seed), 40)
        rel = fv_error(run)
        print(f"{args.checkpoint} early 128^3 (seed {args.early_seed}): max F/V error over 40 tau "
              f"{rel.max():.3f} at t = {run['t'][rel.argmax()]:g}", flush=True)


def _long(model, args) -> None:
    for item in args.ics:
        seed, mean = item.split(":")
        start = time.perf_counter()
        run = long_run(model, perlin((args.size,) * 3, mean=float(mean), seed=int(seed)),
                       args.n_tau)
        s = summarize(run)
        rel = fv_error(run)
        marks = {t: round(float(rel[int(t / model.info.tau)]), 3) for t in MARKS
                 if t / model.info.tau <= args.n_tau}
        print(f"{args.checkpoint} IC {seed}:{mean}: max F/V error {s['max_rel_f']:.3f} {marks} "
              f"rises {s['rises']:.3f} (solver {s['rises_gt']:.3f}) exponent "
              f"{s['exponent_crnn']:.3f} vs {s['exponent_gt']:.3f} (diff {s['exponent_diff']:.3f}) "
              f"bulk/gradient {s['ratio_crnn']:.3f} vs {s['ratio_gt']:.3f} phi "
              f"[{s['phi_min']:.3f}, {s['phi_max']:.3f}] "
              f"{'DIVERGED ' + run['diverged'] if run['diverged'] else ''}"
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
