"""Second derivatives of any :class:`~diffsim.problem.Problem`: Hessian-vector products
and dense Hessians.

How they are computed (the report's ``method`` says which):

- "exact": the problem defines ``exact_hvp(x, v, method)`` (e.g. forward-over-reverse
  in a backend that nests its automatic differentiation); used as it is.
- "fd-of-gradient" (every Taichi scene): central differences of *exact* gradients,
  H·v ≈ (g(x + t·v) − g(x − t·v)) / 2t. diffsim's Taichi 1.7.4 kernels are
  differentiated once (reverse mode); there is no forward-over-reverse path through
  them, so second derivatives come from differences of first ones.

Step. Central differences of g have truncation error O(t²·|g'''|) and round-off
O(ε·|g|/t); they balance at a relative step ε^(1/3) ≈ 6e-6. The default relative step is
``REL_STEP`` = 1e-5 of each parameter's scale max(|x_i|, scale_i) (the same scale that
:meth:`Problem.fd_gradient` uses), a little larger because a simulator's gradient carries
more round-off than ε·|g|. A parameter sitting on a bound is differenced one-sidedly
(second order: (−3g(x) + 4g(x + t) − g(x + 2t)) / 2t) towards the side with room.

Error estimate. The same difference with twice the step: |D(t) − D(2t)|/3 estimates the
truncation error of D(t) (Richardson, O(t²) scheme), plus a round-off bound
4ε·max|g|/t (a gradient carrying more round-off than that shows up in the first term); for a
dense Hessian the asymmetry |H − Hᵀ|/2 of the unsymmetrised differences is a second,
free estimate. The reported ``error`` is the larger of the two, per entry. The matrix
returned is symmetrised, (H + Hᵀ)/2.

Cost: one HVP = 2 gradients (4 with the error estimate); a dense k×k Hessian = 2k
gradients (4k with the error estimate). Dense Hessians are for small problems: beyond
``MAX_DENSE`` parameters use HVPs (Newton-CG needs only those).
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from .errors import DiffsimError

#: default relative step: t_i = REL_STEP · max(|x_i|, scale_i)
REL_STEP = 1e-5
#: `diffsim hessian` refuses dense Hessians over more parameters than this by default
MAX_DENSE = 50
#: why second derivatives of Taichi scenes are differences of gradients
NO_FOR_NOTE = ("diffsim's Taichi kernels are differentiated once (reverse mode); there is no "
               "forward-over-reverse path through them, so second derivatives are central "
               "differences of exact gradients")


@dataclasses.dataclass
class HVPResult:
    """H·v over the parameters ``names`` (k,), at ``x``."""

    value: np.ndarray
    names: list
    method: str                 # "exact" or "fd-of-gradient"
    gradient_method: str        # how each gradient was taken ("discrete", "adjoint", ...)
    step: float                 # t: x moved by ±t·v (NaN for "exact")
    error: np.ndarray | None    # estimated |error| per entry (None: not estimated)
    evaluations: int            # gradient evaluations used


@dataclasses.dataclass
class HessianResult:
    """The Hessian of the objective over ``names`` at ``x``, with its eigen-decomposition.

    matrix (k, k) symmetric; error (k, k) estimated |error| per entry (None when not
    estimated); eigenvalues ascending (k,), eigenvectors[:, i] the unit direction of
    eigenvalues[i], in the parameters' own units; steps (k,) the FD step per parameter.

    Parameters in different units make those eigenvalues mix units. The *relative*
    analysis (what "stiff" and "sloppy" directions usually mean) uses the Hessian over
    relative changes, H̃ = S·H·S with S = diag(param_scales), param_scales_i =
    max(|x_i|, scale_i): relative_eigenvalues/-vectors are those of H̃ (a unit change of
    a direction moves parameter i by param_scales_i times its entry)."""

    names: list
    x: np.ndarray
    objective: float
    gradient: np.ndarray
    matrix: np.ndarray
    error: np.ndarray | None
    asymmetry: float
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    method: str
    gradient_method: str
    steps: np.ndarray
    evaluations: int
    seconds: float
    param_scales: np.ndarray = None
    relative_eigenvalues: np.ndarray = None
    relative_eigenvectors: np.ndarray = None
    note: str = ""

    @property
    def condition(self) -> float:
        """|λ|max / |λ|min (inf when an eigenvalue is 0)."""
        a = np.abs(self.eigenvalues)
        return float(a.max() / a.min()) if len(a) and a.min() > 0 else math.inf

    def as_dict(self) -> dict:
        return {"names": self.names, "params": dict(zip(self.names, self.x.tolist())),
                "objective": self.objective, "gradient": dict(zip(self.names, self.gradient.tolist())),
                "hessian": self.matrix.tolist(),
                "error": None if self.error is None else self.error.tolist(),
                "max_error": None if self.error is None else float(np.max(self.error, initial=0.0)),
                "asymmetry": self.asymmetry, "eigenvalues": self.eigenvalues.tolist(),
                "eigenvectors": self.eigenvectors.tolist(), "condition_number": self.condition,
                "method": self.method, "gradient_method": self.gradient_method,
                "steps": dict(zip(self.names, self.steps.tolist())),
                "gradient_evaluations": self.evaluations, "seconds": self.seconds,
                "param_scales": dict(zip(self.names, self.param_scales.tolist())),
                "relative_eigenvalues": self.relative_eigenvalues.tolist(),
                "relative_eigenvectors": self.relative_eigenvectors.tolist(),
                "note": self.note}

    def text(self, max_rows=12) -> str:
        """The Hessian, its eigenvalues and the stiffest/sloppiest relative directions."""
        k = len(self.names)
        w = max([len(n) for n in self.names] + [6])
        lines = [f"objective = {self.objective:.10g}; Hessian over {k} parameter(s) by "
                 f"{self.method} (gradients: {self.gradient_method}, "
                 f"{self.evaluations} gradient evaluations, {self.seconds:.2f} s)"]
        shown = list(range(min(k, max_rows)))
        lines.append(" " * (w + 2) + "".join(f"{self.names[j][:12]:>13}" for j in shown))
        for i in shown:
            lines.append(f"  {self.names[i]:<{w}}" + "".join(f"{self.matrix[i, j]:>13.5g}" for j in shown))
        if k > max_rows:
            lines.append(f"  … {k - max_rows} more rows/columns (--json prints all)")
        if self.error is not None:
            big = float(np.max(np.abs(self.matrix), initial=0.0))
            lines.append(f"estimated error: max {float(np.max(self.error)):.2g} "
                         f"({float(np.max(self.error)) / big if big else 0.0:.1g} of the largest entry); "
                         f"asymmetry before symmetrising {self.asymmetry:.1g} (relative)")
        lines.append("eigenvalues (parameters' own units): "
                     + ", ".join(f"{v:.4g}" for v in self.eigenvalues[:max_rows])
                     + (" …" if k > max_rows else ""))
        lines.append(f"condition number {self.condition:.3g}; "
                     + ("positive definite (a minimum if the gradient is zero)"
                        if self.eigenvalues[0] > 0 else
                        f"{int(np.sum(self.eigenvalues < 0))} negative eigenvalue(s): not a minimum"
                        if np.any(self.eigenvalues < 0) else "singular (a zero eigenvalue)"))
        lines.append("relative eigen-directions (Hessian over relative changes, S·H·S with "
                     "S = max(|x|, scale)); stiffest first:")
        order = np.argsort(-np.abs(self.relative_eigenvalues))
        pick = list(order[:3]) + [i for i in order[-2:] if i not in order[:3]]
        for n_, i in enumerate(pick):
            vec = self.relative_eigenvectors[:, i]
            top = np.argsort(-np.abs(vec))[:3]
            what = "stiff " if n_ == 0 else "sloppy" if i == order[-1] else "      "
            lines.append(f"  {what} λ = {self.relative_eigenvalues[i]:>11.4g}: "
                         + " ".join(f"{vec[j]:+.3f}·{self.names[j]}" for j in top if abs(vec[j]) > 1e-3))
        if self.note:
            lines.append("note: " + self.note)
        return "\n".join(lines)

    def plot(self, out, name="hessian.png"):
        """Write :func:`diffsim.plots.hessian.hessian_figure` of this result as
        ``out/name`` and return the path."""
        from .plots.common import save
        from .plots.hessian import hessian_figure
        return save(hessian_figure(self), out, name)


def select(problem, names=None):
    """Indices and names of the parameters to differentiate: ``names``, or the optimisable
    ones, or all when none is optimisable (as :func:`diffsim.gradcheck.gradcheck`)."""
    all_names = problem.params.names
    if names is None:
        names = [n for n, m in zip(all_names, problem.params.free) if m] or all_names
    unknown = [n for n in names if n not in problem.params.index]
    if unknown:
        raise DiffsimError(f"unknown parameter(s) {unknown}; known: {', '.join(all_names)}")
    return np.array([problem.params.index[n] for n in names], dtype=int), list(names)


def _scales(problem, x, idx):
    return np.array([max(abs(x[i]), problem.params.items[i].scale) for i in idx])


def _grad(problem, x, method):
    return problem.value_and_grad(x, method)[1]


def _room(x, d, lo, hi):
    """Largest s >= 0 with x + s·d inside [lo, hi]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(d > 0, (hi - x) / d, np.where(d < 0, (lo - x) / d, np.inf))
    return float(np.min(r, initial=np.inf))


