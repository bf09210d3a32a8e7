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


def _pick(n_items, k):
    """Indices of at most ``k`` items out of ``n_items``, evenly spaced, first and last kept."""
    if n_items <= k:
        return list(range(n_items))
    return sorted(set(np.round(np.linspace(0, n_items - 1, k)).astype(int).tolist()))


def trajectories_figure(snapshots, targets_x, title="trajectories across iterations", max_drawn=6):
    """snapshots: list of (iteration, positions (T, B, 3)); at most ``max_drawn`` of them,
    evenly spaced, are drawn, coloured by iteration (colour bar). y starts at the ground."""
    plt = _plt()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    drawn = [snapshots[i] for i in _pick(len(snapshots), max_drawn)]
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


def _cannon_objective(problem, f, cannon):
    """Cannon ``cannon``'s own share of the objective after an evaluation (½·miss² for the
    miss objective; the batch objective otherwise)."""
    if problem.objective_type == "miss" and not problem.maximize and problem.B > 1:
        return float(problem._last_miss2[cannon])
    return f


def landscape_1d_figure(problem, i, path_x=None, span=None, n=61, cannon=0):
    """Objective along parameter index ``i`` (the only one optimised) with the gradient
    drawn as tangent ticks at a dozen points and the optimiser's iterates on the curve."""
    plt = _plt()
    name = problem.params.names[i]
    x0 = problem.x0()
    lo, hi = span
    T = np.linspace(lo, hi, n)
    F, G = np.zeros(n), np.zeros(n)
    for j, t in enumerate(T):
        x = x0.copy()
        x[i] = t
        f, g = problem.value_and_grad(x)
        F[j], G[j] = _cannon_objective(problem, f, cannon), g[i]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(T, F, color="0.2", lw=1.4, label="objective")
    half = 0.35 * (hi - lo) / 12
    for j in _pick(n, 12):
        ax.plot([T[j] - half, T[j] + half], [F[j] - G[j] * half, F[j] + G[j] * half],
                color="tab:orange", lw=2, label="gradient (tangent)" if j == 0 else None)
    if path_x is not None and len(path_x):
        P = np.asarray(path_x)[:, i]
        Fp = np.interp(P, T, F)
        sc = ax.scatter(P, Fp, c=np.arange(len(P)), cmap="viridis", s=14, zorder=4,
                        label="optimiser iterates")
        fig.colorbar(sc, ax=ax, label="iteration", pad=0.01)
        ax.plot(P[-1], Fp[-1], "*", ms=14, color="crimson", zorder=5, label="result")
    ax.set_ylim(min(0.0, F.min()), F.max() * 1.05 if F.max() > 0 else 1.0)
    unit = problem.params[name].unit
    ax.set_xlabel(f"{name} [{unit}]" if unit else name)
    ax.set_ylabel("½·miss² [m²]" if problem.objective_type == "miss" else "objective")
    ax.set_title(f"objective along {name}, its gradient and the optimiser's iterates")
    ax.legend(fontsize=8, loc="upper center")
    ax.grid(True, alpha=0.3)
    return fig


def landscape_figure(problem, path_x=None, n=41, angle_range=None, speed_range=None, cannon=0,
                     names=None):
    """Objective over two parameters of one cannon (default angle × speed) as contours,
    the (descent) gradient field as arrows and the optimiser's path. Gradients come from
    the problem's method; ranges are (low, high) per parameter."""
    plt = _plt()
    pn = problem.params.names
    nm = names or [("angle" if problem.B == 1 else f"angle[{cannon}]"),
                   ("speed" if problem.B == 1 else f"speed[{cannon}]")]
    ai, si = pn.index(nm[0]), pn.index(nm[1])
    x0 = problem.x0()
    a_lo, a_hi = angle_range or (0.05, 1.5)
    v = x0[si]
    s_lo, s_hi = speed_range or (max(1.0, 0.6 * v), 1.4 * v)
    A = np.linspace(a_lo, a_hi, n)
    V = np.linspace(s_lo, s_hi, n)
    Z = np.zeros((n, n))
    GA = np.zeros((n, n))
    GV = np.zeros((n, n))
    for i, sp in enumerate(V):
        for j, an in enumerate(A):
            x = x0.copy()
            x[ai], x[si] = an, sp
            f, g = problem.value_and_grad(x)
            Z[i, j], GA[i, j], GV[i, j] = _cannon_objective(problem, f, cannon), g[ai], g[si]
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
    ua_, us_ = problem.params[pn[ai]].unit, problem.params[pn[si]].unit
    ax.set_xlabel(f"{pn[ai]} [{ua_}]" if ua_ else pn[ai])
    ax.set_ylabel(f"{pn[si]} [{us_}]" if us_ else pn[si])
    ax.set_title("objective landscape, descent directions and path")
    return fig


def cannon_run_plots(problem, out):
    tr = problem.trajectories()
    fig = trajectories_figure([(0, tr)], problem.targets_x, title="trajectory")
    return [_save(fig, out, "trajectory.png")]


def cannon_optimization_plots(problem, result, snapshots, out):
    """trajectories.png (a handful of iterations, evenly spaced), loss.png and, in 2D,
    landscape.png along the optimised launch parameter(s) of cannon 0: a 1-D curve with
    gradient tangents when one is optimised, a 2-D field for two or more."""
    path = result.history.x
    if path is not None and len(path) > 1:
        picks = _pick(len(path), 6)
        snapshots = [(j, problem.trajectories(path[j])) for j in picks]
        if picks[-1] != result.iterations:
            snapshots.append((result.iterations, problem.trajectories(result.x)))
    files = [_save(trajectories_figure(snapshots, problem.targets_x), out, "trajectories.png"),
             _save(loss_figure(result.history, "½·miss² [m²]" if problem.objective_type == "miss"
                               else "objective"), out, "loss.png")]
    names = problem.params.names
    free = [n for n in problem.opt_cfg["params"] if n in ("angle", "speed", "height", "azimuth")]
    free_all = list(problem.opt_cfg["params"])
    if problem.dims == 2 and free_all:
        x_best = result.x.copy()
        cols = [names.index(n if problem.B == 1 or n not in problem._launch_names else f"{n}[0]")
                for n in (free + [n for n in free_all if n not in free])]
        P = np.asarray(path) if path is not None and len(path) else x_best[None]

        def span(i):
            p = problem.params.items[i]
            lo, hi = min(p.lower, P[:, i].min()), max(p.upper, P[:, i].max())
            return lo, hi

        if len(cols) == 1:
            fig = landscape_1d_figure(problem, cols[0], P, span=span(cols[0]))
        else:
            a, b = cols[:2]
            fig = landscape_figure(problem, P, n=25, angle_range=span(a), speed_range=span(b),
                                   names=[names[a], names[b]])
        problem.set(x_best)
        problem.objective(x_best)
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
