"""Scene kind "ode": a bundled ODE system, parameters to fit, observations, a solver.

Objective: Σ_j Σ_i (y_i(t_j) - d_ij)² over observation times t_j (``count`` equally
spaced in [t0, t1]) with data from a CSV (``fit --data``) or generated from [truth]
(plus optional Gaussian noise of std ``noise``, seeded).
"""
import math
import pathlib

import numpy as np

from ..errors import DiffsimError
from ..problem import Param, Parameters, Problem
from ..scene import REQUIRED, Key
from .. import plot
from ..ode import Adjoint, make_solver, solve
from ..ode.data import read_csv
from ..ode.systems import SYSTEMS

DESCRIPTION = "user-style ODE systems: trajectory fitting and sensitivities"

SCHEMA = {
    "system": {"name": Key("str", REQUIRED, "bundled system", choices=tuple(SYSTEMS))},
    "params": Key("table", {}, "parameter values (starting guess); names per system"),
    "truth": Key("table", {}, "parameters that generate synthetic observations"),
    "solve": {
        "solver": Key("str", "rk4", "integrator",
                      choices=("euler", "semi_implicit_euler", "leapfrog", "midpoint", "rk4",
                               "dopri5", "backward_euler")),
        "rtol": Key("float", 1e-8, "dopri5 relative tolerance", lo=0.0, lo_open=True),
        "atol": Key("float", 1e-10, "dopri5 absolute tolerance", lo=0.0, lo_open=True),
        "adjoint": Key("str", "checkpointed", "continuous adjoint variant for --method adjoint",
                       choices=("checkpointed", "backsolve")),
        "t0": Key("float", 0.0, "start time"),
        "t1": Key("float", 10.0, "end time"),
        "dt": Key("float", 0.01, "time step", lo=0.0, lo_open=True),
        "y0": Key("floats", REQUIRED, "initial state"),
    },
    "observe": {
        "count": Key("int", 101, "equally spaced observation times in [t0, t1]", lo=2),
        "noise": Key("float", 0.0, "std of Gaussian noise added to synthetic data", lo=0.0),
        "seed": Key("int", 0, "noise seed", lo=0),
    },
    "fit": {
        "optimize": Key("any", [], "names of the parameters to fit (list of strings)"),
        "optimizer": Key("str", "lbfgs", "optimizer for fit/optimize", choices=("lbfgs", "adam", "lm")),
        "iterations": Key("int", 200, "most iterations", lo=1),
        "lr": Key("float", 0.05, "Adam step size", lo=0.0, lo_open=True),
    },
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
    opt = sc["fit"]["optimize"]
    if not isinstance(opt, list) or any(o not in ode.param_names for o in opt):
        raise sc.error(f"must be a list of parameter names from {', '.join(ode.param_names)}",
                       key="fit.optimize", value=opt)
    s = sc["solve"]
    if not s["t1"] > s["t0"]:
        raise sc.error("must be greater than solve.t0", key="solve.t1", value=s["t1"])
    n = (s["t1"] - s["t0"]) / s["dt"]
    if s["solver"] != "dopri5" and abs(n - round(n)) > 1e-6 or (round(n) % (sc["observe"]["count"] - 1)):
        raise sc.error(f"dt must divide [t0, t1] into a multiple of observe.count - 1 = "
                       f"{sc['observe']['count'] - 1} steps", key="solve.dt", value=s["dt"])


def build(sc, **_):
    return ODEProblem(sc)


class ODEProblem(Problem):
    """Fit an ODE's parameters to observations; gradients by any method of ode.solve."""

    methods = ("discrete", "adjoint", "forward", "fd")
    default_method = "discrete"

    def __init__(self, sc):
        self.scene = sc
        self.name = sc.name
        self.ode = SYSTEMS[sc["system"]["name"]]
        s = sc["solve"]
        kw = dict(rtol=s["rtol"], atol=s["atol"]) if s["solver"] == "dopri5" else {}
        self.solver = make_solver(s["solver"], **kw)
        self.adjoint = Adjoint(s["adjoint"])
        self.t_span, self.dt, self.y0 = (s["t0"], s["t1"]), s["dt"], np.array(s["y0"])
        opt = set(sc["fit"]["optimize"])
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
        s = self._solve(x, gradient=method, data=self.data)
        return s.loss, s.grad_params[0]

    def use_data(self, path):
        """Replace the observations by a CSV file (header t,<state names>); its times
        must lie on the step grid."""
        ts, ys = read_csv(path, self.ode.state_names)
        self.ts, self.data = ts, ys
        self._objective(self.params.vector)   # validates the times against dt now

    def sensitivity_matrix(self, x):
        """dy_i(t_j)/dp_k at the observation times by forward sensitivities, (J, n, m)."""
        return self._solve(x, gradient="forward").sensitivities[0, :, :, :self.ode.m]

    def residual_jacobian(self, x):
        """d residuals / d free params (forward sensitivities), (J·n, k)."""
        S = self.sensitivity_matrix(x)[:, :, self.params.free]
        return S.reshape(-1, S.shape[-1])

    def fit(self, data=None, method=None, iterations=None, out=None, progress=False,
            plots=True, optimizer=None):
        """Fit the optimisable parameters to ``data`` (CSV path) or the scene's synthetic
        observations. Returns fitted params, final loss, iterations, approximate standard
        errors sqrt(diag(s²(JᵀJ)⁻¹)) with s² = RSS/(#obs - #free) and J the residual
        Jacobian at the optimum (central differences)."""
        if data is not None:
            self.use_data(data)
        fsec = self.scene["fit"]
        optimizer = optimizer or fsec["optimizer"]
        iterations = iterations or fsec["iterations"]
        free = self.params.free
        if not free.any():
            raise DiffsimError(f"scene '{self.name}' lists no parameter in fit.optimize; "
                               "add e.g. --set 'fit.optimize=[\"alpha\"]'")
        x = self.params.vector
        if optimizer == "lm":
            from scipy.optimize import least_squares
            mask = np.isfinite(self.data)

            def full(xf):
                xx = x.copy()
                xx[free] = xf
                return xx

            def res(xf):
                return (self._solve(full(xf)).ys[0] - np.nan_to_num(self.data))[mask]

            def jac(xf):     # Gauss–Newton Jacobian from forward sensitivities
                return self.residual_jacobian(full(xf))[mask.ravel()]
            r = least_squares(res, x[free], jac=jac, method="lm", max_nfev=iterations)
            x[free] = r.x
            self.set(x)
            status, its = ("converged" if r.success else "max_iterations"), int(r.nfev)
        else:
            from ..optim import LBFGS, Adam, minimize
            opt = LBFGS() if optimizer == "lbfgs" else Adam(lr=fsec["lr"])
            r = minimize(self, opt, iterations=iterations, method=method, progress=progress)
            x, status, its = r.x, r.status, r.iterations
        loss = self._objective(x)
        Jm = self.residual_jacobian(x)[np.isfinite(self.data).ravel()]
        dof = max(Jm.shape[0] - Jm.shape[1], 1)
        try:
            cov = (loss / dof) * np.linalg.inv(Jm.T @ Jm)
            se = np.sqrt(np.maximum(np.diag(cov), 0.0))
        except np.linalg.LinAlgError:
            se = np.full(Jm.shape[1], np.nan)
        names = [n for n, f in zip(self.params.names, free) if f]
        report = {"scene": self.name, "optimizer": optimizer, "params": self.params.as_dict(x),
                  "std_errors": dict(zip(names, se.tolist())), "loss": loss,
                  "iterations": its, "status": status, "success": True}
        if plots and out is not None:
            report["plots"] = [str(self._plot_fit(x, pathlib.Path(out)))]
        return report

    def run_optimization(self, iterations=None, method=None, seed=None, resume=False,
                         out=None, progress=True, plots=True):
        r = self.fit(None, method, iterations, out, progress, plots, None)
        r["objective"] = r["loss"]
        return r

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

    def _plot_adjoint(self, trace, out):
        plt = _pyplot()
        ts = np.concatenate([t for t, _ in reversed(trace)])
        lam = np.concatenate([l[:, 0] for _, l in reversed(trace)])
        fig, ax = plt.subplots(figsize=(6, 3))
        for i, sn in enumerate(self.ode.state_names):
            ax.plot(ts, lam[:, i], label=f"λ_{sn} = dL/d{sn}(t)")
        ax.set_xlabel("t")
        ax.set_title(f"adjoint state ({self.adjoint.kind}); jumps at observations", fontsize=9)
        ax.legend(fontsize=7)
        return plot.save(fig, out, "adjoint.png")

    def _plot_fit(self, x, out):
        plt = _pyplot()
        ys = self._solve(x).ys[0]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, n in enumerate(self.ode.state_names):
            ax.plot(self.ts, ys[:, i], label=f"{n} (fit)")
            ax.plot(self.ts, self.data[:, i], ".", ms=3, label=f"{n} (data)")
        ax.set_xlabel("t")
        ax.legend(fontsize=7)
        return plot.save(fig, out, "fit.png")

    def _plot_sens(self, S, out):
        plt = _pyplot()
        fig, axs = plt.subplots(self.ode.n, 1, figsize=(6, 2.2 * self.ode.n), squeeze=False)
        for i, sn in enumerate(self.ode.state_names):
            for k, pn in enumerate(self.ode.param_names):
                axs[i, 0].plot(self.ts, S[:, i, k], label=f"d{sn}/d{pn}")
            axs[i, 0].legend(fontsize=7)
        axs[-1, 0].set_xlabel("t")
        return plot.save(fig, out, "sensitivity.png")


def _pyplot():
    """matplotlib.pyplot as configured by the caller: the library never switches the
    backend (the CLI selects Agg)."""
    return plot._plt()