def _directional(problem, x, idx, d, t, method, g0, lo, hi):
    """(derivative of the gradient along d (rows idx) with step t, the number of
    gradients it took, the round-off bound of the difference): central inside the
    bounds, else second-order one-sided."""
    up, down = _room(x[idx], d, lo, hi), _room(x[idx], -d, lo, hi)

    def g_at(s):
        xx = x.copy()
        xx[idx] += s * d
        return _grad(problem, xx, method)[idx]
    if min(up, down) >= t:
        gp, gm = g_at(t), g_at(-t)
        gmax = max(np.max(np.abs(gp), initial=0.0), np.max(np.abs(gm), initial=0.0))
        return (gp - gm) / (2 * t), 2, _roundoff(gmax, t)
    for sgn, room in ((1.0, up), (-1.0, down)):
        if room >= 2 * t:
            n = 2 if g0 is not None else 3
            g0 = _grad(problem, x, method)[idx] if g0 is None else g0
            g1, g2 = g_at(sgn * t), g_at(2 * sgn * t)
            # the one-sided weights (3, 4, 1) multiply round-off by 4 over the central one
            gmax = 4 * max(np.max(np.abs(a), initial=0.0) for a in (g0, g1, g2))
            return sgn * (-3 * g0 + 4 * g1 - g2) / (2 * t), n, _roundoff(gmax, t)
    raise DiffsimError(f"cannot difference the gradient of {problem.name}: the parameter bounds "
                       f"leave less than {2 * t:.3g} of room on both sides at "
                       f"{problem.params.as_dict(x)}")


