"""Mass-spring figures: animations of a body, loss and gradient-norm curves, fitted vs
true stiffness. Inputs are arrays computed by :mod:`diffsim.tasks.mass_spring`."""
from __future__ import annotations

import pathlib
import shutil

import numpy as np

from .common import pyplot


def animate(path, positions, springs, actuation=None, actuator=None, ground=None, title="",
            frames=60):
    """GIF (MP4 too if ffmpeg is installed) of one body's motion; returns the written paths.

    positions: (steps + 1, N, 2) [m]; springs: (S, 2) mass indices; actuation: (steps, A)
    controller outputs u in [-1, 1] (None: no actuators); actuator: (S,) index into
    actuation's columns per spring, -1 for passive ones; ground: height [m] or None.
    Springs are coloured by u (blue -1 … red +1, grey: passive)."""
    plt = pyplot()
    from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter
    from matplotlib.collections import LineCollection
    tr = np.asarray(positions)
    springs = np.asarray(springs)
    T = len(tr) - 1
    A = 0 if actuation is None else np.asarray(actuation).shape[1]
    idx = np.linspace(0, T, min(frames, T + 1)).astype(int)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
    lo, hi = tr.reshape(-1, 2).min(0), tr.reshape(-1, 2).max(0)
    pad = 0.1 * max(hi - lo)
    ax.set_xlim(lo[0] - pad, hi[0] + pad); ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal"); ax.set_title(title)
    if ground is not None:
        ax.axhline(ground, color="k", lw=1)
    lc = LineCollection([], lw=1.5); ax.add_collection(lc)
    pts = ax.plot([], [], "ko", ms=2)[0]
    cmap = plt.get_cmap("coolwarm")

    def draw(k):
        t = idx[k]
        ut = actuation[min(t, T - 1)] if A else None
        cols = [cmap(0.5 + 0.5 * ut[actuator[s]]) if A and actuator[s] >= 0 else (0.5, 0.5, 0.5, 1)
                for s in range(len(springs))]
        lc.set_segments(tr[t][springs]); lc.set_color(cols)
        pts.set_data(tr[t][:, 0], tr[t][:, 1])
        return lc, pts

    anim = FuncAnimation(fig, draw, frames=len(idx), blit=False)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=20))
    files = [path]
    if shutil.which("ffmpeg"):
        try:
            anim.save(path.with_suffix(".mp4"), writer=FFMpegWriter(fps=20))
            files.append(path.with_suffix(".mp4"))
        except Exception:  # ffmpeg present but unusable: the GIF is enough
            pass
    plt.close(fig)
    return files


def loss_figure(loss, grad_norm):
    """Objective (linear) and gradient 2-norm (log) per iteration, side by side."""
    plt = pyplot()
    fig, axs = plt.subplots(1, 2, figsize=(9, 3.2))
    axs[0].plot(loss); axs[0].set_xlabel("iteration"); axs[0].set_ylabel("objective")
    axs[1].semilogy(np.maximum(grad_norm, 1e-300)); axs[1].set_xlabel("iteration")
    axs[1].set_ylabel("gradient 2-norm")
    fig.tight_layout()
    return fig


def stiffness_figure(true, fitted):
    """Fitted against true stiffness [N/m] per spring (arrays (S,))."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(true, "k.", label="true")
    ax.plot(fitted, "r+", label="fitted")
    ax.set_xlabel("spring"); ax.set_ylabel("stiffness [N/m]"); ax.legend()
    fig.tight_layout()
    return fig

