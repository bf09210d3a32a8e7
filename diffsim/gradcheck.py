"""Gradient checking: a method's gradient against central finite differences.

Pass rule per parameter (as in Warp's gradcheck): |g - g_fd| <= atol + rtol·|g_fd|;
NaN fails. The report names each parameter, both values and the relative error.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class CheckRow:
    name: str
    grad: float
    fd: float
    abs_error: float
    rel_error: float
    ok: bool


@dataclasses.dataclass
class CheckReport:
    method: str
    objective: float
    rows: list[CheckRow]
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def max_rel_error(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    def as_dict(self) -> dict:
        return {"method": self.method, "objective": self.objective, "ok": self.ok,
                "rtol": self.rtol, "atol": self.atol, "max_rel_error": self.max_rel_error,
                "params": {r.name: {"grad": r.grad, "fd": r.fd, "abs_error": r.abs_error,
                                    "rel_error": r.rel_error, "ok": r.ok} for r in self.rows}}

    def table(self) -> str:
        lines = [f"{'parameter':<18} {self.method + ' grad':>22} {'central FD':>22} {'rel. error':>11}  ok"]
        for r in self.rows:
            lines.append(f"{r.name:<18} {r.grad:>22.14g} {r.fd:>22.14g} {r.rel_error:>11.2e}  "
                         f"{'yes' if r.ok else 'NO'}")
        lines.append(f"pass rule: |grad - fd| <= {self.atol:g} + {self.rtol:g}*|fd|; "
                     f"{'all pass' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def gradcheck(problem, x=None, method=None, *, names=None, rtol=1e-6, atol=1e-9,
              step=None) -> CheckReport:
    """Compare ``problem``'s gradient by ``method`` with central finite differences.

    names: parameters to check (default: those marked optimisable, or all if none are).
    rel_error = |g - fd| / max(|fd|, atol).
    """
    x = problem._as_x(x)
    method = method or problem.default_method
    f, g = problem.value_and_grad(x, method)
    all_names = problem.params.names
    if names is None:
        free = problem.params.free
        names = [n for n, m in zip(all_names, free) if m] or all_names
    idx = [problem.params.index[n] for n in names]
    fd = problem.fd_gradient(x, which=idx, step=step)
    rows = []
    for n, i in zip(names, idx):
        err = abs(g[i] - fd[i])
        rel = err / max(abs(fd[i]), atol)
        ok = bool(np.isfinite(g[i]) and np.isfinite(fd[i]) and err <= atol + rtol * abs(fd[i]))
        rows.append(CheckRow(n, float(g[i]), float(fd[i]), float(err), float(rel), ok))
    return CheckReport(method, float(f), rows, rtol, atol)
