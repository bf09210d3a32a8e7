"""Cannon figures: trajectories across iterations, the objective landscape along the
optimised launch parameters (1-D curve or 2-D field, with the gradient and the
optimiser's path), and a network's miss against target distance. Inputs are arrays
computed by :mod:`diffsim.tasks.cannon`."""
from __future__ import annotations

import numpy as np

from .common import axis_label, pick, pyplot


def trajectories_figure(snapshots, targets_x, title="trajectories across iterations", max_drawn=6):
    """snapshots: list of (iteration, positions (T, B, 3) [m]); at most ``max_drawn`` of
    them, evenly spaced, are drawn, coloured by iteration (colour bar). targets_x: (B,) [m].
    y starts at the ground."""
    plt = pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    drawn = [snapshots[i] for i in pick(len(snapshots), max_drawn)]
    its = [it for it, _ in drawn]
    norm = Normalize(vmin=min(its), vmax=max(max(its), min(its) + 1))
    for k, (it, tr) in enumerate(drawn):
        last = k == len(drawn) - 1
        for b in range(tr.shape[1]):
            ax.plot(tr[:, b, 0], tr[:, b, 1], color=cmap(norm(it)), lw=1.8 if last else 1.0,
                    alpha=1.0 if last else 0.75,
                    label=((f"iteration {it}" if len(drawn) > 1 else "trajectory") if last else None)
                    if b == 0 else None)
    ax.scatter(targets_x, np.zeros_like(targets_x), marker="x", s=80, color="crimson",
               zorder=5, label="target", clip_on=False)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("x [m]")
    ax.set_ylabel("height y [m]")
    ax.set_title(title)
    if len(drawn) > 1:
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="iteration", pad=0.01)
    ax.legend(fontsize=8, loc="upper left")
    # Equal scales in x and y, without the "datalim" aspect that overrode the limits below
    # (and warned); the ground is the bottom edge: nothing is drawn below it.
    top = max(float(np.max(tr[:, :, 1])) for _, tr in drawn)
    xs = np.concatenate([tr[:, :, 0].ravel() for _, tr in drawn] + [np.asarray(targets_x, float)])
    ax.set_xlim(min(0.0, xs.min()), xs.max() * 1.03 + 1e-9)
    ax.set_ylim(0.0, 1.12 * top if top > 0 else 1.0)
    return fig


def landscape_1d_figure(t, f, g, path=None, name="parameter", unit="", ylabel="objective"):
    """Objective ``f`` (n,) at parameter values ``t`` (n,) with its derivative ``g`` (n,)
    drawn as tangent ticks at a dozen points, and the optimiser's iterates ``path`` (k,)
    (parameter values; their objective is interpolated on the curve). name, unit: the
    parameter's, for the labels."""
    plt = pyplot()
    T, F, G = (np.asarray(a, dtype=np.float64) for a in (t, f, g))
    lo, hi = T[0], T[-1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(T, F, color="0.2", lw=1.4, label="objective")
    half = 0.35 * (hi - lo) / 12
    for j in pick(len(T), 12):
        ax.plot([T[j] - half, T[j] + half], [F[j] - G[j] * half, F[j] + G[j] * half],
                color="tab:orange", lw=2, label="gradient (tangent)" if j == 0 else None)
    if path is not None and len(path):
        P = np.asarray(path, dtype=np.float64)
        Fp = np.interp(P, T, F)
        sc = ax.scatter(P, Fp, c=np.arange(len(P)), cmap="viridis", s=14, zorder=4,
                        label="optimiser iterates")
        fig.colorbar(sc, ax=ax, label="iteration", pad=0.01)
        ax.plot(P[-1], Fp[-1], "*", ms=14, color="crimson", zorder=5, label="result")
    ax.set_ylim(min(0.0, F.min()), F.max() * 1.05 if F.max() > 0 else 1.0)
    ax.set_xlabel(axis_label(name, unit))
    ax.set_ylabel(ylabel)
    ax.set_title(f"objective along {name}, its gradient and the optimiser's iterates")
    ax.legend(fontsize=8, loc="upper center")
    ax.grid(True, alpha=0.3)
    return fig


def landscape_figure(a, b, z, ga, gb, path=None, xlabel="angle", ylabel="speed"):
    """Objective ``z`` (len(b), len(a)) over parameters ``a`` (x axis) and ``b`` (y axis)
    as log10 contours, the descent direction −(ga, gb) (same shape as z, arrows scaled so
    both axes count equally) and the optimiser's path (k, 2) of (a, b) values."""
    plt = pyplot()
    A, V, Z, GA, GV = (np.asarray(v, dtype=np.float64) for v in (a, b, z, ga, gb))
    a_lo, a_hi, s_lo, s_hi = A[0], A[-1], V[0], V[-1]
    fig, ax = plt.subplots(figsize=(7, 5))
    cs = ax.contourf(A, V, np.log10(np.maximum(Z, 1e-12)), levels=30, cmap="magma_r")
    fig.colorbar(cs, ax=ax, label="log10 objective")
    k = max(1, len(A) // 14)
    # arrows in scaled coordinates so both axes matter equally
    ua = -GA * (a_hi - a_lo)
    uv = -GV * (s_hi - s_lo)
    norm = np.hypot(ua, uv) + 1e-300
    ax.quiver(A[::k], V[::k], (ua / norm)[::k, ::k] * (a_hi - a_lo),
              (uv / norm)[::k, ::k] * (s_hi - s_lo), color="white", alpha=0.8,
              angles="xy", scale_units="xy", scale=25)
    if path is not None and len(path):
        P = np.asarray(path, dtype=np.float64)
        ax.plot(P[:, 0], P[:, 1], "-o", ms=2, color="cyan", lw=1.2, label="optimiser path")
        ax.plot(P[-1, 0], P[-1, 1], "*", ms=12, color="lime", label="result")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("objective landscape, descent directions and path")
    return fig


def miss_vs_distance_figure(distances, miss_before, miss_after=None):
    """Miss [m] against target distance [m] for a network's predictions (and refined)."""
    plt = pyplot()
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