def _roundoff(gmax, t):
    """Round-off bound of a gradient difference with step t: a few ulps of the largest
    gradient entry, divided by the step (2t for central differences)."""
    return 4 * np.finfo(np.float64).eps * gmax / t


def hvp(problem, v, x=None, method=None, names=None, step=None, error_estimate=False) -> HVPResult:
    """H·v, the Hessian of ``problem``'s objective over ``names`` (default: the optimisable
    parameters) times v (k,), at ``x`` (default: the current values).

    method: the gradient method (default the problem's). step: relative step (default
    :data:`REL_STEP`): x moves by ±t·v with t = step / max_i |v_i|/scale_i, so no
    parameter moves by more than ``step`` of its scale. error_estimate: also difference
    with 2t and report |D(t) − D(2t)|/3 per entry (2 more gradients)."""
    x = problem._as_x(x)
    method = method or problem.default_method
    idx, names = select(problem, names)
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (len(idx),):
        raise DiffsimError(f"hvp: v must have {len(idx)} entries ({', '.join(names)}), got {v.shape}")
    exact = problem.exact_hvp
    if exact is not None:
        vf = np.zeros(len(x))
        vf[idx] = v
        return HVPResult(np.asarray(exact(x, vf, method), dtype=np.float64)[idx], names, "exact",
                         method, math.nan, None, 0)
    if not np.any(v):
        return HVPResult(np.zeros(len(idx)), names, "fd-of-gradient", method, 0.0,
                         np.zeros(len(idx)) if error_estimate else None, 0)
    s = _scales(problem, x, idx)
    rel = REL_STEP if step is None else float(step)
    t = rel / float(np.max(np.abs(v) / s))
    lo, hi = problem.params.lower[idx], problem.params.upper[idx]
    d1, n, rnd = _directional(problem, x, idx, v, t, method, None, lo, hi)
    err = None
    if error_estimate:
        d2, n2, _ = _directional(problem, x, idx, v, 2 * t, method, None, lo, hi)
        err, n = np.abs(d1 - d2) / 3 + rnd, n + n2
    return HVPResult(d1, names, "fd-of-gradient", method, t, err, n)


