"""ODE figures: model trajectory against observations, state sensitivities and the
adjoint state. Inputs are arrays computed by :mod:`diffsim.tasks.ode`."""
from __future__ import annotations

import numpy as np

from .common import pyplot


def fit_figure(ts, ys, data, state_names, title, synthetic=True):
    """Every state of the model ``ys`` (J, n) at times ``ts`` (J,) as a line, with the
    observations ``data`` (J, n; NaN: unobserved) as dots of the same colour."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, n in enumerate(state_names):
        line, = ax.plot(ts, ys[:, i], label=f"{n} (model)")
        ax.plot(ts, data[:, i], ".", ms=3, color=line.get_color(),
                label=f"{n} ({'synthetic data' if synthetic else 'data'})")
    ax.set_xlabel("t")
    ax.set_ylabel("state")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def sensitivity_figure(ts, S, state_names, param_names, title):
    """One panel per state i: dy_i(t)/dp_k for every parameter k; S: (J, n, m) at ``ts``."""
    plt = pyplot()
    n = len(state_names)
    fig, axs = plt.subplots(n, 1, figsize=(6, 2.2 * n), squeeze=False, sharex=True)
    for i, sn in enumerate(state_names):
        for k, pn in enumerate(param_names):
            axs[i, 0].plot(ts, S[:, i, k], label=f"d{sn}/d{pn}")
        axs[i, 0].set_ylabel(f"d{sn}/dp")
        axs[i, 0].legend(fontsize=7)
    axs[0, 0].set_title(title, fontsize=9)
    axs[-1, 0].set_xlabel("t")
    return fig


def adjoint_figure(trace, state_names, title):
    """The adjoint state λ(t) = dL/dy(t) per state. trace: the (times (k,), λ (k, B, n))
    segments an adjoint solve records, last segment first (as recorded backwards)."""
    plt = pyplot()
    ts = np.concatenate([t for t, _ in reversed(trace)])
    lam = np.concatenate([l[:, 0] for _, l in reversed(trace)])
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, sn in enumerate(state_names):
        ax.plot(ts, lam[:, i], label=f"λ_{sn} = dL/d{sn}(t)")
    ax.set_xlabel("t")
    ax.set_ylabel("adjoint λ(t) = dL/dy(t)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig
