"""Convergence of gradient descent, Adam, L-BFGS and Newton on two problems: the cannon
(aim at 120 m through drag and a head wind: miss [m]) and the Lotka–Volterra fit to the
bundled noisy data (objective minus its minimum). Writes one PNG: log error against
iteration (objective + gradient evaluations) and against wall time.

Newton's Hessian comes from central differences of exact gradients (2 extra gradients per
parameter per iteration): the wall-time panels include that cost.

    python examples/convergence.py [--out docs/img/convergence.png] [--iterations 60]
"""
import argparse
import pathlib
import time

import numpy as np
import scipy.optimize  # noqa: F401  (imported here, not inside the first L-BFGS timing)

import diffsim
import diffsim.hessian  # noqa: F401  (Newton imports it on its first step: not in its timing)
from diffsim.optim import LBFGS, Adam, GradientDescent, Newton, minimize

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cannon():
    """The bundled cannon scene with a tolerance far below round-off, so that every
    optimiser runs on its own criterion; error = miss [m]."""
    def make():
        pb = diffsim.build(diffsim.load("cannon", ["target.tolerance=1e-15"]))
        pb._prepare_arcs()          # the low-arc start and bounds that `optimize` uses
        return pb
    # gradient descent: 2e-5 is near the largest stable step (1/curvature in minimize's
    # scaled coordinates)
    opts = {"gradient descent": lambda: GradientDescent(lr=2e-5),
            "Adam": lambda: Adam(lr=0.02, decay=0.97, beta2=0.9),     # the scene's settings
            "L-BFGS": LBFGS, "Newton": Newton}
    # floor 1e-15 m: a landing at 120 m is resolved to ~120·ε ≈ 3e-14 m (an exact 0 happens)
    return "cannon: miss [m]", make, opts, lambda pb, f: np.maximum(np.sqrt(2 * np.maximum(f, 0.0)), 1e-15)


def lotka_volterra():
    """Fit of the four Lotka–Volterra rates to the bundled noisy data; error = objective
    (RSS) minus the lowest any optimiser reached, relative to it (floor 1e-16: round-off)."""
    def make():
        pb = diffsim.build(diffsim.load("lotka_volterra"))
        pb.use_data(ROOT / "diffsim" / "scenes" / "data" / "lotka_volterra_noisy.csv")
        return pb
    # learning rates: the best of a small sweep (gd 1e-5, 3e-5, 1e-4; Adam 0.003 … 0.1)
    opts = {"gradient descent": lambda: GradientDescent(lr=1e-5),
            "Adam": lambda: Adam(lr=0.1), "L-BFGS": LBFGS, "Newton": Newton}
    return "Lotka–Volterra fit: (objective − minimum) / minimum", make, opts, None


def run(problem, iterations):
    title, make, opts, err = problem
    runs = {}
    for name, opt in opts.items():
        pb = make()
        pb.value_and_grad()     # compile the kernels first: the clock measures optimisation only
        t0 = time.perf_counter()
        r = minimize(pb, opt(), iterations=iterations, progress=False)
        runs[name] = (np.array(r.history.loss), np.array(r.history.time), r)
        print(f"{title.split(':')[0]:<22} {name:<17} {r.status:<15} {r.iterations:>4} evaluations "
              f"{time.perf_counter() - t0:6.2f} s  objective {r.objective:.3e}")
    if err is None:
        fmin = min(float(l.min()) for l, _, _ in runs.values())
        err = lambda pb, f: np.maximum((f - fmin) / fmin, 1e-16)   # noqa: E731
    return title, {n: (err(None, l), t, r) for n, (l, t, r) in runs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "convergence.png"))
    ap.add_argument("--iterations", type=int, default=60)
    a = ap.parse_args()
    diffsim.init(arch="cpu", precision="f64")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    results = [run(p(), a.iterations) for p in (cannon, lotka_volterra)]
    fig, axs = plt.subplots(len(results), 2, figsize=(11, 4.2 * len(results)), squeeze=False)
    for row, (title, runs) in enumerate(results):
        for name, (e, t, r) in runs.items():
            best = np.minimum.accumulate(e)         # the best point so far (what is returned)
            axs[row, 0].semilogy(np.arange(1, len(e) + 1), best, ".-", label=f"{name} ({r.status})")
            axs[row, 1].semilogy(t, best, ".-", label=name)
        axs[row, 0].set_xlabel("iteration (objective + gradient evaluations)")
        axs[row, 1].set_xlabel("wall time [s] (Newton: including its Hessians)")
        for ax in axs[row]:
            ax.set_ylabel(title.split(": ")[1] + " (best so far)")
            ax.set_title(title.split(": ")[0], fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
        axs[row, 0].legend(fontsize=8)
    fig.suptitle("gradient descent, Adam, L-BFGS and Newton (trust region, Hessian from "
                 "differences of exact gradients)", fontsize=10)
    fig.tight_layout()
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
