"""Optimal-control figures: the solution (states, control, costate, ∂H/∂u, H) and the
knot-count convergence against an analytic control. Inputs are computed by
:mod:`diffsim.tasks.control`."""
from __future__ import annotations

import math

import numpy as np

from .common import pyplot


def solution_figure(pm, state_names, control_names, knot_times, knots, bounds, targets, title):
    """Five panels over t: states x(t) (targets at T as crosses), control u(t) (the
    spline, its knot values, bounds dotted, the analytic u* dashed when ``pm`` has one),
    costate λ(t), ∂H/∂u and H = L + λᵀf.

    pm: :meth:`ControlProblem.solution`'s dict (t, x, u, lam, dHdu, H, optional
    analytic); knots: (nu, N) knot values at ``knot_times`` (N,); bounds: (lower (nu,),
    upper (nu,)); targets: (state index, value) pairs."""
    plt = pyplot()
    t = pm["t"]
    fig, axs = plt.subplots(5, 1, figsize=(6.4, 10.5), sharex=True)
    for i, n in enumerate(state_names):
        axs[0].plot(t, pm["x"][:, i], label=n)
    for _, v in targets:
        axs[0].plot([t[-1]], [v], "x", color="k", ms=7)
    axs[0].set_ylabel("state x(t)")
    axs[0].legend(fontsize=7, loc="best")
    for j, cn in enumerate(control_names):
        axs[1].plot(t, pm["u"][:, j], label=f"{cn} (spline, {len(knot_times)} knots)")
        axs[1].plot(knot_times, knots[j], ".", ms=4, color="C0")
        for b in (bounds[0][j], bounds[1][j]):
            if math.isfinite(b):
                axs[1].axhline(b, color="0.5", ls=":", lw=1)
    if "analytic" in pm:
        axs[1].plot(t, pm["analytic"]["u"], "--", color="C3", lw=1,
                    label=f"analytic u* ({pm['analytic']['what']})")
    axs[1].set_ylabel("control u(t)")
    axs[1].legend(fontsize=7, loc="best")
    for i, n in enumerate(state_names):
        axs[2].plot(t, pm["lam"][:, i], label=f"λ_{n}")
    axs[2].set_ylabel("costate λ(t)")
    axs[2].legend(fontsize=7, loc="best")
    for j, cn in enumerate(control_names):
        axs[3].plot(t, pm["dHdu"][:, j], label=f"∂H/∂{cn}")
    axs[3].axhline(0, color="0.5", lw=0.8)
    axs[3].set_ylabel("∂H/∂u")
    axs[3].legend(fontsize=7, loc="best")
    axs[4].plot(t, pm["H"])
    axs[4].set_ylabel("H = L + λᵀf")
    axs[4].set_xlabel("t")
    span = float(np.max(pm["H"]) - np.min(pm["H"]))
    mid = float(np.mean(pm["H"]))
    half = max(span, 1e-3 * max(abs(mid), 1e-12))   # a constant H is drawn flat, not as noise
    axs[4].set_ylim(mid - half, mid + half)
    axs[0].set_title(title, fontsize=9)
    return fig


def convergence_figure(rows, name):
    """Log–log max|u_N − u*| and |J_N − J*| against knots N; rows: :func:`knot_sweep`'s."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    Ns = [r["knots"] for r in rows]
    ax.loglog(Ns, [abs(r["max_control_error"]) for r in rows], "o-", label="max |u_N − u*|")
    ax.loglog(Ns, [abs(r["cost_error"]) for r in rows], "s-", label="|J_N − J*|")
    ax.set_xticks(Ns)
    ax.set_xticklabels([str(n) for n in Ns])
    ax.minorticks_off()
    last = rows[-1]
    if last.get("order_max_control_error") is not None:
        ax.text(0.03, 0.05, "observed orders in Δ at N = {}: control {:.2f}, cost {}".format(
            last["knots"], last["order_max_control_error"],
            "n/a" if last.get("order_cost_error") is None else f"{last['order_cost_error']:.2f}"),
            transform=ax.transAxes, fontsize=7)
    ax.set_xlabel("knots N (spacing Δ = T/(N − 1))")
    ax.set_ylabel("error vs analytic")
    ax.set_title(f"{name}: linear-spline control vs the closed form", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
