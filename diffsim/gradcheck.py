"""Gradient checking: a method's gradient against central finite differences.

Pass rule per checked quantity (as in Warp's gradcheck): |g - g_fd| <= atol + rtol·|g_fd|
+ e, where e is the method's own expected deviation from the exact gradient of the
discretised objective (``Problem.gradient_error``: zero for reverse and forward mode, the
discretisation error of a continuous adjoint). NaN fails. The report names each
parameter (or direction), both values and the relative error.

Two modes:
- per parameter (default up to ``max_params`` parameters): one central difference per
  parameter, the table lists each.
- directional (more parameters, e.g. a robot's 1,483 network weights): ``directions``
  random unit directions v (seeded); the check compares g·v with the central difference
  of f along v. A wrong entry of g shows up in every direction with probability 1.

The finite-difference reference is itself uncertain: its distance to the estimate at the
neighbouring step of the ladder ("FD ±") is reported and added to the tolerance. It is
~1e-10 relative for smooth objectives, so a wrong gradient still fails; across contacts
(where differences converge only linearly in the step) it says how far FD can be trusted.

Step. Central differences have truncation error O(h²) and round-off O(ε|f|/h); the best
step balances them at h ≈ ε^(1/3) (6e-6 in float64, 5e-3 in float32), relative to each
parameter's scale. Objectives with events (contacts, impacts) are only piecewise smooth:
a step that crosses an event gives a meaningless difference. ``step="auto"`` therefore
tries a ladder of steps and keeps the one where the estimate is most stable between
neighbouring steps (a plateau), which avoids both failures.
"""
from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np

#: relative steps tried by step="auto", largest first
STEP_LADDER = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8)


@dataclasses.dataclass
class CheckRow:
    name: str
    grad: float
    fd: float
    abs_error: float
    rel_error: float
    ok: bool
    step: float = math.nan
    allowance: float = 0.0
    fd_uncertainty: float = 0.0


