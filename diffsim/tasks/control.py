"""Scene kind "control": optimal control of a controlled ODE by direct single shooting.

Minimise J = ∫ L(t, x, u, p) dt + φ(x(T), p) over a linear-spline control u(t) on N knots
(each knot value bounded to [lower, upper]) subject to x(0) = y0 and terminal
constraints x_i(T) = target_i, enforced by an augmented Lagrangian (or a quadratic
penalty): inner minimisations of J + νᵀc + ρ/2·|c|² (L-BFGS-B honours the bounds), then
ν ← ν + ρ·c, and ρ ← 10ρ when |c| fell by less than 10×. Gradients come from the ODE
machinery (default: the continuous adjoint, whose costate λ(t) is also Pontryagin's);
see diffsim/ode/control.py and docs/control.md.

Reported along the solution: H = L + λᵀf and ∂H/∂u (≈ 0 where the control is free,
≤ 0 on an upper-bound arc, ≥ 0 on a lower-bound arc), H's spread for autonomous
problems, the terminal residual, a step-doubling estimate of the time-discretisation
error of J, and the analytic solution where one is known (double integrator, Zermelo).
"""
import math
import pathlib

import numpy as np

from .. import runtime
from ..errors import DiffsimError
from ..optim import optimize_schema
from ..problem import Param, Parameters, Problem
from ..task import Task
from ..scene import REQUIRED, Key
from ..ode.control import MAX_KNOTS, SYSTEMS, Transcription

DESCRIPTION = "optimal control: bounded spline controls, adjoint costate, Pontryagin checks"

#: physical parameter defaults per system (a scene's [params] overrides them)
DEFAULTS = {"double_integrator": {}, "pendulum": {"g": 9.81, "length": 1.0, "damping": 0.0},
            "zermelo": {"speed": 1.0, "shear": 1.0}}

SCHEMA = {
    "system": {"name": Key("str", REQUIRED, "bundled controlled system", choices=tuple(SYSTEMS))},
    "params": Key("table", {}, "physical parameters (names per system)"),
    "control": {
        "knots": Key("int", 21, "knots of the linear-spline control on [t0, t1]", lo=2, hi=MAX_KNOTS),
        "lower": Key("floats", [], "lower bound per control (empty: unbounded)"),
        "upper": Key("floats", [], "upper bound per control (empty: unbounded)"),
        "initial": Key("floats", [], "starting value of every knot, per control (default 0, "
                                     "clipped to the bounds)"),
    },
    "solve": {
        "t0": Key("float", 0.0, "start time"),
        "t1": Key("float", 1.0, "final time T"),
        "y0": Key("floats", REQUIRED, "initial state"),
        "substeps": Key("int", 10, "RK4 steps per knot interval", lo=1, hi=100_000),
        "adjoint": Key("str", "checkpointed", "continuous adjoint variant",
                       choices=("checkpointed", "backsolve")),
    },
    "target": Key("table", {}, "terminal constraints: state name = value at t1"),
    "constraint": {
        "method": Key("str", "augmented_lagrangian", "how terminal constraints are enforced",
                      choices=("augmented_lagrangian", "penalty")),
        "rho": Key("float", 100.0, "initial penalty weight ρ", lo=0.0, lo_open=True),
        "tol": Key("float", 1e-8, "converged needs max |x_i(T) - target_i| ≤ tol", lo=0.0, lo_open=True),
        "gtol": Key("float", 1e-5, "converged needs every free knot's |∂merit/∂q_k| / ∫φ_k dt "
                                   "(the hat-weighted mean of ∂H/∂u) ≤ gtol·S, S = max(|merit|, "
                                   "|J|)/(T·U), U = max(max|u_k|, span/100): the size of "
                                   "∂H/∂u that the cost implies",
                    lo=0.0, lo_open=True),
        "outer": Key("int", 12, "most augmented-Lagrangian (or penalty) updates", lo=1, hi=1000),
    },
    "optimize": optimize_schema(
        Key("any", [], "names of the controls to optimise (default: every control)"),
        ("lbfgs", "adam"), optimizer="lbfgs", iterations=3000, lr=0.02,
        methods=("adjoint", "discrete", "forward", "fd")),
}

#: ρ is never raised above this (the merit's conditioning degrades as ρ grows)
RHO_MAX = 1e10


