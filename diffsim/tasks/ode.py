"""Scene kind "ode": a bundled ODE system, parameters to fit, observations, a solver.

Objective: Σ_j Σ_i (y_i(t_j) - d_ij)² over observation times t_j (``count`` equally
spaced in [t0, t1]) with data from a CSV (``fit --data``) or generated from [truth]
(plus optional Gaussian noise of std ``noise``, seeded).
"""
import math
import pathlib

import numpy as np

from ..errors import DiffsimError
from ..optim import optimize_schema
from ..problem import Param, Parameters, Problem
from ..task import Task
from ..scene import REQUIRED, Key
from .. import runtime
from .. import controllers
from ..ode import Adjoint, make_solver, solve
from ..ode.solve import MAX_STEPS, solve_bytes
from ..ode.data import read_csv
from ..ode.systems import SYSTEMS

DESCRIPTION = "user-style ODE systems: trajectory fitting and sensitivities"

#: the scene's defaults for unset [controller] settings (tighter than the Python API's)
CONTROLLER_DEFAULTS = dict(rtol=1e-8, atol=1e-10)


def _MOVED(key):
    return f"was moved; use controller.{key} (the [controller] section, next to controller.name)"


def make_scene_solver(sc):
    """The solver of a scene's [solve] section with the step-size controller of its
    [controller] section (SceneError naming the key for a combination refused)."""
    name = sc["solve"]["solver"]
    own = make_solver(name).controller          # the solver's default controller
    ctl = controllers.build_from_scene(
        sc["controller"], own, lambda msg, key, value: sc.error(msg, key=key, value=value),
        **CONTROLLER_DEFAULTS)
    if ctl.adaptive and name != "dopri5":
        raise sc.error(f"the {ctl.name!r} controller needs a solver with an embedded error "
                       f"estimate (solve.solver = \"dopri5\"); solve.solver is {name!r}: use "
                       "controller.name = \"constant\" (steps of solve.dt) or dopri5",
                       key="controller.name", value=sc["controller"]["name"])
    return make_solver(name, controller=ctl) if name == "dopri5" else make_solver(name)

SCHEMA = {
    "system": {"name": Key("str", REQUIRED, "bundled system", choices=tuple(SYSTEMS))},
    "params": Key("table", {}, "parameter values (starting guess); names per system"),
    "truth": Key("table", {}, "parameters that generate synthetic observations"),
    "solve": {
        "solver": Key("str", "rk4", "integrator",
                      choices=("euler", "semi_implicit_euler", "leapfrog", "midpoint", "rk4",
                               "dopri5", "backward_euler")),
        # moved to [controller] (step-size controllers are objects with one registry)
        "rtol": Key("any", None, "moved: use controller.rtol", check=lambda v: _MOVED("rtol")),
        "atol": Key("any", None, "moved: use controller.atol", check=lambda v: _MOVED("atol")),
        "adjoint": Key("str", "checkpointed", "continuous adjoint variant for --method adjoint",
                       choices=("checkpointed", "backsolve")),
        "t0": Key("float", 0.0, "start time"),
        "t1": Key("float", 10.0, "end time"),
        "dt": Key("float", 0.01, "time step", lo=0.0, lo_open=True),
        "y0": Key("floats", REQUIRED, "initial state"),
    },
    # step-size controller (diffsim.controllers); a scene's defaults: rtol 1e-8, atol 1e-10
    "controller": controllers.scene_schema(**CONTROLLER_DEFAULTS),
    "observe": {
        "count": Key("int", 101, "equally spaced observation times in [t0, t1]", lo=2),
        "noise": Key("float", 0.0, "std of Gaussian noise added to synthetic data", lo=0.0),
        "seed": Key("int", 0, "noise seed", lo=0),
    },
    # fit and optimize both read it; lm is SciPy's Levenberg–Marquardt on the residuals
    "optimize": optimize_schema(
        Key("any", [], "names of the parameters to fit (list of strings)"),
        ("lbfgs", "adam", "lm", "gauss-newton"), optimizer="lbfgs", iterations=200, lr=0.05),
}