@dataclasses.dataclass
class CheckReport:
    method: str
    objective: float
    rows: list[CheckRow]
    rtol: float
    atol: float
    mode: str = "per-parameter"
    precision: str = "f64"
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def max_rel_error(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    def as_dict(self) -> dict:
        return {"method": self.method, "objective": self.objective, "ok": self.ok,
                "mode": self.mode, "precision": self.precision,
                "rtol": self.rtol, "atol": self.atol, "max_rel_error": self.max_rel_error,
                "note": self.note,
                "params": {r.name: {"grad": r.grad, "fd": r.fd, "abs_error": r.abs_error,
                                    "rel_error": r.rel_error, "ok": r.ok, "step": r.step,
                                    "allowance": r.allowance, "fd_uncertainty": r.fd_uncertainty}
                           for r in self.rows}}

    def table(self) -> str:
        head = "direction" if self.mode == "directional" else "parameter"
        lines = [f"{head:<18} {self.method + ' grad':>22} {'central FD':>22} {'FD ±':>8} "
                 f"{'rel. error':>10} {'FD step':>8}  ok"]
        for r in self.rows:
            lines.append(f"{r.name:<18} {r.grad:>22.14g} {r.fd:>22.14g} {r.fd_uncertainty:>8.1e} "
                         f"{r.rel_error:>10.2e} {r.step:>8.1e}  {'yes' if r.ok else 'NO'}")
        extra = " + FD ±" + (" + expected method error" if any(r.allowance for r in self.rows) else "")
        lines.append(f"pass rule: |grad - fd| <= {self.atol:g} + {self.rtol:g}*|fd|{extra}; "
                     f"{'all pass' if self.ok else 'FAILED'}")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def default_tolerances(precision: str) -> tuple[float, float]:
    """(rtol, atol) a correct gradient meets against a well-chosen central difference:
    float64 ~1e-6, float32 ~2e-2 (round-off of the objective ~1e-7·|f| divided by the
    step ~5e-3 leaves a few digits)."""
    return (1e-6, 1e-9) if precision == "f64" else (2e-2, 1e-4)


def gradcheck(problem, x=None, method=None, *, names=None, rtol=None, atol=None,
              step="auto", max_params=32, directions=4, seed=0, progress=False) -> CheckReport:
    """Compare ``problem``'s gradient by ``method`` with central finite differences.

    names: parameters to check (default: those marked optimisable, or all if none are).
    rtol/atol: pass tolerances (default from the runtime precision, see
    :func:`default_tolerances`). step: relative FD step (times max(|x_i|, scale_i)), or
    "auto" (a step ladder per checked quantity; see the module docstring).
    More than ``max_params`` names: ``directions`` seeded random directions instead.
    progress: a progress bar on stderr. rel_error = |g - fd| / max(|fd|, atol).
    """
    from . import runtime
    prec = runtime.current().precision
    r0, a0 = default_tolerances(prec)
    rtol = r0 if rtol is None else rtol
    atol = a0 if atol is None else atol
    x = problem._as_x(x)
    method = method or problem.default_method
    f, g = problem.value_and_grad(x, method)
    all_names = problem.params.names
    if names is None:
        free = problem.params.free
        names = [n for n, m in zip(all_names, free) if m] or all_names
    idx = np.array([problem.params.index[n] for n in names], dtype=int)
    err_est = problem.gradient_error(x, method)
    scale = np.array([max(abs(x[i]), problem.params.items[i].scale) for i in idx])
    lo, hi = problem.params.lower[idx], problem.params.upper[idx]
    base_h = _base_step(prec)

    if len(idx) <= max_params:
        mode = "per-parameter"
        dirs = np.eye(len(idx))
        labels = list(names)
    else:
        mode = "directional"
        rng = np.random.default_rng(seed)
        dirs = rng.standard_normal((directions, len(idx)))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        labels = [f"random dir {k}" for k in range(directions)]

    ladder = STEP_LADDER if step == "auto" else (float(step),)
    if step == "auto" and prec == "f32":
        ladder = tuple(h for h in STEP_LADDER if h >= 1e-4)
    bar = _bar(len(dirs) * len(ladder) * 2, progress, f"check {problem.name}")
    rows = []
    try:
        for k, v in enumerate(dirs):
            dv = v * scale                      # a unit step along v moves x_i by scale_i·v_i
            ests, steps = [], []
            for h in ladder:
                d = _difference(problem, x, idx, dv, h, lo, hi, f)
                bar(2)
                if d is not None:
                    ests.append(d)
                    steps.append(h)
            fd, h_used, unc = _pick(ests, steps, base_h if step == "auto" else None)
            gv = float(np.dot(g[idx], dv))
            allow = 0.0 if err_est is None else float(np.dot(np.abs(err_est[idx]), np.abs(dv)))
            err = abs(gv - fd)
            rel = err / max(abs(fd), atol)
            ok = bool(np.isfinite(gv) and np.isfinite(fd)
                      and err <= atol + rtol * abs(fd) + allow + unc)
            rows.append(CheckRow(labels[k], gv, float(fd), float(err), float(rel), ok,
                                 float(h_used), allow, float(unc)))
    finally:
        bar(None)
    note = ""
    if mode == "directional":
        note = (f"{len(idx)} parameters: checked {len(dirs)} random unit directions "
                f"(seed {seed}) in scaled coordinates; --max-params raises the per-parameter limit")
    if err_est is not None:
        note += ("\n" if note else "") + (f"the {method} gradient approximates the continuous "
                                          "problem's; the allowance is its estimated discretisation error")
    return CheckReport(str(method), float(f), rows, rtol, atol, mode, prec, note)


def _base_step(precision):
    return 6e-6 if precision == "f64" else 5e-3


def _room(x, dv, lo, hi):
    """Largest t >= 0 with x + t·dv inside [lo, hi]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(dv > 0, (hi - x) / dv, np.where(dv < 0, (lo - x) / dv, np.inf))
    return float(np.min(r, initial=np.inf))


def _difference(problem, x, idx, dv, h, lo, hi, f0):
    """Directional derivative of the objective along dv with step h: central when
    x ± h·dv stay inside the parameter bounds, else the second-order one-sided formula
    (−3f(x) + 4f(x+h) − f(x+2h)) / 2h towards the side with room (a parameter on its
    bound, e.g. a launch height of 0). None when neither fits."""
    up, down = _room(x[idx], dv, lo, hi), _room(x[idx], -dv, lo, hi)

    def at(t):
        xx = x.copy()
        xx[idx] += t * dv
        return problem._objective(xx)
    if min(up, down) >= h:
        return (at(h) - at(-h)) / (2 * h)
    for sgn, room in ((1.0, up), (-1.0, down)):
        if room >= 2 * h:
            return sgn * (-3 * f0 + 4 * at(sgn * h) - at(2 * sgn * h)) / (2 * h)
    return None


def _pick(ests, steps, target):
    """The FD estimate to trust: with one step, that one; with a ladder, the one whose
    neighbours agree with it best (flattest stretch), ties going to the step nearest
    ``target`` (the round-off/truncation balance)."""
    if not ests:
        return math.nan, math.nan, 0.0
    if len(ests) == 1:
        return ests[0], steps[0], 0.0
    e = np.array(ests)
    spread = np.full(len(e), np.inf)
    for i in range(len(e)):
        nb = [abs(e[i] - e[j]) for j in (i - 1, i + 1) if 0 <= j < len(e)]
        spread[i] = max(nb) / max(abs(e[i]), 1e-300)
    best = float(np.nanmin(spread))
    near = [i for i in range(len(e)) if spread[i] <= max(best * 2, 1e-12)]
    i = min(near, key=lambda i: abs(math.log(steps[i] / target)))
    # The estimate's own uncertainty: how far it is from its closest neighbouring step.
    # Round-off and truncation make it tiny for smooth objectives (~1e-10 relative); near
    # an event (a contact, an impact) differences converge only linearly and it grows.
    unc = min(abs(e[i] - e[j]) for j in (i - 1, i + 1) if 0 <= j < len(e))
    return float(e[i]), float(steps[i]), float(unc)


def _bar(total, enabled, desc):
    if not enabled:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:
        return lambda n: None
    b = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(n):
        if n is None:
            b.close()
        else:
            b.update(n)
    return update
