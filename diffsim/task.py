"""Tasks: what the command line asks of a scene kind, with defaults.

A scene kind's object (what :func:`diffsim.build` returns) is a :class:`Task` and a
:class:`diffsim.problem.Problem` at once, e.g. ``class CannonProblem(Task, Problem)``:
the Problem holds the maths (parameters, objective, gradients), the Task what the
verbs report, write and plot on top of it. :mod:`diffsim.cli` calls these methods and
nothing else; a scene kind overrides what it can say better. All return JSON-able
dicts (numpy arrays allowed; the CLI converts them) and write files only under ``out``;
figures are drawn by :mod:`diffsim.plots` from arrays the task computed.
"""
from __future__ import annotations

import pathlib

from .errors import DiffsimError


class Task:
    """The verbs' hooks. Mixed into a Problem subclass (``class K(Task, Problem)``): the
    defaults use the Problem's ``params``, ``objective`` and ``name``."""

    def summary(self, x=None) -> dict:
        """`diffsim run`: JSON-able facts about a run at ``x`` (objective, system outputs)."""
        return {"objective": self.objective(x), "params": self.params.as_dict(x)}

    def summary_text(self, s: dict) -> str:
        """Human-readable form of :meth:`summary`."""
        return f"objective = {s['objective']:.10g}\n" + _fmt_params(s.get("params", {}))

    def plot_run(self, out) -> list:
        """`diffsim run` plots written under ``out``; returns their paths."""
        return []

    def warnings(self, x=None) -> list[str]:
        """Things a user must know about the result at ``x`` (a horizon too short, an
        exploding gradient); printed by `grad`, `check`, `run` and `hessian`."""
        return []

    def run_optimization(self, iterations=None, method=None, seed=None, resume=False,
                         out=None, progress=True, plots=True) -> dict:
        """`diffsim optimize`: a dict with at least params, objective, iterations, status
        (a key of :data:`diffsim.optim.STATUSES`), message and success (bool: the stated
        convergence criterion was met). Default: Adam on the optimisable parameters, with
        a checkpoint in ``out`` that ``resume`` continues."""
        from .optim import minimize
        r = minimize(self, iterations=iterations or 100, method=method, progress=progress,
                     checkpoint=checkpoint_path(out), resume=resume)
        return optimization_report(self, r)

    def report_text(self, r: dict) -> str:
        """Human-readable form of an optimisation/fit report."""
        return report_text(r)

    def fit(self, data=None, method=None, iterations=None, out=None, progress=False,
            plots=True, optimizer=None) -> dict:
        """`diffsim fit`: fit parameters to observed data."""
        raise DiffsimError(f"{self.name} does not support `fit` (ODE scenes do)")

    def sensitivity(self, method=None, out=None, plots=True) -> dict:
        """`diffsim sensitivity`: sensitivities of the objective and trajectory."""
        raise DiffsimError(f"{self.name} does not support `sensitivity` (ODE scenes do)")


def report_text(r: dict) -> str:
    """The generic text of an optimisation report (status, objective, parameters, plots):
    :meth:`Task.report_text`'s default, and what the CLI prints for a report that a
    task's own text cannot read (an optimisation interrupted during its set-up)."""
    lines = [f"status: {r.get('status')} after {r.get('iterations')} iterations"
             + (f" — {r['message']}" if r.get("message") else ""),
             f"objective = {r.get('objective', float('nan')):.10g}"]
    if isinstance(r.get("params"), dict) and len(r["params"]) <= 64:
        lines += ["parameters:", _fmt_params(r["params"])]
    if r.get("plots"):
        lines.append("plots: " + ", ".join(r["plots"]))
    return "\n".join(lines)


def checkpoint_path(out):
    """The checkpoint file of an optimisation writing to folder ``out`` (None: none)."""
    return None if out is None else pathlib.Path(out) / "checkpoint.json"


def optimization_report(problem, r, **extra) -> dict:
    """The common part of every `optimize` report from an OptimizeResult ``r``."""
    params = problem.params.as_dict(r.x) if len(problem.params) <= 64 else {"n": len(problem.params)}
    return {"params": params, "objective": r.objective, "iterations": r.iterations,
            "status": r.status, "message": r.message, "success": r.success,
            "seconds": r.seconds, "history": {"loss": r.history.loss,
                                              "grad_norm": r.history.grad_norm}, **extra}


def _fmt_params(d: dict) -> str:
    w = max((len(k) for k in d), default=0)
    return "\n".join(f"  {k:<{w}} = {v:.10g}" for k, v in d.items())
