"""Figures of a parameter sweep, drawn from :func:`diffsim.sweep.figure_data`'s arrays."""
from __future__ import annotations

import math

import numpy as np

from .common import pyplot, save


def write(data, out) -> list:
    """Write sweep_heatmap.png, sweep_objective.png and sweep_optima.png under ``out``
    for the parts ``data`` has (see :func:`diffsim.sweep.figure_data`); their paths."""
    paths = []
    if "heatmap" in data:
        paths.append(save(heatmap(**data["heatmap"]), out, "sweep_heatmap.png"))
    if "line" in data:
        paths.append(save(objective_line(**data["line"]), out, "sweep_objective.png"))
    if "optima" in data:
        paths.append(save(optima(**data["optima"]), out, "sweep_optima.png"))
    return paths


def heatmap(xa, xb, Z, a, b, more_axes):
    """Objective Z (len(xb), len(xa)) over axes ``a`` × ``b`` (log colours when it spans
    more than two decades; failed points grey)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    fin = Z[np.isfinite(Z)]
    norm = None
    if fin.size and fin.min() > 0 and fin.max() / fin.min() > 100:
        from matplotlib.colors import LogNorm
        norm = LogNorm(vmin=fin.min(), vmax=fin.max())
    m = ax.pcolormesh(xa, xb, np.ma.masked_invalid(Z), shading="nearest", cmap="viridis", norm=norm)
    fig.colorbar(m, ax=ax, label="objective" + (" (min over the other axes)" if more_axes else ""))
    failed = bool(np.isnan(Z).any())
    if failed:
        ax.set_facecolor("0.85")
    ax.set_xlabel(a)
    ax.set_ylabel(b)
    ax.set_title(f"objective over {a} × {b}" + (" (grey: failed)" if failed else ""))
    return fig


def objective_line(key, target, x, f, g, worst, others):
    """Objective f along axis ``key`` with the gradient g (d objective / d ``target``)
    drawn as short tangent ticks, and the worst central-difference disagreement."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.3))
    ax.plot(x, f, "o-", ms=3, lw=0.8, color="0.45", label="objective (sweep)")
    title = f"objective along {key}"
    if g is not None:
        ok = np.isfinite(f) & np.isfinite(g)
        sx = np.ptp(x) or 1.0
        fy = f[np.isfinite(f)]
        sy = (np.ptp(fy) if fy.size else 1.0) or 1.0
        half = min(0.035, 0.45 / max(len(x) - 1, 1))   # ticks shorter than the spacing
        for xi, fi, gi in zip(x[ok], f[ok], g[ok]):
            d = np.array([1.0 / sx, gi / sy])         # the tangent in axes-fraction units
            d *= half / np.linalg.norm(d)
            ax.plot([xi - d[0] * sx, xi + d[0] * sx], [fi - d[1] * sy, fi + d[1] * sy],
                    color="C3", lw=1.6, solid_capstyle="round")
        ax.plot([], [], color="C3", lw=1.6, label=f"gradient d objective / d {target} (tangent)")
        if math.isfinite(worst):
            title += f"\nworst |central difference − gradient| / steepest slope = {worst:.2g}"
    if others:
        title += "\n(" + ", ".join(f"{k} at its middle value" for k in others) + ")"
    ax.set_xlabel(key)
    ax.set_ylabel("objective")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def optima(starts, optima, objective, status, n):
    """Multi-start: histograms of the starts and optima per free parameter, and of the
    objective at the optimum, titled with the status counts."""
    plt = pyplot()
    fig, axs = plt.subplots(1, len(starts) + 1, figsize=(3.6 * (len(starts) + 1), 3.4), squeeze=False)
    for ax, name in zip(axs[0], starts):
        st, op = starts[name], optima[name]
        op = op[np.isfinite(op)]
        lo, hi = np.nanmin(np.r_[st, op]), np.nanmax(np.r_[st, op])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 25)
        ax.hist(st, bins=bins, color="0.75", label="starts")
        ax.hist(op, bins=bins, color="C0", alpha=0.85, label="optima")
        ax.set_xlabel(name)
        ax.legend(fontsize=7)
    ax = axs[0][-1]
    fin = objective
    if fin.size:
        if fin.min() > 0 and fin.max() / fin.min() > 100:
            ax.hist(fin, bins=np.geomspace(fin.min(), fin.max(), 25), color="C2")
            ax.set_xscale("log")
        else:
            ax.hist(fin, bins=25, color="C2")
    ax.set_xlabel("objective at the optimum")
    ax.set_title(", ".join(f"{k}: {v}" for k, v in status.items()), fontsize=8)
    fig.suptitle(f"{n} optimisations from random starts", fontsize=10)
    return fig
