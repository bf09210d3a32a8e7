"""The Hessian figure of a :class:`diffsim.hessian.HessianResult`."""
from __future__ import annotations

import numpy as np

from .common import pyplot


def hessian_figure(res):
    """The figure of HessianResult ``res`` (the CLI writes it as hessian.png): a heat map
    of the Hessian normalised as H_ij/√|H_ii·H_jj| (units cancel; the diagonal's
    magnitudes are in the labels) and the relative eigen-directions (bars), stiffest to
    sloppiest, with their eigenvalues."""
    plt = pyplot()
    k = len(res.names)
    d = np.sqrt(np.abs(np.diag(res.matrix)))
    with np.errstate(divide="ignore", invalid="ignore"):
        C = res.matrix / np.outer(d, d)
    C = np.where(np.isfinite(C), C, 0.0)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(4.2 + 0.45 * k + 4.5, 0.4 * k + 3.2),
                                 gridspec_kw={"width_ratios": [1, 1.15]})
    im = a1.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [f"{n} ({res.matrix[i, i]:.2g})" for i, n in enumerate(res.names)]
    a1.set_xticks(range(k))
    a1.set_xticklabels(res.names, rotation=60, ha="right", fontsize=7)
    a1.set_yticks(range(k))
    a1.set_yticklabels(labels, fontsize=7)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                a1.text(j, i, f"{C[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(C[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=a1, fraction=0.046, pad=0.03, label="H_ij / √|H_ii H_jj|")
    a1.set_title("Hessian, normalised (diagonal H_ii in labels)", fontsize=9)
    order = np.argsort(-np.abs(res.relative_eigenvalues))[:8]
    V = res.relative_eigenvectors[:, order]
    im2 = a2.imshow(V, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    a2.set_yticks(range(k))
    a2.set_yticklabels(res.names, fontsize=7)
    a2.set_xticks(range(len(order)))
    a2.set_xticklabels([f"{res.relative_eigenvalues[i]:.2g}" for i in order], rotation=60,
                       ha="right", fontsize=7)
    a2.set_xlabel("eigenvalue of S·H·S (stiff → sloppy)", fontsize=8)
    fig.colorbar(im2, ax=a2, fraction=0.046, pad=0.03, label="component")
    a2.set_title("eigen-directions over relative changes", fontsize=9)
    fig.suptitle(f"Hessian ({res.method}) at objective {res.objective:.4g}; "
                 f"condition number {res.condition:.2g}", fontsize=9)
    fig.tight_layout()
    return fig