def hessian(problem, x=None, method=None, names=None, step=None, error_estimate=True,
            max_params=None) -> HessianResult:
    """The dense Hessian of ``problem``'s objective over ``names`` (default: the
    optimisable parameters, or all when none is) at ``x``, its eigenvalues/vectors and an
    error estimate (see the module docstring). Column j is the difference of gradients
    along parameter j with step step·max(|x_j|, scale_j). max_params: refuse (DiffsimError)
    more parameters than this, naming the count (None: no limit)."""
    t0 = time.perf_counter()
    x = problem._as_x(x)
    method = method or problem.default_method
    idx, names = select(problem, names)
    k = len(idx)
    if max_params is not None and k > max_params:
        raise DiffsimError(
            f"{problem.name}: a dense Hessian over {k} parameters is refused (more than "
            f"{max_params}: it would take {4 * k} gradient evaluations and a {k}×{k} matrix); "
            "use Hessian-vector products (diffsim.hessian.hvp, the newton-cg optimiser), or "
            "choose fewer parameters (optimize.params), or raise --max-params")
    f, g = problem.value_and_grad(x, method)
    g0 = g[idx]
    s = _scales(problem, x, idx)
    rel = REL_STEP if step is None else float(step)
    steps = rel * s
    exact = problem.exact_hvp
    lo, hi = problem.params.lower[idx], problem.params.upper[idx]
    H1 = np.zeros((k, k))
    rnd = np.zeros(k)
    H2 = np.zeros((k, k)) if error_estimate and exact is None else None
    n = 1
    for j in range(k):
        e = np.zeros(k)
        e[j] = 1.0
        if exact is not None:
            vf = np.zeros(len(x))
            vf[idx[j]] = 1.0
            H1[:, j] = np.asarray(exact(x, vf, method), dtype=np.float64)[idx]
            continue
        H1[:, j], m, rnd[j] = _directional(problem, x, idx, e, steps[j], method, g0, lo, hi)
        n += m
        if H2 is not None:
            H2[:, j], m, _ = _directional(problem, x, idx, e, 2 * steps[j], method, g0, lo, hi)
            n += m
    asym = np.abs(H1 - H1.T) / 2
    H = (H1 + H1.T) / 2
    err = None
    if H2 is not None:
        rich = np.abs(H1 - H2) / 3 + rnd[None, :]
        err = np.maximum((rich + rich.T) / 2, asym)
    scale_h = float(np.max(np.abs(H), initial=0.0))
    asymmetry = float(np.max(asym, initial=0.0)) / scale_h if scale_h > 0 else 0.0
    if not np.all(np.isfinite(H)):
        from .errors import GradientError
        raise GradientError(f"{problem.name}: the Hessian has NaN/inf entries at {problem.params.as_dict(x)}")
    w, V = np.linalg.eigh(H)
    Hs = H * np.outer(s, s)
    ws, Vs = np.linalg.eigh(Hs)
    method_used = "exact" if exact is not None else "fd-of-gradient"
    note = "" if exact is not None else NO_FOR_NOTE
    problem.value_and_grad(x, method)      # leave the problem evaluated at x, not at x ± t
    return HessianResult(names, x[idx].copy(), float(f), g0.copy(), H, err, asymmetry, w, V,
                         method_used, method, steps if exact is None else np.full(k, math.nan),
                         n if exact is None else 1, time.perf_counter() - t0, s, ws, Vs, note)


def free_hessian(problem, x, free, method, step=None):
    """(k, k) symmetrised Hessian over the parameters in the boolean mask ``free`` at
    ``x`` without error estimate, and the gradient evaluations it took. For optimisers:
    no eigen-decomposition, no final re-evaluation."""
    idx = np.nonzero(free)[0]
    k = len(idx)
    H = np.zeros((k, k))
    n = 0
    for j in range(k):
        e = np.zeros(k)
        e[j] = 1.0
        H[:, j], m = free_hvp(problem, x, free, e, method, step)
        n += m
    return (H + H.T) / 2, n


def free_hvp(problem, x, free, v, method, step=None):
    """(H·v over the parameters in the boolean mask ``free``, gradient evaluations used)
    at ``x``; v (k,). For optimisers (Newton-CG): exact when the problem has
    ``exact_hvp``, else central differences of gradients as :func:`hvp`."""
    idx = np.nonzero(free)[0]
    exact = problem.exact_hvp
    if exact is not None:
        vf = np.zeros(len(x))
        vf[idx] = v
        return np.asarray(exact(x, vf, method), dtype=np.float64)[idx], 0
    if not np.any(v):
        return np.zeros(len(idx)), 0
    s = _scales(problem, x, idx)
    t = (REL_STEP if step is None else float(step)) / float(np.max(np.abs(v) / s))
    lo, hi = problem.params.lower[idx], problem.params.upper[idx]
    return _directional(problem, x, idx, np.asarray(v, dtype=np.float64), t, method, None, lo, hi)[:2]
