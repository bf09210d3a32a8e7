"""Figures (matplotlib). Functions return Figures, or write PNG files and return paths.

Never imported by kernels; the CLI uses the Agg backend.
"""
from __future__ import annotations

import pathlib

import numpy as np


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out, name):
    path = pathlib.Path(out) / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def trajectories_figure(snapshots, targets_x, title="trajectories across iterations"):
    """snapshots: list of (iteration, positions (T, B, 3)); coloured by iteration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    n = max(len(snapshots) - 1, 1)
    for k, (it, tr) in enumerate(snapshots):
        c = cmap(k / n)
        for b in range(tr.shape[1]):
            ax.plot(tr[:, b, 0], tr[:, b, 1], color=c, lw=1.4 if k == len(snapshots) - 1 else 0.9,
                    label=f"iteration {it}" if b == 0 else None)
    ax.scatter(targets_x, np.zeros_like(targets_x), marker="x", s=80, color="crimson",
               zorder=5, label="target")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("x [m]")
    ax.set_ylabel("height y [m]")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.set_aspect("equal", adjustable="datalim")
    top = max(float(np.max(tr[:, :, 1])) for _, tr in snapshots)
    ax.set_ylim(-0.05 * top, 1.15 * top)
    return fig


def loss_figure(history, ylabel="objective"):
    """Objective per iteration on a log scale (absolute value for negatives)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    y = np.abs(np.asarray(history.loss))
    ax.semilogy(np.arange(len(y)), np.maximum(y, 1e-300))
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title("loss")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def landscape_figure(problem, path_x=None, n=41, angle_range=None, speed_range=None, cannon=0):
    """Objective over (angle, speed) for one cannon as contours, the (descent) gradient
    field as arrows and the optimiser's path. Gradients come from the problem's method."""
    plt = _plt()
    names = problem.params.names
    ai = names.index("angle" if problem.B == 1 else f"angle[{cannon}]")
    si = names.index("speed" if problem.B == 1 else f"speed[{cannon}]")
    x0 = problem.x0()
    a_lo, a_hi = angle_range or (0.05, 1.5)
    v = x0[si]
    s_lo, s_hi = speed_range or (max(1.0, 0.6 * v), 1.4 * v)
    A = np.linspace(a_lo, a_hi, n)
    V = np.linspace(s_lo, s_hi, n)
    # evaluate the whole grid in batches of the problem's B cannons: one row at a time
    Z = np.zeros((n, n))
    GA = np.zeros((n, n))
    GV = np.zeros((n, n))
    sim = problem.sim
    saved = sim.get_inputs()
    for i, sp in enumerate(V):
        for j, an in enumerate(A):
            x = x0.copy()
            x[ai], x[si] = an, sp
            f, g = problem.value_and_grad(x)
            Z[i, j], GA[i, j], GV[i, j] = f, g[ai], g[si]
    sim.set_inputs(**saved)
    fig, ax = plt.subplots(figsize=(7, 5))
    cs = ax.contourf(A, V, np.log10(np.maximum(Z, 1e-12)), levels=30, cmap="magma_r")
    fig.colorbar(cs, ax=ax, label="log10 objective")
    k = max(1, n // 14)
    # arrows in scaled coordinates so both axes matter equally
    ua = -GA * (a_hi - a_lo)
    uv = -GV * (s_hi - s_lo)
    norm = np.hypot(ua, uv) + 1e-300
    ax.quiver(A[::k], V[::k], (ua / norm)[::k, ::k] * (a_hi - a_lo),
              (uv / norm)[::k, ::k] * (s_hi - s_lo), color="white", alpha=0.8,
              angles="xy", scale_units="xy", scale=25)
    if path_x is not None and len(path_x):
        P = np.asarray(path_x)
        ax.plot(P[:, ai], P[:, si], "-o", ms=2, color="cyan", lw=1.2, label="optimiser path")
        ax.plot(P[-1, ai], P[-1, si], "*", ms=12, color="lime", label="result")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("elevation angle [rad]")
    ax.set_ylabel("launch speed [m/s]")
    ax.set_title("objective landscape, descent directions and path")
    return fig


def cannon_run_plots(problem, out):
    tr = problem.trajectories()
    fig = trajectories_figure([(0, tr)], problem.targets_x, title="trajectory")
    return [_save(fig, out, "trajectory.png")]


def cannon_optimization_plots(problem, result, snapshots, out):
    files = [_save(trajectories_figure(snapshots, problem.targets_x), out, "trajectories.png"),
             _save(loss_figure(result.history, "½·miss² [m²]" if problem.objective_type == "miss"
                               else "objective"), out, "loss.png")]
    if problem.dims == 2 and "angle" in problem.opt_cfg["params"]:
        x_best = result.x.copy()
        path = result.history.x
        names = problem.params.names
        ai = names.index("angle" if problem.B == 1 else "angle[0]")
        si = names.index("speed" if problem.B == 1 else "speed[0]")
        vals = np.array([p[ai] for p in path] + [problem.params.lower[ai], problem.params.upper[ai]])
        sp = np.array([p[si] for p in path])
        fig = landscape_figure(problem, path, n=25,
                               angle_range=(max(0.02, vals.min() - 0.15), min(1.55, vals.max() + 0.15)),
                               speed_range=(max(1.0, 0.7 * sp.min()), 1.3 * sp.max()))
        problem.set(x_best)
        files.append(_save(fig, out, "landscape.png"))
    return files


def miss_vs_distance_figure(distances, miss_before, miss_after=None):
    """Miss [m] against target distance [m] for a network's predictions (and refined)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    o = np.argsort(distances)
    ax.semilogy(np.asarray(distances)[o], np.maximum(np.asarray(miss_before)[o], 1e-9), ".-",
                label="network prediction")
    if miss_after is not None:
        ax.semilogy(np.asarray(distances)[o], np.maximum(np.asarray(miss_after)[o], 1e-9), ".-",
                    label="after per-target refinement")
    ax.set_xlabel("target distance [m]")
    ax.set_ylabel("miss [m]")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("held-out targets")
    return fig


def save(fig, out, name):
    """Write ``fig`` as ``out/name`` and return the path."""
    return _save(fig, out, name)