def check_scene(sc):
    ode = SYSTEMS[sc["system"]["name"]]
    for sec in ("params", "truth"):
        for k, v in sc[sec].items():
            if k not in ode.param_names:
                raise sc.error(f"unknown parameter of {ode.name}; known: {', '.join(ode.param_names)}",
                               key=f"{sec}.{k}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise sc.error("must be a finite number", key=f"{sec}.{k}", value=v)
    y0 = sc["solve"]["y0"]
    if len(y0) != ode.n:
        raise sc.error(f"must have {ode.n} entries ({', '.join(ode.state_names)})", key="solve.y0", value=y0)
    opt = sc["optimize"]["params"]
    if not isinstance(opt, list) or any(o not in ode.param_names for o in opt):
        raise sc.error(f"must be a list of parameter names from {', '.join(ode.param_names)}",
                       key="optimize.params", value=opt)
    s = sc["solve"]
    if not s["t1"] > s["t0"]:
        raise sc.error("must be greater than solve.t0", key="solve.t1", value=s["t1"])
    n = (s["t1"] - s["t0"]) / s["dt"]
    adaptive = make_scene_solver(sc).adaptive
    if not adaptive:
        # memory is bounded in the step count but grows with it (checkpoints): refuse an
        # enormous horizon here, before anything is allocated
        runtime.check_memory(
            solve_bytes(n, 1, ode.n),
            what=f"solving {n:.3g} steps of (solve.t1 - solve.t0)/solve.dt = "
                 f"({s['t1']:g} - {s['t0']:g})/{s['dt']:g}", key="solve.dt", value=s["dt"])
        if not n <= MAX_STEPS:
            raise sc.error(f"(solve.t1 - solve.t0)/solve.dt = {n:.3g} steps is more than the "
                           f"{MAX_STEPS:.0e} a fixed-step solve may take; raise solve.dt or "
                           "lower solve.t1", key="solve.dt", value=s["dt"])
    J = sc["observe"]["count"]
    # Per observation: its time, the data, the solution and the forward-sensitivity rows
    # (n × (m + n)), value and gradient copies: refuse before any of it is allocated.
    runtime.check_memory(16.0 * J * (2 + 3 * ode.n + ode.n * (ode.m + ode.n)),
                         what=f"{J} observations", key="observe.count", value=J)
    if not adaptive and (abs(n - round(n)) > 1e-6 or round(n) % (J - 1)):
        raise sc.error(f"dt must divide [t0, t1] into a multiple of observe.count - 1 = "
                       f"{sc['observe']['count'] - 1} steps", key="solve.dt", value=s["dt"])


def build(sc, **_):
    return ODEProblem(sc)


class ODEProblem(Task, Problem):
    """Fit an ODE's parameters to observations; gradients by any method of ode.solve."""

    methods = ("discrete", "adjoint", "forward", "fd")
    default_method = "discrete"

    def __init__(self, sc):
        self.scene = sc
        self.name = sc.name
        self.ode = SYSTEMS[sc["system"]["name"]]
        s = sc["solve"]
        self.solver = make_scene_solver(sc)
        self.adjoint = Adjoint(s["adjoint"])
        self.t_span, self.dt, self.y0 = (s["t0"], s["t1"]), s["dt"], np.array(s["y0"])
        opt = set(sc["optimize"]["params"])
        vals = {k: float(v) for k, v in sc["params"].items()}
        self.params = Parameters([Param(n, vals.get(n, 1.0), optimize=n in opt)
                                  for n in self.ode.param_names])
        self.ts = np.linspace(s["t0"], s["t1"], sc["observe"]["count"])
        truth = {**vals, **{k: float(v) for k, v in sc["truth"].items()}}
        self.truth = np.array([truth.get(n, 1.0) for n in self.ode.param_names])
        clean = self._solve(self.truth).ys[0]
        rng = np.random.default_rng(sc["observe"]["seed"])
        self.data = clean + sc["observe"]["noise"] * rng.standard_normal(clean.shape)

    def _solve(self, x, gradient=None, data=None, trace=None):
        return solve(self.ode, self.t_span, self.y0, x, solver=self.solver, dt=self.dt,
                     saveat=self.ts, data=data, gradient=gradient, adjoint=self.adjoint,
                     adjoint_trace=trace)

    def _objective(self, x):
        return self._solve(x, data=self.data).loss

    def _value_and_grad(self, x, method):
        # an Adjoint with an explicit kind overrides the scene's `adjoint` key (solve does it)
        s = self._solve(x, gradient=method, data=self.data)
        self._last = (np.array(x, dtype=np.float64), method, s.loss, s.grad_params[0].copy())
        return s.loss, s.grad_params[0]

    def _with_resolution(self, x, method, refine):
        """Gradient by ``method`` with the time steps refined by ``refine`` (2: dt/2 for
        fixed steps; Dopri5: rtol and atol divided by 2⁵, which halves its steps)."""
        saved = self.solver, self.dt
        try:
            if self.solver.adaptive:
                f = float(refine) ** 5
                ctl = self.solver.controller
                self.solver = make_solver("dopri5", controller=ctl.replace(rtol=ctl.rtol / f,
                                                                           atol=ctl.atol / f))
            else:
                self.dt = self.dt / refine
            return self._solve(x, gradient=method, data=self.data).grad_params[0]
        finally:
            self.solver, self.dt = saved

    def gradient_error(self, x, method):
        """Expected |g_method − exact gradient of the discretised objective| per parameter
        (absolute), None for the exact methods (discrete, forward).

        For "adjoint": the continuous adjoint approximates the ODE's exact gradient g_c,
        the objective's exact gradient g_d differs from g_c by its own discretisation
        error, so |g_a − g_d| ≤ |g_a − g_c| + |g_d − g_c|. Each term is estimated by step
        halving of that method itself (Richardson): e(h) ≈ |g(h) − g(h/2)|·2^p/(2^p − 1)
        with p = min(4, solver order) (fixed steps: the adjoint integrates by RK4 on states
        of the forward solver's accuracy; p = 1 for leapfrog and symplectic Euler, first
        order in velocity-dependent forces). Dopri5: the refined run divides rtol and atol
        by 2⁵, and both errors scale about linearly with rtol (the adjoint's backward pass
        is error-controlled at the solver's tolerances; docs/ode.md), so the factor
        32/31 would do: the 16/15 of p = 4 is kept, slightly larger. The estimate never
        uses g_a − g_d, so an adjoint that is wrong by more than its discretisation error
        still fails the check. Returned: 2·(e_a + e_d) (a factor 2 for the asymptotic
        estimate). Cost: four gradients."""
        if method != "adjoint":
            return None
        x = self._as_x(x)
        # leapfrog / symplectic Euler are first order in velocity-dependent forces
        # (damping): assume the lower order, which makes the estimate larger
        p = 1 if self.solver.name in ("leapfrog", "semi_implicit_euler") else min(4, self.solver.order)
        rich = 2.0 ** p / (2.0 ** p - 1.0)
        est = np.zeros(len(x))
        for m in ("adjoint", "discrete"):
            g1 = self._solve(x, gradient=m, data=self.data).grad_params[0]
            g2 = self._with_resolution(x, m, 2)
            est += rich * np.abs(g1 - g2)
        return 2.0 * est

    def warnings(self, x=None, method=None):
        """Words of caution about the gradient at ``x`` (list of str, empty when none):
        a relative sensitivity |∂L/∂p_k|·max(|p_k|, 1)/max(L, tiny) above
        EXPLODING_SENSITIVITY = 1e8 means a relative change of 1e-8 in p_k changes the
        objective by its own size: the gradient describes the objective only within that
        distance (typical of chaotic systems over long horizons, e.g. Lorenz far beyond
        its Lyapunov time), so optimisers and checks will not behave."""
        x = self._as_x(x)
        last = getattr(self, "_last", None)
        if last is not None and (method is None or last[1] == method) and np.array_equal(last[0], x):
            f, g = last[2], last[3]      # the gradient the verb just computed, by its method
        else:
            try:
                f, g = self.value_and_grad(x, method or self.default_method)
            except DiffsimError:
                # advisory only: a method this backend refuses (Quadrants, explicit solvers)
                # must not turn `run` into a failure; the verb that needs it reports it
                return []
        rel = np.abs(g) * np.maximum(np.abs(x), 1.0) / max(abs(f), 1e-300)
        out = []
        bad = [i for i in range(len(x)) if not rel[i] <= EXPLODING_SENSITIVITY]
        if bad:
            worst = max(bad, key=lambda i: rel[i])
            t0, t1 = self.t_span
            out.append(
                f"the gradient is enormous: d objective/d {self.params.names[worst]} = "
                f"{g[worst]:.3g} at objective {f:.3g} (relative sensitivity {rel[worst]:.2g} > "
                f"{EXPLODING_SENSITIVITY:.0e} for {', '.join(self.params.names[i] for i in bad)}); "
                f"over [{t0:g}, {t1:g}] the {self.ode.name} trajectory depends on the parameters "
                "so strongly (chaotic or unstable horizon) that the gradient holds only for "
                "changes far below 1e-8 relative: shorten solve.t1 or fit on shorter windows")
        return out

    def use_data(self, path):
        """Replace the observations by a CSV file (header t,<state names>); its times
        must lie inside [t0, t1] and, for fixed-step solvers, on the step grid."""
        ts, ys, lines = read_csv(path, self.ode.state_names, with_lines=True)
        t0, t1 = self.t_span
        tol = 1e-12 * max(abs(t0), abs(t1), t1 - t0)
        out = np.nonzero((ts < t0 - tol) | (ts > t1 + tol))[0]
        if len(out):
            raise DiffsimError(
                f"{path}:{lines[out[0]]}: observation time {ts[out[0]]:g} lies outside the "
                f"solve span [{t0:g}, {t1:g}] ({len(out)} of {len(ts)} times do, from "
                f"{ts[out].min():g} to {ts[out].max():g}); set solve.t0/solve.t1 to cover them")
        old = (self.ts, self.data, getattr(self, "data_source", None))
        self.ts, self.data, self.data_source = ts, ys, str(path)
        try:
            self._objective(self.params.vector)   # validates the times against dt now
        except DiffsimError as e:
            self.ts, self.data, self.data_source = old
            raise DiffsimError(f"{path}: {e}") from None

    def sensitivity_matrix(self, x):
        """dy_i(t_j)/dp_k at the observation times by forward sensitivities, (J, n, m)."""
        return self._solve(x, gradient="forward").sensitivities[0, :, :, :self.ode.m]

    def residual_jacobian(self, x):
        """d residuals / d free params (forward sensitivities), (J·n, k)."""
        S = self.sensitivity_matrix(x)[:, :, self.params.free]
        return S.reshape(-1, S.shape[-1])

    def _source(self):
        return getattr(self, "data_source", None) or f"the synthetic observations of scene '{self.name}'"

    def _check_determined(self, x, names):
        """Refuse data that cannot determine the free parameters: fewer finite residuals
        than parameters, or a residual Jacobian (forward sensitivities at x) of deficient
        rank (column-scaled condition number above COND_MAX, or a zero column)."""
        mask = np.isfinite(self.data)
        k, nres = len(names), int(mask.sum())
        src = self._source()
        if nres < k:
            raise DiffsimError(
                f"{src}: {nres} finite observation value(s) cannot determine {k} parameters "
                f"({', '.join(names)}); give at least {k} observed values (empty cells and NaN "
                "are unobserved)")
        J = self.residual_jacobian(x)[mask.ravel()]
        _, cond, null = _scaled_svd(J)
        if not cond <= COND_MAX:
            combo = " and ".join(names[i] for i in np.argsort(-np.abs(null))[:2])
            raise DiffsimError(
                f"{src}: the observations cannot determine the parameters ({', '.join(names)}): "
                f"the residuals' sensitivity matrix is rank-deficient at the starting point "
                f"(condition number {cond:.3g} > {COND_MAX:.0e}); {combo} change the fit only "
                "together. Observe more states or times, or fit fewer parameters")

    def fit(self, data=None, method=None, iterations=None, out=None, progress=False,
            plots=True, optimizer=None, checkpoint=None, resume=False):
        """Fit the optimisable parameters to ``data`` (CSV path) or the scene's synthetic
        observations by least squares (L-BFGS, Adam or Levenberg–Marquardt).

        Returns a report: fitted params, loss (Σ of squared residuals), iterations,
        status and message, success (= status "converged"), std_errors, correlation and
        covariance (Gauss–Newton, ``uncertainty_method`` says so) and
        ``hessian_uncertainty`` (the same from the full Hessian of the objective, see
        :meth:`_hessian_uncertainty`; None when interrupted or beyond 50 parameters).

        status: "converged" when, at the returned point, the Gauss–Newton step predicts a
        decrease of at most GN_RTOL (1e-8) of the objective (Bates–Watts relative offset
        ≤ 1e-4: the residual is orthogonal to the model's tangent space), or the fit is
        exact (RMS residual ≤ EXACT_RTOL = 1e-10 × max |data|); otherwise
        "max_iterations" (budget used), "interrupted" (Ctrl-C: the best point so far is
        returned, no standard errors) or "stalled" (the optimiser stopped short of the
        criterion). Standard errors: sqrt(diag(s²(JᵀJ)⁻¹)), s² = RSS/(#obs − #free), J the
        residual Jacobian from forward sensitivities at the optimum; NaN with a warning
        when JᵀJ is singular (scaled condition number of J above COND_MAX) or there are
        no residual degrees of freedom. Data that cannot determine the parameters is
        refused with a DiffsimError naming the file. checkpoint/resume: as in
        :func:`diffsim.optim.minimize` (L-BFGS and Adam; LM keeps no state to resume)."""
        if data is not None:
            self.use_data(data)
        fsec = self.scene["optimize"]
        optimizer = optimizer or fsec["optimizer"]
        iterations = iterations or fsec["iterations"]
        free = self.params.free
        if not free.any():
            raise DiffsimError(f"scene '{self.name}' lists no parameter in optimize.params; "
                               "add e.g. --set 'optimize.params=[\"alpha\"]'")
        names = [n for n, f in zip(self.params.names, free) if f]
        x = self.params.vector
        self._check_determined(x, names)
        mask = np.isfinite(self.data)
        interrupted = False
        if optimizer == "lm":
            if resume:
                raise DiffsimError("--resume works with optimize.optimizer = 'lbfgs' or 'adam'; "
                                   "Levenberg–Marquardt keeps no state: run it again")
            from scipy.optimize import least_squares
            best = {"f": math.inf, "x": x.copy(), "n": 0}

            def full(xf):
                xx = x.copy()
                xx[free] = xf
                return xx

            def res(xf):
                r = (self._solve(full(xf)).ys[0] - np.nan_to_num(self.data))[mask]
                f = float(r @ r)
                best["n"] += 1
                if f < best["f"]:
                    best["f"], best["x"] = f, full(xf)
                return r

            def jac(xf):     # Gauss–Newton Jacobian from forward sensitivities
                return self.residual_jacobian(full(xf))[mask.ravel()]
            try:
                least_squares(res, x[free], jac=jac, method="lm", max_nfev=iterations)
            except KeyboardInterrupt:
                interrupted = True
            x, its, loss = best["x"], best["n"], best["f"]
            self.set(x)
        else:
            from ..optim import LBFGS, SECOND_ORDER, Adam, make_optimizer, minimize
            opt = (LBFGS() if optimizer == "lbfgs" else make_optimizer(optimizer)
                   if optimizer in (*SECOND_ORDER, "gauss-newton") else Adam(lr=fsec["lr"]))
            r = minimize(self, opt, iterations=iterations, method=method, progress=progress,
                         checkpoint=checkpoint, resume=resume)
            x, its, loss = r.x, r.iterations, r.objective
            interrupted = r.status == "interrupted"
        warns = []
        k = len(names)
        se, corr = np.full(k, np.nan), np.full((k, k), np.nan)
        if not interrupted:
            try:
                rvec = (self._solve(x).ys[0] - np.nan_to_num(self.data))[mask]
                Jm = self.residual_jacobian(x)[mask.ravel()]
            except KeyboardInterrupt:      # Ctrl-C while judging the result: keep the point
                interrupted = True
        if interrupted:
            status = "interrupted"
            message = ("interrupted (Ctrl-C) after {its} evaluations: the best point so far is "
                       "returned; convergence and standard errors were not evaluated").format(its=its)
        else:
            loss = float(rvec @ rvec)
            pred, exact = _convergence(Jm, rvec, self.data[mask])
            if not math.isfinite(loss):
                status, message = "diverged", f"diverged: the objective is {loss} at the returned point"
            elif exact or pred <= GN_RTOL * loss:
                status = "converged"
                message = ("converged: " + (f"exact fit, RMS residual ≤ {EXACT_RTOL:g}·max|data|"
                                            if exact else
                           f"the Gauss–Newton step would lower the objective by {pred / loss:.2g} "
                           f"of its value (≤ {GN_RTOL:g})"))
            else:
                status = "max_iterations" if its >= iterations else "stalled"
                message = (f"{status}: after {its} evaluations the Gauss–Newton step would still "
                           f"lower the objective by {pred / loss:.2g} of its value (> {GN_RTOL:g}); "
                           + ("raise --iterations" if status == "max_iterations" else
                              "the optimiser stopped early: try another optimizer (lm) or start"))
            se, corr, w = _uncertainty(Jm, loss, names)
            warns += w
        hess = None
        if not interrupted and math.isfinite(loss):
            try:
                hess = self._hessian_uncertainty(x, method, names, loss, Jm.shape[0] - len(names))
            except KeyboardInterrupt:
                interrupted = True
                status = "interrupted"
                message = ("interrupted (Ctrl-C) while computing the Hessian at the returned "
                           "point; the fitted parameters and Gauss–Newton standard errors stand")
            if hess is not None:
                warns += hess.pop("warnings")
        report = {"scene": self.name, "data": self._source(), "optimizer": optimizer,
                  "params": self.params.as_dict(x),
                  "std_errors": dict(zip(names, se.tolist())),
                  "correlation": {"names": names, "matrix": corr.tolist()},
                  "covariance": {"names": names, "matrix": (corr * np.outer(se, se)).tolist()},
                  "uncertainty_method": ("gauss-newton: covariance s²(JᵀJ)⁻¹, s² = RSS/(#obs − "
                                         "#free), J the residual Jacobian (forward sensitivities)"),
                  "hessian_uncertainty": hess,
                  "loss": loss, "objective": loss, "iterations": its, "status": status,
                  "success": status == "converged", "message": message,
                  "criterion": (f"Gauss–Newton predicted decrease ≤ {GN_RTOL:g}·objective, or "
                                f"RMS residual ≤ {EXACT_RTOL:g}·max|data|"),
                  "warnings": warns}
        if plots and out is not None and not interrupted:
            report["plots"] = [str(self._plot_fit(x, pathlib.Path(out)))]
        return report

    def gauss_newton_hessian(self, x):
        """2JᵀJ (k, k) over the optimisable parameters at ``x``: the Gauss–Newton
        approximation of the Hessian of Σr² (J: residual Jacobian from forward
        sensitivities, unobserved values left out). Used by optimizer "gauss-newton"."""
        J = self.residual_jacobian(self._as_x(x))[np.isfinite(self.data).ravel()]
        return 2.0 * J.T @ J

    def _hessian_uncertainty(self, x, method, names, rss, dof):
        """Uncertainty from the full Hessian H of the objective L = Σr² at ``x`` (not the
        Gauss–Newton 2JᵀJ, which drops the residuals' curvature Σ r·∇²r):
        covariance 2s²H⁻¹ with s² = RSS/dof (equal to s²(JᵀJ)⁻¹ when the residuals'
        curvature term vanishes), standard errors, correlation, H's eigenvalues and its
        estimated error. H by :func:`diffsim.hessian.hessian` (central differences of
        exact gradients). None beyond MAX_DENSE parameters; NaN with a warning when H is
        not positive definite (not a minimum) or dof <= 0."""
        from ..hessian import MAX_DENSE, hessian
        k = len(names)
        if k > MAX_DENSE:
            return None
        h = hessian(self, x, method, names=names)
        nan = np.full(k, np.nan)
        out = {"method": h.method, "gradient_method": h.gradient_method,
               "formula": "covariance 2·s²·H⁻¹, H the Hessian of the objective Σr², s² = RSS/(#obs − #free)",
               "hessian": h.matrix.tolist(), "hessian_max_error": float(np.max(h.error)),
               "eigenvalues": h.eigenvalues.tolist(), "std_errors": dict(zip(names, nan.tolist())),
               "correlation": {"names": names, "matrix": np.full((k, k), np.nan).tolist()},
               "covariance": {"names": names, "matrix": np.full((k, k), np.nan).tolist()},
               "note": h.note, "warnings": []}
        if not h.eigenvalues[0] > np.max(h.error) * k:
            out["warnings"].append(
                f"the Hessian at the returned point is not positive definite (smallest "
                f"eigenvalue {h.eigenvalues[0]:.3g}, estimated error {np.max(h.error):.2g}): not a "
                "strict minimum; Hessian standard errors are NaN")
            return out
        if dof <= 0:
            return out      # _uncertainty has said so for the Gauss–Newton ones
        d = np.sqrt(np.diag(h.matrix))
        inv = np.linalg.inv(h.matrix / np.outer(d, d)) / np.outer(d, d)
        cov = 2.0 * rss / dof * inv
        sd = np.sqrt(np.diag(cov))
        out.update(std_errors=dict(zip(names, sd.tolist())),
                   correlation={"names": names, "matrix": (cov / np.outer(sd, sd)).tolist()},
                   covariance={"names": names, "matrix": cov.tolist()})
        return out

    def run_optimization(self, iterations=None, method=None, seed=None, resume=False,
                         out=None, progress=True, plots=True):
        from ..task import checkpoint_path
        return self.fit(None, method, iterations, out, progress, plots, None,
                        checkpoint=checkpoint_path(out), resume=resume)

    def sensitivity(self, method=None, out=None, plots=True):
        """dL/dp for every parameter (by ``method``), the sensitivity matrix
        dy_i(t_j)/dp_k over the observation times (forward sensitivities), shape (J, n, m),
        and plots of both and of the adjoint state λ(t)."""
        x = self.params.vector
        f, g = self.value_and_grad(x, method)
        S = self.sensitivity_matrix(x)
        report = {"scene": self.name, "method": method or self.default_method, "objective": f,
                  "gradient": dict(zip(self.params.names, g.tolist())),
                  "times": self.ts, "states": self.ode.state_names,
                  "sensitivity_matrix": S, "sensitivity_matrix_method": "forward"}
        if plots and out is not None:
            trace = []
            self._solve(x, gradient="adjoint", data=self.data, trace=trace)
            report["plots"] = [str(self._plot_sens(S, pathlib.Path(out))),
                               str(self._plot_adjoint(trace, pathlib.Path(out)))]
        return report

    # -- human-readable output ------------------------------------------------------
    def summary(self, x=None) -> dict:
        """Facts about a solve at ``x``: objective, params, solver, steps, state at t1 and
        the states at the observation times."""
        x = self._as_x(x)
        sol = self._solve(x, data=self.data)
        return {"scene": self.name, "system": self.ode.name, "objective": sol.loss,
                "params": self.params.as_dict(x), "solver": repr(self.solver),
                "t_span": list(self.t_span), "steps": sol.steps,
                "final_state": dict(zip(self.ode.state_names, sol.y_final[0].tolist())),
                "times": self.ts, "states": self.ode.state_names, "trajectory": sol.ys[0]}

    def summary_text(self, s) -> str:
        w = max(len(k) for k in [*s["params"], *s["final_state"]])
        lines = [f"{s['scene']}: {s['system']} over t ∈ [{s['t_span'][0]:g}, {s['t_span'][1]:g}], "
                 f"{s['solver']}, {s['steps']} steps",
                 f"objective (Σ squared residuals at {len(s['times'])} observation times) = "
                 f"{s['objective']:.10g}", "parameters:"]
        lines += [f"  {k:<{w}} = {v:.10g}" for k, v in s["params"].items()]
        lines.append(f"state at t = {s['t_span'][1]:g}:")
        lines += [f"  {k:<{w}} = {v:.10g}" for k, v in s["final_state"].items()]
        return "\n".join(lines)

    def plot_run(self, out) -> list:
        """trajectory.png: every state at the observation times (line) with the
        observations as dots."""
        return [self._plot_fit(self.params.vector, pathlib.Path(out), name="trajectory.png",
                               title=f"{self.name}: trajectory at the current parameters")]

    def report_text(self, r) -> str:
        """Short text for a fit/optimize report or a sensitivity report."""
        if "sensitivity_matrix" in r:
            return self._sensitivity_text(r)
        names = list(r["std_errors"])
        w = max(len(n) for n in r["params"])
        lines = [f"{r['scene']}: fit to {r.get('data', '')} with {r['optimizer']}",
                 f"status: {r['message']}",
                 f"loss = {r['loss']:.6g} after {r['iterations']} evaluations", "parameters:"]
        hu = r.get("hessian_uncertainty") or {}
        hse = hu.get("std_errors", {})
        for n, v in r["params"].items():
            se = r["std_errors"].get(n)
            tail = ("  (fixed)" if n not in names else
                    f"  ± {se:.3g} (std. error)" if se is not None and math.isfinite(se) else
                    "  ± n/a")
            h = hse.get(n)
            if h is not None and math.isfinite(h):
                tail += f"; Hessian: ± {h:.3g}"
            lines.append(f"  {n:<{w}} = {v:.10g}{tail}")
        if any(math.isfinite(v) for v in r["std_errors"].values()):
            lines.append("standard errors from Gauss–Newton s²(JᵀJ)⁻¹"
                         + ("; 'Hessian:' from 2s²H⁻¹ with H by central differences of exact "
                            "gradients" if hse else ""))
        C = np.array(r["correlation"]["matrix"], dtype=float)
        if len(names) > 1 and np.all(np.isfinite(C)):
            pairs = sorted(((abs(C[i, j]), i, j) for i in range(len(names))
                            for j in range(i + 1, len(names))), reverse=True)
            lines.append("strongest correlations: " + ", ".join(
                f"{names[i]}–{names[j]} {C[i, j]:+.3f}" for _, i, j in pairs[:3]))
        lines += [f"warning: {m}" for m in r.get("warnings", [])]
        if r.get("plots"):
            lines.append("plots: " + ", ".join(r["plots"]))
        return "\n".join(lines)

    def _sensitivity_text(self, r) -> str:
        names = list(r["gradient"])
        w = max(len(n) for n in names)
        x = self.params.vector
        lines = [f"{r['scene']}: objective = {r['objective']:.10g} (gradient by {r['method']})",
                 "gradient:"]
        lines += [f"  d objective / d {n:<{w}} = {g: .6g}   (at {x[i]:.6g})"
                  for i, (n, g) in enumerate(r["gradient"].items())]
        S = np.asarray(r["sensitivity_matrix"])
        ts = np.asarray(r["times"])
        # relative sensitivities: the change of a state per relative change of a parameter
        rel = np.abs(S) * np.maximum(np.abs(x), 1e-300)[None, None, :]
        peak = rel.max(axis=0)                          # (n, m)
        when = ts[rel.argmax(axis=0)]
        order = np.dstack(np.unravel_index(np.argsort(-peak, axis=None), peak.shape))[0]
        lines.append("largest state sensitivities max_t |p·dy/dp| (forward sensitivities):")
        for i, k in order[:5]:
            lines.append(f"  {r['states'][i]} to {names[k]:<{w}}: {peak[i, k]:.4g} at t = {when[i, k]:g}")
        lines.append(f"the full matrix dy_i(t_j)/dp_k ({S.shape[0]} times × {S.shape[1]} states × "
                     f"{S.shape[2]} parameters) is in the --json output")
        if r.get("plots"):
            lines.append("plots: " + ", ".join(r["plots"]))
        return "\n".join(lines)

    def _plot_adjoint(self, trace, out):
        from ..plots import common, ode as plots
        fig = plots.adjoint_figure(trace, self.ode.state_names,
                                   f"{self.name}: adjoint state ({self.adjoint.kind}); jumps at observations")
        return common.save(fig, out, "adjoint.png")

    def _plot_fit(self, x, out, name="fit.png", title=None):
        from ..plots import common, ode as plots
        if title is None:
            vals = ", ".join(f"{k}={v:.4g}" for k, v in self.params.as_dict(x, only_free=True).items())
            title = f"{self.name}: fitted model ({vals}) and observations"
        fig = plots.fit_figure(self.ts, self._solve(x).ys[0], self.data, self.ode.state_names, title,
                               synthetic=getattr(self, "data_source", None) is None)
        return common.save(fig, out, name)

    def _plot_sens(self, S, out):
        from ..plots import common, ode as plots
        fig = plots.sensitivity_figure(self.ts, S, self.ode.state_names, self.ode.param_names,
                                       f"{self.name}: sensitivities of the states to the parameters "
                                       "(forward)")
        return common.save(fig, out, "sensitivity.png")


#: ODEProblem.warnings: relative sensitivity |∂L/∂p|·max(|p|, 1)/L above which the
#: gradient is flagged as exploding
EXPLODING_SENSITIVITY = 1e8
#: fit: converged when the Gauss–Newton step predicts a decrease ≤ GN_RTOL·objective
GN_RTOL = 1e-8
#: fit: converged as an exact fit when RMS residual ≤ EXACT_RTOL·max |data|
EXACT_RTOL = 1e-10
#: largest condition number of the column-scaled residual Jacobian J for which JᵀJ
#: (condition number squared: 1e14) is inverted; above it the data do not determine
#: the parameters separately
COND_MAX = 1e7


def _scaled_svd(J):
    """Singular values of J with unit-norm columns, its condition number (inf when a
    column is zero or J is rank-deficient) and the right singular vector of the smallest
    singular value (which combination of parameters is undetermined)."""
    cn = np.linalg.norm(J, axis=0)
    if J.shape[0] < J.shape[1] or not np.all(cn > 0) or not np.all(np.isfinite(J)):
        null = np.where(cn > 0, 0.0, 1.0) if np.any(cn == 0) else np.ones(J.shape[1])
        return None, math.inf, null
    _, sv, vt = np.linalg.svd(J / cn, full_matrices=False)
    cond = sv[0] / sv[-1] if sv[-1] > 0 else math.inf
    return sv, cond, vt[-1]


def _convergence(J, r, data):
    """(predicted Gauss–Newton decrease ‖P r‖² with P the projector on J's columns,
    exact-fit flag) at a point with residuals r (R,), Jacobian J (R, k), data (R,)."""
    q, _ = np.linalg.qr(J / np.maximum(np.linalg.norm(J, axis=0), 1e-300))
    pr = q.T @ r
    rms = math.sqrt(float(r @ r) / max(len(r), 1))
    scale = float(np.max(np.abs(data))) if len(data) else 0.0
    return float(pr @ pr), rms <= EXACT_RTOL * max(scale, 1e-300)


def _uncertainty(J, rss, names):
    """Standard errors (k,), correlation matrix (k, k) and warnings at the optimum:
    cov = s²(JᵀJ)⁻¹ with s² = rss/(#residuals − k); NaN where JᵀJ is singular."""
    k = len(names)
    nan = (np.full(k, np.nan), np.full((k, k), np.nan))
    dof = J.shape[0] - k
    sv, cond, null = _scaled_svd(J)
    if not cond <= COND_MAX:
        combo = " and ".join(names[i] for i in np.argsort(-np.abs(null))[:2])
        return (*nan, [f"JᵀJ is singular at the optimum (scaled condition number of J "
                       f"{cond:.3g} > {COND_MAX:.0e}): {combo} are not separately determined; "
                       "standard errors and correlations are NaN"])
    if dof <= 0:
        return (*nan, [f"{J.shape[0]} residuals for {k} parameters leave no degrees of freedom "
                       "to estimate the noise; standard errors are NaN"])
    cn = np.linalg.norm(J, axis=0)
    inv = np.linalg.inv((J / cn).T @ (J / cn)) / np.outer(cn, cn)
    cov = (rss / dof) * inv
    d = np.sqrt(np.maximum(np.diag(inv), 0.0))
    return np.sqrt(np.maximum(np.diag(cov), 0.0)), inv / np.outer(d, d), []

