"""Helpers every figure uses: pyplot without switching the backend, saving, picking a
handful of evenly spaced items, and the loss curve."""
from __future__ import annotations

import pathlib

import numpy as np


def pyplot():
    """matplotlib.pyplot as the caller configured it (the CLI selects Agg)."""
    import matplotlib.pyplot as plt
    return plt


def save(fig, out, name):
    """Write ``fig`` as ``out/name`` (PNG, 110 dpi), close it and return the path."""
    path = pathlib.Path(out) / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def pick(n_items, k):
    """Indices of at most ``k`` items out of ``n_items``, evenly spaced, first and last kept."""
    if n_items <= k:
        return list(range(n_items))
    return sorted(set(np.round(np.linspace(0, n_items - 1, k)).astype(int).tolist()))


def loss_figure(loss, ylabel="objective"):
    """Objective per iteration (sequence ``loss``) on a log scale (|value| for negatives)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    y = np.abs(np.asarray(loss, dtype=np.float64))
    ax.semilogy(np.arange(len(y)), np.maximum(y, 1e-300))
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title("loss")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def axis_label(name, unit):
    """``name [unit]``, or ``name`` alone when it has no unit."""
    return f"{name} [{unit}]" if unit else name
