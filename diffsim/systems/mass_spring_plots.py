"""Figures for mass-spring runs (matplotlib, Agg): animations, loss and gradient curves,
fitted vs true stiffness. Never imported by kernels."""
import pathlib
import shutil

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def animate(problem, path, x=None, frames=60, title=None):
    """GIF (MP4 too if ffmpeg is installed) of batch entry 0 at parameters ``x`` (default:
    current); springs coloured by actuation u (blue -1 … red +1, grey: passive).
    Returns the written paths."""
    plt = _plt()
    from matplotlib.animation import FFMpegWriter, PillowWriter
    from matplotlib.collections import LineCollection
    problem.objective(x)
    sim = problem.sim
    tr = sim.trajectory()[0]
    u = sim.actuations()[0] if sim.A else np.zeros((sim.T, 0))
    springs = sim.body.springs
    aidx = sim.act_idx
    idx = np.linspace(0, sim.T, min(frames, sim.T + 1)).astype(int)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
    lo, hi = tr.reshape(-1, 2).min(0), tr.reshape(-1, 2).max(0)
    pad = 0.1 * max(hi - lo)
    ax.set_xlim(lo[0] - pad, hi[0] + pad); ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal"); ax.set_title(title or problem.name)
    if sim.ground is not None:
        ax.axhline(sim.ground, color="k", lw=1)
    lc = LineCollection([], lw=1.5); ax.add_collection(lc)
    pts = ax.plot([], [], "ko", ms=2)[0]
    cmap = plt.get_cmap("coolwarm")

    def draw(k):
        t = idx[k]
        seg = tr[t][springs]
        ut = u[min(t, sim.T - 1)] if sim.A else None
        cols = [cmap(0.5 + 0.5 * ut[aidx[s]]) if aidx[s] >= 0 else (0.5, 0.5, 0.5, 1) for s in range(len(springs))]
        lc.set_segments(seg); lc.set_color(cols)
        pts.set_data(tr[t][:, 0], tr[t][:, 1])
        return lc, pts

    from matplotlib.animation import FuncAnimation
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


def training_plots(problem, hist, out, x_before, x_after):
    """Loss curve, gradient norm per iteration, before/after animations and (for
    identification) fitted vs true stiffness per spring, written in ``out``."""
    plt = _plt()
    out = pathlib.Path(out)
    files = []
    fig, axs = plt.subplots(1, 2, figsize=(9, 3.2))
    axs[0].plot(hist["loss"]); axs[0].set_xlabel("iteration"); axs[0].set_ylabel("objective")
    axs[1].semilogy(np.maximum(hist["grad_norm"], 1e-300)); axs[1].set_xlabel("iteration")
    axs[1].set_ylabel("gradient 2-norm")
    fig.tight_layout(); p = out / "loss.png"; fig.savefig(p); plt.close(fig); files.append(p)
    if problem.true_stiffness is not None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(problem.true_stiffness, "k.", label="true")
        ax.plot(problem.sim.get("stiffness")[0], "r+", label="fitted")
        ax.set_xlabel("spring"); ax.set_ylabel("stiffness [N/m]"); ax.legend()
        fig.tight_layout(); p = out / "stiffness.png"; fig.savefig(p); plt.close(fig); files.append(p)
    if problem.body.n_masses <= 400:
        files += animate(problem, out / "before.gif", x_before, title="before")
        files += animate(problem, out / "after.gif", x_after, title="after")
        problem.set(x_after)
    return files