def check_scene(sc):
    sysm = SYSTEMS[sc["system"]["name"]]
    for k, v in sc["params"].items():
        if k not in sysm.param_names:
            known = ", ".join(sysm.param_names) or "none"
            raise sc.error(f"unknown parameter of {sysm.name}; known: {known}", key=f"params.{k}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise sc.error("must be a finite number", key=f"params.{k}", value=v)
    if sc["system"]["name"] == "pendulum" and not sc["params"].get("length", 1.0) > 0:
        raise sc.error("must be > 0", key="params.length", value=sc["params"]["length"])
    for k, v in sc["target"].items():
        if k not in sysm.state_names:
            raise sc.error(f"unknown state of {sysm.name}; known: {', '.join(sysm.state_names)}",
                           key=f"target.{k}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise sc.error("must be a finite number", key=f"target.{k}", value=v)
    s, c = sc["solve"], sc["control"]
    if len(s["y0"]) != sysm.n:
        raise sc.error(f"must have {sysm.n} entries ({', '.join(sysm.state_names)})",
                       key="solve.y0", value=s["y0"])
    if not s["t1"] > s["t0"]:
        raise sc.error("must be greater than solve.t0", key="solve.t1", value=s["t1"])
    for key in ("lower", "upper", "initial"):
        if c[key] and len(c[key]) != sysm.nu:
            raise sc.error(f"must have {sysm.nu} entries ({', '.join(sysm.control_names)}) or "
                           "none", key=f"control.{key}", value=c[key])
    if c["lower"] and c["upper"] and any(lo >= hi for lo, hi in zip(c["lower"], c["upper"])):
        raise sc.error("every lower bound must be below its upper bound "
                       f"(control.upper = {c['upper']})", key="control.lower", value=c["lower"])
    opt = sc["optimize"]["params"]
    if not isinstance(opt, list) or any(o not in sysm.control_names for o in opt):
        raise sc.error(f"must be a list of control names from {', '.join(sysm.control_names)}",
                       key="optimize.params", value=opt)
    steps = (c["knots"] - 1) * s["substeps"]
    # every grid state is saved (plots, the Hamiltonian): (n + 1) values, gradients and
    # data/weights per step, plus the adjoint's per-step matrices over one tape
    runtime.check_memory(64.0 * steps * (sysm.n + 1) * (sysm.n + 8 + sysm.nu * c["knots"]),
                         what=f"{steps} RK4 steps ((control.knots - 1)·solve.substeps)",
                         key="solve.substeps", value=s["substeps"])


def build(sc, **_):
    return ControlProblem(sc)


class ControlProblem(Task, Problem):
    """Knot values of the control as the problem's parameters (names ``u[k]``); the
    objective is the merit J + νᵀc + ρ/2·|c|² at the current multipliers ν and weight ρ
    (``self.nu``, ``self.rho``; J alone is :meth:`cost`)."""

    methods = ("adjoint", "discrete", "forward", "fd")

    def __init__(self, sc):
        self.scene, self.name = sc, sc.name
        self.sys = sysm = SYSTEMS[sc["system"]["name"]]
        vals = {**DEFAULTS[sysm.name], **{k: float(v) for k, v in sc["params"].items()}}
        self.phys = np.array([vals[n] for n in sysm.param_names], dtype=np.float64)
        s, c, con = sc["solve"], sc["control"], sc["constraint"]
        self.y0, self.substeps = np.array(s["y0"], dtype=np.float64), s["substeps"]
        self.adjoint_kind = s["adjoint"]
        self.constrained = [sysm.state_names.index(k) for k in sc["target"]]
        self.target = np.array([float(sc["target"][sysm.state_names[i]]) for i in self.constrained])
        self.tr = Transcription(sysm, (s["t0"], s["t1"]), c["knots"], self.constrained)
        N = c["knots"]
        lo = np.array(c["lower"] or [-math.inf] * sysm.nu, dtype=np.float64)
        hi = np.array(c["upper"] or [math.inf] * sysm.nu, dtype=np.float64)
        init = np.clip(np.array(c["initial"] or [0.0] * sysm.nu, dtype=np.float64), lo, hi)
        opt = set(sc["optimize"]["params"] or sysm.control_names)
        items = []
        for j, cn in enumerate(sysm.control_names):
            span = hi[j] - lo[j]
            for k in range(N):
                items.append(Param(f"{cn}[{k}]", float(init[j]), lower=lo[j], upper=hi[j],
                                   optimize=cn in opt,
                                   scale=float(span) if math.isfinite(span) else 1.0))
        self.params = Parameters(items)
        self.lower_u, self.upper_u = lo, hi
        self.default_method = sc["optimize"]["method"]
        self.method_kind = con["method"]
        self.rho0 = con["rho"]
        self.reset_multipliers()

    # -- objective ---------------------------------------------------------------------
    def reset_multipliers(self):
        """ν = 0, ρ = the scene's initial ρ."""
        self.nu = np.zeros(len(self.constrained))
        self.rho = float(self.rho0)

    def _q(self, x):
        return self.tr.q(x, self.phys, self.target, self.nu, self.rho)

    def _solve(self, x, gradient=None, trace=None, substeps=None):
        from ..ode import Adjoint
        return self.tr.solve(self._q(x), self.y0, substeps or self.substeps, gradient=gradient,
                             trace=trace, adjoint=Adjoint(self.adjoint_kind))

    def _objective(self, x):
        return self._solve(x).loss

    def _value_and_grad(self, x, method):
        sol = self._solve(x, gradient=method)
        g = sol.grad_params[0][self.tr.i_knots:]
        self._last = (np.array(x, dtype=np.float64), float(sol.loss), g.copy(), self.split(sol)[0])
        return sol.loss, g

    def residual(self, x=None, sol=None):
        """Terminal constraint residuals c_i = x_i(T) - target_i, shape (n_c,)."""
        sol = sol or self._solve(self._as_x(x))
        return sol.y_final[0, self.constrained] - self.target

    def split(self, sol):
        """(J, constraint terms νᵀc + ρ/2|c|²) of a solve's merit."""
        c = sol.y_final[0, self.constrained] - self.target
        al = float(self.nu @ c + 0.5 * self.rho * (c @ c))
        return float(sol.loss - al), al

    def cost(self, x=None) -> float:
        """J = ∫ L dt + φ(x(T)) at ``x`` (without the constraint terms)."""
        return self.split(self._solve(self._as_x(x)))[0]

    def kkt(self, x, g, merit=None, J=None):
        """Relative stationarity at knots ``x`` with merit gradient ``g``: the largest
        hat-weighted mean of ∂merit/∂u over free knots, |g_k| / ∫φ_k dt (a knot on its
        lower bound with g > 0, or on its upper bound with g < 0, counts as stationary),
        divided by S = max(|merit|, |J|)/(T·U), U = max(max|u_k|, 1 % of the bound span,
        or of 1 when unbounded): the size of ∂H/∂u that a cost of that size implies (an
        absolute tolerance would mean different things in different scenes). merit, J:
        their values at x (solved for when None)."""
        free = self.params.free
        lo, hi = self.params.lower, self.params.upper
        w = np.tile(self.tr.hat_weights(), self.sys.nu)
        proj = np.where((x <= lo) & (g > 0) | (x >= hi) & (g < 0), 0.0, g)
        if merit is None or J is None:
            sol = self._solve(x)
            merit, J = float(sol.loss), self.split(sol)[0]
        T = self.tr.t1 - self.tr.t0
        scale = np.array([p.scale for p in self.params.items])
        U = max(float(np.max(np.abs(x[free]), initial=0.0)),
                0.01 * float(np.max(scale[free], initial=1.0)))
        S = max(abs(merit), abs(J), 1e-300) / (T * U)
        return float(np.max(np.abs(proj[free] / w[free]), initial=0.0)) / S

    def converged(self, x, f):
        """Inner stopping test of :func:`diffsim.optim.minimize`: kkt ≤ constraint.gtol
        (from the gradient just computed at x)."""
        last = getattr(self, "_last", None)
        if last is None or not np.array_equal(last[0], x):
            return False
        return self.kkt(x, last[2], last[1], last[3]) <= self.scene["constraint"]["gtol"]

    def gradient_error(self, x, method):
        """Expected |g_method − exact gradient of the discretised merit| (None for the
        exact methods). For "adjoint" as in :meth:`ODEProblem.gradient_error`: step
        halving of the adjoint and of the discrete gradient (RK4, p = 4), e ≈
        |g(h) − g(h/2)|·16/15 each, summed and doubled; it never uses g_a − g_d."""
        if method != "adjoint":
            return None
        x = self._as_x(x)
        est = np.zeros(len(x))
        for m in ("adjoint", "discrete"):
            g1 = self._solve(x, gradient=m).grad_params[0][self.tr.i_knots:]
            g2 = self._solve(x, gradient=m, substeps=2 * self.substeps).grad_params[0][self.tr.i_knots:]
            est += 16.0 / 15.0 * np.abs(g1 - g2)
        return 2.0 * est

    # -- optimality data ----------------------------------------------------------------
    def solution(self, x=None) -> dict:
        """Everything known about the control ``x`` (default: current): t, x, u, λ, H,
        ∂H/∂u along the grid (see Transcription.pontryagin), the cost J, the merit, the
        residual, the gradient, the Pontryagin checks and (when the scene fits one) the
        analytic solution and the errors against it."""
        x = self._as_x(x)
        trace = []
        sol = self._solve(x, gradient="adjoint", trace=trace)
        pm = self.tr.pontryagin(self._q(x), sol, trace)
        J = self.split(sol)[0]
        g = sol.grad_params[0][self.tr.i_knots:]
        pm.update(cost=J, merit=float(sol.loss), residual=self.residual(sol=sol),
                  gradient=g, kkt=self.kkt(x, g, float(sol.loss), J), checks=self._checks(x, pm),
                  steps=sol.steps)
        ana = analytic(self)
        if ana is not None:
            us = ana["u"](pm["t"])
            pm["analytic"] = {"cost": ana["cost"], "u": us, "what": ana["what"],
                              "max_control_error": float(np.max(np.abs(pm["u"][:, 0] - us))),
                              "cost_error": float(J - ana["cost"])}
        return pm

    def _checks(self, x, pm):
        """Pontryagin first-order checks on the grid. A time is on a free arc when both
        neighbouring knots are strictly inside the bounds, on a bound arc when both sit
        on the same bound; junction intervals are left out."""
        tr, N = self.tr, self.tr.N
        t, dHdu, tol = pm["t"], pm["dHdu"], 1e-9
        k = np.clip(np.searchsorted(tr.knot_times, t, side="right") - 1, 0, N - 2)
        out = {}
        free_pts, upper_pts, lower_pts = [], [], []
        for j in range(self.sys.nu):
            q = np.asarray(x).reshape(self.sys.nu, N)[j]
            lo, hi = self.lower_u[j], self.upper_u[j]
            at_lo = q <= lo + tol * max(1.0, abs(lo))
            at_hi = q >= hi - tol * max(1.0, abs(hi))
            inside = ~at_lo & ~at_hi
            a, b = k, k + 1
            free_pts.append(dHdu[inside[a] & inside[b], j])
            upper_pts.append(dHdu[at_hi[a] & at_hi[b], j])
            lower_pts.append(dHdu[at_lo[a] & at_lo[b], j])
        free = np.concatenate(free_pts)
        up, low = np.concatenate(upper_pts), np.concatenate(lower_pts)
        scale = float(np.max(np.abs(dHdu))) if dHdu.size else 0.0
        out["free_points"] = int(free.size)
        out["free_max_abs_dHdu"] = float(np.max(np.abs(free))) if free.size else None
        out["bound_points"] = int(up.size + low.size)
        wrong = np.concatenate([up[up > 0], -low[low < 0]])
        out["bound_right_sign"] = int(up.size + low.size - wrong.size)
        out["bound_worst_wrong_sign"] = float(np.max(wrong)) if wrong.size else 0.0
        out["max_abs_dHdu"] = scale
        H = pm["H"]
        hscale = float(np.max(np.abs(pm["L"])) + np.max(np.abs(pm["lam"] * pm["f"]).sum(axis=1)))
        out["H_spread"] = float(np.max(H) - np.min(H))
        out["H_scale"] = hscale
        out["autonomous"] = self.sys.autonomous
        out["lam_cost_max_dev"] = float(np.max(np.abs(pm["lam_cost"] - 1.0)))
        return out

    def discretisation_error(self, x=None) -> dict:
        """Step doubling at fixed knots: J and the final state at the scene's steps and at
        twice as many, and the RK4 Richardson estimates |J(h) − J(h/2)|·16/15 of J's and
        max_i |x_i(T; h) − x_i(T; h/2)|·16/15 of the final state's time-discretisation
        error (a cost ∫u² dt of a spline control is integrated exactly; the state is not)."""
        x = self._as_x(x)
        s1, s2 = self._solve(x), self._solve(x, substeps=2 * self.substeps)
        J1, J2 = self.split(s1)[0], self.split(s2)[0]
        n = self.sys.n
        dx = float(np.max(np.abs(s1.y_final[0, :n] - s2.y_final[0, :n])))
        return {"cost": J1, "cost_half_step": J2, "estimate": abs(J1 - J2) * 16.0 / 15.0,
                "final_state_estimate": dx * 16.0 / 15.0}

    # -- optimisation --------------------------------------------------------------------
    def run_optimization(self, iterations=None, method=None, seed=None, resume=False,
                         out=None, progress=True, plots=True):
        """Augmented-Lagrangian (or penalty) loop of inner minimisations; returns the
        report (see module doc). status "converged" only when, at the returned knots,
        max|c| ≤ constraint.tol and kkt ≤ constraint.gtol (checked there, not taken
        from the inner optimiser); "max_iterations" when the iteration budget or the
        outer updates ran out first; "stalled" when the residual fell by less than 10 %
        over 3 updates (unreachable targets) or the inner optimiser made no progress;
        "interrupted"/"diverged" from the inner run.

        With ``out``: before each inner minimisation ``out/control_state.json`` records
        the update number, ν, ρ, the start point and the evaluations so far, and the inner
        run keeps ``out/checkpoint.json`` (:func:`diffsim.optim.minimize`). ``resume``
        continues from them: the interrupted inner run resumes from its best point with
        the recorded ν and ρ, and the evaluation count goes on."""
        from .. import checkpoint as ckpt
        from ..optim import LBFGS, Adam, minimize
        from ..task import checkpoint_path
        osec, con = self.scene["optimize"], self.scene["constraint"]
        method = method or self.default_method
        budget = iterations or osec["iterations"]
        state_file = None if out is None else pathlib.Path(out) / "control_state.json"
        inner_ck = checkpoint_path(out)
        self.reset_multipliers()
        used, log, prev, prev_x, first = 0, [], math.inf, None, 0
        resume_inner = False
        if resume:
            used, log, prev, first = self._load_state(state_file)
            resume_inner = inner_ck is not None and inner_ck.exists()
        status, message = "max_iterations", ""
        nc = len(self.constrained)
        for outer in range(first, con["outer"]):
            if state_file is not None:
                if not resume_inner and inner_ck.exists():
                    inner_ck.unlink()        # the previous inner run's: not this update's
                ckpt.write_json(state_file, {
                    "version": 1, "problem": self.name, "names": self.params.names,
                    "update": outer, "nu": self.nu, "rho": self.rho,
                    "prev": prev if math.isfinite(prev) else None,
                    "used": used, "log": log, "x": self.params.vector})
            opt = LBFGS() if osec["optimizer"] == "lbfgs" else Adam(lr=osec["lr"])
            r = minimize(self, opt, iterations=budget - used, method=method, progress=progress,
                         desc=f"optimize {self.name} (update {outer + 1})",
                         checkpoint=inner_ck, resume=resume_inner)
            resume_inner = False
            used += r.iterations
            x = r.x
            f, g = self.value_and_grad(x, method)
            c = self.residual(x)
            rmax = float(np.max(np.abs(c), initial=0.0))
            kkt = self.kkt(x, g)
            log.append({"update": outer + 1, "rho": self.rho, "nu": self.nu.tolist(),
                        "inner_status": r.status, "iterations": r.iterations,
                        "cost": self.cost(x), "residual": rmax, "kkt": kkt})
            if r.status in ("interrupted", "diverged"):
                status, message = r.status, r.message
                break
            if rmax <= con["tol"] and kkt <= con["gtol"]:
                status = "converged"
                break
            if used >= budget:
                status = "max_iterations"
                message = (f"the budget of {budget} gradient evaluations ran out with residual "
                           f"{rmax:.3g} (tol {con['tol']:g}) and kkt {kkt:.3g} (gtol {con['gtol']:g}); "
                           "raise --iterations")
                break
            if len(log) >= 2 and r.iterations and np.array_equal(x, prev_x) and rmax <= con["tol"]:
                status = "stalled"
                message = (f"the inner optimiser made no progress (line search) at kkt {kkt:.3g} "
                           f"> gtol {con['gtol']:g} with the residual {rmax:.3g} within tol: the "
                           "gradient's own error may be the floor; raise solve.substeps (the "
                           "adjoint's error falls 16× per halving of the step) or use "
                           "--method discrete")
                break
            prev_x = x.copy()
            if outer == con["outer"] - 1:
                break              # keep ν, ρ of the returned point for the report
            if nc and rmax > con["tol"] and len(log) >= 4 and rmax > 0.9 * log[-4]["residual"]:
                status = "stalled"
                message = (f"the terminal residual stopped falling ({log[-4]['residual']:.3g} → "
                           f"{rmax:.3g} over 3 updates while ρ rose to {self.rho:.3g}): the "
                           "targets look unreachable with these bounds and t1 (or the start "
                           "is poor); widen control.lower/upper or raise solve.t1")
                break
            if nc and rmax > con["tol"]:
                if self.method_kind == "augmented_lagrangian":
                    self.nu = self.nu + self.rho * c
                if rmax > 0.1 * prev or self.method_kind == "penalty":
                    self.rho = min(self.rho * 10.0, RHO_MAX)
                prev = rmax
        if status == "max_iterations" and not message:
            message = (f"{con['outer']} multiplier updates (constraint.outer) did not reach "
                       f"residual ≤ {con['tol']:g} and kkt ≤ {con['gtol']:g}")
        x = self.params.vector
        if status == "converged":
            res = (f"max |x_i(T) − target_i| = {log[-1]['residual']:.3g} ≤ {con['tol']:g}"
                   if nc else "no terminal constraints")
            message = (f"converged: {res} and relative stationarity kkt = {log[-1]['kkt']:.3g} "
                       f"≤ {con['gtol']:g} (free knots' hat-weighted ∂merit/∂u) after "
                       f"{len(log)} update(s)")
        rep = self._report(x, status, message or status, used, log)
        if plots and out is not None and status != "interrupted":
            rep["plots"] = [str(self.plot_solution(pathlib.Path(out), x))]
        return rep

    def _load_state(self, path):
        """Restore the outer loop from ``control_state.json`` (written by
        :meth:`run_optimization`): sets ν, ρ and the start point; returns (evaluations
        used, update log, previous residual, update number to continue with)."""
        from .. import checkpoint as ckpt
        if path is None or not path.exists():
            raise DiffsimError(f"--resume needs {path or 'an --out folder'} from an earlier "
                               "`diffsim optimize` of this scene with the same --out; run "
                               "without --resume first")
        st = ckpt.read_json(path, "control state")
        nc, n = len(self.constrained), len(self.params)
        try:
            ok = (st["problem"] == self.name and st["names"] == self.params.names
                  and len(st["nu"]) == nc and len(st["x"]) == n)
            nu = np.array(st["nu"], dtype=np.float64)
            x = np.array(st["x"], dtype=np.float64)
            rho, used, first = float(st["rho"]), int(st["used"]), int(st["update"])
            prev = math.inf if st["prev"] is None else float(st["prev"])
            log = list(st["log"])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or not (np.all(np.isfinite(nu)) and np.all(np.isfinite(x)) and rho > 0
                          and used >= 0 and first >= 0):
            raise DiffsimError(f"{path}: not a control state of scene '{self.name}' with "
                               f"{n} knots and {nc} constraints; use a fresh --out")
        self.nu, self.rho = nu, rho
        self.set(np.clip(x, self.params.lower, self.params.upper))
        return used, log, prev, first

    def _report(self, x, status, message, used, log):
        pm = self.solution(x)
        de = self.discretisation_error(x)
        names = self.sys.state_names
        rep = {"scene": self.name, "system": self.sys.name, "status": status,
               "success": status == "converged", "message": message, "iterations": used,
               "objective": pm["merit"], "cost": pm["cost"],
               "constraint_method": self.method_kind,
               "residual": {names[i]: float(v) for i, v in zip(self.constrained, pm["residual"])},
               "multipliers": {names[i]: float(v) for i, v in zip(self.constrained, self.nu)},
               "rho": self.rho, "kkt": pm["kkt"], "pontryagin": pm["checks"],
               "costate_final": dict(zip(names, pm["lam"][-1].tolist())),
               "costate_initial": dict(zip(names, pm["lam"][0].tolist())),
               "discretisation": de, "knots": self.tr.N, "steps": pm["steps"],
               "updates": log, "params": self.params.as_dict(x),
               "trajectory": {"t": pm["t"], "x": pm["x"], "u": pm["u"], "lam": pm["lam"],
                              "H": pm["H"], "dHdu": pm["dHdu"]}}
        if "analytic" in pm:
            a = pm["analytic"]
            rep["analytic"] = {"what": a["what"], "cost": a["cost"],
                               "max_control_error": a["max_control_error"],
                               "cost_error": a["cost_error"]}
        return rep

    # -- text and plots ----------------------------------------------------------------------
    def report_text(self, r) -> str:
        names = self.sys.state_names
        lines = [f"{r['scene']}: {r['system']}, {r['knots']} knots, {r['steps']} RK4 steps, "
                 f"{r.get('constraint_method', '')}",
                 f"status: {r['message']}",
                 f"cost J = {r['cost']:.10g}   (merit {r['objective']:.10g}, "
                 f"{r['iterations']} gradient evaluations)"]
        if r["residual"]:
            lines.append("terminal residual: " + ", ".join(f"{k}(T) − target = {v:.3g}"
                                                          for k, v in r["residual"].items()))
            lines.append("multipliers ν: " + ", ".join(f"{k} {v:.6g}" for k, v in r["multipliers"].items())
                         + f"   (ρ = {r['rho']:.3g})")
        de = r["discretisation"]
        lines.append(f"time discretisation: J(h) − J(h/2) = {de['cost'] - de['cost_half_step']:.3g} "
                     f"(RK4 estimate of J's error {de['estimate']:.3g}, of x(T)'s "
                     f"{de['final_state_estimate']:.3g})")
        if r.get("analytic"):
            a = r["analytic"]
            lines.append(f"analytic ({a['what']}): J* = {a['cost']:.10g}, J − J* = {a['cost_error']:.3g}, "
                         f"max |u − u*| = {a['max_control_error']:.3g}")
        p = r["pontryagin"]
        lines.append("Pontryagin check (H = L + λᵀf):")
        if p["free_points"]:
            lines.append(f"  free arcs: max |∂H/∂u| = {p['free_max_abs_dHdu']:.3g} over "
                         f"{p['free_points']} grid times (max |∂H/∂u| anywhere {p['max_abs_dHdu']:.3g})")
        if p["bound_points"]:
            lines.append(f"  bound arcs: ∂H/∂u has the right sign (≤ 0 at the upper bound, ≥ 0 at "
                         f"the lower) at {p['bound_right_sign']} of {p['bound_points']} grid times"
                         + (f"; worst wrong sign {p['bound_worst_wrong_sign']:.3g}"
                            if p['bound_right_sign'] < p['bound_points'] else ""))
        if p["autonomous"]:
            lines.append(f"  autonomous: H varies by {p['H_spread']:.3g} along the solution "
                         f"(scale of its terms {p['H_scale']:.3g})")
        lines.append("  costate λ(0): " + ", ".join(f"{k} {v:.6g}" for k, v in r["costate_initial"].items())
                     + ";  λ(T): " + ", ".join(f"{k} {v:.6g}" for k, v in r["costate_final"].items()))
        tr = r["trajectory"]
        pick = np.unique(np.round(np.linspace(0, len(tr["t"]) - 1, 6)).astype(int))
        lines.append(f"  {'t':>8} {'u':>11} {'∂H/∂u':>11} {'H':>11}")
        for i in pick:
            lines.append(f"  {tr['t'][i]:8.4g} {tr['u'][i][0]:11.5g} {tr['dHdu'][i][0]:11.3g} "
                         f"{tr['H'][i]:11.6g}")
        if r.get("plots"):
            lines.append("plots: " + ", ".join(r["plots"]))
        return "\n".join(lines)

    def summary(self, x=None) -> dict:
        x = self._as_x(x)
        sol = self._solve(x)
        J, _ = self.split(sol)
        return {"scene": self.name, "system": self.sys.name, "objective": float(sol.loss),
                "cost": J, "residual": dict(zip([self.sys.state_names[i] for i in self.constrained],
                                                self.residual(sol=sol).tolist())),
                "final_state": dict(zip(self.sys.state_names, sol.y_final[0, :self.sys.n].tolist())),
                "knots": self.tr.N, "steps": sol.steps}

    def summary_text(self, s) -> str:
        lines = [f"{s['scene']}: {s['system']} with the scene's starting control "
                 f"({s['knots']} knots, {s['steps']} RK4 steps)",
                 f"cost J = {s['cost']:.10g}   (merit {s['objective']:.10g})",
                 "state at t1: " + ", ".join(f"{k} = {v:.6g}" for k, v in s["final_state"].items())]
        if s["residual"]:
            lines.append("terminal residual: " + ", ".join(f"{k} {v:.3g}" for k, v in s["residual"].items()))
        return "\n".join(lines)

    def plot_run(self, out) -> list:
        return [self.plot_solution(pathlib.Path(out), name="control.png")]

    def plot_solution(self, out, x=None, name="control.png", pm=None):
        """control.png: states, control (with bounds and the analytic control when known),
        costate λ(t), ∂H/∂u and H(t) along the solution at ``x`` (``pm``: its
        :meth:`solution`, computed when None)."""
        from ..plots import common, control as plots
        pm = pm or self.solution(x)
        x = self._as_x(x)
        res = ", ".join(f"{self.sys.state_names[i]}(T)−target {v:.1e}"
                        for i, v in zip(self.constrained, pm["residual"]))
        fig = plots.solution_figure(
            pm, self.sys.state_names, self.sys.control_names, self.tr.knot_times,
            np.asarray(x).reshape(self.sys.nu, -1), (self.lower_u, self.upper_u),
            list(zip(self.constrained, self.target)),
            f"{self.name}: J = {pm['cost']:.6g}" + (f"; {res}" if res else ""))
        return common.save(fig, out, name)


# -- analytic solutions -------------------------------------------------------------------
def analytic(pb: ControlProblem):
    """The known optimal control of the scene, or None when the scene's set-up is not one
    with a closed form here: dict(u=callable t -> u*(t), cost=J*, what=description).

    double integrator (x'' = u, J = ∫u² dt, x(0), v(0), x(T), v(T) all fixed): u* is
    linear, u* = a + b s (s = t − t0) from the two terminal conditions; with v(0) = v(T) = 0
    and D = x(T) − x(0): u* = (6D/T²)(1 − 2s/T), J* = 12D²/T³. Valid when u* stays within
    the bounds.
    Zermelo (x' = V cos θ + w y, y' = V sin θ, J = −x(T), y(0) = 0, y(T) = 0, x(T) free):
    tan θ* = w (T/2 − s) (the navigation law dθ/dt = −w cos²θ, symmetric arc), x(T) =
    x(0) + (V/w)(asinh z + z√(1 + z²)), z = wT/2. Valid when θ* stays within the bounds."""
    name = pb.sys.name
    t0, t1 = pb.tr.t0, pb.tr.t1
    T = t1 - t0
    cons = dict(zip(pb.constrained, pb.target))
    lo, hi = pb.lower_u[0], pb.upper_u[0]
    if name == "double_integrator" and set(cons) == {0, 1}:
        x0, v0 = pb.y0
        xT, vT = cons[0], cons[1]
        A = np.array([[T, T ** 2 / 2], [T ** 2 / 2, T ** 3 / 6]])
        a, b = np.linalg.solve(A, [vT - v0, xT - x0 - v0 * T])
        if not (lo <= min(a, a + b * T) and max(a, a + b * T) <= hi):
            return None
        return {"u": lambda t: a + b * (np.asarray(t) - t0),
                "cost": float(a * a * T + a * b * T ** 2 + b * b * T ** 3 / 3),
                "what": "linear u*, J* = ∫u*² dt"}
    if name == "zermelo" and set(cons) == {1} and cons[1] == 0.0 and pb.y0[1] == 0.0:
        V, w = pb.phys
        if w == 0.0:
            return None
        z = w * T / 2
        if not (lo < -math.atan(abs(z)) and math.atan(abs(z)) < hi):
            return None
        xT = pb.y0[0] + V / w * (math.asinh(z) + z * math.sqrt(1 + z * z))
        return {"u": lambda t: np.arctan(w * (T / 2 - (np.asarray(t) - t0))),
                "cost": float(-xT), "what": "navigation law tan θ* = w(T/2 − t)"}
    return None


# -- knot sweep -----------------------------------------------------------------------------
def knot_sweep(scene, knots=(3, 5, 9, 17, 33), overrides=None, out=None, progress=False):
    """Optimise ``scene`` (a name, path or :class:`~diffsim.scene.Scene` with an analytic
    solution) with each knot count N and compare with the analytic control.

    Returns a list of rows: N, knot spacing Δ, max|u_N − u*| over the grid, J_N − J*, the
    status, the evaluations, and the observed orders p = log(e_prev/e)/log(Δ_prev/Δ) of
    both errors. With ``out``: writes control_convergence.png (log–log errors vs N)."""
    from .. import scene as scene_mod
    rows = []
    for N in knots:
        ov = dict(overrides or {})
        ov["control.knots"] = int(N)
        sc = scene_mod.load(scene.path if hasattr(scene, "path") else scene, ov)
        pb = build(sc)
        r = pb.run_optimization(out=None, plots=False, progress=progress)
        if "analytic" not in r:
            raise DiffsimError(f"scene '{sc.name}' has no analytic solution to sweep against "
                               "(bundled: double_integrator, zermelo)")
        a = r["analytic"]
        rows.append({"knots": int(N), "spacing": (pb.tr.t1 - pb.tr.t0) / (N - 1),
                     "max_control_error": a["max_control_error"],
                     "cost_error": a["cost_error"], "status": r["status"],
                     "iterations": r["iterations"],
                     "discretisation_estimate": r["discretisation"]["estimate"]})
    for prev, row in zip(rows, rows[1:]):
        ratio = math.log(prev["spacing"] / row["spacing"])
        for k in ("max_control_error", "cost_error"):
            e0, e1 = abs(prev[k]), abs(row[k])
            row[f"order_{k}"] = math.log(e0 / e1) / ratio if e0 > 0 and e1 > 0 else None
    if out is not None:
        from ..plots import common, control as plots
        common.save(plots.convergence_figure(rows, sc.name), pathlib.Path(out), "control_convergence.png")
    return rows
